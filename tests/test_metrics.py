import json
import math
from fractions import Fraction

import numpy as np
import pytest

from sleuth.evals.metrics import (aggregate, avg_at_k, format_error_rate, histogram, pass_at_k, percentile,
                                  summarize, summarize_stats)
from sleuth.evals.report import (SCHEMA, build_results, compare, compare_rows, load_results, render, save_results,
                                 validate_results)
from sleuth.trajectory import Trajectory


@pytest.mark.parametrize("k,expected", [
    (1, 2 / 5),                 # c/n
    (2, 1 - 3 / 10),            # 1 - C(3,2)/C(5,2)
    (3, 1 - 1 / 10),            # 1 - C(3,3)/C(5,3)
    (4, 1.0),                   # n - c < k: every draw holds a correct sample
    (5, 1.0),
])
def test_pass_at_k_n5_c2(k, expected):
    assert pass_at_k(5, 2, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_other_hand_values():
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)      # C(7,5)=21, C(10,5)=252
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)                 # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(1, 1, 1) == 1.0


@pytest.mark.parametrize("n,k", [(1, 1), (5, 1), (5, 3), (100, 10)])
def test_pass_at_k_edges(n, k):
    assert pass_at_k(n, 0, k) == 0.0
    assert pass_at_k(n, n, k) == 1.0


def test_pass_at_k_matches_exact_binomials_for_large_n():
    # The product form must stay accurate where C(n, k) itself has hundreds of digits.
    n, c, k = 2000, 37, 150
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-9)


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least 6 samples"):
        pass_at_k(5, 2, 6)
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)
    with pytest.raises(ValueError):
        pass_at_k(5, -1, 1)
    with pytest.raises(ValueError):
        pass_at_k(5, 1, 0)
    with pytest.raises(TypeError):
        pass_at_k(5.0, 1, 1)


def test_avg_at_k():
    assert avg_at_k([True, False, False, True]) == 0.5
    assert avg_at_k([1.0, 0.5]) == 0.75
    with pytest.raises(ValueError):
        avg_at_k([])


def test_aggregate_over_tasks():
    samples = {"a": [1, 0, 0, 1, 0], "b": [True] * 5, "c": [0] * 5}
    m = aggregate(samples, ks=(1, 2, 5))
    assert m["n_tasks"] == 3 and m["n_samples"] == 15 and m["samples_per_task"] == 5
    assert m["pass@1"] == pytest.approx((0.4 + 1 + 0) / 3)
    assert m["pass@2"] == pytest.approx((0.7 + 1 + 0) / 3)
    assert m["pass@5"] == pytest.approx((1 + 1 + 0) / 3)
    assert m["avg@5"] == pytest.approx((0.4 + 1 + 0) / 3)


def test_aggregate_errors_name_the_problem():
    with pytest.raises(ValueError, match="task 'short' has 1"):
        aggregate({"long": [1, 0, 1], "short": [1]}, ks=(2,))
    with pytest.raises(ValueError, match="no samples"):
        aggregate({"x": []})
    with pytest.raises(ValueError):
        aggregate({})


def test_percentile_matches_numpy():
    rng = np.random.default_rng(0)
    vals = list(rng.exponential(3.0, size=57))
    for q in (0, 10, 50, 90, 99, 100):
        assert percentile(vals, q) == pytest.approx(float(np.percentile(vals, q)))


def test_summarize_and_histogram():
    s = summarize([1, 2, 3, 4, 100])
    assert s["count"] == 5 and s["mean"] == 22 and s["median"] == 3 and s["min"] == 1 and s["max"] == 100
    assert s["p90"] == pytest.approx(4 + 0.6 * 96)
    assert sum(b["count"] for b in s["histogram"]) == 5
    assert len(s["histogram"]) == 10          # wide range → 10 equal-width buckets
    small = histogram([0, 2, 2, 3])           # few small integers → one bucket per value, gaps included
    assert [(b["lo"], b["count"]) for b in small] == [(0, 1), (1, 0), (2, 2), (3, 1)]
    assert summarize([]) == {"count": 0}


def _traj(steps, queries, fmt, reason, wall):
    t = Trajectory(question="q", steps=steps, format_errors=fmt, finish_reason=reason, wall_seconds=wall)
    t.queries = [f"q{i}" for i in range(queries)]
    t.urls_opened = ["u1", "u1", "u2"][: steps]
    return t.stats()


