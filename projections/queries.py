"""Read-side queries over the map read models and the readings table.

Routes call these; they return plain dicts / GeoJSON features, never rows. The live
map's layers come rendered (GeoJSON bytes with an entity tag) from ``MapLayers``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import numpy as np
import orjson
import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool
from shapely.geometry import shape

from projections.map import MapProjection
from projections.positions import position

Agg = Literal["avg", "min", "max", "count"]

SENSOR_COLUMNS = (
    "device_id, sensor_id, sensor_type, gateway_id, lon, lat, grid_code, district_code,"
    " department_code, state, alarms, updated_at, version"
)
INCIDENT_COLUMNS = (
    "incident_id, kind, title, category, severity, status, alarm_status, acknowledged,"
    " acknowledged_by, device_id, rule_id, rule_version, metric, last_value, trigger_count,"
    " lon, lat, grid_code, district_code, department_code, opened_at, updated_at, cleared_at,"
    " closed_at, version, stage, dispatched_at, accepted_at, resolved_at, verified_at, due_at,"
    " resolution, reworks, escalation_level, escalate_at, linked_cases, confirmed_by_reports,"
    " merged_into"
)


@dataclass(frozen=True, slots=True)
class BBox:
    west: float
    south: float
    east: float
    north: float

    @classmethod
    def parse(cls, raw: str) -> BBox:
        """``west,south,east,north`` in WGS84 degrees."""
        try:
            w, s, e, n = (float(x) for x in raw.split(","))
        except ValueError:
            raise ValueError("bbox must be four numbers: west,south,east,north") from None
        if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= 90 and -90 <= n <= 90):
            raise ValueError("bbox is outside WGS84 longitude/latitude ranges")
        if w > e or s > n:
            raise ValueError("bbox must have west <= east and south <= north")
        return cls(w, s, e, n)


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    return value


def feature(row: dict[str, Any], id_key: str) -> dict[str, Any]:
    """A GeoJSON Feature (RFC 7946) from a read-model row with lon/lat columns."""
    props = {k: _json_value(v) for k, v in row.items() if k not in ("lon", "lat")}
    return {
        "type": "Feature",
        "id": props[id_key],
        "geometry": {"type": "Point", "coordinates": [row["lon"], row["lat"]]},
        "properties": props,
    }


def collection(features: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": features, **extra}


class Filters:
    """Builds a WHERE clause from optional equality and bbox filters."""

    def __init__(self) -> None:
        self.parts: list[sql.Composable] = []
        self.params: list[Any] = []

    def eq(self, column: str, value: Any) -> Filters:
        if value is not None:
            self.parts.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            self.params.append(value)
        return self

    def bbox(self, box: BBox | None) -> Filters:
        if box is not None:
            self.parts.append(sql.SQL("lon BETWEEN %s AND %s AND lat BETWEEN %s AND %s"))
            self.params.extend([box.west, box.east, box.south, box.north])
        return self

    def clause(self) -> sql.Composed:
        if not self.parts:
            return sql.Composed([])
        return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(self.parts)


class ReadModels:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def _rows(self, query: sql.Composed, params: list[Any]) -> list[dict[str, Any]]:
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def sensors(
        self,
        *,
        sensor_type: str | None = None,
        state: str | None = None,
        grid_code: str | None = None,
        bbox: BBox | None = None,
        limit: int = 10_000,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        f = Filters().eq("sensor_type", sensor_type).eq("state", state).eq("grid_code", grid_code)
        f.bbox(bbox)
        query = sql.SQL(
            "SELECT {} FROM map_sensors{} ORDER BY device_id LIMIT %s OFFSET %s"
        ).format(sql.SQL(SENSOR_COLUMNS), f.clause())
        return [feature(r, "device_id") for r in self._rows(query, [*f.params, limit, offset])]

    def sensor(self, device_id: str) -> dict[str, Any] | None:
        rows = self._rows(
            sql.SQL("SELECT {} FROM map_sensors WHERE device_id = %s").format(
                sql.SQL(SENSOR_COLUMNS)
            ),
            [device_id],
        )
        return feature(rows[0], "device_id") if rows else None

    def sensor_by_id(self, sensor_id: UUID) -> dict[str, Any] | None:
        rows = self._rows(
            sql.SQL("SELECT {} FROM map_sensors WHERE sensor_id = %s").format(
                sql.SQL(SENSOR_COLUMNS)
            ),
            [sensor_id],
        )
        return feature(rows[0], "device_id") if rows else None

    def incidents(
        self,
        *,
        status: str | None = None,
        severity: str | None = None,
        grid_code: str | None = None,
        device_id: str | None = None,
        bbox: BBox | None = None,
        limit: int = 10_000,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        f = Filters().eq("status", status).eq("severity", severity).eq("grid_code", grid_code)
        f.eq("device_id", device_id).bbox(bbox)
        query = sql.SQL(
            "SELECT {} FROM map_incidents{} ORDER BY opened_at DESC, incident_id LIMIT %s OFFSET %s"
        ).format(sql.SQL(INCIDENT_COLUMNS), f.clause())
        return [feature(r, "incident_id") for r in self._rows(query, [*f.params, limit, offset])]

    def incident(self, incident_id: UUID) -> dict[str, Any] | None:
        rows = self._rows(
            sql.SQL("SELECT {} FROM map_incidents WHERE incident_id = %s").format(
                sql.SQL(INCIDENT_COLUMNS)
            ),
            [incident_id],
        )
        return feature(rows[0], "incident_id") if rows else None

    def grid_load(self) -> dict[str, dict[str, int]]:
        """Per grid cell: sensor count and open incident count."""
        with self.pool.connection() as conn:
            sensors = conn.execute(
                "SELECT grid_code, count(*) FROM map_sensors GROUP BY grid_code"
            ).fetchall()
            incidents = conn.execute(
                "SELECT grid_code, count(*) FROM map_incidents WHERE status = 'open'"
                " GROUP BY grid_code"
            ).fetchall()
        load: dict[str, dict[str, int]] = {}
        for code, n in sensors:
            load.setdefault(code, {"sensors": 0, "open_incidents": 0})["sensors"] = n
        for code, n in incidents:
            load.setdefault(code, {"sensors": 0, "open_incidents": 0})["open_incidents"] = n
        return load

    @contextmanager
    def _autocommit(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection for single statements: one round trip each, no BEGIN/COMMIT.

        The map asks on every request; under load each extra round trip is one more
        wait for PostgreSQL and for the GIL.
        """
        with self.pool.connection() as conn:
            conn.autocommit = True
            try:
                yield conn
            finally:
                conn.autocommit = False

    def map_position(self) -> int:
        """How far the map view has read the log: it moves whenever the view changes."""
        with self._autocommit() as conn:
            return position(conn, MapProjection.name)

    def point_layer(self, layer: PointLayer, query: LayerQuery) -> bytes:
        """The layer's features ``query`` selects, as a GeoJSON FeatureCollection built in SQL."""
        f = Filters()
        f.parts.append(sql.SQL(layer.shown))
        f.bbox(query.bbox)
        for column, value in query.filters:
            f.eq(column, value)
        statement = sql.SQL("SELECT string_agg({}, ',' ORDER BY {}) FROM {} t{}").format(
            _feature_sql(layer), sql.SQL(layer.order), sql.Identifier(layer.table), f.clause()
        )
        with self._autocommit() as conn:
            row = conn.execute(statement, f.params).fetchone()
        features: str = (row[0] if row else None) or ""
        return _collection([features.encode()] if features else [])

    def changed_tiles(self, layer: PointLayer, known: Mapping[Tile, Signature]) -> TileChanges:
        """The map's position, each tile's signature, and the rows of tiles unlike ``known``.

        One statement, so one snapshot: all three describe the same state of the view.
        A tile's signature is its row count and the sum of its rows' xmin (the transaction
        that wrote the row version): every write to a row changes its xmin to a newer
        transaction id, so the sum changes, unless rows were only removed, which the count
        sees. It needs nothing from the writer (``version`` would, by convention). When the
        layer's total signature is the sum of ``known``, the tiles are not even grouped:
        ``known`` comes back as it is.
        """
        # Array literals: psycopg's list adaptation costs ~1 ms of CPU per refresh here.
        params = {
            "deg": MAP_TILE_DEG,
            "n": sum(n for n, _ in known.values()),
            "s": sum(s for _, s in known.values()),
            "xs": _int_array(x for x, _ in known),
            "ys": _int_array(y for _, y in known),
            "ns": _int_array(n for n, _ in known.values()),
            "ss": _int_array(s for _, s in known.values()),
        }
        with self._autocommit() as conn:
            rows = conn.execute(_changes_sql(layer), params).fetchall()
        # part, number (position / order), x, y, n, s, lon, lat, grid_code, filters.., feature
        if not rows[0][4]:  # the layer has not moved: nothing was compared
            return TileChanges(int(rows[0][1] or 0), dict(known), [])
        return TileChanges(
            position=int(rows[0][1] or 0),
            signatures={(r[2], r[3]): (r[4], r[5]) for r in rows if r[0] == 1},
            rows=[r[2:4] + r[6:] for r in rows if r[0] == 2],
        )

    def readings(
        self,
        device_id: str,
        start: datetime,
        end: datetime,
        agg: Agg | None,
        interval_s: int,
        limit: int = 100_000,
    ) -> list[dict[str, Any]]:
        """Series per metric; aggregated into ``interval_s`` buckets when ``agg`` is given."""
        if agg is None:
            query = (
                "SELECT metric, unit, ts, value FROM readings WHERE device_id = %s"
                " AND ts >= %s AND ts < %s ORDER BY metric, ts LIMIT %s"
            )
            params: list[Any] = [device_id, start, end, limit]
        else:
            # date_bin works on plain PostgreSQL and on TimescaleDB alike.
            fn = {
                "avg": "avg(value)",
                "min": "min(value)",
                "max": "max(value)",
                "count": "count(*)::float8",
            }[agg]
            query = (
                f"SELECT metric, min(unit) AS unit,"
                " date_bin(make_interval(secs => %s), ts, TIMESTAMPTZ '2000-01-01') AS ts,"
                f" {fn} AS value FROM readings WHERE device_id = %s AND ts >= %s AND ts < %s"
                " GROUP BY metric, 3 ORDER BY metric, 3 LIMIT %s"
            )
            params = [interval_s, device_id, start, end, limit]
        with self.pool.connection() as conn:
            rows = conn.execute(query, params).fetchall()
        series: dict[str, dict[str, Any]] = {}
        for metric, unit, ts, value in rows:
            s = series.setdefault(metric, {"metric": metric, "unit": unit, "points": []})
            s["points"].append([ts.isoformat(), value])
        return list(series.values())


