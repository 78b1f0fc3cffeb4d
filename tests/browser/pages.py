"""A page of the operations center in headless Chromium, watched for what it says."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}
VIEWPORT = {"width": 1600, "height": 900}


@dataclass
class Watched:
    """A page and everything it said and asked for."""

    page: Any
    errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)

    def off_loopback(self) -> list[str]:
        return [
            u
            for u in self.urls
            if not u.startswith(("data:", "blob:")) and urlsplit(u).hostname not in LOOPBACK
        ]


def watch(context: Any) -> Watched:
    page = context.new_page()
    # Anything the page's Content-Security-Policy blocks is an error of the page.
    page.add_init_script(
        "document.addEventListener('securitypolicyviolation', (e) =>"
        " console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`));"
    )
    watched = Watched(page)
    page.on("request", lambda r: watched.urls.append(r.url))
    page.on(
        "console",
        lambda m: watched.errors.append(f"console: {m.text}") if m.type == "error" else None,
    )
    page.on("pageerror", lambda e: watched.errors.append(f"pageerror: {e}"))
    return watched


def first_load_ms(page: Any) -> float:
    """Navigation start to the map drawn (the page sets data-ready after that frame)."""
    page.wait_for_selector('body[data-ready="true"]', timeout=20_000)
    return float(page.evaluate("window.CityOps.readyAt"))


@contextmanager
def opened(browser: Any, url: str) -> Iterator[Watched]:
    """``url`` in a browser context of its own, watched, once the map is drawn; the
    context closed on exit."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        watched = watch(context)
        watched.page.goto(url)
        first_load_ms(watched.page)
        yield watched
    finally:
        context.close()
