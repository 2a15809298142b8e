"""Fetch a web page as readable text, safely: the agent chooses the URLs, so they are not trusted.

Guards: http/https only; every host (first hop and each redirect, followed by hand) is resolved and refused
if any address is loopback, private, link-local, multicast, reserved or otherwise not global; the connection
itself is made only to an address that passed the same check, so a DNS answer that changes between check and
connect (DNS rebinding) cannot slip through. Size and total time are capped; non-text content is refused.
"""

from __future__ import annotations

import html as htmllib
import ipaddress
import re
import socket
import time
from dataclasses import dataclass
from typing import Any, Iterable
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from sleuth.search.corpus import html_to_text

DEFAULT_USER_AGENT = "Mozilla/5.0 (compatible; sleuth/0.1; research agent)"
REDIRECT_CODES = {301, 302, 303, 307, 308}
HTML_TYPES = {"text/html", "application/xhtml+xml"}
PDF_TYPES = {"application/pdf", "application/x-pdf"}
TEXT_TYPES = {"text/plain", "text/markdown", "text/x-markdown", "text/csv", "application/json",
              "application/xml", "text/xml"}


class FetchError(RuntimeError):
    """A page could not be fetched; ``kind`` is short and machine-readable (blocked, timeout, http_404, ...)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class WebPage:
    url: str              # final URL after redirects
    title: str
    text: str
    content_type: str
    status: int
    truncated: bool       # the body was cut at max_bytes
    seconds: float


# --------------------------------------------------------------------------------------- address policy

def address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address must not be fetched from ("a loopback address"), or None if it is public."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return address_problem(ip.ipv4_mapped)
    for attr, what in (("is_loopback", "a loopback"), ("is_link_local", "a link-local"),
                       ("is_multicast", "a multicast"), ("is_unspecified", "an unspecified"),
                       ("is_private", "a private"), ("is_reserved", "a reserved")):
        if getattr(ip, attr):
            return f"{what} address"
    if not ip.is_global:  # e.g. 100.64.0.0/10 carrier-grade NAT
        return "a non-global address"
    return None


def resolve(host: str, port: int) -> list[str]:
    """All addresses the host resolves to (an IP literal resolves to itself)."""
    try:
        return [ipaddress.ip_address(host.strip("[]")).compressed]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise FetchError("dns", f"cannot resolve host {host!r}: {e}") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


def _host_key(host: str) -> str:
    return host.strip("[]").lower().rstrip(".")


class _GuardedBackend(httpcore.SyncBackend):
    """Connects only to vetted addresses: the socket-level half of the SSRF guard (closes DNS rebinding)."""

    def __init__(self, allowed_hosts: Iterable[str] = ()):
        super().__init__()
        self.allowed = {_host_key(h) for h in allowed_hosts}

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None, socket_options: Any = None) -> httpcore.NetworkStream:
        if _host_key(host) in self.allowed:
            return super().connect_tcp(host, port, timeout, local_address, socket_options)
        try:
            addrs = resolve(host, port)
        except FetchError as e:
            raise httpcore.ConnectError(str(e)) from None
        for a in addrs:
            problem = address_problem(ipaddress.ip_address(a))
            if problem:
                raise httpcore.ConnectError(f"refusing to connect to {host} ({a} is {problem})")
        last: Exception | None = None
        for a in addrs:  # connect to the address we checked, not to a fresh DNS answer
            try:
                return super().connect_tcp(a, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as e:
                last = e
        raise last or httpcore.ConnectError(f"cannot connect to {host}")


def _guarded_transport(allowed_hosts: Iterable[str]) -> httpx.HTTPTransport:
    transport = httpx.HTTPTransport(trust_env=False)
    # httpx has no public hook for the network backend; swap in a pool built with ours (httpcore's public API).
    if hasattr(transport, "_pool"):
        transport._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0,
            network_backend=_GuardedBackend(allowed_hosts))
    return transport


# --------------------------------------------------------------------------------------- text extraction

_META_CHARSET = re.compile(rb"""<meta[^>]+charset=["']?\s*([A-Za-z0-9_.:-]+)""", re.I)


def _decode(raw: bytes, header_charset: str | None) -> str:
    for enc in (header_charset, _sniff_charset(raw), "utf-8"):
        if enc:
            try:
                return raw.decode(enc, errors="replace")
            except LookupError:  # unknown charset name
                continue
    return raw.decode("utf-8", errors="replace")


