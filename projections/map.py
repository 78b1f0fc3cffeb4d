"""The live-map projection: sensors and incidents as read-model rows, with tracking.

Each event's row changes, its tracking record and a ``pg_notify`` for the live push go
in one transaction, so the view is never ahead of or behind its recorded position.
Rebuild: truncate the tables, delete the tracking row, run again from the start.
"""

from __future__ import annotations

from functools import singledispatchmethod
from typing import Any

import orjson
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.projection import Projection

from core.incident import Incident
from core.sensor import Sensor

NOTIFY_CHANNEL = "cityops_map"

_SENSOR_STATE = (
    "CASE WHEN silent THEN 'silent' WHEN alarms <> '{}'::jsonb THEN 'alarm' ELSE 'normal' END"
)


class MapView(PostgresTrackingRecorder):
    """Read model of the live map in PostgreSQL (tables from cityops/schema.sql)."""

    def apply(
        self,
        statements: list[tuple[str, dict[str, Any]]],
        tracking: Tracking,
        change: dict[str, Any],
    ) -> None:
        with self.datastore.transaction(commit=True) as curs:
            for sql, params in statements:
                curs.execute(sql, params)
            self._insert_tracking(curs, tracking)
            curs.execute(
                "SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, orjson.dumps(change).decode())
            )


