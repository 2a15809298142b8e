"""The "before" numbers: closed-book, retrieve-then-read RAG and the untrained agent, same model, same tasks.

Tasks: the first --n questions of dev shuffled with seed 0 (inside the RL holdout, never trained on).
Each mode draws --samples samples per task at temperature 0.7 and is judged by the strict cover judge,
with EM and F1 reported beside it. Runs resume from runs/baseline_dev/<mode>. Also reports the citation
check over the agent's trajectories: citations the model wrote, how many resolved, how many were invented.

    .venv/bin/python benchmarks/baseline_dev.py [--n 25] [--samples 4] [--index passages]
    # the same harness on a trained policy ("after"):
    .venv/bin/python benchmarks/baseline_dev.py --model runs/rl/export --modes agent,rag,closed-book \
        --work runs/rl_eval --out benchmarks/results/rl_eval.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=25)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--index", default="passages")
    ap.add_argument("--modes", default="closed-book,rag,agent")
    ap.add_argument("--work", default="runs/baseline_dev")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 is fastest when other jobs share the 2 cores")
    ap.add_argument("--model", default=None,
                    help="policy to evaluate (a model directory, e.g. one `sleuth train --export` wrote); "
                         "default: the untrained embedded model")
    ap.add_argument("--prompt", default="short-fewshot", help="agent prompt variant (see sleuth.agent.PROMPTS)")
    ap.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (then use --samples 1)")
    ap.add_argument("--decode-engine", default="hf", choices=["hf", "static", "llama"],
                    help="how the local policy samples (llama: llama.cpp on float32 weights, requirements-llama.txt)")
    ap.add_argument("--out", default="benchmarks/results/baseline_dev.json")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)

    from sleuth.agent import Environment
    from sleuth.evals.run import EvalConfig, run_eval
    from sleuth.policy.hf import HFPolicy
    from sleuth.trajectory import load_jsonl

    policy = HFPolicy.load(args.model)
    policy.engine = args.decode_engine
    env = Environment.from_index(args.index, engine="hybrid", tools=("search", "browse"))
    out = {"tasks": f"dev, first {args.n} after shuffling with seed 0", "samples": args.samples,
           "temperature": args.temperature, "judge": "cover (strict) + EM/F1", "index": args.index,
           "model": args.model or "embedded SmolLM2-135M-Instruct (untrained)", "prompt": args.prompt,
           "decode_engine": args.decode_engine,
           "modes": {}}
    for mode in args.modes.split(","):
        t0 = time.time()
        cfg = EvalConfig(benchmark="dev", mode=mode, limit=args.n, seed=0, samples=args.samples,
                         ks=sorted({1, args.samples}), concurrency=16, max_steps=4, max_new_tokens=64,
                         model=args.model, prompt=args.prompt, temperature=args.temperature)
        res = run_eval(cfg, Path(args.work) / mode, policy=policy, env=env, progress=True)
        m = res["overall"]["metrics"]
        row = {k: round(v, 4) for k, v in m.items() if isinstance(v, float)}
        row.update(res["overall"]["scores"])
        agent = res["overall"]["agent"]
        row["agent_stats"] = {k: agent[k]["mean"] for k in ("steps", "search_queries", "urls_opened",
                                                           "generated_tokens", "wall_seconds") if k in agent}
        row["per_dataset"] = {ds: {**{k: round(v, 4) for k, v in d["metrics"].items() if isinstance(v, float)},
                                   **d["scores"]} for ds, d in res["datasets"].items()}
        row["seconds_this_run"] = round(time.time() - t0, 1)
        if mode == "agent":
            trajs = list(load_jsonl(Path(args.work) / mode / "trajectories.jsonl"))
            written = sum(sum(c.source == "model" for c in t.citations) + len(t.dropped_citations) for t in trajs)
            kept = sum(c.source == "model" for t in trajs for c in t.citations)
            row["citations"] = {
                "trajectories": len(trajs), "questions": len({t.task_id for t in trajs}),
                "written_by_model": written, "model_citations_verified": kept,
                "invented_or_unverifiable": written - kept,
                # every answer that occurs in what the agent was shown, with its verified citations
                **res["overall"]["citations"]}
            row["format_errors_per_step"] = round(sum(t.format_errors for t in trajs) /
                                                  max(1, sum(t.steps for t in trajs)), 3)
            row["answered_rate"] = round(sum(t.answer is not None for t in trajs) / max(1, len(trajs)), 3)
        out["modes"][mode] = row
        print(mode, json.dumps({k: v for k, v in row.items() if k != "per_dataset"}), flush=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
