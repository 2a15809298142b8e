"""Embedding benchmark: today's PyTorch embedder against the ONNX Runtime int8 one, side by side in one run.

Measures, on the offline corpus (28k passages) and the dev questions:
  * throughput: passages/s of both embedders on the same passages (evenly spaced over the corpus), in
    alternating rounds so both see the same machine load; wall and process-CPU rates, same thread count;
  * agreement: cosine between the two embeddings of each passage (sample and full corpus);
  * quality: any@10 / all@10 per dataset, dense and hybrid, for the torch index (the existing ``passages``
    index, embedded by the PyTorch path), the int8 one (the same passages embedded here by onnx-int8, its
    queries by the float32 graph of the same export) and the mixed case (torch passages, onnx queries) — the
    ranking logic of benchmarks/retrieval.py; with
    --subset N over N passages (every supporting passage of the dev questions + random ones) instead;
  * hybrid latency: p50/p99 of an 8-query batch (search_batch with snippets) on 28k passages with each
    embedder, cache emptied before every batch, and with a warm cache;
  * scale: hybrid 8-query batch latency at ~1M passages (see section_scale for how they are made).

Run: nice -n 5 .venv/bin/python benchmarks/embedding.py [--sample 512] [--no-scale] [--scale 1000000]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from machine import cpu as cpu_info  # noqa: E402
from retrieval import batches, pct, perturbed_bm25, perturbed_copies, quality, timed_batches  # noqa: E402

from sleuth import paths  # noqa: E402
from sleuth.search.dense import DenseConfig, DenseEngine, build_faiss, passage_text  # noqa: E402
from sleuth.search.embedders import OnnxEmbedder, get_embedder  # noqa: E402
from sleuth.search.hybrid import HybridEngine  # noqa: E402
from sleuth.search.index import build_index, open_index  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "embedding.json"


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def section_throughput(texts: list[str], embedders: dict, rounds: int, report: dict) -> dict[str, np.ndarray]:
    """Alternate the embedders round by round over the same passages; rates from the summed times."""
    for e in embedders.values():
        e.embed(texts[:16])  # warm-up: first-call allocations, page cache
    wall = {k: 0.0 for k in embedders}
    cpu = {k: 0.0 for k in embedders}
    out: dict[str, np.ndarray] = {}
    for r in range(rounds):
        for k, e in embedders.items():
            t, c = time.perf_counter(), time.process_time()
            out[k] = e.embed(texts)
            wall[k] += time.perf_counter() - t
            cpu[k] += time.process_time() - c
            print(f"  round {r + 1}/{rounds} {k}: {len(texts) * (r + 1) / wall[k]:.1f} passages/s so far", flush=True)
    n = len(texts) * rounds
    res = {k: {"passages_per_s_wall": round(n / wall[k], 1), "passages_per_s_cpu": round(n / cpu[k], 1)}
           for k in embedders}
    res["speedup_wall"] = round(wall["torch"] / wall["onnx-int8"], 2)
    res["speedup_cpu"] = round(cpu["torch"] / cpu["onnx-int8"], 2)
    cos = (out["torch"] * out["onnx-int8"]).sum(axis=1)
    res["cosine_torch_vs_int8"] = {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5),
                                   "p1": round(float(np.percentile(cos, 1)), 5)}
    res.update(passages=len(texts), rounds=rounds, threads=int(os.environ.get("SLEUTH_THREADS") or 0) or "default",
               mean_chars=round(float(np.mean([len(t) for t in texts])), 1))
    report["throughput"] = res
    return out


def corpus_int8_embeddings(name: str, texts: list[str], emb) -> tuple[np.ndarray, float, bool]:
    """The int8 embeddings of the corpus, cached under the state dir keyed by the passages."""
    key = hashlib.sha256(("\x00".join(texts) + str(emb.path)).encode()).hexdigest()[:16]
    cache = paths.home() / "bench" / f"embedding-int8-{name}-{key}.npy"
    if cache.exists():
        return np.load(cache), 0.0, True
    done = [0]
    t0 = time.perf_counter()

    def progress(n: int) -> None:
        done[0] += n
        if done[0] % 2048 < n:
            el = time.perf_counter() - t0
            print(f"  int8 corpus: {done[0]}/{len(texts)} in {el:.0f}s ({done[0] / el:.1f}/s)", flush=True)

    out = emb.embed(texts, on_progress=progress)
    seconds = time.perf_counter() - t0
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, out)
    return out, seconds, False


def int8_index_vectors(ix, name: str) -> tuple[np.ndarray, dict]:
    """The vectors of an int8-embedded index of the same passages, in ``ix``'s row order."""
    other = open_index(name)
    dense = other.meta["engines"].get("dense") or {}
    if dense.get("embedder") != "onnx-int8":
        raise SystemExit(f"index {name!r} was not embedded by onnx-int8 (meta says {dense.get('embedder')!r})")
    row_of = {p.id: i for i, p in enumerate(other.docs)}
    ids = [p.id for p in ix.docs]
    if len(ids) != len(row_of) or any(i not in row_of for i in ids):
        raise SystemExit(f"index {name!r} does not hold the same passages as {ix.name!r}")
    vectors = np.load(other.path / "dense" / "embeddings.npy")[[row_of[i] for i in ids]]
    built = other.meta.get("build_seconds", {})
    return vectors, {"from_index": name, "passages": len(ids), "built": other.meta.get("created"),
                     "embed_seconds": built.get("embed"), "embedded": dense.get("embedded"),
                     "from_prebuilt_pack": dense.get("prebuilt"),
                     "passages_per_s_wall": round(dense["embedded"] / built["embed"], 1)
                     if built.get("embed") and dense.get("embedded") else None}


