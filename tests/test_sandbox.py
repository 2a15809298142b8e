"""The code tool's sandbox against hostile snippets (each stopped or contained, with a clear message) and
against normal use. Tests marked "OS layer" switch the audit hook off to show that the kernel-level layers
(namespaces, unprivileged uid, rlimits) hold on their own; they need root and namespaces, else they skip."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from sleuth.tools.sandbox import Sandbox, SandboxConfig
from sleuth.tools.code import CodeTool

FAST = dict(wall_seconds=4, cpu_seconds=4, memory_mb=256, output_chars=1000, file_mb=1, disk_mb=4)


def run(tool: CodeTool, code: str):
    return tool({"code": code})


def processes_of(uid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.stat(entry.path).st_uid == uid:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.fixture(scope="module")
def tool():
    t = CodeTool(SandboxConfig(**FAST))
    yield t
    t.close()


@pytest.fixture(scope="module")
def bare():
    """Hook off: only namespaces, uid and rlimits stand between the code and the machine."""
    sb = Sandbox(SandboxConfig(**FAST, audit_hook=False))
    if sb.mode != "namespaces":
        sb.close()
        pytest.skip("needs root and Linux namespaces")
    yield sb
    sb.close()


@pytest.fixture(scope="module")
def server():
    """A real TCP server on the host's loopback, counting the connections it accepts."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.2)
    accepted = []
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                accepted.append(conn)
                conn.sendall(b"hello from the host\n")
            except OSError:
                pass
    th = threading.Thread(target=loop, daemon=True)
    th.start()
    yield srv.getsockname()[1], accepted
    stop.set()
    th.join()
    srv.close()


# ------------------------------------------------------------------------------------------ normal use

def test_arithmetic_and_final_expression(tool):
    r = run(tool, "2 ** 10")
    assert r.ok and r.text == "1024"
    r = run(tool, "print('a'); print('b')\n3 * 7")
    assert r.ok and r.text == "a\nb\n21"
    r = run(tool, "None")
    assert r.ok and r.text == "(no output)"


def test_state_persists_across_calls(tool):
    assert run(tool, "x = 41\ndef double(v):\n    return 2 * v").ok
    r = run(tool, "double(x + 1)")
    assert r.ok and r.text == "84"
    assert run(tool, "open('notes.txt', 'w').write('kept')").ok
    r = run(tool, "open('notes.txt').read()")
    assert r.ok and r.text == "'kept'"


def test_stdlib_imports(tool):
    code = ("import math, datetime, json, re, statistics, fractions\n"
            "print(math.factorial(10))\n"
            "print((datetime.date(2024, 3, 1) - datetime.date(2024, 2, 1)).days)\n"
            "print(json.dumps({'a': [1, 2]}))\n"
            "print(re.findall(r'\\d+', 'a1b22c333'))\n"
            "print(statistics.median([3, 1, 4, 1, 5]))\n"
            "print(fractions.Fraction(1, 3) + fractions.Fraction(1, 6))")
    r = run(tool, code)
    assert r.ok, r.text
    assert r.text.splitlines() == ["3628800", "29", '{"a": [1, 2]}', "['1', '22', '333']", "3", "1/2"]


def test_syntax_error_message(tool):
    r = run(tool, "def f(:\n    pass")
    assert not r.ok and r.error == "exception"
    assert "SyntaxError" in r.text and "<cell" in r.text
    assert r.data["message"].startswith("SyntaxError")


def test_exception_traceback_is_trimmed_to_user_frames(tool):
    r = run(tool, "def inner():\n    return 1 / 0\n\ndef outer():\n    return inner()\n\nouter()")
    assert not r.ok and r.error == "exception"
    assert r.data["message"] == "ZeroDivisionError: division by zero"
    assert "return 1 / 0" in r.text and "in outer" in r.text
    assert "sandbox.py" not in r.text   # the worker's own frames are not shown
    assert run(tool, "x").ok            # an exception keeps the state


def test_bad_arguments_are_observations(tool):
    assert tool({"code": 5}).error == "bad_arguments"
    assert tool({}).error == "bad_arguments"
    assert run(tool, "   ").error == "bad_arguments"


