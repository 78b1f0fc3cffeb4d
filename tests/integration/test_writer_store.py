"""The writer's store path on real PostgreSQL: straight COPY, and the fallback for repeats."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from infra.pgstore import apply_schema, make_pool
from infra.settings import Settings
from sensors.writer import copy_readings

pytestmark = pytest.mark.integration


def test_new_rows_go_straight_in_and_repeats_are_stored_once(
    settings: Settings, unique: str
) -> None:
    t0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    rows = [
        (t0 + timedelta(seconds=i), f"wl-{unique}", "water_level", float(i), "cm")
        for i in range(10)
    ]
    pool = make_pool(settings, max_size=1)
    try:
        with pool.connection() as conn:
            apply_schema(conn)
            with conn.transaction(), conn.cursor() as cur:
                assert copy_readings(cur, rows[:6]) == 6
            # Four already stored, four new, one new row twice in the same batch.
            with conn.transaction(), conn.cursor() as cur:
                assert copy_readings(cur, [*rows[2:], rows[9]]) == 4
            stored = conn.execute(
                "SELECT ts, value FROM readings WHERE device_id = %s ORDER BY ts",
                (f"wl-{unique}",),
            ).fetchall()
            assert stored == [(r[0], r[3]) for r in rows]
            # A transaction that used the fallback goes on working afterwards.
            with conn.transaction(), conn.cursor() as cur:
                assert copy_readings(cur, rows) == 0
                cur.execute("SELECT 1")
    finally:
        pool.close()