def flat_engine(ix, vectors: np.ndarray, embedder) -> DenseEngine:
    return DenseEngine(ix.name, ix.docs, build_faiss(vectors, DenseConfig()), lambda: embedder)


def subset_corpus(ix, dev: list[dict], n: int, torch_vectors: np.ndarray):
    """A smaller corpus for the quality section: every passage whose title supports a dev question, then
    passages drawn at random (seed 0) up to n. Indexed lexically like any corpus (a fresh index under a
    private state dir); its torch vectors are the full index's rows for those passages."""
    support = {t.lower() for d in dev for t in d["supporting_titles"]}
    rows_sup = [i for i, p in enumerate(ix.docs) if p.title.lower() in support]
    rest = np.setdiff1d(np.arange(ix.meta["count"]), rows_sup)
    extra = np.random.default_rng(0).choice(rest, size=max(0, n - len(rows_sup)), replace=False)
    rows = sorted(set(rows_sup) | set(extra.tolist()))
    home = paths.home() / "bench" / "embedding-subset-home"
    src = home / f"subset-{len(rows)}.jsonl"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text("".join(json.dumps({"id": p.id, "title": p.title, "text": p.text}) + "\n"
                           for p in ix.docs.get_rows(rows)))
    old = os.environ.get("SLEUTH_HOME")
    os.environ["SLEUTH_HOME"] = str(home)
    try:
        build_index(src, "subset", dense=False, progress=False)
        sub = open_index("subset")
        sub.engine("lexical")
    finally:
        if old is None:
            os.environ.pop("SLEUTH_HOME")
        else:
            os.environ["SLEUTH_HOME"] = old
    return sub, torch_vectors[rows], {"passages": len(rows), "supporting": len(rows_sup), "random": len(extra)}


