"""Workers that follow the city log: each event handled once, position recorded with it.

A ``LogFollower`` reads the notifications of some event topics after its recorded
position; for each it calls ``handle(event, pe)``, then records what the handler
collected into the ``ProcessingEvent`` together with the event's notification id (the
city app's tracking table, fenced by the position it started from). A crash before the
commit replays the event; after it, skips it. A concurrent change of an aggregate the
handler touched (optimistic concurrency) replays the event on fresh state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID

from eventsourcing.application import ProcessingEvent
from eventsourcing.persistence import IntegrityError, ProcessRecorder, Tracking
from eventsourcing.utils import get_topic

from core.app import CityApp
from infra.pgstore import StalePositionError

log = logging.getLogger(__name__)

Handler = Callable[[Any, ProcessingEvent[UUID]], None]


class RetryLaterError(Exception):
    """The handler could not finish now (a mail server is down): try the event again."""


class LogFollower:
    def __init__(
        self,
        app: CityApp,
        name: str,
        event_classes: Iterable[type[Any]],
        handle: Handler,
        *,
        batch_size: int = 100,
        retries: int = 5,
        on_recorded: Callable[[int], None] | None = None,
    ) -> None:
        self.app = app
        self.name = name
        self.topics = [get_topic(cls) for cls in event_classes]
        self.handle = handle
        self.batch_size = batch_size
        self.retries = retries
        self.on_recorded = on_recorded
        self.position: int | None = None

    def load_position(self) -> None:
        recorder: ProcessRecorder = self.app.recorder  # type: ignore[assignment]
        self.position = recorder.max_tracking_id(self.name)

    def step(self, stop: threading.Event | None = None) -> int:
        """Handle the next batch; return how many events it covered."""
        if self.position is None:
            self.load_position()
        notifications = self.app.recorder.select_notifications(
            start=self.position or 0,
            limit=self.batch_size,
            topics=self.topics,
            inclusive_of_start=False,
        )
        for n in notifications:
            if stop is not None and stop.is_set():
                break
            if not self._one(n.id, self.app.mapper.to_domain_event(n), stop):
                return 0
        return len(notifications)

    def _one(self, notification_id: int, event: Any, stop: threading.Event | None) -> bool:
        backoff = 0.5
        attempt = 0
        while True:
            pe: ProcessingEvent[UUID] = ProcessingEvent(
                tracking=Tracking(self.name, notification_id)
            )
            try:
                self.handle(event, pe)
                pe.collect_events(expected_position=self.position)
                recordings = self.app.record(pe)
            except StalePositionError:
                log.warning("%s: another worker moved the position; reloading it", self.name)
                self.position = None
                return False
            except IntegrityError:
                attempt += 1
                if attempt > self.retries:
                    raise
                log.info(
                    "%s: event %d raced a concurrent change; again", self.name, notification_id
                )
                continue
            except RetryLaterError as exc:
                log.warning(
                    "%s: event %d: %s; retrying in %.1f s", self.name, notification_id, exc, backoff
                )
                if stop is None or stop.wait(backoff):
                    return False
                backoff = min(backoff * 2, 30.0)
                continue
            self.position = notification_id
            if self.on_recorded is not None and recordings:
                self.on_recorded(max(r.notification.id for r in recordings))
            return True

    def run(self, stop: threading.Event, idle_wait: float = 0.2) -> None:
        while not stop.is_set():
            try:
                if self.step(stop) == 0:
                    stop.wait(idle_wait)
            except Exception:
                log.exception("%s: pass failed; retrying", self.name)
                self.position = None
                stop.wait(1.0)
