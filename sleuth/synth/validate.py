"""The validation funnel: every stage takes tasks, returns the kept ones and a ``Stage`` record with counts.

Stages, cheapest first (the model-backed ones run last so they only see survivors):
  span        the answer (and each cited fact/link) is an exact span of its supporting passage
  unique      executing the question's pattern over the link graph admits exactly one answer
  leak        the question does not contain the answer or the entities it is meant to hide
  dedup       no evaluation question (or near-duplicate: token Jaccard >= threshold) enters training data
  closed_book a model without tools must NOT answer it (pluggable ``closed_book_solver``)
  pass_at_n   with tools the model solves it in some but not all of N attempts (``tool_solver``)
  hops        (optional, with a search engine) a bridge needs its hops: searching the question does not show the
              answer, each search shows the next entity, and searching the last entity shows the answer
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from sleuth.search.base import shown_by_search
from sleuth.search.corpus import surface_of
from sleuth.tasks.judges import cover_match, mentions
from sleuth.tasks.normalize import normalize_answer
from sleuth.tasks.task import Task

if TYPE_CHECKING:
    from sleuth.search.corpus import Passage
    from sleuth.synth.generate import LinkGraph

ClosedBookSolver = Callable[[list[str]], list[str]]
"""questions -> one answer each, from the policy with no tools."""
ToolSolver = Callable[[list[str], int], list[list[str]]]
"""(questions, n) -> n answers per question, from the agent with tools."""


class SynthError(RuntimeError):
    """Synthesis cannot go on (a solver failed or returned the wrong shape); the message says why."""


# ------------------------------------------------------------------------------------ answer matching
_PUNCT = str.maketrans("", "", string.punctuation + "‘’“”–—")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _local_normalize(s: str) -> str:
    """SQuAD normalisation for deduplication: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", s.lower().translate(_PUNCT)).split())


def _contains(hay: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return n > 0 and any(hay[i:i + n] == needle for i in range(len(hay) - n + 1))


def knows_answer(prediction: str, golds: Iterable[str]) -> bool:
    """Lenient: normalised exact match, or a gold answer as a whole-token run anywhere in the prediction.
    Used where a false positive only removes a task (closed-book: "He was born on 9 October 1808 in
    Kent" does know the answer, however long the reply)."""
    p = normalize_answer(prediction or "").split()
    if not p:
        return False
    for g in golds:
        gt = normalize_answer(g).split()
        if gt and (p == gt or _contains(p, gt)):
            return True
    return False


def answer_match(prediction: str, golds: Iterable[str], question: str = "") -> bool:
    """The evaluation's correctness: ``judges.cover_match`` (gold covered, hedging and over-long answers
    rejected), so "solved" here means what it means in eval."""
    return cover_match(prediction, list(golds), question) > 0


# ------------------------------------------------------------------------------------------- records
@dataclass
class Stage:
    name: str
    status: str = "ran"             # ran | skipped
    n_in: int = 0
    n_out: int = 0
    note: str = ""
    seconds: float = 0.0
    rejected: Counter = field(default_factory=Counter)          # reason -> count
    by_dataset_in: Counter = field(default_factory=Counter)
    by_dataset_out: Counter = field(default_factory=Counter)
    examples: list[dict[str, str]] = field(default_factory=list)  # a few rejections, for a human to look at

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "in": self.n_in, "out": self.n_out,
                "note": self.note, "seconds": round(self.seconds, 3), "rejected": dict(self.rejected),
                "by_dataset_in": dict(sorted(self.by_dataset_in.items())),
                "by_dataset_out": dict(sorted(self.by_dataset_out.items())), "examples": self.examples}


def _run_stage(name: str, tasks: list[Task], verdict: Callable[[Task], str | None],
               note: str = "") -> tuple[list[Task], Stage]:
    """Apply verdict (None = keep, else the rejection reason) to every task and record the counts."""
    st = Stage(name, note=note, n_in=len(tasks))
    kept = []
    for t in tasks:
        st.by_dataset_in[t.dataset] += 1
        reason = verdict(t)
        t.metadata.setdefault("funnel", {})
        if reason is None:
            t.metadata["funnel"].setdefault(name, "pass")
            kept.append(t)
            st.by_dataset_out[t.dataset] += 1
        else:
            st.rejected[reason] += 1
            if len(st.examples) < 5:
                st.examples.append({"id": t.id, "question": t.question, "answer": t.answers[0] if t.answers
                                    else "", "reason": reason})
    st.n_out = len(kept)
    return kept, st


