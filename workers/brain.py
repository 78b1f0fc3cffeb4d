"""The urban brain's workers, following the city log.

- ``correlation_handler``: a case accepted or a sensor alarm opened -> the correlation
  policy links reports and incidents (``core.brain.correlation``). Before each decision it
  waits until the read models it asks have projected the log up to that event and up to
  its own last write, so it always sees the links it made itself.
- ``notice_handler``: a case resolved (by its department, or with its incident) -> the
  citizen is told through the notification port. At least once: the position is
  recorded after the send; the notice's key lets the receiving side drop a repeat.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from eventsourcing.application import ProcessingEvent

from core.brain.correlation import Correlator
from core.case import ServiceCase
from core.case.desk import ServiceDesk
from core.case.notify import NotificationError, Notifier, resolution_notice
from core.incident import Incident
from projections.nearby import NearbyQueries
from workers.follower import Handler, RetryLaterError

log = logging.getLogger(__name__)

CORRELATION_EVENTS: tuple[type[Any], ...] = (
    ServiceCase.CaseAccepted,  # type: ignore[attr-defined]
    Incident.Opened,  # type: ignore[attr-defined]
)
NOTICE_EVENTS: tuple[type[Any], ...] = (
    ServiceCase.CaseResolved,  # type: ignore[attr-defined]
    ServiceCase.CaseResolvedWithIncident,  # type: ignore[attr-defined]
)


class CorrelationHandler:
    def __init__(self, correlator: Correlator, nearby: NearbyQueries, wait_s: float = 10.0):
        self.correlator = correlator
        self.nearby = nearby
        self.wait_s = wait_s
        self.last_written = 0

    def written(self, notification_id: int) -> None:
        self.last_written = max(self.last_written, notification_id)

    def __call__(self, event: Any, pe: ProcessingEvent[UUID]) -> None:
        assert pe.tracking is not None
        target = max(pe.tracking.notification_id, self.last_written)
        if not self.nearby.wait_for(target, timeout=self.wait_s):
            raise RetryLaterError(f"read models are not yet at {target}")
        correlation_id = f"brain:{pe.tracking.notification_id}"
        if isinstance(event, ServiceCase.CaseAccepted):  # type: ignore[attr-defined]
            outcome = self.correlator.case_accepted(event.originator_id, correlation_id, pe)
        else:
            outcome = self.correlator.incident_opened(event.originator_id, correlation_id, pe)
        log.debug("correlation of %s %s: %s", type(event).__name__, event.originator_id, outcome)


def notice_handler(desk: ServiceDesk, notifier: Notifier) -> Handler:
    def handle(event: Any, pe: ProcessingEvent[UUID]) -> None:
        case = desk.get(event.originator_id)
        category = desk.categories.get(case.category)
        notice = resolution_notice(
            case_id=case.id,
            external_id=case.external_id,
            category_name_zh=category.name_zh,
            category_name_en=category.name_en,
            reply=event.reply,
            contact=desk.contact_of(case),
            version=event.originator_version,
            proactive=isinstance(event, ServiceCase.CaseResolvedWithIncident),  # type: ignore[attr-defined]
        )
        if notice is None:
            return  # no phone or email, or erased
        try:
            notifier.send(notice)
        except NotificationError as exc:
            raise RetryLaterError(str(exc)) from exc

    return handle
