"""OGC API – Features over the city's map layers, under ``/ogc``.

Conformance: Part 1 core, GeoJSON and OpenAPI 3.0, Part 2 (CRS by reference). The API
definition (``/ogc/api``, the landing page's ``service-desc``) is OpenAPI 3.0: the /ogc
operations of the app's own document, which FastAPI writes as OpenAPI 3.1 (``/openapi.json``,
linked too), rewritten by ``api.openapi30``, paths relative to ``/ogc``.

Collections (``projections.ogc_features``): ``districts`` and ``grid`` (unit grid cells)
are the reference layers, open to anyone; ``sensors``, ``incidents`` (open ones) and
``cases`` (open service cases, without personal data) need a staff role, as the live map
(``api.map``) does. ``/collections`` lists the collections the caller may read.

``crs`` / ``bbox-crs``: CRS84 (lon, lat; the default), EPSG:4326 and EPSG:4490 (CGCS2000,
China's national frame), both lat, lon. The stored WGS-84 coordinates are given as they
are in EPSG:4490: the two frames agree to centimetres at CGCS2000's epoch (2000.0) and
the Eurasian plate has moved them apart by less than a metre since, within the accuracy
of the positions here (phones and sensors, metres); PROJ's own EPSG:4326 to EPSG:4490
operation is likewise the identity. Every answer with coordinates says its CRS in
``Content-Crs``.

``datetime`` on the items of sensors, incidents and cases:

- an instant: the collection as it was then, replayed from the city log
  (``projections.replay``: the checkpoint before it, then at most
  ``replay.SNAPSHOT_EVERY`` events). Time travel is an audit read: auditors and operators
  only, and each answered page is recorded in the city log, as ``api.replay`` does;
- an interval: every row whose time span meets it, in its state now (an incident from
  opened to closed, a case from submitted to resolved, a sensor at its last change).

The reference layers have no time: ``datetime`` is checked and selects all of them.
Errors are OGC exceptions, ``{"code", "description"}``: 400 for a bad parameter
(unknown ones included), 404 for an unknown collection or feature, 401/403 for access.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response

from api import openapi30
from api.audit_reads import record_audit_read
from api.auth import Forbidden, OptionalPrincipalDep, Principal
from api.deps import Container, ContainerDep, correlation
from api.ogc_common import (
    COLLECTION_ERRORS,
    COLLECTIONS,
    COMMON_PARAMS,
    CONFORMANCE,
    CRSES,
    DEFAULT_LIMIT,
    GEOJSON,
    ITEMS_PARAMS,
    JSON,
    MAX_LIMIT,
    OPENAPI_30,
    OPENAPI_31,
    PREFIX,
    REFERENCE,
    TILING_SCHEMES,
    TIME_TRAVELLERS,
    BBoxCrsParam,
    Collection,
    CollectionId,
    CrsParam,
    FormatParam,
    OgcError,
    OgcRoute,
    as_json,
    bad,
    base_url,
    check_access,
    check_params,
    collection_doc,
    collection_of,
    content_crs,
    in_crs,
    link,
    parse_bbox,
    parse_crs,
    parse_datetime,
    readable,
    reference,
)
from api.responses import ogc_errors
from api.schemas import MAX_OFFSET
from projections import ogc_features as of
from projections import replay
from projections.queries import BBox

# "4XX" as api.tiles: any other client error is an OGC exception too, and FastAPI then
# does not document its 422, which OgcRoute answers as a 400.
router = APIRouter(
    prefix=PREFIX, tags=["ogc"], route_class=OgcRoute, responses=ogc_errors(400, "4XX")
)
TITLE = "CityOps map layers"
DESCRIPTION = (
    "The city's districts, unit grid cells, sensors, open incidents and open service cases"
    " as OGC API – Features collections; the grid and the sensors also as vector tiles"
    " (OGC API – Tiles)."
)


@router.get("/", summary="OGC API – Features landing page")
def landing(request: Request, f: FormatParam = None, crs: CrsParam = None) -> Response:
    """The landing page: links to the API definition, conformance and the collections."""
    check_params(request, COMMON_PARAMS)
    base = base_url(request)
    root = str(request.base_url).rstrip("/")
    return as_json(
        {
            "title": TITLE,
            "description": DESCRIPTION,
            "links": [
                link(f"{base}/", "self", JSON, "this document"),
                # The 3.0 one first: clients that read one service-desc take the first,
                # GDAL the one of this type.
                link(f"{base}/api", "service-desc", OPENAPI_30, "the API definition"),
                link(
                    f"{root}/openapi.json",
                    "service-desc",
                    OPENAPI_31,
                    "the definition of the whole CityOps API, this one included",
                ),
                link(f"{root}/docs", "service-doc", "text/html", "the API documentation"),
                link(f"{base}/conformance", "conformance", JSON, "conformance classes"),
                link(f"{base}/collections", "data", JSON, "the collections"),
                link(f"{base}/tileMatrixSets", TILING_SCHEMES, JSON, "the tiling schemes"),
            ],
        }
    )


@router.get(
    "/api",
    summary="The API definition (OpenAPI 3.0)",
    response_class=Response,
    responses={
        200: {
            "content": {OPENAPI_30: {"schema": {"type": "object"}}},
            "description": "the OpenAPI 3.0 document of the routes under /ogc",
        }
    },
)
def api_definition(request: Request, f: FormatParam = None, crs: CrsParam = None) -> Response:
    """This API's definition: every /ogc operation with its parameters and answers."""
    check_params(request, COMMON_PARAMS)
    document = request.app.openapi()
    info = {"title": TITLE, "version": document["info"]["version"], "description": DESCRIPTION}
    return as_json(openapi30.definition(document, PREFIX, base_url(request), info), OPENAPI_30)