def skipped(name: str, tasks: list[Task], why: str) -> tuple[list[Task], Stage]:
    st = Stage(name, status="skipped", n_in=len(tasks), n_out=len(tasks), note=why)
    for t in tasks:
        st.by_dataset_in[t.dataset] += 1
        st.by_dataset_out[t.dataset] += 1
        t.metadata.setdefault("funnel", {})[name] = "skipped"
    return tasks, st


# -------------------------------------------------------------------------------------------- stages
def check_span(tasks: list[Task], passages: dict[str, "Passage"]) -> tuple[list[Task], Stage]:
    """(a) every evidence span — the answer first of all — occurs verbatim in the passage it cites.

    Extractive tasks must have answers[0] among the answer evidence; comparison answers are titles, so the
    passage title counts as part of its passage for them."""
    def verdict(t: Task) -> str | None:
        ev = t.metadata.get("evidence") or []
        if not ev:
            return "no evidence"
        for e in ev:
            p = passages.get(e["pid"])
            if p is None:
                return "cited passage missing"
            hay = p.text if not (e["role"] == "answer" and t.metadata.get("type") == "comparison") \
                else f"{p.title}\n{p.text}"
            if e["span"] not in hay:
                return f"{e['role']} not a span of its passage"
        answer_spans = [e["span"] for e in ev if e["role"] == "answer"]
        if answer_spans and t.answers[0] not in answer_spans:
            return "answer not a span of its passage"
        return None

    return _run_stage("span", tasks, verdict, "answer/fact/link spans found verbatim in the cited passages")


def check_unique(tasks: list[Task], graph: "LinkGraph") -> tuple[list[Task], Stage]:
    """(b) execute each reference of the pattern: every (reference, fact) must admit exactly one value.

    A bridge description that fits two passages whose facts differ, or a title held by two passages that
    disagree, makes the gold answer one of several defensible answers: rejected."""
    def verdict(t: Task) -> str | None:
        pat = t.metadata.get("pattern")
        if not pat:
            return "no pattern"
        for ref, fact in zip(pat["refs"], pat["facts"]):
            vals = graph.fact_values(ref, fact)
            if not vals:
                return "pattern resolves to nothing"
            if len(vals) > 1:
                return "ambiguous: several answers fit the description" if ref.get("hops") \
                    else "ambiguous: same title, different values"
        return None

    return _run_stage("unique", tasks, verdict, "question pattern executed over the link graph")


_PUNCT_SPACE = re.compile(r"[^\w\s]|_")


def _leak_tokens(s: str) -> list[str]:
    """Punctuation becomes a space (not deleted), so "Brenton's" still contains the token "brenton"."""
    return _ARTICLES.sub(" ", _PUNCT_SPACE.sub(" ", s.lower())).split()


def check_leak(tasks: list[Task]) -> tuple[list[Task], Stage]:
    """(c) no accepted answer and no hidden string (intermediate titles, compared values, facts) appears in
    the normalised question as a whole-token run. Comparisons name their two options by design, so for
    them only the hidden values count."""
    def verdict(t: Task) -> str | None:
        q = _leak_tokens(t.question)
        if t.metadata.get("type") != "comparison":
            for a in t.answers:
                if _contains(q, _leak_tokens(a)):
                    return "answer in question"
        for h in t.metadata.get("hidden", []):
            if _contains(q, _leak_tokens(h)):
                return "hidden entity or value in question"
        return None

    return _run_stage("leak", tasks, verdict, "normalised answer/hidden strings absent from the question")


def _tokens(q: str) -> frozenset[str]:
    # The fast local normalisation: dedup tokenises every benchmark question (millions of characters).
    return frozenset(_local_normalize(q).split())


