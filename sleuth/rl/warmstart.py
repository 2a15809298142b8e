"""Warm start: behaviour cloning on demonstrations executed in the real environment, before RL.

Why: a 135M policy trained with outcome rewards only learns to search once and answer. On tasks that need a
second search (the data engine's two-hop bridges) neither the untrained nor the RL-trained policy ever searches
twice (0 of 80 held-out bridges, ``benchmarks/results/research_rl_baselines.json``), so every group of rollouts
scores zero and the update has nothing to push on. Small search agents elsewhere start RL from a few
demonstrations for the same reason (a "few-shot warm start"). RL then does the rest from outcome rewards.

Demonstrations are not written by hand: a ``ScriptedActor`` replays what the data engine verified for each task
through the real agent loop, tools and index —

* a bridge (its record carries ``search_path``: the hops stage checked on the real index that searching the
  question does not show the answer, that its first results name the hidden entity and that searching the entity
  shows the answer): search the question, search the entity, answer;
* a lookup (no path): search the question, answer;
* with ``supporting_paths``, a question that names its supporting articles (the dev questions) but no path: the
  path is found on the run's index (``find_paths``) — the question alone when its results show the answer, else
  the question, then a supporting article's title that those results name and whose own results show the answer.

The answer is the gold alias as it appears in what the agent was shown. Each demonstration is judged by the
run's real judge with its reward settings (evidence required), and only correct ones are kept: a path that did
not show the answer in this environment (other index, other ``search_k``) is dropped, not trusted.

Loss: −mean log π over the actor's tokens (prompt, examples and tool output are context only), built with the
same rows, shared-prefix forward and token log-probs as the RL update (``reinforce.py``). Its own AdamW: the RL
optimizer starts fresh afterwards.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..policy.base import Generation, SamplingParams
from ..rewards import RewardConfig, judge_trajectory
from ..tasks.judges import mentions
from ..tasks.task import Task
from ..trajectory import Trajectory


@dataclass
class WarmStartConfig:
    tasks: list[str] | None = None
    """Task files (or benchmark names) to demonstrate on; None = no warm start. The run's holdout and
    validation split are removed from them as from the RL pool."""
    max_demos: int = 200
    """Demonstrations kept at most (correct ones), bridges and lookups in the order drawn."""
    bridge_share: float = 0.5
    """Share of the demonstrations that are multi-search (the rest one search): the policy must also learn when
    ONE search suffices, or it would search twice everywhere."""
    epochs: int = 2
    """Passes over the demonstrations."""
    batch_size: int = 8
    """Demonstrations per optimizer step."""
    lr: float = 2e-4
    """AdamW learning rate of the warm start."""
    supporting_paths: bool = False
    """Demonstrate open questions that carry supporting article titles but no search path (the dev questions)
    along a path found on the index (``find_paths``); without it such a task is demonstrated as a lookup."""
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str):
            self.tasks = [self.tasks]
        if self.max_demos < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("warm_start: max_demos, epochs and batch_size must be >= 1")
        if not 0.0 <= self.bridge_share <= 1.0:
            raise ValueError(f"warm_start.bridge_share must be in [0, 1], got {self.bridge_share}")
        if self.lr <= 0:
            raise ValueError("warm_start.lr must be > 0")


def plan(task: Task) -> list[str] | None:
    """The searches a demonstration makes for ``task``: its verified search path, or the question alone for a
    task without one; None when the path is malformed."""
    path = task.metadata.get("search_path")
    if path is None:
        return [task.question]
    if not isinstance(path, list) or not path or not all(isinstance(q, str) and q.strip() for q in path):
        return None
    return [q.strip() for q in path]


def find_paths(tasks: list[Task], engine: Any, k: int, log: Callable[[str], None] = print) -> list[Task]:
    """Tasks with supporting titles and no search path get one found on ``engine`` (top ``k`` results, what the
    agent is shown): ``[question]`` when searching the question shows a gold answer, else ``[question, title]``
    for the first supporting title that those results name (so the policy learns to search an entity it was
    shown, never one it could not know) and whose own results show the answer. Such tasks with no path are
    dropped, and so is every task without a path that asks to pick between named options or for yes/no (the
    results can show such an answer without the comparison being made); the others pass unchanged (lookups).
    The replay's judge checks every path again."""
    from ..search.base import shown_by_search
    from ..tasks.task import question_kind

    def needs(t: Task) -> bool:
        return "search_path" not in t.metadata and bool(t.metadata.get("supporting_titles"))

    tasks = [t for t in tasks if "search_path" in t.metadata or question_kind(t) == "open"]
    todo = [t for t in tasks if needs(t)]
    if not todo:
        return tasks
    first = shown_by_search(engine, sorted({t.question for t in todo}), k)
    found: dict[str, list[str]] = {t.id: [t.question] for t in todo if mentions(first[t.question], t.answers)}
    named = {t.id: [ti for ti in t.metadata["supporting_titles"] if mentions(first[t.question], [ti])]
             for t in todo if t.id not in found}   # titles the first results name, in the task's order
    titles = sorted({ti for ts in named.values() for ti in ts})
    second = shown_by_search(engine, titles, k) if titles else {}
    for t in todo:
        hop = next((ti for ti in named.get(t.id, []) if mentions(second[ti], t.answers)), None)
        if hop is not None:
            found[t.id] = [t.question, hop]
    log(f"warm start: paths found on the index for {len(found)} of {len(todo)} open questions with supporting "
        f"titles ({sum(len(p) > 1 for p in found.values())} with a second search)")
    out = []
    for t in tasks:
        if not needs(t):
            out.append(t)
        elif t.id in found:
            out.append(Task(t.id, t.question, list(t.answers), t.dataset,
                            {**t.metadata, "search_path": found[t.id]}))
    return out


