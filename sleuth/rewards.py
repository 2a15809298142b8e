"""The one place a trajectory's reward is decided: correct, grounded, outcome reward, per-token rewards.

``judge_trajectory(traj, gold, judge, cfg)`` asks the judge about the final answer and hands its verdict to
``score(traj, judged_correct, cfg)``, which decides everything the trainer reads and records it on the trajectory
as a ``Judgement``: whether it counts as correct (judged correct, and grounded when ``require_evidence``), whether
it is grounded, and its outcome reward. ``token_rewards(traj, cfg)`` spreads that reward over the sampled tokens.

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
from typing import TYPE_CHECKING, Sequence

from sleuth.trajectory import Judgement, Trajectory

if TYPE_CHECKING:
    from sleuth.tasks.judges import Judge

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
    recall_credit: float = 0.0
    """Added to an INCORRECT trajectory's reward when a gold answer occurs in what the agent was shown (its
    observations): a retrieval-recall term, 0 = pure outcome reward. On a bridge the answer only shows up after
    the search for the hidden entity, so the term rewards the second hop before the policy can read it off.
    Kept below ``correct_reward`` (with ``partial_credit``) so a correct answer always wins."""
    require_evidence: bool = False
    """Count an answer as correct (and give it partial credit) only if it occurs in a search result or page
    the agent was shown during the trajectory (``traj.evidence_url``). Without it a small policy
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
        if self.recall_credit < 0 or self.partial_credit + self.recall_credit >= self.correct_reward - self.incorrect_reward:
            raise ValueError("recall_credit must be >= 0 and partial_credit + recall_credit below "
                             "correct_reward - incorrect_reward")
        if self.format_penalty < 0 or self.format_penalty_cap < 0 or self.budget_penalty < 0:
            raise ValueError("penalties must be >= 0 (they are subtracted)")


def outcome_reward(traj: Trajectory, correct: bool, cfg: RewardConfig | None = None, f1: float = 0.0,
                   recalled: bool = False) -> float:
    """The scalar reward of one finished trajectory (``f1``: its answer's token F1, for partial credit;
    ``recalled``: a gold answer was in its observations, for the recall credit)."""
    cfg = cfg or RewardConfig()
    r = (cfg.correct_reward if correct else
         cfg.incorrect_reward + cfg.partial_credit * float(f1) + cfg.recall_credit * float(recalled))
    r -= min(traj.format_errors * cfg.format_penalty, cfg.format_penalty_cap)
    if traj.finish_reason in BUDGET_REASONS:
        r -= cfg.budget_penalty
    return float(r)


def gold_shown(traj: Trajectory) -> bool:
    """Whether a gold answer occurs in one of the observations of the transcript — what the agent was shown,
    whatever it answered (retrieval recall)."""
    from sleuth.tasks.judges import mentions

    return bool(traj.gold) and mentions(" ".join(traj.observations()), traj.gold)


def grounded(traj: Trajectory) -> bool:
    """Whether the final answer occurs in something the agent was shown (recorded by the agent at finish)."""
    return bool(traj.evidence_url)


def score(traj: Trajectory, judged_correct: bool, cfg: RewardConfig | None = None, *, em: float = 0.0,
          f1: float = 0.0, cover: float = 0.0) -> Judgement:
    """Decide a finished trajectory's correctness and reward from the judge's verdict; sets ``traj.judgement``.

    With ``require_evidence`` an answer nobody showed the agent earns nothing: it is not correct and gets no
    partial credit, whatever the judge said.
    """
    cfg = cfg or RewardConfig()
    shown = grounded(traj)
    recalled = gold_shown(traj)
    ok = shown or not cfg.require_evidence
    correct = bool(judged_correct) and ok
    traj.judgement = Judgement(correct=correct, reward=outcome_reward(traj, correct, cfg, f1=f1 if ok else 0.0,
                                                                      recalled=recalled),
                               judged_correct=bool(judged_correct), grounded=shown, recalled=recalled, em=float(em),
                               f1=float(f1), cover=float(cover))
    return traj.judgement


def judge_trajectory(traj: Trajectory, gold: Sequence[str], judge: "Judge", cfg: RewardConfig | None = None
                     ) -> Judgement:
    """Judge the final answer against ``gold`` (recorded as ``traj.gold``) and ``score`` the trajectory."""
    traj.gold = list(gold)
    v = judge.judge(traj.question, traj.answer, traj.gold)
    return score(traj, v.correct, cfg, em=v.em, f1=v.f1, cover=v.cover)


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


def require_judgement(traj: Trajectory) -> Judgement:
    """The trajectory's judgement; a trajectory that was never scored is an error, not a zero reward."""
    if traj.judgement is None:
        raise ValueError(f"trajectory {traj.id} has no judgement; score it first (sleuth.rewards.judge_trajectory)")
    return traj.judgement


def token_rewards(traj: Trajectory, cfg: RewardConfig | None = None) -> list[list[float]]:
    """Per-segment, per-token rewards of a scored trajectory: on sampled tokens the outcome reward of its
    ``judgement``, gamma-decayed by the token's distance from the final step when it is correct; 0.0 elsewhere."""
    cfg = cfg or RewardConfig()
    j = require_judgement(traj)
    r, correct = j.reward, j.correct
    exps = _decay_exponents(traj) if (correct and cfg.gamma_decay) else {}
    out: list[list[float]] = []
    for seg in traj.segments:
        out.append([
            (r * cfg.gamma ** exps.get(s, 0) if exps else r) if m else 0.0
            for m, s in zip(seg.mask, seg.steps)
        ])
    return out


def sequence_reward(traj: Trajectory, cfg: RewardConfig | None = None) -> float:
    """One number per scored trajectory, for trainers whose advantage is per sequence (GRPO in TRL, verl,
    OpenRLHF): the mean over the agent's T steps of the per-step reward — ``r·(1/T)·Σ_i γ^(T−i)`` for a correct
    trajectory with gamma-decay, the flat outcome reward otherwise. Of two correct answers the one reached in
    fewer steps earns more, which is what gamma-decay is for; the per-token spread itself (``token_rewards``)
    needs a trainer that takes token-level rewards, as sleuth's own does."""
    cfg = cfg or RewardConfig()
    j = require_judgement(traj)
    if not (j.correct and cfg.gamma_decay):
        return float(j.reward)
    t = max(int(traj.steps), 1)
    return float(j.reward * sum(cfg.gamma ** (t - i) for i in range(1, t + 1)) / t)
