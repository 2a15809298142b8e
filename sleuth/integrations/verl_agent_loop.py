"""sleuth's agent loop as a verl ``AgentLoop`` (registered as ``sleuth_agent``), with sleuth's reward.

verl (>= 0.9, ``verl.experimental.agent_loop``) runs one ``AgentLoop.run(sampling_params, **row)`` per sample on
its agent-loop workers, generating through ``server_manager.generate`` (vLLM or SGLang, token ids in and out).
``SleuthAgentLoop.run`` drives sleuth's own loop (``sleuth.agent.Agent``: protocol, tools, safety interceptor,
context manager, citations) in a worker thread, with a TokenPolicy that forwards each generation to verl's server
on the event loop (``EnginePolicy``), and returns::

    AgentLoopOutput(prompt_ids, response_ids, response_mask,   # mask 1 = sampled, 0 = observation / glue
                    response_logprobs,                          # the engine's log-probs of the sampled tokens
                    reward_score,                               # sleuth's judge + sequence_reward (gamma-decay)
                    num_turns, extra_fields={sleuth: ...})

verl keeps a ``reward_score`` an agent loop sets (it only calls its reward workers when the loop leaves it None),
so sleuth's reward is the one trained on; ``compute_score`` below is the same judge for verl's
``custom_reward_function`` (text only: it cannot see what the agent was shown, so no evidence requirement).

Register it with ``actor_rollout_ref.rollout.agent.agent_loop_config_path`` pointing at a YAML list whose entry
names this class; the entry's other keys are this constructor's keyword arguments (see
configs/integrations/verl/agent_loops.yaml). Dataset rows carry ``agent_name: sleuth_agent``, the question as
``prompt`` and the gold answers as ``reward_model.ground_truth`` (``write_dataset``).

Kimi's tricks here: gamma-decay through ``sequence_reward``; negative-sample control by masking a seeded share of
failed trajectories out of the loss (they still count in the GRPO group baseline, as in sleuth's trainer);
partial rollout is verl's own: with the fully-async trainer and ``async_training.partial_rollout: true`` the
server client resumes a generation interrupted by a weight update, which this loop sees as one generation.
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, register

from sleuth.agent import Agent, AgentConfig, Environment
from sleuth.integrations.common import EnginePolicy, drop_negative, to_sample
from sleuth.integrations.trl_grpo import question_of
from sleuth.policy.base import SamplingParams
from sleuth.rewards import RewardConfig, judge_trajectory, sequence_reward

AGENT_NAME = "sleuth_agent"
_ENVS: dict[tuple, Environment] = {}   # one Environment per worker process and setting (verl makes a loop per sample)

STOP_KEYS = {"vllm": {"include_stop_str_in_output": True}, "sglang": {"no_stop_trim": True}}


def environment(search_url: str | None, index: str | None, engine: str, search_k: int,
                tools: Sequence[str]) -> Environment:
    key = (search_url, index, engine, search_k, tuple(tools))
    env = _ENVS.get(key)
    if env is None:
        env = _ENVS[key] = Environment.create(index, engine=engine, search_url=search_url, search_k=search_k,
                                              tools=tuple(tools))
    return env


@register(AGENT_NAME)
class SleuthAgentLoop(AgentLoopBase):
    def __init__(self, *args: Any, search_url: str | None = None, index: str | None = None, engine: str = "auto",
                 search_k: int = 5, sleuth_tools: Sequence[str] = ("search", "browse"), max_steps: int = 8,
                 max_new_tokens: int = 512, prompt: str = "short-2shot", backend: str = "vllm",
                 judge: str = "cover", require_evidence: bool = True, gamma: float = 0.9, gamma_decay: bool = True,
                 negative_drop_frac: float = 0.0, seed: int = 0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if backend not in STOP_KEYS:
            raise ValueError(f"backend must be one of {', '.join(STOP_KEYS)}, got {backend!r}")
        # (verl passes its own `tools` keyword, its tool registry: sleuth's tools are named sleuth_tools)
        self.env = environment(search_url, index, engine, search_k, sleuth_tools)
        self.max_steps, self.max_new_tokens, self.prompt, self.backend = max_steps, max_new_tokens, prompt, backend
        self.prompt_length = int(self.rollout_config.prompt_length)
        self.response_length = int(self.rollout_config.response_length)
        from sleuth.tasks.judges import make_judge

        self.judge = make_judge(judge)
        self.reward_cfg = RewardConfig(require_evidence=require_evidence, gamma=gamma, gamma_decay=gamma_decay)
        self.negative_drop_frac, self.seed = float(negative_drop_frac), int(seed)

    def _sampling(self, base: dict[str, Any], params: SamplingParams) -> dict[str, Any]:
        sp = dict(base)
        sp.update(max_tokens=params.max_new_tokens, stop=list(params.stop), **STOP_KEYS[self.backend])
        return sp

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        question = question_of(list(kwargs["raw_prompt"]))
        gold = (kwargs.get("reward_model") or {}).get("ground_truth")
        loop = asyncio.get_running_loop()

        async def generate_one(prompt_ids: list[int], params: SamplingParams):
            out = await self.server_manager.generate(request_id=uuid4().hex, prompt_ids=prompt_ids,
                                                     sampling_params=self._sampling(sampling_params, params))
            finish = "length" if len(out.token_ids) >= params.max_new_tokens else "stop"
            return out.token_ids, out.log_probs, finish

        policy = EnginePolicy(self.tokenizer, generate_one, loop, name="verl")
        cfg = AgentConfig(max_steps=self.max_steps, max_new_tokens=self.max_new_tokens, prompt=self.prompt,
                          temperature=float(sampling_params.get("temperature", 1.0)),
                          top_p=float(sampling_params.get("top_p", 1.0)),
                          context_window=self.prompt_length + self.response_length)
        agent = Agent(policy, self.env, cfg)
        traj = await asyncio.to_thread(agent.run, question, str(kwargs.get("index", "")))
        self.last_trajectory = traj
        return self.output(traj, gold, policy.missing_logprobs, step=int(kwargs.get("global_steps", 0) or 0))

    def output(self, traj, gold: Sequence[str] | str | None, missing_logprobs: bool = False,
               step: int = 0) -> AgentLoopOutput:
        """The verl output of a finished trajectory (judged here when the row carries gold answers)."""
        s = to_sample(traj, self.response_length)
        mask, reward, dropped = s.response_mask, None, False
        if gold is not None:
            judge_trajectory(traj, [gold] if isinstance(gold, str) else list(gold), self.judge, self.reward_cfg)
            reward = sequence_reward(traj, self.reward_cfg)
            dropped = drop_negative(traj.id, traj.judgement.correct, self.negative_drop_frac, self.seed, step)
            if dropped:
                mask = [0] * len(mask)
        return AgentLoopOutput(
            prompt_ids=s.prompt_ids, response_ids=s.response_ids, response_mask=mask,
            response_logprobs=None if missing_logprobs else s.response_logprobs,
            reward_score=reward, num_turns=1 + 2 * traj.steps, metrics={},
            extra_fields={"sleuth": {"trajectory_id": traj.id, "steps": traj.steps, "answer": traj.answer,
                                     "finish_reason": traj.finish_reason, "correct": traj.judgement.correct
                                     if traj.judgement else None, "overlong": s.overlong,
                                     "earlier_segments": s.earlier_segments, "dropped_negative": dropped,
                                     "format_errors": traj.format_errors}})


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None) -> float:
    """verl ``custom_reward_function``: sleuth's strict cover judge on the answer in a decoded response (1.0 /
    0.0). Text only — the agent loop's own ``reward_score`` (evidence-aware, gamma-decayed) is preferred."""
    from sleuth import protocol
    from sleuth.tasks.judges import make_judge

    answer = None
    for part in reversed(solution_str.split("<answer>")[1:]):
        try:
            action = protocol.parse("<answer>" + part.split("</answer>")[0] + "</answer>")
        except protocol.ParseError:
            continue
        if action.tool == "finish":
            answer = action.args.get("answer")
            break
    if not answer:
        return 0.0
    gold = [ground_truth] if isinstance(ground_truth, str) else list(ground_truth)
    return float(make_judge("cover").judge("", answer, gold).correct)


def write_dataset(tasks: Sequence[Any], path: str, data_source: str = "sleuth") -> int:
    """verl's parquet rows for sleuth Tasks (question as a user message, gold as reward_model.ground_truth)."""
    import pandas as pd

    rows = [{"data_source": data_source, "agent_name": AGENT_NAME,
             "prompt": [{"role": "user", "content": t.question}],
             "reward_model": {"style": "rule", "ground_truth": list(t.answers)},
             "extra_info": {"task_id": t.id, "index": i}} for i, t in enumerate(tasks)]
    pd.DataFrame(rows).to_parquet(path)
    return len(rows)
