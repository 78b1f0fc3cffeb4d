"""Rule backtesting on real PostgreSQL: alarms made by the real monitor path, replayed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import yaml
from kafka import TopicPartition

from cityops.bootstrap import city_app
from core.app import CityApp
from core.sensor.rules import load_rules
from infra.backtest import BacktestRequest, run_backtest
from infra.pgstore import apply_schema, make_pool
from infra.settings import Settings
from sensors.monitor import SensorMonitor
from sensors.writer import copy_readings
from tests.helpers.builders import readings_message, sensor
from tests.helpers.db import NEEDS_TIMESCALEDB
from tests.helpers.workers import backtest

pytestmark = pytest.mark.integration

LIVE_RULES = Path(__file__).resolve().parents[2] / "core" / "sensor" / "rules.yaml"
# Water levels per device, one reading every 10 s (live rule: raise > 50 twice, clear < 40).
LEVELS = {
    "wl-1": [20.0, 55.0, 56.0, 60.0, 35.0],  # major at 56, cleared at 35
    "wl-2": [20.0, 62.0, 65.0, 70.0, 30.0],  # major at 65, cleared at 30
    "wl-3": [20.0, 45.0, 47.0, 48.0, 20.0],  # never over 50
}


@dataclass
class Record:
    """What the monitor reads off a Kafka record."""

    topic: str
    partition: int
    offset: int
    value: bytes


class NoProducer:
    def send(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("nothing should be dead-lettered")


@pytest.fixture
def app(settings: Settings) -> Iterator[CityApp]:
    app = city_app(settings, pool_size=2, create_tables=True)
    with psycopg.connect(settings.database_url) as conn:
        apply_schema(conn)
    yield app
    app.close()


def stream(settings: Settings, app: CityApp, t0: float) -> None:
    """Readings stored the way the telemetry writer stores them, and evaluated by the real
    sensor monitor (one Kafka-record stand-in per message) as it does in production."""
    app.register_sensors([sensor(d) for d in LEVELS], actor="test", correlation_id="test")
    messages = [
        readings_message(device, {"water_level": v}, ts=t0 + 10 * i)
        for i in range(5)
        for device, values in LEVELS.items()
        for v in [values[i]]
    ]
    with psycopg.connect(settings.database_url) as conn, conn.cursor() as cur:
        rows = [
            (datetime.fromtimestamp(r.ts, UTC), m.device_id, r.metric, r.value, r.unit)
            for m in messages
            for r in m.readings
        ]
        assert copy_readings(cur, rows) == 15
    pool = make_pool(settings, max_size=2)
    try:
        monitor = SensorMonitor(settings, app, load_rules(), pool, NoProducer())
        tp = TopicPartition("telemetry", 0)
        for offset, msg in enumerate(messages):
            monitor.process_partition(tp, [Record(tp.topic, 0, offset, msg.to_json())])
    finally:
        pool.close()


def rules_with(tmp_path: Path, name: str, raise_at: float) -> Path:
    doc = yaml.safe_load(LIVE_RULES.read_text(encoding="utf-8"))
    doc["version"] += 1
    rule = next(r for r in doc["rules"] if r["id"] == "water_level_high")
    rule["levels"][0]["raise"] = raise_at
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def footprint(settings: Settings) -> tuple[Any, ...]:
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM readings),"
            " (SELECT max(notification_id) FROM city_events), (SELECT count(*) FROM event_chain),"
            " (SELECT count(*) FROM monitor_state),"
            " (SELECT md5(string_agg(state::text, ',' ORDER BY device_id)) FROM monitor_state)"
        ).fetchone()
        assert row is not None
        return tuple(row)


def test_backtest_reproduces_live_incidents_and_reports_threshold_changes(
    settings: Settings, app: CityApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t0 = time.time() - 3600
    stream(settings, app, t0)
    assert app.get_sensor("wl-1").incident_seq == {"water_level_high": 1}
    assert app.get_sensor("wl-3").incident_seq == {}
    before = footprint(settings)
    start = datetime.fromtimestamp(t0 - 60, UTC)
    end = datetime.now(UTC)

    same = run_backtest(settings.database_url, BacktestRequest(start, end))
    assert same.alarms_identical
    assert same.readings == 15
    assert sorted(m.live.device_id for m in same.matched) == ["wl-1", "wl-2"]
    assert {m.live.incident_outcome for m in same.matched} == {"opened"}
    assert all(m.time_shift_s == 0 for m in same.matched)
    assert same.live_rules_versions == [1]
    # No brain ran: nothing recorded, and the alarms' incidents adopt no report in replay.
    assert same.correlation is not None
    assert same.correlation.identical
    assert same.correlation.triggers == 2

    higher = run_backtest(
        settings.database_url,
        BacktestRequest(start, end, rules=rules_with(tmp_path, "higher.yaml", 60.0)),
    )
    assert higher.rules_version == 2
    assert [(e.device_id, e.rule_version, e.severity) for e in higher.would_not_have_opened] == [
        ("wl-1", 1, "major")
    ]
    assert higher.would_not_have_opened[0].raised_at == pytest.approx(t0 + 20, abs=1e-3)
    assert [m.live.device_id for m in higher.matched] == ["wl-2"]
    assert higher.would_have_opened == []

    lower = run_backtest(
        settings.database_url,
        BacktestRequest(start, end, rules=rules_with(tmp_path, "lower.yaml", 44.0)),
    )
    assert [(e.device_id, e.rule_version) for e in lower.would_have_opened] == [("wl-3", 2)]
    assert lower.would_not_have_opened == []
    assert len(lower.matched) == 2

    # A window starting mid-alarm: the alarm active at --from is not raised again.
    late = run_backtest(
        settings.database_url,
        BacktestRequest(datetime.fromtimestamp(t0 + 25, UTC), end),
    )
    assert late.alarms_identical
    assert late.matched == []

    # The command, as `cityops audit backtest` runs it.
    invoke = backtest(settings, monkeypatch)
    args = ["--from", start.isoformat(), "--to", end.isoformat()]
    out = invoke([*args, "--rules", str(tmp_path / "higher.yaml"), "--json"])
    assert out.exit_code == 0, out.output
    doc = orjson.loads(out.stdout)
    assert doc["counts"]["would_not_have_opened"] == 1
    assert doc["would_not_have_opened"][0]["device_id"] == "wl-1"
    text = invoke(args)
    assert text.exit_code == 0, text.output
    assert "identical" in text.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 3\nrules: [{id: x}]\n", encoding="utf-8")
    for extra, message in [
        (["--rules", str(bad)], "invalid rules file"),
        (["--rules", str(tmp_path / "nope.yaml")], "cannot read the rules file"),
        (["--correlation", str(bad)], "correlation policy"),
    ]:
        failed = invoke([*args, *extra])
        assert failed.exit_code == 2
        assert message in failed.output
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    failed = invoke(["--from", future, "--to", future])
    assert failed.exit_code == 2
    assert "before" in failed.output

    assert footprint(settings) == before


@NEEDS_TIMESCALEDB
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
