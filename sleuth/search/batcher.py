"""Cross-caller batching: many concurrent ``search_batch`` calls become one native engine call.

A search service answers rollout workers that each send a few queries at a time. Lexical scoring is per
query, but the dense encoder is far cheaper per query in one batch than in many small ones, and one
worker thread owning the engine keeps its state (MiniLM, faiss, SQLite) single-threaded. So callers put
their queries on a queue; one worker takes whatever is waiting (up to ``max_batch`` queries, waiting at
most ``max_wait`` for more once it has some), runs identical queries once, and hands each caller its own
responses. Calls with different ``k`` are ranked separately so results are exactly what a direct call gives.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from sleuth.search.base import SearchEngine, SearchResponse


class Overloaded(RuntimeError):
    """More queries are waiting than the batcher accepts: the caller should back off and retry."""


@dataclass
class BatchStats:
    batches: int = 0
    queries: int = 0          # queries asked by callers
    unique: int = 0           # queries actually ranked (duplicates within a batch run once)
    engine_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"batches": self.batches, "queries": self.queries, "unique_queries": self.unique,
                "engine_seconds": round(self.engine_seconds, 3),
                "mean_batch": round(self.unique / self.batches, 2) if self.batches else 0.0}


class BatchingEngine(SearchEngine):
    def __init__(self, engine: SearchEngine, max_batch: int = 64, max_wait: float = 0.002,
                 max_pending: int = 4096):
        if max_batch < 1 or max_pending < 1 or max_wait < 0:
            raise ValueError("max_batch and max_pending must be >= 1, max_wait >= 0")
        self.engine = engine
        self.name = engine.name
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_pending = max_pending
        self.stats = BatchStats()
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0                   # queries queued or being ranked
        self._lock = threading.Lock()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name=f"search-batcher-{engine.name}", daemon=True)
        self._worker.start()

    # ---------------------------------------------------------------- callers
    def submit(self, queries: list[str], k: int = 10) -> Future:
        """A future of ``list[SearchResponse]``; raises ``Overloaded`` when too many queries are waiting."""
        fut: Future = Future()
        if not queries:
            fut.set_result([])
            return fut
        with self._lock:
            if self._closed:
                raise RuntimeError("the search batcher is closed")
            if self._pending + len(queries) > self.max_pending:
                raise Overloaded(f"{self._pending} queries already waiting (limit {self.max_pending})")
            self._pending += len(queries)
        self._queue.put((list(queries), int(k), fut))
        return fut

    def search_batch(self, queries: list[str], k: int = 10) -> list[SearchResponse]:
        return self.submit(queries, k).result()

    def search(self, query: str, k: int = 10):
        resp = self.search_batch([query], k)[0]
        if resp.error:
            from sleuth.search.base import SearchError
            raise SearchError(resp.error)
        return resp.results

    @property
    def pending(self) -> int:
        return self._pending

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._queue.put(None)
        self._worker.join(timeout=5)

    # ---------------------------------------------------------------- worker
    def _take(self) -> list[tuple[list[str], int, Future]] | None:
        first = self._queue.get()
        if first is None:
            return None
        items, n = [first], len(first[0])
        deadline = time.monotonic() + self.max_wait
        while n < self.max_batch:
            timeout = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)   # let the loop see it after this batch
                break
            items.append(item)
            n += len(item[0])
        return items

    def _run(self) -> None:
        while True:
            items = self._take()
            if items is None:
                return
            by_k: dict[int, list[tuple[list[str], int, Future]]] = {}
            for it in items:
                by_k.setdefault(it[1], []).append(it)
            for k, group in by_k.items():
                self._answer(k, group)

    def _answer(self, k: int, group: list[tuple[list[str], int, Future]]) -> None:
        unique = list(dict.fromkeys(q for qs, _, _ in group for q in qs))
        t0 = time.perf_counter()
        try:
            responses = self.engine.search_batch(unique, k)
            by_query = {r.query: r for r in responses}
            error = None
        except Exception as e:  # noqa: BLE001 - every caller gets the failure as its queries' error
            by_query, error = {}, f"{type(e).__name__}: {e}"
        dt = time.perf_counter() - t0
        n_asked = sum(len(qs) for qs, _, _ in group)
        with self._lock:
            self._pending -= n_asked
            self.stats.batches += 1
            self.stats.queries += n_asked
            self.stats.unique += len(unique)
            self.stats.engine_seconds += dt
        for qs, _, fut in group:
            out = []
            for q in qs:
                r = by_query.get(q)
                out.append(SearchResponse(q, list(r.results), r.error) if r is not None
                           else SearchResponse(q, [], error or "the engine returned no response for this query"))
            fut.set_result(out)
