"""Workers that follow the city log: each event handled once, position recorded with it.

A ``LogFollower`` reads the notifications of some event topics after its recorded
position (the loop of ``core.follow.LogTail``); for each it calls ``handle(event, pe)``,
then records what the handler collected into the ``ProcessingEvent`` together with the
event's notification id (the city app's tracking table, fenced by the position it
started from). A crash before the
commit replays the event; after it, skips it. A concurrent change of an aggregate the
handler touched (optimistic concurrency) replays the event on fresh state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import KW_ONLY, InitVar, dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.application import ProcessingEvent
from eventsourcing.persistence import IntegrityError, ProcessRecorder, Tracking
from eventsourcing.utils import get_topic

from core.app import CityApp, CityProcessingEvent
from core.follow import LogTail, PositionMovedError
from infra.pgstore import DATABASE_UNAVAILABLE, StalePositionError

log = logging.getLogger(__name__)

Handler = Callable[[Any, ProcessingEvent[UUID]], None]


class RetryLaterError(Exception):
    """The handler could not finish now (a mail server is down): try the event again."""


@dataclass(eq=False)
class LogFollower:
    app: CityApp
    name: str
    event_classes: InitVar[Iterable[type[Any]]]
    handle: Handler
    _: KW_ONLY
    batch_size: int = 100
    retries: int = 5
    on_recorded: Callable[[int], None] | None = None
    tail: LogTail = field(init=False)

    def __post_init__(self, event_classes: Iterable[type[Any]]) -> None:
        self.tail = LogTail(
            self.name,
            self.app.recorder,
            self,
            batch_size=self.batch_size,
            topics=[get_topic(cls) for cls in event_classes],
            expected=DATABASE_UNAVAILABLE,
        )

    @property
    def position(self) -> int | None:
        """The last notification handled (None until read from the tracking records)."""
        return self.tail.position

    # -- the tail's sink ----------------------------------------------------------------

    def start(self) -> int:
        recorder: ProcessRecorder = self.app.recorder  # type: ignore[assignment]
        return recorder.max_tracking_id(self.name) or 0

    def reset(self) -> None:
        pass  # nothing is held between batches but the position

    def apply(self, notifications: Sequence[Any], stop: threading.Event | None) -> int:
        position = self.tail.position or 0
        for n in notifications:
            if stop is not None and stop.is_set():
                break
            if not self._one(n.id, self.app.mapper.to_domain_event(n), position, stop):
                break
            position = n.id
        return position

    def _one(
        self, notification_id: int, event: Any, position: int, stop: threading.Event | None
    ) -> bool:
        """Handle one event and record it; False if stopped while waiting to retry."""
        backoff = 0.5
        attempt = 0
        while True:
            pe: ProcessingEvent[UUID] = CityProcessingEvent(
                tracking=Tracking(self.name, notification_id)
            )
            try:
                self.handle(event, pe)
                # Fenced: recorded only if the tracking records still end at ``position``
                # (a first event has none to check against).
                pe.collect_events(expected_position=position or None)
                recordings = self.app.record(pe)
            except StalePositionError as exc:
                raise PositionMovedError("another worker moved the position") from exc
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
            if self.on_recorded is not None and recordings:
                self.on_recorded(max(r.notification.id for r in recordings))
            return True

    # -- the loop -----------------------------------------------------------------------

    def step(self, stop: threading.Event | None = None) -> int:
        """Handle the next batch; return how many events it covered."""
        return self.tail.step(stop)

    def run(self, stop: threading.Event, idle_wait: float = 0.2) -> None:
        self.tail.run(stop, idle_wait)