# -- the live map's layers, rendered -------------------------------------------------------

MAP_TILE_DEG = 0.005  # the map cache's tiles: about 500 m; a change re-reads only its tile
GEOJSON = "application/geo+json"

_HEAD = b'{"type":"FeatureCollection","features":['
_TAIL = b"]}"

Tile = tuple[int, int]  # floor(lon / MAP_TILE_DEG), floor(lat / MAP_TILE_DEG)
Signature = tuple[int, int]  # rows, sum of their xmin


@dataclass(frozen=True, slots=True)
class PointLayer:
    """A map read-model table drawn as points: its features' properties, order and filters."""

    table: str
    columns: str  # the read model's *_COLUMNS: a column added there becomes a property
    id_column: str
    order: str  # SQL
    shown: str  # SQL condition: the rows the layer shows
    filters: tuple[str, ...]  # columns a request may filter on, by equality

    @property
    def properties(self) -> tuple[str, ...]:
        names = (c.strip() for c in self.columns.split(","))
        return tuple(c for c in names if c and c not in ("lon", "lat"))


POINT_LAYERS: dict[str, PointLayer] = {
    "sensors": PointLayer(
        "map_sensors", SENSOR_COLUMNS, "device_id", "device_id", "true", ("state", "sensor_type")
    ),
    "incidents": PointLayer(
        "map_incidents",
        INCIDENT_COLUMNS,
        "incident_id",
        "opened_at DESC, incident_id",
        "status = 'open'",
        ("severity", "stage", "category"),
    ),
}


