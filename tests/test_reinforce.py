"""The REINFORCE objective on a tiny random Llama: exact loss values, masking, advantages, learning."""

from __future__ import annotations

import copy
import math
import time

import pytest
import torch

from sleuth.rewards import RewardConfig, judge_trajectory, outcome_reward, score, token_rewards
from sleuth.rl.buffer import ReplayBuffer
from sleuth.rl.config import TrainConfig, load_config
from sleuth.rl.reinforce import (ReinforceTrainer, build_rows, collate, negatives_to_drop, reinforce_loss, select,
                                 token_logprobs)
from sleuth.rl.toy import OBS, tiny_llama, toy_config, train_toy
from sleuth.trajectory import Segment, Trajectory

GAMMA = 0.9


pytestmark = pytest.mark.usefixtures("one_thread")


def make_traj(steps: list[list[int]], finish: str = "finish", prompt=(1, 3), version: int = 0,
              lp: float = -4.0, versions: list[int] | None = None, step_base: int = 0) -> Trajectory:
    """Prompt (context) → step tokens (policy) separated by OBS (context), like an agent transcript."""
    seg = Segment()
    seg.extend_context(list(prompt))
    for i, ids in enumerate(steps):
        if i:
            seg.extend_context([OBS])
        v = versions[i] if versions else version
        seg.extend_policy(ids, [lp - 0.1 * k for k in range(len(ids))], v, step=i + step_base)
    return Trajectory(question="q", segments=[seg], steps=len(steps), finish_reason=finish)


def judged(traj: Trajectory, correct: bool, cfg: RewardConfig | None = None) -> Trajectory:
    """The trajectory, scored as the judge would have it (``rewards.score``)."""
    score(traj, correct, cfg)
    return traj


def cfg_for(**kw) -> TrainConfig:
    base = dict(lr=1e-3, micro_batch_size=8, max_grad_norm=0.0, log_entropy=True)
    base.update(kw)
    return TrainConfig(**base)


def manual_loss(model, groups, cfg: TrainConfig, version: int = 0) -> float:
    """REINFORCE loss written out independently: full-vocabulary log-softmax, explicit loops."""
    num, den = 0.0, 0
    for group in groups:
        rewards = [outcome_reward(t, t.judgement.correct, cfg.reward) for t in group]
        mean = sum(rewards) / len(rewards)
        std = (sum((r - mean) ** 2 for r in rewards) / len(rewards)) ** 0.5
        if std == 0:
            continue
        scale = std + 1e-6 if cfg.normalize_std else 1.0
        for t_, r in zip(group, rewards):
            seg = t_.segments[0]
            T = t_.steps
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([seg.token_ids])).logits[0].double()
            logsm = torch.log_softmax(logits, -1)
            for t in range(1, len(seg.token_ids)):
                if not seg.mask[t]:
                    continue
                old = seg.versions[t] < version
                if old and cfg.off_policy == "mask":
                    continue
                step_r = r * GAMMA ** (T - 1 - seg.steps[t]) if (t_.judgement.correct and cfg.reward.gamma_decay) else r
                a = (step_r - mean) / scale
                lp = float(logsm[t - 1, seg.token_ids[t]])
                w = min(math.exp(lp - seg.logprobs[t]), cfg.is_cap) if (old and cfg.off_policy == "is") else 1.0
                num += -w * a * lp + cfg.l2_tau / 2 * (lp - seg.logprobs[t]) ** 2
                den += 1
    return num / den


def fixed_groups() -> list[list[Trajectory]]:
    return [
        [judged(make_traj([[10, 11], [12]]), True),               # correct in 2 steps: gamma-decayed
         judged(make_traj([[13, 14, 15]]), False),
         judged(make_traj([[16], [17], [18]], finish="max_steps"), False)],   # budget penalty
        [judged(make_traj([[20, 21]]), True),
         judged(make_traj([[22], [23, 24]]), True)],               # all correct → zero variance → skipped
    ]


