"""The scenario library: each scenario's sensors cross the real rule thresholds where and
when it says, its citizens report the right things in the right places, and the library
describes it in both languages."""

from __future__ import annotations

import doctest
import math
import re
from collections import Counter

import numpy as np
import pytest
import shapely

import simulations.library
from core.brain.correlation import load_policy
from core.case.categories import Categories, load_categories
from core.sensor.rules import DeviceState, evaluate_readings, load_rules
from core.sensor.telemetry import SENSOR_TYPES
from gis.crs import distance_m
from gis.layers import CityLayers
from simulations.citizens import CaseReport, CitizenModel
from simulations.city import RIVERSIDE_DISTRICTS, generate_city
from simulations.library import LIBRARY, get_entry, list_scenarios, scenario_table
from simulations.scenarios import (
    FESTIVAL_CATEGORY_WEIGHTS,
    SCENARIOS,
    AirPollution,
    AtVenue,
    Festival,
    Fleet,
    ManholeTheft,
    NearAlarms,
    Scenario,
    StreetlightOutage,
    alarm_threshold,
    citizen_reports,
    make_scenario,
)

SEED = 11
N_SENSORS = 600
NEW = ("air_pollution", "streetlight_outage", "manhole_theft", "festival")
# More thefts than the default 1.5 %, so the 150 manholes of the test city lose several.
THEFT = ManholeTheft(share=0.05, seed=SEED)


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> CityLayers:
    return generate_city(SEED, N_SENSORS, tmp_path_factory.mktemp("city"))


@pytest.fixture(scope="module")
def fleet(city: CityLayers) -> Fleet:
    return Fleet.from_sensors(city.sensors)


@pytest.fixture(scope="module")
def categories() -> Categories:
    return load_categories()


def scenario_of(name: str) -> Scenario:
    return THEFT if name == "manhole_theft" else make_scenario(name, SEED)


def alarming(fleet: Fleet, scenario: Scenario, t: float) -> dict[str, np.ndarray]:
    """Per sensor type, the mask of devices past the type's alarm threshold at ``t``."""
    values = scenario.values(fleet, t)
    out = {}
    for stype in SENSOR_TYPES:
        threshold = alarm_threshold(stype)
        out[stype] = fleet.of_type(stype) & threshold.breached(values[threshold.metric])
    return out


def expected_at_peak(fleet: Fleet, name: str) -> tuple[str | None, np.ndarray]:
    """The sensor type that should alarm at the peak, and exactly which devices."""

    def in_district(districts: tuple[str, ...]) -> np.ndarray:
        return np.isin(fleet.district_code, list(districts))

    if name == "rainstorm":
        return "water_level", fleet.of_type("water_level") & in_district(RIVERSIDE_DISTRICTS)
    if name == "air_pollution":
        return "pm25", fleet.of_type("pm25") & in_district(AirPollution().affected_districts)
    if name == "streetlight_outage":
        district = (StreetlightOutage().district,)
        return "streetlight_power", fleet.of_type("streetlight_power") & in_district(district)
    if name == "manhole_theft":
        return "manhole_tilt", THEFT.targets(fleet)
    return None, np.zeros(len(fleet), dtype=bool)


def peak_time(scenario: Scenario) -> float:
    timeline = scenario.timeline  # type: ignore[attr-defined]
    return float(timeline.peak_s)


# --- the sensor side ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenarios_are_deterministic(fleet: Fleet, name: str) -> None:
    for t in (0.0, 60.5, 200.0, 400.0):
        a = make_scenario(name, SEED).values(fleet, t)
        b = make_scenario(name, SEED).values(fleet, t)
        assert a.keys() == b.keys()
        for metric in a:
            np.testing.assert_array_equal(a[metric], b[metric])
    # A device's values do not depend on which other devices are simulated.
    half = Fleet(
        fleet.device_id[::2],
        fleet.sensor_type[::2],
        fleet.gateway_id[::2],
        fleet.district_code[::2],
    )
    scenario = make_scenario(name, SEED)
    whole, part = scenario.values(fleet, 150.0), scenario.values(half, 150.0)
    for metric in whole:
        np.testing.assert_array_equal(whole[metric][::2], part[metric])


@pytest.mark.parametrize("name", ["rainstorm", *NEW])
def test_the_right_sensors_cross_the_real_thresholds_at_the_peak(fleet: Fleet, name: str) -> None:
    scenario = scenario_of(name)
    stype, expected = expected_at_peak(fleet, name)
    got = alarming(fleet, scenario, peak_time(scenario))
    for t, masks in got.items():
        if t == stype:
            np.testing.assert_array_equal(masks, expected)
        else:
            assert not masks.any(), (name, t)
    if stype is not None:
        assert expected.sum() >= 3
    timeline = scenario.timeline  # type: ignore[attr-defined]
    # Quiet before the start and after the end.
    for t in (0.0, timeline.start_s - 1.0, timeline.end_s + 1.0):
        assert not any(m.any() for m in alarming(fleet, scenario, max(t, 0.0)).values())


