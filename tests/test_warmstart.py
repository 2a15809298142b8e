"""Warm start: demonstrations replayed through the real agent loop and a real index, judged, then cloned."""

from __future__ import annotations

import pytest

from sleuth.search.corpus import Passage
from sleuth.tasks.task import Task

BRIDGE_PASSAGES = [
    Passage("p1", "Jane Austen", "Jane Austen (16 December 1775 – 18 July 1817) was an English novelist "
            "known for six novels.", "t"),
    Passage("p2", "Pride and Prejudice", "Pride and Prejudice is an 1813 novel of manners written by the English "
            "novelist Jane Austen.", "t"),
    Passage("p3", "Steventon", "Steventon is a village and civil parish in Hampshire, England.", "t"),
    Passage("p4", "Mont Blanc", "Mont Blanc is the highest mountain in the Alps, rising 4,806 metres.", "t"),
]

BRIDGE = Task("b1", "When was the English novelist mentioned in the article on Pride and Prejudice born?",
              ["16 December 1775"], "synth-bridge-2hop",
              {"search_path": ["Pride and Prejudice", "Jane Austen"], "hops": 2})
WRONG_PATH = Task("b2", "When was the novelist who wrote Pride and Prejudice born?", ["16 December 1775"],
                  "synth-bridge-2hop", {"search_path": ["Pride and Prejudice", "Steventon"], "hops": 2})
LOOKUP = Task("l1", "How high is Mont Blanc?", ["4,806 metres", "4806 m"], "synth-lookup")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from conftest import lexical_index
    from sleuth.agent import Environment

    with lexical_index(tmp_path_factory.mktemp("home"), BRIDGE_PASSAGES) as index:
        yield Environment(index.engine("lexical"), {"t": index.docs}, search_k=2, tools=("search", "browse"))


def _demonstrate(tasks, env, tokenizer, **kw):
    from sleuth.agent import AgentConfig
    from sleuth.rewards import RewardConfig
    from sleuth.rl.warmstart import WarmStartConfig, demonstrate
    from sleuth.tasks.judges import make_judge

    cfg = WarmStartConfig(tasks=["-"], **kw)
    return demonstrate(tasks, tokenizer, env, AgentConfig(max_steps=4, prompt="short-bridge"), make_judge("cover"),
                       RewardConfig(require_evidence=True), cfg, log=lambda s: None)


def test_demonstrations_replay_verified_paths_and_keep_only_correct_ones(env, smol_tokenizer):
    demos, stats = _demonstrate([BRIDGE, WRONG_PATH, LOOKUP], env, smol_tokenizer, max_demos=3,
                                bridge_share=2 / 3)
    assert stats["demos_tried"] == 3 and stats["demos"] == 2        # the wrong path never shows the answer
    by_q = {t.question: t for t in demos}
    bridge = by_q[BRIDGE.question]
    actions = [m["content"] for m in bridge.messages if m["role"] == "assistant" and "step" in m]
    assert actions == ["<search>Pride and Prejudice</search>", "<search>Jane Austen</search>",
                       "<answer>16 December 1775</answer>"]
    assert [c.tool for c in bridge.tool_calls] == ["search", "search"]
    assert bridge.judgement.correct and bridge.judgement.grounded
    # the answer is written as the observations show it ("4,806 metres"), one search for a lookup
    lookup = by_q[LOOKUP.question]
    assert lookup.answer == "4,806 metres" and len(lookup.tool_calls) == 1
    # the trained tokens are exactly the actions' tokens: prompt, question and observations are context
    seg = bridge.segments[0]
    trained = [t for t, m in zip(seg.token_ids, seg.mask) if m]
    assert smol_tokenizer.decode(trained) == "".join(actions)


def test_quotas_keep_the_multi_search_share(env, smol_tokenizer):
    demos, stats = _demonstrate([BRIDGE, LOOKUP], env, smol_tokenizer, max_demos=1, bridge_share=0.0)
    assert stats["demos"] == 1 and demos[0].question == LOOKUP.question and stats["demos_multi_search"] == 0


