"""The operations center's own reads: KPI tiles, the SLA board, the page's start-up
configuration, and what the caller may do to one incident now (staff only)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.auth import Forbidden, StaffReader
from api.concurrency import in_thread
from api.deps import CityDep, Container, ContainerDep
from api.permissions import CASE_ACTION_ROLES, INCIDENT_ACTION_ROLES, scoped
from api.presenters import summary
from api.responses import errors
from api.schemas import CODE
from core.brain.correlation import CorrelationPolicy, load_policy
from core.case.sla import DUE_SOON_FRACTION
from core.incident import SEVERITIES, WORKING, Incident
from projections.case_queries import CaseFilter
from projections.ops_queries import OpsQueries

# Staff only: the app includes the router behind the staff roles (401, 403).
router = APIRouter(
    prefix="/api/v1/ops", tags=["operations center"], responses=errors(401, 403, 422, 503)
)

LANGUAGES = ("zh", "en")
INCIDENTS_PATH = "/api/v1/incidents"
Limit = Annotated[int, Query(ge=1, le=200, description="items per list")]


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


# -- what a caller may do ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IncidentState:
    """What decides which workflow commands an incident accepts now."""

    status: str
    stage: str
    acknowledged: bool
    department_code: str | None

    @classmethod
    def of(cls, incident: Incident) -> IncidentState:
        return cls(incident.status, incident.stage, incident.acknowledged, incident.department_code)


def _stage_allows(action: str, incident: IncidentState) -> bool:
    """The aggregate's own preconditions (core/incident/__init__.py), action by action."""
    if action == "acknowledge":
        return incident.status != "closed" and not incident.acknowledged
    if action == "dispatch":
        return incident.stage == "reported"
    if action == "accept":
        return incident.stage == "dispatched"
    if action == "resolve":
        return incident.stage in WORKING
    if action == "verify":
        return incident.stage == "resolved"
    return False


def incident_actions(role: str, department: str | None, incident: IncidentState) -> list[str]:
    """The workflow commands ``role`` may run on ``incident`` now, in workflow order.

    The role sets are the routes' own (``api.incidents.INCIDENT_ACTION_ROLES``); a
    department acts only on incidents dispatched to it, as the routes check.
    """
    return [
        action
        for action, roles in INCIDENT_ACTION_ROLES.items()
        if role in roles
        and (role != "department" or incident.department_code == department)
        and _stage_allows(action, incident)
    ]


def role_actions(role: str) -> dict[str, list[str]]:
    """Every command ``role`` may run at all, on incidents and on cases."""
    return {
        "incidents": [a for a, roles in INCIDENT_ACTION_ROLES.items() if role in roles],
        "cases": [a for a, roles in CASE_ACTION_ROLES.items() if role in roles],
    }


# -- config -------------------------------------------------------------------------------


def _positions(coords: Any) -> Iterator[tuple[float, float]]:
    """Every (lon, lat) of a GeoJSON geometry's nested coordinate arrays."""
    if coords and isinstance(coords[0], int | float):
        yield float(coords[0]), float(coords[1])
        return
    for part in coords or ():
        yield from _positions(part)


def layer_bounds(layer: dict[str, Any] | None) -> list[float] | None:
    """West, south, east, north of a GeoJSON FeatureCollection; None when it is empty."""
    points = [
        p
        for f in (layer or {}).get("features", [])
        if f.get("geometry")
        for p in _positions(f["geometry"].get("coordinates"))
    ]
    if not points:
        return None
    lons, lats = [p[0] for p in points], [p[1] for p in points]
    return [min(lons), min(lats), max(lons), max(lats)]


