"""Who may run which case and incident command, see which case, and read and acknowledge
which page.

The command routes take their roles from these tables, and so does the operations
center's list of what a caller may do (api/ops.py). Object-level rules: departments act
on their own queue's cases and the incidents dispatched to them; citizens on their own
cases.
"""

from __future__ import annotations

from typing import Any

from api.auth import Forbidden, Principal, Role, citizen_uuid
from core.case import ServiceCase
from core.incident import Incident
from projections.case_queries import CaseFilter

DISPATCHER_ROLES: tuple[Role, ...] = ("dispatcher",)
DEPARTMENT_ROLES: tuple[Role, ...] = ("department",)
CASE_ACTION_ROLES: dict[str, tuple[Role, ...]] = {
    "submit": ("operator", "dispatcher", "citizen"),
    "accept": DISPATCHER_ROLES,
    "reject": DISPATCHER_ROLES,
    "assign": DISPATCHER_ROLES,
    "approve_extension": DISPATCHER_ROLES,
    "refuse_extension": DISPATCHER_ROLES,
    "start": DEPARTMENT_ROLES,
    "resolve": DEPARTMENT_ROLES,
    "return": DEPARTMENT_ROLES,
    "request_extension": DEPARTMENT_ROLES,
    "rate": ("citizen", "dispatcher"),
    "cancel": ("citizen", "dispatcher"),
    "add_co_handler": DISPATCHER_ROLES,
    "answer_co_handling": DEPARTMENT_ROLES,
    "waive_co_handling": DISPATCHER_ROLES,
    "dispute": DEPARTMENT_ROLES,
    "uphold_dispute": DISPATCHER_ROLES,
    "reject_dispute": DISPATCHER_ROLES,
    "contact_citizen": DEPARTMENT_ROLES,
}
CASE_READERS: tuple[Role, ...] = ("operator", "dispatcher", "department", "auditor", "citizen")
# The incident workflow, in workflow order.
INCIDENT_ACTION_ROLES: dict[str, tuple[Role, ...]] = {
    "acknowledge": ("operator", "dispatcher"),
    "dispatch": ("operator", "dispatcher"),
    "accept": ("operator", "dispatcher", "department"),
    "resolve": ("operator", "dispatcher", "department"),
    "verify": ("operator", "dispatcher"),
}

# Escalation and paging: staff who may be on call read their own pages (an auditor's list
# is empty, citizens and gateways are never paged); acknowledging is for the people paged.
PAGE_READERS: tuple[Role, ...] = ("operator", "dispatcher", "department", "auditor")
PAGE_ACKNOWLEDGERS: tuple[Role, ...] = ("operator", "dispatcher", "department")


def owns(who: Principal, case: ServiceCase) -> bool:
    return case.citizen_id == who.subject or case.submitted_by == who.actor


def authorize_read(who: Principal, case: ServiceCase) -> None:
    """403 unless ``who`` may see this case (departments: those they lead or co-handle;
    citizens: theirs)."""
    if who.role == "department" and who.department not in (
        case.department_code,
        *case.co_handlers,
    ):
        raise Forbidden("this case is not in your department's queue")
    if who.role == "citizen" and not owns(who, case):
        raise Forbidden("this is not your case")
    if who.role == "gateway":
        raise Forbidden("gateways send telemetry only")


def authorize_lead(who: Principal, case: ServiceCase, command: object = None) -> None:
    """``authorize_read``, and a department acts on a case only as its lead unit."""
    authorize_read(who, case)
    if who.role == "department" and case.department_code != who.department:
        raise Forbidden("your department co-handles this case: only the lead unit may do this")


def authorize_co_handler(who: Principal, case: ServiceCase, command: object) -> None:
    """A department answers for its own co-handling part only."""
    authorize_read(who, case)
    if who.role == "department" and getattr(command, "department_code", None) != who.department:
        raise Forbidden("answer for your own department's part only")


def authorize_incident(who: Principal, incident: Incident) -> None:
    """403 for a department on an incident that is not dispatched to it."""
    if who.role == "department" and incident.department_code != who.department:
        raise Forbidden("this incident is not dispatched to your department")


def authorize_page(who: Principal, person: str) -> None:
    """403 unless the page is the caller's own (``person`` is whom the page went to)."""
    if person != who.actor:
        raise Forbidden("this page is not yours: acknowledge your own pages")


def scoped(who: Principal, flt: CaseFilter) -> CaseFilter:
    """Narrow a filter to what the caller may see."""
    if who.role == "department":
        if flt.department_code not in (None, who.department):
            raise Forbidden("departments see their own queue only")
        return CaseFilter(**{**_fields(flt), "department_code": who.department})
    if who.role == "citizen":
        citizen = str(citizen_uuid(who)) if who.via == "token" else None  # keys: no id
        return CaseFilter(**{**_fields(flt), "citizen_or_submitter": (citizen, who.actor)})
    return flt


def _fields(flt: CaseFilter) -> dict[str, Any]:
    return {name: getattr(flt, name) for name in CaseFilter.__slots__}
