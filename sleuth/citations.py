"""Citation verification: a citation the model wrote is not a citation it read.

A citation is kept only if its URL was opened or shown in search results during this trajectory and its
quote occurs (case- and whitespace-insensitively) in the text the agent was actually shown for that URL.
When the answer occurs in what the agent was shown, the system also attaches a citation of its own (the URL
and the shown sentence holding the answer), so every grounded answer is traceable even when the model wrote
no citation; nothing is ever cited from text the agent was not shown.
"""

from __future__ import annotations

import re

from sleuth.trajectory import Citation, Trajectory

_SPACE = re.compile(r"\s+")


def _norm(s: str) -> str:
    return _SPACE.sub(" ", s).strip().lower().strip(" .\"'")


_WORD = re.compile(r"[^\w\s]")


def _words(s: str) -> str:
    return " " + " ".join(_WORD.sub(" ", s.lower()).split()) + " "


def answer_in_evidence(answer: str | None, seen: dict[str, str]) -> str | None:
    """The URL of a text the agent was shown that contains the answer (word-aligned, case and punctuation
    insensitive), or None. An answer nobody showed the agent is a guess, whatever its luck."""
    cite = evidence_citation(answer, seen)
    return cite.url if cite else None


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])|\n+")


def sentences(text: str) -> list[str]:
    """Sentences and lines of a text (a period followed by a capital or digit, or a line break)."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def evidence_citation(answer: str | None, seen: dict[str, str]) -> Citation | None:
    """A citation the system builds for an answer: the first URL whose shown text contains the answer, quoting
    the shown sentence that contains it (or, when the answer runs across sentences, the shortest run of
    consecutive sentences that does). Only text in ``seen`` — what the agent was shown — is ever quoted, so
    the citation verifies by construction. None when the answer occurs in nothing the agent saw."""
    if not answer or not _words(answer).strip():
        return None
    a = _words(answer)
    for url, text in seen.items():
        if a not in _words(text):
            continue
        sents = sentences(text)
        for width in range(1, len(sents) + 1):
            for i in range(len(sents) - width + 1):
                quote = " ".join(sents[i:i + width])
                if a in _words(quote):
                    return Citation(n=1, url=url, quote=quote, verified=True, source="system")
        return Citation(n=1, url=url, quote=text.strip(), verified=True, source="system")
    return None


def cite_answer(answer: str | None, kept: list[Citation], evidence: Citation | None) -> list[Citation]:
    """The verified citations of an answer: the model's own verified ones, plus ``evidence`` (the system's
    citation from ``evidence_citation``) when no verified quote already contains the answer."""
    if not answer or evidence is None:
        return kept
    a = _words(answer)
    if any(a in _words(c.quote) for c in kept):
        return kept
    evidence.n = len(kept) + 1
    return kept + [evidence]


def verify(cites: list[dict], seen: dict[str, str],
           untrusted: set[str] | frozenset[str] = frozenset()) -> tuple[list[Citation], list[Citation]]:
    """Split the model's citations into (kept, dropped); kept ones are renumbered 1..n. A URL in ``untrusted``
    (its text held a prompt injection) is never a citation, whatever ``seen`` holds."""
    kept: list[Citation] = []
    dropped: list[Citation] = []
    for i, c in enumerate(cites, 1):
        url, quote = str(c.get("url", "")).strip(), str(c.get("quote", ""))
        cit = Citation(n=i, url=url, quote=quote)
        if url in untrusted:
            cit.reason = "the source holds a likely prompt injection (text addressed to AI systems); it is untrusted"
        elif url not in seen:
            cit.reason = "URL was never opened or shown in search results"
        elif not _norm(quote):
            cit.reason = "no quote given"
        elif _norm(quote) not in _norm(seen[url]):
            cit.reason = "quote does not occur in the page as shown"
        else:
            cit.verified = True
            cit.n = len(kept) + 1
            kept.append(cit)
            continue
        dropped.append(cit)
    return kept, dropped


def unseen_citations(traj: Trajectory) -> list[Citation]:
    """An independent audit of a finished trajectory: its citations whose quote occurs in none of the
    observations in its transcript (what the model was actually shown; the prompt's worked examples are not).
    Must always be empty."""
    shown = _norm(" ".join(traj.observations()))
    return [c for c in traj.citations if _norm(c.quote) not in shown]
