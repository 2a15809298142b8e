"""Lexical search: BM25 (bm25s) over stemmed English words, with a title-aware second field.

Two bm25s indexes share one vocabulary: ``body`` (title + text) and ``title`` (the title alone). A
passage's score is ``body + title_weight * title``: questions usually name the entities whose pages hold
the evidence, and a title match is strong evidence that a passage is about that entity.

A query's scores are the sums of its distinct terms' precomputed BM25 posting lists (one
``np.bincount`` per field over bm25s' saved CSC matrices), so both fields come from one pass per query.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from sleuth.search.corpus import passage_url
from sleuth.search.docstore import DocStore
from sleuth.search.base import SearchEngine, SearchResponse, SearchResult

_WORD = re.compile(r"(?u)\b\w\w+\b")  # bm25s' default splitter: words of two or more word characters
SNIPPET_CHARS = 300

Ranked = list[tuple[int, float]]  # (docstore row, score), best first


@dataclass
class LexicalConfig:
    k1: float = 1.2
    """BM25 term-frequency saturation."""
    b: float = 0.75
    """BM25 length normalisation."""
    method: str = "lucene"
    """bm25s scoring variant."""
    title_weight: float = 0.25
    """Weight of the title-only field added to the body score; a query-time knob (not saved with the
    index), chosen on the dev questions (benchmarks/retrieval.py)."""

    def build_params(self) -> dict:
        """The parameters baked into the saved index."""
        return {"k1": self.k1, "b": self.b, "method": self.method}


class Analyzer:
    """lowercase -> words -> drop English stopwords -> Snowball English stem (cached).

    Stateless apart from the stem cache, so queries need no saved tokenizer: the index vocabulary maps
    stems to ids.
    """

    def __init__(self) -> None:
        import Stemmer
        from bm25s.stopwords import STOPWORDS_EN

        self._stemmer = Stemmer.Stemmer("english")
        self._stop = frozenset(STOPWORDS_EN)
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()  # a PyStemmer object must not be used from two threads at once

    def words(self, text: str) -> list[str]:
        return [w for w in _WORD.findall(text.lower()) if w not in self._stop]

    def stem_map(self, words) -> dict[str, str]:
        """word -> stem for the given words (one stemmer call for the ones not cached yet)."""
        cache = self._cache
        missing = [w for w in set(words) if w not in cache]
        if not missing:
            return cache
        with self._lock:
            new = dict(zip(missing, self._stemmer.stemWords(missing)))
        if len(cache) < 2_000_000:  # query traffic must not grow the cache without bound
            cache.update(new)
            return cache
        return _Overlay(new, cache)

    def stems(self, text: str) -> list[str]:
        words = self.words(text)
        m = self.stem_map(words)
        return [m[w] for w in words]


class _Overlay(dict):
    """A small dict of fresh stems that falls back to the big cache (avoids copying the cache)."""

    def __init__(self, new: dict, base: dict):
        super().__init__(new)
        self.base = base

    def __missing__(self, key: str) -> str:
        return self.base[key]


_ANALYZER: Analyzer | None = None


def analyzer() -> Analyzer:
    global _ANALYZER
    if _ANALYZER is None:
        _ANALYZER = Analyzer()
    return _ANALYZER


# ---------------------------------------------------------------------------------------------- build

def build_lexical(titles: Sequence[str], texts: Sequence[str], out_dir: Path, config: LexicalConfig,
                  on_progress: Callable[[int], None] | None = None) -> dict:
    """Tokenise and index passages (row i = passage i) into out_dir/{body,title}; returns stats."""
    import bm25s

    an = analyzer()
    vocab: dict[str, int] = {}
    body_ids: list[list[int]] = []
    title_ids: list[list[int]] = []

    def ids(stems: list[str]) -> list[int]:
        out = []
        for s in stems:
            i = vocab.get(s)
            if i is None:
                i = vocab[s] = len(vocab)
            out.append(i)
        return out

    for n, (title, text) in enumerate(zip(titles, texts), 1):
        t = an.stems(title)
        body_ids.append(ids(t) + ids(an.stems(text)))
        title_ids.append(ids(t))
        if on_progress and n % 1000 == 0:
            on_progress(1000)
    if on_progress:
        on_progress(len(body_ids) % 1000)
    if not vocab:  # bm25s needs at least one column; a corpus of stopwords still gets an index
        vocab[""] = 0

    params = dict(k1=config.k1, b=config.b, method=config.method)
    for field, corpus in (("body", body_ids), ("title", title_ids)):
        bm = bm25s.BM25(**params)
        bm.index((corpus, dict(vocab)), create_empty_token=False, show_progress=False)
        bm.save(str(out_dir / field), show_progress=False)
    (out_dir / "config.json").write_text(json.dumps(config.build_params(), indent=1))
    return {"vocab": len(vocab), "tokens": int(sum(map(len, body_ids)))}


# ---------------------------------------------------------------------------------------------- search

def _postings(scores: dict, ids: np.ndarray, weight: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The (doc rows, weighted BM25 contributions) posting slices of the given terms in one field."""
    indptr, indices, data = scores["indptr"], scores["indices"], scores["data"]
    rows, ws = [], []
    for t in ids:
        a, b = indptr[t], indptr[t + 1]
        rows.append(indices[a:b])
        ws.append(data[a:b] * weight if weight != 1 else data[a:b])
    return rows, ws


