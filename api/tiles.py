"""OGC API – Tiles: vector tiles (Mapbox Vector Tile) of the unit grid and the sensors.

Under ``/ogc`` beside the Features routes (``api.ogc``), whose collections, access rules
and error format these share: ``grid`` for anyone, ``sensors`` for staff.

- ``/tileMatrixSets``, ``/tileMatrixSets/WebMercatorQuad``: the one tile matrix set;
- ``/collections/{id}/tiles``: a collection's tilesets; ``.../tiles/WebMercatorQuad``: the
  tileset, with its limits (the city's extent, from ``min_zoom`` to ``max_zoom``);
- ``.../tiles/WebMercatorQuad/{tileMatrix}/{tileRow}/{tileCol}``: one tile
  (``projections.tiles``).

A tile outside the tile matrix set or the tileset's limits is a 404; a row, column or
matrix that is not a whole number ≥ 0 a 400. A tile inside the limits with nothing in it is
a 204: it tells a client there is nothing to draw, without a body to parse (an empty MVT
is zero bytes anyway), and the OGC requirement for empty tiles allows it. Every tile
answer carries an ``ETag`` (the grid's: its layer digest and the tile; the sensors': the
tile's signature, its sensors' count and last change) and ``Cache-Control``, and
``If-None-Match`` with the current tag gets 304. The grid is fixed while a process runs,
so it may be cached for ``GRID_MAX_AGE``; the sensors change, and are for staff only, so
private caches revalidate them every time.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response

from api.auth import OptionalPrincipalDep, Principal
from api.deps import Container, ContainerDep
from api.ogc_common import (
    COLLECTIONS,
    COMMON_PARAMS,
    CRS84,
    JSON,
    Collection,
    CollectionId,
    FormatParam,
    OgcError,
    OgcRoute,
    as_json,
    bad,
    base_url,
    check_access,
    check_params,
    collection_of,
    link,
    reference,
)
from api.responses import not_modified, ogc_errors
from projections.tiles import (
    MVT,
    TMS,
    PolygonTiles,
    SensorTiles,
    TileId,
    TileOutOfRangeError,
    Tileset,
)

TILING_SCHEME = "http://www.opengis.net/def/rel/ogc/1.0/tiling-scheme"
GRID_ZOOMS = (12, 18)  # from cells a few pixels wide to street level
# A client sees where the sensors are from a city seen whole (z8: a few tiles for the
# largest) down to the street; below SENSOR_FULL_ZOOM a tile of a dense district would hold
# tens of thousands, so it holds every sensor not normal and one normal sensor per 64 x 64
# units (projections.tiles.SensorTiles).
SENSOR_ZOOMS = (8, 18)
SENSOR_FULL_ZOOM = 14
GRID_MAX_AGE = 3600
CACHE_CONTROL = {"grid": f"public, max-age={GRID_MAX_AGE}", "sensors": "private, no-cache"}
TILE_PARAMS = frozenset({"f", "api_key"})

router = APIRouter(
    prefix="/ogc", tags=["ogc"], route_class=OgcRoute, responses=ogc_errors(400, "4XX")
)
TILED_ERRORS = ogc_errors(401, 403, 404, 503)

Source = PolygonTiles | SensorTiles
_building = threading.Lock()


def sources(request: Request, c: Container) -> dict[str, Source]:
    """The app's tiled layers, built on first use: the grid from the Features' index."""
    found: dict[str, Source] | None = getattr(request.app.state, "tiles", None)
    if found is None:
        with _building:
            found = getattr(request.app.state, "tiles", None)
            if found is None:
                grid = reference(request, c, COLLECTIONS["grid"])
                properties = [f["properties"] for f in grid.features]
                cells = PolygonTiles("grid", grid.geometries, properties, GRID_ZOOMS)
                city = Tileset(*SENSOR_ZOOMS, cells.tileset.bbox)
                found = {
                    "grid": cells,
                    "sensors": SensorTiles(c.pool, city, full_zoom=SENSOR_FULL_ZOOM),
                }
                request.app.state.tiles = found
    return found


def tiled(
    request: Request, c: Container, who: Principal | None, collection_id: str
) -> tuple[Collection, Source]:
    """The collection and its tiles: 404 for none, 401/403 as the Features routes."""
    found = collection_of(collection_id)
    check_access(who, found.id)
    if found.id not in CACHE_CONTROL:
        raise OgcError(404, "NotFound", f"the collection {found.id!r} has no tiles")
    return found, sources(request, c)[found.id]


def matrix_set(tile_matrix_set_id: str) -> None:
    if tile_matrix_set_id != TMS.id:
        raise OgcError(404, "NotFound", f"no tile matrix set {tile_matrix_set_id!r}; use {TMS.id}")


def _tiles_url(request: Request, collection_id: str) -> str:
    return f"{base_url(request)}/collections/{collection_id}/tiles"


def _tileset_summary(request: Request, found: Collection) -> dict[str, Any]:
    here = f"{_tiles_url(request, found.id)}/{TMS.id}"
    return {
        "title": f"{found.title}, vector tiles",
        "dataType": "vector",
        "crs": str(TMS.crs.root),
        "tileMatrixSetURI": TMS.uri,
        "links": [
            link(here, "self", JSON, "this tileset"),
            link(f"{base_url(request)}/tileMatrixSets/{TMS.id}", TILING_SCHEME, JSON, TMS.id),
        ],
    }


def _layer(found: Collection, source: Source) -> dict[str, Any]:
    return {
        "id": found.id,
        "title": found.title,
        "dataType": "vector",
        "geometryDimension": source.dimension,
        "minTileMatrix": str(source.tileset.min_zoom),
        "maxTileMatrix": str(source.tileset.max_zoom),
        "propertiesSchema": {
            "type": "object",
            "properties": {name: {"type": "string"} for name in source.fields},
        },
    }


def _tileset(request: Request, found: Collection, source: Source) -> dict[str, Any]:
    doc = _tileset_summary(request, found)
    tileset = source.tileset
    template = "{tileMatrix}/{tileRow}/{tileCol}"
    doc["links"] += [
        {**link(f"{doc['links'][0]['href']}/{template}", "item", MVT, "a tile"), "templated": True},
        link(f"{base_url(request)}/collections/{found.id}", "collection", JSON, found.title),
    ]
    limits = []
    for z in range(tileset.min_zoom, tileset.max_zoom + 1):
        row0, row1, col0, col1 = tileset.limits(z)
        limits.append(
            {
                "tileMatrix": str(z),
                "minTileRow": row0,
                "maxTileRow": row1,
                "minTileCol": col0,
                "maxTileCol": col1,
            }
        )
    west, south, east, north = tileset.bbox
    doc["tileMatrixSetLimits"] = limits
    doc["boundingBox"] = {"lowerLeft": [west, south], "upperRight": [east, north], "crs": CRS84}
    doc["layers"] = [_layer(found, source)]
    return doc


TileMatrixSetId = Annotated[str, Path(description=f"the tile matrix set: {TMS.id}")]


@router.get("/tileMatrixSets", summary="The tile matrix sets of the tiles")
def tile_matrix_sets(request: Request, f: FormatParam = None) -> Response:
    """The tile matrix sets the tiles come in: WebMercatorQuad."""
    check_params(request, COMMON_PARAMS)
    here = f"{base_url(request)}/tileMatrixSets"
    entry = {
        "id": TMS.id,
        "title": TMS.title,
        "uri": TMS.uri,
        "crs": str(TMS.crs.root),
        "links": [link(f"{here}/{TMS.id}", "self", JSON, TMS.id)],
    }
    return as_json(
        {"links": [link(here, "self", JSON, "this document")], "tileMatrixSets": [entry]}
    )


@router.get(
    "/tileMatrixSets/{tile_matrix_set_id}",
    summary="A tile matrix set's definition",
    responses=ogc_errors(404),
)
def tile_matrix_set(
    request: Request, tile_matrix_set_id: TileMatrixSetId, f: FormatParam = None
) -> Response:
    """The definition of a tile matrix set (OGC Two Dimensional Tile Matrix Set 2.0)."""
    matrix_set(tile_matrix_set_id)
    check_params(request, COMMON_PARAMS)
    return as_json(TMS.model_dump(mode="json", exclude_none=True))


@router.get(
    "/collections/{collection_id}/tiles",
    summary="The tilesets of a collection",
    responses=TILED_ERRORS,
)
def tilesets(
    request: Request,
    c: ContainerDep,
    who: OptionalPrincipalDep,
    collection_id: CollectionId,
    f: FormatParam = None,
) -> Response:
    """The vector tilesets of a collection (grid, sensors)."""
    found, _ = tiled(request, c, who, collection_id)
    check_params(request, COMMON_PARAMS)
    here = _tiles_url(request, found.id)
    return as_json(
        {
            "links": [link(here, "self", JSON, "this document")],
            "tilesets": [_tileset_summary(request, found)],
        }
    )


@router.get(
    "/collections/{collection_id}/tiles/{tile_matrix_set_id}",
    summary="A collection's tileset",
    responses=TILED_ERRORS,
)
def tileset(
    request: Request,
    c: ContainerDep,
    who: OptionalPrincipalDep,
    collection_id: CollectionId,
    tile_matrix_set_id: TileMatrixSetId,
    f: FormatParam = None,
) -> Response:
    """A tileset: its tile URL template, limits per tile matrix and layer."""
    found, source = tiled(request, c, who, collection_id)
    matrix_set(tile_matrix_set_id)
    check_params(request, COMMON_PARAMS)
    return as_json(_tileset(request, found, source))


Whole = Annotated[int, Path(ge=0)]
TileFormat = Annotated[str | None, Query(description="mvt (the only format)")]


@router.get(
    "/collections/{collection_id}/tiles/{tile_matrix_set_id}/{tile_matrix}/{tile_row}/{tile_col}",
    summary="A vector tile",
    response_class=Response,
    responses={
        200: {"content": {MVT: {}}, "description": "a Mapbox Vector Tile"},
        204: {"description": "a tile inside the tileset's limits with nothing in it"},
        304: {"description": "unchanged since the ETag sent in If-None-Match"},
        **TILED_ERRORS,
    },
)
def tile(
    request: Request,
    c: ContainerDep,
    who: OptionalPrincipalDep,
    collection_id: CollectionId,
    tile_matrix_set_id: TileMatrixSetId,
    tile_matrix: Whole,
    tile_row: Whole,
    tile_col: Whole,
    f: TileFormat = None,
) -> Response:
    """One tile (Mapbox Vector Tile 2.1), in the tile matrix set's row and column order."""
    found, source = tiled(request, c, who, collection_id)
    matrix_set(tile_matrix_set_id)
    unknown = sorted(set(request.query_params) - TILE_PARAMS)
    if unknown:
        raise bad(f"unknown parameter {', '.join(unknown)}; a tile takes f")
    if f is not None and f.lower() != "mvt":
        raise bad(f"f: {f!r} is not offered; tiles are Mapbox Vector Tiles (f=mvt)")
    at = TileId(tile_matrix, tile_row, tile_col)
    try:
        source.tileset.check(at)
    except TileOutOfRangeError as exc:
        raise OgcError(
            404, "NotFound", f"no tile {tile_matrix}/{tile_row}/{tile_col}: {exc}"
        ) from None
    tag = source.tag(at)
    headers = {"ETag": tag.etag, "Cache-Control": CACHE_CONTROL[found.id]}
    if not_modified(request.headers.get("if-none-match"), tag.etag):
        return Response(status_code=304, headers=headers)
    rendered = source.render(at, tag)
    headers["ETag"] = rendered.etag
    if not rendered.body:
        return Response(status_code=204, headers=headers)
    return Response(rendered.body, media_type=MVT, headers=headers)
