"""Time travel: the city's views as of any log position, recomputed from the log.

The replay runs the live projections (``projections.runner.effects`` / ``execute``) into
session TEMP tables named like the views, which shadow them for unqualified names, so
every query written for the live views (``checksums``, the layers below) reads the past.

- **as of a position**: restore the views at the nearest checkpoint at or before it
  (``replay_snapshot_*``, server-side INSERT ... SELECT), then apply the events after it,
  up to the position. Everything happens in the caller's transaction and the temp tables
  are dropped at its end (``ON COMMIT DROP``).
- **the map as of a position** replays only the aggregates that need it
  (``touched_only``). Every projection statement reads and writes only rows of its
  event's aggregate (``AGGREGATE``), so an aggregate's rows at the position are: those at
  the checkpoint before it if it has no event in between; those at the checkpoint after
  it if it has none from the position to there; else its rows at the checkpoint before,
  with its events up to the position applied. The snapshot rows are read in place
  (``Replayed.views``: the replayed rows UNION ALL the others). The layers are rendered
  by PostgreSQL. The checksums (``materialize`` in full) and the map see the same rows.
- **checkpoints**: ``snapshot_up_to_head`` replays the log from the last checkpoint and
  stores the views every ``every`` events, as row versions valid for [from_pos, to_pos).
  The snapshots are computed from the log, never copied from the live views.
- **a window**: ``changes`` streams the events of (start, end] as NDJSON lines, personal
  data dropped, from a server-side cursor (no per-event SQL).

Instants map to positions by the audit chain: ``max(notification_id) WHERE recorded_at
<= T`` (``infra/audit.sql``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg
from eventsourcing.persistence import Notification
from psycopg import sql

from core.audit import citizen_data, mask_actor
from projections.checksum import VIEWS
from projections.queries import PointLayer, _feature_sql
from projections.runner import SqlProjection, effects, execute

log = logging.getLogger(__name__)

SNAPSHOT_EVERY = 20_000  # events between checkpoints: at most this many to replay
BATCH = 5_000  # events decoded and written per pipeline
MAX_WINDOW = 1_000_000  # events one window may span
MAX_PAGE = 100_000  # events one page of a window may hold
SNAPSHOT_LOCK = 7_202_613  # one snapshotter at a time (advisory lock key)
RENDER_WORK_MEM = "128MB"  # for the sort of a layer's features (see ``city_document``)

# Besides each view's key (``checksum.VIEWS``), the columns the projections' UPDATEs
# look rows up by: without an index every event would scan the table.
LOOKUPS: dict[str, tuple[str, ...]] = {"map_sensors": ("sensor_id",)}
# Each view's column holding the id of the aggregate whose events write the row: the
# projections (map.py, cases.py) key every UPDATE by it and insert rows carrying it. A
# view whose key is another column (map_sensors: device_id, ON CONFLICT DO NOTHING) is
# checked after a partial replay (``ReplaySession.collides``).
AGGREGATE: dict[str, str] = {
    "map_sensors": "sensor_id",
    "map_incidents": "incident_id",
    "service_cases": "case_id",
}
BOOKKEEPING = ("change_seq",)  # not content: not compared between checkpoints

# Actors that are citizens read ``citizen:[masked]`` (as in the audit views).
ACTORS = frozenset({"actor", "submitted_by", "by", "acknowledged_by"})
# Columns of service_cases the map never shows (free text and the citizen's id).
CASE_PRIVATE = (
    "description",
    "address",
    "citizen_id",
    "submitted_by",
    "status_notes",
    "co_handlers",  # the units' own feedback
    "change_seq",
)
OPEN_CASE = ("submitted", "accepted", "assigned", "in_progress", "reopened")
_OPEN_CASE = "t.status IN (" + ", ".join(f"'{s}'" for s in OPEN_CASE) + ")"


class ReplayError(ValueError):
    """A replay request that cannot be answered as asked (the message says why)."""


@dataclass(frozen=True, slots=True)
class Position:
    """A log position and when its event was recorded (None for position 0)."""

    position: int
    recorded_at: datetime | None


@dataclass(frozen=True, slots=True)
class Replayed:
    """What ``materialize`` did: the checkpoint it started from, the events applied, where
    each view at ``position`` reads from (a relation, SQL) and its columns, and the seconds
    spent restoring and replaying."""

    position: int
    checkpoint: int
    events: int
    views: dict[str, sql.Composable]
    columns: dict[str, list[str]]
    restore_s: float = 0.0
    replay_s: float = 0.0


# -- instants and positions ---------------------------------------------------------------


def _history(conn: psycopg.Connection[Any]) -> tuple[int, datetime | None, datetime]:
    row = conn.execute(
        "SELECT (SELECT max(notification_id) FROM city_events),"
        " (SELECT min(recorded_at) FROM event_chain), clock_timestamp()"
    ).fetchone()
    assert row is not None
    return int(row[0] or 0), row[1], row[2]


def _recorded_at(conn: psycopg.Connection[Any], position: int) -> datetime | None:
    row = conn.execute(
        "SELECT recorded_at FROM event_chain WHERE notification_id <= %s"
        " ORDER BY notification_id DESC LIMIT 1",
        (position,),
    ).fetchone()
    return row[0] if row else None


def at_instant(conn: psycopg.Connection[Any], at: datetime, *, strict: bool = True) -> Position:
    """The log position of instant ``at``: the last event recorded at or before it.

    ``strict``: an instant before the first event is an error (otherwise position 0).
    """
    if at.tzinfo is None:
        raise ReplayError("the instant needs a time zone (e.g. 2025-11-21T08:00:00Z)")
    head, first, now = _history(conn)
    if at > now:
        raise ReplayError(f"{at.isoformat()} is in the future (the database clock says {now})")
    if first is None or at < first:
        if strict or head == 0:
            raise ReplayError(
                f"{at.isoformat()} is before the city's history"
                + (f" (the first event was recorded at {first.isoformat()})" if first else "")
            )
        return Position(0, None)
    row = conn.execute(
        "SELECT notification_id, recorded_at FROM event_chain WHERE recorded_at <= %s"
        " ORDER BY recorded_at DESC, notification_id DESC LIMIT 1",
        (at,),
    ).fetchone()
    assert row is not None
    return Position(int(row[0]), row[1])


def at_position(conn: psycopg.Connection[Any], position: int) -> Position:
    """``position`` checked against the log (1 .. head), with its recording instant."""
    head, _, _ = _history(conn)
    if head == 0:
        raise ReplayError("the city log is empty")
    if not 1 <= position <= head:
        raise ReplayError(f"position {position} is outside the log (1 .. {head})")
    return Position(position, _recorded_at(conn, position))


# -- the views at a position --------------------------------------------------------------


def _columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0"
        " AND NOT attisdropped ORDER BY attnum",
        (table,),
    ).fetchall()
    return [r[0] for r in rows]


def _tables(projections: Sequence[SqlProjection]) -> list[str]:
    return [t for p in projections for t in p.tables]


class ReplaySession:
    """The views, replayed into this session's TEMP tables, advanced position by position
    (or, ``touched_only``, the rows of the aggregates to replay, to one position).

    Open it in a transaction; ``on_commit="DROP"`` (the default) drops the tables when
    that transaction ends, ``"PRESERVE ROWS"`` keeps them for the session (``close``).
    """

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        mapper: Any,
        projections: Sequence[SqlProjection],
        *,
        batch: int = BATCH,
    ) -> None:
        self.conn = conn
        self.mapper = mapper
        self.projections = list(projections)
        self.tables = _tables(projections)
        self.batch = batch
        self.position = 0
        self.checkpoint = 0
        self.target = 0  # the position a partial replay (touched_only) was opened for
        self.later: int | None = None  # the checkpoint after it
        self.touched_only = False
        self.columns: dict[str, list[str]] = {}

    def open(
        self,
        position: int,
        *,
        use_snapshots: bool = True,
        on_commit: str = "DROP",
        touched_only: bool = False,
    ) -> int:
        """Temp tables holding the views at the best checkpoint <= ``position``; return it.

        ``touched_only``: restore only the rows of the aggregates to replay (see the
        module's docstring); ``advance`` applies only their events, ``views`` adds the
        other rows from the snapshots.
        """
        conn = self.conn
        conn.execute("SET LOCAL TimeZone = 'UTC'")
        touched_only = touched_only and set(self.tables) <= set(AGGREGATE)
        for t in self.tables:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(sql.Identifier(t)))
            # Created before any temp table of that name exists, LIKE reads the live view.
            conn.execute(
                sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT {}").format(
                    sql.Identifier(t), sql.Identifier(t), sql.SQL(on_commit)
                )
            )
            self.columns[t] = _columns(conn, f"pg_temp.{t}")
            for col in BOOKKEEPING:
                if col in self.columns[t]:  # not the live map's sequence
                    conn.execute(
                        sql.SQL("ALTER TABLE pg_temp.{} ALTER COLUMN {} SET DEFAULT 0").format(
                            sql.Identifier(t), sql.Identifier(col)
                        )
                    )
        checkpoint = self._restore(position, touched_only) if use_snapshots else 0
        for t in self.tables:
            # Indexes after the bulk restore: cheaper than maintaining them row by row.
            conn.execute(
                sql.SQL("ALTER TABLE pg_temp.{} ADD PRIMARY KEY ({})").format(
                    sql.Identifier(t), sql.Identifier(VIEWS[t])
                )
            )
            for col in LOOKUPS.get(t, ()):
                conn.execute(
                    sql.SQL("CREATE INDEX ON pg_temp.{} ({})").format(
                        sql.Identifier(t), sql.Identifier(col)
                    )
                )
            if checkpoint and not touched_only:
                # Not when empty or nearly (only touched rows): statistics of a small table
                # would make the planner scan it for every UPDATE as the replay fills it.
                conn.execute(sql.SQL("ANALYZE pg_temp.{}").format(sql.Identifier(t)))
        self.position = self.checkpoint = checkpoint
        self.touched_only = touched_only and checkpoint > 0
        self.target = position
        return checkpoint

    def _restore(self, position: int, touched_only: bool) -> int:
        row = self.conn.execute(
            "SELECT max(position) FROM replay_checkpoints WHERE position <= %s", (position,)
        ).fetchone()
        checkpoint = int(row[0]) if row and row[0] else 0
        if checkpoint == 0:
            return 0
        only = sql.SQL("")
        if touched_only:
            self._touch(checkpoint, position)
            only = sql.SQL(" AND {} IN (SELECT id FROM pg_temp.replay_touched WHERE NOT later)")
        for t in self.tables:
            cols = self.columns[t]
            stored = set(_columns(self.conn, f"replay_snapshot_{t}"))
            if not set(cols) <= stored:
                log.warning("replay snapshots lack columns of %s: replaying from the start", t)
                for table in self.tables:
                    self.conn.execute(sql.SQL("TRUNCATE pg_temp.{}").format(sql.Identifier(table)))
                return 0
            names = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
            self.conn.execute(
                sql.SQL("INSERT INTO pg_temp.{} ({}) SELECT {} FROM {} WHERE {}{}").format(
                    sql.Identifier(t),
                    names,
                    names,
                    sql.Identifier(f"replay_snapshot_{t}"),
                    _valid_at(checkpoint),
                    only.format(sql.Identifier(AGGREGATE[t])),
                )
            )
        return checkpoint

    def _touch(self, checkpoint: int, position: int) -> None:
        """``pg_temp.replay_touched``: the aggregates with events in (checkpoint, position];
        ``later`` when they have none from there to the next checkpoint (its rows hold)."""
        conn = self.conn
        row = conn.execute(
            "SELECT min(position) FROM replay_checkpoints WHERE position > %s", (position,)
        ).fetchone()
        self.later = int(row[0]) if row and row[0] is not None else None
        conn.execute("DROP TABLE IF EXISTS pg_temp.replay_touched")
        conn.execute(
            "CREATE TEMP TABLE replay_touched (id uuid PRIMARY KEY, later boolean NOT NULL)"
            " ON COMMIT DROP"
        )
        conn.execute(
            "INSERT INTO pg_temp.replay_touched SELECT a.id, %(later)s::bigint IS NOT NULL"
            " AND a.id NOT IN (SELECT originator_id FROM city_events"
            "  WHERE notification_id > %(p)s AND notification_id <= %(later)s)"
            " FROM (SELECT DISTINCT originator_id AS id FROM city_events"
            "  WHERE notification_id > %(c)s AND notification_id <= %(p)s) a",
            {"c": checkpoint, "p": position, "later": self.later},
        )
        conn.execute("ANALYZE pg_temp.replay_touched")

    def _kept(self, t: str) -> sql.Composable:
        """The snapshot rows of view ``t`` at the position that need no replay."""
        snap = sql.Identifier(f"replay_snapshot_{t}")
        names = sql.SQL(", ").join(sql.Identifier(c) for c in self.columns[t])
        agg = sql.Identifier(AGGREGATE[t])
        kept = sql.SQL(
            "SELECT {names} FROM {snap} s WHERE {valid} AND NOT EXISTS"
            " (SELECT 1 FROM pg_temp.replay_touched r WHERE r.id = s.{agg})"
        ).format(names=names, snap=snap, valid=_valid_at(self.checkpoint), agg=agg)
        if self.later is None:
            return kept
        return sql.SQL(
            "{kept} UNION ALL SELECT {names} FROM {snap} s WHERE {valid} AND s.{agg} IN"
            " (SELECT id FROM pg_temp.replay_touched WHERE later)"
        ).format(kept=kept, names=names, snap=snap, valid=_valid_at(self.later), agg=agg)

    def views(self) -> dict[str, sql.Composable]:
        """Each view at the current position, as a relation to select from."""
        out: dict[str, sql.Composable] = {}
        for t in self.tables:
            mine = sql.SQL("pg_temp.{}").format(sql.Identifier(t))
            if not self.touched_only:
                out[t] = mine
                continue
            names = sql.SQL(", ").join(sql.Identifier(c) for c in self.columns[t])
            out[t] = sql.SQL("(SELECT {} FROM {} UNION ALL {})").format(names, mine, self._kept(t))
        return out

    def collides(self) -> bool:
        """Whether a replayed row took the key of a row read from the snapshots (a view
        whose key is not its aggregate's id): the full replay would have kept that one."""
        if not self.touched_only:
            return False
        for t in self.tables:
            key = VIEWS[t]
            if key == AGGREGATE[t]:
                continue
            row = self.conn.execute(
                sql.SQL(
                    "SELECT EXISTS (SELECT 1 FROM pg_temp.{t} x JOIN ({kept}) s"
                    " ON s.{key} = x.{key})"
                ).format(t=sql.Identifier(t), kept=self._kept(t), key=sql.Identifier(key))
            ).fetchone()
            if row and row[0]:
                return True
        return False

    def advance(self, position: int) -> int:
        """Apply the events in (current position, ``position``]; return how many."""
        if position < self.position:
            raise ReplayError(f"cannot go back from {self.position} to {position}")
        if self.touched_only and position != self.target:
            raise ReplayError(f"this partial replay stops at {self.target}, not {position}")
        applied = 0
        query = (
            "SELECT notification_id, originator_id, originator_version, topic, state"
            " FROM city_events WHERE notification_id > %s AND notification_id <= %s"
        )
        if self.touched_only:  # the events of the aggregates to replay (``_touch``)
            query += " AND originator_id IN (SELECT id FROM pg_temp.replay_touched WHERE NOT later)"
        query += " ORDER BY notification_id"
        # Every statement finds its rows by an index. The tables start small and grow as the
        # replay goes: a plan cached while a table is a page or two would scan it for every
        # statement after (psycopg prepares a statement run more than a few times).
        row = self.conn.execute(
            "SELECT current_setting('enable_seqscan'), set_config('enable_seqscan', 'off', true)"
        ).fetchone()
        assert row is not None
        with self.conn.cursor(name="replay_events") as events:
            events.itersize = self.batch
            events.execute(query, (self.position, position))
            while rows := events.fetchmany(self.batch):
                notifications = [
                    Notification(
                        id=r[0], originator_id=r[1], originator_version=r[2], topic=r[3], state=r[4]
                    )
                    for r in rows
                ]
                statements, _ = effects(self.mapper, notifications, self.projections)
                with self.conn.pipeline(), self.conn.cursor() as cur:
                    execute(cur, statements)
                applied += len(rows)
        self.conn.execute("SELECT set_config('enable_seqscan', %s, true)", (row[0],))
        self.position = position
        return applied

    def close(self) -> None:
        for t in self.tables:
            self.conn.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(sql.Identifier(t)))


def _valid_at(checkpoint: int) -> sql.Composable:
    """The snapshot row versions valid at ``checkpoint``."""
    c = sql.Literal(checkpoint)
    return sql.SQL("from_pos <= {} AND (to_pos IS NULL OR to_pos > {})").format(c, c)


def materialize(
    conn: psycopg.Connection[Any],
    mapper: Any,
    projections: Sequence[SqlProjection],
    position: int,
    *,
    use_snapshots: bool = True,
    touched_only: bool = False,
) -> Replayed:
    """The views at ``position`` in the caller's transaction (TEMP tables dropped at its
    end). In full (the default), unqualified queries in that transaction then read the
    past; ``touched_only``, read them from ``Replayed.views`` (see ``ReplaySession``)."""
    session = ReplaySession(conn, mapper, projections)
    t0 = time.perf_counter()
    checkpoint = session.open(position, use_snapshots=use_snapshots, touched_only=touched_only)
    t1 = time.perf_counter()
    events = session.advance(position)
    t2 = time.perf_counter()
    if session.collides():
        log.warning("replay to %d: a row took another aggregate's key; replaying in full", position)
        return materialize(conn, mapper, projections, position, use_snapshots=use_snapshots)
    return Replayed(
        position, checkpoint, events, session.views(), session.columns, t1 - t0, t2 - t1
    )


# -- checkpoints --------------------------------------------------------------------------


def _write_snapshot(conn: psycopg.Connection[Any], tables: dict[str, list[str]], at: int) -> int:
    """Store the rows of the temp views that differ from the current versions."""
    written = 0
    for t, cols in tables.items():
        key = sql.Identifier(VIEWS[t])
        snap = sql.Identifier(f"replay_snapshot_{t}")
        content = [c for c in cols if c not in BOOKKEEPING]
        differs = sql.SQL("({}) IS DISTINCT FROM ({})").format(
            sql.SQL(", ").join(sql.Identifier("t", c) for c in content),
            sql.SQL(", ").join(sql.Identifier("s", c) for c in content),
        )
        names = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
        conn.execute("DROP TABLE IF EXISTS pg_temp.replay_changed")
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE replay_changed ON COMMIT DROP AS SELECT t.* FROM pg_temp.{t} t"
                " LEFT JOIN {snap} s ON s.{key} = t.{key} AND s.to_pos IS NULL"
                " WHERE s.{key} IS NULL OR {differs}"
            ).format(t=sql.Identifier(t), snap=snap, key=key, differs=differs)
        )
        # Superseded versions end here; so do rows the views no longer hold.
        conn.execute(
            sql.SQL(
                "UPDATE {snap} s SET to_pos = %(at)s WHERE s.to_pos IS NULL AND"
                " (s.{key} IN (SELECT {key} FROM pg_temp.replay_changed)"
                " OR NOT EXISTS (SELECT 1 FROM pg_temp.{t} t WHERE t.{key} = s.{key}))"
            ).format(snap=snap, key=key, t=sql.Identifier(t)),
            {"at": at},
        )
        cur = conn.execute(
            sql.SQL(
                "INSERT INTO {snap} ({names}, from_pos) SELECT {names}, %(at)s"
                " FROM pg_temp.replay_changed"
            ).format(snap=snap, names=names),
            {"at": at},
        )
        written += cur.rowcount
        conn.execute("DROP TABLE pg_temp.replay_changed")
    conn.execute(
        "INSERT INTO replay_checkpoints (position, recorded_at, versions) VALUES (%s, %s, %s)",
        (at, _recorded_at(conn, at), written),
    )
    return written