@router.get("/conformance", summary="The conformance classes implemented")
def conformance(request: Request, f: FormatParam = None, crs: CrsParam = None) -> Response:
    """The conformance classes this API implements."""
    check_params(request, COMMON_PARAMS)
    return as_json({"conformsTo": list(CONFORMANCE)})


@router.get("/collections", summary="The collections you may read", responses=ogc_errors(401, 503))
def collections(
    request: Request,
    c: ContainerDep,
    who: OptionalPrincipalDep,
    f: FormatParam = None,
    crs: CrsParam = None,
) -> Response:
    """Every collection the caller may read, with its extent and CRSs."""
    check_params(request, COMMON_PARAMS)
    base = base_url(request)
    docs = [collection_doc(request, c, COLLECTIONS[cid]) for cid in readable(who)]
    return as_json(
        {
            "links": [link(f"{base}/collections", "self", JSON, "this document")],
            "crs": list(CRSES),
            "collections": docs,
        }
    )


@router.get("/collections/{collection_id}", summary="One collection", responses=COLLECTION_ERRORS)
def collection(
    request: Request,
    c: ContainerDep,
    who: OptionalPrincipalDep,
    collection_id: CollectionId,
    f: FormatParam = None,
    crs: CrsParam = None,
) -> Response:
    """One collection: its extent, CRSs and links."""
    found = collection_of(collection_id)
    check_access(who, found.id)
    check_params(request, COMMON_PARAMS)
    return as_json(collection_doc(request, c, found))


@router.get(
    "/collections/{collection_id}/items",
    summary="The features of a collection",
    response_class=Response,
    responses={
        200: {"content": {GEOJSON: {}}, "description": "a GeoJSON FeatureCollection"},
        **COLLECTION_ERRORS,
    },
)
def items(
    request: Request,
    c: ContainerDep,
    who: OptionalPrincipalDep,
    collection_id: CollectionId,
    bbox: Annotated[
        str | None, Query(description="west,south,east,north in bbox-crs's axis order")
    ] = None,
    bbox_crs: BBoxCrsParam = None,
    crs: CrsParam = None,
    datetime_: Annotated[
        str | None,
        Query(
            alias="datetime",
            description="an instant (the collection as it was then) or an interval"
            " start/end, '..' for an open end",
        ),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, description=f"features per page (at most {MAX_LIMIT})")
    ] = DEFAULT_LIMIT,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="features to skip")] = 0,
    f: FormatParam = None,
) -> Response:
    """A page of features; ``next``/``prev`` links page through the rest."""
    found = collection_of(collection_id)
    check_access(who, found.id)
    check_params(request, ITEMS_PARAMS)
    out_crs = parse_crs(crs, "crs")
    box_crs = parse_crs(bbox_crs, "bbox-crs")
    boxes = [] if bbox is None else parse_bbox(bbox, box_crs)
    when = None if datetime_ is None else parse_datetime(datetime_)
    limit = min(limit, MAX_LIMIT)
    extra: dict[str, Any] = {}
    if found.id in REFERENCE:
        page = reference(request, c, found).page(boxes, limit, offset)
    elif isinstance(when, datetime):
        page, extra = _as_of(request, c, who, found, when, boxes, limit, offset)
    else:
        with c.pool.connection() as conn:
            page = of.live_page(conn, of.POINT_SOURCES[found.id], boxes, when, limit, offset)
    features = [in_crs(feat, out_crs) for feat in page.features]
    doc = {
        "type": "FeatureCollection",
        "features": features,
        "numberMatched": page.matched,
        "numberReturned": len(features),
        "timeStamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "links": _page_links(request, found, limit, offset, len(features), page.matched),
        **extra,
    }
    return as_json(doc, GEOJSON, content_crs(out_crs))


