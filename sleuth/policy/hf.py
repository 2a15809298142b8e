"""Local transformers causal LM as a token-in/token-out policy, with batched KV-cache generation.

``HFPolicy.generate`` advances every row of a batch together: prompts are left-padded, the whole batch is
prefilled once, then each step feeds one token per live row through a shared ``DynamicCache``. Rows that
finish are dropped from the batch (cache rows included), so a long straggler does not pay for the rest.
Rows are remembered in a prefix cache (``kvcache.PrefixCache``): the next agent step, whose prompt extends
a remembered row, prefills only its new tokens (the tool observation) instead of the whole context.

Log-probs: for each sampled token we return ``log_softmax(logits / T)[token]`` — the log-probability under
the temperature-T distribution the token was drawn from (raw ``log_softmax(logits)`` when greedy, T = 0).
Top-p truncation is *not* folded in: the value is the untruncated temperature-T log-prob, which is exactly
what ``logprobs(seqs, temperature=T)`` recomputes at training time, so importance ratios line up.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sleuth import paths
from sleuth.policy.base import Generation, SamplingParams
from sleuth.policy.engine import PRECISIONS, DecodeEngine, SharedPrefix, StaticCache, supports
from sleuth.policy.kvcache import PrefixCache, weights_key

log = logging.getLogger(__name__)

EMBEDDED_NAME = "smollm2-135m-instruct"
VERSION_FILE = "sleuth_version.json"
_SOURCE_FILE = "sleuth_source.json"   # records which GGUF a cached safetensors copy came from
ENGINES = ("static", "hf", "llama")


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _dtype(d: str | torch.dtype) -> torch.dtype:
    if isinstance(d, torch.dtype):
        return d
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if d not in table:
        raise ValueError(f"unknown dtype {d!r}; use one of {sorted(table)}")
    return table[d]


def adapter_dir(spec: str | os.PathLike | None) -> Path | None:
    """The directory when ``spec`` names a LoRA adapter (peft's ``adapter_config.json``), else None."""
    if spec is None:
        return None
    p = Path(spec).expanduser()
    return p if p.is_dir() and (p / "adapter_config.json").is_file() else None


def _read_version(model_dir: Path) -> dict[str, Any]:
    """``sleuth_version.json`` of a model or adapter directory ({} when absent): weight version, name, and for
    an adapter the base model it was trained on (``None`` = the embedded model)."""
    vfile = model_dir / VERSION_FILE
    if not vfile.exists():
        return {}
    try:
        meta = json.loads(vfile.read_text())
        int(meta["version"])
        return meta
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{vfile} is not valid ({e}); expected {{\"version\": <int>}}") from e


def embedded_cache_dir() -> Path:
    """Where the safetensors copy of the embedded GGUF model lives (under SLEUTH_HOME)."""
    return paths.models_dir() / EMBEDDED_NAME


def _gguf_signature(gguf: Path) -> dict[str, Any]:
    st = gguf.stat()
    return {"gguf": gguf.name, "size": st.st_size}


def ensure_embedded_checkpoint() -> Path:
    """Return a transformers directory for the embedded model, converting the GGUF once if needed.

    Dequantising the GGUF takes tens of seconds; the safetensors copy then loads in about a second.
    The copy is written to a temporary directory beside the target and renamed into place, so a crash or
    a concurrent process never leaves a half-written model behind.
    """
    _offline()
    gguf = paths.embedded_policy_gguf()
    target = embedded_cache_dir()
    want = _gguf_signature(gguf)
    src_file = target / _SOURCE_FILE
    if src_file.exists():
        try:
            if json.loads(src_file.read_text()) == want:
                return target
        except (OSError, json.JSONDecodeError):
            pass  # unreadable marker: rebuild below

    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s to safetensors under %s (one-time, ~40 s)", gguf.name, target)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already dequantised to float32; only the GGUF quantizer marker blocks saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / _SOURCE_FILE).write_text(json.dumps(want))
        if target.exists():  # stale copy (different GGUF or broken marker): move it aside first
            old = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}-old-", dir=target.parent))
            os.rename(target, old / "m")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / _SOURCE_FILE).exists():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.warning("converted in %.1f s", time.perf_counter() - t0)
    return target