def test_air_pollution_spreads_district_after_district(fleet: Fleet) -> None:
    haze = AirPollution(seed=SEED)
    pm = fleet.of_type("pm25")
    # Just past the first district's ramp: the first district alarms, the last not yet.
    t = haze.start_s + haze.ramp_s + 1.0
    hit = alarming(fleet, haze, t)["pm25"]
    first, last = haze.affected_districts[0], haze.affected_districts[-1]
    assert hit[pm & (fleet.district_code == first)].all()
    assert not hit[pm & (fleet.district_code == last)].any()
    # The worst places are past the highest pm25 level (critical) at the peak.
    values = haze.values(fleet, peak_time(haze))["pm25"][pm]
    assert np.nanmax(values) > max(lv.raise_at for lv in load_rules().by_id("pm25_high").levels)


def test_manhole_thefts_happen_one_by_one_at_scattered_places(fleet: Fleet) -> None:
    stolen = THEFT.stolen_at(fleet)
    times = np.sort(stolen[~np.isnan(stolen)])
    assert len(times) >= 3
    assert THEFT.start_s <= times[0]
    assert times[-1] < THEFT.start_s + THEFT.ramp_s
    counts = [int(alarming(fleet, THEFT, float(t) + 0.5)["manhole_tilt"].sum()) for t in times]
    assert counts == list(range(1, len(times) + 1))  # one more each time
    # The default share: a few of the city's manholes, not all.
    default = ManholeTheft(seed=SEED).targets(fleet).sum()
    assert 0 < default < 0.05 * fleet.of_type("manhole_tilt").sum()


def test_festival_leaves_the_sensors_alone(fleet: Fleet) -> None:
    festival, baseline = make_scenario("festival", SEED), make_scenario("baseline", SEED)
    a, b = festival.values(fleet, 200.0), baseline.values(fleet, 200.0)
    for metric in a:
        np.testing.assert_array_equal(a[metric], b[metric])


@pytest.mark.parametrize("name", NEW[:3])
def test_the_rules_open_incidents_and_clear_them(fleet: Fleet, name: str) -> None:
    """The scenario's readings, every 10 s as the demo's gateways send them, through the
    monitor's real rule evaluation: each expected device raises once, and clears."""
    scenario = scenario_of(name)
    stype, expected = expected_at_peak(fleet, name)
    ruleset = load_rules()
    states = [DeviceState() for _ in range(len(fleet))]
    raised: Counter[str] = Counter()
    rules: set[str] = set()
    cleared: set[str] = set()
    timeline = scenario.timeline  # type: ignore[attr-defined]
    for t in np.arange(0.0, timeline.end_s + 60.0, 10.0):
        values = scenario.values(fleet, float(t))
        for i, (device, sensor_type) in enumerate(
            zip(fleet.device_id.tolist(), fleet.sensor_type.tolist(), strict=True)
        ):
            readings = [(m, float(values[m][i]), float(t)) for m in SENSOR_TYPES[sensor_type]]
            for tr in evaluate_readings(ruleset, sensor_type, states[i], readings):
                if tr.kind == "raised":
                    raised[device] += 1
                    rules.add(tr.rule_id)
                elif tr.kind == "cleared":
                    cleared.add(device)
    want = set(fleet.device_id[expected].tolist())
    assert set(raised) == want
    assert set(raised.values()) == {1}
    assert cleared == want
    assert {ruleset.by_id(r).sensor_type for r in rules} == {stype}


# --- the citizen side --------------------------------------------------------------------


def scenario_reports(model: CitizenModel, t1: float) -> list[CaseReport]:
    return [r for r in model.reports(0.0, t1) if r.cause == "scenario"]


def nearest_alarm_m(model: CitizenModel, sensor_type: str, r: CaseReport) -> float:
    alarms = model.alarming(sensor_type, math.floor(r.t))
    assert len(alarms) > 0
    return float(distance_m(r.lon, r.lat, alarms.lon, alarms.lat).min())


