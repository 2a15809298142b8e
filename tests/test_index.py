"""Persistent indexes: build from jsonl and folders, search with every engine, incremental rebuilds,
interrupted builds, clear errors, and the `sleuth index` / `sleuth search` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from sleuth import paths
from sleuth.search.corpus import parse_corpus_url
from sleuth.search.index import IndexNotFound, build_index, default_index_name, list_indexes, open_index
from sleuth.search import dense as dense_mod
from sleuth.search.lexical import make_snippet

PASSAGES = [
    {"id": "curie", "title": "Marie Curie", "text": "Marie Curie was a Polish and naturalised-French physicist "
     "and chemist who conducted pioneering research on radioactivity. She won two Nobel Prizes."},
    {"id": "sahara", "title": "Sahara", "text": "The Sahara is a desert spanning North Africa. With an area of "
     "9,200,000 square kilometres, it is the largest hot desert in the world."},
    {"id": "python", "title": "Python (programming language)", "text": "Python is a high-level, general-purpose "
     "programming language whose design philosophy emphasizes code readability."},
    {"id": "everest", "title": "Mount Everest", "text": "Mount Everest is Earth's highest mountain above sea "
     "level, located in the Mahalangur Himal sub-range of the Himalayas."},
    {"id": "amazon", "title": "Amazon River", "text": "The Amazon River in South America is the largest river "
     "by discharge volume of water in the world."},
    {"id": "violin", "title": "Violin", "text": "The violin is a wooden chordophone, the smallest and "
     "highest-pitched instrument in the string family."},
]

# (query, passage id it must find first) — lexical wording for BM25, paraphrases for the embedder
LEXICAL_QUERIES = [("radioactivity research Nobel", "curie"), ("largest hot desert", "sahara"),
                   ("highest mountain Himalayas", "everest")]
DENSE_QUERIES = [("woman scientist who studied radiation", "curie"), ("huge sandy dry region in Africa", "sahara"),
                 ("tallest peak on the planet", "everest"), ("fiddle string instrument", "violin")]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def embedder():
    """The real MiniLM model, loaded once; every index built in this module shares it."""
    return dense_mod.load_embedder()


@pytest.fixture
def home(tmp_path, monkeypatch, embedder):
    monkeypatch.setenv("SLEUTH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def jsonl(tmp_path):
    return write_jsonl(tmp_path / "passages.jsonl", PASSAGES)


def test_build_layout_meta_and_default_name(home, jsonl):
    path = build_index(jsonl, progress=False)
    assert path == paths.index_dir("passages")  # default name: the file stem
    for f in ("docs.sqlite", "meta.json", "lexical/body", "lexical/title", "dense/embeddings.npy",
              "dense/faiss.index"):
        assert (path / f).exists(), f
    ix = open_index("passages")
    assert ix.meta["count"] == len(ix.docs) == len(PASSAGES)
    assert ix.meta["engines"]["dense"]["faiss"] == "IndexFlatIP"
    assert set(ix.meta["build_seconds"]) >= {"read", "lexical", "embed", "faiss", "total"}
    emb = np.load(path / "dense" / "embeddings.npy")
    assert emb.dtype == np.float32 and emb.shape == (len(PASSAGES), 384)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assert [m["name"] for m in list_indexes()] == ["passages"]
    assert default_index_name() == "passages"


@pytest.mark.parametrize("kind,queries", [("lexical", LEXICAL_QUERIES), ("dense", DENSE_QUERIES),
                                          ("hybrid", LEXICAL_QUERIES + DENSE_QUERIES)])
def test_each_engine_finds_the_right_passage(home, jsonl, kind, queries):
    build_index(jsonl, name="t", progress=False)
    ix = open_index("t")
    eng = ix.engine(kind)
    assert ix.engine(kind) is eng  # cached
    responses = eng.search_batch([q for q, _ in queries], k=3)
    for (q, want), resp in zip(queries, responses):
        assert resp.error is None
        top = resp.results[0]
        assert top.passage_id == want, (kind, q, [r.passage_id for r in resp.results])
        assert top.engine == kind
        index_name, pid = parse_corpus_url(top.url)  # the URL leads back to the stored passage
        assert (index_name, pid) == ("t", want)
        assert ix.docs.get(pid).title == top.title
    single = eng.search(queries[0][0], k=2)
    assert single[0].passage_id == queries[0][1] and len(single) <= 2


@pytest.mark.parametrize("blocks", [1, 3])
def test_flat_knn_matches_faiss(home, jsonl, monkeypatch, blocks):
    """The exact product, in one block or split across worker threads (blocks of 2 rows here), ranks as
    faiss does."""
    if blocks > 1:
        monkeypatch.setattr(dense_mod, "_BLOCK_MIN_ROWS", 2)
        monkeypatch.setenv("SLEUTH_THREADS", str(blocks))
    build_index(jsonl, name="knn", progress=False)
    eng = open_index("knn").engine("dense")
    q = eng.encode([q for q, _ in DENSE_QUERIES])
    for k in (1, 3, len(PASSAGES)):
        want_s, want_r = eng.index.search(q, k)
        got_s, got_r = eng.knn(q, k)
        assert np.array_equal(got_r, want_r) and np.allclose(got_s, want_s, atol=1e-5)


def test_query_encoding_matches_sentence_transformers(embedder):
    texts = ["tallest peak on the planet", "a much longer question about who wrote which novel and when", "x"]
    want = embedder.encode(texts, normalize_embeddings=True)
    assert np.abs(dense_mod.encode_queries(embedder, texts) - want).max() < 1e-5


def test_folder_source_txt_md_html(home, tmp_path):
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "tides.txt").write_text("Tides are the rise and fall of sea levels caused by the Moon's gravity.")
    (folder / "sub" / "bees.md").write_text("# Honey bees\n\nHoney bees communicate with a waggle dance.")
    (folder / "page.html").write_text(
        "<html><head><title>Basalt rock</title></head><body><p>Basalt is a fine-grained volcanic rock formed "
        "from the rapid cooling of lava rich in magnesium and iron.</p></body></html>")
    path = build_index(folder, progress=False)
    assert path.name == "notes"
    ix = open_index("notes")
    assert len(ix.docs) == 3
    eng = ix.engine("hybrid")
    titles = [r.results[0].title for r in eng.search_batch(["waggle dance", "volcanic lava rock", "moon tides"], 1)]
    assert titles == ["Honey bees", "Basalt rock", "tides"]


def test_incremental_rebuild_reuses_embeddings(home, tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", PASSAGES)
    build_index(src, progress=False)
    old = np.load(paths.index_dir("c") / "dense" / "embeddings.npy")
    changed = [dict(p) for p in PASSAGES]
    changed[1]["text"] = "The Gobi is a large cold desert and grassland region in East Asia."
    changed.append({"id": "tea", "title": "Tea", "text": "Tea is an aromatic beverage made from Camellia leaves."})
    write_jsonl(src, changed)
    build_index(src, progress=False)
    ix = open_index("c")
    d = ix.meta["engines"]["dense"]
    assert (d["embedded"], d["reused"]) == (2, len(PASSAGES) - 1)
    new = np.load(paths.index_dir("c") / "dense" / "embeddings.npy")
    same = [i for i in range(len(PASSAGES)) if i != 1]
    assert np.array_equal(new[same], old[same])
    assert not np.allclose(new[1], old[1])
    hits = ix.engine("dense").search_batch(["cold desert in Asia", "aromatic drink from leaves"], 1)
    assert [h.results[0].passage_id for h in hits] == ["sahara", "tea"]


def test_interrupted_build_leaves_previous_index_usable(home, jsonl, monkeypatch):
    build_index(jsonl, name="keep", progress=False)
    root = paths.index_dir("keep").parent
    before = sorted(p.name for p in root.iterdir())

    def crash(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(dense_mod, "build_faiss", crash)  # fails after docs, lexical and embeddings are written
    bigger = write_jsonl(jsonl.parent / "bigger.jsonl", PASSAGES + [{"id": "x", "title": "X", "text": "extra"}])
    with pytest.raises(RuntimeError, match="disk full"):
        build_index(bigger, name="keep", progress=False)
    assert sorted(p.name for p in root.iterdir()) == before  # the half-built version was removed
    ix = open_index("keep")
    assert len(ix.docs) == len(PASSAGES)
    assert ix.engine("hybrid").search("largest hot desert", 1)[0].passage_id == "sahara"


def test_missing_and_incomplete_index_errors(home):
    with pytest.raises(IndexNotFound, match="sleuth index"):
        open_index("nope")
    with pytest.raises(IndexNotFound, match="run `sleuth index`"):
        default_index_name()
    broken = paths.index_dir("broken")
    broken.mkdir(parents=True)
    (broken / "docs.sqlite").write_bytes(b"")
    with pytest.raises(IndexNotFound, match="incomplete"):
        open_index("broken")
    with pytest.raises(ValueError, match="bad index name"):
        open_index("../etc")


def test_bad_sources(home, tmp_path):
    with pytest.raises(FileNotFoundError):
        build_index(tmp_path / "missing.jsonl", progress=False)
    dup = write_jsonl(tmp_path / "dup.jsonl", PASSAGES[:2] + PASSAGES[:1])
    with pytest.raises(ValueError, match="duplicate passage id 'curie'"):
        build_index(dup, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no passages"):
        build_index(empty, progress=False)
    assert list_indexes() == []


def test_lexical_only_index(home, jsonl):
    build_index(jsonl, name="lex", dense=False, progress=False)
    ix = open_index("lex")
    assert not (paths.index_dir("lex") / "dense").exists()
    assert ix.engine().name == "lexical"
    with pytest.raises(ValueError, match="without embeddings"):
        ix.engine("hybrid")
    with pytest.raises(ValueError, match="unknown engine"):
        ix.engine("bm42")
    # words the index never saw and stopword-only queries give no results, not errors
    resp = ix.engine("lexical").search_batch(["zzyzx qwerty", "the of and", "   "], 3)
    assert [(r.results, r.error) for r in resp] == [([], None)] * 3


def test_snippet_prefers_the_matching_sentence():
    text = ("Alpha beta gamma delta epsilon. " * 12) + "The treaty was signed in Utrecht in 1713. " + \
           ("Zeta eta theta iota kappa. " * 12)
    snip = make_snippet(text, "Where were the treaties of Utrecht signed?")
    assert snip.startswith("… The treaty was signed in Utrecht in 1713.")  # from the matching sentence on
    assert len(snip) <= 305
    assert make_snippet(text, "no such words").startswith("Alpha beta")  # no match: the passage's start
    assert make_snippet("Short  passage.\n", "x") == "Short passage."


def test_cli_index_and_search(home, jsonl, tmp_path, monkeypatch):
    from sleuth.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["index", str(jsonl), "--name", "cli", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "6 passages" in res.output and "on disk" in res.output

    res = runner.invoke(app, ["search", "largest hot desert", "highest mountain", "--index", "cli", "-k", "2",
                              "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert [r["query"] for r in out] == ["largest hot desert", "highest mountain"]
    assert [r["results"][0]["passage_id"] for r in out] == ["sahara", "everest"]
    assert all(len(r["results"]) == 2 and r["results"][0]["url"].startswith("corpus://cli/") for r in out)

    res = runner.invoke(app, ["search", "radioactivity", "--engine", "lexical"])  # default index: the only one
    assert res.exit_code == 0, res.output
    assert "Marie Curie" in res.output and "corpus://cli/curie" in res.output

    res = runner.invoke(app, ["search", "x", "--engine", "nope", "--index", "cli"])
    assert res.exit_code == 1 and "unknown engine" in res.output

    res = runner.invoke(app, ["index", str(tmp_path / "nothing.jsonl")])
    assert res.exit_code == 1 and "not found" in res.output

    monkeypatch.setenv("SLEUTH_HOME", str(tmp_path / "empty_home"))
    res = runner.invoke(app, ["search", "anything"])
    assert res.exit_code == 1 and "sleuth index" in res.output


def test_cli_bad_corpus_files_get_one_clear_line(tmp_path, monkeypatch):
    """A .jsonl.gz that is not gzip, a binary .jsonl, binary files in a folder: one line naming the file."""
    import random

    from sleuth.cli import app

    monkeypatch.setenv("SLEUTH_HOME", str(tmp_path / "home"))
    runner, rnd = CliRunner(), random.Random(0)
    notgz = tmp_path / "passages.jsonl.gz"
    notgz.write_text(json.dumps(PASSAGES[0]) + "\n")
    binary = tmp_path / "dump.jsonl"
    binary.write_bytes(b"\xf9" + rnd.randbytes(4000))
    for path, what in ((notgz, "not a valid gzip file"), (binary, "dump.jsonl:1: not UTF-8 text (byte 0xf9")):
        res = runner.invoke(app, ["index", str(path), "--no-dense", "--quiet"])
        assert res.exit_code == 1 and "Traceback" not in res.output
        assert res.output.count("\n") == 1 and str(path) in res.output and what in res.output, res.output

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "note.txt").write_text("Marie Curie won two Nobel Prizes.\n\nShe was born in Warsaw.")
    (folder / "latin1.txt").write_bytes("Curie naquit à Varsovie.".encode("latin-1"))   # text, not UTF-8
    (folder / "noise.txt").write_bytes(rnd.randbytes(6000))                             # NUL bytes and all
    (folder / "noise2.md").write_bytes(bytes(b for b in rnd.randbytes(6000) if b))      # no NUL byte
    res = runner.invoke(app, ["index", str(folder), "--name", "docs", "--no-dense", "--quiet"])
    assert res.exit_code == 0, res.output
    assert f"skipped {folder / 'noise.txt'}: binary" in res.output
    assert f"skipped {folder / 'noise2.md'}: binary" in res.output
    assert "2 passages" in res.output and "2 files skipped (not text)" in res.output
    assert open_index("docs").meta["skipped_files"][0].startswith(str(folder / "noise.txt"))


def test_top_k_selects_among_matching_passages_with_ties_by_row():
    from sleuth.search.lexical import top_k

    scores = np.array([0.0, 2.0, 5.0, 2.0, 0.0, 1.0])
    assert top_k(scores, 3) == [(2, 5.0), (1, 2.0), (3, 2.0)]
    assert top_k(scores, 10) == [(2, 5.0), (1, 2.0), (3, 2.0), (5, 1.0)]  # never a passage scoring 0
    assert top_k(np.zeros(4), 2) == [] and top_k(scores, 0) == []
    tied = np.zeros(1000)
    tied[::7] = 1.0
    tied[500] = 2.0
    assert top_k(tied, 4) == [(500, 2.0), (0, 1.0), (7, 1.0), (14, 1.0)]   # a tie at the cut: lowest rows


def test_prebuilt_pack_supplies_matching_passages_only(home, tmp_path, monkeypatch):
    """A shipped pack gives the passages whose content it holds their vectors (within int8 rounding); the rest,
    an edited passage included, are embedded; --no-prebuilt computes everything."""
    from sleuth.search import prebuilt
    from sleuth.search.corpus import Passage, content_hash

    src = write_jsonl(tmp_path / "c.jsonl", PASSAGES)
    build_index(src, name="exact", progress=False, use_prebuilt=False)
    exact = np.load(paths.index_dir("exact") / "dense" / "embeddings.npy")
    d = open_index("exact").meta["engines"]["dense"]
    hashes = [content_hash(Passage(p["id"], p["title"], p["text"])) for p in PASSAGES]
    pack_dir = tmp_path / "packs"
    prebuilt.write_pack(hashes[:4], exact[:4], d["model"], d["embedder"], d["max_tokens"], pack_dir,
                        version=d["embedder_version"])
    prebuilt.write_pack(hashes, exact * 0, d["model"], "another-backend", d["max_tokens"], pack_dir)
    monkeypatch.setattr(prebuilt, "PACK_DIR", pack_dir)

    changed = [dict(p) for p in PASSAGES]
    changed[1]["text"] = "The Gobi is a large cold desert and grassland region in East Asia."
    build_index(write_jsonl(tmp_path / "c2.jsonl", changed), name="packed", progress=False)
    d = open_index("packed").meta["engines"]["dense"]
    assert (d["prebuilt"], d["embedded"], d["reused"]) == (3, len(PASSAGES) - 3, 0)
    got = np.load(paths.index_dir("packed") / "dense" / "embeddings.npy")
    cos = (got * exact).sum(1)
    assert cos[[0, 2, 3]].min() > 0.999 and not np.array_equal(got[0], exact[0])   # pack vectors, rounded
    assert np.allclose(got[4:], exact[4:], atol=1e-6)                                  # embedded as before
    assert cos[1] < 0.9                                                                # the edit was re-embedded
    hits = open_index("packed").engine("dense").search_batch([q for q, _ in DENSE_QUERIES], 1)
    assert [h.results[0].passage_id for h in hits] == [pid for _, pid in DENSE_QUERIES]

    build_index(src, name="nopack", progress=False, use_prebuilt=False)
    assert open_index("nopack").meta["engines"]["dense"]["prebuilt"] == 0


def test_pack_roundtrip_and_damaged_pack_is_a_miss(tmp_path):
    import hashlib

    from sleuth.search import prebuilt

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 384)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    hashes = [hashlib.sha1(str(i).encode()).hexdigest() for i in range(50)]
    prebuilt.write_pack(hashes, emb, "m", "e", 128, tmp_path)
    pack = prebuilt.load_pack("m", "e", 128, tmp_path)
    found, vecs = prebuilt.lookup(pack, [hashes[7], "f" * 40, hashes[3]])
    assert found == [0, 2] and ((vecs * emb[[7, 3]]).sum(1) > 0.999).all()
    assert prebuilt.load_pack("m", "e", 256, tmp_path) is None
    prebuilt.write_pack(hashes, emb, "m", "e", 128, tmp_path / "v", version="export-1")   # another export's pack
    assert prebuilt.load_pack("m", "e", 128, tmp_path / "v", version="export-2") is None
    assert prebuilt.load_pack("m", "e", 128, tmp_path / "v", version="export-1") is not None
    with pytest.raises(ValueError, match="share"):
        prebuilt.write_pack([hashes[0], hashes[0]], emb[:2], "m", "e", 128, tmp_path / "dup")
    (tmp_path / f"{prebuilt.pack_name('m', 'e', 128)}.npz").write_bytes(b"not a zip")
    assert prebuilt.load_pack("m", "e", 128, tmp_path) is None
