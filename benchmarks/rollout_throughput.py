"""Rollout throughput: sleuth's decode engines side by side in one run, and their log-prob gap to the trainer.

16 agent-style prompts (system prompt + a dev question, chat template) are continued for up to 128 tokens at
temperature 0.7 by the embedded SmolLM2-135M, one batch of 16, with every engine of ``HFPolicy.generate``:

* ``hf``          — transformers' forward with a dynamic cache (the engine rollouts used before the static one)
* ``static-fp32`` — sleuth's lean decode engine (``sleuth/policy/engine.py``): static KV cache, fused
                    products, the trainer's own float32 arithmetic (the default)
* ``static-bf16`` — the same engine with bfloat16 linear layers (oneDNN; fast where the CPU has AVX512-BF16)
* ``static-int8`` — the same engine with int8 linear layers (fbgemm dynamic quantisation)
* ``llama-f32``   — llama.cpp (``sleuth/policy/llamacpp.py``) on the policy's weights written to GGUF as float32,
                    flash attention over a float16 KV cache; sleuth samples from its logits
* ``llama-bf16``  — the same with the weights as bfloat16
* ``llama-q8``    — the same with the weights as q8_0 (8 bits per weight, one scale per block of 32)

The engines run interleaved (round r runs them in a rotated order, same seed) so that load from other
processes hits all alike; tokens/s (wall clock) and tokens per CPU second (the process runs one thread, so this
is the time it was actually on a core) are medians over rounds. For every engine the trainer's log-probs of the
sampled tokens are recomputed with the reference forward (``HFPolicy.logprobs`` at the same temperature, what
``ReinforceTrainer`` computes) and the gap Δ = logπ_trainer − logπ_engine is recorded: mean and max |Δ| and
quantiles of the importance ratio exp(Δ) that the objective's ``tis_cap`` would apply.

    SLEUTH_THREADS=1 nice -n 5 .venv/bin/python benchmarks/rollout_throughput.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout, no install needed
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from machine import cpu as cpu_info, write_result  # noqa: E402

from sleuth import paths  # noqa: E402
from sleuth.policy.base import SamplingParams  # noqa: E402
from sleuth.policy.hf import HFPolicy  # noqa: E402

SYSTEM = (
    "You are a research agent. Answer the user's question using the tools below, one action per turn.\n"
    "Tools:\n- search(query): search an offline Wikipedia corpus; returns numbered passages.\n"
    "- open(id): read a passage in full.\n- finish(answer, citations): give the final short answer.\n"
    "Think step by step inside <think>...</think>, then write exactly one action as JSON inside "
    "<action>...</action>. Cite the passages you used."
)
ENGINES = {"hf": ("hf", "fp32"), "static-fp32": ("static", "fp32"), "static-bf16": ("static", "bf16"),
           "static-int8": ("static", "int8"),
           "llama-f32": ("llama", "fp32"), "llama-bf16": ("llama", "bf16"), "llama-q8": ("llama", "int8")}


@dataclass
class Config:
    batch: int = 16               # number of trajectories generated together
    max_new_tokens: int = 128     # tokens per trajectory (eos may end some earlier)
    temperature: float = 0.7
    threads: int = 1              # torch intra-op threads (1 is steadiest on a small shared machine)
    seed: int = 0
    rounds: int = 2               # interleaved rounds; tokens/s is the median per engine
    # llama-*: needs llama-cpp-python
    engines: str = "hf,static-fp32,static-bf16,static-int8,llama-f32,llama-bf16,llama-q8"
    out: str = str(Path(__file__).parent / "results" / "rollout_throughput.json")


def build_prompts(policy: HFPolicy, n: int) -> list[list[int]]:
    rows = [json.loads(line) for line in (paths.shared_data() / "qa" / "dev.jsonl").open()]
    rows.sort(key=lambda r: len(r["question"]))
    step = max(1, len(rows) // n)
    picked = rows[::step][:n]          # spread over question lengths -> mixed prompt lengths
    return [list(policy.tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": r["question"]}],
        add_generation_prompt=True, tokenize=True)["input_ids"]) for r in picked]


def mismatch(policy: HFPolicy, prompts: list[list[int]], gens, temperature: float) -> dict:
    """Δ = trainer log-prob − engine log-prob on every sampled token (reference forward, same temperature)."""
    d = torch.tensor(policy.logprob_gap(prompts, gens, temperature), dtype=torch.float64)
    ratio = d.exp()
    q = torch.tensor([0.01, 0.05, 0.5, 0.95, 0.99], dtype=torch.float64)
    return {"tokens": len(d), "mean_abs": float(d.abs().mean()), "max_abs": float(d.abs().max()),
            "mean": float(d.mean()),
            "ratio_quantiles": dict(zip(["p01", "p05", "p50", "p95", "p99"],
                                        [round(float(x), 6) for x in torch.quantile(ratio, q)])),
            "ratio_outside_0.5_2": float(((ratio < 0.5) | (ratio > 2)).double().mean())}


def greedy_agreement(policy: HFPolicy, prompts: list[list[int]], names: list[str], n_tokens: int = 32) -> dict:
    """Greedy continuations of every engine against the reference (hf): identical rows, max |Δ log-prob|."""
    out, ref = {}, None
    for name in ["hf"] + [n for n in names if n != "hf"]:
        policy.engine, policy.precision = ENGINES[name]
        gens = policy.generate(prompts, SamplingParams(max_new_tokens=n_tokens, temperature=0))
        if ref is None:
            ref = gens
            continue
        same = [a.token_ids == b.token_ids for a, b in zip(ref, gens)]
        lp = [abs(x - y) for a, b, s in zip(ref, gens, same) if s for x, y in zip(a.logprobs, b.logprobs)]
        out[name] = {"identical_rows": sum(same), "rows": len(same), "max_abs_logprob_diff": max(lp, default=None)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cfg = Config()
    for k, v in asdict(cfg).items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    cfg = Config(**vars(ap.parse_args()))
    torch.set_num_threads(cfg.threads)
    names = [n.strip() for n in cfg.engines.split(",") if n.strip()]
    unknown = set(names) - set(ENGINES)
    if unknown:
        raise SystemExit(f"unknown engine(s) {sorted(unknown)}; known: {', '.join(ENGINES)}")
    load_before = os.getloadavg()

    t0 = time.perf_counter()
    policy = HFPolicy.load()
    policy.prefix_cache = None            # every run prefills its prompts: no engine gets another's KV
    load_s = time.perf_counter() - t0
    prompts = build_prompts(policy, cfg.batch)
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    warmup = {}
    # warm-up, which prepares each engine's weights once (copied, fused, converted to its precision; the policy
    # keeps one prepared engine per precision, so the timed runs below measure generation only)
    for name in names:
        policy.engine, policy.precision = ENGINES[name]
        t = time.perf_counter()
        policy.generate(prompts[:2], SamplingParams(max_new_tokens=4, temperature=cfg.temperature))
        warmup[name] = round(time.perf_counter() - t, 2)
        print(f"warm-up {name}: {warmup[name]:.1f}s", flush=True)

    runs: dict[str, list[dict]] = {n: [] for n in names}
    last_gens = {}
    for r in range(cfg.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            policy.engine, policy.precision = ENGINES[name]
            torch.manual_seed(cfg.seed + r)
            t, c = time.perf_counter(), time.process_time()
            gens = policy.generate(prompts, params)
            dt, cpu = time.perf_counter() - t, time.process_time() - c
            n = sum(len(g.token_ids) for g in gens)
            runs[name].append({"round": r, "seconds": round(dt, 3), "cpu_seconds": round(cpu, 3), "tokens": n,
                               "tokens_per_s": round(n / dt, 2), "tokens_per_cpu_s": round(n / cpu, 2),
                               "load_average_1min": round(os.getloadavg()[0], 2)})
            last_gens[name] = gens
            print(f"round {r} {name:12s} {dt:7.1f}s {n:5d} tokens {n / dt:7.1f} tok/s, {n / cpu:7.1f} tok per "
                  f"CPU s (load {os.getloadavg()[0]:.1f})", flush=True)

    engines = {}
    for name in names:
        tps = statistics.median(x["tokens_per_s"] for x in runs[name])
        cps = statistics.median(x["tokens_per_cpu_s"] for x in runs[name])
        engines[name] = {"tokens_per_s_median": round(tps, 2), "tokens_per_cpu_s_median": round(cps, 2),
                         "runs": runs[name],
                         "logprob_mismatch_to_trainer": mismatch(policy, prompts, last_gens[name], cfg.temperature)}
        print(f"{name}: mismatch {engines[name]['logprob_mismatch_to_trainer']}", flush=True)
    base = engines.get("hf", {}).get("tokens_per_s_median")
    result = {
        "config": asdict(cfg),
        "what": "batched sampling at T=0.7 (prefill + decode), engines interleaved in one run, one torch thread",
        "model": policy.name, "device": str(policy.device), "load_seconds": round(load_s, 2),
        "prompt_tokens": {"min": min(map(len, prompts)), "max": max(map(len, prompts)),
                          "total": sum(map(len, prompts))},
        "engines": engines,
        "speedup_vs_hf": {n: round(e["tokens_per_s_median"] / base, 2) for n, e in engines.items()} if base else {},
        # One thread: CPU seconds are the time the process actually ran, less sensitive to the other jobs'
        # load swinging between runs than wall-clock seconds.
        "speedup_vs_hf_cpu_time": {n: round(e["tokens_per_cpu_s_median"] / engines["hf"]["tokens_per_cpu_s_median"], 2)
                                   for n, e in engines.items()} if base else {},
        "greedy_vs_hf": greedy_agreement(policy, prompts, names),
        # 2 prompts x 4 tokens, including the engine's one-time weight preparation (once per set of weights: in
        # RL once per update)
        "warmup_seconds": warmup,
        # Writing the weights to GGUF and loading them into llama.cpp (once per set of weights, after each update).
        "llama_weights_load_seconds": {w: round(e.export_seconds / max(e.loads, 1), 2) for w, e in policy._llama.items()},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
        "cpu": cpu_info(),
    }
    write_result(cfg.out, result, ("speedup_vs_hf", "speedup_vs_hf_cpu_time", "greedy_vs_hf"))


if __name__ == "__main__":
    main()
