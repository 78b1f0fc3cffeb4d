"""Composition root: builds every application, adapter and worker from settings.

Nothing connects at import time; each ``run_*`` function owns what it opens.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from typing import TYPE_CHECKING

import psycopg

from core.app import CityApp
from core.case.catalogue import Catalogue, load_catalogue
from core.case.categories import Categories, load_categories
from core.personal import PersonalData
from core.sensor import SensorSpec
from core.sensor.rules import DEPARTMENT_TYPE, RuleSet, load_rules
from infra import kafka as topics
from infra.pgstore import (
    DATABASE_UNAVAILABLE,
    apply_audit_schema,
    apply_schema,
    describe,
    eventstore_env,
    make_pool,
)
from infra.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI
    from kafka import KafkaProducer
    from psycopg_pool import ConnectionPool

    from api.deps import Container
    from core.brain.correlation import CorrelationPolicy
    from core.case.desk import Department, Locator, NearbyCases, Place, ServiceDesk
    from core.incident.desk import IncidentDesk
    from gis.layers import CityLayers
    from projections.runner import SqlProjection
    from workers.follower import LogFollower

log = logging.getLogger(__name__)


def as_owner(settings: Settings) -> Settings:
    """The settings with the schema owner's URL (``admin_database_url``) as the database
    URL: for DDL only, every other statement runs as the application's role."""
    if not settings.admin_database_url:
        return settings
    return settings.model_copy(update={"database_url": settings.admin_database_url})


def create_event_tables(settings: Settings) -> None:
    """The event store's tables and the log's chain and guards, as the schema owner."""
    owner = as_owner(settings)
    CityApp(env=eventstore_env(owner, 1, create_tables=True)).close()
    with psycopg.connect(owner.database_url) as conn:
        apply_audit_schema(conn)


def city_app(
    settings: Settings, pool_size: int | None = None, *, create_tables: bool = False
) -> CityApp:
    if create_tables:
        create_event_tables(settings)
    return CityApp(env=eventstore_env(settings, pool_size))


@contextmanager
def _pool_and_app(settings: Settings) -> Iterator[tuple[ConnectionPool, CityApp]]:
    """A pool of two connections and the city app, closed (app first) on the way out."""
    with (
        closing(make_pool(settings, max_size=2)) as pool,
        closing(city_app(settings, pool_size=2)) as app,
    ):
        yield pool, app


@contextmanager
def _pool_and_producer(
    settings: Settings, max_size: int = 2
) -> Iterator[tuple[ConnectionPool, KafkaProducer]]:
    """A pool of ``max_size`` connections and a Kafka producer, closed (producer first)."""
    with (
        closing(make_pool(settings, max_size=max_size)) as pool,
        closing(topics.make_producer(settings)) as producer,
    ):
        yield pool, producer


def personal_data(settings: Settings, pool: ConnectionPool) -> PersonalData:
    from infra.vault import PgKeyStore

    return PersonalData(PgKeyStore(pool), settings.pii_pepper.get_secret_value().encode())


def service_desk(
    settings: Settings,
    city: CityApp,
    pool: ConnectionPool,
    layers: CityLayers | None = None,
    nearby: NearbyCases | None = None,
) -> ServiceDesk:
    """The service network's commands over the city log, with its ports wired."""
    from core.case.desk import ServiceDesk
    from gis.locator import CityLocator
    from projections.case_queries import CaseQueries

    categories = load_categories(settings.categories_file)
    return ServiceDesk(
        city,
        categories,
        CityLocator(layers if layers is not None else city_layers(settings)),
        personal_data(settings, pool),
        nearby=nearby if nearby is not None else CaseQueries(pool),
        auto_accept=settings.cases_auto_accept,
        correlated=frozenset(
            c for rule in correlation_policy(settings).rules for c in rule.case_categories
        ),
        catalogue=catalogue(settings, categories),
        recent=settings.cases_kept,
    )


def catalogue(settings: Settings, categories: Categories | None = None) -> Catalogue:
    """The responsibility catalogue, checked against the categories (read from the
    settings' file unless given)."""
    known = categories if categories is not None else load_categories(settings.categories_file)
    return load_catalogue(settings.catalogue_file, (c.code for c in known))


def ruleset(settings: Settings) -> RuleSet:
    return load_rules(settings.rules_file)


def city_layers(settings: Settings) -> CityLayers:
    from simulations.city import ensure_city

    return ensure_city(settings)