def snapshot_up_to_head(
    database_url: str,
    mapper: Any,
    projections: Sequence[SqlProjection],
    *,
    every: int = SNAPSHOT_EVERY,
) -> list[int]:
    """Take the checkpoints missing up to the log's head, one every ``every`` events.

    Safe to call from several processes (one works, the others return at once) and to
    interrupt (each checkpoint commits alone). Returns the positions taken.
    """
    if every < 1:
        raise ValueError("every must be at least 1")
    taken: list[int] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (SNAPSHOT_LOCK,)).fetchone()
        if not row or not row[0]:
            log.info("another process is taking replay snapshots")
            return taken
        conn.autocommit = False
        session = ReplaySession(conn, mapper, projections)
        try:
            head, _, _ = _history(conn)
            row = conn.execute(
                "SELECT coalesce(max(position), 0) FROM replay_checkpoints"
            ).fetchone()
            last = int(row[0]) if row else 0
            conn.commit()
            if last + every > head:
                return taken
            with conn.transaction():
                session.open(last, on_commit="PRESERVE ROWS")
            for target in range(last + every, head + 1, every):
                with conn.transaction():
                    conn.execute("SET LOCAL TimeZone = 'UTC'")
                    session.advance(target)
                    versions = _write_snapshot(conn, session.columns, target)
                log.info("replay checkpoint at %d: %d row versions", target, versions)
                taken.append(target)
            with conn.transaction():
                session.close()
        finally:
            conn.rollback()
            conn.autocommit = True
            conn.execute("SELECT pg_advisory_unlock(%s)", (SNAPSHOT_LOCK,))
    return taken