def _field_scores(fields: list[tuple[dict, float]], ids: np.ndarray) -> np.ndarray:
    """Summed weighted scores of every field, in one bincount over all their postings."""
    rows: list[np.ndarray] = []
    ws: list[np.ndarray] = []
    for scores, weight in fields:
        r, w = _postings(scores, ids, weight)
        rows += r
        ws += w
    n = fields[0][0]["num_docs"]
    if not rows:
        return np.zeros(n)
    return np.bincount(np.concatenate(rows), weights=np.concatenate(ws), minlength=n)


def top_k(scores: np.ndarray, k: int) -> Ranked:
    """Best k (row, score) with score > 0, best first (ties: lower row first).

    Only passages sharing a term with the query can score above 0, so on large corpora the selection
    runs over those alone (a 1M-passage argpartition costs several ms per query, the nonzero scan ~1).
    """
    k = min(k, len(scores))
    if k <= 0:
        return []
    cand = np.flatnonzero(scores > 0)
    if len(cand) == 0:
        return []
    vals = scores[cand]
    if k < len(cand):   # the k-th score's ties go to the lower rows too (argpartition alone picks any of them)
        kth = -np.partition(-vals, k - 1)[k - 1]
        above = np.flatnonzero(vals > kth)
        sel = np.concatenate([above, np.flatnonzero(vals == kth)[:k - len(above)]])
        cand, vals = cand[sel], vals[sel]
    order = np.lexsort((cand, -vals))
    return [(int(cand[i]), float(vals[i])) for i in order]


@lru_cache(maxsize=1024)
def _query_terms(query: str) -> tuple[re.Pattern | None, dict[str, str]]:
    """A regex finding the query's words and stems as word prefixes, and match -> term (its stem).

    Prefix matching on stems ("treati" finds "treaties") keeps snippet selection to one C-level regex
    pass per passage instead of tokenising and stemming every passage shown.
    """
    an = analyzer()
    words = an.words(query)
    stem = an.stem_map(words)
    terms: dict[str, str] = {}
    for w in words:
        terms[w] = terms[stem[w]] = stem[w]
    if not terms:
        return None, terms
    alts = "|".join(re.escape(t) + (r"\w*" if len(t) >= 3 else r"\b") for t in sorted(terms, key=len, reverse=True))
    return re.compile(rf"\b({alts})", re.IGNORECASE), terms