def test_output_flood_is_truncated(tool):
    r = run(tool, "for i in range(100000):\n    print(i)")
    assert r.ok and r.data["truncated"]
    assert "output truncated" in r.text and "bytes omitted" in r.text
    assert len(r.text) < 1000 + 200
    assert r.text.startswith("0\n1\n2\n") and r.text.rstrip().endswith("99999")   # head and tail kept


# ---------------------------------------------------------------------------------------- hostile code

def test_infinite_loop_times_out_then_tool_works_again():
    with CodeTool(SandboxConfig(**{**FAST, "wall_seconds": 1.5})) as t:
        assert run(t, "y = 1").ok
        t0 = time.monotonic()
        r = run(t, "while True:\n    pass")
        assert time.monotonic() - t0 < 6
        assert not r.ok and r.error == "timeout"
        assert "1.5 s" in r.text and "restarted" in r.text and "lost" in r.text
        assert r.data["restarted"]
        r = run(t, "1 + 1")
        assert r.ok and r.text == "2"
        r = run(t, "y")   # the restart really did lose the state
        assert r.error == "exception" and "NameError" in r.text


def test_cpu_limit():
    with CodeTool(SandboxConfig(**{**FAST, "wall_seconds": 20, "cpu_seconds": 1})) as t:
        r = run(t, "while True:\n    pass")
        assert r.error == "timeout" and "CPU time" in r.text
        assert run(t, "2 + 2").text == "4"


def test_fork_bomb_blocked(tool):
    r = run(tool, "import os\nwhile True:\n    os.fork()")
    assert r.error == "blocked" and "starting processes" in r.text
    assert run(tool, "1").text == "1"


def test_fork_bomb_contained_by_rlimit_nproc(bare):
    """OS layer: RLIMIT_NPROC on the sandbox's own uid stops the bomb; the pid namespace reaps it."""
    r = bare.run("import os\nwhile True:\n    os.fork()")
    assert not r.ok and r.error in ("exception", "timeout")
    assert "Resource temporarily unavailable" in r.text or r.error == "timeout"
    assert len(processes_of(bare.uid)) <= bare.config.max_processes
    assert bare.run("6 * 7").output.strip() == "42"
    bare.restart()
    time.sleep(0.2)
    assert processes_of(bare.uid) == []   # nothing of the bomb outlives the worker


def test_huge_allocation(tool):
    r = run(tool, "big = bytearray(10**10)")
    assert not r.ok and r.error == "memory"
    assert "MemoryError" in r.text and "256 MB" in r.text and "restarted" in r.text
    r = run(tool, "chunks = []\nwhile True:\n    chunks.append(bytearray(10**6))")
    assert not r.ok and r.error in ("memory", "killed")
    assert "restarted" in r.text
    assert run(tool, "sum(range(10))").text == "45"


def test_network_blocked(tool, server):
    port, accepted = server
    r = run(tool, f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).recv(100)")
    assert r.error == "blocked" and "network" in r.text
    r = run(tool, "import socket\nsocket.create_connection(('8.8.8.8', 53), timeout=2)")
    assert r.error == "blocked"
    r = run(tool, "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=2)")
    assert not r.ok
    time.sleep(0.3)
    assert accepted == []


def test_network_namespace_has_no_route(bare, server):
    """OS layer: even a raw connect() reaches nothing, not even the host's loopback."""
    port, accepted = server
    code = ("import socket\ns = socket.socket()\ns.settimeout(2)\n"
            f"s.connect(('127.0.0.1', {port}))\ns.recv(100)")
    r = bare.run(code)
    assert r.error == "exception" and "Network is unreachable" in r.text
    r = bare.run("import socket\nsocket.create_connection(('8.8.8.8', 53), timeout=2)")
    assert r.error == "exception" and "unreachable" in r.text
    time.sleep(0.3)
    assert accepted == []


def test_network_true_reaches_the_host(server):
    """The switch works both ways: with network=True the same connection goes through."""
    port, _ = server
    with Sandbox(SandboxConfig(**FAST, network=True)) as sb:
        r = sb.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).recv(100)")
        assert r.ok and "hello from the host" in r.text, r.text
        assert sb.run("open('/etc/shadow')").error == "blocked"   # the other layers stay


