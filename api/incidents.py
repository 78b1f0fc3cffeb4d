"""Incidents: list (GeoJSON), one incident, acknowledge."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api.auth import Principal, require
from api.deps import CityDep, ReadDep
from projections.queries import BBox, collection

router = APIRouter(prefix="/api/v1/incidents", tags=["incidents"])

Severity = Literal["warning", "minor", "major", "critical"]


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
def get_incident(read: ReadDep, incident_id: uuid.UUID) -> dict[str, Any]:
    """One incident as a GeoJSON Feature."""
    found = read.incident(incident_id)
    if found is None:
        raise HTTPException(404, f"unknown incident {incident_id}")
    return found


@router.post("/{incident_id}/acknowledge")
async def acknowledge(
    who: Annotated[Principal, Depends(require("operator", "dispatcher"))],
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
        correlation_id=f"http:{uuid.uuid4()}",
    )
    return {
        "incident_id": str(incident.id),
        "status": incident.status,
        "alarm_status": incident.alarm_status,
        "acknowledged": incident.acknowledged,
        "acknowledged_by": incident.acknowledged_by,
        "version": incident.version,
    }
