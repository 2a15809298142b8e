"""Rollouts through llama.cpp: the policy's current weights written to GGUF, sampled in one batch by llama.cpp.

Why: llama.cpp's kernels (tinyBLAS for batched products, quantised dot products) are where CPU inference is
fastest on many machines. On this project's 2-core AVX2 CPU (no VNNI) both they and PyTorch's float32 are bound
by arithmetic for the 135M policy: research-stage rollouts ran 1.36× faster than transformers' forward, short
batches no faster (``benchmarks/rl_iteration.py``, ``benchmarks/rollout_throughput.py``; README *Speed: rollout
and update*) — so this engine is an option, not the default.
What it keeps everywhere: with float32 weights its log-probs are within ~1e-2 of the trainer's. llama.cpp computes
the logits; sleuth samples from them itself (``HFPolicy._sample``), so the recorded log-probs are exactly the
distribution each token was drawn from.

Weights: whenever the trainer's weights change (``kvcache.weights_key``) the effective weights (a LoRA adapter
merged in) are written to a GGUF file — the tokenizer and hyper-parameters copied from the embedded model's
GGUF, the matrices in ``weight_type`` — and loaded into llama.cpp (3–8 s for 135M parameters), so every
rollout samples from the weights the next update starts from. ``"f32"`` keeps the trainer's weights exactly
(its logits differ from the trainer's by the order of float sums and the float16 KV cache); ``"bf16"`` rounds
them to bfloat16 (8 bits of mantissa) and ``"q8_0"`` to 8 bits per weight in blocks of 32 (slightly different
policies: the update corrects the gap with truncated importance weights, ``rl.tis_cap``).

KV cache: llama.cpp keeps one sequence per batch row ("slot"). A new prompt continues the
slot holding its longest common prefix (an agent step's prompt extends the previous step's row), copies that
prefix from another slot (rows of a group share their system prompt and question), or is prefilled; a batch's
common prefix is prefilled once and copied. Only the new tokens of a step are run. Each slot is its own KV stream
of ``slot_ctx`` positions (a row never attends over other rows' cells); idle rows stay until their slot is given
to a new row, least recently used first.
"""

from __future__ import annotations

import ctypes
import functools
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sleuth.policy.engine import _weight
from sleuth.policy.kvcache import weights_key

