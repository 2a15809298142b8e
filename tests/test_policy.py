"""Policies: the real embedded SmolLM2 (batched KV-cache generation) and an OpenAI-format server on loopback.

The model is loaded once (the session fixture ``smol_policy``). Its first load ever converts the shipped
GGUF (~30-40 s); later loads read the safetensors copy under SLEUTH_MODELS (conftest points it at the
default ~/.cache/sleuth/models, shared with the CLI, so the conversion is not redone per run).
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import agent_steps, sampled_gap
from replay_servers import api_error, completion

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from sleuth.policy.base import ChatPolicy, SamplingParams, TokenPolicy  # noqa: E402
from sleuth.policy.loader import load_policy  # noqa: E402
from sleuth.policy.openai_policy import OpenAIPolicy, PolicyError  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "Who wrote the play Hamlet? Answer in one sentence, then add one fact about the author's life.",
    "2+2=",
    "List three colours of the rainbow, one per line, and say which one has the longest wavelength.",
]


# ----------------------------------------------------------------------------------- local model
@pytest.fixture(scope="module")
def policy(smol_policy):
    # One thread: on a small shared machine, intra-op threads that wait on each other are far slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield smol_policy
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompts(policy) -> list[list[int]]:
    tok = policy.tokenizer
    out = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                   tokenize=True)["input_ids"] for q in QUESTIONS]
    assert len({len(p) for p in out}) >= 3, "the test needs mixed prompt lengths"
    return [list(p) for p in out]


@pytest.fixture(scope="module")
def greedy(policy, prompts):
    return policy.generate(prompts, SamplingParams(max_new_tokens=20, temperature=0))


@pytest.mark.slow
def test_protocol_and_metadata(policy):
    assert isinstance(policy, TokenPolicy)
    assert policy.name == "smollm2-135m-instruct"
    assert policy.version == 0
    assert policy.tokenizer.convert_ids_to_tokens(sorted(policy.eos_ids)) == ["<|im_end|>"]


@pytest.mark.slow
def test_batched_greedy_equals_sequential_hf_generate(policy, prompts, greedy):
    for p, g in zip(prompts, greedy):
        x = torch.tensor([p])
        ref = policy.model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                                    max_new_tokens=20, pad_token_id=policy.pad_id)[0, len(p):].tolist()
        assert g.token_ids == ref
        assert len(g.logprobs) == len(g.token_ids)


@pytest.mark.slow
def test_keeping_finished_rows_gives_the_same_tokens(policy, prompts, greedy):
    policy.drop_finished = False
    try:
        kept = policy.generate(prompts, SamplingParams(max_new_tokens=20, temperature=0))
    finally:
        policy.drop_finished = True
    assert [g.token_ids for g in kept] == [g.token_ids for g in greedy]
    assert greedy[0].finish_reason == "eos", "the short factual answer should end before 20 tokens"


@pytest.mark.slow
def test_logprobs_match_teacher_forcing(policy, prompts, greedy):
    tf = policy.logprobs([p + g.token_ids for p, g in zip(prompts, greedy)])
    for p, g, lp in zip(prompts, greedy, tf):
        assert len(lp) == len(p) + len(g.token_ids) - 1
        assert torch.allclose(torch.tensor(lp[len(p) - 1:]), torch.tensor(g.logprobs), atol=1e-3)
        assert all(v <= 0 for v in g.logprobs)


@pytest.mark.slow
def test_sampled_logprobs_are_temperature_scaled(policy, prompts):
    torch.manual_seed(1)
    gens = policy.generate(prompts[:2], SamplingParams(max_new_tokens=12, temperature=0.7))
    seqs = [p + g.token_ids for p, g in zip(prompts, gens)]
    at_t = policy.logprobs(seqs, temperature=0.7)
    at_1 = policy.logprobs(seqs)
    for p, g, a, b in zip(prompts, gens, at_t, at_1):
        assert torch.allclose(torch.tensor(a[len(p) - 1:]), torch.tensor(g.logprobs), atol=1e-3)
        assert not torch.allclose(torch.tensor(b[len(p) - 1:]), torch.tensor(g.logprobs), atol=1e-3)


@pytest.mark.slow
def test_eos_ends_generation_and_is_kept(policy, greedy):
    g = greedy[0]
    assert g.finish_reason == "eos"
    assert g.token_ids[-1] in policy.eos_ids
    assert "Paris" in g.text and "<|im_end|>" not in g.text


@pytest.mark.slow
def test_stop_string_includes_completing_token(policy, prompts, greedy):
    i = next(i for i, g in enumerate(greedy) if g.finish_reason == "length")  # a 20-token answer
    full = greedy[i]
    # a stop string spanning the boundary between tokens 7 and 8 of the greedy text
    before = policy.tokenizer.decode(full.token_ids[:7])
    after = policy.tokenizer.decode(full.token_ids[:8])
    stop = before[-2:] + after[len(before):len(before) + 2]
    assert len(stop) >= 3 and stop not in before
    g = policy.generate([prompts[i]], SamplingParams(max_new_tokens=20, temperature=0, stop=[stop]))[0]
    assert g.finish_reason == "stop"
    assert g.token_ids == full.token_ids[:len(g.token_ids)]
    assert stop in g.text
    assert stop not in policy.tokenizer.decode(g.token_ids[:-1])
    assert len(g.token_ids) == 8


@pytest.mark.slow
def test_max_new_tokens(policy, prompts):
    gens = policy.generate(prompts[1:3], SamplingParams(max_new_tokens=5, temperature=0))
    assert [len(g.token_ids) for g in gens] == [5, 5]
    assert {g.finish_reason for g in gens} == {"length"}
    none = policy.generate(prompts[:1], SamplingParams(max_new_tokens=0))
    assert none[0].token_ids == [] and none[0].finish_reason == "length"


@pytest.mark.slow
def test_sampling_is_reproducible_under_seed(policy, prompts):
    from sleuth.policy.kvcache import PrefixCache

    params = SamplingParams(max_new_tokens=8, temperature=1.0)
    saved = policy.prefix_cache

    def run(seed):   # each from an empty prefix cache: a cached prefill rounds differently (~1e-6)
        policy.prefix_cache = PrefixCache()
        torch.manual_seed(seed)
        return policy.generate(prompts[1:3], params)
    try:
        a, b, c = run(123), run(123), run(7)
    finally:
        policy.prefix_cache = saved
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.logprobs for g in a] == [g.logprobs for g in b]
    assert [g.token_ids for g in a] != [g.token_ids for g in c]


def test_sampler_draws_the_softmax_distribution():
    """Inverse-CDF sampling: frequencies match softmax(logits / T) (chi-square), a token of zero probability
    is never drawn, top_p keeps the nucleus only, and the recorded log-prob is the sampled token's."""
    from sleuth.policy.hf import HFPolicy

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf"), 0.5]]).repeat(4000, 1)
    torch.manual_seed(0)
    tok, lp = HFPolicy._sample(logits, SamplingParams(temperature=0.7))
    p = torch.softmax(logits[0] / 0.7, dim=-1)
    counts = torch.bincount(tok, minlength=6).double()
    assert counts[4] == 0
    seen = p > 0
    chi2 = float((((counts - 4000 * p) ** 2) / (4000 * p))[seen].sum())
    assert chi2 < 20.5          # 5 degrees of freedom: p ≈ 0.001
    assert torch.allclose(lp, torch.log(p[tok]).float(), atol=1e-5)
    tok, _ = HFPolicy._sample(logits[:500], SamplingParams(temperature=1.0, top_p=0.6))
    assert set(tok.tolist()) <= {0, 1}        # softmax mass 0.56 on token 0, so token 1 completes 0.6


