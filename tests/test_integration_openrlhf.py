"""OpenRLHF adapter against OpenRLHF 0.11.2's own agent base classes. OpenRLHF needs flash-attn and DeepSpeed
(CUDA builds) and vLLM, none installable here; its agent module imports without them, so this runs where
openrlhf is installed --no-deps beside the venv (requirements-adapters.txt) and skips elsewhere. Generation goes
through a CPU engine with vLLM's generate/RequestOutput shape backed by sleuth's HFPolicy (the shipped policy);
search through a real `serve-search` service on loopback."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import run_async

pytest.importorskip("openrlhf.utils.agent")

pytestmark = pytest.mark.slow
AGENT_FILE = Path(__file__).resolve().parents[1] / "configs" / "integrations" / "openrlhf" / "sleuth_agent.py"


@dataclass
class VLLMSamplingParams:
    """The attributes of vllm.SamplingParams that OpenRLHF sets and the executor reads."""
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 1024
    logprobs: int | None = 1
    stop: list | None = None
    include_stop_str_in_output: bool = False


class CPUEngine:
    """vLLM's ``generate(prompt_token_ids, sampling_params)`` contract on sleuth's HFPolicy."""

    def __init__(self, policy):
        self.policy = policy
        self.requests = []

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        from sleuth.policy.base import SamplingParams

        self.requests.append(deepcopy(sampling_params))
        sp = SamplingParams(max_new_tokens=sampling_params.max_tokens, temperature=sampling_params.temperature,
                            top_p=sampling_params.top_p, stop=list(sampling_params.stop or []))
        (g,) = await asyncio.to_thread(self.policy.generate, [list(prompt_token_ids)], sp)
        lps = [{t: SimpleNamespace(logprob=lp)} for t, lp in zip(g.token_ids, g.logprobs)]
        out = SimpleNamespace(token_ids=g.token_ids, text=g.text, logprobs=lps,
                              finish_reason="length" if g.finish_reason == "length" else "stop")
        return SimpleNamespace(outputs=[out])


def _load_agent_executor(path: Path):
    """What OpenRLHF's vllm_engine._load_agent_executor does with --train.agent_func_path."""
    from openrlhf.utils.agent import AgentExecutorBase

    spec = importlib.util.spec_from_file_location("agent_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert hasattr(module, "AgentExecutor") and issubclass(module.AgentExecutor, AgentExecutorBase)
    return module.AgentExecutor()


def test_sleuth_agent_executor_in_openrlhf(env, one_thread, monkeypatch):
    import torch
    from test_search_service import _Uvicorn

    from sleuth.policy.hf import HFPolicy
    from sleuth.policy.loader import default_model
    from sleuth.rewards import sequence_reward
    from sleuth.search.index import open_index
    from sleuth.serve.search_api import SearchService, create_app

    svc = SearchService(open_index("t"), "lexical")
    srv = _Uvicorn(create_app(svc))
    policy = HFPolicy.load(default_model())
    engine = CPUEngine(policy)
    torch.manual_seed(0)                              # the sampled trajectory is reproducible
    try:
        for k, v in {"SLEUTH_SEARCH_URL": srv.url, "SLEUTH_MAX_STEPS": "2", "SLEUTH_MAX_NEW_TOKENS": "32",
                     "SLEUTH_PROMPT": "short-2shot"}.items():
            monkeypatch.setenv(k, v)
        executor = _load_agent_executor(AGENT_FILE)
        resp = run_async(lambda: executor.execute("Where was Jane Austen born?", json.dumps(["Steventon"]),
                                            VLLMSamplingParams(), 2048, policy.tokenizer, engine))
    finally:
        srv.close()
        svc.close()

    traj = executor.last_trajectory
    tok = policy.tokenizer
    seq = resp["observation_tokens"]
    assert seq == traj.segments[-1].token_ids
    # OpenRLHF's own conversion (samples_generator._process_response_into_experience): ranges -> action mask
    action = torch.zeros(len(seq), dtype=torch.long)
    for start, end in resp["action_ranges"]:
        action[start:end] = 1
    sampled = [t for t, m in zip(seq, action.tolist()) if m]
    assert tok.decode(sampled, skip_special_tokens=True) == "".join(m["content"] for m in traj.messages if m["role"] == "assistant" and "step" in m)
    assert any(c.tool == "search" for c in traj.tool_calls)
    masked_response = tok.decode([t for t, m in zip(seq, action.tolist()) if not m][len(traj.segments[-1].token_ids[
        :traj.segments[-1].mask.index(1)]):])
    first = next(i for i, m in enumerate(traj.messages) if "step" in m)
    observations = [m["content"] for m in traj.messages[first:] if m["role"] == "user"]
    assert observations and all(o in masked_response for o in observations)
    assert any(o.startswith("<observation>\nQuery 1:") for o in observations)
    # rollout_log_probs: position i holds the sampling log-prob of token i (what OpenRLHF shifts by one)
    ids = torch.tensor([seq])
    with torch.no_grad():
        lp = torch.log_softmax(policy.model(input_ids=ids).logits[0, :-1].float(), -1)
    recomputed = lp.gather(-1, ids[0, 1:, None])[:, 0]
    given = torch.tensor(resp["rollout_log_probs"][1:])
    on = action[1:].bool()
    assert torch.allclose(given[on], recomputed[on], atol=2e-3)
    assert all(r.stop and "</search>" in r.stop and r.include_stop_str_in_output and r.max_tokens == 32
               for r in engine.requests)
    assert resp["reward"] == pytest.approx(sequence_reward(traj, executor.settings.reward))
    assert resp["extra_logs"]["sleuth_correct"] == float(traj.judgement.correct)

    executor.settings.negative_drop_frac = 1.0
    failed = executor.response(traj, "q", "Zanzibar", 2048)
    assert failed["action_ranges"] == [] and failed["extra_logs"]["sleuth_dropped_negative"] == 1.0
    # longer than max_length: OpenRLHF would cut the end (and the reward with it); nothing is trained instead
    short = executor.response(traj, "q", "Steventon", len(seq) - 5)
    assert short["action_ranges"] == [] and short["extra_logs"]["sleuth_overlong"] == 1.0


def test_helpers():
    from sleuth.integrations.openrlhf_agent import AgentSettings, action_ranges, gold_of

    assert action_ranges([0, 1, 1, 0, 0, 1], 10) == [(11, 13), (15, 16)]
    assert gold_of('["a", "b"]') == ["a", "b"] and gold_of("Paris") == ["Paris"] and gold_of(["x"]) == ["x"]
    s = AgentSettings.from_env({"SLEUTH_MAX_STEPS": "3", "SLEUTH_REQUIRE_EVIDENCE": "0", "SLEUTH_GAMMA": "0.5"})
    assert s.max_steps == 3 and not s.reward.require_evidence and s.reward.gamma == 0.5 and s.search_url is None
