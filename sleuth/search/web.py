"""Web search APIs behind the SearchEngine interface: SearXNG (self-hosted), Tavily, Brave.

Faults are normal on the web: timeouts, 429 rate limits and 5xx are retried with exponential backoff and
jitter (a 429's Retry-After is honoured, capped); authentication and other client errors are not retried.
Whatever finally fails becomes a ``SearchError`` whose message says what happened, so the agent sees it as
an observation ("Tavily: HTTP 429 rate limited after 3 tries").
"""

from __future__ import annotations

import email.utils
import html
import json
import os
import random
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx

from sleuth.search.base import SearchEngine, SearchError, SearchResult

_TAG = re.compile(r"<[^>]+>")
_WS = re.compile(r"\s+")


def strip_html(s: Any) -> str:
    """Snippets arrive with <strong> highlights and entities; the model should see plain text."""
    if not isinstance(s, str):
        return ""
    return _WS.sub(" ", html.unescape(_TAG.sub("", s))).strip()


@dataclass
class RetryPolicy:
    """How hard to try before a query's failure is reported."""
    tries: int = 3                 # attempts in all (1 = no retry)
    backoff: float = 0.5           # first backoff in seconds; doubles each retry
    max_backoff: float = 8.0       # cap of one exponential backoff
    retry_after_cap: float = 10.0  # never wait longer than this for a server's Retry-After

    def delay(self, attempt: int) -> float:
        """Exponential backoff with 'equal jitter': half fixed, half random, so clients spread out."""
        d = min(self.max_backoff, self.backoff * (2 ** attempt))
        return d / 2 + random.uniform(0, d / 2)


def _retry_after(resp: httpx.Response) -> float | None:
    """Seconds the server asked us to wait: Retry-After (seconds or HTTP date) or Brave's X-RateLimit-Reset."""
    value = resp.headers.get("retry-after")
    if value:
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
                return max(0.0, when.timestamp() - time.time())
            except (TypeError, ValueError):
                return None
    reset = resp.headers.get("x-ratelimit-reset")  # Brave: "<per-second window>, <per-month window>"
    if reset:
        try:
            return max(0.0, float(reset.split(",")[0]))
        except ValueError:
            return None
    return None


def _error_detail(resp: httpx.Response) -> str:
    """The human part of an API error body: Tavily {"detail":{"error":..}}, Brave {"error":{"code","detail"}}."""
    try:
        body = resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return strip_html(resp.text)[:200]
    parts: list[str] = []

    def walk(x: Any) -> None:
        if isinstance(x, str):
            parts.append(x)
        elif isinstance(x, dict):
            for key in ("code", "error", "detail", "message"):
                if key in x:
                    walk(x[key])
    walk(body)
    return ": ".join(dict.fromkeys(p.strip() for p in parts if p.strip()))[:300]


