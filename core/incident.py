"""The ``Incident`` aggregate (management network): one real-world problem to close.

Alarm semantics follow IoT platforms: an alarm is active or cleared, and unacknowledged
or acknowledged; the incident closes once its alarm is both cleared and acknowledged.
A re-trigger while the incident is still open updates it instead of opening another.
"""

from __future__ import annotations

from uuid import UUID

from eventsourcing.domain import Aggregate, event

from core.errors import IllegalTransitionError


class Incident(Aggregate):
    @event("Opened")
    def __init__(
        self,
        kind: str,
        title: str,
        category: str,
        severity: str,
        device_id: str | None,
        rule_id: str | None,
        rule_version: int | None,
        lon: float,
        lat: float,
        grid_code: str | None,
        district_code: str | None,
        department_code: str | None,
        metric: str | None,
        value: float | None,
        reading_ts: float | None,
        actor: str,
        correlation_id: str,
    ) -> None:
        self.kind = kind
        self.title = title
        self.category = category
        self.severity = severity
        self.device_id = device_id
        self.rule_id = rule_id
        self.rule_version = rule_version
        self.lon = lon
        self.lat = lat
        self.grid_code = grid_code
        self.district_code = district_code
        self.department_code = department_code
        self.metric = metric
        self.last_value = value
        self.status = "open"
        self.alarm_status = "active"
        self.acknowledged = False
        self.acknowledged_by: str | None = None
        self.trigger_count = 1

    @classmethod
    def open(cls, incident_id: UUID, **kwargs: object) -> Incident:
        return cls._create(cls.Opened, id=incident_id, **kwargs)  # type: ignore[attr-defined]

    @property
    def closed(self) -> bool:
        return self.status == "closed"

    def _require_open(self) -> None:
        if self.closed:
            raise IllegalTransitionError("incident is closed")

    @event("Retriggered")
    def retrigger(
        self,
        severity: str,
        value: float | None,
        reading_ts: float | None,
        actor: str,
        correlation_id: str,
    ) -> None:
        self._require_open()
        self.alarm_status = "active"
        self.severity = severity
        self.last_value = value
        self.trigger_count += 1

    @event("SeverityChanged")
    def change_severity(
        self,
        severity: str,
        value: float | None,
        reading_ts: float | None,
        actor: str,
        correlation_id: str,
    ) -> None:
        self._require_open()
        self.severity = severity
        self.last_value = value

    @event("AlarmCleared")
    def clear(
        self, value: float | None, reading_ts: float | None, actor: str, correlation_id: str
    ) -> None:
        self._require_open()
        if self.alarm_status == "cleared":
            raise IllegalTransitionError("alarm is already cleared")
        self.alarm_status = "cleared"
        self.last_value = value

    @event("Acknowledged")
    def acknowledge(self, actor: str, reason: str, correlation_id: str) -> None:
        self._require_open()
        if self.acknowledged:
            raise IllegalTransitionError("incident is already acknowledged")
        self.acknowledged = True
        self.acknowledged_by = actor

    @event("Closed")
    def close(self, reason: str, actor: str, correlation_id: str) -> None:
        self._require_open()
        self.status = "closed"

    @property
    def ready_to_close(self) -> bool:
        return not self.closed and self.alarm_status == "cleared" and self.acknowledged
