"""Dense search: all-MiniLM-L6-v2 sentence embeddings (CPU, sleuth.search.embedders) in a faiss
inner-product index.

Embeddings are L2-normalised float32, so inner product = cosine. Small corpora use an exact
``IndexFlatIP``; above ``DenseConfig.flat_max`` passages an ``IndexIVFFlat`` (k-means lists, exact
distances inside the probed lists) keeps query time flat; it trains in seconds where HNSW would take
many minutes to build on a few CPU cores.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from sleuth.search.docstore import DocStore
from sleuth.search.base import SearchEngine, SearchResponse, SearchResult
from sleuth.search.lexical import Ranked, batch_responses, to_results
from sleuth.search.embedders import (MODEL_NAME, Embedder, get_embedder, passage_text,  # noqa: F401
                                     load_sentence_transformer as load_embedder, st_dim as embedding_dim,
                                     st_embed as embed, st_encode as encode_queries)
from sleuth.search.embedders import _threads as threads

log = logging.getLogger(__name__)


@dataclass
class DenseConfig:
    max_tokens: int = 128
    """Word pieces kept per passage. The model was trained on 128; 256 is 3.5x slower on CPU for a
    0.987 cosine agreement on this corpus."""
    flat_max: int = 200_000
    """Up to this many passages the index is exact (IndexFlatIP); above it, IVF."""
    nprobe: int = 32
    """IVF lists searched per query."""
    query_cache: int = 4096
    """Query embeddings kept (least recently used dropped first)."""
    embedder: str = "auto"
    """'onnx-int8', 'torch', or 'auto' (onnx-int8 when ONNX Runtime works). An opened index uses the
    embedder that made its vectors."""


def build_faiss(emb: np.ndarray, config: DenseConfig):
    """Exact flat index for small corpora, IVF-Flat for large ones."""
    import faiss

    n, dim = emb.shape
    if n <= config.flat_max:
        index = faiss.IndexFlatIP(dim)
        index.add(emb)
        return index
    nlist = max(256, int(np.sqrt(n)))  # ~1000 lists at 1M: k-means trains in seconds on a few cores
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    sample = emb[np.sort(rng.choice(n, size=min(n, 50 * nlist), replace=False))]
    index.train(sample)
    for s in range(0, n, 100_000):
        index.add(emb[s:s + 100_000])
    index.nprobe = config.nprobe
    return index


def index_kind(index) -> str:
    return type(index).__name__


class DenseEngine(SearchEngine):
    name = "dense"

    def __init__(self, index_name: str, docs: DocStore, faiss_index, embedder: Callable[[], Embedder],
                 config: DenseConfig | None = None):
        """``embedder`` is a zero-argument callable so the model loads on the first query, not at open."""
        self.index_name = index_name
        self.docs = docs
        self.index = faiss_index
        self._embedder = embedder
        self.config = config or DenseConfig()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()
        if hasattr(self.index, "nprobe"):
            self.index.nprobe = self.config.nprobe
        self._flat = None
        if type(faiss_index).__name__ in ("IndexFlatIP", "IndexFlat") and faiss_index.ntotal:
            import faiss

            self._flat = faiss.rev_swig_ptr(faiss_index.get_xb(), faiss_index.ntotal * faiss_index.d).reshape(
                faiss_index.ntotal, faiss_index.d)

    @classmethod
    def load(cls, dense_dir: Path, index_name: str, docs: DocStore, max_tokens: int = 128,
             config: DenseConfig | None = None, embedder_kind: str = "torch") -> "DenseEngine":
        """``embedder_kind``: the embedder that made the index's vectors; queries are encoded by it."""
        import faiss

        index = faiss.read_index(str(dense_dir / "faiss.index"))
        return cls(index_name, docs, index, lambda: query_embedder(index_name, embedder_kind, max_tokens), config)

    def encode(self, queries: list[str]) -> np.ndarray:
        """Query embeddings: cached ones reused, the rest in one forward pass.

        The cache matters in RL rollouts, where the samples of one question often send the same query.
        """
        with self._cache_lock:
            out = [self._cache.get(q) for q in queries]
            for q, e in zip(queries, out):
                if e is not None:
                    self._cache.move_to_end(q)
        todo = list(dict.fromkeys(q for q, e in zip(queries, out) if e is None))
        if todo:
            fresh = dict(zip(todo, self._embedder().encode(todo)))
            with self._cache_lock:
                for q, e in fresh.items():
                    self._cache[q] = e
                while len(self._cache) > self.config.query_cache:
                    self._cache.popitem(last=False)
            out = [e if e is not None else fresh[q] for q, e in zip(queries, out)]
        return np.stack(out) if out else np.zeros((0, self.index.d), dtype=np.float32)

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()

    def rank(self, queries: list[str], n: int) -> list[Ranked]:
        live = [i for i, q in enumerate(queries) if q.strip()]
        out: list[Ranked] = [[] for _ in queries]
        if not live or n <= 0 or self.index.ntotal == 0:
            return out
        q = self.encode([queries[i] for i in live])
        scores, rows = self.knn(q, min(n, self.index.ntotal))
        for j, i in enumerate(live):
            out[i] = [(int(r), float(s)) for r, s in zip(rows[j], scores[j]) if r >= 0]
        return out

    def knn(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (len(q), k), best first.

        For an exact flat index a matrix product over the index's own vectors (a numpy view, no copy) is
        used: faiss scans small query batches one query at a time, which measured 2x slower here (8 queries
        x 28k passages: 36 ms vs 16 ms on a busy 2-core machine). Same results.

        The product streams the whole matrix once and is bound by memory bandwidth, which one core does not
        saturate: it is split into row blocks computed by one Python thread per core, each on one BLAS thread
        (``passages @ queries.T`` per block: 8.4 ms for 28k x 384 on one core against 12 ms for
        ``queries @ passages.T``; two blocks ~5.7 ms). Not BLAS's own threads: OpenBLAS workers busy-wait after
        the call, on the core the query encoder, BM25 and snippets need (a cold 8-query hybrid batch measured
        70 ms p50 with them, 62 ms on one BLAS thread; benchmarks/results/embedding_latency*.json).
        """
        if self._flat is None:
            return self.index.search(q, k)
        sims = _blocked_product(self._flat, q)   # (len(q), n)
        if k < sims.shape[1]:
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        else:
            top = np.tile(np.arange(sims.shape[1]), (len(q), 1))
        part = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-part, axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1)

    def search(self, query: str, k: int = 10) -> list[SearchResult]:
        return to_results(self.docs, self.index_name, query, self.rank([query], k)[0], self.name)

    def search_batch(self, queries: list[str], k: int = 10) -> list[SearchResponse]:
        return batch_responses(self, self.docs, self.index_name, queries, k, self.rank)


_BLAS = None
_PRODUCT_POOL: ThreadPoolExecutor | None = None
_BLOCK_MIN_ROWS = 8192
"""Below this many rows per block a thread hand-off costs more than the block's product."""


def _blocked_product(vectors: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``q @ vectors.T`` as (len(q), n) float32, computed as ``vectors[block] @ q.T`` over row blocks, one
    per worker thread (SLEUTH_THREADS or the CPU count), all on one BLAS thread (see DenseEngine.knn)."""
    global _PRODUCT_POOL
    n = len(vectors)
    workers = max(1, min(threads() or os.cpu_count() or 1, n // _BLOCK_MIN_ROWS))
    out = np.empty((n, len(q)), dtype=np.float32)
    qt = np.ascontiguousarray(q.T, dtype=np.float32)
    bounds = np.linspace(0, n, workers + 1).astype(int)

    def block(i: int) -> None:
        a, b = bounds[i], bounds[i + 1]
        np.matmul(vectors[a:b], qt, out=out[a:b])

    with _one_blas_thread():   # OpenBLAS's thread count is process-wide: set once, around every block
        if workers == 1:
            block(0)
        else:
            if _PRODUCT_POOL is None:
                _PRODUCT_POOL = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="dense-knn")
            list(_PRODUCT_POOL.map(block, range(workers)))
    return np.ascontiguousarray(out.T)


def _one_blas_thread():
    """numpy's BLAS limited to one thread for the block (threadpoolctl; a no-op context if it is missing)."""
    global _BLAS
    try:
        if _BLAS is None:
            from threadpoolctl import ThreadpoolController

            _BLAS = ThreadpoolController()
        return _BLAS.limit(limits=1, user_api="blas")
    except Exception:  # noqa: BLE001 - only a speed setting: never fail a search over it
        return contextlib.nullcontext()


_WARNED: set[tuple[str, str]] = set()


def query_embedder(index_name: str, kind: str, max_tokens: int) -> Embedder:
    """The embedder that made the index's vectors. When it cannot run here, the other embedder of the same
    model encodes the queries (cosine agreement ~0.99, benchmarks/results/embedding.json) and the user
    is told how to rebuild; an index made by the slower PyTorch embedder gets a hint to rebuild too."""
    try:
        emb = get_embedder(kind, max_tokens)
    except RuntimeError as e:
        emb = get_embedder("auto", max_tokens)
        reason = f"its vectors were made by the {kind} embedder, which cannot run here ({e})"
    else:
        reason = None
        if kind == "torch" and (index_name, kind) not in _WARNED:
            _WARNED.add((index_name, kind))
            log.warning("index %r was embedded by the PyTorch embedder, so its queries are too (slower); "
                        "rebuild it with `sleuth index SOURCE --name %s` to use the onnx-int8 embedder",
                        index_name, index_name)
    if reason and (index_name, kind) not in _WARNED:
        _WARNED.add((index_name, kind))
        log.warning("index %r: %s; encoding queries with the %s embedder instead (close but not identical "
                    "vectors); rebuild it with `sleuth index SOURCE --name %s` to re-embed every passage",
                    index_name, reason, emb.kind, index_name)
    return emb
