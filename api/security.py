"""What every answer carries on the wire: security headers, CORS, rate and body limits.

- **Headers**: a strict Content-Security-Policy (scripts, styles, fetches and images from
  the app's own origin only, plus the base-map tile server when ``map_tile_url`` is set;
  no inline script or style, no framing, no plugins), ``nosniff``, no referrer, no
  framing, and the browser features the page does not use switched off. The interactive
  API docs (``/docs``, ``/redoc``) are FastAPI's pages, which load their script from a CDN
  and run an inline one: they get a policy that allows exactly that.
- **CORS** is closed unless ``cors_origins`` lists the origins a browser may call the API
  from (``CITYOPS_CORS_ORIGINS``, comma-separated): no other origin gets an
  ``Access-Control-Allow-Origin``.
- **Logs**: the access log shows the query strings of requests, and the live channel's
  ``EventSource`` (which cannot send headers) carries its token as ``access_token``
  there: ``RedactCredentials`` blanks such values before uvicorn writes the line.
- **Rate limits** per client address, in a moving window (the ``limits`` library):
  ``rate_limit_public`` on the routes anyone may call without an account (Open311, the
  OGC API, the sign-in routes) and the stricter ``rate_limit_login`` on the sign-in
  routes. Over the limit: 429 with ``Retry-After``. ``"0"`` turns a limit off. The
  counters live in the process: with several API processes each counts on its own.
  The client address is the peer's; behind a reverse proxy, start uvicorn with
  ``--forwarded-allow-ips`` so that it is the caller's.
- **Body limit**: 413 for a request body over the app's limit (``api.app.MAX_BODY_BYTES``).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import FastAPI
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors
from infra.settings import Settings

DOCS_PATHS = ("/docs", "/redoc")
DOCS_CDN = "https://cdn.jsdelivr.net"
PUBLIC_PREFIXES = (errors.OPEN311_PREFIX, errors.OGC_PREFIX, "/api/v1/auth/")
LOGIN_PREFIXES = ("/api/v1/auth/dev-token",)


def content_security_policy(map_tile_url: str | None) -> str:
    """The page's policy: everything from the app's origin, tiles from their server."""
    images = "'self' data:"
    if map_tile_url:
        parts = urlsplit(map_tile_url)
        images += f" {parts.scheme}://{parts.netloc}"
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src {images}",
            "connect-src 'self'",
            "font-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


DOCS_POLICY = "; ".join(
    (
        "default-src 'self'",
        f"script-src 'self' 'unsafe-inline' {DOCS_CDN}",
        f"style-src 'self' {DOCS_CDN}",
        "img-src 'self' data: https://fastapi.tiangolo.com",
        "worker-src blob:",
        "object-src 'none'",
        "frame-ancestors 'none'",
    )
)


def _headers(policy: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-security-policy", policy.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
    ]


CREDENTIAL_QUERY = re.compile(r"((?:^|[?&;])(?:access_token|api_key|token)=)[^&;#\s]*", re.I)


def redact(text: str) -> str:
    """``text`` with the values of credential query parameters replaced by ``***``."""
    return CREDENTIAL_QUERY.sub(r"\1***", text)


class RedactCredentials(logging.Filter):
    """Blanks credentials in query strings of a log record's arguments (uvicorn's access
    log passes the request path with its query as an argument)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def redact_access_log() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactCredentials) for f in access.filters):
        access.addFilter(RedactCredentials())


@dataclass(frozen=True)
class Limit:
    """A rate limit on the paths under ``prefixes``; no items: off."""

    name: str
    prefixes: tuple[str, ...]
    items: Sequence[RateLimitItem]


def parse_limit(text: str) -> list[RateLimitItem]:
    """``"60/minute"``, ``"10/second; 300/hour"``: the limits' notation; ``"0"``/empty: off."""
    text = text.strip()
    if text in ("", "0"):
        return []
    return list(parse_many(text))


