"""The RL training loop for the agent: rollout → judge → REINFORCE update → checkpoint, every iteration.

Resumable: every iteration ends with an atomic checkpoint (weights, optimizer, replay buffer, RNG, data
cursor, metrics); ``--resume`` continues from the latest one with the same state, so a ``kill -9`` costs
at most the iteration in flight. Metrics go to ``metrics.jsonl`` and TensorBoard in the run directory, each
rollout's answer and judgement to ``rollouts.jsonl``, the run's totals (trajectories trained, groups without
signal, trajectories left out as longer than ``max_seq_len``) to ``summary.json`` and the last log line.

Config TOML: top-level keys are ``RunConfig`` fields; a ``[rl]`` table holds ``TrainConfig`` fields (with
its own ``[rl.reward]`` table).
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
import json
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sleuth.rl.config import TrainConfig, _build, load_config
from sleuth.rl.warmstart import WarmStartConfig


@dataclass
class RunConfig:
    tasks: str | list[str] = "dev"
    """Training tasks: a benchmark name or a JSONL/CSV task file (e.g. from `sleuth synth`), or a list of them
    (mixed together)."""
    holdout: int = 100
    """The first `holdout` tasks of the seed-shuffled `holdout_benchmark` are never trained on: they are
    exactly what `sleuth eval -b <holdout_benchmark> -n <holdout> --seed <holdout_seed>` evaluates."""
    holdout_benchmark: str = "dev"
    holdout_seed: int = 0
    validation: float = 0.0
    """Share of the training pool set aside as a validation split, never trained on; `sleuth train --recipe`
    picks the checkpoint it ships on it (never on the holdout). Chosen by a hash of the task id, so every
    stage of a recipe sets aside the same tasks whatever its pool."""
    datasets: list[str] | None = None
    """Only train on these datasets (None = all): a task's `dataset` ("dev-nq", "synth-comparison") or
    source dataset ("nq"). With several task sources, each keeps what matches; at least one must match."""
    question_kinds: list[str] | None = None
    """Only train on these kinds of question (None = all): "open", "comparison", "yes/no"
    (`sleuth.tasks.task.question_kind`). Leaving out comparison and yes/no questions keeps a gain on
    dev from coming out of guessing between the candidates a question names."""
    reachable_k: int = 0
    """Keep only tasks whose gold answer occurs in the top `reachable_k` results of searching the question
    itself (0 = keep all): a task no search brings the answer of gives a group of zeros, i.e. no signal."""
    curriculum: bool = True
    """Order training tasks from easy (single-hop) to hard."""
    model: str | None = None
    """Starting policy (None = embedded SmolLM2-135M-Instruct)."""
    index: str | None = None
    engine: str = "auto"
    search_url: str | None = None
    """A `sleuth serve-search` service the rollouts search (and browse corpus passages) through, instead of
    opening `index` locally: many trainers or workers share one index."""
    judge: str = "cover"
    """Reward judge: cover (strict: no candidate lists, no long answers) | em | f1>=T | llm (a model grades;
    set judge_model and/or judge_base_url)."""
    judge_model: str | None = None
    """LLM judge: the model's name on its server."""
    judge_base_url: str | None = None
    """LLM judge: an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (None = the OpenAI API)."""
    judge_api_key_env: str | None = None
    """LLM judge: the environment variable holding its API key (None = SLEUTH_API_KEY or OPENAI_API_KEY; a
    local server needs none)."""
    max_steps: int = 6
    max_new_tokens: int = 128
    prompt: str = "short-fewshot"
    search_k: int = 3
    """Results per query during training rollouts (shorter observations → cheaper updates)."""
    rollout_seconds: float | None = None
    """Partial rollout: time budget per iteration (None = run every trajectory to the end)."""
    rollout_tokens: int | None = None
    """Partial rollout: generated-token budget per iteration."""
    threads: int = 0
    """torch threads (0 = torch default)."""
    rollout_engine: str = "static"
    """How rollouts decode: "static" (sleuth's lean engine: static KV cache, fused products, weights refreshed after
    every update; the same tokens and log-probs as "hf" to ~1e-5, 1.07x its tokens/s in float32 and the engine of
    the bf16/int8 precisions; transformers' forward where the model is not Llama-architecture), "hf" (transformers'
    generic forward, the default before stop 31) or "llama" (llama.cpp on the weights written to GGUF after every
    update; needs llama-cpp-python) — benchmarks/rollout_throughput.py."""
    rollout_precision: str = "fp32"
    """The engine's arithmetic: "fp32" (static: the trainer's, log-probs agree to ~1e-5; llama: float32 weights,
    float16 KV cache), "bf16" (bfloat16 products: ~2x float32 on CPUs with AVX512-BF16, log-prob gap ~0.02),
    "int8" (static: fbgemm int8 layers; llama: q8_0 weights; fastest, gap ~0.3-0.5) or "auto" (bf16 where the
    CPU has native bfloat16 and the policy runs on the CPU, else fp32: ``sleuth.hardware.auto_bf16``). bf16 and
    int8 are slightly different policies: they need rl.tis_cap > 0 so the update corrects the gap with
    importance weights."""
    rollout_dedupe: bool = True
    """Prefill identical prompts of one generation call once and copy their KV to every row that shares them
    (a group's trajectories often write the same first steps): same tokens and log-probs, less prefill."""
    rl: TrainConfig = field(default_factory=TrainConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    """Behaviour cloning on demonstrations replayed in the real environment before the first iteration
    (``sleuth.rl.warmstart``); off unless ``[warm_start] tasks`` is set."""

    def __post_init__(self) -> None:
        from sleuth.policy.engine import PRECISIONS

        if self.rollout_engine not in ("static", "hf", "llama"):
            raise ValueError(f"rollout_engine must be 'static', 'hf' or 'llama', got {self.rollout_engine!r}")
        if self.rollout_engine == "llama":
            from sleuth.policy import llamacpp

            if not llamacpp.available():
                raise ValueError(f"rollout_engine = 'llama': {llamacpp.INSTALL_HINT}")
        if self.rollout_precision not in PRECISIONS + ("auto",):
            raise ValueError(f"rollout_precision must be one of {PRECISIONS + ('auto',)}, "
                             f"got {self.rollout_precision!r}")


def resolve_precision(cfg: RunConfig) -> RunConfig:
    """``rollout_precision = "auto"`` made concrete for the device the policy runs on (the update's): bf16 on a
    CPU with native bfloat16, fp32 elsewhere. Idempotent."""
    if cfg.rollout_precision == "auto":
        from sleuth.hardware import auto_bf16

        cfg.rollout_precision = "bf16" if auto_bf16(cfg.rl.device) else "fp32"
    if cfg.rollout_engine != "hf" and cfg.rollout_precision != "fp32" and cfg.rl.tis_cap <= 0:
        raise ValueError(f"rollout_precision = {cfg.rollout_precision!r} samples from a slightly different policy "
                         "than the trainer's: set rl.tis_cap (e.g. 2.0) so the update corrects the gap")
    return cfg


AGENT_KEYS = ("prompt", "max_steps", "max_new_tokens", "search_k")


def load_run_config(path: str | Path | None = None, **overrides: Any) -> RunConfig:
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    rl = data.pop("rl", {})
    warm = data.pop("warm_start", {})
    if not isinstance(warm, dict):
        raise ValueError("[warm_start] must be a table")
    rl_over = {k[3:]: overrides.pop(k) for k in list(overrides) if k.startswith("rl_")}
    data.update({k: v for k, v in overrides.items() if v is not None})
    cfg = _build(RunConfig, data, "top level")
    cfg.warm_start = _build(WarmStartConfig, warm, "warm_start")
    reward = rl.pop("reward", {})
    cfg.rl = load_config(None, **{**rl, **rl_over, "reward": reward})
    return resolve_precision(cfg)


def build_judge(cfg: RunConfig):
    """The run's reward judge (``cfg.judge`` with its model, server and key for the LLM judge)."""
    from sleuth.tasks.judges import make_judge

    return make_judge(cfg.judge, model=cfg.judge_model, base_url=cfg.judge_base_url,
                      api_key_env=cfg.judge_api_key_env)


def split_tasks(cfg: RunConfig, with_validation: bool = False):
    """Training tasks minus the evaluation holdout (and any near-identical question), minus the validation
    split; with ``with_validation`` returns (train, holdout, validation)."""
    from sleuth.tasks.normalize import normalize_answer
    from sleuth.tasks.loaders import QA_FILE_SUFFIXES
    from sleuth.tasks.loaders import load_tasks
    from sleuth.tasks.task import QUESTION_KINDS, in_datasets, question_kind

    held = load_tasks(cfg.holdout_benchmark, limit=cfg.holdout, seed=cfg.holdout_seed) if cfg.holdout else []
    held_ids = {t.id for t in held}
    held_q = {normalize_answer(t.question) for t in held}
    sources = [cfg.tasks] if isinstance(cfg.tasks, str) else list(cfg.tasks)
    for src in sources:
        if src.endswith(QA_FILE_SUFFIXES) and not Path(src).expanduser().is_file():
            raise FileNotFoundError(f"task file {src} does not exist; synthesise it first, e.g. `sleuth synth "
                                    f"--corpus ../shared/data/corpus/passages.jsonl.gz --n 2000 -o {src}`")
    loaded = [t for src in sources for t in load_tasks(src)]
    if cfg.datasets is not None:
        loaded = [t for t in loaded if in_datasets(t, set(cfg.datasets))]
    if cfg.question_kinds is not None:
        unknown = set(cfg.question_kinds) - set(QUESTION_KINDS)
        if unknown:
            raise ValueError(f"unknown question_kinds {sorted(unknown)}; valid: {', '.join(QUESTION_KINDS)}")
        loaded = [t for t in loaded if question_kind(t) in cfg.question_kinds]
    tasks = [t for t in loaded if t.id not in held_ids and normalize_answer(t.question) not in held_q]
    if not tasks:
        raise ValueError(f"no training tasks left in {cfg.tasks!r} (datasets {cfg.datasets}) after removing "
                         "the holdout")
    val = [t for t in tasks if in_validation(t.id, cfg.validation, cfg.holdout_seed)]
    tasks = [t for t in tasks if not in_validation(t.id, cfg.validation, cfg.holdout_seed)]
    return (tasks, held, val) if with_validation else (tasks, held)


def in_validation(task_id: str, share: float, seed: int) -> bool:
    """Whether a task belongs to the validation split: a stable hash of its id, independent of the pool."""
    import hashlib

    h = hashlib.sha256(f"validation-{seed}:{task_id}".encode()).digest()
    return share > 0 and int.from_bytes(h[:8], "big") / 2 ** 64 < share


def keep_reachable(tasks, engine, k: int, batch: int = 64):
    """The tasks whose gold answer (normalised) occurs in the title or snippet of one of the top-k results
    of searching the task's question verbatim — a cheap check that the environment can show the answer."""
    from sleuth.search.base import shown_by_search
    from sleuth.tasks.judges import mentions

    shown = shown_by_search(engine, sorted({t.question for t in tasks}), k, batch)
    return [t for t in tasks if mentions(shown[t.question], t.answers)]


def train(cfg: RunConfig, out_dir: str | Path, *, resume: bool = False, iterations: int | None = None,
          log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run (or resume) the RL loop; returns every iteration's metrics. Each iteration: rollouts of the current
    weights → judged groups → one REINFORCE step → metrics and rollouts recorded → an atomic checkpoint."""
    from sleuth.agent import Budget
    from sleuth.rl.checkpoint import save

    judge = build_judge(cfg)   # first: a judge without its model or key fails before anything loads
    resolve_precision(cfg)
    out = Path(out_dir)
    trainer, policy, run = _start_or_resume(cfg, out, resume, log)
    rollout = _make_rollout(cfg, policy, judge, log)
    budget = Budget(cfg.rollout_seconds, cfg.rollout_tokens)
    rl = cfg.rl
    total = iterations if iterations is not None else rl.iterations
    record = _Recorder(out)
    if cfg.warm_start.tasks and not any(out.glob("ckpt-*")):
        warm_start(cfg, trainer, judge, rollout.env, out, log)
        save(out, trainer, iteration=0, buffer=run.buffer, cursor=run.cursor, metrics=run.history,
             keep=rl.keep_checkpoints)
    for it in range(run.iteration, total):
        t0 = time.time()
        policy.version = trainer.version
        groups, run.cursor, rs = rollout.collect(run.buffer, run.cursor, rl.tasks_per_iteration, rl.group_size,
                                                 budget)
        if policy.prefix_cache is not None:
            # The update changes the weights, so the rollouts' cached KV is dead: free it before the update's
            # activations need the memory rather than after (up to the cache's 4 GiB at once).
            policy.prefix_cache.clear()
        policy.release_buffers()   # the decode engine's reused KV buffers too
        m = trainer.step(groups)
        policy.version = trainer.version
        trajs = [t for g in groups for t in g]
        m.update(_rollout_metrics(trajs))
        m.update(iteration=it + 1, rollout_seconds=rs.seconds, rollout_tokens=rs.generated_tokens,
                 rollout_tokens_per_s=rs.generated_tokens / max(rs.seconds, 1e-9), resumed=rs.resumed,
                 parked=rs.parked, evicted=rs.evicted, buffer=len(run.buffer), cursor=run.cursor,
                 iteration_seconds=time.time() - t0)
        run.history.append(m)
        record.iteration(it + 1, m, trajs)
        save(out, trainer, iteration=it + 1, buffer=run.buffer, cursor=run.cursor, metrics=run.history,
             keep=rl.keep_checkpoints)
        log(f"iter {it + 1}/{total}: acc {m.get('accuracy', 0):.3f} reward {m.get('mean_reward', 0):+.3f} "
            f"steps {m['mean_steps']:.2f} search {m.get('search_rate', 0):.2f} "
            f"fmt {m['format_errors_per_traj']:.2f} "
            f"entropy {m.get('entropy', float('nan')):.3f} skipped {m.get('skipped_groups', 0):.0f} "
            f"tok/s {m['rollout_tokens_per_s']:.0f} {m['iteration_seconds']:.0f}s v{trainer.version}"
            + (f" overlong {m['overlong_trajectories']:.0f}" if m.get("overlong_trajectories") else ""))
    record.close()
    log(_summary_line(record.summary(run.history, trainer.version)))
    return run.history


# ------------------------------------------------------------------------------------- the loop's parts
def warm_start(cfg: RunConfig, trainer, judge, env, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Demonstrations on the warm-start tasks (holdout and validation removed, as for RL), run with the
    rollouts' tools ``env``, cloned into the trainer's weights; statistics and per-step losses to
    ``warm_start.json``. Checkpointed by the caller as iteration 0, so a resumed run never repeats it."""
    from sleuth.rl.warmstart import clone, demonstrate, find_paths

    ws = cfg.warm_start
    tasks, _ = split_tasks(dataclasses.replace(cfg, tasks=list(ws.tasks)))
    if ws.supporting_paths:
        tasks = find_paths(tasks, env.search_engine, cfg.search_k, log)
    _, acfg = agent_setup(cfg, 0.0, env=env)
    demos, stats = demonstrate(tasks, trainer.tokenizer, env, acfg, judge, cfg.rl.reward, ws, log)
    if not demos:
        raise ValueError(f"warm start: no demonstration of {ws.tasks} ended correct in this environment "
                         f"(index {cfg.index!r}, search_k {cfg.search_k}); check the task files' search paths")
    history = clone(trainer, demos, ws, log)
    report = {**stats, "steps": history, "version": trainer.version,
              "examples": [{"question": t.question, "actions": [m["content"] for m in t.messages
                                                               if m.get("role") == "assistant" and "step" in m]}
                           for t in demos[:5]]}
    (out / "warm_start.json").write_text(json.dumps(report, indent=2))
    return report


@dataclass
class _RunState:
    """What a checkpoint carries besides the weights: the loop continues from here."""
    buffer: Any
    cursor: int = 0
    iteration: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def _start_or_resume(cfg: RunConfig, out: Path, resume: bool, log: Callable[[str], None]):
    """The trainer (weights, optimizer, version), the policy sampling from its weights, and the loop's state:
    from the latest checkpoint with ``resume``, else fresh from ``cfg.model``."""
    import numpy as np
    import torch

    from sleuth.policy.hf import HFPolicy, adapter_dir
    from sleuth.rl.buffer import ReplayBuffer
    from sleuth.rl.checkpoint import load_latest, load_weights
    from sleuth.rl.reinforce import ReinforceTrainer

    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ck = load_latest(out) if resume else None
    if not resume and ck is None and any(out.glob("ckpt-*")):
        raise ValueError(f"{out} already holds checkpoints: pass --resume to continue, or use another --out")
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2, default=str))

    rl = cfg.rl
    np.random.seed(rl.seed)
    torch.manual_seed(rl.seed)
    # A LoRA run that starts from a LoRA export continues that adapter (one adapter ships, not a stack).
    adapter = adapter_dir(cfg.model) if rl.lora_r > 0 else None
    base = HFPolicy.load(cfg.model, merge_adapter=adapter is None)
    trainer = ReinforceTrainer(base.model, base.tokenizer, rl)
    if adapter is not None:
        load_weights(trainer.model, adapter, lora=True)
        trainer.version = base.version
    run = _RunState(ReplayBuffer(max_age=rl.max_partial_age))
    if ck is not None:
        ck.restore(trainer)
        for g in trainer.optimizer.param_groups:   # the config's learning rate wins over the saved one
            g["lr"] = rl.lr
        run = _RunState(ck.buffer, int(ck.cursor), ck.iteration, list(ck.metrics))
        log(f"resumed from {ck.path.name}: iteration {run.iteration}, version {trainer.version}, "
            f"buffer {len(run.buffer)}, cursor {run.cursor}")
    policy = HFPolicy(trainer.model, base.tokenizer, name=f"{base.name}-rl", version=trainer.version,
                      engine=cfg.rollout_engine, precision=cfg.rollout_precision,
                      dedupe_prompts=cfg.rollout_dedupe)
    return trainer, policy, run


