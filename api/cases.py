"""Service cases for dispatchers, departments and citizens: queues, commands, timelines.

Lists come from the ``service_cases`` read model (sorted by due time for queues); one
case and every command work on the aggregate itself, so they are never stale. The
commands are a table (``CASE_COMMANDS``): each row is one POST route that builds its
command from the body and runs it through ``ServiceDesk.execute``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from pydantic import BaseModel

from api import schemas
from api.auth import Forbidden, Principal, citizen_uuid, require
from api.concurrency import in_thread
from api.deps import CasesDep, DeskDep, container, correlation
from api.permissions import (
    CASE_ACTION_ROLES,
    CASE_READERS,
    authorize_co_handler,
    authorize_lead,
    authorize_read,
    scoped,
)
from api.presenters import detail, summary, timeline
from api.responses import errors
from api.routing import JSONBody, add_command
from api.schemas import CODE, DISTRICT, Code, CodeText, GridCode, Offset, Viewport
from core.case import ACTIVE, OPEN, CaseStatus, ServiceCase, commands
from core.case.desk import ServiceDesk, SubmitCase
from core.commands import CommandContext
from core.personal import Contact
from projections.case_queries import CaseFilter

router = APIRouter(prefix="/api/v1", tags=["cases"], responses=errors(401, 403, 422, 503))

CaseReader = Annotated[Principal, Depends(require(*CASE_READERS))]


@router.get("/cases", responses=errors(400))
def list_cases(
    who: CaseReader,
    cases: CasesDep,
    status: Annotated[list[CaseStatus] | None, Query()] = None,
    category: Annotated[list[CodeText] | None, Query()] = None,
    department_code: Code = None,
    district_code: Annotated[str | None, Query(pattern=DISTRICT)] = None,
    grid_code: GridCode = None,
    overdue: bool | None = None,
    awaiting_assignment: bool | None = None,
    dispute_pending: bool | None = None,
    bbox: Viewport = None,
    order: Literal["due", "newest"] = "due",
    limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
    offset: Offset = 0,
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
            dispute_pending=dispute_pending,
            bbox=bbox,
        ),
    )
    rows = cases.cases(flt, order=order, limit=limit, offset=offset)
    return {"cases": [summary(r) for r in rows], "total": cases.count(flt), "offset": offset}


@router.get("/cases/overdue")
def overdue_cases(
    who: CaseReader,
    cases: CasesDep,
    department_code: Code = None,
    limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
    offset: Offset = 0,
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
    department_code: Annotated[str, Path(pattern=CODE)],
    status: Annotated[list[CaseStatus] | None, Query()] = None,
    overdue: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
    offset: Offset = 0,
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


@router.get("/cases/{case_id}", responses=errors(404))
async def get_case(who: CaseReader, desk: DeskDep, case_id: uuid.UUID) -> dict[str, Any]:
    """One case with its whole timeline (who did what, when, and why)."""

    def load() -> dict[str, Any]:
        case = _load(desk, who, case_id)
        return {**detail(desk, who, case), "timeline": timeline(desk, case_id)}

    return await in_thread(load)


@router.post(
    "/cases", status_code=201, response_model=dict[str, Any], responses=errors(400, 409, 413)
)
async def submit_case(
    who: Annotated[Principal, Depends(require(*CASE_ACTION_ROLES["submit"]))],
    request: Request,
    body: schemas.NewCase,
    idempotency_key: Annotated[str | None, Header(max_length=100)] = None,
) -> Response:
    """File a case: staff for a caller (channel ``operator``), or a citizen (``app``)."""
    desk = container(request).desk  # not a dependency: see _add
    contact = body.contact or schemas.ContactIn()
    cmd = SubmitCase(
        channel="app" if who.role == "citizen" else "operator",
        external_id=f"{who.actor}:{body.external_id or idempotency_key or uuid.uuid4()}",
        # The body's other fields are the command's, by name (as the contact's are).
        **body.model_dump(exclude={"external_id", "contact"}),
        contact=Contact.parse(**contact.model_dump()),
        citizen_id=citizen_uuid(who),
    )
    case = await in_thread(desk.submit, cmd, who.actor, correlation())
    # Written as the commands' answers are (api.routing.JSONBody).
    return JSONBody(detail(desk, who, case, with_contact=False), status_code=201)


@router.get("/departments/{department_code}/co-handling")
def co_handling_queue(
    who: CaseReader,
    cases: CasesDep,
    department_code: Annotated[str, Path(pattern=CODE)],
    limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Active cases another unit leads where this department's co-handling part (协办) is
    still to be answered, most urgent first."""
    if who.role == "citizen":
        raise Forbidden("citizens see their own cases only")
    if who.role == "department" and department_code != who.department:
        raise Forbidden("departments see their own queue only")
    flt = CaseFilter(statuses=ACTIVE, co_handler=department_code)
    rows = cases.cases(flt, order="due", limit=limit, offset=offset)
    return {"cases": [summary(r) for r in rows], "total": cases.count(flt), "offset": offset}


# -- commands -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandRoute:
    """One case command over HTTP: POST /api/v1/cases/{case_id}``path``."""

    name: str  # the route's name: its OpenAPI summary and operation id
    path: str
    action: str  # who may run it: CASE_ACTION_ROLES[action]
    body: type[BaseModel]
    command: Callable[..., commands.CaseCommand]  # called with the body's fields
    description: str
    # The object-level check on the loaded case (departments: the lead unit's commands).
    authorize: Callable[[Principal, ServiceCase, commands.CaseCommand], None] = authorize_lead


