"""Read-side queries over the map read models and the readings table.

Routes call these; they return plain dicts / GeoJSON features, never rows. The live
map's layers come from the same queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

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
