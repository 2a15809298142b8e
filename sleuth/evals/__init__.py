"""Evaluation: run tasks through the agent (or a baseline), judge, aggregate, report.

* ``run``     — ``run_eval``: tasks × samples, judged, resumable (records.jsonl, trajectories.jsonl, results.json).
* ``metrics`` — unbiased pass@k, avg@k, aggregation over tasks, summaries of agent statistics.
* ``report``  — the results JSON schema, ``build_results``, rich/plain tables and ``compare`` of two runs.

Tasks, benchmark loaders and judges sit below, in ``sleuth.tasks`` (training uses them too).
"""