def test_files_outside_scratch_refused(tool, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-42")
    secret.chmod(0o644)   # readable by anyone: only the sandbox itself can refuse it
    for code in ("open('/etc/shadow').read()", f"open({str(secret)!r}).read()",
                 f"import pathlib\npathlib.Path({str(secret)!r}).read_text()",
                 f"import os\nos.symlink({str(secret)!r}, 'link')\nopen('link').read()",
                 "import os\nos.listdir('/')", "open('/tmp/planted', 'w').write('x')"):
        r = run(tool, code)
        assert r.error == "blocked", (code, r.text)
        assert "blocked by the sandbox" in r.text
        assert "TOPSECRET" not in r.text


def test_files_outside_scratch_invisible(bare, tmp_path):
    """OS layer: the private root holds no /etc/shadow and none of the host's other files."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-42")
    secret.chmod(0o644)
    for path in ("/etc/shadow", str(secret), f"/proc/{os.getpid()}/environ"):
        r = bare.run(f"open({path!r}).read()")
        assert r.error == "exception" and "No such file or directory" in r.text, r.text
        assert "TOPSECRET" not in r.text
    r = bare.run("open('/usr/planted', 'w')")
    assert "Read-only file system" in r.text


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("SLEUTH_TEST_SECRET", "hunter2-do-not-leak")
    with CodeTool(SandboxConfig(**FAST)) as t:   # started after the variable was set
        r = run(t, "import os\nprint(os.environ.get('SLEUTH_TEST_SECRET'))\nprint(sorted(os.environ))")
        assert r.ok
        assert r.text.splitlines()[0] == "None"
        assert "hunter2" not in r.text
        r = run(t, f"open('/proc/{os.getpid()}/environ').read()")   # the parent's environment
        assert not r.ok and "hunter2" not in r.text


def test_huge_file_limited(tool):
    r = run(tool, "open('big.bin', 'wb').write(b'x' * (3 * 2**20))")
    assert r.error == "exception" and "File too large" in r.text
    assert run(tool, "1").ok   # EFBIG is an ordinary error: the worker lives on


def test_scratch_disk_quota(bare):
    r = bare.run("for i in range(8):\n    open(f'part{i}.bin', 'wb').write(b'x' * (2**20 - 4096))")
    assert r.error == "exception" and "No space left on device" in r.text


def test_subprocess_and_friends_blocked(tool):
    for code in ("import subprocess\nsubprocess.run(['id'])", "import os\nos.system('id')",
                 "import os\nos.posix_spawn('/bin/true', ['true'], {})",
                 "import os\nos.execv('/bin/sh', ['sh'])", "import pty\npty.spawn('sh')",
                 "import _posixsubprocess\n_posixsubprocess.fork_exec()"):
        r = run(tool, code)
        assert r.error == "blocked" and "starting processes" in r.text, (code, r.text)


def test_native_escapes_blocked(tool):
    for code in ("import ctypes\nctypes.CDLL(None).system(b'id')", "import ctypes\nctypes.CDLL('libc.so.6')",
                 "import ctypes\nctypes.c_char.from_address(0)", "import gc\ngc.get_objects()",
                 f"import os\nos.kill({os.getpid()}, 9)"):
        r = run(tool, code)
        assert r.error == "blocked", (code, r.text)


# ------------------------------------------------------------------------------------------- lifecycle

def test_isolation_described_and_scratch_removed():
    sb = Sandbox(SandboxConfig(**FAST))
    assert "rlimits" in sb.isolation and "audit hook" in sb.isolation
    if sb.mode == "namespaces":
        assert "network" in sb.isolation and sb.uid is not None and sb.warnings == []
    r = sb.run("import os\nos.getcwd()")
    assert r.ok and str(sb.scratch) in r.text
    assert sb.scratch.exists()
    sb.close()
    assert not sb.scratch.exists()
    assert sb.run("1").error == "unavailable"
    if sb.uid is not None:
        assert processes_of(sb.uid) == []


def test_without_namespaces_still_limited_and_says_so():
    with Sandbox(SandboxConfig(**FAST, namespaces=False)) as sb:
        assert sb.mode == "none"
        assert any("network" in w for w in sb.warnings)
        assert sb.run("import socket\nsocket.create_connection(('8.8.8.8', 53), timeout=2)").error == "blocked"
        assert sb.run("open('/etc/passwd').read()").error == "blocked"
        assert sb.run("bytearray(10**10)").error == "memory"
        assert sb.run("40 + 2").output.strip() == "42"


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="wall_seconds"):
        Sandbox(SandboxConfig(wall_seconds=0))
    t = CodeTool(SandboxConfig(memory_mb=-1))
    r = run(t, "1")
    assert r.error == "unavailable" and "memory_mb" in r.text


def test_caller_scratch_dir_kept(tmp_path: Path):
    d = tmp_path / "work"
    with Sandbox(SandboxConfig(**FAST, scratch_dir=d)) as sb:
        assert sb.run("import os\nos.getcwd()").ok
    assert d.exists()   # not ours to delete


# -------------------------------------------------------------------------------- nothing outlives its owner

def _tasks(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def _worker_of(sb: Sandbox) -> int:
    """The worker's pid (the child of the supervisor process, when there is one)."""
    pid = sb._proc.pid
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = f.read().split()
    return int(children[0]) if children else pid


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_threads_of_a_failing_call_do_not_outlive_it():
    """Threads started by a call (here until the thread limit makes it fail) would spin between calls: the
    worker is restarted instead, and the observation says so."""
    spin = "import threading, time\ndef spin():\n    while True:\n        time.sleep(0.001)\n"
    with Sandbox(SandboxConfig(**FAST)) as sb:
        assert sb.run("kept = 1").ok
        worker = _worker_of(sb)
        r = sb.run(spin + "while True:\n    threading.Thread(target=spin, daemon=True).start()")
        assert not r.ok and "can't start new thread" in r.text
        assert r.restarted and "threads" in r.text and "restarted" in r.text
        time.sleep(0.2)
        assert not _alive(worker)                       # the old worker and its threads are gone
        assert "NameError" in sb.run("kept").text       # and the restart really lost the state
        # a call that succeeds but leaves a thread behind is treated the same way
        worker = _worker_of(sb)
        r = sb.run(spin + "threading.Thread(target=spin, daemon=True).start()\n6 * 7")
        assert r.ok and r.output.strip() == "42" and r.restarted and "1 thread" in r.text
        time.sleep(0.2)
        assert not _alive(worker)
        # threads that end before the call returns are fine: the state is kept
        r = sb.run("import threading\ny = 5\nt = threading.Thread(target=lambda: None)\nt.start()\nt.join()\ny")
        assert r.ok and r.text == "5" and not r.restarted
        assert _tasks(_worker_of(sb)) == 1


_HOST = r"""
import json, sys, time
from sleuth.tools.sandbox import Sandbox, SandboxConfig
def _worker_of(sb):
    pid = sb._proc.pid
    children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    return int(children[0]) if children else pid
sb = Sandbox(SandboxConfig(wall_seconds=120, cpu_seconds=120))
assert sb.run("1").ok
print(json.dumps({"supervisor": sb._proc.pid, "worker": _worker_of(sb), "dirs": [str(sb.scratch), str(sb._root_dir)]}), flush=True)
sb.run("import time\ntime.sleep(3600)")
"""


@pytest.mark.parametrize("namespaces", [True, False])
def test_kill_9_of_the_host_ends_the_sandbox_and_its_directories_are_cleaned(namespaces, tmp_path):
    import json
    import signal
    import subprocess
    import sys

    code = _HOST.replace("wall_seconds=120", f"wall_seconds=120, namespaces={namespaces}")
    host = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=str(Path(__file__).resolve().parents[1]))
    try:
        info = json.loads(host.stdout.readline())
        time.sleep(0.5)                                   # the sleeping cell is running
        assert _alive(info["supervisor"]) and _alive(info["worker"])
        os.kill(host.pid, signal.SIGKILL)
        host.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (_alive(info["supervisor"]) or _alive(info["worker"])):
            time.sleep(0.05)
        assert not _alive(info["supervisor"]) and not _alive(info["worker"])
    finally:
        host.kill()
    dirs = [Path(d) for d in info["dirs"] if d != "None"]
    assert any(d.exists() for d in dirs)                  # kill -9 left them behind ...
    Sandbox(SandboxConfig(**FAST)).close()                # ... the next sandbox to start removes them
    assert not any(d.exists() for d in dirs)
