"""Following the city log: batches after a recorded position, applied and recorded at once.

Every worker that reads the log runs the same loop (``LogTail``): find where it stands
(``LogSink.start``), read the next batch of notifications after that position (of some
topics, or all), let its sink apply the batch and record the new position in the same
transaction (``LogSink.apply``), idle when the log is drained, and after an error back
off, let the sink drop what it holds (``LogSink.reset``) and find its position again.
The sinks: the SQL projections (``projections.runner``), the event handlers that record
on aggregates (``workers.follower``) and the domain-events relay (``workers.relay``).

The library's notification order is commit order (its inserts take the table lock), so
reading ``notification_id > position`` skips nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)


class PositionMovedError(Exception):
    """The recorded position moved under this worker (another worker, or a rebuild)."""


class LogSink(Protocol):
    """What a ``LogTail`` feeds: it applies batches and records how far it got."""

    def start(self) -> int:
        """The position to read after: what is recorded (or recovered after a crash)."""
        ...

    def apply(self, notifications: Sequence[Any], stop: threading.Event | None) -> int:
        """Apply ``notifications`` in order, recording each effect with its position;
        return the position now recorded (short of the last one if ``stop`` was set).
        Raise ``PositionMovedError`` when the recorded position is not the one expected."""
        ...

    def reset(self) -> None:
        """Drop what is held across batches (connections, cached positions)."""
        ...


@dataclass(eq=False)
class LogTail:
    """Reads the log after ``position`` in batches of ``batch_size`` into ``sink``.

    ``topics``: the event topics to read (empty: all). ``transient``: the errors ``run``
    waits out (with a backoff up to ``max_backoff`` seconds) instead of stopping on.
    ``expected``: the transient errors that are an outage, not a bug (a database that is
    down): logged as one line per attempt; any other is logged with its traceback on the
    first failure of a run of them, and as one line after that.
    """

    name: str
    recorder: Any
    sink: LogSink
    _: KW_ONLY
    batch_size: int
    topics: Sequence[str] = ()
    transient: tuple[type[BaseException], ...] = (Exception,)
    expected: tuple[type[BaseException], ...] = ()
    max_backoff: float = 10.0
    position: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.topics = list(self.topics)

    def step(self, stop: threading.Event | None = None) -> int:
        """Apply the next batch; return how many of its notifications are now behind the
        position (0: none left, the sink could not go on, or the position moved and will
        be read again)."""
        if self.position is None:
            self.position = self.sink.start()
        notifications = self.recorder.select_notifications(
            start=self.position,
            limit=self.batch_size,
            topics=self.topics,
            inclusive_of_start=False,
        )
        if not notifications:
            return 0
        try:
            position = self.position = self.sink.apply(notifications, stop)
        except PositionMovedError as exc:
            log.warning("%s: %s; reading the position again", self.name, exc)
            self.forget()
            return 0
        return sum(1 for n in notifications if n.id <= position)

    def forget(self) -> None:
        """Read the position again before the next batch."""
        self.position = None
        self.sink.reset()

    def run(self, stop: threading.Event, idle_wait: float = 0.2) -> None:
        """Follow the log until ``stop``; transient errors are waited out."""
        backoff = 0.5
        failures = 0
        try:
            while not stop.is_set():
                try:
                    if self.step(stop) == 0:
                        stop.wait(idle_wait)
                    if failures:
                        log.info("%s: going on after %d failed passes", self.name, failures)
                    backoff = 0.5
                    failures = 0
                except self.transient as exc:
                    failures += 1
                    first_line = (str(exc).strip().splitlines() or [""])[0]
                    log.warning(
                        "%s: pass failed (%s: %s); attempt %d, retrying in %.1f s",
                        self.name,
                        type(exc).__name__,
                        first_line,
                        failures,
                        backoff,
                        exc_info=failures == 1 and not isinstance(exc, self.expected),
                    )
                    try:
                        self.forget()
                    except self.transient as reset_error:
                        log.debug("%s: reset failed: %s", self.name, reset_error)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, self.max_backoff)
        finally:
            self.sink.reset()

    def catch_up(self, timeout: float = 60.0) -> int:
        """Apply until no notification is left (tests, rebuilds); return the position."""
        deadline = time.monotonic() + timeout
        while self.step():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not catch up in time")
        return self.position or 0
