"""The projection worker: reads the city log in batches and writes SQL read models.

Each projection turns one domain event into SQL statements (and optionally a change
notice for the live channel). The worker reads a batch of notifications, decodes them
once, asks every projection for its statements, and writes all of them, each
projection's new position and the change notices in ONE transaction, pipelined:

- the views are never ahead of or behind their recorded positions (a SIGKILL mid-batch
  rolls the whole batch back, and the restart reads it again);
- positions are fenced: the transaction locks each tracking row and checks it still
  holds the position this worker started from, so two workers (or a rebuild that
  emptied the views meanwhile) never apply an event twice;
- replaying from zero runs the same code as tailing the log: a rebuild is a batch of
  ``batch_size`` events per transaction, not one transaction per event.

The reading loop is the one every log worker runs (``core.follow.LogTail``); this
module is its sink for SQL views.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import psycopg
from eventsourcing import persistence as es
from eventsourcing.application import Application
from psycopg import sql

from core.follow import LogTail, PositionMovedError

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "cityops_map"
TRACKING_NAME = "city"  # the upstream application's name, as the library records it

Statement = tuple[str, dict[str, Any]]

# libpq waits for a TCP connection as long as the kernel does (minutes, when nothing
# answers); the same bound as ``infra.pgstore.CONNECT_TIMEOUT_S``.
CONNECT_TIMEOUT_S = 5

# A database that is down or restarting, through this worker's own connection (psycopg)
# or through the event store it reads the log from (the library's own types); the same
# set as ``infra.pgstore.DATABASE_UNAVAILABLE``, which this layer does not import.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    es.OperationalError,
    es.InterfaceError,
)


@dataclass(slots=True)
class Effect:
    """What one event does to a view: SQL statements, and a change notice (or None)."""

    statements: list[Statement] = field(default_factory=list)
    change: dict[str, Any] | None = None


NO_EFFECT = Effect()


class SqlProjection(Protocol):
    """A read model: its name (tracking table ``{name}_tracking``) and its tables."""

    @property
    def name(self) -> str: ...

    @property
    def tables(self) -> tuple[str, ...]: ...

    def handle(self, event: Any) -> Effect: ...


def row_update(table: str, key: str, sets: str, **params: str) -> Callable[[Any], Statement]:
    """An UPDATE of one view row keyed by the event's aggregate id; ``params`` name the
    event attributes to bind. The handler adds ``id``, ``ts`` and ``version``."""
    query = (
        f"UPDATE {table} SET {sets}, updated_at = %(ts)s, version = %(version)s"
        f" WHERE {key} = %(id)s"
    )

    def build(e: Any) -> Statement:
        return (query, {name: getattr(e, attr) for name, attr in params.items()})

    return build


class StalePositionError(PositionMovedError):
    """A tracking row moved under this worker (another worker, or a rebuild)."""


def tracking_table(name: str) -> sql.Identifier:
    return sql.Identifier(f"{name}_tracking")


def read_position(conn: psycopg.Connection[Any], name: str, *, lock: bool = False) -> int:
    query = sql.SQL("SELECT notification_id FROM {} WHERE application_name = %s").format(
        tracking_table(name)
    )
    if lock:
        query += sql.SQL(" FOR UPDATE")
    row = conn.execute(query, (TRACKING_NAME,)).fetchone()
    return int(row[0] or 0) if row else 0


def reset(conn: psycopg.Connection[Any], projections: Sequence[SqlProjection]) -> None:
    """Empty the views and their positions (in the caller's transaction)."""
    tables = [sql.Identifier(t) for p in projections for t in p.tables]
    conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(tables)))
    for p in projections:
        conn.execute(sql.SQL("DELETE FROM {}").format(tracking_table(p.name)))


def effects(
    mapper: Any,
    notifications: Sequence[Any],
    projections: Sequence[SqlProjection],
    positions: dict[str, int] | None = None,
) -> tuple[list[Statement], list[dict[str, Any]]]:
    """Decode each notification once and collect every projection's statements and change
    notices, in log order; a projection already at or past a notification (``positions``)
    skips it. Shared by the worker and the replay (``projections.replay``)."""
    statements: list[Statement] = []
    changes: list[dict[str, Any]] = []
    for notification in notifications:
        event = mapper.to_domain_event(notification)
        for p in projections:
            if positions is not None and notification.id <= positions[p.name]:
                continue
            effect = p.handle(event)
            statements.extend(effect.statements)
            if effect.change is not None:
                changes.append(effect.change)
    return statements, changes


