"""Polling with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    check: Callable[[], T], timeout: float = 30.0, what: str = "condition", interval: float = 0.2
) -> T:
    """Call ``check`` until it returns something true, and return that; AssertionError
    when ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def poll(fetch: Callable[[], T], until: Callable[[T], bool], timeout: float, interval: float) -> T:
    """Call ``fetch`` until ``until`` holds for its answer or ``timeout`` seconds pass;
    the last answer either way (the caller asserts on it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if until(value) or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
