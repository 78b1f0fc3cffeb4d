"""Service cases for dispatchers, departments and citizens: queues, commands, timelines.

Lists come from the ``service_cases`` read model (sorted by due time for queues); one
case and every command work on the aggregate itself, so they are never stale.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api.auth import Forbidden, Principal, Role, citizen_uuid, require
from api.deps import CasesDep, DeskDep, correlation
from core.case import ACTIVE, OPEN, REJECTION_REASONS, ServiceCase
from core.case.desk import Check, ServiceDesk, SubmitCase
from core.personal import ERASED_VIEW, Contact
from projections.case_queries import CaseFilter
from projections.queries import BBox

router = APIRouter(prefix="/api/v1", tags=["cases"])

CaseStatus = Literal[
    "submitted",
    "accepted",
    "rejected",
    "assigned",
    "in_progress",
    "resolved",
    "reopened",
    "closed",
    "cancelled",
]
GRID = r"^\d{15}$"
# Who sees a citizen's contact in clear: the hotline's dispatchers, and the citizen.
CLEAR_CONTACT = ("dispatcher",)
# Events whose fields are safe to show in a timeline (no sealed contact, no citizen id).
_HIDDEN_FIELDS = {"contact_token", "citizen_id", "originator_id", "originator_version"}

# Who may run each case command (departments: on their own queue's cases; citizens: on
# their own cases). The routes below take their roles from here, and so does the
# operations center's list of what a caller may do (api/ops.py).
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

Dispatcher = Annotated[Principal, Depends(require(*DISPATCHER_ROLES))]
DepartmentStaff = Annotated[Principal, Depends(require(*DEPARTMENT_ROLES))]
CaseReader = Annotated[
    Principal, Depends(require("operator", "dispatcher", "department", "auditor", "citizen"))
]


# -- views --------------------------------------------------------------------------------


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def summary(row: dict[str, Any]) -> dict[str, Any]:
    """A read-model row as the API shows it in lists (no personal data)."""
    deadline_no = row["deadline_no"]
    active = row["status"] in ACTIVE
    return {
        "case_id": str(row["case_id"]),
        "channel": row["channel"],
        "category": row["category"],
        "status": row["status"],
        "status_notes": row["status_notes"],
        "description": row["description"],
        "location": None if row["lon"] is None else {"lon": row["lon"], "lat": row["lat"]},
        "address": row["address"],
        "grid_code": row["grid_code"],
        "district_code": row["district_code"],
        "department_code": row["department_code"],
        "awaiting_assignment": row["awaiting_assignment"],
        "possible_duplicates": row["possible_duplicates"],
        "due_at": _iso(row["due_at"]),
        "due_soon": active and deadline_no > 0 and row["due_soon_marked"] == deadline_no,
        "overdue": active and deadline_no > 0 and row["overdue_marked"] == deadline_no,
        "extension_pending": row["extension_pending"],
        "rating": row["rating"],
        # The urban brain's link: the incident this report is part of, what the sensors
        # near it showed, and whether it was resolved with that incident (主动服务).
        "incident_id": None if row["incident_id"] is None else str(row["incident_id"]),
        "sensor_check": row["sensor_check"],
        "proactive": row["proactive"],
        "personal_data_erased": row["personal_data_erased"],
        "submitted_at": _iso(row["submitted_at"]),
        "updated_at": _iso(row["updated_at"]),
        "version": row["version"],
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
            k: _iso(v)
            for k, v in ev.__dict__.items()
            if k not in _HIDDEN_FIELDS and k != "timestamp"
        }
        out.append(
            {
                "event": type(ev).__name__,
                "at": _iso(ev.timestamp),
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
        "channel": case.channel,
        "external_id": case.external_id,
        "category": case.category,
        "categories_version": case.categories_version,
        "status": case.status,
        "status_notes": case.status_notes,
        "description": case.description,
        "location": None if case.lon is None else {"lon": case.lon, "lat": case.lat},
        "address": case.address,
        "attributes": case.attributes,
        "personal_data_erased": case.erased,
        "submitted_by": case.submitted_by,
        "rejection": case.rejection,
        "duplicate_of": case.duplicate_of,
        "possible_duplicates": case.possible_duplicates,
        "grid_code": case.grid_code,
        "district_code": case.district_code,
        "department_code": case.department_code,
        "dispatch": case.dispatch,
        "due_at": _iso(case.due_at),
        "due_soon_at": _iso(case.due_soon_at),
        "deadline_no": case.deadline_no,
        "due_soon": case.status in ACTIVE and case.due_soon_recorded == case.deadline_no > 0,
        "overdue": case.status in ACTIVE and case.overdue,
        "extension_request": case.extension_request,
        "extensions": case.extensions,
        "returns": case.returns,
        "revisits": case.revisits,
        "reply": case.reply,
        "rating": case.rating,
        "rating_comment": case.rating_comment,
        "created_at": _iso(case.created_on),
        "updated_at": _iso(case.modified_on),
        "version": case.version,
    }
    if with_contact:
        out["contact"] = contact_view(desk, who, case)
    return out


# -- request bodies -------------------------------------------------------------------------


class ContactIn(BaseModel):
    name: str | None = Field(default=None, max_length=100)
    phone: str | None = Field(default=None, max_length=32)
    email: str | None = Field(default=None, max_length=254)
    address: str | None = Field(default=None, max_length=300)


class NewCase(BaseModel):
    category: str = Field(min_length=1, max_length=64, description="a category code")
    description: str = Field(default="", max_length=4_000)
    lon: float | None = Field(default=None, ge=-180, le=180)
    lat: float | None = Field(default=None, ge=-90, le=90)
    address: str | None = Field(default=None, max_length=300, description="problem location")
    attributes: dict[str, Any] = Field(default_factory=dict)
    contact: ContactIn | None = None
    external_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="your id; resubmitting it is refused",
    )


class Reason(BaseModel):
    reason: str = Field(default="", max_length=2_000)


class Reject(BaseModel):
    rejection: Literal["duplicate", "out_of_scope", "not_our_city"] = Field(
        description=f"one of {', '.join(REJECTION_REASONS)}"
    )
    duplicate_of: uuid.UUID | None = None
    reason: str = Field(default="", max_length=2_000)


class Assign(BaseModel):
    department_code: str = Field(min_length=1, max_length=64)
    reason: str = Field(default="", max_length=2_000)


class Resolve(BaseModel):
    reply: str = Field(min_length=1, max_length=4_000, description="the answer to the citizen")
    reason: str = Field(default="", max_length=2_000)


class ExtensionRequest(BaseModel):
    hours: float = Field(gt=0, le=24 * 90)
    reason: str = Field(min_length=1, max_length=2_000)


class Rate(BaseModel):
    rating: int = Field(ge=1, le=5)
    comment: str = Field(default="", max_length=2_000)


# -- lists ---------------------------------------------------------------------------------


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


@router.get("/cases")
def list_cases(
    who: CaseReader,
    cases: CasesDep,
    status: Annotated[list[CaseStatus] | None, Query()] = None,
    category: Annotated[list[str] | None, Query()] = None,
    department_code: str | None = None,
    district_code: str | None = None,
    grid_code: Annotated[str | None, Query(pattern=GRID)] = None,
    overdue: bool | None = None,
    awaiting_assignment: bool | None = None,
    bbox: Annotated[str | None, Query(description="west,south,east,north (WGS84)")] = None,
    order: Literal["due", "newest"] = "due",
    limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """Cases you may see, by due time (or newest first), with filters."""
    flt = scoped(
        who,
        CaseFilter(
            statuses=tuple(status) if status else None,
            categories=tuple(category) if category else None,
            department_code=department_code,
            district_code=district_code,
            grid_code=grid_code,
            overdue=overdue,
            awaiting_assignment=awaiting_assignment,
            bbox=BBox.parse(bbox) if bbox else None,
        ),
    )
    rows = cases.cases(flt, order=order, limit=limit, offset=offset)
    return {"cases": [summary(r) for r in rows], "total": cases.count(flt), "offset": offset}


@router.get("/cases/overdue")
def overdue_cases(
    who: CaseReader,
    cases: CasesDep,
    department_code: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """Active cases past their deadline, most overdue first."""
    flt = scoped(who, CaseFilter(overdue=True, department_code=department_code))
    rows = cases.cases(flt, order="due", limit=limit, offset=offset)
    return {"cases": [summary(r) for r in rows], "total": cases.count(flt), "offset": offset}


@router.get("/departments")
def departments(who: CaseReader, desk: DeskDep) -> dict[str, Any]:
    """Every department that can receive cases."""
    return {
        "departments": [
            {"code": d.code, "type": d.department_type, "name": d.name, "name_zh": d.name_zh}
            for d in sorted(desk.locator.departments().values(), key=lambda d: d.code)
        ]
    }


@router.get("/departments/{department_code}/queue")
def department_queue(
    who: CaseReader,
    cases: CasesDep,
    department_code: str,
    status: Annotated[list[CaseStatus] | None, Query()] = None,
    overdue: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """A department's work queue, most urgent first (open cases unless ``status`` says)."""
    if who.role == "citizen":
        raise Forbidden("citizens see their own cases only")
    flt = scoped(
        who,
        CaseFilter(
            statuses=tuple(status) if status else tuple(s for s in OPEN if s in ACTIVE),
            department_code=department_code,
            overdue=overdue,
        ),
    )
    rows = cases.cases(flt, order="due", limit=limit, offset=offset)
    return {"cases": [summary(r) for r in rows], "total": cases.count(flt), "offset": offset}