class RateLimits:
    """Which client is over one of ``limits`` on the path it calls, and for how long."""

    def __init__(self, limits: Iterable[Limit]) -> None:
        self.limits = [lim for lim in limits if lim.items]
        # Every limited prefix at once: most requests are under none, one test tells.
        self.prefixes = tuple(p for lim in self.limits for p in lim.prefixes)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    def retry_after(self, path: str, client: str) -> int | None:
        """Seconds until the client may call ``path`` again; None when it may now."""
        if not path.startswith(self.prefixes):
            return None
        for lim in self.limits:
            if not path.startswith(lim.prefixes):
                continue
            for item in lim.items:
                if not self.limiter.hit(item, lim.name, client):
                    reset = self.limiter.get_window_stats(item, lim.name, client).reset_time
                    return max(1, math.ceil(reset - time.time()))
        return None


def content_length(scope: Scope) -> bytes | None:
    """The request's Content-Length header as sent, None without one."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return bytes(value)
    return None


class Edge:
    """What every HTTP request passes through before the app, in one ASGI layer:

    1. the headers above on every answer (those already set are kept), the CORS, 429 and
       413 answers included;
    2. CORS, when origins are configured (Starlette's ``CORSMiddleware``, here inside);
    3. the rate limits: 429 with ``Retry-After`` for a client over one on the path;
    4. the body limit: 413 for bodies over ``max_body_bytes``, by Content-Length and
       counted while streaming (a chunked request has none to check up front); the 413
       raised while reading reaches the app's error handlers like any HTTP error.

    One layer rather than one per concern: each layer costs every request a call and a
    wrapped ``send`` or ``receive``, and this runs on every command.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        map_tile_url: str | None,
        limits: Iterable[Limit],
        max_body_bytes: int,
        cors_origins: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.page = _headers(content_security_policy(map_tile_url))
        self.docs = _headers(DOCS_POLICY)
        self.limits = RateLimits(limits)
        self.max_body_bytes = max_body_bytes
        self.too_large = f"request body larger than {max_body_bytes} bytes"
        self.inner: ASGIApp = self.guarded
        if cors_origins:
            self.inner = CORSMiddleware(
                self.guarded,
                allow_origins=list(cors_origins),
                allow_methods=["GET", "POST", "PATCH", "DELETE"],
                allow_headers=["Authorization", "Content-Type", "X-API-Key", "Idempotency-Key"],
                max_age=600,
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self.docs if scope["path"] in DOCS_PATHS else self.page

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in extra if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.inner(scope, receive, send_with_headers)

    async def guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The rate and body limits, then the app."""
        client = scope["client"][0] if scope.get("client") else "unknown"
        wait = self.limits.retry_after(scope["path"], client)
        if wait is not None:
            answer = errors.respond(
                Request(scope),
                429,
                f"too many requests, retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
            await answer(scope, receive, send)
            return
        length = content_length(scope)
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await errors.respond(Request(scope), 413, self.too_large)(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise StarletteHTTPException(413, self.too_large)
            return message

        await self.app(scope, counting_receive, send)


TOO_MANY: dict[int | str, dict[str, str]] = {
    429: {"description": "Too many requests from this address: see Retry-After"}
}


def documented_limits(settings: Settings, prefix: str) -> dict[int | str, dict[str, str]]:
    """The 429 answer for the OpenAPI document of the routes under ``prefix``, when limited."""
    on = parse_limit(settings.rate_limit_public) or parse_limit(settings.rate_limit_login)
    under = f"{prefix.rstrip('/')}/"
    limited = any(under.startswith(p) for p in PUBLIC_PREFIXES)
    return dict(TOO_MANY) if on and limited else {}


def install(app: FastAPI, settings: Settings, max_body_bytes: int) -> None:
    """``Edge`` around the app (inside FastAPI's error handling), and the log's redaction."""
    redact_access_log()
    app.add_middleware(
        Edge,
        map_tile_url=settings.map_tile_url,
        limits=[
            Limit("login", LOGIN_PREFIXES, parse_limit(settings.rate_limit_login)),
            Limit("public", PUBLIC_PREFIXES, parse_limit(settings.rate_limit_public)),
        ],
        max_body_bytes=max_body_bytes,
        cors_origins=settings.cors_origin_list(),
    )