@dataclass(frozen=True, slots=True)
class LayerQuery:
    """The part of a layer a request asks for: a viewport, and equality filters."""

    bbox: BBox | None = None
    filters: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Rendered:
    """A layer's GeoJSON body and its entity tag."""

    body: bytes
    etag: str

    @classmethod
    def of(cls, body: bytes) -> Rendered:
        """Tagged by a hash of the body."""
        return cls(body, _etag(hashlib.sha256(body).digest()))


def _etag(*parts: object) -> str:
    return f'"{hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()}"'


@dataclass(frozen=True, slots=True)
class TileChanges:
    position: int
    signatures: dict[Tile, Signature]
    rows: list[tuple[Any, ...]]  # tile x, tile y, lon, lat, grid code, filters..., feature


def _feature_sql(layer: PointLayer) -> sql.Composed:
    """A row of ``t`` as the text of a GeoJSON Feature (compact), built by PostgreSQL."""
    return sql.SQL(
        "concat({feature}, to_json(t.{id}), {point}, to_json(t.lon), ',', to_json(t.lat),"
        " {properties}, (SELECT row_to_json(p) FROM (SELECT {columns}) p), '}}')"
    ).format(
        feature=sql.Literal('{"type":"Feature","id":'),
        id=sql.Identifier(layer.id_column),
        point=sql.Literal(',"geometry":{"type":"Point","coordinates":['),
        properties=sql.Literal(']},"properties":'),
        columns=sql.SQL(", ").join(sql.SQL("t.") + sql.Identifier(c) for c in layer.properties),
    )


