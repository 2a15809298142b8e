"""REINFORCE on agent trajectories: the whole objective, top to bottom, in one file.

What goes in: groups of finished trajectories (one group = several attempts at the same task), each scored by
``sleuth.rewards`` (its ``judgement``: correct, outcome reward). What comes out: one AdamW step on the policy and a new weight version. Rollouts live elsewhere;
this file never samples.

1) Reward. Decided before the update, in one place (``rewards.score``: correct/incorrect, grounding, optional F1
   partial credit, format and budget penalties) and read from ``traj.judgement``; spread over the agent's steps
   by gamma-decay for correct trajectories (``rewards.token_rewards``).
2) Advantage. Per-token reward minus the group's mean outcome reward (optionally divided by the group std,
   ``normalize_std``). A group whose rewards are all equal carries no signal: it is counted and skipped.
3) Negative-sample control. A seeded fraction of the failed trajectories (``negative_drop_frac``) is left out
   of the loss; the baseline still uses the whole group. Fewer pushes-down keep entropy from collapsing.
4) Strict on-policy. One optimizer step per batch of rollouts, no reuse of data, no PPO ratio. Tokens that
   partial rollouts sampled with an OLDER weight version are either dropped (``off_policy='mask'``, the
   default: only tokens the current weights sampled get a gradient) or kept with a detached, clipped importance
   weight min(π/π_old, is_cap) (``off_policy='is'``: keeps the data of long resumed runs, at some variance).
   When the rollout engine's log-probs differ from the trainer's (a lower-precision engine), ``tis_cap`` > 0
   weights current-version tokens by min(π/μ, tis_cap) too, μ being what the engine sampled from (its recorded
   log-prob); ``logprob_mismatch`` (mean |logπ − logμ|) and ``logprob_mismatch_max`` measure the gap.
5) Loss. ``−Σ w·A·logπ / Σ mask`` over every trained token of the batch (token-level normalisation, as in
   nanochat's chat_rl.py), plus an optional k1.5-style ``τ/2·(logπ − logπ_old)²`` on the same tokens.
   Sequences are built only from recorded token ids: input = ids[:-1], target = ids[1:], loss mask = mask[1:]
   (a token is trained iff the policy sampled it; prompt and tool tokens are context only). A trajectory with a
   sequence longer than ``max_seq_len`` is never cut: it is left out whole and counted (see ``build_rows``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..rewards import require_judgement, token_rewards
from ..trajectory import Segment, Trajectory
from .config import TrainConfig


Group = list[Trajectory]   # attempts at the same task, each with its judgement; their mean reward is the baseline


# ------------------------------------------------------------------------------------------- 1-3. selection
def group_advantage(rewards: list[float], normalize_std: bool, eps: float = 1e-6) -> tuple[float, float] | None:
    """(baseline, scale) for a group, or None when all rewards are equal (no learning signal)."""
    r = np.asarray(rewards, dtype=np.float64)
    if len(r) == 0 or np.ptp(r) < 1e-12:
        return None
    return float(r.mean()), (float(r.std()) + eps if normalize_std else 1.0)


def negatives_to_drop(n_failed: int, frac: float, seed: int, version: int) -> set[int]:
    """Indices (into the list of failed trajectories) to leave out: floor(frac·n_failed) of them, seeded."""
    k = int(math.floor(frac * n_failed + 1e-9))
    if k <= 0:
        return set()
    rng = np.random.default_rng([seed, version])
    return {int(i) for i in rng.choice(n_failed, size=k, replace=False)}


@dataclass
class Selected:
    traj: Trajectory
    baseline: float
    scale: float


def select(groups: list[Group], cfg: TrainConfig, version: int) -> tuple[list[Selected], dict[str, float]]:
    """Rewards → group baselines → skip zero-variance groups → drop a fraction of the failed trajectories."""
    kept: list[Selected] = []
    skipped, all_rewards = 0, []
    for group in groups:
        rewards = [require_judgement(t).reward for t in group]
        all_rewards += rewards
        adv = group_advantage(rewards, cfg.normalize_std)
        if adv is None:
            skipped += 1
            continue
        kept += [Selected(t, *adv) for t in group]
    failed = [i for i, s in enumerate(kept) if not require_judgement(s.traj).correct]
    drop = negatives_to_drop(len(failed), cfg.negative_drop_frac, cfg.seed, version)
    drop_ids = {failed[i] for i in drop}
    kept = [s for i, s in enumerate(kept) if i not in drop_ids]
    stats = {
        "groups": float(len(groups)),
        "skipped_groups": float(skipped),
        "trajectories": float(len(all_rewards)),
        "trained_trajectories": float(len(kept)),
        "dropped_negatives": float(len(drop_ids)),
        "mean_reward": float(np.mean(all_rewards)) if all_rewards else 0.0,
        "accuracy": float(np.mean([require_judgement(t).correct for g in groups for t in g])) if groups else 0.0,
    }
    return kept, stats


# --------------------------------------------------------------------------------------------- 4. batches
@dataclass
class Row:
    """One training sequence (one Segment), already shifted: position t predicts targets[t]."""
    input_ids: list[int]
    targets: list[int]
    loss_mask: list[int]       # 1 = trained token (after off-policy masking)
    advantages: list[float]
    old_logprobs: list[float]  # sampling log-probs (π_old)
    is_old: list[int]          # 1 = sampled by an older weight version (and still trained: 'is' mode)


@dataclass
class RowStats:
    old_tokens: int = 0        # policy tokens from older versions
    masked_old: int = 0        # ... of which dropped ('mask' mode)
    overlong: int = 0          # trajectories left out whole: a sequence longer than max_seq_len
    truncated: int = 0         # tokens of those sequences beyond max_seq_len


def trained_length(seg: Segment) -> int:
    """Tokens of the segment up to and including its last policy token: what a training sequence needs.
    Trailing prompt/tool tokens (an observation after the last reply) are never targets and are dropped."""
    return max((t + 1 for t, m in enumerate(seg.mask) if m), default=0)


def build_rows(selected: list[Selected], cfg: TrainConfig, version: int) -> tuple[list[Row], RowStats]:
    """Training rows of the selected trajectories, one per segment.

    A trajectory with a segment longer than ``max_seq_len`` (after dropping trailing tool tokens) is left out
    whole and counted. Keeping the head would lose the final step, the one that carries the reward; keeping the
    tail or cutting windows would train log π(token | a truncated context), a distribution the policy never
    sampled from (the question itself sits at the start), so the gradient would no longer be the policy's.
    Its reward still counts in its group's baseline, as for a dropped negative.
    """
    rows, st = [], RowStats()
    for sel in selected:
        traj = sel.traj
        for seg in traj.segments:
            if not (len(seg.mask) == len(seg.logprobs) == len(seg.versions) == len(seg.steps)
                    == len(seg.token_ids)):
                raise ValueError(f"trajectory {traj.id}: segment fields have different lengths")
        lengths = [trained_length(seg) for seg in traj.segments]
        if any(n > cfg.max_seq_len for n in lengths):
            st.overlong += 1
            st.truncated += sum(max(n - cfg.max_seq_len, 0) for n in lengths)
            continue
        per_seg = token_rewards(traj, cfg.reward)
        for seg, rew, n in zip(traj.segments, per_seg, lengths):
            if n < 2:
                continue
            lm, old = [], []
            for t in range(1, n):
                m, v = seg.mask[t], seg.versions[t]
                if m and v > version:
                    raise ValueError(f"trajectory {traj.id}: token sampled by weight version {v}, but the trainer "
                                     f"is at version {version}; rollouts must use the trainer's weights")
                stale = bool(m and v < version)
                st.old_tokens += stale
                if stale and cfg.off_policy == "mask":
                    st.masked_old += 1
                    m = 0
                lm.append(int(m))
                old.append(int(stale and m))
            if not any(lm):
                continue
            rows.append(Row(
                input_ids=list(seg.token_ids[: n - 1]),
                targets=list(seg.token_ids[1:n]),
                loss_mask=lm,
                advantages=[(r - sel.baseline) / sel.scale for r in rew[1:n]],
                old_logprobs=[float(x) for x in seg.logprobs[1:n]],
                is_old=old,
            ))
    return rows, st


@dataclass
class Batch:
    input_ids: torch.Tensor       # [B, L] right-padded
    attention_mask: torch.Tensor  # [B, L]
    targets: torch.Tensor         # [B, L]
    loss_mask: torch.Tensor       # [B, L] bool
    advantages: torch.Tensor      # [B, L] float32
    old_logprobs: torch.Tensor    # [B, L] float32
    is_old: torch.Tensor          # [B, L] bool

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def suffix(self, start: int) -> "Batch":
        """The positions from ``start`` on (what follows a shared prefix)."""
        return Batch(*(getattr(self, f.name)[:, start:] for f in dataclasses.fields(self)))


def collate(rows: list[Row], device: str | torch.device = "cpu", pad_id: int = 0) -> Batch:
    L = max(len(r.input_ids) for r in rows)

    def pad(xs: list, v: Any, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor([x + [v] * (L - len(x)) for x in xs], dtype=dtype, device=device)

    return Batch(
        input_ids=pad([r.input_ids for r in rows], pad_id, torch.long),
        attention_mask=pad([[1] * len(r.input_ids) for r in rows], 0, torch.long),
        targets=pad([r.targets for r in rows], pad_id, torch.long),
        loss_mask=pad([r.loss_mask for r in rows], 0, torch.bool),
        advantages=pad([r.advantages for r in rows], 0.0, torch.float32),
        old_logprobs=pad([r.old_logprobs for r in rows], 0.0, torch.float32),
        is_old=pad([r.is_old for r in rows], 0, torch.bool),
    )


def shared_prefix_length(rows: list[Row], minimum: int) -> int:
    """Leading input tokens that every row has in common and that no row trains on (0 when under ``minimum``).

    Agent rows all start with the same system prompt and worked examples, and a group's rows with the same
    question: running that prefix once instead of once per row is exact (its keys and values are the same for
    every row, and gradients from every row flow back into the one copy)."""
    if len(rows) < 2:
        return 0
    first = rows[0].input_ids
    n = min(min(len(r.input_ids) for r in rows),
            min(r.loss_mask.index(1) if 1 in r.loss_mask else len(r.loss_mask) for r in rows))
    for r in rows[1:]:
        ids = r.input_ids
        i = 0
        while i < n and ids[i] == first[i]:
            i += 1
        n = i
    return n if n >= minimum else 0


class SharedPrefix:
    """The prefix's keys and values, computed once with gradients. Micro-batches attend to detached leaf
    copies (expanded to their rows, no copy); their gradients accumulate on the leaves, and ``backward``
    sends the sum through the prefix's forward once, after the last micro-batch."""

    def __init__(self, body: torch.nn.Module, ids: list[int], device: torch.device):
        out = body(input_ids=torch.tensor([ids], device=device), use_cache=True)
        self.length = len(ids)
        self.config = getattr(body, "config", None)
        self._kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        self._leaves = [(k.detach().requires_grad_(k.requires_grad), v.detach().requires_grad_(v.requires_grad))
                        for k, v in self._kv]

    def cache(self, rows: int):
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))
                                            for k, v in self._leaves], config=self.config)

    def backward(self) -> None:
        outs, grads = [], []
        for pair, leaves in zip(self._kv, self._leaves):
            for t, leaf in zip(pair, leaves):
                if leaf.grad is not None:
                    outs.append(t)
                    grads.append(leaf.grad)
        if outs:
            torch.autograd.backward(outs, grads)
        self._kv, self._leaves = [], []


