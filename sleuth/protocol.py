"""How actions are written and parsed — the one place the action format is defined.

Local models write plain text with tags. A reply is an optional thought then exactly one action:

    <think>free text</think>                        (optional)
    <search>query one
    query two</search>                               a batch: one query per line (or separated by ';')
    <browse>corpus://wiki/w01234</browse>            open a URL; optional extra lines:
                                                     "page: N", "find: text", "goal: text"
    <code>print(2026 - 1969)</code>                  run Python in the sandbox
    <answer>final answer
    <cite url="corpus://wiki/w01234">exact quote from that page</cite></answer>

Parsing is strict: anything else (no action, two actions, an unclosed tag, empty arguments) is a
``ParseError`` that the agent shows to the model as an error observation and counts as a format error.
An unknown tag (<email>, <observation>) comes back as an Action of that name for the safety interceptor,
which tells actions outside the research world (blocked) from invented protocol tags (format errors).
Nothing is silently repaired. Tag names are case-insensitive (<SEARCH>…</Search> is a search). Generation
stops at a closing action tag, so the model cannot write the observation itself.

Parsing takes time linear in the reply's length, whatever it holds (unclosed tags included): tag
patterns never scan past the next '<', and each closing tag is searched for once.
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

ACTIONS = ("search", "browse", "code", "answer")
STOP_STRINGS = [f"</{c(a)}>" for a in ACTIONS for c in (str.lower, str.upper, str.capitalize)]
# An opening tag; its attributes stop at the next '<' so that unclosed tags cannot make parsing quadratic.
_TAG = re.compile(r"<([a-zA-Z_][\w-]*)(\s[^<>]*)?>")
_THINK = re.compile(r"<think\s*>", re.I)
_CITE = re.compile(r'<cite\s+url\s*=\s*"([^"<>]+)"\s*>', re.I)


def _closing(name: str, text: str, start: int) -> re.Match | None:
    """The first closing tag </name> (any case) in text at or after start."""
    return re.compile(rf"</{re.escape(name)}\s*>", re.I).search(text, start)
# How each tool is called in the tag format, and what for (keyed by tool name: the answer is the ``finish`` tool).
SYNTAX = {
    "search": "<search>search query</search> to search",
    "browse": "<browse>URL</browse> to read a page",
    "code": "<code>python code</code> to run Python",
    "finish": "<answer>short answer</answer> when you know the answer",
}


@dataclass
class Action:
    tool: str                         # search | browse | code | finish | <unknown tag name>
    args: dict[str, Any] = field(default_factory=dict)
    thought: str = ""
    raw: str = ""


class ParseError(ValueError):
    """The reply does not contain exactly one well-formed action. The message is shown to the model."""


def parse(text: str) -> Action:
    thought, body = "", text
    m = _THINK.search(text)
    end = _closing("think", text, m.end()) if m else None
    if m and end:
        thought = text[m.end():end.start()].strip()
        body = text[:m.start()] + text[end.end():]
    body = body.replace("<|im_end|>", "")

    opened = [(t.group(1).lower(), t.start(), t.end()) for t in _TAG.finditer(body)
              if t.group(1).lower() not in ("think", "cite")]
    if not opened:
        raise ParseError("no action found. End every reply with exactly one of <search>, <browse>, "
                         "<code> or <answer>.")
    name, start, content_start = opened[0]
    close = _closing(name, body, content_start)
    if close is None:
        raise ParseError(f"<{name}> is not closed with </{name}>.")
    end = close.start()
    # tags nested inside the action's content are part of it (e.g. <cite> in <answer>, html in code)
    others = [n for n, s, _ in opened[1:] if s > end]
    if others:
        raise ParseError(f"one action per reply: found <{name}> and then <{others[0]}>.")
    content = body[content_start:end]
    if not thought:
        thought = body[:start].strip()

    if name not in ACTIONS:
        return Action(tool=name, args={"content": content.strip()}, thought=thought, raw=text)
    if name == "search":
        queries = [q.strip() for q in re.split(r"[\n;]", content) if q.strip()]
        if not queries:
            raise ParseError("<search> needs at least one query.")
        return Action("search", {"queries": queries}, thought, text)
    if name == "browse":
        lines = [ln.strip() for ln in content.strip().splitlines() if ln.strip()]
        if not lines:
            raise ParseError("<browse> needs a URL.")
        args: dict[str, Any] = {"url": lines[0]}
        for ln in lines[1:]:
            key, sep, val = ln.partition(":")
            key = key.strip().lower()
            if not sep or key not in ("page", "find", "goal"):
                raise ParseError(f"<browse> option lines are 'page: N', 'find: text' or 'goal: text'; got {ln!r}.")
            val = val.strip()
            if key == "page":
                if not val.isdigit():
                    raise ParseError(f"<browse> page must be a positive integer, got {val!r}.")
                args["page"] = int(val)
            else:
                args[key] = val
        return Action("browse", args, thought, text)
    if name == "code":
        code = content.strip("\n")
        if not code.strip():
            raise ParseError("<code> is empty.")
        return Action("code", {"code": code}, thought, text)
    # answer
    citations, answer = _citations(content)
    if not answer:
        raise ParseError("<answer> is empty.")
    return Action("finish", {"answer": answer, "citations": citations}, thought, text)


def _citations(content: str) -> tuple[list[dict[str, str]], str]:
    """The <cite url="…">quote</cite> elements of an answer, and the answer text without them."""
    cites, rest, pos = [], [], 0
    while (m := _CITE.search(content, pos)) and (end := _closing("cite", content, m.end())):
        rest.append(content[pos:m.start()])
        cites.append({"url": m.group(1).strip(), "quote": " ".join(content[m.end():end.start()].split())})
        pos = end.end()
    rest.append(content[pos:])
    return cites, "".join(rest).strip()


def render(action: Action) -> str:
    """The canonical text of an action (used for examples in the prompt and by non-local policies)."""
    a = action.args
    think = f"<think>{action.thought}</think>\n" if action.thought else ""
    if action.tool == "search":
        return think + "<search>" + "\n".join(a["queries"]) + "</search>"
    if action.tool == "browse":
        extra = "".join(f"\n{k}: {a[k]}" for k in ("page", "find", "goal") if k in a)
        return think + f"<browse>{a['url']}{extra}</browse>"
    if action.tool == "code":
        return think + f"<code>{a['code']}</code>"
    if action.tool == "finish":
        cites = "".join(f'\n<cite url="{c["url"]}">{c["quote"]}</cite>' for c in a.get("citations", []))
        return think + f"<answer>{a['answer']}{cites}</answer>"
    raise ValueError(f"cannot render action {action.tool!r}")


def from_tool_call(name: str, arguments: dict[str, Any] | str) -> Action:
    """Map a native (OpenAI-style) tool call onto an Action, with the same strictness as the tags."""
    if isinstance(arguments, str):
        raise ParseError(f"the arguments of tool call {name!r} are not valid JSON: {arguments[:200]!r}")
    if name == "finish":
        answer = arguments.get("answer")
        if not isinstance(answer, str) or not answer.strip():
            raise ParseError("finish needs a non-empty 'answer' string.")
        cites = arguments.get("citations") or []
        if not isinstance(cites, list) or not all(isinstance(c, dict) and "url" in c for c in cites):
            raise ParseError("finish 'citations' must be a list of {url, quote} objects.")
        return Action("finish", {"answer": answer.strip(),
                                 "citations": [{"url": str(c["url"]), "quote": " ".join(str(c.get("quote", "")).split())}
                                               for c in cites]})
    return Action(name, dict(arguments))


FINISH_SCHEMA = {
    "type": "function",
    "function": {
        "name": "finish",
        "description": "Give the final answer, with citations of pages you opened or saw in search results.",
        "parameters": {"type": "object", "properties": {
            "answer": {"type": "string", "description": "short final answer"},
            "citations": {"type": "array", "items": {"type": "object", "properties": {
                "url": {"type": "string"}, "quote": {"type": "string", "description": "exact text from that page"}}}},
        }, "required": ["answer"]},
    },
}


_ID_CHARS = string.ascii_letters + string.digits


def new_call_id() -> str:
    """A tool-call id every server accepts: 9 letters and digits (Mistral's rule; OpenAI treats ids as opaque)."""
    return "".join(secrets.choice(_ID_CHARS) for _ in range(9))