# -- one case ------------------------------------------------------------------------------


def _load(desk: ServiceDesk, who: Principal, case_id: uuid.UUID) -> ServiceCase:
    case = desk.get(case_id)
    authorize_read(who, case)
    return case


@router.get("/cases/{case_id}")
async def get_case(who: CaseReader, desk: DeskDep, case_id: uuid.UUID) -> dict[str, Any]:
    """One case with its whole timeline (who did what, when, and why)."""

    def load() -> dict[str, Any]:
        case = _load(desk, who, case_id)
        return {**detail(desk, who, case), "timeline": timeline(desk, case_id)}

    return await run_in_threadpool(load)


@router.post("/cases", status_code=201)
async def submit_case(
    who: Annotated[Principal, Depends(require(*CASE_ACTION_ROLES["submit"]))],
    desk: DeskDep,
    body: NewCase,
    idempotency_key: Annotated[str | None, Header(max_length=100)] = None,
) -> dict[str, Any]:
    """File a case: staff for a caller (channel ``operator``), or a citizen (``app``)."""
    contact = body.contact or ContactIn()
    cmd = SubmitCase(
        channel="app" if who.role == "citizen" else "operator",
        external_id=f"{who.actor}:{body.external_id or idempotency_key or uuid.uuid4()}",
        category=body.category,
        description=body.description,
        lon=body.lon,
        lat=body.lat,
        address=body.address,
        attributes=body.attributes,
        contact=Contact.parse(contact.name, contact.phone, contact.email, contact.address),
        citizen_id=citizen_uuid(who),
    )
    case = await run_in_threadpool(desk.submit, cmd, who.actor, correlation())
    return detail(desk, who, case, with_contact=False)


