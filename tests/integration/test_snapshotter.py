"""The projector's companion thread takes the replay's checkpoints as the log grows."""

from __future__ import annotations

from contextlib import closing

import psycopg
import pytest

from cityops.bootstrap import city_app, run_snapshotter
from infra.pgstore import apply_schema
from infra.settings import Settings
from tests.helpers.builders import sensor
from tests.helpers.waiting import wait_until
from tests.helpers.workers import threads

pytestmark = pytest.mark.integration


def checkpoints(settings: Settings) -> list[int]:
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute("SELECT position FROM replay_checkpoints ORDER BY 1").fetchall()
    return [r[0] for r in rows]


def test_checkpoints_follow_the_log(settings: Settings) -> None:
    settings = settings.model_copy(update={"replay_snapshot_every": 100})
    with psycopg.connect(settings.database_url) as conn:
        apply_schema(conn)
    app = city_app(settings, pool_size=1, create_tables=True)
    with closing(app), threads(lambda stop: run_snapshotter(settings, stop, 0.2)):
        app.register_sensors(
            [sensor(f"snap-{i}") for i in range(250)], actor="test", correlation_id="snap"
        )
        wait_until(lambda: len(checkpoints(settings)) == 2, 30, "two checkpoints")
        first = checkpoints(settings)
        app.register_sensors(
            [sensor(f"snap-b-{i}") for i in range(60)], actor="test", correlation_id="snap-b"
        )
        wait_until(lambda: len(checkpoints(settings)) == 3, 30, "a third checkpoint")
        assert checkpoints(settings)[:2] == first  # taken once, kept
        assert checkpoints(settings)[2] - first[1] == 100