CASE_COMMANDS = (
    CommandRoute(
        "accept",
        "/accept",
        "accept",
        schemas.Accept,
        commands.Accept,
        "Register a held case (立案); the dispatch policy (or ``department_code``) assigns it.",
    ),
    CommandRoute(
        "reject",
        "/reject",
        "reject",
        schemas.Reject,
        commands.Reject,
        "Reject: duplicate (of another case), out of scope, or not this city's.",
    ),
    CommandRoute(
        "assign",
        "/assign",
        "assign",
        schemas.Assign,
        commands.Assign,
        "Dispatch (派遣) by hand: cases no jurisdiction covers, and returned cases.",
    ),
    CommandRoute(
        "approve_extension",
        "/extension/approve",
        "approve_extension",
        schemas.Reason,
        commands.ApproveExtension,
        "Approve a department's extension request (延期): the deadline moves.",
    ),
    CommandRoute(
        "refuse_extension",
        "/extension/refuse",
        "refuse_extension",
        schemas.Reason,
        commands.RefuseExtension,
        "Refuse a department's extension request: the deadline stays.",
    ),
    CommandRoute(
        "start",
        "/start",
        "start",
        schemas.Reason,
        commands.Start,
        "The department starts work (处置).",
    ),
    CommandRoute(
        "resolve",
        "/resolve",
        "resolve",
        schemas.Resolve,
        commands.Resolve,
        "Resolve with a reply to the citizen (反馈).",
    ),
    CommandRoute(
        "return_case",
        "/return",
        "return",
        schemas.Reason,
        commands.ReturnCase,
        "Return a case that is not the department's own: it goes back for re-dispatch.",
    ),
    CommandRoute(
        "request_extension",
        "/extension",
        "request_extension",
        schemas.ExtensionRequest,
        commands.RequestExtension,
        "Ask a dispatcher for more time (延期申请).",
    ),
    CommandRoute(
        "rate",
        "/rate",
        "rate",
        schemas.Rate,
        commands.Rate,
        "The citizen's rating (好差评); a dispatcher records one taken on a revisit call.",
    ),
    CommandRoute(
        "cancel",
        "/cancel",
        "cancel",
        schemas.Reason,
        commands.Cancel,
        "Withdraw an unresolved case (the citizen, or a dispatcher on their behalf).",
    ),
    CommandRoute(
        "add_co_handler",
        "/co-handlers",
        "add_co_handler",
        schemas.AddCoHandler,
        commands.AddCoHandler,
        "Ask another unit to co-handle (协办) its part of the work.",
    ),
    CommandRoute(
        "answer_co_handling",
        "/co-handling/answer",
        "answer_co_handling",
        schemas.AnswerCoHandling,
        commands.AnswerCoHandling,
        "A co-handling unit's feedback on its part (协办反馈); the lead resolves once all"
        " have answered.",
        authorize_co_handler,
    ),
    CommandRoute(
        "waive_co_handling",
        "/co-handling/waive",
        "waive_co_handling",
        schemas.RequiredReason,
        commands.WaiveCoHandling,
        "Let the lead resolve without the co-handlers still pending (a reason is needed).",
    ),
    CommandRoute(
        "dispute",
        "/dispute",
        "dispute",
        schemas.Dispute,
        commands.Dispute,
        "The lead disputes its assignment (异议) within the time allowed; a dispatcher arbitrates.",
    ),
    CommandRoute(
        "uphold_dispute",
        "/dispute/uphold",
        "uphold_dispute",
        schemas.UpholdDispute,
        commands.UpholdDispute,
        "Uphold the dispute: reassign (改派) to the unit named, due anew; the first unit's"
        " time is not counted against it.",
    ),
    CommandRoute(
        "reject_dispute",
        "/dispute/reject",
        "reject_dispute",
        schemas.RequiredReason,
        commands.RejectDispute,
        "Reject the dispute: the case stays with the unit, its clock still running.",
    ),
    CommandRoute(
        "contact_citizen",
        "/contact",
        "contact_citizen",
        schemas.ContactCitizen,
        commands.ContactCitizen,
        "Record a contact with the citizen (响应); the first counts for the response rate.",
    ),
)


def _add(route: CommandRoute) -> None:
    async def endpoint(
        who: Principal, request: Request, case_id: uuid.UUID, body: BaseModel
    ) -> dict[str, Any]:
        # The desk comes from the request, not from a dependency: each dependency costs
        # every request its solving, and these are the busiest routes.
        desk = container(request).desk
        command = route.command(**body.model_dump())
        ctx = CommandContext(who.actor, correlation())

        def run() -> dict[str, Any]:
            # The caller's authorization runs on the state the command runs on.
            case = desk.execute(case_id, command, ctx, lambda c: route.authorize(who, c, command))
            return detail(desk, who, case, with_contact=False)

        return await in_thread(run)

    add_command(
        router,
        f"/cases/{{case_id}}{route.path}",
        route.name,
        route.description,
        endpoint,
        who=Annotated[Principal, Depends(require(*CASE_ACTION_ROLES[route.action]))],
        request=Request,
        case_id=uuid.UUID,
        body=route.body,
        responses=errors(400, 404, 409, 413),
    )


for _route in CASE_COMMANDS:
    _add(_route)


@router.delete("/citizens/me/personal-data")
async def erase_me(
    who: Annotated[Principal, Depends(require("citizen"))], desk: DeskDep, cases: CasesDep
) -> dict[str, Any]:
    """Erase your personal data (PIPL): cases stay, their contact reads ``[erased]``."""
    citizen = citizen_uuid(who)
    assert citizen is not None

    noted = await in_thread(
        desk.erase_citizen, citizen, cases.case_ids_of_citizen, who.actor, correlation()
    )
    return {
        "citizen_id": str(citizen),
        "cases_noted": noted,
        "erased_at": datetime.now(UTC).isoformat(),
    }
