"""simulations/: the demo city, the scenarios and the SenML gateway simulator."""

from __future__ import annotations

import doctest
import logging
import math
import re
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import geopandas as gpd
import numpy as np
import orjson
import pandas as pd
import pytest
import shapely
import yaml
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

import simulations.gateways
import simulations.scenarios
from core.case.categories import load_categories
from core.sensor.senml import Limits, decode
from core.sensor.telemetry import SENSOR_TYPES, UNIT_CONVERSIONS
from gis.assign import GridIndex
from gis.china import to_wgs84_named
from gis.crs import METRIC_CRS, distance_m
from gis.layers import CityLayers, load_layers
from infra.settings import Settings
from simulations.city import DEPARTMENTS, RIVERSIDE_DISTRICTS, ensure_city, generate_city
from simulations.gateways import (
    SENML_UNITS,
    GatewaySimulator,
    MqttParams,
    TokenBucket,
    gateway_password,
    senml_payload,
    status_topic,
    telemetry_topic,
)
from simulations.scenarios import (
    SCENARIOS,
    Baseline,
    Fleet,
    Rainstorm,
    device_readings,
    make_scenario,
)

SEED = 7
N_SENSORS = 600
ALARM_CM, CLEAR_CM, CRITICAL_CM = 50.0, 40.0, 80.0  # the water-level rules' thresholds


@pytest.fixture(scope="module")
def city_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("city")
    generate_city(SEED, N_SENSORS, out)
    return out


@pytest.fixture(scope="module")
def city(city_dir: Path) -> CityLayers:
    return load_layers(city_dir)


@pytest.fixture(scope="module")
def fleet(city: CityLayers) -> Fleet:
    return Fleet.from_sensors(city.sensors)


# --- the generated city ----------------------------------------------------------------


def test_generation_is_deterministic(city_dir: Path, tmp_path: Path) -> None:
    generate_city(SEED, N_SENSORS, tmp_path)
    for name in ("districts", "grid", "jurisdictions", "sensors"):
        file = f"{name}.geojson"
        assert (tmp_path / file).read_bytes() == (city_dir / file).read_bytes(), file
    assert (tmp_path / "city.yaml").read_text() == (city_dir / "city.yaml").read_text()


def test_another_seed_gives_another_city(city: CityLayers, tmp_path: Path) -> None:
    other = generate_city(SEED + 1, N_SENSORS, tmp_path)
    assert not other.sensors.geometry.geom_equals(city.sensors.geometry).all()
    assert not other.districts.geometry.geom_equals(city.districts.geometry).all()


def test_districts(city: CityLayers) -> None:
    assert len(city.districts) == 6
    assert city.districts.district_code.str.fullmatch(r"3101\d\d").all()
    assert set(RIVERSIDE_DISTRICTS) <= set(city.districts.district_code)
    assert city.districts.name_zh.str.endswith("区").all()
    lon, lat = city.districts.union_all().centroid.coords[0]
    assert lon == pytest.approx(121.47, abs=0.01)
    assert lat == pytest.approx(31.23, abs=0.01)


def test_grid_cells(city: CityLayers) -> None:
    grid = city.grid
    assert len(grid) >= 3_000
    assert grid.grid_code.str.fullmatch(r"\d{15}").all()
    assert grid.grid_code.is_unique
    assert (grid.grid_code.str[:6] == grid.district_code).all()
    # Every cell lies inside its own district.
    districts = city.districts.set_index("district_code").geometry
    own = districts.loc[grid.district_code].to_numpy()
    assert shapely.covers(own, grid.geometry.to_numpy()).all()
    # The cells tile the districts: no overlap (sum of areas = area of union), no gap.
    # Planar lon/lat areas, in which the lattice is exactly straight.
    cell_area = shapely.area(grid.geometry.to_numpy()).sum()
    assert cell_area == pytest.approx(shapely.area(grid.union_all()), rel=1e-9)
    assert cell_area == pytest.approx(shapely.area(city.districts.union_all()), rel=1e-9)
    cell_side_m = math.sqrt(grid.to_crs(METRIC_CRS).area.median())
    assert cell_side_m == pytest.approx(150, rel=0.01)


