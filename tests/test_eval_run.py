"""The evaluation runner: real model (closed-book mode), strict judging, and resume after interruption."""

from __future__ import annotations

import json

import pytest

from sleuth.evals import report
from sleuth.evals.run import EvalConfig, run_eval


class Interrupting:
    """Wraps the real policy; raises KeyboardInterrupt on a chosen generate call (a crash mid-run)."""

    def __init__(self, policy, fail_on: int | None = None):
        self.policy, self.fail_on, self.calls, self.prompts = policy, fail_on, 0, 0
        self.tokenizer, self.version, self.name = policy.tokenizer, policy.version, policy.name

    def generate(self, prompts, params):
        self.calls += 1
        if self.fail_on is not None and self.calls == self.fail_on:
            raise KeyboardInterrupt
        self.prompts += len(prompts)
        return self.policy.generate(prompts, params)


@pytest.fixture()
def task_file(tmp_path):
    rows = [{"id": "a", "question": "What is the capital of France?", "answers": ["Paris"]},
            {"id": "b", "question": "What is 2 + 2?", "answers": ["4", "four"]},
            {"id": "c", "question": "Which planet is known as the Red Planet?", "answers": ["Mars"]}]
    f = tmp_path / "tasks.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def test_resume_never_reruns_finished_samples(smol_policy, task_file, tmp_path):
    cfg = EvalConfig(benchmark=str(task_file), mode="closed-book", samples=2, ks=[1, 2], concurrency=2,
                     temperature=0.0)
    out = tmp_path / "run"
    crashing = Interrupting(smol_policy, fail_on=2)
    with pytest.raises(KeyboardInterrupt):
        run_eval(cfg, out, policy=crashing, progress=False)
    done = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(done) == 2                      # the first batch was recorded before the crash

    again = Interrupting(smol_policy)
    res = run_eval(cfg, out, policy=again, progress=False)
    assert again.prompts == 4                  # only the 4 missing (task, sample) pairs ran
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert sorted((r["task_id"], r["sample"]) for r in records) == [(t, s) for t in "abc" for s in (0, 1)]
    m = res["overall"]["metrics"]
    assert m["n_tasks"] == 3 and m["samples_per_task"] == 2 and "pass@2" in m
    assert set(res["overall"]["scores"]) == {"em", "f1", "cover"}
    assert res["judge"]["name"].startswith("match:cover")
    report.validate_results(json.loads((out / "results.json").read_text()))

    # a finished run re-run with the same settings does nothing; different settings are refused
    third = Interrupting(smol_policy)
    run_eval(cfg, out, policy=third, progress=False)
    assert third.prompts == 0
    with pytest.raises(ValueError, match="different run"):
        run_eval(EvalConfig(benchmark=str(task_file), mode="closed-book", samples=3, ks=[1]), out,
                 policy=third, progress=False)


class ScriptedChat:
    """A chat policy that answers at once (the agent loop without a model)."""

    name = "scripted-chat"

    def chat(self, messages, tools, params):
        from sleuth.policy.base import ChatReply

        return ChatReply("<answer>Paris</answer>", prompt_tokens=5, completion_tokens=3)


def _run_killed_between_writes(cfg, out, env, monkeypatch):
    """Run until a kill after batch 2's trajectories were saved but before its records were."""
    import sleuth.evals.run as run_mod

    real_append, calls = run_mod._append, []

    def killed_on_second_batch(path, rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_append(path, rows)

    monkeypatch.setattr(run_mod, "_append", killed_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        run_eval(cfg, out, policy=ScriptedChat(), env=env, progress=False)
    monkeypatch.setattr(run_mod, "_append", real_append)
    assert len((out / "trajectories.jsonl").read_text().splitlines()) == 4
    assert len((out / "records.jsonl").read_text().splitlines()) == 2


def _check_one_trajectory_per_sample(out):
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    trajs = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    assert sorted((r["task_id"], r["sample"]) for r in records) == [(t, s) for t in "abc" for s in (0, 1)]
    assert sorted((t["task_id"], t["member"]) for t in trajs) == [(t, s) for t in "abc" for s in (0, 1)]
    assert sorted(t["id"] for t in trajs) == sorted(r["trajectory_id"] for r in records)


@pytest.fixture()
def agent_eval(task_file, tmp_path):
    from sleuth.agent import Environment

    cfg = EvalConfig(benchmark=str(task_file), mode="agent", samples=2, ks=[1], concurrency=2, max_steps=2)
    return cfg, tmp_path / "run", Environment(tools=())


def test_kill_between_trajectory_and_record_writes_leaves_no_duplicate(agent_eval, monkeypatch):
    """On resume the unrecorded samples run again, and each recorded sample has exactly one trajectory."""
    cfg, out, env = agent_eval
    _run_killed_between_writes(cfg, out, env, monkeypatch)
    run_eval(cfg, out, policy=ScriptedChat(), env=env, progress=False)
    _check_one_trajectory_per_sample(out)


def test_kill_while_writing_a_record_line(agent_eval, monkeypatch):
    """The cut line is dropped on resume, not glued to the next record (which would hide every later one)."""
    cfg, out, env = agent_eval
    _run_killed_between_writes(cfg, out, env, monkeypatch)
    with open(out / "records.jsonl", "a") as f:
        f.write('{"task_id": "b", "sample": 0, "datas')
    run_eval(cfg, out, policy=ScriptedChat(), env=env, progress=False)
    _check_one_trajectory_per_sample(out)
    third = ScriptedChat()
    third.chat = None   # a finished run re-run does nothing
    run_eval(cfg, out, policy=third, env=env, progress=False)
    _check_one_trajectory_per_sample(out)
