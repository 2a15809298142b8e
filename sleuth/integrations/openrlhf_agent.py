"""sleuth's agent loop as an OpenRLHF agent (``--train.agent_func_path``), with sleuth's reward.

OpenRLHF 0.11 loads the file given to ``--train.agent_func_path`` and instantiates its ``AgentExecutor`` class
(an ``AgentExecutorBase``) once per vLLM engine; ``execute(prompt, label, sampling_params, max_length,
hf_tokenizer, llm_engine)`` returns one rollout. Its own ``MultiTurnAgentExecutor`` drives an
``AgentInstanceBase`` (``reset`` / ``step``, text in and out) and tokenises the environment's text itself; this
executor instead runs sleuth's whole loop (protocol, tools, safety interceptor, context manager, citations) with a
TokenPolicy that generates through ``llm_engine.generate`` on token ids, so the tokens OpenRLHF trains on are the
ones sleuth recorded and the observations are tokenised exactly as the model saw them. Returned::

    observation_tokens  prompt + response ids (the trajectory's last segment)
    action_ranges       [start, end) of every run of sampled tokens (OpenRLHF's action mask)
    rollout_log_probs   vLLM's log-prob of each sampled token, 0.0 elsewhere (when sampling_params.logprobs is set)
    reward, scores      sleuth's judge on the label (gold answers) + sequence_reward (gamma-decay)
    extra_logs          sleuth/* numbers OpenRLHF logs

Settings come from environment variables, since OpenRLHF constructs ``AgentExecutor()`` without arguments:
``SLEUTH_SEARCH_URL`` (a `sleuth serve-search` service; else ``SLEUTH_INDEX`` opened locally), ``SLEUTH_MAX_STEPS``,
``SLEUTH_MAX_NEW_TOKENS``, ``SLEUTH_PROMPT``, ``SLEUTH_SEARCH_K``, ``SLEUTH_JUDGE``, ``SLEUTH_REQUIRE_EVIDENCE``,
``SLEUTH_GAMMA``, ``SLEUTH_NEGATIVE_DROP_FRAC``, ``SLEUTH_SEED``. The label is the gold answer: a string, or a JSON
list of aliases.

Kimi's tricks: gamma-decay via ``sequence_reward``; negative-sample control by emptying the action ranges of a
seeded share of failed trajectories (no token of theirs is trained; they stay in the group baseline of OpenRLHF's
``group_norm`` / ``reinforce_baseline`` estimators); partial rollout is OpenRLHF's own
(``--train.async_enable --train.partial_rollout_enable``), which pauses and resumes engine generations across weight
updates beneath this loop.
"""

from __future__ import annotations

import asyncio
import json
import os
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

from openrlhf.utils.agent import AgentExecutorBase

from sleuth.agent import Agent, AgentConfig, Environment
from sleuth.integrations.common import EnginePolicy, drop_negative, to_sample
from sleuth.policy.base import SamplingParams
from sleuth.rewards import RewardConfig, judge_trajectory, sequence_reward


@dataclass
class AgentSettings:
    search_url: str | None = None
    index: str | None = None
    engine: str = "auto"
    search_k: int = 5
    max_steps: int = 8
    max_new_tokens: int = 512
    prompt: str = "short-2shot"
    judge: str = "cover"
    reward: RewardConfig = field(default_factory=lambda: RewardConfig(require_evidence=True))
    negative_drop_frac: float = 0.0
    seed: int = 0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "AgentSettings":
        e = os.environ if env is None else env
        get = lambda k, d, t=str: t(e[k]) if e.get(k) not in (None, "") else d  # noqa: E731
        return cls(search_url=get("SLEUTH_SEARCH_URL", None), index=get("SLEUTH_INDEX", None),
                   engine=get("SLEUTH_ENGINE", "auto"), search_k=get("SLEUTH_SEARCH_K", 5, int),
                   max_steps=get("SLEUTH_MAX_STEPS", 8, int), max_new_tokens=get("SLEUTH_MAX_NEW_TOKENS", 512, int),
                   prompt=get("SLEUTH_PROMPT", "short-2shot"), judge=get("SLEUTH_JUDGE", "cover"),
                   reward=RewardConfig(require_evidence=get("SLEUTH_REQUIRE_EVIDENCE", "1") not in ("0", "false"),
                                       gamma=get("SLEUTH_GAMMA", 0.9, float)),
                   negative_drop_frac=get("SLEUTH_NEGATIVE_DROP_FRAC", 0.0, float), seed=get("SLEUTH_SEED", 0, int))


