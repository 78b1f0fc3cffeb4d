"""Readings on plain PostgreSQL and on TimescaleDB: COPY rate, disk size, compression, API.

On each path (a throwaway cluster without and one with TimescaleDB preloaded, started
here unless ``--plain-url`` / ``--timescale-url`` name servers to use):

1. COPY rate into ``readings``: ``--rows`` rows through ``copy_readings`` in
   transactions of ``--batch`` rows, as the telemetry writer stores them.
2. A scaled-down month: ``--devices`` x 3 metrics, one reading per ``--step-s`` over
   ``--days`` days, filled server-side; the disk size of ``readings``, then on
   TimescaleDB every chunk compressed (size and ratio) and the continuous aggregates
   ``readings_1m`` and ``readings_1h`` refreshed.
3. ``ReadModels.readings`` p50/p99 over ``--queries`` random devices per window.

    python bench/bench_timescale.py            # default, a few minutes
    python bench/bench_timescale.py --quick    # smoke run
    python bench/bench_timescale.py --json     # one JSON object last
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

if not __package__:  # run as a file: python bench/bench_timescale.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import bench_settings
from cityops.services import create_database, drop_database, start_postgres_cluster
from infra.pgstore import apply_schema, make_pool
from infra.settings import Settings
from projections.queries import ReadModels
from sensors.writer import Row, copy_readings

METRICS = (("temperature", "C"), ("humidity", "%"), ("pm25", "ug/m3"))
# (label, window, aggregation interval in seconds)
WINDOWS: tuple[tuple[str, timedelta, int], ...] = (
    ("1h avg/60s", timedelta(hours=1), 60),
    ("1d avg/300s", timedelta(days=1), 300),
    ("1d avg/3600s", timedelta(days=1), 3600),
    ("30d avg/3600s", timedelta(days=30), 3600),
    ("30d avg/86400s", timedelta(days=30), 86400),
)


def device(i: int) -> str:
    return f"bench-{i:05d}"


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def copy_batches(rows: int, batch: int, devices: int, end: datetime) -> Iterator[list[Row]]:
    """``rows`` readings in lists of ``batch``: every device's 3 metrics per second
    step, going back from ``end``."""
    made = 0
    k = 0
    out: list[Row] = []
    while made < rows:
        ts = end - timedelta(seconds=k // devices + 1)
        d = device(k % devices)
        for metric, unit in METRICS:
            if made == rows:
                break
            out.append((ts, d, metric, 20.0 + (k % 97) / 10, unit))
            made += 1
            if len(out) == batch:
                yield out
                out = []
        k += 1
    if out:
        yield out


def bench_copy(settings: Settings, rows: int, batch: int, devices: int) -> dict[str, Any]:
    """Rows per second through ``copy_readings``, one transaction per batch; the table
    is emptied afterwards."""
    end = datetime.now(UTC).replace(microsecond=0)
    spent = 0.0
    stored = 0
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        with conn.cursor() as cur:
            for rows_batch in copy_batches(rows, batch, devices, end):
                t0 = time.perf_counter()
                stored += copy_readings(cur, rows_batch)
                spent += time.perf_counter() - t0
        conn.execute("TRUNCATE readings")
    return {"rows": stored, "batch": batch, "seconds": spent, "rows_per_s": stored / spent}


def relation_size(conn: psycopg.Connection[Any], timescale: bool) -> int:
    query = (
        "SELECT hypertable_size('readings')"
        if timescale
        else "SELECT pg_total_relation_size('readings')"
    )
    row = conn.execute(query).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def fill_month(
    conn: psycopg.Connection[Any], devices: int, step_s: int, start: datetime, days: int
) -> tuple[int, float]:
    """Readings of ``devices`` x 3 metrics every ``step_s`` from ``start`` over ``days``
    days, inserted server-side one day per transaction; (rows, seconds)."""
    t0 = time.perf_counter()
    total = 0
    for day in range(days):
        lo = start + timedelta(days=day)
        cur = conn.execute(
            "INSERT INTO readings (ts, device_id, metric, value, unit)"
            " SELECT t, 'bench-' || lpad(d::text, 5, '0'), m.metric,"
            " 20 + 5 * sin(extract(epoch FROM t) / 3600 + d) + random(), m.unit"
            " FROM generate_series(%s::timestamptz, %s::timestamptz - make_interval(secs => %s),"
            " make_interval(secs => %s)) t"
            " CROSS JOIN generate_series(0, %s - 1) d"
            " CROSS JOIN (VALUES ('temperature', 'C'), ('humidity', '%%'),"
            " ('pm25', 'ug/m3')) m(metric, unit)",
            (lo, lo + timedelta(days=1), step_s, step_s, devices),
        )
        total += cur.rowcount
    return total, time.perf_counter() - t0


def bench_month(
    settings: Settings, timescale: bool, devices: int, step_s: int, days: int, end: datetime
) -> dict[str, Any]:
    """Fill, size, and on TimescaleDB compression and the aggregates' refresh."""
    start = end - timedelta(days=days)
    out: dict[str, Any] = {"devices": devices, "metrics": len(METRICS), "step_s": step_s}
    out["days"] = days
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        rows, fill_s = fill_month(conn, devices, step_s, start, days)
        conn.execute("ANALYZE readings")
        out.update(rows=rows, fill_s=fill_s, fill_rows_per_s=rows / fill_s)
        out["raw_bytes"] = relation_size(conn, timescale)
        if timescale:
            chunks = [r[0] for r in conn.execute("SELECT show_chunks('readings')::text")]
            t0 = time.perf_counter()
            for chunk in chunks:
                conn.execute(
                    "SELECT compress_chunk(%s::regclass, if_not_compressed => true)", [chunk]
                )
            out["chunks"] = len(chunks)
            out["compress_s"] = time.perf_counter() - t0
            out["compressed_bytes"] = relation_size(conn, timescale)
            out["ratio"] = out["raw_bytes"] / max(1, out["compressed_bytes"])
            refresh: dict[str, float] = {}
            for view in ("readings_1m", "readings_1h"):
                t0 = time.perf_counter()
                conn.execute(f"CALL refresh_continuous_aggregate('{view}', NULL, NULL)")
                refresh[view] = time.perf_counter() - t0
            out["refresh_s"] = refresh
            conn.execute("ANALYZE")
    return out


