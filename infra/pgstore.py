"""PostgreSQL adapter: event-store environment, connection pool, schema, fenced recorder."""

from __future__ import annotations

import hashlib
import json
import logging
import select
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import psycopg
from eventsourcing import persistence as es
from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.postgres import PostgresFactory, PostgresProcessRecorder
from eventsourcing.utils import retry as es_retry
from eventsourcing.utils import strtobool
from psycopg.rows import DictRow, tuple_row
from psycopg.sql import SQL, Identifier
from psycopg_pool import ConnectionPool
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_when_event_set,
    wait_exponential,
)

from infra.group_commit import GroupCommit
from infra.settings import Settings

log = logging.getLogger(__name__)

GROUP_COMMIT = "CITYOPS_GROUP_COMMIT"  # the library environment's switch for it
KEEPALIVES = "CITYOPS_PG_KEEPALIVES"  # the event store's libpq keepalive parameters, JSON

# What a database that is down, restarting or out of reach raises: through our own pools
# (psycopg; psycopg_pool's PoolTimeout is an OperationalError) and through the event
# store, which translates psycopg's errors into the library's own types.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    es.OperationalError,
    es.InterfaceError,
)


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot be reached now (worth waiting out)."""
    return isinstance(exc, DATABASE_UNAVAILABLE)


def describe(exc: BaseException) -> str:
    """An error on one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# The longest pause of a worker between two tries of the database it waits for: once the
# database is back, the worker notices within this (plus the wait for a connection).
RETRY_MAX_S = 5.0


