"""Rule backtesting, pure logic: synthetic readings through the monitor's rule evaluation."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid5

import orjson
import pytest
from eventsourcing.application import ProcessingEvent

from core.backtest.nearby import ScratchCity
from core.backtest.rules import (
    AlarmEpisode,
    AlarmEvent,
    BacktestReport,
    CorrelationOutcome,
    CorrelationReplay,
    Decision,
    StoredReading,
    brain_trigger,
    compare_decisions,
    compare_episodes,
    initial_states,
    live_episodes,
    replay_rules,
)
from core.brain.correlation import CLUSTER_NS, CorrelationPolicy, Correlator, load_policy
from core.case import ServiceCase, case_id
from core.incident import Incident
from core.sensor import Sensor
from core.sensor.rules import Level, RuleSet, load_rules
from gis.crs import distance_m
from infra.backtest import BacktestError, check_window

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
    from core.backtest.rules import ReplayStats

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


def test_compare_decisions_by_kind_subject_and_outcome() -> None:
    a, b, c = (Decision("link", f"case-{x}", "inc-1", "flooding", 1) for x in "abc")
    checked = Decision("sensor_check", "case-a", "confirmed", "flooding", 1)
    rechecked = Decision("sensor_check", "case-a", "no_sensors", "flooding", 2)
    diffs = compare_decisions([a, b, checked], [replace(b, rule_version=2), c, rechecked])
    assert (diffs["link"].same, diffs["link"].missing, diffs["link"].extra) == ([b], [a], [c])
    assert (diffs["sensor_check"].missing, diffs["sensor_check"].extra) == ([checked], [rechecked])
    assert diffs["merge"].identical


def test_report_is_json_able() -> None:
    ep = live("wl-1", 1020)
    report = BacktestReport("f", "t", 2, [1], "normal", 5, 0, would_not_have_opened=[ep])
    doc = orjson.loads(orjson.dumps(report.to_json()))
    assert doc["counts"]["would_not_have_opened"] == 1
    assert doc["would_not_have_opened"][0]["raised_at"].startswith("1970-01-01T00:17:00")
    assert not doc["alarms_identical"]
    assert doc["correlation"] is None
    link = Decision("link", "case-a", "inc-1", "flooding", 1)
    report.correlation = CorrelationOutcome(2, [1], 3, compare_decisions([link], []))
    doc = orjson.loads(orjson.dumps(report.to_json()))
    assert doc["correlation"]["counts"]["link"] == {"same": 0, "missing": 1, "extra": 0}
    assert doc["correlation"]["link"]["missing"][0]["subject"] == "case-a"
    assert not doc["correlation"]["identical"]
    assert not doc["identical"]


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


# -- correlation rules ----------------------------------------------------------------------

A_LON, A_LAT = 121.47, 31.23
B_LON, B_LAT = 121.52, 31.23  # about 4.8 km east of A
ALARM_CATEGORIES = {"water_level_high": "flooding"}


def east(lon: float, lat: float, metres: float) -> tuple[float, float]:
    return lon + metres / (111_320.0 * math.cos(math.radians(lat))), lat


def water_sensor(device_id: str, lon: float, lat: float) -> Sensor:
    return Sensor(
        device_id=device_id,
        sensor_type="water_level",
        gateway_id="gw",
        lon=lon,
        lat=lat,
        grid_code=None,
        district_code=None,
        department_code=None,
        actor="test",
        correlation_id="test",
    )


def flood_incident(sensor: Sensor) -> Incident:
    """What the sensor monitor records for a water level over the threshold."""
    incident_uuid, seq = sensor.next_incident_id("water_level_high")
    sensor.raise_alarm(
        rule_id="water_level_high",
        rule_version=1,
        severity="major",
        metric="water_level",
        value=62.0,
        reading_ts=1.0,
        incident_id=incident_uuid.hex,
        incident_seq=seq,
        actor="system:monitor",
        correlation_id="m",
    )
    return Incident.open(
        incident_uuid,
        kind="sensor_alarm",
        title="water level high",
        category="flooding",
        severity="major",
        device_id=sensor.device_id,
        rule_id="water_level_high",
        rule_version=1,
        lon=sensor.lon,
        lat=sensor.lat,
        grid_code=None,
        district_code=None,
        department_code=None,
        metric="water_level",
        value=62.0,
        reading_ts=1.0,
        actor="system:monitor",
        correlation_id="m",
    )


def accepted_case(key: str, lon: float, lat: float, category: str = "flooding") -> ServiceCase:
    case = ServiceCase.submit(
        case_id("hotline", key),
        channel="hotline",
        external_id=key,
        category=category,
        categories_version=1,
        description="water in the street",
        lon=lon,
        lat=lat,
        address=None,
        attributes={},
        citizen_id=None,
        contact_token=None,
        actor="hotline:test",
        correlation_id=key,
    )
    case.accept(actor="hotline:test", reason="registered", correlation_id=key)
    return case


class LiveCity:
    """A log made as the live city makes it: commands recorded, and the brain (the real
    Correlator over the scratch port, standing in for the read models) deciding on each
    case accepted and incident opened, its decisions recorded right after."""

    def __init__(self, policy: CorrelationPolicy) -> None:
        self.log: list[tuple[int, Any]] = []
        self.city = ScratchCity(distance_m)
        self.brain = Correlator(
            policy, self.city, self.city.get, self.city.exists, ALARM_CATEGORIES, distance_m
        )

    def _append(self, events: list[Any]) -> list[tuple[int, Any]]:
        new = [(len(self.log) + i + 1, e) for i, e in enumerate(events)]
        self.log.extend(new)
        return new

    def record(self, *aggregates: Any) -> None:
        for aggregate in aggregates:
            self.city.hold(aggregate)
        new = self._append([e for a in aggregates for e in a.collect_events()])
        for position, event in new:
            pe: ProcessingEvent[UUID] = ProcessingEvent()
            if isinstance(event, ServiceCase.CaseAccepted):  # type: ignore[attr-defined]
                self.brain.case_accepted(event.originator_id, f"brain:{position}", pe)
            elif isinstance(event, Incident.Opened):  # type: ignore[attr-defined]
                self.brain.incident_opened(event.originator_id, f"brain:{position}", pe)
            for aggregate in pe.aggregates.values():
                self.city.hold(aggregate)
            self._append(pe.events)


def storm(policy: CorrelationPolicy) -> tuple[list[tuple[int, Any]], dict[str, UUID]]:
    """A flooded sensor with two reports at 40 m and 160 m; two reports together far away."""
    live = LiveCity(policy)
    sensor = water_sensor("wl-a", A_LON, A_LAT)
    live.record(sensor)
    incident = flood_incident(sensor)
    live.record(sensor, incident)
    a0 = accepted_case("a0", *east(A_LON, A_LAT, 40))
    live.record(a0)
    a1 = accepted_case("a1", *east(A_LON, A_LAT, 160))
    live.record(a1)
    b0 = accepted_case("b0", B_LON, B_LAT)
    live.record(b0)
    b1 = accepted_case("b1", *east(B_LON, B_LAT, 20))
    live.record(b1)
    ids = {"A": incident.id, "a0": a0.id, "a1": a1.id, "b0": b0.id, "b1": b1.id}
    return live.log, ids


def replay(
    policy: CorrelationPolicy, log: list[tuple[int, Any]], start: int = 1
) -> CorrelationOutcome:
    run = CorrelationReplay(policy, ALARM_CATEGORIES, distance_m, start, log[-1][0])
    for position, event in log:
        run.feed(position, event)
    return run.outcome()


def live_policy() -> CorrelationPolicy:
    return load_policy().model_copy(update={"confirm_after_reports": 2})


def with_flooding_radius(policy: CorrelationPolicy, radius_m: float) -> CorrelationPolicy:
    rules = tuple(
        r.model_copy(update={"radius_m": radius_m}) if r.id == "flooding" else r
        for r in policy.rules
    )
    return policy.model_copy(update={"rules": rules, "version": policy.version + 1})


def keys(outcome: CorrelationOutcome, kind: str, which: str) -> list[tuple[str, str]]:
    return [(d.subject, d.outcome) for d in getattr(outcome.diffs[kind], which)]


def test_the_live_correlation_rules_reproduce_the_brains_decisions() -> None:
    policy = live_policy()
    log, ids = storm(policy)
    cluster = uuid5(CLUSTER_NS, f"flooding:{min(ids['b0'], ids['b1'])}")
    assert brain_trigger(log[-1][1]) is not None  # the log holds the brain's decisions
    outcome = replay(policy, log)
    assert outcome.identical, outcome.diffs
    assert (outcome.not_applied, outcome.errors, outcome.live_versions) == (0, [], [policy.version])
    assert outcome.triggers == 5  # 4 cases accepted and the alarm's incident
    same = outcome.diffs
    assert sorted(keys(outcome, "link", "same")) == sorted(
        [
            (str(ids["a0"]), str(ids["A"])),
            (str(ids["a1"]), str(ids["A"])),
            (str(ids["b0"]), str(cluster)),
            (str(ids["b1"]), str(cluster)),
        ]
    )
    assert keys(outcome, "cluster", "same") == [(str(cluster), "major")]
    assert keys(outcome, "confirmation", "same") == [(str(ids["A"]), "critical")]
    assert (
        sorted(d.outcome for d in same["sensor_check"].same)
        == ["confirmed"] * 2 + ["no_sensors"] * 2
    )


def test_a_smaller_radius_reports_the_links_it_would_not_have_made() -> None:
    live = live_policy()
    log, ids = storm(live)
    narrow = replay(with_flooding_radius(live, 100), log)
    a1, incident_a = str(ids["a1"]), str(ids["A"])
    assert keys(narrow, "link", "missing") == [(a1, incident_a)]
    assert keys(narrow, "link", "extra") == []
    assert len(narrow.diffs["link"].same) == 3
    assert keys(narrow, "confirmation", "missing") == [(incident_a, "critical")]
    assert keys(narrow, "sensor_check", "missing") == [(a1, "confirmed")]
    assert keys(narrow, "sensor_check", "extra") == [(a1, "no_sensors")]
    assert narrow.diffs["cluster"].identical
    assert (narrow.version, narrow.live_versions) == (live.version + 1, [live.version])
    assert {d.rule_version for d in narrow.diffs["link"].same} == {live.version}  # as recorded


def test_decisions_before_the_window_are_the_starting_state() -> None:
    log, ids = storm(live_policy())
    b0_accepted = next(
        p
        for p, e in log
        if isinstance(e, ServiceCase.CaseAccepted) and e.originator_id == ids["b0"]  # type: ignore[attr-defined]
    )
    late = replay(with_flooding_radius(live_policy(), 100), log, start=b0_accepted)
    # A's links were made before the window: applied as recorded, not replayed.
    assert late.identical
    assert late.triggers == 2  # b0 and b1 accepted
    assert len(late.diffs["link"].same) == 2


def test_a_higher_cluster_minimum_opens_no_cluster() -> None:
    log, ids = storm(live_policy())
    three = live_policy().model_copy(update={"cluster_min_reports": 3, "version": 2})
    outcome = replay(three, log)
    cluster = str(uuid5(CLUSTER_NS, f"flooding:{min(ids['b0'], ids['b1'])}"))
    assert keys(outcome, "cluster", "missing") == [(cluster, "major")]
    assert sorted(keys(outcome, "link", "missing")) == sorted(
        [(str(ids["b0"]), cluster), (str(ids["b1"]), cluster)]
    )
    assert outcome.diffs["link"].extra == []
    assert outcome.diffs["sensor_check"].identical


def test_scratch_nearby_filters_like_the_read_models() -> None:
    city = ScratchCity(distance_m)
    sensor = water_sensor("wl-a", A_LON, A_LAT)
    incident = flood_incident(sensor)
    near = accepted_case("n0", *east(A_LON, A_LAT, 50))
    far = accepted_case("n1", *east(A_LON, A_LAT, 500))
    for aggregate in (sensor, incident, near, far):
        city.hold(aggregate)
    long_ago = incident.created_on + timedelta(hours=1)
    found = city.incidents_near(A_LON, A_LAT, 300, ("flooding",), long_ago)
    assert [(i.id, i.kind) for i in found] == [(incident.id, "sensor_alarm")]  # still alarming
    assert city.incidents_near(A_LON, A_LAT, 300, ("fallen_tree",), long_ago) == []
    assert [c.id for c in city.cases_near(A_LON, A_LAT, 300, ("flooding",), long_ago)] == []
    since = near.created_on - timedelta(hours=2)
    assert [c.id for c in city.cases_near(A_LON, A_LAT, 300, ("flooding",), since)] == [near.id]
    [seen] = city.sensors_near(*east(A_LON, A_LAT, 50), 300, ("water_level",))
    assert (seen.device_id, seen.alarm_rules, seen.silent) == ("wl-a", ("water_level_high",), False)
    assert seen.distance_m == pytest.approx(50, abs=1)
    incident.merge_into(target_id="other", actor="test", correlation_id="t")
    assert city.incidents_near(A_LON, A_LAT, 300, ("flooding",), since) == []


CROWD = ("noise_social", "overflowing_bin", "illegal_parking", "street_vendor", "shared_bikes")


def test_a_crowd_opens_one_incident_at_its_fifth_report_and_backtests_with_its_own_minimum() -> (
    None
):
    policy = load_policy()
    crowd = next(r for r in policy.rules if r.id == "crowd")
    assert policy.min_reports(crowd) == 5 > policy.cluster_min_reports
    live = LiveCity(policy)
    cases = []
    for i, category in enumerate(CROWD):
        if i == 4:  # four complaints of a crowd are still four cases
            assert all(live.city.get(c.id, ServiceCase, "case").incident_id is None for c in cases)
        case = accepted_case(f"f{i}", *east(B_LON, B_LAT, 70 * i), category=category)
        live.record(case)
        cases.append(case)
    late = accepted_case("f5", *east(B_LON, B_LAT, -300), category="noise_social")
    live.record(late)
    cluster = uuid5(CLUSTER_NS, f"crowd:{min(c.id for c in cases)}")
    incident = live.city.get(cluster, Incident, "incident")
    assert (incident.kind, incident.category) == ("citizen_reports", "crowd_disturbance")
    assert sorted(incident.linked_cases) == sorted(str(c.id) for c in [*cases, late])

    assert replay(policy, live.log).identical
    six = crowd.model_copy(update={"cluster_min_reports": 6})
    stricter = policy.model_copy(
        update={
            "rules": tuple(six if r.id == "crowd" else r for r in policy.rules),
            "version": policy.version + 1,
        }
    )
    outcome = replay(stricter, live.log)
    assert [d.subject for d in outcome.diffs["cluster"].missing] == [str(cluster)]
    assert keys(outcome, "link", "extra") == []


def test_a_rule_cannot_ask_for_fewer_than_two_reports() -> None:
    raw = load_policy().model_dump()
    raw["rules"][0]["cluster_min_reports"] = 1
    with pytest.raises(ValueError, match="cluster_min_reports"):
        CorrelationPolicy.model_validate(raw)
