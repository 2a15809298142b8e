"""Verifying a written sentence against the passages the agent was shown.

A sentence citing [n] is kept as cited only if passage n holds a *supporting sentence*: one that contains
most of the claim's content words (``min_overlap``) and every number the claim states. The supporting
sentence is then checked by ``sleuth.citations.verify`` as the citation's quote — the same check every agent
answer's citations pass — so a kept citation always quotes text the agent was shown for that URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sleuth import citations
from sleuth.trajectory import Citation

_STOP = set("a an the of and or to in on at by for with from as is are was were be been being it its this that "
            "these those which who whom whose what when where why how than then also has have had not no but "
            "into over under about after before between during he she they them his her their there here such "
            "can could may might will would shall should do does did one".split())
_NUM = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(r"[^\W_]+")


def _content(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and (len(w) > 2 or w.isdigit())}


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in _NUM.findall(text)}


@dataclass
class Support:
    url: str
    quote: str
    score: float


def support(claim: str, url: str, text: str, min_overlap: float = 0.75) -> Support | None:
    """The sentence (or pair of adjacent sentences) of ``text`` that best supports ``claim``, if one is good
    enough (see the module doc). The passage's title (its first line) counts as said in every sentence — a
    passage on "Jane Austen" that says "She was born in Steventon" supports "Jane Austen was born in
    Steventon" — but never supplies a number."""
    words = _content(claim)
    if len(words) < 3:       # "Gustave Eiffel … He is": too little said to be supported by anything
        return None
    nums = _numbers(claim)
    sents = citations.sentences(text)
    title = _content(sents[0]) if sents and "\n" in text.strip() else set()
    units = [s for s in sents] + [f"{a} {b}" for a, b in zip(sents, sents[1:])]
    best: Support | None = None
    for unit in units:
        score = len(words & (_content(unit) | title)) / len(words)
        if score < min_overlap or not nums <= _numbers(unit):
            continue
        if best is None or score > best.score + 1e-9:
            best = Support(url, unit, score)
    return best


def repeats(claim: str, said: list[str], share: float = 0.8) -> bool:
    """Whether ``claim`` says again what one of ``said`` said: most of the smaller one's content words shared."""
    w = _content(claim)
    for other in said:
        o = _content(other)
        if w and o and len(w & o) >= share * min(len(w), len(o)):
            return True
    return False


def verified_citation(claim: str, url: str, seen: dict[str, str], untrusted: frozenset[str] = frozenset()
                      ) -> Citation | None:
    """A verified Citation of ``url`` for ``claim``, or None: support found, then the quote checked by
    ``citations.verify`` against what the agent was shown."""
    if url not in seen:
        return None
    s = support(claim, url, seen[url])
    if s is None:
        return None
    kept, _ = citations.verify([{"url": url, "quote": s.quote}], seen, untrusted)
    return kept[0] if kept else None