def until_database_back(
    stop: threading.Event | None,
    what: str,
    logger: logging.Logger = log,
    *,
    max_wait_s: float = RETRY_MAX_S,
) -> Retrying:
    """A tenacity ``Retrying`` that waits out an unavailable database while ``what`` runs.

    Backs off exponentially up to ``max_wait_s``, logs one line per failed attempt (no
    traceback) and gives up, re-raising, only when ``stop`` is set. Other errors are
    raised at once::

        for attempt in until_database_back(stop, "telemetry writer: batch"):
            with attempt:
                write(batch)
    """

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        logger.warning(
            "%s: database unavailable (%s); attempt %d, retrying in %.1f s",
            what,
            describe(exc) if exc else "?",
            state.attempt_number,
            state.upcoming_sleep,
        )

    pause = stop if stop is not None else threading.Event()

    def sleep(seconds: float) -> None:
        pause.wait(seconds)

    return Retrying(
        retry=retry_if_exception(database_unavailable),
        wait=wait_exponential(multiplier=0.25, max=max_wait_s),
        stop=stop_when_event_set(stop) if stop is not None else (lambda _s: False),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


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

    A save without them (an HTTP command) goes through ``group`` when the factory gives
    one: saves arriving together share one transaction (``infra.group_commit``).
    """

    group: GroupCommit[StoredEvent] | None = None

    def __init__(self, datastore: Any, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        schema = Identifier(datastore.schema)
        function = Identifier(f"cityops_record_{self.events_table_name}".replace(".", "_"))
        # A save of its own in one statement: the library's lock, notify and insert
        # (the same order and gap-free ids, the audit chain's trigger on the insert), one
        # round trip and no pipeline, where the library's way takes five statements.
        self.sql_create_statements.append(
            SQL(
                "CREATE OR REPLACE FUNCTION {schema}.{function}(events {schema}.{event}[])"
                " RETURNS SETOF bigint LANGUAGE plpgsql AS $BODY$ BEGIN"
                " SET LOCAL lock_timeout = '{lock_timeout}s';"
                " LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE;"
                " NOTIFY {channel};"
                " RETURN QUERY INSERT INTO {schema}.{table} AS t"
                " (originator_id, originator_version, topic, state)"
                " SELECT originator_id, originator_version, topic, state FROM unnest(events)"
                " RETURNING notification_id;"
                " END; $BODY$"
            ).format(
                schema=schema,
                function=function,
                event=Identifier(self.stored_event_type_name),
                lock_timeout=datastore.lock_timeout,
                table=Identifier(self.events_table_name),
                channel=Identifier(self.channel_name),
            )
        )
        # The rows go over in binary (%b): the events' state as it is, where text would
        # write each as hex inside a quoted composite inside an array. Rendered once:
        # psycopg converts a text once (its cache is by text), a composed query per call.
        self._record_statement = (
            SQL("SELECT * FROM {schema}.{function}(%b)")
            .format(schema=schema, function=function)
            .as_string()
        )
        # False once the database says the function is missing (tables created before
        # it, by an older version): saves then go the library's way.
        self._record_function = True

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if self.group is None or any(v is not None for v in kwargs.values()):
            return super().insert_events(stored_events, **kwargs)
        return self.group.insert(stored_events)

    def insert_alone(self, stored_events: Sequence[StoredEvent]) -> Sequence[int] | None:
        """Record ``stored_events`` in a transaction of their own."""
        if not stored_events:
            return None
        if self._record_function:
            try:
                return self._record_in_one_statement(stored_events)
            except es.ProgrammingError as exc:
                if not isinstance(exc.__cause__, psycopg.errors.UndefinedFunction):
                    raise
                log.warning("%s; saving as the library does (run `cityops seed`)", exc)
                self._record_function = False
        return super().insert_events(stored_events)

    @es_retry((es.InterfaceError, es.OperationalError), max_attempts=10, wait=0.2)
    def _record_in_one_statement(self, stored_events: Sequence[StoredEvent]) -> Sequence[int]:
        rows = [
            self.construct_pg_stored_event(e.originator_id, e.originator_version, e.topic, e.state)
            for e in stored_events
        ]
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
            curs.execute(self._record_statement, (rows,), prepare=True)
            return [row[0] for row in curs.fetchall()]

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
            # One statement for every row, the rows as one JSON object {key: state}: a
            # text parameter goes over as it is, where a text[] of JSON would be escaped
            # element by element (a quarter of the monitor's time). Its own cursor: in
            # pipeline mode a result on the shared cursor can land where the library's
            # tracking insert fetches its RETURNING.
            rows = ",".join(f"{orjson.dumps(key).decode()}:{state}" for key, state in state_rows)
            with curs.connection.cursor() as state_curs:
                state_curs.execute(
                    "INSERT INTO monitor_state (device_id, state)"
                    " SELECT key, value FROM jsonb_each(%s::jsonb)"
                    " ON CONFLICT (device_id) DO UPDATE SET state = EXCLUDED.state",
                    ("{" + rows + "}",),
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


# A pool whose connections were lost reconnects in the background, psycopg_pool's way:
# attempts 1, 2, 4, 8, 16, 32 ... s apart, for ``reconnect_timeout`` (5 min by default).
# After an outage of 30 s its next attempt can then come 30 s after the database is back,
# and every worker waiting on that pool waits with it. Here a reconnection gives up
# after ``RECONNECT_S`` and ``keep_reconnecting`` starts the next one at once: while the
# database is out of reach a pool tries every second or two, and is back as soon as
# the database is.
RECONNECT_S = 4.0
# libpq waits for a TCP connection as long as the kernel does (minutes, when nothing
# answers); a pool's background reconnection would hang with it.
CONNECT_TIMEOUT_S = 5


def keep_reconnecting(pool: Any) -> None:
    """``reconnect_failed`` of our pools: try again now instead of giving the slot up.

    ``check()`` grows a pool that has lost connections (one attempt at a time) and
    tests its idle ones; it is a no-op when a reconnection is already under way.
    """
    try:
        pool.check()
    except Exception as exc:  # a pool closing meanwhile: nothing to reconnect
        log.debug("%s: no new reconnection (%s)", pool.name, describe(exc))


def _reconnect_promptly(pool: Any, keepalive: dict[str, int]) -> None:
    """The event store's pool (built by the eventsourcing library, not yet open) made to
    reconnect as ``make_pool`` pools do, with their TCP keepalive (``keepalives``)."""
    pool.reconnect_timeout = RECONNECT_S
    # psycopg_pool keeps its ``reconnect_failed`` argument here; the library's
    # PostgresDatastore does not pass one through, nor libpq's keepalive parameters.
    pool._reconnect_failed = keep_reconnecting
    pool.kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
    pool.kwargs.update(keepalive)


class CityPostgresFactory(PostgresFactory):
    """The eventsourcing library's PostgreSQL factory, with the fenced process recorder
    and an event-store pool that reconnects promptly after an outage and keeps its
    connections alive as our own pools do."""

    process_recorder_class = FencedProcessRecorder

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        _reconnect_promptly(self.datastore.pool, json.loads(env.get(KEEPALIVES) or "{}"))

    def process_recorder(self) -> Any:
        recorder = super().process_recorder()
        if isinstance(recorder, FencedProcessRecorder) and strtobool(
            self.env.get(GROUP_COMMIT, "no")
        ):
            recorder.group = GroupCommit(recorder.insert_alone)
        return recorder


def eventstore_env(
    settings: Settings, pool_size: int | None = None, *, create_tables: bool = False
) -> dict[str, str]:
    """The eventsourcing library's environment for the PostgreSQL event store.

    Only ``cityops seed`` creates tables: DDL from many processes starting together
    collides in PostgreSQL's catalogue ("tuple concurrently updated").
    """
    env = {
        "PERSISTENCE_MODULE": "infra.pgstore:CityPostgresFactory",
        "POSTGRES_POOL_SIZE": str(pool_size or settings.db_pool_size),
        "POSTGRES_MAX_OVERFLOW": "4",
        "POSTGRES_CONNECT_TIMEOUT": "10",
        "POSTGRES_LOCK_TIMEOUT": "10",
        "CREATE_TABLE": "true" if create_tables else "false",
        GROUP_COMMIT: "true" if settings.group_commit else "false",
        KEEPALIVES: json.dumps(keepalives(settings)),
    }
    env.update(parse_database_url(settings.database_url))
    return env


def keepalives(settings: Settings) -> dict[str, int]:
    """libpq's TCP keepalive parameters (``Settings.tcp_keepalive``)."""
    idle, interval, count = settings.tcp_keepalive()
    return {
        "keepalives": 1,
        "keepalives_idle": idle,
        "keepalives_interval": interval,
        "keepalives_count": count,
    }


def check_idle_connection(conn: psycopg.Connection[Any]) -> None:
    """The pool's check of a connection before it is handed out, with no round trip
    when nothing has come in on it since it was returned.

    An idle connection receives nothing: a server that ended it (a restart, a
    terminated backend, a dead postmaster) has sent its error and closed the socket,
    which makes the socket readable. Only then does the check ask the server
    (``ConnectionPool.check_connection``, which raises for a dead one and reads any
    notice that came in). A peer gone silent without closing is no different from
    what that check sees: the TCP keepalives (``keepalives``) end it.
    """
    if conn.closed:
        raise psycopg.OperationalError("the connection is closed")
    readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    if readable:
        ConnectionPool.check_connection(conn)


@contextmanager
def one_statement(pool: ConnectionPool) -> Iterator[psycopg.Connection[Any]]:
    """A connection of ``pool`` in autocommit for a single statement, which is atomic on
    its own: one round trip instead of BEGIN, the statement and COMMIT. Back in the pool
    it is in transaction mode again, as the pool's other users expect."""
    with pool.connection() as conn:
        conn.autocommit = True
        try:
            yield conn
        finally:
            # A broken connection refuses the change; the pool replaces it anyway.
            with suppress(psycopg.Error):
                conn.autocommit = False


def make_pool(
    settings: Settings, *, min_size: int = 1, max_size: int | None = None
) -> ConnectionPool:
    """A psycopg connection pool (for the telemetry store, read models and queries).

    Each connection is checked before it is handed out (``check_idle_connection``):
    after a database restart the idle ones are dead, and the check replaces them
    instead of failing a request. A
    caller waits at most ``settings.db_pool_wait_s`` (psycopg_pool's default is 30 s) for
    a connection, then gets ``PoolTimeout`` (the API answers 503, workers back off and
    retry). TCP keepalives (``keepalives``) end a connection whose server went silent.
    Lost connections are replaced by attempts a second or two apart
    (``keep_reconnecting``).
    """
    pool = ConnectionPool(
        settings.database_url,
        min_size=min_size,
        max_size=max_size or settings.db_pool_size,
        kwargs={
            "autocommit": False,
            "connect_timeout": CONNECT_TIMEOUT_S,
            **keepalives(settings),
        },
        open=False,
        check=check_idle_connection,
        timeout=settings.db_pool_wait_s,
        reconnect_timeout=RECONNECT_S,
        reconnect_failed=keep_reconnecting,
    )
    pool.open(wait=True, timeout=30)
    return pool


def apply_audit_schema(conn: psycopg.Connection[Any]) -> None:
    """The log's hash chain and append-only guards (infra/audit.sql); needs the event
    store's tables, so it runs after the library has created them."""
    statements = resources.files("infra").joinpath("audit.sql").read_text(encoding="utf-8")
    with conn.transaction():
        conn.execute(statements)


# The versions of the project's own schema (infra/schema.sql, with the TimescaleDB objects
# apply_schema adds), each with the sha256 of the schema.sql it was: a change to the file
# adds a version here (tests/unit/test_schema_version.py fails until it does). Every
# version's schema.sql upgrades any older database in place (it is idempotent).
SCHEMA_HISTORY: dict[int, str] = {
    1: "943518036e8c2c0e4a44762884bb36b7563092b5d7254e9172ec673fd296fb15",
    # Co-handling, disputes and the three rates on service_cases; the paging tables.
    2: "0d5ce2af810a4d67282485fabc830b1819eaa7934d311acad5c98c44ede5b9aa",
}
SCHEMA_VERSION = max(SCHEMA_HISTORY)
SCHEMA_LOCK = 7202611  # the advisory lock schema.sql takes


class SchemaTooNewError(RuntimeError):
    """The database was upgraded by a newer version of the code than this one."""


def schema_version(conn: psycopg.Connection[Any]) -> int | None:
    """The newest schema version applied to the database (None: none recorded)."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return None
    found = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return None if found is None or found[0] is None else int(found[0])


def apply_schema(conn: psycopg.Connection[Any], settings: Settings | None = None) -> bool:
    """Create the project's own tables (idempotent). Returns True when TimescaleDB is used.

    With TimescaleDB (installed and preloaded: creating or using the extension on a server
    that has not preloaded it ends the session), ``readings`` becomes a compressed
    hypertable with a retention policy and the continuous aggregates ``readings_1m`` and
    ``readings_1h``. Safe at every start and on a database created by an earlier version:
    what is missing is added, a policy whose setting changed is replaced. ``settings``
    gives the policies' settings (None: the defaults).
    """
    timescale = False
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        before = schema_version(conn)
        if before is not None and before > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"the database's schema is at version {before}, newer than this code's"
                f" {SCHEMA_VERSION}: run the newer code (an older schema must not touch it)"
            )
        row = conn.execute("SELECT to_regclass('readings') IS NOT NULL").fetchone()
        existed = bool(row and row[0])
        timescale = _use_timescale(conn)
        sql = resources.files("infra").joinpath("schema.sql").read_text(encoding="utf-8")
        conn.execute(sql)
        conn.execute(
            "INSERT INTO schema_version (version, digest, timescale) VALUES (%s, %s, %s)"
            " ON CONFLICT (version) DO NOTHING",
            (SCHEMA_VERSION, hashlib.sha256(sql.encode()).hexdigest(), timescale),
        )
        if before != SCHEMA_VERSION:
            log.info(
                "schema at version %s (%s)",
                SCHEMA_VERSION,
                f"upgraded from version {before}"
                if before is not None
                else "upgraded from a schema without a version"
                if existed
                else "new database",
            )
        if timescale:
            # migrate_data: a database first seeded without TimescaleDB keeps its rows.
            conn.execute(
                "SELECT create_hypertable('readings', 'ts', if_not_exists => TRUE, "
                "chunk_time_interval => %s::interval, migrate_data => TRUE)",
                (READINGS_CHUNK,),
            )
    if timescale:
        _apply_timescale(conn, ReadingsPolicy.of(settings or Settings()))
    return timescale


# ~2,000 devices x 3 metrics every few seconds is ~1,200 rows/s: ~100 M rows, 10-15 GB of
# heap and unique index a day. One-hour chunks (~0.5 GB) keep the chunk being written and
# its index in memory (shared_buffers), where day chunks would not fit; retention drops
# whole chunks, at this granularity. Compression works chunk by chunk: an hour gives each
# device's segment ~2,000 rows (3 metrics x ~720), two full batches of 1,000.
READINGS_CHUNK = timedelta(hours=1)
# Buckets of the continuous aggregates that refresh policies leave to real-time
# aggregation (readings still arriving for them).
_AGGREGATES_END_OFFSET = {"readings_1m": timedelta(minutes=1), "readings_1h": timedelta(hours=1)}
_AGGREGATES_SCHEDULE = {"readings_1m": timedelta(minutes=1), "readings_1h": timedelta(minutes=5)}
_AGGREGATES_SQL = {
    # avg is kept for direct reads; sum and count let coarser buckets weight by count.
    "readings_1m": (
        "CREATE MATERIALIZED VIEW readings_1m "
        "WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS "
        "SELECT time_bucket(INTERVAL '1 minute', ts) AS bucket, device_id, metric, "
        "min(unit) AS unit, avg(value) AS avg, sum(value) AS sum, min(value) AS min, "
        "max(value) AS max, count(*) AS count, last(value, ts) AS last "
        "FROM readings GROUP BY bucket, device_id, metric WITH DATA"
    ),
    # Hierarchical: from the minutes, avg weighted by their counts.
    "readings_1h": (
        "CREATE MATERIALIZED VIEW readings_1h "
        "WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS "
        "SELECT time_bucket(INTERVAL '1 hour', bucket) AS bucket, device_id, metric, "
        "min(unit) AS unit, sum(sum) / sum(count)::float8 AS avg, sum(sum) AS sum, "
        "min(min) AS min, max(max) AS max, sum(count)::bigint AS count, "
        "last(last, bucket) AS last "
        "FROM readings_1m GROUP BY 1, device_id, metric WITH DATA"
    ),
}


@dataclass(frozen=True)
class ReadingsPolicy:
    """What the TimescaleDB policies of ``readings`` keep and when."""

    compress_after: timedelta = timedelta(days=1)
    retention: timedelta | None = timedelta(days=90)  # None: raw readings kept forever
    # The oldest reading accepted (the gateway refuses older ones): the aggregates'
    # refresh window reaches this far back, so a late reading into a bucket already
    # materialised is picked up by the next refresh.
    late_horizon: timedelta = timedelta(days=7)

    @classmethod
    def of(cls, settings: Settings) -> ReadingsPolicy:
        days = settings.readings_retention_days
        return cls(
            compress_after=timedelta(hours=settings.readings_compress_after_hours),
            retention=timedelta(days=days) if days else None,
            late_horizon=timedelta(seconds=settings.max_past_age_s),
        )

    def refresh_start(self, view: str) -> timedelta:
        """The refresh window's start: the late horizon plus a margin of two buckets of the
        coarser aggregate (TimescaleDB wants the window to span at least two buckets)."""
        return self.late_horizon + 2 * _AGGREGATES_END_OFFSET[view] + timedelta(hours=1)


# Continuous aggregates are created outside a transaction block: this session lock keeps
# two starting processes from creating them at once.
_TIMESCALE_LOCK = 7202612


def _apply_timescale(conn: psycopg.Connection[Any], policy: ReadingsPolicy) -> None:
    """Compression, retention and the continuous aggregates with their refresh policies."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        log.warning(
            "TimescaleDB policies and aggregates not applied: apply_schema ran inside a "
            "transaction; run it on a connection with no transaction open"
        )
        return
    prev = conn.autocommit
    conn.autocommit = True
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", (_TIMESCALE_LOCK,))
        try:
            _apply_readings_policies(conn, policy)
            _create_continuous_aggregates(conn, policy)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_TIMESCALE_LOCK,))
    finally:
        conn.autocommit = prev