class EvalIndex:
    """Near-duplicate lookup against evaluation questions.

    Two rules, either one rejects:
    * token-set Jaccard >= ``threshold``, found with prefix filtering, which is exact: if J(A, B) >= t then,
      under one global token order, the first |A| - ceil(t|A|) + 1 tokens of A and the first
      |B| - ceil(t|B|) + 1 tokens of B share a token. Rare tokens go first, so a query meets few candidates.
    * same answer and at least ``min_shared_rare`` shared rare tokens (names, titles): a rephrasing such as
      "the pianist who recorded X" vs "the jazz pianist mentioned in the article on X" has a low Jaccard
      but is the same question."""

    def __init__(self, questions: Iterable[tuple[str, str] | tuple[str, str, list[str]]], threshold: float = 0.6,
                 min_shared_rare: int = 2, rare_df: float = 0.002):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"dedup threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.min_shared_rare = min_shared_rare
        self.ids: list[str] = []
        self.sets: list[frozenset[str]] = []
        self.by_answer: dict[str, list[int]] = defaultdict(list)
        for row in questions:
            qid, q = row[0], row[1]
            s = _tokens(q)
            if not s:
                continue
            for a in (row[2] if len(row) > 2 else []):
                na = _local_normalize(str(a))
                if na:
                    self.by_answer[na].append(len(self.sets))
            self.ids.append(qid)
            self.sets.append(s)
        df = Counter(tok for s in self.sets for tok in s)
        self.rare = {t for t, c in df.items() if c <= max(3, rare_df * len(self.sets))}
        # Global order: rare tokens first; a token no eval question has ranks before all of them.
        self.rank = {tok: i + 1 for i, tok in enumerate(sorted(df, key=lambda t: (df[t], t)))}
        self.postings: dict[str, list[int]] = defaultdict(list)
        for i, s in enumerate(self.sets):
            for tok in self._prefix(s):
                self.postings[tok].append(i)

    def __len__(self) -> int:
        return len(self.sets)

    def _prefix(self, s: frozenset[str]) -> list[str]:
        rank = self.rank
        # Tokens no eval question has (rank 0) can match nothing, so their order among themselves is moot.
        order = sorted(s, key=lambda tok: rank.get(tok, 0))
        return order[: len(s) - math.ceil(self.threshold * len(s)) + 1]

    def nearest(self, question: str) -> tuple[float, str]:
        """(best Jaccard >= threshold, eval id) or (0.0, "") when nothing is that close."""
        s = _tokens(question)
        if not s:
            return 0.0, ""
        best, best_id = 0.0, ""
        seen: set[int] = set()
        for tok in self._prefix(s):
            for i in self.postings.get(tok, ()):
                if i in seen:
                    continue
                seen.add(i)
                o = self.sets[i]
                j = len(s & o) / len(s | o)
                if j > best:
                    best, best_id = j, self.ids[i]
        return (best, best_id) if best >= self.threshold else (0.0, "")

    def same_answer(self, question: str, answers: Iterable[str]) -> str:
        """Id of an eval question with the same answer that shares enough rare tokens, else ""."""
        s = _tokens(question) & self.rare
        if len(s) < self.min_shared_rare:
            return ""
        for a in answers:
            for i in self.by_answer.get(_local_normalize(a), ()):
                if len(s & self.sets[i]) >= self.min_shared_rare:
                    return self.ids[i]
        return ""


def check_dedup(tasks: list[Task], index: EvalIndex) -> tuple[list[Task], Stage]:
    """(f) reject tasks whose question is (nearly) an evaluation question, or repeats an earlier generated one
    (two walks can reach the same chain; training on a task twice as often is a silent weighting)."""
    seen: set[str] = set()

    def verdict(t: Task) -> str | None:
        key = " ".join(t.question.lower().split())
        if key in seen:
            return "repeats an earlier generated question"
        seen.add(key)
        j, eid = index.nearest(t.question)
        if eid:
            t.metadata.setdefault("funnel", {})["dedup"] = {"nearest_eval": eid, "jaccard": round(j, 3)}
            return "near-duplicate of an evaluation question"
        eid = index.same_answer(t.question, t.answers)
        if eid:
            t.metadata.setdefault("funnel", {})["dedup"] = {"same_answer_eval": eid}
            return "same answer and entities as an evaluation question"
        return None

    return _run_stage("dedup", tasks, verdict,
                      f"token Jaccard >= {index.threshold}, or same answer + {index.min_shared_rare} shared rare "
                      f"tokens, against {len(index)} evaluation questions")


def check_closed_book(tasks: list[Task], solver: ClosedBookSolver) -> tuple[list[Task], Stage]:
    """(d) the policy without tools must fail: a task it answers from memory teaches no tool use."""
    if not tasks:
        return _run_stage("closed_book", tasks, lambda t: None)
    try:
        preds = list(solver([t.question for t in tasks]))
    except Exception as e:
        raise SynthError(f"closed-book solver failed: {type(e).__name__}: {e}") from e
    if len(preds) != len(tasks):
        raise SynthError(f"closed-book solver returned {len(preds)} answers for {len(tasks)} questions")
    by_id = {t.id: str(p) for t, p in zip(tasks, preds)}

    def verdict(t: Task) -> str | None:
        pred = by_id[t.id]
        ok = knows_answer(pred, t.answers)
        t.metadata.setdefault("funnel", {})["closed_book"] = {"prediction": pred[:200], "correct": ok}
        return "answered without tools" if ok else None

    return _run_stage("closed_book", tasks, verdict, "policy without tools must not answer")


