"""`sleuth serve` over real HTTP on loopback: real uvicorn, the shipped policy, a real index, real SQLite.

Two run kinds besides ``ask`` are registered by these tests to drive the service's own machinery
deterministically (a run that waits to be cancelled, one that asks clarifying questions); every ``ask`` run
is the real agent with the shipped trained policy. The restart test runs ``sleuth serve`` as a subprocess
with a tiny random model (the same tokenizer and chat template), kills it with SIGKILL mid-run, and starts
the service again on the same database.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import PASSAGES, run_async

from sleuth.search.corpus import Passage
from sleuth.serve.runs import Cancelled, Kind, check_fields

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CORPUS = PASSAGES + [
    Passage("m1", "Mona Lisa", "The Mona Lisa is a half-length portrait painting by the Italian artist Leonardo da "
            "Vinci. It is held at the Louvre in Paris.", "test"),
    Passage("m2", "Leonardo da Vinci", "Leonardo da Vinci (1452 – 1519) was an Italian polymath of the High "
            "Renaissance who was active as a painter, engineer and scientist.", "test"),
]
QUESTION = "Who wrote Pride and Prejudice?"     # the shipped policy answers it with a verified citation


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """SLEUTH_HOME with a real lexical index ``t`` over the test corpus."""
    from sleuth.search.index import build_index

    home = tmp_path_factory.mktemp("serve-home")
    src = home / "t.jsonl"
    src.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in CORPUS))
    old = os.environ.get("SLEUTH_HOME")
    os.environ["SLEUTH_HOME"] = str(home)
    build_index(src, "t", dense=False, progress=False)
    yield home
    if old is None:
        os.environ.pop("SLEUTH_HOME", None)
    else:
        os.environ["SLEUTH_HOME"] = old


@pytest.fixture(scope="module")
def env(home):
    from sleuth.agent import Environment
    from sleuth.search.index import open_index

    index = open_index("t")
    return Environment(index.engine("lexical"), {"t": index.docs}, search_k=3)


@pytest.fixture(scope="module")
def shipped(one_thread):
    """The shipped trained policy behind the service's batching wrapper."""
    from sleuth.policy.loader import load_policy
    from sleuth.serve.batching import BatchingPolicy

    return BatchingPolicy(load_policy(None))


def wait_kind() -> Kind:
    """Emits a tick every 50 ms until cancelled (or 600 ticks)."""
    def run(params, emit, cancel):
        for i in range(600):
            if cancel.is_set():
                raise Cancelled()
            emit("tick", {"i": i})
            time.sleep(0.05)
        return {"answer": "ticked"}
    return Kind("wait", run, lambda p: check_fields(p, {"question": str}), lambda p: p.get("question", "wait"),
                restartable=True)


def clarify_kind() -> Kind:
    """Asks two clarifying questions, then answers with what it was told."""
    def run(params, emit, cancel):
        answers = emit.ask(["Which period?", "How long should it be?"], timeout_s=60)
        emit("section", {"title": "Scope", "text": " / ".join(answers or [])})
        return {"answer": "told: " + " / ".join(answers or [])}
    return Kind("clarify", run, lambda p: check_fields(p, {"question": str}, ("question",)),
                lambda p: p["question"])


