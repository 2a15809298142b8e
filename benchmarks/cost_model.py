"""A cost model for agentic RL at internet scale: 1,000 GPUs, 100k concurrent trajectories.

What it takes from this machine (measured now, or read from committed benchmark JSON):
  * search: CPU cost per query of the lexical and hybrid engines under batching, and the HTTP service's
    throughput relative to the in-process engine (benchmarks/results/search_service*.json); how per-query cost
    grows with corpus size (benchmarks/results/retrieval.json, its 1M-passage scaling section);
  * corpus: bytes per passage of each part of an index (docs, BM25, embeddings) (retrieval.json);
  * sandbox: start time, per-call time and worker memory of sleuth's code sandbox (measured here);
  * browse: time to open and page a corpus passage (measured here);
  * observation sizes: tokens of a real 4-query search observation and a browse page (measured here on the
    `passages` index with the SmolLM2 tokenizer).
What it assumes (each in ``ASSUMPTIONS`` with where it comes from): the trajectory shape of Kimi-Researcher
(steps per task), the policy model and GPU (parameters, HBM, FLOP/s, utilisation), the corpus size.

Outputs benchmarks/results/cost_model.json; docs/scale.md explains the model and quotes it.

Run: nice -n 5 .venv/bin/python benchmarks/cost_model.py [--gpus 1000 --concurrent 100000 --params 7e9]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
RESULTS = ROOT / "benchmarks" / "results"

# Everything not measured here. Change them on the command line; the JSON records what was used.
ASSUMPTIONS = {
    "gpus": 1000,
    "concurrent_trajectories": 100_000,
    "steps_per_trajectory": 23,          # Kimi-Researcher's reported average of reasoning steps per task
    "tool_mix": {"search": 0.55, "browse": 0.35, "code": 0.10},   # share of steps per tool (assumed)
    "queries_per_search": 4,             # sleuth's search tool takes up to 8; trained agents send a few
    "generated_tokens_per_step": 400,    # think + action, a long-reasoning model (assumed)
    "trajectories_using_code": 0.3,      # share that starts a sandbox at least once (assumed)
    "model_params": 7e9,                 # dense policy (assumed); KV below is a GQA 7B (Qwen2.5-7B shape)
    "kv_bytes_per_token": 2 * 28 * 4 * 128 * 2,   # K and V x 28 layers x 4 KV heads x 128 dims x bf16
    "gpu_hbm_bytes": 80e9,               # H100-80GB class
    "gpu_hbm_bytes_per_s": 3.35e12,
    "gpu_bf16_flops": 989e12,            # dense bf16 peak
    "decode_bandwidth_efficiency": 0.6,  # share of HBM bandwidth a decode step achieves (assumed)
    "train_mfu": 0.4,                    # model-FLOPs utilisation of the update (assumed)
    "prefill_flops_efficiency": 0.5,     # of peak, for observation prefill (assumed)
    "corpus_passages": 1e9,              # web scale: ~100-word passages of a few hundred million pages
    "shard_passages": 1e6,               # passages per search shard (the size measured here)
    "search_replicas_headroom": 2.0,     # provision twice the mean QPS (bursts, p99)
    "cpu_cores_per_search_host": 64,
    "web_fetch_seconds": 1.5,            # online browse: a page fetch (not measurable offline; assumed)
}


# ------------------------------------------------------------------------------ measurements here
def measure_sandbox(n_calls: int = 20) -> dict:
    from sleuth.tools.sandbox import Sandbox

    starts, calls, rss = [], [], []
    for _ in range(3):
        t = time.perf_counter()
        sb = Sandbox()
        r = sb.run("x = 1")
        starts.append(time.perf_counter() - t)
        for i in range(n_calls):
            t = time.perf_counter()
            r = sb.run(f"print(sum(range({1000 + i})))")
            calls.append(time.perf_counter() - t)
        try:
            pid = sb._proc.pid
            with open(f"/proc/{pid}/status") as f:
                rss += [int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS")]
        except (OSError, AttributeError):
            pass
        sb.close()
    return {"mode": getattr(sb, "mode", "?"), "start_seconds_median": statistics.median(starts),
            "start_seconds": [round(x, 3) for x in starts],
            "call_seconds_median": statistics.median(calls), "call_seconds_p99": sorted(calls)[int(0.99 * (len(calls) - 1))],
            "worker_rss_bytes": int(statistics.median(rss)) if rss else None, "last_ok": r.ok if hasattr(r, "ok") else None}


def measure_tools(index_name: str, n: int = 30) -> dict:
    """Browse and search observations on a real index: seconds per call and observation tokens."""
    from transformers import AutoTokenizer

    from sleuth.policy.hf import ensure_embedded_checkpoint
    from sleuth.search.index import open_index
    from sleuth.tasks.loaders import load_tasks
    from sleuth.tools.browse import BrowseTool
    from sleuth.tools.search import SearchTool

    tok = AutoTokenizer.from_pretrained(ensure_embedded_checkpoint())
    ix = open_index(index_name)
    rng = random.Random(0)
    questions = [t.question for t in load_tasks("dev")]
    search = SearchTool(ix.engine("lexical"), k_per_query=5)
    s_sec, s_tok, urls = [], [], []
    for _ in range(n):
        res = search({"queries": rng.sample(questions, ASSUMPTIONS["queries_per_search"])})
        s_sec.append(res.seconds)
        s_tok.append(len(tok.encode(res.text)))
        urls += res.data.get("urls", [])
    browse = BrowseTool({ix.name: ix.docs})
    b_sec, b_tok = [], []
    for url in rng.sample(urls, min(n, len(urls))):
        res = browse({"url": url})
        b_sec.append(res.seconds)
        b_tok.append(len(tok.encode(res.text)))
    return {"index": ix.name, "passages": len(ix), "search_engine": "lexical",
            "search_call_seconds_median": statistics.median(s_sec), "search_observation_tokens_median": statistics.median(s_tok),
            "browse_call_seconds_median": statistics.median(b_sec), "browse_observation_tokens_median": statistics.median(b_tok),
            "code_observation_tokens_assumed": 150}


def read_search(results: Path) -> dict:
    """Per-query CPU cost of each engine when batched, from the load benchmarks."""
    out = {}
    for name, f in (("hybrid", "search_service.json"), ("lexical", "search_service_lexical.json")):
        p = results / f
        if not p.is_file():
            continue
        d = json.loads(p.read_text())
        cells = d["cells"]
        best = max(cells["in-process-batched"].values(), key=lambda c: c["queries_per_s"])
        svc = max(cells["service"].values(), key=lambda c: c["queries_per_s"])
        cpus = d.get("cpus") or os.cpu_count()
        one_svc, one_local = cells["service"].get("1"), cells["in-process"].get("1")
        out[name] = {"source": f"benchmarks/results/{f}", "passages": d["passages"],
                     "http_overhead_ms_one_client": round(max(0.0, one_svc["p50_ms"] - one_local["p50_ms"]), 2)
                     if one_svc and one_local else None,
                     "batched_queries_per_s": best["queries_per_s"], "service_queries_per_s": svc["queries_per_s"],
                     "cpus": cpus, "cpu_ms_per_query": round(1000 * cpus / best["queries_per_s"], 2),
                     "service_vs_in_process": round(svc["queries_per_s"] / best["queries_per_s"], 3),
                     "loadavg_during": best.get("loadavg_after")}
    r = json.loads((results / "retrieval.json").read_text())
    sc = r["scale"]
    b = sc.get("batch", 8) if isinstance(sc.get("batch"), int) else 8
    out["scaling_1M"] = {"source": "benchmarks/results/retrieval.json (scale)", "passages": sc["passages"],
                         "lexical_rank_ms_per_query": round(sc["lexical"]["batch_p50_ms"] / b, 2),
                         "lexical_rank_ms_per_query_28k": round(sc["lexical"]["batch_p50_ms_at_28k_rank_only"] / b, 3),
                         "dense_ivf_ms_per_query": round(sc["dense"]["search_batch_p50_ms"] / b, 2),
                         "encode_ms_per_query_cpu": round(sc["dense"]["encode_batch_p50_ms"] / b, 2)}
    parts = r["index"]["size_bytes_by_part"]
    n = r["index"]["count"]
    out["bytes_per_passage"] = {k: round(v / n, 1) for k, v in parts.items() if k != "meta.json"}
    return out


# ------------------------------------------------------------------------------------------- model
def model(a: dict, search: dict, tools: dict, sandbox: dict) -> dict:
    mix = a["tool_mix"]
    S, g = a["steps_per_trajectory"], a["generated_tokens_per_step"]
    obs = (mix["search"] * tools["search_observation_tokens_median"] + mix["browse"] * tools["browse_observation_tokens_median"]
           + mix["code"] * tools["code_observation_tokens_assumed"])
    final_context = S * (g + obs)
    mean_context = final_context / 2

    # --- GPU decode (memory-bound roofline): every decode iteration reads the weights once and each sequence's KV
    weight_bytes = 2 * a["model_params"]
    kv_seq = a["kv_bytes_per_token"] * mean_context
    per_gpu = a["concurrent_trajectories"] / a["gpus"]
    kv_room = a["gpu_hbm_bytes"] * 0.9 - weight_bytes
    fits_per_gpu = max(0, int(kv_room // kv_seq))
    bw = a["gpu_hbm_bytes_per_s"] * a["decode_bandwidth_efficiency"]

    def decode_iter(batch: float) -> float:
        return (weight_bytes + batch * kv_seq) / bw

    # tool latency per step (lexical search service per query batch, browse offline, code call)
    # a search call through the service: the tool's own time plus the HTTP round trip measured on loopback
    # a search call through the service: the tool's own time plus the HTTP round trip measured on loopback, plus the
    # ranking of its queries on one shard at the shard size (shards rank in parallel)
    sc = search["scaling_1M"]
    lex_ms_shard = sc["lexical_rank_ms_per_query"] * a["shard_passages"] / sc["passages"]
    t_search = (tools["search_call_seconds_median"] + (search.get("lexical", {}).get("http_overhead_ms_one_client") or 0)
                / 1000 + a["queries_per_search"] * lex_ms_shard / 1000)
    t_tool = (mix["search"] * t_search + mix["browse"] * tools["browse_call_seconds_median"]
              + mix["code"] * sandbox["call_seconds_median"])
    t_tool_online = t_tool + mix["browse"] * (a["web_fetch_seconds"] - tools["browse_call_seconds_median"])
    # a trajectory is on the GPU while it generates, off it while its tool runs; decode batch = those generating
    active = min(per_gpu, fits_per_gpu)
    t_iter = decode_iter(active)
    t_gen = g * t_iter
    prefill_s = 2 * a["model_params"] * obs / (a["gpu_bf16_flops"] * a["prefill_flops_efficiency"]) * active
    step_wall = t_gen + prefill_s + t_tool
    traj_wall = S * step_wall
    resident = per_gpu if fits_per_gpu >= per_gpu else fits_per_gpu
    concurrency_served = resident * a["gpus"]
    traj_per_s = concurrency_served / traj_wall

    # --- search service
    search_calls_per_s = concurrency_served * mix["search"] / step_wall
    qps = search_calls_per_s * a["queries_per_search"]
    shards = math.ceil(a["corpus_passages"] / a["shard_passages"])
    dense_ms_shard = sc["dense_ivf_ms_per_query"] * a["shard_passages"] / sc["passages"]
    snippet_ms = max(0.0, search["lexical"]["cpu_ms_per_query"] - sc["lexical_rank_ms_per_query_28k"]) \
        if "lexical" in search else 1.0
    # every query fans out to every shard (BM25 and IVF are per shard); snippets only for the merged top-k
    lexical_core_s = qps * (shards * lex_ms_shard + snippet_ms) / 1000
    dense_core_s = qps * (shards * dense_ms_shard) / 1000
    cores = {"lexical": lexical_core_s * a["search_replicas_headroom"],
             "hybrid_excl_encoder": (lexical_core_s + dense_core_s) * a["search_replicas_headroom"]}
    bpp = search["bytes_per_passage"]
    corpus = {k: v * a["corpus_passages"] for k, v in bpp.items()}

    # --- sandboxes: one persistent worker per trajectory that uses code, alive for the trajectory
    sandboxes = concurrency_served * a["trajectories_using_code"]
    sandbox_mem = sandboxes * (sandbox["worker_rss_bytes"] or 30e6)
    sandbox_starts = traj_per_s * a["trajectories_using_code"]
    sandbox_cores = (sandbox_starts * sandbox["start_seconds_median"]
                     + concurrency_served * mix["code"] / step_wall * sandbox["call_seconds_median"])

    # --- one iteration: every concurrent trajectory once, then one update over all their tokens
    tokens_per_traj = S * (g + obs)
    train_flops = 6 * a["model_params"] * tokens_per_traj * concurrency_served
    train_s = train_flops / (a["gpus"] * a["gpu_bf16_flops"] * a["train_mfu"])
    return {
        "trajectory": {"steps": S, "generated_tokens_per_step": g, "observation_tokens_per_step": round(obs),
                       "final_context_tokens": round(final_context), "tokens_trained_per_trajectory": round(tokens_per_traj)},
        "gpu_rollout": {"trajectories_per_gpu_wanted": per_gpu, "kv_bytes_per_trajectory_mean": round(kv_seq),
                        "trajectories_that_fit_per_gpu": fits_per_gpu, "resident_per_gpu": resident,
                        "concurrency_served": concurrency_served, "decode_iteration_ms": round(1000 * t_iter, 2),
                        "decode_tokens_per_s_per_gpu": round(active / t_iter),
                        "step_seconds": {"generate": round(t_gen, 2), "prefill": round(prefill_s, 2),
                                         "tools": round(t_tool, 3), "total": round(step_wall, 2),
                                         "tools_if_browsing_online": round(t_tool_online, 2)},
                        "trajectory_seconds": round(traj_wall, 1), "trajectories_per_s": round(traj_per_s, 1)},
        "search": {"calls_per_s": round(search_calls_per_s), "queries_per_s": round(qps), "shards": shards,
                   "lexical_ms_per_query_per_shard": round(lex_ms_shard, 3),
                   "dense_ivf_ms_per_query_per_shard": round(dense_ms_shard, 3),
                   "cpu_cores": {k: round(v) for k, v in cores.items()},
                   "hosts_64_core": {k: math.ceil(v / a["cpu_cores_per_search_host"]) for k, v in cores.items()},
                   "query_encoder_note": "dense/hybrid also encode each query once (MiniLM: "
                   f"{sc['encode_ms_per_query_cpu']} ms/query on this CPU; a small GPU share at scale)"},
        "corpus": {"passages": a["corpus_passages"], "bytes": {k: round(v) for k, v in corpus.items()},
                   "total_tb": round(sum(corpus.values()) / 1e12, 2)},
        "sandboxes": {"alive": round(sandboxes), "memory_gb": round(sandbox_mem / 1e9), "starts_per_s": round(sandbox_starts, 1),
                      "cpu_cores": round(sandbox_cores)},
        "iteration": {"trajectories": concurrency_served, "rollout_seconds": round(traj_wall), "train_seconds": round(train_s),
                      "rollout_share": round(traj_wall / (traj_wall + train_s), 3),
                      "gpu_hours": round(a["gpus"] * (traj_wall + train_s) / 3600)},
    }


def markdown(out: dict) -> str:
    """The tables docs/scale.md quotes (``--markdown FILE`` prints them from an existing JSON)."""
    m, me, a = out["model"], out["measured_here"], out["assumptions"]
    s, sc, t, sb = me["search"], me["search"]["scaling_1M"], me["tools"], me["sandbox"]
    rows = ["| quantity | value | source |", "|---|---|---|"]
    for eng in ("lexical", "hybrid"):
        if eng in s:
            e = s[eng]
            rows.append(f"| {eng} search, batched, CPU per query ({e['passages']:,} passages) | {e['cpu_ms_per_query']} ms "
                        f"| {e['source']} ({e['batched_queries_per_s']} q/s on {e['cpus']} shared cores) |")
            rows.append(f"| {eng}: HTTP service vs in-process (best q/s); loopback round trip, 1 client | "
                        f"{e['service_vs_in_process']}×; {e['http_overhead_ms_one_client']} ms | {e['source']} |")
    rows += [f"| BM25 rank per query, 1M passages (exhaustive) | {sc['lexical_rank_ms_per_query']} ms | {sc['source']} |",
             f"| dense IVF per query, 1M passages (nprobe 32) | {sc['dense_ivf_ms_per_query']} ms | {sc['source']} |",
             f"| query encoding (MiniLM, CPU) | {sc['encode_ms_per_query_cpu']} ms | {sc['source']} |",
             "| index bytes per passage | " + ", ".join(f"{k} {v:.0f}" for k, v in s["bytes_per_passage"].items())
             + " | retrieval.json (28k passages) |",
             f"| search tool call, {a['queries_per_search']} queries, lexical ({t['passages']:,} passages) | "
             f"{1000 * t['search_call_seconds_median']:.1f} ms; observation {t['search_observation_tokens_median']:.0f} tokens | measured |",
             f"| browse a corpus page | {1000 * t['browse_call_seconds_median']:.1f} ms; {t['browse_observation_tokens_median']:.0f} tokens | measured |",
             f"| sandbox start ({sb['mode']}) | {sb['start_seconds_median']:.2f} s | measured |",
             f"| sandbox call (small snippet) | {1000 * sb['call_seconds_median']:.1f} ms (p99 {1000 * sb['call_seconds_p99']:.1f}) | measured |",
             f"| sandbox worker memory (RSS) | {(sb['worker_rss_bytes'] or 0) / 1e6:.0f} MB | measured |"]
    g, se, c, sx, it, tr = m["gpu_rollout"], m["search"], m["corpus"], m["sandboxes"], m["iteration"], m["trajectory"]
    res = ["| | |", "|---|---|",
           f"| tokens per step (generated + observation) | {tr['generated_tokens_per_step']} + {tr['observation_tokens_per_step']} |",
           f"| final context of a trajectory | {tr['final_context_tokens']:,} tokens |",
           f"| trajectories wanted per GPU / that fit (KV cache) | {g['trajectories_per_gpu_wanted']:.0f} / {g['trajectories_that_fit_per_gpu']} |",
           f"| trajectories actually in flight | {g['concurrency_served']:,} |",
           f"| decode iteration / tokens per s per GPU | {g['decode_iteration_ms']} ms / {g['decode_tokens_per_s_per_gpu']:,} |",
           f"| one step: generate + prefill + tools | {g['step_seconds']['generate']} + {g['step_seconds']['prefill']} + "
           f"{g['step_seconds']['tools']} = {g['step_seconds']['total']} s |",
           f"| one trajectory | {g['trajectory_seconds'] / 60:.1f} min |",
           f"| tools per step if browse fetched real pages ({a['web_fetch_seconds']} s each) | "
           f"{g['step_seconds']['tools_if_browsing_online']} s |",
           f"| search load | {se['calls_per_s']:,} calls/s = {se['queries_per_s']:,} queries/s |",
           f"| search shards ({c['passages']:.0e} passages, {a['shard_passages']:.0e} per shard) | {se['shards']:,} |",
           f"| search CPU cores (×{a['search_replicas_headroom']} headroom): lexical / hybrid | "
           f"{se['cpu_cores']['lexical']:,} / {se['cpu_cores']['hybrid_excl_encoder']:,} "
           f"({se['hosts_64_core']['lexical']:,} / {se['hosts_64_core']['hybrid_excl_encoder']:,} 64-core hosts) |",
           f"| corpus on disk | {c['total_tb']} TB (" + ", ".join(f"{k} {v / 1e12:.2f} TB" for k, v in c['bytes'].items()) + ") |",
           f"| sandboxes alive / memory / starts per s / CPU cores | {sx['alive']:,} / {sx['memory_gb']:,} GB / "
           f"{sx['starts_per_s']} / {sx['cpu_cores']} |",
           f"| one iteration: rollout vs training | {it['rollout_seconds'] / 60:.1f} min vs {it['train_seconds'] / 60:.1f} min "
           f"(rollout {100 * it['rollout_share']:.0f}% of the time) |",
           f"| GPU-hours per iteration ({it['trajectories']:,} trajectories) | {it['gpu_hours']:,} |"]
    return "\n".join(rows) + "\n\n" + "\n".join(res)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpus", type=int, default=ASSUMPTIONS["gpus"])
    ap.add_argument("--concurrent", type=int, default=ASSUMPTIONS["concurrent_trajectories"])
    ap.add_argument("--params", type=float, default=ASSUMPTIONS["model_params"])
    ap.add_argument("--corpus-passages", type=float, default=ASSUMPTIONS["corpus_passages"])
    ap.add_argument("--index", default="passages", help="index for the browse/search observation measurements")
    ap.add_argument("--out", type=Path, default=RESULTS / "cost_model.json")
    ap.add_argument("--markdown", type=Path, default=None, help="print the tables of an existing JSON and exit")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return
    a = dict(ASSUMPTIONS, gpus=args.gpus, concurrent_trajectories=args.concurrent, model_params=args.params,
             corpus_passages=args.corpus_passages)
    load0 = os.getloadavg()
    t0 = time.time()
    search = read_search(RESULTS)
    print("measuring the sandbox…", flush=True)
    sandbox = measure_sandbox()
    print("measuring search and browse observations…", flush=True)
    tools = measure_tools(args.index)
    out = {"command": "nice -n 5 .venv/bin/python benchmarks/cost_model.py " + " ".join(sys.argv[1:]),
           "assumptions": a, "measured_here": {"search": search, "sandbox": sandbox, "tools": tools},
           "model": model(a, search, tools, sandbox),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_before": load0,
                       "loadavg_after": os.getloadavg(), "seconds": round(time.time() - t0, 1)}}
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out["model"], indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
