"""A lean decode engine for Llama-family policies: weights extracted once, a preallocated KV cache, one
fused forward per step.

Why: transformers' generic forward spends part of a decode step outside the matrix products — a mask rebuilt
every step, the dynamic cache concatenating every layer's keys and values, ~15 module calls per layer, LoRA
branches computed beside every linear layer. (Measured on a shared 2-core AVX2 CPU with the 135M model, that
part is small: float32 decoding there is bound by the products, and this engine runs at the same tokens per CPU
second as transformers' — ``benchmarks/rollout_throughput.py``.) This engine does one decode step as
30 × (norm, one fused q/k/v product, rotary embedding, attention over a static cache, output product, norm,
one fused gate/up product, down product) and the head, with the keys and values written in place. A prefix
every row of a batch starts with (an agent's system prompt and worked example) is held once (``SharedPrefix``):
a decode step reads the rows' keys and values from memory and is bound by that, and those positions are most of
them.

Weights: the trained model's effective weights are copied out (a LoRA adapter merged in, q/k/v and gate/up
concatenated) and refreshed whenever the model's weights change (``kvcache.weights_key``), so rollouts after
an RL update sample from the new weights. ``precision``:

* ``"fp32"`` — the same arithmetic as the trainer: tokens and log-probs agree with the reference forward to
  float rounding (``tests/test_policy.py``).
* ``"bf16"`` — the linear layers (head included) as bfloat16 weights and inputs, everything else (embeddings,
  norms, rotary, attention, the KV cache, outputs) in float32: half the weight bytes, and on CPUs with
  AVX512-BF16 or AMX oneDNN's bfloat16 products run ~2× float32's. bfloat16 keeps 8 bits of mantissa, so the
  log-probs differ from the trainer's by rounding (mean |Δ| ~1e-2, ``benchmarks/rollout_throughput.py``); like
  int8 it is a slightly different policy and the update corrects it with importance weights. On CPUs without
  native bfloat16 the products are emulated and slower than float32.
* ``"int8"`` — the linear layers (head included) as int8 weights with per-output-channel scales and dynamically
  quantised activations (fbgemm): a quarter of the weight bytes to stream per step. This is a slightly
  different policy from the trainer's: the log-probs it records are its own (what the tokens were sampled
  from), and the update corrects the difference with importance weights (``TrainConfig.engine_is``).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from sleuth.hardware import has_vnni
from sleuth.policy.kvcache import weights_key

PRECISIONS = ("fp32", "bf16", "int8")


def supports(model: Any) -> bool:
    """Whether the engine can run this model: a Llama-architecture causal LM with default rotary embeddings
    and no logit scaling (SmolLM2, Llama, TinyLlama...)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) != "llama":
        return False
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if (rope.get("rope_type") or rope.get("type") or "default") != "default":
        return False
    return not (getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False)
                or getattr(cfg, "hidden_act", "silu") != "silu")


def _weight(module: torch.nn.Module) -> torch.Tensor:
    """A linear layer's effective weight: a peft LoRA layer's base weight plus its active adapters' deltas."""
    base = getattr(module, "base_layer", None)
    if base is None:
        return module.weight.detach()
    w = base.weight.detach()
    if getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
        return w
    for name in module.active_adapters:
        if name in getattr(module, "lora_A", {}):
            w = w + module.get_delta_weight(name).detach().to(w.dtype)
    return w


# fbgemm's int8 products without VNNI add pairs of u8*s8 products in int16, which can saturate: activations are
# then quantised to 7 bits ("reduce_range"). VNNI accumulates in int32 directly, so the full 8 bits are safe
# there, and they halve the int8 policy's log-prob gap to the trainer (mean |Δ| 0.83 -> 0.30 nats, measured on
# six dev prompts on an AVX512-VNNI CPU; a quick measurement, not a committed benchmark). Where the flags cannot
# be read, VNNI is assumed absent (7 bits: safe everywhere).
REDUCE_RANGE = not has_vnni()


