"""Map layers as GeoJSON FeatureCollections (RFC 7946, WGS84 lon/lat; ``coord_system``
gives them in GCJ-02 or BD-09 for a Chinese base map).

A layer request may name a viewport (``bbox``) and filters; the answer carries an ETag,
and ``If-None-Match`` with the current one gets 304. Bodies come from ``MapLayers``,
which serves them from memory while the map view has not moved.
"""

from __future__ import annotations

import threading
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from api.concurrency import in_thread
from api.deps import container
from api.responses import errors, not_modified
from api.schemas import SensorState, SensorType, Severity, bbox_in_wgs84
from gis.china import CoordSystem, convert_feature_collection
from projections.map_layers import MapLayers
from projections.queries import GEOJSON, POINT_LAYERS, LayerQuery, MapTokenFeed

# Staff only: the app includes the router behind the staff roles (401, 403).
router = APIRouter(prefix="/api/v1/map", tags=["map"], responses=errors(401, 403, 422, 503))

CACHE_LAYERS = True  # False: every request reads PostgreSQL (bench/bench_map.py --no-cache)

Layer = Literal["districts", "grid", "sensors", "incidents"]
Stage = Literal["reported", "dispatched", "accepted", "resolved", "closed"]
FILTERS: dict[str, tuple[str, ...]] = {
    "districts": (),
    "grid": (),
    **{name: point.filters for name, point in POINT_LAYERS.items()},
}
_building = threading.Lock()


async def map_layers(request: Request) -> MapLayers:
    """The app's map layers; async, so that requests after the first take no thread hop."""
    layers: MapLayers | None = getattr(request.app.state, "map_layers", None)
    if layers is None:  # the first request builds them, off the event loop
        layers = await in_thread(_build_map_layers, request)
    return layers


def _build_map_layers(request: Request) -> MapLayers:
    with _building:
        layers: MapLayers | None = getattr(request.app.state, "map_layers", None)
        if layers is None:
            c = container(request)
            layers = request.app.state.map_layers = MapLayers(c.read, c.layers, cache=CACHE_LAYERS)
        return layers


MapLayersDep = Annotated[MapLayers, Depends(map_layers)]


def tokens(request: Request) -> MapTokenFeed:
    """The app's reader of the map token (made on first use, closed with the app)."""
    feed: MapTokenFeed | None = getattr(request.app.state, "map_tokens", None)
    if feed is None:
        feed = request.app.state.map_tokens = MapTokenFeed(container(request).settings.database_url)
    return feed


@router.get(
    "/layers/{layer}",
    response_class=Response,
    responses={
        200: {"content": {GEOJSON: {}}, "description": "a GeoJSON FeatureCollection"},
        304: {"description": "unchanged since the ETag sent in If-None-Match"},
    },
)
async def layer(
    request: Request,
    layers: MapLayersDep,
    layer: Layer,
    bbox: Annotated[
        str | None, Query(description="viewport west,south,east,north (WGS84 degrees)")
    ] = None,
    state: Annotated[SensorState | None, Query(description="sensors")] = None,
    sensor_type: Annotated[SensorType | None, Query(description="sensors")] = None,
    severity: Annotated[Severity | None, Query(description="incidents")] = None,
    stage: Annotated[Stage | None, Query(description="incidents")] = None,
    category: Annotated[
        str | None, Query(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="incidents")
    ] = None,
    coord_system: Annotated[
        CoordSystem,
        Query(
            description="the system of bbox and of the answer: wgs84 (stored), or gcj02 /"
            " bd09 to draw over an AMap, Tencent or Baidu base map"
        ),
    ] = CoordSystem.WGS84,
) -> Response:
    """One layer of the live map, optionally cut to a viewport and filtered."""
    given = {
        "state": state,
        "sensor_type": sensor_type,
        "severity": severity,
        "stage": stage,
        "category": category,
    }
    wrong = [
        name for name, value in given.items() if value is not None and name not in FILTERS[layer]
    ]
    if wrong:
        raise HTTPException(422, f"the {layer} layer has no filter {', '.join(wrong)}")
    box = bbox_in_wgs84(bbox, coord_system)
    query = LayerQuery(
        box, tuple((name, value) for name, value in given.items() if value is not None)
    )
    rendered = await layers.render_async(layer, query, tokens(request))
    shifted = coord_system is not CoordSystem.WGS84
    etag = f'{rendered.etag[:-1]}-{coord_system.value}"' if shifted else rendered.etag
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if not_modified(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    if not shifted:
        return Response(rendered.body, media_type=GEOJSON, headers=headers)
    doc = await in_thread(_shifted, rendered.body, coord_system)
    return Response(doc, media_type=GEOJSON, headers=headers)


def _shifted(body: bytes, system: CoordSystem) -> bytes:
    doc = convert_feature_collection(orjson.loads(body), CoordSystem.WGS84, system)
    return orjson.dumps(doc)
