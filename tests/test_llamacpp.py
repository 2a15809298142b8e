"""The llama.cpp rollout engine: the policy's weights written to GGUF exactly, sampled by llama.cpp.

The export is checked against the embedded model's own GGUF (made by llama.cpp's converter); the engine against
transformers' forward on the same weights — after a LoRA adapter is merged and after an in-place update.
Engine tests need llama-cpp-python (requirements-llama.txt) and are skipped without it.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from conftest import agent_steps, sampled_gap

from sleuth import paths
from sleuth.policy import llamacpp
from sleuth.policy.base import SamplingParams
from sleuth.policy.llamacpp import export_gguf

needs_llama = pytest.mark.skipif(not llamacpp.available(), reason="llama-cpp-python not installed "
                                 "(pip install -r requirements-llama.txt)")
QUESTIONS = ["Who painted the Mona Lisa?", "What is the capital of France? Answer in one word.",
             "Name the largest desert in Africa and the country with most of its area, then one fact about it."]


@pytest.fixture(scope="module")
def policy(smol_policy, one_thread):
    yield smol_policy
    smol_policy.engine, smol_policy.precision = "hf", "fp32"


@pytest.fixture(scope="module")
def prompts(policy):
    tok = policy.tokenizer
    return [list(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                         tokenize=True)["input_ids"]) for q in QUESTIONS]


@pytest.mark.slow
def test_exported_gguf_holds_the_models_weights_exactly(policy, tmp_path):
    """The embedded model's weights are its GGUF dequantised: written back as float32 they must equal the
    original file's tensors, name for name, in llama.cpp's q/k layout."""
    import gguf
    from gguf.quants import dequantize

    out = export_gguf(policy.model, paths.embedded_policy_gguf(), tmp_path / "p.gguf", "f32")
    got = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    ref = {t.name: t for t in gguf.GGUFReader(str(paths.embedded_policy_gguf())).tensors}
    assert set(got) == set(ref)
    for name, t in ref.items():
        want = dequantize(t.data, t.tensor_type)
        have = np.asarray(got[name].data)
        assert got[name].tensor_type == gguf.GGMLQuantizationType.F32
        np.testing.assert_array_equal(have, want.reshape(have.shape), err_msg=name)


def test_export_refuses_a_template_of_another_shape(tmp_path):
    from sleuth.rl.toy import tiny_llama

    with pytest.raises(ValueError, match="does not describe this model"):
        export_gguf(tiny_llama(seed=0), paths.embedded_policy_gguf(), tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="weight_type"):
        export_gguf(tiny_llama(seed=0), paths.embedded_policy_gguf(), tmp_path / "x.gguf", "q4_0")


def test_engine_without_llama_cpp_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)     # import fails as if not installed
    assert not llamacpp.available()
    with pytest.raises(RuntimeError, match="requirements-llama.txt"):
        llamacpp.LlamaCppEngine(None, paths.embedded_policy_gguf())


def _compare(ref, got, min_same: float = 0.8, tol: float = 0.05):
    same = [a[0] == b[0] for a, b in zip(ref, got)]
    assert sum(same) >= min_same * len(same), f"greedy rows identical: {sum(same)}/{len(same)}"
    gap = [abs(x - y) for a, b, s in zip(ref, got, same) if s for x, y in zip(a[1], b[1])]
    assert max(gap) < tol, f"max |Δ log-prob| {max(gap):.4f}"


@needs_llama
@pytest.mark.slow
def test_llama_engine_agent_steps_match_the_reference_and_reuse_the_kv(policy, prompts):
    """Greedy multi-step rollouts: llama.cpp on float32 weights gives transformers' tokens (float16 KV and
    another summation order move log-probs by ~1e-2 at most); continuing rows run only their new tokens."""
    obs = policy.tokenizer.encode("\nObservation: [1] a search result about the question.\n")
    policy.engine, policy.precision = "hf", "fp32"
    ref = agent_steps(policy, prompts, obs)
    policy.engine = "llama"
    eng = policy.llama_engine()
    seen: list[int] = []
    orig = eng.generate

    def counting(*a, **kw):
        orig(*a, **kw)
        seen.append(eng.prefilled)
    eng.generate = counting
    try:
        got = agent_steps(policy, prompts, obs)
    finally:
        del eng.generate
    _compare(ref, got)
    # Steps 2 and 3 run only what each row lacks: its last sampled token and the observation(s) appended —
    # rows 0, 1 at step 2, then rows 0, 1 and row 2 (idle at step 2: its KV kept) at step 3.
    n = len(obs)
    assert seen[1] - seen[0] == (1 + n) + (1 + 2 * n)
    assert seen[2] - seen[1] == (1 + n) + (1 + 2 * n) + (1 + 3 * n)
    assert eng.reused > sum(map(len, prompts))
    fresh = policy.prefix_cache
    try:
        policy.prefix_cache = None                       # no reuse across calls: the same tokens
        again = agent_steps(policy, prompts, obs)
    finally:
        policy.prefix_cache = fresh
    assert [a[0] for a in again] == [g[0] for g in got]


@needs_llama
@pytest.mark.slow
def test_llama_engine_follows_lora_weights_and_their_updates(one_thread):
    """A LoRA adapter is merged into the exported weights; after an in-place update the engine loads the new
    weights before its next call, and still agrees with transformers' forward."""
    from peft import LoraConfig, get_peft_model

    from sleuth.policy.hf import HFPolicy

    pol = HFPolicy.load()                    # a private copy: peft rewrites the model it wraps
    torch.manual_seed(0)
    pol.model = get_peft_model(pol.model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")).eval()
    with torch.no_grad():
        for n, p in pol.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)           # a trained adapter, not peft's zero initialisation
    tok = pol.tokenizer
    prompts = [list(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                            tokenize=True)["input_ids"]) for q in QUESTIONS]
    greedy = SamplingParams(max_new_tokens=16, temperature=0)

    def both():
        pol.engine = "hf"
        ref = [(g.token_ids, g.logprobs) for g in pol.generate(prompts, greedy)]
        pol.engine = "llama"
        got = [(g.token_ids, g.logprobs) for g in pol.generate(prompts, greedy)]
        return ref, got

    ref, got = both()
    _compare(ref, got, min_same=0.66)
    eng = pol.llama_engine()
    loads = eng.loads
    with torch.no_grad():
        for n, p in pol.model.named_parameters():
            if "lora_A" in n:
                p.add_(0.05)                 # what an optimizer step does
    ref2, got2 = both()
    assert eng.loads == loads + 1
    assert [r[0] for r in ref2] != [r[0] for r in ref]    # the update changed the policy...
    _compare(ref2, got2, min_same=0.66)                    # ...and the engine follows it