async def _run(
    desk: ServiceDesk, who: Principal, command: Callable[[Check], ServiceCase]
) -> dict[str, Any]:
    """Run a command that authorizes ``who`` on the loaded case; answer with the new state."""

    def check(case: ServiceCase) -> None:
        authorize_read(who, case)

    def go() -> dict[str, Any]:
        return detail(desk, who, command(check), with_contact=False)

    return await run_in_threadpool(go)


class Accept(BaseModel):
    reason: str = Field(default="", max_length=2_000)
    department_code: str | None = Field(
        default=None, max_length=64, description="dispatch here instead of by policy"
    )


@router.post("/cases/{case_id}/accept")
async def accept(
    who: Dispatcher, desk: DeskDep, case_id: uuid.UUID, body: Accept
) -> dict[str, Any]:
    """Register a held case (立案); the dispatch policy (or ``department_code``) assigns it."""
    return await _run(
        desk,
        who,
        lambda check: desk.accept(
            case_id, who.actor, body.reason, correlation(), check, body.department_code
        ),
    )


@router.post("/cases/{case_id}/reject")
async def reject(
    who: Dispatcher, desk: DeskDep, case_id: uuid.UUID, body: Reject
) -> dict[str, Any]:
    """Reject: duplicate (of another case), out of scope, or not this city's."""
    return await _run(
        desk,
        who,
        lambda check: desk.reject(
            case_id, body.rejection, body.duplicate_of, who.actor, body.reason, correlation(), check
        ),
    )


