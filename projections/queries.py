"""Read-side queries over the map read models and the readings table.

Routes call these; they return plain dicts / GeoJSON features, never rows. The live
map's layers come rendered (GeoJSON bytes with an entity tag) from ``MapLayers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.abc import Params
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from projections.map import MapProjection

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


def dict_rows(
    pool: ConnectionPool, query: str | sql.SQL | sql.Composed, params: Params
) -> list[dict[str, Any]]:
    """The rows of ``query`` (one statement) as dicts, on a connection of ``pool``.

    The statement runs in autocommit, one round trip instead of three (BEGIN, it,
    COMMIT); the connection goes back to the pool in transaction mode."""
    with pool.connection() as conn:
        conn.autocommit = True
        try:
            with conn.cursor(row_factory=dict_row) as cur:
                cur.execute(query, params)
                return cur.fetchall()
        finally:
            with contextlib.suppress(psycopg.Error):  # a broken one is replaced anyway
                conn.autocommit = False


def pg_isoformat(value: datetime) -> str:
    """ISO 8601 as PostgreSQL's to_json writes it (fractional seconds without trailing
    zeros), so that a feature built here and one built by PostgreSQL (the map layers)
    are the same text."""
    text = value.isoformat()
    if value.microsecond:
        stamp, sign, offset = text[:26], text[26:27], text[27:]
        text = stamp.rstrip("0") + sign + offset
    return text


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return pg_isoformat(value)
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


@dataclass(frozen=True, slots=True)
class _Table:
    """A read model's table: the columns a feature shows and the one that is its id."""

    name: str
    columns: str
    key: str


_SENSORS = _Table("map_sensors", SENSOR_COLUMNS, "device_id")
_INCIDENTS = _Table("map_incidents", INCIDENT_COLUMNS, "incident_id")


