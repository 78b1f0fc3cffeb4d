"""Projection rebuild from the PostgreSQL log: events per second, map and case views.

Fills a fresh database with ``--cases`` service cases (three events each: submitted,
accepted, waiting for manual assignment) plus the demo city's sensor registrations,
then empties the read models and times the projector replaying the whole log.

    python bench/bench_rebuild.py --cases 5000
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import psycopg

if not __package__:  # run as a file: python bench/bench_rebuild.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import fresh_settings
from cityops.bootstrap import city_app, rebuild_projections, run_projector, seed, service_desk
from core.case.desk import SubmitCase
from infra.pgstore import make_pool
from infra.settings import Settings
from projections.positions import PROJECTIONS, head, position


def positions(settings: Settings) -> tuple[int, list[int]]:
    """The log's head, and each projection's position."""
    with psycopg.connect(settings.database_url) as conn:
        return head(conn), [position(conn, name) for name in PROJECTIONS]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=5_000)
    args = ap.parse_args()
    with ExitStack() as stack:
        settings = fresh_settings(stack, "rebuild", "rb")
        seed(settings)
        pool = make_pool(settings, max_size=2)
        app = city_app(settings, pool_size=2)
        desk = service_desk(settings, app, pool)
        t0 = time.perf_counter()
        for i in range(args.cases):
            desk.submit(
                SubmitCase("hotline", f"b-{i}", "road_damage", f"case {i}", address=f"Road {i}"),
                actor="system:bench",
                correlation_id=f"b{i}",
            )
        filled = time.perf_counter() - t0
        app.close()
        pool.close()
        total = positions(settings)[0]
        print(f"log: {total:,} events ({args.cases:,} cases filled in {filled:.1f} s)")
        rebuild_projections(settings)
        stop = threading.Event()
        thread = threading.Thread(target=run_projector, args=(settings, stop))
        t0 = time.perf_counter()
        thread.start()
        while min(positions(settings)[1]) < total:
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        stop.set()
        thread.join(30)
        print(
            f"rebuild of both views (map, cases) in one process: {elapsed:.1f} s,"
            f" {total / elapsed:,.0f} events/s per view"
        )


if __name__ == "__main__":
    main()