def _common_prefix(seqs: list[list[int]]) -> int:
    """Length of the longest common prefix, leaving at least one token of each row to prefill."""
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for i in range(max(n, 0)):
        t = first[i]
        if any(s[i] != t for s in seqs):
            return i
    return max(n, 0)


class HFPolicy:
    """A transformers causal LM behind the TokenPolicy protocol."""

    def __init__(self, model: Any, tokenizer: Any, name: str = "hf", version: int = 0,
                 drop_finished: bool = True, prefix_cache: bool = True, engine: str = "hf",
                 precision: str = "fp32", dedupe_prompts: bool = True) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.version = int(version)
        self.agent_settings: dict[str, Any] = {}   # what a trained export was trained with (prompt, steps...)
        self.drop_finished = drop_finished   # drop finished rows from the batch (False: keep, ignore them)
        self.min_shared_prefix = 32          # share the KV cache of a common prompt prefix at least this long
        # Reuse the KV of earlier calls' rows for prompts that continue them (agent steps): see kvcache.py.
        self.prefix_cache: PrefixCache | None = PrefixCache() if prefix_cache else None
        self.pad_slack = 1.5   # prefill in length buckets when one joint prefill would pad more than this
        self.dedupe_prompts = dedupe_prompts   # prefill identical prompts of one call once (see _run)
        self.prefill_rows_saved = 0            # rows not prefilled because an identical prompt was
        self.device = next(model.parameters()).device
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self.eos_ids = self._eos_ids()
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.eos_ids))
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        # "hf": transformers' forward with a dynamic cache (the reference path, the default: on this project's
        # CPUs decoding is bound by the float32 matrix products, and the static engine measured no faster);
        # "static": sleuth's lean decode engine (engine.py) where the model allows, else transformers' forward;
        # "llama": llama.cpp sampling the current weights written to GGUF (llamacpp.py; fp32 -> f32 weights,
        # bf16 -> bf16, int8 -> q8_0), needs llama-cpp-python.
        self.engine, self.precision = engine, precision
        # decode engines by precision: switching precision (a benchmark interleaving engines) keeps each one's
        # prepared weights instead of preparing them again (~1 s for int8) inside the next generate call
        self._decoders: dict[str, DecodeEngine] = {}
        self._llama: dict[str, Any] = {}        # llama.cpp engines by weight type
        self.llama_slot_ctx = 2048                # positions per row in the llama engine (prompt + new tokens)
        self.gguf_template: Path | None = None   # metadata for the llama engine's GGUF (default: embedded model)

    # ---------------------------------------------------------------- loading / saving
    @classmethod
    def load(cls, spec: str | os.PathLike | None = None, dtype: str | torch.dtype = "float32",
             device: str | None = None, merge_adapter: bool = True) -> "HFPolicy":
        """``None``/``'smollm2'``/``'base'`` -> the embedded SmolLM2-135M-Instruct; a path -> that model
        directory (or a single ``.gguf`` file), or a LoRA adapter directory (``adapter_config.json``), which
        is applied to its base model and merged (``merge_adapter=False``: the base model alone, for a trainer
        that continues the adapter). Offline only: hub ids are not fetched."""
        _offline()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        adapter = adapter_dir(spec)
        if adapter is not None:
            meta = _read_version(adapter)
            base = cls.load(meta.get("base"), dtype=dtype, device=device)
            if merge_adapter:
                from peft import PeftModel
                base.model = PeftModel.from_pretrained(base.model, str(adapter)).merge_and_unload()
                base.model.to(_dtype(dtype))
            base.name, base.version = meta.get("name") or adapter.name, int(meta.get("version", 0))
            base.agent_settings = dict(meta.get("agent") or {})
            return base
        gguf_file = None
        if spec is None or str(spec).lower() in ("smollm2", "base", EMBEDDED_NAME):
            model_dir, name = ensure_embedded_checkpoint(), EMBEDDED_NAME
        else:
            p = Path(spec).expanduser()
            if not p.exists():
                raise FileNotFoundError(
                    f"policy model {str(spec)!r} not found: pass 'smollm2' (the embedded model) or a local "
                    "transformers model directory (models are never downloaded)")
            if p.is_file() and p.suffix == ".gguf":
                model_dir, gguf_file, name = p.parent, p.name, p.stem
            elif p.is_dir() and (p / "config.json").exists():
                model_dir, name = p, p.name
            else:
                raise FileNotFoundError(f"{p} is not a transformers model directory (no config.json) "
                                        "nor a .gguf file")
        kw: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
        tok = AutoTokenizer.from_pretrained(model_dir, **kw)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=_dtype(dtype), **kw)
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(dev)
        meta = _read_version(Path(model_dir))
        policy = cls(model, tok, name=name, version=int(meta.get("version", 0)))
        policy.agent_settings = dict(meta.get("agent") or {})
        if gguf_file:
            policy.gguf_template = Path(model_dir) / gguf_file   # its own metadata for a GGUF written back
        return policy

    def save(self, directory: str | os.PathLike) -> Path:
        """Write weights, tokenizer and ``sleuth_version.json`` atomically (temp dir, then rename)."""
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            (tmp / VERSION_FILE).write_text(json.dumps({"version": self.version, "name": self.name}))
            if target.exists():
                shutil.rmtree(target)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for v in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(v, int):
                ids.add(v)
            elif isinstance(v, (list, tuple)):
                ids.update(int(x) for x in v)
        if not ids:
            raise ValueError("the tokenizer has no eos token; generation could never end on its own")
        return ids

    # ---------------------------------------------------------------- validation
    def _check_sequences(self, seqs: Any, what: str, min_len: int = 1) -> list[list[int]]:
        if not isinstance(seqs, (list, tuple)) or not seqs:
            raise ValueError(f"{what} must be a non-empty list of token-id lists")
        out = []
        for i, s in enumerate(seqs):
            if isinstance(s, str):
                raise ValueError(f"{what}[{i}] is a string; encode it to token ids first")
            if not isinstance(s, (list, tuple)) or len(s) < min_len:
                raise ValueError(f"{what}[{i}] must be a list of at least {min_len} token id(s)")
            if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < self.vocab_size for t in s):
                raise ValueError(f"{what}[{i}] holds a value that is not a token id in [0, {self.vocab_size})")
            if self.max_positions and len(s) > self.max_positions:
                raise ValueError(f"{what}[{i}] has {len(s)} tokens; the model's context is {self.max_positions}")
            out.append(list(s))
        return out

    # ---------------------------------------------------------------- generation
    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], params: SamplingParams | None = None) -> list[Generation]:
        """Continue each prompt; all rows advance together in one batch with a shared KV cache."""
        params = params or SamplingParams()
        prompts = self._check_sequences(prompts, "prompts")
        if params.temperature < 0 or not (0 < params.top_p <= 1) or params.max_new_tokens < 0:
            raise ValueError(f"invalid sampling params {params}: need temperature >= 0, 0 < top_p <= 1, "
                             "max_new_tokens >= 0")
        n = len(prompts)
        out_ids: list[list[int]] = [[] for _ in range(n)]
        out_lp: list[list[float]] = [[] for _ in range(n)]
        reasons = ["length"] * n
        longest = max(len(p) for p in prompts)
        budget = params.max_new_tokens
        if self.max_positions:
            budget = min(budget, self.max_positions - longest)
        if budget > 0:
            self._run(prompts, params, budget, out_ids, out_lp, reasons)
        gens = []
        for ids, lps, why in zip(out_ids, out_lp, reasons):
            shown = ids[:-1] if why == "eos" else ids   # the text omits the eos marker; token_ids keep it
            gens.append(Generation(token_ids=ids, logprobs=lps, finish_reason=why,
                                   text=self.tokenizer.decode(shown, skip_special_tokens=False)))
        return gens

    def _run(self, prompts: list[list[int]], params: SamplingParams, budget: int,
             out_ids: list[list[int]], out_lp: list[list[float]], reasons: list[str]) -> None:
        stop_window = 4 * max((len(s) for s in params.stop), default=0) + 4  # tokens to re-decode per check
        if self.engine == "llama":
            self.llama_engine().generate(
                prompts, budget, lambda logits: self._sample(logits, params),
                lambda rows, tok_l, lp_l: self._accept(rows, tok_l, lp_l, out_ids, out_lp, reasons, params,
                                                       budget, stop_window),
                reuse=self.prefix_cache is not None)
            return
        dev = self.device
        pc = self.prefix_cache
        # Identical prompts are prefilled once. A group of trajectories on one task starts from one prompt,
        # and a confident policy often writes the same first step in several of them, so after the first tool
        # call a group holds few distinct prompts (measured in a research-stage rollout: 32 rows, 8-12
        # distinct, the prefill being ~70% of its generation time). Their rows are copies of the same KV, so
        # decoding the copied batch samples exactly as a batch that prefilled every row.
        distinct: dict[tuple[int, ...], int] = {}
        copy_of = [distinct.setdefault(tuple(p), len(distinct)) if self.dedupe_prompts else i
                   for i, p in enumerate(prompts)]
        heads = [list(p) for p in distinct] if self.dedupe_prompts else prompts
        self.prefill_rows_saved += len(prompts) - len(heads)
        reuse = [(0, None)] * len(heads)
        if pc is not None:
            # KV is only valid for the weights AND the arithmetic that computed it: an int8 engine's entries
            # reused by the fp32 path would make it sample (and record log-probs of) another policy.
            pc.validate((weights_key(self.model), self.engine, self.precision))
            reuse = [pc.lookup(p) for p in heads]
            n_reused = sum(n for n, _ in reuse)   # counted before this call's own bucketed prefill
            pc.hits += n_reused
            pc.misses += sum(len(p) for p in heads) - n_reused
            if self._prefill_in_buckets(heads, reuse):
                reuse = [pc.lookup(p) for p in heads]
        cache, ids, mask, pos = self._layout(heads, reuse)
        eng = self.decode_engine()
        dec = _StaticDecoder(eng, cache, mask, ids.shape[1], budget) if eng is not None else \
            _HFDecoder(self.model, cache, mask, ids.shape[1])
        try:
            logits = dec.prefill(ids, pos)
            if len(heads) < len(prompts):
                sel = torch.tensor(copy_of, device=dev)
                dec.expand(sel)
                logits, pos = logits[sel], pos[sel]
            rows = list(range(len(prompts)))            # batch row -> original prompt index
            next_pos = pos[:, -1:] + 1

            for step in range(budget):
                tok, lp = self._sample(logits, params)
                keep = self._accept(rows, tok.tolist(), lp.tolist(), out_ids, out_lp, reasons, params, budget,
                                    stop_window)
                if not keep or step == budget - 1:
                    break
                if self.drop_finished and len(keep) < len(rows):
                    if pc is not None:
                        kept = set(keep)
                        done = [(b, r) for b, r in enumerate(rows) if b not in kept]
                        self._remember(dec.row_kv, dec.mask, done, prompts, out_ids)
                    sel = torch.tensor(keep, device=dev)
                    dec.select(sel)
                    next_pos, tok = next_pos[sel], tok[sel]
                    rows = [rows[b] for b in keep]
                logits = dec.step(tok, next_pos)
                next_pos = next_pos + 1
            if pc is not None:
                self._remember(dec.row_kv, dec.mask, list(enumerate(rows)), prompts, out_ids)
        finally:   # a pooled cache's buffer goes back for the next call
            dec.release()

    def _accept(self, rows: list[int], tok_l: list[int], lp_l: list[float], out_ids: list[list[int]],
                out_lp: list[list[float]], reasons: list[str], params: SamplingParams, budget: int,
                stop_window: int) -> list[int]:
        """Record one sampled token per batch row; returns the batch positions whose rows go on."""
        keep: list[int] = []
        for b, r in enumerate(rows):
            if reasons[r] != "length" or len(out_ids[r]) >= budget:
                continue  # finished earlier but still in the batch (drop_finished=False)
            out_ids[r].append(tok_l[b])
            out_lp[r].append(lp_l[b])
            if tok_l[b] in self.eos_ids:
                reasons[r] = "eos"
            elif params.stop and self._hit_stop(out_ids[r], params.stop, stop_window):
                reasons[r] = "stop"
            elif len(out_ids[r]) < budget:
                keep.append(b)
        return keep

    def llama_engine(self) -> Any:
        """The llama.cpp engine holding the model's current weights (exported again after they change)."""
        from sleuth.policy.llamacpp import LlamaCppEngine

        weight_type = {"fp32": "f32", "bf16": "bf16", "int8": "q8_0"}[self.precision]
        eng = self._llama.get(weight_type)
        if eng is None:
            template = self.gguf_template or paths.embedded_policy_gguf()
            eng = self._llama[weight_type] = LlamaCppEngine(self.model, template, weight_type=weight_type,
                                                            slot_ctx=self.llama_slot_ctx,
                                                            threads=torch.get_num_threads())
        else:
            eng.refresh(self.model)
        return eng

    def release_buffers(self) -> None:
        """Free the decode engine's kept KV buffers (``DecodeEngine.new_cache``): a trainer calls this when
        its rollouts end, so the update has the memory."""
        for eng in self._decoders.values():
            eng.drop_spare()

    def decode_engine(self) -> DecodeEngine | None:
        """The lean decode engine with the model's current weights (None: the reference path is used)."""
        if self.engine != "static" or not supports(self.model):
            return None
        eng = self._decoders.get(self.precision)
        if eng is None:
            eng = self._decoders[self.precision] = DecodeEngine(self.model, self.precision)
        else:
            eng.refresh()
        return eng

    @torch.inference_mode()   # like generate: the engine's pooled KV buffers are inference tensors
    def _prefill_in_buckets(self, prompts: list[list[int]], reuse: list[tuple[int, int | None]]) -> bool:
        """Rows whose uncached parts differ much in length (a resumed long trajectory beside fresh short ones)
        would all be padded to the longest in one joint prefill. Instead prefill them into the prefix cache
        in buckets of similar length (padding at most ``pad_slack`` x the real tokens), leaving each row's
        last token for the joint pass. Returns whether anything was prefilled."""
        todo = [len(p) - n for p, (n, _) in zip(prompts, reuse)]
        if max(todo) * len(prompts) <= self.pad_slack * sum(todo) or max(todo) < 2 * self.min_shared_prefix:
            return False
        order = sorted(range(len(prompts)), key=lambda i: -todo[i])
        buckets: list[list[int]] = [[]]
        for i in order:
            cur = buckets[-1]
            if cur and todo[cur[0]] * (len(cur) + 1) > self.pad_slack * (sum(todo[j] for j in cur) + todo[i]):
                buckets.append([i])
            else:
                cur.append(i)
        if len(buckets) == 1:
            return False
        eng = self.decode_engine()
        for bucket in buckets:
            if todo[bucket[0]] <= self.min_shared_prefix:   # short remainders: the joint pass takes them
                break
            heads = [prompts[i][:-1] for i in bucket]
            rows = list(enumerate(range(len(heads))))
            cache, ids, mask, pos = self._layout(heads, [self.prefix_cache.lookup(h) for h in heads])
            if eng is None:
                self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                           use_cache=True, logits_to_keep=1)
                self._remember(_dynamic_row_kv(cache), mask, rows, heads, [[] for _ in heads])
            else:   # the engine's own arithmetic (and speed): its KV is what its decode steps continue
                dec = _StaticDecoder(eng, cache, mask, ids.shape[1], 0)
                dec.prefill(ids, pos)
                self._remember(dec.row_kv, dec.mask, rows, heads, [[] for _ in heads])
                dec.release()
        return True

    def _layout(self, prompts: list[list[int]], reuse: list[tuple[int, int | None]]):
        """(cache, ids, mask, position ids) for one prefill: cached rows when any prompt continues one."""
        if any(eid is not None for _, eid in reuse):
            return self._layout_cached(prompts, reuse)
        return self._layout_shared(prompts)

    def _layout_shared(self, prompts: list[list[int]]):
        """Fresh prompts: prefill a common prefix (system prompt, worked example) once, share its KV across
        the batch; every row then prefills only its own suffix. Layout per row: [prefix | pads | suffix]. The
        static engine keeps the prefix as one copy for all rows (``SharedPrefix``); transformers' cache holds
        a copy per row."""
        from transformers import DynamicCache

        dev = self.device
        eng = self.decode_engine()
        shared = _common_prefix(prompts) if len(prompts) > 1 else 0
        shared = shared if shared >= self.min_shared_prefix else 0
        cache: Any = _EnginePast(None, None) if eng is not None else DynamicCache(config=self.model.config)
        if shared and eng is not None:
            # The engine's own arithmetic for the prefix too: its int8/bf16 products are the policy that
            # samples, and they run the prefix 2-4x faster than the float32 forward.
            cache = _EnginePast(eng.shared_prefix(prompts[0][:shared]), None)
        elif shared:
            head = torch.tensor([prompts[0][:shared]], device=dev)
            pos = torch.arange(shared, device=dev)[None]
            self.model(input_ids=head, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache.batch_repeat_interleave(len(prompts))
        suffixes = [p[shared:] for p in prompts]
        width = max(len(p) for p in suffixes)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for i, p in enumerate(suffixes):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, shared + width - len(p):] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]  # real tokens count 0.. from their own first token
        return cache, ids, mask, pos

    def _layout_cached(self, prompts: list[list[int]], reuse: list[tuple[int, int | None]]):
        """Prompts continuing cached rows: row i takes the first n_i positions' KV from the prefix cache and
        prefills the rest. Layout per row: [pads | cached n_i | pads | new suffix]; pads are masked out and
        position ids count real tokens only, so every token sees exactly its own sequence.

        With the static engine, when every row continues a cached entry and all share a first P positions
        (an agent's system prompt and worked example), those are held once: [shared P | pads | cached n_i - P
        | pads | new suffix], the shared KV taken from the first row's entry (the same tokens at the same
        positions under the same weights)."""
        from transformers import DynamicCache

        dev, pc = self.device, self.prefix_cache
        assert pc is not None
        eng = self.decode_engine()
        b = len(prompts)
        P = 0
        if eng is not None and b > 1 and all(eid is not None for _, eid in reuse):
            P = min(_common_prefix(prompts), min(n for n, _ in reuse))
            P = P if P >= self.min_shared_prefix else 0
        shared = None
        if P:
            head = pc.kv(reuse[0][1], P)
            shared = SharedPrefix(k=torch.stack([k for k, _ in head]), v=torch.stack([v for _, v in head]))
        c = max(n - P for n, _ in reuse)
        suffixes = [p[n:] for p, (n, _) in zip(prompts, reuse)]
        width = max(len(s) for s in suffixes)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, P + c + width), dtype=torch.long)
        mask[:, :P] = 1
        per_row = [pc.kv(eid, n) if eid is not None else None for n, eid in reuse]
        template = next(kv for kv in per_row if kv is not None)
        layers = []
        for li, (k0, v0) in enumerate(template):
            keys = k0.new_zeros((b, k0.shape[0], c, k0.shape[2]))
            values = v0.new_zeros((b, v0.shape[0], c, v0.shape[2]))
            for i, kv in enumerate(per_row):
                if kv is not None:
                    n = kv[li][0].shape[1] - P
                    if n:
                        keys[i, :, c - n:] = kv[li][0][:, P:]
                        values[i, :, c - n:] = kv[li][1][:, P:]
            layers.append((keys, values))
        for i, ((n, _), s) in enumerate(zip(reuse, suffixes)):
            mask[i, P + c - (n - P):P + c] = 1
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, P + c + width - len(s):] = 1
        cache = _EnginePast(shared, layers) if eng is not None else \
            DynamicCache(ddp_cache_data=layers, config=self.model.config)
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, P + c:]
        return cache, ids, mask, pos

    def _remember(self, row_kv: Any, mask: torch.Tensor, rows: list[tuple[int, int]], prompts: list[list[int]],
                  out_ids: list[list[int]]) -> None:
        """Store batch rows (batch index, prompt index) in the prefix cache: the KV of their real positions,
        i.e. the prompt and the generated tokens fed so far (the last sampled token never was).
        ``row_kv(b, idx)`` gives row b's per-layer (keys, values) at slots idx."""
        assert self.prefix_cache is not None
        for b, r in rows:
            idx = mask[b].nonzero().squeeze(-1)
            tokens = (prompts[r] + out_ids[r])[:len(idx)]
            idx = idx[:len(tokens)]
            self.prefix_cache.store(tokens, row_kv(b, idx))

    def _hit_stop(self, ids: list[int], stops: list[str], window: int) -> bool:
        # Only the tail can hold a stop string completed by the newest token; earlier hits already stopped.
        tail = self.tokenizer.decode(ids[-window:], skip_special_tokens=False)
        return any(s and s in tail for s in stops)

    @staticmethod
    def _sample(logits: torch.Tensor, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits.float()
        if params.temperature == 0:
            logp = torch.log_softmax(logits, dim=-1)
            tok = logp.argmax(dim=-1)
            return tok, logp.gather(-1, tok[:, None]).squeeze(-1)
        logp = torch.log_softmax(logits / params.temperature, dim=-1)
        probs = logp.exp()
        si = None
        if params.top_p < 1.0:
            probs, si = probs.sort(dim=-1, descending=True)
            # keep the smallest prefix whose mass reaches top_p (the top token always survives)
            drop = (probs.cumsum(-1) - probs) >= params.top_p
            probs = probs.masked_fill(drop, 0.0)
        pick = _inverse_cdf(probs)
        tok = (si.gather(-1, pick) if si is not None else pick).squeeze(-1)
        return tok, logp.gather(-1, tok[:, None]).squeeze(-1)

    # ---------------------------------------------------------------- scoring
    def logprob_gap(self, prompts: list[list[int]], gens: list[Generation], temperature: float) -> list[float]:
        """trainer log-prob − recorded log-prob for every sampled token of ``gens`` (continuations of
        ``prompts``), the trainer's from a teacher-forced forward of these weights at ``temperature``: the gap
        the update's importance weights correct when a decode engine's log-probs are not the trainer's."""
        ref = self.logprobs([p + g.token_ids for p, g in zip(prompts, gens)], temperature=temperature)
        return [r - e for p, g, lp in zip(prompts, gens, ref) for r, e in zip(lp[len(p) - 1:], g.logprobs)]

    @torch.inference_mode()
    def logprobs(self, sequences: list[list[int]], temperature: float = 1.0,
                 max_batch_tokens: int = 4096) -> list[list[float]]:
        """Teacher-forced log-probs: ``out[i][j] = log p(seq[j+1] | seq[:j+1])`` (len(seq) - 1 values).

        ``temperature`` divides the logits first (pass the sampling temperature to reproduce the values
        ``generate`` returned; T = 0 means greedy and scores at T = 1 like ``generate`` does)."""
        seqs = self._check_sequences(sequences, "sequences", min_len=1)
        scale = 1.0 if temperature in (0, 1) else float(temperature)
        if temperature < 0:
            raise ValueError("temperature must be >= 0")
        result: list[list[float]] = [[] for _ in seqs]
        for chunk in self._length_batches(seqs, max_batch_tokens):
            width = max(len(seqs[i]) for i in chunk)
            if width < 2:
                continue
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for b, i in enumerate(chunk):   # right padding: positions are then simply 0..n-1
                ids[b, :len(seqs[i])] = torch.tensor(seqs[i])
                mask[b, :len(seqs[i])] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1, :].float() / scale
            lp = logits.gather(-1, ids[:, 1:, None]).squeeze(-1) - logits.logsumexp(dim=-1)
            del logits
            for b, i in enumerate(chunk):
                result[i] = lp[b, :len(seqs[i]) - 1].tolist()
        return result

    @staticmethod
    def _length_batches(seqs: list[list[int]], max_tokens: int) -> list[list[int]]:
        """Group indices by similar length (little padding) so that rows x width stays under max_tokens:
        the logits alone are width x vocab floats per row."""
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        batches: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            if cur and (len(cur) + 1) * len(seqs[i]) > max_tokens:
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
        return batches

    def __repr__(self) -> str:
        return f"HFPolicy(name={self.name!r}, version={self.version}, device={self.device})"