def _make_rollout(cfg: RunConfig, policy, judge, log: Callable[[str], None]):
    """The training tasks (holdout and validation removed, optionally only reachable ones, in curriculum
    order) and the rollout that runs the agent on them with the search and browse tools."""
    from sleuth.rl.rollout import AgentRollout, curriculum_order

    tasks, held = split_tasks(cfg)
    env, acfg = agent_setup(cfg, cfg.rl.temperature)
    if cfg.reachable_k:
        n = len(tasks)
        tasks = keep_reachable(tasks, env.search_engine, cfg.reachable_k)
        log(f"reachable: {len(tasks)} of {n} tasks have their answer in the top {cfg.reachable_k} results "
            "for their question")
        if not tasks:
            raise ValueError(f"no training task has its answer in the top {cfg.reachable_k} search results")
    tasks = curriculum_order(tasks, cfg.rl.seed, cfg.curriculum)
    log(f"training on {len(tasks)} tasks ({cfg.tasks}), holdout {len(held)} never trained on; "
        f"{cfg.rl.tasks_per_iteration}×{cfg.rl.group_size} trajectories per iteration")
    return AgentRollout(policy, env, acfg, tasks, judge, cfg.rl.reward)


def agent_setup(cfg: RunConfig, temperature: float, env=None):
    """The tools (search and browse over the run's index; ``env`` when given, so several evaluations share one
    opened index) and agent settings of the run's rollouts."""
    from sleuth.agent import AgentConfig, Environment

    if env is None:
        env = Environment.create(cfg.index, engine=cfg.engine, search_url=cfg.search_url, search_k=cfg.search_k,
                                 tools=("search", "browse"))
    return env, AgentConfig(max_steps=cfg.max_steps, max_new_tokens=cfg.max_new_tokens, temperature=temperature,
                            prompt=cfg.prompt)