class Live:
    """A service on a free loopback port, uvicorn in a thread."""

    def __init__(self, asgi, manager):
        import uvicorn

        self.manager = manager
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.server = uvicorn.Server(uvicorn.Config(asgi, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        t0 = time.time()
        while not self.server.started and time.time() - t0 < 30:
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


def service(db: Path, policy=None, env=None, security=None, openai=False, mcp=False, concurrency=2, kinds=()):
    from sleuth.serve.app import ServiceConfig, build
    from sleuth.serve.runners import ask
    from sleuth.serve.runs import Registry
    from sleuth.serve.security import SecurityConfig

    registry = Registry()
    if policy is not None:
        s = policy.agent_settings
        registry.add(ask.kind(policy, env, ask.AskSettings(max_steps=s["max_steps"], prompt=s["prompt"],
                                                            max_new_tokens=s["max_new_tokens"])))
    for kind in (wait_kind(), clarify_kind(), *kinds):
        registry.add(kind)
    openai_app = mcp_server = None
    if openai:
        from sleuth.serve.openai_api import create_app
        openai_app = create_app(policy)
    if mcp:
        from sleuth.serve.mcp_server import create_server
        mcp_server = create_server(env)
    cfg = ServiceConfig(db=db, concurrency=concurrency, security=security or SecurityConfig())
    return Live(*build(registry, cfg, openai_app, mcp_server))


@pytest.fixture(scope="module")
def live(shipped, env, tmp_path_factory):
    srv = service(tmp_path_factory.mktemp("db") / "runs.db", shipped, env, openai=True, mcp=True)
    yield srv
    srv.close()


@pytest.fixture
def client(live):
    with httpx.Client(base_url=live.url, timeout=120) as c:
        yield c


def sse(client: httpx.Client, path: str, headers: dict | None = None, until: str = "end", limit_s: float = 180):
    """The events of a stream, parsed, until an event of kind ``until`` (included)."""
    out, cur = [], {}
    t0 = time.time()
    with client.stream("GET", path, headers=headers or {}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            assert time.time() - t0 < limit_s, "stream took too long"
            if line.startswith("id: "):
                cur["id"] = int(line[4:])
            elif line.startswith("event: "):
                cur["kind"] = line[7:]
            elif line.startswith("data: "):
                cur["data"] = json.loads(line[6:])
            elif not line and cur:
                out.append(cur)
                if cur.get("kind") == until:
                    return out
                cur = {}
    return out


def submit(client, kind="ask", **params):
    r = client.post("/api/runs", json={"kind": kind, "params": params})
    assert r.status_code == 201, r.text
    return r.json()


def wait_status(client, run_id, statuses, limit_s=120):
    t0 = time.time()
    while time.time() - t0 < limit_s:
        run = client.get(f"/api/runs/{run_id}").json()
        if run["status"] in statuses:
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} still {run['status']}")


# ------------------------------------------------------------------------------------------ runs, live
def test_sse_streams_a_real_run_then_the_cited_answer(client):
    run = submit(client, question=QUESTION)
    assert run["status"] == "queued" and run["kind"] == "ask"
    events = sse(client, f"/api/runs/{run['id']}/stream")
    kinds = [e["kind"] for e in events]
    statuses = [e["data"]["status"] for e in events if e["kind"] == "status"]
    assert statuses[:2] == ["queued", "running"] and statuses[-1] == "done"
    assert kinds[-1] == "end" and events[-1]["data"]["status"] == "done"
    step = next(e["data"] for e in events if e["kind"] == "step")
    assert step["tool"] == "search" and step["step"] == 1
    queries = next(e["data"] for e in events if e["kind"] == "queries")
    assert queries["queries"] and queries["step"] == 1
    assert kinds.index("step") < kinds.index("answer") < len(kinds) - 1
    # ids are the stored sequence: nothing skipped, nothing repeated
    ids = [e["id"] for e in events[:-1]]
    assert ids == list(range(1, len(ids) + 1))
    stored = client.get(f"/api/runs/{run['id']}/events").json()["events"]
    assert [(e["seq"], e["kind"]) for e in stored] == [(e["id"], e["kind"]) for e in events[:-1]]
    # resuming with Last-Event-ID gives exactly the rest
    tail = sse(client, f"/api/runs/{run['id']}/stream", headers={"Last-Event-ID": str(ids[-3])})
    assert [e["id"] for e in tail[:-1]] == ids[-2:]

    done = client.get(f"/api/runs/{run['id']}").json()
    result = done["result"]
    assert done["status"] == "done" and result["finish_reason"] == "finish"
    assert result["answer"] == "Jane Austen", result
    assert result["citations"] and result["citations"][0]["url"].startswith("corpus://t/")
    assert all(c["verified"] for c in result["citations"])
    trajs = client.get(f"/api/runs/{run['id']}/trajectories").json()["trajectories"]
    assert trajs[0]["id"] == result["trajectory_id"] and trajs[0]["answer"] == result["answer"]
    # history finds it by question and by answer (the question does not name her)
    assert run["id"] in [r["id"] for r in client.get("/api/runs", params={"q": "pride and"}).json()["runs"]]
    assert run["id"] in [r["id"] for r in client.get("/api/runs", params={"q": "AUSTEN"}).json()["runs"]]
    assert run["id"] not in [r["id"] for r in client.get("/api/runs", params={"q": "zzzz"}).json()["runs"]]


def test_cancel_a_running_ask_run_and_a_queued_run(client, live):
    run = submit(client, question="Where was Jane Austen born?")
    wait_status(client, run["id"], ("running",))
    r = client.post(f"/api/runs/{run['id']}/cancel")
    assert r.status_code == 200
    done = wait_status(client, run["id"], ("cancelled", "done", "failed"))
    assert done["status"] == "cancelled", done
    kinds = [e["kind"] for e in client.get(f"/api/runs/{run['id']}/events").json()["events"]]
    assert "answer" not in kinds and kinds[-1] == "status"

    # fill both slots with runs that wait, so the third stays queued; cancel it before it starts
    a, b = submit(client, "wait"), submit(client, "wait")
    wait_status(client, a["id"], ("running",))
    wait_status(client, b["id"], ("running",))
    c = submit(client, "wait")
    assert client.get(f"/api/runs/{c['id']}").json()["status"] == "queued"
    assert client.post(f"/api/runs/{c['id']}/cancel").json()["status"] == "cancelled"
    for x in (a, b):
        client.post(f"/api/runs/{x['id']}/cancel")
        assert wait_status(client, x["id"], ("cancelled",))["status"] == "cancelled"
    assert [e["data"]["status"] for e in client.get(f"/api/runs/{c['id']}/events").json()["events"]] == \
        ["queued", "cancelled"]
    assert client.post("/api/runs/nope/cancel").status_code == 404


def test_clarifying_questions_wait_for_answers(client):
    run = submit(client, "clarify", question="A report on Jane Austen")
    waiting = wait_status(client, run["id"], ("waiting",), 30)
    assert waiting["waiting_for_answers"] and waiting["questions"] == ["Which period?", "How long should it be?"]
    bad = client.post(f"/api/runs/{run['id']}/answers", json={"answers": "no"})
    assert bad.status_code == 400
    ok = client.post(f"/api/runs/{run['id']}/answers", json={"answers": ["1800s", "short"]})
    assert ok.status_code == 200
    done = wait_status(client, run["id"], ("done",), 30)
    assert done["result"]["answer"] == "told: 1800s / short" and done["attempts"] == 1
    again = client.post(f"/api/runs/{run['id']}/answers", json={"answers": ["x"]})
    assert again.status_code == 409


# ------------------------------------------------------------------------------------------ safety
def test_malformed_and_oversized_requests_get_clear_4xx_and_lose_nothing(client):
    before = client.get("/api/runs", params={"limit": 500}).json()["runs"]
    cases = [
        (dict(content=b"{not json", headers={"content-type": "application/json"}), 400, "invalid_json"),
        (dict(content=b'{"kind": "ask"}', headers={"content-type": "text/plain"}), 415, "unsupported_media_type"),
        (dict(json=["ask"]), 400, "invalid_request"),
        (dict(json={"kind": "nope", "params": {"question": "x"}}), 400, "invalid_params"),
        (dict(json={"kind": "ask", "params": {}}), 400, "invalid_params"),
        (dict(json={"kind": "ask", "params": {"question": "  "}}), 400, "invalid_params"),
        (dict(json={"kind": "ask", "params": {"question": "x", "max_steps": 10_000}}), 400, "invalid_params"),
        (dict(json={"kind": "ask", "params": {"question": "x", "max_steps": "3"}}), 400, "invalid_params"),
        # nothing a request sends may reach server-side settings or paths
        (dict(json={"kind": "ask", "params": {"question": "x", "index": "/etc"}}), 400, "invalid_params"),
        (dict(json={"kind": "ask", "params": {"question": "x", "model": "/tmp/evil"}}), 400, "invalid_params"),
        (dict(json={"kind": "ask", "params": {"question": "x"}, "db": "/tmp/x.db"}), 400, "invalid_request"),
        (dict(json={"kind": "ask", "params": {"question": "x" * 3000}}), 400, "invalid_params"),
        (dict(content=b"{" + b" " * (300 * 1024) + b"}", headers={"content-type": "application/json"}), 413,
         "request_too_large"),
    ]
    for kwargs, status, code in cases:
        r = client.post("/api/runs", **kwargs)
        assert r.status_code == status, (kwargs.get("json"), r.text)
        err = r.json()["error"]
        assert err["code"] == code and err["message"], r.text
    # a chunked upload with no Content-Length is counted as it arrives
    r = client.post("/api/runs", content=iter([b"{" + b" " * 100_000] * 4),
                    headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.get("/api/runs/doesnotexist").status_code == 404
    assert client.get("/api/runs", params={"limit": 0}).status_code == 400
    assert client.get("/static/../../etc/passwd").status_code == 404
    after = client.get("/api/runs", params={"limit": 500}).json()["runs"]
    assert after == before          # nothing was created, nothing was lost
    ok = submit(client, "wait")            # and the server still takes good requests
    assert client.post(f"/api/runs/{ok['id']}/cancel").json()["status"] in ("cancelled", "running")
    assert wait_status(client, ok["id"], ("cancelled",))["status"] == "cancelled"


def test_token_host_and_rate_limits(tmp_path, env):
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    from sleuth.serve.security import SecurityConfig

    srv = service(tmp_path / "runs.db", env=env, mcp=True,
                  security=SecurityConfig(token="s3cret", burst=12, rate_per_s=0.5))
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            for path in ("/api/runs", "/api/health", "/v1/models", "/mcp"):
                r = c.get(path)
                assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
                assert r.headers["www-authenticate"] == "Bearer"
            assert c.get("/api/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.post("/api/runs", json={"kind": "wait", "params": {}}).status_code == 401
            assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200   # the page is public
            assert c.get("/api/health", headers={"Host": "evil.example:80"}).status_code == 421   # DNS rebinding
            auth = {"Authorization": "Bearer s3cret"}

            async def mcp_with_token():
                async with httpx2.AsyncClient(headers=auth) as http, \
                        Client(streamable_http_client(srv.url + "/mcp", http_client=http)) as mc:
                    return sorted(t.name for t in (await mc.list_tools()).tools)
            assert run_async(mcp_with_token) == ["browse", "code", "search"]
            codes = [c.get("/api/health", headers=auth).status_code for _ in range(12)]
            assert codes[:5] == [200] * 5 and codes[-1] == 429, codes
            r = c.get("/api/health", headers=auth)
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            assert "too many requests" in r.json()["error"]["message"]
    finally:
        srv.close()


def test_serve_refuses_to_bind_beyond_loopback_without_a_token():
    r = subprocess.run([sys.executable, "-m", "sleuth.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**{k: v for k, v in os.environ.items() if k != "SLEUTH_THREADS"}, "SLEUTH_SERVE_TOKEN": ""})
    assert r.returncode == 2 and "without a token" in r.stderr


# ------------------------------------------------------------------------------------------ restart
def tiny_model(path: Path) -> Path:
    """A randomly initialised 2-layer Llama with SmolLM2's tokenizer and chat template: loads in a blink."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from sleuth.policy.hf import ensure_embedded_checkpoint

    tok = AutoTokenizer.from_pretrained(ensure_embedded_checkpoint())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=8192,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    # a short prompt, and replies long enough (a random model almost never samples eos) that a 4-step run lasts
    # well over a second: it is surely still running a moment after it starts
    (path / "sleuth_version.json").write_text(json.dumps({"version": 0, "name": "tiny-random", "agent": {
        "prompt": "short", "max_steps": 4, "max_new_tokens": 150, "search_k": 3}}))
    return path


def start_server(home: Path, model: Path, db: Path, port: int, log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "sleuth.cli", "serve", "--port", str(port), "--index", "t", "--engine", "lexical",
           "--model", str(model), "--db", str(db), "--concurrency", "1", "--no-mcp", "--no-openai"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "SLEUTH_HOME": str(home), "SLEUTH_THREADS": "1"})
    t0 = time.time()
    while time.time() - t0 < 300:      # importing torch and transformers is slow on a busy 2-core machine
        assert proc.poll() is None, f"server exited: {Path(log.name).read_text()[-2000:]}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("server did not start")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def restarted_service(model: Path, env, db: Path) -> Live:
    """The service as `sleuth serve` builds it (default registry, batching policy), in this process."""
    from sleuth.policy.loader import load_policy
    from sleuth.serve.app import ServiceConfig, build
    from sleuth.serve.batching import BatchingPolicy
    from sleuth.serve.runners import default_registry
    from sleuth.serve.runners.ask import AskSettings

    policy = BatchingPolicy(load_policy(str(model)))
    s = policy.agent_settings
    registry = default_registry(policy, env, AskSettings(max_steps=s["max_steps"], prompt=s["prompt"],
                                                         max_new_tokens=s["max_new_tokens"]), db.parent)
    return Live(*build(registry, ServiceConfig(db=db, concurrency=1)))


def test_kill_9_loses_no_finished_run_and_resumes_the_rest(home, env, tmp_path):
    model, db, port = tiny_model(tmp_path / "tiny"), tmp_path / "runs.db", free_port()
    log = open(tmp_path / "server.log", "w")
    proc = start_server(home, model, db, port, log)
    srv = None
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            first = submit(c, question="Where was Jane Austen born?", max_steps=1)
            done = wait_status(c, first["id"], ("done",), 120)
            second = submit(c, question="Who wrote Pride and Prejudice?", max_steps=4)
            third = submit(c, question="Where is Steventon?", max_steps=1)
            wait_status(c, second["id"], ("running",), 60)
            assert c.get(f"/api/runs/{third['id']}").json()["status"] == "queued"
        proc.send_signal(signal.SIGKILL)      # mid-run: the second run is in the first of its 4 steps
        proc.wait(30)

        srv = restarted_service(model, env, db)
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            health = c.get("/api/health").json()
            assert health["recovered"] == {"requeued": 1, "restarted": 1, "interrupted": 0}
            kept = c.get(f"/api/runs/{first['id']}").json()
            assert kept["status"] == "done" and kept["result"] == done["result"]          # finished: untouched
            assert kept["result"]["finish_reason"] == "max_steps" and kept["attempts"] == 1
            assert c.get(f"/api/runs/{first['id']}/trajectories").json()["trajectories"]
            for run in (second, third):
                after = wait_status(c, run["id"], ("done",), 120)
                assert after["result"]["finish_reason"] == "max_steps"
            events = c.get(f"/api/runs/{second['id']}/events").json()["events"]
            statuses = [e["data"]["status"] for e in events if e["kind"] == "status"]
            assert statuses == ["queued", "running", "queued", "running", "done"]
            note = next(e["data"]["note"] for e in events if e["kind"] == "status" and e["data"].get("note"))
            assert "stopped during this run" in note
            assert c.get(f"/api/runs/{second['id']}").json()["attempts"] == 2
            assert c.get(f"/api/runs/{third['id']}").json()["attempts"] == 1
            assert len(c.get("/api/runs").json()["runs"]) == 3
    finally:
        proc.kill()
        proc.wait(30)
        log.close()
        if srv is not None:
            srv.close()


def test_a_run_that_keeps_killing_the_server_is_marked_interrupted(tmp_path):
    from sleuth.serve.runs import Registry, RunManager
    from sleuth.serve.store import Store

    store = Store(tmp_path / "runs.db")
    registry = Registry()
    registry.add(wait_kind())
    registry.add(Kind("gone", lambda p, e, c: {}, dict, lambda p: "x"))
    run = store.create("wait", {}, "w")
    other = store.create("gone", {}, "g")
    for _ in range(3):           # three starts, each killed mid-run
        store.set_status(run.id, "running", start=True)
    store.set_status(other.id, "running", start=True)
    registry.kinds.pop("gone")   # a kind this server no longer has
    assert RunManager(store, registry).recover() == {"requeued": 0, "restarted": 0, "interrupted": 2}
    assert store.get(run.id).status == "interrupted" and "3 times" in store.get(run.id).error
    assert "no longer runs kind 'gone'" in store.get(other.id).error


# ------------------------------------------------------------------------------------------ OpenAI endpoint
def test_openai_endpoint_with_the_sdk_and_openai_policy(live, env):
    import openai

    from sleuth.agent import Agent, AgentConfig
    from sleuth.policy.openai_policy import OpenAIPolicy

    sdk = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in sdk.models.list().data] == ["sleuth-135m-rl"]
    r = sdk.chat.completions.create(model="sleuth-135m-rl", messages=[{"role": "user", "content": "Say hello."}],
                                    max_tokens=8, temperature=0)
    assert r.choices[0].message.content and r.usage.completion_tokens <= 8
    chunks = list(sdk.chat.completions.create(model="x", messages=[{"role": "user", "content": "Say hello."}],
                                              max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r.choices[0].message.content
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="x", messages=[], max_tokens=8)

    policy = OpenAIPolicy("sleuth-135m-rl", base_url=live.url + "/v1", api_key="unused", max_retries=0)
    traj = Agent(policy, env, AgentConfig(max_steps=1, temperature=0, prompt="short-2shot",
                                          max_new_tokens=48)).run(QUESTION)
    assert traj.steps == 1 and traj.finish_reason in ("finish", "max_steps")
    assert traj.tool_calls and traj.tool_calls[0].tool in ("search", "invalid", "finish")
    assert "error" not in traj.meta


# ------------------------------------------------------------------------------------------ MCP
def _mcp_checks(client_factory):

    async def main():
        async with client_factory() as c:
            names = sorted(t.name for t in (await c.list_tools()).tools)
            assert names == ["browse", "code", "search"]
            found = await c.call_tool("search", {"queries": ["Mona Lisa painter"]})
            text = found.content[0].text
            assert not found.is_error and "corpus://t/m1" in text and "Leonardo" in text
            page = await c.call_tool("browse", {"url": "corpus://t/m1"})
            assert not page.is_error and "Louvre" in page.content[0].text
            ran = await c.call_tool("code", {"code": "print(6 * 7)"})
            assert not ran.is_error and "42" in ran.content[0].text
            refused = await c.call_tool("code", {"code": "import socket\nsocket.create_connection(('1.1.1.1', 80))"})
            assert refused.is_error and "safety interceptor" in refused.content[0].text
            web = await c.call_tool("browse", {"url": "file:///etc/passwd"})
            assert web.is_error and "root:" not in web.content[0].text
    run_async(main)


def test_mcp_server_over_streamable_http(live):
    from mcp import Client

    _mcp_checks(lambda: Client(live.url + "/mcp"))


def test_mcp_server_over_stdio(home):
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(command=sys.executable, args=["-m", "sleuth.cli", "mcp", "--index", "t",
                                                                 "--engine", "lexical"], cwd=str(ROOT),
                                   env={"SLEUTH_HOME": str(home), "PYTHONPATH": str(ROOT)})
    _mcp_checks(lambda: Client(params))


def test_agent_uses_a_tool_from_an_mcp_server_behind_the_interceptor(env, smol_tokenizer, tmp_path):
    from test_agent import ScriptedPolicy

    from sleuth.agent import Agent, AgentConfig, Environment
    from sleuth.tools.mcp import MCPToolbox

    marker = tmp_path / "sent.txt"
    box = MCPToolbox.connect([f"{sys.executable} {ROOT / 'tests' / 'mcp_tools_server.py'} {marker}"])
    try:
        assert sorted(t.name for t in box.tools()) == ["capital_of", "send_email"]
        with_mcp = Environment(env.search_engine, env.docstores, tools=("search", "browse"), extra_tools=box)
        policy = ScriptedPolicy(smol_tokenizer, [[
            "<capital_of>France</capital_of>",
            '<send_email>{"to": "a@b.example", "body": "hi"}</send_email>',
            '<capital_of>{"country": "Kenya"}</capital_of>',
            "<answer>Paris</answer>"]])
        traj = Agent(policy, with_mcp, AgentConfig(max_steps=6, prompt="short")).run("What is the capital of France?")
        system = traj.messages[0]["content"]
        assert "<capital_of>" in system and "The capital city of a country." in system   # shown like its own
        observations = [m["content"] for m in traj.messages if m["role"] == "user"][1:]
        assert "The capital of France is Paris." in observations[0]
        assert observations[1].startswith("<observation>\nBlocked: send_email acts outside the research world")
        assert "The capital of Kenya is Nairobi." in observations[2]
        assert traj.blocked_actions == 1 and traj.format_errors == 0 and traj.answer == "Paris"
        assert [c.tool for c in traj.tool_calls] == ["capital_of", "send_email", "capital_of"]
        assert not marker.exists()            # the blocked call never reached the server
    finally:
        box.close()


# ------------------------------------------------------------------------------------------ the page
def test_page_submits_a_question_and_shows_the_cited_answer(live, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(live.url + "/")
        page.wait_for_selector("#kind option[value=ask]", state="attached")
        page.fill("#question", QUESTION)
        page.click("#submit")
        page.wait_for_selector("#events li.ev-step", timeout=120_000)      # live progress before the answer
        page.wait_for_selector("#answer:not([hidden])", timeout=180_000)
        answer = page.text_content("#answer-text")
        assert answer == "Jane Austen"
        cites = page.locator("#citations li")
        assert cites.count() >= 1 and "corpus://t/" in cites.first.text_content()
        assert "verified" in cites.first.text_content()
        assert page.text_content("#run-status") == "done"
        page.wait_for_selector(f"#runs li:has-text('{QUESTION}')")
        page.screenshot(path=str(ROOT / "docs" / "serve_page.png") if os.environ.get("SLEUTH_SCREENSHOT")
                        else str(tmp_path / "page.png"), full_page=True)

        # a run with clarifying questions: the dialog asks them, the run goes on with the answers
        page.select_option("#kind", "clarify")
        page.fill("#question", "A short report on Jane Austen")
        page.click("#submit")
        page.wait_for_selector("dialog#clarify[open]", timeout=30_000)
        assert page.text_content("#clarify-questions label") == "Which period?"
        page.fill("#clarify-0", "Regency")
        page.fill("#clarify-1", "two pages")
        page.click("#clarify-send")
        page.wait_for_selector("#run-status.done", timeout=30_000)
        assert "Regency / two pages" in page.text_content("#sections")
        assert errors == []
    finally:
        page.close()


# ------------------------------------------------------------------------------------------ reports
def stand_in_report_module():
    """A stand-in for ``sleuth.report`` with its documented API (ReportConfig, clarify, run_report -> Report with
    .markdown, .html, .stats, .to_dict(); events stage / section / done). It checks the service's side of the
    contract — the report runner, the clarification round trip, the HTML artifact and the page's frame — not
    the report writer, which lives in that package."""
    import types
    from dataclasses import asdict, dataclass, field

    mod = types.ModuleType("sleuth.report")

    @dataclass
    class ReportConfig:
        sections: int = 2

    @dataclass
    class Report:
        markdown: str
        html: str
        stats: dict = field(default_factory=dict)

        def to_dict(self):
            return asdict(self)

    def clarify(request, policy, cfg):
        return ["Which period?", "Who is it for?"]

    def run_report(request, *, policy, env, cfg, run_dir, answers=None, on_event=None, cancel=None):
        assert Path(run_dir).is_dir()
        on_event("stage", {"stage": "research"})
        for title in ("Life", "Works")[:cfg.sections]:
            on_event("section", {"title": title, "text": f"{title} of Jane Austen ({' / '.join(answers or [])})."})
        on_event("done", {"sections": cfg.sections})
        html = ("<html><head><style>h1{color:#225}</style></head><body><h1>Jane Austen</h1>"
                f"<p id=scope>{' / '.join(answers or [])}</p><script>window.parent.document.title='pwned'</script>"
                "</body></html>")
        return Report("# Jane Austen\n\nA report.", html, {"sections": cfg.sections})

    mod.ReportConfig, mod.Report, mod.clarify, mod.run_report = ReportConfig, Report, clarify, run_report
    return mod


def test_report_runs_against_the_documented_report_api(monkeypatch, tmp_path, browser):
    from sleuth.serve.runners import default_registry, report
    from sleuth.serve.runners.ask import AskSettings

    monkeypatch.setitem(sys.modules, "sleuth.report", stand_in_report_module())
    assert report.available()
    assert "report" in default_registry(None, None, AskSettings(), tmp_path).kinds
    srv = service(tmp_path / "runs.db", kinds=[report.kind(None, None, report.ReportSettings(tmp_path / "reports"))])
    page = browser.new_page(viewport={"width": 1100, "height": 1200})
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            r = c.post("/api/runs", json={"kind": "report", "params": {"request": "Jane Austen", "answers": "x"}})
            assert r.status_code == 400 and "answers" in r.json()["error"]["message"]
        page.goto(srv.url + "/")
        page.wait_for_selector("#kind option[value=report]", state="attached")
        page.select_option("#kind", "report")
        page.fill("#question", "A report on Jane Austen")
        page.click("#submit")
        page.wait_for_selector("dialog#clarify[open]", timeout=30_000)
        page.fill("#clarify-0", "Regency")
        page.fill("#clarify-1", "students")
        page.click("#clarify-send")
        page.wait_for_selector("#report:not([hidden])", timeout=30_000)
        frame = page.frame_locator("#report-frame")
        assert frame.locator("h1").text_content() == "Jane Austen"
        assert frame.locator("#scope").text_content() == "Regency / students"
        assert page.title() == "sleuth"                       # the report's script did not run
        assert "Works" in page.text_content("#sections")
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            run = c.get("/api/runs", params={"kind": "report"}).json()["runs"][0]
            full = c.get(f"/api/runs/{run['id']}").json()
            assert full["status"] == "done" and full["result"]["answers"] == ["Regency", "students"]
            assert full["result"]["artifacts"] == ["report.html", "report.md"] and "html" not in full["result"]
            html = c.get(f"/api/runs/{run['id']}/report.html")
            assert html.status_code == 200 and "sandbox" in html.headers["content-security-policy"]
            kinds = [e["kind"] for e in c.get(f"/api/runs/{run['id']}/events").json()["events"]]
            assert [k for k in kinds if k not in ("status",)] == [
                "stage", "question", "question", "answers", "stage", "section", "section", "done"]
    finally:
        page.close()
        srv.close()


def test_a_real_report_run_streams_its_stages_and_serves_its_cited_html(tmp_path, env, chat_server):
    """The real ``sleuth.report`` behind the service: a scripted OpenAI-format model on loopback plans, the agent
    researches the real index, sections are written and verified; the run's events and its report come back
    over HTTP."""
    from replay_servers import completion, tool_calls

    from sleuth.policy.openai_policy import OpenAIPolicy
    from sleuth.report import ReportConfig
    from sleuth.serve.runners import report

    srv_model = chat_server
    srv_model.add(200, completion({"content": "# Jane Austen\n## Life\n- Where was Jane Austen born?\n"
                                              "## Works\n- What did Jane Austen write?"}))
    for query, answer in (("Jane Austen born", "Steventon, Hampshire"), ("Jane Austen novels", "six novels")):
        srv_model.add(200, tool_calls(("search", {"queries": [query]})))
        srv_model.add(200, tool_calls(("finish", {"answer": answer})))
    srv_model.add(200, completion({"content": "Jane Austen was born in Steventon, Hampshire [1]."}))
    srv_model.add(200, completion({"content": "Jane Austen was an English novelist known for six novels [1]."}))
    policy = OpenAIPolicy("scripted", base_url=srv_model.url, max_retries=1)
    cfg = ReportConfig(words=120, max_sections=2, min_sections=2, questions_per_section=1, max_steps=3,
                       research_batch=1, charts=False)
    settings = report.ReportSettings(tmp_path / "reports", config=cfg)
    srv = service(tmp_path / "runs.db", kinds=[report.kind(policy, env, settings)])
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            run = submit(c, "report", request="Write a report on Jane Austen", answers=["her life and works"])
            events = sse(c, f"/api/runs/{run['id']}/stream")
            done = wait_status(c, run["id"], ("done", "failed"))
            assert done["status"] == "done", done
            kinds = [e["kind"] for e in events]
            stages = [e["data"].get("name") for e in events if e["kind"] == "stage"]
            assert stages == ["plan", "research", "write", "references"] or stages[0] == "clarify", stages
            assert kinds.count("section") == 2 and "step" in kinds and kinds[-1] == "end"
            stats = done["result"]["stats"]
            assert stats["sections"] == 2 and stats["citations_kept"] >= 1 and stats["unique_sources"] >= 1
            html = c.get(f"/api/runs/{run['id']}/report.html")
            assert html.status_code == 200 and "Steventon, Hampshire" in html.text and "corpus://t/p1" in html.text
            md = done["result"]["markdown"]
            assert "Jane Austen was born in Steventon, Hampshire[1]." in md and "## References" in md
        assert not srv_model.script                      # every scripted reply was used
    finally:
        srv.close()


# ------------------------------------------------------------------------------------------ batching
def test_concurrent_generations_share_batched_calls_and_keep_their_rows():
    from concurrent.futures import ThreadPoolExecutor

    from sleuth.policy.base import Generation, SamplingParams
    from sleuth.serve.batching import BatchingPolicy

    class Echo:
        """Answers each prompt with its own ids reversed; records the batches it was given."""
        name, tokenizer, version = "echo", None, 3

        def __init__(self):
            self.batches = []

        def generate(self, prompts, params):
            if any(p == [666] for p in prompts):
                raise ValueError("bad prompt")
            self.batches.append(len(prompts))
            time.sleep(0.05)
            return [Generation(p[::-1], [0.0] * len(p), str(p[::-1]), "stop") for p in prompts]

    echo = Echo()
    shared = BatchingPolicy(echo, window_s=0.05)
    params = SamplingParams(max_new_tokens=4)
    requests = [[[i, i + 1]] * (1 + i % 2) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda p: shared.generate(p, params), requests))
    assert [[g.token_ids for g in out] for out in outs] == [[p[::-1] for p in req] for req in requests]
    assert sum(echo.batches) == 12 and len(echo.batches) < 8          # merged into fewer, larger calls
    assert shared.version == 3 and shared.name == "echo"
    with ThreadPoolExecutor(2) as pool:     # a failing request fails alone
        bad = pool.submit(shared.generate, [[666]], params)
        good = pool.submit(shared.generate, [[1, 2]], params)
        with pytest.raises(ValueError):
            bad.result()
        assert good.result()[0].token_ids == [2, 1]
