"""The correlation policy's spatial look-ups over the read models.

(``core.brain.correlation.Nearby``, answered from SQL.)

A bounding box in degrees narrows each query on the (lon, lat) indexes; the exact
great-circle distance then filters and orders in Python.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg_pool import ConnectionPool

from core.brain.correlation import NearCase, NearIncident, NearSensor
from core.case import OPEN
from gis.crs import distance_m
from projections import positions
from projections.case_queries import box_around
from projections.queries import dict_rows


def nearest(
    rows: list[dict[str, Any]], key: str, lon: float, lat: float, radius_m: float
) -> list[tuple[float, dict[str, Any]]]:
    """(distance, row) of the ``rows`` within ``radius_m`` of (lon, lat), nearest first;
    rows as far (two reports from one spot) in the order of their ``key`` column: the
    same order live and in a backtest, whatever order the database gave."""
    found = [(float(distance_m(lon, lat, r["lon"], r["lat"])), r) for r in rows]
    return sorted(
        ((d, r) for d, r in found if d <= radius_m), key=lambda dr: (dr[0], str(dr[1][key]))
    )


class NearbyQueries:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def _near(
        self, query: str, params: list[Any], key: str, lon: float, lat: float, radius_m: float
    ) -> list[tuple[float, dict[str, Any]]]:
        """(distance, row) of the rows of ``query`` within ``radius_m``, nearest first."""
        return nearest(dict_rows(self.pool, query, params), key, lon, lat, radius_m)

    def incidents_near(
        self, lon: float, lat: float, radius_m: float, categories: tuple[str, ...], since: datetime
    ) -> list[NearIncident]:
        near = self._near(
            "SELECT incident_id, kind, lon, lat FROM map_incidents WHERE status = 'open'"
            " AND stage IN ('reported', 'dispatched', 'accepted') AND category = ANY(%s)"
            " AND lon BETWEEN %s AND %s AND lat BETWEEN %s AND %s"
            " AND (opened_at >= %s OR alarm_status = 'active')",
            [list(categories), *box_around(lon, lat, radius_m), since],
            "incident_id",
            lon,
            lat,
            radius_m,
        )
        return [NearIncident(r["incident_id"], d, r["kind"]) for d, r in near]

    def cases_near(
        self, lon: float, lat: float, radius_m: float, categories: tuple[str, ...], since: datetime
    ) -> list[NearCase]:
        near = self._near(
            "SELECT case_id, lon, lat FROM service_cases WHERE status = ANY(%s)"
            " AND incident_id IS NULL AND category = ANY(%s)"
            " AND lon BETWEEN %s AND %s AND lat BETWEEN %s AND %s AND submitted_at >= %s"
            " LIMIT 500",
            [list(OPEN), list(categories), *box_around(lon, lat, radius_m), since],
            "case_id",
            lon,
            lat,
            radius_m,
        )
        return [NearCase(r["case_id"], d) for d, r in near]

    def sensors_near(
        self, lon: float, lat: float, radius_m: float, sensor_types: tuple[str, ...]
    ) -> list[NearSensor]:
        near = self._near(
            "SELECT device_id, lon, lat, alarms, silent FROM map_sensors"
            " WHERE sensor_type = ANY(%s) AND lon BETWEEN %s AND %s AND lat BETWEEN %s AND %s",
            [list(sensor_types), *box_around(lon, lat, radius_m)],
            "device_id",
            lon,
            lat,
            radius_m,
        )
        return [
            NearSensor(r["device_id"], d, tuple(sorted(r["alarms"] or {})), bool(r["silent"]))
            for d, r in near
        ]

    def wait_for(self, notification_id: int, timeout: float = 10.0) -> bool:
        """Wait until every read model has projected the log up to ``notification_id``."""
        return positions.wait_for(self.pool, notification_id, timeout=timeout)
