"""Prebuilt passage embeddings shipped with sleuth, keyed by passage content, for corpora every user indexes.

Why: on a fresh 2-core machine, embedding the embedded corpus's 10,033 passages is most of the first run's
wait (~130 s of ~200 s for `make demo`, benchmarks/results/demo_time.json). Those passages are the same bytes
on every machine (a pinned package), so their vectors are computed once, by the command below, and shipped.

A pack holds, for one embedder (model, backend and its version, truncation), each passage's content hash (``corpus.content_hash``
of title and text, first 16 hex digits) and its vector stored as int8 with one float scale per row (a quarter of
float32's size; retrieval agreement with the exact vectors is measured by ``benchmarks/prebuilt_pack.py``).
The index builder looks passages up by hash and embeds only the ones it does not find, so a pack can never
give a passage another passage's vector, and an edited or different corpus simply misses (and is embedded).
A pack for another embedder than the one in use is ignored: vectors of different backends are not mixed.

Rebuild (after changing the corpus package or the embedder)::

    sleuth index --embedded            # with the default embedder
    python -m sleuth.search.prebuilt wiki
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

PACK_DIR = Path(__file__).resolve().parent / "prebuilt"
KEY_CHARS = 16      # 64 bits of the sha1 content hash: collisions among millions of passages are negligible


def pack_name(model: str, embedder: str, max_tokens: int) -> str:
    return f"{model.split('/')[-1]}-{embedder}-{max_tokens}"


def quantize(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 rows and their float32 scales (max |x| / 127 per row)."""
    scale = np.abs(emb).max(axis=1, keepdims=True).astype(np.float32) / 127.0
    scale[scale == 0] = 1.0
    return np.clip(np.rint(emb / scale), -127, 127).astype(np.int8), scale[:, 0]


def dequantize(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Rows back to float32, re-normalised to unit length (the dense index stores unit vectors)."""
    x = q.astype(np.float32) * scale[:, None].astype(np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    norm[norm == 0] = 1.0
    return x / norm


def write_pack(hashes: list[str], emb: np.ndarray, model: str, embedder: str, max_tokens: int,
               out_dir: Path | None = None, note: str = "", version: str | None = None) -> Path:
    """Write a pack for ``emb`` (rows in the order of ``hashes``); returns its path."""
    if len(hashes) != emb.shape[0]:
        raise ValueError(f"{len(hashes)} hashes for {emb.shape[0]} vectors")
    keys = np.array([h[:KEY_CHARS] for h in hashes], dtype=f"S{KEY_CHARS}")
    if len(set(keys.tolist())) != len(keys):
        raise ValueError("two passages share a content-hash key; a pack needs distinct passages")
    q, scale = quantize(np.asarray(emb, dtype=np.float32))
    out_dir = out_dir or PACK_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{pack_name(model, embedder, max_tokens)}.npz"
    meta = {"model": model, "embedder": embedder, "embedder_version": version, "max_tokens": max_tokens,
            "dim": int(emb.shape[1]),
            "count": int(emb.shape[0]), "quantization": "int8, one float32 scale per row", "note": note}
    np.savez_compressed(path, keys=keys, q=q, scale=scale.astype(np.float32), meta=np.array(json.dumps(meta)))
    return path


def load_pack(model: str, embedder: str, max_tokens: int, pack_dir: Path | None = None,
              version: str | None = None) -> tuple[dict[str, int], np.ndarray, np.ndarray] | None:
    """(content-hash key -> row, int8 rows, scales) of the shipped pack for this embedder, or None. A pack of
    another version of the embedder (another int8 export) is None too, like an index's vectors (index.py)."""
    path = (pack_dir or PACK_DIR) / f"{pack_name(model, embedder, max_tokens)}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            if ((meta["model"], meta["embedder"], meta.get("embedder_version"), meta["max_tokens"])
                    != (model, embedder, version, max_tokens)):
                return None
            keys, q, scale = z["keys"], z["q"], z["scale"]
    except (OSError, KeyError, ValueError):
        return None      # a damaged pack is a cache miss: every passage is embedded as without one
    return {k.decode(): i for i, k in enumerate(keys.tolist())}, q, scale


def lookup(pack: tuple[dict[str, int], np.ndarray, np.ndarray], hashes: list[str]
           ) -> tuple[list[int], np.ndarray]:
    """Positions of ``hashes`` found in the pack and their float32 unit vectors."""
    rows, q, scale = pack
    found = [(i, rows[h[:KEY_CHARS]]) for i, h in enumerate(hashes) if h[:KEY_CHARS] in rows]
    if not found:
        return [], np.zeros((0, q.shape[1]), dtype=np.float32)
    idx = np.array([r for _, r in found])
    return [i for i, _ in found], dequantize(q[idx], scale[idx])


def main(argv: list[str] | None = None) -> None:
    from sleuth.paths import index_dir

    from .docstore import DocStore

    ap = argparse.ArgumentParser(description="Write the shipped embedding pack from a built index's vectors.")
    ap.add_argument("index", help="index name (e.g. wiki, built with `sleuth index --embedded`)")
    ap.add_argument("--out", type=Path, default=None, help=f"folder (default {PACK_DIR})")
    args = ap.parse_args(argv)
    d = index_dir(args.index)
    meta = json.loads((d / "meta.json").read_text())   # index.META (index.py imports this module, not back)
    dense = meta["engines"]["dense"]
    if not dense:
        raise SystemExit(f"index {args.index!r} has no dense engine")
    emb = np.load(d / "dense" / "embeddings.npy")
    rows = DocStore(d / "docs.sqlite").hashes()
    hashes = [h for h, _ in sorted(rows.items(), key=lambda kv: kv[1])]
    path = write_pack(hashes, emb[[rows[h] for h in hashes]], dense["model"], dense.get("embedder", "torch"),
                      dense["max_tokens"], args.out, note=f"index {args.index!r} from {meta['source']}",
                      version=dense.get("embedder_version"))
    print(f"{path}: {len(hashes)} vectors, {path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
