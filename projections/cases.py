"""The service-case read model: queues, Open311 lists, the SLA board. Tracked, rebuildable.

Each case event becomes one SQL change of its ``service_cases`` row; the projection
worker (``projections.runner``) writes it with the tracking position and a change
notice for the live channel in one transaction. The rows hold no personal data:
contacts stay sealed in the log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from psycopg.types.json import Jsonb

from core.case import ServiceCase
from projections.runner import NO_EFFECT, Effect, Statement, row_update

_SET_DEADLINE = "due_at = %(due_at)s, due_soon_at = %(due_soon_at)s, deadline_no = deadline_no + 1"


def _submitted(e: Any) -> Statement:
    return (
        "INSERT INTO service_cases (case_id, channel, external_id, category, description,"
        " status, lon, lat, address, citizen_id, submitted_by, submitted_at, updated_at,"
        " version) VALUES (%(id)s, %(channel)s, %(external_id)s, %(category)s,"
        " %(description)s, 'submitted', %(lon)s, %(lat)s, %(address)s, %(citizen_id)s,"
        " %(actor)s, %(ts)s, %(ts)s, %(version)s) ON CONFLICT (case_id) DO NOTHING",
        {
            "channel": e.channel,
            "external_id": e.external_id,
            "category": e.category,
            "description": e.description,
            "lon": e.lon,
            "lat": e.lat,
            "address": e.address,
            "citizen_id": e.citizen_id,
            "actor": e.actor,
        },
    )


def _update(sets: str, **params: str) -> Callable[[Any], Statement]:
    """An UPDATE of the case's row; ``params`` name event attributes to bind."""
    return row_update("service_cases", "case_id", sets, **params)


def _rated(e: Any) -> Statement:
    sql, params = (
        _update(
            f"status = 'reopened', rating = %(rating)s, revisits = revisits + 1, {_SET_DEADLINE},"
            " status_notes = 'reopened for a revisit after a bad rating', solved = %(solved)s",
            rating="rating",
            due_at="due_at",
            due_soon_at="due_soon_at",
        )(e)
        if e.revisit
        else _update(
            "status = 'closed', rating = %(rating)s, closed_at = %(ts)s, solved = %(solved)s",
            rating="rating",
        )(e)
    )
    return sql, {**params, "solved": getattr(e, "solved", None)}  # older events lack it


def _co_handlers(e: Any) -> Jsonb:
    """The co-handlers an assignment's decision names, as the aggregate takes them."""
    parts = e.decision.get("co_handler_parts") or {}
    return Jsonb(
        {
            unit: {"part": parts.get(unit, ""), "status": "pending"}
            for unit in e.decision.get("co_handlers") or ()
            if unit != e.department_code
        }
    )


def _assignment(sets: str, e: Any, **params: Any) -> Statement:
    """An assignment's UPDATE (the plain assignment, the upheld dispute's): the unit, its
    deadline, the notes, the co-handlers and the first-contact deadline from the decision."""
    sql, _ = _update(
        f"status = 'assigned', department_code = %(department)s, {_SET_DEADLINE},"
        f" extension_pending = false, status_notes = %(notes)s, {sets}"
    )(e)
    return sql, {
        "department": e.department_code,
        "due_at": e.due_at,
        "due_soon_at": e.due_soon_at,
        "notes": e.reason,
        "co": _co_handlers(e),
        "respond_by": e.decision.get("respond_by"),
        **params,
    }


def _assigned(e: Any) -> Statement:
    return _assignment(
        "grid_code = %(grid)s, district_code = %(district)s, awaiting_assignment = false,"
        " co_handlers = %(co)s, respond_by = coalesce(respond_by, %(respond_by)s)",
        e,
        grid=e.grid_code,
        district=e.district_code,
    )


def _upheld(e: Any) -> Statement:
    return _assignment(
        "dispute_pending = false, arbitrate_by = NULL, disputes_upheld = disputes_upheld + 1,"
        " responsible_since = %(ts)s, co_handlers = (co_handlers - %(department)s) || %(co)s,"
        " respond_by = CASE WHEN first_contact_at IS NULL THEN %(respond_by)s::timestamptz"
        " ELSE respond_by END",
        e,
    )


def _co_handler_added(e: Any) -> Statement:
    return _update(
        "co_handlers = co_handlers || jsonb_build_object(%(unit)s::text,"
        " jsonb_build_object('part', %(part)s::text, 'status', 'pending'))",
        unit="department_code",
        part="part",
    )(e)


def _co_handling_answered(e: Any) -> Statement:
    return _update(
        "co_handlers = jsonb_set(co_handlers, ARRAY[%(unit)s::text], (co_handlers ->"
        " %(unit)s::text) || jsonb_build_object('status', 'answered', 'feedback',"
        " %(feedback)s::text, 'answered_at', %(ts)s::timestamptz))",
        unit="department_code",
        feedback="feedback",
    )(e)


