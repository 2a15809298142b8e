"""The one search interface every engine implements: local lexical/dense/hybrid and web APIs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field


@dataclass
class SearchResult:
    title: str
    url: str
    snippet: str
    score: float = 0.0
    passage_id: str | None = None  # set for corpus results
    engine: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResponse:
    """Results for one query; a failed query carries an error message instead of raising."""
    query: str
    results: list[SearchResult] = field(default_factory=list)
    error: str | None = None


class SearchError(RuntimeError):
    """A search backend failed in a way the caller should show as an observation."""


class SearchEngine:
    """Subclasses implement ``search``; ``search_batch`` runs queries concurrently by default.

    Engines that can batch natively (lexical/dense encode all queries at once) override search_batch.
    """

    name: str = "engine"

    def search(self, query: str, k: int = 10) -> list[SearchResult]:
        raise NotImplementedError

    def search_batch(self, queries: list[str], k: int = 10) -> list[SearchResponse]:
        def one(q: str) -> SearchResponse:
            try:
                return SearchResponse(q, self.search(q, k))
            except SearchError as e:
                return SearchResponse(q, [], str(e))

        if len(queries) <= 1:
            return [one(q) for q in queries]
        with ThreadPoolExecutor(max_workers=min(8, len(queries))) as pool:
            return list(pool.map(one, queries))


def shown_by_search(engine: SearchEngine, queries: list[str], k: int, batch: int = 64) -> dict[str, str]:
    """What searching each query shows in its top ``k`` results (titles and snippets, joined), searched in
    batches of ``batch`` — for checks that the environment can show something (an answer, the next entity)."""
    shown: dict[str, str] = {}
    for i in range(0, len(queries), batch):
        chunk = queries[i:i + batch]
        for q, resp in zip(chunk, engine.search_batch(chunk, k=k)):
            shown[q] = " ".join(f"{r.title} {r.snippet}" for r in resp.results[:k])
    return shown
