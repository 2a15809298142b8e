"""pass@k, avg@k, their aggregation over tasks, and summaries of agent statistics.

pass@k is the unbiased estimator of Chen et al. (2021, "Evaluating Large Language Models Trained on
Code"): with n samples of which c are correct, pass@k = 1 - C(n-c, k) / C(n, k), computed as the
product 1 - prod_{i=n-c+1..n} (1 - k/i), which never forms the huge binomials.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Mapping, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise TypeError(f"pass_at_k takes integers, got n={n!r}, c={c!r}, k={k!r}")
    if n < 1 or k < 1:
        raise ValueError(f"pass@k needs n >= 1 and k >= 1 (n={n}, k={k})")
    if not 0 <= c <= n:
        raise ValueError(f"correct count c={c} must be within [0, n={n}]")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per task, got n={n}")
    if n - c < k:   # every draw of k must include a correct sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def avg_at_k(correct: Sequence[bool | float]) -> float:
    """Mean correctness over one task's k samples (avg@k); scores in [0, 1] are averaged as they are."""
    if not correct:
        raise ValueError("avg@k of no samples is undefined")
    return sum(float(x) for x in correct) / len(correct)


def aggregate(samples: Mapping[str, Sequence[bool | float]], ks: Sequence[int] = (1,)) -> dict[str, Any]:
    """Task-averaged metrics from each task's per-sample correctness.

    Returns n_tasks, n_samples, samples_per_task (the smallest n), ``avg@n`` (n = that smallest count,
    over all of each task's samples) and ``pass@k`` for every k in ``ks``. Scores are counted correct
    when >= 0.5 for pass@k.
    """
    if not samples:
        raise ValueError("no tasks to aggregate")
    empty = [t for t, s in samples.items() if not s]
    if empty:
        raise ValueError(f"{len(empty)} task(s) have no samples, e.g. {empty[0]!r}")
    n_min = min(len(s) for s in samples.values())
    out: dict[str, Any] = {"n_tasks": len(samples), "n_samples": sum(len(s) for s in samples.values()),
                           "samples_per_task": n_min}
    out[f"avg@{n_min}"] = sum(avg_at_k(s) for s in samples.values()) / len(samples)
    for k in sorted(set(ks)):
        if k > n_min:
            short = next(t for t, s in samples.items() if len(s) < k)
            raise ValueError(f"pass@{k} needs at least {k} samples per task; task {short!r} has "
                             f"{len(samples[short])}")
        out[f"pass@{k}"] = sum(pass_at_k(len(s), sum(float(x) >= 0.5 for x in s), k)
                               for s in samples.values()) / len(samples)
    return out


# ----------------------------------------------------------------------------------- summary statistics
def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within [0, 100], got {q}")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def histogram(values: Sequence[float], bins: int = 10) -> list[dict[str, Any]]:
    """Buckets {lo, hi, count}: one per integer value when the values are few small integers, else
    ``bins`` equal-width buckets (each [lo, hi), the last one closed)."""
    if not values:
        return []
    lo, hi = min(values), max(values)
    if all(float(v).is_integer() for v in values) and hi - lo < max(bins, 1) * 2:
        counts = Counter(int(v) for v in values)
        return [{"lo": v, "hi": v, "count": counts.get(v, 0)} for v in range(int(lo), int(hi) + 1)]
    if lo == hi:
        return [{"lo": lo, "hi": hi, "count": len(values)}]
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / width), bins - 1)] += 1
    return [{"lo": round(lo + i * width, 6), "hi": round(lo + (i + 1) * width, 6), "count": c}
            for i, c in enumerate(counts)]


def summarize(values: Sequence[float], bins: int = 10) -> dict[str, Any]:
    """count, mean, median, p90, min, max and histogram buckets of numeric values."""
    vals = [float(v) for v in values]
    if not vals:
        return {"count": 0}
    return {"count": len(vals), "mean": sum(vals) / len(vals), "median": percentile(vals, 50),
            "p90": percentile(vals, 90), "min": min(vals), "max": max(vals),
            "histogram": histogram(vals, bins)}


def format_error_rate(stats: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Format errors per agent step, and the share of runs with at least one format error."""
    if not stats:
        return {"per_step": 0.0, "runs_with_error": 0.0}
    errors = sum(int(s.get("format_errors", 0) or 0) for s in stats)
    steps = sum(int(s.get("steps", 0) or 0) for s in stats)
    return {"per_step": errors / steps if steps else 0.0,
            "runs_with_error": sum(1 for s in stats if (s.get("format_errors") or 0) > 0) / len(stats)}


def summarize_stats(stats: Sequence[Mapping[str, Any]], bins: int = 10) -> dict[str, Any]:
    """Summary of agent stats dicts (``Trajectory.stats()``): numbers get ``summarize``, strings
    (finish_reason, ...) get value counts; plus the format-error rates."""
    out: dict[str, Any] = {"runs": len(stats)}
    keys = sorted({k for s in stats for k in s})
    for key in keys:
        vals = [s[key] for s in stats if key in s and s[key] is not None]
        if vals and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out[key] = summarize(vals, bins)
        elif vals and all(isinstance(v, (str, bool)) for v in vals):
            out[key] = dict(Counter(str(v) for v in vals).most_common())
    out["format_error_rate"] = format_error_rate(stats)
    return out
