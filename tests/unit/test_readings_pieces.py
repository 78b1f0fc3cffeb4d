"""Which source the readings API reads each part of a window from."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from projections.queries import readings_pieces

BOTH = frozenset({"readings_1m", "readings_1h"})
H = datetime(2025, 7, 1, 10, tzinfo=UTC)


def test_hour_intervals_read_whole_hours_then_minutes_then_raw_edges() -> None:
    start, end = H + timedelta(minutes=17, seconds=23), H + timedelta(hours=3, minutes=2, seconds=5)
    assert readings_pieces(start, end, 3600, BOTH) == [
        ("readings", start, H + timedelta(minutes=18)),
        ("readings_1m", H + timedelta(minutes=18), H + timedelta(hours=1)),
        ("readings_1h", H + timedelta(hours=1), H + timedelta(hours=3)),
        ("readings_1m", H + timedelta(hours=3), H + timedelta(hours=3, minutes=2)),
        ("readings", H + timedelta(hours=3, minutes=2), end),
    ]


def test_minute_intervals_use_the_minute_aggregate_only() -> None:
    end = H + timedelta(hours=5)
    assert readings_pieces(H, end, 300, BOTH) == [("readings_1m", H, end)]


def test_other_intervals_and_plain_postgresql_read_raw_rows() -> None:
    end = H + timedelta(hours=5)
    assert readings_pieces(H, end, 45, BOTH) == [("readings", H, end)]
    assert readings_pieces(H, end, 3600, frozenset()) == [("readings", H, end)]


def test_a_window_within_one_bucket_reads_raw_rows() -> None:
    start, end = H + timedelta(seconds=5), H + timedelta(seconds=50)
    assert readings_pieces(start, end, 3600, BOTH) == [("readings", start, end)]
