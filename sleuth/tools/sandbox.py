"""Sandboxed Python for the agent's code tool: one persistent worker process per trajectory.

The worker is a separate Python process that keeps its variables between calls (a small REPL spoken over
two pipes). Every call has a wall-clock limit; on a timeout, a crash or running out of memory the whole
worker is killed and started afresh, and the result says that earlier state is gone.

What contains the code, strongest first (``Sandbox.isolation`` says which layers this machine gave us):

1. Linux namespaces (as root): a fresh network namespace (no interfaces but a down loopback, so no
   connection to anything, including 127.0.0.1 of the host), a pid namespace (the worker is its init: when
   it dies the kernel kills every process it left behind, and it cannot see host processes), an IPC and UTS
   namespace, and a mount namespace in which the worker is chroot-ed into a private read-only root that
   holds only /usr, /lib*, the Python installation, a few /dev nodes, its own /proc and the scratch
   directory (a size-capped tmpfs). Without root, an unprivileged user namespace gives the network and pid
   namespaces only, when the kernel allows it.
2. An unprivileged uid (as root: a fresh, otherwise unused uid per sandbox) with no_new_privs, so file
   permissions apply and RLIMIT_NPROC counts only this sandbox's processes (root ignores NPROC).
3. Resource limits set in the worker: RLIMIT_AS (memory), RLIMIT_CPU (re-armed per call), RLIMIT_NPROC
   (fork bombs; threads count too), RLIMIT_FSIZE, RLIMIT_NOFILE, no core dumps; its own session and process
   group; a scrubbed environment (minimal PATH, HOME = scratch, no secrets from the caller's environment).
4. A Python audit hook (``sys.addaudithook``) in the worker that refuses opening files outside the scratch
   directory and the Python installation, writes outside the scratch directory, starting processes (fork,
   exec, spawn, system, subprocess), loading libraries or looking up functions through ctypes, native
   modules from the scratch directory, network calls, signalling other processes, and gc introspection.

Nothing outlives its owner. The worker's parent is a small supervisor (outside the worker's pid namespace,
if any) that reports how the worker ended; when the host process dies, even by SIGKILL, its end of the
request pipe closes and the supervisor kills the worker and itself at once (a running call included). A call
may not leave threads behind: if any are still running when it returns, the worker is restarted and the
result says so. Temporary directories are named after the host's pid, and a new sandbox removes those whose
owner is dead.

Be clear about layer 4: an audit hook is a tripwire inside the same interpreter, not a security boundary.
It sees Python-level operations only (native code, e.g. a C extension, does not raise audit events);
ctypes can still read and write the process's memory (``memmove``, pointers), which is enough to switch
the hook off; an object with a custom ``__fspath__`` can show it one path and open another; a thread can
swap a symlink between the check and the open. It turns naive escapes into a clear "blocked" message; the
OS layers (1-3) are what actually hold when something gets past it. Where layers 1-2 are missing the hook
and the rlimits are all there is, and ``Sandbox.warnings`` says so (as root without namespaces the code
even keeps root's rights when the Python installation is not readable by other users).

This file is also the worker program: ``python -I sandbox.py --sandbox-worker REQ_FD RESP_FD``. The worker
half uses only the standard library and avoids importing subprocess (so its process launcher can be
disabled before user code runs).
"""

from __future__ import annotations

import atexit
import itertools
import json
import math
import os
import re
import signal
import struct
import sys
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

# Linux constants (sched.h, mount.h, prctl.h).
_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 16384, 1 << 18
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38

_ROOT_FLAGS = _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC | _CLONE_NEWUTS
_USER_FLAGS = _CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC

_WORKER_FILE = os.path.abspath(__file__)
_MAX_FRAME = 64 * 1024 * 1024
_MESSAGE_CHARS = 600   # keeps result frames under PIPE_BUF, so a frame is written atomically


# --------------------------------------------------------------------------------------------- protocol

def _send(fd: int, obj: dict) -> None:
    data = json.dumps(obj).encode()
    buf = struct.pack(">I", len(data)) + data
    while buf:
        buf = buf[os.write(fd, buf):]


def _recv(fd: int) -> dict | None:
    """Blocking read of one frame; None at end of file."""
    def read_exact(n: int) -> bytes | None:
        chunks, got = [], 0
        while got < n:
            b = os.read(fd, n - got)
            if not b:
                return None
            chunks.append(b)
            got += len(b)
        return b"".join(chunks)
    head = read_exact(4)
    if head is None:
        return None
    body = read_exact(struct.unpack(">I", head)[0])
    return None if body is None else json.loads(body)


# ------------------------------------------------------------------------------------------- parent side