def gold_of(label: Any) -> list[str]:
    """OpenRLHF's label column as gold answers: a string, a list, or a JSON list in a string."""
    if isinstance(label, (list, tuple)):
        return [str(x) for x in label]
    if isinstance(label, str) and label.strip().startswith("["):
        try:
            return [str(x) for x in json.loads(label)]
        except json.JSONDecodeError:
            pass
    return [str(label)]


def action_ranges(mask: list[int], offset: int) -> list[tuple[int, int]]:
    """[start, end) of every run of 1s in ``mask``, shifted by ``offset`` (the prompt length)."""
    out, start = [], None
    for i, m in enumerate(list(mask) + [0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((offset + start, offset + i))
            start = None
    return out


class SleuthAgentExecutor(AgentExecutorBase):
    def __init__(self, settings: AgentSettings | None = None, env: Environment | None = None):
        self.settings = s = settings or AgentSettings.from_env()
        self.env = env or Environment.create(s.index, engine=s.engine, search_url=s.search_url, search_k=s.search_k,
                                             tools=("search", "browse"))
        from sleuth.tasks.judges import make_judge

        self.judge = make_judge(s.judge)
        self.calls = 0
        self.last_trajectory = None

    async def execute(self, prompt, label, sampling_params, max_length: int, hf_tokenizer, llm_engine, images=None):
        if images:
            raise ValueError("the sleuth agent is text-only; this rollout has images")
        s = self.settings
        want_logprobs = getattr(sampling_params, "logprobs", None) is not None

        async def generate_one(prompt_ids: list[int], params: SamplingParams):
            sp = deepcopy(sampling_params)
            sp.max_tokens = max(1, min(params.max_new_tokens, max_length - len(prompt_ids)))
            sp.stop = list(params.stop)
            sp.include_stop_str_in_output = True
            out = (await llm_engine.generate(prompt_ids, sp)).outputs[0]
            ids = list(out.token_ids)
            lps = [lp[t].logprob for lp, t in zip(out.logprobs, ids)] if want_logprobs and out.logprobs else None
            return ids, lps, "length" if out.finish_reason == "length" else "stop"

        policy = EnginePolicy(hf_tokenizer, generate_one, asyncio.get_running_loop(), name="openrlhf")
        cfg = AgentConfig(max_steps=s.max_steps, max_new_tokens=s.max_new_tokens, prompt=s.prompt,
                          temperature=float(getattr(sampling_params, "temperature", 1.0)),
                          top_p=float(getattr(sampling_params, "top_p", 1.0)), context_window=max_length)
        question = prompt if isinstance(prompt, str) else str(prompt)
        traj = await asyncio.to_thread(Agent(policy, self.env, cfg).run, question)
        self.last_trajectory = traj
        self.calls += 1
        return self.response(traj, prompt, label, max_length, want_logprobs and not policy.missing_logprobs)

    def response(self, traj, prompt: Any, label: Any, max_length: int, with_logprobs: bool = True) -> dict[str, Any]:
        """OpenRLHF's rollout dict for a finished trajectory, judged against ``label``."""
        s = self.settings
        sample = to_sample(traj)
        if len(sample.prompt_ids) + len(sample.response_ids) > max_length:   # OpenRLHF would cut it: mask it whole
            sample = to_sample(traj, max(0, max_length - len(sample.prompt_ids)))
        judge_trajectory(traj, gold_of(label), self.judge, s.reward)
        reward = sequence_reward(traj, s.reward)
        dropped = drop_negative(traj.id, traj.judgement.correct, s.negative_drop_frac, s.seed, self.calls)
        mask = [0] * len(sample.response_mask) if dropped else sample.response_mask
        tokens = sample.prompt_ids + sample.response_ids
        return {
            "prompt": prompt, "label": label, "images": None, "mm_train_inputs": None,
            "reward": reward, "scores": reward,
            "observation_tokens": tokens,
            "action_ranges": action_ranges(mask, len(sample.prompt_ids)),
            "rollout_log_probs": [0.0] * len(sample.prompt_ids) + sample.response_logprobs if with_logprobs else None,
            "truncated": traj.finish_reason in ("max_steps", "context") or sample.overlong,
            "extra_logs": {"sleuth_correct": float(traj.judgement.correct),
                           "sleuth_grounded": float(traj.judgement.grounded), "sleuth_steps": float(traj.steps),
                           "sleuth_format_errors": float(traj.format_errors),
                           "sleuth_overlong": float(sample.overlong), "sleuth_dropped_negative": float(dropped)},
        }


# What OpenRLHF looks up in the file passed to --train.agent_func_path.
AgentExecutor = SleuthAgentExecutor
