"""Incidents: list (GeoJSON), one incident with its linked cases and sensors, and the
workflow: acknowledge, dispatch, accept, resolve (with field feedback; linked cases are
resolved with it), verify on site (close, or rework)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api.auth import Forbidden, Principal, Role, require
from api.deps import CityDep, ContainerDep, IncidentDeskDep, ReadDep, correlation
from core.incident import Incident
from projections.nearby import NearbyQueries
from projections.queries import BBox, collection, feature

router = APIRouter(prefix="/api/v1/incidents", tags=["incidents"])

Severity = Literal["warning", "minor", "major", "critical"]
# Who may run each workflow command (departments: on their own incidents only). The
# routes below take their roles from here, and so does the operations center's list of
# what a caller may do (api/ops.py).
INCIDENT_ACTION_ROLES: dict[str, tuple[Role, ...]] = {
    "acknowledge": ("operator", "dispatcher"),
    "dispatch": ("operator", "dispatcher"),
    "accept": ("operator", "dispatcher", "department"),
    "resolve": ("operator", "dispatcher", "department"),
    "verify": ("operator", "dispatcher"),
}


def _may(action: str) -> Any:
    return Depends(require(*INCIDENT_ACTION_ROLES[action]))


class Acknowledge(BaseModel):
    reason: str = Field(default="", max_length=1_000)


@router.get("")
def list_incidents(
    read: ReadDep,
    status: Literal["open", "closed"] | None = None,
    severity: Severity | None = None,
    grid_code: Annotated[str | None, Query(pattern=r"^\d{15}$")] = None,
    device_id: str | None = None,
    bbox: Annotated[str | None, Query(description="west,south,east,north (WGS84)")] = None,
    limit: Annotated[int, Query(ge=1, le=20_000)] = 5_000,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """Incidents as a GeoJSON FeatureCollection, newest first."""
    box = BBox.parse(bbox) if bbox else None
    return collection(
        read.incidents(
            status=status,
            severity=severity,
            grid_code=grid_code,
            device_id=device_id,
            bbox=box,
            limit=limit,
            offset=offset,
        )
    )


@router.get("/{incident_id}")
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


@router.post("/{incident_id}/acknowledge")
async def acknowledge(
    who: Annotated[Principal, _may("acknowledge")],
    city: CityDep,
    incident_id: uuid.UUID,
    body: Acknowledge | None = None,
) -> dict[str, Any]:
    """Acknowledge an incident's alarm; it closes once the alarm is also cleared."""
    incident = await run_in_threadpool(
        city.acknowledge_incident,
        incident_id,
        actor=who.actor,
        reason=(body or Acknowledge()).reason,
        correlation_id=correlation(),
    )
    return {
        "incident_id": str(incident.id),
        "status": incident.status,
        "alarm_status": incident.alarm_status,
        "acknowledged": incident.acknowledged,
        "acknowledged_by": incident.acknowledged_by,
        "version": incident.version,
    }


# -- the workflow (派遣 -> 处置 -> 反馈 -> 核查 -> 结案) --------------------------------------


class Dispatch(BaseModel):
    department_code: str | None = Field(
        default=None, max_length=64, description="default: the department of the place"
    )
    reason: str = Field(default="", max_length=2_000)


class Feedback(BaseModel):
    feedback: str = Field(min_length=1, max_length=4_000, description="处置反馈 from the field")


class Verification(BaseModel):
    passed: bool
    note: str = Field(default="", max_length=2_000)


def _state(incident: Incident, **extra: Any) -> dict[str, Any]:
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
        **extra,
    }


def _own_department(who: Principal) -> Any:
    def check(incident: Incident) -> None:
        if who.role == "department" and incident.department_code != who.department:
            raise Forbidden("this incident is not dispatched to your department")

    return check


@router.post("/{incident_id}/dispatch")
async def dispatch(
    who: Annotated[Principal, _may("dispatch")],
    c: ContainerDep,
    desk: IncidentDeskDep,
    incident_id: uuid.UUID,
    body: Dispatch,
) -> dict[str, Any]:
    """Dispatch (派遣) to a department, with a deadline from the incident's severity."""
    known = c.desk.locator.departments()
    if body.department_code is not None and body.department_code not in known:
        raise HTTPException(422, f"unknown department {body.department_code!r}")
    incident = await run_in_threadpool(
        desk.dispatch, incident_id, body.department_code, who.actor, body.reason, correlation()
    )
    return _state(incident)


@router.post("/{incident_id}/accept")
async def accept_work(
    who: Annotated[Principal, _may("accept")],
    desk: IncidentDeskDep,
    incident_id: uuid.UUID,
) -> dict[str, Any]:
    """The department takes the incident on (处置 begins)."""
    incident = await run_in_threadpool(
        desk.accept, incident_id, who.actor, correlation(), _own_department(who)
    )
    return _state(incident)


@router.post("/{incident_id}/resolve")
async def resolve(
    who: Annotated[Principal, _may("resolve")],
    desk: IncidentDeskDep,
    incident_id: uuid.UUID,
    body: Feedback,
) -> dict[str, Any]:
    """Field feedback (反馈): the incident is resolved, and so is every linked open case."""
    incident, cases = await run_in_threadpool(
        desk.resolve, incident_id, body.feedback, who.actor, correlation(), _own_department(who)
    )
    return _state(incident, resolved_cases=[str(c.id) for c in cases])


@router.post("/{incident_id}/verify")
async def verify(
    who: Annotated[Principal, _may("verify")],
    desk: IncidentDeskDep,
    incident_id: uuid.UUID,
    body: Verification,
) -> dict[str, Any]:
    """On-site verification (核查): passed closes (结案); failed sends it back (返工)."""
    if not body.passed and not body.note.strip():
        raise HTTPException(422, "a failed verification needs a note saying what is wrong")
    incident = await run_in_threadpool(
        desk.verify, incident_id, body.passed, body.note, who.actor, correlation()
    )
    return _state(incident)
