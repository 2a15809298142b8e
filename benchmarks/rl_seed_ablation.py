"""An RL ablation on the real policy over several seeds: the same stage config run once per (variant, seed),
then compared on what the training rollouts did — accuracy, steps per correct trajectory, the share searching
twice, entropy — with bootstrap intervals for the difference between variants.

    # gamma-decay and negative-sample control, research stage (bridges + lookups) from the shipped policy,
    # 3 seeds x 6 iterations (benchmarks/results/rl_research_ablation.json)
    python benchmarks/rl_seed_ablation.py --base configs/recipe/research.toml \\
        --model sleuth/policies/sleuth-135m-rl --root runs/ablation/research --seeds 0,1,2 --iterations 6 \\
        --last 4 --variant "recipe=" --variant "gamma-decay off=rl.reward.gamma_decay=false" \\
        --variant "negative drop off=rl.negative_drop_frac=0" --set rollout_engine=hf \\
        --set rollout_precision=fp32 --set rl.bf16=false --set rl.tis_cap=0 \\
        --out benchmarks/results/rl_research_ablation

Each run is a plain `sleuth train` (its config.toml, train.log, metrics.jsonl and rollouts.jsonl sit in
ROOT/<variant>-s<seed>/; the stage's index and task files are built first from configs/recipe.toml when missing);
runs already finished are kept and interrupted ones resumed, so rerunning the command
after a kill loses at most the iteration in progress. `--parallel` runs that many trainings at once, each
on one thread (on 2 cores: 2). `--report-only` skips training.

The comparison pools the last `--last` iterations of every seed. Its interval resamples whole groups (the
`group_size` trajectories of one task in one iteration, which share a question and so are not independent),
within each run, 2,000 times.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]


# --- configs -----------------------------------------------------------------------------------------------

def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)   # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML: {v!r}")


def dump_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Scalars and lists first, then one [table] per nested dict (enough for run configs)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            name = f"{prefix}{k}"
            lines += ["", f"[{name}]", dump_toml(v, name + ".")]
    return "\n".join(lines)


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    """``"label=key=value,key=value"`` (dotted keys, TOML values) → (label, {dotted key: value})."""
    label, _, rest = spec.partition("=")
    if not label.strip():
        raise ValueError(f"--variant needs a label before '=': {spec!r}")
    over: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, raw = item.partition("=")
        if not eq:
            raise ValueError(f"--variant {label!r}: expected key=value, got {item!r}")
        try:
            over[key.strip()] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            over[key.strip()] = raw.strip()   # a bare word is a string
    return label.strip(), over


def run_config(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    cfg = json.loads(json.dumps(base))
    for key, v in over.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return cfg


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")


# --- training ----------------------------------------------------------------------------------------------

def prepare(base: dict[str, Any], recipe_path: str) -> None:
    """Build what the stage config reads and a fresh clone lacks — its index and task files — with the recipe's own
    steps (the same files `make policy` makes); files that exist are kept."""
    from sleuth.rl.recipe import load_recipe, make_index, make_task_file

    missing = [Path(f) for f in base.get("tasks", []) if not Path(f).is_file()]
    recipe = load_recipe(recipe_path)
    if recipe.index_source:
        make_index(recipe.index_source, {base.get("index")})
    for tf in recipe.tasks:
        if Path(tf.out) in missing:
            make_task_file(tf)
    still = [str(f) for f in missing if not f.is_file()]
    if still:
        raise SystemExit(f"task files {still} are not made by {recipe_path}; make them with `sleuth synth`")


def iterations_done(run: Path) -> int:
    m = run / "metrics.jsonl"
    return sum(1 for x in m.read_text().splitlines() if x.strip()) if m.is_file() else 0


def launch(run: Path, iterations: int) -> subprocess.Popen | None:
    done = iterations_done(run)
    if done >= iterations:
        print(f"[ablation] {run.name}: {done} iterations, done", flush=True)
        return None
    cmd = [str(Path(sys.executable).parent / "sleuth"), "train", "--config", str(run / "config.toml"),
           "--out", str(run)]
    if any(run.glob("ckpt-*")):
        cmd.append("--resume")
    env = {**os.environ, "SLEUTH_THREADS": "1", "OMP_NUM_THREADS": "1"}
    print(f"[ablation] {run.name}: starting at iteration {done + 1} of {iterations}", flush=True)
    log = open(run / "train.log", "a")
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)


def train_all(runs: list[Path], iterations: int, parallel: int) -> None:
    queue, active = list(runs), []
    while queue or active:
        while queue and len(active) < parallel:
            run = queue.pop(0)
            p = launch(run, iterations)
            if p is not None:
                active.append((run, p, time.time()))
        time.sleep(5)
        for item in list(active):
            run, p, t0 = item
            if p.poll() is None:
                continue
            active.remove(item)
            if p.returncode != 0:
                raise SystemExit(f"[ablation] {run.name} failed (exit {p.returncode}); see {run / 'train.log'}")
            print(f"[ablation] {run.name}: finished in {time.time() - t0:.0f} s", flush=True)


# --- analysis ----------------------------------------------------------------------------------------------

def load_rollouts(run: Path, kinds: dict[str, str]) -> list[dict]:
    rows = []
    for line in (run / "rollouts.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        st = r["stats"]
        rows.append({"iteration": r["iteration"], "group": (r["iteration"], r["task_id"]),
                     "kind": kinds.get(r["task_id"], "other"), "correct": bool(r["judgement"]["correct"]),
                     "steps": st["steps"], "searches": st["search_calls"], "answer": r.get("answer")})
    return rows


def summarise(rows: list[dict]) -> dict[str, float | int | None]:
    n = len(rows)
    correct = [r for r in rows if r["correct"]]
    return {
        "trajectories": n,
        "accuracy": sum(r["correct"] for r in rows) / n if n else None,
        "steps": sum(r["steps"] for r in rows) / n if n else None,
        "steps_per_correct": sum(r["steps"] for r in correct) / len(correct) if correct else None,
        "searched_twice": sum(r["searches"] >= 2 for r in rows) / n if n else None,
        "correct_searched_twice": sum(r["searches"] >= 2 for r in correct) / len(correct) if correct else None,
    }


STATS = ("accuracy", "steps", "steps_per_correct", "searched_twice", "correct_searched_twice")


def ci95(draws: list[float]) -> list[float] | None:
    """The 2.5th and 97.5th percentiles of bootstrap draws (None when there are too few to say)."""
    d = sorted(draws)
    return [round(d[int(0.025 * len(d))], 4), round(d[int(0.975 * len(d)) - 1], 4)] if len(d) > 100 else None


def by_group(rows: list[dict]) -> dict[tuple, list[dict]]:
    """A run's rows by (iteration, task) group, in the order they were written."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(r["group"], []).append(r)
    return out


