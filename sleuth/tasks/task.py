"""One question to answer (``Task``), the candidates a question offers, and the kinds of question a report or a
training mix keeps apart.

``is_candidate_question`` is the one definition of a question that names its answer's candidates ("A or B?",
"out of A and B?"); ``question_kind``, the judges (through ``question_candidates``) and the benchmark scripts
all use it.

Tasks come from ``sleuth.tasks.loaders.load_tasks`` (a benchmark name or a question-answer file) or from
``sleuth.synth``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sleuth.tasks.normalize import normalize_answer


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


# -------------------------------------------------------------------------------- candidate questions
_AUX = {"is", "are", "was", "were", "do", "does", "did", "can", "could", "has", "have", "had", "will",
        "would", "should", "shall", "may", "might", "must"}
_WH = {"which", "who", "whom", "whose", "what", "when", "where", "why", "how"}
_STEM_WORDS = _AUX | _WH | {"name"}   # an item opening with one of these is the question, not an option
_CLAUSE_WORDS = _WH | {"do", "does", "did"}   # an option holding one of these is part of the question
# "X or more" and the like compare a quantity; they offer no options.
_COMPARATORS = {"more", "less", "fewer", "higher", "lower", "greater", "smaller", "larger", "bigger", "above",
                "below", "over", "under", "earlier", "later", "older", "newer", "younger", "longer", "shorter",
                "equal", "after", "before", "so"}
_MAX_CANDIDATE_WORDS = 12
_SPLIT_ITEMS = re.compile(r",\s|;\s*|:\s|\s+or\s+", re.I)   # ", " not ",": keeps "85,000" whole
_CHOICE_LINE = re.compile(r"^\s*([A-Z])[.)]\s+\S", re.M)


def _option_ok(text: str) -> bool:
    words = text.split()
    return 0 < len(words) <= _MAX_CANDIDATE_WORDS and not {w.lower() for w in words} & _CLAUSE_WORDS


def _or_options(question: str) -> list[str]:
    # The comparison sits in the last interrogative clause: "..., A or B?" (periods stay: "Mr. Fix-It").
    pieces = [p.strip() for p in re.split(r"(?<=[?!])\s+|\n+", question.strip()) if p.strip()]
    asks = [p for p in pieces if p.endswith("?")]
    if not asks:   # statements ("List the ... in Germany or ...") offer no options to choose between
        return []
    clause = asks[-1].rstrip(" ?.!\"'")
    ors = list(re.finditer(r"\s+or\s+", clause, re.I))
    if not ors:
        return []
    left, right = clause[:ors[-1].start()], clause[ors[-1].end():].strip(" \"'")
    # The right option must end the clause; anything after it means this "or" is not an option list.
    if re.search(r",\s|;", right) or not _option_ok(right):
        return []
    if re.sub(r"\W", "", right.split()[0].lower()) in _COMPARATORS:   # "85,000 or more", "(35% or less)"
        return []
    colon = left.rfind(": ")
    cue = re.search(r"\b(?:between|either|whether)\s+", left, re.I)
    if colon >= 0:   # "What lasted longer: A or B?" — everything after the colon is options
        left_items = [s for s in _SPLIT_ITEMS.split(left[colon + 2:]) if s.strip()]
        if not all(_option_ok(s) for s in left_items):
            return []
    elif cue:   # "between A and B or C" / "either A or B"
        left_items = [s for s in re.split(r"\s+and\s+|,\s", left[cue.end():]) if s.strip()][-2:]
        if not all(_option_ok(s) for s in left_items):
            return []
    else:
        items = _SPLIT_ITEMS.split(left)
        left_items = []
        # Walk back from the last " or " through the list; the first item is always the question stem.
        for item in reversed(items[1:]):
            words = item.split()
            if not words:
                continue
            if words[0].lower() in _STEM_WORDS | {"and"} or not _option_ok(item):
                break
            left_items.insert(0, item)
    opts = [o.strip(" \"',;:") for o in left_items + [right]]
    opts = [o for o in opts if _option_ok(o) and normalize_answer(o) != "not"]
    return opts if len(opts) >= 2 else []   # an "X or Y" choice needs both sides


# "Who was born first out of A and B?", "... between A and B?": a choice without an "or".
_PAIR_TAIL = re.compile(r"\b(?:out of|between)\s+(.+?)\s+and\s+(.+?)\s*\?\s*$", re.I)


def _pair_options(question: str) -> list[str]:
    m = _PAIR_TAIL.search(question.strip())
    if not m:
        return []
    opts = [o.strip(" \"',;:") for o in m.groups()]
    # "the area between the old toll gates: Brook Bar and Trafford Bar" describes a place; a colon inside the
    # first option means the pair is an apposition, not a choice offered to the reader.
    if ": " in opts[0]:
        return []
    return opts if all(_option_ok(o) for o in opts) else []


def question_candidates(question: str) -> list[str]:
    """Answer options the question itself offers: "Which came first, A or B?" → ["A", "B"].

    Recognises lettered choices (lines "A. ..." / "B) ..."), "stem, A or B", "stem, A, B, or C",
    "stem: A or B", "either/between A or B" and "out of / between A and B?" at the end of the question.
    Returns [] when no options are recognisable.
    (Yes and no are candidates too when the gold is one of them; ``cover_check`` adds them.)
    """
    letters = _CHOICE_LINE.findall(question)
    if len(letters) >= 2 and len(set(letters)) == len(letters):
        return letters
    return _or_options(question) or _pair_options(question)


_OR = re.compile(r"\bor\b", re.IGNORECASE)


def is_candidate_question(question: str) -> bool:
    """The one definition of a question that offers its answer among candidates it names (naming one of them
    is a guess that is right by chance): options ``question_candidates`` recognises ("out of A and B?",
    lettered choices, "A or B?"), or any "or" — real comparisons whose options hold commas or a question mark
    ("S Durga or Sweet Emma, Dear Böbe?") are not parsed into options but are candidate questions all the same.
    """
    return bool(_OR.search(question)) or bool(question_candidates(question))


_YES_NO = {"yes", "no"}
QUESTION_KINDS = ("open", "comparison", "yes/no")


def question_kind(task: Task) -> str:
    """"comparison" (a candidate question, ``is_candidate_question``), "yes/no" (a gold answer of yes or no),
    or "open" — so a report or a training mix can keep the guessable questions apart."""
    if is_candidate_question(task.question):
        return "comparison"
    if any(a.strip().lower().rstrip(".") in _YES_NO for a in task.answers):
        return "yes/no"
    return "open"