# ------------------------------------------------------------------------------------------ rewards
def test_token_rewards_follow_steps_and_correctness():
    cfg = RewardConfig(gamma=0.5)
    t = make_traj([[10, 11], [12], [13]])            # 0-based step indices 0, 1, 2; T = 3
    rew = token_rewards(judged(t, True, cfg), cfg)[0]
    seg = t.segments[0]
    got = {seg.token_ids[i]: r for i, r in enumerate(rew) if seg.mask[i]}
    assert got == {10: 0.25, 11: 0.25, 12: 0.5, 13: 1.0}
    assert all(r == 0.0 for r, m in zip(rew, seg.mask) if not m)
    # 1-based step numbering gives the same rewards (anchored on the final step)
    t1 = make_traj([[10, 11], [12], [13]], step_base=1)
    assert token_rewards(judged(t1, True, cfg), cfg) == token_rewards(t, cfg)
    # a failed trajectory keeps one flat reward on every step
    bad = make_traj([[10], [11]], finish="max_steps")
    flat = [r for r, m in zip(token_rewards(judged(bad, False, cfg), cfg)[0], bad.segments[0].mask) if m]
    assert flat == [-0.1, -0.1]


def test_outcome_reward_penalties():
    cfg = RewardConfig()
    t = make_traj([[10]])
    assert outcome_reward(t, True, cfg) == 1.0
    t.format_errors = 2
    assert outcome_reward(t, True, cfg) == pytest.approx(0.8)
    t.format_errors = 50                                   # capped
    assert outcome_reward(t, True, cfg) == pytest.approx(0.7)
    t.format_errors, t.finish_reason = 0, "context"
    assert outcome_reward(t, False, cfg) == pytest.approx(-0.1)
    with pytest.raises(ValueError):
        RewardConfig(gamma=0.0)


def test_partial_credit_ranks_wrong_answers_below_any_correct_one():
    cfg = RewardConfig(partial_credit=0.3)
    t = make_traj([[10]])
    assert outcome_reward(t, False, cfg, f1=0.5) == pytest.approx(0.15)
    assert outcome_reward(t, False, cfg, f1=1.0) < outcome_reward(t, True, cfg, f1=0.0)
    assert outcome_reward(t, True, cfg, f1=0.2) == 1.0            # F1 never adds to a correct answer
    assert outcome_reward(t, False, RewardConfig(), f1=0.9) == 0.0  # off by default: strict outcome only
    with pytest.raises(ValueError):
        RewardConfig(partial_credit=1.0)


def test_recall_credit_rewards_a_wrong_answer_only_when_the_gold_was_shown():
    from sleuth.tasks.judges import make_judge

    cfg = RewardConfig(recall_credit=0.2)

    def judged(observation: str, answer: str):
        t = make_traj([[10]])
        t.messages = [{"role": "user", "content": "Which river flows through Paris?"},
                      {"role": "assistant", "content": "<search>Paris</search>"},
                      {"role": "user", "content": f"<observation>\n{observation}\n</observation>"}]
        t.answer = answer
        return judge_trajectory(t, ["Seine"], make_judge("cover"), cfg)

    shown = judged("Paris is on the river Seine.", "Loire")
    assert shown.recalled and not shown.correct and shown.reward == pytest.approx(0.2)
    unseen = judged("Paris is the capital of France.", "Loire")
    assert not unseen.recalled and unseen.reward == 0.0
    # the prompt's worked example is not something this run was shown
    t = make_traj([[10]])
    t.question = "Which river flows through Paris?"
    t.messages = [{"role": "user", "content": "Which river flows through Rouen?"},
                  {"role": "user", "content": "<observation>\nRouen is on the Seine.\n</observation>"},
                  {"role": "user", "content": t.question},
                  {"role": "user", "content": "<observation>\nParis is the capital of France.\n</observation>"}]
    t.answer = "Loire"
    assert not judge_trajectory(t, ["Seine"], make_judge("cover"), cfg).recalled
    assert judged("Paris is on the river Seine.", "Seine").reward == 1.0     # never adds to a correct answer
    assert judge_trajectory(make_traj([[10]]), ["Seine"], make_judge("cover")).reward == 0.0  # off by default
    with pytest.raises(ValueError):
        RewardConfig(partial_credit=0.5, recall_credit=0.5)