class ScriptedActor:
    """A TokenPolicy that, instead of sampling, writes each task's planned actions: ``<search>q</search>`` for
    each query of its plan, then ``<answer>gold</answer>`` with the gold alias the observations show.

    It tells its trajectories apart by the question in the prompt (its first occurrence) and counts the
    observations after it to know the step; its tokens are the tokenizer's encoding of the action text (what the
    policy is then trained to write). Log-probs are not known (0.0): demonstrations are never trained on as
    samples of the policy."""

    name = "scripted-demonstrations"

    def __init__(self, tokenizer: Any, plans: dict[str, tuple[list[str], list[str]]], version: int = 0):
        self.tokenizer, self.version = tokenizer, version
        self.plans = plans          # question -> (queries, gold aliases)

    def _action(self, prompt_text: str) -> str:
        # the first occurrence is the user turn: observations echo the query, which may be the question
        hits = [(prompt_text.find(q), q) for q in self.plans if q in prompt_text]
        if not hits:
            raise ValueError("scripted actor: the prompt holds none of the planned questions")
        pos, question = min(hits)
        queries, golds = self.plans[question]
        after = prompt_text[pos:]
        done = after.count("<observation>")
        if done < len(queries):
            return f"<search>{queries[done]}</search>"
        answer = next((g for g in golds if mentions(after, [g])), golds[0])
        return f"<answer>{answer}</answer>"

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        out = []
        for p in prompts:
            text = self._action(self.tokenizer.decode(p, skip_special_tokens=False))
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            out.append(Generation(token_ids=ids, logprobs=[0.0] * len(ids), text=text, finish_reason="stop"))
        return out


def draw(tasks: list[Task], cfg: WarmStartConfig) -> list[Task]:
    """Candidates in a seeded order, multi-search and one-search tasks interleaved at ``bridge_share``; twice
    what is kept, as some demonstrations fail in this environment."""
    rng = random.Random(cfg.seed)
    multi = [t for t in tasks if len(plan(t) or []) > 1]
    single = [t for t in tasks if len(plan(t) or []) == 1]
    rng.shuffle(multi)
    rng.shuffle(single)
    want = 2 * cfg.max_demos
    n_multi = min(len(multi), round(want * cfg.bridge_share))
    n_single = min(len(single), want - n_multi)
    picked = multi[:n_multi] + single[:n_single]
    rng.shuffle(picked)
    return picked


