"""The live-map projection: sensors and incidents as read-model rows.

Each event becomes SQL changes of its row plus a change notice for the live push; the
projection worker (``projections.runner``) writes a batch of them with the tracking
position in one transaction. Rebuild: empty the tables and the position, run again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.incident import Incident
from core.sensor import Sensor
from projections.runner import NO_EFFECT, NOTIFY_CHANNEL, Effect, Statement, row_update

__all__ = ["NOTIFY_CHANNEL", "MapProjection"]

_SENSOR_STATE = (
    "CASE WHEN silent THEN 'silent' WHEN alarms <> '{}'::jsonb THEN 'alarm' ELSE 'normal' END"
)
# A second statement, so that the state is computed from the already-updated columns.
_SENSOR_STATE_UPDATE = (
    f"UPDATE map_sensors SET state = {_SENSOR_STATE}, updated_at = %(ts)s,"
    " version = %(version)s WHERE sensor_id = %(sensor_id)s"
)

_INCIDENT_OPENED = (
    "INSERT INTO map_incidents (incident_id, kind, title, category, severity, status,"
    " alarm_status, acknowledged, device_id, rule_id, rule_version, metric, last_value,"
    " trigger_count, lon, lat, grid_code, district_code, department_code, opened_at,"
    " updated_at, version) VALUES (%(id)s, %(kind)s, %(title)s, %(category)s,"
    " %(severity)s, 'open', %(alarm_status)s, false, %(device_id)s, %(rule_id)s,"
    " %(rule_version)s, %(metric)s, %(value)s, 1, %(lon)s, %(lat)s, %(grid_code)s,"
    " %(district_code)s, %(department_code)s, %(ts)s, %(ts)s, %(version)s)"
    " ON CONFLICT (incident_id) DO NOTHING"
)
_OPENED_FIELDS = (
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


def _sensor_registered(e: Any) -> list[Statement]:
    return [
        (
            "INSERT INTO map_sensors (device_id, sensor_id, sensor_type, gateway_id, lon,"
            " lat, grid_code, district_code, department_code, state, alarms, updated_at,"
            " version) VALUES (%(device_id)s, %(id)s, %(sensor_type)s,"
            " %(gateway_id)s, %(lon)s, %(lat)s, %(grid_code)s, %(district_code)s,"
            " %(department_code)s, 'normal', '{}'::jsonb, %(ts)s, %(version)s)"
            " ON CONFLICT (device_id) DO NOTHING",
            {
                k: getattr(e, k)
                for k in (
                    "device_id",
                    "sensor_type",
                    "gateway_id",
                    "lon",
                    "lat",
                    "grid_code",
                    "district_code",
                    "department_code",
                )
            },
        )
    ]


def _sensor(sets: str, **params: str) -> Callable[[Any], list[Statement]]:
    """An UPDATE of the sensor's row, then its state recomputed."""

    def build(e: Any) -> list[Statement]:
        bound = {name: getattr(e, attr) for name, attr in params.items()}
        return [
            (f"UPDATE map_sensors SET {sets} WHERE sensor_id = %(id)s", bound),
            (_SENSOR_STATE_UPDATE, {}),
        ]

    return build


def _incident(sets: str, **params: str) -> Callable[[Any], list[Statement]]:
    """An UPDATE of the incident's row; ``params`` name event attributes to bind."""
    build = row_update("map_incidents", "incident_id", sets, **params)
    return lambda e: [build(e)]


def _incident_opened(e: Any) -> list[Statement]:
    params = {k: getattr(e, k) for k in _OPENED_FIELDS}
    params["alarm_status"] = "active" if e.kind in ("sensor_alarm", "device_silent") else "none"
    return [(_INCIDENT_OPENED, params)]


_SENSOR_HANDLERS: dict[type[Any], Callable[[Any], list[Statement]]] = {
    Sensor.Registered: _sensor_registered,  # type: ignore[attr-defined]
    Sensor.AlarmRaised: _sensor(  # type: ignore[attr-defined]
        "alarms = alarms || jsonb_build_object(%(rule)s::text, %(severity)s::text)",
        rule="rule_id",
        severity="severity",
    ),
    Sensor.AlarmSeverityChanged: _sensor(  # type: ignore[attr-defined]
        "alarms = alarms || jsonb_build_object(%(rule)s::text, %(severity)s::text)",
        rule="rule_id",
        severity="severity",
    ),
    Sensor.AlarmCleared: _sensor("alarms = alarms - %(rule)s::text", rule="rule_id"),  # type: ignore[attr-defined]
    Sensor.WentSilent: _sensor("silent = true"),  # type: ignore[attr-defined]
    Sensor.CameBack: _sensor("silent = false"),  # type: ignore[attr-defined]
    Sensor.Relocated: _sensor(  # type: ignore[attr-defined]
        "lon = %(lon)s, lat = %(lat)s, grid_code = %(grid_code)s,"
        " district_code = %(district_code)s, department_code = %(department_code)s",
        lon="lon",
        lat="lat",
        grid_code="grid_code",
        district_code="district_code",
        department_code="department_code",
    ),
}

