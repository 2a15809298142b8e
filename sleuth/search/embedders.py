"""Sentence embedders for dense search: all-MiniLM-L6-v2 run two ways behind one interface.

``onnx-int8`` (the default): the model exported from the package's own files to ONNX, its operators
fused and its matrix multiplications dynamically quantised to int8, run by ONNX Runtime one text at a
time (no padding at all, and a text's vector never depends on its batch-mates). Passages go through the
int8 graph; queries through the same export's float32 graph. Why the two: a corpus is embedded once and in
bulk, so passages are where throughput counts (int8: ~4x PyTorch's passages/s), while a search encodes a
handful of ~20-token queries, where float32 costs ~18 ms more per 8-query batch. With int8 on both sides
hybrid all@10 moved by up to 4 questions per dataset against PyTorch's vectors (the quantisation error
entered twice); with float32 queries it stayed within one (benchmarks/embedding.py). ``torch``: the
sentence-transformers model in PyTorch (float32), used when ONNX Runtime is missing or the export fails (a
log line says so), and for indexes built with it.

The two kinds give different passage vectors for the same text (cosine agreement ~0.994), so an index
records which embedder (and which export of it) made its vectors and its queries are encoded by the same one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from sleuth import paths

log = logging.getLogger(__name__)

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
KINDS = ("onnx-int8", "torch")
DEFAULT_KIND = "onnx-int8"
_EXPORT_RECIPE = "bert-eager-opset17-fused-fastgelu-int8-perchannel-reducerange-fp32embed-fp32queries-v3-plain-layernorm"
"""Changes when the export below changes, so an old cached export is not reused."""

# OpenMP threads busy-wait by default. On a shared, oversubscribed CPU (rollout workers, other jobs)
# that made an 8-query encode take ~920 ms instead of ~90 ms. The runtime reads this when it loads (at
# the first torch import), so it is set here, before torch is imported; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class Embedder(Protocol):
    kind: str
    version: str | None
    """What computes the vectors within a kind (the int8 export recipe); an index records it."""
    dim: int
    max_tokens: int

    def embed(self, texts: Sequence[str], batch_size: int | None = None,
              on_progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Normalised float32 passage embeddings, (len(texts), dim)."""

    def encode(self, texts: list[str]) -> np.ndarray:
        """Normalised float32 embeddings of a small batch (queries), in one pass."""


def passage_text(title: str, text: str) -> str:
    return f"{title}\n{text}" if title else text


def _threads() -> int:
    """SLEUTH_THREADS when set (one thread is fastest on a shared small machine), else 0 (all cores)."""
    return int(os.environ.get("SLEUTH_THREADS") or 0)


# ---------------------------------------------------------------------------------------------- torch

_ST_MODELS: dict[tuple[str, int], object] = {}
_LOCK = threading.Lock()


def load_sentence_transformer(max_tokens: int = 128, model_dir: str | Path | None = None):
    """The sentence-transformers model from the local package path, loaded once per process and shared."""
    model_dir = str(model_dir or paths.embedded_embedder_dir())
    key = (model_dir, max_tokens)
    with _LOCK:
        model = _ST_MODELS.get(key)
        if model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            model = SentenceTransformer(model_dir, device="cpu")
            model.max_seq_length = max_tokens
            _ST_MODELS[key] = model
    return model


def st_dim(model) -> int:
    get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(get())


