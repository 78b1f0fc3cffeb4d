"""Time travel over a long log: ``replay --at`` latency and the window stream rate.

Fills a throwaway database: the demo city's sensors, ``--cases`` real service cases
(submitted with a place, assigned by the intake policy, resolved, rated) and
``--incidents`` sensor alarms worked to closure, recorded through the applications;
then copies those case and incident events with fresh aggregate ids (INSERT ... SELECT,
the audit chain's trigger links every copy) until the log holds ``--events``. Takes the
replay checkpoints, then times the map at several instants (worst and median, each
split into restore / replay / render). Then appends ``--tail`` more copies, after the
last checkpoint (the recent past: every aggregate there is replayed, no later checkpoint
to read rows from), times the map there, and the NDJSON window stream.

    python bench/bench_replay.py --events 1000000 [--keep]
    python bench/bench_replay.py --database replay_1234abcd   # a kept one, again
    python bench/bench_replay.py --database replay_1234abcd --full  # every row restored

Runs by hand (never in the test suite). The machine is shared: figures are noisy.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from uuid import UUID

import orjson
import psycopg
from eventsourcing.application import ProcessingEvent
from psycopg import sql

if not __package__:  # run as a file: python bench/bench_replay.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import bench_settings, database, services
from cityops.bootstrap import (
    city_app,
    city_layers,
    incident_desk,
    projections,
    seed,
    service_desk,
)
from core.app import CityApp
from core.case.desk import SubmitCase
from core.incident.policy import IncidentPolicy
from core.sensor.rules import Transition, load_rules
from infra.pgstore import make_pool
from infra.settings import Settings
from projections import replay

CHUNK = 50_000  # copied events per statement (and transaction)


def flood_alarm(app: CityApp, device_id: str) -> UUID:
    """What the sensor monitor does on a water level over the flooding threshold."""
    pe: ProcessingEvent[UUID] = ProcessingEvent()
    IncidentPolicy(app, load_rules()).apply(
        app.get_sensor(device_id),
        [Transition("raised", "water_level_high", "major", "water_level", 62.0, 1.0)],
        "bench-storm",
        pe,
    )
    app.record(pe)
    return UUID(app.get_sensor(device_id).open_incidents["water_level_high"])


def record_template(settings: Settings, cases: int, incidents: int) -> None:
    """Real events through the applications: cases and incidents with whole lifecycles."""
    pool = make_pool(settings, max_size=2)
    app = city_app(settings, pool_size=2)
    try:
        desk = service_desk(settings, app, pool)
        inc = incident_desk(settings, app)
        layers = city_layers(settings)
        grid = layers.grid
        points = [g.representative_point() for g in grid.geometry[:200]]
        for i in range(cases):
            p = points[i % len(points)]
            case = desk.submit(
                SubmitCase("hotline", f"bench-{i}", "road_damage", f"case {i}", lon=p.x, lat=p.y),
                actor="system:bench",
                correlation_id=f"b{i}",
            )
            if i % 5 == 0:
                continue  # stays open
            if desk.get(case.id).status == "assigned":
                desk.resolve(case.id, "fixed", "department:x", "", "b")
                desk.rate(case.id, 4, "", "citizen:b", "b")
        water = layers.sensors[layers.sensors.sensor_type == "water_level"].device_id.tolist()
        for i, device in enumerate(water[:incidents]):
            incident = flood_alarm(app, device)
            if i % 4 == 0:
                continue  # stays open
            inc.dispatch(incident, "dept-water", "user:d", "bench", "b")
            inc.accept(incident, "user:w", "b")
            inc.resolve(incident, "pumped", "user:w", "b")
            inc.verify(incident, True, "dry", "user:i", "b")
    finally:
        app.close()
        pool.close()


def _count(conn: psycopg.Connection, query: str) -> int:
    row = conn.execute(query).fetchone()
    return int(row[0] or 0) if row else 0


def _head(conn: psycopg.Connection) -> int:
    return _count(conn, "SELECT max(notification_id) FROM city_events")


def fill(conn: psycopg.Connection, target: int, since: int = 0, salt: str = "") -> None:
    """Copy the case and incident events after ``since``, fresh aggregate ids per copy
    (``salt``: other ids than another fill's), up to ``target``."""
    conn.execute("DROP TABLE IF EXISTS pg_temp.template")
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE template AS SELECT row_number() OVER (ORDER BY notification_id)"
            " n, originator_id, originator_version, topic, state FROM city_events"
            " WHERE (topic LIKE 'core.case:%%' OR topic LIKE 'core.incident:%%')"
            " AND notification_id > {}"
        ).format(sql.Literal(since))
    )
    row = conn.execute("SELECT count(*) FROM template").fetchone()
    size = int(row[0]) if row else 0
    copy = 0
    while True:
        row = conn.execute("SELECT max(notification_id) FROM city_events").fetchone()
        have = int(row[0] or 0) if row else 0
        if have >= target or size == 0:
            return
        # Whole copies where they fit; a chunk is one statement, in log order.
        n = min(CHUNK, target - have)
        copies = max(1, n // size)
        conn.execute(
            "INSERT INTO city_events (originator_id, originator_version, topic, state)"
            " SELECT uuid_in(md5(t.originator_id::text || ':' || c || %s)::cstring),"
            " t.originator_version, t.topic, t.state"
            " FROM generate_series(%s::int, %s::int) c, template t"
            " WHERE (c - %s::int) * %s::int + t.n <= %s::int ORDER BY c, t.n",
            (salt, copy, copy + copies - 1, copy, size, n),
        )
        conn.commit()
        copy += copies


def city_at(
    settings: Settings, app: CityApp, pos: int, grid: dict[str, object], *, full: bool
) -> tuple[float, str, bytes]:
    """``replay.city_at`` for the instant of ``pos``, timed: seconds, the split, the map."""
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT recorded_at FROM event_chain WHERE notification_id = %s", (pos,)
        ).fetchone()
        assert row is not None
        t0 = time.perf_counter()
        at = replay.at_instant(conn, row[0])
        conn.commit()
        t1 = time.perf_counter()
        # What replay.city_at does, with a clock between the steps.
        with conn.transaction():
            done = replay.materialize(conn, app.mapper, projections(), pos, touched_only=not full)
            t2 = time.perf_counter()
            doc = replay.city_document(conn, at, done, grid, row[0])
        with open(os.devnull, "wb") as sink:
            sink.write(doc)
        t3 = time.perf_counter()
    other = t2 - t1 - done.restore_s - done.replay_s
    split = (
        f"instant {t1 - t0:.2f}, restore {done.restore_s:.2f}, replay {done.replay_s:.2f},"
        f" check {other:.2f}, render {t3 - t2:.2f}"
    )
    return t3 - t0, split, doc