def check_pass_at_n(tasks: list[Task], solver: ToolSolver, n: int, min_rate: float,
                    max_rate: float) -> tuple[list[Task], Stage]:
    """(e) keep tasks whose with-tools solve rate k/n lies in [min_rate, max_rate]: never-solved tasks give
    no learning signal (or are broken), always-solved ones are too easy."""
    if n < 1:
        raise ValueError(f"pass@N needs n >= 1, got {n}")
    if not 0.0 <= min_rate <= max_rate <= 1.0:
        raise ValueError(f"need 0 <= min_rate <= max_rate <= 1, got {min_rate}, {max_rate}")
    if not tasks:
        return _run_stage("pass_at_n", tasks, lambda t: None)
    try:
        attempts = list(solver([t.question for t in tasks], n))
    except Exception as e:
        raise SynthError(f"tool solver failed: {type(e).__name__}: {e}") from e
    if len(attempts) != len(tasks) or any(len(a) != n for a in attempts):
        raise SynthError(f"tool solver must return {n} answers for each of {len(tasks)} questions")
    rate = {t.id: sum(answer_match(str(a), t.answers, t.question) for a in att) / n
            for t, att in zip(tasks, attempts)}

    def verdict(t: Task) -> str | None:
        r = rate[t.id]
        t.metadata.setdefault("funnel", {})["pass_at_n"] = {"n": n, "solved": round(r * n), "rate": r}
        if r < min_rate:
            return "too hard (pass rate below minimum)"
        if r > max_rate:
            return "too easy (pass rate above maximum)"
        return None

    return _run_stage("pass_at_n", tasks, verdict, f"n={n}, keep pass rate in [{min_rate}, {max_rate}]")


def check_hops(tasks: list[Task], engine: Any, k: int, batch: int = 64) -> tuple[list[Task], Stage]:
    """(f) with the real index: a bridge question must need every hop, and every hop must be findable.

    Searching the question (top k titles and snippets) must not show the answer — else one search solves it
    and the task teaches retrieval, not research; searching the question or the entity it names must show the
    next (hidden) entity; searching each hidden entity must show the one after it, and searching the last one
    must show the answer. The queries of that path are kept in ``metadata["search_path"]`` so evaluation can
    tell whether an agent searched for the bridge entity. Tasks other than bridges pass unchanged."""
    if k < 1:
        raise ValueError(f"hops check needs k >= 1, got {k}")
    bridges = [t for t in tasks if t.metadata.get("type") == "bridge" and len(t.metadata.get("supporting_titles", [])) >= 2]
    bridge_ids = {id(t) for t in bridges}
    queries = sorted({q for t in bridges for q in [t.question, *t.metadata["supporting_titles"]]})
    shown = shown_by_search(engine, queries, k, batch)

    def verdict(t: Task) -> str | None:
        if id(t) not in bridge_ids:
            return None
        titles = t.metadata["supporting_titles"]
        if mentions(shown[t.question], t.answers):
            return "searching the question shows the answer"
        first = t.question if mentions(shown[t.question], [surface_of(titles[1])]) else titles[0]
        path = [first]
        for nxt in titles[1:]:
            if not mentions(shown[path[-1]], [surface_of(nxt), nxt]):
                return "a search does not show the next entity"
            path.append(nxt)
        if not mentions(shown[titles[-1]], t.answers):
            return "searching the last entity does not show the answer"
        t.metadata["search_path"] = path
        return None

    return _run_stage("hops", tasks, verdict, f"bridges need every hop and each hop is findable in the top {k} "
                      "results; other tasks pass")


# --------------------------------------------------------------------------------- evaluation questions
def load_eval_questions(names: Iterable[str] = ("dev",), data_dir: str | None = None,
                        warn: Callable[[str], None] | None = None) -> list[tuple[str, str, list[str]]]:
    """(id, question, answers) of evaluation sets: registered benchmark names or task files, via the eval loaders.

    A set that cannot be read (missing file, optional reader not installed) is reported through ``warn``
    and skipped; the dev set is the one that must be there."""
    from sleuth.tasks.loaders import load_tasks

    out: list[tuple[str, str, list[str]]] = []
    for name in names:
        try:
            kwargs = {"data_dir": data_dir} if data_dir else {}
            out += [(t.id, t.question, list(t.answers)) for t in load_tasks(name, **kwargs)]
        except Exception as e:  # one unreadable benchmark must not stop synthesis
            if name == "dev":
                raise SynthError(f"cannot load the dev set for deduplication: {e}") from e
            if warn:
                warn(f"dedup: skipped evaluation set {name!r} ({type(e).__name__}: {e})")
    return out


def all_benchmark_names() -> list[str]:
    """Every registered evaluation set (dev included), for the widest dedup."""
    from sleuth.tasks.loaders import BENCHMARKS

    # dev-<subset> names repeat the dev rows; dr-/r1s- sets overlap each other but are all kept.
    return [n for n in BENCHMARKS if not n.startswith("dev-")]