def _job(conn: psycopg.Connection[Any], proc: str, relation: str) -> tuple[int, Any] | None:
    """The TimescaleDB job ``proc`` of a hypertable or continuous aggregate: (id, config)."""
    row = conn.execute(
        "SELECT j.job_id, j.config FROM timescaledb_information.jobs j"
        " LEFT JOIN timescaledb_information.continuous_aggregates c"
        "   ON c.materialization_hypertable_schema = j.hypertable_schema"
        "  AND c.materialization_hypertable_name = j.hypertable_name"
        " WHERE j.proc_name = %s AND coalesce(c.view_name, j.hypertable_name) = %s",
        (proc, relation),
    ).fetchone()
    return None if row is None else (int(row[0]), row[1])


def _same_intervals(conn: psycopg.Connection[Any], config: Any, wanted: dict[str, Any]) -> bool:
    row = conn.execute(
        "SELECT " + " AND ".join(f"(%s::jsonb->>'{k}')::interval = %s::interval" for k in wanted),
        [p for v in wanted.values() for p in (json.dumps(config), v)],
    ).fetchone()
    return bool(row and row[0])


def _apply_readings_policies(conn: psycopg.Connection[Any], policy: ReadingsPolicy) -> None:
    row = conn.execute(
        "SELECT d.time_interval, h.compression_enabled"
        " FROM timescaledb_information.dimensions d JOIN timescaledb_information.hypertables h"
        " USING (hypertable_schema, hypertable_name)"
        " WHERE hypertable_name = 'readings' AND d.column_name = 'ts'"
    ).fetchone()
    assert row is not None
    interval, compressed = row
    if interval != READINGS_CHUNK:  # an earlier version's day chunks: new chunks get hours
        conn.execute("SELECT set_chunk_time_interval('readings', %s::interval)", (READINGS_CHUNK,))
        log.info("readings: chunks of %s from now on (was %s)", READINGS_CHUNK, interval)
    if not compressed:
        # Segments by device (each query reads one device), ordered as the natural key:
        # the dedup check on a compressed chunk finds the batch by its min/max metadata.
        conn.execute(
            "ALTER TABLE readings SET (timescaledb.compress,"
            " timescaledb.compress_segmentby = 'device_id',"
            " timescaledb.compress_orderby = 'metric, ts')"
        )
        log.info("readings: compression enabled")
    job = _job(conn, "policy_compression", "readings")
    if job and not _same_intervals(conn, job[1], {"compress_after": policy.compress_after}):
        conn.execute("SELECT remove_compression_policy('readings')")
        job = None
    if job is None:
        conn.execute(
            "SELECT add_compression_policy('readings', compress_after => %s::interval)",
            (policy.compress_after,),
        )
    job = _job(conn, "policy_retention", "readings")
    if job and (
        policy.retention is None
        or not _same_intervals(conn, job[1], {"drop_after": policy.retention})
    ):
        conn.execute("SELECT remove_retention_policy('readings')")
        job = None
    if job is None and policy.retention is not None:
        conn.execute(
            "SELECT add_retention_policy('readings', drop_after => %s::interval)",
            (policy.retention,),
        )