class _Recorder:
    """Each iteration's metrics to metrics.jsonl and TensorBoard, its rollouts (answers, judgements,
    statistics) to rollouts.jsonl; at the end, the run's totals to summary.json."""

    SUMMED = ("trajectories", "trained_trajectories", "skipped_groups", "dropped_negatives", "overlong_trajectories",
              "truncated_tokens", "masked_old_tokens", "skipped_update")

    def __init__(self, out: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.out = out
        self.tb = SummaryWriter(str(out / "tb"))

    def iteration(self, it: int, m: dict[str, Any], trajs) -> None:
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(m) + "\n")
        for k, v in m.items():
            if isinstance(v, (int, float)) and v == v:
                self.tb.add_scalar(k, v, it)
        self.tb.flush()
        with open(self.out / "rollouts.jsonl", "a", encoding="utf-8") as f:
            for t in trajs:
                f.write(json.dumps({"iteration": it, "task_id": t.task_id, "question": t.question,
                                    "answer": t.answer, "gold": t.gold,
                                    "judgement": dataclasses.asdict(t.judgement) if t.judgement else None,
                                    "stats": t.stats(), "versions": sorted(t.versions)}) + "\n")

    def close(self) -> None:
        self.tb.close()

    def summary(self, history: list[dict[str, Any]], version: int) -> dict[str, Any]:
        """Totals over every iteration of the run (resumed ones included), written to summary.json."""
        last = history[-1] if history else {}
        out: dict[str, Any] = {"iterations": len(history), "version": version,
                               **{k: sum(m.get(k, 0.0) for m in history) for k in self.SUMMED},
                               "last_accuracy": last.get("accuracy"), "last_mean_reward": last.get("mean_reward")}
        (self.out / "summary.json").write_text(json.dumps(out, indent=2))
        return out