@functools.cache
def _changes_sql(layer: PointLayer) -> sql.Composed:
    """The statement of ``ReadModels.changed_tiles`` for ``layer`` (built once)."""
    tile = sql.SQL("floor(t.lon / %(deg)s)::int, floor(t.lat / %(deg)s)::int")
    columns = ("grid_code", *layer.filters)
    # "moved": the layer's total signature differs from the known one; only then are
    # the tiles' signatures computed and compared (a one-time filter skips the scans).
    return sql.SQL(
        "WITH moved AS ("
        "SELECT (count(*), coalesce(sum(t.xmin::text::bigint), 0)::bigint)"
        " <> (%(n)s::bigint, %(s)s::bigint) AS yes FROM {table} t WHERE {shown}"
        "), sig AS ("
        "SELECT floor(t.lon / %(deg)s)::int AS x, floor(t.lat / %(deg)s)::int AS y,"
        " count(*) AS n, sum(t.xmin::text::bigint)::bigint AS s"
        " FROM {table} t WHERE {shown} AND (SELECT yes FROM moved) GROUP BY 1, 2"
        "), changed AS ("
        "SELECT sig.x, sig.y FROM sig LEFT JOIN"
        " unnest(%(xs)s::int[], %(ys)s::int[], %(ns)s::bigint[], %(ss)s::bigint[])"
        " AS k (x, y, n, s) ON (k.x, k.y, k.n, k.s) = (sig.x, sig.y, sig.n, sig.s)"
        " WHERE k.x IS NULL"
        ") SELECT 0, (SELECT max(notification_id) FROM {tracking}), NULL::int,"
        " NULL::int, (SELECT yes::int FROM moved)::bigint, NULL::bigint, NULL::float8,"
        " NULL::float8, {none}"
        " UNION ALL SELECT 1, 0, x, y, n, s, NULL, NULL, {none} FROM sig"
        " UNION ALL SELECT 2, row_number() OVER (ORDER BY {order}), {tile}, NULL, NULL,"
        " t.lon, t.lat, {columns}, {feature} FROM {table} t"
        " WHERE {shown} AND (SELECT yes FROM moved) AND ({tile}) IN (SELECT x, y FROM changed)"
        " ORDER BY 1, 2"
    ).format(
        table=sql.Identifier(layer.table),
        tracking=sql.Identifier(f"{MapProjection.name}_tracking"),
        shown=sql.SQL(layer.shown),
        none=sql.SQL(", ").join([sql.SQL("NULL::text")] * (len(columns) + 1)),
        order=sql.SQL(layer.order),
        tile=tile,
        columns=sql.SQL(", ").join(
            sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in columns
        ),
        feature=_feature_sql(layer),
    )


