"""A shared search service: one index, many rollout workers (`sleuth serve-search`).

    GET  /v1/health                 index name, passage count, engines, load
    POST /v1/search                 {"queries": [...], "k": 5, "engine": "auto"} -> one response per query
    GET  /v1/passage?id=ID          one passage (what `browse corpus://INDEX/ID` opens on a worker)

The engines and the result format are the search tool's: each response is ``{"query", "error", "results":
[{"title", "url", "snippet", "score", "passage_id", "engine"}]}`` — what ``sleuth search --json`` prints.
Concurrent requests are coalesced into one native engine call per engine (``sleuth.search.batcher``), so
64 workers sending 3 queries each cost one dense encode of the distinct queries, not 64.

Errors say what to fix: a malformed request is a 400 ``{"error": {"message", "type"}}`` naming the field;
an unknown passage 404; more queries waiting than ``max_pending`` a 429 with ``Retry-After`` (clients back
off and retry, see ``sleuth.search.remote``); an engine failure a per-query ``error``, never a crash.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from sleuth.search.batcher import BatchingEngine, Overloaded
from sleuth.search.index import ENGINE_KINDS, Index


@dataclass
class ServiceConfig:
    max_queries: int = 64
    """Queries in one request."""
    max_k: int = 100
    """Results per query."""
    max_query_chars: int = 1000
    """Characters in one query (a query is a few words; a page of text is a mistake)."""
    max_batch: int = 64
    """Queries ranked in one native engine call."""
    max_wait_ms: float = 2.0
    """How long the batcher waits for more queries once it has some."""
    max_pending: int = 4096
    """Queries waiting before new requests get 429."""


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request"):
        super().__init__(message)
        self.param, self.status, self.kind = param, status, kind


def _error(status: int, message: str, kind: str, param: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param}}, status_code=status,
                        headers=headers)


def check_search(body: Any, cfg: ServiceConfig, default_engine: str) -> tuple[list[str], int, str]:
    """(queries, k, engine) of a search request, or BadRequest naming the field that is wrong."""
    if not isinstance(body, dict):
        raise BadRequest('the request body must be a JSON object: {"queries": ["..."], "k": 5}')
    unknown = sorted(set(body) - {"queries", "k", "engine"})
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(map(repr, unknown))} (fields: queries, k, engine)",
                         unknown[0])
    queries = body.get("queries")
    if isinstance(queries, str):
        raise BadRequest('"queries" must be a list of strings, e.g. ["first query", "second query"]', "queries")
    if not isinstance(queries, list) or not queries:
        raise BadRequest('"queries" must be a non-empty list of strings', "queries")
    if len(queries) > cfg.max_queries:
        raise BadRequest(f"at most {cfg.max_queries} queries per request, got {len(queries)}", "queries")
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise BadRequest(f"queries[{i}] must be a string, got {type(q).__name__}", f"queries[{i}]")
        if not q.strip():
            raise BadRequest(f"queries[{i}] is empty", f"queries[{i}]")
        if len(q) > cfg.max_query_chars:
            raise BadRequest(f"queries[{i}] is {len(q)} characters long (at most {cfg.max_query_chars})",
                             f"queries[{i}]")
    k = body.get("k", 5)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= cfg.max_k:
        raise BadRequest(f'"k" must be an integer from 1 to {cfg.max_k}, got {k!r}', "k")
    engine = body.get("engine") or default_engine
    if engine not in ENGINE_KINDS:
        raise BadRequest(f'"engine" must be one of {", ".join(ENGINE_KINDS)}, got {engine!r}', "engine")
    return [" ".join(q.split()) for q in queries], k, engine


class SearchService:
    """The index's engines, each behind its own batcher (made on first use)."""

    def __init__(self, index: Index, default_engine: str = "auto", cfg: ServiceConfig | None = None):
        self.index = index
        self.cfg = cfg or ServiceConfig()
        self.default_engine = default_engine
        self.batchers: dict[str, BatchingEngine] = {}
        self.started = time.time()
        self.requests = 0
        self.engine(default_engine)   # load now: a bad index or engine fails at start, not on the first query

    def engine(self, kind: str) -> BatchingEngine:
        eng = self.index.engine(kind)           # ValueError for an engine this index lacks
        b = self.batchers.get(eng.name)
        if b is None:
            c = self.cfg
            b = self.batchers[eng.name] = BatchingEngine(eng, c.max_batch, c.max_wait_ms / 1000, c.max_pending)
        return b

    def warm(self) -> None:
        """Run one query so the first request does not pay for loading the embedding model."""
        self.engine(self.default_engine).search_batch(["warm up"], 1)

    def health(self) -> dict[str, Any]:
        kinds = ["lexical"] + (["dense", "hybrid"] if self.index.has_dense else [])
        return {"status": "ok", "index": self.index.name, "passages": len(self.index),
                "engines": kinds, "default_engine": self.index.engine(self.default_engine).name,
                "uptime_s": round(time.time() - self.started, 1), "requests": self.requests,
                "pending_queries": sum(b.pending for b in self.batchers.values()),
                "batching": {k: b.stats.to_dict() for k, b in self.batchers.items()},
                "loadavg": list(os.getloadavg())}

    def close(self) -> None:
        for b in self.batchers.values():
            b.close()


def create_app(service: SearchService) -> FastAPI:
    app = FastAPI(title="sleuth search", docs_url=None, redoc_url=None)
    app.state.service = service

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, e: BadRequest) -> JSONResponse:
        return _error(e.status, str(e), e.kind, e.param)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        what = {404: "not found: the endpoints are GET /v1/health, POST /v1/search, GET /v1/passage?id=ID",
                405: "method not allowed: POST /v1/search, GET /v1/health, GET /v1/passage?id=ID"}
        return _error(e.status_code, what.get(e.status_code, str(e.detail)), "invalid_request")

    @app.exception_handler(Exception)
    async def crash(_: Request, e: Exception) -> JSONResponse:
        return _error(500, f"search service error: {type(e).__name__}: {e}", "server_error")

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return service.health()

    @app.post("/v1/search")
    async def search(request: Request) -> JSONResponse:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest(f"the request body is not valid JSON ({len(raw)} bytes)") from None
        queries, k, kind = check_search(body, service.cfg, service.default_engine)
        try:
            batcher = service.engine(kind)
        except ValueError as e:
            raise BadRequest(str(e), "engine") from None
        t0 = time.perf_counter()
        try:
            fut = batcher.submit(queries, k)
        except Overloaded as e:
            return _error(429, f"search service busy: {e}; retry shortly", "overloaded", headers={"Retry-After": "1"})
        responses = await asyncio.wrap_future(fut)
        service.requests += 1
        return JSONResponse({
            "index": service.index.name, "engine": batcher.name, "seconds": round(time.perf_counter() - t0, 4),
            "responses": [{"query": r.query, "error": r.error, "results": [x.to_dict() for x in r.results]}
                          for r in responses]})

    @app.get("/v1/passage")
    async def passage(id: str | None = None) -> dict[str, Any]:  # noqa: A002 - the query parameter's name
        if not id:
            raise BadRequest("give the passage id: GET /v1/passage?id=ID", "id")
        p = service.index.docs.get(id)
        if p is None:
            raise BadRequest(f"no passage {id!r} in index {service.index.name!r}", "id", 404, "not_found")
        return {**p.to_dict(), "url": p.url(service.index.name)}

    return app
