"""Evaluation time with and without prefill deduplication, same tasks, seed and policy.

``sleuth eval`` advances ``concurrency`` trajectories together, a task's samples side by side, so the k samples of
a question start from one prompt (and keep sharing it while they take the same steps). ``HFPolicy`` prefills each
distinct prompt of a generation call once (``dedupe_prompts``, the default). This runs the same evaluation with it
off, then on (then off and on again for ``--rounds 2``), on the shipped policy with its default (transformers')
engine, and checks that both sides produced the same answers: deduplication changes time, not results.

    SLEUTH_THREADS=2 nice -n 5 .venv/bin/python benchmarks/eval_dedupe.py [--limit 16 --samples 4 --rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from machine import cpu as cpu_info, write_result  # noqa: E402
from sleuth.agent import Environment  # noqa: E402
from sleuth.evals.run import EvalConfig, _resolve_agent_settings, run_eval  # noqa: E402
from sleuth.policy.loader import load_policy  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "eval_dedupe.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--index", default="passages")
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    policy = load_policy(None)
    cfg = EvalConfig(benchmark="dev", limit=a.limit, samples=a.samples, ks=[1], index=a.index, engine="hybrid")
    work = Path(tempfile.mkdtemp(prefix="eval-dedupe-"))
    # One environment for every run: loading the index and the embedder is not what is compared.
    rcfg = _resolve_agent_settings(cfg, policy)
    env = Environment.create(rcfg.index, engine=rcfg.engine, search_k=rcfg.search_k)
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    answers: dict[str, list] = {}
    load_before = [round(x, 2) for x in os.getloadavg()]
    for r in range(a.rounds):
        for side in ("off", "on") if r % 2 == 0 else ("on", "off"):
            policy.dedupe_prompts = side == "on"
            if policy.prefix_cache is not None:
                policy.prefix_cache.clear()    # no side starts from the other's cached rows
            saved0 = policy.prefill_rows_saved
            t, c = time.perf_counter(), time.process_time()
            run_eval(cfg, work / f"{side}-{r}", policy=policy, env=env, progress=False)
            dt, cpu = time.perf_counter() - t, time.process_time() - c
            recs = [json.loads(x) for x in (work / f"{side}-{r}" / "records.jsonl").read_text().splitlines()]
            answers.setdefault(side, []).append([(x["task_id"], x["sample"], x["answer"]) for x in recs])
            runs[side].append({"round": r, "seconds": round(dt, 1), "cpu_seconds": round(cpu, 1),
                               "rows_not_prefilled": policy.prefill_rows_saved - saved0,
                               "accuracy": round(sum(x["correct"] for x in recs) / len(recs), 4),
                               "load_average_1min": round(os.getloadavg()[0], 2)})
            print(f"round {r} dedupe {side}: {dt:.1f}s ({cpu:.1f} CPU s), "
                  f"{policy.prefill_rows_saved - saved0} rows not prefilled", flush=True)
    same = all(x == y for x, y in zip(answers["off"], answers["on"]))
    med = {s: sorted(v["seconds"] for v in runs[s])[len(runs[s]) // 2] for s in runs}
    result = {
        "what": "sleuth eval (agent mode) on dev with prefill deduplication off vs on, same seed and policy",
        "config": {"limit": a.limit, "samples": a.samples, "threads": a.threads, "index": a.index,
                   "engine": "hybrid", "policy": policy.name, "rollout_engine": policy.engine},
        "runs": runs, "median_seconds": med, "speedup": round(med["off"] / med["on"], 2),
        "identical_answers": same,
        "load_average_before": load_before, "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__, "cpu": cpu_info(),
    }
    write_result(a.out, result, ("median_seconds", "speedup", "identical_answers"))


if __name__ == "__main__":
    main()