def test_cloning_raises_the_demonstrations_likelihood(env, smol_tokenizer, one_thread):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sleuth.rl.config import TrainConfig
    from sleuth.rl.reinforce import ReinforceTrainer
    from sleuth.rl.warmstart import WarmStartConfig, clone

    demos, _ = _demonstrate([BRIDGE, LOOKUP], env, smol_tokenizer, max_demos=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(smol_tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=4096, tie_word_embeddings=True))
    trainer = ReinforceTrainer(model, smol_tokenizer, TrainConfig(micro_batch_size=1), version=3)
    before = [p.detach().clone() for p in trainer.params]
    hist = clone(trainer, demos, WarmStartConfig(tasks=["-"], epochs=12, batch_size=2, lr=1e-2), log=lambda s: None)
    assert len(hist) == 12 and trainer.version == 3 + 12
    assert hist[-1]["nll"] < 0.5 * hist[0]["nll"]
    # every step trains exactly the actions' tokens of both demonstrations
    assert all(h["tokens"] == sum(sum(s.mask) for t in demos for s in t.segments) for h in hist)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.params))
    # the RL optimizer is untouched: the warm start has its own
    assert not trainer.optimizer.state
    # a demonstration longer than max_seq_len is left out, and the log says so
    trainer.cfg.max_seq_len = min(sum(len(s.token_ids) for s in t.segments) for t in demos) - 1
    lines: list[str] = []
    clone(trainer, demos, WarmStartConfig(tasks=["-"], epochs=1, batch_size=2, lr=1e-2), log=lines.append)
    assert any("longer than rl.max_seq_len" in line for line in lines)


def test_config_rejects_bad_values():
    from sleuth.rl.warmstart import WarmStartConfig

    with pytest.raises(ValueError, match="bridge_share"):
        WarmStartConfig(tasks=["x"], bridge_share=1.5)
    with pytest.raises(ValueError, match="max_demos"):
        WarmStartConfig(tasks=["x"], max_demos=0)
    assert WarmStartConfig(tasks="a.jsonl").tasks == ["a.jsonl"]


def test_paths_found_on_the_index_for_questions_with_supporting_titles(env, smol_tokenizer):
    """Dev-style questions (supporting titles, no path): one search when its results show the answer, else a
    second search for a supporting title the first results name and whose results show it; unreachable
    questions and comparisons are dropped; tasks with a path or without titles pass unchanged."""
    from sleuth.rl.warmstart import find_paths

    one = Task("d1", "How high does Mont Blanc rise?", ["4,806 metres"], "dev-nq",
               {"supporting_titles": ["Mont Blanc"]})
    two = Task("d2", "When was the author of Pride and Prejudice born?", ["16 December 1775"], "dev-hotpotqa",
               {"supporting_titles": ["Pride and Prejudice", "Jane Austen"]})
    unreachable = Task("d3", "Which river flows through Steventon?", ["River Test"], "dev-hotpotqa",
                       {"supporting_titles": ["Steventon"]})
    comparison = Task("d4", "Which is higher, Mont Blanc or Steventon?", ["Mont Blanc"], "dev-2wiki",
                      {"supporting_titles": ["Mont Blanc", "Steventon"]})
    out = find_paths([BRIDGE, one, two, unreachable, comparison, LOOKUP], env.search_engine, 2, log=lambda s: None)
    paths = {t.id: t.metadata.get("search_path") for t in out}
    assert paths == {"b1": ["Pride and Prejudice", "Jane Austen"], "d1": [one.question],
                     "d2": [two.question, "Jane Austen"], "l1": None}
    assert "search_path" not in two.metadata          # the caller's tasks are not changed
    demos, stats = _demonstrate([t for t in out if t.id == "d2"], env, smol_tokenizer, max_demos=1, bridge_share=1)
    actions = [m["content"] for m in demos[0].messages if m["role"] == "assistant" and "step" in m]
    assert actions == [f"<search>{two.question}</search>", "<search>Jane Austen</search>",
                       "<answer>16 December 1775</answer>"] and demos[0].judgement.correct
