"""What the OGC APIs under ``/ogc`` share (``api.ogc``: Features, ``api.tiles``: Tiles):
the collections and their access, parameters and CRSs, links, OGC exceptions and the
route class that answers with them, the conformance classes of both."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import errors
from api.auth import STAFF_READ, Forbidden, Principal, Unauthorized
from api.deps import Container
from api.responses import ogc_errors
from projections import ogc_features as of
from projections.queries import BBox

PREFIX = errors.OGC_PREFIX  # api.errors answers in OGC's format under it too
JSON = "application/json"
GEOJSON = "application/geo+json"
OPENAPI_30 = "application/vnd.oai.openapi+json;version=3.0"  # /ogc/api (api.openapi30)
OPENAPI_31 = "application/vnd.oai.openapi+json;version=3.1"  # the whole app's /openapi.json
DEFAULT_LIMIT = 10
MAX_LIMIT = 10_000

CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
EPSG_4326 = "http://www.opengis.net/def/crs/EPSG/0/4326"
EPSG_4490 = "http://www.opengis.net/def/crs/EPSG/0/4490"
TRS = "http://www.opengis.net/def/uom/ISO-8601/0/Gregorian"
FEATURES_CONFORMANCE = (
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs",
)
# api.tiles: Mapbox vector tiles of these collections in WebMercatorQuad.
TILES_CONFORMANCE = (
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tileset",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tilesets-list",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/geodata-tilesets",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/mvt",
    "http://www.opengis.net/spec/tms/2.0/conf/tilematrixset",
    "http://www.opengis.net/spec/tms/2.0/conf/json-tilematrixset",
)
CONFORMANCE = FEATURES_CONFORMANCE + TILES_CONFORMANCE
TILED = ("grid", "sensors")
TILESETS_VECTOR = "http://www.opengis.net/def/rel/ogc/1.0/tilesets-vector"
TILING_SCHEMES = "http://www.opengis.net/def/rel/ogc/1.0/tiling-schemes"
REFERENCE = ("districts", "grid")
TIME_TRAVELLERS = ("auditor", "operator")  # as api.replay

# Accepted on every resource: clients add crs and bbox-crs to each request they make
# (GDAL's OAPIF driver does with the query of the URL it is given); api_key authenticates.
COMMON_PARAMS = frozenset({"f", "crs", "bbox-crs", "api_key"})
ITEMS_PARAMS = COMMON_PARAMS | {"bbox", "limit", "offset", "datetime"}


@dataclass(frozen=True, slots=True)
class Collection:
    id: str
    title: str
    description: str
    key: str  # the property that is the feature's id


COLLECTIONS: dict[str, Collection] = {
    c.id: c
    for c in (
        Collection("districts", "Districts", "The city's districts (区).", "district_code"),
        Collection(
            "grid", "Unit grid cells", "The unit grid cells (单元网格) of the city.", "grid_code"
        ),
        Collection("sensors", "Sensors", "Every registered sensor with its state.", "device_id"),
        Collection(
            "incidents",
            "Open incidents",
            "Incidents of the management network still open; with a datetime interval,"
            " every incident open during it.",
            "incident_id",
        ),
        Collection(
            "cases",
            "Open service cases",
            "Service cases still being worked on, where they are and how far they are in"
            " the workflow (no personal data); with a datetime interval, every case open"
            " during it.",
            "case_id",
        ),
    )
}


# -- errors -------------------------------------------------------------------------------


class OgcError(Exception):
    """An answer in OGC's exception format."""

    def __init__(self, status: int, code: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.code = code
        self.description = description


def bad(description: str) -> OgcError:
    return OgcError(400, "InvalidParameterValue", description)


_CODES = {400: "InvalidParameterValue", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound"}


def exception(
    status: int, code: str, description: str, headers: Mapping[str, str] | None = None
) -> Response:
    body = orjson.dumps({"code": code, "description": description})
    return Response(body, status, headers=dict(headers or {}), media_type=JSON)


class OgcRoute(APIRoute):
    """Routes whose errors come as OGC exceptions (request validation as 400, not 422)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except OgcError as exc:
                return exception(exc.status, exc.code, exc.description)
            except RequestValidationError as exc:
                text = "; ".join(
                    f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg', '')}"
                    for e in exc.errors()
                )
                return exception(400, "InvalidParameterValue", text or "invalid request")
            except StarletteHTTPException as exc:
                code = _CODES.get(exc.status_code, "Error")
                return exception(exc.status_code, code, str(exc.detail), exc.headers)

        return route


# What the collections answer besides: access, unknown ids, the database down.
COLLECTION_ERRORS = ogc_errors(401, 403, 404, 503)


# -- parameters ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Crs:
    uri: str
    lat_first: bool  # axis order latitude, longitude


CRSES = {c.uri: c for c in (Crs(CRS84, False), Crs(EPSG_4326, True), Crs(EPSG_4490, True))}
_CRS_NAMES = {
    "ogc:crs84": CRS84,
    "crs84": CRS84,
    "epsg:4326": EPSG_4326,
    "epsg:4490": EPSG_4490,
}


def parse_crs(raw: str | None, name: str) -> Crs:
    """A CRS by its URI (or the short form ``EPSG:4490``); CRS84 when not given."""
    if raw is None:
        return CRSES[CRS84]
    text = raw.strip().removeprefix("[").removesuffix("]")
    uri = _CRS_NAMES.get(text.lower(), text.replace("https://", "http://", 1))
    crs = CRSES.get(uri)
    if crs is None:
        raise bad(f"{name}: {raw!r} is not supported; use one of {', '.join(CRSES)}")
    return crs


def parse_bbox(raw: str, crs: Crs) -> list[BBox]:
    """``bbox`` in ``crs``'s axis order, as one box (two across the antimeridian)."""
    parts = raw.split(",")
    if len(parts) not in (4, 6):
        raise bad("bbox: give 4 numbers (or 6, with heights) separated by commas")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise bad(f"bbox: {raw!r} is not a list of numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise bad("bbox: numbers must be finite")
    if len(values) == 6:  # heights are ignored: every feature here lies on the ground
        values = [values[0], values[1], values[3], values[4]]
    if crs.lat_first:
        south, west, north, east = values
    else:
        west, south, east, north = values
    if not (-180 <= min(west, east) <= max(west, east) <= 180) or not (
        -90 <= min(south, north) <= max(south, north) <= 90
    ):
        raise bad(f"bbox: {raw!r} is outside longitude -180..180 / latitude -90..90 ({crs.uri})")
    if south > north:
        raise bad("bbox: the southern edge is north of the northern one")
    if west > east:  # across the antimeridian
        return [BBox(west, south, 180.0, north), BBox(-180.0, south, east, north)]
    return [BBox(west, south, east, north)]


def _instant(text: str) -> datetime:
    if "T" not in text.upper():
        raise bad(f"datetime: {text!r} is not a date-time (RFC 3339, e.g. 2025-11-21T08:00:00Z)")
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise bad(f"datetime: {text!r} is not a date-time (RFC 3339)") from None
    if value.tzinfo is None:
        raise bad(f"datetime: {text!r} has no time zone (add Z or an offset)")
    return value


def parse_datetime(raw: str) -> datetime | of.Window:
    """An instant, or an interval ``start/end`` with ``..`` (or nothing) for an open end."""
    text = raw.strip()
    if "/" not in text:
        return _instant(text)
    start_text, _, end_text = text.partition("/")
    if "/" in end_text:
        raise bad("datetime: an interval has one '/'")
    start = None if start_text in ("", "..") else _instant(start_text)
    end = None if end_text in ("", "..") else _instant(end_text)
    if start is None and end is None:
        raise bad("datetime: an interval needs at least one end")
    if start is not None and end is not None and start > end:
        raise bad("datetime: the interval ends before it starts")
    return of.Window(start, end)


def check_params(request: Request, allowed: frozenset[str]) -> None:
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        raise bad(
            f"unknown parameter {', '.join(unknown)}; this resource takes"
            f" {', '.join(sorted(allowed - {'api_key'}))}"
        )
    fmt = request.query_params.get("f")
    if fmt is not None and fmt.lower() not in ("json", "geojson"):
        raise bad(f"f: {fmt!r} is not offered; the answers are JSON (f=json)")


def check_access(who: Principal | None, collection_id: str) -> None:
    """401/403 unless ``who`` may read the collection (it exists)."""
    if collection_id in REFERENCE:
        return
    if who is None:
        raise Unauthorized("authentication required: a bearer token or an API key")
    if who.role not in STAFF_READ:
        raise Forbidden(f"role {who.role} may not read {collection_id}")


def readable(who: Principal | None) -> list[str]:
    return [cid for cid in COLLECTIONS if cid in REFERENCE or (who and who.role in STAFF_READ)]


def collection_of(collection_id: str) -> Collection:
    found = COLLECTIONS.get(collection_id)
    if found is None:
        raise OgcError(404, "NotFound", f"no collection {collection_id!r}")
    return found


# -- answers ------------------------------------------------------------------------------


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/") + PREFIX


def link(href: str, rel: str, media: str, title: str | None = None) -> dict[str, str]:
    out = {"href": href, "rel": rel, "type": media}
    if title:
        out["title"] = title
    return out


def as_json(doc: Any, media: str = JSON, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(doc), media_type=media, headers=dict(headers or {}))


def _swapped(coords: Any) -> Any:
    if coords and isinstance(coords[0], int | float):
        return [coords[1], coords[0], *coords[2:]]
    return [_swapped(c) for c in coords]


def in_crs(feature: dict[str, Any], crs: Crs) -> dict[str, Any]:
    """``feature`` (CRS84) with its coordinates in ``crs``'s axis order (a new dict)."""
    geometry = feature.get("geometry")
    if not crs.lat_first or geometry is None:
        return feature
    if geometry["type"] == "GeometryCollection":
        moved = {
            **geometry,
            "geometries": [
                {**g, "coordinates": _swapped(g["coordinates"])} for g in geometry["geometries"]
            ],
        }
    else:
        moved = {**geometry, "coordinates": _swapped(geometry["coordinates"])}
    return {**feature, "geometry": moved}


def content_crs(crs: Crs) -> dict[str, str]:
    return {"Content-Crs": f"<{crs.uri}>"}


# -- the reference layers, indexed once per app ---------------------------------------------

_indexing = threading.Lock()


def reference(request: Request, c: Container, collection: Collection) -> of.ReferenceCollection:
    cache: dict[str, of.ReferenceCollection] | None = getattr(request.app.state, "ogc", None)
    if cache is None or collection.id not in cache:
        with _indexing:
            cache = getattr(request.app.state, "ogc", None) or {}
            if collection.id not in cache:
                layer = c.layers.get(collection.id) or {"features": []}
                cache[collection.id] = of.ReferenceCollection(layer, collection.key)
            request.app.state.ogc = cache
    return cache[collection.id]


def city_bbox(request: Request, c: Container) -> list[float] | None:
    box = reference(request, c, COLLECTIONS["districts"]).bbox
    return None if box is None else list(box)


def collection_doc(request: Request, c: Container, collection: Collection) -> dict[str, Any]:
    base = base_url(request)
    here = f"{base}/collections/{collection.id}"
    extent: dict[str, Any] = {}
    if collection.id in REFERENCE:
        box = reference(request, c, collection).bbox
        bbox = None if box is None else list(box)
    else:
        with c.pool.connection() as conn:
            found = of.point_extent(conn, of.POINT_SOURCES[collection.id])
        bbox = list(found.bbox) if found.bbox else city_bbox(request, c)
        start = None if found.start is None else found.start.isoformat()
        extent["temporal"] = {"interval": [[start, None]], "trs": TRS}
    if bbox is not None:
        extent["spatial"] = {"bbox": [bbox], "crs": CRS84}
    return {
        "id": collection.id,
        "title": collection.title,
        "description": collection.description,
        "itemType": "feature",
        "links": [
            link(here, "self", JSON, "this collection"),
            link(f"{here}/items", "items", GEOJSON, f"the {collection.title.lower()}"),
            *(
                [link(f"{here}/tiles", TILESETS_VECTOR, JSON, "vector tilesets")]
                if collection.id in TILED
                else []
            ),
        ],
        "extent": extent,
        "crs": list(CRSES),
        "storageCrs": CRS84,
    }


CrsParam = Annotated[
    str | None, Query(description="the CRS of the answer: CRS84 (default), EPSG:4326, EPSG:4490")
]
BBoxCrsParam = Annotated[
    str | None, Query(alias="bbox-crs", description="the CRS of bbox (default CRS84)")
]
FormatParam = Annotated[str | None, Query(description="json (the only format)")]
CollectionId = Annotated[str, Path(description=f"one of {', '.join(COLLECTIONS)}")]
