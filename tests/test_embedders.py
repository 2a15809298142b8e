"""The embedders behind dense search: the real onnx-int8 export of the shipped MiniLM files against the
PyTorch path, the fallback when ONNX Runtime is missing, which embedder an index records and uses for its
queries (with the message to rebuild when they differ), rebuilds that reuse nothing stale, and the LRU
query cache."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from sleuth import paths
from sleuth.search import dense as dense_mod
from sleuth.search import embedders as emb_mod
from sleuth.search.dense import DenseConfig, DenseEngine, build_faiss
from sleuth.search.index import build_index, open_index

PASSAGES = [
    {"id": "curie", "title": "Marie Curie", "text": "Marie Curie was a Polish and naturalised-French physicist "
     "and chemist who conducted pioneering research on radioactivity. She won two Nobel Prizes."},
    {"id": "sahara", "title": "Sahara", "text": "The Sahara is a desert spanning North Africa. With an area of "
     "9,200,000 square kilometres, it is the largest hot desert in the world."},
    {"id": "everest", "title": "Mount Everest", "text": "Mount Everest is Earth's highest mountain above sea "
     "level, located in the Mahalangur Himal sub-range of the Himalayas."},
    {"id": "violin", "title": "Violin", "text": "The violin is a wooden chordophone, the smallest and "
     "highest-pitched instrument in the string family."},
]
QUERIES = [("woman scientist who studied radiation", "curie"), ("huge sandy dry region in Africa", "sahara"),
           ("tallest peak on the planet", "everest"), ("fiddle string instrument", "violin")]


@pytest.fixture(scope="module")
def onnx():
    return emb_mod.get_embedder("onnx-int8")


@pytest.fixture(scope="module")
def torch_emb():
    return emb_mod.get_embedder("torch")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SLEUTH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def jsonl(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in PASSAGES))
    return p


def disable_onnxruntime(monkeypatch):
    """ONNX Runtime not importable, and no embedder loaded yet in this process."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    monkeypatch.setattr(emb_mod, "_EMBEDDERS", {})
    monkeypatch.setattr(emb_mod, "_FAILED", {})
    monkeypatch.setattr(dense_mod, "_WARNED", set())


def test_onnx_int8_agrees_with_pytorch_on_the_real_model(onnx, torch_emb):
    assert onnx.kind == "onnx-int8" and onnx.dim == torch_emb.dim == 384
    assert onnx.path.is_file() and onnx.path.is_relative_to(paths.models_dir())
    texts = [f"{p['title']}\n{p['text']}" for p in PASSAGES] + ["x", "a much longer question " * 40]
    a, b = onnx.embed(texts), torch_emb.embed(texts)
    assert a.dtype == np.float32 and np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-4)
    cos = (a * b).sum(axis=1)
    assert cos.min() > 0.97, cos  # int8 is close to float32, not equal
    assert cos.max() < 0.99999  # and really is a different computation
    # the order of the texts changes no row
    assert np.abs(onnx.embed(texts[::-1], batch_size=2)[::-1] - a).max() < 1e-4
    # queries go through the float32 graph of the same export: PyTorch's vectors up to rounding
    q = onnx.encode(texts[:3])
    assert q.dtype == np.float32 and (q * b[:3]).sum(axis=1).min() > 0.9999
    assert np.abs(q - a[:3]).max() > 1e-3


def test_workers_pull_texts_keep_order_report_progress_and_raise_errors(onnx, monkeypatch):
    """Two workers pulling from one iterator give each row its own text's vector, progress sums to the
    number of texts, and a failing run is raised to the caller (the other worker stops pulling)."""
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"{p['title']}\n{p['text']}" for p in PASSAGES] * 5 + [f"text number {i}" for i in range(13)]
    alone = np.stack([onnx._run(e.ids) for e in onnx.tokenizer.encode_batch(texts)])
    pool = ThreadPoolExecutor(2)
    monkeypatch.setattr(onnx, "_pool", pool)
    monkeypatch.setattr(onnx, "workers", 2)
    seen: list[int] = []
    got = onnx.embed(texts, batch_size=4, on_progress=seen.append)
    assert np.abs(got - alone).max() < 1e-6 and sum(seen) == len(texts)
    calls = [0]
    real = onnx._run

    def flaky(ids, session=None):
        calls[0] += 1
        if calls[0] == 7:
            raise RuntimeError("run failed")
        return real(ids, session)

    monkeypatch.setattr(onnx, "_run", flaky)
    with pytest.raises(RuntimeError, match="run failed"):
        onnx.embed(texts)
    assert calls[0] <= 8  # the other worker stopped pulling after its current text
    pool.shutdown()


def test_export_keeps_layer_norm_unfused(onnx):
    """The export writes residual + LayerNorm as plain nodes (ONNX Runtime's fused SkipLayerNormalization kernel
    was ~6x slower on CPU) and the session keeps the runtime from fusing them back."""
    import onnx as onnx_lib
    import onnxruntime as ort

    ops = {n.op_type for n in onnx_lib.load(str(onnx.path)).graph.node}
    assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops
    # GELU in its tanh form; the embedding tables in float32, the products in int8
    assert {"FastGelu", "EmbedLayerNormalization", "QAttention"} <= ops
    assert not ops & {"BiasGelu", "Gelu", "QEmbedLayerNormalization"}
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(onnx.path.with_name("optimized-check.onnx"))
    try:
        ort.InferenceSession(str(onnx.path), so, providers=["CPUExecutionProvider"],
                             disabled_optimizers=emb_mod.SKIP_FUSION)
        ops = {n.op_type for n in onnx_lib.load(so.optimized_model_filepath).graph.node}
    finally:
        Path(so.optimized_model_filepath).unlink(missing_ok=True)
    assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops


