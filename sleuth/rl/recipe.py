"""A recipe: one command from the base model to a shipped policy.

``sleuth train --recipe configs/recipe.toml`` synthesises every task file the stages need, runs the RL stages
in order (each starts from the previous stage's export), picks the final stage's checkpoint on its validation
split (training-pool tasks it never trained on; never the evaluation holdout) and exports that checkpoint.
Every step is skipped when its output is complete and a stage resumes from its latest checkpoint, so running
the same command again after a ``kill -9`` continues where it stopped.

```toml
export = "sleuth/policies/sleuth-135m-rl"     # where the chosen policy is written
index_source = "../shared/data/corpus/passages.jsonl.gz"   # built first if the stages' index is missing
[[tasks]]                               # task files, made with `sleuth synth` settings
out = "runs/recipe/lookup-380.jsonl"
n = 380
mix = "lookup=1"
[[stages]]                              # run configs (configs/rl_*.toml format), in order
config = "configs/recipe/read_dev.toml"
```
"""

from __future__ import annotations

import json
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sleuth.rl.config import _build


@dataclass
class TaskFile:
    out: str
    """The JSONL task file to create (skipped when it exists)."""
    n: int = 2000
    """Candidates to generate (`sleuth synth --n`)."""
    mix: str | None = None
    """Task types (`sleuth synth --mix`, e.g. "lookup=1")."""
    balance_lookups: bool = False
    """Ask dates, creators, locations and populations equally often."""
    seed: int = 0
    corpus: str | None = None
    """Passages to synthesise from (default: the shared 28k-passage corpus)."""
    hops: list[int] = field(default_factory=lambda: [2, 3, 4])
    """Bridge hop counts (`sleuth synth --hops`)."""
    hops_k: int = 0
    """Keep only bridges that need every hop, each findable in the top hops_k results of `index`
    (`sleuth synth --hops-k`); 0 = off."""
    phrasing: str = "type"
    """How two-hop bridges name their hidden entity (`sleuth synth --phrasing`): type or relation."""
    index: str = "passages"
    """The index the hops check searches (the one the stages' agent searches)."""
    test_share: float = 0.0
    """Share of the kept tasks (by a hash of the task id) written to `<out stem>-test.jsonl` instead: a test
    set from the same distribution that no stage trains on."""


@dataclass
class Stage:
    config: str
    """A run config (top-level RunConfig keys + [rl]); its rl.out_dir is the stage's run directory."""
    select: bool = False
    """Hand the next stage the checkpoint with the best validation pass@1 instead of the latest (the final
    stage is always selected this way)."""


@dataclass
class Recipe:
    export: str
    """Directory the chosen policy is exported to."""
    index_source: str | None = None
    """Passages to build the stages' search index from when it does not exist yet (the index name is the
    stages' `index` key); None: the index must exist."""
    tasks: list[TaskFile] = field(default_factory=list)
    stages: list[Stage] = field(default_factory=list)
    select_greedy: bool = True
    """Validate checkpoints with greedy decoding (one sample per task) rather than sampled rollouts."""
    select_every: int = 4
    """Candidates for selection: every this-many iterations of the final stage, and its last checkpoint
    (the stage's keep_checkpoints must keep them)."""


def load_recipe(path: str | Path) -> Recipe:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"recipe file not found: {p}")
    data: dict[str, Any] = tomllib.loads(p.read_text(encoding="utf-8"))
    data["tasks"] = [_build(TaskFile, t, "tasks") for t in data.get("tasks", [])]
    data["stages"] = [_build(Stage, s, "stages") for s in data.get("stages", [])]
    recipe = _build(Recipe, data, "top level")
    if not recipe.stages:
        raise ValueError(f"{p}: a recipe needs at least one [[stages]] entry")
    return recipe


def run_recipe(path: str | Path, log: Callable[[str], None] = print) -> Path:
    """Run (or resume) every step of the recipe; returns the export directory."""
    from sleuth.rl.train import export_policy, load_run_config, train

    recipe = load_recipe(path)
    t0 = time.time()
    if recipe.index_source:
        make_index(recipe.index_source, {load_run_config(s.config).index for s in recipe.stages}, log)
    for tf in recipe.tasks:
        make_task_file(tf, log)
    for i, stage in enumerate(recipe.stages, 1):
        cfg = load_run_config(stage.config)
        out = Path(cfg.rl.out_dir)
        export = out / "export"
        if (export / "sleuth_version.json").is_file():
            log(f"stage {i}/{len(recipe.stages)} {stage.config}: done ({export})")
            continue
        log(f"stage {i}/{len(recipe.stages)} {stage.config} -> {out}")
        train(cfg, out, resume=True, log=log)
        if i < len(recipe.stages) and not stage.select:
            export_policy(out, export)
        else:
            best = select_checkpoint(cfg, out, every=recipe.select_every, greedy=recipe.select_greedy, log=log)
            export_policy(out, export, checkpoint=best)
    final = Path(load_run_config(recipe.stages[-1].config).rl.out_dir) / "export"
    dest = export_policy_copy(final, Path(recipe.export))
    log(f"recipe done in {(time.time() - t0) / 3600:.2f} h: policy at {dest}")
    return dest


