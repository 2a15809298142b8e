"""Choose the agent prompt on dev data: how the protocol is presented decides whether a small policy acts.

For each prompt variant the untrained embedded policy runs the agent on the same selection tasks — dev
questions outside the evaluation holdout (the first 100 of dev shuffled with seed 0), so choosing the
prompt never looks at the numbers we report. Prints and writes, per variant: valid-action rate per step,
share of trajectories that searched / answered, EM, F1, strict cover.

    .venv/bin/python benchmarks/prompt_select.py [--n 48] [--index passages] [--variants plain,fewshot,...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--index", default="passages")
    ap.add_argument("--variants", default="plain,fewshot,short,short-fewshot,short-2shot,tools,tools-3shot")
    ap.add_argument("--tools", default="search,browse,code", help="tools the agent has (all variants alike)")
    ap.add_argument("--max-steps", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--work", default=None, help="run directory; re-running with the same one resumes")
    ap.add_argument("--out", default="benchmarks/results/prompt_select.json")
    args = ap.parse_args()

    from sleuth.agent import Environment
    from sleuth.evals.run import EvalConfig, run_eval
    from sleuth.tasks.loaders import load_tasks
    from sleuth.policy.hf import HFPolicy
    from sleuth.trajectory import load_jsonl

    holdout = {t.id for t in load_tasks("dev", limit=100, seed=0)}
    pool = [t for t in load_tasks("dev", seed=1) if t.id not in holdout][: args.n]
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="prompt-select-"))
    work.mkdir(parents=True, exist_ok=True)
    task_file = work / "select.jsonl"
    task_file.write_text("".join(json.dumps(t.to_dict()) + "\n" for t in pool))
    policy = HFPolicy.load()
    env = Environment.from_index(args.index, engine="hybrid", tools=tuple(args.tools.split(",")))
    rows = {}
    for variant in args.variants.split(","):
        t0 = time.time()
        cfg = EvalConfig(benchmark=str(task_file), mode="agent", samples=1, concurrency=16, prompt=variant,
                         max_steps=args.max_steps, temperature=args.temperature, max_new_tokens=96, seed=0)
        res = run_eval(cfg, work / variant, policy=policy, env=env, progress=False)
        trajs = list(load_jsonl(work / variant / "trajectories.jsonl"))
        steps = sum(t.steps for t in trajs)
        rows[variant] = {
            "valid_action_rate": round(1 - sum(t.format_errors for t in trajs) / max(steps, 1), 3),
            "searched": round(sum(bool(t.queries) for t in trajs) / len(trajs), 3),
            "answered": round(sum(t.answer is not None for t in trajs) / len(trajs), 3),
            "mean_steps": round(steps / len(trajs), 2),
            "browsed": round(sum(bool(t.urls_opened) for t in trajs) / len(trajs), 3),
            "ran_code": round(sum(any(c.tool == "code" for c in t.tool_calls) for t in trajs) / len(trajs), 3),
            # answers carrying a citation the model wrote itself and that verified against what it was shown
            "model_cited": round(sum(any(c.source == "model" for c in t.citations) for t in trajs) / len(trajs), 3),
            "grounded": round(sum(bool(t.evidence_url) for t in trajs) / len(trajs), 3),
            **res["overall"]["scores"], "pass@1": round(res["overall"]["metrics"]["pass@1"], 3),
            "seconds": round(time.time() - t0, 1)}
        print(variant, rows[variant], flush=True)
    best = max(rows, key=lambda v: (rows[v]["pass@1"], rows[v]["f1"], rows[v]["valid_action_rate"]))
    out = {"n_tasks": len(pool), "index": args.index, "temperature": args.temperature, "tools": args.tools,
           "max_steps": args.max_steps, "variants": rows, "chosen": best,
           "rule": "highest strict-cover pass@1, then F1, then valid-action rate"}
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"chosen: {best}")


if __name__ == "__main__":
    main()