def _summary_line(s: dict[str, Any]) -> str:
    line = (f"done: {s['iterations']} iterations, version {s['version']}; {s['trained_trajectories']:.0f} of "
            f"{s['trajectories']:.0f} trajectories trained, {s['skipped_groups']:.0f} groups without signal")
    if s["overlong_trajectories"]:
        line += (f"; {s['overlong_trajectories']:.0f} trajectories longer than max_seq_len left out "
                 f"({s['truncated_tokens']:.0f} tokens over)")
    return line


def validate_checkpoint(cfg: RunConfig, run_dir: str | Path, checkpoint: str | Path, tasks, greedy: bool = True,
                        batch: int = 16, env=None) -> float:
    """pass@1 of a checkpoint on ``tasks`` with the run's own agent settings and reward judgement (evidence
    included when the run requires it): the number a recipe picks its checkpoint by. ``env``: the run's tools
    (``agent_setup``), opened once for all the checkpoints compared."""
    import tempfile

    from sleuth.policy.hf import HFPolicy
    from sleuth.rl.rollout import AgentRollout

    with tempfile.TemporaryDirectory(dir=run_dir) as d:
        policy = HFPolicy.load(export_policy(run_dir, Path(d) / "policy", checkpoint=checkpoint))
    env, acfg = agent_setup(cfg, 0.0 if greedy else cfg.rl.temperature, env)
    rollout = AgentRollout(policy, env, acfg, tasks, build_judge(cfg), cfg.rl.reward)
    correct = 0
    for i in range(0, len(tasks), batch):
        chunk = tasks[i:i + batch]
        trajs = rollout.agent.run_batch([t.question for t in chunk], [t.id for t in chunk])
        for traj, task in zip(trajs, chunk):
            traj.gold = list(task.answers)
            correct += rollout.score(traj).judgement.correct
    return correct / max(len(tasks), 1)


