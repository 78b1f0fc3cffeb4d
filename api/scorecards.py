"""Scorecards per grid cell, district or department, and case hotspots (staff reads)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from api.deps import ContainerDep
from api.responses import errors
from api.schemas import CODE, StrictViewport
from projections.queries import BBox, collection
from projections.scorecards import Level, Scorecards, Windows

# Staff only: the app includes the router behind the staff roles (401, 403).
router = APIRouter(prefix="/api/v1", tags=["scorecards"], responses=errors(401, 403, 422, 503))

DEFAULT_PERIOD = timedelta(days=30)
MAX_PERIOD = timedelta(days=366)

District = Annotated[str | None, Query(pattern=r"^\d{6}$", description="district code")]


def _period(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    """``[start, end)``; ``end`` defaults to now, ``start`` to 30 days before ``end``."""
    for name, value in (("start", start), ("end", end)):
        if value is not None and value.tzinfo is None:
            raise HTTPException(
                422, f"{name} needs a UTC offset, e.g. 2025-01-01T00:00:00+08:00 or ...Z"
            )
    if end is None:
        end = datetime.now(UTC)
    if start is None:
        try:
            start = end - DEFAULT_PERIOD
        except OverflowError:  # an end in the first 30 days of year 1
            raise HTTPException(422, "end is too early: give a start too") from None
    if end <= start:
        raise HTTPException(422, "end must be after start")
    if end - start > MAX_PERIOD:
        raise HTTPException(422, f"the period may be at most {MAX_PERIOD.days} days long")
    return start, end


@router.get("/scorecards")
def scorecards(
    c: ContainerDep,
    level: Level = "district",
    start: Annotated[datetime | None, Query(description="ISO 8601 with offset")] = None,
    end: Annotated[datetime | None, Query(description="ISO 8601 with offset, exclusive")] = None,
    district_code: District = None,
    department_code: Annotated[str | None, Query(max_length=64, pattern=CODE)] = None,
    bbox: StrictViewport = None,
) -> dict[str, Any]:
    """Closure, on-time, rework, extension, time-to-close and satisfaction per unit, best first."""
    start, end = _period(start, end)
    cards = Scorecards(c.pool)
    units = cards.scorecards(
        level,
        start,
        end,
        district_code=district_code,
        bbox=bbox,
        department_code=department_code,
    )
    return {
        "level": level,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "weights": {
            "version": cards.weights.version,
            **cards.weights.weights,
            "three_rates": dict(cards.weights.three_rates),
        },
        "units": units,
    }


@dataclass(frozen=True, slots=True)
class HotspotQuery:
    windows: Windows
    history_days: int
    district_code: str | None
    bbox: BBox | None
    min_cases: int
    z: float


def hotspot_query(
    hours: Annotated[int, Query(ge=1, le=168)] = 24,
    history_days: Annotated[int, Query(ge=1, le=365)] = 28,
    district_code: District = None,
    bbox: StrictViewport = None,
    z: Annotated[float, Query(gt=0, le=100)] = 3.0,
    min_cases: Annotated[int, Query(ge=1, le=100_000)] = 3,
) -> HotspotQuery:
    """The hotspot query's parameters, with its windows ending now."""
    try:
        windows = Windows.of(hours, datetime.now(UTC), history_days)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return HotspotQuery(windows, history_days, district_code, bbox, min_cases, z)


HotspotQueryDep = Annotated[HotspotQuery, Depends(hotspot_query)]


def _hotspots(c: ContainerDep, q: HotspotQuery) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    w = q.windows
    rows = Scorecards(c.pool).hotspots(
        hours=w.hours,
        now=w.end,
        history_days=q.history_days,
        district_code=q.district_code,
        bbox=q.bbox,
        min_cases=q.min_cases,
        z=q.z,
    )
    about = {
        "window": {"start": w.start.isoformat(), "end": w.end.isoformat(), "hours": w.hours},
        "history": {
            "days": q.history_days,
            "start": w.history_start.isoformat(),
            "windows": w.count,
        },
        "z": q.z,
        "min_cases": q.min_cases,
    }
    return about, rows


@router.get("/hotspots")
def hotspots(c: ContainerDep, q: HotspotQueryDep) -> dict[str, Any]:
    """Grid cells whose case count in the last hours is far above their own history."""
    about, rows = _hotspots(c, q)
    return {**about, "hotspots": rows}


@router.get("/hotspots.geojson")
def hotspots_geojson(c: ContainerDep, q: HotspotQueryDep) -> dict[str, Any]:
    """The hotspots as a GeoJSON FeatureCollection of their grid cells' polygons."""
    about, rows = _hotspots(c, q)
    cells = {f["id"]: f for f in c.layers["grid"]["features"]}
    features = []
    for row in rows:
        cell = cells.get(row["grid_code"])
        features.append(
            {
                "type": "Feature",
                "id": row["grid_code"],
                # A cell missing from the reference layer still reports its figures.
                "geometry": None if cell is None else cell["geometry"],
                "properties": row,
            }
        )
    return collection(features, **about)