def bootstrap_draws(draw_pair: Callable[[], tuple[dict, dict]], reps: int) -> dict[str, list[float]]:
    """For each statistic, `reps` draws of summarise(b) − summarise(a), each pair from one call of draw_pair."""
    diffs: dict[str, list[float]] = {k: [] for k in STATS}
    for _ in range(reps):
        sa, sb = draw_pair()
        for k in STATS:
            if sa[k] is not None and sb[k] is not None:
                diffs[k].append(sb[k] - sa[k])
    return diffs


def bootstrap_diff(a_runs: list[list[dict]], b_runs: list[list[dict]], reps: int = 2000, seed: int = 0
                   ) -> dict[str, list[float] | None]:
    """95% intervals of summarise(b) − summarise(a), resampling groups within each run."""
    rng = random.Random(seed)
    ga = [list(by_group(rows).values()) for rows in a_runs]
    gb = [list(by_group(rows).values()) for rows in b_runs]

    def draw(gs):
        rows = []
        for run in gs:
            for _ in range(len(run)):
                rows += rng.choice(run)
        return summarise(rows)

    return {k: ci95(d) for k, d in bootstrap_draws(lambda: (draw(ga), draw(gb)), reps).items()}


def paired_diff(a_runs: list[list[dict]], b_runs: list[list[dict]], reps: int = 2000, seed: int = 0) -> dict:
    """summarise(b) − summarise(a) with the task groups paired: runs of the same seed draw the same tasks in the
    same iterations (and the same sampling stream), so each (iteration, task) group of one variant has a twin in
    the other, and resampling twins together removes the spread between tasks from the interval. Also the share
    of trajectories that differ at all (answer, steps or searches) from their twin — how far the variant moved
    what the policy did. None when the runs did not draw the same groups."""
    rng = random.Random(seed)
    twins = []   # per seed: [(rows of a, rows of b)] for each shared group
    changed = total = 0
    for ra, rb in zip(a_runs, b_runs):
        ga, gb = by_group(ra), by_group(rb)
        if set(ga) != set(gb):
            return {"intervals": None, "changed_trajectories": None}
        twins.append([(ga[k], gb[k]) for k in sorted(ga)])
        for k in ga:
            for x, y in zip(ga[k], gb[k]):
                total += 1
                changed += (x["answer"], x["steps"], x["searches"]) != (y["answer"], y["steps"], y["searches"])

    def draw_twins():
        rows_a, rows_b = [], []
        for pairs in twins:
            for _ in range(len(pairs)):
                xa, xb = rng.choice(pairs)
                rows_a += xa
                rows_b += xb
        return summarise(rows_a), summarise(rows_b)

    diffs = bootstrap_draws(draw_twins, reps)
    point_a = summarise([r for rows in a_runs for r in rows])
    point_b = summarise([r for rows in b_runs for r in rows])
    out: dict[str, Any] = {"changed_trajectories": round(changed / total, 4) if total else None, "intervals": {}}
    for k, d in diffs.items():
        diff = (point_b[k] - point_a[k]) if point_a[k] is not None and point_b[k] is not None else None
        out["intervals"][k] = {"diff": None if diff is None else round(diff, 4), "ci95": ci95(d)}
    return out


