"""`make demo` on a fresh clone, timed: nothing reused but the installed virtualenv.

What runs: ``git clone`` of this checkout's committed HEAD into a new temporary directory, ``.venv``
there a symlink to this checkout's virtualenv (so `make setup`'s pip install is not counted: the
Makefile's setup target is marked as up to date with ``make -o .venv/.installed``), ``SLEUTH_HOME`` a new
empty directory (no index, no converted policy weights, no ONNX export: all of it is made and counted)
and ``SLEUTH_MODELS`` unset. ``PYTHONPATH`` points at the clone so its code runs (the shared virtualenv's
editable install points elsewhere). Each output line is stamped with the seconds since the start.

Run: .venv/bin/python benchmarks/demo_time.py [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "demo_time.json"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone and state directory")
    ap.add_argument("--out", type=Path, default=OUT)
    ns = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="sleuth-demo-"))
    clone, home = tmp / "sleuth", tmp / "home"
    commit = subprocess.check_output(["git", "-C", str(ROOT), "rev-parse", "HEAD"], text=True).strip()
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", commit], check=True)
    (clone / ".venv").symlink_to((ROOT / ".venv").resolve())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLEUTH_")}
    env.update(SLEUTH_HOME=str(home), PYTHONPATH=str(clone))
    report: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
                    "commit": commit, "counted": "make demo after the clone: index the embedded corpus (with the "
                    "one-time ONNX export), the search, the ask (with the one-time policy weight conversion)",
                    "not_counted": "make setup (pip install): the clone's .venv is a symlink to an installed one",
                    "command": "make -o .venv/.installed demo", "lines": []}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(["make", "-o", ".venv/.installed", "demo"], cwd=clone, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        el = time.perf_counter() - t0
        line = line.rstrip("\n")
        if "\r" in line or not line.strip():  # progress bars redraw in place: keep their last state only
            line = line.split("\r")[-1]
        report["lines"].append(f"{el:7.1f}s  {line}")
        print(f"{el:7.1f}s  {line}", flush=True)
    rc = proc.wait()
    report["seconds"] = round(time.perf_counter() - t0, 1)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of everything the demo ran: what the work costs, whatever else the machine was doing
    report["cpu_seconds"] = round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1)
    report["exit_code"] = rc
    report["answer_mentions_leonardo"] = any("Leonardo" in ln for ln in report["lines"][-40:])
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if not ns.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(report, indent=1))
    print(f"make demo: {report['seconds']} s wall, {report['cpu_seconds']} s CPU (exit {rc}); wrote {ns.out}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["exit_code"] == 0 else 1)
