"""How cases and incidents look in API answers: lists, one case, timelines, command answers.

Personal data: lists and timelines never carry it; one case shows the citizen's contact
clear, masked or ``[erased]`` by the caller's role.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from api.auth import Principal
from api.permissions import owns
from core.case import ACTIVE, ServiceCase
from core.case.desk import ServiceDesk
from core.incident import Incident
from core.incident.desk import Outcome
from core.personal import ERASED_VIEW, Contact

# Who sees a citizen's contact in clear: the hotline's dispatchers, and the citizen.
CLEAR_CONTACT = ("dispatcher",)
# Events whose fields are safe to show in a timeline (no sealed contact, no citizen id).
_HIDDEN_FIELDS = {"contact_token", "citizen_id", "originator_id", "originator_version"}


def iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _columns(row: Mapping[str, Any], *names: str) -> dict[str, Any]:
    """These columns of a read-model row, shown as stored."""
    return {name: row[name] for name in names}


def _attributes(case: ServiceCase, *names: str) -> dict[str, Any]:
    """These attributes of a case, shown as they are."""
    return {name: getattr(case, name) for name in names}


# -- service cases ------------------------------------------------------------------------


def summary(row: dict[str, Any]) -> dict[str, Any]:
    """A read-model row as the API shows it in lists (no personal data)."""
    deadline_no = row["deadline_no"]
    active = row["status"] in ACTIVE
    return {
        "case_id": str(row["case_id"]),
        **_columns(row, "channel", "category", "status", "status_notes", "description"),
        "location": None if row["lon"] is None else {"lon": row["lon"], "lat": row["lat"]},
        **_columns(row, "address", "grid_code", "district_code", "department_code"),
        **_columns(row, "awaiting_assignment", "possible_duplicates"),
        "due_at": iso(row["due_at"]),
        "due_soon": active and deadline_no > 0 and row["due_soon_marked"] == deadline_no,
        "overdue": active and deadline_no > 0 and row["overdue_marked"] == deadline_no,
        **_columns(row, "extension_pending", "rating"),
        # The urban brain's link: the incident this report is part of, what the sensors
        # near it showed, and whether it was resolved with that incident (主动服务).
        "incident_id": None if row["incident_id"] is None else str(row["incident_id"]),
        **_columns(row, "sensor_check", "proactive", "personal_data_erased"),
        # Co-handling parts by unit (status only: the units' feedback is on the case),
        # a dispute waiting for arbitration, the first contact with the citizen.
        "co_handlers": {u: p["status"] for u, p in (row["co_handlers"] or {}).items()},
        "dispute_pending": row["dispute_pending"],
        "arbitrate_by": iso(row["arbitrate_by"]),
        "disputes_upheld": row["disputes_upheld"],
        "respond_by": iso(row["respond_by"]),
        "first_contact_at": iso(row["first_contact_at"]),
        "submitted_at": iso(row["submitted_at"]),
        "updated_at": iso(row["updated_at"]),
        "version": row["version"],
    }


def contact_view(desk: ServiceDesk, who: Principal, case: ServiceCase) -> dict[str, Any] | None:
    """The citizen's contact: clear, masked, or ``[erased]``, by role."""
    if case.contact_token is None:
        return None
    contact: Contact | None = None if case.erased else desk.contact_of(case)
    if contact is None:
        return dict(ERASED_VIEW)
    if who.role in CLEAR_CONTACT or (who.role == "citizen" and owns(who, case)):
        return contact.clear()
    return contact.masked()


def timeline(desk: ServiceDesk, case_id: uuid.UUID) -> list[dict[str, Any]]:
    """Every recorded event of the case, oldest first: what happened, when, who, why."""
    out = []
    events: list[Any] = list(desk.app.events.get(case_id))
    for ev in events:
        fields = {
            k: iso(v)
            for k, v in ev.__dict__.items()
            if k not in _HIDDEN_FIELDS and k != "timestamp"
        }
        out.append(
            {
                "event": type(ev).__name__,
                "at": iso(ev.timestamp),
                "version": ev.originator_version,
                **fields,
            }
        )
    return out


def detail(
    desk: ServiceDesk, who: Principal, case: ServiceCase, with_contact: bool = True
) -> dict[str, Any]:
    """One case from its aggregate, with the contact as ``who`` may see it.

    Command answers leave the contact out: it costs a key lookup nobody needs there.
    """
    out = {
        "case_id": str(case.id),
        **_attributes(case, "channel", "external_id", "category", "categories_version"),
        **_attributes(case, "status", "status_notes", "description"),
        "location": None if case.lon is None else {"lon": case.lon, "lat": case.lat},
        **_attributes(case, "address", "attributes"),
        "personal_data_erased": case.erased,
        **_attributes(case, "submitted_by", "rejection", "duplicate_of", "possible_duplicates"),
        **_attributes(case, "grid_code", "district_code", "department_code", "dispatch"),
        "due_at": iso(case.due_at),
        "due_soon_at": iso(case.due_soon_at),
        "deadline_no": case.deadline_no,
        "due_soon": case.status in ACTIVE and case.due_soon_recorded == case.deadline_no > 0,
        "overdue": case.status in ACTIVE and case.overdue,
        **_attributes(case, "extension_request", "extensions", "returns", "revisits"),
        **_attributes(case, "reply", "rating", "rating_comment", "solved"),
        "co_handlers": case.co_handlers,
        "dispute": None
        if case.dispute is None
        else {**case.dispute, "arbitrate_by": iso(case.dispute["arbitrate_by"])},
        "dispute_until": iso(case.dispute_until),
        "wrongly_assigned": case.wrongly_assigned,
        "respond_by": iso(case.respond_by),
        "contacts": case.contacts,
        "created_at": iso(case.created_on),
        "updated_at": iso(case.modified_on),
        "version": case.version,
    }
    if with_contact:
        out["contact"] = contact_view(desk, who, case)
    return out


# -- incidents ----------------------------------------------------------------------------


def acknowledgement(incident: Incident) -> dict[str, Any]:
    """The answer to an acknowledge: the incident's alarm state."""
    return {
        "incident_id": str(incident.id),
        "status": incident.status,
        "alarm_status": incident.alarm_status,
        "acknowledged": incident.acknowledged,
        "acknowledged_by": incident.acknowledged_by,
        "version": incident.version,
    }


def workflow_state(outcome: Outcome) -> dict[str, Any]:
    """The answer to a workflow command: where the incident is in the workflow."""
    incident = outcome.incident
    return {
        "incident_id": str(incident.id),
        "status": incident.status,
        "stage": incident.stage,
        "department_code": incident.department_code,
        "due_at": incident.due_at.isoformat() if incident.due_at else None,
        "reworks": incident.reworks,
        "escalation_level": incident.escalation_level,
        "linked_cases": len(incident.linked_cases),
        "version": incident.version,
    }


def resolution(outcome: Outcome) -> dict[str, Any]:
    """The answer to a resolve: the workflow state, and the cases resolved with it."""
    return {**workflow_state(outcome), "resolved_cases": [str(c.id) for c in outcome.cases]}
