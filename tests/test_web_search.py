"""Web search engines against a real loopback server replaying each API's response format and faults."""

from __future__ import annotations

import json
import socket
import time
from email.utils import formatdate

import httpx
import pytest

from replay_servers import API_KEY, ReplayServer
from sleuth.search.base import SearchError
from sleuth.search.web import (BraveEngine, SearxngEngine, TavilyEngine, _retry_after, make_web_engine,
                               strip_html)

FAST = dict(timeout=2.0, backoff=0.01, max_backoff=0.05, retry_after_cap=0.2)


@pytest.fixture(scope="module")
def srv():
    with ReplayServer(hang_seconds=3.0) as s:
        yield s


@pytest.fixture(autouse=True)
def _clean(srv):
    srv.reset()
    yield


def engines(srv, **kw):
    opts = {**FAST, **kw}
    return [SearxngEngine(srv.url, **opts), TavilyEngine(API_KEY, base_url=srv.url, **opts),
            BraveEngine(API_KEY, base_url=srv.url, **opts)]


# ------------------------------------------------------------------------------------------ formats

def test_searxng_parses_replayed_format(srv):
    res = SearxngEngine(srv.url, **FAST).search("eiffel tower", k=2)
    assert [r.url for r in res] == ["https://en.wikipedia.org/wiki/Eiffel_Tower",
                                    "https://www.britannica.com/topic/Eiffel-Tower-Paris-France"]
    assert res[0].snippet.startswith("The Eiffel Tower is a wrought-iron")  # <strong> removed
    assert res[1].title == "Eiffel Tower | History, Height, & Facts | Britannica"  # &amp; decoded
    assert res[0].score > res[1].score > 0 and {r.engine for r in res} == {"searxng"}
    sent = srv.requests[-1]
    assert "format=json" in sent["path"] and "q=eiffel+tower" in sent["path"]


def test_tavily_parses_and_sends_bearer_key(srv):
    res = TavilyEngine(API_KEY, base_url=srv.url, **FAST).search("eiffel tower", k=3)
    assert len(res) == 3 and res[2].url == "https://www.toureiffel.paris/en"
    assert res[2].snippet == "Plan your visit to the Eiffel Tower: tickets, opening hours & access."
    assert [r.score for r in res] == [0.9, 0.8, 0.7]
    sent = srv.requests[-1]
    assert sent["method"] == "POST" and sent["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert json.loads(sent["body"])["max_results"] == 3


def test_brave_parses_and_sends_subscription_token(srv):
    res = BraveEngine(API_KEY, base_url=srv.url, **FAST).search("rust borrow checker", k=4)
    assert len(res) == 4
    assert res[0].snippet == "About rust borrow checker, part 1."  # <b> stripped
    assert res[0].score > res[3].score  # rank order becomes the score
    sent = srv.requests[-1]
    assert sent["headers"]["X-Subscription-Token"] == API_KEY and "count=4" in sent["path"]


def test_empty_results_are_an_empty_list(srv):
    for eng in engines(srv):
        srv.fail_next("empty")
        assert eng.search("nothing matches this") == []


def test_k_is_respected_and_zero_k_sends_nothing(srv):
    eng = SearxngEngine(srv.url, **FAST)
    assert len(eng.search("many things", k=3)) == 3  # SearXNG has no count parameter: cut client-side
    calls = srv.api_calls()
    assert eng.search("many things", k=0) == [] and srv.api_calls() == calls


# ------------------------------------------------------------------------------------------ faults

def test_429_is_retried_honouring_retry_after_then_succeeds(srv):
    srv.fail_next("429", times=2, retry_after=1)
    eng = TavilyEngine(API_KEY, base_url=srv.url, **FAST)
    t0 = time.perf_counter()
    res = eng.search("eiffel tower")
    took = time.perf_counter() - t0
    assert res and srv.api_calls() == 3
    # Retry-After: 1 is honoured but capped at retry_after_cap=0.2 -> two waits of 0.2 s.
    assert 0.35 <= took < 1.5


def test_429_exhausted_gives_clear_error(srv):
    srv.fail_next("429", times=3, retry_after=0)
    with pytest.raises(SearchError, match=r"^Tavily: HTTP 429 rate limited after 3 tries$"):
        TavilyEngine(API_KEY, base_url=srv.url, tries=3, **FAST).search("q")
    assert srv.api_calls() == 3


@pytest.mark.parametrize("code", ["500", "503"])
def test_5xx_exhausted_gives_clear_error(srv, code):
    srv.fail_next(code, times=2)
    with pytest.raises(SearchError, match=rf"^SearXNG: HTTP {code} server error after 2 tries$"):
        SearxngEngine(srv.url, tries=2, **FAST).search("q")
    assert srv.api_calls() == 2


def test_5xx_then_success(srv):
    srv.fail_next("500", times=1)
    assert BraveEngine(API_KEY, base_url=srv.url, **FAST).search("x", k=2)
    assert srv.api_calls() == 2


def test_timeout_is_retried_then_reported(srv):
    srv.fail_next("hang", times=2)
    t0 = time.perf_counter()
    with pytest.raises(SearchError, match=r"^SearXNG: timed out \(0.2s\) after 2 tries$"):
        SearxngEngine(srv.url, tries=2, **{**FAST, "timeout": 0.2}).search("q")
    assert time.perf_counter() - t0 < 1.5


def test_connection_refused_is_reported(srv):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SearchError, match=r"^Brave: connection failed .* after 2 tries$"):
        BraveEngine(API_KEY, base_url=f"http://127.0.0.1:{port}", tries=2, **FAST).search("q")


