"""The browser tool: open a corpus passage or a web page and read it page by page, search in it, or ask for
the passages most relevant to a goal.

One instance per agent trajectory: it remembers what it opened (``opened``: url -> full text) so paging
does not fetch twice and citations can be checked against text the agent was actually shown.

Provenance (``require_provenance``, always on in the agent): a web URL is opened only if it came from
outside the model — given by the user in the question, or seen in a search result or a page opened in this
trajectory (``allow()`` and every opened page add what they hold). A URL the model composed itself is
refused: its path or query string could carry the prompt or anything else the model read out to a server.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

from sleuth.search.corpus import URL_SCHEME, parse_corpus_url
from sleuth.search.docstore import DocStore
from sleuth.tools.base import Tool, ToolResult
from sleuth.tools.web import FetchError, WebFetcher

_WEB_URL = re.compile(r"""https?://[^\s<>"'`{}|\\^\[\]]+""", re.I)
MAX_FIND_HITS = 10
MAX_GOAL_PASSAGES = 5
SNIPPET_CHARS = 240  # context shown around a find hit inside a long line


@dataclass
class Document:
    url: str                   # canonical / final URL
    title: str
    text: str
    spans: list[tuple[int, int]]  # (start, end) of each page in text
    note: str = ""             # e.g. "cut at 2,000,000 bytes"
    _chunks: list[tuple[int, int]] | None = field(default=None, repr=False)

    @property
    def n_pages(self) -> int:
        return len(self.spans)

    def page(self, i: int) -> str:
        s, e = self.spans[i - 1]
        return self.text[s:e].strip()

    def page_of(self, offset: int) -> int:
        """1-based page holding a character offset."""
        return max(1, bisect.bisect_right([s for s, _ in self.spans], offset))


# --------------------------------------------------------------------------------------- text splitting

def _break_at(text: str, lo: int, hi: int) -> int:
    """Best place to end a piece inside text[lo:hi]: a paragraph, a line, a sentence, then any whitespace."""
    window = text[lo:hi]
    for sep in ("\n\n", "\n", ". ", "? ", "! ", " ", "\t"):
        i = window.rfind(sep)
        if i > 0:
            return lo + i + len(sep)
    return hi  # one unbroken token longer than the window: hard cut


