"""Load on `sleuth serve` over loopback: N research runs submitted at once, watched live, nothing lost.

Starts ``sleuth serve`` as a subprocess (the shipped trained policy, the ``wiki`` index with the lexical
engine) once per concurrency setting, submits N ``ask`` questions at once, follows every run's SSE stream to
its end, and meanwhile polls the API (history, one run, health) to measure its latency while the model works.
Then it checks that every run reached a final state with its result and that every stored event was
delivered on its stream. Bounded: N runs (default 8), and a wall-clock limit per setting (default 600 s).

The same N questions run with ``--concurrency 1`` (one run at a time) and with ``--concurrency N`` (their
generations batched into shared forward passes), so the speed-up is measured in one invocation.

    nice -n 5 .venv/bin/python benchmarks/serve_load.py [--n 8] [--limit-s 600]
        -> benchmarks/results/serve_load.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "serve_load.json"

QUESTIONS = [
    "Who painted the Mona Lisa?", "Who wrote Pride and Prejudice?", "What is the capital of Japan?",
    "Who developed the theory of general relativity?", "What is the largest planet in the Solar System?",
    "Who composed the Ninth Symphony with the Ode to Joy?", "In which country is the Taj Mahal?",
    "What is the chemical symbol for gold?", "Who was the first president of the United States?",
    "Which ocean is the largest?", "Who wrote Hamlet?", "What is the longest river in Africa?",
    "Who discovered penicillin?", "What language is spoken in Brazil?", "Who painted The Starry Night?",
    "What is the boiling point of water in Celsius?",
]


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1000, 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(port: int, db: Path, concurrency: int, log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "sleuth.cli", "serve", "--port", str(port), "--index", "wiki", "--engine", "lexical",
           "--db", str(db), "--concurrency", str(concurrency), "--no-mcp", "--rate", "1000", "--burst", "1000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "SLEUTH_THREADS": os.environ.get("SLEUTH_THREADS", "1")})
    t0 = time.time()
    while time.time() - t0 < 300:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    raise SystemExit("server did not start in 300 s")


def follow(base: str, run_id: str, out: dict) -> None:
    """Read a run's SSE stream to its end; record the ids delivered and when the first and last came."""
    ids, t0, first = [], time.perf_counter(), None
    with httpx.Client(base_url=base, timeout=None) as c, c.stream("GET", f"/api/runs/{run_id}/stream") as r:
        block: dict[str, str] = {}
        for line in r.iter_lines():
            if line:
                key, _, value = line.partition(": ")
                block[key] = value
                continue
            if "event" not in block:          # a keepalive comment
                block = {}
                continue
            if block["event"] == "end":
                out[run_id] = {"ids": ids, "first_event_s": first, "end_s": time.perf_counter() - t0,
                               "end": json.loads(block["data"])}
                return
            ids.append(int(block["id"]))
            first = first or time.perf_counter() - t0
            block = {}
    out[run_id] = {"ids": ids, "first_event_s": first, "end_s": None, "end": None}


