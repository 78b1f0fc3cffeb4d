"""simulations/citizens.py: the citizen model, its Open311 and hotline adapters, the sender."""

from __future__ import annotations

import doctest
import itertools
import math
import threading
import urllib.parse
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import shapely
from kafka.errors import KafkaTimeoutError

import simulations.citizens
from core.case.categories import Categories, load_categories
from gis.crs import distance_m
from gis.layers import CityLayers
from infra.hotline_schema import HotlineCase
from infra.settings import Settings
from simulations.citizens import (
    OPEN311_PATH,
    CaseReport,
    CitizenContact,
    CitizenModel,
    CitizenParams,
    CitizenSimulator,
    hotline_message,
    open311_form,
    open311_headers,
)
from simulations.city import RIVERSIDE_DISTRICTS, generate_city
from simulations.scenarios import Baseline, Rainstorm, Threshold, alarm_threshold

SEED = 7
N_SENSORS = 600
STORM = Rainstorm(seed=SEED)
PEAK = (STORM.start_s + STORM.ramp_s, STORM.start_s + STORM.ramp_s + STORM.hold_s)
T0 = 1_763_700_000.0


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> CityLayers:
    return generate_city(SEED, N_SENSORS, tmp_path_factory.mktemp("city"))


@pytest.fixture(scope="module")
def categories() -> Categories:
    return load_categories()


def model_of(
    city: CityLayers, categories: Categories, scenario: Any = STORM, seed: int = SEED, **params: Any
) -> CitizenModel:
    return CitizenModel(city, categories, scenario, seed=seed, params=CitizenParams(**params))


def key(r: CaseReport) -> tuple[Any, ...]:
    """A report without its id (ids number a slot's reports, scenario ones included)."""
    return (r.t, r.channel, r.service_code, r.lon, r.lat, r.description, r.contact)


def inside(city: CityLayers, reports: list[CaseReport]) -> np.ndarray:
    area = shapely.union_all(np.asarray(city.districts.geometry.values))
    return shapely.contains_xy(area, [r.lon for r in reports], [r.lat for r in reports])


# --- the model ---------------------------------------------------------------------------


def test_reports_are_deterministic_for_a_seed(city: CityLayers, categories: Categories) -> None:
    a = model_of(city, categories).reports(0.0, 120.0)
    b = model_of(city, categories).reports(0.0, 120.0)
    assert a == b
    assert len(a) > 10
    other = model_of(city, categories, seed=SEED + 1).reports(0.0, 120.0)
    assert [key(r) for r in other] != [key(r) for r in a]


def test_reports_do_not_depend_on_how_time_is_split(
    city: CityLayers, categories: Categories
) -> None:
    whole = model_of(city, categories, base_rate=3.0).reports(0.0, 90.0)
    edges = [0.0, 0.3, 0.5, 1.0, 2.75, 10.0, 10.5, 33.3, 61.0, 89.9, 90.0]
    pieces = model_of(city, categories, base_rate=3.0)
    chunked = [r for a, b in itertools.pairwise(edges) for r in pieces.reports(a, b)]
    assert chunked == whole
    assert [r.t for r in whole] == sorted(r.t for r in whole)
    assert all(0.0 <= r.t < 90.0 for r in whole)


def test_external_ids_are_unique_and_follow_the_contract(
    city: CityLayers, categories: Categories
) -> None:
    reports = model_of(city, categories, base_rate=3.0).reports(0.0, 300.0)
    ids = [r.external_id for r in reports]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith(f"sim-{SEED}-") for i in ids)
    prefixed = CitizenModel(city, categories, STORM, seed=SEED, id_prefix="run-2")
    assert prefixed.reports(0.0, 30.0)[0].external_id.startswith("run-2-")
    with pytest.raises(ValueError, match="external_id"):
        CitizenModel(city, categories, STORM, id_prefix="no spaces")


