"""Load every registered benchmark; print its size, load time and one sample; write the numbers as JSON.

    .venv/bin/python benchmarks/load_benchmarks.py [--out benchmarks/results/benchmarks_loaded.json]

Samples of canary-encrypted benchmarks are withheld (their plain text must not land on disk or in logs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from importlib import metadata
from pathlib import Path

from rich.console import Console
from rich.table import Table

import sys
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout, no install needed
from sleuth.tasks.loaders import BENCHMARKS, load_benchmark
from sleuth.paths import shared_data


def _short(text: str, n: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "benchmarks_loaded.json"))
    args = ap.parse_args()

    console = Console()
    table = Table(title=f"benchmarks under {shared_data()}")
    for col in ("name", "tasks", "load s", "answers/task", "sample question → answer"):
        table.add_column(col, justify="right" if col in ("tasks", "load s", "answers/task") else "left")
    results = {}
    for name, loader in BENCHMARKS.items():
        t0 = time.perf_counter()
        tasks = load_benchmark(name)
        seconds = time.perf_counter() - t0
        first = tasks[0]
        if loader.encrypted:
            sample = None
            shown = f"(withheld: encrypted source; {len(first.question)}-char question decrypted)"
        else:
            sample = {"id": first.id, "question": _short(first.question, 200), "answers": first.answers[:5]}
            shown = f"{_short(first.question, 70)} → {_short(' | '.join(first.answers), 30)}"
        results[name] = {
            "tasks": len(tasks), "unique_ids": len({t.id for t in tasks}), "load_seconds": round(seconds, 3),
            "answers_per_task_mean": round(statistics.mean(len(t.answers) for t in tasks), 3),
            "question_chars_median": statistics.median(len(t.question) for t in tasks),
            "metadata_keys": sorted({k for t in tasks for k in t.metadata}),
            "datasets": sorted({t.dataset for t in tasks}), "files": list(loader.files),
            "encrypted": loader.encrypted, "sample": sample,
        }
        table.add_row(name, str(len(tasks)), f"{seconds:.2f}",
                      f"{results[name]['answers_per_task_mean']:.2f}", shown)
    console.print(table)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "load_benchmarks", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "readers": {p: _version(p) for p in ("pyarrow", "openpyxl")},
               "total_tasks": sum(r["tasks"] for n, r in results.items() if not n.startswith("dev-")),
               "benchmarks": results}
    out.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    console.print(f"{len(results)} benchmarks, {payload['total_tasks']} tasks (dev subsets not double-counted)"
                  f" → {out}")


if __name__ == "__main__":
    main()