def snapshot_storage(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Checkpoints, row versions and bytes the snapshots use."""
    row = conn.execute(
        "SELECT count(*), coalesce(sum(versions), 0) FROM replay_checkpoints"
    ).fetchone()
    assert row is not None
    size = conn.execute(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
        " WHERE c.relname LIKE 'replay\\_snapshot\\_%%' OR c.relname = 'replay_checkpoints'"
    ).fetchone()
    return {"checkpoints": int(row[0]), "row_versions": int(row[1]), "bytes": int(size[0])}  # type: ignore[index]


# -- the map at a position ----------------------------------------------------------------


def _collection(
    conn: psycopg.Connection[Any],
    replayed: Replayed,
    table: str,
    where: str,
    hidden: Sequence[str],
) -> bytes:
    """A GeoJSON FeatureCollection of the view's rows ``where``, in key order, as text
    built by PostgreSQL (the properties: the view's columns but ``hidden``)."""
    key = sql.Identifier(VIEWS[table])
    shown = [c for c in replayed.columns[table] if c not in hidden]
    # The live map's feature text (``projections.queries``), from the past rows.
    layer = PointLayer(table, ", ".join(shown), VIEWS[table], "", "", ())
    query = sql.SQL(
        "SELECT concat({head}, string_agg({feature}, ',' ORDER BY t.{key}), ']}}')"
        " FROM {view} t WHERE {where}"
    ).format(
        head=sql.Literal('{"type":"FeatureCollection","features":['),
        feature=_feature_sql(layer),
        key=key,
        view=replayed.views[table],
        where=sql.SQL(where),
    )
    row = conn.execute(query).fetchone()
    assert row is not None
    return str(row[0]).encode()


def grid_load(conn: psycopg.Connection[Any], replayed: Replayed) -> dict[str, dict[str, int]]:
    """Per grid cell: sensors, open incidents and open cases (of the replayed views)."""
    rows = conn.execute(
        sql.SQL(
            "SELECT grid_code, sum(s)::int, sum(i)::int, sum(c)::int FROM ("
            " SELECT grid_code, 1 s, 0 i, 0 c FROM {sensors} t"
            " UNION ALL SELECT grid_code, 0, 1, 0 FROM {incidents} t WHERE status = 'open'"
            " UNION ALL SELECT grid_code, 0, 0, 1 FROM {cases} t WHERE {open_case})"
            " x WHERE grid_code IS NOT NULL GROUP BY grid_code"
        ).format(
            sensors=replayed.views["map_sensors"],
            incidents=replayed.views["map_incidents"],
            cases=replayed.views["service_cases"],
            open_case=sql.SQL(_OPEN_CASE),
        )
    ).fetchall()
    return {code: {"sensors": s, "open_incidents": i, "open_cases": c} for code, s, i, c in rows}


def grid_collection(load: dict[str, dict[str, int]], grid: dict[str, Any] | None) -> dict[str, Any]:
    """The grid cells (``grid``: the reference layer as GeoJSON) with their load; cells
    with a load but no reference geometry come with a null geometry."""
    zero = {"sensors": 0, "open_incidents": 0, "open_cases": 0}
    features = []
    seen = set()
    for cell in (grid or {}).get("features", []):
        code = str(cell.get("id") or cell["properties"]["grid_code"])
        seen.add(code)
        features.append(
            {
                "type": "Feature",
                "id": code,
                "geometry": cell["geometry"],
                "properties": {**cell["properties"], **load.get(code, zero)},
            }
        )
    for code in sorted(set(load) - seen):
        features.append(
            {
                "type": "Feature",
                "id": code,
                "geometry": None,
                "properties": {"grid_code": code, **load[code]},
            }
        )
    return {"type": "FeatureCollection", "features": features}


def city_document(
    conn: psycopg.Connection[Any],
    at: Position,
    replayed: Replayed,
    grid: dict[str, Any] | None,
    requested: datetime | None = None,
) -> bytes:
    """The replayed map as one JSON object: ``{"position", "recorded_at", "at",
    "checkpoint", "replayed_events", "layers": {"incidents", "sensors", "cases", "grid"}}``,
    each layer a GeoJSON FeatureCollection (RFC 7946)."""
    # A layer's features are sorted by key as text (tens of MB for a large city): in
    # memory, not in temporary files.
    conn.execute("SELECT set_config('work_mem', %s, true)", (RENDER_WORK_MEM,))
    layers = {
        "incidents": orjson.Fragment(
            _collection(conn, replayed, "map_incidents", "t.status = 'open'", BOOKKEEPING)
        ),
        "sensors": orjson.Fragment(_collection(conn, replayed, "map_sensors", "true", BOOKKEEPING)),
        "cases": orjson.Fragment(
            _collection(
                conn,
                replayed,
                "service_cases",
                f"t.lon IS NOT NULL AND t.lat IS NOT NULL AND {_OPEN_CASE}",
                CASE_PRIVATE,
            )
        ),
        "grid": grid_collection(grid_load(conn, replayed), grid),
    }
    return orjson.dumps(
        {
            "position": at.position,
            "recorded_at": at.recorded_at,
            "at": requested,
            "checkpoint": replayed.checkpoint,
            "replayed_events": replayed.events,
            "layers": layers,
        }
    )


def city_at(
    conn: psycopg.Connection[Any],
    mapper: Any,
    projections: Sequence[SqlProjection],
    at: Position,
    *,
    grid: dict[str, Any] | None = None,
    requested: datetime | None = None,
    touched_only: bool = True,
) -> bytes:
    """The map at ``at`` (see ``city_document``), replayed in a transaction of its own
    (``touched_only``: see ``materialize``; the same map either way)."""
    with conn.transaction():
        replayed = materialize(conn, mapper, projections, at.position, touched_only=touched_only)
        return city_document(conn, at, replayed, grid, requested)


# -- a window of changes ------------------------------------------------------------------


def _plain(key: str, value: Any) -> Any:
    # The library's JSON transcoder wraps datetimes, UUIDs, ... as {"_type_", "_data_"}.
    if isinstance(value, dict) and "_type_" in value and "_data_" in value:
        return value["_data_"]
    if key in ACTORS:
        return mask_actor(value)
    return value


def event_line(
    position: int,
    recorded_at: datetime | None,
    aggregate_id: str,
    version: int,
    topic: str,
    state: bytes,
) -> bytes:
    """One NDJSON line of a window: the event's attributes, personal data dropped."""
    body = orjson.loads(state)
    event_type = topic.rpartition(":")[2]
    private = citizen_data(event_type)
    return orjson.dumps(
        {
            "kind": "event",
            "position": position,
            "recorded_at": recorded_at,
            "aggregate_id": aggregate_id,
            "version": version,
            "type": event_type,
            "event": {k: _plain(k, v) for k, v in body.items() if k not in private},
        },
        option=orjson.OPT_APPEND_NEWLINE,
    )


@dataclass(frozen=True, slots=True)
class Window:
    """The events in (start, end], one page of ``limit`` after ``after``."""

    start: Position
    end: Position
    after: int
    limit: int

    @classmethod
    def check(
        cls, start: Position, end: Position, after: int | None, limit: int, max_window: int
    ) -> Window:
        if start.position > end.position:
            raise ReplayError(
                f"the window starts after it ends (from {start.position} > to {end.position})"
            )
        if end.position - start.position > max_window:
            raise ReplayError(
                f"the window spans {end.position - start.position} events, more than"
                f" {max_window}: ask for a shorter one"
            )
        if not 1 <= limit <= MAX_PAGE:
            raise ReplayError(f"limit must be between 1 and {MAX_PAGE}")
        cursor = start.position if after is None else after
        if not start.position <= cursor <= end.position:
            raise ReplayError(
                f"after={after} is outside the window ({start.position} .. {end.position})"
            )
        return cls(start, end, cursor, limit)


def changes(conn: psycopg.Connection[Any], window: Window) -> Iterator[bytes]:
    """NDJSON of a window page: a header line, one line per event, a closing line with the
    cursor of the next page (``next_after``, null at the end of the window).

    Runs in its own transaction on ``conn`` (a server-side cursor), so the page is one
    consistent read however slowly the client takes it.
    """
    yield orjson.dumps(
        {
            "kind": "window",
            "from": {"position": window.start.position, "recorded_at": window.start.recorded_at},
            "to": {"position": window.end.position, "recorded_at": window.end.recorded_at},
            "after": window.after,
            "limit": window.limit,
        },
        option=orjson.OPT_APPEND_NEWLINE,
    )
    stop = min(window.end.position, window.after + MAX_WINDOW)
    count = 0
    last = window.after
    with conn.transaction(), conn.cursor(name="replay_window") as cur:
        cur.itersize = 2_000
        cur.execute(
            "SELECT e.notification_id, c.recorded_at, e.originator_id::text,"
            " e.originator_version, e.topic, e.state FROM city_events e"
            " LEFT JOIN event_chain c ON c.notification_id = e.notification_id"
            " WHERE e.notification_id > %s AND e.notification_id <= %s"
            " ORDER BY e.notification_id LIMIT %s",
            (window.after, stop, window.limit),
        )
        while rows := cur.fetchmany(2_000):
            yield b"".join(event_line(*r) for r in rows)
            count += len(rows)
            last = rows[-1][0]
    more = count == window.limit and last < window.end.position
    yield orjson.dumps(
        {"kind": "end", "events": count, "next_after": last if more else None},
        option=orjson.OPT_APPEND_NEWLINE,
    )
