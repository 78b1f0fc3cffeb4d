"""The ``Incident`` aggregate (management network): one real-world problem to close.

Alarm semantics follow IoT platforms: an alarm is active or cleared, and unacknowledged
or acknowledged; an incident nobody has dispatched closes once its alarm is both cleared
and acknowledged. A re-trigger while the incident is still open updates it instead of
opening another.

The work on it follows the management network's standard (GB/T 30428: 立案 -> 派遣 ->
处置 -> 反馈 -> 核查 -> 结案). ``stage``:

    reported -> dispatched -> accepted -> resolved -> closed (verified on site)
                    ^                         |
                    +------ rework (返工) -----+

An incident past its deadline is escalated (督办), one level per missed deadline. Service
cases about the same problem are linked to it (both aggregates record the link, with the
correlation rule's version); citizen reports confirming an alarm raise its severity.
Deadlines and times are computed outside and passed in.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, TypedDict
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from core.errors import IllegalTransitionError

SEVERITIES = ("warning", "minor", "major", "critical")
STAGES = ("reported", "dispatched", "accepted", "resolved", "closed")
# Stages in which a department works the incident against a deadline.
WORKING = ("dispatched", "accepted")
# Kinds of incident: from a sensor alarm, a silent device, citizen reports, an operator.
KINDS = ("sensor_alarm", "device_silent", "citizen_reports", "operator")


def raised_severity(severity: str) -> str:
    """One step up the severity scale (critical stays critical)."""
    i = SEVERITIES.index(severity) if severity in SEVERITIES else 0
    return SEVERITIES[min(i + 1, len(SEVERITIES) - 1)]


class Placed(Protocol):
    """Something on the city's grid (a sensor, a service case)."""

    grid_code: str | None
    district_code: str | None
    department_code: str | None


class Placement(TypedDict):
    """The fields of ``Opened`` that say where an incident is handled."""

    grid_code: str | None
    district_code: str | None
    department_code: str | None


