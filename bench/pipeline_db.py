"""What the ingest benchmark reads from PostgreSQL after a load: rates, loss, latency.

Everything is computed from the ``readings`` table, restricted to rows with ``ts`` at or
after the load's first scheduled message (earlier rows are the warm-up's):

- commits per 10-second window of ``ingested_at`` (the writer's transaction time);
- the expected (device, ts) pairs, generated in SQL from each publisher's schedule
  (``t0_us + floor(i * num / den)`` microseconds for its i-th message, device
  ``devices[i % len(devices)]``), against the stored ones: lost, partial, unexpected;
- duplicates: rows minus distinct (device, metric, ts);
- publish-to-commit latency ``ingested_at - ts`` of one row (water_level) per message.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

SINCE = "ts >= %(since)s"
_STAT_POLL_S = 0.5
_EXACT_MIN_S = 1.0


@dataclass(frozen=True)
class Expected:
    """The messages one publisher sent: its devices and schedule."""

    devices: list[str]
    t0_us: int
    num: int
    den: int
    sent: int


def connect(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection: every statement sees fresh statistics and rows."""
    return psycopg.connect(url, autocommit=True)


def since_ts(t0_us: int) -> datetime:
    """The load's first scheduled instant as a timestamptz parameter."""
    return datetime.fromtimestamp(t0_us / 1_000_000, UTC)


def rows_inserted_total(conn: psycopg.Connection[Any]) -> int:
    """Rows ever inserted into ``readings`` by the statistics (cheap, up to ~1 s behind)."""
    row = conn.execute(
        "SELECT n_tup_ins FROM pg_stat_user_tables WHERE relid = 'readings'::regclass"
    ).fetchone()
    return int(row[0]) if row else 0


def rows_since(conn: psycopg.Connection[Any], since: datetime) -> int:
    """Rows stored for the load (exact, a scan)."""
    row = conn.execute(f"SELECT count(*) FROM readings WHERE {SINCE}", {"since": since}).fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class Drain:
    """How the wait for the backlog ended."""

    rows: int
    waited_s: float
    outcome: str  # "drained", "drain timeout" or "stalled"


def wait_for_rows(
    conn: psycopg.Connection[Any],
    expected_rows: int,
    since: datetime,
    baseline: int,
    timeout_s: float,
    stall_s: float,
) -> Drain:
    """Wait for ``expected_rows``; give up after ``timeout_s``, or ``stall_s`` without a new row.

    Polls the cheap statistics counter, and counts exactly when it says the rows are
    there or after ten times as long as the last exact count took (at least a second),
    so that waiting costs the database at most about a tenth of a core.
    """
    start = time.monotonic()
    last_change, last_exact, exact_every = start, start, _EXACT_MIN_S
    last_total, rows = -1, 0
    while True:
        now = time.monotonic()
        total = rows_inserted_total(conn)
        if total != last_total:
            last_total, last_change = total, now
        if total - baseline >= expected_rows or now - last_exact >= exact_every:
            counted = rows_since(conn, since)
            last_exact = time.monotonic()
            exact_every = max(_EXACT_MIN_S, 10 * (last_exact - now))
            if counted != rows:
                rows, last_change = counted, now
            if rows >= expected_rows:
                return Drain(rows, now - start, "drained")
        if now - start >= timeout_s:
            return Drain(rows_since(conn, since), now - start, "drain timeout")
        if now - last_change >= stall_s:
            return Drain(rows_since(conn, since), now - start, "stalled")
        time.sleep(_STAT_POLL_S)


@dataclass(frozen=True)
class Window:
    """Commits in one window of ``ingested_at`` measured from the load's start."""

    start_s: float
    span_s: float
    rows: int

    @property
    def msg_per_s(self) -> float:
        return self.rows / 3 / self.span_s if self.span_s > 0 else 0.0

    @property
    def points_per_s(self) -> float:
        return self.rows / self.span_s if self.span_s > 0 else 0.0


