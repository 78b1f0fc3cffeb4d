"""Map layers as GeoJSON FeatureCollections (RFC 7946, WGS84 lon/lat)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter

from api.deps import ContainerDep
from projections.queries import collection

router = APIRouter(prefix="/api/v1/map", tags=["map"])


@router.get("/layers/{layer}")
def layer(c: ContainerDep, layer: Literal["districts", "grid", "sensors", "incidents"]) -> Any:
    """One layer of the live map."""
    if layer == "districts":
        return c.layers["districts"]
    if layer == "grid":
        load = c.read.grid_load()
        empty = {"sensors": 0, "open_incidents": 0}
        features = [
            {**f, "properties": {**f["properties"], **load.get(f["id"], empty)}}
            for f in c.layers["grid"]["features"]
        ]
        return collection(features)
    if layer == "sensors":
        return collection(c.read.sensors(limit=1_000_000))
    return collection(c.read.incidents(status="open", limit=1_000_000))