class HttpSearchEngine(SearchEngine):
    """Shared HTTP plumbing: one httpx client, retries, and error messages that name the service."""

    name = "web"
    label = "Web"          # how messages name the service
    key_env = "the API key"  # where the key comes from, named in authentication errors

    def __init__(self, timeout: float = 10.0, retry: RetryPolicy | None = None,
                 client: httpx.Client | None = None, **retry_kw: Any):
        self.timeout = float(timeout)
        if retry is not None and retry_kw:
            raise ValueError("give either retry=RetryPolicy(...) or its fields as keywords, not both")
        self.retry = retry or RetryPolicy(**retry_kw)
        if self.retry.tries < 1:
            raise ValueError("RetryPolicy.tries must be at least 1")
        # trust_env stays on: users behind a proxy reach their search API through it.
        self.client = client or httpx.Client(timeout=httpx.Timeout(self.timeout),
                                             headers={"User-Agent": "sleuth/0.1 (research agent)"})

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "HttpSearchEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _client_error(self, code: int, detail: str) -> str:
        """Message for a 4xx answer (not retried)."""
        tail = f": {detail}" if detail else ""
        # Brave reports a bad key as 422 SUBSCRIPTION_TOKEN_INVALID, not 401.
        if code in (401, 403) or "TOKEN" in detail.upper():
            return f"HTTP {code} authentication failed (check {self.key_env}){tail}"
        return f"HTTP {code} request rejected{tail}"

    def _fail(self, what: str) -> SearchError:
        return SearchError(f"{self.label}: {what}")

    def _request(self, method: str, url: str, **kw: Any) -> Any:
        """Send with retries; return the decoded JSON body or raise SearchError."""
        tries = self.retry.tries
        last = ""
        for attempt in range(tries):
            wait: float | None = None
            try:
                resp = self.client.request(method, url, **kw)
            except httpx.TimeoutException:
                last = f"timed out ({self.timeout:g}s)"
            except httpx.TransportError as e:
                last = f"connection failed ({type(e).__name__}: {e})"
            else:
                code = resp.status_code
                if code == 429:
                    last = "HTTP 429 rate limited"
                    ra = _retry_after(resp)
                    if ra is not None:
                        wait = min(ra, self.retry.retry_after_cap)
                elif code >= 500:
                    last = f"HTTP {code} server error"
                elif code >= 400:  # client errors: retrying cannot help
                    raise self._fail(self._client_error(code, _error_detail(resp)))
                elif code >= 300:
                    raise self._fail(f"HTTP {code} unexpected redirect to {resp.headers.get('location', '?')}")
                else:
                    try:
                        return resp.json()
                    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
                        snippet = strip_html(resp.text)[:80]
                        raise self._fail(f"malformed JSON response (HTTP {code}): {snippet!r}") from None
            if attempt + 1 < tries:
                time.sleep(self.retry.delay(attempt) if wait is None else wait)
        plural = "try" if tries == 1 else "tries"
        raise self._fail(f"{last} after {tries} {plural}")

    @staticmethod
    def _results_list(body: Any, *path: str, required: bool = True) -> list:
        """body[path...] as a list. A wrong type is malformed; so is a missing branch, unless not required."""
        node = body
        for key in path:
            if not isinstance(node, dict):
                raise SearchError(f"malformed response: expected a JSON object, got {type(node).__name__}")
            node = node.get(key)
            if node is None:
                if required:
                    raise SearchError(f"malformed response: no {'.'.join(path)!r} in the answer")
                return []
        if not isinstance(node, list):
            raise SearchError(f"malformed response: {'.'.join(path)} is {type(node).__name__}, not a list")
        return node

    def _parse(self, body: Any, k: int) -> list[SearchResult]:
        raise NotImplementedError

    def _check_query(self, query: str) -> str:
        if not isinstance(query, str) or not query.strip():
            raise self._fail("empty query")
        return query.strip()

    def _safe_parse(self, body: Any, k: int) -> list[SearchResult]:
        try:
            return self._parse(body, k)
        except SearchError as e:
            raise self._fail(str(e)) from None


def _env_or(value: str | None, env: str) -> str | None:
    return value if value else (os.environ.get(env) or None)


class SearxngEngine(HttpSearchEngine):
    """A SearXNG instance's JSON API (GET /search?q=..&format=json).

    The instance must allow the json format (settings.yml: search.formats includes json), else it answers 403.
    SearXNG has no result-count parameter: one page (~10-20 results) is fetched and cut to k.
    """

    name = "searxng"
    label = "SearXNG"

    def __init__(self, base_url: str | None = None, categories: str = "general", language: str | None = None,
                 **kw: Any):
        base_url = _env_or(base_url, "SEARXNG_URL")
        if not base_url:
            raise ValueError("SearXNG needs an instance URL: pass base_url or set SEARXNG_URL")
        self.base_url = base_url.rstrip("/")
        self.categories = categories
        self.language = language
        super().__init__(**kw)

    def search(self, query: str, k: int = 10) -> list[SearchResult]:
        query = self._check_query(query)
        if k <= 0:
            return []
        params = {"q": query, "format": "json", "categories": self.categories}
        if self.language:  # else the instance's default language
            params["language"] = self.language
        body = self._request("GET", f"{self.base_url}/search", params=params,
                             headers={"Accept": "application/json"})
        return self._safe_parse(body, k)

    def _client_error(self, code: int, detail: str) -> str:
        if code == 403:  # the usual cause: the instance serves HTML only
            return ("HTTP 403 forbidden (is 'json' listed in search.formats of the instance's settings.yml?)"
                    + (f": {detail}" if detail else ""))
        return super()._client_error(code, detail)

    def _parse(self, body: Any, k: int) -> list[SearchResult]:
        # results[] of {title, url, content, score}: SearXNG's shape, and Tavily's too
        out = []
        for r in self._results_list(body, "results"):
            if isinstance(r, dict) and isinstance(r.get("url"), str) and r["url"]:
                score = r.get("score")
                out.append(SearchResult(title=strip_html(r.get("title")) or r["url"], url=r["url"],
                                        snippet=strip_html(r.get("content")),
                                        score=float(score) if isinstance(score, (int, float)) else 0.0,
                                        engine=self.name))
        return out[:k]