def test_two_level_sampler_over_a_large_vocabulary():
    """The sampler's two-level inverse CDF (blocks of 128 tokens, a vocabulary that is not a multiple of it):
    frequencies match the softmax (chi-square over the tokens with mass), and tokens of zero probability —
    whole blocks of them, and the vocabulary's tail — are never drawn."""
    from sleuth.policy.hf import HFPolicy

    V = 1000
    base = torch.full((V,), float("-inf"))
    live = torch.tensor([3, 127, 128, 129, 400, 640, 998])       # block edges, a block alone, the last block
    base[live] = torch.tensor([1.0, 0.0, 2.0, -1.0, 0.5, 1.5, 0.2])
    torch.manual_seed(1)
    tok, lp = HFPolicy._sample(base.repeat(20000, 1), SamplingParams(temperature=1.0))
    counts = torch.bincount(tok, minlength=V).double()
    assert set(torch.nonzero(counts).squeeze(-1).tolist()) <= set(live.tolist())
    p = torch.softmax(base, dim=-1)
    chi2 = float((((counts[live] - 20000 * p[live]) ** 2) / (20000 * p[live])).sum())
    assert chi2 < 22.5          # 6 degrees of freedom: p ≈ 0.001
    assert torch.allclose(lp, torch.log(p[tok]).float(), atol=1e-5)