def export_policy_copy(src: Path, dest: Path) -> Path:
    """The chosen export, copied to its destination under the destination's name."""
    import shutil

    from sleuth.rl.train import staged_dir

    with staged_dir(dest) as tmp:
        shutil.copytree(src, tmp)
        meta_file = tmp / "sleuth_version.json"
        meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "name": dest.name}))
    return dest


def make_index(source: str, names: set[str | None], log: Callable[[str], None] = print) -> None:
    from sleuth import paths
    from sleuth.search.index import build_index

    for name in sorted(n for n in names if n):
        if (paths.index_dir(name) / "meta.json").is_file():
            log(f"index {name}: exists")
            continue
        log(f"index {name}: building from {source} (embeddings take a while on a CPU)")
        build_index(source, name)


def make_task_file(tf: TaskFile, log: Callable[[str], None] = print) -> Path:
    from sleuth.paths import shared_data
    from sleuth.synth.pipeline import SynthConfig, parse_mix, synthesize, write_outputs

    out = Path(tf.out)
    if out.is_file():
        log(f"tasks {out}: exists")
        return out
    corpus = tf.corpus or str(shared_data() / "corpus" / "passages.jsonl.gz")
    extra = {"mix": parse_mix(tf.mix)} if tf.mix else {}
    cfg = SynthConfig(n=tf.n, seed=tf.seed, closed_book=False, lookup_balance=tf.balance_lookups,
                      hops=tuple(tf.hops), hops_k=tf.hops_k, phrasing=tf.phrasing, **extra)
    cfg.check()
    engine = None
    if tf.hops_k:
        from sleuth.agent import Environment

        engine = Environment.from_index(tf.index, engine="hybrid").search_engine
    tasks, funnel = synthesize(corpus, cfg, None, None, search_engine=engine)
    test = [t for t in tasks if in_test_split(t.id, tf.test_share)]
    if test:
        write_outputs(test, funnel, test_file(out))   # written first: the train file marks completion
        tasks = [t for t in tasks if not in_test_split(t.id, tf.test_share)]
    write_outputs(tasks, funnel, out)
    log(f"tasks {out}: {len(tasks)} synthesised from {tf.n} candidates"
        + (f", {len(test)} more set aside in {test_file(out)}" if test else ""))
    return out


def test_file(out: Path) -> Path:
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.stem
    return out.with_name(stem + "-test.jsonl")


def in_test_split(task_id: str, share: float) -> bool:
    """A stable hash of the task id (salted apart from the validation split's)."""
    import hashlib

    h = hashlib.sha256(f"test:{task_id}".encode()).digest()
    return share > 0 and int.from_bytes(h[:8], "big") / 2 ** 64 < share


def select_checkpoint(cfg, run_dir: Path, every: int = 1, greedy: bool = True,
                      log: Callable[[str], None] = print) -> Path:
    """The run's checkpoint with the best pass@1 on its validation split (ties: the later one).

    Scores are cached in ``<run_dir>/selection.json`` so a killed selection resumes."""
    from sleuth.rl.checkpoint import checkpoint_dirs
    from sleuth.rl.train import agent_setup, split_tasks, validate_checkpoint

    found = sorted(checkpoint_dirs(run_dir))
    cands = [c for c in found if c[0] % max(every, 1) == 0 or c == found[-1]]
    if cfg.validation <= 0 or len(cands) <= 1:
        log("no validation split or a single checkpoint: the latest is kept")
        return cands[-1][1]
    _, _, val = split_tasks(cfg, with_validation=True)
    cache_file = run_dir / "selection.json"
    scores: dict[str, float] = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    env = None
    for it, path in cands:
        if path.name not in scores:
            env = env or agent_setup(cfg, 0.0)[0]      # the index is opened once for every checkpoint
            scores[path.name] = validate_checkpoint(cfg, run_dir, path, val, greedy=greedy, env=env)
            cache_file.write_text(json.dumps(scores, indent=2))
        log(f"validation ({len(val)} tasks) {path.name}: pass@1 {scores[path.name]:.3f}")
    best = max(cands, key=lambda c: (scores[c[1].name], c[0]))[1]
    log(f"selected {best.name}")
    return best
