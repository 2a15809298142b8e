"""``sleuth serve``: the HTTP service — runs API with live events, the web page, the OpenAI-compatible endpoint
for the local policy (sleuth/serve/openai_api.py) and the MCP tools (sleuth/serve/mcp_server.py), one process.

    POST /api/runs                    {"kind": "ask", "params": {"question": "..."}} -> 201, the run
    GET  /api/runs?q=&status=&kind=   history, newest first (q searches questions and answers)
    GET  /api/runs/{id}               the run with its result
    GET  /api/runs/{id}/stream        server-sent events: everything so far, then live (Last-Event-ID resumes)
    GET  /api/runs/{id}/events?after= the same events as JSON
    POST /api/runs/{id}/cancel        stop a queued or running run
    POST /api/runs/{id}/answers       {"answers": [...]}: answers to a run's clarifying questions
    GET  /api/runs/{id}/trajectories  the agent's full records
    GET  /api/runs/{id}/report.html   a report run's HTML (sandboxed: no scripts, nothing fetched)
    GET  /api/kinds, /api/health
    /v1/...                           OpenAI-compatible chat completions (local policies)
    /mcp                              MCP over streamable HTTP
    /                                 the web page

Requests carry only what a run is about (a question, a step budget within the server's); nothing a request
sends can name a model, an index, a path or any other server-side setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from sleuth.serve.runs import ParamError, QueueFull, Registry, RunManager
from sleuth.serve.security import Guard, Router, SecurityConfig
from sleuth.serve.store import FINAL, Store

STATIC = ("index.html", "app.js", "style.css")
_MEDIA = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8"}
# The page's own assets only: no CDN, no inline scripts (inline styles: the report frame's srcdoc inherits this).
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "frame-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'")
# A report's HTML is shown in a sandboxed frame: no scripts, nothing fetched from anywhere.
REPORT_CSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"


@dataclass
class ServiceConfig:
    db: Path
    concurrency: int = 2
    max_queued: int = 64
    security: SecurityConfig = field(default_factory=SecurityConfig)
    keepalive_s: float = 15.0


def error(status: int, message: str, code: str, param: str | None = None, **headers: str) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers or None)


async def _json_body(request: Request) -> Any:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":   # also keeps cross-site form posts out
        raise _Http(error(415, "send the body as JSON (Content-Type: application/json)", "unsupported_media_type"))
    try:
        return json.loads(await request.body())
    except ValueError as e:
        raise _Http(error(400, f"the request body is not valid JSON: {e}", "invalid_json"))


class _Http(Exception):
    def __init__(self, response: JSONResponse):
        self.response = response


def _sse(seq: int, kind: str, data: Any) -> str:
    return f"id: {seq}\nevent: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def create_api(manager: RunManager, cfg: ServiceConfig, lifespan=None) -> FastAPI:
    store = manager.store
    app = FastAPI(title="sleuth", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(_Http)
    async def _http(_: Request, e: _Http):
        return e.response

    @app.exception_handler(404)
    async def _not_found(_: Request, e: Exception):
        return error(404, "not found", "not_found")

    @app.exception_handler(405)
    async def _not_allowed(_: Request, e: Exception):
        return error(405, "method not allowed", "method_not_allowed")

    def found(run_id: str):
        run = store.get(run_id)
        if run is None:
            raise _Http(error(404, f"no run {run_id!r}", "run_not_found"))
        return run

    def run_view(run) -> dict[str, Any]:
        d = run.to_dict()
        d["waiting_for_answers"] = manager.waiting_for_answers(run.id)
        if d["waiting_for_answers"]:
            d["questions"] = [e["data"]["question"] for e in store.events(run.id) if e["kind"] == "question"]
        return d

    # ------------------------------------------------------------ page
    @app.get("/")
    def page() -> Response:
        return _asset("index.html")

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            raise _Http(error(404, "not found", "not_found"))
        return _asset(name)

    # ------------------------------------------------------------ API
    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "kinds": sorted(manager.registry.kinds), "counts": store.counts(),
                "concurrency": manager.concurrency, "recovered": manager.recovered}

    @app.get("/api/kinds")
    def kinds() -> dict[str, Any]:
        return {"kinds": [{"name": k.name, "description": k.description} for k in manager.registry.kinds.values()]}

    @app.post("/api/runs", status_code=201)
    async def submit(request: Request):
        body = await _json_body(request)
        if not isinstance(body, dict):
            return error(400, "the body must be a JSON object {kind, params}", "invalid_request")
        unknown = sorted(set(body) - {"kind", "params"})
        if unknown:
            return error(400, f"unknown field {unknown[0]!r} (a run is {{kind, params}})", "invalid_request",
                         unknown[0])
        kind = body.get("kind", "ask")
        if not isinstance(kind, str):
            return error(400, "'kind' must be a string", "invalid_request", "kind")
        try:
            run = manager.submit(kind, body.get("params"))
        except ParamError as e:
            return error(400, str(e), "invalid_params", "params")
        except QueueFull as e:
            return error(503, str(e), "queue_full", **{"retry-after": "10"})
        return JSONResponse(run_view(run), status_code=201, headers={"location": f"/api/runs/{run.id}"})

    @app.get("/api/runs")
    def history(q: str = "", status: str = "", kind: str = "", limit: int = 50, before: float | None = None):
        if not 1 <= limit <= 500:
            return error(400, "limit must be in [1, 500]", "invalid_request", "limit")
        if len(q) > 500:
            return error(400, "q is longer than 500 characters", "invalid_request", "q")
        runs = store.list(q=q, status=status, kind=kind, limit=limit, before=before)
        return {"runs": [r.summary() for r in runs]}

    @app.get("/api/runs/{run_id}")
    def get_run(run_id: str):
        return run_view(found(run_id))

    @app.get("/api/runs/{run_id}/events")
    def events(run_id: str, after: int = 0, limit: int = 1000):
        found(run_id)
        return {"events": store.events(run_id, after=after, limit=max(1, min(limit, 5000)))}

    @app.get("/api/runs/{run_id}/trajectories")
    def trajectories(run_id: str):
        found(run_id)
        return {"trajectories": store.trajectories(run_id)}

    @app.get("/api/runs/{run_id}/report.html")
    def report_html(run_id: str):
        found(run_id)
        art = store.artifact(run_id, "report.html")
        if art is None:
            return error(404, "this run has no report", "no_report")
        return Response(art[1], media_type="text/html; charset=utf-8",
                        headers={"content-security-policy": REPORT_CSP, "x-content-type-options": "nosniff"})

    @app.post("/api/runs/{run_id}/cancel")
    def cancel(run_id: str):
        found(run_id)
        return run_view(manager.cancel(run_id))

    @app.post("/api/runs/{run_id}/answers")
    async def answers(run_id: str, request: Request):
        body = await _json_body(request)
        run = found(run_id)
        given = body.get("answers") if isinstance(body, dict) else None
        if not isinstance(given, list) or len(given) > 20 or not all(isinstance(a, str) and len(a) <= 2000
                                                                      for a in given):
            return error(400, "'answers' must be a list of at most 20 strings (2000 characters each)",
                         "invalid_request", "answers")
        if not manager.answer(run.id, given):
            return error(409, f"run {run.id} is not waiting for answers (status {run.status})", "not_waiting")
        return {"ok": True}

    @app.get("/api/runs/{run_id}/stream")
    async def stream(run_id: str, request: Request, after: int = 0):
        found(run_id)
        last = request.headers.get("last-event-id", "")
        start = int(last) if last.isdigit() else after

        async def gen():
            seq = start
            wake = manager.watch(run_id)
            try:
                while True:
                    wake.clear()
                    batch = store.events(run_id, after=seq)
                    for e in batch:
                        seq = e["seq"]
                        yield _sse(seq, e["kind"], e["data"] | {"ts": e["ts"]})
                    if len(batch) == 1000:
                        continue
                    run = store.get(run_id)
                    if run.status in FINAL and not store.events(run_id, after=seq, limit=1):
                        yield _sse(seq, "end", {"status": run.status, "error": run.error})
                        return
                    if await request.is_disconnected():
                        return
                    try:
                        await asyncio.wait_for(wake.wait(), cfg.keepalive_s)
                    except asyncio.TimeoutError:
                        yield ": keepalive\n\n"
            finally:
                manager.unwatch(run_id, wake)

        return StreamingResponse(gen(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    return app


def _asset(name: str) -> Response:
    body = (resources.files("sleuth") / "serve" / "static" / name).read_bytes()
    headers = {"cache-control": "no-cache", "x-content-type-options": "nosniff"}
    if name.endswith(".html"):
        headers |= {"content-security-policy": PAGE_CSP, "x-frame-options": "DENY"}
    return Response(body, media_type=_MEDIA[Path(name).suffix], headers=headers)


def build(registry: Registry, cfg: ServiceConfig, openai_app: Any = None, mcp_server: Any = None):
    """The service's ASGI application and its run manager.

    ``openai_app``: the OpenAI-compatible FastAPI app to serve under /v1; ``mcp_server``: an MCPServer to serve
    at /mcp. The manager starts (recovering unfinished runs) when the application starts."""
    store = Store(cfg.db)
    manager = RunManager(store, registry, concurrency=cfg.concurrency, max_queued=cfg.max_queued)
    mounts: dict[str, Any] = {}
    mcp_app = None
    if mcp_server is not None:
        from mcp.server.transport_security import TransportSecuritySettings

        # the service's guard checks hosts and tokens for every route, /mcp included
        mcp_app = mcp_server.streamable_http_app(
            streamable_http_path="/mcp", max_request_body_size=cfg.security.max_body_bytes,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
        mounts["/mcp"] = mcp_app
    if openai_app is not None:
        mounts["/v1"] = openai_app

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        manager.start()
        async with contextlib.AsyncExitStack() as stack:
            if mcp_server is not None:
                await stack.enter_async_context(mcp_server.session_manager.run())
            try:
                yield
            finally:
                await asyncio.get_running_loop().run_in_executor(None, manager.stop)
        store.close()

    api = create_api(manager, cfg, lifespan)
    guard = Guard(Router(api, mounts), cfg.security)
    return guard, manager
