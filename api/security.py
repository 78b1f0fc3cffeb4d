"""What every answer carries on the wire: security headers, CORS, and rate limits.

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


class SecurityHeaders:
    """Adds the headers above to every HTTP answer (those already set are kept)."""

    def __init__(self, app: ASGIApp, map_tile_url: str | None) -> None:
        self.app = app
        self.page = _headers(content_security_policy(map_tile_url))
        self.docs = _headers(DOCS_POLICY)

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

        await self.app(scope, receive, send_with_headers)


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


class RateLimit:
    """429 with ``Retry-After`` for a client over one of ``limits`` on the path it calls."""

    def __init__(self, app: ASGIApp, limits: Iterable[Limit]) -> None:
        self.app = app
        self.limits = [lim for lim in limits if lim.items]
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    def _retry_after(self, path: str, client: str) -> int | None:
        """Seconds until the client may call ``path`` again; None when it may now."""
        for lim in self.limits:
            if not path.startswith(lim.prefixes):
                continue
            for item in lim.items:
                if not self.limiter.hit(item, lim.name, client):
                    reset = self.limiter.get_window_stats(item, lim.name, client).reset_time
                    return max(1, math.ceil(reset - time.time()))
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.limits:
            await self.app(scope, receive, send)
            return
        client = scope["client"][0] if scope.get("client") else "unknown"
        wait = self._retry_after(scope["path"], client)
        if wait is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        answer = errors.respond(
            request,
            429,
            f"too many requests, retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )
        await answer(scope, receive, send)


TOO_MANY: dict[int | str, dict[str, str]] = {
    429: {"description": "Too many requests from this address: see Retry-After"}
}


def documented_limits(settings: Settings, prefix: str) -> dict[int | str, dict[str, str]]:
    """The 429 answer for the OpenAPI document of the routes under ``prefix``, when limited."""
    on = parse_limit(settings.rate_limit_public) or parse_limit(settings.rate_limit_login)
    under = f"{prefix.rstrip('/')}/"
    limited = any(under.startswith(p) for p in PUBLIC_PREFIXES)
    return dict(TOO_MANY) if on and limited else {}


def install(app: FastAPI, settings: Settings) -> None:
    """The middlewares above, outermost first: headers on every answer, 429s included."""
    redact_access_log()
    origins = settings.cors_origin_list()
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "Idempotency-Key"],
            max_age=600,
        )
    app.add_middleware(
        RateLimit,
        limits=[
            Limit("login", LOGIN_PREFIXES, parse_limit(settings.rate_limit_login)),
            Limit("public", PUBLIC_PREFIXES, parse_limit(settings.rate_limit_public)),
        ],
    )
    # Added last, so outermost: it sees every answer, the CORS and 429 ones too.
    app.add_middleware(SecurityHeaders, map_tile_url=settings.map_tile_url)
