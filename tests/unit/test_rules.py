"""Rules: thresholds with hysteresis, severities, repeat counts, duplicates, silence."""

from __future__ import annotations

import pytest

from core.sensor.rules import (
    DeviceState,
    RulesError,
    evaluate_readings,
    is_silent,
    load_rules,
    parse_rules,
)

RULES = load_rules()


def feed(
    values: list[float],
    metric: str = "water_level",
    kind: str = "water_level",
    state: DeviceState | None = None,
    start: float = 0.0,
) -> tuple[list, DeviceState]:
    state = state or DeviceState()
    out = []
    for i, v in enumerate(values):
        out += evaluate_readings(RULES, kind, state, [(metric, v, start + i)])
    return out, state


def kinds(transitions: list) -> list[tuple[str, str | None]]:
    return [(t.kind, t.severity) for t in transitions]


def test_repeat_count_then_raise_escalate_step_down_clear() -> None:
    out, _ = feed([20, 55, 56, 85, 75, 65, 45, 35])
    assert kinds(out) == [
        ("raised", "major"),  # second consecutive reading above 50
        ("severity_changed", "critical"),  # 85 > 80
        ("severity_changed", "major"),  # 65 < 70: below critical's clear level
        ("cleared", None),  # 35 < 40
    ]


def test_hysteresis_keeps_the_alarm_between_clear_and_raise() -> None:
    out, state = feed([55, 56, 45, 49, 41])
    assert kinds(out) == [("raised", "major")]
    assert state.rules["water_level_high"].severity == "major"


def test_single_breach_does_not_raise_when_repeat_is_two() -> None:
    out, state = feed([55, 20, 55, 20])
    assert out == []
    assert state.rules["water_level_high"].count == 0


def test_duplicate_reading_does_not_count_twice() -> None:
    state = DeviceState()
    twice = [("water_level", 60.0, 5.0), ("water_level", 60.0, 5.0)]
    assert evaluate_readings(RULES, "water_level", state, twice) == []
    assert evaluate_readings(RULES, "water_level", state, [("water_level", 61.0, 4.0)]) == []
    assert kinds(evaluate_readings(RULES, "water_level", state, [("water_level", 61.0, 6.0)])) == [
        ("raised", "major")
    ]


def test_low_threshold_rule_and_wildcard_battery_rule() -> None:
    out, _ = feed([100, 4, 3, 2, 60], metric="power", kind="streetlight_power")
    assert kinds(out) == [("raised", "minor"), ("cleared", None)]
    out, _ = feed([50, 9, 8, 7], metric="battery", kind="pm25")
    assert [t.rule_id for t in out] == ["battery_low"]


def test_state_round_trips_through_json() -> None:
    _, state = feed([55])
    again = DeviceState.from_json(state.to_json())
    assert again == state


def test_silence_after_the_configured_time() -> None:
    state = DeviceState(last_seen=1_000.0)
    after = RULES.silence.after_s["water_level"]
    assert not is_silent(RULES, "water_level", state, 1_000.0 + after)
    assert is_silent(RULES, "water_level", state, 1_000.0 + after + 1)
    state.silent = True
    assert not is_silent(RULES, "water_level", state, 1_000.0 + after + 1)


def test_malformed_rules_are_refused() -> None:
    doc = {
        "version": 1,
        "rules": [
            {
                "id": "x",
                "sensor_type": "pm25",
                "metric": "pm25",
                "op": ">",
                "category": "c",
                "title": "t",
                "levels": [{"severity": "major", "raise": 10, "clear": 20}],
            }
        ],
        "silence": {},
        "silence_incident": {"category": "c", "severity": "minor", "title": "t"},
    }
    with pytest.raises(RulesError, match="safe side"):
        parse_rules(doc)
    doc["rules"][0]["op"] = "=="
    with pytest.raises(RulesError, match="op must be"):
        parse_rules(doc)
    with pytest.raises(RulesError, match="malformed"):
        parse_rules({"rules": []})
