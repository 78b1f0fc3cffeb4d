"""Scorecard and hotspot query times over a year of synthetic read-model rows.

Fills a throwaway database with ``--cases`` service cases and ``--incidents`` incidents
spread over the last 365 days and the demo city's grid cells (generate_series INSERTs
straight into the read models, no event log), then times ``--calls`` calls of each
query and prints p50/p99: scorecards per level over the last 30 days and the whole
year, and hotspots over the last 24 hours against 28 days and the last week against a
year. The database is dropped afterwards unless ``--keep``.

    python -m bench.bench_scorecards --cases 200000 --incidents 20000 --calls 50
"""

from __future__ import annotations

import argparse
import functools
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

from bench.harness import bench_settings, database
from cityops.bootstrap import city_layers
from infra.pgstore import apply_schema, make_pool
from projections.scorecards import Level, Scorecards

# Each row picks its cell, department type and fate from its own random() draws;
# setseed() makes the data set the same on every run.
FILL_CASES = """
INSERT INTO service_cases (case_id, channel, external_id, category, description, status,
    lon, lat, grid_code, district_code, department_code, submitted_by, due_at, extensions,
    revisits, rating, submitted_at, updated_at, resolved_at, closed_at, version)
SELECT gen_random_uuid(), 'hotline', 'bench-' || i, 'road_damage', 'bench', status,
       c.lon, c.lat, c.grid_code, c.district_code,
       c.district_code || '-' || (ARRAY['roads', 'water', 'sanitation', 'lighting'])[1 + i %% 4],
       'system:bench', submitted + interval '48 hours' * (1 + extended),
       extended, reworked, CASE WHEN status = 'closed' THEN rating END,
       submitted, submitted, resolved, CASE WHEN status = 'closed' THEN resolved END, 1
FROM (
    SELECT i, submitted, extended, reworked, rating,
           1 + (random() * (%(cells)s - 1))::int AS cell,
           CASE WHEN fate < 0.04 THEN 'rejected' WHEN fate < 0.06 THEN 'cancelled'
                WHEN fate < 0.20 THEN 'in_progress' WHEN fate < 0.35 THEN 'resolved'
                ELSE 'closed' END AS status,
           CASE WHEN fate >= 0.20 THEN submitted + interval '1 hour' * (1 + random() * 90)
           END AS resolved
    FROM (
        SELECT i, random() AS fate, (random() < 0.08)::int AS extended,
               (random() < 0.05)::int AS reworked, 1 + (random() * 4)::int AS rating,
               now() - interval '365 days' * random() AS submitted
        FROM generate_series(1, %(n)s) AS i
    ) draws
) cases
JOIN bench_cells c ON c.idx = cases.cell
"""
FILL_INCIDENTS = """
INSERT INTO map_incidents (incident_id, kind, title, category, severity, status,
    alarm_status, acknowledged, trigger_count, lon, lat, grid_code, district_code,
    department_code, opened_at, updated_at, closed_at, version, stage, resolved_at, due_at,
    reworks)
SELECT gen_random_uuid(), 'sensor', 'bench', 'flooding', 'major',
       CASE WHEN closed IS NULL THEN 'open' ELSE 'closed' END, 'cleared', true, 1,
       c.lon, c.lat, c.grid_code, c.district_code, c.district_code || '-water',
       opened, opened, closed, 1, CASE WHEN closed IS NULL THEN 'dispatched' ELSE 'closed' END,
       closed - interval '1 hour', opened + interval '24 hours', reworks
FROM (
    SELECT 1 + (random() * (%(cells)s - 1))::int AS cell, opened,
           CASE WHEN random() < 0.9 THEN opened + interval '1 hour' * (2 + random() * 40)
           END AS closed,
           (random() < 0.07)::int AS reworks
    FROM (
        SELECT now() - interval '365 days' * random() AS opened
        FROM generate_series(1, %(n)s)
    ) draws
) incidents
JOIN bench_cells c ON c.idx = incidents.cell
"""


def percentiles(seconds: list[float]) -> str:
    v = sorted(seconds)

    def at(q: float) -> float:
        return v[min(len(v) - 1, int(q * len(v)))] * 1000

    return f"p50 {at(0.50):7.1f} ms   p99 {at(0.99):7.1f} ms"


def timed(calls: int, run: Callable[[], list[dict[str, Any]]]) -> tuple[list[float], int]:
    run()  # warm the cache and the plan
    seconds, rows = [], 0
    for _ in range(calls):
        t0 = time.perf_counter()
        rows = len(run())
        seconds.append(time.perf_counter() - t0)
    return seconds, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=200_000)
    ap.add_argument("--incidents", type=int, default=20_000)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = ap.parse_args()
    with ExitStack() as stack:
        name = f"scorecards_{uuid.uuid4().hex[:8]}"
        settings = bench_settings(database(stack, name, keep=args.keep))
        grid = city_layers(settings).grid
        centres = grid.geometry.representative_point()
        cells = [
            (i + 1, code, district, point.x, point.y)
            for i, (code, district, point) in enumerate(
                zip(grid.grid_code, grid.district_code, centres, strict=True)
            )
        ]
        pool = make_pool(settings, max_size=2)
        stack.callback(pool.close)
        t0 = time.perf_counter()
        with pool.connection() as conn:
            apply_schema(conn)
            conn.execute(
                "CREATE TABLE bench_cells (idx int PRIMARY KEY, grid_code text,"
                " district_code text, lon float8, lat float8)"
            )
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO bench_cells VALUES (%s, %s, %s, %s, %s)", cells)
            conn.execute("SELECT setseed(0.42)")
            conn.execute(FILL_CASES, {"n": args.cases, "cells": len(cells)})
            conn.execute(FILL_INCIDENTS, {"n": args.incidents, "cells": len(cells)})
            conn.execute("DROP TABLE bench_cells")
        with pool.connection() as conn:
            conn.autocommit = True
            conn.execute("VACUUM ANALYZE service_cases")
            conn.execute("VACUUM ANALYZE map_incidents")
        print(
            f"filled {args.cases:,} cases and {args.incidents:,} incidents over 365 days,"
            f" {len(cells):,} grid cells, in {time.perf_counter() - t0:.1f} s;"
            f" {args.calls} calls each:"
        )
        cards = Scorecards(pool)
        now = datetime.now(UTC)
        for days in (30, 366):
            for level in get_args(Level):
                seconds, rows = timed(
                    args.calls,
                    functools.partial(cards.scorecards, level, now - timedelta(days=days), now),
                )
                print(
                    f"  scorecards {level:<10} last {days:>3} days: {percentiles(seconds)}"
                    f"   ({rows:,} units)"
                )
        for hours, history_days in ((24, 28), (168, 365)):
            # z=0, min_cases=1: every cell above its own mean is scored and returned.
            seconds, rows = timed(
                args.calls,
                functools.partial(cards.hotspots, hours, now, history_days, z=0.0, min_cases=1),
            )
            print(
                f"  hotspots {hours:>3} h against {history_days:>3} days:"
                f"    {percentiles(seconds)}   ({rows:,} cells scored)"
            )


if __name__ == "__main__":
    main()
