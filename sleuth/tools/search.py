"""The agent's search tool: several queries per call, results deduplicated, one compact observation.

Observation format (results are numbered across the whole call, so the model can refer to them)::

    Query 1: "theory of relativity"
    [1] Theory of relativity
        corpus://wiki/w09012
        The theory of relativity usually encompasses two interrelated physics theories by Albert ...
    Query 2: "largest desert"
    (no results)
"""

from __future__ import annotations

import copy
from typing import Any

from sleuth.search.base import SearchEngine, SearchResponse, SearchResult
from sleuth.tools.base import Tool, ToolResult


class SearchTool(Tool):
    name = "search"
    description = ("Search the document collection. Pass several short, different queries at once "
                   "(for example one per entity or sub-question); each returns its best passages with a "
                   "title, a URL and a snippet. Results already shown for an earlier query are not repeated.")
    parameters = {
        "type": "object",
        "properties": {
            "queries": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 8,
                        "description": "search queries, run together"},
        },
        "required": ["queries"],
    }

    def __init__(self, engine: SearchEngine, k_per_query: int = 5, max_results: int = 20, max_queries: int = 8):
        if k_per_query < 1 or max_results < 1 or max_queries < 1:
            raise ValueError("k_per_query, max_results and max_queries must be at least 1")
        self.engine = engine
        self.k_per_query = k_per_query
        self.max_results = max_results
        self.max_queries = max_queries
        # Per-instance schema: the declared maxItems must match this instance's limit.
        self.parameters = copy.deepcopy(type(self).parameters)
        self.parameters["properties"]["queries"]["maxItems"] = max_queries

    def validate(self, args: Any) -> str | None:
        if isinstance(args, dict) and "query" in args and "queries" not in args:
            return 'search takes "queries": a list of strings, e.g. {"queries": ["first query", "second query"]}'
        err = super().validate(args)
        if err:
            return err
        queries = args["queries"]
        if not queries:
            return "search needs at least one query in \"queries\""
        if len(queries) > self.max_queries:
            return f"search takes at most {self.max_queries} queries per call, got {len(queries)}"
        for i, q in enumerate(queries, 1):
            if not q.strip():
                return f"search query {i} is empty"
        return None

    def run(self, queries: list[str]) -> ToolResult:
        queries = [" ".join(q.split()) for q in queries]
        unique = list(dict.fromkeys(queries))  # a repeated query is run once
        # Ask for a few extra per query so results already shown above can be replaced by new ones.
        fetch = self.k_per_query + min(5, self.k_per_query)
        try:
            responses = {r.query: r for r in self.engine.search_batch(unique, fetch)}
        except Exception as e:  # noqa: BLE001 - engines should not raise, but an observation beats a crash
            responses = {q: SearchResponse(q, [], f"{type(e).__name__}: {e}") for q in unique}
        return self._render(queries, responses)

    def _render(self, queries: list[str], responses: dict[str, SearchResponse]) -> ToolResult:
        shown: dict[str, int] = {}                    # url -> result number
        picked: list[list[SearchResult]] = []         # new results per query, before the budget
        repeats: list[list[int]] = []                 # numbers of earlier results a query also found
        seen_urls: set[str] = set()
        for qi, q in enumerate(queries):
            if queries.index(q) != qi:                # duplicate query: nothing new to show
                picked.append([])
                repeats.append([])
                continue
            resp = responses.get(q) or SearchResponse(q, [], "the search backend returned no response")
            new, again = [], []
            for r in resp.results:
                if r.url in seen_urls:
                    again.append(r.url)
                elif len(new) < self.k_per_query:
                    new.append(r)
                    seen_urls.add(r.url)
            picked.append(new)
            repeats.append(again)  # type: ignore[arg-type]

        # Budget: round-robin over queries so a late query still gets its best results in.
        kept: list[list[SearchResult]] = [[] for _ in queries]
        budget = self.max_results
        for depth in range(self.k_per_query):
            for qi, new in enumerate(picked):
                if budget and depth < len(new):
                    kept[qi].append(new[depth])
                    budget -= 1
        dropped = sum(map(len, picked)) - sum(map(len, kept))

        lines: list[str] = []
        urls: list[str] = []
        results: list[dict] = []
        n_errors = 0
        for qi, q in enumerate(queries):
            lines.append(f'Query {qi + 1}: "{q}"')
            first = queries.index(q)
            if first != qi:
                lines.append(f"(same as query {first + 1})")
                continue
            resp = responses.get(q)
            if resp is not None and resp.error:
                n_errors += 1
                lines.append(f"(search failed: {resp.error})")
                continue
            for r in kept[qi]:
                n = len(urls) + 1
                shown[r.url] = n
                urls.append(r.url)
                results.append({"n": n, "query": qi, **r.to_dict()})
                lines.append(f"[{n}] {r.title}\n    {r.url}\n    {r.snippet}")
            also = list(dict.fromkeys(shown[u] for u in repeats[qi] if u in shown))  # in this query's rank order
            if also:
                lines.append(f"(also matched {', '.join(f'[{n}]' for n in also)} above)")
            elif not kept[qi]:
                lines.append("(no results)" if not picked[qi] else "(results not shown: result budget spent)")
        if dropped:
            lines.append(f"({dropped} more results not shown: at most {self.max_results} per call)")
        text = "\n".join(lines)
        data = {"queries": queries, "urls": urls, "results": results}
        if n_errors == len(set(queries)):
            return ToolResult(text=text, ok=False, error="backend_error", data=data)
        return ToolResult(text=text, data=data)