class MapProjection(Projection[MapView]):
    name = "map"

    def _sensor(self, event: Any, tracking: Tracking, sql: str, params: dict[str, Any]) -> None:
        params = {
            **params,
            "sensor_id": event.originator_id,
            "ts": event.timestamp,
            "version": event.originator_version,
        }
        self.view.apply(
            [(sql + " WHERE sensor_id = %(sensor_id)s", params), (_SENSOR_STATE_UPDATE, params)],
            tracking,
            {
                "layer": "sensors",
                "sensor_id": str(event.originator_id),
                "event": type(event).__name__,
            },
        )

    def _incident(self, event: Any, tracking: Tracking, sql: str, params: dict[str, Any]) -> None:
        params = {
            **params,
            "id": event.originator_id,
            "ts": event.timestamp,
            "version": event.originator_version,
        }
        self.view.apply(
            [(sql, params)],
            tracking,
            {"layer": "incidents", "id": str(event.originator_id), "event": type(event).__name__},
        )

    @singledispatchmethod
    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        # Events this view does not show still advance its position.
        self.view.apply([], tracking, {"layer": None})

    @process_event.register
    def _(self, e: Sensor.Registered, tracking: Tracking) -> None:  # type: ignore[name-defined]
        self.view.apply(
            [
                (
                    "INSERT INTO map_sensors (device_id, sensor_id, sensor_type, gateway_id, lon,"
                    " lat, grid_code, district_code, department_code, state, alarms, updated_at,"
                    " version) VALUES (%(device_id)s, %(sensor_id)s, %(sensor_type)s,"
                    " %(gateway_id)s, %(lon)s, %(lat)s, %(grid_code)s, %(district_code)s,"
                    " %(department_code)s, 'normal', '{}'::jsonb, %(ts)s, %(version)s)"
                    " ON CONFLICT (device_id) DO NOTHING",
                    {
                        "device_id": e.device_id,
                        "sensor_id": e.originator_id,
                        "sensor_type": e.sensor_type,
                        "gateway_id": e.gateway_id,
                        "lon": e.lon,
                        "lat": e.lat,
                        "grid_code": e.grid_code,
                        "district_code": e.district_code,
                        "department_code": e.department_code,
                        "ts": e.timestamp,
                        "version": e.originator_version,
                    },
                )
            ],
            tracking,
            {"layer": "sensors", "sensor_id": str(e.originator_id), "event": "Registered"},
        )

    @process_event.register(Sensor.AlarmRaised)  # type: ignore[attr-defined]
    @process_event.register(Sensor.AlarmSeverityChanged)  # type: ignore[attr-defined]
    def _(self, e: Any, tracking: Tracking) -> None:
        self._sensor(
            e,
            tracking,
            "UPDATE map_sensors SET alarms = alarms || jsonb_build_object(%(rule)s::text,"
            " %(severity)s::text)",
            {"rule": e.rule_id, "severity": e.severity},
        )

    @process_event.register
    def _(self, e: Sensor.AlarmCleared, tracking: Tracking) -> None:  # type: ignore[name-defined]
        self._sensor(
            e,
            tracking,
            "UPDATE map_sensors SET alarms = alarms - %(rule)s::text",
            {"rule": e.rule_id},
        )

    @process_event.register
    def _(self, e: Sensor.WentSilent, tracking: Tracking) -> None:  # type: ignore[name-defined]
        self._sensor(e, tracking, "UPDATE map_sensors SET silent = true", {})

    @process_event.register
    def _(self, e: Sensor.CameBack, tracking: Tracking) -> None:  # type: ignore[name-defined]
        self._sensor(e, tracking, "UPDATE map_sensors SET silent = false", {})

    @process_event.register
    def _(self, e: Incident.Opened, tracking: Tracking) -> None:  # type: ignore[name-defined]
        self._incident(
            e,
            tracking,
            "INSERT INTO map_incidents (incident_id, kind, title, category, severity, status,"
            " alarm_status, acknowledged, device_id, rule_id, rule_version, metric, last_value,"
            " trigger_count, lon, lat, grid_code, district_code, department_code, opened_at,"
            " updated_at, version) VALUES (%(id)s, %(kind)s, %(title)s, %(category)s,"
            " %(severity)s, 'open', 'active', false, %(device_id)s, %(rule_id)s,"
            " %(rule_version)s, %(metric)s, %(value)s, 1, %(lon)s, %(lat)s, %(grid_code)s,"
            " %(district_code)s, %(department_code)s, %(ts)s, %(ts)s, %(version)s)"
            " ON CONFLICT (incident_id) DO NOTHING",
            {
                k: getattr(e, k)
                for k in (
                    "kind",
                    "title",
                    "category",
                    "severity",
                    "device_id",
                    "rule_id",
                    "rule_version",
                    "metric",
                    "value",
                    "lon",
                    "lat",
                    "grid_code",
                    "district_code",
                    "department_code",
                )
            },
        )

    @process_event.register
    def _(self, e: Incident.Retriggered, tracking: Tracking) -> None:  # type: ignore[name-defined]
        self._incident(
            e,
            tracking,
            "UPDATE map_incidents SET alarm_status = 'active', severity = %(severity)s,"
            " last_value = %(value)s, trigger_count = trigger_count + 1, cleared_at = NULL,"
            " updated_at = %(ts)s, version = %(version)s WHERE incident_id = %(id)s",
            {"severity": e.severity, "value": e.value},
        )

    @process_event.register
    def _(self, e: Incident.SeverityChanged, tracking: Tracking) -> None:  # type: ignore[name-defined]
        self._incident(
            e,
            tracking,
            "UPDATE map_incidents SET severity = %(severity)s, last_value = %(value)s,"
            " updated_at = %(ts)s, version = %(version)s WHERE incident_id = %(id)s",
            {"severity": e.severity, "value": e.value},
        )

    @process_event.register
    def _(self, e: Incident.AlarmCleared, tracking: Tracking) -> None:  # type: ignore[name-defined]
        self._incident(
            e,
            tracking,
            "UPDATE map_incidents SET alarm_status = 'cleared', last_value = %(value)s,"
            " cleared_at = %(ts)s, updated_at = %(ts)s, version = %(version)s"
            " WHERE incident_id = %(id)s",
            {"value": e.value},
        )

    @process_event.register
    def _(self, e: Incident.Acknowledged, tracking: Tracking) -> None:  # type: ignore[name-defined]
        self._incident(
            e,
            tracking,
            "UPDATE map_incidents SET acknowledged = true, acknowledged_by = %(actor)s,"
            " updated_at = %(ts)s, version = %(version)s WHERE incident_id = %(id)s",
            {"actor": e.actor},
        )

    @process_event.register
    def _(self, e: Incident.Closed, tracking: Tracking) -> None:  # type: ignore[name-defined]
        self._incident(
            e,
            tracking,
            "UPDATE map_incidents SET status = 'closed', closed_at = %(ts)s,"
            " updated_at = %(ts)s, version = %(version)s WHERE incident_id = %(id)s",
            {},
        )


# A second statement, so that the state is computed from the already-updated columns.
_SENSOR_STATE_UPDATE = (
    f"UPDATE map_sensors SET state = {_SENSOR_STATE}, updated_at = %(ts)s,"
    " version = %(version)s WHERE sensor_id = %(sensor_id)s"
)