def test_jurisdictions(city: CityLayers) -> None:
    jur = city.jurisdictions
    assert len(jur) == 6 * len(DEPARTMENTS)
    assert set(jur.department_type) == {
        "water",
        "environment",
        "roads",
        "lighting",
        "sanitation",
        "traffic",
        "urban_management",
    }
    assert jur.department_code.str.fullmatch(r"\d{6}-[a-z_]+").all()
    # Every service-case category can be dispatched by polygon in the demo city.
    categories = load_categories()
    assert {c.department_type for c in categories} <= set(jur.department_type)
    water = jur[jur.department_type == "water"]
    assert water.name_zh.str.endswith("水务局").all()


def test_sensors(city: CityLayers) -> None:
    sensors = city.sensors
    assert len(sensors) == N_SENSORS
    assert sensors.sensor_type.value_counts().to_dict() == {t: N_SENSORS // 4 for t in SENSOR_TYPES}
    assert sensors.device_id.str.fullmatch(r"(wl|pm|mh|sl)-\d{6}").all()
    assert "wl-000001" in set(sensors.device_id)
    assert sensors.gateway_id.str.fullmatch(r"gw-\d{6}-\d{2}").all()
    assert (sensors.gateway_id.str[3:9] == sensors.district_code).all()
    assert sensors.gateway_id.value_counts().max() <= 200


def test_every_sensor_is_inside_its_grid_cell(city: CityLayers) -> None:
    cells = city.grid.set_index("grid_code").geometry
    own_cell = cells.loc[city.sensors.grid_code].to_numpy()
    assert shapely.contains(own_cell, city.sensors.geometry.to_numpy()).all()
    lon, lat = city.sensors.geometry.x.to_numpy(), city.sensors.geometry.y.to_numpy()
    assert (GridIndex(city.grid).assign(lon, lat) == city.sensors.grid_code.to_numpy()).all()


def test_manifest(city_dir: Path) -> None:
    manifest = yaml.safe_load((city_dir / "city.yaml").read_text())
    assert manifest["seed"] == SEED
    assert manifest["version"] == 2
    assert manifest["counts"]["sensors"] == N_SENSORS
    assert manifest["counts"]["grid_cells"] >= 3_000


def test_generate_geopackage_and_ensure_city(tmp_path: Path) -> None:
    generated = generate_city(3, 40, tmp_path / "gpkg", fmt="gpkg")
    assert (tmp_path / "gpkg" / "city.gpkg").is_file()
    assert len(load_layers(tmp_path / "gpkg").sensors) == 40

    settings = Settings(data_dir=tmp_path / "ensured", city_seed=3, sim_sensors=40)
    first = ensure_city(settings)
    assert (tmp_path / "ensured" / "sensors.geojson").is_file()
    again = ensure_city(settings)
    assert again.sensors.device_id.tolist() == first.sensors.device_id.tolist()
    assert again.sensors.geometry.geom_equals(generated.sensors.geometry).all()


def test_ensure_city_keeps_existing_data_and_warns_on_other_settings(
    city_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(data_dir=city_dir, city_seed=SEED + 1, sim_sensors=N_SENSORS)
    with caplog.at_level(logging.WARNING, logger="simulations.city"):
        layers = ensure_city(settings)
    assert len(layers.sensors) == N_SENSORS
    assert "using it as is" in caplog.text


def test_ensure_city_regenerates_what_an_older_generator_made(tmp_path: Path) -> None:
    generate_city(SEED, N_SENSORS, tmp_path)
    manifest_path = tmp_path / "city.yaml"
    manifest = yaml.safe_load(manifest_path.read_text(encoding="utf-8"))
    manifest["version"] = 1
    manifest_path.write_text(yaml.safe_dump(manifest), encoding="utf-8")
    (tmp_path / "jurisdictions.geojson").write_text(
        '{"type": "FeatureCollection", "features": []}', encoding="utf-8"
    )
    layers = ensure_city(Settings(data_dir=tmp_path, city_seed=SEED, sim_sensors=N_SENSORS))
    assert len(layers.jurisdictions) == 6 * len(DEPARTMENTS)
    assert yaml.safe_load(manifest_path.read_text(encoding="utf-8"))["version"] == 2


def test_generate_rejects_too_few_sensors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 4"):
        generate_city(1, 3, tmp_path)


# --- scenarios -------------------------------------------------------------------------


def water_level(fleet: Fleet, scenario: Rainstorm | Baseline, t: float) -> np.ndarray:
    return scenario.values(fleet, t)["water_level"]


def test_baseline_values_are_plausible(fleet: Fleet) -> None:
    values = Baseline(seed=1).values(fleet, 30.0)
    expected_mean = {"water_level": 20, "pm25": 35, "tilt": 1, "power": 100, "temperature": 18}
    for metric, mean in expected_mean.items():
        assert np.nanmean(values[metric]) == pytest.approx(mean, rel=0.1), metric
    assert np.nanmax(values["water_level"]) < CLEAR_CM
    assert 90 < np.nanmean(values["battery"]) <= 95.5
    # Each device reports exactly its type's metrics.
    for stype, metrics in SENSOR_TYPES.items():
        mine = fleet.of_type(stype)
        for metric, array in values.items():
            assert np.isnan(array[mine]).all() == (metric not in metrics), (stype, metric)


def test_battery_drains(fleet: Fleet) -> None:
    scenario = Baseline(seed=1)
    now, later = scenario.values(fleet, 0.0), scenario.values(fleet, 10 * 3600.0)
    assert (later["battery"] < now["battery"]).all()


def test_scenarios_are_pure_functions_of_seed_device_and_time(fleet: Fleet) -> None:
    storm = Rainstorm(seed=5)
    a = storm.values(fleet, 400.0)
    b = storm.values(fleet, 400.0)
    for metric in a:
        np.testing.assert_array_equal(a[metric], b[metric])
    assert not np.array_equal(a["pm25"], Rainstorm(seed=6).values(fleet, 400.0)["pm25"])
    # A device reads the same in a smaller fleet: simulators can split the fleet.
    half = Fleet.from_sensors(load_subset(fleet, slice(0, None, 2)))
    np.testing.assert_array_equal(storm.values(half, 400.0)["water_level"], a["water_level"][::2])


def load_subset(fleet: Fleet, rows: slice) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "device_id": fleet.device_id[rows],
            "sensor_type": fleet.sensor_type[rows],
            "gateway_id": fleet.gateway_id[rows],
            "district_code": fleet.district_code[rows],
        }
    )


