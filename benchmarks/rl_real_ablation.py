"""Negative-sample control on the real policy: two `sleuth train` runs from the same seed and config that
differ only in `negative_drop_frac`, compared over their first N iterations (entropy, reward, accuracy).

    sleuth train --config configs/rl.toml --out runs/rl                      # drop 0.3 (the main run)
    sleuth train --config <same, negative_drop_frac = 0.0, iterations = 8> --out runs/rl-nodrop
    .venv/bin/python benchmarks/rl_real_ablation.py runs/rl runs/rl-nodrop --n 8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KEYS = ("entropy", "mean_reward", "accuracy", "answered_rate", "search_rate", "format_errors_per_traj",
        "dropped_negatives", "skipped_groups")


def load(run: Path, n: int) -> tuple[dict, list[dict]]:
    cfg = json.loads((run / "config.json").read_text())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()][:n]
    return cfg, rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path, nargs=2)
    ap.add_argument("--n", type=int, default=8, help="iterations compared (the shorter run bounds it)")
    ap.add_argument("--out", default="benchmarks/results/rl_negative_ablation")
    args = ap.parse_args()
    data = {}
    for run in args.runs:
        cfg, rows = load(run, args.n)
        label = f"drop {cfg['rl']['negative_drop_frac']}"
        data[label] = {"run": str(run), "iterations": len(rows),
                       "curves": {k: [r.get(k) for r in rows] for k in KEYS}}
    n = min(d["iterations"] for d in data.values())
    for d in data.values():
        d["curves"] = {k: v[:n] for k, v in d["curves"].items()}
        ent = [e for e in d["curves"]["entropy"] if isinstance(e, (int, float)) and e == e]
        d["entropy_last3"] = round(sum(ent[-3:]) / len(ent[-3:]), 4) if ent else None
        d["mean_reward"] = round(sum(d["curves"]["mean_reward"]) / n, 4)
        d["accuracy"] = round(sum(d["curves"]["accuracy"]) / n, 4)
    out = {"iterations_compared": n, "runs": data}
    Path(f"{args.out}.json").write_text(json.dumps(out, indent=2))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, k in zip(axes, ("entropy", "mean_reward", "search_rate")):
        for label, d in data.items():
            ys = [float("nan") if v is None else v for v in d["curves"][k]]
            ax.plot(range(1, n + 1), ys, marker="o", label=label)
        ax.set_title(k)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Negative-sample control on SmolLM2-135M (same seed and config)")
    fig.tight_layout()
    fig.savefig(f"{args.out}.png", dpi=90)
    for label, d in data.items():
        ents = ["%.3f" % e if isinstance(e, (int, float)) and e == e else "skipped" for e in d["curves"]["entropy"]]
        print(f"{label}: entropy {ents} "
              f"last-3 {d['entropy_last3']}, mean reward {d['mean_reward']}, accuracy {d['accuracy']}")


if __name__ == "__main__":
    main()
