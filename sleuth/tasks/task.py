"""One question to answer (``Task``) and the kinds of question a report or a training mix keeps apart.

Tasks come from ``sleuth.tasks.loaders.load_tasks`` (a benchmark name or a question-answer file) or from
``sleuth.synth``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


@dataclass(repr=False)
class Task:
    id: str
    question: str
    answers: list[str]                 # accepted gold strings (aliases of one answer, any one is right)
    dataset: str                       # finest registered subset, e.g. "dr-nq", "dev-hotpotqa", "simpleqa"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        # Short, and never echoes decrypted benchmark text into logs or test output.
        if self.metadata.get("encrypted_source"):
            shown = "<encrypted source>"
        else:
            q = self.question if len(self.question) <= 60 else self.question[:59] + "…"
            shown = f"{q!r}, answers={self.answers[:3]!r}"
        return f"Task(id={self.id!r}, dataset={self.dataset!r}, {shown})"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "question": self.question, "answers": list(self.answers),
                "dataset": self.dataset, "metadata": dict(self.metadata)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Task":
        if not isinstance(d, dict):
            raise ValueError(f"a task must be a JSON object, got {type(d).__name__}")
        missing = [k for k in ("id", "question", "answers") if k not in d]
        if missing:
            raise ValueError(f"task is missing field(s) {missing}; has {sorted(d)}")
        answers = d["answers"]
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise ValueError(f"task {d['id']!r}: answers must be a list of strings, got {answers!r}")
        if not isinstance(d["question"], str) or not d["question"].strip():
            raise ValueError(f"task {d['id']!r}: question must be a non-empty string")
        return cls(id=str(d["id"]), question=d["question"], answers=list(answers),
                   dataset=str(d.get("dataset", "")), metadata=dict(d.get("metadata") or {}))


def in_datasets(task: Task, wanted: set[str]) -> bool:
    """Whether the task's dataset ("dev-nq") or its source dataset ("nq") is one of ``wanted``."""
    return task.dataset in wanted or task.metadata.get("source_dataset") in wanted


_CHOICE = re.compile(r"\bor\b", re.IGNORECASE)
_YES_NO = {"yes", "no"}
QUESTION_KINDS = ("open", "comparison", "yes/no")


def is_comparison(question: str) -> bool:
    """An "A or B?" question: naming either candidate is right half the time."""
    return bool(_CHOICE.search(question))


def question_kind(task: Task) -> str:
    """"comparison" (``is_comparison``), "yes/no" (a gold answer of yes or no), or "open" — so a report or a
    training mix can keep the guessable questions apart."""
    if is_comparison(task.question):
        return "comparison"
    if any(a.strip().lower().rstrip(".") in _YES_NO for a in task.answers):
        return "yes/no"
    return "open"