def test_long_run_rate_mix_and_shares_are_as_configured(
    city: CityLayers, categories: Categories
) -> None:
    rate, duration = 40.0, 250.0
    reports = model_of(city, categories, Baseline(SEED), base_rate=rate).reports(0.0, duration)
    n, expected = len(reports), rate * duration
    # Poisson: the standard deviation is sqrt(10,000) = 100; 5 of them never flake.
    assert abs(n - expected) < 5 * math.sqrt(expected)

    def share(predicate: Any) -> float:
        return sum(map(predicate, reports)) / n

    is_in = dict(zip((r.external_id for r in reports), inside(city, reports), strict=True))

    def close(observed: float, p: float) -> bool:
        return abs(observed - p) < 5 * math.sqrt(p * (1 - p) / n)

    params = CitizenParams()
    assert close(share(lambda r: r.channel == "open311"), params.open311_share)
    assert close(share(lambda r: r.contact is None), params.anonymous_share)
    assert close(share(lambda r: r.address is not None), params.address_share * 0.99)
    assert close(share(lambda r: not is_in[r.external_id]), params.outside_share)
    counts = Counter(r.service_code for r in reports)
    assert counts["illegal_parking"] > 10 * counts["water_main_burst"]
    assert counts.most_common(1)[0][0] == "illegal_parking"
    assert set(counts) == set(categories.by_code)  # even the rare ones turn up
    assert all(r.cause == "background" for r in reports)


def test_repeat_callers_file_several_cases(city: CityLayers, categories: Categories) -> None:
    model = model_of(city, categories, Baseline(SEED), base_rate=5.0)
    reports = model.reports(0.0, 200.0)
    phones = Counter(r.contact.phone for r in reports if r.contact is not None)
    pool = {c.phone for c in model.repeat_callers}
    frequent = [p for p, k in phones.items() if k >= 3]
    assert frequent
    assert set(frequent) <= pool
    for contact in {r.contact for r in reports if r.contact is not None}:
        assert contact.phone.isdigit()
        assert len(contact.phone) == 11
        assert contact.phone.startswith("1")
        assert contact.email is None or "@" in contact.email
        assert contact.first_name
        assert contact.last_name


def test_categories_and_attributes_are_valid(city: CityLayers, categories: Categories) -> None:
    reports = model_of(city, categories, base_rate=10.0).reports(0.0, 300.0)
    seen_optional = False
    for r in reports:
        category = categories.get(r.service_code)
        category.check_attributes(r.attributes)  # raises if invalid
        for attr in category.attributes:
            if attr.required:
                assert r.attributes.get(attr.code), (r.service_code, attr.code)
            elif attr.code in r.attributes:
                seen_optional = True
        assert r.description
        assert len(r.description) < 4_000
    assert seen_optional
    flooding = [r for r in reports if r.service_code == "flooding"]
    assert flooding
    assert {r.attributes["water_depth"] for r in flooding} <= {"ankle", "knee", "above_knee"}


def test_locations_are_in_the_city_but_for_a_few_just_outside(
    city: CityLayers, categories: Categories
) -> None:
    reports = model_of(city, categories, base_rate=10.0).reports(0.0, 300.0)
    is_in = inside(city, reports)
    outside = [r for r, i in zip(reports, is_in, strict=True) if not i]
    assert 0 < len(outside) < 0.03 * len(reports)
    west, south, east, north = city.districts.total_bounds
    for r in outside:
        assert r.cause == "background"
        # Just outside: within 2 km of the city's bounding box.
        lon = min(max(r.lon, west), east)
        lat = min(max(r.lat, south), north)
        assert 250 < distance_m(r.lon, r.lat, lon, lat) < 2_000


def test_flooding_threshold_comes_from_the_rules() -> None:
    assert alarm_threshold("water_level") == Threshold("water_level", ">", 50.0)