def _rollout_metrics(trajs) -> dict[str, float]:
    if not trajs:
        return {"mean_steps": 0.0, "format_errors_per_traj": 0.0}
    n = len(trajs)
    judged = [t.judgement for t in trajs]
    ok = [t for t in trajs if t.judgement.judged_correct]
    return {
        "mean_steps": sum(t.steps for t in trajs) / n,
        "steps_per_correct": sum(t.steps for t in ok) / len(ok) if ok else float("nan"),
        "format_errors_per_traj": sum(t.format_errors for t in trajs) / n,
        "blocked_actions_per_traj": sum(t.blocked_actions for t in trajs) / n,   # outside-world attempts only
        "answered_rate": sum(t.answer is not None for t in trajs) / n,
        "search_rate": sum(bool(t.queries) for t in trajs) / n,
        "multi_search_rate": sum(sum(c.tool == "search" for c in t.tool_calls) >= 2 for t in trajs) / n,
        "recall_rate": sum(j.recalled for j in judged) / n,   # a gold answer was in the observations
        "browse_rate": sum(bool(t.urls_opened) for t in trajs) / n,
        "judged_correct": len(ok) / n,     # strict judge alone (accuracy above also needs grounding if required)
        "grounded_rate": sum(j.grounded for j in judged) / n,
        "em": sum(j.em for j in judged) / n,
        "f1": sum(j.f1 for j in judged) / n,
        "cover": sum(j.cover for j in judged) / n,
        "mean_generated_tokens": sum(t.generated_tokens for t in trajs) / n,
    }


