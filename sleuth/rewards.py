"""Outcome rewards for agent trajectories: correctness, format penalty, budget penalty, gamma-decay.

The reward of a trajectory is decided once, at the end (an *outcome* reward): ``correct_reward`` when the
answer was judged correct, ``incorrect_reward`` (plus optional F1 partial credit) otherwise, minus penalties
for invalid tool calls and for running out of budget. Gamma-decay then spreads the outcome over the agent's
steps: for a CORRECT trajectory of T steps, step i (1-based) gets ``r·γ^(T−i)`` — the final step the full
reward, earlier steps less, so that of two correct trajectories the shorter one earns more credit per step.
A failed trajectory keeps the same flat reward on every step (decaying a negative or zero reward would only
make early mistakes look *better*).

Format penalty: ``format_penalty`` per invalid tool call, capped at ``format_penalty_cap`` in total. Per-error
(not flat) so that one slip costs little and repeated slips cost more; capped so that a run of parse errors
cannot outweigh the correctness signal.
"""

from __future__ import annotations

from dataclasses import dataclass

from .trajectory import Trajectory

BUDGET_REASONS = frozenset({"max_steps", "context"})


@dataclass
class RewardConfig:
    correct_reward: float = 1.0
    """Reward of a trajectory whose answer was judged correct."""
    incorrect_reward: float = 0.0
    """Reward of a trajectory without a correct answer (before penalties)."""
    format_penalty: float = 0.1
    """Subtracted once per invalid tool call (``Trajectory.format_errors``)."""
    format_penalty_cap: float = 0.3
    """Upper bound on the total format penalty of one trajectory."""
    budget_penalty: float = 0.1
    """Subtracted when the run ended by exhausting its budget (finish_reason max_steps or context)."""
    partial_credit: float = 0.0
    """Weight of the answer's token F1 added to an INCORRECT trajectory's reward (0 = strict outcome only).
    A small model rarely hits the strict judge; F1 credit ranks its wrong answers (near miss > nonsense)
    so groups still carry signal. Kept below ``correct_reward`` so a correct answer always wins."""
    require_evidence: bool = False
    """Count an answer as correct (and give it partial credit) only if it occurs in a search result or page
    the agent was shown during the trajectory (``traj.meta['evidence_url']``). Without it a small policy
    learns to guess from the question (e.g. name one side of a comparison) and stops searching."""
    gamma: float = 0.9
    """Per-step decay of a correct trajectory's reward: step i of T gets r·γ^(T−i)."""
    gamma_decay: bool = True
    """Apply gamma-decay to correct trajectories (False: every step gets the outcome reward)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if not 0.0 <= self.partial_credit < self.correct_reward - self.incorrect_reward:
            raise ValueError("partial_credit must be in [0, correct_reward - incorrect_reward)")
        if self.format_penalty < 0 or self.format_penalty_cap < 0 or self.budget_penalty < 0:
            raise ValueError("penalties must be >= 0 (they are subtracted)")


def outcome_reward(traj: Trajectory, correct: bool, cfg: RewardConfig | None = None, f1: float = 0.0) -> float:
    """The scalar reward of one finished trajectory (``f1``: its answer's token F1, for partial credit)."""
    cfg = cfg or RewardConfig()
    r = cfg.correct_reward if correct else cfg.incorrect_reward + cfg.partial_credit * float(f1)
    r -= min(traj.format_errors * cfg.format_penalty, cfg.format_penalty_cap)
    if traj.finish_reason in BUDGET_REASONS:
        r -= cfg.budget_penalty
    return float(r)


def grounded(traj: Trajectory) -> bool:
    """Whether the final answer occurs in something the agent was shown (recorded by the agent at finish)."""
    return bool(traj.meta.get("evidence_url"))


def step_rewards(T: int, r: float, gamma: float) -> list[float]:
    """``[r·γ^(T−i) for i = 1..T]``: the last step gets r, each earlier step a factor γ less."""
    return [r * gamma ** (T - i) for i in range(1, T + 1)]


def _decay_exponents(traj: Trajectory) -> dict[int, int]:
    """Map each recorded step index to its distance from the final step (T − i).

    Anchored on the final step rather than on a numbering convention, so 0-based step indices (what the agent
    writes) and 1-based ones give the same exponents: last = max(T − 1, largest recorded index).
    """
    seen = {s for seg in traj.segments for s, m in zip(seg.steps, seg.mask) if m and s >= 0}
    if not seen:
        return {}
    last = max(traj.steps - 1, max(seen))
    return {s: last - s for s in seen}


def token_rewards(traj: Trajectory, correct: bool, cfg: RewardConfig | None = None,
                  reward: float | None = None) -> list[list[float]]:
    """Per-segment, per-token rewards: the reward of the token's step on sampled tokens, 0.0 elsewhere.

    ``reward`` overrides the outcome reward (e.g. one computed by a judge); gamma-decay still applies only when
    ``correct`` is true.
    """
    cfg = cfg or RewardConfig()
    r = outcome_reward(traj, correct, cfg) if reward is None else float(reward)
    exps = _decay_exponents(traj) if (correct and cfg.gamma_decay) else {}
    out: list[list[float]] = []
    for seg in traj.segments:
        out.append([
            (r * cfg.gamma ** exps.get(s, 0) if exps else r) if m else 0.0
            for m, s in zip(seg.mask, seg.steps)
        ])
    return out