class LazyLocator:
    """The city's ``Locator``, its layers loaded on first use: a telemetry process needs
    them only when a device reports that it moved."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @functools.cached_property
    def _locator(self) -> Locator:
        from gis.locator import CityLocator

        return CityLocator(city_layers(self.settings))

    def place(self, lon: float, lat: float) -> Place | None:
        return self._locator.place(lon, lat)

    def department_for(self, lon: float, lat: float, department_type: str) -> str | None:
        return self._locator.department_for(lon, lat, department_type)

    def departments(self) -> dict[str, Department]:
        return self._locator.departments()


class DeviceRegistry:
    """The gateway a device is registered under (None: not registered).

    Cached: a device's gateway is fixed when it is registered; misses are re-checked
    after ``ttl`` seconds.
    """

    def __init__(self, app: CityApp, ttl: float = 30.0) -> None:
        self.app = app
        self.ttl = ttl
        self.known: dict[str, str] = {}
        self.unknown: dict[str, float] = {}
        self.lock = threading.Lock()

    def __call__(self, device_id: str) -> str | None:
        gateway = self.known.get(device_id)
        if gateway is not None:
            return gateway
        now = time.monotonic()
        with self.lock:
            checked = self.unknown.get(device_id)
            if checked is not None and now - checked < self.ttl:
                return None
        found = self.app.gateway_of(device_id)
        with self.lock:
            if found is not None:
                self.known[device_id] = found
                self.unknown.pop(device_id, None)
            elif len(self.unknown) < 100_000:  # bound memory under a flood of bogus ids
                self.unknown[device_id] = now
        return found


def sensor_specs(layers: CityLayers) -> list[SensorSpec]:
    """Sensors of the reference layers, placed on the grid and given their department."""
    import pandas as pd

    from gis.assign import Jurisdictions

    jur = Jurisdictions(layers.jurisdictions)
    df = layers.sensors
    specs = []
    for row in df.itertuples(index=False):
        lon, lat = float(row.geometry.x), float(row.geometry.y)
        specs.append(
            SensorSpec(
                device_id=str(row.device_id),
                sensor_type=str(row.sensor_type),
                gateway_id=str(row.gateway_id),
                lon=lon,
                lat=lat,
                grid_code=None if pd.isna(row.grid_code) else str(row.grid_code),
                district_code=None if pd.isna(row.district_code) else str(row.district_code),
                department_code=jur.department_for(lon, lat, DEPARTMENT_TYPE[row.sensor_type]),
            )
        )
    return specs


def seed(settings: Settings) -> dict[str, int]:
    """Create schemas and topics, load the reference city, register its sensors.

    Tables are created as the schema owner (``admin_database_url``); the sensors are
    registered as the application's role, like every later event.
    """
    with closing(make_pool(as_owner(settings), max_size=2)) as pool, pool.connection() as conn:
        timescale = apply_schema(conn, settings)
    topics.ensure_topics(settings)
    layers = city_layers(settings)
    with closing(city_app(settings, pool_size=2, create_tables=True)) as app:
        correlation_id = f"seed:{uuid.uuid4()}"
        new = app.register_sensors(
            sensor_specs(layers), actor="system:seed", correlation_id=correlation_id
        )
        published = app.publish_catalogue(
            catalogue(settings), actor="system:seed", correlation_id=correlation_id
        )
    return {
        "sensors": len(layers.sensors),
        "registered": new,
        "catalogue_published": int(published),
        "timescale": int(timescale),
    }


def run_writer(
    settings: Settings, stop: threading.Event, group_id: str = "telemetry-writer"
) -> None:
    from sensors.writer import TelemetryWriter

    with _pool_and_producer(settings) as (pool, producer):
        TelemetryWriter(settings, pool, producer, group_id=group_id).run(stop)


def run_maintain(settings: Settings, stop: threading.Event) -> None:
    """TimescaleDB's policy jobs, as the schema owner (the jobs' owner may run them)."""
    from infra.timescale_jobs import run_maintainer

    run_maintainer(as_owner(settings), stop)


def run_monitor(
    settings: Settings, stop: threading.Event, group_id: str = "sensor-monitor"
) -> None:
    from sensors.monitor import SensorMonitor

    with (
        _pool_and_producer(settings) as (pool, producer),
        closing(city_app(settings, pool_size=3)) as app,
    ):
        SensorMonitor(
            settings,
            app,
            ruleset(settings),
            pool,
            producer,
            group_id=group_id,
            locator=LazyLocator(settings),
        ).run(stop)


def run_telemetry(settings: Settings, stop: threading.Event, group_id: str = "telemetry") -> None:
    """The writer and the monitor on one consumer (``sensors.consumer``), one process."""
    from sensors.consumer import TelemetryConsumer
    from sensors.monitor import SensorMonitor
    from sensors.writer import TelemetryWriter

    with (
        _pool_and_producer(settings) as (pool, producer),
        closing(city_app(settings, pool_size=3)) as app,
    ):
        writer = TelemetryWriter(settings, pool, producer)
        monitor = SensorMonitor(
            settings, app, ruleset(settings), pool, producer, locator=LazyLocator(settings)
        )
        TelemetryConsumer(settings, writer, monitor, group_id=group_id).run(stop)


def run_bridge(settings: Settings, stop: threading.Event, client_id: str | None = None) -> None:
    from sensors.bridge import MqttBridge

    app = city_app(settings, pool_size=2)
    producer = topics.make_producer(settings)
    # A stable client id per bridge: its persistent MQTT session (and the QoS 1 messages
    # queued in it while the bridge was down) is picked up again on restart.
    bridge = MqttBridge(
        settings,
        producer,
        DeviceRegistry(app),
        client_id=client_id or settings.mqtt_client_id or f"cityops-bridge-{socket.gethostname()}",
    )
    bridge.start()
    try:
        stop.wait()
    finally:
        bridge.stop()
        producer.close()
        app.close()


def projections() -> list[SqlProjection]:
    """Every read model the projector writes (the live map, the service cases)."""
    from projections.cases import CaseProjection
    from projections.map import MapProjection

    return [MapProjection(), CaseProjection()]


def run_projector(
    settings: Settings,
    stop: threading.Event,
    rebuild: bool = False,
    batch_size: int | None = None,
) -> None:
    """Run every projection until stopped, in batches (one transaction per batch)."""
    from projections.runner import ProjectionWorker

    if rebuild:
        rebuild_projections(settings)
    app = city_app(settings, pool_size=2)
    # The replay's checkpoints are computed from the log beside the views.
    done = threading.Event()  # set when this projector stops, however it stops
    snapshots = threading.Thread(
        target=run_snapshotter, args=(settings, done), name="replay-snapshots", daemon=True
    )
    snapshots.start()
    try:
        worker = ProjectionWorker(
            app,
            settings.database_url,
            projections(),
            batch_size=batch_size or settings.projector_batch,
        )
        worker.run(stop)
    finally:
        done.set()
        snapshots.join(30)
        app.close()


def run_snapshotter(settings: Settings, stop: threading.Event, interval_s: float = 30.0) -> None:
    """Every ``interval_s``, the replay checkpoints missing up to the log's head
    (one every ``settings.replay_snapshot_every`` events; one process at a time)."""
    from projections.replay import snapshot_up_to_head

    with closing(city_app(settings, pool_size=1)) as app:
        while not stop.wait(interval_s):
            try:
                taken = snapshot_up_to_head(
                    settings.database_url,
                    app.mapper,
                    projections(),
                    every=settings.replay_snapshot_every,
                )
            except DATABASE_UNAVAILABLE as exc:
                log.warning(
                    "replay snapshots: database unavailable (%s); retrying in %.0f s",
                    describe(exc),
                    interval_s,
                )
                continue
            except psycopg.Error:
                log.exception("replay snapshots failed; retrying in %.0f s", interval_s)
                continue
            if taken:
                log.info("replay checkpoints taken at %s", taken)


def run_in_thread(
    target: Callable[[threading.Event], None], name: str
) -> tuple[threading.Thread, threading.Event]:
    """Run a worker in a daemon thread (tests and the demo's in-process mode)."""
    stop = threading.Event()
    thread = threading.Thread(target=target, args=(stop,), name=name, daemon=True)
    thread.start()
    return thread, stop


def rebuild_projections(settings: Settings) -> None:
    """Empty the read models and their positions: the projector then replays the log."""
    from projections.runner import reset

    with (
        closing(make_pool(settings, max_size=1)) as pool,
        pool.connection() as conn,
        conn.transaction(),
    ):
        reset(conn, projections())


def run_intake(settings: Settings, stop: threading.Event, group_id: str = "case-intake") -> None:
    """Kafka ``cityops.cases.inbound`` -> service cases (hotline systems)."""
    from workers.intake import CaseIntake

    with (
        _pool_and_producer(settings) as (pool, producer),
        closing(city_app(settings, pool_size=2)) as app,
    ):
        CaseIntake(settings, service_desk(settings, app, pool), producer, group_id).run(stop)


def run_relay(settings: Settings, stop: threading.Event) -> None:
    """The city log -> Kafka cityops.domain-events, each event once, in log order."""
    from workers.relay import DomainEventRelay

    with (
        _pool_and_producer(settings, max_size=1) as (pool, producer),
        closing(city_app(settings, pool_size=2)) as app,
    ):
        DomainEventRelay(settings, app.recorder, pool, producer).run(stop)


def run_sla(settings: Settings, stop: threading.Event) -> None:
    """The SLA clock: due-soon and overdue marks, once per deadline."""
    from projections.case_queries import CaseQueries
    from workers.sla_clock import SlaClock

    with _pool_and_app(settings) as (pool, app):
        desk = service_desk(settings, app, pool)
        SlaClock(
            desk, CaseQueries(pool), settings.sla_poll_s, incidents=incident_desk(settings, app)
        ).run(stop)


def run_simulator(
    settings: Settings,
    stop: threading.Event,
    *,
    rate: float | None = None,
    duration: float | None = None,
    scenario: str | None = None,
) -> None:
    """Drive the demo city's gateways over MQTT until stopped (or for ``duration`` s)."""
    from simulations.gateways import GatewaySimulator, MqttParams
    from simulations.scenarios import Fleet, make_scenario

    layers = city_layers(settings)
    simulator = GatewaySimulator(
        Fleet.from_sensors(layers.sensors),
        make_scenario(scenario or settings.sim_scenario, settings.city_seed),
        MqttParams.from_settings(settings),
        rate=rate or settings.sim_rate,
        location_coord_system=settings.sim_location_coord_system or None,
    )
    stats = simulator.run(duration_s=duration, stop_event=stop)
    log.info("simulator: %s", stats)


def simulators_api_url(settings: Settings) -> str:
    """Where the simulated citizens and staff reach the API: ``CITYOPS_SIM_API_URL``, or
    this host's API (on loopback when it listens on every address)."""
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::") else settings.api_host
    return settings.sim_api_url or f"http://{host}:{settings.api_port}"


def run_citizens(
    settings: Settings, stop: threading.Event, *, duration: float | None = None
) -> None:
    """Citizens filing cases over Open311 and the hotline topic, until stopped."""
    from api.auth import issue_token
    from simulations.citizens import CitizenParams, CitizenSimulator

    # The simulated Open311 app files for callers as an operator would.
    token = issue_token(settings, "citizen-simulator", "operator", ttl_s=30 * 86_400)
    # Block at most 5 s on a broker that is down; the simulator backs off and retries.
    producer = topics.make_producer(settings, client_id="cityops-citizens", max_block_ms=5_000)
    try:
        simulator = CitizenSimulator.from_settings(
            settings,
            token=token,
            base_url=simulators_api_url(settings),
            params=CitizenParams(base_rate=settings.cases_sim_rate),
            producer=producer,
        )
        stats = simulator.run(duration_s=duration, stop_event=stop)
        log.info("citizen simulator: %s", stats)
    finally:
        producer.close()


def run_staff(settings: Settings, stop: threading.Event, *, duration: float | None = None) -> None:
    """Dispatchers, department staff and inspectors working the queues over HTTP."""
    import httpx

    from api.auth import issue_token
    from simulations.staff import Actor, StaffModel, StaffSimulator

    categories = load_categories(settings.categories_file)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise

    def token(actor: Actor) -> str:
        # Each simulated person signs in as themself, as `cityops token` would sign them.
        return issue_token(settings, actor.subject, actor.role, actor.department, 30 * 86_400)

    base_url = simulators_api_url(settings)
    model = StaffModel(
        settings.city_seed, time_limits_h={c.code: c.time_limit_h for c in categories}
    )
    with httpx.Client(base_url=base_url, timeout=10.0) as http:
        simulator = StaffSimulator(
            model,
            http,
            token,
            category_types={c.code: c.department_type for c in categories},
        )
        simulator.run(duration_s=duration, stop_event=stop)


def correlation_policy(settings: Settings) -> CorrelationPolicy:
    from core.brain.correlation import load_policy

    return load_policy(settings.correlation_file)


def incident_desk(settings: Settings, city: CityApp) -> IncidentDesk:
    from core.incident.desk import IncidentDesk

    return IncidentDesk(city, correlation_policy(settings))


def brain_follower(settings: Settings, app: CityApp, pool: ConnectionPool) -> LogFollower:
    """The correlation worker: links reports and incidents as the log grows."""
    from core.brain.correlation import Correlator
    from gis.crs import distance_m
    from projections.nearby import NearbyQueries
    from workers.brain import CORRELATION_EVENTS, CorrelationHandler
    from workers.follower import LogFollower

    nearby = NearbyQueries(pool)
    correlator = Correlator(
        correlation_policy(settings),
        nearby,
        get=app.get_typed,
        exists=app.exists,
        alarm_categories={rule.id: rule.category for rule in ruleset(settings).rules},
        distance_m=distance_m,
    )
    handler = CorrelationHandler(correlator, nearby)
    return LogFollower(app, "urban-brain", CORRELATION_EVENTS, handler, on_recorded=handler.written)


def run_brain(settings: Settings, stop: threading.Event) -> None:
    """Correlation of citizen reports with sensor incidents, until stopped."""
    with _pool_and_app(settings) as (pool, app):
        brain_follower(settings, app, pool).run(stop)


def run_notifier(settings: Settings, stop: threading.Event) -> None:
    """Tell citizens their case was resolved (notification port from settings)."""
    from infra.notify import notifier_from_settings
    from workers.brain import NOTICE_EVENTS, notice_handler
    from workers.follower import LogFollower

    with _pool_and_app(settings) as (pool, app):
        desk = service_desk(settings, app, pool)
        handler = notice_handler(desk, notifier_from_settings(settings))
        LogFollower(app, "citizen-notifier", NOTICE_EVENTS, handler).run(stop)


def run_pager(settings: Settings, stop: threading.Event) -> None:
    """Escalation and paging: pages recorded, then delivered (email, webhook, SMS)."""
    from core.paging.desk import PagerDesk
    from core.paging.policy import PagingPolicyError, load_paging_policy
    from infra.channels import channels_from_settings
    from projections.pages import PageProjection, PageQueries
    from projections.runner import ProjectionWorker
    from workers.pager import Pager

    try:
        policy = load_paging_policy(settings.paging_policy_file)
    except PagingPolicyError as exc:
        raise SystemExit(f"cityops pager: {exc}") from None
    with _pool_and_app(settings) as (pool, app):
        view = ProjectionWorker(app, settings.database_url, [PageProjection()])
        try:
            Pager(
                PagerDesk(app, policy),
                PageQueries(pool),
                view,
                channels_from_settings(settings),
                settings.pager_poll_s,
            ).run(stop)
        finally:
            view.close()


def api_container(settings: Settings) -> Container:
    """What the API's routes get: pools, the city app, desks, read models, layers, probes."""
    from api.app import layer_geojson
    from api.auth import ApiKeyVerifier
    from api.deps import Container
    from api.probes import kafka_probe, tcp_probe
    from api.services import ChangeHub, TelemetryIntake
    from core.sensor.senml import Limits
    from infra.apikeys import PgApiKeys
    from projections.case_queries import CaseQueries
    from projections.queries import ReadModels

    pool = make_pool(settings)
    read = ReadModels(pool)
    layers = city_layers(settings)
    city = city_app(settings, pool_size=settings.db_pool_size)
    case_queries = CaseQueries(pool)
    telemetry = TelemetryIntake(
        topics.make_producer(settings, linger_ms=0),
        topics.Topics.of(settings),
        DeviceRegistry(city),
        Limits.from_settings(settings),
    )
    probes = {
        "kafka": kafka_probe(settings.kafka_bootstrap),
        "mqtt": tcp_probe(settings.mqtt_host or "127.0.0.1", settings.mqtt_port),
    }
    api_keys = ApiKeyVerifier(PgApiKeys(pool).lookup)
    return Container(
        settings=settings,
        pool=pool,
        city=city,
        read=read,
        hub=ChangeHub(settings.database_url, read, case_queries, on_key_revoked=api_keys.forget),
        desk=service_desk(settings, city, pool, layers, case_queries),
        cases=case_queries,
        incidents=incident_desk(settings, city),
        api_keys=api_keys,
        telemetry=telemetry,
        probes=probes,
        layers={
            "districts": layer_geojson(layers.districts, "district_code"),
            "grid": layer_geojson(
                layers.grid[["grid_code", "district_code", "geometry"]], "grid_code"
            ),
        },
        projections=projections(),
    )


def api_app(settings: Settings) -> FastAPI:
    """The HTTP API wired from ``settings``; each server process builds its container."""
    from api.app import create_app

    return create_app(lambda: api_container(settings), settings)


def app_from_env() -> FastAPI:
    """The app from ``CITYOPS_*`` settings: for ``uvicorn --factory`` with several workers."""
    return api_app(Settings())