@pytest.mark.slow
def test_tiny_top_p_is_greedy(policy, prompts, greedy):
    torch.manual_seed(0)
    gens = policy.generate(prompts[:2], SamplingParams(max_new_tokens=10, temperature=1.0, top_p=1e-6))
    assert [g.token_ids for g in gens] == [g.token_ids[:10] for g in greedy[:2]]


@pytest.mark.slow
def test_prefix_cache_continuations_equal_full_prefill(policy, prompts):
    from sleuth.policy.kvcache import PrefixCache

    obs = policy.tokenizer.encode("\nObservation: [1] a search result about the question.\n")
    saved = policy.prefix_cache
    try:
        policy.prefix_cache = None
        ref = agent_steps(policy, prompts, obs)
        policy.prefix_cache = PrefixCache()
        got = agent_steps(policy, prompts, obs)
        pc = policy.prefix_cache
    finally:
        policy.prefix_cache = saved
    assert pc.hits > pc.misses > 0   # later steps prefill only the observation
    for (t_ref, lp_ref), (t, lp) in zip(ref, got):
        assert t == t_ref
        assert lp == pytest.approx(lp_ref, abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["hf", "static"])
def test_bucketed_prefill_of_mixed_lengths_equals_one_padded_prefill(policy, prompts, engine):
    """Also with the static engine, whose buckets are prefilled by the engine itself."""
    from sleuth.policy.kvcache import PrefixCache

    long = prompts[1] + prompts[3] * 4       # a resumed long context beside short fresh prompts
    batch = [long, prompts[0], prompts[2], prompts[3]]
    params = SamplingParams(max_new_tokens=8, temperature=0)
    saved = policy.prefix_cache, policy.engine
    try:
        policy.engine = engine
        policy.prefix_cache = None
        ref = policy.generate(batch, params)
        policy.prefix_cache = PrefixCache()
        assert policy._prefill_in_buckets(batch, [(0, None)] * len(batch))   # this batch is bucketed
        policy.prefix_cache = PrefixCache()
        got = policy.generate(batch, params)
    finally:
        policy.prefix_cache, policy.engine = saved
    for a, b in zip(ref, got):
        assert a.token_ids == b.token_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["hf", "static"])
def test_identical_prompts_are_prefilled_once_and_sample_as_before(policy, prompts, engine):
    """A group's rows often share one prompt: prefilling it once and copying its KV to those rows samples the
    same tokens with the same log-probs (seeded) as prefilling every row, with fewer rows through the model."""
    from sleuth.policy.kvcache import PrefixCache

    batch = [prompts[0], prompts[2], prompts[0], prompts[3], prompts[2], prompts[0]]   # 3 distinct
    params = SamplingParams(max_new_tokens=10, temperature=1.0)
    saved = policy.prefix_cache, policy.engine, policy.dedupe_prompts
    runs = {}
    try:
        policy.engine = engine
        for dedupe in (False, True):
            policy.prefix_cache, policy.dedupe_prompts = PrefixCache(), dedupe
            before = policy.prefill_rows_saved
            torch.manual_seed(11)
            runs[dedupe] = policy.generate(batch, params)
            assert policy.prefill_rows_saved - before == (3 if dedupe else 0)
    finally:
        policy.prefix_cache, policy.engine, policy.dedupe_prompts = saved
    assert len({tuple(g.token_ids) for g in runs[True]}) > 3      # copies of one prompt sampled apart
    for a, b in zip(runs[False], runs[True]):
        assert a.token_ids == b.token_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


