"""Write: one section per call, grounded on numbered passages the agent was shown, every sentence verified.

The writer sees only passages cut from what the research agent was shown, numbered [1]..[k]. Its draft is
split into sentences; each sentence's [n] markers are checked (``verify.verified_citation``). A sentence whose
own citations fail but that another passage supports is re-attributed to that passage (marked as such); one
that nothing supports is visibly marked unverified, or removed (``ReportConfig.unverified``). A draft with no
supported sentence is re-asked with the reason; after ``section_retries`` the section is written
extractively — the passages' own most relevant sentences, each cited — and says so. A server error that
outlasts the policy's retries fails this section only: it is reported, the other sections are kept.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from sleuth.citations import sentences
from sleuth.report.config import ReportConfig
from sleuth.report.lang import name as lang_name
from sleuth.report.llm import Usage, complete
from sleuth.report.plan import SectionPlan, content_words
from sleuth.report.research import Passage, excerpt
from sleuth.report.verify import repeats, verified_citation


@dataclass
class Sentence:
    text: str
    cites: list[dict[str, str]] = field(default_factory=list)   # [{url, quote}] — each verified
    status: str = "verified"       # "verified" | "unverified"
    how: str = "model"             # "model" (as the writer cited) | "reattributed" | "extractive"


@dataclass
class SectionResult:
    index: int
    title: str
    questions: list[str]
    sentences: list[Sentence]
    status: str = "written"        # "written" | "extractive" | "failed"
    note: str = ""
    error: str = ""
    attempts: int = 0
    citations_written: int = 0     # [n] markers in the accepted draft
    citations_verified: int = 0    # of those, verified as the writer cited them
    removed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SectionResult":
        d = dict(d)
        d["sentences"] = [Sentence(**s) for s in d.get("sentences", [])]
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @property
    def markdown_words(self) -> int:
        return sum(len(s.text.split()) for s in self.sentences)


WRITE_SYSTEM = ("You write one section of a research report, in {language}. Use only facts from the numbered "
                "sources. End every sentence with the number of its source in brackets, like [2]. Write about "
                "{sentences} sentences of plain prose: no heading, no list, no sources list.")

_ACTION = re.compile(r"<(search|browse|code|answer|think)>.*?</\1>", re.S | re.I)   # agent actions, not prose
_TAG = re.compile(r"</?[a-zA-Z_][^>]{0,200}>")
_CITE = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")


def rank_passages(sec: SectionPlan, own: list[str], passages: dict[str, Passage], k: int,
                  extra_terms: str = "") -> list[Passage]:
    """The section's passages: those its own research was shown first, by word overlap with the section."""
    terms = set(content_words(" ".join([sec.title, *sec.questions, extra_terms])))

    def score(p: Passage) -> tuple[int, int]:
        return (p.url in own, len(terms & set(content_words(p.text))))

    ranked = sorted(passages.values(), key=score, reverse=True)
    return [p for p in ranked if score(p)[1] > 0 or p.url in own][:k]