# ---------------------------------------------------------------------------------------------- 5. loss
def _backbone_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """The transformer body and the LM head, when the head is a plain projection (no logit scaling)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model   # unwrap peft
    cfg = getattr(base, "config", None)
    if cfg is None or any(getattr(cfg, k, None) not in (None, 1.0) for k in
                          ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")):
        return None
    try:
        body, head = base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if body is None or not isinstance(head, torch.nn.Linear):
        return None
    return body, head


def token_logprobs(model: torch.nn.Module, batch: Batch, entropy: bool = False, temperature: float = 1.0,
                   prefix: SharedPrefix | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(target) at the trained positions (flattened, [N]), and their entropy (detached) if asked.

    π is the policy the rollouts sampled from: softmax(logits / temperature). Training that same tempered
    distribution keeps the objective on-policy at any sampling temperature (and the recorded sampling
    log-probs comparable: ``logprob_mismatch`` stays ~0).

    Only trained positions go through the LM head: on agent traces most tokens are prompt and tool output,
    and the vocabulary projection is a large part of a small model's cost.

    ``prefix``: ``batch`` holds the positions after a ``SharedPrefix`` that every row starts with.
    """
    sel = batch.loss_mask
    parts = _backbone_and_head(model)
    if prefix is not None:
        if parts is None:
            raise ValueError("a shared prefix needs a model with a plain LM head")
        body, head = parts
        b, w, p = batch.input_ids.shape[0], batch.input_ids.shape[1], prefix.length
        mask = torch.cat([batch.attention_mask.new_ones((b, p)), batch.attention_mask], dim=1)
        pos = torch.arange(p, p + w, device=batch.input_ids.device).expand(b, w)
        hidden = body(input_ids=batch.input_ids, attention_mask=mask, position_ids=pos,
                      past_key_values=prefix.cache(b), use_cache=True)[0]
        logits = head(hidden[sel]).float()
    elif parts is not None:
        body, head = parts
        hidden = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)[0]
        logits = head(hidden[sel]).float()
    else:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        logits = out.logits[sel].float()
    if temperature not in (0, 1):
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, batch.targets[sel].unsqueeze(-1)).squeeze(-1) - lse
    ent = None
    if entropy:
        with torch.no_grad():   # H = logsumexp − Σ p·logit, in chunks to bound the [N, V] temporaries
            ent = torch.cat([z - (torch.softmax(c, -1) * c).sum(-1)
                             for c, z in zip(logits.detach().split(1024), lse.detach().split(1024))]
                            or [logits.new_zeros(0)])
    return logp, ent


