"""Passage storage for an index: one SQLite file, read by the browser, citations and synthesis."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Iterable, Iterator

from sleuth.search.corpus import Passage

SCHEMA = """
CREATE TABLE IF NOT EXISTS passages (
  row INTEGER PRIMARY KEY,   -- dense position: row i of the lexical/dense indexes is passage row i
  id TEXT UNIQUE NOT NULL,
  title TEXT NOT NULL,
  text TEXT NOT NULL,
  source TEXT NOT NULL,
  hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS passages_title ON passages(title);
"""


class DocStore:
    """Read-mostly passage store. Thread-safe for reads (one connection per thread)."""

    def __init__(self, path: str | Path, index_name: str = ""):
        self.path = Path(path)
        self.index_name = index_name
        self._local = threading.local()

    @property
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, check_same_thread=False)
            db.executescript(SCHEMA)
            self._local.db = db
        return db

    @staticmethod
    def write(path: str | Path, passages: Iterable[tuple[Passage, str]]) -> int:
        """Write (passage, content-hash) pairs in order; returns the count. Duplicate ids raise."""
        db = sqlite3.connect(path)
        db.executescript(SCHEMA)
        n = 0
        with db:
            for n, (p, h) in enumerate(passages, 1):
                db.execute("INSERT INTO passages(row,id,title,text,source,hash) VALUES (?,?,?,?,?,?)",
                           (n - 1, p.id, p.title, p.text, p.source, h))
        db.close()
        return n

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM passages").fetchone()[0]

    def get(self, pid: str) -> Passage | None:
        r = self._db.execute("SELECT id,title,text,source FROM passages WHERE id=?", (pid,)).fetchone()
        return Passage(*r) if r else None

    def get_row(self, row: int) -> Passage:
        r = self._db.execute("SELECT id,title,text,source FROM passages WHERE row=?", (int(row),)).fetchone()
        if r is None:
            raise IndexError(row)
        return Passage(*r)

    def get_rows(self, rows: list[int]) -> list[Passage]:
        if not rows:
            return []
        q = ",".join("?" * len(rows))
        found = {r[0]: Passage(*r[1:]) for r in self._db.execute(
            f"SELECT row,id,title,text,source FROM passages WHERE row IN ({q})", [int(x) for x in rows])}
        return [found[int(r)] for r in rows]

    def by_title(self, title: str) -> list[Passage]:
        return [Passage(*r) for r in self._db.execute(
            "SELECT id,title,text,source FROM passages WHERE title=? ORDER BY row", (title,))]

    def hashes(self) -> dict[str, int]:
        """content hash -> row, used to reuse embeddings on an incremental rebuild."""
        return {h: r for r, h in self._db.execute("SELECT row, hash FROM passages")}

    def __iter__(self) -> Iterator[Passage]:
        for r in self._db.execute("SELECT id,title,text,source FROM passages ORDER BY row"):
            yield Passage(*r)