def demonstrate(tasks: list[Task], tokenizer: Any, env: Any, agent_cfg: Any, judge: Any, reward: RewardConfig,
                cfg: WarmStartConfig, log: Callable[[str], None] = print, batch: int = 16
                ) -> tuple[list[Trajectory], dict[str, float]]:
    """Run the scripted actor through the real agent loop on drawn tasks; keep the correct demonstrations."""
    from ..agent import Agent

    cands = draw(tasks, cfg)
    # the share is kept when the pool allows it; otherwise the other kind fills the rest
    quota = {True: min(round(cfg.max_demos * cfg.bridge_share), sum(len(plan(t)) > 1 for t in cands))}
    quota[False] = cfg.max_demos - quota[True]
    kept: list[Trajectory] = []
    count = {True: 0, False: 0}
    tried = 0
    t0 = time.time()
    for i in range(0, len(cands), batch):
        chunk = [t for t in cands[i:i + batch] if count[len(plan(t)) > 1] < quota[len(plan(t)) > 1]]
        if len(kept) >= cfg.max_demos:
            break
        if not chunk:
            continue
        actor = ScriptedActor(tokenizer, {t.question: (plan(t), list(t.answers)) for t in chunk})
        agent = Agent(actor, env, agent_cfg)
        for task, traj in zip(chunk, agent.run_batch([t.question for t in chunk], [t.id for t in chunk])):
            tried += 1
            traj.dataset = task.dataset
            multi = len(plan(task)) > 1
            if judge_trajectory(traj, task.answers, judge, reward).correct and count[multi] < quota[multi]:
                kept.append(traj)
                count[multi] += 1
        log(f"warm start: {len(kept)} demonstrations kept of {tried} run ({count[True]} multi-search)")
    stats = {"demos": float(len(kept)), "demos_tried": float(tried), "demos_multi_search": float(count[True]),
             "demos_one_search": float(count[False]), "demo_seconds": time.time() - t0}
    return kept, stats


def clone(trainer: Any, demos: list[Trajectory], cfg: WarmStartConfig, log: Callable[[str], None] = print
          ) -> list[dict[str, float]]:
    """Behaviour cloning of ``demos`` on ``trainer.model``: −mean log π over the actor's tokens, ``epochs`` passes
    in batches of ``batch_size``; bumps ``trainer.version`` once per step. Returns per-step metrics."""
    import torch

    from .reinforce import (SharedPrefix, Selected, _backbone_and_head, build_rows, collate,
                            shared_prefix_length, token_logprobs)

    rl = trainer.cfg
    model, params = trainer.model, trainer.params
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=rl.betas, eps=rl.adam_eps, weight_decay=rl.weight_decay)
    parts = _backbone_and_head(model)
    rng = random.Random(cfg.seed)
    history: list[dict[str, float]] = []
    model.train()
    steps_per_epoch = (len(demos) + cfg.batch_size - 1) // cfg.batch_size
    for epoch in range(cfg.epochs):
        order = list(demos)
        rng.shuffle(order)
        for s in range(0, len(order), cfg.batch_size):
            t0 = time.perf_counter()
            for t in order[s:s + cfg.batch_size]:      # tag the demonstration's tokens with the current version
                for seg in t.segments:
                    seg.versions = [trainer.version] * len(seg.versions)
            # the RL update's rows (every token is current, so none is masked as off-policy); their advantages
            # are not used: the loss below is plain −log π
            sel = [Selected(t, 0.0, 1.0) for t in order[s:s + cfg.batch_size]]
            rows, row_stats = build_rows(sel, rl, trainer.version)
            if row_stats.overlong:   # build_rows leaves out a trajectory longer than max_seq_len whole
                log(f"warm start: {row_stats.overlong} demonstration(s) longer than rl.max_seq_len = "
                    f"{rl.max_seq_len} tokens left out of this step")
            n_total = sum(sum(r.loss_mask) for r in rows)
            if not n_total:
                continue
            rows.sort(key=lambda r: -len(r.input_ids))
            p = shared_prefix_length(rows, rl.share_prefix_min) if rl.share_prefix and parts is not None else 0
            prefix = SharedPrefix(parts[0], rows[0].input_ids[:p], trainer.device) if p else None
            nll = 0.0
            for i in range(0, len(rows), rl.micro_batch_size):
                batch = collate(rows[i:i + rl.micro_batch_size], trainer.device)
                if prefix is not None:
                    batch = batch.suffix(p)
                logp, _ = token_logprobs(model, batch, prefix=prefix)
                loss = -logp.sum() / n_total
                loss.backward()
                nll += float(loss.detach())
            if prefix is not None:
                prefix.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, rl.max_grad_norm or float("inf")))
            opt.step()
            opt.zero_grad(set_to_none=True)
            trainer.version += 1
            m = {"epoch": float(epoch + 1), "step": float(len(history) + 1), "nll": nll, "tokens": float(n_total),
                 "grad_norm": grad_norm, "seconds": time.perf_counter() - t0}
            history.append(m)
            log(f"warm start epoch {epoch + 1}/{cfg.epochs} step {len(history)}/{cfg.epochs * steps_per_epoch}: "
                f"nll/token {nll:.3f} ({n_total} tokens, {m['seconds']:.0f}s)")
    model.eval()
    return history