def test_summarize_stats_on_real_trajectory_stats():
    stats = [_traj(3, 2, 0, "finish", 1.5), _traj(5, 4, 2, "max_steps", 3.0), _traj(2, 1, 0, "finish", 0.5)]
    s = summarize_stats(stats)
    assert s["runs"] == 3
    assert s["steps"]["mean"] == pytest.approx(10 / 3) and s["steps"]["max"] == 5
    assert s["search_queries"]["median"] == 2
    assert s["urls_opened"]["max"] == 2        # stats() counts distinct URLs
    assert s["finish_reason"] == {"finish": 2, "max_steps": 1}
    assert s["format_error_rate"]["per_step"] == pytest.approx(2 / 10)
    assert s["format_error_rate"]["runs_with_error"] == pytest.approx(1 / 3)


def test_format_error_rate_without_runs():
    assert format_error_rate([]) == {"per_step": 0.0, "runs_with_error": 0.0}


# ------------------------------------------------------------------------------------ results report
def _records(correct_by_task, dataset, steps=3):
    return [{"task_id": t, "dataset": dataset, "sample": i, "correct": c, "answer": "x",
             "stats": _traj(steps, 1, int(not c), "finish", 1.0)}
            for t, cs in correct_by_task.items() for i, c in enumerate(cs)]


def _run(name, nq, hp):
    recs = _records(nq, "dr-nq") + _records(hp, "dev-hotpotqa", steps=5)
    return build_results(recs, run={"name": name, "policy": "smollm2"},
                         judge={"name": "match:cover", "config": {"length_floor": 12}}, ks=(1, 2))


def test_build_results_schema_and_numbers(tmp_path):
    res = _run("a", {"q1": [True, False], "q2": [False, False]}, {"h1": [True, True]})
    assert res["schema"] == SCHEMA and res["judge"]["name"] == "match:cover"
    assert res["run"]["samples_per_task"] == 2 and res["run"]["created"]
    nq = res["datasets"]["dr-nq"]["metrics"]
    assert nq["n_tasks"] == 2 and nq["pass@1"] == pytest.approx(0.25) and nq["pass@2"] == pytest.approx(0.5)
    assert res["overall"]["metrics"]["pass@1"] == pytest.approx((0.5 + 0 + 1) / 3)     # over tasks
    assert res["overall"]["macro"]["pass@1"] == pytest.approx((0.25 + 1) / 2)          # over datasets
    assert res["datasets"]["dev-hotpotqa"]["agent"]["steps"]["mean"] == 5
    assert res["overall"]["agent"]["format_error_rate"]["runs_with_error"] == pytest.approx(3 / 6)
    assert len(res["samples"]) == 6
    path = save_results(res, tmp_path / "r.json")
    assert load_results(path) == json.loads(json.dumps(res))


def _text(renderable) -> str:
    import io

    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=200, color_system=None).print(renderable)
    return buf.getvalue()


def test_render_and_compare_tables():
    a = _run("base", {"q1": [True, False], "q2": [False, False]}, {"h1": [True, True]})
    b = _run("tuned", {"q1": [True, True], "q2": [True, False]}, {"h1": [True, True]})
    text = _text(render(a))
    assert "base" in text and "judge match:cover" in text
    row = next(line for line in text.splitlines() if "dr-nq" in line)
    assert "0.250" in row and "0.500" in row
    assert "overall" in text and "steps" in text and "dev-hotpotqa" in text
    assert ("dr-nq", "pass@1", 0.25, 0.75, 0.5) in compare_rows(a, b)
    diff = _text(compare(a, b))
    assert "tuned" in diff and "+0.500" in diff
    # A dataset only one run has shows a gap, not an error.
    c = build_results(_records({"s1": [True]}, "simpleqa"), run={"name": "c"}, judge={"name": "match:em"})
    assert ("simpleqa", "tasks", None, 1, None) in compare_rows(a, c) and "—" in _text(compare(a, c))


def test_results_validation_errors(tmp_path):
    with pytest.raises(ValueError, match="not a sleuth results file"):
        validate_results({"schema": "other"})
    with pytest.raises(ValueError, match="'judge'"):
        validate_results({"schema": SCHEMA, "run": {}, "datasets": {}, "overall": {"metrics": {}}})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_results(bad)
    with pytest.raises(ValueError, match="lacks"):
        build_results([{"task_id": "t", "correct": True}], run={}, judge={})