@pytest.mark.slow
def test_prefix_cache_is_dropped_when_weights_change(policy, prompts):
    from sleuth.policy.kvcache import PrefixCache

    saved = policy.prefix_cache
    policy.prefix_cache = pc = PrefixCache()
    try:
        first = policy.generate(prompts[:1], SamplingParams(max_new_tokens=4, temperature=0))[0]
        again = prompts[0] + first.token_ids
        policy.generate([again], SamplingParams(max_new_tokens=1, temperature=0))
        assert pc.hits == len(again) - 1
        with torch.no_grad():   # an in-place update (what an optimizer step does), values unchanged
            next(policy.model.parameters()).mul_(1.0)
        policy.generate([again], SamplingParams(max_new_tokens=1, temperature=0))
        assert pc.hits == len(again) - 1 and len(pc) == 1   # recomputed, not served from the old weights
    finally:
        policy.prefix_cache = saved


@pytest.mark.slow
def test_prefix_cache_is_dropped_when_the_engine_precision_changes(policy, prompts):
    """KV that the int8 engine computed is another policy's: the fp32 path must not continue from it."""
    from sleuth.policy.kvcache import PrefixCache

    saved = policy.prefix_cache, policy.engine, policy.precision
    greedy = SamplingParams(max_new_tokens=6, temperature=0)
    try:
        policy.prefix_cache = pc = PrefixCache()
        ref = policy.generate(prompts[:2], greedy)                   # fp32, cache filled
        again = [p + g.token_ids for p, g in zip(prompts[:2], ref)]
        policy.engine, policy.precision = "static", "int8"
        policy.generate(again, greedy)                               # int8 entries for the longer contexts
        assert pc.hits == 0                                          # the fp32 entries were not used
        policy.engine, policy.precision = "hf", "fp32"
        hits = pc.hits
        got = policy.generate(again, greedy)
        assert pc.hits == hits                                       # nor the int8 ones now
        policy.prefix_cache = None
        fresh = policy.generate(again, greedy)
    finally:
        policy.prefix_cache, policy.engine, policy.precision = saved
    for a, b in zip(got, fresh):
        assert a.token_ids == b.token_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_prefix_cache_lookup_store_and_eviction():
    from sleuth.policy.kvcache import PrefixCache

    def kv(n):
        return [(torch.arange(n, dtype=torch.float32)[None, :, None], torch.zeros(1, n, 1))]

    pc = PrefixCache(max_bytes=50 * 8, min_reuse=3)   # 8 bytes per position: one float32 key + one value
    pc.store(list(range(20)), kv(20))
    assert pc.lookup(list(range(10)) + [99]) == (10, 0)
    assert pc.lookup(list(range(20))) == (19, 0)   # one token is always left to prefill
    assert pc.lookup([0, 1, 99]) == (0, None)      # below min_reuse
    assert pc.kv(0, 5)[0][0].flatten().tolist() == [0, 1, 2, 3, 4]
    pc.store(list(range(25)), kv(25))              # extends entry 0: supersedes it
    assert len(pc) == 1 and pc.lookup(list(range(26))) == (25, 1)
    pc.store([7] * 20, kv(20))
    pc.store([8] * 20, kv(20))                     # over 50 tokens: the least recently used goes
    assert len(pc) == 2 and pc.lookup(list(range(30)))[1] is None


@pytest.mark.slow
@pytest.mark.parametrize("bad", [[], [[]], ["hello"], [[1, "x"]], [[-1]], [[10**9]], "hello", [[True]]])
def test_invalid_prompts_give_clear_errors(policy, bad):
    with pytest.raises(ValueError, match="prompts"):
        policy.generate(bad, SamplingParams(max_new_tokens=2))


@pytest.mark.slow
def test_invalid_sampling_params(policy, prompts):
    with pytest.raises(ValueError, match="temperature"):
        policy.generate(prompts[:1], SamplingParams(temperature=-1))
    with pytest.raises(ValueError, match="top_p"):
        policy.generate(prompts[:1], SamplingParams(top_p=0))


@pytest.mark.slow
def test_checkpoint_directory_with_version(policy, tmp_path):
    from sleuth.policy.hf import HFPolicy, embedded_cache_dir

    src = embedded_cache_dir()
    ckpt = tmp_path / "step-7"
    ckpt.mkdir()
    for f in src.iterdir():  # a checkpoint directory without copying 0.5 GB of weights
        (ckpt / f.name).symlink_to(f)
    (ckpt / "sleuth_version.json").write_text(json.dumps({"version": 7}))
    pol = load_policy(str(ckpt))
    assert isinstance(pol, HFPolicy) and pol.version == 7 and pol.name == "step-7"
    (ckpt / "sleuth_version.json").write_text("{}")
    with pytest.raises(ValueError, match="sleuth_version.json"):
        HFPolicy.load(ckpt)


