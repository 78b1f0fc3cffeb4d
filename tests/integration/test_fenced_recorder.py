"""The fenced process recorder: events, position and worker state in one transaction."""

from __future__ import annotations

import orjson
import pytest
from eventsourcing.application import ProcessingEvent
from eventsourcing.persistence import Tracking

from infra.pgstore import StalePositionError
from infra.settings import Settings
from tests.helpers.builders import sensor
from tests.helpers.city import city_with
from tests.helpers.db import count

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("rows", [1, 2_000])
def test_state_rows_and_tracking_commit_together(settings: Settings, rows: int) -> None:
    app = city_with(settings, [sensor("wl-fence")])
    state = [(f"dev-{i}", orjson.dumps({"p": 0, "n": i}).decode()) for i in range(rows)]
    # Enough rounds for psycopg to start preparing the statements (its threshold is 5).
    previous = None
    for position in range(10, 210, 10):
        pe = ProcessingEvent(tracking=Tracking("g|t|0", position))
        pe.collect_events(expected_position=previous, state_rows=state)
        app.record(pe)
        previous = position
    assert app.recorder.max_tracking_id("g|t|0") == 200  # type: ignore[attr-defined]
    assert count(settings, "SELECT count(*) FROM monitor_state") == rows
    # A worker that still believes the position is 10 is refused, and writes nothing.
    stale = ProcessingEvent(tracking=Tracking("g|t|0", 300))
    stale.collect_events(expected_position=190, state_rows=[("dev-x", "{}")])
    with pytest.raises(StalePositionError):
        app.record(stale)
    assert count(settings, "SELECT count(*) FROM monitor_state WHERE device_id='dev-x'") == 0
    app.close()
