"""The chat loop over real HTTP on loopback.

Two servers: a scripted OpenAI-format server (tests/replay_servers.py) that records the exact request bodies
and replies with scripted tool calls and failures, for deterministic multi-turn checks; and sleuth's own
OpenAI-compatible endpoint (sleuth/serve/openai_api.py) serving the real embedded SmolLM2.
"""

from __future__ import annotations

import json
import os

import pytest
from replay_servers import api_error, completion, tool_calls

from sleuth.agent import Agent, AgentConfig
from sleuth.context import ContextConfig
from sleuth.policy.openai_policy import OpenAIPolicy
from sleuth.protocol import FINISH_SCHEMA

QUESTION = "Where was Jane Austen born?"
WIRE_KEYS = {"role", "content", "tool_calls", "tool_call_id"}


@pytest.fixture
def chat(chat_server):
    return chat_server


def run_agent(env, srv, max_retries: int = 0, **cfg):
    policy = OpenAIPolicy("gpt-test", base_url=srv.url, max_retries=max_retries)
    return Agent(policy, env, AgentConfig(**{"max_steps": 6, "temperature": 0, **cfg})).run(QUESTION)


def check_wire(messages: list[dict]) -> None:
    """Messages every common server accepts: string content, one tool call per assistant turn with JSON-object
    arguments, each call answered by one tool message with its id, standard keys only."""
    pending = None
    for m in messages:
        assert set(m) <= WIRE_KEYS, m
        assert isinstance(m["content"], str), m
        if pending is not None:
            assert m["role"] == "tool" and m["tool_call_id"] == pending, m
            pending = None
            continue
        assert m["role"] != "tool", m
        if m["role"] == "assistant":
            assert m["content"] or m.get("tool_calls"), m
        if m.get("tool_calls"):
            [call] = m["tool_calls"]
            assert call["type"] == "function" and call["id"]
            assert isinstance(json.loads(call["function"]["arguments"]), dict)
            pending = call["id"]
    assert pending is None


# ------------------------------------------------------------------------------ scripted server, exact bodies
def test_multi_turn_tool_calls_send_messages_every_server_accepts(env, chat):
    chat.add(200, tool_calls(("search", {"queries": ["Jane Austen"]})))
    chat.add(200, tool_calls(("browse", {"url": "corpus://t/p1", "find": "born"}), content="Open it."))
    chat.add(200, tool_calls(("finish", {"answer": "Steventon", "citations": [
        {"url": "corpus://t/p1", "quote": "She was born in Steventon, Hampshire."}]})))
    traj = run_agent(env, chat)
    assert traj.finish_reason == "finish" and traj.answer == "Steventon" and traj.steps == 3
    assert [c.tool for c in traj.tool_calls] == ["search", "browse"] and traj.format_errors == 0
    assert traj.citations[0].verified
    bodies = [r["json"] for r in chat.requests]
    assert len(bodies) == 3
    for body in bodies:
        check_wire(body["messages"])
        assert [t["function"]["name"] for t in body["tools"]] == ["search", "browse", "finish"]
    last = bodies[-1]["messages"]
    # the server's ids are echoed; the tool results are plain text answering them
    assert [m["tool_call_id"] for m in last if m["role"] == "tool"][-2:] == ["call_0search", "call_0browse"]
    assert last[-4]["content"] == "" and last[-2]["content"] == "Open it."
    assert "corpus://t/p1" in last[-3]["content"] and "<observation>" not in last[-3]["content"]
    # the worked example is in tool-call form too, and the system prompt speaks of tools, not tags
    assert "<search>" not in bodies[0]["messages"][0]["content"]
    assert any(m.get("tool_calls") for m in bodies[0]["messages"][:-1])


def test_native_format_errors_speak_of_tool_calls(env, chat):
    chat.add(200, completion({"content": "I think she was born in Bath."}))
    chat.add(200, completion({"content": ""}))
    chat.add(200, tool_calls(("finish", {"answer": "Bath"})))
    traj = run_agent(env, chat)
    assert traj.finish_reason == "finish" and traj.format_errors == 2
    msgs = chat.requests[-1]["json"]["messages"]
    check_wire(msgs)
    errors = [m["content"] for m in msgs if m["role"] == "user" and m["content"].startswith("Error")]
    assert len(errors) == 2
    for e in errors:
        assert "call exactly one of the tools search / browse / finish" in e.lower()
        assert "<search>" not in e and "<answer>" not in e
    assert "text only" in errors[0] and "empty" in errors[1]


