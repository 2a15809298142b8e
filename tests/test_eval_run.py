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