def bench_queries(
    settings: Settings, devices: int, queries: int, end: datetime, days: int, seed: int
) -> dict[str, dict[str, float]]:
    """p50/p99 (ms) of ``ReadModels.readings`` per window over random devices, each
    window at a random whole-minute start inside the filled range."""
    rng = random.Random(seed)
    start = end - timedelta(days=days)
    pool = make_pool(settings, max_size=2)
    try:
        models = ReadModels(pool)
        models.readings(device(0), start, end, "avg", 3600)  # warm-up, aggregates looked up
        out: dict[str, dict[str, float]] = {}
        for label, window, interval_s in WINDOWS:
            span = min(window, end - start)
            slack = int((end - start - span).total_seconds()) // 60
            times: list[float] = []
            points = 0
            for _ in range(queries):
                lo = start + timedelta(minutes=rng.randint(0, slack))
                t0 = time.perf_counter()
                series = models.readings(
                    device(rng.randrange(devices)), lo, lo + span, "avg", interval_s
                )
                times.append((time.perf_counter() - t0) * 1000)
                points += sum(len(s["points"]) for s in series)
            out[label] = {
                "p50_ms": percentile(times, 0.5),
                "p99_ms": percentile(times, 0.99),
                "points": points / queries,
            }
        return out
    finally:
        pool.close()


def pause_jobs(settings: Settings) -> None:
    """Unschedule the TimescaleDB policies (compression, retention, refreshes): the bench
    runs those steps itself."""
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs"
            " WHERE job_id >= 1000"
        )