def test_text_mode_format_errors_speak_of_tags(env, chat):
    chat.add(200, completion({"content": "I think she was born in Bath."}))
    chat.add(200, completion({"content": "<answer>Bath</answer>"}))
    policy = OpenAIPolicy("gpt-test", base_url=chat.url, max_retries=0, native_tools=False)
    traj = Agent(policy, env, AgentConfig(max_steps=4)).run(QUESTION)
    assert traj.finish_reason == "finish" and traj.format_errors == 1
    body = chat.requests[-1]["json"]
    assert "tools" not in body
    assert "<search>" in body["messages"][-1]["content"] and body["messages"][-1]["role"] == "user"


def test_two_tool_calls_run_the_first_and_say_so(env, chat):
    chat.add(200, tool_calls(("search", {"queries": ["Jane Austen"]}),
                             ("browse", {"url": "corpus://t/p2"})))
    chat.add(200, tool_calls(("finish", {"answer": "Steventon"})))
    traj = run_agent(env, chat)
    assert traj.finish_reason == "finish"
    assert traj.format_errors == 1                                   # counted once
    assert [c.tool for c in traj.tool_calls] == ["search"]           # the first call ran, the second did not
    assert traj.queries == ["Jane Austen"] and traj.urls_opened == []
    msgs = chat.requests[-1]["json"]["messages"]
    check_wire(msgs)
    assistant, tool = msgs[-2], msgs[-1]
    assert [c["function"]["name"] for c in assistant["tool_calls"]] == ["search"]
    assert "2 tool calls" in tool["content"] and "only the first (search) was run" in tool["content"]
    assert "corpus://t/p1" in tool["content"]                        # and its result is there
    # the trajectory keeps the call that was not run
    record = [m for m in traj.messages if m.get("step") == 1][0]
    assert record["tool_calls_not_run"] == [{"name": "browse", "arguments": {"url": "corpus://t/p2"}}]


def test_arguments_that_are_not_json_are_reported_not_echoed(env, chat):
    chat.add(200, tool_calls(("search", '{"queries": ["Jane Austen"')))
    chat.add(200, tool_calls(("finish", {"answer": "Steventon"})))
    traj = run_agent(env, chat)
    assert traj.finish_reason == "finish" and traj.format_errors == 1
    msgs = chat.requests[-1]["json"]["messages"]
    check_wire(msgs)                                                   # "{}" on the wire, valid JSON
    assert msgs[-2]["tool_calls"][0]["function"]["arguments"] == "{}"
    assert "not valid JSON" in msgs[-1]["content"] and '\'{"queries": ["Jane Austen"\'' in msgs[-1]["content"]


def test_missing_tool_call_ids_get_ids_every_server_accepts(env, chat):
    reply = tool_calls(("search", {"queries": ["Jane Austen"]}))
    reply["choices"][0]["message"]["tool_calls"][0]["id"] = ""
    chat.add(200, reply)
    chat.add(200, tool_calls(("finish", {"answer": "Steventon"})))
    run_agent(env, chat)
    msgs = chat.requests[-1]["json"]["messages"]
    check_wire(msgs)
    call_id = msgs[-2]["tool_calls"][0]["id"]
    assert len(call_id) == 9 and call_id.isalnum()                     # Mistral's rule: [a-zA-Z0-9]{9}


# ------------------------------------------------------------------------------ server errors mid-run
@pytest.mark.parametrize("status,headers", [(500, {}), (429, {"retry-after-ms": "30"}), (503, {"retry-after": "0"})])
def test_transient_server_error_is_retried_and_the_run_completes(env, chat, status, headers):
    chat.add(200, tool_calls(("search", {"queries": ["Jane Austen"]})))
    chat.add(status, api_error("The server had an error", "server_error", None), headers)
    chat.add(200, tool_calls(("finish", {"answer": "Steventon"})))
    traj = run_agent(env, chat, max_retries=2)
    assert traj.finish_reason == "finish" and traj.answer == "Steventon"
    assert len(chat.requests) == 3 and chat.requests[1]["json"] == chat.requests[2]["json"]