def test_rainstorm_reports_cluster_near_flooded_sensors(
    city: CityLayers, categories: Categories
) -> None:
    model = model_of(city, categories)
    storm = model.reports(*PEAK)
    scenario = [r for r in storm if r.cause == "scenario"]
    assert len(scenario) > 20
    assert {r.service_code for r in scenario} == {"flooding", "drain_blocked"}
    nearest = []
    for r in scenario:
        flooded = model.alarming("water_level", math.floor(r.t))
        assert len(flooded) > 0
        assert set(flooded.district_code) <= set(RIVERSIDE_DISTRICTS)
        nearest.append(float(distance_m(r.lon, r.lat, flooded.lon, flooded.lat).min()))
    # 50 to 250 m from the sensor they are about; another one may be nearer still.
    assert max(nearest) <= 255.0
    assert sum(d >= 45.0 for d in nearest) > 0.7 * len(nearest)
    assert inside(city, scenario).all()

    # All flooding reports of the storm, everyday ones included, are mostly there.
    flooding = [r for r in storm if r.service_code == "flooding"]
    near = [
        float(distance_m(r.lon, r.lat, *_positions(model, r.t)).min()) <= 255.0 for r in flooding
    ]
    assert sum(near) >= 0.9 * len(flooding)
    # ... and far more than on an ordinary day.
    ordinary = model_of(city, categories, Baseline(SEED)).reports(*PEAK)
    ordinary_flooding = sum(r.service_code == "flooding" for r in ordinary)
    p_flooding = 1.0 / sum(simulations.citizens.CATEGORY_WEIGHTS.values())
    expected_ordinary = CitizenParams().base_rate * p_flooding * (PEAK[1] - PEAK[0])
    assert len(flooding) > 20 * expected_ordinary
    assert len(flooding) > 5 * ordinary_flooding + 5


def _positions(model: CitizenModel, t: float) -> tuple[np.ndarray, np.ndarray]:
    flooded = model.alarming("water_level", math.floor(t))
    return flooded.lon, flooded.lat


def test_rainstorm_adds_nothing_before_or_after_the_storm(
    city: CityLayers, categories: Categories
) -> None:
    storm = model_of(city, categories, base_rate=2.0)
    ordinary = model_of(city, categories, Baseline(SEED), base_rate=2.0)
    before = storm.reports(0.0, STORM.start_s)
    assert before
    assert before == ordinary.reports(0.0, STORM.start_s)
    after = (STORM.end_s, STORM.end_s + 30.0)
    assert storm.reports(*after) == ordinary.reports(*after)
    assert storm.scenario_rate(0.0) == storm.scenario_rate(STORM.end_s + 1) == 0.0
    # During the storm the everyday reports are the ordinary day's, plus the storm's.
    during = storm.reports(*PEAK)
    assert [key(r) for r in during if r.cause == "background"] == [
        key(r) for r in ordinary.reports(*PEAK)
    ]


def test_flood_rate_grows_with_the_number_of_flooded_sensors(
    city: CityLayers, categories: Categories
) -> None:
    model = model_of(city, categories)
    times = [STORM.start_s + f * STORM.ramp_s for f in (0.0, 0.5, 0.7, 0.85, 1.0)]
    counts = [len(model.alarming("water_level", t)) for t in times]
    rates = [model.scenario_rate(t) for t in times]
    assert counts[0] == 0
    assert counts[-1] > counts[2] > 0
    assert rates == [STORM.report_rate_per_sensor * c for c in counts]
    assert rates == sorted(rates)


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="shares"):
        CitizenParams(open311_share=1.5)
    with pytest.raises(ValueError, match="rates"):
        CitizenParams(base_rate=-1.0)
    with pytest.raises(ValueError, match="anonymous_share"):
        CitizenParams(anonymous_share=0.6, repeat_share=0.6)


def test_reports_need_an_ordered_interval(city: CityLayers, categories: Categories) -> None:
    model = model_of(city, categories)
    assert model.reports(5.0, 5.0) == []
    with pytest.raises(ValueError, match="t0"):
        model.reports(5.0, 4.0)


# --- the adapters --------------------------------------------------------------------------


CONTACT = CitizenContact(first_name="芳", last_name="王", phone="13812345678", email="f@163.com")


def report(**changes: Any) -> CaseReport:
    fields: dict[str, Any] = {
        "channel": "open311",
        "external_id": "sim-7-12-0",
        "service_code": "flooding",
        "description": "Water up to the knee across the road. 路面积水严重，请尽快处理。",
        "lon": 121.4712341,
        "lat": 31.2298761,
        "address": "上海市黄浦区西藏中路128号",
        "attributes": {"water_depth": "knee", "blocking_traffic": "yes"},
        "contact": CONTACT,
        "t": 12.25,
    }
    return CaseReport(**{**fields, **changes})


