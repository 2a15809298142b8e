"""The ``ask`` run kind: the agent researches one question and answers with verified citations.

Every agent event becomes a run event as it happens: ``step`` (the action, with its thought), ``queries``
(a search's batch), ``page`` (a page opened), ``observation``, ``context`` (the context manager compressed
old observations), ``format_error``, ``blocked``, ``injection``, ``error``, then ``answer``. Cancel is
checked at every agent event: a cancelled run stops after its current step and keeps what it gathered.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from sleuth.agent import Agent, AgentConfig, Environment
from sleuth.serve.runs import Cancelled, Emitter, Kind, ParamError, check_fields

MAX_QUESTION_CHARS = 2000


@dataclass
class AskSettings:
    """Server-side agent settings (from the policy's training record and the server's command line);
    a request may only lower the step budget or choose a temperature within bounds."""
    max_steps: int = 10
    prompt: str = "short-fewshot"
    max_new_tokens: int = 256
    context_window: int = 8192
    max_temperature: float = 1.5
    extra: dict[str, Any] = field(default_factory=dict)


class _TrackedEnvironment(Environment):
    """The server's environment, remembering each tool session so a cancelled run's tools are closed too."""

    def __init__(self, env: Environment):
        self.__dict__.update(env.__dict__)
        self._base = env
        self.sessions: list[Any] = []

    def session(self):
        s = self._base.session()
        self.sessions.append(s)
        return s

    def close(self) -> None:
        for s in self.sessions:
            s.close()


def check(settings: AskSettings):
    def check_params(params: Any) -> dict[str, Any]:
        p = check_fields(params, {"question": str, "max_steps": int, "temperature": (int, float)}, ("question",))
        p["question"] = p["question"].strip()
        if not p["question"]:
            raise ParamError("params.question is empty")
        if len(p["question"]) > MAX_QUESTION_CHARS:
            raise ParamError(f"params.question is longer than {MAX_QUESTION_CHARS} characters")
        if "max_steps" in p and not 1 <= p["max_steps"] <= settings.max_steps:
            raise ParamError(f"params.max_steps must be in [1, {settings.max_steps}]")
        if "temperature" in p and not 0 <= p["temperature"] <= settings.max_temperature:
            raise ParamError(f"params.temperature must be in [0, {settings.max_temperature}]")
        return p
    return check_params


def _summary(tool: str, args: dict[str, Any]) -> str:
    if tool == "search":
        return " | ".join(args.get("queries", []))
    if tool == "browse":
        return str(args.get("url", ""))
    if tool == "code":
        return (args.get("code") or "").splitlines()[0][:120] if args.get("code") else ""
    if tool == "finish":
        return str(args.get("answer", ""))[:200]
    return str(args)[:200]


def make_runner(policy: Any, env: Environment, settings: AskSettings):
    def run(params: dict[str, Any], emit: Emitter, cancel: threading.Event) -> dict[str, Any]:
        cfg = AgentConfig(max_steps=params.get("max_steps", settings.max_steps),
                          temperature=float(params.get("temperature", 0.0)), prompt=settings.prompt,
                          max_new_tokens=settings.max_new_tokens, context_window=settings.context_window)

        def on_event(traj, kind: str, data: dict[str, Any]) -> None:
            if kind == "action":
                tool, args = data["tool"], data.get("args") or {}
                if tool != "finish":
                    emit("step", {"step": data["step"], "tool": tool, "summary": _summary(tool, args),
                                  "thought": data.get("thought", "")})
                if tool == "search":
                    emit("queries", {"step": data["step"], "queries": list(args.get("queries", []))})
            elif kind == "observation":
                emit("observation", {k: data.get(k) for k in ("step", "tool", "ok", "error", "seconds")})
                if data.get("tool") == "browse" and data.get("ok") and traj.urls_opened:
                    emit("page", {"step": data["step"], "url": traj.urls_opened[-1]})
            elif kind in ("context", "format_error", "blocked", "injection", "error"):
                emit(kind, dict(data))
            if cancel.is_set():
                raise Cancelled()

        tracked = _TrackedEnvironment(env)
        agent = Agent(policy, tracked, cfg, on_event=on_event)
        try:
            traj = agent.run(params["question"])
        finally:
            tracked.close()
        result = {"question": params["question"], "answer": traj.answer, "finish_reason": traj.finish_reason,
                  "citations": [c.__dict__ for c in traj.citations],
                  "dropped_citations": [c.__dict__ for c in traj.dropped_citations],
                  "grounded": bool(traj.evidence_url), "policy": getattr(policy, "name", ""),
                  "stats": traj.stats(), "trajectory_id": traj.id,
                  **({"error": traj.meta["error"]} if "error" in traj.meta else {}),
                  "trajectories": [traj.to_dict()]}
        emit("answer", {"answer": traj.answer, "finish_reason": traj.finish_reason,
                        "citations": result["citations"]})
        return result
    return run


def kind(policy: Any, env: Environment, settings: AskSettings) -> Kind:
    return Kind("ask", make_runner(policy, env, settings), check(settings),
                title=lambda p: p["question"], restartable=True,
                description="Research one question; the answer comes with verified citations.")
