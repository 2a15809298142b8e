"""Answer normalisation shared by every judge, the candidate parser and synthesis.

``normalize_answer`` / ``answer_tokens`` — SQuAD normalisation (lowercase, drop punctuation and the articles
a/an/the, squeeze whitespace); CJK characters count as one token each so Chinese answers get meaningful token
F1 and containment.
"""

from __future__ import annotations

import re
import string
import unicodedata

_ASCII_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_CJK = r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]"
_TOKEN = re.compile(rf"{_CJK}|(?:(?!{_CJK})\S)+")


def normalize_answer(s: str | None, keep_articles: bool = False) -> str:
    """SQuAD normalisation; also removes non-ASCII punctuation (，。「」 – …) the SQuAD script keeps."""
    if not s:
        return ""
    s = str(s).lower()
    s = "".join(ch for ch in s if ch not in _ASCII_PUNCT and not unicodedata.category(ch).startswith("P"))
    if not keep_articles:
        s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def answer_tokens(s: str | None, keep_articles: bool = False) -> list[str]:
    """Tokens of the normalised answer. Answers that normalisation would erase keep a form: "A" (a choice
    letter) keeps its article-like token, "....-" (Morse code in FRAMES) its raw whitespace tokens."""
    if not s:
        return []
    toks = _TOKEN.findall(normalize_answer(s, keep_articles))
    if not toks and not keep_articles:
        toks = _TOKEN.findall(normalize_answer(s, keep_articles=True))
    return toks or str(s).lower().split()