def test_rainstorm_floods_affected_districts_only_then_recedes(fleet: Fleet) -> None:
    storm = Rainstorm(affected_districts=("310101",), seed=SEED)
    water = fleet.of_type("water_level")
    affected = water & (fleet.district_code == "310101")
    elsewhere = water & ~affected
    assert affected.sum() > 10

    before = water_level(fleet, storm, storm.start_s - 1)
    assert np.nanmax(before) < CLEAR_CM

    peak_times = [storm.start_s + storm.ramp_s + dt for dt in (0, 10, 20)]
    for t in peak_times:  # consecutive readings above the alarm threshold
        level = water_level(fleet, storm, t)
        assert (level[affected] > ALARM_CM).all()
        assert (level[affected] > CRITICAL_CM).any()
        assert level[affected].max() < 100
        assert (level[elsewhere] < CLEAR_CM).all()

    halfway = water_level(fleet, storm, storm.start_s + storm.ramp_s / 2)
    assert np.median(halfway[affected]) < np.median(
        water_level(fleet, storm, peak_times[0])[affected]
    )

    after = water_level(fleet, storm, storm.end_s + 1)
    assert (after[water] < CLEAR_CM).all()


def test_rainstorm_changes_only_water_levels(fleet: Fleet) -> None:
    storm, calm = Rainstorm(seed=2), Baseline(seed=2)
    t = storm.start_s + storm.ramp_s
    stormy, quiet = storm.values(fleet, t), calm.values(fleet, t)
    for metric in ("pm25", "tilt", "power", "battery", "temperature"):
        np.testing.assert_array_equal(stormy[metric], quiet[metric])


