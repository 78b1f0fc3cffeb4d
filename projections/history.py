"""One aggregate's recorded history, read straight from the city log and its hash chain.

Not a projection: the log itself is the source, with each event's position
(notification id), its recording time and chain link from ``event_chain``. Also the
telemetry row behind an alarm, for the audit's causal trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Mapper, StoredEvent
from psycopg_pool import ConnectionPool

# How far from the alarm's reading time a stored reading may be and still be the one
# (the monitor records the reading's own timestamp, so normally they are equal).
READING_WINDOW = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """A domain event with where and when the log recorded it."""

    position: int
    recorded_at: datetime | None
    chain_hash: str | None
    event: Any

    @property
    def version(self) -> int:
        version: int = self.event.originator_version
        return version


class LogHistory:
    """Reads aggregates' events with their log positions and chain links."""

    def __init__(self, pool: ConnectionPool, mapper: Mapper[UUID]) -> None:
        self.pool = pool
        self.mapper = mapper

    def events(
        self, originator_id: UUID, after_version: int = 0, limit: int | None = None
    ) -> list[LoggedEvent]:
        """Events of one aggregate after ``after_version``, oldest first."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT e.notification_id, e.originator_version, e.topic, e.state,"
                " c.recorded_at, c.hash"
                " FROM city_events e LEFT JOIN event_chain c USING (notification_id)"
                " WHERE e.originator_id = %s AND e.originator_version > %s"
                " ORDER BY e.originator_version LIMIT %s",
                (originator_id, after_version, limit),
            ).fetchall()
        return [
            LoggedEvent(
                position=position,
                recorded_at=recorded_at,
                chain_hash=None if link is None else bytes(link).hex(),
                event=self.mapper.to_domain_event(
                    StoredEvent(
                        originator_id=originator_id,
                        originator_version=version,
                        topic=topic,
                        state=bytes(state),
                    )
                ),
            )
            for position, version, topic, state, recorded_at, link in rows
        ]

    def first(self, originator_id: UUID) -> LoggedEvent | None:
        found = self.events(originator_id, 0, 1)
        return found[0] if found else None

    def at_version(self, originator_id: UUID, version: int) -> LoggedEvent | None:
        found = self.events(originator_id, version - 1, 1)
        return found[0] if found and found[0].version == version else None

    def last_version(self, originator_id: UUID) -> int:
        """The aggregate's current version (0 if it has no events)."""
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT max(originator_version) FROM city_events WHERE originator_id = %s",
                (originator_id,),
            ).fetchone()
        return int((row[0] if row else None) or 0)

    def version_at(self, originator_id: UUID, instant: datetime) -> int:
        """The last version recorded at or before ``instant`` (0 if none was)."""
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT max(e.originator_version)"
                " FROM city_events e JOIN event_chain c USING (notification_id)"
                " WHERE e.originator_id = %s AND c.recorded_at <= %s",
                (originator_id, instant),
            ).fetchone()
        return int((row[0] if row else None) or 0)

    def reading_near(
        self, device_id: str, metric: str, ts: float, value: float | None
    ) -> dict[str, Any] | None:
        """The stored reading an alarm was raised on: that device and metric, nearest in
        time to ``ts`` (epoch seconds), the same value first; None if none is stored."""
        at = datetime.fromtimestamp(ts, UTC)
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT ts, value, unit, ingested_at FROM readings"
                " WHERE device_id = %s AND metric = %s AND ts BETWEEN %s AND %s"
                " ORDER BY abs(extract(epoch FROM ts - %s)), value IS DISTINCT FROM %s"
                " LIMIT 1",
                (device_id, metric, at - READING_WINDOW, at + READING_WINDOW, at, value),
            ).fetchone()
        if row is None:
            return None
        return {"ts": row[0], "value": row[1], "unit": row[2], "ingested_at": row[3]}