def _sniff_charset(raw: bytes) -> str | None:
    m = _META_CHARSET.search(raw[:4096])
    return m.group(1).decode("ascii", "ignore") if m else None


def extract_text(markup: str) -> tuple[str, str]:
    """(title, text) of an HTML page; broken markup degrades to tag stripping, never an exception."""
    try:
        title, text = html_to_text(markup)
    except Exception:  # trafilatura/lxml can choke on truly broken input; plain stripping still gives words
        title = ""
        m = re.search(r"<title[^>]*>(.*?)</title>", markup, re.I | re.S)
        if m:
            title = m.group(1)
        text = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", markup, flags=re.I | re.S)
        text = re.sub(r"<[^>]*>", " ", text)
    title = re.sub(r"\s+", " ", htmllib.unescape(re.sub(r"<[^>]*>", "", title))).strip()
    text = htmllib.unescape(text).replace("\x00", "")
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r"\n\s*\n+", "\n\n", text).strip()
    return title, text


def pdf_text(raw: bytes, url: str, truncated: bool = False, max_pages: int = 200) -> tuple[str, str]:
    """(title, text) of a PDF: its pages' text, each page headed "[page n]" so the reader knows where it is.
    A PDF cut at max_bytes, encrypted, scanned (no text layer) or broken is a FetchError that says which."""
    import io

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    if truncated:
        raise FetchError("too_large", f"cannot read the PDF at {url}: it is larger than the size limit")
    try:
        reader = PdfReader(io.BytesIO(raw))
        if reader.is_encrypted:
            raise FetchError("content_type", f"cannot read the PDF at {url}: it is encrypted")
        pages = []
        for i, page in enumerate(reader.pages[:max_pages], 1):
            t = (page.extract_text() or "").strip()
            if t:
                pages.append(f"[page {i}]\n{t}")
        meta_title = str((reader.metadata or {}).get("/Title") or "").strip()
    except FetchError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, IndexError, OSError) as e:
        raise FetchError("content_type", f"cannot read the PDF at {url}: {type(e).__name__}: {e}") from None
    if not pages:
        raise FetchError("empty_page", f"no text in the PDF at {url} (scanned pages without a text layer?)")
    text = re.sub(r"[ \t]+", " ", "\n\n".join(pages)).replace("\x00", "")
    title = meta_title or urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1] or "PDF"
    return title, text


def _looks_binary(raw: bytes) -> bool:
    head = raw[:1024]
    return b"\x00" in head or head.startswith((b"%PDF", b"\x89PNG", b"GIF8", b"\xff\xd8\xff", b"PK\x03\x04"))


# --------------------------------------------------------------------------------------- fetcher

