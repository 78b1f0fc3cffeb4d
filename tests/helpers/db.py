"""Fresh databases and a test's settings on them; queries; the projections caught up."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cityops.bootstrap import run_projector
from cityops.services import create_database, drop_database
from infra.settings import Settings
from projections.checksum import checksums as view_checksums
from projections.positions import lags
from tests.helpers.waiting import wait_until
from tests.helpers.workers import threads


@contextmanager
def fresh_database(name: str) -> Iterator[str]:
    """Database ``name`` on the test PostgreSQL server, its URL; dropped afterwards."""
    server = os.environ["CITYOPS_DATABASE_URL"]
    url = create_database(server, name)
    try:
        yield url
    finally:
        drop_database(server, name)


def isolated_settings(database_url: str, unique: str, data_dir: Path, **changes: Any) -> Settings:
    """Settings pointing at the real services, isolated by database, topic prefix and
    MQTT share group and client id."""
    return Settings(
        database_url=database_url,
        kafka_topic_prefix=f"t{unique}.",
        mqtt_share_group=f"bridge-{unique}",
        mqtt_client_id=f"bridge-{unique}",
        data_dir=data_dir,
        sim_sensors=40,
        **changes,
    )


@contextmanager
def fresh_settings(data_dir: Path, **changes: Any) -> Iterator[Settings]:
    """``isolated_settings`` on a fresh database of their own (for module-scoped fixtures)."""
    unique = uuid.uuid4().hex[:10]
    with fresh_database(f"t_{unique}") as url:
        yield isolated_settings(url, unique, data_dir, **changes)


def rows(settings: Settings, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute(query, params).fetchall()


def event_counts(settings: Settings, topic_like: str) -> dict[Any, int]:
    """Per aggregate, how many events of that kind the city log holds."""
    found = rows(
        settings,
        "SELECT originator_id, count(*) FROM city_events WHERE topic LIKE %s GROUP BY 1",
        topic_like,
    )
    return {r[0]: int(r[1]) for r in found}


def count(settings: Settings, query: str, *params: object) -> int:
    """The first column of the first row as an int (0 when there is no row)."""
    found = rows(settings, query, *params)
    return int(found[0][0]) if found else 0


def checksums(settings: Settings) -> dict[str, tuple[int, str]]:
    with psycopg.connect(settings.database_url) as conn:
        return view_checksums(conn)


def caught_up(settings: Settings) -> bool:
    """Every projection at the head of the city log."""
    with psycopg.connect(settings.database_url) as conn:
        return not any(lags(conn).values())


def project(settings: Settings) -> None:
    """Run the projector until the projections are at the head of the log."""
    with threads(lambda stop: run_projector(settings, stop)):
        wait_until(lambda: caught_up(settings), timeout=60, what="projections at the head")


def wait_for_readings(settings: Settings, n: int, timeout: float) -> None:
    """Until the readings table holds at least ``n`` rows."""
    wait_until(
        lambda: count(settings, "SELECT count(*) FROM readings") >= n,
        timeout=timeout,
        what=f"{n} readings",
    )


# The tests of the TimescaleDB path: skipped, with how to get the extension, where the
# test command's PostgreSQL runs without it.
NEEDS_TIMESCALEDB = pytest.mark.skipif(
    os.environ.get("CITYOPS_TIMESCALEDB") != "1",
    reason="the test PostgreSQL runs without TimescaleDB (CITYOPS_TIMESCALEDB is not 1): "
    "install it with scripts/timescaledb.sh (builds it from $CITYOPS_TIMESCALEDB_SOURCE or "
    "../shared/vendor/timescaledb-*.tar.gz), then run the tests with scripts/test.sh",
)
