"""Sensors: list with filters, one sensor, its readings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query

from api.deps import ReadDep
from api.responses import errors
from api.schemas import CODE, GridCode, Offset, SensorState, SensorType, Viewport
from projections.queries import collection

# Staff only: the app includes the router behind the staff roles (401, 403).
router = APIRouter(prefix="/api/v1/sensors", tags=["sensors"], responses=errors(401, 403, 422, 503))

MAX_WINDOW = timedelta(days=31)
DeviceId = Annotated[str, Path(pattern=CODE)]


@router.get("", responses=errors(400))
def list_sensors(
    read: ReadDep,
    type: Annotated[SensorType | None, Query(description="sensor type")] = None,
    state: SensorState | None = None,
    grid_code: GridCode = None,
    bbox: Viewport = None,
    limit: Annotated[int, Query(ge=1, le=20_000)] = 10_000,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Sensors as a GeoJSON FeatureCollection."""
    features = read.sensors(
        sensor_type=type, state=state, grid_code=grid_code, bbox=bbox, limit=limit, offset=offset
    )
    return collection(features)


@router.get("/{device_id}", responses=errors(404))
def get_sensor(read: ReadDep, device_id: DeviceId) -> dict[str, Any]:
    """One sensor as a GeoJSON Feature."""
    found = read.sensor(device_id)
    if found is None:
        raise HTTPException(404, f"unknown sensor {device_id!r}")
    return found


@router.get("/{device_id}/readings", responses=errors(400, 404))
def get_readings(
    read: ReadDep,
    device_id: DeviceId,
    from_: Annotated[datetime | None, Query(alias="from")] = None,
    to: datetime | None = None,
    agg: Literal["avg", "min", "max", "count"] | None = None,
    interval: Annotated[int, Query(ge=1, le=86_400, description="bucket seconds")] = 60,
) -> dict[str, Any]:
    """Readings of one sensor, raw or aggregated per ``interval`` seconds."""
    if read.sensor(device_id) is None:
        raise HTTPException(404, f"unknown sensor {device_id!r}")
    end = _aware(to) if to else datetime.now(UTC)
    start = _aware(from_) if from_ else end - timedelta(hours=1)
    if start >= end:
        raise HTTPException(400, "'from' must be before 'to'")
    if end - start > MAX_WINDOW:
        raise HTTPException(400, f"window longer than {MAX_WINDOW.days} days")
    series = read.readings(device_id, start, end, agg, interval)
    return {
        "device_id": device_id,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "agg": agg,
        "interval": interval if agg else None,
        "series": series,
    }


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
