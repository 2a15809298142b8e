"""One RL iteration of the shipped recipe's last stage, end to end, with the former and the current fast paths.

Runs ``configs/recipe/research.toml`` (4 tasks × 8 trajectories per iteration, LoRA r16, hybrid search on the
``passages`` index) for ``--iterations`` iterations each way, interleaved iteration by iteration so that load
from other processes hits every side alike, with the same seed and tasks:

* ``former``:    ``rollout_engine = "hf"`` (transformers' forward), ``rl.share_prefix = false`` and
  ``rollout_dedupe = false`` (every row prefilled, identical prompts too)
* ``recipe``:    the stage config unchanged (static engine; ``"auto"`` precision: bfloat16 rollouts and update on a
  CPU with native bfloat16, float32 elsewhere)
* ``fast``:      ``rollout_engine = "static"`` and the shared-prefix update, float32
* ``fast-int8``: the static engine in int8 (``rollout_precision = "int8"``) with the truncated importance weight
  the int8 policy gap needs (``rl.tis_cap = 2``), and the shared-prefix update
* ``fast-bf16``: the static engine in bfloat16 (``rollout_precision = "bf16"``, ``rl.tis_cap = 2``), shared prefix
* ``fast-bf16-update``: float32 static-engine rollouts, the update under bfloat16 autocast (``rl.bf16 = true``)
* ``fast-bf16-all``: bfloat16 rollouts (``rl.tis_cap = 2``) and the bfloat16 update
* ``fast-llama``: llama.cpp rollouts on the float32 weights (``rollout_engine = "llama"``), shared-prefix update
* ``fast-llama-q8``: llama.cpp on q8_0 weights with the truncated importance weight ``tis_cap = 2``

Differences from the recipe, for a benchmark: the starting policy is the shipped one (the recipe starts from
its own earlier stages), tasks are the dev questions only with ``reachable_k = 0`` (no task file to synthesise,
no reachability pass), no warm start, no time budget for rollouts (every side runs every trajectory to its end)
and ``--threads`` torch threads. ``former`` and ``fast`` sample the same tokens; ``fast-llama`` nearly the same
(log-probs within ~1e-2 of the trainer's, so a sampled token can differ); the int8 / q8 sides sample from their own
(slightly different) policies, so their work differs a little: rollout tokens per side are recorded beside seconds.

    nice -n 5 .venv/bin/python benchmarks/rl_iteration.py [--iterations 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
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

from sleuth.rl.train import load_run_config, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "rl_iteration.json"
# Every side but "recipe" runs in float32 unless it says otherwise, whatever precision the recipe's config asks for
FLOAT32 = {"rollout_precision": "fp32", "rl_bf16": False}
SIDES = {"former": {"rollout_engine": "hf", "rl_share_prefix": False, "rollout_dedupe": False},
         # the stage config as it is (its "auto" precision: bfloat16 on a CPU with native bfloat16)
         "recipe": {},
         "fast": {"rollout_engine": "static", "rl_share_prefix": True},
         # int8 rollouts sample from a slightly different policy: the update corrects it (truncated IS)
         "fast-int8": {"rollout_engine": "static", "rollout_precision": "int8", "rl_tis_cap": 2.0,
                       "rl_share_prefix": True},
         "fast-bf16": {"rollout_engine": "static", "rollout_precision": "bf16", "rl_tis_cap": 2.0,
                       "rl_share_prefix": True},
         # float32 rollouts (the same trajectories as former's first iteration), the update under bfloat16 autocast
         "fast-bf16-update": {"rollout_engine": "static", "rl_share_prefix": True, "rl_bf16": True},
         # bfloat16 both ways: rollouts by the bf16 engine (truncated IS for its gap) and the update under autocast
         "fast-bf16-all": {"rollout_engine": "static", "rollout_precision": "bf16", "rl_tis_cap": 2.0,
                           "rl_share_prefix": True, "rl_bf16": True},
         # llama.cpp on the float32 weights (float16 KV cache): log-probs within ~1e-2 of the trainer's
         "fast-llama": {"rollout_engine": "llama", "rl_share_prefix": True},
         "fast-llama-q8": {"rollout_engine": "llama", "rollout_precision": "int8", "rl_tis_cap": 2.0,
                           "rl_share_prefix": True}}
KEYS = ("rollout_seconds", "update_seconds", "iteration_seconds", "rollout_tokens", "seq_tokens", "shared_prefix",
        "trajectories", "trained_trajectories", "accuracy", "logprob_mismatch", "logprob_mismatch_max")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "recipe" / "research.toml"))
    ap.add_argument("--model", default=str(ROOT / "sleuth" / "policies" / "sleuth-135m-rl"))
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the recipe runs 2)")
    ap.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated subset of {', '.join(SIDES)}")
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed iterations of the first side before measuring (one-time costs of the process)")
    ap.add_argument("--tasks-per-iteration", type=int, default=None, help="override the config's (a quick check)")
    ap.add_argument("--group-size", type=int, default=None, help="override the config's (a quick check)")
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args()
    sides = [s for s in a.sides.split(",") if s]
    if "former" not in sides or any(s not in SIDES for s in sides):
        ap.error(f"--sides must include former and name only {', '.join(SIDES)}")
    torch.set_num_threads(a.threads)
    load_before = [round(x, 2) for x in os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="rl-iteration-"))
    def config(side: str):
        cfg = load_run_config(a.config, model=a.model, tasks="dev", reachable_k=0, threads=a.threads,
                              **{"rl_seed": a.seed, **({} if side == "recipe" else FLOAT32), **SIDES[side],
                                 **({"rl_tasks_per_iteration": a.tasks_per_iteration} if a.tasks_per_iteration else {}),
                                 **({"rl_group_size": a.group_size} if a.group_size else {})})
        cfg.rollout_seconds = None
        cfg.warm_start.tasks = None   # a stage's warm start is not part of an iteration
        return cfg

    if a.warmup:   # the first path run pays for loading the index, the embedder and the allocator: not timed
        cfg = config(sides[0])
        cfg.rl.seed = a.seed + 1000   # other tasks than the measured iterations
        train(cfg, work / "warmup", iterations=a.warmup, log=lambda s: print(f"  [warm-up] {s}"))
        if any(SIDES[s].get("rollout_engine") == "llama" for s in sides):   # parsing the GGUF vocabulary, once
            from sleuth import paths
            from sleuth.policy.llamacpp import read_template

            read_template(str(paths.embedded_policy_gguf().resolve()))
    per: dict[str, list[dict]] = {s: [] for s in sides}
    for it in range(1, a.iterations + 1):
        order = sides if it % 2 else list(reversed(sides))
        for side in order:
            cfg = config(side)
            t = time.perf_counter()
            hist = train(cfg, work / side, resume=it > 1, iterations=it, log=lambda s: print(f"  [{side}] {s}"))
            m = hist[-1]
            row = {k: m.get(k) for k in KEYS}
            row.update(iteration=it, wall_seconds_with_loading=round(time.perf_counter() - t, 1),
                       load_average_1min=round(os.getloadavg()[0], 2))
            per[side].append(row)
            print(f"iteration {it} {side:6s}: rollout {m['rollout_seconds']:.1f}s update {m['update_seconds']:.1f}s "
                  f"iteration {m['iteration_seconds']:.1f}s (load {os.getloadavg()[0]:.1f})", flush=True)

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in per[side])

    def rate(side: str, tokens: str, seconds: str) -> float | None:
        num, den = sum(r[tokens] or 0 for r in per[side]), sum(r[seconds] or 0 for r in per[side])
        return round(num / den, 1) if den else None

    summary = {s: {k: round(med(s, k), 2) for k in ("rollout_seconds", "update_seconds", "iteration_seconds")}
               for s in sides}
    for s in sides:   # the int8 side samples other tokens, so its work differs: rates beside seconds
        summary[s]["rollout_tokens_per_s"] = rate(s, "rollout_tokens", "rollout_seconds")
        summary[s]["update_seq_tokens_per_s"] = rate(s, "seq_tokens", "update_seconds")

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None
    result = {
        "what": f"RL iterations of {a.config}, former vs fast paths, interleaved, same seed",
        "config": a.config, "model": a.model, "iterations_each": a.iterations, "seed": a.seed,
        "threads": a.threads, "warmup_iterations": a.warmup, "sides": {s: SIDES[s] for s in sides},
        "changes_from_recipe": f"tasks=dev, reachable_k=0, rollout_seconds=None, no warm start, threads={a.threads}, "
                               "shipped policy as start",
        "per_iteration": per, "median": summary,
        "speedup_vs_former": {s: {**{k: ratio(summary["former"][k], summary[s][k])
                                     for k in ("rollout_seconds", "update_seconds", "iteration_seconds")},
                                  **{k: ratio(summary[s][k], summary["former"][k])
                                     for k in ("rollout_tokens_per_s", "update_seq_tokens_per_s")}}
                              for s in sides if s != "former"},
        "load_average_before": load_before, "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__, "cpu": cpu_info(),
    }
    write_result(a.out, result, ("median", "speedup_vs_former"))


if __name__ == "__main__":
    main()
