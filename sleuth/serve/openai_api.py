"""An OpenAI-compatible chat-completions endpoint serving a local token policy (``HFPolicy``).

    GET  /v1/models              the one model served
    POST /v1/chat/completions    non-streaming, or ``stream: true`` (server-sent events, OpenAI chunk format)

It is the chat template of sleuth's tag protocol (sleuth/protocol.py). Messages become the model's chat turns:
an assistant tool call is written back as the tag it stands for (``protocol.render``), a ``role: tool`` message
is shown as the ``<observation>`` turn the model was trained on, and when the request has ``tools`` the system
prompt names each tool's tag. The reply is parsed with ``protocol.parse``: a well-formed action for one of the
requested tools comes back as an OpenAI tool call (search / browse / code / finish, JSON arguments); anything
else comes back as text, for the client to judge. Generation stops at a closing action tag, as in the agent.

The whole reply is generated before the first byte is sent; a stream carries it as chunks. One generation runs
at a time. Bad requests get HTTP 400 in OpenAI's error shape; a prompt longer than the model's window gets
``context_length_exceeded``. Any model name is accepted (a single-model server, like llama.cpp's).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from sleuth import protocol
from sleuth.policy.base import SamplingParams

ROLES = ("system", "developer", "user", "assistant", "tool")
DEFAULT_MAX_TOKENS = 512


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ------------------------------------------------------------------------------------------ requests
def _text(content: Any, where: str) -> str:
    """Message content as text: a string, or an array of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise BadRequest(f"{where}.content must be a string or an array of text parts", where)


def check_request(body: Any) -> dict[str, Any]:
    """The request's settings, or BadRequest naming the field that is wrong."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("'messages' must be a non-empty array", "messages")
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise BadRequest(f"{where}.role must be one of {', '.join(ROLES)}", where)
        calls = m.get("tool_calls") if m["role"] == "assistant" else None
        if not (m["role"] == "assistant" and m.get("content") is None):   # null content: assistant turns only
            _text(m.get("content"), where)
        if calls is not None:
            if not isinstance(calls, list) or not all(
                    isinstance(c, dict) and isinstance(c.get("function"), dict)
                    and isinstance(c["function"].get("name"), str)
                    and isinstance(c["function"].get("arguments", ""), str) for c in calls):
                raise BadRequest(f"{where}.tool_calls must be an array of "
                                 "{id, type: 'function', function: {name, arguments: string}}", where)
        if m["role"] == "tool" and not isinstance(m.get("tool_call_id"), str):
            raise BadRequest(f"{where}: a tool message needs its 'tool_call_id'", where)

    def number(key: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
        v = body.get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v > hi or v < lo or (lo_open and v == lo):
            raise BadRequest(f"'{key}' must be a number in {'(' if lo_open else '['}{lo}, {hi}]", key)
        return float(v)

    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise BadRequest("'max_tokens' must be a positive integer", "max_tokens")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("'stop' must be a string or an array of up to 4 non-empty strings", "stop")
    if body.get("n", 1) != 1:
        raise BadRequest("only n = 1 is supported", "n")
    if not isinstance(body.get("stream", False), bool):
        raise BadRequest("'stream' must be a boolean", "stream")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest("'seed' must be an integer", "seed")
    tools = body.get("tools") or []
    if not isinstance(tools, list) or not all(
            isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str) for t in tools):
        raise BadRequest("'tools' must be an array of {type: 'function', function: {name, ...}}", "tools")
    unknown = [t["function"]["name"] for t in tools if t["function"]["name"] not in protocol.SYNTAX]
    if unknown:
        raise BadRequest(f"tool {unknown[0]!r} is not one this model can call "
                         f"(it calls {', '.join(protocol.SYNTAX)})", "tools")
    choice = body.get("tool_choice")
    if choice not in (None, "auto", "none"):
        raise BadRequest("tool_choice must be 'auto' or 'none' (this model cannot be forced to call a tool)",
                         "tool_choice")
    return {"messages": msgs, "temperature": number("temperature", 1.0, 0.0, 2.0),
            "top_p": number("top_p", 1.0, 0.0, 1.0, lo_open=True), "max_tokens": max_tokens or DEFAULT_MAX_TOKENS,
            "stop": stop, "stream": body.get("stream", False), "seed": seed,
            "tools": tools if choice != "none" else [],
            "include_usage": bool((body.get("stream_options") or {}).get("include_usage"))}


# ------------------------------------------------------------------------------------------ messages -> turns
def _render_call(call: dict[str, Any], thought: str) -> str:
    """An assistant tool call as the tag it stands for; arguments the protocol cannot render are shown raw."""
    name, raw = call["function"]["name"], call["function"].get("arguments") or "{}"
    try:
        args = json.loads(raw)
        action = protocol.from_tool_call(name, args)
        action.thought = thought
        return protocol.render(action)
    except (ValueError, TypeError, KeyError, protocol.ParseError):
        return (f"<think>{thought}</think>\n" if thought else "") + f"<{name}>{raw}</{name}>"


def tools_prompt(tools: list[dict[str, Any]]) -> str:
    """The requested tools in the model's own action format (the wording of the text-mode system prompt)."""
    return "Reply with ONE action:\n" + ",\n".join(protocol.SYNTAX[t["function"]["name"]] for t in tools) + "."


