"""Time travel over a long log: ``replay --at`` latency and the window stream rate.

Fills a throwaway database: the demo city's sensors, ``--cases`` real service cases
(submitted with a place, assigned by the intake policy, resolved, rated) and
``--incidents`` sensor alarms worked to closure, recorded through the applications;
then copies those case and incident events with fresh aggregate ids (INSERT ... SELECT,
the audit chain's trigger links every copy) until the log holds ``--events``. Takes the
replay checkpoints, then times the map at several instants (worst and median) and the
NDJSON window stream.

    python bench/bench_replay.py --events 1000000

Runs by hand (never in the test suite). The machine is shared: figures are noisy.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
import uuid
from contextlib import ExitStack
from uuid import UUID

import orjson
import psycopg
from eventsourcing.application import ProcessingEvent

from cityops.bootstrap import (
    city_app,
    city_layers,
    incident_desk,
    projections,
    seed,
    service_desk,
)
from cityops.pgstore import make_pool
from cityops.services import create_database, drop_database, throwaway_services
from cityops.settings import Settings
from core.app import CityApp
from core.management import IncidentPolicy
from core.rules import Transition, load_rules
from core.service import SubmitCase
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


def _head(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT max(notification_id) FROM city_events").fetchone()
    return int(row[0] or 0) if row else 0


def fill(conn: psycopg.Connection, target: int) -> None:
    """Copy the case and incident events, fresh aggregate ids per copy, up to ``target``."""
    conn.execute(
        "CREATE TEMP TABLE template AS SELECT row_number() OVER (ORDER BY notification_id) n,"
        " originator_id, originator_version, topic, state FROM city_events"
        " WHERE topic LIKE 'core.case:%' OR topic LIKE 'core.incident:%'"
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
            " SELECT uuid_in(md5(t.originator_id::text || ':' || c)::cstring),"
            " t.originator_version, t.topic, t.state"
            " FROM generate_series(%s::int, %s::int) c, template t"
            " WHERE (c - %s::int) * %s::int + t.n <= %s::int ORDER BY c, t.n",
            (copy, copy + copies - 1, copy, size, n),
        )
        conn.commit()
        copy += copies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--cases", type=int, default=600)
    ap.add_argument("--incidents", type=int, default=60)
    ap.add_argument("--every", type=int, default=replay.SNAPSHOT_EVERY)
    ap.add_argument("--instants", type=int, default=8)
    ap.add_argument("--window", type=int, default=300_000)
    ap.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = ap.parse_args()
    with ExitStack() as stack:
        if not os.environ.get("CITYOPS_DATABASE_URL"):
            os.environ.update(stack.enter_context(throwaway_services("cityops-bench-")))
        run = uuid.uuid4().hex[:8]
        server = os.environ["CITYOPS_DATABASE_URL"]
        os.environ.update(
            CITYOPS_DATABASE_URL=create_database(server, f"replay_{run}"),
            CITYOPS_KAFKA_TOPIC_PREFIX=f"rp{run}.",
            CITYOPS_DATA_DIR="var/bench-city",
            CITYOPS_LOG_LEVEL="WARNING",
        )
        if not args.keep:
            stack.callback(drop_database, server, f"replay_{run}")
        settings = Settings()
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
            head = _head(conn)
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
                f"checkpoints: {len(taken)} every {args.every:,} events, taken in {elapsed:.1f} s"
                f" ({head / elapsed:,.0f} events/s); storage {storage['bytes'] / 1e6:.1f} MB,"
                f" {storage['row_versions']:,} row versions"
            )
            cells = city_layers(settings).grid[["grid_code", "district_code", "geometry"]]
            grid = orjson.loads(cells.to_json(drop_id=True))
            rng = random.Random(7)
            # Worst case: just before a checkpoint; the rest anywhere.
            positions = [min(head, args.every * (len(taken) // 2) + args.every - 1), head]
            positions += [rng.randint(1, head) for _ in range(args.instants - 2)]
            times = []
            for pos in positions:
                with psycopg.connect(settings.database_url) as conn:
                    row = conn.execute(
                        "SELECT recorded_at FROM event_chain WHERE notification_id = %s", (pos,)
                    ).fetchone()
                    assert row is not None
                    t0 = time.perf_counter()
                    at = replay.at_instant(conn, row[0])
                    conn.commit()
                    doc = replay.city_at(
                        conn, app.mapper, projections(), at, grid=grid, requested=row[0]
                    )
                    with open(os.devnull, "wb") as sink:
                        sink.write(doc)
                    dt = time.perf_counter() - t0
                meta = orjson.loads(doc)
                times.append(dt)
                print(
                    f"  replay --at (position {at.position:,}): {dt:.2f} s, from checkpoint"
                    f" {meta['checkpoint']:,} + {meta['replayed_events']:,} events,"
                    f" {len(doc) / 1e6:.1f} MB of GeoJSON"
                )
            print(
                f"replay --at over {head:,} events: worst {max(times):.2f} s,"
                f" median {statistics.median(times):.2f} s"
            )
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
