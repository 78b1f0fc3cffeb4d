"""Tamper evidence: the hash chain's cost when recording, and ``verify`` in events/s.

Two throwaway databases: one with the chain trigger, one with it dropped. In each, the
same real events are recorded through the application (sensor registrations), then the
log is grown to ``--events`` rows with INSERT ... SELECT copies under new originator
ids (the trigger chains every copy). Then ``verify`` recomputes the chain of the first.

    python bench/bench_audit_verify.py --events 200000
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import psycopg

if not __package__:  # run as a file: python bench/bench_audit_verify.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import BENCH_CITY, database
from cityops.bootstrap import city_app
from core.sensor import SensorSpec
from infra.audit_chain import verify
from infra.settings import Settings

CHUNK = 10_000


def record_real(settings: Settings, count: int) -> float:
    """Record ``count`` sensor registrations through the application; seconds taken."""
    app = city_app(settings, pool_size=1, create_tables=True)
    try:
        if not settings.database_url.endswith("_chained"):
            with psycopg.connect(settings.database_url) as conn:
                conn.execute("DROP TRIGGER city_events_chain ON city_events")
        specs = [
            SensorSpec(f"b-{i}", "water_level", "gw-b", 121.47, 31.23, None, None, None)
            for i in range(count)
        ]
        t0 = time.perf_counter()
        for start in range(0, count, 100):
            app.register_sensors(specs[start : start + 100], actor="bench", correlation_id="b")
        return time.perf_counter() - t0
    finally:
        app.close()


def grow(url: str, total: int) -> tuple[int, float]:
    """Copy the recorded events under new ids until the log holds ``total``; rows, s."""
    copied = 0
    elapsed = 0.0
    with psycopg.connect(url, autocommit=True) as conn:
        count = conn.execute("SELECT count(*) FROM city_events").fetchone()
        have = count[0] if count else 0
        while have < total:
            n = min(CHUNK, total - have)
            t0 = time.perf_counter()
            with conn.transaction():
                # The library's own serialization, so links are made in id order.
                conn.execute("LOCK TABLE city_events IN EXCLUSIVE MODE")
                n = conn.execute(
                    "INSERT INTO city_events (originator_id, originator_version, topic, state)"
                    " SELECT gen_random_uuid(), originator_version, topic, state"
                    " FROM city_events ORDER BY notification_id LIMIT %s",
                    (n,),
                ).rowcount
            elapsed += time.perf_counter() - t0
            copied += n
            have += n
        conn.execute("VACUUM ANALYZE city_events")
        conn.execute("VACUUM ANALYZE event_chain")
    return copied, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--real", type=int, default=3_000, help="events recorded by the app")
    ap.add_argument("--batch", type=int, default=10_000, help="rows per verify fetch")
    args = ap.parse_args()
    with ExitStack() as stack:
        run = uuid.uuid4().hex[:8]
        urls = {kind: database(stack, f"audit_{run}_{kind}") for kind in ("chained", "plain")}

        for kind, url in urls.items():
            settings = Settings(database_url=url, data_dir=Path(BENCH_CITY))
            seconds = record_real(settings, args.real)
            print(
                f"record via the app, {kind:7}: {args.real:,} events in {seconds:.2f} s,"
                f" {args.real / seconds:,.0f} events/s"
            )
        for kind, url in urls.items():
            rows, seconds = grow(url, args.events)
            print(
                f"bulk INSERT ... SELECT, {kind:7}: {rows:,} events in {seconds:.2f} s,"
                f" {rows / seconds:,.0f} events/s"
            )

        with psycopg.connect(urls["chained"]) as conn:
            rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t0 = time.perf_counter()
            result = verify(conn, batch=args.batch)
            seconds = time.perf_counter() - t0
            rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(result)
        print(
            f"verify: {result.events:,} events in {seconds:.2f} s,"
            f" {result.events / seconds:,.0f} events/s"
            f" (peak RSS {rss0 / 1024:.0f} -> {rss1 / 1024:.0f} MiB, batch {args.batch:,})"
        )


if __name__ == "__main__":
    main()