def windows(conn: psycopg.Connection[Any], since: datetime, width_s: float = 10.0) -> list[Window]:
    """Rows per ``width_s`` window from the load's start to the last commit (empty ones too)."""
    t0 = since.timestamp()
    found = conn.execute(
        "SELECT floor((extract(epoch FROM ingested_at) - %(t0)s) / %(w)s)::int AS k,"
        " count(*), extract(epoch FROM max(ingested_at))"
        f" FROM readings WHERE {SINCE} GROUP BY k ORDER BY k",
        {"t0": t0, "w": width_s, "since": since},
    ).fetchall()
    if not found:
        return []
    counts = {int(k): int(n) for k, n, _ in found}
    last_commit = float(found[-1][2]) - t0
    result = []
    for k in range(min(0, min(counts)), max(counts) + 1):
        start = k * width_s
        span = min(width_s, max(last_commit - start, 1e-3))
        result.append(Window(start, span, counts.get(k, 0)))
    return result


def commit_span(conn: psycopg.Connection[Any], since: datetime) -> tuple[float, float] | None:
    """Epoch seconds of the first and last commit of the load's rows."""
    row = conn.execute(
        "SELECT extract(epoch FROM min(ingested_at)), extract(epoch FROM max(ingested_at))"
        f" FROM readings WHERE {SINCE}",
        {"since": since},
    ).fetchone()
    if not row or row[0] is None:
        return None
    return float(row[0]), float(row[1])


def latency(conn: psycopg.Connection[Any], since: datetime) -> dict[str, float | None]:
    """Publish (scheduled ``ts``) to commit (``ingested_at``) p50, p99 and max, in seconds."""
    row = conn.execute(
        "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP"
        " (ORDER BY extract(epoch FROM ingested_at - ts)),"
        " max(extract(epoch FROM ingested_at - ts))"
        f" FROM readings WHERE {SINCE} AND metric = 'water_level'",
        {"since": since},
    ).fetchone()
    if not row or row[0] is None:
        return {"p50_s": None, "p99_s": None, "max_s": None}
    return {"p50_s": float(row[0][0]), "p99_s": float(row[0][1]), "max_s": float(row[1])}


_EXPECTED_ROWS = (
    "INSERT INTO bench_expected (device_id, ts)"
    " SELECT (%(devices)s::text[])[1 + i %% %(m)s],"
    " timestamptz 'epoch'"
    " + (%(t0)s + div(i * %(num)s::numeric, %(den)s))::bigint * interval '1 microsecond'"
    " FROM generate_series(0, %(n)s - 1) AS i"
)

_COMPARE = (
    "WITH got AS (SELECT device_id, ts, count(*) AS n FROM readings"
    f" WHERE {SINCE} GROUP BY device_id, ts),"
    " matched AS (SELECT e.device_id, g.n FROM bench_expected e"
    " LEFT JOIN got g USING (device_id, ts))"
    " SELECT (SELECT count(*) FROM matched),"
    " (SELECT count(*) FROM matched WHERE n IS NULL),"
    " (SELECT count(*) FROM matched WHERE n < 3),"
    " (SELECT count(*) FROM got) - (SELECT count(*) FROM matched WHERE n IS NOT NULL)"
)


def integrity(
    conn: psycopg.Connection[Any], sent: list[Expected], since: datetime
) -> dict[str, int]:
    """Expected, lost, partial (fewer than 3 metrics), unexpected messages; rows, duplicates."""
    with conn.transaction():
        conn.execute(
            "CREATE TEMP TABLE bench_expected (device_id text, ts timestamptz) ON COMMIT DROP"
        )
        for pub in sent:
            if pub.sent:
                conn.execute(
                    _EXPECTED_ROWS,
                    {
                        "devices": pub.devices,
                        "m": len(pub.devices),
                        "t0": pub.t0_us,
                        "num": pub.num,
                        "den": pub.den,
                        "n": pub.sent,
                    },
                )
        conn.execute("ANALYZE bench_expected")
        row = conn.execute(_COMPARE, {"since": since}).fetchone()
    counts = conn.execute(
        "SELECT count(*), count(*) - count(DISTINCT (device_id, metric, ts))"
        f" FROM readings WHERE {SINCE}",
        {"since": since},
    ).fetchone()
    assert row is not None
    assert counts is not None
    expected, lost, partial, unexpected = (int(v) for v in row)
    return {
        "expected": expected,
        "lost": lost,
        "partial": partial,
        "unexpected": unexpected,
        "rows": int(counts[0]),
        "duplicates": int(counts[1]),
    }