@needs_llama
@pytest.mark.slow
def test_llama_q8_samples_its_own_policy(policy, prompts):
    """q8_0 weights are a slightly different policy: its recorded log-probs are those it sampled from (≤ 0,
    one per token) and differ measurably from the trainer's, which RunConfig makes training correct."""
    from sleuth.rl.train import load_run_config

    torch.manual_seed(0)
    gens, gap = sampled_gap(policy, prompts, "llama", "int8", tokens=12)
    assert all(v <= 0 for g in gens for v in g.logprobs) and len(gap) == sum(len(g.token_ids) for g in gens)
    assert 1e-4 < max(gap) < 20
    with pytest.raises(ValueError, match="tis_cap"):
        load_run_config(None, rollout_engine="llama", rollout_precision="int8")
    assert load_run_config(None, rollout_engine="llama", rl_tis_cap=2.0).rollout_engine == "llama"


@needs_llama
@pytest.mark.slow
def test_llama_engine_runs_more_rows_than_it_has_slots(policy, prompts):
    """A batch larger than the engine's KV slots runs in turns and gives the same rows."""
    from sleuth.policy.llamacpp import LlamaCppEngine

    greedy = SamplingParams(max_new_tokens=8, temperature=0)
    policy.engine, policy.precision = "llama", "fp32"
    try:
        full = [g.token_ids for g in policy.generate(prompts, greedy)]
        saved = policy._llama["f32"]
        policy._llama["f32"] = LlamaCppEngine(policy.model, paths.embedded_policy_gguf(), n_slots=2, slot_ctx=1024)
        try:
            turns = [g.token_ids for g in policy.generate(prompts, greedy)]
        finally:
            policy._llama["f32"] = saved
    finally:
        policy.engine = "hf"
    assert len(prompts) > 2 and turns == full


@needs_llama
@pytest.mark.slow
def test_export_gguf_command_writes_the_trained_policy_llama_cpp_runs(policy, tmp_path):
    """`sleuth export-gguf` writes the shipped agent (its LoRA adapter merged) as GGUF; llama.cpp loads that file
    and its next-token distribution after an agent prompt is the policy's."""
    import llama_cpp
    from typer.testing import CliRunner

    from sleuth.cli import app
    from sleuth.policy.loader import load_policy

    out = tmp_path / "agent.gguf"
    res = CliRunner().invoke(app, ["export-gguf", str(out), "--type", "f32"])
    assert res.exit_code == 0, res.output
    assert "sleuth-135m-rl" in res.output and out.stat().st_size > 400e6
    bad = CliRunner().invoke(app, ["export-gguf", str(tmp_path / "x.bin")])
    assert bad.exit_code == 2 and "gguf" in bad.output

    shipped = load_policy(None)
    ids = list(shipped.tokenizer.apply_chat_template([{"role": "user", "content": QUESTIONS[0]}],
                                                     add_generation_prompt=True, tokenize=True)["input_ids"])
    with torch.no_grad():
        want = torch.log_softmax(shipped.model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=512, n_threads=1, logits_all=True, verbose=False)
    llm.eval(ids)
    got = torch.log_softmax(torch.tensor(np.asarray(llm.scores[len(ids) - 1]), dtype=torch.float32), -1)
    assert int(got.argmax()) == int(want.argmax())
    top = want.topk(20).indices
    assert (got[top] - want[top]).abs().max() < 0.05