def _as_of(
    request: Request,
    c: Container,
    who: Principal | None,
    found: Collection,
    when: datetime,
    boxes: Sequence[BBox],
    limit: int,
    offset: int,
) -> tuple[of.Page, dict[str, Any]]:
    """The page as of ``when``, replayed; recorded as an audit read."""
    if who is None or who.role not in TIME_TRAVELLERS:
        raise Forbidden(
            "datetime as an instant replays the city log: an auditor's or operator's read"
        )
    with c.pool.connection() as conn:
        try:
            at = replay.at_instant(conn, when, strict=False)
            conn.commit()
        except replay.ReplayError as exc:
            raise bad(f"datetime: {exc}") from None
        page, _ = of.replayed_page(
            conn,
            c.city.mapper,
            c.projections,
            at.position,
            of.POINT_SOURCES[found.id],
            boxes,
            limit,
            offset,
        )
    record_audit_read(c, who, request, correlation())
    recorded = None if at.recorded_at is None else at.recorded_at.isoformat()
    return page, {"logPosition": at.position, "logRecordedAt": recorded}


def _page_links(
    request: Request, found: Collection, limit: int, offset: int, returned: int, matched: int
) -> list[dict[str, str]]:
    here = f"{base_url(request)}/collections/{found.id}/items"

    def at(start: int) -> str:  # the request's own parameters, its credentials left out
        kept = request.query_params.multi_items()
        params = [(k, v) for k, v in kept if k not in ("offset", "limit", "api_key")]
        params += [("limit", str(limit)), ("offset", str(start))]
        return f"{here}?{urlencode(params)}"

    links = [
        link(at(offset), "self", GEOJSON, "this page"),
        link(f"{base_url(request)}/collections/{found.id}", "collection", JSON, found.title),
    ]
    if offset + returned < matched:
        links.append(link(at(offset + returned), "next", GEOJSON, "the next page"))
    if offset > 0:
        links.append(link(at(max(0, offset - limit)), "prev", GEOJSON, "the previous page"))
    return links


@router.get(
    "/collections/{collection_id}/items/{feature_id}",
    summary="One feature",
    response_class=Response,
    responses={
        200: {"content": {GEOJSON: {}}, "description": "a GeoJSON Feature"},
        **COLLECTION_ERRORS,
    },
)
def item(
    request: Request,
    c: ContainerDep,
    who: OptionalPrincipalDep,
    collection_id: CollectionId,
    feature_id: str,
    crs: CrsParam = None,
    f: FormatParam = None,
) -> Response:
    """One feature of a collection, as it is now."""
    found = collection_of(collection_id)
    check_access(who, found.id)
    check_params(request, COMMON_PARAMS)
    out_crs = parse_crs(crs, "crs")
    if found.id in REFERENCE:
        feature = reference(request, c, found).get(feature_id)
    else:
        with c.pool.connection() as conn:
            feature = of.live_feature(conn, of.POINT_SOURCES[found.id], feature_id)
    if feature is None:
        raise OgcError(404, "NotFound", f"no feature {feature_id!r} in {found.id}")
    base = base_url(request)
    doc = {
        **in_crs(feature, out_crs),
        "links": [
            link(str(request.url), "self", GEOJSON, "this feature"),
            link(f"{base}/collections/{found.id}", "collection", JSON, found.title),
        ],
    }
    return as_json(doc, GEOJSON, content_crs(out_crs))