WEIGHT_TYPES = ("f32", "f16", "bf16", "q8_0")
INSTALL_HINT = ("the llama.cpp rollout engine needs llama-cpp-python: "
                ".venv/bin/pip install -r requirements-llama.txt (compiles llama.cpp, a few minutes)")


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def _base(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' q/k row order → llama.cpp's (rotary halves interleaved per head), as llama.cpp's converter."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@functools.lru_cache(maxsize=4)
def read_template(path: str) -> tuple[str, list[tuple[str, Any, Any, Any]]]:
    """A GGUF file's architecture and metadata fields (read once: parsing its vocabulary takes seconds)."""
    import gguf

    reader = gguf.GGUFReader(path)
    fields = [(k, f.contents(), f.types[0], f.types[1] if len(f.types) > 1 else None)
              for k, f in reader.fields.items()]
    return str(reader.fields["general.architecture"].contents()), fields


def export_gguf(model: Any, template: str | os.PathLike, out: str | os.PathLike, weight_type: str = "f32") -> Path:
    """Write the model's effective weights as a GGUF file llama.cpp can load.

    Metadata (tokenizer, chat template, hyper-parameters) comes from ``template``, a GGUF of the same
    architecture; a model whose shape differs from the template's is refused."""
    import gguf

    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"weight_type must be one of {WEIGHT_TYPES}, got {weight_type!r}")
    base = _base(model)
    cfg = base.config
    arch, fields = read_template(str(Path(template).resolve()))
    values = {k: v for k, v, _, _ in fields}
    want = {"block_count": cfg.num_hidden_layers, "embedding_length": cfg.hidden_size,
            "feed_forward_length": cfg.intermediate_size, "attention.head_count": cfg.num_attention_heads,
            "attention.head_count_kv": cfg.num_key_value_heads, "vocab_size": cfg.vocab_size}
    bad = {k: (values.get(f"{arch}.{k}"), v) for k, v in want.items()
           if values.get(f"{arch}.{k}") is not None and int(values[f"{arch}.{k}"]) != int(v)}
    if arch != "llama" or bad:
        raise ValueError(f"GGUF template {template} does not describe this model (architecture {arch!r}, "
                         f"mismatched {bad}); pass the model's own GGUF as the template")

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[weight_type]
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[weight_type]

    out = Path(out)
    writer = gguf.GGUFWriter(str(out), arch)
    for key, value, vtype, sub in fields:
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type",
                                               "general.quantization_version"):
            continue
        writer.add_key_value(key, value, vtype, sub_type=sub)
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for hf_name, module in base.named_modules():
        if ".base_layer" in hf_name or ".lora_" in hf_name:
            continue                      # inside a LoRA layer: its effective weight is taken from the layer
        if hasattr(module, "base_layer") or isinstance(module, torch.nn.Linear):
            w = _weight(module)
        elif isinstance(module, torch.nn.Embedding) or type(module).__name__.endswith("RMSNorm"):
            w = module.weight.detach()
        else:
            continue
        name = hf_name + ".weight"
        if tied and name == "lm_head.weight":
            continue                      # llama.cpp reads the head from token_embd when output is absent
        gg = names.get_name(name, try_suffixes=(".weight",))
        if gg is None:
            raise ValueError(f"no GGUF name for {name}: the llama.cpp engine supports Llama-architecture models")
        a = w.float().cpu().numpy()
        if gg.endswith("attn_q.weight"):
            a = _permute(a, cfg.num_attention_heads)
        elif gg.endswith("attn_k.weight"):
            a = _permute(a, cfg.num_key_value_heads)
        if a.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gg, np.ascontiguousarray(a, dtype=np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(gg, a.astype(np.float16))
        else:
            writer.add_tensor(gg, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


_LOG_CB = None


def _quiet(lib: Any) -> None:
    """Keep llama.cpp's loading chatter off stderr (errors still come back as return codes)."""
    global _LOG_CB
    if _LOG_CB is None:
        _LOG_CB = lib.llama_log_callback(lambda level, text, data: None)
        lib.llama_log_set(_LOG_CB, ctypes.c_void_p())


class LlamaCppEngine:
    """Batched decoding of one set of weights in llama.cpp, with per-row KV slots kept between calls."""

    def __init__(self, model: Any, template: str | os.PathLike, weight_type: str = "f32",
                 n_slots: int = 32, slot_ctx: int = 2048, n_batch: int = 2048, threads: int | None = None):
        try:
            import llama_cpp as lib
        except ImportError as e:
            raise RuntimeError(INSTALL_HINT) from e
        self.lib = lib
        self.weight_type = weight_type
        self.template = Path(template)
        self.n_slots, self.slot_ctx, self.n_batch = n_slots, slot_ctx, n_batch
        self.threads = threads or torch.get_num_threads()
        self.vocab = int(_base(model).config.vocab_size)
        self.key: object = None
        self._model = self._ctx = None
        self.slots: list[list[int]] = [[] for _ in range(n_slots)]   # tokens whose KV each slot holds
        self.export_seconds = 0.0         # total time spent writing and loading weights, over ``loads`` loads
        self.prefilled = 0                # prompt tokens run through the model
        self.reused = 0                   # prompt tokens whose KV was already in a slot
        self._used_at = [0] * n_slots     # call counter when each slot was last used (reassign the oldest)
        self._calls = 0
        self.loads = 0
        _quiet(lib)
        lib.llama_backend_init()
        self.refresh(model)

    # ------------------------------------------------------------------ weights
    def refresh(self, model: Any) -> None:
        """Load the model's current weights (no-op when they have not changed since the last load)."""
        key = weights_key(model)
        if key == self.key:
            return
        t0 = time.perf_counter()
        lib = self.lib
        self.close()
        with tempfile.TemporaryDirectory(prefix="sleuth-gguf-") as tmp:
            path = export_gguf(model, self.template, Path(tmp) / "policy.gguf", self.weight_type)
            mp = lib.llama_model_default_params()
            mp.use_mmap = False           # read into memory: the file is deleted right after
            self._model = lib.llama_model_load_from_file(str(path).encode(), mp)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load the exported weights ({self.weight_type})")
        cp = lib.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = self.n_slots * self.slot_ctx, self.n_batch, min(self.n_batch, 512)
        cp.n_seq_max = self.n_slots
        cp.n_threads = cp.n_threads_batch = self.threads
        # Flash attention over a float16 KV cache: twice the decode speed of the float32 cache here (llama.cpp
        # has no fast CPU path for float32 keys); the rounding is part of the measured gap to the trainer.
        cp.flash_attn_type = 1            # LLAMA_FLASH_ATTN_TYPE_ENABLED
        cp.type_k = cp.type_v = 1         # GGML_TYPE_F16
        # One KV stream per slot: a query attends over its own row's cells only. (A unified pool shares a prefix's
        # cells between rows, but every query then scans every row's cells: with 32 agent rows of ~1,000 tokens
        # that made rollouts slower than PyTorch's.)
        cp.kv_unified = False
        cp.no_perf = True
        self._ctx = lib.llama_init_from_model(self._model, cp)
        if not self._ctx:
            raise RuntimeError(f"llama.cpp could not create a context ({self.n_slots} slots × {self.slot_ctx} "
                               "positions)")
        self._mem = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self.slots = [[] for _ in range(self.n_slots)]
        self.key = key
        self.export_seconds += time.perf_counter() - t0
        self.loads += 1

    def close(self) -> None:
        lib = self.lib
        if self._ctx:
            lib.llama_batch_free(self._batch)
            lib.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            lib.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ KV slots
    @staticmethod
    def _lcp(a: np.ndarray, b: np.ndarray) -> int:
        n = min(len(a), len(b))
        diff = np.flatnonzero(a[:n] != b[:n])
        return int(diff[0]) if len(diff) else n

    def _clear(self, s: int) -> None:
        self.lib.llama_memory_seq_rm(self._mem, s, -1, -1)
        self.slots[s] = []

    def assign(self, prompts: list[list[int]]) -> tuple[list[int], list[int]]:
        """Give every prompt a slot and keep the longest prefix already computed; returns (slots, kept)."""
        lib = self.lib
        n = len(prompts)
        if n > self.n_slots:
            raise ValueError(f"{n} rows exceed the engine's {self.n_slots} KV slots")
        # The batch's common prefix, computed once when no slot holds it yet (a group's first step).
        arrays = [np.asarray(p, dtype=np.int64) for p in prompts]
        held = [np.asarray(s, dtype=np.int64) for s in self.slots]
        common = min(len(p) for p in prompts) - 1
        first = prompts[0]
        for p in arrays[1:]:
            common = min(common, self._lcp(arrays[0], p))
        if common >= 32 and max(self._lcp(h, arrays[0]) for h in held) < common:
            s = min(range(self.n_slots), key=lambda i: (len(self.slots[i]) > 0, self._used_at[i]))
            self._clear(s)
            self._decode([(s, first[:common], False)])
            self.prefilled += common
            held[s] = arrays[0][:common]
        best = []
        for p in arrays:                           # (kept tokens, source slot): prefix reusable from a slot
            lcps = [min(self._lcp(h, p), len(p) - 1) for h in held]
            src = int(np.argmax(lcps))
            best.append((lcps[src], src))
        dest: list[int | None] = [None] * n
        claimed: set[int] = set()
        for i in sorted(range(n), key=lambda i: -best[i][0]):   # a row continues its source slot if free
            kept, src = best[i]
            if kept > 0 and src not in claimed:
                dest[i] = src
                claimed.add(src)
        # The other rows take unclaimed slots, empty or least recently used first; an unclaimed slot is nobody's
        # source.
        spare = iter(sorted((s for s in range(self.n_slots) if s not in claimed),
                            key=lambda s: (len(self.slots[s]) > 0, self._used_at[s])))
        for i in range(n):
            if dest[i] is None:
                dest[i] = next(spare)
        for i in range(n):                         # copies first: a source is trimmed only afterwards
            kept, src = best[i]
            if dest[i] != src:
                self._clear(dest[i])
                if kept > 0:
                    # Streams are copied whole (llama.cpp copies no part of one into another); trimmed below.
                    lib.llama_memory_seq_cp(self._mem, src, dest[i], -1, -1)
                    self.slots[dest[i]] = self.slots[src]
        kept_out = []
        for i in range(n):
            kept = min(best[i][0], len(self.slots[dest[i]]))
            lib.llama_memory_seq_rm(self._mem, dest[i], kept, -1)
            self.slots[dest[i]] = self.slots[dest[i]][:kept]
            kept_out.append(kept)
        return [int(d) for d in dest], kept_out

    # ------------------------------------------------------------------ decoding
    def _decode(self, work: list[tuple[int, list[int], bool]]) -> list[np.ndarray | None]:
        """Run each (slot, new tokens, want the last token's logits) in as few llama_decode calls as the batch
        allows, appending to the slots. Returns, per work item, its last-token logits (None if not wanted)."""
        out: list[np.ndarray | None] = [None] * len(work)
        items = [(w, s, toks, want) for w, (s, toks, want) in enumerate(work) if toks]
        # Rows adding one token each (decode steps) run together; a row adding several runs alone. (With one KV
        # stream per row llama.cpp splits a batch into micro-batches holding equally many tokens of every row:
        # rows of unequal length would go through in many small, slow pieces.)
        groups = [[it for it in items if len(it[2]) == 1]] + [[it] for it in items if len(it[2]) > 1]
        for queue in groups:
            self._run(queue, out)
        return out

    def _run(self, queue: list[tuple[int, int, list[int], bool]], out: list[np.ndarray | None]) -> None:
        lib, b = self.lib, self._batch
        while queue:
            b.n_tokens = 0
            wanted: list[tuple[int, int]] = []    # (batch index of a row's last token, work index)
            rest = []
            for w, s, toks, want in queue:
                take = toks[:self.n_batch - b.n_tokens]
                start = len(self.slots[s])
                for j, t in enumerate(take):
                    k = b.n_tokens
                    b.token[k], b.pos[k], b.n_seq_id[k], b.logits[k] = t, start + j, 1, 0
                    b.seq_id[k][0] = s
                    b.n_tokens += 1
                self.slots[s] = self.slots[s] + take
                if len(take) < len(toks):
                    rest.append((w, s, toks[len(take):], want))
                elif want:
                    b.logits[b.n_tokens - 1] = 1
                    wanted.append((b.n_tokens - 1, w))
            if b.n_tokens:
                rc = lib.llama_decode(self._ctx, b)
                if rc != 0:
                    raise RuntimeError(f"llama_decode returned {rc} (KV slots of {self.slot_ctx} positions)")
            for k, w in wanted:
                ptr = lib.llama_get_logits_ith(self._ctx, k)
                out[w] = np.ctypeslib.as_array(ptr, shape=(self.vocab,)).copy()
            queue = rest

    def generate(self, prompts: list[list[int]], budget: int,
                 sample: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                 accept: Callable[[list[int], list[int], list[float]], list[int]], reuse: bool = True) -> None:
        """Prefill what is new in each prompt, then decode up to ``budget`` tokens per row.

        ``sample(logits [B, V]) -> (tokens, log-probs)``; ``accept(rows, tokens, log-probs) -> the batch
        positions that go on`` (it records the tokens and decides eos / stop / length). ``reuse=False`` forgets
        earlier calls' rows first (the batch's common prefix is still computed once)."""
        self._calls += 1
        if not reuse:
            for s in range(self.n_slots):
                self._clear(s)
        if len(prompts) > self.n_slots:          # more rows than KV slots: in turns of n_slots rows
            for lo in range(0, len(prompts), self.n_slots):
                idx = list(range(lo, min(lo + self.n_slots, len(prompts))))
                self.generate([prompts[i] for i in idx], budget, sample,
                              lambda rows, t, lp, idx=idx: accept([idx[r] for r in rows], t, lp), reuse)
            return
        longest = max(len(p) for p in prompts)
        if longest >= self.slot_ctx:
            raise ValueError(f"a prompt of {longest} tokens does not fit the llama engine's KV slots of "
                             f"{self.slot_ctx} positions (HFPolicy.llama_slot_ctx)")
        budget = min(budget, self.slot_ctx - longest)
        dest, kept = self.assign(prompts)
        for s in dest:
            self._used_at[s] = self._calls
        self.reused += sum(kept)
        self.prefilled += sum(len(p) - k for p, k in zip(prompts, kept))
        logits = self._decode([(s, p[k:], True) for s, p, k in zip(dest, prompts, kept)])
        rows = list(range(len(prompts)))
        for step in range(budget):
            tok, lp = sample(torch.from_numpy(np.stack(logits)))
            tok_l = tok.tolist()
            keep = accept(rows, tok_l, lp.tolist())
            if not keep or step == budget - 1:   # the last token's logits would never be used: not decoded (its
                return                           # slot records tokens up to the one before; a later call prefills it)
            rows = [rows[b] for b in keep]
            logits = self._decode([(dest[r], [tok_l[b]], True) for b, r in zip(keep, rows)])
