"""sleuth's own policy and trainer on a GPU: do they run, agree with the reference, and how fast?

sleuth is developed on CPUs; users with GPUs run the same ``HFPolicy`` (rollouts) and ``ReinforceTrainer``
(updates) on CUDA. This script checks that path end to end on whatever device it is given and records:

* **rollouts** — ``HFPolicy.generate`` tokens per second at batch 16 and 64 (256-token prompts, 128 new tokens,
  temperature 1) for the engines that run on a GPU: transformers' forward (``hf``) and sleuth's static engine in
  float32 and bfloat16 (the int8 engine is fbgemm, CPU only);
* **agreement** — greedy tokens and log-probs of the static float32 engine against ``hf`` on the same device;
* **update** — ``ReinforceTrainer.step`` row tokens per second on agent-shaped rows (``train_step.py``'s
  ``agent_groups``: a shared 386-token prompt, a question, two replies around a 250-token observation), float32
  and bf16 autocast, and the first step's gradient on the GPU against the same step on the CPU (relative L2).

The model is SmolLM2-135M-Instruct's architecture and tokenizer; its weights are the cached checkpoint when the
machine has it, else a seeded random initialisation (speed and agreement do not depend on the values; the
source is recorded). Each section records its own error instead of stopping the run.

    python benchmarks/gpu_check.py --device cuda --model-dir DIR --out benchmarks/results/gpu_check_h200.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from sleuth.policy.base import SamplingParams  # noqa: E402
from sleuth.policy.hf import HFPolicy  # noqa: E402
from sleuth.rl.config import TrainConfig  # noqa: E402
from sleuth.rl.reinforce import ReinforceTrainer  # noqa: E402
from train_step import agent_groups, capture_first_gradient, relative_l2  # noqa: E402


def load(model_dir: Path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if (model_dir / "model.safetensors").is_file():
        return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32), tok, "checkpoint"
    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(str(model_dir))
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32), tok, "random init (seed 0)"


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab, (n, length), generator=g).tolist()


def rollouts(model, tok, dev, batches, new_tokens: int) -> dict:
    out = {}
    for engine, precision in (("hf", "fp32"), ("static", "fp32"), ("static", "bf16")):
        pol = HFPolicy(model, tok, engine=engine, precision=precision, prefix_cache=False)
        for b in batches:
            ps = prompts(b, 256, model.config.vocab_size, seed=b)
            params = SamplingParams(max_new_tokens=new_tokens, temperature=1.0)
            pol.generate(ps[:2], SamplingParams(max_new_tokens=8, temperature=1.0))   # warm-up
            sync(dev)
            t = time.perf_counter()
            gens = pol.generate(ps, params)
            sync(dev)
            dt = time.perf_counter() - t
            n = sum(len(g.token_ids) for g in gens)
            out[f"{engine}-{precision}-b{b}"] = {"seconds": round(dt, 3), "tokens": n, "tokens_per_s": round(n / dt, 1)}
            print(f"rollout {engine}-{precision} batch {b}: {n / dt:.0f} tok/s", flush=True)
    return out


def agreement(model, tok, dev) -> dict:
    ps = prompts(16, 200, model.config.vocab_size, seed=7)
    params = SamplingParams(max_new_tokens=64, temperature=0)
    runs = {e: HFPolicy(model, tok, engine=e, prefix_cache=False).generate(ps, params) for e in ("hf", "static")}
    equal = sum(a.token_ids == b.token_ids for a, b in zip(runs["hf"], runs["static"]))
    gap = max(abs(x - y) for a, b in zip(runs["hf"], runs["static"])
              for x, y, ta, tb in zip(a.logprobs, b.logprobs, a.token_ids, b.token_ids) if ta == tb)
    return {"rows": 16, "new_tokens": 64, "greedy_rows_equal": equal, "max_abs_logprob_diff": gap}


def update(model, tok, dev, batch: int, steps: int) -> dict:
    out = {}
    for bf16 in (False, True):
        tr = ReinforceTrainer(copy.deepcopy(model), tok, TrainConfig(
            lr=1e-6, micro_batch_size=8, max_seq_len=4096, max_grad_norm=1.0, device=str(dev), bf16=bf16))
        times, tokens = [], 0
        for i in range(steps + 1):
            groups = agent_groups(batch, 8, model.config.vocab_size, tr.version, seed=i)
            sync(dev)
            t = time.perf_counter()
            m = tr.step(groups)
            sync(dev)
            if i:
                times.append(time.perf_counter() - t)
            tokens = int(m["seq_tokens"])
        times.sort()
        med = times[len(times) // 2]
        out["bf16" if bf16 else "fp32"] = {"batch": batch, "row_tokens": tokens, "median_seconds": round(med, 3),
                                           "tokens_per_s": round(tokens / med, 1)}
        print(f"update {'bf16' if bf16 else 'fp32'} batch {batch}: {tokens / med:.0f} tok/s", flush=True)
        del tr
    return out


def gradient(model, tok, dev) -> dict:
    grads: dict[str, list[torch.Tensor]] = {}
    for d in ("cpu", str(dev)):
        tr = ReinforceTrainer(copy.deepcopy(model), tok, TrainConfig(lr=1e-6, micro_batch_size=4, max_seq_len=4096,
                                                                     device=d))
        capture_first_gradient(tr, grads, d)
        tr.step(agent_groups(4, 4, model.config.vocab_size, tr.version, seed=99))
        del tr
    rel = relative_l2(grads["cpu"], grads[str(dev)])
    return {"rows": 4, "relative_l2_diff_vs_cpu": rel, "tolerance": 1e-3, "within_tolerance": rel < 1e-3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model-dir", required=True, help="SmolLM2-135M-Instruct: config.json and tokenizer files "
                                                      "(weights optional)")
    ap.add_argument("--batches", default="16,64")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--update-batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    import transformers

    dev = torch.device(a.device)
    model, tok, source = load(Path(a.model_dir))
    model = model.to(dev).eval()
    result: dict = {"what": "sleuth's HFPolicy rollouts and ReinforceTrainer update on one device (see docstring)",
                    "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                    "torch": torch.__version__, "transformers": transformers.__version__, "weights": source,
                    "cpu_threads": torch.get_num_threads()}
    batches = [int(b) for b in a.batches.split(",")]
    sections = {"rollouts": lambda: rollouts(model, tok, dev, batches, a.new_tokens),
                "agreement_static_vs_hf": lambda: agreement(model, tok, dev),
                "update": lambda: update(model, tok, dev, a.update_batch, a.steps),
                "first_step_gradient_vs_cpu": lambda: gradient(model, tok, dev)}
    for name, fn in sections.items():
        t = time.perf_counter()
        try:
            result[name] = fn()
        except Exception as e:   # record and go on: one broken path must not hide the others' results
            result[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
            print(f"{name} failed: {e}", flush=True)
        print(f"{name}: {time.perf_counter() - t:.1f}s", flush=True)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "what"}, indent=2)[:6000])


if __name__ == "__main__":
    main()
