"""The seed-ablation benchmark's own logic: the run configs it writes are the stage's config plus the variant's
overrides (read back by the real config loader), and its interval for a difference between variants covers a
known difference and excludes zero when the difference is large."""

from __future__ import annotations

import importlib.util
import random
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ablation():
    spec = importlib.util.spec_from_file_location("rl_seed_ablation", ROOT / "benchmarks" / "rl_seed_ablation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_variant_config_round_trips_through_the_run_config_loader(ablation, tmp_path):
    from sleuth.rl.train import load_run_config

    base = tomllib.loads((ROOT / "configs" / "recipe" / "research.toml").read_text())
    base.pop("warm_start")
    label, over = ablation.parse_variant("gamma-decay off=rl.reward.gamma_decay=false, rl.lr=1e-5, prompt=short")
    assert label == "gamma-decay off"
    assert over == {"rl.reward.gamma_decay": False, "rl.lr": 1e-5, "prompt": "short"}
    cfg = ablation.run_config(base, {**over, "rl.seed": 2})
    text = ablation.dump_toml(cfg)
    assert tomllib.loads(text) == cfg
    path = tmp_path / "c.toml"
    path.write_text(text)
    run = load_run_config(path)
    assert run.rl.reward.gamma_decay is False and run.rl.lr == 1e-5 and run.rl.seed == 2
    assert run.prompt == "short" and run.rl.reward.gamma == 0.9       # untouched keys keep the stage's values
    assert base["rl"]["reward"]["gamma_decay"] is True                 # the base is not modified
    with pytest.raises(ValueError, match="key=value"):
        ablation.parse_variant("x=rl.lr")


def _runs(p_correct: float, seed: int, runs: int = 3, groups: int = 30, size: int = 8) -> list[list[dict]]:
    rng = random.Random(seed)
    out = []
    for r in range(runs):
        rows = []
        for g in range(groups):
            p = min(1.0, max(0.0, p_correct + rng.uniform(-0.2, 0.2)))   # questions differ in difficulty
            for _ in range(size):
                ok = rng.random() < p
                rows.append({"iteration": 1, "group": (1, f"t{g}"), "kind": "bridge", "correct": ok,
                             "steps": 3 if ok else 2, "searches": 2 if ok else 1})
        out.append(rows)
    return out


def test_bootstrap_interval_separates_a_real_difference_and_not_noise(ablation):
    low, high, same = _runs(0.2, 0), _runs(0.6, 1), _runs(0.2, 2)
    lo, hi = ablation.bootstrap_diff(low, high, reps=400)["accuracy"]
    assert 0.25 < lo < 0.4 < hi < 0.55
    lo, hi = ablation.bootstrap_diff(low, same, reps=400)["accuracy"]
    assert lo < 0 < hi


def test_entropy_difference_is_paired_by_seed_and_its_interval_covers_the_shift(ablation):
    rng = random.Random(0)
    a = [[0.10 + rng.gauss(0, 0.01) for _ in range(8)] for _ in range(3)]
    b = [[x + 0.05 for x in run] for run in a]
    d = ablation.curve_diff(a, b, last=4, reps=400)
    assert d["per_seed"] == pytest.approx([0.05] * 3, abs=1e-4)
    lo, hi = d["interval"]
    assert 0.03 < lo < 0.05 < hi < 0.07
    same = ablation.curve_diff(a, [[x + rng.gauss(0, 0.01) for x in run] for run in a], last=4, reps=400)
    assert same["interval"][0] < 0 < same["interval"][1]
    assert ablation.curve_diff(a, [[None] * 8] * 3, last=4)["interval"] is None   # no entropy logged


def test_paired_difference_uses_twin_groups_and_counts_changed_trajectories(ablation):
    a = _runs(0.3, 0)
    for run in a:
        for i, r in enumerate(run):
            r["answer"], r["group"] = f"x{i}", (1 + i // 80, r["group"][1])
    b = [[dict(r) for r in run] for run in a]
    flipped = 0
    for run in b:                      # the variant turns every 4th failed trajectory into a correct one
        for i, r in enumerate(run):
            if not r["correct"] and i % 4 == 0:
                r.update(correct=True, answer="gold", steps=3, searches=2)
                flipped += 1
    n = sum(len(run) for run in a)
    d = ablation.paired_diff(a, b, reps=400)
    assert d["changed_trajectories"] == pytest.approx(flipped / n, abs=1e-4)
    acc = d["intervals"]["accuracy"]
    assert acc["diff"] == pytest.approx(flipped / n, abs=1e-4)
    lo, hi = acc["ci95"]
    assert 0 < lo < acc["diff"] < hi
    unpaired_lo, unpaired_hi = ablation.bootstrap_diff(a, b, reps=400)["accuracy"]
    assert hi - lo < 0.5 * (unpaired_hi - unpaired_lo)
    same = ablation.paired_diff(a, a, reps=200)
    assert same["changed_trajectories"] == 0 and same["intervals"]["accuracy"]["ci95"] == [0, 0]
    other = [[dict(r, group=(9, r["group"][1])) for r in run] for run in b]
    assert ablation.paired_diff(a, other)["intervals"] is None      # different draws: no twins


def test_prepare_keeps_existing_task_files_and_names_those_no_recipe_step_makes(ablation, tmp_path):
    have = tmp_path / "have.jsonl"
    have.write_text('{"id": "t1"}\n')
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'export = "{tmp_path / "policy"}"\n[[tasks]]\nout = "{have}"\nn = 5\nmix = "lookup=1"\n\n'
                      '[[stages]]\nconfig = "configs/recipe/research.toml"\n')
    ablation.prepare({"tasks": [str(have)]}, str(recipe))           # exists: kept as it is, nothing built
    assert have.read_text() == '{"id": "t1"}\n'
    with pytest.raises(SystemExit, match="nowhere.jsonl"):
        ablation.prepare({"tasks": [str(have), str(tmp_path / "nowhere.jsonl")]}, str(recipe))
