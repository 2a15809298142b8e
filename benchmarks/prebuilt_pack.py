"""The shipped embedding pack against computing the embeddings: build time and retrieval agreement, one run.

Builds the embedded corpus's index twice in fresh state directories with the default embedder — once computing
every vector (the pack hidden), once with sleuth's prebuilt pack — and compares:
* build seconds (the one-time ONNX export and model load are in both);
* the vectors: cosine between each passage's computed vector and its pack vector (mean, minimum);
* search: for the first N dev questions (../shared/data), the overlap of the top-10 passage ids of the two
  indexes, dense and hybrid (1.0 = identical result sets).

Run: .venv/bin/python benchmarks/prebuilt_pack.py [--queries 300]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "prebuilt_pack.json"


def build(home: Path, use_pack: bool) -> tuple[float, dict]:
    from sleuth.search.index import build_index, open_index

    os.environ["SLEUTH_HOME"] = str(home)
    t = time.perf_counter()
    build_index(None, "wiki", progress=False, use_prebuilt=use_pack)
    return time.perf_counter() - t, open_index("wiki").meta


def top_ids(home: Path, queries: list[str], kind: str) -> list[list[str]]:
    from sleuth.search.index import open_index

    os.environ["SLEUTH_HOME"] = str(home)
    eng = open_index("wiki").engine(kind)
    return [[r.url for r in resp.results] for resp in eng.search_batch(queries, 10)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--out", type=Path, default=OUT)
    ns = ap.parse_args(argv)

    from sleuth.tasks.loaders import load_tasks

    models = os.environ.get("SLEUTH_MODELS") or str(Path(os.environ.get("SLEUTH_HOME", Path.home() / ".cache/sleuth"))
                                                     / "models")
    os.environ["SLEUTH_MODELS"] = models        # the converted model files are shared, not counted
    tmp = Path(tempfile.mkdtemp(prefix="sleuth-pack-"))
    try:
        exact_home, pack_home = tmp / "exact", tmp / "pack"
        t_exact, m_exact = build(exact_home, use_pack=False)
        t_pack, m_pack = build(pack_home, use_pack=True)
        d_exact, d_pack = m_exact["engines"]["dense"], m_pack["engines"]["dense"]
        a = np.load(exact_home / "indexes" / "wiki" / "dense" / "embeddings.npy")
        b = np.load(pack_home / "indexes" / "wiki" / "dense" / "embeddings.npy")
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        queries = [t.question for t in load_tasks("dev")][: ns.queries]
        overlap = {}
        for kind in ("dense", "hybrid"):
            x, y = top_ids(exact_home, queries, kind), top_ids(pack_home, queries, kind)
            ov = [len(set(p) & set(q)) / max(len(p), 1) for p, q in zip(x, y)]
            overlap[kind] = {"mean": float(np.mean(ov)), "identical_top10_sets": float(np.mean([o == 1.0 for o in ov])),
                             "identical_top1": float(np.mean([p[:1] == q[:1] for p, q in zip(x, y)]))}
        res = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg": os.getloadavg()},
            "embedder": d_exact.get("embedder"), "passages": m_exact["count"],
            "build_seconds": {"computed": round(t_exact, 1), "with_pack": round(t_pack, 1),
                              "computed_stages": m_exact["build_seconds"], "pack_stages": m_pack["build_seconds"]},
            "vectors": {"computed": d_exact["embedded"], "from_pack": d_pack.get("prebuilt", 0),
                        "computed_with_pack": d_pack["embedded"],
                        "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())},
            "top10_overlap": overlap, "queries": len(queries), "query_source": "dev questions (../shared/data)",
            "command": "benchmarks/prebuilt_pack.py",
        }
        ns.out.write_text(json.dumps(res, indent=1))
        print(json.dumps(res, indent=1))
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
