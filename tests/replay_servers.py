"""A real HTTP server on 127.0.0.1 that replays the web APIs' documented response formats and serves pages.

Search APIs (shapes as documented by each service):
  GET  /search?q=..&format=json        SearXNG   {"query", "number_of_results", "results": [...], ...}
  POST /search  (Bearer auth)          Tavily    {"query", "answer", "results": [...], "response_time", ...}
  GET  /res/v1/web/search (X-Subscription-Token)  Brave  {"type": "search", "query": {...}, "web": {"results"}}

Faults on demand: ``server.fail_next("429", times=2, retry_after=1)`` makes the next two API calls fail that
way; ``server.fail_query["bad"] = "500"`` makes one query always fail. Modes: 429, 500, 503, hang, garbage
(not JSON), shape (JSON of the wrong structure), nokey (JSON without results), empty, auth.

``ChatReplayServer`` replays scripted OpenAI chat-completions responses (and failures) and records the requests.

Pages for the browser: /article, /long, /plain, /huge, /garbage, /blank, /binary, /pdf (broken), /paper.pdf, /sniff-binary,
/hang, /drip, /notfound, /redirect?to=<url>, /chain/<n>, /loop.

``chat_server(replies)``: a separate loopback server answering OpenAI chat completions with scripted replies
(an LLM judge's server).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

API_KEY = "test-key-123"

# ------------------------------------------------------------------------------------------ fixtures

EIFFEL = [
    ("Eiffel Tower - Wikipedia", "https://en.wikipedia.org/wiki/Eiffel_Tower",
     "The <strong>Eiffel Tower</strong> is a wrought-iron lattice tower on the Champ de Mars in Paris, "
     "France. It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
     "from 1887 to 1889."),
    ("Eiffel Tower | History, Height, &amp; Facts | Britannica",
     "https://www.britannica.com/topic/Eiffel-Tower-Paris-France",
     "Eiffel Tower, Parisian landmark that is also a technological masterpiece in building-construction "
     "history. It was 300 metres (984 feet) high when completed."),
    ("Official website Eiffel Tower", "https://www.toureiffel.paris/en",
     "Plan your visit to the <em>Eiffel Tower</em>: tickets, opening hours &amp; access."),
]


def _rows(query: str) -> list[tuple[str, str, str]]:
    if "eiffel" in query.lower():
        return EIFFEL
    slug = "_".join(query.split()) or "x"
    return [(f"{query} ({i})", f"https://example.org/{slug}/{i}", f"About <b>{query}</b>, part {i}.")
            for i in range(1, 6)]


def searxng_body(query: str, empty: bool = False) -> dict:
    rows = [] if empty else _rows(query)
    results = []
    for i, (title, url, content) in enumerate(rows):
        scheme, rest = url.split("://", 1)
        host, _, path = rest.partition("/")
        results.append({
            "url": url, "title": title, "content": content, "publishedDate": None, "thumbnail": "",
            "engine": "duckduckgo", "template": "default.html",
            "parsed_url": [scheme, host, "/" + path, "", "", ""], "img_src": "", "priority": "",
            "engines": ["duckduckgo", "wikipedia"], "positions": [i + 1, i + 2],
            "score": round(4.0 / (i + 1), 4), "category": "general"})
    return {"query": query, "number_of_results": 0, "results": results, "answers": [], "corrections": [],
            "infoboxes": [], "suggestions": [f"{query} history"], "unresponsive_engines": [["brave", "timeout"]]}


def tavily_body(query: str, max_results: int = 5, empty: bool = False) -> dict:
    rows = [] if empty else _rows(query)[:max_results]
    return {"query": query, "follow_up_questions": None, "answer": None, "images": [],
            "results": [{"url": url, "title": title, "content": content, "score": round(0.9 - 0.1 * i, 4),
                         "raw_content": None, "favicon": None}
                        for i, (title, url, content) in enumerate(rows)],
            "response_time": 0.42, "request_id": "123e4567-e89b-12d3-a456-426614174111"}


def brave_body(query: str, count: int = 20, empty: bool = False) -> dict:
    body: dict = {"type": "search",
                  "query": {"original": query, "show_strict_warning": False, "is_navigational": False,
                            "is_news_breaking": False, "spellcheck_off": True, "country": "us",
                            "bad_results": False, "should_fallback": False, "postal_code": "", "city": "",
                            "header_country": "", "more_results_available": True, "state": ""},
                  "mixed": {"type": "mixed", "main": [], "top": [], "side": []}}
    if empty:
        return body  # Brave leaves out the "web" section when nothing matched
    results = []
    for title, url, desc in _rows(query)[:count]:
        host = url.split("://", 1)[1].split("/", 1)[0]
        results.append({"title": title, "url": url, "is_source_local": False, "is_source_both": False,
                        "description": desc, "profile": {"name": host, "url": url, "long_name": host,
                                                         "img": ""},
                        "language": "en", "family_friendly": True, "type": "search_result",
                        "subtype": "generic", "is_live": False,
                        "meta_url": {"scheme": "https", "netloc": host, "hostname": host, "favicon": "",
                                     "path": ""},
                        "age": "August 1, 2025"})
    body["mixed"]["main"] = [{"type": "web", "index": i, "all": False} for i in range(len(results))]
    body["web"] = {"type": "search", "results": results, "family_friendly": True}
    return body


ARTICLE_PARAS = [
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named "
    "after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889.",
    "Locally nicknamed La dame de fer, it was constructed as the centrepiece of the 1889 World's Fair, and "
    "to crown the centennial anniversary of the French Revolution. Although initially criticised by some of "
    "France's leading artists and intellectuals for its design, it has since become a global cultural icon "
    "of France and one of the most recognisable structures in the world.",
    "The tower received 5,889,000 visitors in 2022. The Eiffel Tower is the most visited monument with an "
    "entrance fee in the world: 6.91 million people ascended it in 2015. It was designated a monument "
    "historique in 1964, and was named part of a UNESCO World Heritage Site in 1991.",
    "The tower is 330 metres tall, about the same height as an 81-storey building, and the tallest "
    "structure in Paris. Its base is square, measuring 125 metres on each side.",
]


def article_html(title: str, paras: list[str]) -> str:
    body = "\n".join(f"<p>{p}</p>" for p in paras)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
            "<style>body{font-family:serif}</style><script>var tracking = 1;</script></head><body>"
            "<nav><a href='/'>Home</a> | <a href='/about'>About</a></nav>"
            f"<article><h1>{title}</h1>\n{body}\n</article>"
            "<footer>Copyright 2025 Example Encyclopedia. All rights reserved.</footer></body></html>")


LONG_TOPICS = ["geology of the Alps", "glacier retreat", "alpine farming", "the Gotthard tunnel",
               "avalanche protection", "Swiss watchmaking", "the Rhine basin", "mountain railways"]


def long_paras() -> list[str]:
    """A page of ~24 paragraphs on distinct topics, so paging, find and goal ranking have work to do."""
    out = []
    for i in range(24):
        topic = LONG_TOPICS[i % len(LONG_TOPICS)]
        out.append(f"Section {i + 1} is about {topic}. " + " ".join(
            f"This sentence number {j} adds detail on {topic} for paragraph {i + 1}." for j in range(5)))
    out[17] += " The Gotthard Base Tunnel opened in 2016 and is 57 kilometres long."
    return out


GARBAGE_HTML = (b"<html><head><title>Broken & <b>weird</title><body><div><p>Readable words survive "
                b"here<p><table><tr><td>cell one<td>cell two</table></div></span></i>"
                b"\xff\xfe\x80 <<<>>> <p>More readable text after the junk.</i></b>"
                b"<a href=\"x>unterminated <script>var x = '</script></ht")

PNG_BYTES = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
             b"\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00"
             b"\x00\x00IEND\xaeB`\x82")


PDF_PAGES = ["The Eiffel Tower is 330 metres tall.", "Tokyo Tower was completed in 1958 and is 333 metres tall."]


def text_pdf(pages: list[str], title: str) -> bytes:
    """A minimal valid PDF (one Helvetica text line per page, an Info title, a correct xref table)."""
    objs = ["<< /Type /Catalog /Pages 2 0 R >>", None, "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
            f"<< /Title ({title}) >>"]
    kids = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objs.append(f"<< /Length {len(stream)} >>\nstream\n{stream.decode()}\nendstream")
        objs.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
                    f"/Contents {len(objs)} 0 R >>")
        kids.append(f"{len(objs)} 0 R")
    objs[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R /Info 4 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


# ------------------------------------------------------------------------------------------ server

class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    # -- helpers
    def _send(self, code: int, body: bytes | str, ctype: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        if isinstance(body, str):
            body = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj: dict, headers: dict[str, str] | None = None) -> None:
        self._send(code, json.dumps(obj), "application/json", headers)

    def _record(self, body: bytes) -> None:
        self.server.owner.requests.append(
            {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})

    def _wait(self, seconds: float) -> None:
        self.server.owner.stop.wait(seconds)  # released at shutdown, so no test waits on a hung handler

    # -- dispatch
    def do_GET(self) -> None:
        self._safe(b"")

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        self._safe(self.rfile.read(n) if n else b"")

    def _safe(self, body: bytes) -> None:
        try:
            self._dispatch(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout tests): expected

    def _dispatch(self, body: bytes) -> None:
        self._record(body)
        url = urlsplit(self.path)
        qs = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path
        if path == "/search" and self.command == "GET":
            return self._api("searxng", qs.get("q", ""), qs)
        if path == "/search" and self.command == "POST":
            try:
                payload = json.loads(body or b"{}")
            except json.JSONDecodeError:
                return self._json(400, {"detail": {"error": "Invalid JSON body"}})
            return self._api("tavily", str(payload.get("query", "")), payload)
        if path == "/res/v1/web/search":
            return self._api("brave", qs.get("q", ""), qs)
        return self._page(path, qs)

    def _api(self, api: str, query: str, params: dict) -> None:
        owner = self.server.owner
        mode = owner.fail_query.get(query) or owner.take_fault()
        if mode is None and not self._authorised(api):
            mode = "auth"
        if mode == "hang":
            self._wait(owner.hang_seconds)
            return self._json(200, searxng_body(query))
        if mode == "429":
            headers = {"Retry-After": str(owner.retry_after)} if owner.retry_after is not None else {}
            if api == "brave":
                return self._json(429, {"type": "ErrorResponse", "error": {
                    "id": "e1", "status": 429, "code": "RATE_LIMITED", "detail": "Request rate limit exceeded for plan.",
                    "meta": {"plan": "Free", "rate_limit": 1, "rate_current": 2, "component": "rate_limiter"}}},
                    headers)
            return self._json(429, {"detail": {"error": "Rate limit exceeded. Please slow down."}}, headers)
        if mode in ("500", "503"):
            return self._send(int(mode), f"<html><body><h1>{mode} Server Error</h1></body></html>", "text/html")
        if mode == "garbage":
            return self._send(200, b"<html>\x00\xff not json {\"results\": [", "application/json")
        if mode == "shape":  # valid JSON, wrong structure
            return self._json(200, {"results": {"not": "a list"}, "web": ["not", "an object"]})
        if mode == "nokey":  # valid JSON without the results at all
            return self._json(200, {"query": query, "response_time": 0.1})
        if mode == "auth":
            if api == "brave":  # Brave answers a bad token with 422, not 401
                return self._json(422, {"type": "ErrorResponse", "error": {
                    "id": "e2", "status": 422, "code": "SUBSCRIPTION_TOKEN_INVALID",
                    "detail": "The provided subscription token is invalid.", "meta": {"component": "authentication"}}})
            if api == "searxng":
                return self._send(403, "<html><body>403 Forbidden</body></html>", "text/html")
            return self._json(401, {"detail": {"error": "Unauthorized: missing or invalid API key."}})
        empty = mode == "empty"
        if api == "searxng":
            if params.get("format") != "json":
                return self._send(403, "<html><body>403 Forbidden</body></html>", "text/html")
            return self._json(200, searxng_body(query, empty))
        if api == "tavily":
            return self._json(200, tavily_body(query, int(params.get("max_results", 5)), empty))
        return self._json(200, brave_body(query, int(params.get("count", 20)), empty))

    def _authorised(self, api: str) -> bool:
        if api == "tavily":
            return self.headers.get("Authorization") == f"Bearer {API_KEY}"
        if api == "brave":
            return self.headers.get("X-Subscription-Token") == API_KEY
        return True

    def _page(self, path: str, qs: dict) -> None:
        owner = self.server.owner
        if path == "/article":
            return self._send(200, article_html("The Eiffel Tower &amp; Paris", ARTICLE_PARAS),
                              "text/html; charset=utf-8")
        if path == "/long":
            return self._send(200, article_html("Switzerland notes", long_paras()), "text/html; charset=utf-8")
        if path == "/plain":
            return self._send(200, "Plain notes\n\nThe answer is 42.\n", "text/plain; charset=utf-8")
        if path == "/garbage":
            return self._send(200, GARBAGE_HTML, "text/html")
        if path == "/blank":
            return self._send(200, "<html><head></head><body><script>x=1</script></body></html>", "text/html")
        if path == "/binary":
            return self._send(200, PNG_BYTES, "image/png")
        if path == "/pdf":       # a header and nothing else: a broken PDF
            return self._send(200, b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "application/pdf")
        if path == "/paper.pdf":  # a real two-page PDF with a text layer
            return self._send(200, text_pdf(PDF_PAGES, "Tower survey"), "application/pdf")
        if path == "/sniff-binary":  # no Content-Type at all
            self.send_response(200)
            self.send_header("Content-Length", str(len(PNG_BYTES)))
            self.end_headers()
            return self.wfile.write(PNG_BYTES)
        if path == "/huge":
            # No Content-Length: the client only learns the size by reading, so its cap must act mid-stream.
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(b"<html><head><title>Huge page</title></head><body>")
            para = b"<p>" + b"Endless filler text about nothing in particular. " * 20 + b"</p>\n"
            sent = 0
            while sent < owner.huge_bytes:
                self.wfile.write(para)
                sent += len(para)
            return None
        if path == "/hang":
            self._wait(owner.hang_seconds)
            return self._send(200, article_html("Late", ["Too late."]), "text/html")
        if path == "/drip":  # headers at once, then a byte at a time: only a total-time cap stops it
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            for _ in range(200):
                self.wfile.write(b"<p>x</p>")
                self.wfile.flush()
                if owner.stop.wait(0.05):
                    break
            return None
        if path == "/notfound":
            return self._send(404, "<html><body>Not Found</body></html>", "text/html")
        if path == "/redirect":
            return self._send(302, "", "text/html", {"Location": qs.get("to", "/article")})
        if path.startswith("/chain/"):
            n = int(path.rsplit("/", 1)[1])
            return self._send(301, "", "text/html", {"Location": f"/chain/{n - 1}" if n > 1 else "/article"})
        if path == "/loop":
            return self._send(302, "", "text/html", {"Location": "/loop"})
        return self._send(404, "<html><body>Not Found</body></html>", "text/html")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: "ReplayServer"

    def handle_error(self, request, client_address) -> None:  # client disconnects are expected here
        pass


class ReplayServer:
    """``with ReplayServer() as srv: srv.url + "/article"``; fault injection via fail_next / fail_query."""

    def __init__(self, hang_seconds: float = 5.0, huge_bytes: int = 6_000_000):
        self.hang_seconds = hang_seconds
        self.huge_bytes = huge_bytes
        self.retry_after: float | int | None = None
        self.fail_query: dict[str, str] = {}
        self.requests: list[dict] = []
        self.stop = threading.Event()
        self._faults: deque[str] = deque()
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def start(self) -> "ReplayServer":
        self._thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=2)

    def __enter__(self) -> "ReplayServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def fail_next(self, mode: str, times: int = 1, retry_after: float | int | None = None) -> None:
        """The next ``times`` API calls fail with ``mode`` (429, 500, 503, hang, garbage, shape, nokey, empty, auth)."""
        with self._lock:
            self._faults.extend([mode] * times)
            if retry_after is not None:
                self.retry_after = retry_after

    def take_fault(self) -> str | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
        self.fail_query.clear()
        self.requests.clear()
        self.retry_after = None

    def api_calls(self) -> int:
        return sum(1 for r in self.requests if r["path"].startswith(("/search", "/res/")))


# ------------------------------------------------------------------------- OpenAI-compatible chat
def chat_server(replies: list[tuple[int, str]]):
    """Loopback OpenAI-compatible chat-completions server: answers each POST with the next scripted
    (status, text) reply. Returns (server, base_url, the JSON bodies it received); shut it down when done."""
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            requests.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
            status, text = replies.pop(0)
            body = ({"id": "chatcmpl-1", "object": "chat.completion", "created": 1718000000, "model": "judge",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": "stop", "logprobs": None}],
                     "usage": {"prompt_tokens": 200, "completion_tokens": 12, "total_tokens": 212}}
                    if status == 200 else
                    {"error": {"message": text, "type": "server_error", "param": None, "code": None}})
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1", requests


# ------------------------------------------------------------------------------------------ chat completions

def completion(message: dict, finish: str = "stop") -> dict:
    """A chat.completion object as documented in the OpenAI API reference."""
    return {"id": "chatcmpl-9xYz", "object": "chat.completion", "created": 1718000000,
            "model": "gpt-test", "system_fingerprint": "fp_test",
            "choices": [{"index": 0, "message": {"role": "assistant", "refusal": None, **message},
                         "logprobs": None, "finish_reason": finish}],
            "usage": {"prompt_tokens": 31, "completion_tokens": 9, "total_tokens": 40}}


def tool_calls(*calls: tuple[str, str | dict], content: str | None = None) -> dict:
    """A completion whose message calls tools, as OpenAI returns it (content null, arguments a JSON string)."""
    return completion({"content": content, "tool_calls": [
        {"id": f"call_{i}{name}", "type": "function",
         "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}
        for i, (name, args) in enumerate(calls)]}, finish="tool_calls")


def api_error(message: str, kind: str, code: str | None) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class ChatReplayServer:
    """A loopback OpenAI-format server that replays scripted chat-completions responses and records every
    request exactly as received: ``srv.add(200, completion({...}))``, then point a client at ``srv.url``."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict, dict[str, str], float]] = []
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append({"path": self.path, "json": json.loads(body),
                                       "auth": self.headers.get("Authorization")})
                status, payload, headers, delay = (outer.script.pop(0) if outer.script else
                                                   (500, api_error("script exhausted", "server_error", None), {}, 0))
                time.sleep(delay)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, status: int, payload: dict, headers: dict[str, str] | None = None, delay: float = 0.0) -> None:
        self.script.append((status, payload, headers or {}, delay))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


if __name__ == "__main__":  # handy for poking at by hand: python tests/replay_servers.py
    with ReplayServer() as srv:
        print(f"serving on {srv.url} (Ctrl-C to stop)")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