def test_token_logprobs_use_the_sampling_temperature():
    """The trainer scores the tempered distribution the rollouts sampled from: log softmax(z / T)."""
    model = tiny_llama(seed=5)
    cfg = cfg_for()
    sel, _ = select(fixed_groups(), cfg, version=0)
    rows, _ = build_rows(sel, cfg, version=0)
    batch = collate(rows)
    with torch.no_grad():
        lp07, _ = token_logprobs(model, batch, temperature=0.7)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[batch.loss_mask]
        ref = torch.log_softmax(logits.float() / 0.7, -1).gather(-1, batch.targets[batch.loss_mask][:, None])[:, 0]
        lp1, _ = token_logprobs(model, batch)
    assert torch.allclose(lp07, ref, atol=1e-5)
    assert not torch.allclose(lp07, lp1, atol=1e-3)


# ---------------------------------------------------------------------------------------- selection
def test_zero_variance_groups_are_skipped():
    sel, st = select(fixed_groups(), cfg_for(), version=0)
    assert st["skipped_groups"] == 1 and st["groups"] == 2
    assert len(sel) == 3 and st["trajectories"] == 5


def test_all_groups_without_signal_leave_weights_alone():
    model = tiny_llama(seed=1)
    trainer = ReinforceTrainer(model, None, cfg_for())
    before = copy.deepcopy(model.state_dict())
    m = trainer.step([[judged(make_traj([[10]]), True), judged(make_traj([[11]]), True)],
                      [judged(make_traj([[12]]), False), judged(make_traj([[13]]), False)]])
    assert m["skipped_update"] == 1.0 and m["skipped_groups"] == 2 and trainer.version == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_negative_sample_control_drops_the_configured_count():
    groups = [[judged(make_traj([[10 + i]]), i == 0) for i in range(5)] for _ in range(4)]   # 16 failed
    for frac, expect in [(0.0, 0), (0.25, 4), (0.5, 8), (0.3, 4), (1.0, 16)]:
        sel, st = select(groups, cfg_for(negative_drop_frac=frac), version=3)
        assert st["dropped_negatives"] == expect
        assert sum(not s.traj.judgement.correct for s in sel) == 16 - expect
        assert sum(s.traj.judgement.correct for s in sel) == 4           # successes are never dropped
    assert negatives_to_drop(16, 0.5, seed=0, version=3) == negatives_to_drop(16, 0.5, seed=0, version=3)
    assert any(negatives_to_drop(16, 0.5, seed=0, version=v) != negatives_to_drop(16, 0.5, seed=0, version=3)
               for v in range(4, 8))


# --------------------------------------------------------------------------------------------- loss
@pytest.mark.parametrize("kw", [{}, {"normalize_std": True}, {"l2_tau": 0.5},
                                {"reward": RewardConfig(gamma_decay=False)}])
def test_loss_equals_hand_computed_reinforce(kw):
    model = tiny_llama(seed=2)
    ref = copy.deepcopy(model)
    cfg = cfg_for(**kw)
    groups = fixed_groups()
    expected = manual_loss(ref, groups, cfg)
    m = ReinforceTrainer(model, None, cfg).step(groups)
    assert m["loss"] == pytest.approx(expected, abs=1e-5)
    assert m["tokens"] == 3 + 3 + 3                      # trained tokens of the three kept trajectories
    assert m["version"] == 1.0 and m["skipped_groups"] == 1
    assert not any(torch.equal(a, b) for a, b in zip(model.parameters(), ref.parameters()))


