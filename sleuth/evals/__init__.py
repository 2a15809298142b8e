"""Evaluation building blocks: tasks, benchmark loaders, judges, metrics and reports.

* ``tasks``   — ``Task`` (id, question, answers, dataset, metadata) and ``load_tasks`` (a benchmark name,
  several joined by commas, or the path of the user's own JSONL/JSON/CSV/TSV question-answer file).
* ``loaders`` — one loader per published benchmark in shared/data/benchmarks plus the dev set, in the
  ``BENCHMARKS`` registry; ``load_benchmark(name, limit, data_dir)``. Canary-encrypted benchmarks
  (xbench-DeepSearch, BrowseComp-ZH) are decrypted in memory only.
* ``judges``  — SQuAD normalisation, exact match, token F1, a hedge-proof ``cover_match``, and the
  ``Judge`` interface with ``MatchJudge`` and ``LLMJudge`` (any ChatPolicy); each returns a ``Verdict``.
* ``metrics`` — unbiased pass@k, avg@k, aggregation over tasks, summaries of agent statistics.
* ``report``  — the results JSON schema, ``build_results``, rich/plain tables and ``compare`` of two runs.
"""

from sleuth.evals.judges import Judge, LLMJudge, MatchJudge, Verdict, cover_match, exact_match, f1, make_judge
from sleuth.evals.loaders import BENCHMARKS, BenchmarkError, load_benchmark, load_qa_file
from sleuth.evals.metrics import aggregate, avg_at_k, pass_at_k, summarize, summarize_stats
from sleuth.evals.tasks import Task, load_tasks

__all__ = [
    "BENCHMARKS", "BenchmarkError", "Judge", "LLMJudge", "MatchJudge", "Task", "Verdict", "aggregate",
    "avg_at_k", "cover_match", "exact_match", "f1", "load_benchmark", "load_qa_file", "load_tasks",
    "make_judge", "pass_at_k", "summarize", "summarize_stats",
]