def one_setting(n: int, concurrency: int, limit_s: float, workdir: Path) -> dict:
    port, db = free_port(), workdir / f"runs-c{concurrency}.db"
    log = open(workdir / f"server-c{concurrency}.log", "w")
    t_start = time.time()
    proc = start(port, db, concurrency, log)
    startup_s = time.time() - t_start
    base = f"http://127.0.0.1:{port}"
    latencies: dict[str, list[float]] = {"submit": [], "history": [], "run": [], "health": []}
    streams: dict[str, dict] = {}
    stop = threading.Event()
    try:
        with httpx.Client(base_url=base, timeout=60) as c:
            questions = (QUESTIONS * (n // len(QUESTIONS) + 1))[:n]
            run_ids = []
            t0 = time.perf_counter()
            for q in questions:
                s = time.perf_counter()
                r = c.post("/api/runs", json={"kind": "ask", "params": {"question": q}})
                latencies["submit"].append(time.perf_counter() - s)
                r.raise_for_status()
                run_ids.append(r.json()["id"])
            followers = [threading.Thread(target=follow, args=(base, rid, streams), daemon=True) for rid in run_ids]
            for f in followers:
                f.start()

            def poll() -> None:      # the API's latency while every run is generating
                with httpx.Client(base_url=base, timeout=60) as pc:
                    while not stop.is_set():
                        for name, path in (("history", "/api/runs?limit=50"), ("run", f"/api/runs/{run_ids[0]}"),
                                           ("health", "/api/health")):
                            s = time.perf_counter()
                            pc.get(path).raise_for_status()
                            latencies[name].append(time.perf_counter() - s)
                        time.sleep(0.1)
            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            for f in followers:
                f.join(max(0.0, limit_s - (time.perf_counter() - t0)))
            wall = time.perf_counter() - t0
            stop.set()
            poller.join(30)

            runs = [c.get(f"/api/runs/{rid}").json() for rid in run_ids]
            stored = {rid: [e["seq"] for e in c.get(f"/api/runs/{rid}/events", params={"limit": 5000}).json()["events"]]
                      for rid in run_ids}
            history = {r["id"] for r in c.get("/api/runs", params={"limit": 500}).json()["runs"]}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    final = [r for r in runs if r["status"] in ("done", "failed", "cancelled", "interrupted")]
    delivered = sum(len(streams.get(rid, {}).get("ids", [])) for rid in run_ids)
    duplicated = sum(len(s["ids"]) - len(set(s["ids"])) for s in streams.values())
    stored_n = sum(len(v) for v in stored.values())
    missing = sum(len(set(stored[rid]) - set(streams.get(rid, {}).get("ids", []))) for rid in run_ids)
    answered = [r for r in runs if r["status"] == "done" and (r.get("result") or {}).get("answer")]
    return {
        "concurrency": concurrency, "runs": n, "startup_s": round(startup_s, 1), "wall_s": round(wall, 2),
        "runs_per_min": round(60 * len(final) / wall, 2) if wall else None,
        "done": sum(r["status"] == "done" for r in runs), "failed": sum(r["status"] == "failed" for r in runs),
        "not_finished_in_limit": n - len(final),
        "lost": len(set(run_ids) - history),          # submitted but absent from the history
        "answered": len(answered),
        "cited": sum(bool(r["result"].get("citations")) for r in answered),
        "events_stored": stored_n, "events_delivered": delivered, "events_missing_from_streams": missing,
        "events_delivered_twice": duplicated,
        "first_event_s_p50": round(statistics.median([s["first_event_s"] for s in streams.values()
                                                      if s.get("first_event_s") is not None] or [0]), 3),
        "run_seconds_p50": round(statistics.median([r["result"]["seconds"] for r in runs
                                                    if r["status"] == "done"] or [0]), 2),
        "api_latency_ms": {k: {"n": len(v), "p50": pct(v, 0.5), "p99": pct(v, 0.99), "max": pct(v, 1.0)}
                           for k, v in latencies.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8, help="runs submitted at once (at most 64)")
    ap.add_argument("--limit-s", type=float, default=600, help="wall-clock limit per setting")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    n = max(1, min(args.n, 64))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        settings = [one_setting(n, c, args.limit_s, Path(d)) for c in (1, n)]
    serial, batched = settings
    result = {
        "benchmark": "serve_load", "command": "nice -n 5 .venv/bin/python benchmarks/serve_load.py --n " + str(n),
        "policy": "shipped (sleuth-135m-rl)", "index": "wiki (lexical)", "questions": n,
        "settings": settings,
        "speedup_batched_vs_serial": round(serial["wall_s"] / batched["wall_s"], 2) if batched["wall_s"] else None,
        "runs_lost": serial["lost"] + batched["lost"],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                    "SLEUTH_THREADS": os.environ.get("SLEUTH_THREADS", "1")},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