def parse_draft(text: str, titles: list[str] = ()) -> list[tuple[str, list[int]]]:
    """(claim, cited numbers) per sentence of a draft; headings, list marks, protocol tags and a copied
    "Source title:" prefix dropped, a citation after the full stop moved before it."""
    text = _ACTION.sub(" ", text)
    text = _TAG.sub(" ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or re.match(r"^(sources?|references?)\s*:?$", line, re.I):
            continue
        line = re.sub(r"^(?:[-*•+]|\d+[.)])\s+", "", line)
        line = re.sub(r"([.!?])\s*((?:\[\d+(?:\s*[,;]\s*\d+)*\]\s*)+)", r" \2\1 ", line)
        for sent in re.split(r"(?<=[.!?])\s+", line):
            nums = [int(n) for group in _CITE.findall(sent) for n in re.split(r"[,;]", group) if n.strip()]
            claim = re.sub(r"\s+([.!?,;:])", r"\1", _CITE.sub("", sent)).strip()
            claim = re.sub(r"\s{2,}", " ", claim)
            for t in titles:       # a small model copies the listing's "[n] Title: text" form
                if t and claim.lower().startswith(t.lower() + ":"):
                    claim = claim[len(t) + 1:].strip()
            if len(claim.split()) >= 5:
                out.append((claim, nums))
    return out


def check_draft(draft: list[tuple[str, list[int]]], sources: list[Passage], seen: dict[str, str],
                cfg: ReportConfig, used: set[str] | None = None) -> tuple[list[Sentence], int, int, list[str]]:
    """Sentences as kept, [n] markers written, markers verified as written, removed sentences. A sentence
    that repeats one in ``used`` (an earlier sentence said it) is left out, not repeated."""
    kept: list[Sentence] = []
    written = verified = 0
    removed: list[str] = []
    for claim, nums in draft:
        if used is not None:
            if repeats(claim, list(used)):
                continue
            used.add(claim)
        cites = []
        for n in dict.fromkeys(nums):
            written += 1
            if 1 <= n <= len(sources):
                c = verified_citation(claim, sources[n - 1].url, seen)
                if c:
                    verified += 1
                    cites.append({"url": c.url, "quote": c.quote})
        if cites:
            kept.append(Sentence(claim, cites, "verified", "model"))
            continue
        for p in sources:       # the writer cited wrongly or not at all: is any source behind it?
            c = verified_citation(claim, p.url, seen)
            if c:
                kept.append(Sentence(claim, [{"url": c.url, "quote": c.quote}], "verified", "reattributed"))
                break
        else:
            if cfg.unverified == "remove":
                removed.append(claim)
            else:
                kept.append(Sentence(claim, [], "unverified", "model"))
    return kept, written, verified, removed


def extractive(sec: SectionPlan, sources: list[Passage], seen: dict[str, str], n: int,
               used: set[str] | None = None) -> list[Sentence]:
    """The sources' own sentences most relevant to the section, each cited (verified like any other)."""
    terms = set(content_words(" ".join([sec.title, *sec.questions])))
    cands = []
    for rank, p in enumerate(sources):
        lines = p.text.splitlines()
        body = "\n".join(lines[1:]) if len(lines) > 1 else p.text   # the first line is the title
        for s in sentences(body):       # "Amazon.com, Inc. is ..." stays one sentence
            if len(s.split()) >= 5 and not s[:1].islower():
                cands.append((len(terms & set(content_words(s))), -rank, s, p.url))
    cands.sort(key=lambda c: (c[0], c[1]), reverse=True)
    out, used_here = [], set()
    said = used if used is not None else set()
    for _, _, s, url in cands:
        if s in used_here or repeats(s, list(said)):
            continue
        c = verified_citation(s, url, seen)
        if c:
            out.append(Sentence(s, [{"url": c.url, "quote": c.quote}], "verified", "extractive"))
            used_here.add(s)
            said.add(s)
        if len(out) >= n:
            break
    return out


def _body(p: Passage) -> str:
    """The passage's text without its title line (the listing names the title once)."""
    first, _, rest = p.text.partition("\n")
    return rest.strip() if first.strip() == p.title and rest.strip() else p.text


def write_section(index: int, sec: SectionPlan, request: str, sources: list[Passage], seen: dict[str, str],
                  policy: Any, cfg: ReportConfig, language: str, words: int, usage: Usage,
                  used: set[str] | None = None) -> SectionResult:
    res = SectionResult(index, sec.title, list(sec.questions), [])
    if not sources:
        res.status, res.error = "failed", "the research found no sources for this section"
        return res
    n_sent = max(2, round(words / 22))
    terms = set(content_words(" ".join([sec.title, *sec.questions])))
    listing = "\n".join(f"[{i}] {p.title}: {excerpt(_body(p), terms, cfg.passage_chars)}"
                         for i, p in enumerate(sources, 1))
    messages = [{"role": "system", "content": WRITE_SYSTEM.format(language=lang_name(language), sentences=n_sent)},
                {"role": "user", "content": f"Report: {request.splitlines()[0]}\nSection: {sec.title}\n"
                                            f"Questions: {' '.join(sec.questions)}\n\nSources:\n{listing}\n\n"
                                            f"Write the section '{sec.title}'."}]
    best: tuple[list[Sentence], int, int, list[str]] | None = None
    for attempt in range(1, cfg.section_retries + 2):
        res.attempts = attempt
        try:
            budget = int(words * 1.8) + 48
            text = complete(policy, messages, max_new_tokens=min(budget, cfg.max_new_tokens or budget),
                            temperature=cfg.temperature, usage=usage)
        except Exception as e:   # the policy already retried (429/5xx/timeouts): this section fails, not the run
            res.status, res.error = "failed", f"{type(e).__name__}: {e}"
            return res
        trial = set(used) if used is not None else None
        checked = check_draft(parse_draft(text, [p.title for p in sources]), sources, seen, cfg, trial)
        if any(s.status == "verified" for s in checked[0]):
            best = checked
            break
        why = ("it had no sentences" if not checked[0] and not checked[3] else
               "none of its sentences is supported by the numbered sources")
        messages = messages + [{"role": "assistant", "content": text.strip() or "(empty)"},
                               {"role": "user", "content": f"That draft cannot be used: {why}. Restate facts from "
                                "the sources in full sentences, each ending with its source number like [1]."}]
    if best is not None:
        res.sentences, res.citations_written, res.citations_verified, res.removed = best
        if used is not None:
            used.update(s.text for s in res.sentences)
        return res
    res.sentences = extractive(sec, sources, seen, n_sent, used)
    res.status = "extractive"
    res.note = (f"Written extractively by sleuth: the model's {res.attempts} draft(s) had no sentence the sources "
                "support, so this section quotes the sources' most relevant sentences.")
    if not res.sentences:
        res.status, res.error = "failed", ("the sources hold nothing for this section that is verifiable and not "
                                           "already said in an earlier section")
    return res
