"""Runs: kinds registered by name, a queue with a concurrency limit, live events, cancel, restart recovery.

A *kind* is a runner ``runner(params, emit, cancel) -> result`` with a parameter check. The runner calls
``emit(kind, data)`` for every event worth showing (each is committed to the store, then announced to live
streams) and watches ``cancel`` (a ``threading.Event``); it returns a JSON-able result. Two keys of the
result are stored apart: ``trajectories`` (a list of trajectory dicts) and ``artifacts`` (name -> [media
type, body], e.g. a report's HTML). A runner that needs answers from the person (clarifying questions)
calls ``emit.ask(questions)``, which waits for ``RunManager.answer`` or cancel.

After a restart every run left unfinished is dealt with before new work starts: queued runs are queued
again; runs that were running restart from the beginning when their kind is ``restartable`` (at most
``max_attempts`` times, so a run that kills the server cannot loop), otherwise they are marked
``interrupted`` with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from sleuth.serve.store import FINAL, Run, Store

log = logging.getLogger("sleuth.serve")


class Cancelled(Exception):
    """Raised inside a runner (usually from an event callback) when its run was cancelled."""


class ParamError(ValueError):
    """A run's parameters are wrong; the message names the field (shown to the client as a 400)."""


class QueueFull(RuntimeError):
    pass


Runner = Callable[[dict[str, Any], "Emitter", threading.Event], dict[str, Any]]


@dataclass
class Kind:
    name: str
    runner: Runner
    check: Callable[[dict[str, Any]], dict[str, Any]]
    """Validates a request's params (ParamError naming the field) and returns them normalised."""
    title: Callable[[dict[str, Any]], str]
    restartable: bool = False
    """Rerun from the beginning when the server stopped during the run."""
    description: str = ""


class Registry:
    def __init__(self) -> None:
        self.kinds: dict[str, Kind] = {}

    def add(self, kind: Kind) -> None:
        self.kinds[kind.name] = kind

    def get(self, name: str) -> Kind:
        if name not in self.kinds:
            raise ParamError(f"unknown run kind {name!r} (this server runs: {', '.join(sorted(self.kinds))})")
        return self.kinds[name]