def test_missing_model_path_is_a_clearapi_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_policy(str(tmp_path / "no-such-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_policy(str(tmp_path / "empty"))


# ----------------------------------------------------------------------------------- OpenAI format
@pytest.fixture
def server(chat_server):
    return chat_server


TOOLS = [{"type": "function", "function": {
    "name": "search", "description": "Search the corpus.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}]
MSGS = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_text_reply_and_request_shape(server):
    server.add(200, completion({"content": "Paris."}))
    pol = OpenAIPolicy("gpt-test", base_url=server.url, api_key="sk-test")
    assert isinstance(pol, ChatPolicy)
    reply = pol.chat(MSGS, None, SamplingParams(max_new_tokens=50, temperature=0.2, top_p=0.9, stop=["\n\n"]))
    assert (reply.text, reply.tool_calls, reply.finish_reason) == ("Paris.", [], "stop")
    assert (reply.prompt_tokens, reply.completion_tokens) == (31, 9)
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    body = req["json"]
    assert body["model"] == "gpt-test" and body["messages"] == MSGS
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["stop"]) == (0.2, 0.9, 50, ["\n\n"])
    assert "tools" not in body


def test_native_tool_calls_parsed_and_malformed_kept_verbatim(server):
    server.add(200, completion({"content": None, "tool_calls": [
        {"id": "call_a1", "type": "function", "function": {"name": "search", "arguments": "{\"query\": \"Paris\"}"}},
        {"id": "call_b2", "type": "function", "function": {"name": "search", "arguments": "{\"query\": \"Lyon\""}},
        {"id": "call_c3", "type": "function", "function": {"name": "search", "arguments": "[\"Paris\"]"}},
    ]}, finish="tool_calls"))
    pol = OpenAIPolicy("gpt-test", base_url=server.url)
    reply = pol.chat(MSGS, TOOLS, SamplingParams())
    assert reply.text == "" and reply.finish_reason == "tool_calls"
    assert [(c.id, c.name) for c in reply.tool_calls] == [("call_a1", "search"), ("call_b2", "search"),
                                                          ("call_c3", "search")]
    assert reply.tool_calls[0].arguments == {"query": "Paris"}
    assert reply.tool_calls[1].arguments == "{\"query\": \"Lyon\""   # not repaired
    assert reply.tool_calls[2].arguments == "[\"Paris\"]"           # valid JSON, but not an object
    assert server.requests[0]["json"]["tools"] == TOOLS
    assert server.requests[0]["json"]["tool_choice"] == "auto"
    assert server.requests[0]["auth"] == "Bearer not-needed"


def test_native_tools_off_does_not_send_tools(server):
    server.add(200, completion({"content": "<search>Paris</search>"}))
    pol = OpenAIPolicy("gpt-test", base_url=server.url, native_tools=False)
    assert pol.chat(MSGS, TOOLS, SamplingParams()).text == "<search>Paris</search>"
    assert "tools" not in server.requests[0]["json"] and "tool_choice" not in server.requests[0]["json"]


def test_429_then_success_is_retried(server):
    server.add(429, api_error("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
               {"retry-after-ms": "20"})
    server.add(200, completion({"content": "Paris."}))
    reply = OpenAIPolicy("gpt-test", base_url=server.url, max_retries=2).chat(MSGS, None, SamplingParams())
    assert reply.text == "Paris." and len(server.requests) == 2


def test_persistent_5xx_becomes_policyapi_error(server):
    for _ in range(2):
        server.add(503, api_error("The server is overloaded", "server_error", None), {"retry-after-ms": "20"})
    pol = OpenAIPolicy("gpt-test", base_url=server.url, max_retries=1)
    with pytest.raises(PolicyError, match="503.*overloaded"):
        pol.chat(MSGS, None, SamplingParams())
    assert len(server.requests) == 2


def test_client_error_is_not_retried(server):
    server.add(401, api_error("Incorrect API key provided", "invalid_request_error", "invalid_api_key"))
    with pytest.raises(PolicyError, match="401.*Incorrect API key"):
        OpenAIPolicy("gpt-test", base_url=server.url, max_retries=3).chat(MSGS, None, SamplingParams())
    assert len(server.requests) == 1


def test_timeout_becomes_policyapi_error(server):
    server.add(200, completion({"content": "late"}), delay=1.5)
    pol = OpenAIPolicy("gpt-test", base_url=server.url, timeout=0.3, max_retries=0)
    with pytest.raises(PolicyError, match="timed out"):
        pol.chat(MSGS, None, SamplingParams())


def test_unreachable_server_and_missing_key(server, tmp_path):
    server.httpd.shutdown()
    server.httpd.server_close()
    with pytest.raises(PolicyError, match="cannot reach"):
        OpenAIPolicy("m", base_url=server.url, max_retries=0).chat(MSGS, None, SamplingParams())
    with pytest.raises(PolicyError, match="OPENAI_API_KEY"):
        OpenAIPolicy("gpt-4o-mini")


def test_loader_picks_the_server_policy(server, monkeypatch):
    monkeypatch.setenv("SLEUTH_API_KEY", "sk-env")
    server.add(200, completion({"content": "ok"}))
    pol = load_policy(base_url=server.url)
    assert isinstance(pol, OpenAIPolicy) and pol.name == "default"
    assert pol.chat(MSGS).text == "ok"
    assert server.requests[0]["auth"] == "Bearer sk-env"


# ------------------------------------------------------------------------------------- decode engines
@pytest.mark.slow
def test_static_engine_equals_the_reference_engine(policy, prompts):
    """Greedy agent steps (prefix cache, ragged batches, rows finishing early) give the same tokens and
    log-probs from sleuth's static engine as from transformers' forward."""
    assert_static_equals_reference(policy, prompts)


def assert_static_equals_reference(policy, prompts) -> None:
    """Greedy multi-step agent calls (a fresh prefix cache each) with the hf path and the static engine give
    the same tokens, and log-probs within 1e-4."""
    from sleuth.policy.kvcache import PrefixCache

    obs = policy.tokenizer.encode("\nObservation: [1] a search result about the question.\n")
    saved = policy.prefix_cache, policy.engine
    runs = {}
    try:
        for engine in ("hf", "static"):
            policy.engine, policy.prefix_cache = engine, PrefixCache()
            runs[engine] = agent_steps(policy, prompts, obs)
            assert (policy.decode_engine() is not None) == (engine == "static")
    finally:
        policy.prefix_cache, policy.engine = saved
    for (t_ref, lp_ref), (t, lp) in zip(runs["hf"], runs["static"]):
        assert t == t_ref
        assert lp == pytest.approx(lp_ref, abs=1e-4)


@pytest.mark.slow
def test_static_engine_shares_a_common_prefix_and_equals_the_reference(policy, monkeypatch):
    """Rows that start with the same system prompt: the static engine holds that prefix once (fresh prompts and
    continuations of cached rows alike) and still gives the reference path's greedy tokens and log-probs."""
    from sleuth.policy import engine as engine_mod

    tok = policy.tokenizer
    system = ("You are a research agent. Search an offline encyclopedia, read the results, and answer with a "
              "short phrase found in them. One action per reply.")
    rows = [list(tok.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": q}],
                                         add_generation_prompt=True, tokenize=True)["input_ids"]) for q in QUESTIONS]
    shared_lengths = []
    init = engine_mod.StaticCache.__init__

    def spy(self, *a, **k):
        init(self, *a, **k)
        shared_lengths.append(self.n_shared)

    monkeypatch.setattr(engine_mod.StaticCache, "__init__", spy)
    assert_static_equals_reference(policy, rows)
    # the first call's prefix (system prompt) and, in the later calls, the rows' common cached part
    assert sum(n >= 32 for n in shared_lengths) >= 3, shared_lengths


def test_static_cache_with_a_shared_prefix_reads_rows_through_it():
    """A cache on a shared prefix: its slots are valid in every row, row_kv reads them from the one copy, select
    and copy_rows move only the rows' own slots, and a cache on another prefix cannot take its rows."""
    from sleuth.policy.engine import SharedPrefix, StaticCache

    shared = SharedPrefix(k=torch.full((2, 1, 3, 2), 7.0), v=torch.full((2, 1, 3, 2), -7.0))
    sc = StaticCache(layers=2, batch=3, kv_heads=1, capacity=8, head_dim=2, dtype=torch.float32,
                     device=torch.device("cpu"), shared=shared)
    assert (sc.capacity, sc.fill, sc.k.shape[3]) == (8, 3, 5) and bool(sc.valid[:, :3].all())
    own = [(torch.arange(3.0)[:, None, None, None].expand(3, 1, 2, 2) + 10 * li,
            -torch.arange(3.0)[:, None, None, None].expand(3, 1, 2, 2)) for li in range(2)]
    sc.load(own, torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 1], [1, 1, 1, 1, 1]]))
    k, v = sc.row_kv(1, torch.tensor([0, 2, 4]))[1]
    assert k[0, :, 0].tolist() == [7.0, 7.0, 11.0] and v[0, :, 0].tolist() == [-7.0, -7.0, -1.0]
    sc.select(torch.tensor([0, 2]))
    assert sc.k[0, :, 0, :2, 0].tolist() == [[0.0, 0.0], [2.0, 2.0]] and sc.fill == 5
    with pytest.raises(ValueError, match="valid in every row"):
        sc.load(own, torch.tensor([[0, 1, 1, 1, 1]] * 3))
    other = StaticCache(layers=2, batch=2, kv_heads=1, capacity=8, head_dim=2, dtype=torch.float32,
                        device=torch.device("cpu"))
    with pytest.raises(ValueError, match="same shared prefix"):
        other.copy_rows(sc, [0, 1])


@pytest.mark.slow
def test_int8_engine_samples_its_own_policy(policy, prompts):
    """int8 is a slightly different policy: it runs, records its own log-probs (finite, ≤ 0), and they differ
    from the trainer's by a measurable gap that training must correct (RunConfig demands tis_cap)."""
    from sleuth.rl.train import load_run_config

    gens, gap = sampled_gap(policy, prompts[:2], "static", "int8", tokens=8)
    assert all(v <= 0 for g in gens for v in g.logprobs) and len(gap) == sum(len(g.token_ids) for g in gens)
    assert 1e-4 < max(gap) < 20
    with pytest.raises(ValueError, match="tis_cap"):
        load_run_config(None, rollout_engine="static", rollout_precision="int8")
    assert load_run_config(None, rollout_engine="static", rollout_precision="int8", rl_tis_cap=2.0).rl.tis_cap == 2.0


@pytest.mark.slow
def test_bf16_engine_is_close_to_the_trainer_and_needs_tis(policy, prompts):
    """bf16 rounds the products' inputs: its recorded log-probs are its own, a gap to the trainer's far smaller
    than int8's but not zero, so RunConfig demands tis_cap for it too."""
    from sleuth.rl.train import load_run_config

    torch.manual_seed(0)
    gens, gap = sampled_gap(policy, prompts[:2], "static", "bf16", tokens=8)
    assert all(v <= 0 for g in gens for v in g.logprobs) and len(gap) == sum(len(g.token_ids) for g in gens)
    assert 1e-5 < sum(gap) / len(gap) < 0.1 and max(gap) < 1.0
    with pytest.raises(ValueError, match="tis_cap"):
        load_run_config(None, rollout_engine="static", rollout_precision="bf16")


def test_cpu_flags_missing_means_the_safe_int8_setting(monkeypatch):
    """Without /proc/cpuinfo no flags are claimed, so int8 keeps fbgemm's 7-bit activations (no VNNI assumed)."""
    from pathlib import Path

    from sleuth import hardware

    def unreadable(*a, **k):
        raise OSError("no cpuinfo")

    hardware._cpuinfo.cache_clear()
    monkeypatch.setattr(Path, "read_text", unreadable)
    try:
        assert hardware.cpu_flags() == frozenset() and hardware.cpu_model() is None and not hardware.has_vnni()
    finally:
        monkeypatch.undo()
        hardware._cpuinfo.cache_clear()
    assert hardware.has_vnni() == bool({"avx512_vnni", "avx_vnni"} & hardware.cpu_flags())


def test_static_cache_select_moves_rows_in_place():
    """Dropping finished rows keeps the other rows' keys, values and masks, in order, without a new cache."""
    from sleuth.policy.engine import StaticCache

    sc = StaticCache(layers=2, batch=5, kv_heads=1, capacity=6, head_dim=2, dtype=torch.float32,
                     device=torch.device("cpu"))
    kv = [(torch.arange(5.0)[:, None, None, None].expand(5, 1, 4, 2) + 10 * li,
           -torch.arange(5.0)[:, None, None, None].expand(5, 1, 4, 2)) for li in range(2)]
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]])
    sc.load(kv, mask)
    storage = sc.k.data_ptr()
    sc.select(torch.tensor([0, 3, 4]))
    assert sc.k.data_ptr() == storage and sc.k.shape[1] == 3
    for li in range(2):
        assert sc.k[li, :, 0, :4, 0].tolist() == [[0.0 + 10 * li] * 4, [3.0 + 10 * li] * 4, [4.0 + 10 * li] * 4]
        assert sc.v[li, :, 0, :4, 0].tolist() == [[0.0] * 4, [-3.0] * 4, [-4.0] * 4]
    assert sc.valid[:, :4].long().tolist() == [[1, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]]
    with pytest.raises(ValueError, match="ascending"):
        sc.select(torch.tensor([2, 1]))