def curve_diff(a_curves: list[list], b_curves: list[list], last: int, reps: int = 2000, seed: int = 0) -> dict:
    """A per-iteration training metric (entropy) of variant b minus variant a over the last `last` iterations:
    the difference for each seed (runs paired by seed: the same seed draws the same first tasks) and a 95%
    interval of the pooled difference resampling iterations within each run. Successive iterations of one run
    are correlated, so the interval is narrower than an interval over independent runs would be; the per-seed
    signs are the check that does not assume independence."""
    rng = random.Random(seed)

    def tail(c):
        return [x for x in c[-last:] if isinstance(x, (int, float)) and x == x]

    ta, tb = [tail(c) for c in a_curves], [tail(c) for c in b_curves]
    per_seed = [round(sum(b) / len(b) - sum(a) / len(a), 4) if a and b else None for a, b in zip(ta, tb)]

    def draw(runs):
        xs = [rng.choice(run) for run in runs if run for _ in range(len(run))]
        return sum(xs) / len(xs)

    if not any(ta) or not any(tb):
        return {"per_seed": per_seed, "interval": None}
    return {"per_seed": per_seed, "interval": ci95([draw(tb) - draw(ta) for _ in range(reps)])}


def metric_curve(run: Path, key: str) -> list[float | None]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r.get(key) for r in rows]


def report(variants: list[tuple[str, list[Path]]], kinds: dict[str, str], iterations: int, last: int,
           out: str, meta: dict) -> dict:
    first = iterations - last + 1
    res: dict[str, Any] = {**meta, "compared_iterations": [first, iterations], "variants": {}}
    pooled: dict[str, dict[str, list[list[dict]]]] = {}
    for label, runs in variants:
        per_seed, curves = {}, {}
        pooled[label] = {"all": [], "bridge": [], "lookup": []}
        for run in runs:
            rows = load_rollouts(run, kinds)
            late = [r for r in rows if r["iteration"] >= first]
            pooled[label]["all"].append(late)
            for kind in ("bridge", "lookup"):
                pooled[label][kind].append([r for r in late if r["kind"] == kind])
            per_seed[run.name] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in summarise(late).items()}
            by_it: dict[int, list[dict]] = {}
            for r in rows:
                by_it.setdefault(r["iteration"], []).append(r)
            curves[run.name] = {
                **{k: [summarise(by_it[i])[k] for i in sorted(by_it)] for k in STATS},
                "entropy": metric_curve(run, "entropy"),
                "skipped_groups": metric_curve(run, "skipped_groups"),
                "iteration_seconds": metric_curve(run, "iteration_seconds"),
            }
        pooled_all = [r for rows in pooled[label]["all"] for r in rows]
        res["variants"][label] = {
            "runs": [str(r) for r in runs],
            "pooled": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in summarise(pooled_all).items()},
            "by_kind": {kind: {k: (round(v, 4) if isinstance(v, float) else v)
                               for k, v in summarise([r for rows in pooled[label][kind] for r in rows]).items()}
                        for kind in ("bridge", "lookup")},
            "per_seed": per_seed,
            "entropy_last": {name: _mean_last(c["entropy"], last) for name, c in curves.items()},
            "curves": curves,
        }
    if len(variants) >= 2:
        a = variants[0][0]
        res["differences"] = {}
        for b, _ in variants[1:]:
            res["differences"][f"{b} − {a}"] = {
                **{kind: bootstrap_diff(pooled[a][kind], pooled[b][kind]) for kind in ("all", "bridge", "lookup")},
                "paired": {kind: paired_diff(pooled[a][kind], pooled[b][kind]) for kind in ("all", "bridge", "lookup")},
                "entropy": curve_diff([c["entropy"] for c in res["variants"][a]["curves"].values()],
                                      [c["entropy"] for c in res["variants"][b]["curves"].values()], last)}
    Path(f"{out}.json").write_text(json.dumps(res, indent=2, ensure_ascii=False))
    plot(res, f"{out}.png")
    return res