class _Linear:
    """y = x Wᵀ in the engine's precision."""

    def __init__(self, w: torch.Tensor, precision: str):
        self.out_features = w.shape[0]
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        if precision in ("fp32", "bf16"):
            self.w = w.to(self.dtype).contiguous()
            self.packed = None
        else:
            w = w.float()
            scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-8).double()
            q = torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
            self.w = None
            self.packed = torch.ops.quantized.linear_prepack(q, None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            if self.dtype is torch.float32:
                return F.linear(x, self.w)
            return F.linear(x.to(self.dtype), self.w).float()
        shape = x.shape
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, shape[-1]).contiguous(), self.packed, REDUCE_RANGE)
        return y.view(*shape[:-1], self.out_features)


@dataclass
class _Layer:
    ln1: torch.Tensor
    qkv: _Linear
    o: _Linear
    ln2: torch.Tensor
    gate_up: _Linear
    down: _Linear


@dataclass
class SharedPrefix:
    """Keys and values of a prefix every row of a batch starts with (system prompt, worked example), stored
    once: per layer [kv heads, P, head dim]. A decode step's queries of all rows attend to it in one product
    per kv head (see ``DecodeEngine._attend``) instead of each row reading its own copy."""
    k: torch.Tensor    # [layers, kv heads, P, head dim]
    v: torch.Tensor

    @property
    def length(self) -> int:
        return self.k.shape[2]


class StaticCache:
    """Keys and values of every layer in preallocated [batch, kv heads, slots, head dim] tensors, and which
    slots hold a real token of each row (``valid``). Rows are aligned on the right (left padding), so every
    row writes its next token at the same slot ``fill``.

    With a ``shared`` prefix of P positions, slots 0..P-1 are that prefix (held once, valid for every row) and
    the per-row tensors hold slots P.. only: ``k[:, b, :, j]`` is slot P + j. Slot numbers elsewhere (``fill``,
    ``valid``, ``row_kv``) count the shared slots."""

    def __init__(self, layers: int, batch: int, kv_heads: int, capacity: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device, storage: torch.Tensor | None = None,
                 shared: SharedPrefix | None = None):
        # Uninitialised: every slot is written before any query reads it (slots < fill only). ``storage``: a
        # flat buffer of at least 2 x the cache's elements to build it in (DecodeEngine's reused buffers).
        self.shared = shared
        self.n_shared = shared.length if shared is not None else 0
        if capacity <= self.n_shared:
            raise ValueError(f"cache capacity {capacity} leaves no slot after the {self.n_shared} shared ones")
        shape = (layers, batch, kv_heads, capacity - self.n_shared, head_dim)
        if storage is None:
            self.k = torch.empty(shape, dtype=dtype, device=device)
            self.v = torch.empty_like(self.k)
        else:
            n = math.prod(shape)
            self.k, self.v = storage[:n].view(shape), storage[n:2 * n].view(shape)
        self.storage = storage
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        self.valid[:, :self.n_shared] = True
        self.fill = self.n_shared

    @property
    def capacity(self) -> int:
        return self.n_shared + self.k.shape[3]

    def load(self, layers_kv: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor) -> None:
        """Take over a prefilled cache: per layer (keys, values) [batch, kv heads, n - P, head dim] of slots
        P..n-1 (P shared slots, 0 without a shared prefix) and the mask of slots 0..n-1."""
        n, P = mask.shape[1], self.n_shared
        if not bool(mask[:, :P].all()):
            raise ValueError("the shared prefix's slots must be valid in every row")
        for li, (k, v) in enumerate(layers_kv):
            self.k[li, :, :, :n - P] = k
            self.v[li, :, :, :n - P] = v
        self.valid[:, :n] = mask.bool()
        self.fill = n

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (ascending positions; finished rows leave the batch). In place: each
        kept row moves down to its new position (a row at or before its position stays put), filled slots
        only. Building a new cache instead copied every kept row through a gather, ~50 ms per finished row
        with 16 rows of ~150 positions — more than a decode step."""
        keep = rows.tolist()
        if any(b <= a for a, b in zip(keep, keep[1:])):
            raise ValueError("select takes ascending, distinct batch positions")
        n = self.fill - self.n_shared
        for j, r in enumerate(keep):
            if r != j:     # r > j: the source row was not overwritten by an earlier move
                self.k[:, j, :, :n] = self.k[:, r, :, :n]
                self.v[:, j, :, :n] = self.v[:, r, :, :n]
        self.k, self.v = self.k[:, :len(keep)], self.v[:, :len(keep)]
        self.valid = self.valid.index_select(0, rows)

    def copy_rows(self, src: "StaticCache", rows: list[int]) -> None:
        """Row i of this cache becomes a copy of ``src``'s row rows[i] (repeats allowed), filled slots only: a
        prefill of distinct prompts fanned out to the rows that share them. Both caches hold the same shared
        prefix (if any): only the per-row slots are copied."""
        if src.shared is not self.shared:
            raise ValueError("copy_rows needs both caches built on the same shared prefix")
        n = src.fill - self.n_shared
        for j, r in enumerate(rows):
            self.k[:, j, :, :n] = src.k[:, r, :, :n]
            self.v[:, j, :, :n] = src.v[:, r, :, :n]
        self.valid[:, :src.fill] = src.valid[rows, :src.fill]
        self.fill = src.fill

    def row_kv(self, b: int, idx: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Row b's keys and values at slots ``idx`` (ascending), per layer [kv heads, len, head dim] (for the
        prefix cache); shared slots are read from the shared prefix."""
        P = self.n_shared
        if not P:
            return [(self.k[li, b][:, idx].clone(), self.v[li, b][:, idx].clone()) for li in range(self.k.shape[0])]
        head, own = idx[idx < P], idx[idx >= P] - P
        return [(torch.cat([self.shared.k[li][:, head], self.k[li, b][:, own]], dim=1),
                 torch.cat([self.shared.v[li][:, head], self.v[li, b][:, own]], dim=1))
                for li in range(self.k.shape[0])]