def test_engine_reuses_released_cache_buffers_and_fans_rows_out():
    """A pooled cache takes a released buffer large enough (no new memory to touch), never one still in use;
    copy_rows gives every row its source row's filled slots and mask."""
    from sleuth.policy.engine import DecodeEngine
    from sleuth.rl.toy import tiny_llama

    eng = DecodeEngine(tiny_llama(seed=3))
    with torch.inference_mode():
        a = eng.new_cache(4, 16, pooled=True)
        b = eng.new_cache(4, 16, pooled=True)            # a is in use: b gets its own memory
        assert a.k.data_ptr() != b.k.data_ptr()
        ptr = a.storage.data_ptr()
        eng.release(a)
        assert a.storage is None
        c = eng.new_cache(2, 20, pooled=True)            # smaller than a's buffer: reuses it
        assert c.storage.data_ptr() == ptr
        assert eng.new_cache(8, 64, pooled=True).storage.data_ptr() != ptr   # too large for any spare
        eng.release(b)
        eng.drop_spare()
        assert eng._spare == []
        eng.release(eng.new_cache(2, 4))                 # not pooled: nothing to give back
        assert eng._spare == []

        src = eng.new_cache(2, 6)
        k = torch.arange(2.0)[:, None, None, None].expand(2, eng.n_kv, 3, eng.head_dim)
        src.load([(k + li, -k) for li in range(eng.n_layers)], torch.tensor([[1, 1, 1], [0, 1, 1]]))
        out = eng.new_cache(3, 6, pooled=True)
        out.copy_rows(src, [1, 0, 1])
    assert out.fill == 3
    assert out.k[1, :, 0, :3, 0].tolist() == [[2.0] * 3, [1.0] * 3, [2.0] * 3]   # layer 1: row + 1
    assert out.v[0, :, 0, :3, 0].tolist() == [[-1.0] * 3, [0.0] * 3, [-1.0] * 3]
    assert out.valid[:, :3].long().tolist() == [[0, 1, 1], [1, 1, 1], [0, 1, 1]]