def _mean_last(xs: list, n: int) -> float | None:
    v = [x for x in xs[-n:] if isinstance(x, (int, float)) and x == x]
    return round(sum(v) / len(v), 4) if v else None


def plot(res: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("accuracy", "steps_per_correct", "searched_twice", "entropy")
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (label, v), c in zip(res["variants"].items(), colours):
        curves = list(v["curves"].values())
        for ax, k in zip(axes, keys):
            n = max(len(cv[k]) for cv in curves)
            for cv in curves:   # each seed, faint
                ys = [float("nan") if x is None else x for x in cv[k]]
                ax.plot(range(1, len(ys) + 1), ys, color=c, alpha=0.25, lw=1)
            mean = []
            for i in range(n):
                xs = [cv[k][i] for cv in curves if i < len(cv[k]) and cv[k][i] is not None]
                mean.append(sum(xs) / len(xs) if xs else float("nan"))
            ax.plot(range(1, n + 1), mean, color=c, lw=2.2, marker="o", ms=3, label=f"{label} (mean of {len(curves)})")
    for ax, k in zip(axes, keys):
        ax.set_title(k.replace("_", " "))
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(res.get("title", "RL ablation on the real policy"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --- main --------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="stage config (TOML) every run starts from")
    ap.add_argument("--recipe", default="configs/recipe.toml",
                    help="recipe whose steps build the stage's index and task files when they are missing")
    ap.add_argument("--model", help="overrides the config's model (the policy every run starts from)")
    ap.add_argument("--variant", action="append", required=True,
                    help='"label=dotted.key=value,..." (repeat; the first is the reference)')
    ap.add_argument("--set", action="append", default=[],
                    help="dotted.key=value for every run not yet finished (e.g. rl.micro_batch_size=2 to fit "
                         "two trainings in memory; finished runs keep their config)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--last", type=int, default=4, help="iterations compared (the last N of each run)")
    ap.add_argument("--root", required=True, help="directory holding one run per (variant, seed)")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--title", default=None)
    ap.add_argument("--out", required=True, help="result path without extension (.json and .png are written)")
    args = ap.parse_args(argv)

    base = tomllib.loads(Path(args.base).read_text(encoding="utf-8"))
    base.pop("warm_start", None)            # RL only: every run starts from the same policy
    base.pop("rollout_seconds", None)       # every trajectory runs to its end (no partial rollouts)
    base["threads"] = 1
    if args.model:
        base["model"] = args.model
    seeds = [int(s) for s in args.seeds.split(",")]
    root = Path(args.root)
    common = parse_variant("all=" + ",".join(args.set))[1] if args.set else {}
    variants: list[tuple[str, list[Path]]] = []
    for spec in args.variant:
        label, over = parse_variant(spec)
        runs = []
        for s in seeds:
            run = root / f"{slug(label)}-s{s}"
            cfg = run_config(base, {**common, **over, "rl.seed": s, "rl.iterations": args.iterations, "rl.out_dir": str(run)})
            if not args.report_only and iterations_done(run) < args.iterations:
                run.mkdir(parents=True, exist_ok=True)
                text = dump_toml(cfg) + "\n"
                cfile = run / "config.toml"
                if cfile.is_file() and cfile.read_text() != text and any(run.glob("ckpt-*")):
                    raise SystemExit(f"{cfile} differs from this command's config; use another --root")
                cfile.write_text(text)
            runs.append(run)
        variants.append((label, runs))

    if not args.report_only:
        prepare(base, args.recipe)
        order = [runs[i] for i in range(len(seeds)) for _, runs in variants]   # seed by seed, variants side by side
        train_all(order, args.iterations, args.parallel)

    kinds = {}
    for f in base.get("tasks", []):
        for line in Path(f).read_text().splitlines():
            if line.strip():
                t = json.loads(line)
                kinds[t["id"]] = "bridge" if "bridge" in t.get("dataset", "") else "lookup"
    meta = {"title": args.title, "base": args.base, "model": base.get("model"), "seeds": seeds,
            "iterations": args.iterations, "variants_spec": args.variant,
            "trajectories_per_iteration": base.get("rl", {}).get("tasks_per_iteration", 0)
            * base.get("rl", {}).get("group_size", 0)}
    res = report(variants, kinds, args.iterations, args.last, args.out, meta)
    for label, v in res["variants"].items():
        print(label, json.dumps(v["pooled"]), "entropy", json.dumps(v["entropy_last"]))
    for name, d in res.get("differences", {}).items():
        print(name, "unpaired", json.dumps(d["all"]), "entropy", json.dumps(d["entropy"]))
        print(name, "paired", json.dumps(d["paired"]["all"]))


if __name__ == "__main__":
    main()
