"""A toy token environment: the whole RL loop (rollouts → rewards → update → checkpoint) in seconds on a CPU.

Model: a tiny, randomly initialised LlamaForCausalLM (vocabulary 64). Task: a prompt ``[BOS, TASK_k]``; each
agent step samples ``tokens_per_step`` tokens; the run finishes correctly at the first step whose tokens
contain the task's target token; otherwise an observation token (context, mask 0) is appended and the next
step starts, up to ``max_steps`` (then finish_reason 'max_steps'). A random policy succeeds ~13% of the time;
a trained one learns to emit each task's target at once.

With ``step_budget`` a rollout may stop before finishing ('unfinished'); it goes to the replay buffer and
continues next iteration under the new weights — partial rollouts, with tokens of several weight versions.

Run: ``python -m sleuth.rl.toy --out runs/toy --iterations 60``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..policy.base import Generation, SamplingParams
from ..rewards import score
from ..trajectory import Segment, Trajectory
from .buffer import ReplayBuffer
from .checkpoint import load_latest, save
from .config import TrainConfig
from .reinforce import ReinforceTrainer

PAD, BOS, OBS = 0, 1, 2
FIRST_TASK = 3


def tiny_llama(vocab: int = 64, hidden: int = 32, layers: int = 2, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised Llama small enough for unit tests (~30k parameters)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=128, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=None,
                         tie_word_embeddings=False)
    with torch.random.fork_rng():    # do not disturb the caller's RNG stream
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()


class ToyPolicy:
    """Token-in/token-out sampling from a model, without a tokenizer (``text`` is the ids, space-separated).

    Batched: all rows advance together, one full forward per new token (sequences here are a few tokens long,
    so no KV cache). ``top_p`` and ``stop`` are not supported.
    """

    tokenizer = None

    def __init__(self, model: torch.nn.Module, version: int = 0, name: str = "toy"):
        self.model, self.version, self.name = model, version, name

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        if not prompts:
            return []
        device = next(self.model.parameters()).device
        seqs = [list(p) for p in prompts]
        out_ids: list[list[int]] = [[] for _ in prompts]
        out_lp: list[list[float]] = [[] for _ in prompts]
        for _ in range(params.max_new_tokens):
            L = max(len(s) for s in seqs)
            ids = torch.tensor([s + [PAD] * (L - len(s)) for s in seqs], device=device)
            am = torch.tensor([[1] * len(s) + [0] * (L - len(s)) for s in seqs], device=device)
            logits = self.model(input_ids=ids, attention_mask=am, use_cache=False).logits
            last = logits[torch.arange(len(seqs)), am.sum(1) - 1].float()
            logp = torch.log_softmax(last, -1)          # recorded log-probs: temperature-1 distribution
            if params.temperature <= 0:
                tok = last.argmax(-1)
            else:
                tok = torch.multinomial(torch.softmax(last / params.temperature, -1), 1).squeeze(-1)
            for i, t in enumerate(tok.tolist()):
                seqs[i].append(t)
                out_ids[i].append(t)
                out_lp[i].append(float(logp[i, t]))
        return [Generation(ids, lps, " ".join(map(str, ids)), "length") for ids, lps in zip(out_ids, out_lp)]


@dataclass
class ToyTask:
    index: int
    prompt: list[int]
    target: int


class ToyEnv:
    def __init__(self, n_tasks: int = 4, tokens_per_step: int = 3, max_steps: int = 3, vocab: int = 64,
                 seed: int = 0):
        if FIRST_TASK + n_tasks >= vocab:
            raise ValueError("vocabulary too small for that many tasks")
        self.n_tasks, self.tokens_per_step, self.max_steps = n_tasks, tokens_per_step, max_steps
        pool = list(range(FIRST_TASK + n_tasks, vocab))
        self.targets = random.Random(seed).sample(pool, n_tasks)

    def task(self, index: int) -> ToyTask:
        k = index % self.n_tasks
        return ToyTask(index, [BOS, FIRST_TASK + k], self.targets[k])

    def start(self, task: ToyTask, group: str, member: int = 0) -> Trajectory:
        seg = Segment()
        seg.extend_context(task.prompt)
        return Trajectory(question=f"toy task {task.index % self.n_tasks}", task_id=str(task.index % self.n_tasks),
                          id=f"{group}-{member}",   # deterministic, so repeated runs are comparable
                          policy="toy", segments=[seg], prompt_tokens=len(task.prompt), gold=[str(task.target)],
                          group=group, member=member, meta={"task_index": task.index})

    def correct(self, traj: Trajectory) -> bool:
        return traj.finish_reason == "finish"

    def advance(self, policy: ToyPolicy, trajs: list[Trajectory], step_budget: int | None = None) -> None:
        """Run agent steps on all trajectories together until each finishes or ``step_budget`` steps pass."""
        for t in trajs:
            t.finish_reason = ""
        budget = self.max_steps if step_budget is None else step_budget
        params = SamplingParams(max_new_tokens=self.tokens_per_step, temperature=1.0)
        for _ in range(budget):
            active = [t for t in trajs if not t.finished]
            if not active:
                break
            gens = policy.generate([t.segments[-1].token_ids for t in active], params)
            for t, g in zip(active, gens):
                t.segments[-1].extend_policy(g.token_ids, g.logprobs, policy.version, step=t.steps)
                t.steps += 1
                t.generated_tokens += len(g.token_ids)
                if int(t.gold[0]) in g.token_ids:
                    t.finish_reason, t.answer = "finish", t.gold[0]
                elif t.steps >= self.max_steps:
                    t.finish_reason = "max_steps"
                else:
                    t.segments[-1].extend_context([OBS])   # the "tool observation" between steps
        for t in trajs:
            if not t.finished:
                t.finish_reason = "unfinished"


def collect(env: ToyEnv, policy: ToyPolicy, buffer: ReplayBuffer, cursor: int, n_tasks: int, group_size: int,
            step_budget: int | None = None) -> tuple[list[list[Trajectory]], int, dict[str, float]]:
    """One iteration of rollouts: resumed partial runs first, then ``n_tasks`` new groups.

    Returns the complete groups (every member finished), the new data cursor and rollout stats; unfinished runs
    and their finished siblings are parked in ``buffer``.
    """
    evicted = buffer.evict(policy.version)
    resumed = [e.traj for e in buffer.pop_resumable()]
    fresh = []
    for k in range(n_tasks):
        task = env.task(cursor + k)
        fresh += [env.start(task, group=str(cursor + k), member=j) for j in range(group_size)]
    cursor += n_tasks
    active = resumed + fresh
    env.advance(policy, active, step_budget)

    order: list[str] = []
    members: dict[str, list[Trajectory]] = {}
    for t in active:
        g = t.group
        if g not in members:
            order.append(g)
            members[g] = []
        members[g].append(t)
    groups = []
    for g in order:
        done = members[g] + buffer.pop_group(g)
        if all(t.finished for t in done):
            groups.append(sorted(done, key=lambda t: t.member))
            continue
        for t in done:
            if t.finished:
                buffer.hold(t, g, policy.version)
            else:
                buffer.add(t, {"task_index": t.meta["task_index"]}, policy.version, group=g)
    return groups, cursor, {"resumed": float(len(resumed)), "evicted": float(len(evicted)),
                            "buffer_size": float(len(buffer))}


def train_toy(cfg: TrainConfig, iterations: int, out_dir: str | None = None, step_budget: int | None = None,
              env: ToyEnv | None = None, log: Any = None) -> list[dict[str, Any]]:
    """The RL loop on the toy task; resumes from ``out_dir``'s latest checkpoint when there is one."""
    env = env or ToyEnv(seed=cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    trainer = ReinforceTrainer(tiny_llama(seed=cfg.seed), None, cfg)
    trainer.model.eval()
    policy = ToyPolicy(trainer.model)
    buffer, cursor, start, history = ReplayBuffer(max_age=cfg.max_partial_age), 0, 0, []
    ck = load_latest(out_dir) if out_dir else None
    if ck is not None:
        ck.restore(trainer)
        buffer, cursor, start, history = ck.buffer, int(ck.cursor), ck.iteration, ck.metrics
    for it in range(start, iterations):
        policy.version = trainer.version
        t0 = time.perf_counter()
        groups, cursor, rstats = collect(env, policy, buffer, cursor, cfg.tasks_per_iteration, cfg.group_size,
                                         step_budget)
        rollout_s = time.perf_counter() - t0
        for t in (t for g in groups for t in g):
            score(t, env.correct(t), cfg.reward)
        m = trainer.step(groups)
        m.update(rstats, iteration=float(it + 1), rollout_seconds=rollout_s,
                 mean_steps=float(np.mean([t.steps for g in groups for t in g])) if groups else 0.0)
        history.append(m)
        if log:
            log(f"iter {it + 1}: accuracy {m['accuracy']:.3f} reward {m['mean_reward']:+.3f} loss {m['loss']:+.4f} "
                f"entropy {m.get('entropy', float('nan')):.3f} skipped {m['skipped_groups']:.0f} "
                f"buffer {len(buffer)} version {trainer.version}")
        if out_dir:
            save(out_dir, trainer, iteration=it + 1, buffer=buffer, cursor=cursor, metrics=history,
                 keep=cfg.keep_checkpoints)
    return history


def toy_config(**overrides: Any) -> TrainConfig:
    """Settings that learn the toy task in a few dozen iterations."""
    base: dict[str, Any] = dict(lr=1e-2, tasks_per_iteration=8, group_size=8, micro_batch_size=32,
                                max_grad_norm=1.0, weight_decay=0.0)
    base.update(overrides)
    return TrainConfig(**base)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="REINFORCE on the toy token task")
    ap.add_argument("--out", default=None, help="checkpoint directory (resumes from its latest checkpoint)")
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--step-budget", type=int, default=None, help="agent steps per iteration (partial rollouts)")
    ap.add_argument("--off-policy", default="mask", choices=["mask", "is"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default); tiny models run fastest on one")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = toy_config(seed=a.seed, off_policy=a.off_policy)
    train_toy(cfg, a.iterations, out_dir=a.out, step_budget=a.step_budget, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    main(sys.argv[1:])
