"""Plain text generation for the report's own stages (clarify, plan, write) with either policy shape.

A local ``TokenPolicy`` gets the chat-templated prompt as ids; a ``ChatPolicy`` (OpenAI-compatible server)
gets the messages with no tools. The server's retries (429, 5xx, timeouts, with backoff) are the policy's;
what still fails raises, and the caller decides what is lost (one section, never the run).
Every call's tokens — and cost, when the server reports one — are added to a ``Usage``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from sleuth.policy.base import SamplingParams


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    cost: float | None = None
    """Money spent, in the server's unit, when it reports one per call (e.g. ``usage.cost``); else None."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, prompt: int, completion: int, cost: float | None = None, calls: int = 1) -> None:
        with self._lock:
            self.prompt_tokens += int(prompt)
            self.completion_tokens += int(completion)
            self.calls += calls
            if cost is not None:
                self.cost = (self.cost or 0.0) + float(cost)

    def merge(self, d: dict[str, Any]) -> None:
        self.add(d.get("prompt_tokens", 0), d.get("completion_tokens", 0), d.get("cost"), d.get("calls", 0))

    def to_dict(self) -> dict[str, Any]:
        d = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "calls": self.calls,
             "cost": self.cost}
        d["total_tokens"] = self.prompt_tokens + self.completion_tokens
        return d


def is_token_policy(policy: Any) -> bool:
    return hasattr(policy, "generate") and hasattr(policy, "tokenizer")


def complete(policy: Any, messages: list[dict[str, str]], *, max_new_tokens: int, temperature: float = 0.0,
             usage: Usage | None = None) -> str:
    """The model's reply text to ``messages``. Raises whatever the policy raises after its own retries."""
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
    if is_token_policy(policy):
        tok = policy.tokenizer
        ids = tok.encode(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                         add_special_tokens=False)
        gen = policy.generate([ids], params)[0]
        if usage is not None:
            usage.add(len(ids), len(gen.token_ids))
        return tok.decode(gen.token_ids, skip_special_tokens=True)
    reply = policy.chat(messages, None, params)
    if usage is not None:
        usage.add(reply.prompt_tokens, reply.completion_tokens, getattr(reply, "cost", None))
    return reply.text or ""