def make_snippet(text: str, query: str, width: int = SNIPPET_CHARS) -> str:
    """About ``width`` characters of the passage around its densest cluster of query terms.

    The window starts at the beginning of the sentence holding the cluster when that sentence starts
    close by, and stays full near the end of the passage.
    """
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    start = 0
    pattern, terms = _query_terms(query)
    if pattern is not None:
        hits = []
        for m in pattern.finditer(flat):
            g = m.group(1).lower()
            hits.append((m.start(), terms.get(g) or next((terms[t] for t in terms if g.startswith(t)), g)))
        best, best_n = 0, 0
        for i, (pos, _) in enumerate(hits):
            near = {t for p, t in hits[i:i + 12] if p < pos + width * 2 // 3}
            if len(near) > best_n:
                best, best_n = pos, len(near)
        if best > width // 2:
            sentence = max(flat.rfind(". ", 0, best), flat.rfind("? ", 0, best), flat.rfind("! ", 0, best))
            if sentence >= 0 and best - sentence < width // 2:
                start = sentence + 2
            else:
                start = flat.rfind(" ", 0, best - 30) + 1
            start = min(start, flat.find(" ", len(flat) - width) + 1)  # keep the window full near the end
    out = flat[start:]
    if len(out) > width:
        cut = out.rfind(" ", 0, width)
        out = out[: cut if cut > width // 2 else width].rstrip(" ,;:") + " …"
    return ("… " if start > 0 else "") + out


def to_results(docs: DocStore, index_name: str, query: str, ranked: Ranked, engine: str) -> list[SearchResult]:
    passages = docs.get_rows([r for r, _ in ranked])
    return [SearchResult(title=p.title, url=passage_url(index_name, p.id), snippet=make_snippet(p.text, query),
                         score=round(s, 6), passage_id=p.id, engine=engine)
            for p, (_, s) in zip(passages, ranked)]


def batch_responses(engine: SearchEngine, docs: DocStore, index_name: str, queries: list[str], k: int,
                    rank: Callable[[list[str], int], list[Ranked]]) -> list[SearchResponse]:
    """Rank every query in one native call; a failure becomes each query's error, never an exception."""
    try:
        ranked = rank(queries, k)
    except Exception as e:  # noqa: BLE001 - the caller shows backend failures as observations
        return [SearchResponse(q, [], f"{engine.name} search failed: {type(e).__name__}: {e}") for q in queries]
    return [SearchResponse(q, to_results(docs, index_name, q, r, engine.name)) for q, r in zip(queries, ranked)]


class LexicalEngine(SearchEngine):
    name = "lexical"

    def __init__(self, index_name: str, docs: DocStore, body, title, config: LexicalConfig | None = None):
        self.index_name = index_name
        self.docs = docs
        self.body = body
        self.title = title
        self.config = config or LexicalConfig()
        self.vocab: dict[str, int] = body.vocab_dict

    @classmethod
    def load(cls, lexical_dir: Path, index_name: str, docs: DocStore, mmap: bool = True) -> "LexicalEngine":
        """Load the saved bm25s indexes; mmap keeps the score matrices on disk until pages are touched."""
        import bm25s

        cfg_file = lexical_dir / "config.json"
        saved = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
        config = LexicalConfig(**{k: v for k, v in saved.items() if k in ("k1", "b", "method")})
        body = bm25s.BM25.load(str(lexical_dir / "body"), mmap=mmap)
        title = bm25s.BM25.load(str(lexical_dir / "title"), mmap=mmap, load_vocab=False)
        return cls(index_name, docs, body, title, config)

    def query_ids(self, query: str) -> np.ndarray:
        """Distinct vocabulary ids of the query's stems (unknown words are dropped)."""
        ids = {self.vocab[s] for s in analyzer().stems(query) if s in self.vocab}
        return np.fromiter(sorted(ids), dtype=np.int64, count=len(ids))

    def scores(self, query: str) -> np.ndarray:
        ids = self.query_ids(query)
        fields = [(self.body.scores, 1.0)]
        if self.config.title_weight:
            fields.append((self.title.scores, self.config.title_weight))
        return _field_scores(fields, ids)

    def rank(self, queries: list[str], n: int) -> list[Ranked]:
        return [top_k(self.scores(q), n) if q.strip() else [] for q in queries]

    def search(self, query: str, k: int = 10) -> list[SearchResult]:
        return to_results(self.docs, self.index_name, query, self.rank([query], k)[0], self.name)

    def search_batch(self, queries: list[str], k: int = 10) -> list[SearchResponse]:
        return batch_responses(self, self.docs, self.index_name, queries, k, self.rank)
