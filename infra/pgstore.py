"""PostgreSQL adapter: event-store environment, connection pool, schema, fenced recorder."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.postgres import PostgresProcessRecorder
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier
from psycopg_pool import ConnectionPool

from infra.settings import Settings

log = logging.getLogger(__name__)


class StalePositionError(IntegrityError):
    """Another worker moved this input position first (it now owns the partition)."""


class FencedProcessRecorder(PostgresProcessRecorder):
    """Process recorder that also fences input positions and stores worker state.

    Extra keyword arguments of ``ProcessingEvent.collect_events``:

    - ``expected_position``: the tracking position this batch started from. If another
      worker recorded a different one meanwhile, the whole transaction is refused, so a
      worker that lost its partition in a rebalance cannot write a duplicate effect.
    - ``state_rows``: ``[(key, json_text), ...]`` upserted into ``monitor_state`` in the
      same transaction (the monitor's pending rule state).
    """

    def _insert_events(
        self,
        curs: psycopg.Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        **kwargs: Any,
    ) -> None:
        tracking = kwargs.get("tracking")
        if tracking is not None and "expected_position" in kwargs:
            curs.execute(
                SQL(
                    "SELECT notification_id FROM {0}.{1} WHERE application_name=%s FOR UPDATE"
                ).format(Identifier(self.datastore.schema), Identifier(self.tracking_table_name)),
                (tracking.application_name,),
            )
            row = curs.fetchone()
            current = None if row is None else row["notification_id"]
            if current != kwargs["expected_position"]:
                raise StalePositionError(
                    f"{tracking.application_name}: position is {current}, "
                    f"expected {kwargs['expected_position']}"
                )
        state_rows = kwargs.get("state_rows")
        if state_rows:
            # One statement for every row. Its own cursor: in pipeline mode a result on
            # the shared cursor can land where the library's tracking insert fetches its
            # RETURNING.
            with curs.connection.cursor() as state_curs:
                state_curs.execute(
                    "INSERT INTO monitor_state (device_id, state)"
                    " SELECT * FROM unnest(%s::text[], %s::jsonb[])"
                    " ON CONFLICT (device_id) DO UPDATE SET state = EXCLUDED.state",
                    ([k for k, _ in state_rows], [v for _, v in state_rows]),
                )
        super()._insert_events(curs, stored_events, **kwargs)


def parse_database_url(url: str) -> dict[str, str]:
    """Split a postgresql:// URL into the eventsourcing library's POSTGRES_* settings."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"CITYOPS_DATABASE_URL must be postgresql://..., got {parts.scheme!r}")
    query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    host = unquote(parts.hostname or "") or query.get("host", "")
    if not host:
        raise ValueError("CITYOPS_DATABASE_URL has no host")
    return {
        "POSTGRES_HOST": query.get("host", host),
        "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_DBNAME": (parts.path or "/postgres").lstrip("/") or "postgres",
        "POSTGRES_USER": unquote(parts.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(parts.password or ""),
    }


def eventstore_env(
    settings: Settings, pool_size: int | None = None, *, create_tables: bool = False
) -> dict[str, str]:
    """The eventsourcing library's environment for the PostgreSQL event store.

    Only ``cityops seed`` creates tables: DDL from many processes starting together
    collides in PostgreSQL's catalogue ("tuple concurrently updated").
    """
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "PROCESS_RECORDER_TOPIC": "infra.pgstore:FencedProcessRecorder",
        "POSTGRES_POOL_SIZE": str(pool_size or settings.db_pool_size),
        "POSTGRES_MAX_OVERFLOW": "4",
        "POSTGRES_CONNECT_TIMEOUT": "10",
        "POSTGRES_LOCK_TIMEOUT": "10",
        "CREATE_TABLE": "true" if create_tables else "false",
    }
    env.update(parse_database_url(settings.database_url))
    return env


def make_pool(
    settings: Settings, *, min_size: int = 1, max_size: int | None = None
) -> ConnectionPool:
    """A psycopg connection pool (for the telemetry store, read models and queries)."""
    pool = ConnectionPool(
        settings.database_url,
        min_size=min_size,
        max_size=max_size or settings.db_pool_size,
        kwargs={"autocommit": False},
        open=False,
    )
    pool.open(wait=True, timeout=30)
    return pool


def apply_audit_schema(conn: psycopg.Connection[Any]) -> None:
    """The log's hash chain and append-only guards (infra/audit.sql); needs the event
    store's tables, so it runs after the library has created them."""
    statements = resources.files("infra").joinpath("audit.sql").read_text(encoding="utf-8")
    with conn.transaction():
        conn.execute(statements)


def apply_schema(conn: psycopg.Connection[Any]) -> bool:
    """Create the project's own tables (idempotent). Returns True when TimescaleDB is used.

    ``readings`` becomes a hypertable, with the continuous aggregate ``readings_1m``, only
    when the server has TimescaleDB installed and preloaded: creating or using the
    extension on a server that has not preloaded it ends the session.
    """
    timescale = False
    with conn.transaction():
        timescale = _use_timescale(conn)
        sql = resources.files("infra").joinpath("schema.sql").read_text(encoding="utf-8")
        conn.execute(sql)
        if timescale:
            # migrate_data: a database first seeded without TimescaleDB keeps its rows.
            conn.execute(
                "SELECT create_hypertable('readings', 'ts', if_not_exists => TRUE, "
                "chunk_time_interval => INTERVAL '1 day', migrate_data => TRUE)"
            )
    if timescale:
        _create_continuous_aggregate(conn)
    return timescale


_TIMESCALE_LIBRARY = "timescaledb"


def _preloads_timescale(shared_preload_libraries: str) -> bool:
    """Whether a ``shared_preload_libraries`` value names the TimescaleDB loader."""
    for entry in shared_preload_libraries.split(","):
        name = entry.strip().strip('"').rsplit("/", 1)[-1].lower()
        name = name.removesuffix(".so")
        if name == _TIMESCALE_LIBRARY or name.startswith(_TIMESCALE_LIBRARY + "-"):
            return True
    return False


def _timescale_decision(
    available: str | None, created: str | None, preloaded: bool
) -> tuple[bool, str]:
    """Use TimescaleDB or not, and why (for the log).

    ``available``: the default version in ``pg_available_extensions`` (None: not installed
    on the server); ``created``: the version created in this database (None: not created);
    ``preloaded``: whether the server preloads it.
    """
    if available is None:
        return False, "TimescaleDB is not installed on this server: readings stay a plain table"
    if not preloaded:
        where = f" (created in this database, version {created})" if created else ""
        return False, (
            f"TimescaleDB {available} installed{where} but not in shared_preload_libraries: "
            "readings stay a plain table; add it to use hypertables"
        )
    if created:
        return True, f"TimescaleDB {created}: readings is a hypertable"
    return True, f"TimescaleDB {available} preloaded: creating the extension"


def _server_preloads_timescale(conn: psycopg.Connection[Any]) -> bool:
    """Whether the server preloads TimescaleDB.

    ``shared_preload_libraries`` is readable only by superusers and pg_read_all_settings;
    for other roles the loader's own setting tells: the server defines it, as a bool, only
    when the loader is preloaded (a value merely set in a config file is a string).
    """
    try:
        with conn.transaction():
            row = conn.execute("SHOW shared_preload_libraries").fetchone()
        return _preloads_timescale(str(row[0]) if row else "")
    except psycopg.errors.InsufficientPrivilege:
        pass
    row = conn.execute(
        "SELECT vartype FROM pg_settings WHERE name = 'timescaledb.disable_load'"
    ).fetchone()
    return row is not None and row[0] == "bool"


def _use_timescale(conn: psycopg.Connection[Any]) -> bool:
    """Decide whether this database uses TimescaleDB and create the extension if so.

    Runs inside the caller's transaction; never lets the server end the session.
    """
    row = conn.execute(
        "SELECT default_version, installed_version FROM pg_available_extensions WHERE name = %s",
        (_TIMESCALE_LIBRARY,),
    ).fetchone()
    available, created = (None, None) if row is None else (row[0], row[1])
    preloaded = available is not None and _server_preloads_timescale(conn)
    use, why = _timescale_decision(available, created, preloaded)
    # Not installed is the usual plain server; installed but unusable deserves a warning.
    log.log(logging.INFO if use or available is None else logging.WARNING, why)
    if not use or created:
        return use
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as exc:
        if conn.closed:
            raise
        log.warning(
            "TimescaleDB preloaded but CREATE EXTENSION failed (%s): readings stay a plain "
            "table; create it as a superuser to use hypertables",
            str(exc).strip(),
        )
        return False
    return True


def _create_continuous_aggregate(conn: psycopg.Connection[Any]) -> None:
    """``readings_1m``, per-minute statistics of ``readings``, refreshed every minute."""
    # Continuous aggregates cannot be created inside a transaction block.
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        log.warning(
            "readings_1m not created: apply_schema ran inside a transaction; "
            "run it on a connection with no transaction open"
        )
        return
    prev = conn.autocommit
    conn.autocommit = True
    try:
        conn.execute(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS readings_1m "
            "WITH (timescaledb.continuous) AS "
            "SELECT time_bucket(INTERVAL '1 minute', ts) AS bucket, device_id, metric, "
            "avg(value) AS avg, min(value) AS min, max(value) AS max, count(*) AS count "
            "FROM readings GROUP BY bucket, device_id, metric WITH NO DATA"
        )
        conn.execute(
            "SELECT add_continuous_aggregate_policy('readings_1m', "
            "start_offset => INTERVAL '1 day', end_offset => INTERVAL '1 minute', "
            "schedule_interval => INTERVAL '1 minute', if_not_exists => TRUE)"
        )
    finally:
        conn.autocommit = prev