class DecodeEngine:
    """Batched forward of a Llama model over a ``StaticCache``; see the module docstring."""

    def __init__(self, model: Any, precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"engine precision must be one of {PRECISIONS}, got {precision!r}")
        if not supports(model):
            raise ValueError("the decode engine runs Llama-architecture models only")
        self.model, self.precision = model, precision
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        cfg = base.config
        self.n_layers = cfg.num_hidden_layers
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = float(cfg.rms_norm_eps)
        self.device = next(model.parameters()).device
        rope = getattr(cfg, "rope_parameters", None) or {}
        theta = float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
        # Same construction as transformers' default rotary embedding, so positions match to the last bit.
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.int64)
                                         .to(device=self.device, dtype=torch.float) / self.head_dim))
        self._key: object = None
        self._spare: list[torch.Tensor] = []     # buffers of released caches, reused by pooled new caches
        self._pool_lock = threading.Lock()        # generate may run in several threads (the web service)
        self.max_spare = 2
        self.refresh()

    # ------------------------------------------------------------------------------------------ weights
    def refresh(self) -> bool:
        """Copy the model's current weights if they changed since the last copy; returns whether it copied."""
        key = weights_key(self.model)
        if key == self._key:
            return False
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        body, p = base.model, self.precision
        with torch.no_grad():
            self.embed = body.embed_tokens.weight.detach().float()
            self.norm = body.norm.weight.detach().float()
            self.head = _Linear(_weight(base.lm_head), p)
            self.layers = []
            for layer in body.layers:
                a, m = layer.self_attn, layer.mlp
                self.layers.append(_Layer(
                    ln1=layer.input_layernorm.weight.detach().float(),
                    qkv=_Linear(torch.cat([_weight(a.q_proj), _weight(a.k_proj), _weight(a.v_proj)]), p),
                    o=_Linear(_weight(a.o_proj), p),
                    ln2=layer.post_attention_layernorm.weight.detach().float(),
                    gate_up=_Linear(torch.cat([_weight(m.gate_proj), _weight(m.up_proj)]), p),
                    down=_Linear(_weight(m.down_proj), p)))
        self._key = key
        return True

    def new_cache(self, batch: int, capacity: int, pooled: bool = False,
                  shared: SharedPrefix | None = None) -> StaticCache:
        """An empty cache of ``capacity`` slots (``shared``: its first slots are that prefix, held once);
        ``pooled``: built in a buffer a released cache left (``release``), if one is large enough. Why: a
        rollout's caches hold ~1-3 GB (32 rows x ~1k positions x 46 KB per position in float32), and touching
        freshly allocated memory page by page cost 1-3 s per cache in the RL loop here, against ~0.04 s for the
        same copy into memory already touched (a quick in-loop measurement)."""
        own = capacity - (shared.length if shared is not None else 0)
        n = 2 * self.n_layers * batch * self.n_kv * max(own, 1) * self.head_dim
        buf = None
        if pooled:
            with self._pool_lock:
                fits = [b for b in self._spare if b.numel() >= n]
                if fits:
                    buf = min(fits, key=torch.Tensor.numel)
                    self._spare = [b for b in self._spare if b is not buf]
            if buf is None:
                buf = torch.empty(n, dtype=torch.float32, device=self.device)
        return StaticCache(self.n_layers, batch, self.n_kv, capacity, self.head_dim, torch.float32, self.device,
                           storage=buf, shared=shared)

    def shared_prefix(self, ids: list[int]) -> SharedPrefix:
        """Prefill ``ids`` once (positions 0..n-1) and keep their keys and values as a prefix for many rows."""
        n = len(ids)
        sc = self.new_cache(1, n + 1)
        head = torch.tensor([ids], device=self.device)
        self.forward(sc, head, torch.arange(n, device=self.device)[None], torch.ones_like(head, dtype=torch.bool))
        return SharedPrefix(k=sc.k[:, 0, :, :n].contiguous(), v=sc.v[:, 0, :, :n].contiguous())

    def release(self, cache: StaticCache) -> None:
        """A pooled cache that is no longer used gives its buffer back for the next one (the largest
        ``max_spare`` buffers are kept)."""
        if cache.storage is None:
            return
        with self._pool_lock:
            self._spare = sorted(self._spare + [cache.storage], key=torch.Tensor.numel)[-self.max_spare:]
        cache.storage = None

    def drop_spare(self) -> None:
        """Free the kept buffers (e.g. before an update, which needs the memory)."""
        with self._pool_lock:
            self._spare = []

    # ------------------------------------------------------------------------------------------ forward
    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # torch's RMSNorm: the same arithmetic as transformers' (x * rsqrt(mean(x²) + eps) * w) in one call instead
        # of six Python-level ops (on a CPU torch still runs a few kernels), which matters when a decode step is
        # ~35 ms spread over ~1,000 small ops
        return F.rms_norm(x, (x.shape[-1],), w, self.eps)

    def _rope(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the rotary angles, [B, 1, W, head_dim]; sin's first half negated (see _rotate)."""
        freqs = pos[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        sin = emb.sin()
        sin[..., : self.head_dim // 2].neg_()
        return emb.cos()[:, None], sin[:, None]

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
        # transformers' x * cos + cat(-x2, x1) * sin, as x * cos + cat(x2, x1) * (±sin): the same products
        # (a sign flip is exact), two ops fewer per call; roll by half a head is cat(x2, x1)
        return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed

    @torch.inference_mode()
    def forward(self, cache: StaticCache, ids: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor,
                last_only: bool = True) -> torch.Tensor:
        """Run ``ids`` [B, W] (position ids ``pos``, ``valid`` marks real tokens vs padding) after what the
        cache holds, writing their keys and values at slots fill..fill+W; returns the logits of the last
        position [B, V] (``last_only``) or of all W positions."""
        B, W = ids.shape
        s0, s1, P = cache.fill, cache.fill + W, cache.n_shared
        if s1 > cache.capacity:
            raise ValueError(f"static cache full: {s1} slots needed, {cache.capacity} allocated")
        cache.valid[:, s0:s1] = valid.bool()
        keys_ok = cache.valid[:, :s1]
        nq, nk, hd = self.n_heads, self.n_kv, self.head_dim
        if W == 1:
            # Additive mask over the rows' own slots (shared slots are valid for all), built once per step for
            # every layer: 0 where a key is valid, -inf elsewhere, one row per (batch row, kv head) so it
            # broadcasts over the kv head's query group in baddbmm.
            neg = torch.zeros(B, 1, s1 - P, device=ids.device).masked_fill_(~keys_ok[:, None, P:], float("-inf"))
            neg = neg.repeat_interleave(nk, dim=0)                 # [B * nk, 1, s1 - P]
        else:   # causal within the new block, everything valid before it
            causal = torch.ones(W, s1, dtype=torch.bool, device=ids.device).tril(s0)
            mask = keys_ok[:, None, None, :] & causal[None, None]
            # a padding query row that sees nothing would give NaN; let it see itself (its output is unused)
            mask = mask | _diag(W, s0, s1, ids.device)[None, None]
        cos, sin = self._rope(pos)
        x = self.embed[ids]
        scale = 1.0 / math.sqrt(hd)
        shared = cache.shared
        for li, L in enumerate(self.layers):
            h = self._rms(x, L.ln1)
            qkv = L.qkv(h)
            # queries and keys rotated together (one set of ops for both)
            qk = self._rotate(qkv[..., : (nq + nk) * hd].view(B, W, nq + nk, hd).transpose(1, 2), cos, sin)
            q, k = qk[:, :nq], qk[:, nq:]
            v = qkv[..., (nq + nk) * hd:].view(B, W, nk, hd).transpose(1, 2)
            cache.k[li, :, :, s0 - P:s1 - P] = k
            cache.v[li, :, :, s0 - P:s1 - P] = v
            keys, values = cache.k[li, :, :, :s1 - P], cache.v[li, :, :, :s1 - P]
            if W == 1:
                att = self._attend(q, keys, values, neg, scale,
                                   (shared.k[li], shared.v[li]) if shared is not None else None)
            else:
                if shared is not None:   # a prefill after the shared prefix: every row sees it in full
                    keys = torch.cat([shared.k[li].expand(B, -1, -1, -1), keys], dim=2)
                    values = torch.cat([shared.v[li].expand(B, -1, -1, -1), values], dim=2)
                att = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale,
                                                     enable_gqa=nq != nk)
            x = x + L.o(att.transpose(1, 2).reshape(B, W, nq * hd))
            h = self._rms(x, L.ln2)
            gu = L.gate_up(h)
            g, u = gu.chunk(2, dim=-1)
            x = x + L.down(F.silu(g) * u)
        cache.fill = s1
        if last_only:
            x = x[:, -1]
        return self.head(self._rms(x, self.norm))

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, neg: torch.Tensor, scale: float,
                shared: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """One decode step's attention, [B, heads, 1, head dim]. The query heads of a kv head attend as a
        group, straight off the cache slices (no contiguous copy of the cache, no repeated kv heads); scores,
        scale and mask in one baddbmm ([B * nk, g, S]; the cache slices view as [B * nk, S, hd] without a copy).

        With a shared prefix (keys/values [nk, P, hd]) its scores are one product per kv head for all rows'
        queries ([nk, B * g, hd] x [hd, P]) instead of B products over B copies: a decode step reads the rows'
        keys and values from memory and is bound by that, so the prefix's share of the step nearly vanishes
        (measured, ``benchmarks/rollout_throughput.py``). One softmax over [prefix | own] keeps the arithmetic
        of a single attention."""
        B, nq, _, hd = q.shape
        nk, S = keys.shape[1], keys.shape[2]
        g = nq // nk
        qr = q.reshape(B * nk, g, hd)
        own = torch.baddbmm(neg, qr, keys.reshape(B * nk, S, hd).transpose(-1, -2), alpha=scale)
        vals = values.reshape(B * nk, S, hd)
        if shared is None:
            return (torch.softmax(own, dim=-1) @ vals).view(B, nq, 1, hd)
        sk, sv = shared
        P = sk.shape[1]
        qs = qr.view(B, nk, g, hd).transpose(0, 1).reshape(nk, B * g, hd) * scale
        sc = q.new_empty(B, nk, g, P + S)
        sc[..., :P] = torch.bmm(qs, sk.transpose(1, 2)).view(nk, B, g, P).transpose(0, 1)
        sc[..., P:] = own.view(B, nk, g, S)
        p = torch.softmax(sc, dim=-1)
        out = torch.bmm(p[..., P:].reshape(B * nk, g, S), vals).view(B, nk, g, hd)
        head = torch.bmm(p[..., :P].transpose(0, 1).reshape(nk, B * g, P), sv)      # [nk, B * g, hd]
        out += head.view(nk, B, g, hd).transpose(0, 1)
        return out.view(B, nq, 1, hd)


def _diag(W: int, s0: int, s1: int, device: torch.device) -> torch.Tensor:
    d = torch.zeros(W, s1, dtype=torch.bool, device=device)
    d[torch.arange(W), torch.arange(s0, s1)] = True
    return d
