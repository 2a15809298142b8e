"""Citation verification: a citation the model wrote is not a citation it read.

A citation is kept only if its URL was opened or shown in search results during this trajectory and its
quote occurs (case- and whitespace-insensitively) in the text the agent was actually shown for that URL.
"""

from __future__ import annotations

import re

from sleuth.trajectory import Citation

_SPACE = re.compile(r"\s+")


def _norm(s: str) -> str:
    return _SPACE.sub(" ", s).strip().lower().strip(" .\"'")


_WORD = re.compile(r"[^\w\s]")


def _words(s: str) -> str:
    return " " + " ".join(_WORD.sub(" ", s.lower()).split()) + " "


def answer_in_evidence(answer: str | None, seen: dict[str, str]) -> str | None:
    """The URL of a text the agent was shown that contains the answer (word-aligned, case and punctuation
    insensitive), or None. An answer nobody showed the agent is a guess, whatever its luck."""
    if not answer or not _words(answer).strip():
        return None
    a = _words(answer)
    for url, text in seen.items():
        if a in _words(text):
            return url
    return None


def verify(cites: list[dict], seen: dict[str, str]) -> tuple[list[Citation], list[Citation]]:
    """Split the model's citations into (kept, dropped); kept ones are renumbered 1..n."""
    kept: list[Citation] = []
    dropped: list[Citation] = []
    for i, c in enumerate(cites, 1):
        url, quote = str(c.get("url", "")).strip(), str(c.get("quote", ""))
        cit = Citation(n=i, url=url, quote=quote)
        if url not in seen:
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