def to_turns(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, str]]:
    """OpenAI messages as the model's chat turns (system / user / assistant, text only)."""
    turns, finish_ids = [], set()
    for m in messages:
        role = "system" if m["role"] == "developer" else m["role"]
        text = "" if m.get("content") is None else _text(m["content"], "message")
        if role == "assistant" and m.get("tool_calls"):
            text = "\n".join(_render_call(c, text if i == 0 else "") for i, c in enumerate(m["tool_calls"]))
            finish_ids |= {c.get("id") for c in m["tool_calls"] if c["function"]["name"] == "finish"}
        elif role == "tool":
            if m["tool_call_id"] in finish_ids:
                continue          # an answer ends an episode: in the tag protocol nothing follows it
            role, text = "user", f"<observation>\n{text}\n</observation>"
        turns.append({"role": role, "content": text})
    if tools:
        if turns[0]["role"] != "system":
            turns.insert(0, {"role": "system", "content": ""})
        turns[0]["content"] = (turns[0]["content"] + "\n\n" + tools_prompt(tools)).strip()
    return turns


def to_message(text: str, tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The model's reply as an OpenAI message: a tool call when it is a well-formed action for a requested tool."""
    names = {t["function"]["name"] for t in tools}
    if names:
        try:
            action = protocol.parse(text)
        except protocol.ParseError:
            action = None
        if action is not None and action.tool in names:
            return {"role": "assistant", "content": action.thought or None, "tool_calls": [
                {"id": protocol.new_call_id(), "type": "function",
                 "function": {"name": action.tool, "arguments": json.dumps(action.args, ensure_ascii=False)}}]}
    return {"role": "assistant", "content": text}


# ------------------------------------------------------------------------------------------ the app
def create_app(policy: Any, name: str | None = None) -> FastAPI:
    """The endpoint for ``policy`` (a TokenPolicy with a chat-template tokenizer, e.g. ``HFPolicy``)."""
    model_id = name or policy.name
    created = int(time.time())
    lock = threading.Lock()
    window = int(getattr(policy, "max_positions", 0) or 0)
    app = FastAPI(title="sleuth OpenAI-compatible endpoint")

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, e: BadRequest) -> JSONResponse:
        return JSONResponse(error_body(str(e), param=e.param, code=e.code), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(e.detail), code=str(e.status_code)), status_code=e.status_code)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                            "owned_by": "sleuth"}]}

    def complete(req: dict[str, Any]) -> dict[str, Any]:
        tok = policy.tokenizer
        prompt = tok.apply_chat_template(to_turns(req["messages"], req["tools"]), tokenize=False,
                                         add_generation_prompt=True)
        ids = tok.encode(prompt, add_special_tokens=False)
        if window and len(ids) >= window:
            raise BadRequest(f"This model's maximum context length is {window} tokens. However, your messages "
                             f"resulted in {len(ids)} tokens.", "messages", "context_length_exceeded")
        stops = req["stop"] + (protocol.STOP_STRINGS if req["tools"] else [])
        params = SamplingParams(max_new_tokens=req["max_tokens"], temperature=req["temperature"],
                                top_p=req["top_p"], stop=stops)
        with lock:
            if req["seed"] is not None:
                import torch
                torch.manual_seed(req["seed"])
            [gen] = policy.generate([ids], params)
        text = gen.text
        cut = min((i for i in (text.find(s) for s in req["stop"]) if i >= 0), default=-1)
        if cut >= 0:   # a client's stop sequence is not part of the reply (OpenAI semantics)
            text = text[:cut]
        message = to_message(text, req["tools"])
        finish = ("tool_calls" if message.get("tool_calls") else
                  "length" if gen.finish_reason == "length" and cut < 0 else "stop")
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": model_id, "choices": [{"index": 0, "message": message, "logprobs": None,
                                                "finish_reason": finish}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": len(gen.token_ids),
                          "total_tokens": len(ids) + len(gen.token_ids)}}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = json.loads(await request.body())
        except ValueError as e:
            raise BadRequest(f"the request body is not valid JSON: {e}") from e
        req = check_request(body)
        try:
            resp = await run_in_threadpool(complete, req)
        except BadRequest:
            raise
        except Exception as e:  # a generation failure is the server's error, said in OpenAI's shape
            return JSONResponse(error_body(f"{type(e).__name__}: {e}", "server_error"), status_code=500)
        if not req["stream"]:
            return resp
        return StreamingResponse(_sse(resp, req["include_usage"]), media_type="text/event-stream")

    return app


def _sse(resp: dict[str, Any], include_usage: bool):
    """A finished completion as OpenAI ``chat.completion.chunk`` events, then ``[DONE]``."""
    choice, message = resp["choices"][0], resp["choices"][0]["message"]
    head = {k: resp[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}

    def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        chunk = head | {"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return f"data: {json.dumps(chunk | extra, ensure_ascii=False)}\n\n"

    yield event({"role": "assistant", "content": ""})
    if message.get("content"):
        yield event({"content": message["content"]})
    for i, call in enumerate(message.get("tool_calls") or []):
        yield event({"tool_calls": [{"index": i, **call}]})
    yield event({}, choice["finish_reason"])
    if include_usage:
        yield f"data: {json.dumps(head | {'choices': [], 'usage': resp['usage']})}\n\n"
    yield "data: [DONE]\n\n"
