"""Browser tests of the operations center: real headless Chromium against the live stack.

Skipped, with the reason, when Chromium, Playwright or the services are missing. The
performance figures the tests measure are printed in the terminal summary (and kept in
var/browser/perf.json), with or without ``-s``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.stack import CHROMIUM, CHROMIUM_ARGS, Stack, demo_stack, missing_requirements

PERF_FILE = Path("var/browser/perf.json")
FIGURES: dict[str, Any] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = missing_requirements()
    if reason is None:
        return
    if os.environ.get("CITYOPS_REQUIRE_SERVICES") and "no services" in reason:
        raise pytest.UsageError("CITYOPS_REQUIRE_SERVICES is set but the services are not")
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


def record(name: str, figures: dict[str, Any]) -> None:
    """Keep a measurement for the terminal summary and var/browser/perf.json."""
    FIGURES[name] = figures
    PERF_FILE.parent.mkdir(parents=True, exist_ok=True)
    PERF_FILE.write_text(json.dumps(FIGURES, indent=2))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("operations center in the browser")
    for name, figures in FIGURES.items():
        shown = ", ".join(f"{k} {v}" for k, v in figures.items())
        terminalreporter.write_line(f"{name}: {shown}")


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``cityops demo`` without the simulator: only what the tests cause happens."""
    with demo_stack(tmp_path_factory.mktemp("web-demo"), simulator=False) as running:
        yield running


# Package scope: Playwright's sync API keeps an event loop running in this thread while
# it is open, which would break asyncio.run() in the tests collected after these.
@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()