def test_persistent_server_error_ends_the_run_keeping_what_it_gathered(env, chat):
    chat.add(200, tool_calls(("search", {"queries": ["Jane Austen"]})))
    chat.add(200, tool_calls(("browse", {"url": "corpus://t/p1"})))
    for _ in range(3):
        chat.add(500, api_error("Input should be a valid string", "server_error", None), {"retry-after-ms": "10"})
    events = []
    policy = OpenAIPolicy("gpt-test", base_url=chat.url, max_retries=2)
    traj = Agent(policy, env, AgentConfig(max_steps=6), on_event=lambda t, k, d: events.append((k, d))).run(QUESTION)
    assert traj.finish_reason == "error" and traj.answer is None
    assert "500" in traj.meta["error"] and "Input should be a valid string" in traj.meta["error"]
    assert len(chat.requests) == 5                                     # 2 steps, then 1 try + 2 retries
    assert traj.steps == 2 and traj.queries == ["Jane Austen"] and traj.urls_opened == ["corpus://t/p1"]
    assert [m["role"] for m in traj.messages[-4:]] == ["assistant", "tool", "assistant", "tool"]
    assert ("error", {"step": 3, "message": traj.meta["error"].split(": ", 1)[1]}) in events


def test_ask_shows_the_server_error(env, chat, tmp_path):
    from typer.testing import CliRunner

    from sleuth.cli import app

    chat.add(200, tool_calls(("search", {"queries": ["Jane Austen"]})))
    for _ in range(2):
        chat.add(503, api_error("The server is overloaded", "server_error", None), {"retry-after-ms": "10"})
    args = ["ask", QUESTION, "--base-url", chat.url, "--model", "gpt-test", "--index", "t", "--engine", "lexical",
            "--save", str(tmp_path / "ask.jsonl")]
    out = CliRunner().invoke(app, args + ["--json", "--max-retries", "1"])
    assert out.exit_code == 1, out.output
    res = json.loads(out.stdout)
    assert res["finish_reason"] == "error" and "503" in res["error"] and "overloaded" in res["error"]
    assert res["stats"]["steps"] == 1 and res["stats"]["search_queries"] == 1
    chat.add(200, tool_calls(("search", {"queries": ["Jane Austen"]})))
    for _ in range(2):
        chat.add(503, api_error("The server is overloaded", "server_error", None), {"retry-after-ms": "10"})
    out = CliRunner().invoke(app, args + ["--max-retries", "1"])
    assert out.exit_code == 1 and "server error" in out.output and "overloaded" in out.output


# ------------------------------------------------------------------------------ context budget on the chat path
def test_chat_context_manager_compresses_old_observations(env, chat):
    """Long pages through a server: with the manager the run goes on, old tool results become stubs."""
    def run(enabled: bool, n: int = 12):
        chat.requests.clear()
        for i in range(n):
            chat.add(200, tool_calls(("browse", {"url": "corpus://t/p3", "page": 1 + i % 2})))
        cfg = dict(max_steps=n, context_window=3000, max_new_tokens=64, context=ContextConfig(enabled=enabled))
        traj = run_agent(env, chat, **cfg)
        chat.script.clear()
        return traj

    without = run(False)
    assert without.finish_reason == "context" and without.steps < 6
    traj = run(True)
    assert traj.finish_reason == "max_steps" and traj.steps == 12 and traj.context_events
    last = chat.requests[-1]["json"]["messages"]
    check_wire(last)
    assert len(json.dumps(last)) < 3 * 3000                              # within the estimated budget
    tools = [m["content"] for m in last if m["role"] == "tool" and m["tool_call_id"].startswith("call_")]
    assert len(tools) == 11 and ("compressed to save context" in tools[0] or "result dropped" in tools[0])
    assert "Steventon is a village" in tools[-1]                         # the newest result is intact
    # the model's own turns are never touched
    assert sum(1 for m in last if m["role"] == "assistant" and m.get("tool_calls")
               and m["tool_calls"][0]["function"]["name"] == "browse") == 11
    # the trajectory's transcript keeps the full observations
    assert all("compressed" not in m["content"] for m in traj.messages if m["role"] == "tool")