def test_open311_form_has_the_georeport_fields() -> None:
    form = open311_form(report())
    assert form == {
        "service_code": "flooding",
        "lat": "31.229876",
        "long": "121.471234",
        "address_string": "上海市黄浦区西藏中路128号",
        "description": "Water up to the knee across the road. 路面积水严重，请尽快处理。",
        "first_name": "芳",
        "last_name": "王",
        "email": "f@163.com",
        "phone": "13812345678",
        "attribute[water_depth]": "knee",
        "attribute[blocking_traffic]": "yes",
    }
    assert open311_headers(report()) == {"Idempotency-Key": "sim-7-12-0"}


def test_open311_form_leaves_out_what_is_not_given() -> None:
    form = open311_form(report(contact=None, address=None, attributes={"kinds": ["a", "b"]}))
    assert set(form) == {"service_code", "lat", "long", "description", "attribute[kinds][]"}
    assert form["attribute[kinds][]"] == ["a", "b"]
    # httpx sends a list as the key repeated, as Open311 multivaluelists are posted.
    body = httpx.Request("POST", "http://x/", data=form).read().decode()
    assert urllib.parse.parse_qsl(body).count(("attribute[kinds][]", "a")) == 1
    assert ("attribute[kinds][]", "b") in urllib.parse.parse_qsl(body)


def test_hotline_message_follows_the_contract() -> None:
    when = datetime(2026, 7, 1, 8, 30, tzinfo=UTC)
    key_, value = hotline_message(report(channel="hotline"), when)
    assert key_ == b"sim-7-12-0"
    case = HotlineCase.model_validate_json(value)
    assert case.external_id == "sim-7-12-0"
    assert case.channel == "hotline"
    assert case.source == "sim-12345"
    assert case.service_code == "flooding"
    assert case.location is not None
    assert (case.location.lon, case.location.lat) == (121.4712341, 31.2298761)
    assert case.address == "上海市黄浦区西藏中路128号"
    assert case.attributes == {"water_depth": "knee", "blocking_traffic": "yes"}
    assert case.citizen is not None
    assert (case.citizen.name, case.citizen.phone) == ("王芳", "13812345678")
    assert case.received_at == when
    anonymous = HotlineCase.model_validate_json(hotline_message(report(contact=None))[1])
    assert anonymous.citizen is None
    assert anonymous.received_at is not None


def test_every_model_report_fits_both_channels(city: CityLayers, categories: Categories) -> None:
    for r in model_of(city, categories, base_rate=3.0).reports(0.0, 120.0):
        HotlineCase.model_validate_json(hotline_message(r)[1])
        form = open311_form(r)
        assert categories.get(str(form["service_code"]))
        assert float(str(form["lat"])) == pytest.approx(r.lat, abs=1e-6)


def test_contact_names() -> None:
    assert CONTACT.name == "王芳"
    assert CitizenContact("Emma", "Schmidt", "13900000000").name == "Emma Schmidt"


def test_doc_examples_run() -> None:
    assert doctest.testmod(simulations.citizens).failed == 0


# --- the simulator --------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = T0
        self.on_sleep: Any = None

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(self.now)


class FakeFuture:
    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def add_callback(self, f: Any, *args: Any) -> FakeFuture:
        if not self.fail:
            f(object(), *args)
        return self

    def add_errback(self, f: Any, *args: Any) -> FakeFuture:
        if self.fail:
            f(KafkaTimeoutError("gave up"), *args)
        return self


class FakeProducer:
    """Records what is sent; optionally refuses sends or fails deliveries."""

    def __init__(self, refuse: int = 0, fail: frozenset[str] = frozenset()) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.refuse = refuse
        self.fail = fail
        self.flushed = 0

    def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> FakeFuture:
        if self.refuse:
            self.refuse -= 1
            raise KafkaTimeoutError("no metadata")
        assert key is not None
        assert value is not None
        self.sent.append((topic, key, value))
        return FakeFuture(key.decode() in self.fail)

    def flush(self, timeout: float | None = None) -> None:
        self.flushed += 1