def test_micro_batching_gives_the_same_update():
    a, b = tiny_llama(seed=3), tiny_llama(seed=3)
    ma = ReinforceTrainer(a, None, cfg_for(micro_batch_size=1)).step(fixed_groups())
    mb = ReinforceTrainer(b, None, cfg_for(micro_batch_size=64)).step(fixed_groups())
    assert ma["loss"] == pytest.approx(mb["loss"], abs=1e-6)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5)


def test_context_tokens_get_zero_gradient():
    """The final hidden state at a position is used only to predict the next token, so its gradient must be
    exactly zero wherever the next token is prompt/tool/padding (mask 0) and non-zero where it is trained."""
    model = tiny_llama(seed=4)
    cfg = cfg_for()
    sel, _ = select(fixed_groups(), cfg, version=0)
    rows, _ = build_rows(sel, cfg, version=0)
    batch = collate(rows)
    captured = {}

    def hook(_mod, _inp, out):
        out.retain_grad()
        captured["h"] = out

    handle = model.model.norm.register_forward_hook(hook)
    logp, _ = token_logprobs(model, batch)
    loss, _ = reinforce_loss(logp, batch, int(batch.loss_mask.sum()), cfg)
    loss.backward()
    handle.remove()
    g = captured["h"].grad.abs().sum(-1)           # [B, L]
    assert torch.all(g[~batch.loss_mask] == 0)
    assert torch.all(g[batch.loss_mask] > 0)
    # and the loss mask is the policy mask shifted by one: row r, position t trains token t+1 iff mask[t+1]
    seg = sel[0].traj.segments[0]
    row = next(r for r in rows if r.input_ids == seg.token_ids[:-1])
    assert row.loss_mask == seg.mask[1:] and row.targets == seg.token_ids[1:]


def test_overlong_trajectory_is_dropped_whole_never_cut():
    """A correct trajectory longer than max_seq_len keeps its reward-carrying final step or is not trained at
    all: its head alone must never get a gradient. Here it is left out whole and counted."""
    long_ok = make_traj([[10, 11, 12], [13, 14, 15], [16, 17]])       # 2 prompt + 8 policy + 2 obs = 12 tokens
    short_bad = make_traj([[20]])
    cfg = cfg_for(max_seq_len=8)
    sel, _ = select([[judged(long_ok, True), judged(short_bad, False)]], cfg, version=0)
    rows, st = build_rows(sel, cfg, version=0)
    assert st.overlong == 1 and st.truncated == 12 - 8
    assert all(16 not in r.targets and 10 not in r.targets for r in rows)   # no part of it is trained
    m = ReinforceTrainer(tiny_llama(seed=7), None, cfg).step([[judged(long_ok, True), judged(short_bad, False)]])
    assert m["overlong_trajectories"] == 1 and m["truncated_tokens"] == 4
    assert m["trained_trajectories"] == 1 and m["tokens"] == 1           # only the short one's token
    # trailing tool tokens after the last reply are never targets: dropping them loses nothing
    tail = make_traj([[10, 11]])
    tail.segments[0].extend_context([OBS] * 6)                            # 2 + 2 + 6 = 10 tokens
    rows, st = build_rows(select([[judged(tail, True), judged(short_bad, False)]], cfg, 0)[0], cfg, 0)
    assert st.overlong == 0 and rows[0].targets[-2:] == [10, 11] and sum(rows[0].loss_mask) == 2


