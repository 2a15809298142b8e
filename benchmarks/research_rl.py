"""Research behaviour before and after research RL, on held-out synthetic two-hop bridges (and optionally dev).

Every row is a real evaluation (`sleuth.evals.run.run_eval`, resumable) of one policy with one prompt, greedy
by default, on the same tasks with the same step budget and judge; the JSON keeps per row pass@1 with a
bootstrap 95% interval, the research behaviour (searches per trajectory, share searching at least twice, share
that searched for the hidden bridge entity, and that share among correct answers), and for each row after the
first the paired-bootstrap interval of its difference to every baseline row.

    .venv/bin/python benchmarks/research_rl.py --limit 80 \
        --row "untrained, short-bridge=base:short-bridge" --row "untrained, short-2shot=base:short-2shot" \
        --row "shipped policy=sleuth/policies/sleuth-135m-rl:" \
        --row "research RL=runs/recipe/research/export:" --baselines 3 --out benchmarks/results/research_rl.json

A row is LABEL=MODEL:PROMPT (empty PROMPT: the policy's own training prompt). The first --baselines rows are
the baselines; the ratio criterion uses the best of them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sleuth.evals.run import EvalConfig, run_eval  # noqa: E402


def solved(path: Path) -> dict[str, float]:
    """task id -> mean correctness over its samples."""
    by: dict[str, list[float]] = {}
    for line in (path / "records.jsonl").read_text().splitlines():
        r = json.loads(line)
        by.setdefault(r["task_id"], []).append(float(r["correct"]))
    return {t: sum(v) / len(v) for t, v in by.items()}


def bootstrap(values: list[float], n: int = 2000, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(values) for _ in values) / len(values) for _ in range(n))
    return [means[int(0.025 * n)], means[int(0.975 * n) - 1]]


def paired(a: dict[str, float], b: dict[str, float], n: int = 2000, seed: int = 0) -> dict[str, float]:
    ids = sorted(set(a) & set(b))
    d = [b[t] - a[t] for t in ids]
    lo, hi = bootstrap(d, n, seed)
    return {"tasks": len(ids), "diff": sum(d) / len(d), "ci95": [lo, hi]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", default="runs/recipe/tasks/bridge2-hops3-test.jsonl",
                    help="task file or benchmark name; the default test split of two-hop bridges is synthesised "
                         "when missing (1000 candidates, hops stage at k=3 on the passages index, 25%% set aside)")
    ap.add_argument("--row", action="append", required=True, help="LABEL=MODEL:PROMPT")
    ap.add_argument("--baselines", type=int, default=1, help="the first N rows are baselines")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--max-steps", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=48, help="per step, for every row (the training setting)")
    ap.add_argument("--search-k", type=int, default=3, help="results per query, for every row")
    ap.add_argument("--index", default="passages")
    ap.add_argument("--runs", default="runs/research_rl", help="where the evaluation runs are kept (resumable)")
    ap.add_argument("--out", default="benchmarks/results/research_rl.json")
    args = ap.parse_args()

    if args.bench.endswith("bridge2-hops3-test.jsonl") and not Path(args.bench).is_file():
        from sleuth.rl.recipe import TaskFile, make_task_file

        make_task_file(TaskFile(out=args.bench.replace("-test.jsonl", ".jsonl"), n=1000, mix="bridge=1", hops=[2],
                                hops_k=3, index=args.index, test_share=0.25))
    rows = []
    for spec in args.row:
        label, _, rest = spec.partition("=")
        model, _, prompt = rest.rpartition(":")
        slug = "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")
        run_dir = Path(args.runs) / f"{Path(args.bench).stem}-{slug}"
        cfg = EvalConfig(benchmark=args.bench, limit=args.limit, samples=args.samples, ks=[1],
                         temperature=args.temperature, model=None if model in ("", "shipped") else model,
                         prompt=prompt or None, max_steps=args.max_steps, index=args.index,
                         max_new_tokens=args.max_new_tokens, search_k=args.search_k, engine="hybrid",
                         concurrency=16)
        t0 = time.time()
        res = run_eval(cfg, run_dir, progress=True)
        per_task = solved(run_dir)
        rows.append({"label": label, "model": model, "prompt": prompt or "(trained)", "run_dir": str(run_dir),
                     "pass@1": res["overall"]["metrics"]["pass@1"], "ci95": bootstrap(list(per_task.values())),
                     "agent_settings": {k: res["run"]["config"][k] for k in
                                        ("prompt", "max_steps", "max_new_tokens", "search_k", "temperature")},
                     "research": res["overall"]["research"],
                     "steps_mean": res["overall"]["agent"]["steps"]["mean"],
                     "seconds": round(time.time() - t0, 1), "_per_task": per_task})
        print(f"{label}: pass@1 {rows[-1]['pass@1']:.3f} research {rows[-1]['research']}", flush=True)
    base = rows[: args.baselines]
    for r in rows[args.baselines:]:
        r["vs"] = {b["label"]: paired(b["_per_task"], r["_per_task"]) for b in base}
        best = max(b["pass@1"] for b in base)
        r["ratio_to_best_baseline"] = r["pass@1"] / best if best else None
    out = {"bench": args.bench, "tasks": len(rows[0]["_per_task"]), "samples": args.samples,
           "temperature": args.temperature, "max_steps": args.max_steps, "max_new_tokens": args.max_new_tokens,
           "search_k": args.search_k, "index": args.index,
           "rows": [{k: v for k, v in r.items() if k != "_per_task"} for r in rows],
           "load_average_1min": os.getloadavg()[0], "cpu_count": os.cpu_count()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
