"""Persistent corpus indexes: build one from a source, open it, list them.

Layout of ``paths.index_dir(NAME)``::

    docs.sqlite     passages, row i == position i in every index below (sleuth.search.docstore)
    lexical/        bm25s indexes (body = title + text, and title alone) + config.json
    dense/          embeddings.npy (normalised float32) + faiss.index
    meta.json       written last: an index without it is incomplete and refused

``index_dir(NAME)`` is a symlink to a hidden versioned sibling (``.NAME.<ns>``). A build writes a new
version beside the old one and swaps the link with one ``os.replace``: readers see the old index or the
new one, never a half-written one, and a failed build leaves the old one untouched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from sleuth import paths
from sleuth.search.corpus import Passage, content_hash, load_source
from sleuth.search.docstore import DocStore
from sleuth.search import dense as dense_mod
from sleuth.search import lexical as lexical_mod
from sleuth.search import prebuilt
from sleuth.search.base import SearchEngine

META = "meta.json"
FORMAT_VERSION = 1
ENGINE_KINDS = ("auto", "hybrid", "lexical", "dense")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_STALE_SECONDS = 3600  # hidden versions this old and not linked are leftovers of killed builds


class IndexNotFound(FileNotFoundError):
    """No usable index under that name; the message says how to build one."""


def indexes_root() -> Path:
    return paths.index_dir("x").parent


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"bad index name {name!r}: use letters, digits, '.', '_' or '-' "
                         "(not starting with '.' or '-')")
    return name


def default_name(source: str | Path | None) -> str:
    """'wiki' for the embedded corpus, else the folder name or file stem (passages.jsonl.gz -> passages)."""
    if source is None or str(source) == "embedded":
        return "wiki"
    p = Path(source)
    stem = p.name
    for suffix in (".gz", ".jsonl", ".json"):
        stem = stem.removesuffix(suffix)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).lstrip("._-")
    return stem or "index"


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# ---------------------------------------------------------------------------------------------- build

def _progress(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(SpinnerColumn(), TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True))


class _Bar:
    """A rich task, or nothing when progress is off."""

    def __init__(self, prog, description: str, total: int | None):
        self.prog = prog
        self.task = prog.add_task(description, total=total) if prog is not None else None

    def advance(self, n: int) -> None:
        if self.prog is not None:
            self.prog.advance(self.task, n)

    def done(self, total: int) -> None:
        if self.prog is not None:
            self.prog.update(self.task, total=total, completed=total)


def _read(source, bar: _Bar, skipped: list[str]) -> list[Passage]:
    passages: list[Passage] = []
    seen: set[str] = set()
    for p in load_source(source, skipped):
        if p.id in seen:
            raise ValueError(f"duplicate passage id {p.id!r} in {source}: ids must be unique")
        seen.add(p.id)
        passages.append(p)
        if len(passages) % 1000 == 0:
            bar.advance(1000)
    bar.done(len(passages))
    if not passages:
        also = f" ({len(skipped)} files skipped as not text)" if skipped else ""
        raise ValueError(f"no passages found in {source or 'embedded'}{also}")
    return passages


def _previous_embeddings(target: Path, model: str, max_tokens: int, embedder: str,
                         version: str | None = None) -> tuple[dict[str, int], np.ndarray] | None:
    """(content hash -> row, embeddings) of the current index when its embeddings are reusable: same model,
    same truncation, same embedder (int8 and float32 vectors of one text differ slightly) and the same version
    of it (another int8 export rounds differently; indexes from before versions were recorded have none)."""
    try:
        meta = json.loads((target / META).read_text())
        d = meta["engines"]["dense"]
        if (not d or d["model"] != model or d["max_tokens"] != max_tokens
                or d.get("embedder", "torch") != embedder or d.get("embedder_version") != version):
            return None
        emb = np.load(target / "dense" / "embeddings.npy", mmap_mode="r")
        hashes = DocStore(target / "docs.sqlite").hashes()
    except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError):
        return None
    if max(hashes.values(), default=-1) >= emb.shape[0]:  # docs and embeddings disagree: embed afresh
        return None
    return hashes, emb


def _build_into(work: Path, target: Path, name: str, source, *, dense: bool, batch_size: int | None,
                progress: bool, use_prebuilt: bool,
                lexical_config: lexical_mod.LexicalConfig, dense_config: dense_mod.DenseConfig) -> dict:
    t_all = time.perf_counter()
    seconds: dict[str, float] = {}
    stats: dict[str, Any] = {}
    with _progress(progress) as prog:
        t = time.perf_counter()
        skipped: list[str] = []
        passages = _read(source, _Bar(prog, "reading", None), skipped)
        hashes = [content_hash(p) for p in passages]
        seconds["read"] = time.perf_counter() - t

        t = time.perf_counter()
        DocStore.write(work / "docs.sqlite", zip(passages, hashes))
        seconds["docstore"] = time.perf_counter() - t

        t = time.perf_counter()
        (work / "lexical").mkdir()
        bar = _Bar(prog, "lexical index", len(passages))
        stats["lexical"] = lexical_mod.build_lexical([p.title for p in passages], [p.text for p in passages],
                                                     work / "lexical", lexical_config, bar.advance)
        seconds["lexical"] = time.perf_counter() - t

        dense_meta = None
        if dense:
            t = time.perf_counter()
            embedder = dense_mod.get_embedder(dense_config.embedder, dense_config.max_tokens)
            dim = embedder.dim
            emb = np.zeros((len(passages), dim), dtype=np.float32)
            todo = list(range(len(passages)))
            version = embedder.version
            prev = _previous_embeddings(target, dense_mod.MODEL_NAME, dense_config.max_tokens, embedder.kind,
                                        version)
            if prev is not None and prev[1].shape[1] == dim:
                old_rows, old_emb = prev
                reuse = [(i, old_rows[h]) for i, h in enumerate(hashes) if h in old_rows]
                if reuse:
                    new_i, old_i = map(np.array, zip(*reuse))
                    emb[new_i] = old_emb[old_i]
                    todo = sorted(set(todo) - set(new_i.tolist()))
            shipped = 0
            pack = prebuilt.load_pack(dense_mod.MODEL_NAME, embedder.kind, dense_config.max_tokens,
                                      version=version) \
                if todo and use_prebuilt else None
            if pack is not None and pack[1].shape[1] == dim:
                found, vecs = prebuilt.lookup(pack, [hashes[i] for i in todo])
                if found:
                    emb[[todo[j] for j in found]] = vecs
                    shipped = len(found)
                    hit = set(found)
                    todo = [i for j, i in enumerate(todo) if j not in hit]
            seconds["embedder_load"] = time.perf_counter() - t
            t = time.perf_counter()
            bar = _Bar(prog, "embedding", len(todo))
            if todo:
                emb[todo] = embedder.embed([dense_mod.passage_text(passages[i].title, passages[i].text)
                                            for i in todo], batch_size, bar.advance)
            seconds["embed"] = time.perf_counter() - t

            t = time.perf_counter()
            (work / "dense").mkdir()
            np.save(work / "dense" / "embeddings.npy", emb)
            import faiss

            findex = dense_mod.build_faiss(emb, dense_config)
            faiss.write_index(findex, str(work / "dense" / "faiss.index"))
            seconds["faiss"] = time.perf_counter() - t
            dense_meta = {"model": dense_mod.MODEL_NAME, "embedder": embedder.kind, "embedder_version": version,
                          "dim": dim,
                          "max_tokens": dense_config.max_tokens,
                          "normalized": True, "faiss": dense_mod.index_kind(findex),
                          "nprobe": dense_config.nprobe if dense_mod.index_kind(findex) != "IndexFlatIP" else None,
                          "embedded": len(todo), "reused": len(passages) - len(todo) - shipped,
                          "prebuilt": shipped}

    seconds["total"] = time.perf_counter() - t_all
    meta = {
        "name": name,
        "format": FORMAT_VERSION,
        "source": "embedded" if source is None or str(source) == "embedded" else str(Path(source).resolve()),
        "count": len(passages),
        "skipped_files": skipped,   # files of a folder source that were not text
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "engines": {
            "lexical": {"library": "bm25s", "stemmer": "snowball-english", "stopwords": "english",
                        "fields": ["body", "title"], **lexical_config.build_params(), **stats["lexical"]},
            "dense": dense_meta,
        },
        "build_seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    meta["size_bytes"] = dir_size(work)
    # meta.json last: its presence is what marks the directory as a complete index.
    tmp = work / (META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, work / META)
    return meta


def _swap(target: Path, work: Path) -> None:
    """Point target at work in one atomic rename; then drop the version it replaced."""
    root = target.parent
    link = root / f".{target.name}.link-{time.time_ns()}"
    os.symlink(work.name, link)
    old: Path | None = None
    if target.is_symlink():
        old = root / os.readlink(target)
    elif target.exists():  # a plain directory: move it aside (the only non-atomic case)
        old = root / f".{target.name}.{time.time_ns()}"
        os.replace(target, old)
    os.replace(link, target)
    if old is not None and old.resolve() != work.resolve():
        shutil.rmtree(old, ignore_errors=True)


def _clean_stale(target: Path) -> None:
    current = target.resolve() if target.is_symlink() else None
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(\d+|link-\d+)")
    now = time.time()
    for d in target.parent.iterdir():
        if not pattern.fullmatch(d.name) or now - d.lstat().st_mtime < _STALE_SECONDS:
            continue
        if d.is_symlink():
            d.unlink()
        elif d.resolve() != current:
            shutil.rmtree(d, ignore_errors=True)


def build_index(source: str | Path | None = None, name: str | None = None, *, dense: bool = True,
                batch_size: int | None = None, progress: bool = True,
                lexical_config: lexical_mod.LexicalConfig | None = None,
                dense_config: dense_mod.DenseConfig | None = None, use_prebuilt: bool = True) -> Path:
    """Build (or rebuild) index NAME from source; returns paths.index_dir(NAME).

    On a rebuild, passages whose content hash is unchanged keep their old embeddings when the same
    embedder made them (``dense_config.embedder``); ``batch_size`` None = the embedder's own. With
    ``use_prebuilt``, passages found in sleuth's shipped embedding pack (``search.prebuilt``) take its vectors.
    """
    name = check_name(name or default_name(source))
    target = paths.index_dir(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(target)
    dense_config = dense_config or dense_mod.DenseConfig()
    work = target.parent / f".{name}.{time.time_ns()}"
    work.mkdir()
    try:
        _build_into(work, target, name, source, dense=dense, batch_size=batch_size, progress=progress,
                    use_prebuilt=use_prebuilt,
                    lexical_config=lexical_config or lexical_mod.LexicalConfig(), dense_config=dense_config)
        _swap(target, work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target


# ---------------------------------------------------------------------------------------------- open

class Index:
    """An opened index: passages (``docs``), build facts (``meta``) and its search engines."""

    def __init__(self, name: str, path: Path, meta: dict):
        self.name = name
        self.path = path
        self.meta = meta
        self.docs = DocStore(path / "docs.sqlite", name)
        self._engines: dict[str, SearchEngine] = {}
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return int(self.meta["count"])

    @property
    def has_dense(self) -> bool:
        return bool(self.meta["engines"].get("dense"))

    def engine(self, kind: str = "auto") -> SearchEngine:
        """'hybrid', 'lexical' or 'dense'; 'auto' = hybrid when the index has embeddings, else lexical.

        Engines are loaded once and cached; the embedding model loads on the first dense query.
        """
        if kind not in ENGINE_KINDS:
            raise ValueError(f"unknown engine {kind!r}: choose one of {', '.join(ENGINE_KINDS)}")
        if kind == "auto":
            kind = "hybrid" if self.has_dense else "lexical"
        if kind in ("dense", "hybrid") and not self.has_dense:
            raise ValueError(f"index {self.name!r} was built without embeddings (--no-dense): use engine "
                             f"'lexical', or rebuild it with dense embeddings")
        with self._lock:
            eng = self._engines.get(kind)
            if eng is None:
                eng = self._engines[kind] = self._load(kind)
            return eng

    def _load(self, kind: str) -> SearchEngine:
        from sleuth.search.hybrid import HybridEngine

        try:
            if kind == "lexical":
                return lexical_mod.LexicalEngine.load(self.path / "lexical", self.name, self.docs)
            if kind == "dense":
                d = self.meta["engines"]["dense"]
                if d.get("model") != dense_mod.MODEL_NAME:
                    raise ValueError(f"index {self.name!r} was embedded with {d.get('model')!r}; this sleuth "
                                     f"embeds with {dense_mod.MODEL_NAME!r}: rebuild it with `sleuth index "
                                     f"SOURCE --name {self.name}`")
                kind_made = d.get("embedder", "torch")  # indexes from before the field: the PyTorch path
                return dense_mod.DenseEngine.load(self.path / "dense", self.name, self.docs, d["max_tokens"],
                                                  dense_mod.DenseConfig(max_tokens=d["max_tokens"],
                                                                        nprobe=d.get("nprobe") or 32,
                                                                        embedder=kind_made),
                                                  embedder_kind=kind_made)
            return HybridEngine(self.engine("lexical"), self.engine("dense"))
        except (OSError, RuntimeError) as e:
            raise IndexNotFound(f"index {self.name!r} at {self.path} could not load its {kind} engine ({e}); "
                                "it may have been rebuilt meanwhile: open it again") from e

    def __repr__(self) -> str:
        return f"Index({self.name!r}, {len(self)} passages, path={str(self.path)!r})"


def _available() -> list[str]:
    return [m["name"] for m in list_indexes()]


def open_index(name: str) -> Index:
    check_name(name)
    d = paths.index_dir(name)
    if not d.exists():
        have = _available()
        hint = f" (available: {', '.join(have)})" if have else ""
        raise IndexNotFound(f"no index named {name!r} in {d.parent}{hint}; build one with `sleuth index` "
                            f"(embedded Wikipedia) or `sleuth index SOURCE --name {name}`")
    if not (d / META).is_file():
        raise IndexNotFound(f"index {name!r} at {d} is incomplete (no {META}), probably an interrupted build; "
                            f"rebuild it with `sleuth index SOURCE --name {name}`")
    meta = json.loads((d / META).read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise IndexNotFound(f"index {name!r} has format {meta.get('format')}, this sleuth reads "
                            f"{FORMAT_VERSION}: rebuild it with `sleuth index`")
    return Index(name, d.resolve(), meta)


def list_indexes() -> list[dict]:
    """meta.json of every complete index (with its 'path'), most recently created first."""
    root = indexes_root()
    out = []
    if root.is_dir():
        for d in root.iterdir():
            if d.name.startswith(".") or not (d / META).is_file():
                continue
            try:
                meta = json.loads((d / META).read_text())
            except (OSError, json.JSONDecodeError):
                continue
            meta["path"] = str(d)
            out.append(meta)
    return sorted(out, key=lambda m: (m.get("created", ""), m["name"]), reverse=True)


def default_index_name() -> str:
    """'wiki' if it exists, else the most recently built index."""
    have = list_indexes()
    if not have:
        raise IndexNotFound(f"no index in {indexes_root()}: run `sleuth index` (embedded Wikipedia) or "
                            "`sleuth index SOURCE` first")
    names = [m["name"] for m in have]
    return "wiki" if "wiki" in names else names[0]