def test_scenario_registry() -> None:
    assert {"baseline", "rainstorm"} <= set(SCENARIOS)
    assert isinstance(make_scenario("rainstorm", 3), Rainstorm)
    with pytest.raises(ValueError, match="choose one of baseline, rainstorm"):
        make_scenario("earthquake", 3)


def test_device_readings(fleet: Fleet) -> None:
    readings = device_readings(fleet, Baseline(seed=1).values(fleet, 0.0))
    assert set(readings["wl-000001"]) == set(SENSOR_TYPES["water_level"])
    assert set(readings["sl-000001"]) == set(SENSOR_TYPES["streetlight_power"])


# --- SenML -----------------------------------------------------------------------------

SENML_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:./_-]*$")  # RFC 8428 section 4.5.1


def test_senml_payload_is_rfc8428() -> None:
    raw = senml_payload(
        "wl-000042",
        1763700000.0,
        {"water_level": (38.5, "cm"), "battery": (91, "%EL"), "temperature": (18.2, "Cel")},
    )
    pack = orjson.loads(raw)
    assert pack == [
        {"bn": "wl-000042:", "bt": 1763700000.0, "n": "water_level", "u": "cm", "v": 38.5},
        {"n": "battery", "u": "%EL", "v": 91.0},
        {"n": "temperature", "u": "Cel", "v": 18.2},
    ]
    base_name = pack[0]["bn"]
    for record in pack:
        assert set(record) <= {"bn", "bt", "n", "u", "v"}
        assert SENML_NAME.match(base_name + record["n"])
        assert isinstance(record["v"], float)


@pytest.mark.parametrize("module", [simulations.scenarios, simulations.gateways])
def test_doc_examples_run(module: ModuleType) -> None:
    assert doctest.testmod(module).failed == 0


def test_senml_units_are_accepted_by_the_telemetry_contract() -> None:
    for metric, unit in SENML_UNITS.items():
        assert unit in UNIT_CONVERSIONS[metric], metric


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "high"])
def test_senml_payload_rejects_non_numbers(bad: Any) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - float("high") raises a bare ValueError
        senml_payload("wl-000001", 0.0, {"water_level": (bad, "cm")})


def test_senml_payload_needs_a_metric() -> None:
    with pytest.raises(ValueError, match="at least one metric"):
        senml_payload("wl-000001", 0.0, {})


def test_topics() -> None:
    assert telemetry_topic("gw-1", "wl-1") == "cityops/gw-1/wl-1/telemetry"
    assert status_topic("gw-1", "wl-1") == "cityops/gw-1/wl-1/status"


# --- gateway simulator (with an in-memory MQTT client) ---------------------------------


class Published(NamedTuple):
    client_id: str
    topic: str
    payload: bytes
    qos: int


class FakeInfo:
    def __init__(self, mid: int) -> None:
        self.mid, self.rc = mid, 0

    def wait_for_publish(self, timeout: float | None = None) -> None:
        return None

    def is_published(self) -> bool:
        return True


class FakeClient:
    """Records publishes and acknowledges each at once, as a broker would."""

    def __init__(self, client_id: str, log: list[Published]) -> None:
        self.client_id = client_id
        self.log = log  # shared by all clients: the order of publication
        self.on_publish: Any = None
        self.connected = True

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> FakeInfo:
        self.log.append(Published(self.client_id, topic, payload, qos))
        info = FakeInfo(len(self.log))
        if self.on_publish is not None:
            self.on_publish(
                self, None, info.mid, ReasonCode(PacketTypes.PUBACK, identifier=0), None
            )
        return info

    def disconnect(self) -> None:
        self.connected = False

    def loop_stop(self) -> None:
        return None


def make_simulator(
    fleet: Fleet, rate: float = 1e6, **kwargs: Any
) -> tuple[GatewaySimulator, list[FakeClient]]:
    clients: list[FakeClient] = []
    log: list[Published] = []

    def factory(client_id: str) -> Any:
        clients.append(FakeClient(client_id, log))
        return clients[-1]

    sim = GatewaySimulator(
        fleet, Rainstorm(seed=1), MqttParams(), rate=rate, client_factory=factory, **kwargs
    )
    return sim, clients


