"""Retrieval benchmark on the offline corpus (28k passages) and the dev questions.

Measures, side by side in one run:
  * quality: any@5, any@10, all@10 per dataset, by supporting titles (a retrieved passage counts when its
    title equals a supporting title, case-insensitively; rows without supporting titles are skipped);
  * latency: p50/p99 of an 8-query batch through each engine's search_batch (results with snippets);
  * the index: build seconds per stage and size on disk;
  * scaling to ~1M passages: BM25 build time and query latency on perturbed copies of the real corpus,
    and dense query latency on perturbed copies of the real embeddings (1M passages are NOT embedded:
    MiniLM on two CPU cores does ~50 passages/s, so that would take hours).

Engines: ``bm25s-plain`` (the baseline: bm25s defaults over "title\\ntext", PyStemmer + English stopwords,
one query at a time), ``lexical`` (ours: title-aware BM25, batched), ``dense`` (MiniLM + faiss) and
``hybrid`` (weighted RRF of both). The fusion settings were chosen on these same dev questions (the
sweep is printed and saved), so hybrid's numbers are tuned-on-dev numbers.

Run: nice -n 10 .venv/bin/python benchmarks/retrieval.py [--rebuild] [--scale 1000000] [--no-scale]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout, no install needed
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from sleuth import paths  # noqa: E402
from sleuth.search.index import build_index, dir_size, open_index  # noqa: E402
from sleuth.search.hybrid import rrf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    corpus: Path = field(default_factory=lambda: paths.shared_data() / "corpus" / "passages.jsonl.gz")
    """Passages to index (the offline corpus)."""
    dev: Path = field(default_factory=lambda: paths.shared_data() / "qa" / "dev.jsonl")
    """Questions with supporting titles."""
    index: str = "passages"
    """Index name; reused when it exists unless --rebuild."""
    rebuild: bool = False
    batch: int = 8
    """Queries per batch for latency."""
    k: int = 10
    scale: int = 1_000_000
    """Passages in the scaling section."""
    no_scale: bool = False
    out: Path = ROOT / "benchmarks" / "results" / "retrieval.json"


# ---------------------------------------------------------------------------------------------- helpers

def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)) * 1000, 2)  # ms


def perturbed_bm25(fields: dict, vocab: dict[str, int], copies: int, rng, cfg) -> dict:
    """One bm25s index per field over ``copies`` copies of its passages (token-id arrays): copy 0 as is, copy c
    dropping ~10% of its tokens at random and gaining a copy tag token — a large lexical index with the real
    corpus's term statistics, for latency at scale."""
    import bm25s

    base = len(vocab)
    vocab_all = {**vocab, **{f"copy{c}": base + c for c in range(copies)}}
    out = {}
    for name, ids_list in fields.items():
        docs = [ids.tolist() if c == 0 else ids[rng.random(len(ids)) > 0.1].tolist() + [base + c]
                for c in range(copies) for ids in ids_list]
        bm = bm25s.BM25(k1=cfg.k1, b=cfg.b, method=cfg.method)
        bm.index((docs, dict(vocab_all)), create_empty_token=False, show_progress=False)
        del docs
        gc.collect()
        out[name] = bm
    return out