class Api:
    """A fake Open311 endpoint: 201, or an Open311 error for some service codes."""

    def __init__(
        self,
        reject: frozenset[str] = frozenset(),
        garble: frozenset[str] = frozenset(),
        down_calls: int = 0,
    ) -> None:
        self.requests: list[httpx.Request] = []
        self.reject = reject
        self.garble = garble
        self.down_calls = down_calls
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.calls <= self.down_calls:
            raise httpx.ConnectError("connection refused", request=request)
        self.requests.append(request)
        form = dict(urllib.parse.parse_qsl(request.content.decode()))
        if form["service_code"] in self.reject:
            return httpx.Response(
                400, json=[{"code": 400, "description": "service_code not accepted"}]
            )
        if form["service_code"] in self.garble:
            return httpx.Response(422, text="not json")
        return httpx.Response(201, json=[{"service_request_id": f"c-{len(self.requests)}"}])

    def forms(self) -> list[dict[str, str]]:
        return [dict(urllib.parse.parse_qsl(r.content.decode())) for r in self.requests]


def simulator(
    model: CitizenModel,
    api: Any,
    producer: FakeProducer,
    clock: FakeClock,
    **kwargs: Any,
) -> CitizenSimulator:
    return CitizenSimulator(
        model,
        producer,
        base_url="http://api.test",
        token="secret-token",
        topic="t.cityops.cases.inbound",
        clock=clock.time,
        sleep=clock.sleep,
        transport=httpx.MockTransport(api),
        **kwargs,
    )


def test_simulator_sends_everything_and_counts_api_errors(
    city: CityLayers, categories: Categories
) -> None:
    model = model_of(city, categories, base_rate=2.0)
    expected = model_of(city, categories, base_rate=2.0).reports(0.0, 60.0)
    api = Api(
        reject=frozenset({"noise_social", "illegal_parking"}), garble=frozenset({"road_damage"})
    )
    producer, clock = FakeProducer(), FakeClock()
    stats = simulator(model, api, producer, clock).run(duration_s=60.0)

    by_channel = Counter(r.channel for r in expected)
    rejected = sum(
        r.channel == "open311"
        and r.service_code in ("noise_social", "illegal_parking", "road_damage")
        for r in expected
    )
    assert rejected > 0
    assert stats.generated == len(expected)
    assert stats.open311_sent == by_channel["open311"] == len(api.requests)
    assert stats.open311_rejected == rejected
    assert stats.open311_accepted == by_channel["open311"] - rejected
    assert stats.hotline_sent == stats.hotline_acked == by_channel["hotline"]
    assert stats.sent == len(expected)
    assert stats.dropped == stats.hotline_failed == 0
    assert stats.elapsed_s == pytest.approx(60.0)
    assert producer.flushed == 1

    # Open311: the right endpoint, token and idempotency key, the report's form.
    open311 = [r for r in expected if r.channel == "open311"]
    for request, r in zip(api.requests, open311, strict=True):
        assert request.method == "POST"
        assert str(request.url) == "http://api.test" + OPEN311_PATH
        assert request.headers["Authorization"] == "Bearer secret-token"
        assert request.headers["Idempotency-Key"] == r.external_id
        assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
        assert dict(urllib.parse.parse_qsl(request.content.decode())) == open311_form(r)
    # Hotline: keyed by external id, received when the scenario says.
    hotline = [r for r in expected if r.channel == "hotline"]
    assert [k for _, k, _ in producer.sent] == [r.external_id.encode() for r in hotline]
    assert {t for t, _, _ in producer.sent} == {"t.cityops.cases.inbound"}
    for (_, _, value), r in zip(producer.sent, hotline, strict=True):
        case = HotlineCase.model_validate_json(value)
        assert case.received_at is not None
        assert case.received_at.timestamp() == pytest.approx(T0 + r.t)


def test_simulator_backs_off_and_retries_when_the_api_is_down(
    city: CityLayers, categories: Categories
) -> None:
    model = model_of(city, categories, base_rate=2.0)
    expected = model_of(city, categories, base_rate=2.0).reports(0.0, 60.0)
    api, producer, clock = Api(down_calls=6), FakeProducer(), FakeClock()
    stats = simulator(model, api, producer, clock).run(duration_s=60.0)
    n_open311 = sum(r.channel == "open311" for r in expected)
    assert stats.open311_sent == stats.open311_accepted == n_open311
    assert stats.dropped == 0
    # Sent in order, each once, after the outage.
    ids = [r.headers["Idempotency-Key"] for r in api.requests]
    assert ids == [r.external_id for r in expected if r.channel == "open311"]
    # Back-off: 6 failed attempts took 0.5 + 1 + 2 + 4 + 8 s, not 6 ticks.
    assert api.calls == n_open311 + 6
    # The hotline carried on meanwhile.
    assert stats.hotline_sent == len(expected) - n_open311


