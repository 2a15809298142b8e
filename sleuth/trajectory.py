"""The record of one agent run: messages, exact token ids, log-probs, loss mask, tool calls, citations.

Token-exactness: training never re-tokenises text. The agent appends every token to a ``Segment`` as it
goes — prompt/tool tokens with mask 0, sampled tokens with mask 1 plus their log-prob, the weight version
that sampled them and the step they belong to. A new segment starts only when the context manager rewrites
earlier history (the model then conditioned on a different prefix, so that is a separate training sequence).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator


@dataclass
class Segment:
    token_ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)         # 1 = sampled by the policy, 0 = prompt/tool token
    logprobs: list[float] = field(default_factory=list)   # sampling log-prob for mask-1 tokens, 0.0 otherwise
    versions: list[int] = field(default_factory=list)     # policy version for mask-1 tokens, -1 otherwise
    steps: list[int] = field(default_factory=list)        # agent step of mask-1 tokens, -1 otherwise

    def extend_context(self, ids: list[int]) -> None:
        n = len(ids)
        self.token_ids += ids
        self.mask += [0] * n
        self.logprobs += [0.0] * n
        self.versions += [-1] * n
        self.steps += [-1] * n

    def extend_policy(self, ids: list[int], logprobs: list[float], version: int, step: int) -> None:
        assert len(ids) == len(logprobs), "one log-prob per sampled token"
        n = len(ids)
        self.token_ids += ids
        self.mask += [1] * n
        self.logprobs += list(logprobs)
        self.versions += [version] * n
        self.steps += [step] * n

    def __len__(self) -> int:
        return len(self.token_ids)


@dataclass
class ToolCallRecord:
    step: int
    tool: str
    args: Any
    ok: bool
    error: str | None
    seconds: float
    observation_chars: int
    blocked: bool = False          # stopped by the safety interceptor


@dataclass
class Citation:
    n: int
    url: str
    quote: str
    verified: bool = False
    reason: str = ""               # why an unverified citation was dropped
    source: str = "model"          # "model": written by the model and verified; "system": built from what it read


@dataclass
class Judgement:
    """How a finished trajectory was judged and rewarded; decided in one place, ``sleuth.rewards.score``."""
    correct: bool                  # counts as correct for the reward: judged correct (and grounded, if required)
    reward: float                  # the outcome reward, before gamma-decay spreads it over the steps
    judged_correct: bool = False   # the judge's verdict alone
    grounded: bool = False         # the answer occurs in something the agent was shown (``evidence_url``)
    recalled: bool = False         # a gold answer occurs in the agent's observations (retrieval recall)
    em: float = 0.0
    f1: float = 0.0
    cover: float = 0.0


# Values older records kept in ``meta`` before they had fields of their own.
_FROM_META = ("gold", "dataset", "group", "member", "evidence_url")


@dataclass
class Trajectory:
    question: str
    task_id: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    policy: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)   # the transcript, as the model saw it
    segments: list[Segment] = field(default_factory=list)
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    steps: int = 0
    answer: str | None = None
    citations: list[Citation] = field(default_factory=list)
    dropped_citations: list[Citation] = field(default_factory=list)
    finish_reason: str = ""        # finish | max_steps | context | no_action | error | unfinished
    format_errors: int = 0
    blocked_actions: int = 0
    urls_opened: list[str] = field(default_factory=list)
    urls_seen: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    context_events: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0
    generated_tokens: int = 0
    wall_seconds: float = 0.0
    started: float = field(default_factory=time.time)
    # what the task, the group and the judge add (the trainer reads these)
    gold: list[str] = field(default_factory=list)        # accepted answers of the task
    dataset: str = ""
    group: str = ""                # attempts at the same task share a group (their mean reward is the baseline)
    member: int = 0                # this attempt's index in its group (an eval run's sample index)
    evidence_url: str | None = None   # where the final answer occurs in what the agent was shown (set at finish)
    judgement: Judgement | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # anything else a caller records (agent config, errors)

    @property
    def finished(self) -> bool:
        return self.finish_reason not in ("", "unfinished")

    @property
    def versions(self) -> set[int]:
        return {v for s in self.segments for v in s.versions if v >= 0}

    def observations(self) -> list[str]:
        """The observations of this run as the transcript holds them — only those after the question, so a
        prompt's worked examples never count as something the agent was shown."""
        start = max((i for i, m in enumerate(self.messages)
                     if m.get("role") == "user" and m.get("content") == self.question), default=-1)
        return [str(m.get("content") or "") for m in self.messages[start + 1:]
                if m.get("role") == "tool" or (m.get("role") == "user" and "<observation>" in str(m.get("content")))]

    def stats(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "search_queries": len(self.queries),
            "search_calls": sum(1 for c in self.tool_calls if c.tool == "search"),
            "browse_calls": sum(1 for c in self.tool_calls if c.tool == "browse"),
            "urls_opened": len(set(self.urls_opened)),
            "code_calls": sum(1 for c in self.tool_calls if c.tool == "code"),
            "format_errors": self.format_errors,
            "blocked_actions": self.blocked_actions,
            "injections": len(self.meta.get("injections", [])),   # results/pages flagged as prompt injections
            "generated_tokens": self.generated_tokens,
            "prompt_tokens": self.prompt_tokens,
            "wall_seconds": round(self.wall_seconds, 3),
            "finish_reason": self.finish_reason,
            "citations": len(self.citations),
            "dropped_citations": len(self.dropped_citations),
        }

    # ------------------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trajectory":
        """Reads current records and older ones that kept gold, dataset, group, member (an eval's ``sample``)
        and evidence URL under ``meta``."""
        d = dict(d)
        meta = dict(d.get("meta") or {})
        for key in _FROM_META:
            if key in meta and key not in d:
                d[key] = meta.pop(key)
        if "sample" in meta and "member" not in d:
            d["member"] = meta.pop("sample")
        d["meta"] = meta
        if d.get("judgement") is not None:
            d["judgement"] = Judgement(**d["judgement"])
        d["segments"] = [Segment(**s) for s in d.get("segments", [])]
        d["tool_calls"] = [ToolCallRecord(**c) for c in d.get("tool_calls", [])]
        d["citations"] = [Citation(**c) for c in d.get("citations", [])]
        d["dropped_citations"] = [Citation(**c) for c in d.get("dropped_citations", [])]
        return cls(**d)


def save_jsonl(trajs: list[Trajectory], path: str | Path, append: bool = True) -> None:
    """Never fails on text content: a lone surrogate (which UTF-8 cannot encode) is written as its JSON
    escape (``\\udc80``), so the line is valid JSON and loads back to the very same string."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a" if append else "w", encoding="utf-8", errors="backslashreplace") as f:
        for t in trajs:
            f.write(json.dumps(t.to_dict(), ensure_ascii=False) + "\n")


def load_jsonl(path: str | Path) -> Iterator[Trajectory]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield Trajectory.from_dict(json.loads(line))
