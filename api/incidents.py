"""Incidents: list (GeoJSON), one incident with its linked cases and sensors, and the
workflow: acknowledge, dispatch, accept, resolve (with field feedback; linked cases are
resolved with it), verify on site (close, or rework).

The workflow commands after acknowledge are a table (``WORKFLOW``): each row is one POST
route that builds its command from the body and runs it through ``IncidentDesk.execute``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel

from api import schemas
from api.auth import Principal, require
from api.concurrency import in_thread
from api.deps import CityDep, Container, ContainerDep, IncidentDeskDep, ReadDep, correlation
from api.permissions import INCIDENT_ACTION_ROLES, authorize_incident
from api.presenters import acknowledgement, resolution, workflow_state
from api.responses import errors
from api.routing import add_command
from api.schemas import Code, GridCode, Offset, Severity, Viewport
from core.commands import CommandContext
from core.incident import commands
from core.incident.desk import IncidentDesk, Outcome
from projections.nearby import NearbyQueries
from projections.queries import collection, feature

# Staff only: the app includes the router behind the staff roles (401, 403).
router = APIRouter(
    prefix="/api/v1/incidents", tags=["incidents"], responses=errors(401, 403, 422, 503)
)


def _may(action: str) -> Any:
    return Depends(require(*INCIDENT_ACTION_ROLES[action]))


@router.get("", responses=errors(400))
def list_incidents(
    read: ReadDep,
    status: Literal["open", "closed"] | None = None,
    severity: Severity | None = None,
    grid_code: GridCode = None,
    device_id: Code = None,
    bbox: Viewport = None,
    limit: Annotated[int, Query(ge=1, le=20_000)] = 5_000,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Incidents as a GeoJSON FeatureCollection, newest first."""
    return collection(
        read.incidents(
            status=status,
            severity=severity,
            grid_code=grid_code,
            device_id=device_id,
            bbox=bbox,
            limit=limit,
            offset=offset,
        )
    )


@router.get("/{incident_id}", responses=errors(404))
def get_incident(c: ContainerDep, incident_id: uuid.UUID) -> dict[str, Any]:
    """One incident as a GeoJSON Feature, with its linked cases and the sensors that see
    its place (its own device, and sensors of its correlation rule's types nearby)."""
    found = c.read.incident(incident_id)
    if found is None:
        raise HTTPException(404, f"unknown incident {incident_id}")
    props = found["properties"]
    found["linked_cases"] = [feature(r, "case_id") for r in c.cases.cases_of_incident(incident_id)]
    lon, lat = found["geometry"]["coordinates"]
    sensors: list[dict[str, Any]] = []
    rule = c.incidents.policy.rule_for_incident(props["category"]) if c.incidents else None
    if rule is not None and rule.sensor_types:
        for s in NearbyQueries(c.pool).sensors_near(lon, lat, rule.radius_m, rule.sensor_types):
            sensors.append(
                {
                    "device_id": s.device_id,
                    "distance_m": round(s.distance_m, 1),
                    "alarms": list(s.alarm_rules),
                    "silent": s.silent,
                }
            )
    if props.get("device_id") and all(s["device_id"] != props["device_id"] for s in sensors):
        own = c.read.sensor(props["device_id"])
        if own is not None:
            own_props = own["properties"]
            sensors.insert(
                0,
                {
                    "device_id": props["device_id"],
                    "distance_m": 0.0,
                    "alarms": list((own_props.get("alarms") or {}).keys()),
                    "silent": own_props.get("state") == "silent",
                },
            )
    found["sensors"] = sensors
    return found


@router.post("/{incident_id}/acknowledge", responses=errors(400, 404, 409, 413))
async def acknowledge(
    who: Annotated[Principal, _may("acknowledge")],
    city: CityDep,
    incident_id: uuid.UUID,
    body: schemas.Acknowledge | None = None,
) -> dict[str, Any]:
    """Acknowledge an incident's alarm; it closes once the alarm is also cleared."""
    incident = await in_thread(
        city.acknowledge_incident,
        incident_id,
        actor=who.actor,
        reason=(body or schemas.Acknowledge()).reason,
        correlation_id=correlation(),
    )
    return acknowledgement(incident)


# -- the workflow (派遣 -> 处置 -> 反馈 -> 核查 -> 结案) --------------------------------------


def _known_department(c: Container, body: schemas.Dispatch) -> None:
    known = c.desk.locator.departments()
    if body.department_code is not None and body.department_code not in known:
        raise HTTPException(422, f"unknown department {body.department_code!r}")


def _note_on_failure(c: Container, body: schemas.Verification) -> None:
    if not body.passed and not body.note.strip():
        raise HTTPException(422, "a failed verification needs a note saying what is wrong")


@dataclass(frozen=True, slots=True)
class WorkflowRoute:
    """One workflow command over HTTP: POST /api/v1/incidents/{incident_id}/``action``."""

    name: str  # the route's name: its OpenAPI summary and operation id
    action: str  # the path's last part; who may run it: INCIDENT_ACTION_ROLES[action]
    command: Callable[..., commands.IncidentCommand]  # called with the body's fields
    description: str
    body: type[BaseModel] | None = None  # None: the route takes no body
    # Checks of the request before the command runs (422s).
    validate: Callable[[Container, Any], None] | None = None
    # A department runs it only on an incident dispatched to it.
    own_department: bool = False
    answer: Callable[[Outcome], dict[str, Any]] = workflow_state


WORKFLOW = (
    WorkflowRoute(
        "dispatch",
        "dispatch",
        commands.Dispatch,
        "Dispatch (派遣) to a department, with a deadline from the incident's severity.",
        body=schemas.Dispatch,
        validate=_known_department,
    ),
    WorkflowRoute(
        "accept_work",
        "accept",
        commands.AcceptWork,
        "The department takes the incident on (处置 begins).",
        own_department=True,
    ),
    WorkflowRoute(
        "resolve",
        "resolve",
        commands.Resolve,
        "Field feedback (反馈): the incident is resolved, and so is every linked open case.",
        body=schemas.Feedback,
        own_department=True,
        answer=resolution,
    ),
    WorkflowRoute(
        "verify",
        "verify",
        commands.Verify,
        "On-site verification (核查): passed closes (结案); failed sends it back (返工).",
        body=schemas.Verification,
        validate=_note_on_failure,
    ),
)


def _add(route: WorkflowRoute) -> None:
    async def endpoint(
        *,
        who: Principal,
        c: Container | None = None,
        desk: IncidentDesk,
        incident_id: uuid.UUID,
        body: BaseModel | None = None,
    ) -> dict[str, Any]:
        if route.validate is not None:
            assert c is not None
            route.validate(c, body)
        command = route.command(**(body.model_dump() if body is not None else {}))
        check = (lambda i: authorize_incident(who, i)) if route.own_department else None
        done = await in_thread(
            desk.execute, incident_id, command, CommandContext(who.actor, correlation()), check
        )
        return route.answer(done)

    params: dict[str, Any] = {
        "who": Annotated[Principal, _may(route.action)],
        "desk": IncidentDeskDep,
        "incident_id": uuid.UUID,
    }
    if route.validate is not None:
        params["c"] = ContainerDep  # what the checks read
    if route.body is not None:
        params["body"] = route.body
    path = f"/{{incident_id}}/{route.action}"
    add_command(
        router,
        path,
        route.name,
        route.description,
        endpoint,
        # 400 and 413: a body that cannot be read.
        responses=errors(400, 404, 409, 413) if route.body else errors(404, 409),
        **params,
    )


for _route in WORKFLOW:
    _add(_route)
