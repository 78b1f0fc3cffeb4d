"""Rule backtesting, pure logic: synthetic readings through the monitor's rule evaluation."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from cityops.backtest import BacktestError, check_window
from core.backtest import (
    AlarmEpisode,
    AlarmEvent,
    BacktestReport,
    Link,
    StoredReading,
    compare_episodes,
    compare_links,
    initial_states,
    live_episodes,
    replay_rules,
)
from core.rules import Level, RuleSet, load_rules

TYPES = {"wl-1": "water_level", "wl-2": "water_level", "pm-1": "pm25"}


def series(
    device: str, metric: str, values: list[float], t0: float = 1000.0
) -> list[StoredReading]:
    return [StoredReading(t0 + 10 * i, device, metric, v) for i, v in enumerate(values)]


def with_water_threshold(rules: RuleSet, raise_at: float, clear_at: float) -> RuleSet:
    rule = rules.by_id("water_level_high")
    changed = replace(rule, levels=(Level("major", raise_at, clear_at), *rule.levels[1:]))
    return replace(
        rules,
        version=rules.version + 1,
        rules=tuple(changed if r.id == rule.id else r for r in rules.rules),
    )


def test_replay_raises_escalates_and_clears_like_the_monitor() -> None:
    eps = replay_rules(load_rules(), TYPES, series("wl-1", "water_level", [20, 55, 56, 85, 60, 35]))
    assert len(eps) == 1
    ep = eps[0]
    # repeat 2: raised on the second breaching reading; critical at 85; cleared at 35.
    assert (ep.severity, ep.raised_at, ep.peak_severity, ep.cleared_at) == (
        "major",
        1020.0,
        "critical",
        1050.0,
    )
    assert ep.rule_version == 1


def test_readings_of_unknown_devices_are_counted_not_evaluated() -> None:
    from core.backtest import ReplayStats

    stats = ReplayStats()
    assert replay_rules(load_rules(), {}, series("x", "water_level", [90, 90]), None, stats) == []
    assert (stats.readings, stats.unknown_device_readings) == (2, 2)


def test_alarm_active_at_the_start_is_not_raised_again() -> None:
    rules = load_rules()
    states = initial_states(rules, TYPES, {"wl-1": {"water_level_high": "major"}})
    eps = replay_rules(rules, TYPES, series("wl-1", "water_level", [60, 62, 30, 55, 56]), states)
    # Still in alarm at 60/62 (no new raise), cleared at 30, raised again at 56.
    assert [(e.raised_at, e.severity) for e in eps] == [(1040.0, "major")]


def test_a_severity_the_chosen_rules_lack_maps_to_their_nearest_level() -> None:
    rules = load_rules()
    states = initial_states(rules, TYPES, {"wl-1": {"water_level_high": "minor"}})
    assert states["wl-1"].rules["water_level_high"].severity == "major"


def live(device: str, at: float, severity: str = "major", peak: str | None = None) -> AlarmEpisode:
    return AlarmEpisode(device, "water_level_high", 1, severity, at, 60.0, peak or severity)


def test_compare_exact_shifted_missing_extra_and_severity() -> None:
    lives = [live("wl-1", 1020), live("wl-2", 1020), live("pm-1", 500)]
    tests = [
        live("wl-1", 1020),
        replace(live("wl-2", 1010), peak_severity="critical"),  # earlier, and higher
        live("wl-3", 900),
    ]
    matched, differs, missing, extra = compare_episodes(lives, tests)
    assert [m.live.device_id for m in matched] == ["wl-1"]
    assert [(m.live.device_id, m.time_shift_s) for m in differs] == [("wl-2", -10.0)]
    assert [e.device_id for e in missing] == ["pm-1"]
    assert [e.device_id for e in extra] == ["wl-3"]


def test_live_episodes_from_alarm_events() -> None:
    def ev(kind: str, ts: float, severity: str | None, inc: str | None = None) -> AlarmEvent:
        return AlarmEvent(kind, "wl-1", "water_level_high", 1, severity, 60.0, ts, inc)

    events = [
        ev("raised", 10, "major", "i0"),  # before the window: active at its start
        ev("cleared", 1010, None),
        ev("raised", 1020, "major", "i1"),
        ev("severity_changed", 1030, "critical"),
        ev("cleared", 1050, None),
        ev("raised", 1060, "major", "i1"),  # re-triggers the still-open incident
        ev("raised", 9000, "major", "i2"),  # after the window
    ]
    episodes, at_start = live_episodes(events, 1000, 2000, opened={"i0", "i1"})
    assert at_start == {"wl-1": {"water_level_high": "major"}}
    assert [(e.raised_at, e.peak_severity, e.cleared_at, e.incident_outcome) for e in episodes] == [
        (1020, "critical", 1050, "opened"),
        (1060, "major", None, "opened"),
    ]
    retriggered, _ = live_episodes(events, 1000, 2000, opened={"i0"})
    assert retriggered[0].incident_outcome == "retriggered"


def test_live_rules_reproduce_live_episodes_and_thresholds_show_differences() -> None:
    rules = load_rules()
    readings = sorted(
        series("wl-1", "water_level", [20, 55, 56, 60, 35])
        + series("wl-2", "water_level", [20, 62, 65, 70, 30])
        + series("wl-3", "water_level", [20, 45, 47, 48, 20]),
        key=lambda r: r.ts,
    )
    types = {**TYPES, "wl-3": "water_level"}
    baseline = replay_rules(rules, types, readings)
    same, differs, missing, extra = compare_episodes(baseline, replay_rules(rules, types, readings))
    assert (len(same), differs, missing, extra) == (2, [], [], [])

    higher = replay_rules(with_water_threshold(rules, 60.0, 40.0), types, readings)
    same, differs, missing, extra = compare_episodes(baseline, higher)
    assert [e.device_id for e in missing] == ["wl-1"]
    assert [m.live.device_id for m in same] == ["wl-2"]
    assert extra == []
    assert {e.rule_version for e in higher} == {2}

    lower = replay_rules(with_water_threshold(rules, 44.0, 40.0), types, readings)
    same, differs, missing, extra = compare_episodes(baseline, lower)
    assert [e.device_id for e in extra] == ["wl-3"]
    assert (len(same), missing) == (2, [])


def test_compare_links() -> None:
    a, b, c = (Link(f"case-{x}", "inc-1", "flooding", 1) for x in "abc")
    same, missing, extra = compare_links([a, b], [b, c])
    assert (same, missing, extra) == ([b], [a], [c])


def test_report_is_json_able() -> None:
    ep = live("wl-1", 1020)
    report = BacktestReport("f", "t", 2, [1], "normal", 5, 0, would_not_have_opened=[ep])
    doc = orjson.loads(orjson.dumps(report.to_json()))
    assert doc["counts"]["would_not_have_opened"] == 1
    assert doc["would_not_have_opened"][0]["raised_at"].startswith("1970-01-01T00:17:00")
    assert not doc["alarms_identical"]


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (datetime(2025, 1, 2, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC), "must be before"),
        (datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 3, 1, tzinfo=UTC), "longer than 31"),
        (datetime(2025, 1, 1), datetime(2025, 1, 2), "time zone"),
        (
            datetime.now(UTC) + timedelta(hours=1),
            datetime.now(UTC) + timedelta(hours=2),
            "in the future",
        ),
    ],
)
def test_bad_windows_are_refused(start: datetime, end: datetime, message: str) -> None:
    with pytest.raises(BacktestError, match=message):
        check_window(start, end)