def _create_continuous_aggregates(conn: psycopg.Connection[Any], policy: ReadingsPolicy) -> None:
    """``readings_1m`` and ``readings_1h`` (hierarchical), real-time, with refresh policies.

    An earlier version's ``readings_1m`` (no sum, no last) is replaced, rebuilt from the
    raw readings. A new aggregate is created WITH DATA: history older than the refresh
    window (a database migrated to TimescaleDB) is materialised once.
    """
    old = conn.execute(
        "SELECT to_regclass('readings_1m') IS NOT NULL AND NOT EXISTS (SELECT 1 FROM"
        " information_schema.columns WHERE table_name = 'readings_1m' AND column_name = 'sum')"
    ).fetchone()
    if old and old[0]:
        log.info("readings_1m: replacing an earlier version's aggregate")
        conn.execute("DROP MATERIALIZED VIEW readings_1m CASCADE")
    for view, create in _AGGREGATES_SQL.items():
        if conn.execute("SELECT to_regclass(%s)", (view,)).fetchone() == (None,):
            conn.execute(create)
            log.info("%s: continuous aggregate created", view)
        wanted = {
            "start_offset": policy.refresh_start(view),
            "end_offset": _AGGREGATES_END_OFFSET[view],
        }
        job = _job(conn, "policy_refresh_continuous_aggregate", view)
        if job and not _same_intervals(conn, job[1], wanted):
            conn.execute("SELECT remove_continuous_aggregate_policy(%s)", (view,))
            job = None
        if job is None:
            conn.execute(
                "SELECT add_continuous_aggregate_policy(%s, start_offset => %s::interval,"
                " end_offset => %s::interval, schedule_interval => %s::interval)",
                (view, wanted["start_offset"], wanted["end_offset"], _AGGREGATES_SCHEDULE[view]),
            )


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
