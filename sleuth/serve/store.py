"""The service's records: runs, their events, trajectories and results, in one SQLite file (WAL).

Every event is committed before it is announced, and a result is committed in the same transaction that
marks its run finished, so a server killed at any moment (``kill -9`` included) loses no finished run and
no event a client was shown. WAL lets readers (the API, live streams) go on while a run writes.

One connection serves all threads behind a lock: writes are small (one event, one status change) and
SQLite serialises writers anyway.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# queued -> running -> done | failed | cancelled; a run the server was stopped in is marked interrupted.
FINAL = ("done", "failed", "cancelled", "interrupted")
STATUSES = ("queued", "running", "waiting") + FINAL

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, title TEXT NOT NULL,
    params TEXT NOT NULL, created REAL NOT NULL, started REAL, finished REAL,
    result TEXT, error TEXT, attempts INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL, kind TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (run_id, seq));
CREATE TABLE IF NOT EXISTS trajectories (
    run_id TEXT NOT NULL, traj_id TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (run_id, traj_id));
CREATE TABLE IF NOT EXISTS artifacts (
    run_id TEXT NOT NULL, name TEXT NOT NULL, media_type TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (run_id, name));
"""


@dataclass
class Run:
    id: str
    kind: str
    status: str
    title: str
    params: dict[str, Any]
    created: float
    started: float | None
    finished: float | None
    result: dict[str, Any] | None
    error: str | None
    attempts: int

    def summary(self) -> dict[str, Any]:
        """What a history list shows: no result body."""
        answer = (self.result or {}).get("answer")
        return {"id": self.id, "kind": self.kind, "status": self.status, "title": self.title,
                "created": self.created, "started": self.started, "finished": self.finished,
                "error": self.error, "answer": answer}

    def to_dict(self) -> dict[str, Any]:
        return self.summary() | {"params": self.params, "result": self.result, "attempts": self.attempts}


def _dumps(obj: Any) -> str:
    # lone surrogates (from model text) must never make a write fail
    return json.dumps(obj, ensure_ascii=True)


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable against a killed process (the WAL is in the OS's hands once written); only a
        # power cut can lose the last transactions.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self, statements: list[tuple[str, tuple]]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ---------------------------------------------------------------- runs
    def create(self, kind: str, params: dict[str, Any], title: str) -> Run:
        run_id = uuid.uuid4().hex[:16]
        now = time.time()
        self._tx([("INSERT INTO runs (id, kind, status, title, params, created) VALUES (?, ?, 'queued', ?, ?, ?)",
                   (run_id, kind, title, _dumps(params), now)),
                  ("INSERT INTO events (run_id, seq, ts, kind, data) VALUES (?, 1, ?, 'status', ?)",
                   (run_id, now, _dumps({"status": "queued"})))])
        return self.get(run_id)

    def get(self, run_id: str) -> Run | None:
        rows = self._query("SELECT id, kind, status, title, params, created, started, finished, result, error, "
                           "attempts FROM runs WHERE id = ?", (run_id,))
        return _run(rows[0]) if rows else None

    def list(self, q: str = "", status: str = "", kind: str = "", limit: int = 50, before: float | None = None
             ) -> list[Run]:
        """Newest first; ``q`` matches the title (the question) and the answer, case-insensitively."""
        where, args = [], []
        if q:
            like = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append("(title LIKE ? ESCAPE '\\' OR json_extract(result, '$.answer') LIKE ? ESCAPE '\\')")
            args += [like, like]
        if status:
            where.append("status = ?")
            args.append(status)
        if kind:
            where.append("kind = ?")
            args.append(kind)
        if before is not None:
            where.append("created < ?")
            args.append(before)
        sql = ("SELECT id, kind, status, title, params, created, started, finished, result, error, attempts FROM runs"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created DESC LIMIT ?")
        return [_run(r) for r in self._query(sql, (*args, limit))]

    def unfinished(self) -> list[Run]:
        rows = self._query("SELECT id, kind, status, title, params, created, started, finished, result, error, "
                           "attempts FROM runs WHERE status NOT IN (?, ?, ?, ?) ORDER BY created", FINAL)
        return [_run(r) for r in rows]

    def counts(self) -> dict[str, int]:
        return {s: n for s, n in self._query("SELECT status, COUNT(*) FROM runs GROUP BY status")}

    # ---------------------------------------------------------------- state changes (each with its event)
    def _status_event(self, run_id: str, status: str, extra: dict[str, Any]) -> tuple[str, tuple]:
        return ("INSERT INTO events (run_id, seq, ts, kind, data) SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, 'status', ? "
                "FROM events WHERE run_id = ?", (run_id, time.time(), _dumps({"status": status, **extra}), run_id))

    def set_status(self, run_id: str, status: str, start: bool = False, **extra: Any) -> None:
        """``start``: the run begins an attempt (its start time and attempt count change)."""
        assert status in STATUSES, status
        sets = "status = ?"
        args: list[Any] = [status]
        if start:
            sets += ", started = ?, attempts = attempts + 1"
            args.append(time.time())
        self._tx([(f"UPDATE runs SET {sets} WHERE id = ?", (*args, run_id)),
                  self._status_event(run_id, status, extra)])

    def finish(self, run_id: str, status: str, result: dict[str, Any] | None = None, error: str | None = None,
               trajectories: list[dict[str, Any]] = (), artifacts: dict[str, tuple[str, str]] | None = None) -> None:
        """Mark a run finished with its result, trajectories and artifacts (name -> (media type, body)):
        all in one transaction, so a finished run is never half-written."""
        assert status in FINAL, status
        stmts = [("UPDATE runs SET status = ?, finished = ?, result = ?, error = ? WHERE id = ?",
                  (status, time.time(), None if result is None else _dumps(result), error, run_id))]
        for t in trajectories:
            stmts.append(("INSERT OR REPLACE INTO trajectories (run_id, traj_id, data) VALUES (?, ?, ?)",
                          (run_id, t.get("id", ""), _dumps(t))))
        for name, (media, body) in (artifacts or {}).items():
            stmts.append(("INSERT OR REPLACE INTO artifacts (run_id, name, media_type, body) VALUES (?, ?, ?, ?)",
                          (run_id, name, media, body)))
        stmts.append(self._status_event(run_id, status, {"error": error} if error else {}))
        self._tx(stmts)

    # ---------------------------------------------------------------- events
    def add_event(self, run_id: str, kind: str, data: dict[str, Any]) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (seq,) = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE run_id = ?",
                                          (run_id,)).fetchone()
                self._db.execute("INSERT INTO events (run_id, seq, ts, kind, data) VALUES (?, ?, ?, ?, ?)",
                                 (run_id, seq, time.time(), kind, _dumps(data)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return seq

    def events(self, run_id: str, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        rows = self._query("SELECT seq, ts, kind, data FROM events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                           (run_id, after, limit))
        return [{"seq": s, "ts": ts, "kind": k, "data": json.loads(d)} for s, ts, k, d in rows]

    def trajectories(self, run_id: str) -> list[dict[str, Any]]:
        return [json.loads(d) for (d,) in self._query("SELECT data FROM trajectories WHERE run_id = ?", (run_id,))]

    def artifact(self, run_id: str, name: str) -> tuple[str, str] | None:
        rows = self._query("SELECT media_type, body FROM artifacts WHERE run_id = ? AND name = ?", (run_id, name))
        return rows[0] if rows else None


def _run(row: tuple) -> Run:
    rid, kind, status, title, params, created, started, finished, result, error, attempts = row
    return Run(rid, kind, status, title, json.loads(params), created, started, finished,
               None if result is None else json.loads(result), error, attempts)