def reinforce_loss(logp: torch.Tensor, batch: Batch, n_total: int, cfg: TrainConfig
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """−Σ w·A·logπ / n_total  (+ τ/2·Σ(logπ − logπ_old)² / n_total) over this micro-batch's trained tokens.

    ``n_total`` is the number of trained tokens in the WHOLE batch, so summing the micro-batch losses gives the
    token-level mean over the batch whatever the micro-batching.
    """
    sel = batch.loss_mask
    adv, old, is_old = batch.advantages[sel], batch.old_logprobs[sel], batch.is_old[sel]
    w = torch.ones_like(logp)
    ratio = torch.exp(logp.detach() - old)
    if cfg.tis_cap > 0:   # the rollout engine's log-probs differ from ours: truncated importance weights
        w = torch.where(is_old, w, ratio.clamp(max=cfg.tis_cap))
    if cfg.off_policy == "is":
        w = torch.where(is_old, ratio.clamp(max=cfg.is_cap), w)
    pg = -(w * adv * logp).sum() / n_total
    l2 = (cfg.l2_tau / 2) * ((logp - old) ** 2).sum() / n_total if cfg.l2_tau > 0 else logp.new_zeros(())
    with torch.no_grad():
        cur = ~is_old
        stats = {
            "pg_loss": pg.detach(), "l2_loss": l2.detach(),
            "adv_sum": adv.sum(), "w_sum_old": w[is_old].sum(), "clipped_old": (w[is_old] >= cfg.is_cap).sum(),
            "n_old": is_old.sum(), "mismatch_sum": (logp.detach() - old)[cur].abs().sum(), "n_cur": cur.sum(),
            "mismatch_max": (logp.detach() - old)[cur].abs().max() if bool(cur.any()) else logp.new_zeros(()),
            "w_sum_cur": w[cur].sum(),
        }
    return pg + l2, stats


# ------------------------------------------------------------------------------------------------ trainer
class ReinforceTrainer:
    """Owns the weights being trained, their optimizer and the weight version.

    ``model`` is updated in place: a policy that samples from ``trainer.model`` sees each update at once and
    must tag new tokens with ``trainer.version``.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: TrainConfig, version: int = 0):
        self.cfg, self.tokenizer, self.version = cfg, tokenizer, int(version)
        self.device = torch.device(cfg.device)
        model = model.to(self.device)
        if cfg.lora_r > 0:
            from peft import LoraConfig, get_peft_model
            targets = "all-linear" if cfg.lora_target == "all-linear" else \
                [t.strip() for t in cfg.lora_target.split(",") if t.strip()]
            model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                     lora_dropout=cfg.lora_dropout, target_modules=targets,
                                                     task_type="CAUSAL_LM"))
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps,
                                           weight_decay=cfg.weight_decay)

    @property
    def is_lora(self) -> bool:
        return self.cfg.lora_r > 0

    def _autocast(self):
        if not self.cfg.bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def step(self, groups: list[Group]) -> dict[str, float]:
        """One REINFORCE update from groups of finished trajectories; returns metrics (incl. the new version)."""
        t0 = time.perf_counter()
        cfg = self.cfg
        for g in groups:
            for t in g:
                if not t.finished:
                    raise ValueError(f"trajectory {t.id} is not finished ({t.finish_reason!r}); "
                                     "unfinished runs belong in the replay buffer, not in an update")
        selected, metrics = select(groups, cfg, self.version)
        rows, rst = build_rows(selected, cfg, self.version)
        n_total = sum(sum(r.loss_mask) for r in rows)
        metrics.update(old_tokens=float(rst.old_tokens), masked_old_tokens=float(rst.masked_old),
                       overlong_trajectories=float(rst.overlong), truncated_tokens=float(rst.truncated),
                       tokens=float(n_total))
        metrics["trained_trajectories"] -= rst.overlong
        if n_total == 0:   # nothing to learn from: keep weights and version
            metrics.update(skipped_update=1.0, version=float(self.version), loss=0.0,
                           update_seconds=time.perf_counter() - t0)
            return metrics

        rows.sort(key=lambda r: -len(r.input_ids))   # similar lengths per micro-batch → less padding
        was_training = self.model.training
        self.model.train()
        acc: dict[str, float] = {}
        ent_sum, seq_tokens = 0.0, 0
        parts = _backbone_and_head(self.model)
        p = shared_prefix_length(rows, cfg.share_prefix_min) \
            if cfg.share_prefix and parts is not None and not cfg.gradient_checkpointing else 0
        prefix = None
        if p:
            with self._autocast():
                prefix = SharedPrefix(parts[0], rows[0].input_ids[:p], self.device)
        for i in range(0, len(rows), cfg.micro_batch_size):
            batch = collate(rows[i:i + cfg.micro_batch_size], self.device)
            seq_tokens += batch.n_tokens           # the rows' tokens, shared prefix included: comparable rates
            if prefix is not None:
                batch = batch.suffix(p)
            with self._autocast():
                logp, ent = token_logprobs(self.model, batch, entropy=cfg.log_entropy,
                                           temperature=cfg.temperature, prefix=prefix)
                loss, st = reinforce_loss(logp, batch, n_total, cfg)
            loss.backward()
            st["loss"] = loss.detach()
            for k, v in st.items():
                acc[k] = max(acc.get(k, 0.0), float(v)) if k == "mismatch_max" else acc.get(k, 0.0) + float(v)
            if ent is not None:
                ent_sum += float(ent.sum())
        if prefix is not None:
            prefix.backward()
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.train(was_training)
        self.version += 1

        dt = time.perf_counter() - t0
        n_old = acc["n_old"]
        metrics.update(
            skipped_update=0.0,
            loss=acc["loss"], pg_loss=acc["pg_loss"], l2_loss=acc["l2_loss"],
            entropy=ent_sum / n_total if cfg.log_entropy else float("nan"),
            mean_advantage=acc["adv_sum"] / n_total,
            is_weight_mean=acc["w_sum_old"] / n_old if n_old else 1.0,
            is_clipped_frac=acc["clipped_old"] / n_old if n_old else 0.0,
            logprob_mismatch=acc["mismatch_sum"] / acc["n_cur"] if acc["n_cur"] else 0.0,
            logprob_mismatch_max=acc["mismatch_max"],
            tis_weight_mean=acc["w_sum_cur"] / acc["n_cur"] if acc["n_cur"] else 1.0,
            grad_norm=grad_norm, lr=float(self.optimizer.param_groups[0]["lr"]),
            seq_tokens=float(seq_tokens), tokens_per_s=seq_tokens / dt, update_seconds=dt, shared_prefix=float(p),
            version=float(self.version),
        )
        return metrics
