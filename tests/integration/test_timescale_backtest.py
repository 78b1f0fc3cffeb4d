"""The backtest and the scorecards' raw readings on compressed chunks (TimescaleDB)."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

import psycopg
import pytest

from core.app import CityApp
from infra.backtest import BacktestRequest, run_backtest
from infra.settings import Settings
from tests.integration.test_backtest import app, stream

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.environ.get("CITYOPS_TIMESCALEDB") != "1",
        reason="the test PostgreSQL runs without TimescaleDB (CITYOPS_TIMESCALEDB is not 1): "
        "install it with scripts/timescaledb.sh (builds it from $CITYOPS_TIMESCALEDB_SOURCE or "
        "../shared/vendor/timescaledb-*.tar.gz), then run the tests with scripts/test.sh",
    ),
]

__all__ = ["app"]  # the fixture, shared with the plain backtest's tests


def test_the_backtest_reads_compressed_chunks(settings: Settings, app: CityApp) -> None:
    t0 = time.time() - 3600
    stream(settings, app, t0)
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        compressed = conn.execute(
            "SELECT count(compress_chunk(c)) FROM show_chunks('readings') c"
        ).fetchone()
        assert compressed is not None
        assert compressed[0] >= 1
        assert conn.execute(
            "SELECT bool_and(is_compressed) FROM timescaledb_information.chunks"
            " WHERE hypertable_name = 'readings'"
        ).fetchone() == (True,)
    start = datetime.fromtimestamp(t0 - 60, UTC)
    report = run_backtest(settings.database_url, BacktestRequest(start, datetime.now(UTC)))
    assert report.readings == 15
    assert report.alarms_identical
    assert sorted(m.live.device_id for m in report.matched) == ["wl-1", "wl-2"]