def _int_array(values: Iterable[int]) -> str:
    return "{" + ",".join(map(str, values)) + "}"


def _collection(parts: list[bytes]) -> bytes:
    return b"".join((_HEAD, b",".join(parts), _TAIL))


class _PointTile:
    """One tile of a point layer: its rendered features, and what bbox and filters test."""

    __slots__ = (
        "east",
        "features",
        "grid",
        "grid_digest",
        "joined",
        "lat",
        "lon",
        "north",
        "signature",
        "south",
        "values",
        "west",
    )

    def __init__(
        self, signature: Signature, rows: list[tuple[Any, ...]], filters: tuple[str, ...]
    ) -> None:
        self.signature = signature
        self.lon = np.array([r[2] for r in rows], dtype=np.float64)
        self.lat = np.array([r[3] for r in rows], dtype=np.float64)
        self.grid = Counter(r[4] for r in rows)  # features per grid cell
        self.grid_digest = repr(sorted(self.grid.items(), key=str))
        self.values = {
            column: np.array([r[5 + i] for r in rows], dtype=object)
            for i, column in enumerate(filters)
        }
        self.features = [r[-1].encode() for r in rows]
        self.joined = b",".join(self.features)
        # The tile's true extent (not its nominal square): "wholly inside" is then exact.
        self.west, self.east = float(self.lon.min()), float(self.lon.max())
        self.south, self.north = float(self.lat.min()), float(self.lat.max())

    def select(self, query: LayerQuery) -> list[bytes] | None:
        """The features ``query`` selects here; None when the viewport misses the tile."""
        box = query.bbox
        if box is None:
            inside = True
        elif (
            self.east < box.west
            or self.west > box.east
            or self.north < box.south
            or self.south > box.north
        ):
            return None
        else:
            inside = (
                box.west <= self.west
                and self.east <= box.east
                and box.south <= self.south
                and self.north <= box.north
            )
        if inside and not query.filters:
            return [self.joined]
        mask = np.ones(len(self.features), dtype=bool)
        if box is not None and not inside:
            mask &= (self.lon >= box.west) & (self.lon <= box.east)
            mask &= (self.lat >= box.south) & (self.lat <= box.north)
        for column, value in query.filters:
            mask &= self.values[column] == value
        return [self.features[i] for i in mask.nonzero()[0].tolist()]


