"""The audit trail's own record, and what auditors are shown (实时留痕、可回溯).

Every read of the record is itself recorded: one ``AuditRead`` aggregate per read, so
reads sit in the city log and its hash chain like every other event (and the views,
which do not know them, skip them). The view helpers turn events and aggregates into
JSON with personal data masked: an auditor reads everything, changes nothing, and sees
no citizen's contact or identity in clear.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate

MASKED = "[masked]"
# Fields of every stored event that the views show under their own names.
_EVENT_META = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic"})
# Fields that record who did something: a citizen is named only by their pseudonymous id,
# which links their cases together, so it is masked too.
_ACTOR_FIELDS = frozenset({"actor", "submitted_by", "by", "acknowledged_by"})

# What identifies a citizen or what a citizen may have written: the pseudonymous id,
# contacts (sealed or not), what they typed about the place, a rating's comment. Never in
# a published event (``infra.domain_events``) nor in a replay window (``projections.replay``).
CITIZEN_DATA = frozenset(
    {
        "citizen_id",
        "contact_token",
        "contact",
        "name",
        "phone",
        "email",
        "address",
        "description",
        "attributes",
        "comment",
    }
)
# Fields of one event class (by qualified name) that a citizen may have written too.
CITIZEN_DATA_OF: Mapping[str, frozenset[str]] = {
    "ServiceCase.CaseCancelled": frozenset({"reason"}),
    "ServiceCase.PersonalDataErased": frozenset({"reason"}),
    # What was said on the phone: it may name the caller.
    "ServiceCase.CitizenContacted": frozenset({"note"}),
}


def citizen_data(event_name: str) -> frozenset[str]:
    """The fields of the event class named ``event_name`` (``Aggregate.Event``) that are
    never shown outside the audit views."""
    return CITIZEN_DATA | CITIZEN_DATA_OF.get(event_name, frozenset())


# (citizen id, sealed contact) -> the contact as an auditor may see it.
ContactView = Callable[[str | None, str], dict[str, Any]]


@dataclass
class AuditRead(Aggregate, created_event_name="Recorded"):
    """One read of the audit trail: who read what, when (the event's timestamp), and why.

    Declared as a dataclass: the fields are the read's attributes and, in this order, the
    ``Recorded`` event's (the library makes the class a dataclass once, when defined).
    """

    reader: str
    role: str
    path: str
    query: str
    actor: str
    correlation_id: str


MAX_QUERY_CHARS = 2_048


def record_read(
    app: Application[UUID],
    *,
    reader: str,
    role: str,
    path: str,
    query: str,
    actor: str,
    correlation_id: str,
) -> AuditRead:
    """Record one read in the city log (a new aggregate each time); return it once saved."""
    read = AuditRead(
        reader=reader,
        role=role,
        path=path,
        query=query[:MAX_QUERY_CHARS],
        actor=actor,
        correlation_id=correlation_id,
    )
    app.save(read)
    return read


# -- views --------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """``value`` as JSON-ready data: ISO 8601 times, UUIDs as text, containers walked."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return value


def mask_actor(actor: Any) -> Any:
    """``citizen:<id>`` -> ``citizen:[masked]``; staff, gateways and policies stay named."""
    if isinstance(actor, str) and actor.startswith("citizen:"):
        return "citizen:" + MASKED
    return actor


def masked(fields: Mapping[str, Any], contact: ContactView | None = None) -> dict[str, Any]:
    """``fields`` as JSON with personal data masked.

    The sealed contact becomes ``contact`` (masked by ``contact``, or just ``[masked]``),
    the citizen's pseudonymous id and citizens named as actors read ``[masked]``.
    """
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key == "contact_token":
            if value is not None:
                citizen = fields.get("citizen_id")
                out["contact"] = (
                    MASKED if contact is None else contact(citizen and str(citizen), str(value))
                )
            continue
        if key == "citizen_id":
            out[key] = None if value is None else MASKED
        elif key in _ACTOR_FIELDS:
            out[key] = mask_actor(value)
        elif isinstance(value, Mapping):
            out[key] = masked(value, contact)
        else:
            out[key] = jsonable(value)
    return out


def event_view(domain_event: Any, contact: ContactView | None = None) -> dict[str, Any]:
    """One recorded event: type, version, time, who, why, under which rule, and the rest."""
    attrs = {k: v for k, v in vars(domain_event).items() if k not in _EVENT_META}
    return {
        "version": domain_event.originator_version,
        "type": type(domain_event).__name__,
        "time": jsonable(domain_event.timestamp),
        "actor": mask_actor(attrs.pop("actor", None)),
        "reason": attrs.pop("reason", None),
        "correlation_id": attrs.pop("correlation_id", None),
        "rule_id": attrs.pop("rule_id", None),
        "rule_version": attrs.pop("rule_version", None),
        "attributes": masked(attrs, contact),
    }


def state_view(aggregate: Aggregate, contact: ContactView | None = None) -> dict[str, Any]:
    """An aggregate as rebuilt at some version: its attributes, masked."""
    attrs = {k: v for k, v in vars(aggregate).items() if not k.startswith("_")}
    return {
        "type": type(aggregate).__name__,
        "id": str(aggregate.id),
        "version": aggregate.version,
        "created_on": jsonable(aggregate.created_on),
        "modified_on": jsonable(aggregate.modified_on),
        "attributes": masked(attrs, contact),
    }


# -- the causal trace -----------------------------------------------------------------------

# Event type -> the step of the chain it is (events not listed are not steps).
INCIDENT_STEPS = {
    "Opened": "incident",
    "Retriggered": "retrigger",
    "SeverityChanged": "severity",
    "AlarmCleared": "alarm_cleared",
    "Acknowledged": "acknowledgement",
    "CaseLinked": "case_link",
    "ConfirmedByReports": "confirmation",
    "Dispatched": "dispatch",
    "WorkAccepted": "acceptance",
    "Resolved": "feedback",
    "Verified": "verification",
    "ReworkOrdered": "rework",
    "Escalated": "escalation",
    "MergedInto": "merge",
    "Closed": "closure",
}
CASE_STEPS = {
    "CaseSubmitted": "report",
    "LinkedToIncident": "linked_to_incident",
    "CaseResolved": "case_resolution",
    "CaseResolvedWithIncident": "case_resolution",
    "CaseRated": "rating",
    "CaseClosed": "case_closure",
}
# Sensor events that name the incident they opened.
SENSOR_STEPS = {"AlarmRaised": "alarm", "WentSilent": "alarm"}


def _summaries() -> dict[str, Callable[[Any], str]]:
    def rated(e: Any) -> str:
        return f"rated {e.rating}/5" + (": revisit ordered (回访)" if e.revisit else "")

    return {
        "AlarmRaised": lambda e: (
            f"{e.metric} = {e.value} crossed rule {e.rule_id} v{e.rule_version}: {e.severity} alarm"
        ),
        "WentSilent": lambda e: f"device went silent: {e.reason}",
        "Relocated": lambda e: (
            f"device moved {e.moved_m:.0f} m (reported in {e.coord_system}) to grid cell"
            f" {e.grid_code or 'none'}"
        ),
        "Opened": lambda e: f"{e.kind} incident opened: {e.title} ({e.severity})",
        "Retriggered": lambda e: f"alarm re-triggered ({e.severity}, value {e.value})",
        "SeverityChanged": lambda e: f"severity now {e.severity}",
        "AlarmCleared": lambda e: f"alarm cleared (value {e.value})",
        "Acknowledged": lambda e: f"acknowledged: {e.reason}",
        "CaseLinked": lambda e: (
            f"case {e.case_id} linked by rule {e.rule_id} v{e.rule_version}"
            f" ({e.distance_m:.0f} m away)"
        ),
        "ConfirmedByReports": lambda e: f"confirmed by {e.reports} reports: now {e.severity}",
        "Dispatched": lambda e: f"dispatched to {e.department_code}, due {jsonable(e.due_at)}",
        "WorkAccepted": lambda e: "accepted by the department",
        "Resolved": lambda e: f"field feedback: {e.feedback}",
        "Verified": lambda e: f"verified on site: {e.note}" if e.note else "verified on site",
        "ReworkOrdered": lambda e: f"verification failed, rework: {e.reason}",
        "Escalated": lambda e: f"deadline missed: escalated to level {e.level}",
        "MergedInto": lambda e: f"merged into incident {e.target_id}",
        "Closed": lambda e: f"closed: {e.reason}",
        "CaseSubmitted": lambda e: f"{e.channel} report: {e.category}",
        "LinkedToIncident": lambda e: (
            f"linked to incident {e.incident_id} by rule {e.rule_id} v{e.rule_version}"
        ),
        "CaseResolved": lambda e: f"resolved: {e.reply}",
        "CaseResolvedWithIncident": lambda e: f"resolved with the incident: {e.reply}",
        "CaseRated": rated,
        "CaseClosed": lambda e: f"closed: {e.reason}",
    }


SUMMARIES = _summaries()


def summary(domain_event: Any) -> str:
    """One line saying what the event did."""
    name = type(domain_event).__name__
    describe = SUMMARIES.get(name)
    return name if describe is None else describe(domain_event)
