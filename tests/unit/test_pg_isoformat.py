"""Timestamps in read-model GeoJSON are written as PostgreSQL's to_json writes them."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from projections.queries import pg_isoformat

SHANGHAI = timezone(timedelta(hours=8))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (datetime(2026, 11, 22, 4, 41, 0, 0, tzinfo=UTC), "2026-11-22T04:41:00+00:00"),
        (datetime(2026, 11, 22, 4, 41, 0, 120000, tzinfo=UTC), "2026-11-22T04:41:00.12+00:00"),
        (datetime(2026, 11, 22, 4, 41, 0, 100, tzinfo=UTC), "2026-11-22T04:41:00.0001+00:00"),
        (
            datetime(2026, 11, 22, 4, 41, 0, 123456, tzinfo=SHANGHAI),
            "2026-11-22T04:41:00.123456+08:00",
        ),
        (datetime(2026, 11, 22, 4, 41, 0, 500000, tzinfo=SHANGHAI), "2026-11-22T04:41:00.5+08:00"),
    ],
)
def test_like_postgresql(value: datetime, text: str) -> None:
    assert pg_isoformat(value) == text