# ------------------------------------------------------------------------------ sleuth's own endpoint, real model
@pytest.fixture(scope="module")
def endpoint(smol_policy):
    """sleuth/serve/openai_api.py serving the real embedded SmolLM2 on a free loopback port (uvicorn thread)."""
    import socket
    import threading
    import time

    import torch
    import uvicorn

    from sleuth.serve.openai_api import create_app

    threads = torch.get_num_threads()
    torch.set_num_threads(1)              # reproducible greedy decoding, and fastest on a shared machine
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(smol_policy, "smollm2"), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    t0 = time.time()
    while not server.started and time.time() - t0 < 30:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()
    torch.set_num_threads(threads)


def native_request(env, question: str) -> dict:
    """What the agent's first request carries in native mode: its prompt in tool-call form and the tools."""
    agent = Agent(OpenAIPolicy("smollm2", base_url="http://unused"), env, AgentConfig())
    tools = [t.schema() for t in env.session().tools.values()]
    return {"messages": agent.prefix + [{"role": "user", "content": question}], "tools": tools + [FINISH_SCHEMA]}


def test_endpoint_agent_multi_turn_with_tool_calls(env, endpoint, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    policy = OpenAIPolicy("smollm2", base_url=endpoint, max_retries=0)
    agent = Agent(policy, env, AgentConfig(max_steps=4, temperature=0, max_new_tokens=64))
    traj = agent.run("Who wrote Pride and Prejudice?")
    assert traj.finish_reason in ("finish", "max_steps"), traj.meta.get("error")
    assert traj.steps >= 2 and traj.tool_calls[0].tool == "search" and traj.urls_seen
    assert traj.prompt_tokens > 0 and traj.generated_tokens > 0           # the endpoint reports usage
    run = traj.messages[len(agent.prefix) + 1:]                             # this run's turns, after the question
    assert run[0].get("tool_calls") and run[1]["role"] == "tool" and "corpus://t/" in run[1]["content"]
    if traj.finish_reason == "finish":
        assert traj.answer


def test_endpoint_stream_and_tool_calls(env, endpoint):
    """A reply in tags comes back as a tool call; the stream carries the same message in OpenAI chunks."""
    import openai

    client = openai.OpenAI(base_url=endpoint, api_key="x", max_retries=0)
    req = native_request(env, "Who wrote Pride and Prejudice?")
    full = client.chat.completions.create(model="smollm2", temperature=0, max_tokens=48, **req)
    [call] = full.choices[0].message.tool_calls
    assert full.choices[0].finish_reason == "tool_calls" and call.function.name == "search"
    assert json.loads(call.function.arguments)["queries"] and len(call.id) == 9
    chunks = list(client.chat.completions.create(model="smollm2", temperature=0, max_tokens=48, stream=True,
                                                 stream_options={"include_usage": True}, **req))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    [streamed] = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert (streamed.function.name, streamed.function.arguments) == (call.function.name, call.function.arguments)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    # plain text (no tools): streamed content equals the non-streamed content
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    text = client.chat.completions.create(model="smollm2", messages=msgs, temperature=0, max_tokens=12)
    parts = client.chat.completions.create(model="smollm2", messages=msgs, temperature=0, max_tokens=12, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in parts if c.choices) == text.choices[0].message.content
    assert text.choices[0].message.tool_calls is None and text.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("body,param", [
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0]"),
    ({"model": "m", "messages": [{"role": "user", "content": None}]}, "messages[0]"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0]"),
    ({"model": "m", "messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}]}, "messages[1]"),
    ({"model": "m", "messages": [{"role": "assistant", "content": None, "tool_calls": [{"function": {}}]}]},
     "messages[0]"),
    ({"model": "m", "messages": [{"role": "user", "content": "q"}], "temperature": 5}, "temperature"),
    ({"model": "m", "messages": [{"role": "user", "content": "q"}], "max_tokens": 0}, "max_tokens"),
    ({"model": "m", "messages": [{"role": "user", "content": "q"}], "n": 2}, "n"),
    ({"model": "m", "messages": [{"role": "user", "content": "q"}], "stop": [1]}, "stop"),
    ({"model": "m", "messages": [{"role": "user", "content": "q"}],
      "tools": [{"type": "function", "function": {"name": "send_email"}}]}, "tools"),
    ({"model": "m", "messages": [{"role": "user", "content": "q"}], "tool_choice": "required"}, "tool_choice"),
])
def test_endpoint_rejects_malformed_requests(endpoint, body, param):
    import httpx

    r = httpx.post(f"{endpoint}/chat/completions", json=body, timeout=30)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


def test_endpoint_models_bad_json_and_context_length(endpoint):
    import httpx

    r = httpx.get(f"{endpoint}/models", timeout=30)
    assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["smollm2"]
    r = httpx.post(f"{endpoint}/chat/completions", content=b'{"model": "m", "messages": [', timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.get(f"{endpoint}/nowhere", timeout=30)
    assert r.status_code == 404 and r.json()["error"]["message"]
    long = [{"role": "user", "content": "word " * 9000}]
    r = httpx.post(f"{endpoint}/chat/completions", json={"model": "m", "messages": long}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_endpoint_renders_tool_turns_as_the_protocol():
    """Tool calls go back to the model as the tags they stand for, tool results as observations; a text-mode
    conversation passes through unchanged."""
    from sleuth import protocol
    from sleuth.agent import load_prompt
    from sleuth.serve.openai_api import to_message, to_turns

    tools = [{"type": "function", "function": {"name": n}} for n in ("search", "browse", "finish")]
    reply = to_message("<think>Look it up.</think>\n<search>Jane Austen\nSteventon</search>", tools)
    [call] = reply["tool_calls"]
    assert reply["content"] == "Look it up." and json.loads(call["function"]["arguments"]) == {
        "queries": ["Jane Austen", "Steventon"]}
    answer = to_message('<answer>Steventon <cite url="corpus://t/p1">born in Steventon</cite></answer>', tools)
    assert json.loads(answer["tool_calls"][0]["function"]["arguments"]) == {
        "answer": "Steventon", "citations": [{"url": "corpus://t/p1", "quote": "born in Steventon"}]}
    for text in ("I do not know.", "<code>print(1)</code>", "<search>a</search><browse>b</browse>"):
        assert to_message(text, tools) == {"role": "assistant", "content": text}   # not a requested action
    turns = to_turns([{"role": "user", "content": "q"}, reply,
                      {"role": "tool", "tool_call_id": call["id"], "content": "[1] Jane Austen"}], [])
    assert turns[1]["content"] == protocol.render(protocol.parse(
        "<think>Look it up.</think>\n<search>Jane Austen\nSteventon</search>"))
    assert turns[2] == {"role": "user", "content": "<observation>\n[1] Jane Austen\n</observation>"}
    text_mode = load_prompt("short-fewshot") + [{"role": "user", "content": "q"}]
    assert to_turns(text_mode, []) == text_mode
    # the native prompt's worked example renders back to exactly the text prompt's turns
    assert to_turns(load_prompt("short-fewshot", native=True), [])[1:] == load_prompt("short-fewshot")[1:]
    with_tools = to_turns([{"role": "user", "content": "q"}], tools)
    assert with_tools[0]["role"] == "system" and "<search>" in with_tools[0]["content"]


@pytest.mark.slow
def test_serve_openai_command(tmp_path):
    """`sleuth serve-openai` in a subprocess: it loads the embedded model and answers on the given port."""
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "sleuth.cli", "serve-openai", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "SLEUTH_THREADS": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        t0 = time.time()
        while True:
            assert proc.poll() is None, open(tmp_path / "serve.log").read()
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() - t0 < 180, "serve-openai did not come up"
            time.sleep(0.5)
        r = httpx.post(f"{url}/chat/completions", timeout=60, json={
            "model": "x", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0})
        body = r.json()
        assert r.status_code == 200 and body["object"] == "chat.completion"
        assert isinstance(body["choices"][0]["message"]["content"], str) and body["usage"]["completion_tokens"] <= 4
    finally:
        proc.terminate()
        proc.wait(timeout=30)
