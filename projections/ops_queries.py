"""The operations center's figures over the read models: KPI tiles and the SLA board.

The on-time closure rate (按期结案率) and satisfaction are the scorecards' own figures
(``projections.scorecards.SCORECARDS``) with the whole city as the one unit: the same
items, the same definitions, nothing re-derived here.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from core.case import ACTIVE, OPEN
from core.incident import SEVERITIES, WORKING
from projections.case_queries import CASE_COLUMNS
from projections.queries import dict_rows
from projections.scorecards import SCORECARDS, THREE_RATES, default_weights, weighted_score

# Counts for the tiles, each from an index: map_incidents_status (status, severity),
# service_cases_submitted, service_cases_status_due; map_sensors is one row per device.
COUNTS = """
SELECT
    (SELECT coalesce(jsonb_object_agg(severity, n), '{}'::jsonb)
     FROM (SELECT severity, count(*) AS n FROM map_incidents
           WHERE status = 'open' GROUP BY severity) s) AS open_incidents,
    (SELECT count(*) FROM map_incidents
     WHERE status = 'open' AND NOT acknowledged) AS unacknowledged_incidents,
    (SELECT coalesce(jsonb_object_agg(state, n), '{}'::jsonb)
     FROM (SELECT state, count(*) AS n FROM map_sensors GROUP BY state) s) AS sensors,
    (SELECT count(*) FROM service_cases WHERE submitted_at >= %(today)s) AS cases_today,
    (SELECT count(*) FROM service_cases WHERE status = ANY(%(open)s)) AS open_cases,
    (SELECT count(*) FROM service_cases
     WHERE status = ANY(%(active)s) AND deadline_no > 0
           AND overdue_marked = deadline_no) AS overdue_cases
"""

# The scorecard query with one unit, the city: a constant is never NULL, so every item
# of the period is in it (the per-level cards leave out items without a unit).
CITY_SCORECARD = sql.SQL(SCORECARDS).format(
    unit=sql.Literal("city"),
    filters=sql.SQL(""),
    score=sql.SQL("NULL::float8"),  # the composite is the cards' business, not a tile's
    three_rates=weighted_score(default_weights().three_rates, THREE_RATES),
    district=sql.SQL(""),
)
PERFORMANCE_FIELDS = (
    "volume",
    "closed",
    "closed_with_due",
    "closed_on_time",
    "on_time_rate",
    "rated",
    "mean_rating",
    "bad_ratings",
    "bad_rating_share",
    "response_due",
    "responded_on_time",
    "response_rate",
    "solved_asked",
    "solved",
    "resolution_rate",
    "satisfied",
    "satisfaction_rate",
    "three_rates_index",
)
# With no work in the period the card has no row: counts are 0, rates and means None.
_COUNTED = {
    "volume",
    "closed",
    "closed_with_due",
    "closed_on_time",
    "rated",
    "bad_ratings",
    "response_due",
    "responded_on_time",
    "solved_asked",
    "solved",
    "satisfied",
}

# Active cases marked due soon on their current deadline and not (yet) overdue.
DUE_SOON_CASES = f"""
SELECT {CASE_COLUMNS}, count(*) OVER () AS total
FROM service_cases
WHERE status = ANY(%(active)s) AND deadline_no > 0 AND due_soon_marked = deadline_no
      AND overdue_marked < deadline_no{{department}}
ORDER BY due_at ASC NULLS LAST, submitted_at, case_id
LIMIT %(limit)s
"""

# Incidents being worked (dispatched or accepted) that are past their deadline, within
# the last stretch of their time limit, or escalated; the least time left first.
INCIDENT_COLUMNS = (
    "incident_id, kind, title, category, severity, stage, status, alarm_status,"
    " acknowledged, device_id, department_code, district_code, grid_code, lon, lat,"
    " opened_at, dispatched_at, accepted_at, due_at, escalation_level, reworks, linked_cases"
)
SLA_INCIDENTS = f"""
WITH flagged AS (
    SELECT {INCIDENT_COLUMNS},
           due_at <= %(now)s AS overdue,
           due_at > %(now)s AND due_at <= %(now)s + {{soon}} AS due_soon
    FROM map_incidents
    WHERE status = 'open' AND stage = ANY(%(working)s){{department}}
)
SELECT *,
       count(*) OVER () AS total,
       count(*) FILTER (WHERE overdue) OVER () AS total_overdue,
       count(*) FILTER (WHERE due_soon) OVER () AS total_due_soon,
       count(*) FILTER (WHERE escalation_level > 0) OVER () AS total_escalated
