"""Two policy shapes behind which every model sits.

* ``TokenPolicy`` — token-in/token-out (local models). The agent owns the token sequence: it appends
  prompt/tool tokens itself and asks the policy to continue a batch of sequences. The policy returns the
  sampled ids and their log-probs, so training uses exactly what was sampled (no re-tokenisation).
* ``ChatPolicy`` — messages in, text (and native tool calls) out (OpenAI-compatible servers). Usable for
  ask/eval; not trainable here because the server hides its token ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.7    # 0 = greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)  # generation ends after a sampled token completes one


@dataclass
class Generation:
    token_ids: list[int]         # exactly the sampled ids (including the final eos / stop-completing token)
    logprobs: list[float]        # log_softmax(logits / T)[token]: the distribution it was sampled from (raw when greedy)
    text: str                    # tokenizer.decode(token_ids) — for display and parsing only
    finish_reason: str           # "eos" | "stop" | "length"


@runtime_checkable
class TokenPolicy(Protocol):
    tokenizer: Any               # a transformers tokenizer (apply_chat_template, encode, decode)
    version: int                 # weight version; every sampled token is tagged with it
    name: str

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        """Continue each prompt (a list of token ids); all rows advance together in one batch."""
        ...


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any] | str   # str when the server's JSON did not parse (reported, not repaired)
    id: str = ""


@dataclass
class ChatReply:
    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    cost: float | None = None        # the request's price when the server reports one (usage.cost), else None


@runtime_checkable
class ChatPolicy(Protocol):
    name: str

    def chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
             params: SamplingParams) -> ChatReply:
        ...
