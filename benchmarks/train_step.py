"""Training throughput of one policy-gradient update: sleuth's ReinforceTrainer vs TRL's GRPOTrainer loss step.

Same model (the embedded SmolLM2-135M-Instruct, float32), same batch: B sequences of L tokens, each a
P-token prompt (not trained) followed by L−P sampled tokens (trained), two groups with rewards 1,0,1,0.
What is timed, for each side: forward + backward + gradient clipping + AdamW step. Generation is excluded:

* sleuth: ``ReinforceTrainer.step(groups)`` — everything from Trajectory records to new weights (building the
  padded batch from the recorded token ids is inside the timing, to our disadvantage).
* TRL: ``GRPOTrainer.compute_loss(model, inputs)`` on the dict that its ``_generate_and_score_completions``
  would produce (prompt/completion ids and masks, advantages, ``num_items_in_batch``), then
  ``loss.backward()``, ``clip_grad_norm_`` and the optimizer that ``GRPOTrainer.create_optimizer()`` builds.
  ``training_step`` cannot be used because it calls generation. Config: beta=0 (no reference model), default
  loss_type 'dapo' (token-level normalisation, like ours), bf16 off, gradient checkpointing off (both sides).

With a single policy step per batch both objectives have the same gradient, −Σ A·∇logπ / N; the script
checks it by comparing the pre-clipping gradient norms of the first step.
Steps alternate between the two trainers so that load from other processes hits both alike.

Run:  nice -n 10 .venv/bin/python benchmarks/train_step.py [--batch 8 --seq-len 512 --prompt-len 128 --steps 3
      --threads 1]

``--compare prefix`` measures instead the update with and without the shared prefix (``TrainConfig.share_prefix``)
on agent-shaped rows: every row starts with the same 386-token prompt (the length of the short-2shot system
prompt and worked examples), then its group's question, a 20-token reply, a 250-token observation and a second
20-token reply — the shape of the shipped recipe's rollouts. Both sides run the same sleuth trainer, alternating
steps; the first step's full gradients are compared (max |Δ| and relative norm of the difference):

      nice -n 5 .venv/bin/python benchmarks/train_step.py --compare prefix --batch 8 --steps 2

``--compare bf16``: the same rows and trainer, float32 vs bfloat16 autocast (``TrainConfig.bf16``; weights,
gradients and optimizer state stay float32), both with the shared prefix → ``train_step_bf16.json``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from machine import cpu as cpu_info, write_result  # noqa: E402
from sleuth import paths  # noqa: E402
from sleuth.rl.config import TrainConfig  # noqa: E402
from sleuth.rl.reinforce import ReinforceTrainer  # noqa: E402
from sleuth.trajectory import Judgement, Segment, Trajectory  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "train_step.json"


def load_smollm2():
    """SmolLM2-135M-Instruct: a cached safetensors copy if present, else the embedded GGUF (dequantised)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, logging

    logging.disable_progress_bar()
    cached = paths.home() / "models" / "smollm2-135m-instruct"
    if (cached / "config.json").is_file():
        src, kw = str(cached), {}
    else:
        gguf = paths.embedded_policy_gguf()
        src, kw = str(gguf.parent), {"gguf_file": gguf.name}
    tok = AutoTokenizer.from_pretrained(src, **kw)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, **kw)
    return model, tok, (str(cached) if not kw else kw["gguf_file"])