def placement(source: Placed) -> Placement:
    """Where an incident about ``source`` is placed: its grid cell, district, department."""
    return {
        "grid_code": source.grid_code,
        "district_code": source.district_code,
        "department_code": source.department_code,
    }


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
        # Citizen reports and operators open incidents with no alarm behind them.
        self.alarm_status = "active" if kind in ("sensor_alarm", "device_silent") else "none"
        self.acknowledged = False
        self.acknowledged_by: str | None = None
        self.trigger_count = 1
        self.stage = "reported"
        self.due_at: datetime | None = None
        self.deadline_no = 0
        self.escalation_level = 0
        self.escalated_deadline_no = 0
        self.escalate_at: datetime | None = None
        self.reworks = 0
        self.resolution: str | None = None
        self.linked_cases: dict[str, dict[str, object]] = {}
        self.confirmed_by_reports = False
        self.merged_into: str | None = None

    @classmethod
    def open(cls, incident_id: UUID, **kwargs: object) -> Incident:
        return cls._create(cls.Opened, id=incident_id, **kwargs)  # type: ignore[attr-defined]

    @property
    def closed(self) -> bool:
        return self.status == "closed"

    def _require_open(self) -> None:
        if self.closed:
            raise IllegalTransitionError("incident is closed")

    def _require_open_and_not(self, done: bool, refusal: str) -> None:
        """Open, and the fact ``done`` says is not recorded yet (each is recorded once)."""
        self._require_open()
        if done:
            raise IllegalTransitionError(refusal)

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
        self._require_open_and_not(self.acknowledged, "incident is already acknowledged")
        self.acknowledged = True
        self.acknowledged_by = actor

    @event("Closed")
    def close(self, reason: str, actor: str, correlation_id: str) -> None:
        self._require_open()
        self._set_closed()

    def _set_closed(self) -> None:
        """Closed for good: no further stage, no escalation pending."""
        self.status = "closed"
        self.stage = "closed"
        self.escalate_at = None

    @property
    def ready_to_close(self) -> bool:
        """An alarm nobody dispatched closes once cleared and acknowledged."""
        return (
            not self.closed
            and self.stage == "reported"
            and self.alarm_status == "cleared"
            and self.acknowledged
        )

    # -- the workflow (派遣 -> 处置 -> 反馈 -> 核查 -> 结案) ------------------------------

    def _require_stage(self, command: str, *stages: str) -> None:
        if self.stage not in stages:
            raise IllegalTransitionError(
                f"cannot {command} an incident that is {self.stage} (needs {' or '.join(stages)})"
            )

    @event("Dispatched")
    def dispatch(
        self, department_code: str, due_at: datetime, actor: str, reason: str, correlation_id: str
    ) -> None:
        self._require_stage("dispatch", "reported")
        if not department_code:
            raise IllegalTransitionError("dispatching needs a department")
        self.stage = "dispatched"
        self.department_code = department_code
        self._set_deadline(due_at)

    def _set_deadline(self, due_at: datetime) -> None:
        self.due_at = due_at
        self.deadline_no += 1
        self.escalate_at = due_at

    @event("WorkAccepted")
    def accept_work(self, actor: str, correlation_id: str) -> None:
        self._require_stage("accept", "dispatched")
        self.stage = "accepted"

    @event("Resolved")
    def resolve(self, feedback: str, actor: str, correlation_id: str) -> None:
        self._require_stage("resolve", *WORKING)
        if not feedback.strip():
            raise IllegalTransitionError("resolving needs field feedback (处置反馈)")
        self.stage = "resolved"
        self.resolution = feedback
        self.escalate_at = None

    @event("Verified")
    def verify(self, note: str, actor: str, correlation_id: str) -> None:
        """On-site verification (核查) passed; the caller then closes the incident."""
        self._require_stage("verify", "resolved")

    @event("ReworkOrdered")
    def order_rework(self, reason: str, due_at: datetime, actor: str, correlation_id: str) -> None:
        """Verification failed: back to the department (返工) with a new deadline."""
        self._require_stage("order rework for", "resolved")
        if not reason.strip():
            raise IllegalTransitionError("rework needs the reason verification failed")
        self.stage = "dispatched"
        self.reworks += 1
        self.resolution = None
        self._set_deadline(due_at)

    def escalation_pending(self, now: datetime) -> bool:
        return (
            not self.closed
            and self.stage in WORKING
            and self.escalate_at is not None
            and now >= self.escalate_at
        )

    @event("Escalated")
    def escalate(
        self, level: int, next_at: datetime | None, actor: str, correlation_id: str
    ) -> None:
        """The deadline passed (督办): one level up; ``next_at`` is the next escalation."""
        self._require_stage("escalate", *WORKING)
        if level != self.escalation_level + 1:
            raise IllegalTransitionError(
                f"escalation to level {level} but the incident is at {self.escalation_level}"
            )
        self.escalation_level = level
        self.escalated_deadline_no = self.deadline_no
        self.escalate_at = next_at

    # -- the join with the service network -----------------------------------------------

    @property
    def correlatable(self) -> bool:
        """Open to new citizen reports: not closed, not resolved, not merged."""
        return not self.closed and self.stage in ("reported", *WORKING)

    @event("CaseLinked")
    def link_case(
        self,
        case_id: str,
        rule_id: str,
        rule_version: int,
        distance_m: float,
        actor: str,
        correlation_id: str,
    ) -> None:
        if not self.correlatable:
            raise IllegalTransitionError(f"cannot link a case to an incident that is {self.stage}")
        if case_id in self.linked_cases:
            raise IllegalTransitionError(f"case {case_id} is already linked")
        self.linked_cases[case_id] = {
            "rule_id": rule_id,
            "rule_version": rule_version,
            "distance_m": distance_m,
        }

    @event("ConfirmedByReports")
    def confirm_by_reports(
        self, severity: str, reports: int, rule_version: int, actor: str, correlation_id: str
    ) -> None:
        """Many citizens report what the sensors show: the severity goes up one step."""
        self._require_open_and_not(
            self.confirmed_by_reports, "the incident is already confirmed by reports"
        )
        self.confirmed_by_reports = True
        self.severity = severity

    @event("MergedInto")
    def merge_into(self, target_id: str, actor: str, correlation_id: str) -> None:
        """Citizen reports turned out to be a sensor's incident: this one closes into it."""
        self._require_open()
        self.merged_into = target_id
        self._set_closed()