@router.post("/cases/{case_id}/assign")
async def assign(
    who: Dispatcher, desk: DeskDep, case_id: uuid.UUID, body: Assign
) -> dict[str, Any]:
    """Dispatch (派遣) by hand: cases no jurisdiction covers, and returned cases."""
    return await _run(
        desk,
        who,
        lambda check: desk.assign(
            case_id, body.department_code, who.actor, body.reason, correlation(), check
        ),
    )


@router.post("/cases/{case_id}/extension/approve")
async def approve_extension(
    who: Dispatcher, desk: DeskDep, case_id: uuid.UUID, body: Reason
) -> dict[str, Any]:
    """Approve a department's extension request (延期): the deadline moves."""
    return await _run(
        desk,
        who,
        lambda check: desk.decide_extension(
            case_id, True, who.actor, body.reason, correlation(), check
        ),
    )


@router.post("/cases/{case_id}/extension/refuse")
async def refuse_extension(
    who: Dispatcher, desk: DeskDep, case_id: uuid.UUID, body: Reason
) -> dict[str, Any]:
    """Refuse a department's extension request: the deadline stays."""
    return await _run(
        desk,
        who,
        lambda check: desk.decide_extension(
            case_id, False, who.actor, body.reason, correlation(), check
        ),
    )


@router.post("/cases/{case_id}/start")
async def start(
    who: DepartmentStaff, desk: DeskDep, case_id: uuid.UUID, body: Reason
) -> dict[str, Any]:
    """The department starts work (处置)."""
    return await _run(
        desk, who, lambda check: desk.start(case_id, who.actor, body.reason, correlation(), check)
    )


@router.post("/cases/{case_id}/resolve")
async def resolve(
    who: DepartmentStaff, desk: DeskDep, case_id: uuid.UUID, body: Resolve
) -> dict[str, Any]:
    """Resolve with a reply to the citizen (反馈)."""
    return await _run(
        desk,
        who,
        lambda check: desk.resolve(
            case_id, body.reply, who.actor, body.reason, correlation(), check
        ),
    )


@router.post("/cases/{case_id}/return")
async def return_case(
    who: DepartmentStaff, desk: DeskDep, case_id: uuid.UUID, body: Reason
) -> dict[str, Any]:
    """Return a case that is not the department's own: it goes back for re-dispatch."""
    return await _run(
        desk,
        who,
        lambda check: desk.return_case(case_id, who.actor, body.reason, correlation(), check),
    )


@router.post("/cases/{case_id}/extension")
async def request_extension(
    who: DepartmentStaff, desk: DeskDep, case_id: uuid.UUID, body: ExtensionRequest
) -> dict[str, Any]:
    """Ask a dispatcher for more time (延期申请)."""
    return await _run(
        desk,
        who,
        lambda check: desk.request_extension(
            case_id, body.hours, who.actor, body.reason, correlation(), check
        ),
    )


@router.post("/cases/{case_id}/rate")
async def rate(
    who: Annotated[Principal, Depends(require(*CASE_ACTION_ROLES["rate"]))],
    desk: DeskDep,
    case_id: uuid.UUID,
    body: Rate,
) -> dict[str, Any]:
    """The citizen's rating (好差评); a dispatcher records one taken on a revisit call."""
    return await _run(
        desk,
        who,
        lambda check: desk.rate(
            case_id, body.rating, body.comment, who.actor, correlation(), check
        ),
    )


@router.post("/cases/{case_id}/cancel")
async def cancel(
    who: Annotated[Principal, Depends(require(*CASE_ACTION_ROLES["cancel"]))],
    desk: DeskDep,
    case_id: uuid.UUID,
    body: Reason,
) -> dict[str, Any]:
    """Withdraw an unresolved case (the citizen, or a dispatcher on their behalf)."""
    return await _run(
        desk,
        who,
        lambda check: desk.cancel(case_id, who.actor, body.reason, correlation(), check),
    )


@router.delete("/citizens/me/personal-data")
async def erase_me(
    who: Annotated[Principal, Depends(require("citizen"))], desk: DeskDep, cases: CasesDep
) -> dict[str, Any]:
    """Erase your personal data (PIPL): cases stay, their contact reads ``[erased]``."""
    citizen = citizen_uuid(who)
    assert citizen is not None

    noted = await run_in_threadpool(
        desk.erase_citizen, citizen, cases.case_ids_of_citizen, who.actor, correlation()
    )
    return {
        "citizen_id": str(citizen),
        "cases_noted": noted,
        "erased_at": datetime.now(UTC).isoformat(),
    }
