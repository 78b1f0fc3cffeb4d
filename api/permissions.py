"""Who may run which case and incident command, and see which case.

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


def owns(who: Principal, case: ServiceCase) -> bool:
    return case.citizen_id == who.subject or case.submitted_by == who.actor


def authorize_read(who: Principal, case: ServiceCase) -> None:
    """403 unless ``who`` may see this case (departments: their own; citizens: theirs)."""
    if who.role == "department" and case.department_code != who.department:
        raise Forbidden("this case is not in your department's queue")
    if who.role == "citizen" and not owns(who, case):
        raise Forbidden("this is not your case")
    if who.role == "gateway":
        raise Forbidden("gateways send telemetry only")


def authorize_incident(who: Principal, incident: Incident) -> None:
    """403 for a department on an incident that is not dispatched to it."""
    if who.role == "department" and incident.department_code != who.department:
        raise Forbidden("this incident is not dispatched to your department")


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
