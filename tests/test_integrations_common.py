"""The trainer adapters' shared pieces (no trainer needed): trajectory → (prompt, response, mask, log-probs),
the sequence reward, negative-sample drops, and the layering (nothing in sleuth imports the adapters)."""

from __future__ import annotations

import pytest

from sleuth.rewards import RewardConfig, score, sequence_reward
from sleuth.trajectory import Segment, Trajectory


def _traj(steps: int = 2) -> Trajectory:
    seg = Segment()
    seg.extend_context([1, 2, 3])                       # prompt
    seg.extend_policy([10, 11], [-0.5, -0.25], 0, 1)    # reply 1
    seg.extend_context([20, 21, 22])                    # observation
    seg.extend_policy([12], [-1.0], 0, 2)               # reply 2 (the answer)
    return Trajectory(question="q", segments=[seg], steps=steps, finish_reason="finish")


def test_to_sample_splits_at_the_first_sampled_token_and_masks_overlong_whole():
    from sleuth.integrations.common import to_sample

    s = to_sample(_traj())
    assert s.prompt_ids == [1, 2, 3] and s.response_ids == [10, 11, 20, 21, 22, 12]
    assert s.response_mask == [1, 1, 0, 0, 0, 1] and s.response_logprobs == [-0.5, -0.25, 0.0, 0.0, 0.0, -1.0]
    long = to_sample(_traj(), max_response_tokens=4)
    assert long.overlong and long.response_ids == [10, 11, 20, 21] and long.response_mask == [0, 0, 0, 0]
    t = _traj()
    t.segments.insert(0, Segment())
    assert to_sample(t).earlier_segments == 1
    with pytest.raises(ValueError, match="no token segments"):
        to_sample(Trajectory(question="q"))


def test_sequence_reward_is_the_mean_decayed_step_reward_of_correct_trajectories():
    cfg = RewardConfig(gamma=0.5)
    one, three = _traj(steps=1), _traj(steps=3)
    score(one, True, cfg)
    score(three, True, cfg)
    assert sequence_reward(one, cfg) == pytest.approx(1.0)
    assert sequence_reward(three, cfg) == pytest.approx((0.25 + 0.5 + 1.0) / 3)   # shorter correct earns more
    wrong = _traj()
    score(wrong, False, cfg)
    assert sequence_reward(wrong, cfg) == wrong.judgement.reward == 0.0
    assert sequence_reward(three, RewardConfig(gamma=0.5, gamma_decay=False)) == 1.0


def test_drop_negative_is_seeded_and_matches_the_fraction():
    from sleuth.integrations.common import drop_negative

    keys = [f"t{i}" for i in range(4000)]
    dropped = [drop_negative(k, False, 0.3, seed=1, step=7) for k in keys]
    assert abs(sum(dropped) / len(keys) - 0.3) < 0.03
    assert dropped == [drop_negative(k, False, 0.3, seed=1, step=7) for k in keys]       # reproducible
    assert not any(drop_negative(k, True, 1.0, 1, 7) for k in keys[:50])                  # never a correct one
    assert not any(drop_negative(k, False, 0.0, 1, 7) for k in keys[:50])


def test_nothing_in_sleuth_imports_the_adapters():
    from test_layering import import_graph

    graph = import_graph()
    users = sorted(m for m, deps in graph.items() if not m.startswith("sleuth.integrations")
                   and any(d.startswith("sleuth.integrations") for d in deps))
    assert users == []