def test_old_version_tokens_masked_or_importance_weighted():
    # Partial rollouts: step 0 sampled by version 0, step 1 by version 1; the trainer is at version 1.
    def groups():
        return [[judged(make_traj([[10, 11], [12, 13]], versions=[0, 1], lp=-6.0), True),
                 judged(make_traj([[14], [15]], versions=[0, 1], lp=-0.5), False),
                 judged(make_traj([[16, 17]], versions=[1], lp=-3.0), False)]]

    for mode in ("mask", "is"):
        model = tiny_llama(seed=5)
        ref = copy.deepcopy(model)
        cfg = cfg_for(off_policy=mode, is_cap=2.0)
        trainer = ReinforceTrainer(model, None, cfg, version=1)
        m = trainer.step(groups())
        assert m["old_tokens"] == 3
        assert m["loss"] == pytest.approx(manual_loss(ref, groups(), cfg, version=1), abs=1e-5)
        if mode == "mask":
            assert m["masked_old_tokens"] == 3 and m["tokens"] == 5
        else:
            # lp=-6 under a near-uniform model (log 1/64 ≈ -4.16) → ratio e^1.8 > 2: clipped at the cap;
            # lp=-0.5 → ratio ≈ e^-3.7: kept as is
            assert m["masked_old_tokens"] == 0 and m["tokens"] == 8
            assert m["is_clipped_frac"] == pytest.approx(2 / 3)
            assert 0.0 < m["is_weight_mean"] < 2.0
        assert trainer.version == 2

    # a token from a newer version than the trainer's means the rollout used the wrong weights
    with pytest.raises(ValueError, match="version"):
        ReinforceTrainer(tiny_llama(), None, cfg_for(), version=0).step(
            [[judged(make_traj([[10]], version=1), True), judged(make_traj([[11]]), False)]])
    with pytest.raises(ValueError, match="not finished"):
        ReinforceTrainer(tiny_llama(), None, cfg_for()).step(
            [[judged(make_traj([[10]], finish="unfinished"), True)]])


def test_lora_and_bf16_updates():
    model = tiny_llama(seed=6)
    base = copy.deepcopy(model.state_dict())
    trainer = ReinforceTrainer(model, None, cfg_for(lora_r=4, lr=1e-2, bf16=True))
    assert all("lora_" in n for n, p in trainer.model.named_parameters() if p.requires_grad)
    m = trainer.step(fixed_groups())
    assert math.isfinite(m["loss"]) and math.isfinite(m["entropy"]) and m["grad_norm"] > 0
    merged = trainer.model.merge_and_unload().state_dict()
    assert any(not torch.equal(base[k], merged[k]) for k in base)     # the adapter changed the function


# ------------------------------------------------------------------------------------------ learning
def test_toy_task_reward_rises():
    t0 = time.perf_counter()
    hist = train_toy(toy_config(seed=0), iterations=25)
    acc = [m["accuracy"] for m in hist]
    assert sum(acc[:3]) / 3 < 0.3, acc          # a random policy finds the target ~13% of the time
    assert sum(acc[-5:]) / 5 > 0.6, acc
    assert hist[-1]["entropy"] < hist[0]["entropy"]
    assert time.perf_counter() - t0 < 120


# ------------------------------------------------------------------------------------ config, buffer
def test_config_from_toml(tmp_path):
    p = tmp_path / "rl.toml"
    p.write_text('lr = 2e-5\noff_policy = "is"\nbetas = [0.9, 0.99]\n[reward]\ngamma = 0.8\n')
    cfg = load_config(p, seed=7)
    assert (cfg.lr, cfg.off_policy, cfg.betas, cfg.reward.gamma, cfg.seed) == (2e-5, "is", (0.9, 0.99), 0.8, 7)
    p.write_text("lrr = 1\n")
    with pytest.raises(ValueError, match="lrr"):
        load_config(p)
    p.write_text("[reward]\ngama = 0.8\n")
    with pytest.raises(ValueError, match="gama"):
        load_config(p)
    p.write_text('off_policy = "clip"\n')
    with pytest.raises(ValueError, match="off_policy"):
        load_config(p)
    p.write_text("lr = \n")
    with pytest.raises(ValueError, match="invalid TOML"):
        load_config(p)