def telemetry(clients: list[FakeClient]) -> list[Published]:
    return [m for m in clients[0].log if m.topic.endswith("/telemetry")]


def test_simulator_publishes_one_message_per_device_per_round(fleet: Fleet) -> None:
    sim, clients = make_simulator(fleet, clock=lambda: 1763700000.0, max_connections=3)
    stats = sim.run(max_messages=len(fleet) + 5)
    assert stats.published == stats.acked == len(fleet) + 5 == sim.published == sim.acked
    assert len(clients) == 3
    sent = telemetry(clients)
    assert len(sent) == len(fleet) + 5
    first_round = {m.topic.split("/")[2] for m in sent[: len(fleet)]}
    assert first_round == set(fleet.device_id)
    assert all(m.qos == 1 for m in sent)
    # Each gateway keeps to one connection; all connections carry traffic.
    connection_of = {m.topic.split("/")[1]: m.client_id for m in sent}
    assert all(connection_of[m.topic.split("/")[1]] == m.client_id for m in sent)
    assert set(connection_of.values()) == {c.client_id for c in clients}


def test_simulator_payloads_follow_the_contract(fleet: Fleet) -> None:
    sim, clients = make_simulator(fleet, clock=lambda: 1763700000.0)
    sim.run(max_messages=50)
    gateway_of = dict(zip(fleet.device_id, fleet.gateway_id, strict=True))
    type_of = dict(zip(fleet.device_id, fleet.sensor_type, strict=True))
    for message in telemetry(clients):
        _, gateway, device, _ = message.topic.split("/")
        assert gateway_of[device] == gateway
        pack = orjson.loads(message.payload)
        assert pack[0]["bn"] == f"{device}:"
        assert pack[0]["bt"] == 1763700000.0
        assert [r["n"] for r in pack] == list(SENSOR_TYPES[type_of[device]])


def test_simulator_announces_status(fleet: Fleet) -> None:
    sim, clients = make_simulator(fleet)
    sim.run(max_messages=1)
    statuses = [m.payload for m in clients[0].log if m.topic.endswith("/status")]
    assert len(statuses) == 2 * len(fleet)
    assert statuses[: len(fleet)] == [b"online"] * len(fleet)
    assert statuses[len(fleet) :] == [b"offline"] * len(fleet)
    assert all(not c.connected for c in clients)
    # Without a coordinate system for them, no positions.
    assert not [m for m in clients[0].log if m.topic.endswith("/location")]


@pytest.mark.parametrize("system", ["gcj02", "bd09"])
def test_online_devices_say_where_they_are_and_the_decoder_puts_them_back(
    fleet: Fleet, system: str
) -> None:
    sim, clients = make_simulator(fleet, location_coord_system=system)
    sim.run(max_messages=1)
    sent = [m for m in clients[0].log if m.topic.endswith("/location")]
    assert len(sent) == len(fleet)
    assert fleet.lonlat is not None
    index = {d: i for i, d in enumerate(fleet.device_id.tolist())}
    gateway_of = dict(zip(fleet.device_id.tolist(), fleet.gateway_id.tolist(), strict=True)).get
    for m in sent:
        message = decode(m.topic, m.payload, time.time(), gateway_of, Limits(), to_wgs84_named)
        assert message.location is not None
        assert message.location.coord_system == system
        i = index[message.device_id]
        lon, lat = fleet.lonlat[i]
        # Sent in the offset system (hundreds of metres away), six decimals: back within 1 m.
        body = orjson.loads(m.payload)
        assert distance_m(body["lon"], body["lat"], lon, lat) > 100
        assert distance_m(message.location.lon, message.location.lat, lon, lat) < 1.0


def test_simulator_paces_at_the_requested_rate(fleet: Fleet) -> None:
    sim, _ = make_simulator(fleet, rate=2_000, announce_status=False)
    stats = sim.run(max_messages=600)
    assert stats.published == 600
    assert 0.25 <= stats.elapsed_s < 1.0


