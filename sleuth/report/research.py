"""Research: the agent loop once per research question (batched), keeping what it was shown per URL.

What the agent was shown (``Agent.seen_texts``: per URL, exactly the part of each result or page inside the
observation) is the only text the report may cite; the writer sees passages cut from it and every citation
is verified against it. Questions run in batches (one batched generation per step for a local model, one
thread per question on a server); each finished batch is appended to ``research.jsonl``, the unit of resume.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from sleuth.agent import Agent, AgentConfig
from sleuth.citations import sentences


@dataclass
class Finding:
    section: int
    question: str
    answer: str | None
    citations: list[dict[str, Any]]          # the agent's verified citations of its answer
    seen: dict[str, str]                     # url -> the text the agent was shown there
    finish_reason: str
    steps: int = 0
    queries: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    generated_tokens: int = 0
    cost: float | None = None
    seconds: float = 0.0
    error: str = ""
    trajectory_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Finding":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def research(agent_policy: Any, env: Any, agent_cfg: AgentConfig, todo: list[tuple[int, str]], batch: int,
             on_step: Callable[[int, str, str, dict], None], on_done: Callable[[Finding, Any], None],
             cancelled: Callable[[], bool]) -> None:
    """Run the agent on each (section, question) of ``todo``; ``on_done`` gets each finding and its trajectory
    as its batch ends."""
    def forward(traj, kind: str, data: dict) -> None:
        # a trajectory's task id carries its section ("s2"), so events are told apart within a batch
        on_step(int(traj.task_id[1:]) if traj.task_id[1:].isdigit() else -1, traj.question, kind, data)

    agent = Agent(agent_policy, env, agent_cfg, on_event=forward, keep_seen=True)
    for start in range(0, len(todo), max(1, batch)):
        if cancelled():
            return
        chunk = todo[start:start + batch]
        trajs = agent.run_batch([q for _, q in chunk], [f"s{sec}" for sec, _ in chunk])
        for (sec, q), traj in zip(chunk, trajs):
            seen = agent.seen_texts.pop(traj.id, {}) if agent.seen_texts is not None else {}
            on_done(Finding(section=sec, question=q, answer=traj.answer,
                            citations=[asdict(c) for c in traj.citations], seen=dict(seen),
                            finish_reason=traj.finish_reason, steps=traj.steps, queries=list(traj.queries),
                            prompt_tokens=traj.prompt_tokens, generated_tokens=traj.generated_tokens,
                            cost=traj.meta.get("cost"), seconds=round(traj.wall_seconds, 3),
                            error=str(traj.meta.get("error", "")), trajectory_id=traj.id), traj)


@dataclass
class Passage:
    url: str
    title: str
    text: str


def passages_of(findings: list[Finding]) -> dict[str, Passage]:
    """Every URL the agent was shown across findings, with all its shown text merged (first line = title)."""
    out: dict[str, Passage] = {}
    for f in findings:
        for url, text in f.seen.items():
            text = text.strip()
            if not text:
                continue
            if url in out:
                if text not in out[url].text:
                    out[url].text += "\n" + text
            else:
                first = text.splitlines()[0].strip()
                out[url] = Passage(url, first[:120] if len(first) < 120 else url, text)
    return out


def seen_union(findings: list[Finding]) -> dict[str, str]:
    """url -> everything shown there, over all research runs: the text citations are verified against."""
    return {url: p.text for url, p in passages_of(findings).items()}


def excerpt(text: str, terms: set[str], chars: int) -> str:
    """The passage cut to ``chars``, keeping its sentences that share most words with ``terms`` (in order)."""
    sents = sentences(text)
    if sum(len(s) + 1 for s in sents) <= chars:
        return " ".join(sents)
    scored = sorted(range(len(sents)), key=lambda i: -len(terms & set(sents[i].lower().split())))
    keep, total = set(), 0
    for i in scored:
        if total + len(sents[i]) + 1 > chars and keep:
            continue
        keep.add(i)
        total += len(sents[i]) + 1
    return " ".join(sents[i] for i in sorted(keep))[:chars]