@dataclass
class SandboxConfig:
    """Limits and isolation of one sandbox. The defaults suit an agent's quick calculations."""
    wall_seconds: float = 10.0
    """Wall-clock limit of one call; past it the worker is killed and restarted."""
    cpu_seconds: int = 10
    """CPU-time limit of one call (RLIMIT_CPU soft limit, re-armed before each call)."""
    memory_mb: int = 512
    """Address-space limit of the worker and each process it starts (RLIMIT_AS)."""
    max_processes: int = 16
    """RLIMIT_NPROC for the sandbox's uid: processes and threads together, the worker included."""
    output_chars: int = 4000
    """Budget of one call's output (stdout + stderr); the rest is cut with a note."""
    network: bool = False
    """Allow network access (then no network namespace and no socket blocking)."""
    scratch_dir: str | Path | None = None
    """Working directory of the code. None: a fresh temporary directory, removed on close()."""
    file_mb: int = 32
    """Largest file the code may write (RLIMIT_FSIZE)."""
    max_open_files: int = 64
    """RLIMIT_NOFILE."""
    disk_mb: int = 64
    """Size of the scratch tmpfs when the private root is available (a fresh scratch dir only)."""
    cpu_seconds_lifetime: int = 600
    """Hard RLIMIT_CPU over one worker's life; the kernel kills it there and it restarts."""
    startup_seconds: float = 20.0
    """How long the worker may take to start."""
    uid: int | None = None
    """Unprivileged uid (and gid) to run as when started as root. None: a fresh unused uid per sandbox."""
    namespaces: bool = True
    """Use Linux namespaces when available. False: only uid, rlimits and the audit hook."""
    audit_hook: bool = True
    """Install the audit hook. Only switch off to test the OS-level layers on their own."""
    python: str | None = None
    """Interpreter to run the worker with (default: this one)."""

    def validate(self) -> None:
        for name in ("wall_seconds", "cpu_seconds", "memory_mb", "max_processes", "output_chars",
                     "file_mb", "max_open_files", "disk_mb", "cpu_seconds_lifetime", "startup_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"SandboxConfig.{name} must be a positive number, got {value!r}")
        if self.memory_mb < 64:
            raise ValueError("SandboxConfig.memory_mb must be at least 64 (the interpreter itself needs it)")
        if self.max_open_files < 16:
            raise ValueError("SandboxConfig.max_open_files must be at least 16")


@dataclass
class SandboxResult:
    """One call's outcome. ``text`` is what an agent should see."""
    ok: bool
    output: str = ""                 # stdout and stderr as written (tracebacks included), truncated
    error: str | None = None         # 'timeout' | 'memory' | 'killed' | 'exception' | 'blocked' | 'unavailable'
    message: str = ""                # one line saying what went wrong
    restarted: bool = False          # the worker was killed: variables, imports and files are gone
    truncated: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        parts = [f"Note: {n}" for n in self.notes]
        if self.output:
            parts.append(self.output.rstrip("\n"))
        # Exceptions already show their traceback in the output; other failures need a line of their own.
        if not self.ok and (self.error not in ("exception", "blocked") or not self.output):
            parts.append(f"Error: {self.message}")
        return "\n".join(parts) if parts else "(no output)"


class _Output:
    """Keeps the head and the tail of a byte stream within a character budget, counting what it drops."""

    def __init__(self, chars: int):
        self.head_chars = max(1, int(chars * 0.7))
        self.tail_chars = max(1, chars - self.head_chars)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head_chars * 4 - len(self.head)   # up to 4 bytes per character in UTF-8
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > self.tail_chars * 8:
                del self.tail[: len(self.tail) - self.tail_chars * 4]

    def render(self) -> tuple[str, bool]:
        text = (bytes(self.head) + bytes(self.tail)).decode("utf-8", "replace")
        kept = len(self.head) + len(self.tail)
        if kept == self.total and len(text) <= self.head_chars + self.tail_chars:
            return text, False
        if kept == self.total:
            head, tail = text[: self.head_chars], text[-self.tail_chars:]
        else:
            head = bytes(self.head).decode("utf-8", "replace")[: self.head_chars]
            tail = bytes(self.tail).decode("utf-8", "replace")[-self.tail_chars:]
        omitted = self.total - len(head.encode()) - len(tail.encode())
        note = (f"\n[... output truncated: {max(omitted, 0):,} bytes omitted; the limit is "
                f"{self.head_chars + self.tail_chars:,} characters per call ...]\n")
        return head + note + tail, True


_probe_cache: dict[int, bool] = {}

_PROBE = r"""
import ctypes, os, sys
flags, mount = int(sys.argv[1]), sys.argv[2] == "1"
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(flags) != 0:
    sys.exit(2)
if mount and (libc.mount(b"none", b"/", None, ctypes.c_ulong(%d), None) != 0
              or libc.mount(b"tmpfs", b"/tmp", b"tmpfs", ctypes.c_ulong(0), b"size=1m") != 0):
    sys.exit(3)
pid = os.fork()
if pid == 0:
    os._exit(0)
sys.exit(0 if os.waitpid(pid, 0)[1] == 0 else 4)
""" % (_MS_REC | _MS_PRIVATE)


def _namespaces_work(flags: int, python: str) -> bool:
    """Whether this machine lets us create these namespaces (checked once per process)."""
    if flags not in _probe_cache:
        import subprocess
        try:
            r = subprocess.run([python, "-I", "-c", _PROBE, str(flags), "1" if flags & _CLONE_NEWNS else "0"],
                               capture_output=True, timeout=20, env={"PATH": "/usr/bin:/bin"})
            _probe_cache[flags] = r.returncode == 0
        except (OSError, subprocess.SubprocessError):
            _probe_cache[flags] = False
    return _probe_cache[flags]


def _others_can_read(path: str) -> bool:
    """Whether a uid that is neither owner nor group member can reach and list ``path``."""
    p = Path(path).resolve()
    try:
        for d in [*reversed(p.parents), p]:
            if not os.stat(d).st_mode & 0o001:
                return False
        return bool(os.stat(p).st_mode & 0o004)
    except OSError:
        return False


def _count_processes(uid: int) -> int:
    n = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.stat(entry.path).st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


_DIR_PREFIX = "sleuth-sandbox-"   # + [root-] + owner pid + "-": temporary directories of a sandbox
_STALE_DIR = re.compile(re.escape(_DIR_PREFIX) + r"(?:root-)?(\d+)-")


def _remove_stale_dirs() -> None:
    """Remove the temporary directories of sandboxes whose owner process is dead (killed with SIGKILL, so
    ``close()`` never ran)."""
    import shutil
    import tempfile

    tmp = tempfile.gettempdir()
    try:
        names = os.listdir(tmp)
    except OSError:
        return
    for name in names:
        m = _STALE_DIR.match(name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue                       # the owner is alive
        except PermissionError:
            continue                       # alive, another user's
        except ProcessLookupError:
            pass
        except (OverflowError, OSError):
            continue
        shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)


_uid_counter = itertools.count(1)


def _fresh_uid() -> int:
    """An uid no account uses, distinct per (process, sandbox), so NPROC counts this sandbox alone."""
    return 100_000_000 + (os.getpid() * 4096 + next(_uid_counter) % 4096) % 2_000_000_000


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


class Sandbox:
    """A persistent, isolated Python worker. ``run(code)`` never raises for anything the code does."""

    def __init__(self, config: SandboxConfig | None = None):
        import tempfile
        import threading

        self.config = cfg = config or SandboxConfig()
        cfg.validate()
        self._python = cfg.python or sys.executable
        self.warnings: list[str] = []
        root = os.geteuid() == 0
        if cfg.namespaces and root and _namespaces_work(_ROOT_FLAGS, self._python):
            self.mode = "namespaces"
        elif cfg.namespaces and not root and _namespaces_work(_USER_FLAGS, self._python):
            self.mode = "user-namespaces"
        else:
            self.mode = "none"

        _remove_stale_dirs()
        self._own_scratch = cfg.scratch_dir is None
        if self._own_scratch:
            self.scratch = Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-"))
        else:
            self.scratch = Path(cfg.scratch_dir).resolve()
            self.scratch.mkdir(parents=True, exist_ok=True)
        # mount point of the private root (namespaces only); empty on the host side
        self._root_dir = (Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}root-{os.getpid()}-"))
                          if self.mode == "namespaces" else None)

        # Who the code runs as.
        self.uid: int | None = None
        if root:
            prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
            if self.mode == "namespaces" or all(_others_can_read(p) for p in prefixes):
                self.uid = cfg.uid if cfg.uid is not None else _fresh_uid()
                if self._own_scratch and self.mode != "namespaces":
                    os.chown(self.scratch, self.uid, self.uid)
            else:
                self.warnings.append(
                    "running as root: the Python installation is not readable by an unprivileged uid and "
                    "there is no private root, so the code keeps root's file access and RLIMIT_NPROC does "
                    "not apply (only the audit hook stands between the code and the machine)")
        if self.mode == "none" and not cfg.network:
            self.warnings.append("no network namespace: network access is blocked only by the audit hook, "
                                 "which native code can bypass")
        if self.mode != "namespaces":
            self.warnings.append("no private root: files outside the scratch directory are protected by "
                                 "file permissions and the audit hook only; disk use is bounded per file "
                                 "(RLIMIT_FSIZE), not in total")
        if self.mode == "namespaces" and not self._own_scratch:
            self.warnings.append("a caller-provided scratch_dir is mounted as is: it must be writable by "
                                 f"uid {self.uid}, and its size is not capped")
        if not cfg.audit_hook:
            self.warnings.append("the audit hook is off: only the OS-level layers contain the code")

        self._lock = threading.Lock()
        self._proc = None
        self._req_w: int | None = None
        self._resp_r: int | None = None
        self._out_fd: int | None = None
        self._worker_pid: int | None = None   # the worker's pid, as its supervisor reports it
        self._resp_buf = bytearray()          # response bytes not yet parsed into a frame
        self._pending_note: str | None = None
        self._calls = 0
        self._closed = False
        self.isolation = self._describe()
        _live.add(self)

    # ------------------------------------------------------------------------------------------ public

    def run(self, code: str) -> SandboxResult:
        """Run ``code`` in the worker; the value of a final expression is printed, as in a REPL."""
        t0 = time.monotonic()
        with self._lock:
            if self._closed:
                return SandboxResult(ok=False, error="unavailable", message="the sandbox is closed")
            if not isinstance(code, str):
                return SandboxResult(ok=False, error="exception",
                                     message=f"code must be a string, got {type(code).__name__}")
            notes = []
            if self._proc is not None and self._proc.poll() is not None:
                self._kill()
                self._pending_note = ("the Python process had stopped since the last call; it was restarted "
                                      "and all variables, imports and files from earlier calls are lost")
            if self._proc is None:
                err = self._start()
                if err:
                    return SandboxResult(ok=False, error="unavailable", message=err,
                                         seconds=time.monotonic() - t0)
            if self._pending_note:
                notes.append(self._pending_note)
                self._pending_note = None
            self._calls += 1
            out = _Output(self.config.output_chars)
            t_call = time.monotonic()
            try:
                _send(self._req_w, {"op": "run", "id": self._calls, "code": code})
                frame, died = self._wait(t_call + self.config.wall_seconds, out)
            except OSError:   # the worker vanished while we wrote (killed from outside)
                frame, died = None, self._exit_info()
            result = self._finish(frame, died, out)
            result.notes = notes + result.notes
            result.seconds = time.monotonic() - t0
            return result

    def restart(self) -> None:
        """Kill the worker now; the next call starts a fresh one."""
        with self._lock:
            self._kill()

    def close(self) -> None:
        """Kill the worker and remove the scratch directory (if this sandbox created it)."""
        import shutil

        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._kill()
            if self._own_scratch:
                shutil.rmtree(self.scratch, ignore_errors=True)
            if self._root_dir is not None:
                shutil.rmtree(self._root_dir, ignore_errors=True)
        _live.discard(self)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # --------------------------------------------------------------------------------------- internals

    def _describe(self) -> str:
        cfg = self.config
        net = "network shared with the host" if cfg.network else "network (no interfaces)"
        layers = []
        if self.mode == "namespaces":
            scratch = (f"a {cfg.disk_mb} MB scratch tmpfs" if self._own_scratch
                       else "the given scratch directory")
            layers.append(f"Linux namespaces: {net}, pid, ipc, uts, and mount with a private read-only root "
                          f"(/usr, /lib*, Python, /dev nodes, /proc, {scratch})")
        elif self.mode == "user-namespaces":
            layers.append(f"Linux user namespace with {net}, pid and ipc namespaces")
        else:
            layers.append("no namespaces" + (" (network allowed)" if cfg.network else ""))
        layers.append(f"uid {self.uid} (unprivileged, no_new_privs)" if self.uid is not None else
                      "uid unchanged" + (" (root!)" if os.geteuid() == 0 else f" ({os.geteuid()})"))
        layers.append(f"rlimits: memory {cfg.memory_mb} MB, CPU {cfg.cpu_seconds} s per call, "
                      f"{cfg.max_processes} processes, files up to {cfg.file_mb} MB, "
                      f"{cfg.max_open_files} open files; wall clock {cfg.wall_seconds:g} s per call")
        if cfg.audit_hook:
            layers.append("audit hook: files outside scratch, processes, ctypes, gc introspection"
                          + ("" if cfg.network else ", network"))
        else:
            layers.append("audit hook off")
        return "; ".join(layers)

    def _env(self) -> dict[str, str]:
        s = str(self.scratch)
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": s, "TMPDIR": s, "LANG": "C.UTF-8",
                "LC_ALL": "C.UTF-8", "TZ": "UTC", "USER": "sandbox", "LOGNAME": "sandbox",
                # one thread per numeric library keeps RLIMIT_NPROC and RLIMIT_AS meaningful
                "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def _start(self) -> str | None:
        """Start the worker; an error message on failure."""
        import subprocess

        cfg = self.config
        if self.uid is not None:
            nproc = cfg.max_processes
        else:   # the limit counts every process of the uid, so leave room for the ones already running
            nproc = _count_processes(os.getuid()) + 1 + cfg.max_processes   # + 1: the supervisor
        init = {
            "scratch": str(self.scratch),
            # network=True keeps the host's network namespace; every other namespace stays
            "unshare": ({"namespaces": _ROOT_FLAGS, "user-namespaces": _USER_FLAGS}.get(self.mode, 0)
                        & ~(_CLONE_NEWNET if cfg.network else 0)),
            "root_dir": str(self._root_dir) if self._root_dir else None,
            "scratch_tmpfs": self._own_scratch,
            "disk_mb": math.ceil(cfg.disk_mb),
            "drop": [self.uid, self.uid] if self.uid is not None else None,
            # rlimits and mount options take whole numbers; fractional settings round up
            "limits": {"as": int(cfg.memory_mb * 2**20), "cpu": math.ceil(cfg.cpu_seconds),
                       "cpu_hard": math.ceil(max(cfg.cpu_seconds_lifetime, cfg.cpu_seconds + 1)),
                       "nproc": int(nproc), "fsize": int(cfg.file_mb * 2**20),
                       "nofile": int(cfg.max_open_files)},
            "audit_hook": cfg.audit_hook,
            "network": cfg.network,
        }
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        try:
            proc = subprocess.Popen(
                [self._python, "-I", "-B", "-u", _WORKER_FILE, "--sandbox-worker", str(req_r), str(resp_w)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                pass_fds=(req_r, resp_w), env=self._env(), cwd="/", start_new_session=True)
        except OSError as e:
            for fd in (req_r, req_w, resp_r, resp_w):
                os.close(fd)
            return f"could not start the Python worker: {e}"
        os.close(req_r)
        os.close(resp_w)
        self._proc, self._req_w, self._resp_r = proc, req_w, resp_r
        self._worker_pid, self._resp_buf = None, bytearray()
        self._out_fd = proc.stdout.fileno()
        os.set_blocking(self._resp_r, False)
        os.set_blocking(self._out_fd, False)
        out = _Output(4000)
        try:
            _send(req_w, init)
            frame, died = self._wait(time.monotonic() + cfg.startup_seconds, out)
        except OSError:
            frame, died = None, self._exit_info()
        if frame and frame.get("ready"):
            return None
        log = out.render()[0].strip()
        self._kill()
        why = "did not start in time" if not died else f"exited during start-up ({died})"
        return f"the sandbox worker {why}" + (f":\n{log[-2000:]}" if log else "")

    def _wait(self, deadline: float, out: _Output) -> tuple[dict | None, str | None]:
        """Collect output until a result frame arrives, the worker dies or the deadline passes.

        Returns (frame, None), (None, how-it-died) or (None, None) on timeout. A single thread selects on
        both pipes, so output can never fill its pipe and stall the worker, and everything the worker wrote
        before its result frame is in hand when the frame is.
        """
        import select

        buf = self._resp_buf   # kept across calls: a frame that arrives with another one is not lost
        open_fds = [self._resp_r, self._out_fd]
        while True:
            while len(buf) >= 4:
                n = struct.unpack(">I", buf[:4])[0]
                if n > _MAX_FRAME or len(buf) < 4 + n:
                    break
                frame = json.loads(bytes(buf[4:4 + n]))
                del buf[:4 + n]
                if "worker" in frame:   # the supervisor says which process is the worker
                    self._worker_pid = frame["worker"]
                    continue
                self._drain(out)
                if "exit" in frame:   # the supervisor reports how the worker ended
                    return None, self._exit_info(frame)
                return frame, None
            left = deadline - time.monotonic()
            if left <= 0:
                self._drain(out)
                return None, None
            ready, _, _ = select.select(open_fds, [], [], left)
            if self._out_fd in ready:
                if not self._read_into(self._out_fd, out):
                    open_fds.remove(self._out_fd)
            if self._resp_r in ready:
                try:
                    chunk = os.read(self._resp_r, 65536)
                except BlockingIOError:
                    chunk = None
                if chunk == b"":   # every writer is gone: the worker died
                    self._drain(out)
                    return None, self._exit_info()
                if chunk:
                    buf += chunk

    def _read_into(self, fd: int, out: _Output) -> bool:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if data:
            out.add(data)
        return bool(data)

    def _drain(self, out: _Output) -> None:
        while self._out_fd is not None:
            try:
                data = os.read(self._out_fd, 65536)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            out.add(data)

    def _exit_info(self, frame: dict | None = None) -> str:
        """A short description of how the worker process ended."""
        if frame is None:
            try:
                code = self._proc.wait(timeout=5)
            except Exception:
                return "ended for an unknown reason"
            frame = {"signal": -code} if code < 0 else {"code": code}
        if frame.get("signal"):
            sig = frame["signal"]
            hint = {signal.SIGKILL: " (a hard limit such as the lifetime CPU cap, the kernel's out-of-memory "
                                    "killer, or the code itself)",
                    signal.SIGSEGV: " — the interpreter crashed", signal.SIGXCPU: " — CPU time limit",
                    signal.SIGABRT: " — the interpreter aborted"}.get(sig, "")
            return f"was killed by {_signal_name(sig)}{hint}"
        return f"exited with code {frame.get('code')}"

    def _finish(self, frame: dict | None, died: str | None, out: _Output) -> SandboxResult:
        cfg = self.config
        lost = "The Python process was restarted: all variables, imports and files from earlier calls are lost."
        if frame is None:
            self._kill()
            text, truncated = out.render()
            if died is None:
                msg = (f"timeout: the code ran longer than {cfg.wall_seconds:g} s (wall clock) and was stopped. "
                       + lost)
                return SandboxResult(False, text, "timeout", msg, restarted=True, truncated=truncated)
            return SandboxResult(False, text, "killed", f"killed: the Python process {died}. {lost}",
                                 restarted=True, truncated=truncated)
        text, truncated = out.render()
        notes = []
        kind = frame.get("kind", "exception")
        stray = self._stray_threads() if frame.get("ok") or kind not in ("memory", "timeout") else 0
        if stray:   # threads may not outlive their call (they would run on between calls): restart
            self._kill()
            notes.append(f"the code left {stray} thread{'s' if stray != 1 else ''} running when the call ended; "
                         f"threads may not outlive a call, so the{lost[3:]}")
        if frame.get("ok"):
            return SandboxResult(True, text, truncated=truncated, restarted=bool(stray), notes=notes)
        message = frame.get("message", "")
        if kind == "memory":
            self._kill()
            return SandboxResult(False, text, "memory",
                                 f"memory: the code needed more than the {cfg.memory_mb} MB memory limit "
                                 f"({message}). {lost}", restarted=True, truncated=truncated)
        if kind == "timeout":
            self._kill()
            return SandboxResult(False, text, "timeout",
                                 f"timeout: the code used more than {cfg.cpu_seconds} s of CPU time and was "
                                 f"stopped. {lost}", restarted=True, truncated=truncated)
        return SandboxResult(False, text, kind, message, truncated=truncated, restarted=bool(stray), notes=notes)

    def _stray_threads(self, grace: float = 0.3) -> int:
        """Threads of the worker besides its main one once a call has returned (those about to end get a
        short grace). Counted from outside, in /proc, so the code cannot hide them."""
        pid = self._worker_pid
        deadline = time.monotonic() + grace
        while pid is not None:
            try:
                n = len(os.listdir(f"/proc/{pid}/task")) - 1
            except OSError:
                return 0
            if n <= 0 or time.monotonic() >= deadline:
                return max(n, 0)
            time.sleep(0.02)
        return 0

    def _kill(self) -> None:
        import subprocess

        proc, self._proc = self._proc, None
        self._worker_pid = None
        if proc is not None:
            if proc.poll() is None:
                # The supervisor kills the worker, reaps it (and, as the worker is init of its pid namespace,
                # the kernel first removes everything it started), reports and exits: nothing is left over.
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:   # still ours to signal (not yet reaped, so its pgid is not reused)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)   # the whole group: worker and its children
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            if proc.stdout is not None:
                proc.stdout.close()
        for name in ("_req_w", "_resp_r"):
            fd = getattr(self, name)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, None)
        self._out_fd = None


