"""`sleuth serve-search` and its client over real HTTP on loopback: a real bm25s index behind the service,
the search tool and browse on a worker that has no index, bad requests, overload, and faults (429, 5xx,
hangs) injected by a proxy in front of the real service."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from conftest import lexical_index


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Uvicorn:
    """The service app on a loopback port, in a thread (the same app `sleuth serve-search` runs)."""

    def __init__(self, app):
        import uvicorn

        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("search service did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    with lexical_index(tmp_path_factory.mktemp("svc")) as ix:
        yield ix


@pytest.fixture(scope="module")
def service(index):
    from sleuth.serve.search_api import SearchService, create_app

    svc = SearchService(index, "auto")
    srv = _Uvicorn(create_app(svc))
    yield srv
    srv.close()
    svc.close()


QUERIES = ["Jane Austen birthplace", "Pride and Prejudice", "Steventon Hampshire village"]


def test_remote_engine_gives_the_local_engines_results(index, service):
    from sleuth.search.remote import RemoteSearchEngine

    local = index.engine("lexical").search_batch(QUERIES, 3)
    with RemoteSearchEngine(service.url) as remote:
        got = remote.search_batch(QUERIES, 3)
        assert remote.index_name == "t"
    assert [r.query for r in got] == QUERIES
    assert [[x.to_dict() for x in r.results] for r in got] == [[x.to_dict() for x in r.results] for r in local]
    assert got[0].results[0].url == "corpus://t/p1" and all(r.error is None for r in got)


def test_worker_without_index_searches_and_browses_through_the_service(index, service):
    from sleuth.agent import Environment

    local = Environment(index.engine("lexical"), {"t": index.docs}, tools=("search", "browse")).session()
    remote_env = Environment.create(search_url=service.url, engine="lexical", tools=("search", "browse"))
    remote = remote_env.session()
    args = {"queries": ["Jane Austen", "Steventon"]}
    a, b = local.call("search", args), remote.call("search", args)
    assert b.ok and a.text == b.text and a.data == b.data      # the observation the model sees is identical
    page = remote.call("browse", {"url": "corpus://t/p1", "find": "born"})
    assert page.ok and "Steventon, Hampshire" in page.text
    missing = remote.call("browse", {"url": "corpus://t/nope"})
    assert not missing.ok and missing.error == "not_found"


def test_bad_requests_get_clear_400s(service):
    def post(body, raw=None):
        r = httpx.post(f"{service.url}/v1/search", content=raw if raw is not None else json.dumps(body))
        return r.status_code, r.json()["error"]

    cases = [
        ({"queries": "Jane"}, "must be a list of strings"),
        ({"queries": []}, "non-empty list"),
        ({"queries": ["ok", "  "]}, "queries[1] is empty"),
        ({"queries": ["x"] * 65}, "at most 64 queries"),
        ({"queries": ["x"], "k": 0}, '"k" must be an integer from 1 to 100'),
        ({"queries": ["x"], "k": True}, '"k" must be an integer'),
        ({"queries": ["x"], "engine": "dense"}, "built without embeddings"),
        ({"queries": ["x"], "engine": "magic"}, "must be one of"),
        ({"queries": ["x"], "n": 3}, "unknown field"),
        ({"queries": ["x" * 1001]}, "1001 characters"),
    ]
    for body, needle in cases:
        code, err = post(body)
        assert code == 400 and needle in err["message"], (body, err)
    code, err = post(None, raw=b"{not json")
    assert code == 400 and "not valid JSON" in err["message"]
    r = httpx.get(f"{service.url}/v1/passage", params={"id": "nope"})
    assert r.status_code == 404 and "no passage 'nope'" in r.json()["error"]["message"]
    r = httpx.get(f"{service.url}/v1/searchh")
    assert r.status_code == 404 and "POST /v1/search" in r.json()["error"]["message"]
    h = httpx.get(f"{service.url}/v1/health").json()
    assert h["index"] == "t" and h["passages"] == 3 and h["engines"] == ["lexical"]


def test_overload_is_429_with_retry_after(index):
    from sleuth.serve.search_api import SearchService, ServiceConfig, create_app

    svc = SearchService(index, "lexical", ServiceConfig(max_pending=2))
    srv = _Uvicorn(create_app(svc))
    try:
        r = httpx.post(f"{srv.url}/v1/search", json={"queries": ["a", "b", "c"]})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert "busy" in r.json()["error"]["message"]
        assert httpx.post(f"{srv.url}/v1/search", json={"queries": ["Jane"]}).status_code == 200
    finally:
        srv.close()
        svc.close()


class _FaultProxy:
    """Loopback proxy in front of the real service: the next requests fail as scripted, then pass through."""

    def __init__(self, target: str):
        self.faults: list[str] = []
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _go(self, method):
                proxy.requests += 1
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                fault = proxy.faults.pop(0) if proxy.faults else None
                if fault == "hang":
                    time.sleep(1.5)
                    return
                if fault in ("429", "503"):
                    self.send_response(int(fault))
                    if fault == "429":
                        self.send_header("Retry-After", "0")
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "scripted"}}')
                    return
                r = httpx.request(method, target + self.path, content=body)
                self.send_response(r.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def do_GET(self):  # noqa: N802
                self._go("GET")

            def do_POST(self):  # noqa: N802
                self._go("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_client_retries_429_5xx_and_timeouts_then_reports(service):
    from sleuth.search.remote import RemoteSearchEngine
    from sleuth.search.web import RetryPolicy

    proxy = _FaultProxy(service.url)
    try:
        eng = RemoteSearchEngine(proxy.url, timeout=0.5, retry=RetryPolicy(tries=4, backoff=0.01))
        proxy.faults = ["429", "503", "hang"]
        got = eng.search_batch(["Jane Austen"], 2)
        assert got[0].error is None and got[0].results[0].url == "corpus://t/p1"
        assert proxy.requests == 4                       # three failures, then the answer
        proxy.faults = ["503"] * 4
        got = eng.search_batch(["Jane Austen", "Steventon"], 2)
        assert all("HTTP 503 server error after 4 tries" in r.error for r in got)   # every query says why
        # the search tool turns that into an observation, not a crash
        from sleuth.tools.search import SearchTool
        proxy.faults = ["503"] * 4
        res = SearchTool(eng)({"queries": ["Jane Austen"]})
        assert not res.ok and res.error == "backend_error" and "search failed" in res.text
    finally:
        proxy.close()


def test_unreachable_service_is_a_clear_error():
    from sleuth.agent import Environment

    with pytest.raises(ValueError, match="cannot reach the search service.*connection failed"):
        Environment.from_service(f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(ValueError, match="must start with http"):
        Environment.from_service("127.0.0.1:8765")


def test_batcher_coalesces_concurrent_callers_and_keeps_results(index):
    from concurrent.futures import ThreadPoolExecutor

    from sleuth.search.batcher import BatchingEngine

    direct = index.engine("lexical")
    b = BatchingEngine(direct, max_batch=64, max_wait=0.05)
    try:
        calls = [[QUERIES[i % 3], QUERIES[(i + 1) % 3]] for i in range(24)]
        with ThreadPoolExecutor(12) as pool:
            got = list(pool.map(lambda qs: b.search_batch(qs, 2), calls))
        for qs, responses in zip(calls, got):
            want = direct.search_batch(qs, 2)
            assert [[x.to_dict() for x in r.results] for r in responses] == \
                   [[x.to_dict() for x in r.results] for r in want]
        s = b.stats
        assert s.queries == 48 and s.batches < 24        # callers shared engine calls
        assert s.unique < s.queries                      # repeated queries within a batch ran once
    finally:
        b.close()