def test_fallback_to_pytorch_when_onnxruntime_is_missing(monkeypatch, caplog):
    disable_onnxruntime(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="sleuth.search.embedders"):
        emb = emb_mod.get_embedder("auto")
    assert emb.kind == "torch"
    assert "onnx-int8 embedder unavailable" in caplog.text and "PyTorch" in caplog.text
    with pytest.raises(RuntimeError, match="onnx-int8 embedder unavailable"):
        emb_mod.get_embedder("onnx-int8")
    assert not emb_mod.available("onnx-int8")


def test_index_records_its_embedder_and_searches_with_it(home, jsonl, onnx):
    build_index(jsonl, name="t", progress=False)
    ix = open_index("t")
    assert ix.meta["engines"]["dense"]["embedder"] == "onnx-int8"
    eng = ix.engine("dense")
    for resp, (_, want) in zip(eng.search_batch([q for q, _ in QUERIES], k=2), QUERIES):
        assert resp.results[0].passage_id == want
    assert eng._embedder() is onnx
    stored = np.load(ix.path / "dense" / "embeddings.npy")
    assert np.abs(stored - onnx.embed([f"{p['title']}\n{p['text']}" for p in PASSAGES])).max() < 1e-5


def test_pytorch_index_keeps_pytorch_queries_and_says_how_to_rebuild(home, jsonl, torch_emb, caplog,
                                                                     monkeypatch):
    monkeypatch.setattr(dense_mod, "_WARNED", set())
    build_index(jsonl, name="old", progress=False, dense_config=DenseConfig(embedder="torch"))
    meta_file = paths.index_dir("old") / "meta.json"
    meta = json.loads(meta_file.read_text())
    del meta["engines"]["dense"]["embedder"]  # as written before indexes recorded their embedder
    meta_file.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="sleuth.search.dense"):
        eng = open_index("old").engine("dense")
        assert eng.search_batch(["tallest peak on the planet"], 1)[0].results[0].passage_id == "everest"
    assert eng._embedder() is torch_emb
    assert "embedded by the PyTorch embedder" in caplog.text and "sleuth index SOURCE --name old" in caplog.text


def test_int8_index_without_onnxruntime_warns_and_still_searches(home, jsonl, onnx, monkeypatch, caplog):
    build_index(jsonl, name="t", progress=False)
    disable_onnxruntime(monkeypatch)
    with caplog.at_level(logging.WARNING):
        eng = open_index("t").engine("dense")
        top = eng.search_batch(["tallest peak on the planet"], 1)[0].results[0].passage_id
    assert top == "everest"
    assert eng._embedder().kind == "torch"
    assert "made by the onnx-int8 embedder, which cannot run here" in caplog.text
    assert "rebuild it with `sleuth index SOURCE --name t`" in caplog.text


def test_other_model_is_refused_with_a_rebuild_message(home, jsonl, onnx):
    build_index(jsonl, name="t", progress=False)
    meta_file = paths.index_dir("t") / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["engines"]["dense"]["model"] = "some/other-model"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"some/other-model.*rebuild it with `sleuth index SOURCE --name t`"):
        open_index("t").engine("hybrid")


def test_rebuild_with_another_embedder_reuses_nothing(home, jsonl, onnx, torch_emb):
    build_index(jsonl, name="t", progress=False, dense_config=DenseConfig(embedder="torch"))
    build_index(jsonl, name="t", progress=False)
    d = open_index("t").meta["engines"]["dense"]
    assert (d["embedder"], d["embedded"], d["reused"]) == ("onnx-int8", len(PASSAGES), 0)
    build_index(jsonl, name="t", progress=False)
    d = open_index("t").meta["engines"]["dense"]
    assert (d["embedded"], d["reused"]) == (0, len(PASSAGES))


def test_rebuild_after_another_export_reembeds(home, jsonl, onnx, monkeypatch):
    """An index records its embedder's version (the int8 export recipe); a rebuild after the export changed
    re-embeds every passage instead of keeping the old export's vectors."""
    build_index(jsonl, name="t", progress=False, use_prebuilt=False)
    d = open_index("t").meta["engines"]["dense"]
    assert d["embedder_version"] == emb_mod.OnnxEmbedder.version and d["embedded"] == len(PASSAGES)
    monkeypatch.setattr(type(onnx), "version", "another-export")
    build_index(jsonl, name="t", progress=False, use_prebuilt=False)
    d = open_index("t").meta["engines"]["dense"]
    assert (d["embedder_version"], d["embedded"], d["reused"]) == ("another-export", len(PASSAGES), 0)


class Counting:
    """The real embedder, with a record of what it was asked to encode."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.kind, self.dim = inner.kind, inner.dim

    def encode(self, texts):
        self.calls.append(list(texts))
        return self.inner.encode(texts)


def test_query_cache_is_lru_and_batches_only_new_queries(onnx):
    vectors = onnx.embed([f"{p['title']}\n{p['text']}" for p in PASSAGES])
    counting = Counting(onnx)
    eng = DenseEngine("t", None, build_faiss(vectors, DenseConfig()), lambda: counting, DenseConfig(query_cache=2))
    a, b, c = "tallest peak", "sandy desert", "string instrument"
    first = eng.encode([a, b, a])
    assert counting.calls == [[a, b]]  # one batch, duplicates encoded once
    again = eng.encode([a])
    assert counting.calls == [[a, b]] and np.array_equal(again[0], first[0])  # hit: same vector, no encode
    eng.encode([c])  # cache full: the least recently used (b, since a was just used) goes
    eng.encode([a, b])
    assert counting.calls == [[a, b], [c], [b]]
    eng.clear_cache()
    eng.encode([a])
    assert counting.calls[-1] == [a]