_INCIDENT_HANDLERS: dict[type[Any], Callable[[Any], list[Statement]]] = {
    Incident.Opened: _incident_opened,  # type: ignore[attr-defined]
    Incident.Retriggered: _incident(  # type: ignore[attr-defined]
        "alarm_status = 'active', severity = %(severity)s, last_value = %(value)s,"
        " trigger_count = trigger_count + 1, cleared_at = NULL",
        severity="severity",
        value="value",
    ),
    Incident.SeverityChanged: _incident(  # type: ignore[attr-defined]
        "severity = %(severity)s, last_value = %(value)s", severity="severity", value="value"
    ),
    Incident.AlarmCleared: _incident(  # type: ignore[attr-defined]
        "alarm_status = 'cleared', last_value = %(value)s, cleared_at = %(ts)s", value="value"
    ),
    Incident.Acknowledged: _incident(  # type: ignore[attr-defined]
        "acknowledged = true, acknowledged_by = %(actor)s", actor="actor"
    ),
    Incident.Closed: _incident(  # type: ignore[attr-defined]
        "status = 'closed', stage = 'closed', closed_at = %(ts)s, escalate_at = NULL"
    ),
    Incident.Dispatched: _incident(  # type: ignore[attr-defined]
        "stage = 'dispatched', department_code = %(department)s, dispatched_at = %(ts)s,"
        " due_at = %(due_at)s, escalate_at = %(due_at)s",
        department="department_code",
        due_at="due_at",
    ),
    Incident.WorkAccepted: _incident("stage = 'accepted', accepted_at = %(ts)s"),  # type: ignore[attr-defined]
    Incident.Resolved: _incident(  # type: ignore[attr-defined]
        "stage = 'resolved', resolved_at = %(ts)s, resolution = %(feedback)s, escalate_at = NULL",
        feedback="feedback",
    ),
    Incident.Verified: _incident("verified_at = %(ts)s"),  # type: ignore[attr-defined]
    Incident.ReworkOrdered: _incident(  # type: ignore[attr-defined]
        "stage = 'dispatched', reworks = reworks + 1, resolved_at = NULL, resolution = NULL,"
        " due_at = %(due_at)s, escalate_at = %(due_at)s",
        due_at="due_at",
    ),
    Incident.Escalated: _incident(  # type: ignore[attr-defined]
        "escalation_level = %(level)s, escalate_at = %(next_at)s",
        level="level",
        next_at="next_at",
    ),
    Incident.CaseLinked: _incident("linked_cases = linked_cases + 1"),  # type: ignore[attr-defined]
    Incident.ConfirmedByReports: _incident(  # type: ignore[attr-defined]
        "severity = %(severity)s, confirmed_by_reports = true", severity="severity"
    ),
    Incident.MergedInto: _incident(  # type: ignore[attr-defined]
        "status = 'closed', stage = 'closed', closed_at = %(ts)s, merged_into = %(target)s,"
        " escalate_at = NULL",
        target="target_id",
    ),
}


class MapProjection:
    """Sensors and incidents of the live map (tables from infra/schema.sql)."""

    name = "map"
    tables: tuple[str, ...] = ("map_sensors", "map_incidents")

    def handle(self, event: Any) -> Effect:
        build = _SENSOR_HANDLERS.get(type(event))
        if build is not None:
            layer, id_key = "sensors", "sensor_id"
        else:
            build = _INCIDENT_HANDLERS.get(type(event))
            if build is None:
                return NO_EFFECT  # events this view does not show still advance it
            layer, id_key = "incidents", "id"
        statements = build(event)
        common = {
            "id": event.originator_id,
            "sensor_id": event.originator_id,
            "ts": event.timestamp,
            "version": event.originator_version,
        }
        for _, params in statements:
            params.update(common)
        change = {"layer": layer, id_key: str(event.originator_id), "event": type(event).__name__}
        return Effect(statements, change)
