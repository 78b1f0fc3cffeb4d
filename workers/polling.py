"""The loop of a worker that polls the read models: one pass every ``poll_s`` until
stopped, a pass that fails logged and the next one tried (a database that is down
is a warning, not a crash)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from infra.pgstore import DATABASE_UNAVAILABLE, describe

log = logging.getLogger(__name__)


def poll(
    name: str,
    tick: Callable[[], Mapping[str, int]],
    poll_s: float,
    stop: threading.Event,
    worth_logging: Callable[[Mapping[str, int]], bool] = lambda counts: any(counts.values()),
) -> None:
    """Run ``tick`` every ``poll_s`` seconds until ``stop``; log its counts when
    ``worth_logging`` says so."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            counts = tick()
            if worth_logging(counts):
                log.info("%s: %s", name, counts)
        except DATABASE_UNAVAILABLE as exc:
            log.warning("%s: database unavailable (%s); next pass", name, describe(exc))
        except Exception:
            log.exception("%s: pass failed; retrying next pass", name)
        stop.wait(max(0.05, poll_s - (time.monotonic() - started)))