def paginate(text: str, page_chars: int) -> list[tuple[int, int]]:
    """Split into spans of at most page_chars, breaking on whitespace; together they cover all of text."""
    spans: list[tuple[int, int]] = []
    start, n = 0, len(text)
    while start < n:
        if n - start <= page_chars:
            end = n
        else:
            end = _break_at(text, start + page_chars // 2, start + page_chars)
        spans.append((start, end))
        start = end
    # Pages that hold only whitespace (trailing newlines) are not worth a page number.
    spans = [sp for sp in spans if text[sp[0]:sp[1]].strip()] or [(0, n)]
    return spans


def passages(text: str, max_chars: int) -> list[tuple[int, int]]:
    """Spans for goal ranking: lines/paragraphs packed up to max_chars; long ones are cut on sentences.

    Lines, not blank-line paragraphs: extracted web text puts one paragraph per line.
    """
    paras: list[tuple[int, int]] = []
    pos = 0
    for m in list(re.finditer(r"\n\s*", text)) + [None]:
        s, e = pos, (m.start() if m else len(text))
        pos = m.end() if m else len(text)
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        while e - s > max_chars:
            cut = _break_at(text, s + max_chars // 2, s + max_chars)
            paras.append((s, cut))
            s = cut
            while s < e and text[s].isspace():
                s += 1
        if e > s:
            paras.append((s, e))
    out: list[tuple[int, int]] = []
    for s, e in paras:  # short neighbours (headings, one-liners) travel together: more context per passage
        if out and e - out[-1][0] <= max_chars:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def _url_key(url: str) -> str:
    """A URL compared for provenance: case-insensitive scheme and host, no fragment, no trailing slash; the
    path and query must match exactly (they are where data would be smuggled)."""
    try:
        p = urlsplit(url.strip())
        netloc = p.netloc.lower()
    except ValueError:
        return url.strip()
    return f"{p.scheme.lower()}://{netloc}{p.path.rstrip('/')}" + (f"?{p.query}" if p.query else "")


# --------------------------------------------------------------------------------------- ranking

def _bm25_scores(goal: str, chunks: list[str]) -> list[float]:
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(chunks, stopwords="en", stemmer=stemmer, show_progress=False),
                    show_progress=False)
    q = bm25s.tokenize([goal], stopwords="en", stemmer=stemmer, show_progress=False, return_ids=False)[0]
    if not q:
        return [0.0] * len(chunks)
    return [float(x) for x in retriever.get_scores(q)]


def _embedding_scores(embedder: Any, goal: str, chunks: list[str]) -> list[float]:
    """Cosine similarity; the embedder needs ``encode(list[str]) -> array [n, dim]`` (sentence-transformers)."""
    import numpy as np

    encode = embedder.encode if hasattr(embedder, "encode") else embedder
    vecs = np.asarray(encode([goal] + chunks), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True).clip(min=1e-12)
    return [float(x) for x in vecs[1:] @ vecs[0]]


# --------------------------------------------------------------------------------------- the tool

class BrowseTool(Tool):
    name: ClassVar[str] = "browse"
    description: ClassVar[str] = (
        "Open a URL from the search results (corpus://<index>/<id>, or http(s):// when online) and read it. "
        "Long pages come in numbered pages: pass 'page' for another one. Pass 'find' to list the lines "
        "containing a phrase (with their page numbers), or 'goal' to get only the passages most relevant to "
        "what you are looking for. Give at most one of page, find, goal.")
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "url": {"type": "string", "description": "corpus://<index>/<id> or an http(s) URL"},
            "page": {"type": "integer", "minimum": 1, "description": "page number, from 1 (default 1)"},
            "find": {"type": "string", "description": "text to look for in the page (case-insensitive)"},
            "goal": {"type": "string", "description": "what you want from the page; returns the best passages"},
        },
        "required": ["url"],
        "additionalProperties": False,
    }

    def __init__(self, docstores: dict[str, DocStore] | None = None, fetcher: WebFetcher | None = None,
                 page_chars: int = 2000, embedder: Any = None, require_provenance: bool = False):
        """docstores: index name -> DocStore, for corpus:// URLs. fetcher: enables http(s) (None = offline).
        page_chars: size of one page. embedder: anything with ``encode(list[str]) -> array`` (a
        SentenceTransformer, a DenseEngine) ranks goal passages by similarity; without one, BM25 does.
        require_provenance: open only web URLs that ``allow()`` or an opened page supplied (the agent sets
        it; a person calling the tool directly supplies the URL themselves)."""
        if page_chars < 100:
            raise ValueError(f"page_chars must be at least 100, got {page_chars}")
        self.docstores = dict(docstores or {})
        self.fetcher = fetcher
        self.page_chars = page_chars
        self.embedder = embedder
        self.opened: dict[str, str] = {}        # url (as asked and as finally served) -> full page text
        self._docs: dict[str, Document] = {}
        self.require_provenance = require_provenance
        self.known_urls: set[str] = set()       # web URLs with provenance (normalised by _url_key)

    # -- provenance
    def allow(self, text: str) -> None:
        """Give provenance to every web URL in ``text`` (the question, a search result, a page)."""
        text = text or ""
        if _WEB_URL.match(text.strip()) and not any(c.isspace() for c in text.strip()):
            self.known_urls.add(_url_key(text))   # a URL on its own is taken exactly as it is
        for m in _WEB_URL.finditer(text):
            url = m.group(0)
            # drop sentence punctuation after a URL, and a parenthesis that encloses it rather than belongs to it
            while url[-1] in ".,;:!?'\"" or (url[-1] == ")" and url.count(")") > url.count("(")):
                url = url[:-1]
            self.known_urls.add(_url_key(url))

    def has_provenance(self, url: str) -> bool:
        return _url_key(url) in self.known_urls

    # -- arguments
    def validate(self, args: Any) -> str | None:
        err = super().validate(args)
        if err:
            return err
        if not args["url"].strip():
            return "browse: argument 'url' must not be empty"
        modes = [k for k in ("page", "find", "goal") if k in args]
        if len(modes) > 1:
            return f"browse: give at most one of 'page', 'find', 'goal' (got {' and '.join(modes)})"
        if "page" in args and args["page"] < 1:
            return f"browse: 'page' counts from 1, got {args['page']}"
        for k in ("find", "goal"):
            if k in args and not args[k].strip():
                return f"browse: argument {k!r} must not be empty"
        return None

    # -- opening
    def open(self, url: str) -> Document | ToolResult:
        """The document behind url (cached), or a failed ToolResult saying why it cannot be opened."""
        url = url.strip()
        if url in self._docs:
            return self._docs[url]
        if url.startswith(URL_SCHEME):
            doc = self._open_corpus(url)
        elif re.match(r"https?://", url, re.I):
            if self.require_provenance and not self.has_provenance(url):
                return ToolResult.fail("no_provenance", f"refusing to open {url[:200]}: it is not a URL from the "
                                       "question, a search result or a page read in this research (only those "
                                       "can be opened; search for the page instead)", url=url)
            doc = self._open_web(url)
        else:
            return ToolResult.fail("bad_url", f"cannot open {url!r}: use a corpus://<index>/<id> URL from the "
                                              "search results or an http(s):// URL")
        if isinstance(doc, Document):
            for key in (url, doc.url):
                self._docs[key] = doc
                self.opened[key] = doc.text
            self.allow(doc.url)    # where a redirect led
            self.allow(doc.text)   # links the page itself shows
        return doc

    def _open_corpus(self, url: str) -> Document | ToolResult:
        try:
            index, pid = parse_corpus_url(url)
        except ValueError as e:
            return ToolResult.fail("bad_url", str(e))
        store = self.docstores.get(index)
        if store is None:
            have = ", ".join(sorted(self.docstores)) or "none loaded"
            return ToolResult.fail("unknown_index", f"no corpus index named {index!r} (indexes: {have})")
        passage = store.get(pid)
        if passage is None:
            return ToolResult.fail("not_found", f"no passage {pid!r} in index {index!r}: {url} does not exist")
        return Document(passage.url(index), passage.title, passage.text, paginate(passage.text, self.page_chars))

    def _open_web(self, url: str) -> Document | ToolResult:
        if self.fetcher is None:
            return ToolResult.fail("offline", f"cannot open {url}: online browsing is disabled "
                                              "(only corpus:// URLs can be opened)")
        try:
            page = self.fetcher.fetch_page(url)
        except FetchError as e:
            return ToolResult.fail(e.kind, str(e), url=url)
        note = f"page cut at {self.fetcher.max_bytes:,} bytes" if page.truncated else ""
        return Document(page.url, page.title, page.text, paginate(page.text, self.page_chars), note)

    # -- running
    def run(self, url: str, page: int | None = None, find: str | None = None,
            goal: str | None = None) -> ToolResult:
        doc = self.open(url)
        if isinstance(doc, ToolResult):
            return doc
        if find is not None:
            return self._find(doc, find)
        if goal is not None:
            return self._goal(doc, goal)
        return self._page(doc, page or 1, url)

    def _header(self, doc: Document, where: str) -> str:
        note = f" ({doc.note})" if doc.note else ""
        return f"{doc.title or '(untitled)'} — {doc.url} — {where}{note}"

    def _data(self, doc: Document, page: int | None, shown: str, **extra: Any) -> dict[str, Any]:
        return {"url": doc.url, "title": doc.title, "page": page, "pages": doc.n_pages, "text": doc.text,
                "shown": shown, **extra}

    def _page(self, doc: Document, i: int, asked: str) -> ToolResult:
        if i > doc.n_pages:
            return ToolResult.fail("page_out_of_range",
                                   f"page {i} does not exist: {doc.url} has {doc.n_pages} "
                                   f"page{'s' if doc.n_pages != 1 else ''}", url=doc.url, pages=doc.n_pages)
        body = doc.page(i)
        text = self._header(doc, f"page {i} of {doc.n_pages}") + "\n\n" + body
        if i < doc.n_pages:
            text += f"\n\n[page {i} of {doc.n_pages}; pass \"page\": {i + 1} to read on]"
        extra = {"requested_url": asked} if asked.strip() != doc.url else {}
        return ToolResult(text, data=self._data(doc, i, body, **extra))

    def _find(self, doc: Document, needle: str) -> ToolResult:
        # Words may be split by any whitespace (line breaks) in the page.
        pattern = re.compile(r"\s+".join(re.escape(w) for w in needle.split()), re.I)
        hits = list(pattern.finditer(doc.text))
        if not hits:
            text = self._header(doc, f"{doc.n_pages} page{'s' if doc.n_pages != 1 else ''}") + \
                f"\n\nnot found: {needle!r} does not occur on this page"
            return ToolResult(text, data=self._data(doc, None, "", matches=0))
        snippets: list[tuple[int, int, int]] = []  # (page, start, end), merged when they overlap
        for m in hits:
            s, e = self._line_around(doc.text, m.start(), m.end())
            if snippets and s <= snippets[-1][2]:
                p, s0, _ = snippets[-1]
                snippets[-1] = (p, s0, max(e, snippets[-1][2]))
            else:
                snippets.append((doc.page_of(m.start()), s, e))
        shown_parts = []
        lines = [self._header(doc, f"{len(hits)} match{'es' if len(hits) != 1 else ''} for {needle!r}"), ""]
        for p, s, e in snippets[:MAX_FIND_HITS]:
            frag = doc.text[s:e].strip().replace("\n", " ")
            frag = ("…" if s > 0 and doc.text[s - 1] != "\n" else "") + frag + \
                ("…" if e < len(doc.text) and doc.text[e] not in "\n" else "")
            lines.append(f"[page {p}] {frag}")
            shown_parts.append(doc.text[s:e].strip())
        if len(snippets) > MAX_FIND_HITS:
            lines.append(f"… and {len(snippets) - MAX_FIND_HITS} more places")
        return ToolResult("\n".join(lines), data=self._data(doc, snippets[0][0], "\n".join(shown_parts),
                                                            matches=len(hits),
                                                            match_pages=sorted({p for p, _, _ in snippets})))

    @staticmethod
    def _line_around(text: str, s: int, e: int) -> tuple[int, int]:
        """The line holding a match; inside a long line, a window of SNIPPET_CHARS cut on spaces."""
        ls = text.rfind("\n", 0, s) + 1
        le = text.find("\n", e)
        le = len(text) if le < 0 else le
        if le - ls <= SNIPPET_CHARS:
            return ls, le
        half = max(20, (SNIPPET_CHARS - (e - s)) // 2)
        ws = max(ls, s - half)
        we = min(le, e + half)
        if ws > ls:
            sp = text.find(" ", ws, s)
            ws = sp + 1 if sp >= 0 else ws
        if we < le:
            sp = text.rfind(" ", e, we)
            we = sp if sp >= 0 else we
        return ws, we

    def _goal(self, doc: Document, goal: str) -> ToolResult:
        spans = doc._chunks
        if spans is None:
            spans = doc._chunks = passages(doc.text, max(200, self.page_chars // 3))
        if not spans:
            return self._page(doc, 1, doc.url)
        chunks = [doc.text[s:e] for s, e in spans]
        how = "embedding similarity" if self.embedder is not None else "BM25"
        scores = (_embedding_scores(self.embedder, goal, chunks) if self.embedder is not None
                  else _bm25_scores(goal, chunks))
        order = sorted(range(len(spans)), key=lambda j: -scores[j])
        if self.embedder is None and scores[order[0]] <= 0:
            text = self._header(doc, f"{doc.n_pages} page{'s' if doc.n_pages != 1 else ''}") + \
                f"\n\nno passage shares a word with the goal {goal!r}; read page 1 or use \"find\""
            return ToolResult(text, data=self._data(doc, None, "", passages=[]))
        picked, used = [], 0
        for j in order[:MAX_GOAL_PASSAGES]:
            if picked and used + len(chunks[j]) > self.page_chars:
                break
            picked.append(j)
            used += len(chunks[j])
        lines = [self._header(doc, f"{len(picked)} of {len(spans)} passages most relevant to {goal!r} ({how})"),
                 ""]
        found = []
        for j in picked:
            p = doc.page_of(spans[j][0])
            lines.append(f"[page {p}] {chunks[j].strip()}")
            lines.append("")
            found.append({"page": p, "score": round(scores[j], 4), "text": chunks[j].strip()})
        return ToolResult("\n".join(lines).rstrip(),
                          data=self._data(doc, found[0]["page"], "\n\n".join(f["text"] for f in found),
                                          passages=found))