def test_garbage_body_is_a_search_error_without_retry(srv):
    srv.fail_next("garbage")
    with pytest.raises(SearchError, match=r"^Tavily: malformed JSON response"):
        TavilyEngine(API_KEY, base_url=srv.url, **FAST).search("q")
    assert srv.api_calls() == 1


@pytest.mark.parametrize("which", [0, 1, 2])
def test_json_of_wrong_shape_is_a_search_error(srv, which):
    eng = engines(srv)[which]
    srv.fail_next("shape")
    with pytest.raises(SearchError, match=rf"^{eng.label}: malformed response"):
        eng.search("q")


def test_json_without_results_is_a_search_error(srv):
    srv.fail_query["no results key"] = "nokey"
    with pytest.raises(SearchError, match=r"^Tavily: malformed response: no 'results' in the answer$"):
        TavilyEngine(API_KEY, base_url=srv.url, **FAST).search("no results key")


def test_auth_errors_are_not_retried(srv):
    with pytest.raises(SearchError, match=r"^Tavily: HTTP 401 authentication failed \(check TAVILY_API_KEY\): "
                                          r"Unauthorized: missing or invalid API key\.$"):
        TavilyEngine("wrong-key", base_url=srv.url, **FAST).search("q")
    assert srv.api_calls() == 1
    # Brave signals a bad token with 422 SUBSCRIPTION_TOKEN_INVALID.
    with pytest.raises(SearchError, match=r"^Brave: HTTP 422 authentication failed \(check BRAVE_API_KEY\): "
                                          r"SUBSCRIPTION_TOKEN_INVALID"):
        BraveEngine("wrong-key", base_url=srv.url, **FAST).search("q")
    assert srv.api_calls() == 2
    srv.fail_next("auth")
    with pytest.raises(SearchError, match=r"^SearXNG: HTTP 403 forbidden \(is 'json' listed in search.formats"):
        SearxngEngine(srv.url, **FAST).search("q")
    assert srv.api_calls() == 3


def test_search_batch_isolates_a_failing_query(srv):
    srv.fail_query["broken query"] = "500"
    eng = TavilyEngine(API_KEY, base_url=srv.url, tries=2, **FAST)
    out = eng.search_batch(["eiffel tower", "broken query", "solar power"], k=2)
    assert [r.query for r in out] == ["eiffel tower", "broken query", "solar power"]
    assert out[0].error is None and len(out[0].results) == 2
    assert out[2].error is None and out[2].results[0].title == "solar power (1)"
    assert out[1].results == [] and out[1].error == "Tavily: HTTP 500 server error after 2 tries"


def test_empty_query_is_refused_without_a_request(srv):
    with pytest.raises(SearchError, match="empty query"):
        SearxngEngine(srv.url, **FAST).search("   ")
    assert srv.api_calls() == 0


# ------------------------------------------------------------------------------------------ config

def test_keys_and_url_from_environment(srv, monkeypatch):
    monkeypatch.setenv("SEARXNG_URL", srv.url)
    monkeypatch.setenv("TAVILY_API_KEY", API_KEY)
    monkeypatch.setenv("BRAVE_API_KEY", API_KEY)
    for kind in ("searxng", "tavily", "brave"):
        kw = {} if kind == "searxng" else {"base_url": srv.url}
        eng = make_web_engine(kind, **kw, **FAST)
        assert eng.name == kind and eng.search("eiffel tower", k=1)[0].title == "Eiffel Tower - Wikipedia"


def test_missing_keys_and_unknown_kind_fail_clearly(monkeypatch):
    for var in ("SEARXNG_URL", "TAVILY_API_KEY", "BRAVE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="TAVILY_API_KEY"):
        make_web_engine("tavily")
    with pytest.raises(ValueError, match="BRAVE_API_KEY"):
        make_web_engine("brave")
    with pytest.raises(ValueError, match="SEARXNG_URL"):
        make_web_engine("searxng")
    with pytest.raises(ValueError, match="choose from: searxng, tavily, brave"):
        make_web_engine("bing")


def test_retry_after_forms():
    assert _retry_after(httpx.Response(429, headers={"Retry-After": "7"})) == 7.0
    dated = _retry_after(httpx.Response(429, headers={"Retry-After": formatdate(time.time() + 30, usegmt=True)}))
    assert 25 <= dated <= 31
    assert _retry_after(httpx.Response(429, headers={"X-RateLimit-Reset": "1, 2591976"})) == 1.0
    assert _retry_after(httpx.Response(429, headers={"Retry-After": "soon"})) is None
    assert _retry_after(httpx.Response(429)) is None


def test_strip_html():
    assert strip_html("The <strong>Eiffel</strong>\n  Tower &amp; <em>Paris</em>") == "The Eiffel Tower & Paris"
    assert strip_html(None) == ""