@router.get("/config")
def config(who: StaffReader, c: ContainerDep) -> dict[str, Any]:
    """What the page needs to start: map tiles, the city's extent, the caller and their
    commands, the languages."""
    bounds = layer_bounds(c.layers.get("districts"))
    center = None if bounds is None else [(bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2]
    return {
        "tile_url": c.settings.map_tile_url or None,
        "bounds": bounds,
        "center": center,
        "timezone": c.desk.categories.calendar.timezone,
        "environment": c.settings.environment.value,
        "user": {
            "subject": who.subject,
            "role": who.role,
            "department": who.department,
            "actor": who.actor,
        },
        # A department's incident and case commands apply to its own work only.
        "actions": role_actions(who.role),
        "own_department_only": who.role == "department",
        "languages": list(LANGUAGES),
    }


@router.get("/actions/incidents/{incident_id}", responses=errors(404))
async def incident_actions_now(
    who: StaffReader, city: CityDep, incident_id: uuid.UUID
) -> dict[str, Any]:
    """The commands the caller may run on this incident now (role, ownership and stage),
    from the incident itself, so the answer is never behind the read model."""
    incident = await in_thread(city.get_incident, incident_id)
    state = IncidentState.of(incident)
    actions = incident_actions(who.role, who.department, state)
    return {
        "incident_id": str(incident.id),
        "status": incident.status,
        "stage": incident.stage,
        "acknowledged": incident.acknowledged,
        "department_code": incident.department_code,
        "version": incident.version,
        "role": who.role,
        "actions": [
            {"action": a, "method": "POST", "path": f"{INCIDENTS_PATH}/{incident.id}/{a}"}
            for a in actions
        ],
        # Dispatching an incident whose place has no department needs one named.
        "department_required": "dispatch" in actions and not incident.department_code,
    }


# -- KPIs -----------------------------------------------------------------------------------


@router.get("/kpis")
def kpis(
    c: ContainerDep,
    period_days: Annotated[
        int, Query(ge=1, le=366, description="on-time and satisfaction over the last N days")
    ] = 30,
) -> dict[str, Any]:
    """The tiles: open incidents, sensors, cases today (every submission since the city's
    midnight) and open, and the on-time closure rate and satisfaction of the period's
    work (the scorecards' definitions)."""
    now = datetime.now(UTC)
    zone = c.desk.categories.calendar.zone
    today = datetime.combine(now.astimezone(zone).date(), time(0), zone)
    start = now - timedelta(days=period_days)
    figures = OpsQueries(c.pool).kpis(today, start, now)
    figures["cases"]["today_since"] = today.isoformat()
    figures["performance"] = {
        "start": start.isoformat(),
        "end": now.isoformat(),
        "days": period_days,
        **figures["performance"],
    }
    return {"as_of": now.isoformat(), "timezone": zone.key, **figures}


# -- the SLA board ------------------------------------------------------------------------


def _policy(c: Container) -> CorrelationPolicy:
    return c.incidents.policy if c.incidents is not None else load_policy()


def _incident_item(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    due = row["due_at"]
    return {
        "incident_id": str(row["incident_id"]),
        "kind": row["kind"],
        "title": row["title"],
        "category": row["category"],
        "severity": row["severity"],
        "stage": row["stage"],
        "alarm_status": row["alarm_status"],
        "acknowledged": row["acknowledged"],
        "device_id": row["device_id"],
        "department_code": row["department_code"],
        "district_code": row["district_code"],
        "grid_code": row["grid_code"],
        "location": {"lon": row["lon"], "lat": row["lat"]},
        "opened_at": _iso(row["opened_at"]),
        "dispatched_at": _iso(row["dispatched_at"]),
        "due_at": _iso(due),
        # Negative when overdue: how long ago the deadline passed.
        "seconds_left": None if due is None else round((due - now).total_seconds()),
        "overdue": bool(row["overdue"]),
        "due_soon": bool(row["due_soon"]),
        "escalation_level": row["escalation_level"],
        "reworks": row["reworks"],
        "linked_cases": row["linked_cases"],
    }


@router.get("/sla")
def sla_board(
    who: StaffReader,
    c: ContainerDep,
    limit: Limit = 20,
    department_code: Annotated[str | None, Query(max_length=64, pattern=CODE)] = None,
) -> dict[str, Any]:
    """Overdue and due-soon cases (the deadline marks the case clock records) and the
    incidents being worked that are overdue, due soon or escalated: most urgent first,
    ``limit`` of each, with counts. A department sees its own work."""
    if who.role == "department":
        if department_code not in (None, who.department):
            raise Forbidden("departments see their own queue only")
        department_code = who.department
    now = datetime.now(UTC)
    overdue_filter = scoped(who, CaseFilter(overdue=True, department_code=department_code))
    overdue = c.cases.cases(overdue_filter, order="due", limit=limit)
    overdue_total = c.cases.count(overdue_filter) if len(overdue) == limit else len(overdue)
    ops = OpsQueries(c.pool)
    due_soon, due_soon_total = ops.due_soon_cases(department_code, limit)
    # An incident is due soon in the last (1 - 0.8) of its time limit, as a case is.
    policy = _policy(c)
    soon = {s: policy.time_limit(s) * (1 - DUE_SOON_FRACTION) for s in SEVERITIES}
    default_soon = policy.time_limit("") * (1 - DUE_SOON_FRACTION)
    incidents, counts = ops.sla_incidents(now, soon, default_soon, department_code, limit)
    return {
        "as_of": now.isoformat(),
        "department_code": department_code,
        "limit": limit,
        "cases": {
            "overdue": {"total": overdue_total, "items": [summary(r) for r in overdue]},
            "due_soon": {"total": due_soon_total, "items": [summary(r) for r in due_soon]},
        },
        "incidents": {**counts, "items": [_incident_item(r, now) for r in incidents]},
    }
