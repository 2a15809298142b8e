"""The service's guard, in front of every route (API, OpenAI endpoint, MCP): pure ASGI middleware.

* **Token**: with a token configured, every API request needs ``Authorization: Bearer <token>`` (the page and
  its assets are public; they hold no data). ``sleuth serve`` refuses to bind beyond loopback without one.
* **Host header**: on loopback only loopback host names are accepted, so a web page elsewhere cannot reach
  the API by DNS rebinding.
* **Request size**: bodies over ``max_body_bytes`` get 413 before the application sees them (Content-Length,
  or counted as they arrive when there is none).
* **Rate**: a token bucket per client address; over it, 429 with ``Retry-After``.

Refusals use OpenAI's error shape, like every other error of the service.
"""

from __future__ import annotations

import hmac
import json
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
PUBLIC_PATHS = ("/", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)


@dataclass
class SecurityConfig:
    token: str | None = None
    max_body_bytes: int = 256 * 1024
    rate_per_s: float = 20.0
    """Sustained requests per second per client address (token bucket refill)."""
    burst: int = 100
    """Requests a client may make at once before the rate applies."""
    loopback_only_hosts: bool = True
    """Accept only loopback Host headers (set when the server binds to loopback)."""


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_NAMES or host.startswith("127.")


async def _send_error(send, status: int, message: str, code: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error" if status < 500 else
                                 "server_error", "param": None, "code": code}}).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


class _Buckets:
    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self._state: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """0 when the request may go now, else the seconds until it could."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._state.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._state[client] = (tokens - 1, now)
                return 0.0
            self._state[client] = (tokens, now)
            if len(self._state) > 10000:      # forget idle clients so the table stays bounded
                self._state = {k: v for k, v in self._state.items() if now - v[1] < 60}
            return (1 - tokens) / self.rate


class Guard:
    def __init__(self, app: Any, cfg: SecurityConfig):
        self.app, self.cfg = app, cfg
        self.buckets = _Buckets(cfg.rate_per_s, cfg.burst)
        self.refused: dict[str, int] = {"auth": 0, "host": 0, "size": 0, "rate": 0}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        if self.cfg.loopback_only_hosts:
            host = headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
            if not is_loopback(name):
                self.refused["host"] += 1
                return await _send_error(send, 421, f"host {host!r} is not served here (loopback only)", "bad_host")
        public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
        if self.cfg.token and not public:
            auth = headers.get("authorization", "")
            given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            if not given or not hmac.compare_digest(given.encode(), self.cfg.token.encode()):
                self.refused["auth"] += 1
                return await _send_error(send, 401, "a valid token is required: send 'Authorization: Bearer "
                                                    "<token>'", "unauthorized", {"www-authenticate": "Bearer"})
        if not public:
            client = (scope.get("client") or ("?", 0))[0]
            wait = self.buckets.take(client)
            if wait > 0:
                self.refused["rate"] += 1
                return await _send_error(send, 429, f"too many requests; retry in {wait:.1f} s", "rate_limited",
                                         {"retry-after": str(max(1, math.ceil(wait)))})
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return await _send_error(send, 400, "invalid Content-Length", "bad_request")
            if int(length) > self.cfg.max_body_bytes:
                self.refused["size"] += 1
                return await _send_error(send, 413, f"request body of {length} bytes is over the limit of "
                                                    f"{self.cfg.max_body_bytes}", "request_too_large")
            return await self.app(scope, receive, send)
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        # no Content-Length (chunked): read the body here, counting, and hand it on whole
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            size += len(msg.get("body", b""))
            if size > self.cfg.max_body_bytes:
                self.refused["size"] += 1
                return await _send_error(send, 413, f"request body is over the limit of {self.cfg.max_body_bytes} "
                                                    "bytes", "request_too_large")
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        return await self.app(scope, replay, send)


class Router:
    """Sends each request to the application that owns its path prefix (longest first), else the default.
    Lifespan events go to the default application, which starts and stops the others' resources."""

    def __init__(self, default: Any, mounts: dict[str, Any]):
        self.default = default
        self.mounts = sorted(mounts.items(), key=lambda kv: -len(kv[0]))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            path = scope.get("path", "")
            for prefix, app in self.mounts:
                if path == prefix or path.startswith(prefix + "/"):
                    return await app(scope, receive, send)
        return await self.default(scope, receive, send)
