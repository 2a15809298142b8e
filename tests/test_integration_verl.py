"""verl adapter against verl 0.9.1's own classes (registry, hydra instantiation, AgentLoopBase, AgentLoopOutput,
TokenOutput). Runs only where verl is importable: it is installed beside the venv, not in it (verl pins
transformers<5.11), see requirements-verl.txt. vLLM/SGLang need a GPU, so generation goes through a CPU server
with verl's server-manager interface backed by sleuth's HFPolicy (the shipped SmolLM2 policy); search goes through
a real `serve-search` service on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import run_async

agent_loop_mod = pytest.importorskip("verl.experimental.agent_loop.agent_loop")

pytestmark = pytest.mark.slow


class CPUServer:
    """verl's ``server_manager.generate`` contract (token ids in, ``TokenOutput`` out) on sleuth's HFPolicy."""

    def __init__(self, policy):
        self.policy = policy
        self.requests: list[dict] = []

    async def generate(self, *, request_id, prompt_ids, sampling_params, **_):
        from verl.workers.rollout.replica import TokenOutput

        from sleuth.policy.base import SamplingParams

        self.requests.append(dict(sampling_params))
        sp = SamplingParams(max_new_tokens=sampling_params["max_tokens"], temperature=sampling_params["temperature"],
                            top_p=sampling_params["top_p"], stop=list(sampling_params.get("stop") or []))
        (g,) = await asyncio.to_thread(self.policy.generate, [list(prompt_ids)], sp)
        return TokenOutput(token_ids=g.token_ids, log_probs=g.logprobs, stop_reason="completed")


def _trainer_config():
    import verl
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(verl.__file__).parent / "trainer" / "config" / "_generated_ppo_trainer.yaml")
    cfg.actor_rollout_ref.rollout.prompt_length = 2048
    cfg.actor_rollout_ref.rollout.response_length = 1024
    return cfg


def test_sleuth_agent_loop_in_verl(env, one_thread):
    import hydra
    import torch
    from omegaconf import OmegaConf
    from test_search_service import _Uvicorn
    from verl.experimental.agent_loop.agent_loop import (AgentLoopOutput, DictConfigWrap, ToolListWrap,
                                                         _agent_loop_registry)

    from sleuth.integrations import verl_agent_loop as adapter
    from sleuth.policy.hf import HFPolicy
    from sleuth.policy.loader import default_model
    from sleuth.rewards import sequence_reward
    from sleuth.search.index import open_index
    from sleuth.serve.search_api import SearchService, create_app

    assert _agent_loop_registry["sleuth_agent"]["_target_"] == "sleuth.integrations.verl_agent_loop.SleuthAgentLoop"
    svc = SearchService(open_index("t"), "lexical")
    srv = _Uvicorn(create_app(svc))
    policy = HFPolicy.load(default_model())
    server = CPUServer(policy)
    torch.manual_seed(0)                              # the sampled trajectory is reproducible
    cfg = _trainer_config()
    try:
        # what verl's AgentLoopWorker does: the registry entry plus the YAML's keyword arguments, instantiated by hydra
        entry = OmegaConf.create({**_agent_loop_registry["sleuth_agent"], "search_url": srv.url, "max_steps": 2,
                                  "max_new_tokens": 32, "prompt": "short-2shot"})
        loop = hydra.utils.instantiate(config=entry, trainer_config=DictConfigWrap(config=cfg), server_manager=server,
                                       tokenizer=policy.tokenizer, processor=None, hf_model_type="llama",
                                       dataset_cls=None, data_config=DictConfigWrap(cfg.data), tools=ToolListWrap([]))
        assert isinstance(loop, adapter.SleuthAgentLoop)
        sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}
        out = run_async(lambda: loop.run(sampling, raw_prompt=[{"role": "user", "content": "Where was Jane Austen born?"}],
                                   reward_model={"ground_truth": ["Steventon"]}, index=0))
    finally:
        srv.close()
        svc.close()

    assert isinstance(out, AgentLoopOutput)
    traj = loop.last_trajectory
    tok = policy.tokenizer
    assert out.prompt_ids + out.response_ids == traj.segments[-1].token_ids
    assert len(out.response_mask) == len(out.response_ids) == len(out.response_logprobs)
    sampled = [i for i, m in zip(out.response_ids, out.response_mask) if m]
    assert tok.decode(sampled, skip_special_tokens=True) == "".join(m["content"] for m in traj.messages if m["role"] == "assistant" and "step" in m)
    assert any(c.tool == "search" for c in traj.tool_calls), "the shipped policy searches first"
    masked = tok.decode([i for i, m in zip(out.response_ids, out.response_mask) if not m])
    first = next(i for i, m in enumerate(traj.messages) if "step" in m)
    observations = [m["content"] for m in traj.messages[first:] if m["role"] == "user"]
    assert observations and all(o in masked for o in observations)        # what the tools showed: mask 0
    assert any(o.startswith("<observation>\nQuery 1:") for o in observations)   # the service's search results
    # the log-probs verl receives are the sampled ones: the model's own at the sampling temperature
    ids = torch.tensor([out.prompt_ids + out.response_ids])
    with torch.no_grad():
        lp = torch.log_softmax(policy.model(input_ids=ids).logits[0, :-1].float(), -1)
    recomputed = lp.gather(-1, ids[0, 1:, None])[:, 0][len(out.prompt_ids) - 1:]
    on = torch.tensor(out.response_mask, dtype=torch.bool)
    assert torch.allclose(torch.tensor(out.response_logprobs)[on], recomputed[on], atol=2e-3)
    # every generation asked verl's server for sleuth's stop strings, kept in the output, within the reply budget
    assert server.requests and all(r["max_tokens"] == 32 and "</search>" in r["stop"] and
                                   r["include_stop_str_in_output"] for r in server.requests)
    # sleuth's reward: the judge's verdict, gamma-decayed over the steps
    assert out.reward_score == pytest.approx(sequence_reward(traj, loop.reward_cfg))
    assert out.extra_fields["sleuth"]["correct"] == traj.judgement.correct

    # negative-sample control: a failed trajectory dropped from the loss has every response token masked
    loop.negative_drop_frac = 1.0
    failed = loop.output(traj, ["Zanzibar"])
    assert failed.extra_fields["sleuth"]["dropped_negative"] and not any(failed.response_mask)
    assert failed.reward_score == 0.0


def test_compute_score_and_dataset(tmp_path):
    import pandas as pd

    from sleuth.integrations.verl_agent_loop import compute_score, write_dataset
    from sleuth.tasks.task import Task

    ok = '<search>x</search> ... <answer>Steventon, Hampshire<cite url="corpus://t/p1">born in Steventon</cite></answer>'
    assert compute_score("sleuth", ok, ["Steventon"]) == 1.0
    assert compute_score("sleuth", "<answer>Bath</answer>", ["Steventon"]) == 0.0
    assert compute_score("sleuth", "no answer at all", "Steventon") == 0.0
    n = write_dataset([Task("q1", "Where was Jane Austen born?", ["Steventon"], "test")], str(tmp_path / "t.parquet"))
    row = pd.read_parquet(tmp_path / "t.parquet").iloc[0]
    assert n == 1 and row["agent_name"] == "sleuth_agent" and list(row["reward_model"]["ground_truth"]) == ["Steventon"]