def execute(cur: psycopg.Cursor[Any], statements: Sequence[Statement]) -> None:
    """Run ``statements`` on ``cur`` in order (the caller opens the pipeline and the
    transaction)."""
    for query, params in statements:
        cur.execute(query, params)


class ProjectionWorker:
    """Runs projections over the city log, ``batch_size`` events per transaction.

    ``notify_limit``: a batch with more change notices than this sends one
    ``{"layer": "*", "event": "reload"}`` instead (a rebuild must not flood browsers).
    """

    def __init__(
        self,
        app: Application[Any],
        database_url: str,
        projections: Sequence[SqlProjection],
        *,
        batch_size: int = 2_000,
        notify_limit: int = 200,
    ) -> None:
        if not projections:
            raise ValueError("a projection worker needs at least one projection")
        self.app = app
        self.database_url = database_url
        self.projections = list(projections)
        self.notify_limit = notify_limit
        self.positions: dict[str, int] = {}
        self.conn: psycopg.Connection[Any] | None = None
        self.tail = LogTail(
            "projection worker",
            app.recorder,
            self,
            batch_size=batch_size,
            transient=DATABASE_UNAVAILABLE,
            expected=DATABASE_UNAVAILABLE,
        )

    # -- connection and positions (the tail's sink) -------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(
                self.database_url, autocommit=False, connect_timeout=CONNECT_TIMEOUT_S
            )
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def reset(self) -> None:
        self.positions.clear()
        self.close()

    def start(self) -> int:
        conn = self._connection()
        with conn.transaction():
            for p in self.projections:
                # The single tracking row must exist, so that every later batch can
                # lock it: with no row to lock, two workers could both start from zero.
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (application_name, notification_id) VALUES (%s, 0)"
                        " ON CONFLICT (application_name) DO NOTHING"
                    ).format(tracking_table(p.name)),
                    (TRACKING_NAME,),
                )
                self.positions[p.name] = read_position(conn, p.name)
        return min(self.positions.values())

    def apply(self, notifications: Sequence[Any], stop: threading.Event | None) -> int:
        statements, changes = effects(
            self.app.mapper, notifications, self.projections, self.positions
        )
        last = int(notifications[-1].id)
        self._write(self._connection(), statements, changes, last)
        for p in self.projections:
            self.positions[p.name] = max(self.positions[p.name], last)
        return last

    def _write(
        self,
        conn: psycopg.Connection[Any],
        statements: list[Statement],
        changes: list[dict[str, Any]],
        last: int,
    ) -> None:
        with conn.transaction():
            for p in self.projections:
                found = read_position(conn, p.name, lock=True)
                if found != self.positions[p.name]:
                    raise StalePositionError(
                        f"{p.name} is at {found}, expected {self.positions[p.name]}"
                    )
            if len(changes) > self.notify_limit:
                changes = [{"layer": "*", "event": "reload"}]
            with conn.pipeline(), conn.cursor() as cur:
                execute(cur, statements)
                for p in self.projections:
                    cur.execute(
                        sql.SQL(
                            "UPDATE {} SET notification_id = %s WHERE application_name = %s"
                        ).format(tracking_table(p.name)),
                        (last, TRACKING_NAME),
                    )
                for change in changes:
                    cur.execute(
                        "SELECT pg_notify(%s, %s)",
                        (NOTIFY_CHANNEL, orjson.dumps(change).decode()),
                    )

    # -- the loop -----------------------------------------------------------------------

    def step(self) -> int:
        """Project the next batch; return how many notifications it covered."""
        return self.tail.step()

    def run(self, stop: threading.Event, idle_wait: float = 0.1) -> None:
        """Tail the log until ``stop``; back off on database errors and go on."""
        self.tail.run(stop, idle_wait)

    def catch_up(self, timeout: float = 60.0) -> int:
        """Project until no notification is left (tests, rebuild); return the position."""
        return self.tail.catch_up(timeout)
