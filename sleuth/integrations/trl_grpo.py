"""sleuth's agent loop as a TRL ``GRPOTrainer`` ``rollout_func``; its judge and rewards as a reward function.

    from trl import GRPOConfig, GRPOTrainer
    from sleuth.integrations.trl_grpo import SleuthReward, SleuthRollout, tasks_dataset

    env = Environment.create(search_url="http://search-host:8765", tools=("search", "browse"))
    trainer = GRPOTrainer(model, reward_funcs=[SleuthReward(make_judge("cover"), RewardConfig(...),
                                                            negative_drop_frac=0.3)],
                          args=GRPOConfig(..., max_completion_length=1024), train_dataset=tasks_dataset(tasks),
                          processing_class=tokenizer, rollout_func=SleuthRollout(env, AgentConfig(...)))

What TRL receives for each prompt (TRL repeats each prompt ``num_generations`` times before the call):

* ``prompt_ids`` / ``completion_ids``: the trajectory's tokens as sleuth's loop recorded them — the completion is
  every reply exactly as sampled with the observations between them (``sleuth.integrations.common.to_sample``);
* ``env_mask``: 1 on sampled tokens, 0 on observations and chat glue — TRL multiplies it into the loss mask;
* ``logprobs``: the sampling log-prob of each sampled token under the tempered distribution it was drawn from
  (the rollout samples at the trainer's ``temperature``, the distribution TRL's loss scores);
* ``sleuth_trajectory``: the Trajectory itself, for ``SleuthReward``.

The rollout samples with the trainer's current weights (``HFPolicy`` over the unwrapped model), so each
generation is on-policy. TRL has no partial-rollout mode: every trajectory runs to its end within the step.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from sleuth.agent import Agent, AgentConfig, Environment
from sleuth.integrations.common import to_sample
from sleuth.rewards import RewardConfig, judge_trajectory, sequence_reward
from sleuth.trajectory import Trajectory


def question_of(prompt: Any) -> str:
    """A dataset prompt as sleuth's question: a plain string, or the last user message of a conversation."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        for m in reversed(prompt):
            if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
                return m["content"]
    raise ValueError(f"cannot read a question from prompt {str(prompt)[:200]!r}: give a string or chat messages "
                     "with a user turn")


def tasks_dataset(tasks: Sequence[Any]):
    """A ``datasets.Dataset`` of sleuth Tasks: ``prompt`` (the question), ``answers`` (gold), ``task_id``."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": t.question, "answers": list(t.answers), "task_id": t.id} for t in tasks])


class SleuthRollout:
    """``rollout_func(prompts, trainer)``: run sleuth's agent on each prompt with the trainer's weights."""

    def __init__(self, env: Environment, agent: AgentConfig | None = None):
        self.env = env
        self.agent = agent or AgentConfig()
        self.stats = {"trajectories": 0, "overlong": 0, "earlier_segments": 0}

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list]:
        from sleuth.policy.hf import HFPolicy

        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        # version = optimizer steps so far: every token is tagged with the weights that sampled it
        policy = HFPolicy(model, trainer.processing_class, name="trl", version=trainer.state.global_step,
                          prefix_cache=False)
        cfg = replace(self.agent, temperature=float(trainer.temperature), top_p=float(trainer.top_p))
        from trl.models.utils import disable_gradient_checkpointing

        # gradient checkpointing (on by default in GRPOConfig) turns the KV cache off: generation would
        # recompute the whole prefix for every token
        try:
            with disable_gradient_checkpointing(model, trainer.args.gradient_checkpointing_kwargs):
                trajs = Agent(policy, self.env, cfg).run_batch([question_of(p) for p in prompts])
        finally:
            model.train(was_training)     # HFPolicy puts the model in eval mode; the trainer expects it back
        samples = [to_sample(t, trainer.args.max_completion_length) for t in trajs]
        self.stats["trajectories"] += len(samples)
        self.stats["overlong"] += sum(s.overlong for s in samples)
        self.stats["earlier_segments"] += sum(s.earlier_segments for s in samples)
        return {"prompt_ids": [s.prompt_ids for s in samples],
                "completion_ids": [s.response_ids for s in samples],
                "logprobs": [s.response_logprobs for s in samples],
                "env_mask": [s.response_mask for s in samples],
                "sleuth_trajectory": trajs}


class SleuthReward:
    """A GRPO reward function: sleuth's judge and reward (``sleuth.rewards``) on each rollout's trajectory.

    The reward is ``sequence_reward``: the outcome reward (correct / evidence required / partial credit / format
    and budget penalties, as configured), with gamma-decay as the mean per-step decayed reward of a correct
    trajectory. Negative-sample control: a seeded ``negative_drop_frac`` of the failed completions in each call
    get ``None``, which TRL leaves out of both the group baseline and the loss (sleuth's own trainer keeps them in
    the baseline; TRL has no hook for that). Metrics go to TRL's log as ``sleuth/*``.
    """

    __name__ = "sleuth_reward"

    def __init__(self, judge: Any, cfg: RewardConfig | None = None, negative_drop_frac: float = 0.0, seed: int = 0):
        if not 0.0 <= negative_drop_frac <= 1.0:
            raise ValueError(f"negative_drop_frac must be in [0, 1], got {negative_drop_frac}")
        self.judge = judge
        self.cfg = cfg or RewardConfig()
        self.negative_drop_frac = negative_drop_frac
        self.seed = seed

    def __call__(self, prompts: list[Any], completions: list[Any], sleuth_trajectory: list[Trajectory] | None = None,
                 answers: list[Sequence[str]] | None = None, trainer_state: Any = None, log_metric: Any = None,
                 **_: Any) -> list[float | None]:
        if sleuth_trajectory is None:
            raise ValueError("SleuthReward needs the rollouts of SleuthRollout (pass rollout_func=SleuthRollout(...))")
        if answers is None:
            raise ValueError("SleuthReward needs an 'answers' column of gold answers (see tasks_dataset)")
        from sleuth.rl.reinforce import negatives_to_drop

        for traj, gold in zip(sleuth_trajectory, answers):
            judge_trajectory(traj, list(gold), self.judge, self.cfg)
        failed = [i for i, t in enumerate(sleuth_trajectory) if not t.judgement.correct]
        step = int(getattr(trainer_state, "global_step", 0) or 0)
        dropped = {failed[i] for i in negatives_to_drop(len(failed), self.negative_drop_frac, self.seed, step)}
        rewards = [None if i in dropped else sequence_reward(t, self.cfg) for i, t in enumerate(sleuth_trajectory)]
        if log_metric is not None and sleuth_trajectory:
            n = len(sleuth_trajectory)
            log_metric("sleuth/accuracy", sum(t.judgement.correct for t in sleuth_trajectory) / n)
            log_metric("sleuth/grounded", sum(t.judgement.grounded for t in sleuth_trajectory) / n)
            log_metric("sleuth/steps", sum(t.steps for t in sleuth_trajectory) / n)
            log_metric("sleuth/format_errors", sum(t.format_errors for t in sleuth_trajectory) / n)
            log_metric("sleuth/dropped_negatives", float(len(dropped)))
        return rewards