class ReadModels:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self._readings_aggregates: frozenset[str] | None = None

    def _features(
        self, table: _Table, f: Filters, order: str, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        query = sql.SQL("SELECT {} FROM {}{} ORDER BY {} LIMIT %s OFFSET %s").format(
            sql.SQL(table.columns), sql.Identifier(table.name), f.clause(), sql.SQL(order)
        )
        rows = dict_rows(self.pool, query, [*f.params, limit, offset])
        return [feature(r, table.key) for r in rows]

    def _feature(self, table: _Table, column: str, value: Any) -> dict[str, Any] | None:
        query = sql.SQL("SELECT {} FROM {} WHERE {} = %s").format(
            sql.SQL(table.columns), sql.Identifier(table.name), sql.Identifier(column)
        )
        rows = dict_rows(self.pool, query, [value])
        return feature(rows[0], table.key) if rows else None

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
        return self._features(_SENSORS, f.bbox(bbox), "device_id", limit, offset)

    def sensor(self, device_id: str) -> dict[str, Any] | None:
        return self._feature(_SENSORS, "device_id", device_id)

    def sensor_by_id(self, sensor_id: UUID) -> dict[str, Any] | None:
        return self._feature(_SENSORS, "sensor_id", sensor_id)

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
        return self._features(_INCIDENTS, f, "opened_at DESC, incident_id", limit, offset)

    def incident(self, incident_id: UUID) -> dict[str, Any] | None:
        return self._feature(_INCIDENTS, "incident_id", incident_id)

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

    def map_token(self) -> MapToken:
        """The map view's position and each layer's last change, in one round trip."""
        with self._autocommit() as conn:
            row = conn.execute(_TOKEN_SQL).fetchone()
        assert row is not None
        return _token(row)

    def layer_rows(self, layer: PointLayer, since: int | None) -> LayerRows:
        """The rows of ``layer`` changed after ``since`` (every shown row when None).

        One statement, so one snapshot: the position, the table's lowest and highest
        change numbers and the rows describe the same state. Rows changed after ``since``
        that the layer no longer shows (a closed incident) come without a feature, so that
        a cached view drops them.
        """
        params = {"since": -1 if since is None else since, "changes": since is not None}
        with self._autocommit() as conn:
            rows = conn.execute(_rows_sql(layer), params).fetchall()
        # position, min seq, max seq, change_seq, id, shown, lon, lat, grid, filters.., feature
        first = rows[0]
        return LayerRows(
            int(first[0] or 0), first[1], first[2], [r[3:] for r in rows if r[3] is not None]
        )

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
        return joined_collection([features.encode()] if features else [])

    def readings(
        self,
        device_id: str,
        start: datetime,
        end: datetime,
        agg: Agg | None,
        interval_s: int,
        limit: int = 100_000,
    ) -> list[dict[str, Any]]:
        """Series per metric; aggregated into ``interval_s`` buckets when ``agg`` is given.

        Aggregated, whole buckets of the continuous aggregates (TimescaleDB) that fit
        the interval are read from them, the rest of the window from the raw rows: the
        same numbers as from raw rows alone, which plain PostgreSQL computes.
        """
        pieces = readings_pieces(start, end, interval_s, self._aggregates()) if agg else []
        if agg is None:
            query = (
                "SELECT metric, unit, ts, value FROM readings WHERE device_id = %s"
                " AND ts >= %s AND ts < %s ORDER BY metric, ts LIMIT %s"
            )
            params: list[Any] = [device_id, start, end, limit]
        elif len(pieces) == 1 and pieces[0][0] == "readings":
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
        else:
            query, params = _pieces_query(device_id, pieces, agg, interval_s, limit)
        with self.pool.connection() as conn:
            rows = conn.execute(query, params).fetchall()
        series: dict[str, dict[str, Any]] = {}
        for metric, unit, ts, value in rows:
            s = series.setdefault(metric, {"metric": metric, "unit": unit, "points": []})
            s["points"].append([ts.isoformat(), value])
        return list(series.values())

    def _aggregates(self) -> frozenset[str]:
        """The continuous aggregates of readings in this database (looked up once)."""
        if self._readings_aggregates is None:
            with self.pool.connection() as conn:
                rows = conn.execute(
                    "SELECT relname FROM pg_class WHERE relname = ANY(%s) AND relkind = 'v'"
                    " AND pg_table_is_visible(oid)",
                    [[view for _, view in READINGS_AGGREGATES]],
                ).fetchall()
            self._readings_aggregates = frozenset(r[0] for r in rows)
        return self._readings_aggregates


# The continuous aggregates of readings (infra/pgstore.py), coarsest first: bucket
# seconds and view. Their buckets start at whole minutes and hours since the epoch, as
# date_bin's from 2000-01-01 do.
READINGS_AGGREGATES = ((3600, "readings_1h"), (60, "readings_1m"))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ORIGIN = "TIMESTAMPTZ '2000-01-01'"


def readings_pieces(
    start: datetime, end: datetime, interval_s: int, aggregates: frozenset[str] | set[str]
) -> list[tuple[str, datetime, datetime]]:
    """[start, end) split into ranges, each read from one source: ``(source, from, to)``.

    An aggregate serves the whole buckets of the window when the interval is a multiple of
    its bucket (each of its buckets then lies in one interval); the edges go to the next
    finer aggregate, and what no bucket covers to the raw readings.
    """
    levels = [(w, v) for w, v in READINGS_AGGREGATES if v in aggregates and interval_s % w == 0]

    def split(lo: datetime, hi: datetime, rest: list[tuple[int, str]]) -> list[Any]:
        if lo >= hi:
            return []
        if not rest:
            return [("readings", lo, hi)]
        (width, view), finer = rest[0], rest[1:]
        step = timedelta(seconds=width)
        first = _EPOCH + -((_EPOCH - lo) // step) * step  # lo rounded up to a bucket
        last = _EPOCH + ((hi - _EPOCH) // step) * step  # hi rounded down
        if first >= last:
            return split(lo, hi, finer)
        return [*split(lo, first, finer), (view, first, last), *split(last, hi, finer)]

    return split(start, end, levels)


def _pieces_query(
    device_id: str,
    pieces: list[tuple[str, datetime, datetime]],
    agg: Agg,
    interval_s: int,
    limit: int,
) -> tuple[str, list[Any]]:
    """Partial sums, counts, minima and maxima per interval from each piece, combined:
    an average is the sum over the count of all of them (weighted by count)."""
    parts = []
    params: list[Any] = []
    for source, lo, hi in pieces:
        if source == "readings":
            parts.append(
                "SELECT metric, min(unit) AS unit,"
                f" date_bin(make_interval(secs => %s), ts, {_ORIGIN}) AS ts,"
                " sum(value) AS sum, count(*) AS n, min(value) AS lo, max(value) AS hi"
                " FROM readings WHERE device_id = %s AND ts >= %s AND ts < %s GROUP BY 1, 3"
            )
        else:
            parts.append(
                "SELECT metric, min(unit) AS unit,"
                f" date_bin(make_interval(secs => %s), bucket, {_ORIGIN}) AS ts,"
                " sum(sum) AS sum, sum(count) AS n, min(min) AS lo, max(max) AS hi"
                f" FROM {source} WHERE device_id = %s AND bucket >= %s AND bucket < %s"
                " GROUP BY 1, 3"
            )
        params += [interval_s, device_id, lo, hi]
    fn = {
        "avg": "sum(sum) / sum(n)::float8",
        "min": "min(lo)",
        "max": "max(hi)",
        "count": "sum(n)::float8",
    }[agg]
    query = (
        f"SELECT metric, min(unit) AS unit, ts, {fn} AS value FROM ("
        + " UNION ALL ".join(parts)
        + ") p GROUP BY metric, ts ORDER BY metric, ts LIMIT %s"
    )
    return query, [*params, limit]


# -- the live map's layers, rendered -------------------------------------------------------

MAP_TILE_DEG = 0.005  # the map cache's tiles: about 500 m; a change re-reads only its tile
GEOJSON = "application/geo+json"

_HEAD = b'{"type":"FeatureCollection","features":['
_TAIL = b"]}"


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
        return cls(body, entity_tag(hashlib.sha256(body).digest()))


def entity_tag(*parts: object) -> str:
    return f'"{hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()}"'


@dataclass(frozen=True, slots=True)
class MapToken:
    """What a request checks a cached layer against: the projection's position and each
    layer's highest ``change_seq`` (the map tables' trigger stamps every row written)."""

    position: int
    seq: dict[str, int]


@dataclass(frozen=True, slots=True)
class LayerRows:
    position: int
    min_seq: int | None  # the table's lowest change_seq; None when it is empty
    max_seq: int | None
    rows: list[tuple[Any, ...]]  # change_seq, id, shown, lon, lat, grid_code, filters..., feature


_TOKEN_SQL = sql.SQL(
    "SELECT (SELECT max(notification_id) FROM {}),"
    " (SELECT max(change_seq) FROM map_sensors), (SELECT max(change_seq) FROM map_incidents)"
).format(sql.Identifier(f"{MapProjection.name}_tracking"))


class MapTokenFeed:
    """``ReadModels.map_token`` for asyncio callers, on one connection of its own.

    Concurrent callers share reads, and each gets one that began after it asked: a caller
    that comes while a read is under way waits for the next one, which starts as soon as
    that one ends. A request so never sees the map older than when it came in, as with a
    read of its own, for one round trip per burst of requests instead of one each, and
    without a thread hand-off or a pooled connection.
    """

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next: asyncio.Future[MapToken] | None = None
        self._pump: asyncio.Task[None] | None = None

    async def token(self) -> MapToken:
        """The map token, read after this call began."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (test clients make one per call)
            self._abandon()
            self._loop = loop
        if self._next is None:
            self._next = loop.create_future()
            if self._pump is None or self._pump.done():
                self._pump = loop.create_task(self._run())
        return await asyncio.shield(self._next)

    async def aclose(self) -> None:
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        if self._conn is not None:
            await self._conn.close()
        self._conn = self._pump = self._next = None

    async def _run(self) -> None:
        while self._next is not None:
            # Every caller waiting on ``waiting`` came before this read begins.
            waiting, self._next = self._next, None
            try:
                token = await self._read()
            except Exception as exc:  # handed to the callers that wait
                waiting.set_exception(exc)
                # Retrieved or not, the callers raise it; do not warn "never retrieved".
                waiting.exception()
            else:
                waiting.set_result(token)

    async def _read(self) -> MapToken:
        """One read; a connection that was lost while idle (a server restart) is replaced
        once, so that only a database that is down fails the callers."""
        reused = self._conn is not None and not self._conn.closed
        try:
            return await self._read_once()
        except psycopg.OperationalError:
            if not reused:
                raise
            return await self._read_once()

    async def _read_once(self) -> MapToken:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
            cur = await self._conn.execute(_TOKEN_SQL)
            row = await cur.fetchone()
        except psycopg.Error:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    await conn.close()
            raise
        assert row is not None
        return _token(row)

    def _abandon(self) -> None:
        """Forget a connection and reads of an event loop that is no longer running."""
        if self._conn is not None:
            self._conn.pgconn.finish()  # its loop is gone: close the socket directly
        self._conn = self._pump = self._next = None


def _token(row: Any) -> MapToken:
    return MapToken(int(row[0] or 0), {"sensors": int(row[1] or 0), "incidents": int(row[2] or 0)})


@functools.cache
def _rows_sql(layer: PointLayer) -> sql.Composed:
    """The statement of ``ReadModels.layer_rows`` for ``layer`` (built once)."""
    shown = sql.SQL(layer.shown)
    return sql.SQL(
        "WITH p AS (SELECT (SELECT max(notification_id) FROM {tracking}) AS position,"
        " (SELECT min(change_seq) FROM {table}) AS low, (SELECT max(change_seq) FROM {table})"
        " AS high) SELECT p.position, p.low, p.high, t.change_seq, t.{id}::text, {shown},"
        " t.lon, t.lat, t.grid_code::text, {columns}, CASE WHEN {shown} THEN {feature} END"
        " FROM p LEFT JOIN {table} t"
        " ON t.change_seq > %(since)s AND (%(changes)s OR {shown})"
    ).format(
        tracking=sql.Identifier(f"{MapProjection.name}_tracking"),
        id=sql.Identifier(layer.id_column),
        shown=shown,
        columns=sql.SQL(", ").join(
            sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in layer.filters
        ),
        feature=_feature_sql(layer),
        table=sql.Identifier(layer.table),
    )


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


def joined_collection(parts: list[bytes]) -> bytes:
    return b"".join((_HEAD, b",".join(parts), _TAIL))