_live: "weakref.WeakSet[Sandbox]" = weakref.WeakSet()   # closed at exit, so no worker outlives us


@atexit.register
def _close_all() -> None:
    for sb in list(_live):
        try:
            sb.close()
        except Exception:
            pass


# ------------------------------------------------------------------------------------------- worker side

class SandboxViolation(PermissionError):
    """Raised by the worker's audit hook when the code tries something the sandbox does not allow."""


class CpuTimeExceeded(BaseException):
    """Raised on SIGXCPU; a BaseException so that ``except Exception`` in the code does not swallow it."""


_in_user_code = False
_worker_pid = -1


def _on_sigxcpu(signum, frame):
    if _in_user_code:
        raise CpuTimeExceeded("CPU time limit exceeded")


def _libc():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)

    def check(ret: int, what: str) -> None:
        if ret != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"{what}: {os.strerror(e)}")
    return libc, ctypes, check


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    libc, ctypes, check = _libc()
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    check(libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _bind(src: str, dst: str, readonly: bool, nodev: bool = True) -> None:
    _mount(src, dst, None, _MS_BIND | _MS_REC)
    flags = _MS_BIND | _MS_REMOUNT | _MS_NOSUID | (_MS_NODEV if nodev else 0) | (_MS_RDONLY if readonly else 0)
    _mount(None, dst, None, flags)


def _touch(path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


def _build_root(init: dict) -> None:
    """Assemble a private read-only root in this (new) mount namespace and chroot into it."""
    r = init["root_dir"]
    uid, gid = init["drop"] or (0, 0)
    _mount("tmpfs", r, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=8m,mode=0755")
    bound: list[str] = []
    for name in ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        src = "/" + name
        if os.path.islink(src):   # merged-/usr systems: /bin -> usr/bin
            os.symlink(os.readlink(src), r + src)
        elif os.path.isdir(src):
            os.mkdir(r + src)
            _bind(src, r + src, readonly=True)
            bound.append(src)
    etc = ["/etc/ld.so.cache", "/etc/localtime"]
    if init["network"]:   # name resolution and TLS roots
        etc += ["/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/ssl",
                "/etc/ca-certificates", "/etc/pki"]
    for src in etc:
        if os.path.isdir(src):
            os.makedirs(r + src)
            _bind(src, r + src, readonly=True)
        elif os.path.exists(src):
            _touch(r + src)
            _bind(src, r + src, readonly=True)
    # The interpreter and its libraries, at the same paths, even where a parent dir (e.g. /root) is private.
    for prefix in sorted({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}):
        real = os.path.realpath(prefix)
        if not any(real == b or real.startswith(b + "/") for b in bound):
            os.makedirs(r + real, exist_ok=True)
            _bind(real, r + real, readonly=True)
            bound.append(real)
        if prefix != real and not os.path.lexists(r + prefix):
            os.makedirs(os.path.dirname(r + prefix), exist_ok=True)
            os.symlink(real, r + prefix)
    os.makedirs(r + "/dev")
    for name in ("null", "zero", "full", "random", "urandom"):
        _touch(r + "/dev/" + name)
        _bind("/dev/" + name, r + "/dev/" + name, readonly=False, nodev=False)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{r}/dev/{name}")
    os.makedirs(r + "/proc")
    _mount("proc", r + "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)   # this pid namespace only
    scratch = init["scratch"]
    os.makedirs(r + scratch, exist_ok=True)
    if init["scratch_tmpfs"]:
        _mount("tmpfs", r + scratch, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
               f"size={init['disk_mb']}m,mode=0700,uid={uid},gid={gid}")
    else:
        _bind(scratch, r + scratch, readonly=False)
    os.makedirs(r + "/tmp", exist_ok=True)
    _mount(None, r, None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    os.chroot(r)
    os.chdir("/")


def _set_limits(lim: dict) -> None:
    import resource as rs
    rs.setrlimit(rs.RLIMIT_CORE, (0, 0))
    rs.setrlimit(rs.RLIMIT_AS, (lim["as"], lim["as"]))
    rs.setrlimit(rs.RLIMIT_CPU, (lim["cpu_hard"], lim["cpu_hard"]))
    rs.setrlimit(rs.RLIMIT_NPROC, (lim["nproc"], lim["nproc"]))
    rs.setrlimit(rs.RLIMIT_FSIZE, (lim["fsize"], lim["fsize"]))
    rs.setrlimit(rs.RLIMIT_NOFILE, (lim["nofile"], lim["nofile"]))


def _arm_cpu(per_call: int, hard: int) -> None:
    """Give the next call ``per_call`` CPU seconds on top of what the worker has used so far."""
    import resource as rs
    ru = rs.getrusage(rs.RUSAGE_SELF)
    soft = min(hard, int(ru.ru_utime + ru.ru_stime) + 1 + per_call)
    rs.setrlimit(rs.RLIMIT_CPU, (soft, hard))


_child_pid = 0


def _on_sigterm(signum, frame):
    """Supervisor: the parent wants the worker gone; kill it here so that it is reaped here."""
    if _child_pid:
        os.kill(_child_pid, signal.SIGKILL)
    else:
        os._exit(1)


def _supervise(pid: int, req_fd: int, resp_fd: int) -> None:
    """The worker's parent (outside its pid namespace, if any): tell the parent which process the worker is,
    wait for it to end and report how, then exit. If the parent dies first (even by SIGKILL), every copy of
    the request pipe's write end is gone and the read end reports POLLHUP: the supervisor then kills the
    worker and its process group and exits, so nothing outlives its owner. (A pipe, not PR_SET_PDEATHSIG:
    that fires when the parent *thread* that started us exits, and sandboxes are started from worker threads.)
    """
    import select

    global _child_pid
    _child_pid = pid
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    try:
        _send(resp_fd, {"worker": pid})
    except OSError:
        pass
    poller = select.poll()
    poller.register(req_fd, 0)   # no events asked for: only POLLHUP/POLLERR, never the worker's requests
    try:
        poller.register(os.pidfd_open(pid), select.POLLIN)   # readable once the worker has exited
        wait_ms = None
    except (AttributeError, OSError):   # no pidfd (Linux < 5.3): look at the worker a few times a second
        wait_ms = 100
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done, status = pid, 0
        if done:
            break
        if any(fd == req_fd for fd, _ in poller.poll(wait_ms)):   # the parent is gone
            os.kill(pid, signal.SIGKILL)
            os.killpg(0, signal.SIGKILL)   # the worker's group, this process included
            os._exit(1)
    info = {"exit": True}
    if os.WIFSIGNALED(status):
        info["signal"] = os.WTERMSIG(status)
    else:
        info["code"] = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    try:
        _send(resp_fd, info)
    except OSError:
        pass
    os._exit(0)


def _read_roots() -> tuple[str, ...]:
    """Directories the code may read: the Python installation (stdlib, site-packages, the interpreter)."""
    import sysconfig
    roots = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            roots.add(os.path.realpath(p))
    prefixes = [os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)]
    for p in sys.path:
        rp = os.path.realpath(p) if p else ""
        if rp and any(rp == x or rp.startswith(x + "/") for x in prefixes):
            roots.add(rp)
    roots.add("/usr/share/zoneinfo")
    return tuple(sorted(roots))


def _install_audit_hook(scratch: str, read_roots: tuple[str, ...], network: bool) -> None:
    """The tripwire layer: refuse file, process, native-code and network operations the sandbox forbids.

    Every name the hook uses is bound here, in its closure, so code that monkeypatches modules or builtins
    cannot change what the hook sees; the hook's own state is immutable.
    """
    lstat, readlink, getcwd, fspath = os.lstat, os.readlink, os.getcwd, os.fspath
    getpid, getpgrp = os.getpid, os.getpgrp
    import stat as _stat
    S_ISLNK = _stat.S_ISLNK
    _type, _str, _bytes, _int, _any = type, str, bytes, int, any
    Violation = SandboxViolation
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    dev_read = frozenset({"/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"})
    dev_write = frozenset({"/dev/null"})
    process_events = frozenset({"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
                                "pty.spawn", "subprocess.Popen", "os.startfile"})
    introspection = frozenset({"gc.get_objects", "gc.get_referrers", "gc.get_referents"})
    blocked_imports = frozenset({"_posixsubprocess", "_testcapi", "_testinternalcapi"})
    # ctypes itself may be imported (numpy does, for its type definitions); what it must not do is load a
    # library, look a function up by name, or wrap a raw address. (It can still poke memory with
    # memmove/pointers, which raises no event: one of the limits this hook documents.)
    ctypes_blocked = frozenset({"ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.cdata", "ctypes.PyObj_FromPtr",
                                "ctypes.string_at", "ctypes.wstring_at", "ctypes.call_function"})
    net_events = frozenset() if network else frozenset({
        "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
        "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr", "socket.getnameinfo"})
    # event -> positions of path arguments that name something the call writes or changes
    write_args = {"os.mkdir": (0,), "os.rmdir": (0,), "os.remove": (0,), "os.rename": (0, 1),
                  "os.symlink": (1,), "os.link": (0, 1), "os.truncate": (0,), "os.chmod": (0,),
                  "os.chown": (0,), "os.utime": (0,), "os.chflags": (0,), "os.setxattr": (0,),
                  "os.removexattr": (0,), "shutil.rmtree": (0,), "shutil.chown": (0,)}
    list_events = frozenset({"os.listdir", "os.scandir"})
    scratch_prefix = scratch + "/"
    root_prefixes = tuple(r + "/" for r in read_roots)

    def resolve(path):
        """Absolute path with symlinks followed (like realpath); None for an open file descriptor."""
        t = _type(path)
        if t is _int:
            return None
        if t is _bytes:
            path = path.decode("utf-8", "surrogateescape")
        elif t is not _str:
            path = fspath(path)   # a PathLike; see the module docstring on what this cannot stop
            if _type(path) is _bytes:
                path = path.decode("utf-8", "surrogateescape")
            elif _type(path) is not _str:
                raise Violation("blocked by the sandbox: unsupported path object")
        if not path.startswith("/"):
            path = getcwd() + "/" + path
        todo = path.split("/")
        todo.reverse()
        parts: list = []
        hops = 0
        while todo:
            c = todo.pop()
            if c == "" or c == ".":
                continue
            if c == "..":
                if parts:
                    parts.pop()
                continue
            candidate = "/" + "/".join(parts) + ("/" if parts else "") + c
            try:
                st = lstat(candidate)
            except OSError:
                parts.append(c)
                continue
            if S_ISLNK(st.st_mode):
                hops += 1
                if hops > 40:
                    raise Violation("blocked by the sandbox: too many levels of symbolic links")
                target = readlink(candidate)
                if target.startswith("/"):
                    parts = []
                more = target.split("/")
                more.reverse()
                todo.extend(more)
            else:
                parts.append(c)
        return "/" + "/".join(parts)

    def in_scratch(p):
        return p == scratch or p.startswith(scratch_prefix)

    def readable(p):
        return in_scratch(p) or p in dev_read or p in read_roots or p.startswith(root_prefixes)

    def check_write(path, what):
        p = resolve(path)
        if p is not None and not in_scratch(p) and p not in dev_write:
            raise Violation(f"blocked by the sandbox: {what} {p!r} is not allowed; only the scratch "
                            f"directory {scratch} is writable")

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            p = resolve(path)
            if p is None:
                return
            writing = (flags or 0) & write_flags or (_type(mode) is _str and _any(ch in mode for ch in "wax+"))
            if writing:
                if not in_scratch(p) and p not in dev_write:
                    raise Violation(f"blocked by the sandbox: writing {p!r} is not allowed; only the scratch "
                                    f"directory {scratch} is writable")
            elif not readable(p):
                raise Violation(f"blocked by the sandbox: reading {p!r} is not allowed; the code may read "
                                f"only its scratch directory {scratch} and the Python libraries")
        elif event in list_events:
            p = resolve(args[0] if args[0] is not None else ".")
            if p is not None and not readable(p):
                raise Violation(f"blocked by the sandbox: listing {p!r} is not allowed outside the scratch "
                                f"directory {scratch}")
        elif event in write_args:
            for i in write_args[event]:
                check_write(args[i], event.split(".")[-1])
        elif event in process_events:
            raise Violation(f"blocked by the sandbox: starting processes ({event}) is not allowed")
        elif event in ctypes_blocked or (event == "ctypes.dlopen" and args[0] is not None):
            raise Violation(f"blocked by the sandbox: {event} (reaching native code through ctypes) "
                            "is not allowed")
        elif event == "import":
            name, filename = args[0], args[1]
            if name in blocked_imports:
                raise Violation(f"blocked by the sandbox: importing {name} is not allowed")
            if _type(filename) is _str and not filename.endswith((".py", ".pyc")):
                p = resolve(filename)
                if p is not None and not (p in read_roots or p.startswith(root_prefixes)):
                    raise Violation(f"blocked by the sandbox: loading native module {filename!r} is not allowed")
        elif event == "os.kill" or event == "os.killpg":
            target = args[0]
            if target != 0 and target != (getpid() if event == "os.kill" else getpgrp()):
                raise Violation(f"blocked by the sandbox: signalling other processes ({event}) is not allowed")
        elif event in introspection:
            raise Violation(f"blocked by the sandbox: {event} is not allowed")
        elif event in net_events:
            raise Violation(f"blocked by the sandbox: network access ({event}) is disabled")

    sys.addaudithook(hook)


def _seal_process_launcher() -> None:
    """Before the hook goes in: disable the C fork+exec primitive behind subprocess and multiprocessing
    (it raises no audit event of its own); getting the original back needs a re-import, which the hook
    refuses."""
    import _posixsubprocess

    def fork_exec(*args, **kwargs):
        raise SandboxViolation("blocked by the sandbox: starting processes is not allowed")
    _posixsubprocess.fork_exec = fork_exec


def _format_exception(e: BaseException, max_frames: int = 15) -> str:
    """A traceback of the user's frames only (the worker's own frames are dropped), last frames kept."""
    import traceback
    if isinstance(e, SyntaxError):
        return "".join(traceback.format_exception_only(type(e), e))
    te = traceback.TracebackException(type(e), e, e.__traceback__, compact=True)
    seen: set[int] = set()
    stack = [te]
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        frames = [f for f in t.stack if f.filename != _WORKER_FILE]
        t.stack = traceback.StackSummary.from_list(frames[-max_frames:])
        stack += [x for x in (t.__cause__, t.__context__) if x is not None]
    return "".join(te.format())


def _classify(e: BaseException) -> str:
    x, depth = e, 0
    while x is not None and depth < 10:
        if isinstance(x, SandboxViolation):
            return "blocked"
        x, depth = (x.__cause__ or x.__context__), depth + 1
    if isinstance(e, MemoryError):
        return "memory"
    if isinstance(e, CpuTimeExceeded):
        return "timeout"
    return "exception"


def _run_cell(code: str, n: int, ns: dict) -> dict:
    """Execute one call's code in the persistent namespace; print a final expression's repr."""
    global _in_user_code
    import ast
    import linecache
    name = f"<cell {n}>"
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)   # tracebacks show the source
    try:
        tree = ast.parse(code, name, "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        return _error_frame(e)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    try:
        body = compile(tree, name, "exec")
        tail = compile(last, name, "eval") if last is not None else None
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        return _error_frame(e)
    _in_user_code = True
    try:
        exec(body, ns)
        if tail is not None:
            value = eval(tail, ns)
            if value is not None:
                sys.displayhook(value)
    except BaseException as e:   # noqa: BLE001  everything the code raises is reported, never fatal
        _in_user_code = False
        return _error_frame(e)
    finally:
        _in_user_code = False
    return {"ok": True}


def _error_frame(e: BaseException) -> dict:
    if os.getpid() != _worker_pid:   # a process the code forked: it ends here, silently
        os._exit(1)
    kind = _classify(e)
    try:
        tb = _format_exception(e)
    except BaseException:   # noqa: BLE001  e.g. MemoryError while formatting
        tb = f"{type(e).__name__}: {e}\n"
    try:
        os.write(2, tb.encode("utf-8", "backslashreplace"))
    except OSError:
        pass
    lines = [ln for ln in tb.strip().splitlines() if ln.strip()]
    message = lines[-1] if lines else type(e).__name__
    return {"ok": False, "kind": kind, "message": message[:_MESSAGE_CHARS]}


def _reap() -> None:
    """The worker is init of its pid namespace: collect exited orphans so they do not pile up."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _worker_main(req_fd: int, resp_fd: int) -> None:
    init = _recv(req_fd)
    if init is None:
        os._exit(0)
    flags = init["unshare"]
    if flags:
        libc, _, check = _libc()
        check(libc.unshare(flags), "unshare")
        if flags & _CLONE_NEWNS:   # keep our mounts from propagating back to the host
            _mount("none", "/", None, _MS_REC | _MS_PRIVATE)
    signal.signal(signal.SIGTERM, _on_sigterm)
    pid = os.fork()   # the worker; with a pid namespace, its pid 1
    if pid:
        _supervise(pid, req_fd, resp_fd)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if init["root_dir"]:
        _build_root(init)
    _set_limits(init["limits"])
    if init["drop"]:
        uid, gid = init["drop"]
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise SystemExit("could not drop privileges")
    libc, _, check = _libc()
    check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    # die with the supervisor (which dies with the parent); set after setuid, which clears it
    check(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
    del libc, check
    os.chdir(init["scratch"])
    sys.argv = [""]
    sys.path.insert(0, init["scratch"])   # like a REPL's '': modules the code writes can be imported
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(errors="backslashreplace")
    signal.signal(signal.SIGXCPU, _on_sigxcpu)
    # Modules the worker needs later are loaded now, before the hook restricts what can be opened.
    import ast  # noqa: F401
    import importlib
    import linecache  # noqa: F401
    import resource  # noqa: F401
    import traceback  # noqa: F401
    import types
    user = types.ModuleType("__main__")   # the code's namespace; `import __main__` gives this, not the worker
    user.__dict__["__builtins__"] = __builtins__
    sys.modules["__main__"] = user
    ns = user.__dict__
    if init["audit_hook"]:
        roots = _read_roots()
        _seal_process_launcher()
        _install_audit_hook(init["scratch"], roots, init["network"])
    global _worker_pid
    _worker_pid = os.getpid()
    lim = init["limits"]
    _send(resp_fd, {"ready": True, "uid": os.getuid()})
    while True:
        req = _recv(req_fd)
        if req is None:   # the parent is gone
            os._exit(0)
        _arm_cpu(lim["cpu"], lim["cpu_hard"])
        importlib.invalidate_caches()   # files written by the previous call become importable
        result = _run_cell(req.get("code", ""), req.get("id", 0), ns)
        if os.getpid() != _worker_pid:   # a process the code forked finished the cell: only the worker answers
            os._exit(0)
        _reap()
        _send(resp_fd, result)


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--sandbox-worker":
    _worker_main(int(sys.argv[2]), int(sys.argv[3]))