class TavilyEngine(HttpSearchEngine):
    """Tavily search (POST /search, Authorization: Bearer <key>)."""

    name = "tavily"
    label = "Tavily"
    key_env = "TAVILY_API_KEY"
    MAX_RESULTS = 20  # the API's limit for max_results

    def __init__(self, api_key: str | None = None, base_url: str = "https://api.tavily.com",
                 search_depth: str = "basic", **kw: Any):
        api_key = _env_or(api_key, "TAVILY_API_KEY")
        if not api_key:
            raise ValueError("Tavily needs an API key: pass api_key or set TAVILY_API_KEY")
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.search_depth = search_depth
        super().__init__(**kw)

    def search(self, query: str, k: int = 10) -> list[SearchResult]:
        query = self._check_query(query)
        if k <= 0:
            return []
        payload = {"query": query, "max_results": min(k, self.MAX_RESULTS), "search_depth": self.search_depth,
                   "include_answer": False, "include_raw_content": False}
        body = self._request("POST", f"{self.base_url}/search", json=payload,
                             headers={"Authorization": f"Bearer {self.api_key}"})
        return self._safe_parse(body, k)

    _parse = SearxngEngine._parse   # same results[] of {title, url, content, score}


class BraveEngine(HttpSearchEngine):
    """Brave Web Search (GET /res/v1/web/search, X-Subscription-Token header)."""

    name = "brave"
    label = "Brave"
    key_env = "BRAVE_API_KEY"
    MAX_COUNT = 20  # the API's limit for count

    def __init__(self, api_key: str | None = None, base_url: str = "https://api.search.brave.com", **kw: Any):
        api_key = _env_or(api_key, "BRAVE_API_KEY")
        if not api_key:
            raise ValueError("Brave needs an API key: pass api_key or set BRAVE_API_KEY")
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        super().__init__(**kw)

    def search(self, query: str, k: int = 10) -> list[SearchResult]:
        query = self._check_query(query)
        if k <= 0:
            return []
        body = self._request("GET", f"{self.base_url}/res/v1/web/search",
                             params={"q": query, "count": min(k, self.MAX_COUNT)},
                             headers={"Accept": "application/json", "X-Subscription-Token": self.api_key})
        return self._safe_parse(body, k)

    def _parse(self, body: Any, k: int) -> list[SearchResult]:
        out = []
        # Brave leaves out the "web" section entirely when nothing matched.
        rows = [r for r in self._results_list(body, "web", "results", required=False)
                if isinstance(r, dict) and isinstance(r.get("url"), str) and r["url"]]
        for i, r in enumerate(rows[:k]):
            # Brave gives no relevance score; the rank order is the signal.
            out.append(SearchResult(title=strip_html(r.get("title")) or r["url"], url=r["url"],
                                    snippet=strip_html(r.get("description")), score=1.0 / (1 + i),
                                    engine=self.name))
        return out


WEB_ENGINES: dict[str, type[HttpSearchEngine]] = {
    "searxng": SearxngEngine, "tavily": TavilyEngine, "brave": BraveEngine}


def make_web_engine(kind: str, **kw: Any) -> HttpSearchEngine:
    """``make_web_engine("tavily", api_key=...)``; keys and URLs default to TAVILY_API_KEY/BRAVE_API_KEY/SEARXNG_URL."""
    cls = WEB_ENGINES.get(kind.lower().strip())
    if cls is None:
        raise ValueError(f"unknown web search engine {kind!r} (choose from: {', '.join(WEB_ENGINES)})")
    return cls(**kw)
