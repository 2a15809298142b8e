"""Summarise a `sleuth train` run: per-iteration curves (reward, accuracy, answered rate, format errors,
entropy, timings) to a JSON result and a PNG.

    .venv/bin/python benchmarks/rl_curve.py runs/rl [--out benchmarks/results/rl_smollm2] [--window 5]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sleuth.tasks.task import is_candidate_question  # noqa: E402  the one definition of a candidate question

KEYS = ("mean_reward", "accuracy", "f1", "answered_rate", "search_rate", "format_errors_per_traj", "entropy",
        "mean_steps", "skipped_groups", "grad_norm", "rollout_seconds", "update_seconds", "iteration_seconds",
        "resumed", "parked", "masked_old_tokens", "logprob_mismatch", "multi_search_rate", "recall_rate")


def smooth(xs: list[float], w: int) -> list[float]:
    out = []
    for i in range(len(xs)):
        win = [x for x in xs[max(0, i - w + 1): i + 1] if x == x]
        out.append(sum(win) / len(win) if win else float("nan"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", default="benchmarks/results/rl_smollm2")
    ap.add_argument("--window", type=int, default=5, help="moving-average window for the plot")
    args = ap.parse_args()
    rows = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"{args.run}/metrics.jsonl has no iterations yet")
    curves = {k: [r.get(k) for r in rows] for k in KEYS}
    n = len(rows)
    half = max(1, n // 2)

    def mean(k: str, part: list[dict]) -> float:
        v = [r[k] for r in part if isinstance(r.get(k), (int, float)) and r[k] == r[k]]
        return round(sum(v) / len(v), 4) if v else float("nan")

    summary = {k: {"first_half": mean(k, rows[:half]), "second_half": mean(k, rows[half:])}
               for k in ("mean_reward", "accuracy", "f1", "answered_rate", "format_errors_per_traj", "entropy",
                         "mean_steps", "search_rate")}
    # Where the correct rollouts came from: the second half's "A or B?" comparisons vs the rest, and each
    # half's synthetic tasks (`sleuth synth` ids) vs dev questions.
    by_type = {"comparison": [0, 0], "open": [0, 0]}
    by_src: dict = {}
    rollouts = args.run / "rollouts.jsonl"
    for line in (rollouts.read_text().splitlines() if rollouts.exists() else []):
        r = json.loads(line)
        # judged correct and found in what the agent was shown; runs before the Judgement record wrote "verdict"
        j = r.get("judgement") or {**r["verdict"], "judged_correct": r["verdict"]["correct"]}
        correct = bool(j["judged_correct"] and j.get("grounded", True))
        if r["iteration"] > half:
            kind = "comparison" if is_candidate_question(r["question"]) else "open"
            by_type[kind][0] += 1
            by_type[kind][1] += correct
        key = ("second_half" if r["iteration"] > half else "first_half",
               "synthetic" if r["task_id"].startswith("synth-") else "dev")
        c = by_src.setdefault(key, {"rollouts": 0, "correct": 0, "f1_sum": 0.0})
        c["rollouts"] += 1
        c["correct"] += correct
        c["f1_sum"] += j.get("f1", 0.0)
    summary["second_half_rollouts"] = {k: {"rollouts": n, "correct": c} for k, (n, c) in by_type.items()}
    summary["rollouts_by_source"] = {
        f"{h}/{src}": {"rollouts": c["rollouts"], "correct": c["correct"],
                       "mean_f1": round(c["f1_sum"] / c["rollouts"], 4)} for (h, src), c in sorted(by_src.items())}
    config = json.loads((args.run / "config.json").read_text()) if (args.run / "config.json").exists() else {}
    out = {"run": str(args.run), "iterations": n, "config": config, "summary": summary,
           "total_hours": round(sum(r.get("iteration_seconds", 0) for r in rows) / 3600, 2), "curves": curves}
    for name in ("warm_start", "selection"):     # the warm start's demonstrations and loss; checkpoint selection
        f = args.run / f"{name}.json"
        if f.is_file():
            out[name] = json.loads(f.read_text())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(out, indent=2))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [r["iteration"] for r in rows]
    panels = [("mean_reward", "mean reward"), ("answered_rate", "answered rate"),
              ("format_errors_per_traj", "format errors / trajectory"), ("f1", "answer F1 (training tasks)"),
              ("accuracy", "accuracy (strict cover)"), ("entropy", "policy entropy (trained tokens)")]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, (k, title) in zip(axes.flat, panels):
        ys = [float("nan") if v is None else v for v in curves[k]]
        ax.plot(it, ys, color="0.75", lw=1, label="per iteration")
        ax.plot(it, smooth(ys, args.window), color="C0", lw=2, label=f"moving avg ({args.window})")
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"SmolLM2-135M agent RL on CPU ({n} iterations, {out['total_hours']} h)")
    fig.tight_layout()
    fig.savefig(f"{args.out}.png", dpi=90)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