@pytest.mark.parametrize("name", ["rainstorm", *NEW[:3]])
def test_reports_come_near_the_alarms_with_categories_the_brain_pairs(
    city: CityLayers, categories: Categories, name: str
) -> None:
    scenario = scenario_of(name)
    (source,) = citizen_reports(scenario)
    assert isinstance(source, NearAlarms)
    # The correlation rule that pairs these categories watches this sensor type, and
    # the reports come within its radius: the urban brain links them.
    policy = load_policy()
    for code, _ in source.categories:
        rule = policy.rule_for_case(code)
        assert rule is not None, code
        assert source.sensor_type in rule.sensor_types
        assert source.radius_m[1] < rule.radius_m
    model = CitizenModel(city, categories, scenario, seed=SEED)
    timeline = scenario.timeline  # type: ignore[attr-defined]
    reports = scenario_reports(model, timeline.end_s + 30.0)
    assert len(reports) >= 5
    assert {r.service_code for r in reports} <= {c for c, _ in source.categories}
    for r in reports:
        categories.get(r.service_code).check_attributes(r.attributes)
        assert timeline.start_s <= r.t < timeline.end_s
        assert nearest_alarm_m(model, source.sensor_type, r) <= source.radius_m[1] + 5.0


def test_scenario_rate_follows_the_alarms(city: CityLayers, categories: Categories) -> None:
    outage = StreetlightOutage(seed=SEED)
    model = CitizenModel(city, categories, outage, seed=SEED)
    dark = len(model.alarming("streetlight_power", peak_time(outage)))
    assert dark > 0
    assert model.scenario_rate(peak_time(outage)) == outage.report_rate_per_sensor * dark
    assert model.scenario_rate(0.0) == 0.0


def test_festival_reports_cluster_at_the_venue(city: CityLayers, categories: Categories) -> None:
    festival = Festival(seed=SEED)
    (source,) = citizen_reports(festival)
    assert isinstance(source, AtVenue)
    model = CitizenModel(city, categories, festival, seed=SEED)
    reports = scenario_reports(model, festival.timeline.end_s + 30.0)
    assert len(reports) >= 20
    codes = Counter(r.service_code for r in reports)
    assert set(codes) <= {c for c, _ in FESTIVAL_CATEGORY_WEIGHTS}
    assert codes.most_common(1)[0][0] == "noise_social"
    district = city.districts[city.districts.district_code == festival.venue_district]
    venue = shapely.point_on_surface(district.geometry.iloc[0])
    for r in reports:
        assert festival.start_s <= r.t < festival.timeline.end_s
        assert distance_m(r.lon, r.lat, venue.x, venue.y) <= festival.radius_m + 5.0
    # Busiest while the crowd is there.
    height = festival.start_s + festival.ramp_s
    assert model.scenario_rate(height + 10.0) == pytest.approx(festival.report_rate)
    assert model.scenario_rate(festival.start_s) == 0.0


def test_a_venue_outside_the_city_is_refused(city: CityLayers, categories: Categories) -> None:
    with pytest.raises(ValueError, match="no district '999999'"):
        CitizenModel(city, categories, Festival(venue_district="999999"))


# --- the library -------------------------------------------------------------------------


def test_the_library_describes_every_scenario_in_both_languages() -> None:
    assert list(LIBRARY) == list(SCENARIOS)
    assert {"rainstorm", *NEW} <= set(LIBRARY)
    cjk = re.compile(r"[\u4e00-\u9fff]")
    for entry in list_scenarios():
        for text in (entry.title_en, entry.description_en, entry.outcome_en):
            assert text
            assert not cjk.search(text)
        for text in (entry.title_zh, entry.description_zh, entry.outcome_zh):
            assert cjk.search(text)
        assert entry.description("zh") == entry.description_zh
        if entry.name == "baseline":
            assert entry.timeline is None
            continue
        timeline = entry.timeline
        assert timeline is not None
        assert 0.0 <= timeline.start_s <= timeline.peak_s <= timeline.end_s
        assert entry.params
        assert "seed" not in entry.params
        assert isinstance(entry.build(3), type(make_scenario(entry.name, 3)))


def test_the_table_has_a_row_per_scenario() -> None:
    for lang in ("en", "zh"):
        rows = scenario_table(lang).splitlines()  # type: ignore[arg-type]
        assert len(rows) == 2 + len(LIBRARY)
        assert all(f"`{name}`" in "\n".join(rows) for name in LIBRARY)


def test_an_unknown_scenario_is_a_clear_error() -> None:
    names = ", ".join(SCENARIOS)
    with pytest.raises(ValueError, match=f"unknown scenario 'earthquake'; choose one of {names}"):
        make_scenario("earthquake", 1)
    with pytest.raises(ValueError, match=f"choose one of {names}"):
        get_entry("earthquake")


def test_doc_examples_run() -> None:
    result = doctest.testmod(simulations.library, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0
