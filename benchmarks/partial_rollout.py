"""Partial rollout vs run-to-completion: wall-clock per iteration at an equal number of finished samples.

Why partial rollout pays: a batched rollout iteration lasts as long as its LONGEST trajectory, and agent
trajectory lengths are long-tailed (Kimi-Researcher: ~23 steps on average, a tail past 50). With a per-iteration
step budget, stragglers are parked in the replay buffer and continue next iteration under newer weights, so no
iteration waits for the tail.

Setup (the real rollout machinery: `sleuth.rl.toy.collect`, `ReplayBuffer`, group holding, version tags,
eviction): every agent step is one real batched generation of `--tokens-per-step` tokens over each
trajectory's whole context (re-read each step, as the agent loop does), by the embedded SmolLM2-135M through
`HFPolicy.generate` (`--engine smol`, the engine real rollouts use here; its prefix cache reuses a row's KV
from the previous step unless `--no-prefix-cache`, and is emptied after every iteration as a weight update
would) or by a randomly initialised tiny Llama without KV cache (`--engine toy`). What is simulated is only
WHEN a trajectory finishes: each (task, member) draws its length in steps from a log-normal (median
`--median-steps`, sigma `--sigma`, capped at `--max-steps`), so the length distribution is long-tailed by
construction. Weights are frozen (the
version is bumped each iteration as an update would), so both modes sample the same work; the update itself
costs the same per finished sample in both modes and is left out.

Both modes must deliver the same number of finished trajectories (complete groups of 4 tasks x 4 samples per
iteration); they run interleaved (A B A B ...) in one process so machine noise hits both alike.

    .venv/bin/python benchmarks/partial_rollout.py [--finished 320] [--budget 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sleuth.policy.base import SamplingParams  # noqa: E402
from sleuth.rl.buffer import ReplayBuffer  # noqa: E402
from sleuth.rl.toy import OBS, ToyEnv, ToyPolicy, collect, tiny_llama  # noqa: E402
from sleuth.trajectory import Trajectory  # noqa: E402


class LongTailEnv(ToyEnv):
    """ToyEnv whose trajectories finish after a drawn, long-tailed number of steps."""

    def __init__(self, median: float, sigma: float, max_steps: int, tokens_per_step: int, seed: int = 0):
        super().__init__(n_tasks=8, tokens_per_step=tokens_per_step, max_steps=max_steps, seed=seed)
        self.median, self.sigma, self.seed = median, sigma, seed
        self.calls = 0        # batched generation calls (one per agent step of the whole batch)
        self.rows = 0         # trajectory-steps generated

    def length(self, task_index: int, member: int) -> int:
        rng = random.Random(f"{self.seed}-{task_index}-{member}")
        return max(1, min(self.max_steps, math.ceil(rng.lognormvariate(math.log(self.median), self.sigma))))

    def start(self, task, group: str, member: int = 0) -> Trajectory:
        t = super().start(task, group, member)
        t.meta["length"] = self.length(task.index, member)
        return t

    def advance(self, policy: ToyPolicy, trajs: list[Trajectory], step_budget: int | None = None) -> None:
        for t in trajs:
            t.finish_reason = ""
        params = SamplingParams(max_new_tokens=self.tokens_per_step, temperature=1.0)
        for _ in range(self.max_steps if step_budget is None else step_budget):
            active = [t for t in trajs if not t.finished]
            if not active:
                break
            gens = policy.generate([t.segments[-1].token_ids for t in active], params)
            self.calls += 1
            self.rows += len(active)
            for t, g in zip(active, gens):
                t.segments[-1].extend_policy(g.token_ids, g.logprobs, policy.version, step=t.steps)
                t.steps += 1
                t.generated_tokens += len(g.token_ids)
                if t.steps >= t.meta["length"]:
                    t.finish_reason, t.answer = "finish", "done"
                else:
                    t.segments[-1].extend_context([OBS])
        for t in trajs:
            if not t.finished:
                t.finish_reason = "unfinished"


def run_mode(args, policy: ToyPolicy, budget: int | None) -> dict:
    env = LongTailEnv(args.median_steps, args.sigma, args.max_steps, args.tokens_per_step, seed=args.seed)
    buffer = ReplayBuffer(max_age=args.max_age)
    cursor, finished, iterations, evicted, lengths = 0, 0, 0, 0, []
    policy.version = 0
    t0 = time.perf_counter()
    while finished < args.finished:
        groups, cursor, st = collect(env, policy, buffer, cursor, args.tasks, args.group, budget)
        evicted += int(st["evicted"])
        finished += sum(len(g) for g in groups)
        lengths += [t.steps for g in groups for t in g]
        iterations += 1
        policy.version += 1           # an update would happen here...
        if getattr(policy, "prefix_cache", None) is not None:
            policy.prefix_cache.clear()   # ...and change the weights: cached KV is stale, resumed rows re-prefill
    seconds = time.perf_counter() - t0
    per = args.tasks * args.group
    return {"seconds": seconds, "iterations": iterations, "finished": finished, "evicted": evicted,
            "seconds_per_iteration_equiv": seconds / finished * per, "generate_calls": env.calls,
            "mean_batch": env.rows / max(env.calls, 1),
            "finished_lengths": {"p50": float(np.percentile(lengths, 50)), "p90": float(np.percentile(lengths, 90)),
                                 "max": int(max(lengths)), "mean": float(np.mean(lengths))}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--finished", type=int, default=320, help="finished trajectories each mode must deliver")
    ap.add_argument("--budget", type=int, default=8, help="agent steps per iteration with partial rollout")
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--median-steps", type=float, default=6.0)
    ap.add_argument("--sigma", type=float, default=0.9)
    ap.add_argument("--max-steps", type=int, default=48)
    ap.add_argument("--max-age", type=int, default=8, help="replay-buffer eviction age (versions)")
    ap.add_argument("--tokens-per-step", type=int, default=2)
    ap.add_argument("--engine", default="smol", choices=["smol", "toy"],
                    help="smol: the embedded SmolLM2-135M with the agent's batched KV-cache generation (prefix "
                         "reuse, finished rows dropped); toy: a random tiny Llama without KV cache")
    ap.add_argument("--no-prefix-cache", action="store_true",
                    help="smol: prefill every row's whole context at every step (no KV reuse across steps)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/partial_rollout.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.engine == "smol":
        from sleuth.policy.hf import HFPolicy
        policy = HFPolicy.load()      # token ids 0..63 are valid SmolLM2 ids; the env only counts steps
        if args.no_prefix_cache:
            policy.prefix_cache = None
    else:
        model = tiny_llama(vocab=64, hidden=args.hidden, layers=args.layers, seed=args.seed)
        model.config.max_position_embeddings = max(model.config.max_position_embeddings,
                                                   4 + args.max_steps * (args.tokens_per_step + 1))
        policy = ToyPolicy(model)

    env = LongTailEnv(args.median_steps, args.sigma, args.max_steps, args.tokens_per_step, seed=args.seed)
    drawn = [env.length(i, j) for i in range(2000) for j in range(args.group)]
    runs: dict[str, list[dict]] = {"full": [], "partial": []}
    for r in range(args.repeats):
        for mode, budget in (("full", None), ("partial", args.budget)):
            res = run_mode(args, policy, budget)
            runs[mode].append(res)
            print(f"repeat {r + 1} {mode:8s}: {res['seconds']:.1f}s for {res['finished']} finished in "
                  f"{res['iterations']} iterations ({res['seconds_per_iteration_equiv']:.2f}s per "
                  f"{args.tasks * args.group} finished), {res['generate_calls']} generate calls, mean batch "
                  f"{res['mean_batch']:.1f}, evicted {res['evicted']}", flush=True)
    per = {m: sum(x["seconds"] for x in v) / sum(x["finished"] for x in v) * args.tasks * args.group
           for m, v in runs.items()}
    speedup = per["full"] / per["partial"]
    out = {
        "what": "wall-clock per iteration-equivalent (tasks x group finished trajectories), full rollouts vs "
                "partial rollout with a per-iteration step budget; real batched generation per step, "
                "long-tailed simulated trajectory lengths, frozen weights",
        "config": vars(args),
        "drawn_lengths": {"p50": float(np.percentile(drawn, 50)), "p90": float(np.percentile(drawn, 90)),
                          "p99": float(np.percentile(drawn, 99)), "max": int(max(drawn)),
                          "mean": float(np.mean(drawn))},
        "seconds_per_iteration": per,
        "speedup": speedup,
        "runs": runs,
    }
    print(f"seconds per {args.tasks * args.group} finished: full {per['full']:.2f}, partial {per['partial']:.2f} "
          f"-> {speedup:.2f}x (drawn lengths p50 {out['drawn_lengths']['p50']:.0f}, "
          f"p90 {out['drawn_lengths']['p90']:.0f}, max {out['drawn_lengths']['max']})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