def check_fields(params: Any, allowed: dict[str, type | tuple], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The shape check every kind starts with: a JSON object, known fields only, the right JSON types."""
    if not isinstance(params, dict):
        raise ParamError("'params' must be a JSON object")
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ParamError(f"unknown field {unknown[0]!r} in params (allowed: {', '.join(allowed)})")
    for key in required:
        if params.get(key) is None:
            raise ParamError(f"params.{key} is required")
    for key, value in params.items():
        want = allowed[key]
        if value is None:
            continue
        if isinstance(value, bool) and bool not in (want if isinstance(want, tuple) else (want,)):
            raise ParamError(f"params.{key} has the wrong type (boolean)")
        if not isinstance(value, want):
            raise ParamError(f"params.{key} has the wrong type ({type(value).__name__})")
    return {k: v for k, v in params.items() if v is not None}


class Emitter:
    """``emit(kind, data)`` for one run; ``ask(questions)`` waits for the person's answers."""

    def __init__(self, manager: "RunManager", run_id: str, cancel: threading.Event):
        self.manager, self.run_id, self.cancel = manager, run_id, cancel

    def __call__(self, kind: str, data: dict[str, Any] | None = None) -> None:
        self.manager.emit(self.run_id, kind, data or {})

    def ask(self, questions: list[str], timeout_s: float | None = None) -> list[str] | None:
        """Show clarifying questions and wait for answers (None on timeout). Cancel raises ``Cancelled``."""
        box: queue.Queue = queue.Queue(maxsize=1)
        self.manager._answers[self.run_id] = box
        for i, q in enumerate(questions):
            self("question", {"index": i, "question": q, "of": len(questions)})
        self.manager.store.set_status(self.run_id, "waiting", questions=questions)
        self.manager._notify(self.run_id)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while True:
                if self.cancel.is_set():
                    raise Cancelled()
                try:
                    answers = box.get(timeout=0.2)
                    break
                except queue.Empty:
                    if deadline is not None and time.monotonic() > deadline:
                        answers = None
                        break
        finally:
            self.manager._answers.pop(self.run_id, None)
        self("answers", {"answers": answers or [], "timed_out": answers is None})
        self.manager.store.set_status(self.run_id, "running")
        self.manager._notify(self.run_id)
        return answers


class RunManager:
    def __init__(self, store: Store, registry: Registry, concurrency: int = 2, max_queued: int = 64,
                 max_attempts: int = 3):
        self.store, self.registry = store, registry
        self.concurrency, self.max_queued, self.max_attempts = concurrency, max_queued, max_attempts
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._cancels: dict[str, threading.Event] = {}
        self._answers: dict[str, queue.Queue] = {}
        self._watchers: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._watch_lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self.stopping = False
        self.recovered: dict[str, int] = {}

    # ---------------------------------------------------------------- life
    def start(self) -> None:
        self.recovered = self.recover()
        for i in range(self.concurrency):
            t = threading.Thread(target=self._work, name=f"sleuth-run-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def stop(self, wait_s: float = 10.0) -> None:
        """Stop taking work; running runs are asked to stop and stay unfinished, to be resumed on restart."""
        self.stopping = True
        for ev in list(self._cancels.values()):
            ev.set()
        for _ in self._workers:
            self._queue.put(None)
        deadline = time.monotonic() + wait_s
        for t in self._workers:
            t.join(max(0.0, deadline - time.monotonic()))

    def recover(self) -> dict[str, int]:
        counts = {"requeued": 0, "restarted": 0, "interrupted": 0}
        for run in self.store.unfinished():
            kind = self.registry.kinds.get(run.kind)
            if run.status == "queued" and kind is not None:
                self.store.add_event(run.id, "note", {"message": "the server restarted; the run is still queued"})
                self._queue.put(run.id)
                counts["requeued"] += 1
            elif kind is not None and kind.restartable and run.attempts < self.max_attempts:
                self.store.set_status(run.id, "queued", note="the server stopped during this run; it starts again "
                                                             f"from the beginning (attempt {run.attempts + 1})")
                self._queue.put(run.id)
                counts["restarted"] += 1
            else:
                why = ("the server stopped during this run" if kind is not None else
                       f"this server no longer runs kind {run.kind!r}")
                if kind is not None and kind.restartable:
                    why += f" {run.attempts} times; it is not started again"
                self.store.finish(run.id, "interrupted", error=why)
                counts["interrupted"] += 1
        return counts

    # ---------------------------------------------------------------- API
    def submit(self, kind_name: str, params: Any) -> Run:
        kind = self.registry.get(kind_name)
        params = kind.check(params if params is not None else {})
        if self._queue.qsize() >= self.max_queued:
            raise QueueFull(f"{self._queue.qsize()} runs are queued (the limit is {self.max_queued}); try later")
        run = self.store.create(kind.name, params, kind.title(params)[:300])
        self._queue.put(run.id)
        return run

    def cancel(self, run_id: str) -> Run | None:
        run = self.store.get(run_id)
        if run is None or run.status in FINAL:
            return run
        ev = self._cancels.get(run_id)
        if ev is not None:
            ev.set()          # the runner stops at its next event; the worker records the cancel
            self.emit(run_id, "note", {"message": "cancel requested"})
        else:                 # still queued: the worker will skip it
            self.store.finish(run_id, "cancelled", error="cancelled before it started")
            self._notify(run_id)
        return self.store.get(run_id)

    def answer(self, run_id: str, answers: list[str]) -> bool:
        box = self._answers.get(run_id)
        if box is None:
            return False
        try:
            box.put_nowait(answers)
        except queue.Full:
            return False
        return True

    def waiting_for_answers(self, run_id: str) -> bool:
        return run_id in self._answers

    def emit(self, run_id: str, kind: str, data: dict[str, Any]) -> None:
        self.store.add_event(run_id, kind, data)
        self._notify(run_id)

    # ---------------------------------------------------------------- live streams
    def watch(self, run_id: str) -> asyncio.Event:
        ev = asyncio.Event()
        with self._watch_lock:
            self._watchers.setdefault(run_id, set()).add((asyncio.get_running_loop(), ev))
        return ev

    def unwatch(self, run_id: str, ev: asyncio.Event) -> None:
        with self._watch_lock:
            watchers = self._watchers.get(run_id, set())
            for item in [w for w in watchers if w[1] is ev]:
                watchers.discard(item)
            if not watchers:
                self._watchers.pop(run_id, None)

    def _notify(self, run_id: str) -> None:
        with self._watch_lock:
            watchers = list(self._watchers.get(run_id, ()))
        for loop, ev in watchers:
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:      # that loop is closed: the stream is gone
                pass

    # ---------------------------------------------------------------- workers
    def _work(self) -> None:
        while True:
            run_id = self._queue.get()
            if run_id is None or self.stopping:
                return
            run = self.store.get(run_id)
            if run is None or run.status != "queued":
                continue          # cancelled while queued
            self._execute(run)

    def _execute(self, run: Run) -> None:
        kind = self.registry.kinds[run.kind]
        cancel = threading.Event()
        self._cancels[run.id] = cancel
        self.store.set_status(run.id, "running", start=True, attempt=run.attempts + 1)
        self._notify(run.id)
        emit = Emitter(self, run.id, cancel)
        t0 = time.monotonic()
        try:
            result = kind.runner(run.params, emit, cancel)
        except Cancelled:
            result = None
        except Exception as e:   # a runner's failure is the run's, never the server's
            log.error("run %s failed:\n%s", run.id, traceback.format_exc())
            if not self.stopping:
                self.store.finish(run.id, "failed", error=f"{type(e).__name__}: {e}")
                self._notify(run.id)
            self._cancels.pop(run.id, None)
            return
        self._cancels.pop(run.id, None)
        if self.stopping and cancel.is_set():
            return                # left unfinished on purpose: the next start resumes or marks it
        if cancel.is_set():
            self.store.finish(run.id, "cancelled", result=_public(result), error="cancelled",
                              trajectories=(result or {}).get("trajectories", []))
        else:
            result = result or {}
            arts = {name: (media, body) for name, (media, body) in (result.get("artifacts") or {}).items()}
            public = _public(result) | {"seconds": round(time.monotonic() - t0, 3)}
            self.store.finish(run.id, "done", result=public, trajectories=result.get("trajectories", []),
                              artifacts=arts)
        self._notify(run.id)


def _public(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """The result as stored on the run: trajectories and artifacts have their own tables."""
    if result is None:
        return None
    out = {k: v for k, v in result.items() if k not in ("trajectories", "artifacts")}
    if result.get("artifacts"):
        out["artifacts"] = sorted(result["artifacts"])
    return out
