"""The run directory: every stage's output saved as it completes, so a killed run resumes where it stopped.

Layout: ``request.json`` (request, answers, config, language), ``plan.json``, ``research.jsonl`` (one line
per researched question, appended as each batch finishes), ``sections/NN.json`` (one per written section),
``charts.json``, ``events.jsonl`` (every progress event), then the outputs ``report.md``, ``report.html``,
``report.json``. JSON files are written whole to a temporary name and renamed; a JSONL line cut by a kill
is ignored on reading.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


class RunStore:
    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "sections").mkdir(exist_ok=True)

    def path(self, name: str) -> Path:
        return self.dir / name

    # -- whole files
    def write_json(self, name: str, obj: Any) -> None:
        self.write_text(name, json.dumps(obj, ensure_ascii=False, indent=1, default=str))

    def write_text(self, name: str, text: str) -> None:
        target = self.dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)

    def read_json(self, name: str) -> Any | None:
        p = self.dir / name
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None       # a file that cannot be read is a stage not done: it is redone

    # -- append-only logs
    def append(self, name: str, obj: Any) -> None:
        with open(self.dir / name, "a", encoding="utf-8") as f:
            f.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_lines(self, name: str) -> list[dict[str, Any]]:
        p = self.dir / name
        if not p.exists():
            return []
        out = []
        for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue      # the line a kill cut short
        return out

    def section_name(self, i: int) -> str:
        return f"sections/{i:02d}.json"