def perturbed_copies(vectors, copies: int, rng):
    """The real vectors, then ``copies - 1`` noisy copies of them (noise sized for cosine ~0.9 to the original,
    re-normalised): a large index with the real vectors' geometry, for latency at scale."""
    n_real, d = vectors.shape
    sigma = np.float32(np.sqrt((1 / 0.9 ** 2 - 1) / d))
    big = np.empty((n_real * copies, d), dtype=np.float32)
    big[:n_real] = vectors
    for c in range(1, copies):
        block = vectors + sigma * rng.standard_normal(vectors.shape, dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        big[c * n_real:(c + 1) * n_real] = block
    return big


def batches(xs: list, n: int) -> list[list]:
    return [xs[i:i + n] for i in range(0, len(xs), n)]


def quality(dev: list[dict], ranked_titles: list[list[str]]) -> dict:
    """Per dataset: any@5, any@10, all@10 (titles compared case-insensitively)."""
    out: dict[str, dict] = {}
    for ds in sorted({d["dataset"] for d in dev}):
        rows = [(d, t) for d, t in zip(dev, ranked_titles) if d["dataset"] == ds]
        m = {"n": len(rows), "any@5": 0.0, "any@10": 0.0, "all@10": 0.0}
        for d, titles in rows:
            sup = {s.lower() for s in d["supporting_titles"]}
            top5, top10 = {t.lower() for t in titles[:5]}, {t.lower() for t in titles[:10]}
            m["any@5"] += bool(sup & top5)
            m["any@10"] += bool(sup & top10)
            m["all@10"] += sup <= top10
        for key in ("any@5", "any@10", "all@10"):
            m[key] = round(m[key] / max(1, m["n"]), 4)
        out[ds] = m
    return out


class Timings(list):
    """Wall seconds per batch (the list) plus the process CPU seconds of each batch in ``cpu``.

    CPU time is the contention-robust number on a shared machine: wall time there includes waiting for
    other jobs' processes, CPU time only this process's own work (all its threads).
    """
    cpu: list[float]


def timed_batches(fn, queries: list[str], size: int, before=None) -> Timings:
    """Time full batches; ``before`` runs untimed ahead of each (e.g. to empty a query cache)."""
    fn([f"warm-up query {i}" for i in range(size)])  # lazy model load, page cache
    out = Timings()
    out.cpu = []
    for b in batches(queries, size):
        if len(b) < size:
            continue
        if before:
            before()
        t, c = time.perf_counter(), time.process_time()
        fn(b)
        out.append(time.perf_counter() - t)
        out.cpu.append(time.process_time() - c)
    return out


# ---------------------------------------------------------------------------------------------- baseline

class PlainBM25:
    """bm25s as its README shows it: tokenize with stemmer + stopwords, index, retrieve one query at a time."""

    def __init__(self, titles: list[str], texts: list[str]):
        import bm25s
        import Stemmer

        self.bm25s = bm25s
        self.stemmer = Stemmer.Stemmer("english")
        t = time.perf_counter()
        tokens = bm25s.tokenize([f"{a}\n{b}" for a, b in zip(titles, texts)], stopwords="en",
                                stemmer=self.stemmer, show_progress=False)
        self.retriever = bm25s.BM25()
        self.retriever.index(tokens, show_progress=False)
        self.build_seconds = time.perf_counter() - t

    def rank(self, query: str, k: int) -> list[int]:
        qt = self.bm25s.tokenize([query], stopwords="en", stemmer=self.stemmer, show_progress=False)
        docs, _ = self.retriever.retrieve(qt, k=k, show_progress=False)
        return [int(x) for x in docs[0]]


# ---------------------------------------------------------------------------------------------- main sections

def section_quality(args: Args, ix, dev: list[dict], report: dict) -> None:
    titles = [p.title for p in ix.docs]
    texts = [p.text for p in ix.docs]
    dev_q = [d for d in dev if d["supporting_titles"]]
    queries = [d["question"] for d in dev_q]
    lat_queries = [d["question"] for d in dev]
    report["dev"] = {"questions": len(dev), "with_supporting_titles": len(dev_q)}

    engines: dict[str, dict] = {}
    plain = PlainBM25(titles, texts)
    ranked = [plain.rank(q, args.k) for q in queries]
    lat = timed_batches(lambda b: [plain.rank(q, args.k) for q in b], lat_queries, args.batch)
    engines["bm25s-plain"] = {"quality": quality(dev_q, [[titles[r] for r in rs] for rs in ranked]),
                              "batch_p50_ms": pct(lat, 50), "batch_p99_ms": pct(lat, 99),
                              "batch_cpu_p50_ms": pct(lat.cpu, 50),
                              "note": "one query at a time, row ids only (no snippets)",
                              "build_seconds": round(plain.build_seconds, 2)}
    del plain
    gc.collect()

    # The engines' own ranked lists, kept deep enough to replay the fusion sweep without re-searching.
    lex, dense = ix.engine("lexical"), ix.engine("dense")
    hybrid = ix.engine("hybrid")
    pool = max(100, hybrid.config.pool)
    lex_lists = lex.rank(queries, pool)
    dense_lists = [r for b in batches(queries, 64) for r in dense.rank(b, pool)]
    c = hybrid.config
    fused = [rrf([l[:c.pool], d[:c.pool]], [c.lexical_weight, c.dense_weight], c.rrf_k, args.k)
             for l, d in zip(lex_lists, dense_lists)]
    for name, eng, lists in (("lexical", lex, lex_lists), ("dense", dense, dense_lists), ("hybrid", hybrid, fused)):
        lat = timed_batches(lambda b, e=eng: e.search_batch(b, args.k), lat_queries, args.batch,
                            before=dense.clear_cache)  # no query-embedding cache hits in the timings
        engines[name] = {"quality": quality(dev_q, [[titles[r] for r, _ in rs[:args.k]] for rs in lists]),
                         "batch_p50_ms": pct(lat, 50), "batch_p99_ms": pct(lat, 99),
                         "batch_cpu_p50_ms": pct(lat.cpu, 50),
                         "note": "search_batch of the whole batch, with docstore reads and snippets"}
    # check: replayed fusion == what the engine returns
    live = [[r.passage_id for r in resp.results] for resp in hybrid.search_batch(queries[:16], args.k)]
    assert live == [[ix.docs.get_row(r).id for r, _ in f] for f in fused[:16]], "fusion replay drifted"
    engines["hybrid"]["config"] = asdict(hybrid.config)
    engines["lexical"]["config"] = asdict(lex.config)
    report["engines"] = engines

    sweep = []
    for pool_n in (50, 100):
        for rrf_k in (10, 30, 60):
            for wd in (0.5, 0.7, 1.0):
                f = [rrf([l[:pool_n], d[:pool_n]], [1.0, wd], rrf_k, args.k) for l, d in zip(lex_lists, dense_lists)]
                q = quality(dev_q, [[titles[r] for r, _ in rs] for rs in f])
                sweep.append({"pool": pool_n, "rrf_k": rrf_k, "lexical_weight": 1.0, "dense_weight": wd,
                              "all@10": {ds: m["all@10"] for ds, m in q.items()},
                              "any@10": {ds: m["any@10"] for ds, m in q.items()}})
    report["fusion_sweep"] = sweep


def section_index(ix, report: dict) -> None:
    from sleuth.search.dense import passage_text
    from sleuth.search.embedders import get_embedder

    sizes = {p.name: dir_size(p) if p.is_dir() else p.stat().st_size for p in ix.path.iterdir()}
    # The build's embed time depends on what else ran on the machine then; this is the rate right now, of
    # the embedder that made the index's vectors.
    sample = [passage_text(p.title, p.text) for p in ix.docs.get_rows(list(range(0, ix.meta["count"], 110)))]
    dense_meta = ix.meta["engines"]["dense"]
    model = get_embedder(dense_meta.get("embedder", "torch"), dense_meta["max_tokens"])
    model.embed(sample[:16])
    t = time.perf_counter()
    model.embed(sample)
    rate = len(sample) / (time.perf_counter() - t)
    report["index"] = {"name": ix.name, "count": ix.meta["count"], "build_seconds": ix.meta["build_seconds"],
                       "size_bytes": sum(sizes.values()), "size_bytes_by_part": sizes,
                       "faiss": dense_meta["faiss"], "embed_max_tokens": dense_meta["max_tokens"],
                       "embedder": model.kind,
                       "embed_passages_per_second_now": round(rate, 1),
                       "embed_seconds_estimate_at_that_rate": round(ix.meta["count"] / rate, 1)}


def section_scale(args: Args, ix, dev: list[dict], report: dict) -> None:
    """~1M passages from perturbed copies of the real ones: BM25 build + query, dense IVF build + query."""
    import faiss

    from sleuth.search import lexical as lexical_mod
    from sleuth.search.dense import DenseConfig, build_faiss

    rng = np.random.default_rng(0)
    titles = [p.title for p in ix.docs]
    texts = [p.text for p in ix.docs]
    n_real = len(titles)
    copies = max(1, round(args.scale / n_real))
    n = n_real * copies
    out: dict = {"passages": n, "copies": copies,
                 "how": "copy c of each passage drops ~10% of its tokens at random and gains a copy tag token"}
    an = lexical_mod.analyzer()

    # Tokenising is per-passage Python work, linear in the corpus: measured on the real corpus, scaled up.
    t = time.perf_counter()
    body_stems = [an.stems(a) + an.stems(b) for a, b in zip(titles, texts)]
    title_stems = [an.stems(a) for a in titles]
    tok_s = time.perf_counter() - t
    vocab: dict[str, int] = {}
    body_ids = [np.array([vocab.setdefault(s, len(vocab)) for s in d], dtype=np.int32) for d in body_stems]
    title_ids = [np.array([vocab.setdefault(s, len(vocab)) for s in d], dtype=np.int32) for d in title_stems]
    del body_stems, title_stems

    lat_queries = [d["question"] for d in dev]
    cfg = lexical_mod.LexicalConfig()
    t = time.perf_counter()
    fields = perturbed_bm25({"body": body_ids, "title": title_ids}, vocab, copies, rng, cfg)
    lex_build = time.perf_counter() - t
    eng = lexical_mod.LexicalEngine("scale", ix.docs, fields["body"], fields["title"], cfg)
    lat = timed_batches(lambda b: eng.rank(b, args.k), lat_queries, args.batch)
    out["lexical"] = {"tokenize_seconds_measured_28k": round(tok_s, 2),
                      "tokenize_seconds_extrapolated": round(tok_s * copies, 1),
                      "index_seconds": round(lex_build, 1),
                      "build_seconds_estimate": round(tok_s * copies + lex_build, 1),
                      "batch_p50_ms": pct(lat, 50), "batch_p99_ms": pct(lat, 99),
                      "note": "rank only (scores + top-k), no docstore/snippets"}
    lat28 = timed_batches(lambda b: ix.engine("lexical").rank(b, args.k), lat_queries, args.batch)
    out["lexical"]["batch_p50_ms_at_28k_rank_only"] = pct(lat28, 50)
    del eng, fields
    gc.collect()

    # Dense: perturbed copies of the real embeddings (noise sized for cosine ~0.9 to the original).
    emb = np.load(ix.path / "dense" / "embeddings.npy")
    big = perturbed_copies(emb, copies, rng)
    dense = ix.engine("dense")
    qemb = np.concatenate([dense.encode(b) for b in batches(lat_queries, 64)])
    t = time.perf_counter()
    ivf = build_faiss(big, DenseConfig())
    ivf_build = time.perf_counter() - t
    kind = type(ivf).__name__
    enc = timed_batches(lambda b: dense.encode(b), lat_queries, args.batch, before=dense.clear_cache)
    qb = [qemb[i:i + args.batch] for i in range(0, len(qemb) - args.batch + 1, args.batch)]
    flat_lat = []
    for b in qb[:20]:
        t = time.perf_counter()
        faiss.knn(b, big, args.k, metric=faiss.METRIC_INNER_PRODUCT)
        flat_lat.append(time.perf_counter() - t)
    sample = qemb[:200]
    _, exact = faiss.knn(sample, big, args.k, metric=faiss.METRIC_INNER_PRODUCT)
    default_nprobe = ivf.nprobe
    probes = {}
    for nprobe in (8, 16, 32, 64):  # the speed/recall trade-off behind DenseConfig.nprobe
        ivf.nprobe = nprobe
        lat = []
        for b in qb:
            t = time.perf_counter()
            ivf.search(b, args.k)
            lat.append(time.perf_counter() - t)
        _, approx = ivf.search(sample, args.k)
        recall = float(np.mean([len(set(a) & set(e)) / args.k for a, e in zip(approx, exact)]))
        probes[nprobe] = {"search_batch_p50_ms": pct(lat, 50), "search_batch_p99_ms": pct(lat, 99),
                          "recall@10_vs_exact": round(recall, 4)}
    ivf.nprobe = default_nprobe
    chosen = probes[default_nprobe]
    out["dense"] = {"index": kind, "nlist": int(getattr(ivf, "nlist", 0)), "nprobe": default_nprobe,
                    "build_seconds": round(ivf_build, 1), **chosen,
                    "encode_batch_p50_ms": pct(enc, 50), "encode_batch_cpu_p50_ms": pct(enc.cpu, 50),
                    "batch_p50_ms": round(chosen["search_batch_p50_ms"] + pct(enc, 50), 2),
                    "exact_flat_search_batch_p50_ms": pct(flat_lat, 50),
                    "nprobe_sweep": probes,
                    "note": "real query embeddings against perturbed copies of the 28k real passage "
                            "embeddings; 1M passages were not embedded (hours on 2 CPU cores)"}
    report["scale"] = out


def print_tables(report: dict) -> None:
    engines = report["engines"]
    dss = list(next(iter(engines.values()))["quality"])
    print("\nquality (any@5 / any@10 / all@10) and 8-query batch latency")
    print(f"{'engine':<12}" + "".join(f"{ds:>24}" for ds in dss) + f"{'p50 ms':>9}{'p99 ms':>9}{'cpu ms':>9}")
    for name, e in engines.items():
        cells = "".join(f"{q['any@5']:>8.3f}{q['any@10']:>8.3f}{q['all@10']:>8.3f}" for q in e["quality"].values())
        print(f"{name:<12}{cells}{e['batch_p50_ms']:>9.1f}{e['batch_p99_ms']:>9.1f}{e['batch_cpu_p50_ms']:>9.1f}")
    m = report["machine"]
    print(f"(load average {m['loadavg_at_start'][0]} at start, {m['loadavg_at_end'][0]} at end, on {m['cpus']} CPUs, "
          f"nice {m['niceness']}: wall times include waiting for other processes; cpu = this process's CPU time)")
    ix = report["index"]
    print(f"\nindex {ix['name']!r}: {ix['count']} passages, {ix['size_bytes'] / 2**20:.1f} MiB, "
          f"build seconds {ix['build_seconds']}, faiss {ix['faiss']}; {ix['embedder']} embedding runs at "
          f"{ix['embed_passages_per_second_now']} passages/s now (~{ix['embed_seconds_estimate_at_that_rate']}s "
          "for the corpus)")
    print("\nfusion sweep (all@10 per dataset), chosen on dev:")
    for s in report["fusion_sweep"]:
        print(f"  pool {s['pool']:>3} k {s['rrf_k']:>2} weights {s['lexical_weight']}/{s['dense_weight']}: "
              + "  ".join(f"{ds} {v:.3f}" for ds, v in s["all@10"].items()))
    if "scale" in report:
        s = report["scale"]
        print(f"\nscale: {s['passages']} passages ({s['copies']} perturbed copies)")
        lx, dn = s["lexical"], s["dense"]
        print(f"  lexical: index {lx['index_seconds']}s + tokenize ~{lx['tokenize_seconds_extrapolated']}s "
              f"(extrapolated from {lx['tokenize_seconds_measured_28k']}s at 28k); "
              f"batch p50 {lx['batch_p50_ms']} ms (28k: {lx['batch_p50_ms_at_28k_rank_only']} ms)")
        print(f"  dense: {dn['index']} nlist {dn['nlist']} nprobe {dn['nprobe']}, build {dn['build_seconds']}s, "
              f"search p50 {dn['search_batch_p50_ms']} ms + encode {dn['encode_batch_p50_ms']} ms; exact flat "
              f"{dn['exact_flat_search_batch_p50_ms']} ms; recall@10 vs exact {dn['recall@10_vs_exact']}")
        print("  nprobe sweep: " + "; ".join(f"{p}: {v['search_batch_p50_ms']} ms recall {v['recall@10_vs_exact']}"
                                           for p, v in dn["nprobe_sweep"].items()))
        print(f"  ({dn['note']})")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--no-scale", action="store_true")
    ap.add_argument("--scale", type=int, default=Args.scale)
    ap.add_argument("--out", type=Path, default=Args.out)
    ns = ap.parse_args(argv)
    args = Args(rebuild=ns.rebuild, no_scale=ns.no_scale, scale=ns.scale, out=ns.out)

    t0 = time.perf_counter()
    report: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "platform": platform.platform(),
                                "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
                                "niceness": os.nice(0)}}
    try:
        if args.rebuild:
            raise FileNotFoundError
        ix = open_index(args.index)
        if not ix.has_dense:  # e.g. built elsewhere with --no-dense: add the embeddings
            raise FileNotFoundError
        report["index_reused"] = True
    except FileNotFoundError:
        build_index(args.corpus, args.index, progress=sys.stderr.isatty())
        ix = open_index(args.index)
        report["index_reused"] = False
    dev = [json.loads(line) for line in args.dev.read_text().splitlines() if line.strip()]
    section_index(ix, report)
    section_quality(args, ix, dev, report)
    if not args.no_scale:
        section_scale(args, ix, dev, report)
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["benchmark_seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print_tables(report)
    print(f"\nwrote {args.out} in {report['benchmark_seconds']}s")
    return report


if __name__ == "__main__":
    main()
