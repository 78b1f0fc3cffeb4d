"""The collections of the OGC API – Features routes (``api.ogc``): pages, counts, extents.

Two kinds of collection:

- **reference layers** (districts, unit grid cells): the city's polygons as loaded at
  startup, indexed once in an STRtree; a bbox selects the polygons it intersects.
- **point layers** over the read models (sensors, open incidents, open service cases):
  one SQL statement gives a page and the number matched, from one snapshot. Live, a
  layer holds what the map shows; with a time interval it holds every row whose time
  span meets it (see ``PointSource``); at an instant it is read from the views replayed
  to that instant's log position (``projections.replay.materialize``), so it holds what
  the map showed then.

Features are GeoJSON (RFC 7946) dicts in CRS84 (lon, lat); the API swaps axes for the
CRSs that want it. Pages are in a fixed order (the layer's key), so offsets page through
a stable sequence. Service cases carry no personal data: only the columns in
``CASE_PROPERTIES`` (no description, address, citizen or submitter, no free-text notes).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
import shapely
from psycopg import sql
from psycopg.rows import dict_row
from shapely.geometry import shape

from projections import replay
from projections.queries import INCIDENT_COLUMNS, SENSOR_COLUMNS, BBox, _json_value
from projections.runner import SqlProjection

# What a service case shows here: its place in the city and in the workflow.
CASE_PROPERTIES = (
    "case_id",
    "channel",
    "category",
    "status",
    "grid_code",
    "district_code",
    "department_code",
    "incident_id",
    "proactive",
    "due_at",
    "submitted_at",
    "updated_at",
    "resolved_at",
    "closed_at",
    "version",
)
_OPEN_CASE = "t.status IN (" + ", ".join(f"'{s}'" for s in replay.OPEN_CASE) + ")"


def _names(columns: str) -> tuple[str, ...]:
    return tuple(
        c for c in (c.strip() for c in columns.split(",")) if c and c not in ("lon", "lat")
    )


@dataclass(frozen=True, slots=True)
class PointSource:
    """A read-model table served as a point collection.

    ``shown``: the rows the collection holds now (and at an instant). A time interval
    selects instead the rows whose span ``[starts, ends]`` meets it (``ends`` NULL: not
    ended), whatever their state now; ``always`` holds in both cases.
    """

    table: str
    key: str
    properties: tuple[str, ...]
    always: str  # SQL condition on ``t``
    shown: str  # SQL condition on ``t``
    starts: str  # SQL expression on ``t``
    ends: str  # SQL expression on ``t``; NULL while the row's span goes on
    time_property: str  # the property a client reads the time from

    def columns(self) -> sql.Composable:
        names = (*self.properties, "lon", "lat")
        return sql.SQL(", ").join(sql.Identifier("t", c) for c in dict.fromkeys(names))


POINT_SOURCES: dict[str, PointSource] = {
    # A sensor's span is its last change: an interval selects the sensors that changed in it.
    "sensors": PointSource(
        "map_sensors",
        "device_id",
        _names(SENSOR_COLUMNS),
        "true",
        "true",
        "t.updated_at",
        "t.updated_at",
        "updated_at",
    ),
    "incidents": PointSource(
        "map_incidents",
        "incident_id",
        _names(INCIDENT_COLUMNS),
        "true",
        "t.status = 'open'",
        "t.opened_at",
        "CASE WHEN t.status = 'open' THEN NULL ELSE coalesce(t.closed_at, t.updated_at) END",
        "opened_at",
    ),
    # A case reopened after a resolution counts as open since it was submitted.
    "cases": PointSource(
        "service_cases",
        "case_id",
        CASE_PROPERTIES,
        "t.lon IS NOT NULL AND t.lat IS NOT NULL",  # the map shows cases with a place
        _OPEN_CASE,
        "t.submitted_at",
        f"CASE WHEN {_OPEN_CASE} THEN NULL"
        " ELSE coalesce(t.resolved_at, t.closed_at, t.updated_at) END",
        "submitted_at",
    ),
}


@dataclass(frozen=True, slots=True)
class Window:
    """A time interval; None at an end: open there."""

    start: datetime | None
    end: datetime | None


@dataclass(frozen=True, slots=True)
class Page:
    features: list[dict[str, Any]]
    matched: int


def point_feature(row: Mapping[str, Any], key: str) -> dict[str, Any]:
    """A GeoJSON Feature from a row (a point, or no geometry when the row has no place)."""
    lon, lat = row["lon"], row["lat"]
    geometry = None if lon is None or lat is None else {"type": "Point", "coordinates": [lon, lat]}
    props = {k: _json_value(v) for k, v in row.items() if k not in ("lon", "lat")}
    return {"type": "Feature", "id": str(props[key]), "geometry": geometry, "properties": props}


def _where(
    source: PointSource, boxes: Sequence[BBox], window: Window | None
) -> tuple[sql.Composable, list[Any]]:
    parts: list[sql.Composable] = [sql.SQL(source.always)]
    params: list[Any] = []
    if window is None:
        parts.append(sql.SQL(source.shown))
    else:
        if window.end is not None:
            parts.append(sql.SQL("{} <= %s").format(sql.SQL(source.starts)))
            params.append(window.end)
        if window.start is not None:
            parts.append(sql.SQL("({0} IS NULL OR {0} >= %s)").format(sql.SQL(source.ends)))
            params.append(window.start)
    if boxes:
        either = [sql.SQL("(t.lon BETWEEN %s AND %s AND t.lat BETWEEN %s AND %s)")] * len(boxes)
        parts.append(sql.SQL("(") + sql.SQL(" OR ").join(either) + sql.SQL(")"))
        for b in boxes:
            params += [b.west, b.east, b.south, b.north]
    return sql.SQL(" AND ").join(parts), params


def live_page(
    conn: psycopg.Connection[Any],
    source: PointSource,
    boxes: Sequence[BBox],
    window: Window | None,
    limit: int,
    offset: int,
    view: sql.Composable | None = None,
) -> Page:
    """A page of the collection as it is now (``window``: the rows whose span meets it),
    or as ``view`` holds it: a table of ``source.table``'s columns (one replayed to an
    instant, in ``replayed_page``)."""
    where, params = _where(source, boxes, window)
    # The count and the page in one statement: one snapshot, even outside a transaction.
    query = sql.SQL(
        "SELECT c.n AS number_matched, p.* FROM (SELECT count(*) AS n FROM {view} t WHERE {w}) c"
        " LEFT JOIN LATERAL (SELECT {cols} FROM {view} t WHERE {w} ORDER BY t.{key}"
        " LIMIT %s OFFSET %s) p ON true"
    ).format(
        view=sql.Identifier(source.table) if view is None else view,
        w=where,
        cols=source.columns(),
        key=sql.Identifier(source.key),
    )
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, [*params, *params, limit, offset])
        rows = cur.fetchall()
    matched = int(rows[0]["number_matched"]) if rows else 0
    features = []
    for row in rows:
        if row[source.key] is None:  # the page is past the end
            continue
        row.pop("number_matched")
        features.append(point_feature(row, source.key))
    return Page(features, matched)


def replayed_page(
    conn: psycopg.Connection[Any],
    mapper: Any,
    projections: Sequence[SqlProjection],
    position: int,
    source: PointSource,
    boxes: Sequence[BBox],
    limit: int,
    offset: int,
) -> tuple[Page, replay.Replayed | None]:
    """A page of the collection as it was at log ``position`` (0: before any event).

    The views are replayed in a transaction of their own on ``conn`` (temporary tables,
    dropped at its end): from the checkpoint before ``position``, the events of the
    aggregates changed since (at most ``replay.SNAPSHOT_EVERY`` events).
    """
    if position == 0:
        return Page([], 0), None
    with conn.transaction():
        replayed = replay.materialize(conn, mapper, projections, position, touched_only=True)
        view = replayed.views[source.table]
        page = live_page(conn, source, boxes, None, limit, offset, view=view)
    return page, replayed


def live_feature(
    conn: psycopg.Connection[Any], source: PointSource, feature_id: str
) -> dict[str, Any] | None:
    """One feature of the collection as it is now; None when the collection lacks it."""
    if source.key in ("incident_id", "case_id"):
        try:
            key: Any = uuid.UUID(feature_id)
        except ValueError:
            return None
    elif "\x00" in feature_id:  # no key has one, and PostgreSQL text cannot hold it
        return None
    else:
        key = feature_id
    query = sql.SQL(
        "SELECT {cols} FROM {table} t WHERE t.{key} = %s AND {always} AND {shown}"
    ).format(
        cols=source.columns(),
        table=sql.Identifier(source.table),
        key=sql.Identifier(source.key),
        always=sql.SQL(source.always),
        shown=sql.SQL(source.shown),
    )
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query, [key]).fetchone()
    return None if row is None else point_feature(row, source.key)


@dataclass(frozen=True, slots=True)
class Extent:
    bbox: tuple[float, float, float, float] | None  # CRS84; None: no feature has a place
    start: datetime | None
    end: datetime | None  # None: goes on


def point_extent(conn: psycopg.Connection[Any], source: PointSource) -> Extent:
    """Where the collection's features are now, and the time its rows span."""
    query = sql.SQL(
        "SELECT (SELECT array[min(lon), min(lat), max(lon), max(lat)] FROM {table} t"
        " WHERE {always} AND {shown}), (SELECT min({starts}) FROM {table} t WHERE {always})"
    ).format(
        table=sql.Identifier(source.table),
        always=sql.SQL(source.always),
        shown=sql.SQL(source.shown),
        starts=sql.SQL(source.starts),
    )
    row = conn.execute(query).fetchone()
    assert row is not None
    box = row[0]
    bbox = None if box is None or box[0] is None else (box[0], box[1], box[2], box[3])
    return Extent(bbox, row[1], None)