def export_policy(run_dir: str | Path, dest: str | Path, checkpoint: str | Path | None = None) -> Path:
    """Copy a checkpoint's weights (default: the latest) to a model directory usable by `ask --model` /
    `eval --model`. A LoRA checkpoint exports as its adapter alone, stored in float16 (a few MB), with the base
    model it applies to recorded in ``sleuth_version.json``."""
    import shutil

    from sleuth.rl.checkpoint import load_latest, read

    ck = read(checkpoint) if checkpoint is not None else load_latest(run_dir)
    if ck is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir}")
    dest = Path(dest)
    with staged_dir(dest) as tmp:
        shutil.copytree(ck.model_dir, tmp)
        _export_files(tmp, ck, Path(run_dir), dest.name)
    return dest


def _export_files(tmp: Path, ck, run_dir: Path, name: str) -> None:
    """Turn a copy of a checkpoint's model folder into an export: LoRA weights in float16 without the base's
    tokenizer, and ``sleuth_version.json`` (weight version, name, training agent settings, base model)."""
    from safetensors.torch import load_file, save_file

    from sleuth.policy.hf import VERSION_FILE, adapter_dir

    meta: dict[str, Any] = {"version": ck.version, "name": name}
    cfg_file = run_dir / "config.json"
    run_cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    # the agent settings the policy was trained with: `ask` and `eval` use them unless told otherwise
    meta["agent"] = {k: run_cfg[k] for k in AGENT_KEYS if k in run_cfg}
    if ck.lora:
        weights = tmp / "adapter_model.safetensors"
        save_file({k: v.half().contiguous() for k, v in load_file(weights).items()}, str(weights))
        for f in tmp.iterdir():     # the tokenizer is the base model's, peft's README a blank model card
            if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template", "README")):
                f.unlink()
        start = run_cfg.get("model")
        parent = adapter_dir(start)     # continued from another adapter: same base as that one
        meta["base"] = json.loads((parent / VERSION_FILE).read_text()).get("base") if parent else start
    (tmp / VERSION_FILE).write_text(json.dumps(meta))


@contextmanager
def staged_dir(dest: Path):
    """Write a directory under a temporary name beside ``dest``, then put it in place of ``dest`` at once, so a
    killed export never leaves a half-written model where a finished one is expected."""
    import shutil

    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    yield tmp
    if dest.exists():
        shutil.rmtree(dest)
    os.rename(tmp, dest)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