def test_replay_buffer_roundtrip_and_eviction():
    buf = ReplayBuffer(max_age=1)
    a = make_traj([[10]], finish="unfinished", version=3)
    b = make_traj([[11]], finish="finish", version=3)
    c = make_traj([[12]], finish="unfinished", version=4)
    buf.add(a, {"step": 1}, version=3, group="g1")
    buf.hold(b, group="g1", version=3)
    buf.add(c, {"step": 1}, version=4, group="g2")
    with pytest.raises(ValueError):
        buf.add(b, {}, version=3)
    with pytest.raises(ValueError, match="JSON"):
        buf.add(make_traj([[1]], finish="unfinished"), {"x": object()}, version=3)
    assert buf.stats(5) == {"size": 3.0, "unfinished": 2.0, "held": 1.0, "groups": 2.0,
                            "age_max": 2.0, "age_mean": pytest.approx(5 / 3)}
    import json
    again = ReplayBuffer.from_dict(json.loads(json.dumps(buf.to_dict())))
    assert again.to_dict() == buf.to_dict()
    evicted = again.evict(current_version=5)          # g1 is 2 versions old > max_age 1: the whole group goes
    assert {e.group for e in evicted} == {"g1"} and len(evicted) == 2 and len(again) == 1
    first = buf.pop_resumable()
    assert [e.traj.id for e in first] == [a.id, c.id] and first[0].state == {"step": 1}
    assert [t.id for t in buf.pop_group("g1")] == [b.id] and len(buf) == 0


def test_reward_requires_evidence_when_asked():
    from sleuth.tasks.judges import make_judge

    def judge(evidence_url, require):
        t = make_traj([[10]])
        t.answer, t.evidence_url = "Seine", evidence_url
        j = judge_trajectory(t, ["Seine"], make_judge("cover"), RewardConfig(require_evidence=require,
                                                                              partial_credit=0.3))
        assert t.judgement is j and t.gold == ["Seine"]
        return j

    assert judge(None, False).correct                           # strict judge alone: a lucky guess counts
    j = judge(None, True)
    assert not j.correct and j.judged_correct and not j.grounded    # ...not when grounding is required,
    assert j.reward == 0.0                                           # and it earns no partial credit either
    assert judge("corpus://p/2", True).correct and judge("corpus://p/2", True).reward == 1.0


def test_one_reward_contract_from_rollout_to_update():
    """The rollout's judgement is what the update trains on: no second decision about correctness."""
    from sleuth.rl.rollout import AgentRollout
    from sleuth.tasks.judges import make_judge

    rollout = AgentRollout.__new__(AgentRollout)
    rollout.judge, rollout.reward = make_judge("cover"), RewardConfig(require_evidence=True)
    guess, found = make_traj([[10]]), make_traj([[11]])
    for t, url in ((guess, None), (found, "corpus://p/2")):
        t.answer, t.gold, t.evidence_url = "Seine", ["Seine"], url
        rollout.score(t)
    sel, st = select([[guess, found]], cfg_for(), version=0)
    assert st["accuracy"] == 0.5 and [s.traj.judgement.reward for s in sel] == [0.0, 1.0]
    with pytest.raises(ValueError, match="no judgement"):
        select([[make_traj([[12]])]], cfg_for(), version=0)


# --------------------------------------------------------------------------------- shared-prefix update
def prefixed_groups(prefix_len: int = 40) -> list[list[Trajectory]]:
    """Agent-shaped rows: a long prompt every row shares (system prompt, examples), then each row's own
    question tokens and replies of different lengths (so the suffixes are padded)."""
    shared = [1] + [5 + (i % 50) for i in range(prefix_len - 1)]
    g1 = [judged(make_traj([[10, 11, 12], [13]], prompt=shared + [3]), True),
          judged(make_traj([[14]], prompt=shared + [3]), False),
          judged(make_traj([[15, 16]], prompt=shared + [3]), False)]
    g2 = [judged(make_traj([[17, 18, 19, 20]], prompt=shared + [4, 4]), True),
          judged(make_traj([[21], [22, 23]], prompt=shared + [4, 4]), False)]
    return [g1, g2]