@dataclass(frozen=True, slots=True)
class _PointView:
    """A point layer in memory as of ``position``, tile by tile."""

    layer: PointLayer
    position: int = -1
    read_at: float = float("-inf")  # monotonic clock when its state was read
    generation: int = 0  # changes when the content does
    tiles: dict[Tile, _PointTile] = field(default_factory=dict)
    grid: Counter[str | None] = field(default_factory=Counter)  # features per grid cell
    grid_digest: str = ""  # changes when ``grid`` does

    def render(self, query: LayerQuery) -> Rendered:
        """The features ``query`` selects, tagged by the signatures of the tiles it met."""
        parts: list[bytes] = []
        touched: list[tuple[Tile, Signature]] = []
        for key, tile in self._candidates(query.bbox):
            selected = tile.select(query)
            if selected is not None:
                parts.extend(selected)
                touched.append((key, tile.signature))
        return Rendered(_collection(parts), _etag(self.layer, MAP_TILE_DEG, query, touched))

    def _candidates(self, box: BBox | None) -> list[tuple[Tile, _PointTile]]:
        """The tiles ``box`` may meet, in key order.

        PostgreSQL's float8 and Python's float divide alike (IEEE 754, correctly rounded,
        so monotonic): a point inside ``box`` has its tile key inside this range.
        """
        if box is None:
            return list(self.tiles.items())
        x0, x1 = math.floor(box.west / MAP_TILE_DEG), math.floor(box.east / MAP_TILE_DEG)
        y0, y1 = math.floor(box.south / MAP_TILE_DEG), math.floor(box.north / MAP_TILE_DEG)
        if (x1 - x0 + 1) * (y1 - y0 + 1) >= len(self.tiles):
            return [(k, t) for k, t in self.tiles.items() if x0 <= k[0] <= x1 and y0 <= k[1] <= y1]
        keys = ((x, y) for x in range(x0, x1 + 1) for y in range(y0, y1 + 1))
        return [(k, self.tiles[k]) for k in keys if k in self.tiles]

    def refreshed(self, read: ReadModels) -> _PointView:
        """The view now: only the tiles whose signature changed are read again."""
        read_at = time.monotonic()
        known = {key: tile.signature for key, tile in self.tiles.items()}
        changes = read.changed_tiles(self.layer, known)
        if not changes.rows and changes.signatures.keys() == self.tiles.keys():
            return dataclasses.replace(self, position=changes.position, read_at=read_at)
        rows: dict[Tile, list[tuple[Any, ...]]] = {}
        for row in changes.rows:
            rows.setdefault((row[0], row[1]), []).append(row)
        tiles = {
            key: _PointTile(sig, rows[key], self.layer.filters) if key in rows else self.tiles[key]
            for key, sig in sorted(changes.signatures.items())
        }
        # Only the tiles read again change the counts.
        grid = self.grid.copy()
        for key, old in self.tiles.items():
            if tiles.get(key) is not old:
                grid.subtract(old.grid)
        for key, new in tiles.items():
            if self.tiles.get(key) is not new:
                grid.update(new.grid)
        digest = _etag(*((key, tile.grid_digest) for key, tile in tiles.items()))
        return _PointView(
            self.layer, changes.position, read_at, self.generation + 1, tiles, grid, digest
        )


class _ReferenceLayer:
    """A fixed polygon layer (districts, grid cells): each feature serialized once.

    ``counted`` features end in two counts (the grid's sensors and open incidents),
    filled in per render.
    """

    def __init__(self, collection: Mapping[str, Any], *, counted: bool) -> None:
        features = collection["features"]
        self.ids = [str(f["id"]) for f in features]
        self.parts: list[bytes] = []
        for f in features:
            head = orjson.dumps({"type": "Feature", "id": f["id"], "geometry": f["geometry"]})
            props = orjson.dumps(f.get("properties") or {})
            if counted:  # open the properties object for the counts
                props = props[:-1] + (b',"sensors":' if len(props) > 2 else b'"sensors":')
            self.parts.append(head[:-1] + b',"properties":' + props + (b"" if counted else b"}"))
        bounds = np.array([shape(f["geometry"]).bounds for f in features], dtype=np.float64)
        self.bounds = bounds.reshape(-1, 4)
        self.digest = hashlib.sha256(b"".join(self.parts)).hexdigest()

    def selected(self, box: BBox | None) -> list[int]:
        """Indexes of the features whose bounding box meets ``box``."""
        if box is None:
            return list(range(len(self.parts)))
        b = self.bounds
        meets = (
            (b[:, 0] <= box.east)
            & (b[:, 2] >= box.west)
            & (b[:, 1] <= box.north)
            & (b[:, 3] >= box.south)
        )
        indexes: list[int] = meets.nonzero()[0].tolist()
        return indexes

    def render(self, query: LayerQuery) -> Rendered:
        body = _collection([self.parts[i] for i in self.selected(query.bbox)])
        return Rendered(body, _etag(self.digest, query))

    def render_counted(
        self, box: BBox | None, sensors: Mapping[Any, int], incidents: Mapping[Any, int]
    ) -> bytes:
        parts = []
        for i in self.selected(box):
            code = self.ids[i]
            counts = b'%d,"open_incidents":%d}}' % (sensors.get(code, 0), incidents.get(code, 0))
            parts.append(self.parts[i] + counts)
        return _collection(parts)