def st_embed(model, texts: Sequence[str], batch_size: int = 64,
             on_progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Normalised float32 embeddings. Sorted by length first so batches pad little."""
    out = np.zeros((len(texts), st_dim(model)), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")
    chunk = batch_size * 8
    for start in range(0, len(order), chunk):
        idx = order[start:start + chunk]
        out[idx] = model.encode([texts[i] for i in idx], batch_size=batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
        if on_progress:
            on_progress(len(idx))
    return out


def st_encode(model, texts: list[str]) -> np.ndarray:
    """One forward pass through the model's modules: same numbers as ``model.encode`` (checked in tests)
    without its per-call bookkeeping, which is 10-20% of the time of an 8-query batch on CPU."""
    import torch

    with torch.inference_mode():
        features = model.tokenizer(texts, padding=True, truncation=True, max_length=model.max_seq_length,
                                   return_tensors="pt")
        out = model(dict(features))["sentence_embedding"]
        return torch.nn.functional.normalize(out, dim=-1).float().numpy()


class TorchEmbedder:
    kind = "torch"
    version = None        # the model's own PyTorch forward: nothing of ours to change

    def __init__(self, max_tokens: int = 128, model_dir: str | Path | None = None):
        self.model = load_sentence_transformer(max_tokens, model_dir)
        self.max_tokens = max_tokens
        self.dim = st_dim(self.model)

    def embed(self, texts, batch_size=None, on_progress=None) -> np.ndarray:
        return st_embed(self.model, texts, batch_size or 64, on_progress)

    def encode(self, texts: list[str]) -> np.ndarray:
        return st_encode(self.model, texts)


# ---------------------------------------------------------------------------------------------- onnx

def onnx_cache_path(model_dir: Path) -> Path:
    """Where the int8 export of the model in model_dir lives: keyed by the model files, the recipe and the
    ONNX Runtime version, so a changed model or runtime gets a fresh export."""
    import onnxruntime

    h = hashlib.sha256()
    for name in ("config.json", "tokenizer.json"):
        h.update((model_dir / name).read_bytes())
    weights = model_dir / "model.safetensors"
    h.update(str(weights.stat().st_size).encode())
    with weights.open("rb") as f:  # the first MiB names the tensors and their offsets
        h.update(f.read(1 << 20))
    h.update(f"{_EXPORT_RECIPE}|{onnxruntime.__version__}".encode())
    return paths.models_dir() / "onnx" / f"all-MiniLM-L6-v2-int8-{h.hexdigest()[:16]}" / "model.onnx"


def query_model_path(int8_path: Path) -> Path:
    """The float32 graph of the same export, beside the int8 one: it encodes queries (see OnnxEmbedder)."""
    return int8_path.with_name("query-fp32.onnx")


class _QuietRoot(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # the quantiser's advice to pre-process first
        return "pre-processing before quantization" not in record.getMessage()


def export_onnx_int8(model_dir: Path, out: Path) -> Path:
    """Export the BERT encoder to ONNX (PyTorch's exporter), fuse attention/LayerNorm/GELU, quantise the
    weights to int8 per channel; the fused float32 graph is kept too, for queries. One-time, ~15-30 s on
    2 cores; written atomically."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    t0 = time.perf_counter()
    log.warning("exporting all-MiniLM-L6-v2 to ONNX int8 under %s (one-time)", out.parent)
    work = out.parent.with_name(out.parent.name + f".tmp-{os.getpid()}-{time.time_ns()}")
    work.mkdir(parents=True)
    try:
        # Eager attention exports as plain ops the optimizer fuses into one Attention op.
        bert = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
        cfg = bert.config

        class Encoder(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.m(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

        names = ["input_ids", "attention_mask", "token_type_ids"]
        ids = torch.ones((2, 8), dtype=torch.long)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Encoder(bert), (ids, ids, torch.zeros_like(ids)), str(work / "fp32.onnx"),
                              input_names=names, output_names=["last_hidden_state"],
                              dynamic_axes={n: {0: "batch", 1: "tokens"} for n in names + ["last_hidden_state"]},
                              opset_version=17, dynamo=False)
            # GELU as its tanh approximation (FastGelu): 0.9-3.5% less time per passage than the exact erf form
            # in two interleaved runs, cosine to PyTorch unchanged (0.99392 vs 0.99395 over 400 passages).
            options = FusionOptions("bert")
            options.enable_gelu_approximation = True
            fused = optimize_model(str(work / "fp32.onnx"), model_type="bert", num_heads=cfg.num_attention_heads,
                                   hidden_size=cfg.hidden_size, opt_level=1, optimization_options=options)
            fused.save_model_to_file(str(work / "fused.onnx"))
            # The quantiser logs through the root logger, which would install a handler for the whole
            # process (basicConfig) if it had none: a null handler stands in while it runs.
            root, quiet, null = logging.getLogger(), _QuietRoot(), logging.NullHandler()
            root.addFilter(quiet)
            root.addHandler(null)
            try:
                # per-channel weights with reduced range: AVX2 int8 kernels without VNNI saturate at full
                # range; plain per-tensor int8 measured cosine 0.955 to float32, this 0.993.
                # The embedding tables stay float32: quantised, every token's input vector carried rounding
                # error (cosine to PyTorch 0.99395 -> 0.99429 kept float), at no measurable cost (a lookup,
                # not a product).
                embed = [n.name for n in fused.model.graph.node if n.op_type == "EmbedLayerNormalization"]
                quantize_dynamic(str(work / "fused.onnx"), str(work / "model.onnx"), weight_type=QuantType.QInt8,
                                 per_channel=True, reduce_range=True, nodes_to_exclude=embed,
                                 extra_options={"DefaultTensorType": 1})  # 1 = float for fused ops' outputs
            finally:
                root.removeFilter(quiet)
                root.removeHandler(null)
            _unfuse_skip_layer_norm(work / "model.onnx")
            _unfuse_skip_layer_norm(work / "fused.onnx")
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(work / "fused.onnx", query_model_path(out))   # first: the int8 file marks a complete export
        os.replace(work / "model.onnx", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.warning("exported in %.1f s", time.perf_counter() - t0)
    return out


def _unfuse_skip_layer_norm(path: Path) -> None:
    """Replace each fused SkipLayerNormalization (residual + bias + LayerNorm) with Add nodes and a plain
    LayerNormalization, in place. Why: ONNX Runtime's CPU kernel for the fused op took 251 us on a 128 x 384
    input where Add + LayerNormalization took 39 us (ONNX Runtime 1.31, one thread, a quick measurement); its
    12 nodes were ~20% of a passage's time. The session must then keep the runtime from fusing them back
    (``SKIP_FUSION``). The vectors stay as close to float32's (cosine 0.99395 vs 0.99398 on average over 200
    passages) — they differ from the fused export's by rounding that dynamic quantisation amplifies."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    nodes = []
    for n in model.graph.node:
        if n.op_type != "SkipLayerNormalization":
            nodes.append(n)
            continue
        x, skip, gamma, beta = n.input[:4]
        bias = n.input[4] if len(n.input) > 4 and n.input[4] else None
        if any(o for o in n.output[1:]):
            raise ValueError(f"{n.name}: SkipLayerNormalization with extra outputs is not expected here")
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-12)
        if bias:
            nodes.append(helper.make_node("Add", [x, bias], [n.name + "_biased"]))
            x = n.name + "_biased"
        nodes.append(helper.make_node("Add", [x, skip], [n.name + "_sum"]))
        nodes.append(helper.make_node("LayerNormalization", [n.name + "_sum", gamma, beta], [n.output[0]],
                                      axis=-1, epsilon=eps))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(path))


SKIP_FUSION = ["SkipLayerNormFusion"]   # ONNX Runtime's own optimizer would fuse the plain nodes back


class OnnxEmbedder:
    kind = "onnx-int8"
    version = _EXPORT_RECIPE   # an index records it: vectors of another export are not reused by a rebuild

    def __init__(self, max_tokens: int = 128, model_dir: str | Path | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_dir = Path(model_dir or paths.embedded_embedder_dir())
        path = onnx_cache_path(model_dir)
        if not (path.is_file() and query_model_path(path).is_file()):
            export_onnx_int8(model_dir, path)
        so = ort.SessionOptions()
        # One thread per run, several runs at once: a text's ~100 tokens are too small a job to split
        # across cores, while texts are independent (Run is thread-safe and releases the GIL).
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        self.workers = _threads() or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="onnx-embed") if self.workers > 1 else None
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see OMP_WAIT_POLICY above
        # No memory arena: the workers share a session, and its arena's lock cost 4-10% of two workers'
        # passages/s (three interleaved runs: 215/205/220 with the arena, 224/221/234 without, 2 workers;
        # one worker loses ~1%).
        so.enable_cpu_mem_arena = False
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=SKIP_FUSION)
        self.query_session = ort.InferenceSession(str(query_model_path(path)), so,
                                                  providers=["CPUExecutionProvider"], disabled_optimizers=SKIP_FUSION)
        self.path = path
        # The shipped tokenizer.json pads every input to 128: batches are padded here, to their longest.
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_tokens)
        self.max_tokens = max_tokens
        self.dim = int(self.session.get_outputs()[0].shape[-1] or 384)

    def _run(self, ids: list[int], session=None) -> np.ndarray:
        """One text per run. Dynamic quantisation scales each activation tensor by its own range, so in a
        padded batch a text's vector would depend on its batch-mates (measured: cosine down to 0.990 between
        the same passage alone and in a batch of 16); alone, a text always gets the same vector. One at a time
        is as fast here (a passage's ~100 tokens already fill the int8 kernels) and pads nothing."""
        x = np.asarray(ids, dtype=np.int64)[None, :]
        hidden = (session or self.session).run(None, {"input_ids": x, "attention_mask": np.ones_like(x),
                                                      "token_type_ids": np.zeros_like(x)})[0][0]
        v = hidden.mean(axis=0)  # mean pooling over the tokens, as the model was trained
        return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)

    def _embed_one(self, text: str, session=None) -> np.ndarray:
        return self._run(self.tokenizer.encode(text).ids, session)

    def _run_all(self, texts: Sequence[str], on_progress: Callable[[int], None] | None = None,
                 every: int = 64, session=None) -> np.ndarray:
        """Every text run alone, the workers pulling the next one from a shared iterator until none is
        left. Why not one future per text: that scheduling (a queue hand-off and a GIL round-trip around
        each 9 ms run) gave 211-227 passages/s on two workers where two loops like these gave 234-236
        (512 passages, a quick measurement); two processes each running alone scale 1.97x, so the cores
        are not the limit. Each worker tokenizes its own texts, so no core waits while all are tokenized
        first (+2% in one interleaved run, within its noise). Progress is reported from this thread, every
        ``every`` texts."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if self._pool is None or len(texts) == 1:
            for start in range(0, len(texts), every):
                for i in range(start, min(start + every, len(texts))):
                    out[i] = self._embed_one(texts[i], session)
                if on_progress:
                    on_progress(min(every, len(texts) - start))
            return out
        todo = iter(range(len(texts)))   # next() on it is atomic under the GIL
        counts = [0] * self.workers      # each worker writes only its own slot
        stop = threading.Event()

        def work(w: int) -> None:
            for i in todo:
                if stop.is_set():
                    return
                try:
                    out[i] = self._embed_one(texts[i], session)
                except BaseException:
                    stop.set()    # the other workers finish their current text and stop pulling
                    raise
                counts[w] += 1

        futures = [self._pool.submit(work, w) for w in range(self.workers)]
        reported = 0
        try:
            while futures:
                done, pending = wait(futures, timeout=0.25)
                for f in done:
                    f.result()
                futures = list(pending)
                now = sum(counts)
                if on_progress and (now - reported >= every or (not futures and now > reported)):
                    on_progress(now - reported)
                    reported = now
        except BaseException:
            stop.set()
            wait(futures)
            raise
        return out

    def embed(self, texts, batch_size=None, on_progress=None) -> np.ndarray:
        """``batch_size`` only sets how often progress is reported: every text runs alone (see _run)."""
        return self._run_all(texts, on_progress, batch_size or 64)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Queries, through the float32 graph (see the module docstring for why)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._run_all(texts, session=self.query_session)


# ---------------------------------------------------------------------------------------------- choice

_EMBEDDERS: dict[tuple[str, int], Embedder] = {}
_FAILED: dict[str, str] = {}


def get_embedder(kind: str = "auto", max_tokens: int = 128) -> Embedder:
    """The embedder of that kind, loaded once per process. 'auto' = onnx-int8 when ONNX Runtime works,
    else torch (with a log line saying why)."""
    if kind not in ("auto",) + KINDS:
        raise ValueError(f"unknown embedder {kind!r}: choose one of auto, {', '.join(KINDS)}")
    want = DEFAULT_KIND if kind == "auto" else kind
    with _LOCK:
        have = _EMBEDDERS.get((want, max_tokens))
    if have is not None:
        return have
    if want == "onnx-int8" and "onnx-int8" not in _FAILED:
        try:
            emb: Embedder = OnnxEmbedder(max_tokens)
        except Exception as e:  # noqa: BLE001 - any failure (missing package, export error) falls back
            _FAILED["onnx-int8"] = f"{type(e).__name__}: {e}"
            log.warning("onnx-int8 embedder unavailable (%s); using the PyTorch embedder (about 2x slower)",
                        _FAILED["onnx-int8"])
    if want == "onnx-int8" and "onnx-int8" in _FAILED:
        if kind == "onnx-int8":
            raise RuntimeError(f"onnx-int8 embedder unavailable: {_FAILED['onnx-int8']}")
        return get_embedder("torch", max_tokens)
    if want == "torch":
        emb = TorchEmbedder(max_tokens)
    with _LOCK:
        return _EMBEDDERS.setdefault((want, max_tokens), emb)


def available(kind: str) -> bool:
    """Whether get_embedder(kind) would give that kind (loads it to find out)."""
    try:
        return get_embedder(kind).kind == kind
    except RuntimeError:
        return False
