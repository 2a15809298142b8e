"""Ablations of the RL recipe on the toy multi-step task (tiny random Llama, CPU, seconds per run).

* gamma-decay on/off: steps per correct trajectory (decay rewards early success, so it should fall faster);
* negative-sample control on/off: policy entropy per iteration (dropping some failures keeps entropy up).
* with ``--l2``: the k1.5-style L2 term τ/2·(logπ − logπ_old)² on/off. It only acts on tokens the current
  weights did not sample, so these variants run with partial rollouts (1 agent step per iteration; the
  rest of a trajectory continues under newer weights) and importance-weighted stale tokens
  (``off_policy="is"``); written to rl_l2_ablation.json/.png.

Each variant runs with several seeds; the script prints the curves' summaries, writes
benchmarks/results/rl_ablations.json and plots benchmarks/results/rl_ablations.png.
The toy task: reach a task-specific target token within 1–3 steps of 3 sampled tokens each.

    .venv/bin/python benchmarks/rl_ablations.py [--iterations 40] [--seeds 3]
    .venv/bin/python benchmarks/rl_ablations.py --l2 --out benchmarks/results/rl_l2_ablation.json
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sleuth.rewards import score  # noqa: E402
from sleuth.rl.buffer import ReplayBuffer  # noqa: E402
from sleuth.rl.reinforce import ReinforceTrainer  # noqa: E402
from sleuth.rl.toy import ToyEnv, ToyPolicy, collect, tiny_llama, toy_config  # noqa: E402

VARIANTS = {
    "recipe (gamma-decay, neg-drop 0.5)": dict(gamma_decay=True, negative_drop_frac=0.5),
    "no gamma-decay": dict(gamma_decay=False, negative_drop_frac=0.5),
    "no negative-sample control": dict(gamma_decay=True, negative_drop_frac=0.0),
}
# Partial rollouts with importance-weighted old tokens: the setting where logπ and logπ_old differ.
L2_VARIANTS = {
    f"partial rollouts, IS, L2 tau={tau:g}": dict(gamma_decay=True, negative_drop_frac=0.5, step_budget=1,
                                                   off_policy="is", l2_tau=tau)
    for tau in (0.0, 0.1, 1.0)
}
KEYS = ("accuracy", "steps_per_correct", "entropy", "old_token_frac")


def run(variant: dict, seed: int, iterations: int) -> list[dict]:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    cfg = toy_config(seed=seed, negative_drop_frac=variant["negative_drop_frac"], lr=3e-3,
                     off_policy=variant.get("off_policy", "mask"), l2_tau=variant.get("l2_tau", 0.0))
    cfg.reward.gamma = 0.5
    cfg.reward.gamma_decay = variant["gamma_decay"]
    cfg.reward.budget_penalty = 0.0
    env = ToyEnv(n_tasks=4, max_steps=3, seed=seed)
    trainer = ReinforceTrainer(tiny_llama(seed=seed), None, cfg)
    policy = ToyPolicy(trainer.model)
    buffer, cursor, rows = ReplayBuffer(), 0, []
    for _ in range(iterations):
        policy.version = trainer.version
        groups, cursor, _ = collect(env, policy, buffer, cursor, cfg.tasks_per_iteration, cfg.group_size,
                                    variant.get("step_budget"))
        trajs = [t for g in groups for t in g]
        ok = [t for t in trajs if env.correct(t)]
        for t in trajs:
            score(t, env.correct(t), cfg.reward)
        m = trainer.step(groups)
        rows.append({"accuracy": len(ok) / len(trajs) if trajs else float("nan"),
                     "steps_per_correct": float(np.mean([t.steps for t in ok])) if ok else float("nan"),
                     "entropy": m.get("entropy", float("nan")),
                     "old_token_frac": m.get("old_tokens", 0.0) / max(m.get("tokens", 0.0), 1.0)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/rl_ablations.json")
    ap.add_argument("--l2", action="store_true", help="run the L2-term variants instead")
    args = ap.parse_args()
    torch.set_num_threads(1)
    variants = L2_VARIANTS if args.l2 else VARIANTS
    keys = KEYS if args.l2 else KEYS[:3]
    curves = {}
    for name, v in variants.items():
        runs = [run(v, s, args.iterations) for s in range(args.seeds)]
        with warnings.catch_warnings():   # an iteration where no seed finished a group averages to nan
            warnings.simplefilter("ignore", RuntimeWarning)
            curves[name] = {k: np.nanmean([[r[k] for r in rs] for rs in runs], axis=0).round(4).tolist()
                            for k in keys}
        last = slice(-10, None)
        c = curves[name]
        print(f"{name:36s} accuracy(last10) {np.nanmean(c['accuracy'][last]):.3f}  steps/correct(last10) "
              f"{np.nanmean(c['steps_per_correct'][last]):.2f}  entropy first→last "
              f"{next(e for e in c['entropy'] if e == e):.3f}→{np.nanmean(c['entropy'][last]):.3f}"
              + (f"  old-token share {np.nanmean(c['old_token_frac']):.3f}" if args.l2 else ""))
    Path(args.out).write_text(json.dumps({"iterations": args.iterations, "seeds": args.seeds,
                                          "variants": variants, "curves": curves}, indent=2))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.7 * len(keys), 3.6))
    for name, c in curves.items():
        for ax, key in zip(axes, keys):
            ax.plot(range(1, args.iterations + 1), c[key], label=name)
            ax.set_title(key.replace("_", " "))
            ax.set_xlabel("iteration")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(args.out).with_suffix(".png"), dpi=90)


if __name__ == "__main__":
    main()