_CDF_BLOCK = 128


def _inverse_cdf(probs: torch.Tensor) -> torch.Tensor:
    """One token per row drawn from unnormalised probabilities [B, V]: indices [B, 1].

    Inverse-CDF sampling: one uniform number per row against the cumulative probabilities (float64, so tokens
    of tiny probability keep their share). Same distribution as torch.multinomial, whose exponential draw over
    the whole vocabulary took 6-15 ms per step for 16 rows (more than a decode step of the int8 engine). In two
    levels: the uniform number picks a block of 128 tokens from the blocks' cumulative mass, then a token from
    that block's own cumulative mass, so only V/128 + 128 running sums are taken per row instead of V (a float64
    cumulative sum over SmolLM2's 49k-token vocabulary was ~0.7 ms of each decode step). A token of zero
    probability is never picked: its cumulative value equals its predecessor's, and searchsorted(right=True)
    returns the first index whose value exceeds u; a draw that float rounding puts at or past a total falls on
    the last block, or token, of positive probability."""
    B, V = probs.shape
    nb = -(-V // _CDF_BLOCK)
    if nb * _CDF_BLOCK != V:
        probs = torch.nn.functional.pad(probs, (0, nb * _CDF_BLOCK - V))   # zero mass: never drawn
    blocks = probs.view(B, nb, _CDF_BLOCK)
    outer = blocks.sum(-1, dtype=torch.float64).cumsum(-1)                  # [B, nb]
    u = torch.rand(B, 1, dtype=torch.float64, device=probs.device) * outer[:, -1:]
    last_block = (outer < outer[:, -1:]).sum(-1, keepdim=True)             # the last block with mass
    j = torch.minimum(torch.searchsorted(outer, u, right=True), last_block)  # [B, 1]
    rest = u - torch.where(j > 0, outer.gather(-1, (j - 1).clamp(min=0)), torch.zeros_like(u))
    inner = blocks.gather(1, j[:, :, None].expand(B, 1, _CDF_BLOCK)).squeeze(1).double().cumsum(-1)
    last = (inner < inner[:, -1:]).sum(-1, keepdim=True)                    # the block's last token with mass
    k = torch.minimum(torch.searchsorted(inner, rest, right=True), last)
    return j * _CDF_BLOCK + k


def _dynamic_row_kv(cache: Any):
    return lambda b, idx: [(layer.keys[b][:, idx].clone(), layer.values[b][:, idx].clone())
                           for layer in cache.layers]


class _HFDecoder:
    """The reference decode path: transformers' forward over a DynamicCache, the mask grown every step."""

    def __init__(self, model: Any, cache: Any, mask: torch.Tensor, width: int):
        self.model, self.cache, self.mask = model, cache, mask

    def prefill(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=self.mask, position_ids=pos, past_key_values=self.cache,
                          use_cache=True, logits_to_keep=1).logits[:, -1, :]

    def step(self, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=-1)
        return self.model(input_ids=tok[:, None], attention_mask=self.mask, position_ids=pos,
                          past_key_values=self.cache, use_cache=True).logits[:, -1, :]

    def select(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]

    def expand(self, rows: torch.Tensor) -> None:
        """Batch row i becomes a copy of row rows[i] (a deduplicated prefill fanned out)."""
        self.select(rows)

    def release(self) -> None:
        pass

    def row_kv(self, b: int, idx: torch.Tensor):
        return _dynamic_row_kv(self.cache)(b, idx)


@dataclass
class _EnginePast:
    """What a prefill continues on the static engine: a prefix shared by every row (or None) and per layer the
    rows' own earlier keys and values [batch, kv heads, n, head dim] (or None: nothing of their own yet)."""
    shared: SharedPrefix | None
    layers: list[tuple[torch.Tensor, torch.Tensor]] | None


class _StaticDecoder:
    """The lean path: the prefilled past (shared prefix or cached rows) moves into a StaticCache sized for the
    whole generation, then the engine runs the new tokens and every decode step."""

    def __init__(self, eng: DecodeEngine, cache: "_EnginePast", mask: torch.Tensor, width: int, budget: int):
        self.eng = eng
        past = mask.shape[1] - width
        self.sc: StaticCache = eng.new_cache(mask.shape[0], mask.shape[1] + budget, pooled=True,
                                             shared=cache.shared)
        if past > self.sc.n_shared:
            self.sc.load(cache.layers, mask[:, :past])
        self._new_mask = mask[:, past:]

    @property
    def mask(self) -> torch.Tensor:
        return self.sc.valid[:, :self.sc.fill]

    def prefill(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.eng.forward(self.sc, ids, pos, self._new_mask)

    def step(self, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.eng.forward(self.sc, tok[:, None], pos, torch.ones_like(pos, dtype=torch.bool))

    def select(self, rows: torch.Tensor) -> None:
        self.sc.select(rows)

    def expand(self, rows: torch.Tensor) -> None:
        full = self.eng.new_cache(len(rows), self.sc.capacity, pooled=True, shared=self.sc.shared)
        full.copy_rows(self.sc, rows.tolist())
        self.eng.release(self.sc)
        self.sc = full

    def release(self) -> None:
        self.eng.release(self.sc)

    def row_kv(self, b: int, idx: torch.Tensor):
        return self.sc.row_kv(b, idx)