def test_simulator_stops_on_event_and_duration(fleet: Fleet) -> None:
    sim, _ = make_simulator(fleet, rate=1_000, announce_status=False)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    stats = sim.run(stop_event=stop)
    assert time.monotonic() - started < 1.0
    assert 50 < stats.published < 600

    sim, _ = make_simulator(fleet, rate=1_000, announce_status=False)
    assert 50 < sim.run(duration_s=0.2).published < 600


def test_token_bucket_batches_without_sleeping_per_message() -> None:
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(10_000, monotonic=lambda: now[0], sleep=sleep)
    taken = 0
    while taken < 10_000:
        taken += bucket.take(10_000 - taken)
    assert now[0] == pytest.approx(1.0, abs=0.02)
    assert len(sleeps) <= 101  # a batch per 10 ms tick, not a sleep per message


def test_mqtt_params() -> None:
    settings = Settings(mqtt_host="broker", mqtt_port=1884, mqtt_protocol=3)
    params = MqttParams.from_settings(settings)
    assert (params.host, params.port, params.protocol) == ("broker", 1884, 3)
    with pytest.raises(ValueError, match="5, 4 or 3"):
        MqttParams(protocol=6)


def test_mqtt_params_take_the_simulators_account_and_hide_passwords() -> None:
    # One environment for every process (the demo): the bridge's account is the process's
    # own, the simulator has its own beside it.
    shared = Settings(
        mqtt_username="cityops-bridge",
        mqtt_password="pw-of-the-bridge",
        sim_mqtt_username="cityops-simulator",
        sim_mqtt_password="pw-of-the-simulator",
        sim_gateway_secret=None,
    )
    params = MqttParams.from_settings(shared)
    assert (params.username, params.password) == ("cityops-simulator", "pw-of-the-simulator")
    assert not params.gateway_secret
    # Compose: the simulator's process has its own CITYOPS_MQTT_USERNAME.
    alone = shared.model_copy(update={"sim_mqtt_username": "", "sim_mqtt_password": ""})
    assert MqttParams.from_settings(alone).username == "cityops-bridge"
    for shown in (repr(params), str(params), repr(shared), str(shared)):
        assert "pw-of-the" not in shown
    with pytest.raises(ValueError, match="gateway secret"):
        params.for_gateway("gw-1")


def test_simulator_logs_in_as_each_gateway_given_a_gateway_secret(fleet: Fleet) -> None:
    settings = Settings(sim_mqtt_username="cityops-simulator", sim_gateway_secret="k-42")
    params = MqttParams.from_settings(settings)
    assert "k-42" not in repr(params)
    log: list[Published] = []
    clients: dict[str, FakeClient] = {}

    def factory(client_id: str) -> Any:
        clients[client_id] = FakeClient(client_id, log)
        return clients[client_id]

    sim = GatewaySimulator(
        fleet, Rainstorm(seed=1), params, rate=1e6, max_connections=2, client_factory=factory
    )
    gateways = sorted(set(fleet.gateway_id.tolist()))
    # A connection carries one login: one per gateway, whatever max_connections says.
    assert sim.n_connections == len(gateways) > 2
    logins = [(p.username, p.password) for p in sim.connection_params]
    assert logins == [(g, gateway_password("k-42", g)) for g in gateways]
    assert len({password for _, password in logins}) == len(gateways)
    sim.run(max_messages=len(fleet))
    # Each connection publishes under one gateway's topics only: the one it logs in as.
    ids = sorted(clients)
    gateway_of_connection = {ids[k]: gateways[k] for k in range(len(gateways))}
    assert {(m.client_id, m.topic.split("/")[1]) for m in log} == set(gateway_of_connection.items())


def test_fleet_rejects_unknown_sensor_types(city: CityLayers) -> None:
    sensors = city.sensors.copy()
    sensors.loc[0, "sensor_type"] = "seismograph"
    with pytest.raises(ValueError, match="seismograph"):
        Fleet.from_sensors(gpd.GeoDataFrame(sensors))
