"""Rollout throughput: batched KV-cache generation (HFPolicy.generate) vs one trajectory at a time.

16 agent-style prompts (system prompt + a dev question, chat template) are continued for up to 128 tokens
at temperature 0.7 by the embedded SmolLM2-135M. The sequential baseline runs transformers'
``model.generate`` once per prompt, forced to produce exactly as many tokens as the batched run sampled
for that prompt, so both sides generate the same number of tokens and tokens/s compare like for like.

    nice -n 10 .venv/bin/python benchmarks/rollout_throughput.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import sys
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout, no install needed
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

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


@dataclass
class Config:
    batch: int = 16               # number of trajectories generated together
    max_new_tokens: int = 128     # tokens per trajectory (eos may end some earlier)
    temperature: float = 0.7
    threads: int = 1              # torch intra-op threads (1 is steadiest on a small shared machine)
    seed: int = 0
    out: str = str(Path(__file__).parent / "results" / "rollout_throughput.json")


def build_prompts(policy: HFPolicy, n: int) -> list[list[int]]:
    rows = [json.loads(line) for line in (paths.shared_data() / "qa" / "dev.jsonl").open()]
    rows.sort(key=lambda r: len(r["question"]))
    step = max(1, len(rows) // n)
    picked = rows[::step][:n]          # spread over question lengths -> mixed prompt lengths
    return [list(policy.tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": r["question"]}],
        add_generation_prompt=True, tokenize=True)["input_ids"]) for r in picked]


def time_batched(policy: HFPolicy, prompts: list[list[int]], params: SamplingParams, seed: int,
                 drop_finished: bool) -> tuple[dict, list[int]]:
    policy.drop_finished = drop_finished
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    gens = policy.generate(prompts, params)
    dt = time.perf_counter() - t0
    policy.drop_finished = True
    lens = [len(g.token_ids) for g in gens]
    return {"seconds": round(dt, 3), "tokens": sum(lens), "tokens_per_s": round(sum(lens) / dt, 2),
            "finish_reasons": {r: sum(g.finish_reason == r for g in gens) for r in ("eos", "stop", "length")}}, lens


def time_sequential(policy: HFPolicy, prompts: list[list[int]], lens: list[int], temperature: float,
                    seed: int) -> dict:
    torch.manual_seed(seed)
    total, t0 = 0, time.perf_counter()
    for p, n in zip(prompts, lens):
        x = torch.tensor([p], device=policy.device)
        out = policy.model.generate(x, attention_mask=torch.ones_like(x), do_sample=True,
                                    temperature=temperature, top_p=1.0, top_k=0, max_new_tokens=n,
                                    min_new_tokens=n, pad_token_id=policy.pad_id)
        total += out.shape[1] - len(p)
    dt = time.perf_counter() - t0
    return {"seconds": round(dt, 3), "tokens": total, "tokens_per_s": round(total / dt, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cfg = Config()
    for k, v in asdict(cfg).items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    cfg = Config(**vars(ap.parse_args()))
    torch.set_num_threads(cfg.threads)

    t0 = time.perf_counter()
    policy = HFPolicy.load()
    load_s = time.perf_counter() - t0
    prompts = build_prompts(policy, cfg.batch)
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    policy.generate(prompts[:2], SamplingParams(max_new_tokens=4, temperature=cfg.temperature))  # warm-up

    batched, lens = time_batched(policy, prompts, params, cfg.seed, drop_finished=True)
    kept, _ = time_batched(policy, prompts, params, cfg.seed, drop_finished=False)
    sequential = time_sequential(policy, prompts, lens, cfg.temperature, cfg.seed)
    result = {
        "config": asdict(cfg),
        "model": policy.name, "device": str(policy.device), "load_seconds": round(load_s, 2),
        "prompt_tokens": {"min": min(map(len, prompts)), "max": max(map(len, prompts)),
                          "total": sum(map(len, prompts))},
        "batched_drop_finished": batched,
        "batched_keep_finished": kept,
        "sequential_hf_generate": sequential,
        "speedup_batched_vs_sequential": round(batched["tokens_per_s"] / sequential["tokens_per_s"], 2),
        "speedup_drop_vs_keep_finished": round(batched["tokens_per_s"] / kept["tokens_per_s"], 2),
        "load_average_1min": round(os.getloadavg()[0], 2),   # other work on the machine skews timings
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
    }
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