FROM flagged
WHERE overdue OR due_soon OR escalation_level > 0
ORDER BY due_at ASC NULLS LAST, escalation_level DESC, incident_id
LIMIT %(limit)s
"""


def _soon_window(windows: Mapping[str, timedelta], default: timedelta) -> sql.Composable:
    """The due-soon window of a row's severity, as an SQL interval expression."""
    whens = [
        sql.SQL("WHEN {} THEN {}").format(sql.Literal(severity), sql.Literal(window))
        for severity, window in windows.items()
    ]
    return sql.SQL("(CASE severity {} ELSE {} END)").format(
        sql.SQL(" ").join(whens), sql.Literal(default)
    )


def _department(department_code: str | None) -> sql.Composable:
    if department_code is None:
        return sql.SQL("")
    return sql.SQL(" AND department_code = %(department_code)s")


class OpsQueries:
    """KPI figures and the SLA board's lists, a few statements on one connection each."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def kpis(self, today: datetime, start: datetime, end: datetime) -> dict[str, Any]:
        """Tile counts now (cases today: submitted since ``today``), and the on-time and
        satisfaction figures of the work of ``[start, end)``."""
        params = {"today": today, "open": list(OPEN), "active": list(ACTIVE)}
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(COUNTS, params)
            counts = cur.fetchone()
            cur.execute(CITY_SCORECARD, {"start": start, "end": end})
            card = cur.fetchone()
        assert counts is not None
        by_severity = {s: int(counts["open_incidents"].get(s, 0)) for s in SEVERITIES}
        # Severities outside the scale (none today) still count in the total.
        for severity, n in counts["open_incidents"].items():
            by_severity.setdefault(severity, int(n))
        states = {k: int(v) for k, v in counts["sensors"].items()}
        return {
            "incidents": {
                "open": sum(by_severity.values()),
                "by_severity": by_severity,
                "unacknowledged": counts["unacknowledged_incidents"],
            },
            "sensors": {
                "total": sum(states.values()),
                "normal": states.get("normal", 0),
                "alarm": states.get("alarm", 0),
                "silent": states.get("silent", 0),
            },
            "cases": {
                "today": counts["cases_today"],
                "open": counts["open_cases"],
                "overdue": counts["overdue_cases"],
            },
            "performance": {
                name: (card[name] if card else (0 if name in _COUNTED else None))
                for name in PERFORMANCE_FIELDS
            },
        }

    def due_soon_cases(
        self, department_code: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        """Cases marked due soon and not overdue, the earliest due first; and their count."""
        query = sql.SQL(DUE_SOON_CASES).format(department=_department(department_code))
        params = {"active": list(ACTIVE), "department_code": department_code, "limit": limit}
        rows = dict_rows(self.pool, query, params)
        return rows, int(rows[0]["total"]) if rows else 0

    def sla_incidents(
        self,
        now: datetime,
        soon: Mapping[str, timedelta],
        default_soon: timedelta,
        department_code: str | None,
        limit: int,
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Incidents being worked that are overdue, due soon (within ``soon[severity]`` of
        their deadline) or escalated, the least time left first; and the counts of each."""
        query = sql.SQL(SLA_INCIDENTS).format(
            soon=_soon_window(soon, default_soon), department=_department(department_code)
        )
        params = {
            "now": now,
            "working": list(WORKING),
            "department_code": department_code,
            "limit": limit,
        }
        rows = dict_rows(self.pool, query, params)
        first = rows[0] if rows else {}
        counts = {
            "total": int(first.get("total", 0)),
            "overdue": int(first.get("total_overdue", 0)),
            "due_soon": int(first.get("total_due_soon", 0)),
            "escalated": int(first.get("total_escalated", 0)),
        }
        return rows, counts
