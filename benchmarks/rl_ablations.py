"""Ablations of the RL recipe on the toy multi-step task (tiny random Llama, CPU, seconds per run).

* gamma-decay on/off: steps per correct trajectory (decay rewards early success, so it should fall faster);
* negative-sample control on/off: policy entropy per iteration (dropping some failures keeps entropy up).

Each variant runs with several seeds; the script prints the curves' summaries, writes
benchmarks/results/rl_ablations.json and plots benchmarks/results/rl_ablations.png.
The toy task: reach a task-specific target token within 1–3 steps of 3 sampled tokens each.

    .venv/bin/python benchmarks/rl_ablations.py [--iterations 40] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sleuth.rl.buffer import ReplayBuffer  # noqa: E402
from sleuth.rl.reinforce import ReinforceTrainer, Scored  # noqa: E402
from sleuth.rl.toy import ToyEnv, ToyPolicy, collect, tiny_llama, toy_config  # noqa: E402

VARIANTS = {
    "recipe (gamma-decay, neg-drop 0.5)": dict(gamma_decay=True, negative_drop_frac=0.5),
    "no gamma-decay": dict(gamma_decay=False, negative_drop_frac=0.5),
    "no negative-sample control": dict(gamma_decay=True, negative_drop_frac=0.0),
}


def run(variant: dict, seed: int, iterations: int) -> list[dict]:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    cfg = toy_config(seed=seed, negative_drop_frac=variant["negative_drop_frac"], lr=3e-3)
    cfg.reward.gamma = 0.5
    cfg.reward.gamma_decay = variant["gamma_decay"]
    cfg.reward.budget_penalty = 0.0
    env = ToyEnv(n_tasks=4, max_steps=3, seed=seed)
    trainer = ReinforceTrainer(tiny_llama(seed=seed), None, cfg)
    policy = ToyPolicy(trainer.model)
    buffer, cursor, rows = ReplayBuffer(), 0, []
    for _ in range(iterations):
        policy.version = trainer.version
        groups, cursor, _ = collect(env, policy, buffer, cursor, cfg.tasks_per_iteration, cfg.group_size)
        trajs = [t for g in groups for t in g]
        ok = [t for t in trajs if env.correct(t)]
        m = trainer.step([[Scored(t, env.correct(t)) for t in g] for g in groups])
        rows.append({"accuracy": len(ok) / len(trajs), "steps_per_correct": float(np.mean([t.steps for t in ok]))
                     if ok else float("nan"), "entropy": m.get("entropy", float("nan"))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/rl_ablations.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    curves = {}
    for name, v in VARIANTS.items():
        runs = [run(v, s, args.iterations) for s in range(args.seeds)]
        curves[name] = {k: np.nanmean([[r[k] for r in rs] for rs in runs], axis=0).round(4).tolist()
                        for k in ("accuracy", "steps_per_correct", "entropy")}
        last = slice(-10, None)
        c = curves[name]
        print(f"{name:36s} accuracy(last10) {np.mean(c['accuracy'][last]):.3f}  steps/correct(last10) "
              f"{np.nanmean(c['steps_per_correct'][last]):.2f}  entropy first→last "
              f"{c['entropy'][0]:.3f}→{np.nanmean(c['entropy'][last]):.3f}")
    Path(args.out).write_text(json.dumps({"iterations": args.iterations, "seeds": args.seeds,
                                          "variants": VARIANTS, "curves": curves}, indent=2))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for name, c in curves.items():
        for ax, key in zip(axes, ("accuracy", "steps_per_correct", "entropy")):
            ax.plot(range(1, args.iterations + 1), c[key], label=name)
            ax.set_title(key.replace("_", " "))
            ax.set_xlabel("iteration")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(args.out).with_suffix(".png"), dpi=90)


if __name__ == "__main__":
    main()