def section_quality(ix, dev: list[dict], torch_emb, int8_emb, torch_vectors: np.ndarray,
                    int8_vectors: np.ndarray, k: int, batch: int, report: dict) -> None:
    cos = (torch_vectors * int8_vectors).sum(axis=1)
    titles = [p.title for p in ix.docs]
    dev_q = [d for d in dev if d["supporting_titles"]]
    queries = [d["question"] for d in dev_q]
    lat_queries = [d["question"] for d in dev]
    lex = ix.engine("lexical")
    mixed = "mixed: torch passages, onnx-int8 embedder's queries"   # ranking only: latency is the int8 row's
    setups = {"torch": (torch_vectors, torch_emb), "onnx-int8": (int8_vectors, int8_emb),
              mixed: (torch_vectors, int8_emb)}
    out: dict = {"corpus": ix.name, "cosine_torch_vs_int8_all_passages": {"n": len(cos), "mean": round(float(cos.mean()), 5),
                                                       "min": round(float(cos.min()), 5),
                                                       "p1": round(float(np.percentile(cos, 1)), 5)},
                 "dev_questions": len(dev_q), "setups": {}}
    for name, (vectors, emb) in setups.items():
        dense = flat_engine(ix, vectors, emb)
        hybrid = HybridEngine(lex, dense)
        dense_lists = [r for b in batches(queries, 64) for r in dense.rank(b, k)]
        hybrid_lists = [r for b in batches(queries, 64) for r in hybrid.rank(b, k)]
        row = {f"{eng}": {ds: {"any@10": m["any@10"], "all@10": m["all@10"]}
                          for ds, m in quality(dev_q, [[titles[r] for r, _ in rs] for rs in lists]).items()}
               for eng, lists in (("dense", dense_lists), ("hybrid", hybrid_lists))}
        if name != mixed:
            cold = timed_batches(lambda b: hybrid.search_batch(b, k), lat_queries, batch, before=dense.clear_cache)
            for b in batches(lat_queries, 64):   # the cold pass emptied the cache before each batch: fill it
                dense.encode(b)
            warm = timed_batches(lambda b: hybrid.search_batch(b, k), lat_queries, batch)  # every query cached now
            enc = timed_batches(lambda b: emb.encode(b), lat_queries, batch)
            row["hybrid_batch_p50_ms"] = pct(cold, 50)
            row["hybrid_batch_p99_ms"] = pct(cold, 99)
            row["hybrid_batch_cpu_p50_ms"] = pct(cold.cpu, 50)
            row["hybrid_batch_p50_ms_cached_queries"] = pct(warm, 50)
            row["encode_batch_p50_ms"] = pct(enc, 50)
        out["setups"][name] = row
        hybrid._pool.shutdown()
    t, q = out["setups"]["torch"]["hybrid"], out["setups"]["onnx-int8"]["hybrid"]
    out["hybrid_all@10_delta_int8_minus_torch"] = {ds: round(q[ds]["all@10"] - t[ds]["all@10"], 4) for ds in t}
    out["note"] = (f"all dev questions with supporting titles, over the {len(titles)}-passage corpus "
                   f"{ix.name!r}; latency = search_batch of 8 dev questions (docstore reads and snippets "
                   "included), query cache emptied before each batch unless 'cached'")
    report["quality"] = out


class ModDocs:
    """The real docstore seen through row % n: the perturbed copy c of passage i reads passage i's text."""

    def __init__(self, docs, n: int):
        self.docs, self.n = docs, n

    def get_rows(self, rows):
        return self.docs.get_rows([r % self.n for r in rows])


