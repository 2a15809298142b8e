"""Load test of `sleuth serve-search` on loopback against the in-process engine.

For 1, 8 and 64 concurrent clients, each in a closed loop (send a request, wait for its answer, send the next),
every request carrying ``--per-request`` distinct dev-set questions as queries (the agent's search call sends
a few at once), over a fixed time window per cell:

* ``in-process``: client threads call the index's engine directly (``engine.search_batch``): no HTTP, no
  cross-caller batching — what one rollout process gets with the index opened in it;
* ``in-process-batched``: the same threads through ``BatchingEngine`` (the service's batcher, no HTTP), to
  separate what batching buys from what HTTP costs;
* ``service``: `sleuth serve-search` in its own process, clients as asyncio tasks over HTTP/1.1 keep-alive.

Reported per cell: requests and queries per second (requests completed inside the window), p50/p99 latency of
those requests, the service's mean batch.
Client and server share this machine's cores (and other jobs share the machine: ``loadavg`` is recorded
before and after each cell), so numbers are lower bounds of what a dedicated search host gives.

Run: nice -n 5 .venv/bin/python benchmarks/search_service.py [--index wiki --engine auto --seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "search_service.json"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def summarize(lat: list[float], n_queries: int, wall: float, load0, load1, **extra) -> dict:
    return {"requests": len(lat), "queries": n_queries, "seconds": round(wall, 2),
            "requests_per_s": round(len(lat) / wall, 2), "queries_per_s": round(n_queries / wall, 2),
            "p50_ms": round(1000 * pct(lat, 50), 1), "p99_ms": round(1000 * pct(lat, 99), 1),
            "mean_ms": round(1000 * statistics.fmean(lat), 1) if lat else None,
            "loadavg_before": [round(x, 2) for x in load0], "loadavg_after": [round(x, 2) for x in load1], **extra}


def request_stream(questions: list[str], per_request: int, seed: int):
    rng = random.Random(seed)
    while True:
        yield rng.sample(questions, per_request)


def run_threads(search, clients: int, seconds: float, warmup: float, questions, per_request, k) -> dict:
    """``clients`` threads, each calling ``search(queries, k)`` in a closed loop; latencies after warmup."""
    stop_at = time.perf_counter() + warmup + seconds
    t_start = time.perf_counter() + warmup
    lat: list[float] = []
    nq = [0]
    lock = threading.Lock()

    def client(i: int) -> None:
        for qs in request_stream(questions, per_request, seed=i):
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            resp = search(qs, k)
            t1 = time.perf_counter()
            assert len(resp) == len(qs) and not any(r.error for r in resp), [r.error for r in resp]
            if t_start <= t1 <= stop_at:      # completed inside the window (may have started before it)
                with lock:
                    lat.append(t1 - t0)
                    nq[0] += len(qs)

    load0 = os.getloadavg()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summarize(lat, nq[0], seconds, load0, os.getloadavg())


async def _http_cell(url: str, clients: int, seconds: float, warmup: float, questions, per_request, k,
                     engine: str) -> dict:
    stop_at = time.perf_counter() + warmup + seconds
    t_start = time.perf_counter() + warmup
    lat: list[float] = []
    nq = 0
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        async def client(i: int) -> None:
            nonlocal nq, errors
            for qs in request_stream(questions, per_request, seed=i):
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                r = await http.post("/v1/search", json={"queries": qs, "k": k, "engine": engine})
                t1 = time.perf_counter()
                if r.status_code != 200 or any(x["error"] for x in r.json()["responses"]):
                    errors += 1
                    continue
                if t_start <= t1 <= stop_at:
                    lat.append(t1 - t0)
                    nq += len(qs)

        load0 = os.getloadavg()
        await asyncio.gather(*(client(i) for i in range(clients)))
        load1 = os.getloadavg()
    return summarize(lat, nq, seconds, load0, load1, errors=errors)


def start_service(index: str, engine: str, port: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "SLEUTH_THREADS": str(threads)} if threads else dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "sleuth.cli", "serve-search", "--index", index, "--engine", engine,
                             "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve-search exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("serve-search did not start within 300 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", default="wiki")
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--clients", default="1,8,64")
    ap.add_argument("--per-request", type=int, default=3, help="queries per request")
    ap.add_argument("-k", type=int, default=8, help="results per query (the search tool asks for k+extra)")
    ap.add_argument("--seconds", type=float, default=15.0, help="measured window per cell")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the engine process(es)")
    ap.add_argument("--port", type=int, default=18777)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)

    from sleuth.search.batcher import BatchingEngine
    from sleuth.search.index import open_index
    from sleuth.tasks.loaders import load_tasks

    questions = [t.question for t in load_tasks("dev")]
    clients = [int(c) for c in args.clients.split(",")]
    ix = open_index(args.index)
    engine = ix.engine(args.engine)
    engine.search_batch(["warm up the encoder"], 1)
    t_all = time.time()
    cells: dict[str, dict] = {"in-process": {}, "in-process-batched": {}, "service": {}}
    # the three modes run back to back at each client count, so load from other jobs hits them alike
    proc = start_service(args.index, args.engine, args.port, args.threads)
    url = f"http://127.0.0.1:{args.port}"
    try:
        for n in clients:
            print(f"in-process, {n} clients…", flush=True)
            cells["in-process"][str(n)] = run_threads(engine.search_batch, n, args.seconds, args.warmup, questions,
                                                       args.per_request, args.k)
            b = BatchingEngine(engine)
            print(f"in-process batched, {n} clients…", flush=True)
            cells["in-process-batched"][str(n)] = run_threads(b.search_batch, n, args.seconds, args.warmup,
                                                               questions, args.per_request, args.k)
            cells["in-process-batched"][str(n)]["mean_batch"] = b.stats.to_dict()["mean_batch"]
            b.close()
            print(f"service over HTTP, {n} clients…", flush=True)
            before = httpx.get(f"{url}/v1/health").json()["batching"]
            cell = asyncio.run(_http_cell(url, n, args.seconds, args.warmup, questions, args.per_request, args.k,
                                          args.engine))
            after = httpx.get(f"{url}/v1/health").json()["batching"]
            (name,) = after
            db, du = (after[name]["batches"] - before.get(name, {}).get("batches", 0),
                      after[name]["unique_queries"] - before.get(name, {}).get("unique_queries", 0))
            cell["mean_batch"] = round(du / db, 2) if db else None
            cells["service"][str(n)] = cell
        engine_name = httpx.get(f"{url}/v1/health").json()["default_engine"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    out = {
        "what": "closed-loop load on loopback: requests of --per-request dev questions; queries/s and request "
                "latency at each client count; in-process engine vs the service over HTTP",
        "command": "nice -n 5 .venv/bin/python benchmarks/search_service.py " + " ".join(sys.argv[1:]),
        "index": args.index, "engine": engine_name, "passages": open_index(args.index).meta["count"],
        "per_request": args.per_request, "k": args.k, "seconds_per_cell": args.seconds,
        "torch_threads": args.threads, "cpus": os.cpu_count(), "machine": platform.machine(),
        "python": platform.python_version(), "wall_seconds": round(time.time() - t_all, 1),
        "cells": cells,
        "note": "client and server share the machine's cores, and other jobs share the machine (see loadavg)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    for mode, byn in cells.items():
        for n, c in byn.items():
            print(f"{mode:20s} {n:>3} clients  {c['queries_per_s']:8.1f} q/s  p50 {c['p50_ms']:7.1f} ms  "
                  f"p99 {c['p99_ms']:7.1f} ms  batch {c.get('mean_batch', '-')}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