def run_path(
    stack: ExitStack, name: str, timescale: bool, url: str | None, args: argparse.Namespace
) -> dict[str, Any]:
    """One path end to end, on a cluster started here or on a new database at ``url``."""
    if url is None:
        workdir = Path(tempfile.mkdtemp(prefix=f"cityops-bench-{name}-"))
        stack.callback(shutil.rmtree, workdir, True)
        service = start_postgres_cluster(workdir, timescaledb=timescale)
        stack.callback(service.stop)
        url = service.url
    db = f"tsbench_{uuid.uuid4().hex[:8]}"
    db_url = create_database(url, db)
    stack.callback(drop_database, url, db)
    settings = bench_settings(db_url, CITYOPS_TIMESCALEDB="1" if timescale else "0")
    with psycopg.connect(db_url, autocommit=True) as conn:
        used = apply_schema(conn, settings)
    if used != timescale:
        raise RuntimeError(f"{name}: apply_schema used TimescaleDB = {used}, wanted {timescale}")
    if used:
        pause_jobs(settings)
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    result: dict[str, Any] = {"timescaledb": used}
    if used:
        with psycopg.connect(db_url) as conn:
            row = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
            ).fetchone()
            result["timescaledb_version"] = row[0] if row else None
    result["copy"] = bench_copy(settings, args.rows, args.batch, args.devices)
    result["month"] = bench_month(settings, used, args.devices, args.step_s, args.days, end)
    result["queries"] = bench_queries(
        settings, args.devices, args.queries, end, args.days, args.seed
    )
    return result


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def report(name: str, r: dict[str, Any]) -> None:
    version = f" {r['timescaledb_version']}" if r.get("timescaledb_version") else ""
    print(f"\n== {name}{version} ==")
    c = r["copy"]
    print(
        f"COPY: {c['rows']:,} rows in batches of {c['batch']:,}: {c['seconds']:.1f} s,"
        f" {c['rows_per_s']:,.0f} rows/s"
    )
    m = r["month"]
    print(
        f"month: {m['devices']} devices x {m['metrics']} metrics every {m['step_s']} s"
        f" over {m['days']} days = {m['rows']:,} rows, filled in {m['fill_s']:.1f} s"
        f" ({m['fill_rows_per_s']:,.0f} rows/s server-side)"
    )
    print(f"  raw size: {mib(m['raw_bytes'])} ({m['raw_bytes'] / max(1, m['rows']):.0f} B/row)")
    if "compressed_bytes" in m:
        print(
            f"  compressed ({m['chunks']} chunks, {m['compress_s']:.1f} s):"
            f" {mib(m['compressed_bytes'])}, ratio {m['ratio']:.1f}x"
        )
        refresh = ", ".join(f"{v} {s:.1f} s" for v, s in m["refresh_s"].items())
        print(f"  aggregates refreshed: {refresh}")
    print(f"  {'readings API':<16}{'p50 ms':>9}{'p99 ms':>9}{'points':>9}")
    for label, q in r["queries"].items():
        print(f"  {label:<16}{q['p50_ms']:>9.1f}{q['p99_ms']:>9.1f}{q['points']:>9.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000, help="rows for the COPY rate")
    ap.add_argument("--batch", type=int, default=15_000, help="rows per COPY transaction")
    ap.add_argument("--devices", type=int, default=200)
    # 60 s (200 devices: ~26 M rows) takes well over 5 minutes per path here; 300 s keeps
    # the default run near 5 minutes.
    ap.add_argument("--step-s", type=int, default=300, help="seconds between readings")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--queries", type=int, default=50, help="random devices per window")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--paths", choices=("both", "plain", "timescale"), default="both")
    ap.add_argument("--plain-url", help="a PostgreSQL server to use instead of starting one")
    ap.add_argument("--timescale-url", help="a server with TimescaleDB preloaded to use")
    ap.add_argument("--quick", action="store_true", help="smoke run, under a minute")
    ap.add_argument("--json", action="store_true", help="print one JSON object last")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.devices, args.step_s, args.queries = 100_000, 20, 300, 10
    paths = [("plain", False, args.plain_url), ("timescaledb", True, args.timescale_url)]
    if args.paths != "both":
        paths = [p for p in paths if p[1] == (args.paths == "timescale")]
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    for name, timescale, url in paths:
        with ExitStack() as stack:
            results[name] = run_path(stack, name, timescale, url, args)
        report(name, results[name])
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