def test_engine_follows_lora_weights_and_their_updates():
    """The engine's forward equals the model's (a LoRA adapter merged in) for a prefill and decode steps, and
    after an in-place update it copies the new weights before the next call."""
    from peft import LoraConfig, get_peft_model

    from sleuth.policy.engine import DecodeEngine
    from sleuth.rl.toy import tiny_llama

    torch.manual_seed(0)
    model = get_peft_model(tiny_llama(seed=3), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)       # a trained adapter, not peft's zero initialisation
    ids = torch.tensor([[1, 5, 9, 11, 4, 7, 2, 8], [1, 6, 6, 3, 10, 12, 13, 9]])
    eng = DecodeEngine(model)

    def check():
        with torch.no_grad():
            ref = model(input_ids=ids).logits
        cache = eng.new_cache(2, 8)
        got = eng.forward(cache, ids[:, :5], torch.arange(5).expand(2, 5), torch.ones(2, 5, dtype=torch.bool))
        torch.testing.assert_close(got, ref[:, 4], atol=1e-5, rtol=1e-4)
        for t in range(5, 8):       # one token per step, as in decoding
            got = eng.forward(cache, ids[:, t:t + 1], torch.full((2, 1), t), torch.ones(2, 1, dtype=torch.bool))
            torch.testing.assert_close(got, ref[:, t], atol=1e-5, rtol=1e-4)

    check()
    assert not eng.refresh()                        # nothing changed: no copy
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_A" in n:
                p.add_(0.05)                        # what an optimizer step does
    assert eng.refresh()
    check()
