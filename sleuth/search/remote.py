"""The client of `sleuth serve-search`: a SearchEngine (and a passage store) backed by a shared service.

``RemoteSearchEngine("http://10.0.0.5:8765")`` behaves like a local engine: ``search_batch`` sends all
queries in one POST and returns one ``SearchResponse`` per query, with the service's results unchanged.
Faults are those of any web search API, handled the same way (``sleuth.search.web``): timeouts, dropped
connections, 429 (honouring Retry-After) and 5xx are retried with exponential backoff and jitter; a 4xx is
not; whatever still fails becomes each query's ``error``, which the search tool shows as an observation.
``RemoteDocStore`` opens ``corpus://INDEX/ID`` passages through the same service, so browse works on a
worker that has no copy of the index.
"""

from __future__ import annotations

from typing import Any

from sleuth.search.base import SearchError, SearchResponse, SearchResult
from sleuth.search.corpus import Passage
from sleuth.search.web import HttpSearchEngine

_RESULT_KEYS = ("title", "url", "snippet", "score", "passage_id", "engine")


class RemoteSearchEngine(HttpSearchEngine):
    """A `sleuth serve-search` service behind the SearchEngine interface."""

    name = "remote"
    label = "search service"

    def __init__(self, base_url: str, engine: str = "auto", timeout: float = 30.0, **kw: Any):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"search service URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.engine = engine
        super().__init__(timeout=timeout, **kw)
        self.label = f"search service {self.base_url}"
        self._info: dict[str, Any] | None = None

    def info(self) -> dict[str, Any]:
        """The service's /v1/health (index name, passage count, engines); cached after the first call."""
        if self._info is None:
            body = self._request("GET", f"{self.base_url}/v1/health")
            if not isinstance(body, dict) or not isinstance(body.get("index"), str):
                raise self._fail("malformed /v1/health answer (is this a sleuth search service?)")
            self._info = body
        return self._info

    @property
    def index_name(self) -> str:
        return self.info()["index"]

    def search(self, query: str, k: int = 10) -> list[SearchResult]:
        resp = self.search_batch([query], k)[0]
        if resp.error:
            raise SearchError(resp.error)
        return resp.results

    def search_batch(self, queries: list[str], k: int = 10) -> list[SearchResponse]:
        if not queries:
            return []
        asked = [" ".join(q.split()) if isinstance(q, str) else q for q in queries]
        blank = {i for i, q in enumerate(asked) if not isinstance(q, str) or not q}
        send = [q for i, q in enumerate(asked) if i not in blank]
        out: dict[int, SearchResponse] = {i: SearchResponse(str(queries[i]), [], f"{self.label}: empty query")
                                          for i in blank}
        if send:
            try:
                body = self._request("POST", f"{self.base_url}/v1/search",
                                     json={"queries": send, "k": int(k), "engine": self.engine})
                got = self._parse_batch(body, send)
            except SearchError as e:
                got = [SearchResponse(q, [], str(e)) for q in send]
            it = iter(got)
            for i in range(len(asked)):
                if i not in blank:
                    out[i] = next(it)
        # report under the caller's own query strings, as a local engine does
        return [SearchResponse(queries[i], out[i].results, out[i].error) for i in range(len(asked))]

    def _parse_batch(self, body: Any, sent: list[str]) -> list[SearchResponse]:
        rows = self._results_list(body, "responses")
        if len(rows) != len(sent):
            raise self._fail(f"malformed response: {len(rows)} responses for {len(sent)} queries")
        out = []
        for q, row in zip(sent, rows):
            if not isinstance(row, dict) or not isinstance(row.get("results", []), list):
                raise self._fail("malformed response: a response is not {query, error, results}")
            results = []
            for r in row.get("results") or []:
                if not isinstance(r, dict) or not isinstance(r.get("url"), str):
                    raise self._fail("malformed response: a result has no url")
                results.append(SearchResult(**{key: r[key] for key in _RESULT_KEYS if key in r}))
            err = row.get("error")
            out.append(SearchResponse(q, results, f"{self.label}: {err}" if err else None))
        return out

    def _client_error(self, code: int, detail: str) -> str:
        return f"HTTP {code} request rejected" + (f": {detail}" if detail else "")


class RemoteDocStore:
    """Passages of the service's index by id: the part of a DocStore that browse needs (``get``)."""

    def __init__(self, engine: RemoteSearchEngine):
        self.engine = engine
        self.index_name = engine.index_name

    def get(self, pid: str) -> Passage | None:
        try:
            body = self.engine._request("GET", f"{self.engine.base_url}/v1/passage", params={"id": pid})
        except SearchError as e:
            if "HTTP 404" in str(e):
                return None
            raise
        if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in ("id", "title", "text")):
            raise SearchError(f"{self.engine.label}: malformed passage answer for {pid!r}")
        return Passage(body["id"], body["title"], body["text"], body.get("source") or "")


def connect(base_url: str, engine: str = "auto", **kw: Any) -> tuple[RemoteSearchEngine, dict[str, RemoteDocStore]]:
    """The service's engine and ``{index name: passage store}``; fails now, clearly, if it is unreachable."""
    eng = RemoteSearchEngine(base_url, engine, **kw)
    try:
        eng.info()
    except SearchError as e:
        raise ValueError(f"cannot reach the search service: {e} (start one with `sleuth serve-search`)") from None
    return eng, {eng.index_name: RemoteDocStore(eng)}