@pytest.mark.parametrize("kw", [{}, {"lora_r": 4}, {"micro_batch_size": 2, "l2_tau": 0.5}])
def test_shared_prefix_update_has_the_same_gradient(kw):
    """Running the prefix all rows share once gives the same loss, gradient and new weights as running every
    row whole (the former path, share_prefix=False)."""
    grads, losses, models = [], [], []
    for share in (False, True):
        model = tiny_llama(seed=8)
        torch.manual_seed(0)                      # the same LoRA initialisation on both sides
        trainer = ReinforceTrainer(model, None, cfg_for(share_prefix=share, **kw))
        captured = {}
        step = trainer.optimizer.step

        def snapshot(*a, **k):   # the accumulated gradient of every parameter, as the optimizer sees it
            captured["g"] = [p.grad.clone() for p in trainer.params]
            return step(*a, **k)

        trainer.optimizer.step = snapshot
        m = trainer.step(prefixed_groups())
        assert m["shared_prefix"] == (40 if share else 0)
        assert m["seq_tokens"] == sum(len(t.segments[0].token_ids) - 1 for g in prefixed_groups() for t in g)
        grads.append(captured["g"])
        losses.append(m["loss"])
        models.append(trainer.model)
    assert losses[1] == pytest.approx(losses[0], abs=1e-6)
    for ga, gb in zip(grads[0], grads[1]):
        torch.testing.assert_close(gb, ga, atol=1e-5, rtol=1e-4)          # float32 summation order
    for pa, pb in zip(models[0].parameters(), models[1].parameters()):   # Adam's first step ≈ lr·sign(g)
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-4)


def test_shared_prefix_stops_before_the_first_trained_token():
    cfg = cfg_for()
    sel, _ = select(prefixed_groups(), cfg, version=0)
    rows, _ = build_rows(sel, cfg, version=0)
    from sleuth.rl.reinforce import shared_prefix_length
    assert shared_prefix_length(rows, 32) == 40            # the shared prompt; questions differ after it
    assert shared_prefix_length(rows, 41) == 0             # shorter than asked for: not worth sharing
    same = [r for r in rows if r.input_ids[:41] == rows[0].input_ids[:41]]
    n = shared_prefix_length(same, 1)
    assert all(not any(r.loss_mask[:n]) for r in same) and any(r.loss_mask[n] for r in same)


def test_engine_importance_weights_correct_a_logprob_gap():
    """Rollouts recorded log-probs μ that differ from the trainer's π: with tis_cap the current-version
    tokens are weighted by min(π/μ, cap), measured as tis_weight_mean; the gap is reported either way."""
    def groups(lp):
        return [[judged(make_traj([[10, 11]], lp=lp), True), judged(make_traj([[12]], lp=lp), False)]]

    off = ReinforceTrainer(tiny_llama(seed=9), None, cfg_for()).step(groups(-4.0))
    assert off["tis_weight_mean"] == 1.0 and off["logprob_mismatch"] > 0 and off["logprob_mismatch_max"] > 0
    # μ far below π (lp=-9 vs ≈ -4.2 under a near-uniform 64-token model): every ratio is clipped at the cap
    on = ReinforceTrainer(tiny_llama(seed=9), None, cfg_for(tis_cap=2.0)).step(groups(-9.0))
    assert on["tis_weight_mean"] == pytest.approx(2.0)
    assert on["loss"] == pytest.approx(2.0 * ReinforceTrainer(tiny_llama(seed=9), None, cfg_for()).step(
        groups(-9.0))["loss"], rel=1e-5)
