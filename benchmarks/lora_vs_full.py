"""LoRA against full fine-tuning on the same reading-RL recipe: learning per iteration, update cost, size.

Full fine-tuning: the earlier runs of configs/rl_read_dev.toml (stage 1) and configs/rl_read_open.toml
(stage 2), lr 3e-5, summarised in benchmarks/results/rl_read_dev.json and rl_read_open.json. LoRA: the
shipped recipe's stages (configs/recipe/read_dev.toml, read_open.toml: rank 16 on every linear layer, lr 3e-4,
15% of the pool held out for validation), read from their run directories. Same tasks, judge, reward, agent
settings, batch and seed; compared over the iterations both ran. The holdout rows (100 questions × 4 samples,
the same harness) come from the before/after results named on the command line.

    .venv/bin/python benchmarks/lora_vs_full.py --lora-runs runs/recipe/read-dev runs/recipe/read-open \
        --lora-holdout benchmarks/results/shipped_before_after.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KEYS = ("accuracy", "mean_reward", "search_rate", "format_errors_per_traj", "entropy", "update_seconds",
        "rollout_seconds")


def mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and x == x]
    return round(sum(xs) / len(xs), 4) if xs else None


def halves(curve: list[float], n: int) -> dict[str, float | None]:
    h = n // 2
    return {"first_half": mean(curve[:h]), "second_half": mean(curve[h:n]), "all": mean(curve[:n])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", nargs=2, type=Path, default=[Path("benchmarks/results/rl_read_dev.json"),
                                                           Path("benchmarks/results/rl_read_open.json")])
    ap.add_argument("--lora-runs", nargs=2, type=Path, default=[Path("runs/recipe/read-dev"),
                                                                Path("runs/recipe/read-open")])
    ap.add_argument("--full-holdout", type=Path, default=Path("benchmarks/results/rl_read_open_before_after100.json"))
    ap.add_argument("--full-label", default="reading RL, open stage")
    ap.add_argument("--lora-holdout", type=Path, default=None)
    ap.add_argument("--lora-label", default="shipped policy (LoRA recipe)")
    ap.add_argument("--adapter", type=Path, default=Path("sleuth/policies/sleuth-135m-rl"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/lora_vs_full.json"))
    args = ap.parse_args()

    stages = {}
    for name, full_file, lora_dir in zip(("stage 1 (lookups + dev 1:1)", "stage 2 (open questions)"),
                                         args.full, args.lora_runs):
        full = json.loads(full_file.read_text())
        lora = [json.loads(line) for line in (lora_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        n = min(len(full["curves"]["accuracy"]), len(lora))
        stages[name] = {
            "iterations_compared": n,
            "full_fine_tuning": {"config": full["config"]["rl"]["out_dir"], "lr": full["config"]["rl"]["lr"],
                                 **{k: halves(full["curves"][k], n) for k in KEYS if k in full["curves"]}},
            "lora": {"config": str(lora_dir), "lr": json.loads((lora_dir / "config.json").read_text())["rl"]["lr"],
                     **{k: halves([m.get(k) for m in lora], n) for k in KEYS}},
        }
    out: dict = {"stages": stages}
    full_ho = json.loads(args.full_holdout.read_text())["modes"].get(args.full_label)
    out["holdout"] = {"full fine-tuning (seed 0, 30 + 24 it.)": full_ho}
    if args.lora_holdout and args.lora_holdout.is_file():
        out["holdout"][args.lora_label] = json.loads(args.lora_holdout.read_text())["modes"].get(args.lora_label)
    weights = args.adapter / "adapter_model.safetensors"
    out["size"] = {"lora_adapter_mb": round(weights.stat().st_size / 2**20, 1) if weights.is_file() else None,
                   "full_model_fp16_mb": round(134.5e6 * 2 / 2**20, 1)}
    args.out.write_text(json.dumps(out, indent=2))
    for name, st in stages.items():
        f, lo = st["full_fine_tuning"], st["lora"]
        print(f"{name}, {st['iterations_compared']} iterations: accuracy full {f['accuracy']} | lora {lo['accuracy']}; "
              f"update s/it full {f.get('update_seconds', {}).get('all')} | lora {lo['update_seconds']['all']}")
    print(json.dumps(out["size"]))


if __name__ == "__main__":
    main()