class WebFetcher:
    """``WebFetcher().fetch(url) -> (final_url, title, text)``; every failure is a FetchError."""

    def __init__(self, timeout: float = 10, max_bytes: int = 2_000_000, allow_private: bool = False,
                 user_agent: str = DEFAULT_USER_AGENT, max_seconds: float | None = None,
                 max_redirects: int = 5, allowed_hosts: Iterable[str] = ()):
        """
        timeout: seconds for connecting and for each read. max_seconds: cap on one whole fetch, redirects
        included (default 3 x timeout). max_bytes: body bytes read at most; longer pages are cut there.
        allow_private: permit loopback/private addresses (local servers, tests). allowed_hosts: host names
        (or IP literals) exempt from the address check, e.g. an intranet wiki, without opening everything.
        """
        self.timeout = float(timeout)
        self.max_seconds = float(max_seconds) if max_seconds is not None else 3 * self.timeout
        self.max_bytes = int(max_bytes)
        self.allow_private = allow_private
        self.max_redirects = max_redirects
        self.allowed_hosts = {_host_key(h) for h in allowed_hosts}
        transport = None if allow_private else _guarded_transport(self.allowed_hosts)
        # trust_env off: a proxy from the environment would bypass the address checks.
        self.client = httpx.Client(timeout=httpx.Timeout(self.timeout), follow_redirects=False,
                                   trust_env=False, transport=transport,
                                   headers={"User-Agent": user_agent,
                                            "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.5"})

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "WebFetcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- checks
    def check_url(self, url: str) -> None:
        """Raise FetchError('blocked'/'bad_url') if the URL may not be fetched."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise FetchError("bad_url", f"malformed URL {url!r}: {e}") from None
        if parts.scheme not in ("http", "https"):
            raise FetchError("bad_url", f"refusing {url!r}: only http and https URLs can be fetched")
        host = parts.hostname
        if not host:
            raise FetchError("bad_url", f"malformed URL {url!r}: no host")
        if self.allow_private or _host_key(host) in self.allowed_hosts:
            return
        port = port or (443 if parts.scheme == "https" else 80)
        for a in resolve(host, port):
            problem = address_problem(ipaddress.ip_address(a))
            if problem:
                shown = host if host == a else f"{host} ({a})"
                raise FetchError("blocked", f"refusing to fetch {url}: {shown} is {problem}")

    # -- fetching
    def fetch(self, url: str) -> tuple[str, str, str]:
        page = self.fetch_page(url)
        return page.url, page.title, page.text

    def fetch_page(self, url: str) -> WebPage:
        t0 = time.monotonic()
        deadline = t0 + self.max_seconds
        current = url.strip() if isinstance(url, str) else ""
        for _hop in range(self.max_redirects + 1):
            self.check_url(current)
            try:
                with self.client.stream("GET", current) as resp:
                    if resp.status_code in REDIRECT_CODES and resp.headers.get("location"):
                        current = urljoin(current, resp.headers["location"])
                        if time.monotonic() > deadline:
                            raise FetchError("timeout", f"gave up on {url}: over {self.max_seconds:g}s in all")
                        continue
                    if resp.status_code >= 400:
                        raise FetchError(f"http_{resp.status_code}",
                                         f"HTTP {resp.status_code} {resp.reason_phrase} for {current}")
                    ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
                    if ctype and ctype not in HTML_TYPES and ctype not in TEXT_TYPES and ctype not in PDF_TYPES \
                            and not ctype.startswith("text/"):
                        raise FetchError("content_type", f"cannot read {current}: content type {ctype!r} is "
                                                         "not text (only HTML, plain text and PDF can be read)")
                    raw, truncated = self._read(resp, deadline, url)
                    charset = resp.charset_encoding
                    status = resp.status_code
            except httpx.TimeoutException:
                raise FetchError("timeout", f"timed out fetching {current} (after {self.timeout:g}s)") from None
            except httpx.TransportError as e:
                if "refusing to connect" in str(e):
                    raise FetchError("blocked", f"refusing to fetch {current}: {e}") from None
                raise FetchError("network", f"cannot fetch {current}: {type(e).__name__}: {e}") from None
            if ctype in PDF_TYPES or (ctype in ("", "application/octet-stream") and raw.startswith(b"%PDF")):
                title, text = pdf_text(raw, current, truncated)
                return WebPage(current, title, text, "application/pdf", status, truncated, time.monotonic() - t0)
            if not ctype and _looks_binary(raw):
                raise FetchError("content_type", f"cannot read {current}: the body is binary, not text")
            text_body = _decode(raw, charset)
            if ctype in HTML_TYPES or (not ctype and "<" in text_body[:1000]):
                title, text = extract_text(text_body)
            else:
                title, text = "", text_body.replace("\x00", "").strip()
            if not text.strip():
                raise FetchError("empty_page", f"no readable text on {current} (scripts or images only?)")
            if not title:
                title = urlsplit(current).path.rstrip("/").rsplit("/", 1)[-1] or urlsplit(current).hostname or ""
            return WebPage(current, title, text, ctype or "unknown", status, truncated, time.monotonic() - t0)
        raise FetchError("too_many_redirects", f"gave up on {url}: more than {self.max_redirects} redirects")

    def _read(self, resp: httpx.Response, deadline: float, url: str) -> tuple[bytes, bool]:
        """Stream the body up to max_bytes and until the deadline; (body, was it cut)."""
        chunks: list[bytes] = []
        size = 0
        for chunk in resp.iter_bytes():
            if time.monotonic() > deadline:
                raise FetchError("timeout", f"gave up on {url}: over {self.max_seconds:g}s in all")
            chunks.append(chunk)
            size += len(chunk)
            if size >= self.max_bytes:
                return b"".join(chunks)[: self.max_bytes], True
        return b"".join(chunks), False
