"""The results JSON of an evaluation run, its rendering, and the comparison of two runs.

Schema ``sleuth.eval.results/v1``::

    {
      "schema": "sleuth.eval.results/v1",
      "run":   {"name": str, "created": ISO-8601 str, "policy": str, "benchmarks": [str],
                "samples_per_task": int, "config": {...}},          # anything that reproduces the run
      "judge": {"name": str, "config": {...}},                       # Judge.name / Judge.config()
      "datasets": {<dataset>: {"metrics": {...}, "agent": {...}}},  # one entry per Task.dataset
      "overall":  {"metrics": {...}, "macro": {...}, "agent": {...}},
      "samples":  [{"task_id", "dataset", "sample", "correct", "score", "answer", "verdict", "stats"}]
    }

``metrics`` is ``metrics.aggregate`` (n_tasks, n_samples, samples_per_task, avg@n, pass@k...);
``overall.metrics`` averages over all tasks, ``overall.macro`` over datasets; ``agent`` is
``metrics.summarize_stats`` of the trajectories' ``stats()``. ``samples`` is optional.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from sleuth.evals.metrics import aggregate, summarize_stats

SCHEMA = "sleuth.eval.results/v1"
# Agent statistics shown in tables: (label, key in the agent summary, field of that summary).
AGENT_COLUMNS = [("steps", "steps", "mean"), ("queries", "search_queries", "mean"),
                 ("urls", "urls_opened", "mean"), ("gen tok", "generated_tokens", "mean"),
                 ("wall s", "wall_seconds", "mean"), ("fmt err/step", "format_error_rate", "per_step")]
_COUNT_KEYS = ("n_tasks", "n_samples", "samples_per_task")


def build_results(records: Sequence[Mapping[str, Any]], *, run: Mapping[str, Any], judge: Mapping[str, Any],
                  ks: Sequence[int] = (1,), keep_samples: bool = True) -> dict[str, Any]:
    """Results JSON from per-sample records.

    Each record: ``task_id``, ``dataset``, ``correct`` (bool), optionally ``score``, ``answer``,
    ``verdict`` (``Verdict.to_dict()``), ``stats`` (``Trajectory.stats()``) and ``sample`` (its index).
    """
    if not records:
        raise ValueError("no records to build results from")
    by_ds: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    stats_by_ds: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for i, r in enumerate(records):
        missing = [k for k in ("task_id", "dataset", "correct") if k not in r]
        if missing:
            raise ValueError(f"record {i} lacks {missing}")
        by_ds[r["dataset"]][r["task_id"]].append(float(bool(r["correct"])))
        if r.get("stats"):
            stats_by_ds[r["dataset"]].append(r["stats"])
    datasets = {ds: {"metrics": aggregate(tasks, ks), "agent": summarize_stats(stats_by_ds[ds])}
                for ds, tasks in sorted(by_ds.items())}
    all_tasks = {(ds, t): s for ds, tasks in by_ds.items() for t, s in tasks.items()}
    overall_metrics = aggregate({f"{ds}/{t}": s for (ds, t), s in all_tasks.items()}, ks)
    rate_keys = [k for k in overall_metrics if k not in _COUNT_KEYS]
    macro = {k: sum(d["metrics"].get(k, 0.0) for d in datasets.values()) / len(datasets)
             for k in rate_keys if all(k in d["metrics"] for d in datasets.values())}
    all_stats = [s for ds in sorted(stats_by_ds) for s in stats_by_ds[ds]]
    run = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **dict(run)}
    run.setdefault("samples_per_task", overall_metrics["samples_per_task"])
    out = {"schema": SCHEMA, "run": run, "judge": dict(judge), "datasets": datasets,
           "overall": {"metrics": overall_metrics, "macro": macro, "agent": summarize_stats(all_stats)}}
    if keep_samples:
        out["samples"] = [dict(r) for r in records]
    return out


def validate_results(d: Any) -> dict[str, Any]:
    """Check the shape of a results JSON; raises ValueError naming the first problem."""
    if not isinstance(d, dict):
        raise ValueError(f"results must be a JSON object, got {type(d).__name__}")
    if d.get("schema") != SCHEMA:
        raise ValueError(f"not a sleuth results file (schema {d.get('schema')!r}, expected {SCHEMA!r})")
    for key in ("run", "judge", "datasets", "overall"):
        if not isinstance(d.get(key), dict):
            raise ValueError(f"results lack the {key!r} object")
    for name, entry in d["datasets"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("metrics"), dict):
            raise ValueError(f"dataset {name!r} has no 'metrics' object")
    if not isinstance(d["overall"].get("metrics"), dict):
        raise ValueError("results lack overall.metrics")
    return d


def load_results(src: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A results dict from a path or an already-loaded dict, validated."""
    if isinstance(src, Mapping):
        return validate_results(dict(src))
    path = Path(src)
    if not path.is_file():
        raise ValueError(f"results file {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    return validate_results(data)


def save_results(results: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(validate_results(dict(results)), indent=2, ensure_ascii=False) + "\n",
                    encoding="utf-8", errors="backslashreplace")   # a lone surrogate becomes its JSON escape
    return path


# -------------------------------------------------------------------------------------------- tables
def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _rate_keys(results: Mapping[str, Any]) -> list[str]:
    keys: list[str] = []
    for entry in [*results["datasets"].values(), results["overall"]]:
        keys += [k for k in entry["metrics"] if k not in _COUNT_KEYS and k not in keys]
    return sorted(keys, key=lambda k: (not k.startswith("pass@"), len(k), k))


def _agent_value(entry: Mapping[str, Any], key: str, field: str) -> float | None:
    v = (entry.get("agent") or {}).get(key)
    return v.get(field) if isinstance(v, dict) else None


def _rows(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    keys = _rate_keys(results)
    entries = [*results["datasets"].values(), results["overall"]]
    agent = [c for c in AGENT_COLUMNS if any(_agent_value(e, c[1], c[2]) is not None for e in entries)]
    header = ["dataset", "tasks", *keys, *(label for label, _, _ in agent)]
    rows = []
    for name, entry in [*results["datasets"].items(), ("overall", results["overall"])]:
        m = entry["metrics"]
        rows.append([name, _fmt(m.get("n_tasks")), *(_fmt(m.get(k)) for k in keys),
                     *(_fmt(_agent_value(entry, key, f)) for _, key, f in agent)])
    return header, rows


def _title(results: Mapping[str, Any]) -> str:
    run, judge = results["run"], results["judge"]
    bits = [run.get("name") or "run", f"policy {run['policy']}" if run.get("policy") else "",
            f"judge {judge.get('name', '?')}", f"{run.get('samples_per_task', '?')} sample(s)/task"]
    return " · ".join(b for b in bits if b)


def render(results: Mapping[str, Any]):
    """A rich Table: one row per dataset plus 'overall', metric and agent-statistic columns."""
    from rich.table import Table

    results = validate_results(dict(results))
    header, rows = _rows(results)
    table = Table(title=_title(results))
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right", style="bold" if i == 0 else None)
    for r in rows:
        table.add_row(*r, end_section=r is rows[-2] if len(rows) > 1 else False)
    return table


# ------------------------------------------------------------------------------------------- compare
def compare_rows(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, str, float | None,
                                                                          float | None, float | None]]:
    """(dataset, metric, value in a, value in b, b - a) for every dataset and metric in either run."""
    a, b = load_results(a), load_results(b)
    names = list(a["datasets"]) + [n for n in b["datasets"] if n not in a["datasets"]] + ["overall"]
    keys = _rate_keys(a) + [k for k in _rate_keys(b) if k not in _rate_keys(a)]
    out = []
    for name in names:
        ea = a["overall"] if name == "overall" else a["datasets"].get(name)
        eb = b["overall"] if name == "overall" else b["datasets"].get(name)
        metrics = [("tasks", lambda e: e["metrics"].get("n_tasks"))]
        metrics += [(k, lambda e, k=k: e["metrics"].get(k)) for k in keys]
        metrics += [(label, lambda e, key=key, f=f: _agent_value(e, key, f)) for label, key, f in AGENT_COLUMNS]
        for label, get in metrics:
            va = get(ea) if ea is not None else None
            vb = get(eb) if eb is not None else None
            if va is None and vb is None:
                continue
            delta = vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
            out.append((name, label, va, vb, delta))
    return out


def _delta(d: float | None) -> str:
    return "—" if d is None else f"{d:+.3f}" if isinstance(d, float) else f"{d:+d}"


def compare(a: str | Path | Mapping[str, Any], b: str | Path | Mapping[str, Any]):
    """Side-by-side rich Table of two results (paths or dicts), with the difference b - a per metric."""
    from rich.table import Table

    ra, rb = load_results(a), load_results(b)
    table = Table(title=f"A: {_title(ra)}\nB: {_title(rb)}")
    for h in ("dataset", "metric", "A", "B", "B - A"):
        table.add_column(h, justify="left" if h in ("dataset", "metric") else "right")
    last = None
    for name, label, va, vb, d in compare_rows(ra, rb):
        # Colour only success rates, where higher is better; agent statistics have no better direction.
        rated = label.startswith(("pass@", "avg@"))
        style = None if not rated or d is None or d == 0 else ("green" if d > 0 else "red")
        table.add_row(name if name != last else "", label, _fmt(va), _fmt(vb), _delta(d), style=style)
        last = name
    return table