class MapLayers:
    """The live map's layers as GeoJSON bodies, served from memory while the view is unchanged.

    Freshness: every request first reads the map projection's position (one tiny query).
    The projection writes its rows and its position in one transaction, so a view read at
    the current position, or read after this request's position query, is up to date.
    Otherwise the view is refreshed under a per-layer lock, by one statement returning the
    position, a signature per ~500 m tile (rows, sum of xmin) and the rows of the tiles
    whose signature changed. A viewport is then cut from the tiles in memory (numpy masks
    over features PostgreSQL rendered), so any bbox is served without SQL; the ETag comes
    from the query and the signatures of the tiles it touched. The grid's counts are
    summed from the sensors' and incidents' tiles: no query of their own.

    Rendered bodies are also kept per (layer, query) in an LRU bounded by entries and
    bytes, tagged with the view's generation: an entry is served only while the view is
    the one it was cut from.

    With ``cache=False`` every request is one SQL query that builds the GeoJSON.
    """

    def __init__(
        self,
        read: ReadModels,
        reference: Mapping[str, Mapping[str, Any]],
        *,
        cache: bool = True,
        max_entries: int = 256,
        max_bytes: int = 64 << 20,
    ) -> None:
        self.read = read
        self.cache = cache
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.districts = _ReferenceLayer(reference["districts"], counted=False)
        self.grid = _ReferenceLayer(reference["grid"], counted=True)
        self.views = {name: _PointView(layer) for name, layer in POINT_LAYERS.items()}
        self.refreshing = {name: threading.Lock() for name in self.views}
        self.bodies: OrderedDict[tuple[str, LayerQuery], tuple[object, Rendered]] = OrderedDict()
        self.body_bytes = 0
        self.lock = threading.Lock()

    def render(self, layer: str, query: LayerQuery) -> Rendered:
        """``layer`` (districts, grid, sensors, incidents) as ``query`` asks for it."""
        if layer == "districts":
            return self._remember((layer, query), 0, lambda: self.districts.render(query))
        if not self.cache:
            return Rendered.of(self._uncached(layer, query))
        at = self.read.map_position()
        asked_at = time.monotonic()
        if layer != "grid":
            view = self._fresh(layer, at, asked_at)
            return self._remember((layer, query), view.generation, lambda: view.render(query))
        sensors = self._fresh("sensors", at, asked_at)
        incidents = self._fresh("incidents", at, asked_at)

        def grid() -> Rendered:
            body = self.grid.render_counted(query.bbox, sensors.grid, incidents.grid)
            tag = _etag(self.grid.digest, query, sensors.grid_digest, incidents.grid_digest)
            return Rendered(body, tag)

        return self._remember((layer, query), (sensors.generation, incidents.generation), grid)

    def _uncached(self, layer: str, query: LayerQuery) -> bytes:
        if layer in POINT_LAYERS:
            return self.read.point_layer(POINT_LAYERS[layer], query)
        load = self.read.grid_load()
        return self.grid.render_counted(
            query.bbox,
            {code: n["sensors"] for code, n in load.items()},
            {code: n["open_incidents"] for code, n in load.items()},
        )

    def _fresh(self, layer: str, at: int, asked_at: float) -> _PointView:
        """The view of ``layer`` as of position ``at`` (read at ``asked_at``) or later."""

        def fresh(view: _PointView) -> bool:
            return view.position == at or view.read_at >= asked_at

        view = self.views[layer]
        if fresh(view):
            return view
        with self.refreshing[layer]:
            view = self.views[layer]
            if not fresh(view):
                view = self.views[layer] = view.refreshed(self.read)
            return view

    def _remember(
        self, key: tuple[str, LayerQuery], generation: object, render: Callable[[], Rendered]
    ) -> Rendered:
        with self.lock:
            hit = self.bodies.get(key)
            if hit is not None and hit[0] == generation:
                self.bodies.move_to_end(key)
                return hit[1]
        rendered = render()
        size = len(rendered.body)
        with self.lock:
            old = self.bodies.pop(key, None)
            if old is not None:
                self.body_bytes -= len(old[1].body)
            if size <= self.max_bytes:
                self.bodies[key] = (generation, rendered)
                self.body_bytes += size
            while len(self.bodies) > self.max_entries or self.body_bytes > self.max_bytes:
                _, (_, gone) = self.bodies.popitem(last=False)
                self.body_bytes -= len(gone.body)
        return rendered