def _co_handling_waived(e: Any) -> Statement:
    return _update(
        "co_handlers = co_handlers || (SELECT jsonb_object_agg(u, (co_handlers -> u) ||"
        ' \'{"status": "waived"}\'::jsonb) FROM unnest(%(units)s::text[]) AS u)',
        units="departments",
    )(e)


def _rejected(e: Any) -> Statement:
    return _update(
        "status = 'rejected', rejection = %(rejection)s, status_notes = %(notes)s,"
        " closed_at = %(ts)s",
        rejection="rejection",
        notes="reason",
    )(e)


_HANDLERS: dict[str, Callable[[Any], Statement]] = {
    "CaseSubmitted": _submitted,
    "CaseAccepted": _update("status = 'accepted', status_notes = %(notes)s", notes="reason"),
    "DuplicatesSuggested": lambda e: (
        "UPDATE service_cases SET possible_duplicates = %(n)s, status_notes = %(notes)s,"
        " updated_at = %(ts)s, version = %(version)s WHERE case_id = %(id)s",
        {"n": len(e.possible_duplicates), "notes": e.reason},
    ),
    "CaseRejected": _rejected,
    "CaseAssigned": _assigned,
    "AssignmentPending": _update(
        "awaiting_assignment = true, grid_code = %(grid)s, district_code = %(district)s,"
        " status_notes = %(notes)s",
        grid="grid_code",
        district="district_code",
        notes="reason",
    ),
    "CaseReturned": _update(
        "status = 'accepted', department_code = NULL, due_at = NULL, due_soon_at = NULL,"
        " awaiting_assignment = true, extension_pending = false, returns = returns + 1,"
        " co_handlers = '{}'::jsonb, status_notes = %(notes)s",
        notes="reason",
    ),
    "CaseStarted": _update("status = 'in_progress'"),
    "CaseResolved": _update(
        "status = 'resolved', resolved_at = %(ts)s, extension_pending = false,"
        " status_notes = %(reply)s",
        reply="reply",
    ),
    "ExtensionRequested": _update("extension_pending = true"),
    "ExtensionApproved": _update(
        f"extension_pending = false, extensions = extensions + 1, {_SET_DEADLINE}",
        due_at="due_at",
        due_soon_at="due_soon_at",
    ),
    "ExtensionRefused": _update("extension_pending = false"),
    "CaseRated": _rated,
    "CaseClosed": _update("status = 'closed', closed_at = %(ts)s"),
    "CaseCancelled": _update(
        "status = 'cancelled', closed_at = %(ts)s, extension_pending = false,"
        " dispute_pending = false, arbitrate_by = NULL, status_notes = %(notes)s",
        notes="reason",
    ),
    "CaseDueSoon": _update("due_soon_marked = %(no)s", no="deadline_no"),
    "CaseBecameOverdue": _update("overdue_marked = %(no)s", no="deadline_no"),
    "PersonalDataErased": _update("personal_data_erased = true"),
    "LinkedToIncident": _update("incident_id = %(incident)s", incident="incident_id"),
    "SensorsChecked": _update("sensor_check = %(result)s", result="result"),
    "CaseResolvedWithIncident": _update(
        "status = 'resolved', resolved_at = %(ts)s, extension_pending = false,"
        " proactive = true, dispute_pending = false, arbitrate_by = NULL,"
        " status_notes = %(reply)s",
        reply="reply",
    ),
    "CoHandlerAdded": _co_handler_added,
    "CoHandlingAnswered": _co_handling_answered,
    "CoHandlingWaived": _co_handling_waived,
    "DisputeRaised": _update(
        "dispute_pending = true, arbitrate_by = %(by)s, status_notes = %(notes)s",
        by="arbitrate_by",
        notes="reason",
    ),
    "DisputeUpheld": _upheld,
    "DisputeRejected": _update(
        "dispute_pending = false, arbitrate_by = NULL, status_notes = %(notes)s", notes="reason"
    ),
    "CitizenContacted": _update("first_contact_at = coalesce(first_contact_at, %(ts)s)"),
}


class CaseProjection:
    """Service cases as ``service_cases`` rows."""

    name = "cases"
    tables: tuple[str, ...] = ("service_cases",)

    def handle(self, event: Any) -> Effect:
        handler = (
            _HANDLERS.get(type(event).__name__) if isinstance(event, ServiceCase.Event) else None
        )
        if handler is None:
            return NO_EFFECT  # events this view does not show still advance its position
        sql, params = handler(event)
        params.update(id=event.originator_id, ts=event.timestamp, version=event.originator_version)
        return Effect(
            [(sql, params)],
            {"layer": "cases", "id": str(event.originator_id), "event": type(event).__name__},
        )