# -- the reference layers -----------------------------------------------------------------


class ReferenceCollection:
    """A polygon layer (a GeoJSON FeatureCollection dict) indexed for bbox queries."""

    def __init__(self, collection: Mapping[str, Any], key: str) -> None:
        features = list(collection.get("features", []))
        self.features = [
            {
                "type": "Feature",
                "id": str(f.get("id") or f["properties"][key]),
                "geometry": f.get("geometry"),
                "properties": dict(f.get("properties") or {}),
            }
            for f in features
        ]
        self.index = {f["id"]: i for i, f in enumerate(self.features)}
        geoms = [shape(f["geometry"]) if f["geometry"] else None for f in self.features]
        self.geometries = np.array(geoms, dtype=object)
        self.tree = shapely.STRtree(self.geometries)
        bounds = shapely.total_bounds(self.geometries)
        self.bbox = None if np.isnan(bounds).any() else tuple(float(b) for b in bounds)

    def page(self, boxes: Sequence[BBox], limit: int, offset: int) -> Page:
        """The features meeting any of ``boxes`` (all when there are none), in file order."""
        if boxes:
            hits: set[int] = set()
            for b in boxes:
                found = self.tree.query(
                    shapely.box(b.west, b.south, b.east, b.north), predicate="intersects"
                )
                hits.update(found.tolist())
            selected = sorted(hits)
        else:
            selected = list(range(len(self.features)))
        chosen = selected[offset : offset + limit]
        return Page([self.features[i] for i in chosen], len(selected))

    def get(self, feature_id: str) -> dict[str, Any] | None:
        i = self.index.get(feature_id)
        return None if i is None else self.features[i]
