"""Read-side queries over the ``service_cases`` read model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import sql
from psycopg_pool import ConnectionPool

from core.case import ACTIVE, OPEN
from projections import positions
from projections.cases import CaseProjection
from projections.queries import BBox, Filters, dict_rows

CASE_COLUMNS = (
    "case_id, channel, external_id, category, description, status, status_notes, lon, lat,"
    " address, grid_code, district_code, department_code, citizen_id, submitted_by,"
    " rejection, possible_duplicates, awaiting_assignment, due_at, due_soon_at, deadline_no,"
    " due_soon_marked, overdue_marked, extension_pending, extensions, returns, revisits,"
    " rating, personal_data_erased, submitted_at, updated_at, resolved_at, closed_at, version,"
    " incident_id, sensor_check, proactive, co_handlers, dispute_pending, arbitrate_by,"
    " disputes_upheld, respond_by, first_contact_at, solved"
)
# Open311's two statuses: everything still being worked on is "open".
OPEN311_OPEN = OPEN
EARTH_M_PER_DEG = 111_320.0


def box_around(lon: float, lat: float, radius_m: float) -> list[float]:
    """West, east, south, north (degrees) of a box holding the circle of ``radius_m``."""
    dlat = radius_m / EARTH_M_PER_DEG
    dlon = radius_m / (EARTH_M_PER_DEG * max(0.01, math.cos(math.radians(lat))))
    return [lon - dlon, lon + dlon, lat - dlat, lat + dlat]


# A submission's look for duplicates, the busiest read of the case view: one text,
# rendered once with the open statuses in it, so that psycopg converts it once (its
# cache is by text) and adapts no array per call.
_OPEN_NEAR = (
    sql.SQL(
        "SELECT case_id FROM service_cases WHERE category = %s AND status IN ({open})"
        " AND lon BETWEEN %s AND %s AND lat BETWEEN %s AND %s"
        " AND power((lon - %s) * cos(radians(%s)) * %s, 2)"
        " + power((lat - %s) * %s, 2) <= power(%s, 2)"
        " ORDER BY submitted_at LIMIT %s"
    )
    .format(open=sql.SQL(", ").join(map(sql.Literal, sorted(OPEN))))
    .as_string()
)


@dataclass(frozen=True, slots=True)
class CaseFilter:
    """Filters of the case lists; ``None`` means "any"."""

    statuses: tuple[str, ...] | None = None
    categories: tuple[str, ...] | None = None
    case_ids: tuple[UUID, ...] | None = None
    department_code: str | None = None
    district_code: str | None = None
    grid_code: str | None = None
    citizen_or_submitter: tuple[str | None, str] | None = None  # (citizen id, actor)
    overdue: bool | None = None
    awaiting_assignment: bool | None = None
    submitted_from: datetime | None = None
    submitted_to: datetime | None = None
    bbox: BBox | None = None
    co_handler: str | None = None  # cases where this unit's co-handling part is pending
    dispute_pending: bool | None = None


class CaseQueries:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def _ids(self, query: str, params: list[Any]) -> list[Any]:
        """The first column of each row of ``query``."""
        with self.pool.connection() as conn:
            return [row[0] for row in conn.execute(query, params)]

    def _where(self, flt: CaseFilter) -> Filters:
        f = (
            Filters()
            .eq("department_code", flt.department_code)
            .eq("district_code", flt.district_code)
            .eq("grid_code", flt.grid_code)
            .eq("awaiting_assignment", flt.awaiting_assignment)
            .eq("dispute_pending", flt.dispute_pending)
        )
        if flt.co_handler is not None:  # ``?`` first: the GIN index on co_handlers
            f.parts.append(sql.SQL("(co_handlers ? %s AND co_handlers -> %s ->> 'status' = %s)"))
            f.params.extend([flt.co_handler, flt.co_handler, "pending"])
        f.bbox(flt.bbox)
        for column, values in (
            ("status", flt.statuses),
            ("category", flt.categories),
            ("case_id", flt.case_ids),
        ):
            if values is not None:
                f.parts.append(sql.SQL("{} = ANY(%s)").format(sql.Identifier(column)))
                f.params.append(list(values))
        if flt.overdue is not None:
            overdue = sql.SQL(
                "(overdue_marked = deadline_no AND deadline_no > 0 AND status = ANY(%s))"
            )
            f.parts.append(overdue if flt.overdue else sql.SQL("NOT ") + overdue)
            f.params.append(list(ACTIVE))
        if flt.citizen_or_submitter is not None:
            citizen, actor = flt.citizen_or_submitter
            f.parts.append(sql.SQL("(citizen_id = %s OR submitted_by = %s)"))
            f.params.extend([citizen, actor])
        if flt.submitted_from is not None:
            f.parts.append(sql.SQL("submitted_at >= %s"))
            f.params.append(flt.submitted_from)
        if flt.submitted_to is not None:
            f.parts.append(sql.SQL("submitted_at <= %s"))
            f.params.append(flt.submitted_to)
        return f

    def cases(
        self,
        flt: CaseFilter,
        *,
        order: str = "due",
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Case rows matching ``flt``: by due time (queues) or newest first."""
        f = self._where(flt)
        order_by = (
            "due_at ASC NULLS LAST, submitted_at ASC, case_id"
            if order == "due"
            else "submitted_at DESC, case_id"
        )
        query = sql.SQL("SELECT {} FROM service_cases{} ORDER BY {} LIMIT %s OFFSET %s").format(
            sql.SQL(CASE_COLUMNS), f.clause(), sql.SQL(order_by)
        )
        return dict_rows(self.pool, query, [*f.params, limit, offset])

    def count(self, flt: CaseFilter) -> int:
        f = self._where(flt)
        rows = dict_rows(
            self.pool,
            sql.SQL("SELECT count(*) AS n FROM service_cases{}").format(f.clause()),
            f.params,
        )
        return int(rows[0]["n"])

    def case(self, case_id: UUID) -> dict[str, Any] | None:
        rows = dict_rows(
            self.pool,
            sql.SQL("SELECT {} FROM service_cases WHERE case_id = %s").format(
                sql.SQL(CASE_COLUMNS)
            ),
            [case_id],
        )
        return rows[0] if rows else None

    def open_cases_near(
        self, category: str, lon: float, lat: float, radius_m: float, limit: int
    ) -> list[str]:
        """Open cases of ``category`` within ``radius_m`` (equirectangular distance)."""
        rows = dict_rows(
            self.pool,
            _OPEN_NEAR,
            [
                category,
                *box_around(lon, lat, radius_m),
                lon,
                lat,
                EARTH_M_PER_DEG,
                lat,
                EARTH_M_PER_DEG,
                radius_m,
                limit,
            ],
        )
        return [str(r["case_id"]) for r in rows]

    def deadline_candidates(self, now: datetime, limit: int = 1_000) -> list[UUID]:
        """Active cases whose due-soon or overdue mark for the current deadline is due."""
        return self._ids(
            "SELECT case_id FROM service_cases WHERE status = ANY(%s) AND ("
            " (due_soon_at <= %s AND due_soon_marked < deadline_no)"
            " OR (due_at <= %s AND overdue_marked < deadline_no))"
            " ORDER BY due_soon_at LIMIT %s",
            [list(ACTIVE), now, now, limit],
        )

    def cases_of_incident(self, incident_id: UUID) -> list[dict[str, Any]]:
        """The cases linked to an incident (no personal data), oldest first."""
        return dict_rows(
            self.pool,
            sql.SQL(
                "SELECT case_id, external_id, channel, category, status, sensor_check, proactive,"
                " lon, lat, submitted_at, resolved_at FROM service_cases WHERE incident_id = %s"
                " ORDER BY submitted_at"
            ),
            [incident_id],
        )

    def escalation_candidates(self, now: datetime, limit: int = 500) -> list[UUID]:
        """Incidents being worked whose deadline (or next escalation) has passed."""
        return self._ids(
            "SELECT incident_id FROM map_incidents WHERE escalate_at <= %s"
            " AND status = 'open' AND stage IN ('dispatched', 'accepted')"
            " ORDER BY escalate_at LIMIT %s",
            [now, limit],
        )

    def wait_until_current(self, timeout: float = 10.0) -> bool:
        """Wait until the read model has caught up with the log as it is now."""
        with self.pool.connection() as conn:
            target = positions.head(conn)
        return positions.wait_for(self.pool, target, (CaseProjection.name,), timeout)

    def case_ids_of_citizen(self, citizen_id: UUID) -> list[UUID]:
        """Every case of a citizen, as of the log now (waits for the read model)."""
        self.wait_until_current()
        return self._ids("SELECT case_id FROM service_cases WHERE citizen_id = %s", [citizen_id])