def test_simulator_retries_service_unavailable(city: CityLayers, categories: Categories) -> None:
    answers = iter([503, 503, 429])

    def api(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(answers, 201), json=[{"service_request_id": "x"}])

    model = model_of(city, categories, base_rate=2.0, open311_share=1.0)
    stats = simulator(model, api, FakeProducer(), FakeClock()).run(duration_s=30.0)
    assert stats.open311_sent == stats.open311_accepted == stats.generated > 0
    assert stats.open311_rejected == stats.dropped == 0


def test_simulator_counts_what_it_drops_when_the_api_stays_down(
    city: CityLayers, categories: Categories
) -> None:
    model = model_of(city, categories, base_rate=2.0)
    api, producer = Api(down_calls=10**9), FakeProducer()
    stats = simulator(model, api, producer, FakeClock(), max_pending=20).run(duration_s=60.0)
    n_open311 = stats.generated - stats.hotline_sent
    assert n_open311 > 20
    assert stats.open311_sent == 0
    assert stats.dropped == n_open311
    assert stats.hotline_sent == len(producer.sent) > 0
    # Backed off to at most one attempt per max_backoff_s, not one per tick.
    assert api.calls < 15


def test_simulator_retries_kafka_refusals_and_counts_failed_deliveries(
    city: CityLayers, categories: Categories
) -> None:
    model = model_of(city, categories, base_rate=2.0, open311_share=0.0)
    expected = model_of(city, categories, base_rate=2.0).reports(0.0, 30.0)
    doomed = frozenset({expected[1].external_id})
    producer = FakeProducer(refuse=3, fail=doomed)
    stats = simulator(model, Api(), producer, FakeClock()).run(duration_s=30.0)
    assert stats.hotline_sent == len(producer.sent) == len(expected)
    assert stats.hotline_failed == 1
    assert stats.hotline_acked == len(expected) - 1
    assert stats.dropped == 0


def test_simulator_stops_on_event(city: CityLayers, categories: Categories) -> None:
    model = model_of(city, categories, base_rate=2.0)
    stop, clock = threading.Event(), FakeClock()
    clock.on_sleep = lambda now: stop.set() if now >= T0 + 20.0 else None
    stats = simulator(model, Api(), FakeProducer(), clock).run(stop_event=stop)
    assert stats.elapsed_s == pytest.approx(20.0)
    assert stats.sent == stats.generated == len(model.reports(0.0, 20.0))


def test_simulator_follows_the_scenario_clock(city: CityLayers, categories: Categories) -> None:
    """Started 100 s into the scenario, it files the reports of scenario seconds 100..110."""
    model = model_of(city, categories, base_rate=2.0, open311_share=0.0)
    producer, clock = FakeProducer(), FakeClock()
    sim = simulator(model, Api(), producer, clock, scenario_start=T0 - 100.0)
    sim.run(duration_s=10.0)
    expected = model_of(city, categories, base_rate=2.0).reports(100.0, 110.0)
    assert [k for _, k, _ in producer.sent] == [r.external_id.encode() for r in expected]


def test_simulator_from_settings(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "city", sim_sensors=40, kafka_topic_prefix="p.")
    clock, producer = FakeClock(), FakeProducer()
    sim = CitizenSimulator.from_settings(
        settings,
        token="tok",
        producer=producer,
        params=CitizenParams(base_rate=2.0),
        clock=clock.time,
        sleep=clock.sleep,
        transport=httpx.MockTransport(Api()),
    )
    assert sim.topic == "p.cityops.cases.inbound"
    assert sim.base_url == "http://127.0.0.1:8000"
    assert sim.model.id_prefix.startswith(f"sim-{settings.city_seed}-")
    stats = sim.run(duration_s=10.0)
    assert stats.sent == stats.generated > 0
