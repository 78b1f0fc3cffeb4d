"""Escalations and pages as SQL rows, and what the pager and the API ask of the read models.

``PageProjection`` turns the ``Escalation`` events into ``paging_escalations`` and
``paging_pages`` rows. The pager runs it itself (its own tracking row in
``pages_tracking``), so the projector's views and the replay's checkpoints are not
touched; a page is in the table once the pager's next pass has projected it.

``PageQueries`` reads them (a person's pages, the outbox of pages still to deliver, the
recent outside pages per person for the rate caps) and finds the subjects the triggers
hold true of in the other read models (``map_incidents``, ``service_cases``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from core.case import OPEN
from core.paging import Escalation
from core.paging.desk import Subject
from projections.runner import NO_EFFECT, Effect, Statement

CRITICAL_SINCE = timedelta(minutes=2)


def _opened(e: Any) -> list[Statement]:
    return [
        (
            "INSERT INTO paging_escalations (escalation_id, trigger, subject, title, grid_code,"
            " district_code, critical, status, started_at, policy_version, opened_at,"
            " updated_at, version) VALUES (%(id)s, %(trigger)s, %(subject)s, %(title)s,"
            " %(grid)s, %(district)s, %(critical)s, 'open', %(started)s, %(policy)s, %(ts)s,"
            " %(ts)s, %(version)s) ON CONFLICT (escalation_id) DO NOTHING",
            {
                "trigger": e.trigger,
                "subject": e.subject,
                "title": e.title,
                "grid": e.grid_code,
                "district": e.district_code,
                "critical": e.critical,
                "started": e.started_at,
                "policy": e.policy_version,
            },
        )
    ]


def _paged(e: Any) -> list[Statement]:
    return [
        (
            "INSERT INTO paging_pages (page_id, escalation_id, person, channel, level, paged_at,"
            " delivery, updated_at) VALUES (%(page)s, %(id)s, %(person)s, %(channel)s,"
            " %(level)s, %(at)s, %(delivery)s, %(ts)s) ON CONFLICT (page_id) DO NOTHING",
            {
                "page": e.page_id,
                "person": e.person,
                "channel": e.channel,
                "level": e.level,
                "at": e.at,
                "delivery": "in_app" if e.channel == "in_app" else "pending",
            },
        )
    ]


def _page_update(sets: str, **params: Callable[[Any], Any]) -> Callable[[Any], list[Statement]]:
    query = f"UPDATE paging_pages SET {sets}, updated_at = %(ts)s WHERE page_id = %(page)s"
    return lambda e: [(query, {"page": e.page_id, **{k: f(e) for k, f in params.items()}})]


def _ended(status: str, sets: str = "", **params: Callable[[Any], Any]) -> Callable[[Any], Any]:
    query = (
        f"UPDATE paging_escalations SET status = '{status}', ended_at = %(ts)s{sets}"
        " WHERE escalation_id = %(id)s"
    )
    return lambda e: [(query, {k: f(e) for k, f in params.items()})]


_HANDLERS: dict[str, Callable[[Any], list[Statement]]] = {
    "Opened": _opened,
    "Paged": _paged,
    "PageDelivered": _page_update(
        "delivery = 'delivered', attempts = %(attempt)s, delivered_at = %(ts)s",
        attempt=lambda e: e.attempt,
    ),
    "PageDeliveryFailed": _page_update(
        "delivery = %(delivery)s, attempts = %(attempt)s, last_error = %(error)s",
        delivery=lambda e: "withdrawn" if e.final else "failed",
        attempt=lambda e: e.attempt,
        error=lambda e: e.error,
    ),
    "PageWithdrawn": _page_update(
        "delivery = 'withdrawn', last_error = %(reason)s", reason=lambda e: e.reason
    ),
    "Acknowledged": _ended(
        "acknowledged",
        ", acknowledged_by = %(actor)s, acknowledged_at = %(ts)s",
        actor=lambda e: e.actor,
    ),
    "Stopped": _ended("stopped", ", stop_reason = %(reason)s", reason=lambda e: e.reason),
}
_TOUCH = (
    "UPDATE paging_escalations SET updated_at = %(ts)s, version = %(version)s"
    " WHERE escalation_id = %(id)s"
)


class PageProjection:
    """Escalations as ``paging_escalations`` rows, their pages as ``paging_pages`` rows."""

    name = "pages"
    tables: tuple[str, ...] = ("paging_escalations", "paging_pages")

    def handle(self, event: Any) -> Effect:
        handler = (
            _HANDLERS.get(type(event).__name__) if isinstance(event, Escalation.Event) else None
        )
        if handler is None:
            return NO_EFFECT
        statements = handler(event)
        if type(event).__name__ != "Opened":
            statements.append((_TOUCH, {}))
        meta = {
            "id": event.originator_id,
            "ts": event.timestamp,
            "version": event.originator_version,
        }
        for _, params in statements:
            params.update(meta)
        return Effect(statements)


PAGE_COLUMNS = (
    "p.page_id, p.escalation_id, p.person, p.channel, p.level, p.paged_at, p.delivery,"
    " p.attempts, p.delivered_at, e.trigger, e.subject, e.title, e.critical, e.grid_code,"
    " e.district_code, e.status, e.acknowledged_by, e.acknowledged_at, e.stop_reason"
)


class PageQueries:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self._dispute_columns: bool | None = None

    def _rows(self, query: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(query, list(params)).fetchall()

    # -- the API ------------------------------------------------------------------------

    def pages_of(
        self, person: str, open_only: bool = False, limit: int = 100
    ) -> list[dict[str, Any]]:
        """``person``'s pages, newest first (``open_only``: of escalations still open)."""
        where = " AND e.status = 'open'" if open_only else ""
        return self._rows(
            f"SELECT {PAGE_COLUMNS} FROM paging_pages p JOIN paging_escalations e"
            f" USING (escalation_id) WHERE p.person = %s{where}"
            " ORDER BY p.paged_at DESC, p.page_id LIMIT %s",
            (person, limit),
        )

    def page(self, page_id: UUID) -> dict[str, Any] | None:
        found = self._rows(
            f"SELECT {PAGE_COLUMNS} FROM paging_pages p JOIN paging_escalations e"
            " USING (escalation_id) WHERE p.page_id = %s",
            (page_id,),
        )
        return found[0] if found else None

    # -- the pager ----------------------------------------------------------------------

    def outbox(self, limit: int = 200, backoff_s: float = 5.0) -> list[tuple[UUID, str]]:
        """(escalation, page key) of the outside pages to send now, oldest first: those
        not tried yet, and the failed ones once ``backoff_s`` x 2^attempts (at most 10
        minutes) has passed since the last failure."""
        rows = self._rows(
            "SELECT escalation_id, page_id FROM paging_pages WHERE delivery = 'pending'"
            " OR (delivery = 'failed' AND updated_at"
            " <= now() - least(600, %s * power(2, attempts)) * interval '1 second')"
            " ORDER BY paged_at, page_id LIMIT %s",
            (backoff_s, limit),
        )
        return [(r["escalation_id"], str(r["page_id"])) for r in rows]

    def sent_since(self, since: datetime) -> dict[str, list[datetime]]:
        """Per person, when their outside pages were recorded since ``since``."""
        out: dict[str, list[datetime]] = {}
        for r in self._rows(
            "SELECT person, paged_at FROM paging_pages WHERE channel <> 'in_app' AND paged_at > %s",
            (since,),
        ):
            out.setdefault(r["person"], []).append(r["paged_at"])
        return out

    def escalation_statuses(self, ids: Iterable[UUID]) -> dict[UUID, str]:
        rows = self._rows(
            "SELECT escalation_id, status FROM paging_escalations WHERE escalation_id = ANY(%s)",
            (list(ids),),
        )
        return {r["escalation_id"]: r["status"] for r in rows}

    def levels_paged(self, ids: Iterable[UUID]) -> dict[UUID, tuple[datetime, set[str]]]:
        """Per escalation in the view, when it started and the levels at which someone has
        been paged."""
        out: dict[UUID, tuple[datetime, set[str]]] = {}
        for r in self._rows(
            "SELECT e.escalation_id, e.started_at, p.level FROM paging_escalations e"
            " LEFT JOIN paging_pages p USING (escalation_id) WHERE e.escalation_id = ANY(%s)",
            (list(ids),),
        ):
            _, levels = out.setdefault(r["escalation_id"], (r["started_at"], set()))
            if r["level"] is not None:
                levels.add(r["level"])
        return out

    def open_escalations(self, limit: int = 5_000) -> list[tuple[UUID, str, str]]:
        """(id, trigger, subject) of the escalations still open."""
        rows = self._rows(
            "SELECT escalation_id, trigger, subject FROM paging_escalations"
            " WHERE status = 'open' ORDER BY started_at LIMIT %s",
            (limit,),
        )
        return [(r["escalation_id"], r["trigger"], r["subject"]) for r in rows]

    # -- the triggers, on the other read models -----------------------------------------

    def subjects(self, now: datetime, limit: int = 2_000) -> list[Subject]:
        """Everything a trigger holds true of at ``now``."""
        found = self._critical_alarms(now, limit) + self._late_incidents(now, limit)
        found += self._late_cases(now, limit)
        if self.has_disputes():
            found += self._unarbitrated(now, limit)
        return found

    def _critical_alarms(self, now: datetime, limit: int) -> list[Subject]:
        # The view does not say when an incident became critical (the brain raises an
        # alarm's severity when reports confirm it): one opened longer ago than
        # ``CRITICAL_SINCE`` starts its escalation when the pager first sees it critical,
        # not with every level due at once. The escalation records its start once.
        rows = self._rows(
            "SELECT incident_id, title, grid_code, district_code, opened_at FROM map_incidents"
            " WHERE status = 'open' AND severity = 'critical' AND NOT acknowledged"
            " AND merged_into IS NULL ORDER BY opened_at LIMIT %s",
            (limit,),
        )
        return [
            Subject(
                "critical_alarm",
                f"incident:{r['incident_id']}",
                r["title"],
                r["grid_code"],
                r["district_code"],
                max(r["opened_at"], now - CRITICAL_SINCE),
            )
            for r in rows
        ]

    def _late_incidents(self, now: datetime, limit: int) -> list[Subject]:
        rows = self._rows(
            "SELECT incident_id, title, grid_code, district_code, due_at, reworks"
            " FROM map_incidents WHERE status = 'open' AND stage IN ('dispatched', 'accepted')"
            " AND due_at <= %s ORDER BY due_at LIMIT %s",
            (now, limit),
        )
        return [
            Subject(
                "incident_overdue",
                # One escalation per deadline: a rework sets a new one.
                f"incident:{r['incident_id']}/deadline-{r['reworks'] + 1}",
                r["title"],
                r["grid_code"],
                r["district_code"],
                r["due_at"],
            )
            for r in rows
        ]

    def _late_cases(self, now: datetime, limit: int) -> list[Subject]:
        rows = self._rows(
            "SELECT case_id, external_id, category, grid_code, district_code, due_at,"
            " deadline_no FROM service_cases WHERE status = ANY(%s) AND due_at <= %s"
            " ORDER BY due_at LIMIT %s",
            (list(OPEN), now, limit),
        )
        return [
            Subject(
                "case_overdue",
                # An extension or a revisit sets a new deadline: a new escalation.
                f"case:{r['case_id']}/deadline-{r['deadline_no']}",
                f"{r['category']} {r['external_id']}",
                r["grid_code"],
                r["district_code"],
                r["due_at"],
            )
            for r in rows
        ]

    def has_disputes(self) -> bool:
        """Whether ``service_cases`` has the dispute columns (``dispute_pending``,
        ``arbitrate_by``) this trigger reads."""
        if self._dispute_columns is None:
            rows = self._rows(
                "SELECT count(*) AS n FROM information_schema.columns WHERE table_name ="
                " 'service_cases' AND column_name IN ('dispute_pending', 'arbitrate_by')"
            )
            self._dispute_columns = bool(rows) and int(rows[0]["n"]) == 2
        return self._dispute_columns

    def _unarbitrated(self, now: datetime, limit: int) -> list[Subject]:
        rows = self._rows(
            "SELECT case_id, external_id, category, grid_code, district_code, arbitrate_by"
            " FROM service_cases WHERE dispute_pending AND arbitrate_by <= %s"
            " ORDER BY arbitrate_by LIMIT %s",
            (now, limit),
        )
        return [
            Subject(
                "dispute_unarbitrated",
                f"case:{r['case_id']}/dispute-{r['arbitrate_by'].isoformat()}",
                f"{r['category']} {r['external_id']}",
                r["grid_code"],
                r["district_code"],
                r["arbitrate_by"],
            )
            for r in rows
        ]


def window_start(now: datetime) -> datetime:
    """How far back the rate caps look (a day: no cap's window is longer in practice)."""
    return now - timedelta(days=1)
