"""The task layer: what a question is and how an answer to it is graded. Used by evaluation, RL and synthesis.

* ``task``       — ``Task`` (id, question, answers, dataset, metadata), the candidates a question offers
  (``question_candidates``; ``is_candidate_question``, the one definition of a candidate question) and the
  kinds of question (``question_kind``: open, comparison, yes/no).
* ``normalize``  — SQuAD answer normalisation and tokens, shared by the judges, the candidate parser and synth.
* ``loaders``    — ``load_tasks`` (a benchmark name, several joined by commas, or the path of the user's own
  JSONL/JSON/CSV/TSV question-answer file) and one loader per published benchmark in shared/data/benchmarks
  plus the dev set, in the ``BENCHMARKS`` registry. Canary-encrypted benchmarks (xbench-DeepSearch,
  BrowseComp-ZH) are decrypted in memory only.
* ``judges``     — exact match, token F1, a hedge-proof ``cover_match``, and the ``Judge`` interface with
  ``MatchJudge`` and ``LLMJudge`` (any ChatPolicy or OpenAI-compatible server, ``make_judge``); each returns a
  ``Verdict``.
"""
