"""Hybrid search: weighted reciprocal-rank fusion of the lexical and dense top-N lists.

RRF score of a passage = sum over engines of ``weight / (rrf_k + rank)`` (rank from 1). Ranks, not raw
scores, are fused because BM25 and cosine scores live on unrelated scales. The two engines run
concurrently (numpy, faiss and torch release the GIL).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sleuth.search.base import SearchEngine, SearchResponse, SearchResult
from sleuth.search.dense import DenseEngine
from sleuth.search.lexical import LexicalEngine, Ranked, batch_responses, to_results


@dataclass
class HybridConfig:
    rrf_k: int = 10
    """RRF damping constant. The customary 60 flattens the top ranks; on the dev questions 10 gives
    all@10 hotpotqa 0.72 vs 0.65 at 60 (equal weights) — see benchmarks/results/retrieval.json."""
    pool: int = 50
    """Candidates taken from each engine before fusion."""
    lexical_weight: float = 1.0
    dense_weight: float = 0.7
    """Dense is the weaker engine on the entity-heavy multi-hop questions, the stronger one on NQ."""


def rrf(lists: list[Ranked], weights: list[float], rrf_k: int, k: int) -> Ranked:
    fused: dict[int, float] = {}
    for ranked, w in zip(lists, weights):
        for rank, (row, _) in enumerate(ranked, 1):
            fused[row] = fused.get(row, 0.0) + w / (rrf_k + rank)
    return sorted(fused.items(), key=lambda x: (-x[1], x[0]))[:k]


class HybridEngine(SearchEngine):
    name = "hybrid"

    def __init__(self, lexical: LexicalEngine, dense: DenseEngine, config: HybridConfig | None = None):
        self.lexical = lexical
        self.dense = dense
        self.config = config or HybridConfig()
        self.index_name = lexical.index_name
        self.docs = lexical.docs
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hybrid-dense")

    def rank(self, queries: list[str], n: int) -> list[Ranked]:
        c = self.config
        pool = max(c.pool, n)
        dense_future = self._pool.submit(self.dense.rank, queries, pool)  # encoder runs while BM25 scores
        lex = self.lexical.rank(queries, pool)
        dense = dense_future.result()
        return [rrf([l, d], [c.lexical_weight, c.dense_weight], c.rrf_k, n) for l, d in zip(lex, dense)]

    def search(self, query: str, k: int = 10) -> list[SearchResult]:
        return to_results(self.docs, self.index_name, query, self.rank([query], k)[0], self.name)

    def search_batch(self, queries: list[str], k: int = 10) -> list[SearchResponse]:
        return batch_responses(self, self.docs, self.index_name, queries, k, self.rank)