def timed(
    settings: Settings,
    app: CityApp,
    positions: list[int],
    grid: dict[str, object],
    what: str,
    full: bool,
) -> None:
    times = []
    for pos in positions:
        dt, split, doc = city_at(settings, app, pos, grid, full=full)
        meta = orjson.loads(doc)
        times.append(dt)
        print(
            f"  replay --at (position {meta['position']:,}): {dt:.2f} s ({split}), from"
            f" checkpoint {meta['checkpoint']:,} + {meta['replayed_events']:,} events,"
            f" {len(doc) / 1e6:.1f} MB of GeoJSON"
        )
    print(f"replay --at {what}: worst {max(times):.2f} s, median {statistics.median(times):.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--cases", type=int, default=600)
    ap.add_argument("--incidents", type=int, default=60)
    ap.add_argument("--every", type=int, default=replay.SNAPSHOT_EVERY)
    ap.add_argument("--instants", type=int, default=8)
    ap.add_argument("--window", type=int, default=300_000)
    ap.add_argument(
        "--tail",
        type=int,
        default=replay.SNAPSHOT_EVERY - 1,
        help="events appended after the checkpoints, not checkpointed (the recent past)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the database afterwards")
    ap.add_argument("--database", help="a database kept by --keep: time it again, no filling")
    ap.add_argument(
        "--full", action="store_true", help="restore every row (the checksums' replay) for the map"
    )
    args = ap.parse_args()
    with ExitStack() as stack:
        run = uuid.uuid4().hex[:8]
        name = args.database or f"replay_{run}"
        if args.database:
            url = services(stack).rsplit("/", 1)[0] + "/" + name
        else:
            url = database(stack, name, keep=args.keep)
            if args.keep:
                print(f"database {name} is kept: --database {name} times it again")
        settings = bench_settings(url, CITYOPS_KAFKA_TOPIC_PREFIX=f"rp{run}.")
        if not args.database:
            seed(settings)
            t0 = time.perf_counter()
            record_template(settings, args.cases, args.incidents)
            with psycopg.connect(settings.database_url) as conn:
                recorded = replay.at_position(conn, 1) and _head(conn)
                print(
                    f"recorded through the applications: {recorded:,} events in"
                    f" {time.perf_counter() - t0:.1f} s"
                )
                t0 = time.perf_counter()
                fill(conn, args.events)
        with psycopg.connect(settings.database_url) as conn:
            head = _head(conn)
        if not args.database:
            print(
                f"log filled to {head:,} events in {time.perf_counter() - t0:.1f} s"
                " (INSERT ... SELECT copies, chained by the audit trigger)"
            )
        app = city_app(settings, pool_size=1)
        try:
            t0 = time.perf_counter()
            taken = replay.snapshot_up_to_head(
                settings.database_url, app.mapper, projections(), every=args.every
            )
            elapsed = time.perf_counter() - t0
            with psycopg.connect(settings.database_url) as conn:
                storage = replay.snapshot_storage(conn)
            print(
                f"checkpoints: {len(taken)} taken every {args.every:,} events in {elapsed:.1f} s"
                f" ({(taken[-1] - taken[0] + args.every if taken else 0) / elapsed:,.0f}"
                f" events/s); now {storage['checkpoints']}, {storage['bytes'] / 1e6:.1f} MB,"
                f" {storage['row_versions']:,} row versions"
            )
            cells = city_layers(settings).grid[["grid_code", "district_code", "geometry"]]
            grid = orjson.loads(cells.to_json(drop_id=True))
            with psycopg.connect(settings.database_url) as conn:
                last = _count(conn, "SELECT coalesce(max(position), 0) FROM replay_checkpoints")
            rng = random.Random(7)
            # Worst cases: just before a checkpoint (most events to replay), in the middle and
            # at the end (the most open cases to render); the last one; the rest anywhere.
            positions = [min(last, (last // args.every // 2 + 1) * args.every - 1), last]
            positions += [max(1, last - 1)]
            positions += [rng.randint(1, last) for _ in range(args.instants - 3)]
            mode = "full" if args.full else "touched rows"
            timed(settings, app, positions, grid, f"over {last:,} events ({mode})", args.full)
            if args.tail:
                # The recent past: events after the last checkpoint, none after to read from.
                with psycopg.connect(settings.database_url) as conn:
                    if _head(conn) == last:
                        fill(conn, last + args.tail, since=last - args.tail, salt=":tail")
                    head = _head(conn)
                timed(
                    settings,
                    app,
                    [head, (last + head + 1) // 2],
                    grid,
                    f"{head - last:,} events past the last checkpoint ({mode})",
                    args.full,
                )
            if not args.window:
                return
            start = max(0, head - args.window)
            with psycopg.connect(settings.database_url) as conn:
                lo = replay.Position(start, None)
                hi = replay.at_position(conn, head)
                conn.commit()
                window = replay.Window.check(lo, hi, None, replay.MAX_PAGE, replay.MAX_WINDOW)
                t0 = time.perf_counter()
                events = size = 0
                while True:
                    nxt = None
                    for line in replay.changes(conn, window):
                        size += len(line)
                        if line.startswith(b'{"kind":"end"'):
                            end = orjson.loads(line)
                            events += end["events"]
                            nxt = end["next_after"]
                    if nxt is None:
                        break
                    window = replay.Window(window.start, window.end, nxt, window.limit)
                dt = time.perf_counter() - t0
            print(
                f"window stream: {events:,} events in {dt:.2f} s = {events / dt:,.0f} events/s"
                f" ({size / 1e6:.0f} MB NDJSON, pages of {replay.MAX_PAGE:,})"
            )
        finally:
            app.close()


if __name__ == "__main__":
    main()
