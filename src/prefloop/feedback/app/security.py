"""Authentication, per-token rate limiting, request size limits and security headers.

Tokens come only in the Authorization header (Bearer), never in cookies, so a cross-site page
cannot make the browser act as an annotator. Rate limits are per authenticated token, not per
IP (X-Forwarded-For is spoofable). The one call without a token, POST /api/login, is limited per
connecting address instead (behind a reverse proxy that is the proxy's: all logins share it).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Hashable
from typing import Any

from sqlalchemy import Engine

from prefloop.feedback.accounts import Principal, authenticate, hash_secret

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]


class TokenCache:
    """token hash -> Principal for a few seconds: most requests then skip the database."""

    def __init__(self, engine: Engine, ttl_s: float, max_entries: int = 10_000) -> None:
        self.engine, self.ttl_s, self.max_entries = engine, ttl_s, max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def cached(self, token: str) -> Principal | None:
        """The cached owner of `token`, without touching the database."""
        with self._lock:
            hit = self._entries.get(hash_secret(token))
        return hit[1] if hit and hit[0] > time.monotonic() else None

    def lookup(self, token: str) -> Principal | None:
        hit = self.cached(token)
        if hit is not None:
            return hit
        key, now = hash_secret(token), time.monotonic()
        user = authenticate(self.engine, token)
        if user is not None and self.ttl_s > 0:
            with self._lock:
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
                self._entries[key] = (now + self.ttl_s, user)
        return user

    def forget(self, annotator_id: int) -> None:
        with self._lock:
            for key in [k for k, (_, u) in self._entries.items() if u.id == annotator_id]:
                del self._entries[key]


class RateLimiter:
    """Token bucket per key (annotator id, or address for logins): `rate` requests/s on
    average, bursts up to `burst`."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: dict[Hashable, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, key: Hashable) -> float:
        """0 if the request may go ahead (and is counted), else seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            if len(self._buckets) > self.max_keys:  # many addresses: forget (refill) them all
                self._buckets.clear()
            tokens, at = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


class GuardMiddleware:
    """Pure ASGI middleware: security headers on every response, 413 for oversized bodies
    (checked on Content-Length and again while streaming, for chunked uploads)."""

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app, self.max_body = app, max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _too_large(send, self.max_body)
            return
        seen = 0
        overflow = False  # a streamed (chunked) body went over the limit

        async def limited_receive() -> Any:
            nonlocal seen, overflow
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    overflow = True
                    raise _BodyTooLarge()
            return message

        async def send_with_headers(message: Any) -> None:
            if overflow:  # whatever the app answers to the aborted read, the answer is 413
                if message["type"] == "http.response.start":
                    await _too_large(send, self.max_body)
                return
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except _BodyTooLarge:
            await _too_large(send, self.max_body)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Any, limit: int) -> None:
    body = json.dumps({"detail": f"request body larger than {limit} bytes"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), *SECURITY_HEADERS],
        }
    )
    await send({"type": "http.response.body", "body": body})


def retry_after_header(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}