def section_scale(ix, dev: list[dict], int8_emb, vectors: np.ndarray, scale: int, k: int, batch: int,
                  report: dict) -> None:
    """~1M passages: perturbed copies of the 28k real ones on both sides, searched end to end.

    Lexical: copy c of passage i keeps each of its stems with probability 0.9 and gains a copy tag, so
    posting lists and document lengths grow as in a 36x larger corpus of the same kind of text. Dense:
    copy c of embedding i is the real embedding of passage i (the index's) plus Gaussian noise sized for
    cosine ~0.9 to the original (clusters like real topics, not uniform noise, so IVF lists are as
    unbalanced as real ones). Queries are real dev questions encoded by the int8 embedder; results carry
    real snippets (copy c of passage i shows passage i's text).
    """

    from sleuth.search import lexical as lexical_mod

    rng = np.random.default_rng(0)
    titles = [p.title for p in ix.docs]
    texts = [p.text for p in ix.docs]
    n_real = len(titles)
    copies = max(1, round(scale / n_real))
    n = n_real * copies
    an = lexical_mod.analyzer()
    vocab: dict[str, int] = {}
    body = [np.array([vocab.setdefault(s, len(vocab)) for s in an.stems(a) + an.stems(b)], dtype=np.int32)
            for a, b in zip(titles, texts)]
    title = [np.array([vocab.setdefault(s, len(vocab)) for s in an.stems(a)], dtype=np.int32) for a in titles]
    cfg = lexical_mod.LexicalConfig()
    t = time.perf_counter()
    fields = perturbed_bm25({"body": body, "title": title}, vocab, copies, rng, cfg)
    lex_build = time.perf_counter() - t
    mdocs = ModDocs(ix.docs, n_real)
    lex = lexical_mod.LexicalEngine(ix.name, mdocs, fields["body"], fields["title"], cfg)

    big = perturbed_copies(vectors, copies, rng)
    t = time.perf_counter()
    ivf = build_faiss(big, DenseConfig())
    ivf_build = time.perf_counter() - t
    del big
    gc.collect()
    dense = DenseEngine(ix.name, mdocs, ivf, lambda: int8_emb)
    hybrid = HybridEngine(lex, dense)
    lat_queries = [d["question"] for d in dev]
    cold = timed_batches(lambda b: hybrid.search_batch(b, k), lat_queries, batch, before=dense.clear_cache)
    lex_only = timed_batches(lambda b: lex.rank(b, hybrid.config.pool), lat_queries, batch)
    dense_only = timed_batches(lambda b: dense.rank(b, hybrid.config.pool), lat_queries, batch,
                               before=dense.clear_cache)
    report["scale"] = {
        "passages": n, "copies": copies, "how": section_scale.__doc__.split("\n\n", 1)[1].strip(),
        "lexical_index_seconds": round(lex_build, 1), "ivf": type(ivf).__name__, "nlist": int(getattr(ivf, "nlist", 0)),
        "nprobe": int(getattr(ivf, "nprobe", 0)), "ivf_build_seconds": round(ivf_build, 1),
        "hybrid_batch_p50_ms": pct(cold, 50), "hybrid_batch_p99_ms": pct(cold, 99),
        "hybrid_batch_cpu_p50_ms": pct(cold.cpu, 50),
        "lexical_rank_batch_p50_ms": pct(lex_only, 50), "dense_rank_batch_p50_ms": pct(dense_only, 50),
        "note": "search_batch of 8 dev questions with snippets, query cache emptied before each batch",
    }
    hybrid._pool.shutdown()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", default="passages", help="an index embedded by the PyTorch path (today's)")
    ap.add_argument("--dev", type=Path, default=paths.shared_data() / "qa" / "dev.jsonl")
    ap.add_argument("--sample", type=int, default=512, help="passages in the throughput section (0: skip it)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--subset", type=int, default=0,
                    help="quality on this many passages (all supporting ones + random) instead of the corpus")
    ap.add_argument("--int8-index", default=None,
                    help="take the full corpus's int8 vectors from this index (`sleuth index SOURCE --name N`, same "
                         "passages) instead of embedding them here; its build time is reported as the int8 rate")
    ap.add_argument("--no-scale", action="store_true")
    ap.add_argument("--scale", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=OUT)
    ns = ap.parse_args(argv)

    t0 = time.perf_counter()

    def save(final: bool = False) -> None:
        """Written after every section: a long run that is stopped keeps what it measured."""
        report["complete"] = final
        report["machine"]["loadavg_at_end"] = loadavg()
        report["benchmark_seconds"] = round(time.perf_counter() - t0, 1)
        ns.out.parent.mkdir(parents=True, exist_ok=True)
        ns.out.write_text(json.dumps(report, indent=1))

    report: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "platform": platform.platform(), "loadavg_at_start": loadavg(),
                                "niceness": os.nice(0), "cpu": cpu_info()},
                    "command": "nice -n 5 .venv/bin/python benchmarks/embedding.py " + " ".join(argv or sys.argv[1:])}
    ix = open_index(ns.index)
    made_by = ix.meta["engines"]["dense"].get("embedder", "torch")
    if made_by != "torch" and not ns.no_quality:   # throughput alone only needs the passages
        raise SystemExit(f"index {ns.index!r} was embedded by {made_by}; this benchmark compares against an index "
                         "embedded by the PyTorch path (today's): build one with `sleuth index SOURCE --embedder torch`")
    max_tokens = ix.meta["engines"]["dense"]["max_tokens"]
    embedders = {"torch": get_embedder("torch", max_tokens), "onnx-int8": get_embedder("onnx-int8", max_tokens)}
    report["embedders"] = {"torch": "sentence-transformers all-MiniLM-L6-v2, PyTorch float32, batches of 64 "
                                    "sorted by length (the build's path before onnx-int8)",
                           "onnx-int8": "the same model exported to ONNX, fused, int8 dynamic quantisation per "
                                        "channel, ONNX Runtime, one text per run (no padding); its queries "
                                        "(encode) through the same export's float32 graph",
                           "onnx_model": str(embedders["onnx-int8"].path), "max_tokens": max_tokens}
    count = ix.meta["count"]
    rows = list(range(0, count, max(1, count // max(1, ns.sample))))[:ns.sample]
    sample = [passage_text(p.title, p.text) for p in ix.docs.get_rows(rows)]
    if ns.sample:
        print(f"throughput on {len(sample)} passages x {ns.rounds} rounds", flush=True)
        section_throughput(sample, embedders, ns.rounds, report)
        print(json.dumps(report["throughput"]), flush=True)
        save()
    dev = [json.loads(line) for line in ns.dev.read_text().splitlines() if line.strip()]
    torch_vectors = np.load(ix.path / "dense" / "embeddings.npy")
    if not ns.no_quality:
        corpus, corpus_torch, subset = ix, torch_vectors, None
        if ns.subset:
            corpus, corpus_torch, subset = subset_corpus(ix, dev, ns.subset, torch_vectors)
        texts = [passage_text(p.title, p.text) for p in corpus.docs]
        # The corpus is embedded as `sleuth index` would: every core (same vectors as one thread: each text
        # runs alone), a rate for information; the ratio above is the like-for-like one.
        threads = os.environ.pop("SLEUTH_THREADS", None)
        corpus_emb = OnnxEmbedder(max_tokens)
        if threads is not None:
            os.environ["SLEUTH_THREADS"] = threads
        if ns.int8_index and not subset:
            vectors, report["int8_corpus"] = int8_index_vectors(ix, ns.int8_index)
        else:
            print(f"int8 embeddings of {len(texts)} passages ({corpus_emb.workers} workers)", flush=True)
            vectors, secs, cached = corpus_int8_embeddings(corpus.name, texts, corpus_emb)
            report["int8_corpus"] = {"passages": len(texts), "workers": corpus_emb.workers,
                                     "seconds": round(secs, 1), "reused_from_cache": cached,
                                     "passages_per_s_wall": round(len(texts) / secs, 1) if secs else None,
                                     "subset": subset}
        print("quality and latency", flush=True)
        section_quality(corpus, dev, embedders["torch"], embedders["onnx-int8"], corpus_torch, vectors, 10, 8,
                        report)
        if subset:
            report["quality"]["subset"] = {**subset, "why": "embedding the full 28k corpus with int8 takes too "
                                           "long on this shared machine; all@10 here is over the subset, so "
                                           "compare the torch and int8 rows with each other, not with the "
                                           "full-corpus numbers of benchmarks/results/retrieval.json"}
        print(json.dumps(report["quality"]["hybrid_all@10_delta_int8_minus_torch"]), flush=True)
        save()
        if subset:  # latency on the full 28k index too (the quality rows above ran on the subset)
            full = {}
            for kind, emb in embedders.items():
                dense = flat_engine(ix, torch_vectors, emb)  # vectors do not change the cost
                hybrid = HybridEngine(ix.engine("lexical"), dense)
                lq = [d["question"] for d in dev]
                cold = timed_batches(lambda b: hybrid.search_batch(b, 10), lq, 8, before=dense.clear_cache)
                full[kind] = {"hybrid_batch_p50_ms": pct(cold, 50), "hybrid_batch_p99_ms": pct(cold, 99),
                              "hybrid_batch_cpu_p50_ms": pct(cold.cpu, 50)}
                hybrid._pool.shutdown()
            full["note"] = (f"the full {ix.meta['count']}-passage index's lexical side and docstore, its stored "
                            "vectors (latency does not depend on their values), queries encoded by each embedder, "
                            "query cache emptied before each batch")
            report["latency_full_index"] = full
            print(json.dumps(full), flush=True)
            save()
    if not ns.no_scale:
        print(f"scale: ~{ns.scale} passages", flush=True)
        section_scale(ix, dev, embedders["onnx-int8"], torch_vectors, ns.scale, 10, 8, report)
        print(json.dumps({k: v for k, v in report["scale"].items() if k != "how"}), flush=True)
    save(final=True)
    print(f"wrote {ns.out} in {report['benchmark_seconds']}s")
    return report


if __name__ == "__main__":
    main()