def make_batch(B: int, L: int, P: int, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, vocab, (B, L), generator=g)
    rewards = [1.0, 0.0] * (B // 2)
    return ids, rewards


def sleuth_groups(ids: torch.Tensor, rewards: list[float], P: int, group: int, version: int
                  ) -> list[list[Trajectory]]:
    trajs = []
    for row, r in zip(ids.tolist(), rewards):
        seg = Segment()
        seg.extend_context(row[:P])
        seg.extend_policy(row[P:], [-2.0] * (len(row) - P), version=version, step=0)
        trajs.append(Trajectory(question="bench", segments=[seg], steps=1, finish_reason="finish",
                                judgement=Judgement(correct=r > 0, reward=r)))
    return [trajs[i:i + group] for i in range(0, len(trajs), group)]


def agent_groups(B: int, group: int, vocab: int, version: int, prefix: int = 386, question: int = 13,
                 reply: int = 20, observation: int = 250, seed: int = 0) -> list[list[Trajectory]]:
    """Agent-shaped rows (see the module docstring), rewards 1,0,1,0 in each group."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda n: torch.randint(100, vocab, (n,), generator=g).tolist()   # noqa: E731
    shared = rand(prefix)
    trajs = []
    for i in range(B):
        if i % group == 0:
            q = rand(question)
        seg = Segment()
        seg.extend_context(shared + q)
        seg.extend_policy(rand(reply), [-2.0] * reply, version=version, step=0)
        seg.extend_context(rand(observation))
        seg.extend_policy(rand(reply), [-2.0] * reply, version=version, step=1)
        trajs.append(Trajectory(question="bench", segments=[seg], steps=2, finish_reason="finish",
                                judgement=Judgement(correct=i % 2 == 0, reward=float(i % 2 == 0))))
    return [trajs[i:i + group] for i in range(0, B, group)]


def capture_first_gradient(trainer: ReinforceTrainer, store: dict, key: str) -> None:
    """Record ``trainer``'s gradients (float32, on the CPU) in ``store[key]`` just before its first optimizer step."""
    step = trainer.optimizer.step

    def snapshot(*args, **kw):
        if key not in store:
            store[key] = [p.grad.detach().float().cpu().clone() for p in trainer.params]
        return step(*args, **kw)
    trainer.optimizer.step = snapshot


def relative_l2(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """‖a − b‖ / ‖a‖ over lists of tensors (e.g. two trainers' gradients)."""
    num = torch.sqrt(sum(((x - y) ** 2).sum() for x, y in zip(a, b)))
    return float(num / torch.sqrt(sum((x ** 2).sum() for x in a)))


COMPARISONS = {   # --compare: the former path first, then the new one
    "prefix": {"full_rows": {"share_prefix": False}, "shared_prefix": {"share_prefix": True}},
    # bfloat16 autocast of the update's products (weights, gradients and optimizer state stay float32), both
    # with the shared prefix: on CPUs with AVX512-BF16 or AMX oneDNN's bfloat16 products run ~2x float32's
    "bf16": {"fp32": {"share_prefix": True}, "bf16": {"share_prefix": True, "bf16": True}},
}


def compare_updates(a, base, tok, mode: str) -> dict:
    """sleuth's update two ways (``COMPARISONS[mode]``: the former path, then the new one), same batch,
    alternating steps."""
    B, G, lr = a.batch, a.group, 1e-6
    sides = COMPARISONS[mode]
    trainers = {name: ReinforceTrainer(copy.deepcopy(base), tok, TrainConfig(
        lr=lr, micro_batch_size=4, max_seq_len=4096, max_grad_norm=1.0, log_entropy=True, **kw))
        for name, kw in sides.items()}
    grads: dict[str, list[torch.Tensor]] = {}
    for name, tr in trainers.items():
        capture_first_gradient(tr, grads, name)
    times: dict[str, list[float]] = {n: [] for n in trainers}
    cpu_times: dict[str, list[float]] = {n: [] for n in trainers}
    tokens = 0
    metrics = {}
    for i in range(a.steps + 1):
        order = list(trainers) if i % 2 == 0 else list(reversed(trainers))
        for name in order:
            tr = trainers[name]
            groups = agent_groups(B, G, base.config.vocab_size, tr.version)
            t, c = time.perf_counter(), time.process_time()
            m = tr.step(groups)
            dt, cpu = time.perf_counter() - t, time.process_time() - c
            tokens = int(m["seq_tokens"])
            if i == 0:
                metrics[name] = {k: m[k] for k in ("loss", "grad_norm", "shared_prefix", "seq_tokens", "tokens")}
            else:
                times[name].append(dt)
                cpu_times[name].append(cpu)
            print(f"{'warm-up' if i == 0 else f'step {i}'} {name:14s} {dt:7.2f}s {m['seq_tokens'] / dt:7.1f} tok/s "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    first, second = list(sides)
    ga, gb = grads[first], grads[second]
    diff = max(float((x - y).abs().max()) for x, y in zip(ga, gb))
    rel = relative_l2(ga, gb)
    med = {k: statistics.median(v) for k, v in times.items()}
    tps = {k: tokens / v for k, v in med.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu_times.items()}
    cps = {k: tokens / v for k, v in cpu_med.items()}
    # bfloat16 keeps 8 bits of mantissa: its gradient differs by rounding (~1e-2), not by a different objective
    tol = 5e-2 if mode == "bf16" else 1e-4
    what = {"prefix": "with and without the shared prefix", "bf16": "float32 vs bfloat16 autocast, shared prefix"}
    return {
        "what": f"one update step (forward+backward+clip+AdamW) on agent-shaped rows, {what[mode]}; row tokens "
                "per second (shared prefix counted in every row)",
        "sides": sides, "batch": B, "group_size": G, "row_tokens": tokens,
        "row_shape": "386 shared prompt + 13 question (per group) + 20 reply + 250 observation + 20 reply",
        "threads": torch.get_num_threads(), "seconds_per_step": times, "median_seconds": med,
        "tokens_per_s": tps, f"speedup_{second}": tps[second] / tps[first],
        # one thread: CPU seconds are the time the step actually ran, steadier than wall clock when the other
        # jobs' load swings between steps
        "cpu_seconds_per_step": cpu_times, "tokens_per_cpu_s": cps,
        f"speedup_{second}_cpu_time": cps[second] / cps[first],
        "first_step": metrics,
        "first_step_gradient": {"max_abs_diff": diff, "relative_l2_diff": rel, "tolerance_relative_l2": tol,
                                "within_tolerance": rel < tol},
    }


def trl_inputs(ids: torch.Tensor, rewards: list[float], P: int, group: int) -> dict:
    r = torch.tensor(rewards).view(-1, group)
    adv = (r - r.mean(1, keepdim=True)).view(-1)          # scale_rewards='none': same advantages as ours
    comp = ids[:, P:]
    return {
        "prompt_ids": ids[:, :P], "prompt_mask": torch.ones_like(ids[:, :P]),
        "completion_ids": comp, "completion_mask": torch.ones_like(comp),
        "advantages": adv, "old_per_token_logps": None,
        "num_items_in_batch": torch.tensor(float(comp.numel())),
    }


def build_trl(model, tok, B: int, group: int, completion_len: int, lr: float, out_dir: str):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(output_dir=out_dir, per_device_train_batch_size=B, num_generations=group,
                      max_completion_length=completion_len, beta=0.0, learning_rate=lr, max_grad_norm=1.0,
                      bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
                      scale_rewards="none", logging_steps=1000, save_strategy="no", disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
                          args=args, train_dataset=Dataset.from_dict({"prompt": ["x"] * B}),
                          processing_class=tok)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1   # normally set by Trainer's training loop
    return trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per trainer (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (0 = torch default); on a shared, oversubscribed CPU one thread is "
                         "several times faster than two whose OpenMP workers wait on each other")
    ap.add_argument("--compare", choices=("trl", *COMPARISONS), default="trl",
                    help="trl: sleuth vs TRL's GRPO loss step; prefix: sleuth with vs without the shared prefix; "
                         "bf16: sleuth's update in float32 vs bfloat16 autocast")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    B, L, P, G = a.batch, a.seq_len, a.prompt_len, a.group
    lr = 1e-6
    load_before = [round(x, 2) for x in os.getloadavg()]

    t0 = time.perf_counter()
    base, tok, source = load_smollm2()
    print(f"loaded {source} in {time.perf_counter() - t0:.0f}s; threads={torch.get_num_threads()}", flush=True)
    if a.compare in COMPARISONS:
        second = list(COMPARISONS[a.compare])[1]
        result = {"model": "SmolLM2-135M-Instruct (" + source + "), float32 weights, CPU",
                  **compare_updates(a, base, tok, a.compare),
                  "load_average_before": load_before, "load_average_after": [round(x, 2) for x in os.getloadavg()],
                  "versions": {"torch": torch.__version__}, "cpu": cpu_info()}
        write_result(a.out or RESULTS.with_name(f"train_step_{a.compare}.json"), result,
                     ("tokens_per_s", f"speedup_{second}", "tokens_per_cpu_s", f"speedup_{second}_cpu_time",
                      "first_step_gradient"))
        return
    ids, rewards = make_batch(B, L, P, base.config.vocab_size)

    ours = ReinforceTrainer(copy.deepcopy(base), tok, TrainConfig(lr=lr, micro_batch_size=B, max_seq_len=L,
                                                                  max_grad_norm=1.0, log_entropy=True))
    tmp = tempfile.mkdtemp(prefix="trl-bench-")
    trl = build_trl(copy.deepcopy(base), tok, B, G, L - P, lr, tmp)
    del base
    inputs = trl_inputs(ids, rewards, P, G)
    params = [p for p in trl.model.parameters() if p.requires_grad]

    def step_ours() -> tuple[float, float]:
        groups = sleuth_groups(ids, rewards, P, G, ours.version)   # fresh on-policy samples each step
        t = time.perf_counter()
        m = ours.step(groups)
        return time.perf_counter() - t, m["grad_norm"]

    def step_trl() -> tuple[float, float]:
        t = time.perf_counter()
        trl.model.train()
        loss = trl.compute_loss(trl.model, inputs)
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        trl.optimizer.step()
        trl.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t, norm

    times: dict[str, list[float]] = {"sleuth": [], "trl": []}
    norms: dict[str, float] = {}
    for i in range(a.steps + 1):
        for name, fn in (("sleuth", step_ours), ("trl", step_trl)) if i % 2 == 0 else \
                        (("trl", step_trl), ("sleuth", step_ours)):
            dt, norm = fn()
            if i == 0:
                norms[name] = norm
            else:
                times[name].append(dt)
            print(f"{'warm-up' if i == 0 else f'step {i}'} {name:6s} {dt:7.2f}s  {B * L / dt:8.0f} tok/s", flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    tps = {k: B * L / v for k, v in med.items()}
    import transformers
    import trl as trl_pkg
    result = {
        "what": "one update step (forward+backward+clip+AdamW), generation excluded",
        "model": "SmolLM2-135M-Instruct (" + source + "), float32, CPU",
        "batch": B, "seq_len": L, "prompt_len": P, "trained_tokens_per_seq": L - P, "group_size": G,
        "threads": torch.get_num_threads(), "load_avg_1m": os.getloadavg()[0],
        "seconds_per_step": times, "median_seconds": med, "tokens_per_s": tps,
        "speedup_sleuth_vs_trl": tps["sleuth"] / tps["trl"],
        "first_step_grad_norm": norms,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "trl": trl_pkg.__version__},
        "trl_setup": "GRPOConfig(beta=0, loss_type='dapo', scale_rewards='none', bf16=False, "
                     "gradient_checkpointing=False, use_cpu=True); compute_loss + backward + optimizer",
    }
    write_result(a.out or RESULTS, result, ("tokens_per_s", "speedup_sleuth_vs_trl", "first_step_grad_norm"))


if __name__ == "__main__":
    main()
