"""Correlation backtesting on real PostgreSQL: a rainstorm correlated by the real urban
brain, then its rules re-run over the log in scratch state and compared."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID, uuid5

import orjson
import psycopg
import pytest
import yaml

from cityops.bootstrap import brain_follower, run_projector, seed
from core.app import CityApp
from core.backtest.rules import CorrelationOutcome
from core.brain.correlation import CLUSTER_NS, load_policy
from core.case.desk import ServiceDesk
from core.sensor import SensorSpec
from infra.backtest import BacktestRequest, run_backtest
from infra.settings import Settings
from projections.positions import head
from tests.helpers.builders import flood_alarm, offset, report
from tests.helpers.city import open_city, places
from tests.helpers.db import caught_up, checksums
from tests.helpers.waiting import wait_until
from tests.helpers.workers import backtest, threads

pytestmark = pytest.mark.integration

LIVE_POLICY = Path(__file__).resolve().parents[2] / "core" / "brain" / "correlation.yaml"


@pytest.fixture
def city(settings: Settings) -> Iterator[tuple[CityApp, ServiceDesk]]:
    seed(settings)
    with open_city(settings, pool_size=4) as opened:
        brain = brain_follower(settings, opened.app, opened.pool)
        with threads(partial(run_projector, settings), brain.run):
            yield opened.app, opened.desk
            wait_until(lambda: caught_up(settings), 60, "projections at the head")


def policy_with(tmp_path: Path, name: str, **changes: Any) -> Path:
    """A copy of the live policy, version bumped; ``radius_m`` applies to the flooding rule."""
    doc = yaml.safe_load(LIVE_POLICY.read_text(encoding="utf-8"))
    doc["version"] += 1
    radius = changes.pop("radius_m", None)
    if radius is not None:
        next(r for r in doc["rules"] if r["id"] == "flooding")["radius_m"] = radius
    doc.update(changes)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def log_state(settings: Settings) -> tuple[int, dict[str, Any]]:
    with psycopg.connect(settings.database_url) as conn:
        return head(conn), checksums(settings)


def keys(outcome: CorrelationOutcome, kind: str, which: str) -> list[tuple[str, str]]:
    return sorted((d.subject, d.outcome) for d in getattr(outcome.diffs[kind], which))


def cluster_of(*cases: UUID) -> str:
    return str(uuid5(CLUSTER_NS, f"flooding:{min(cases)}"))


def test_backtest_replays_the_brain_and_reports_changed_rules(
    settings: Settings,
    city: tuple[CityApp, ServiceDesk],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, desk = city
    start = datetime.now(UTC) - timedelta(seconds=5)
    (ax, ay, _), (bx, by, _), (cx, cy, _), (dx, dy, _) = places(settings, 4)
    specs = [
        SensorSpec("wl-a", "water_level", "gw-t", ax, ay, None, None, "dept-water"),
        SensorSpec("wl-b", "water_level", "gw-t", *offset(bx, by, 50, 0), None, None, None),
        SensorSpec("wl-c", "water_level", "gw-t", *offset(cx, cy, 60, 0), None, None, None),
    ]
    app.register_sensors(specs, actor="test", correlation_id="test")

    def reported(key: str, lon: float, lat: float) -> UUID:
        # One report at a time, each correlated before the next: the brain then decides on
        # what the log held at the report, as the replay does.
        case = report(desk, key, lon, lat)
        wait_until(lambda: desk.get(case).sensor_check is not None, 60, f"{key} correlated")
        return case

    # A: the sensor alarms; four reports 40-240 m east of it (the third confirms it).
    incident_a = flood_alarm(app, "wl-a")
    a = [reported(f"a{i}", *offset(ax, ay, m, 0)) for i, m in enumerate([40, 80, 160, 240])]
    # B: three reports together; the sensor 50 m away shows nothing.
    b = [reported(f"b{i}", *offset(bx, by, m, 0)) for i, m in enumerate([0, 20, 40])]
    # C: two reports open an incident together; then the sensor alarms and adopts them.
    c = [reported(f"c{i}", *offset(cx, cy, m, 0)) for i, m in enumerate([0, -20])]
    incident_c = flood_alarm(app, "wl-c")
    wait_until(lambda: all(desk.get(x).incident_id == str(incident_c) for x in c), 60, "C adopted")
    # D: alone.
    d0 = reported("d0", dx, dy)
    assert desk.get(d0).incident_id is None
    assert app.get_incident(incident_a).confirmed_by_reports
    wait_until(lambda: caught_up(settings), 60, "projections at the head")
    end = datetime.now(UTC) + timedelta(seconds=1)
    before = log_state(settings)

    same = run_backtest(settings.database_url, BacktestRequest(start, end))
    outcome = same.correlation
    assert outcome is not None
    assert outcome.identical, outcome.diffs
    assert same.identical
    live = load_policy().version
    assert (outcome.not_applied, outcome.errors, outcome.live_versions) == (0, [], [live])
    assert outcome.triggers == 10 + 2  # 10 reports accepted, 2 alarms opened
    cluster_b, cluster_c = cluster_of(b[0], b[1]), cluster_of(*c)
    counts = {k: len(v.same) for k, v in outcome.diffs.items()}
    # 4 to A, 3 to B's, 2 to C's and 2 again to C's alarm.
    assert counts == {"link": 11, "cluster": 2, "sensor_check": 10, "confirmation": 1, "merge": 1}
    assert keys(outcome, "cluster", "same") == sorted([(cluster_b, "major"), (cluster_c, "major")])
    assert keys(outcome, "merge", "same") == [(cluster_c, str(incident_c))]

    # A 100 m radius: the reports 160 and 240 m from A's sensor open an incident of their
    # own, A is not confirmed, and those two reports see no sensor.
    narrow = run_backtest(
        settings.database_url,
        BacktestRequest(start, end, correlation=policy_with(tmp_path, "narrow.yaml", radius_m=100)),
    )
    diff = narrow.correlation
    assert diff is not None
    assert diff.version == live + 1
    ia, a2, a3 = str(incident_a), str(a[2]), str(a[3])
    x = cluster_of(a[2], a[3])
    assert keys(diff, "link", "missing") == sorted([(a2, ia), (a3, ia)])
    assert keys(diff, "link", "extra") == sorted([(a2, x), (a3, x)])
    assert keys(diff, "cluster", "extra") == [(x, "major")]
    assert diff.diffs["cluster"].missing == []
    assert keys(diff, "confirmation", "missing") == [(ia, "critical")]
    assert keys(diff, "sensor_check", "missing") == sorted([(a2, "confirmed"), (a3, "confirmed")])
    assert keys(diff, "sensor_check", "extra") == sorted([(a2, "no_sensors"), (a3, "no_sensors")])
    assert diff.diffs["merge"].identical
    assert len(diff.diffs["link"].same) == 9
    assert narrow.alarms_identical
    assert not narrow.identical

    # Three reports needed for a cluster: C's two reports wait for the alarm, B's three
    # open one incident at the third (the same one if the lowest id is among the first two).
    three = run_backtest(
        settings.database_url,
        BacktestRequest(
            start, end, correlation=policy_with(tmp_path, "three.yaml", cluster_min_reports=3)
        ),
    )
    diff = three.correlation
    assert diff is not None
    ic = str(incident_c)
    assert keys(diff, "merge", "missing") == [(cluster_c, ic)]
    assert (str(c[0]), ic) in keys(diff, "link", "same")
    cluster_b3 = cluster_of(*b)
    b_links = sorted((str(x), cluster_b) for x in b)
    b_links3 = sorted((str(x), cluster_b3) for x in b)
    c_links = sorted((str(x), cluster_c) for x in c)
    if cluster_b3 == cluster_b:
        assert keys(diff, "cluster", "missing") == [(cluster_c, "major")]
        assert keys(diff, "link", "missing") == c_links
        assert keys(diff, "link", "extra") == []
    else:
        assert keys(diff, "cluster", "missing") == sorted(
            [(cluster_c, "major"), (cluster_b, "major")]
        )
        assert keys(diff, "cluster", "extra") == [(cluster_b3, "major")]
        assert keys(diff, "link", "missing") == sorted(c_links + b_links)
        assert keys(diff, "link", "extra") == b_links3
    assert diff.diffs["sensor_check"].identical
    assert diff.diffs["confirmation"].identical

    # The command, as `cityops audit backtest` runs it.
    invoke = backtest(settings, monkeypatch)
    args = ["--from", start.isoformat(), "--to", end.isoformat()]
    out = invoke([*args, "--correlation", str(tmp_path / "narrow.yaml"), "--json"])
    assert out.exit_code == 0, out.output
    doc = orjson.loads(out.stdout)
    assert doc["correlation"]["counts"]["link"] == {"same": 9, "missing": 2, "extra": 2}
    assert doc["correlation"]["cluster"]["extra"][0]["subject"] == x
    assert doc["identical"] is False
    text = invoke(args)
    assert text.exit_code == 0, text.output
    assert "link: same 11, missing 0, extra 0" in text.stdout
    assert text.stdout.rstrip().endswith("identical")
    narrow_text = invoke([*args, "--correlation", str(tmp_path / "narrow.yaml")])
    assert f"missing: case {a2} -> incident {ia} (flooding v{live})" in narrow_text.stdout
    assert narrow_text.stdout.rstrip().endswith("differences found")

    # Nothing written: the same log head and the same views.
    assert log_state(settings) == before
