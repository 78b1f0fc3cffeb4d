"""The services under the pipeline killed and started again: nothing accepted is lost
or stored twice, and every worker resumes by itself.

Each test kills an instance of its own (in a temp dir), never the shared test services:
PostgreSQL crashed with ``pg_ctl stop -m immediate`` and started again; Mosquitto
SIGKILLed between two autosaves of its persistence file; Tansu SIGKILLed on durable S3
storage, and Tansu brought back empty (memory storage).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from cityops.bootstrap import seed
from cityops.services import Service, start_kafka, start_mosquitto, start_postgres_cluster
from core.sensor.telemetry import TelemetryMessage
from infra import kafka as topics
from infra.pgstore import make_pool
from infra.settings import Settings
from sensors.bridge import MqttBridge
from tests.helpers.brokers import bridge, shared_logins
from tests.helpers.builders import readings_message, send, sensor
from tests.helpers.city import World, city_with
from tests.helpers.db import event_counts, isolated_settings
from tests.helpers.faults import (
    SUBMITTED,
    Gateways,
    Hotline,
    Publishing,
    S3Server,
    assert_positions_at_the_ends,
    database_up,
    postgres_crash,
    postgres_start_again,
    readings_count,
    service_dir,
    settings_on,
    sigkill_service,
    stored_water_levels,
    tally,
    views_equal_a_rebuild,
    wait_all_stored,
    wait_more_stored,
    wait_port_free,
    wait_positions_at_the_ends,
    workers,
    writer_positions,
)
from tests.helpers.waiting import poll, wait_until
from tests.helpers.web import bearer, served
from tests.helpers.workers import in_threads

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)


def devices_of(unique: str, n: int = 8) -> list[str]:
    return [f"wl-{unique}-{i}" for i in range(n)]


def subscribed_bridge(settings: Settings, devices: list[str], unique: str) -> MqttBridge:
    """A bridge started and subscribed: what gateways publish from now on is routed to
    it (before its first subscription the broker drops it, acknowledged)."""
    from cityops.bootstrap import DeviceRegistry, city_app

    app = city_app(settings, pool_size=1)
    registry = DeviceRegistry(app)
    for d in devices:  # known before any fault: the bridge then needs no lookup
        assert registry(d) is not None
    started = MqttBridge(
        settings, topics.make_producer(settings), registry, client_id=f"b-{unique}"
    )
    started.start()
    assert started.wait_connected(15)
    return started


@pytest.fixture
def own_postgres() -> Iterator[tuple[Path, Service]]:
    """A PostgreSQL cluster of this test's own, durable as in production (fsync and
    synchronous commit on): a crash keeps every commit it acknowledged."""
    with service_dir("cityops-pgcrash-") as workdir:
        svc = start_postgres_cluster(workdir, durable=True)
        try:
            yield workdir, svc
        finally:
            svc.stop()


def test_postgres_crash_and_restart(
    own_postgres: tuple[Path, Service], unique: str, tmp_path: Path
) -> None:
    """PostgreSQL stopped as a crash (immediate) for a few seconds, then started again,
    while readings and cases flow: the API answers 503 with Retry-After meanwhile and
    recovers by itself; every worker waits it out; each accepted input stored once."""
    workdir, pg = own_postgres
    settings = isolated_settings(pg.url, unique, tmp_path / "city", monitor_silence_check_s=0.5)
    seed(settings)
    devices = devices_of(unique)
    from cityops.bootstrap import city_app

    app = city_app(settings, pool_size=1)
    app.register_sensors([sensor(d) for d in devices], actor="test", correlation_id="t")
    app.close()
    names = ("writer", "monitor", "projector", "intake", "relay", "brain")
    pool = make_pool(settings, max_size=2)
    hotline = Hotline(settings, unique)
    mqtt_bridge = subscribed_bridge(settings, devices, unique)
    gateways = Gateways(settings, devices, f"gw-{unique}")
    filed: set[str] = set()
    refused = 0
    try:
        with served(settings) as client, workers(settings, *names) as running:
            world = World(settings, client, pool)
            operator = bearer(settings, "operator")

            def file_some(n: int) -> None:
                nonlocal refused
                for _ in range(n):
                    lon, lat = world.point()
                    response = world.post311(
                        {
                            "service_code": "road_damage",
                            "lat": str(lat),
                            "long": str(lon),
                            "description": f"pothole {unique}",
                        },
                        operator,
                    )
                    if response.status_code == 201:
                        filed.add(str(response.json()[0]["service_request_id"]))
                    else:
                        assert response.status_code == 503, response.text
                        refused += 1

            # Readings flow the whole time, from a thread of their own.
            publishing = Publishing(gateways, 40, pause_s=0.005)
            hotline.send(30)
            file_some(5)
            wait_until(lambda: len(stored_water_levels(settings)) > 200, 60, "readings flowing")

            postgres_crash(workdir)
            down_at = time.monotonic()
            assert not database_up(pg.url)
            # While it is down: the API says so, clearly; the hotline still sends (Kafka
            # holds its cases); Open311 filings are refused, not lost.
            got = client.get("/api/v1/cases", headers=operator)
            assert got.status_code == 503, got.text
            assert got.json() == {"detail": "database unavailable, retry later"}
            assert int(got.headers["Retry-After"]) > 0
            hotline.send(30)
            file_some(2)
            time.sleep(max(0.0, 6 - (time.monotonic() - down_at)))

            postgres_start_again(workdir)
            up_at = time.monotonic()
            wait_until(
                lambda: client.get("/api/v1/cases", headers=operator).status_code == 200,
                30,
                "the API answering again",
            )
            api_back_s = time.monotonic() - up_at
            wait_more_stored(settings, 0, 60, "readings stored again")
            readings_back_s = time.monotonic() - up_at
            hotline.send(30)
            file_some(5)
            publishing.stop()
            wait_all_stored(settings, gateways, hotline)
            wait_positions_at_the_ends(settings)
            assert running.dead() == [], f"workers that died: {running.dead()}"
            caught_up_s = time.monotonic() - up_at
        readings = tally(gateways.accepted, stored_water_levels(settings))
        log.warning(
            "postgres crash: down %.1f s; API back %.1f s, readings %.1f s, all stored %.1f s "
            "after the start; readings %s; hotline %d accepted, %d failed; Open311 %d filed, "
            "%d refused (503)",
            up_at - down_at,
            api_back_s,
            readings_back_s,
            caught_up_s,
            readings,
            len(hotline.accepted),
            hotline.failed,
            len(filed),
            refused,
        )
        assert readings.lost == 0, readings
        assert readings.duplicates == 0, readings
        assert refused >= 2  # the filings made while it was down
        submitted = event_counts(settings, SUBMITTED)
        assert set(submitted.values()) == {1}, "a case submitted twice"
        assert hotline.case_ids() <= set(submitted)
        assert {str(c) for c in submitted} >= filed
        assert len(submitted) == len(hotline.accepted) + len(filed)
        assert_positions_at_the_ends(settings)
        views_equal_a_rebuild(settings)
    finally:
        mqtt_bridge.stop()
        gateways.close()
        hotline.close()
        pool.close()


# -- Mosquitto ---------------------------------------------------------------------------------


@dataclass
class OwnMosquitto:
    """A Mosquitto of the test's own in ``workdir``, on the test environment's logins,
    writing its persistence file every ``autosave_s``."""

    workdir: Path
    autosave_s: int
    service: Service

    @property
    def saved(self) -> Path:
        return self.workdir / "mosquitto-data" / "mosquitto.db"

    def sigkill_and_start_again(self) -> None:
        """SIGKILL it and start it again on the same port and data."""
        port = int(self.service.env["CITYOPS_MQTT_PORT"])
        sigkill_service("mosquitto", str(self.workdir))
        wait_port_free(port)
        self.service = start_mosquitto(
            self.workdir, port, autosave_interval_s=self.autosave_s, accounts=shared_logins()
        )


@contextmanager
def own_mosquitto(autosave_s: int) -> Iterator[OwnMosquitto]:
    """An :class:`OwnMosquitto`, stopped (whichever run of it is up) on the way out."""
    with service_dir("cityops-mqtt-") as workdir:
        started = start_mosquitto(workdir, autosave_interval_s=autosave_s, accounts=shared_logins())
        mqtt = OwnMosquitto(workdir, autosave_s, started)
        try:
            yield mqtt
        finally:
            mqtt.service.stop()


@pytest.mark.parametrize("protocol", [4, 5], ids=["plain-subscription", "shared-subscription"])
def test_mosquitto_sigkill_while_the_bridge_keeps_up(
    settings: Settings, unique: str, protocol: int
) -> None:
    """Mosquitto SIGKILLed mid-stream (persistence on, saved since the bridge
    subscribed) and started again on its port: the gateways send again what was not
    acknowledged, the bridge reconnects; every reading the broker acknowledged is
    stored, once, or (MQTT 5 shared subscription: Mosquitto 2.0 routes nothing to the
    restored shared subscription until the bridge subscribes again) lost only if it
    reached the broker between its restart and the bridge's new subscription."""
    devices = devices_of(unique)
    app = city_with(settings, [sensor(d) for d in devices])
    autosave_s = 3
    with own_mosquitto(autosave_s) as mqtt:
        on_mqtt = settings_on(settings, mqtt.service)
        on_mqtt = on_mqtt.model_copy(update={"mqtt_protocol": protocol})
        running = bridge(on_mqtt, app, f"b-{unique}")
        gateways: Gateways | None = None
        try:
            assert running.wait_connected(15)
            subscribed_at = time.time()
            gateways = Gateways(on_mqtt, devices, f"gw-{unique}")
            with in_threads(on_mqtt, "writer", "monitor"):
                publishing = Publishing(gateways, 20, pause_s=0.002)
                # The bridge's session and subscription are in the file: a restart
                # brings them back (before the first save it would not, see the README).
                wait_until(
                    lambda: mqtt.saved.exists() and mqtt.saved.stat().st_mtime > subscribed_at,
                    5 * autosave_s,
                    "an autosave after the bridge subscribed",
                )
                wait_until(lambda: len(stored_water_levels(settings)) > 500, 60, "readings")
                accepted_at_kill = len(gateways.accepted)
                mqtt.sigkill_and_start_again()
                killed_at = time.monotonic()
                in_flight = gateways.in_flight()
                first_at_risk = min(in_flight) if in_flight else max(gateways.sent) + 1
                wait_until(lambda: not running.connected, 10, "the bridge to notice", 0.001)
                wait_until(lambda: running.connected, 30, "the bridge subscribed again", 0.001)
                last_at_risk = max(gateways.sent)
                resubscribed_s = time.monotonic() - killed_at
                wait_more_stored(settings, 200, 60, "readings flowing again")
                back_s = time.monotonic() - killed_at
                publishing.stop()
                poll(
                    lambda: tally(gateways.accepted, stored_water_levels(settings)),
                    lambda t: t.lost == 0,
                    30,
                    0.5,
                )
            readings = tally(gateways.accepted, stored_water_levels(settings))
            lost = gateways.accepted - set(stored_water_levels(settings))
            lost_mids = sorted(m for m, k in gateways.sent.items() if k in lost)
            log.warning(
                "mosquitto SIGKILL (MQTT %d, bridge keeping up, saved every %d s): %d "
                "accepted before the kill; bridge subscribed again %.2f s and readings "
                "flowing %.1f s after it; %d messages sent or resent in that window; %s",
                protocol,
                autosave_s,
                accepted_at_kill,
                resubscribed_s,
                back_s,
                last_at_risk - first_at_risk + 1,
                readings,
            )
            assert readings.duplicates == 0, readings
            if protocol == 4:
                assert readings.lost == 0, readings
            else:
                assert all(first_at_risk <= m <= last_at_risk for m in lost_mids), (
                    first_at_risk,
                    last_at_risk,
                    lost_mids,
                )
        finally:
            running.stop()
            if gateways is not None:
                gateways.close()
            app.close()


def test_mosquitto_sigkill_between_autosaves_loses_what_came_after_the_last_save(
    settings: Settings, unique: str
) -> None:
    """The bound, measured: with the bridge away (its session queues), Mosquitto keeps
    across a SIGKILL exactly what its last autosave wrote. Messages it acknowledged after
    that save, still queued for the bridge, are lost; the rest arrives, once."""
    devices = devices_of(unique, 4)
    app = city_with(settings, [sensor(d) for d in devices])
    autosave_s = 2
    with own_mosquitto(autosave_s) as mqtt:
        saved = mqtt.saved
        on_mqtt = settings_on(settings, mqtt.service)
        gateways = Gateways(on_mqtt, devices, f"gw-{unique}")
        try:
            first = bridge(on_mqtt, app, f"b-{unique}")
            assert first.wait_connected(15)
            first.stop()  # the session stays: what is published now queues in the broker
            gateways.publish(300)
            wait_until(lambda: gateways.unacknowledged == 0, 30, "batch 1 acknowledged")
            before_save = set(gateways.accepted)
            acked_at = time.time()
            wait_until(
                lambda: saved.exists() and saved.stat().st_mtime > acked_at + 0.01,
                5 * autosave_s,
                "an autosave after batch 1",
            )
            save_mtime = saved.stat().st_mtime_ns
            gateways.publish(200)
            wait_until(lambda: gateways.unacknowledged == 0, 30, "batch 2 acknowledged")
            after_save = set(gateways.accepted) - before_save
            mqtt.sigkill_and_start_again()
            # The kill came before the next save: batch 2 was in memory only.
            assert saved.stat().st_mtime_ns == save_mtime, "an autosave got in before the kill"
            with in_threads(on_mqtt, "writer"):
                second = bridge(on_mqtt, app, f"b-{unique}")
                try:
                    assert second.wait_connected(15)
                    wait_until(
                        lambda: tally(before_save, stored_water_levels(settings)).lost == 0,
                        60,
                        "batch 1 stored",
                    )
                    time.sleep(2)  # would anything of batch 2 still arrive?
                finally:
                    second.stop()
            stored = stored_water_levels(settings)
            kept = tally(before_save, stored)
            gone = tally(after_save, stored)
            log.warning(
                "mosquitto SIGKILL between autosaves (every %d s, bridge away): saved "
                "before the kill %s; accepted after the last save %s",
                autosave_s,
                kept,
                gone,
            )
            assert kept.lost == 0, kept
            assert kept.duplicates == 0, kept
            assert len(after_save) == 200
            assert gone.lost == len(after_save), gone  # the bound is reached, not passed
        finally:
            gateways.close()
            app.close()


# -- the Kafka-protocol broker ------------------------------------------------------------------


# Tansu on S3 lists a partition's batch objects (one per produce request) for a fetch,
# and moto's listing grows with them: with the default 100 ms fetch wait the consumers'
# listings took moto's whole core (56 % of it in list_objects_v2, py-spy), its answers
# fell from 176 to 30 a second within a minute, and the pipeline stalled. A longer wait
# means fewer fetches, as a deployment on S3 would set it (README, Configuration).
S3_FETCH_WAIT_MS = 1_000


def tansu_again(workdir: Path, port: int, s3: S3Server | None) -> Service:
    """SIGKILL the Tansu of ``workdir`` and start it again on the same port (and log)."""
    sigkill_service("tansu", f"tcp://127.0.0.1:{port}")
    wait_port_free(port)
    if s3 is None:
        return start_kafka(workdir, port)
    return start_kafka(workdir, port, storage_engine=s3.storage_engine, storage_env=s3.env)


def test_kafka_broker_sigkill_and_restart_on_durable_storage(
    settings: Settings, unique: str
) -> None:
    """Tansu on S3 storage SIGKILLed mid-stream and started again on its port: the
    bridge and the hotline send again, writer, monitor and intake resume from their
    recorded positions; every accepted reading and case is stored once."""
    devices = devices_of(unique)
    with service_dir("cityops-kafka-") as workdir, S3Server() as s3:
        kafka = start_kafka(workdir, storage_engine=s3.storage_engine, storage_env=s3.env)
        port = int(kafka.url.rsplit(":", 1)[1])
        on_kafka = settings_on(settings, kafka, kafka_fetch_max_wait_ms=S3_FETCH_WAIT_MS)
        seed(on_kafka)
        app = city_with(on_kafka, [sensor(d) for d in devices])
        mqtt_bridge = subscribed_bridge(on_kafka, devices, unique)
        gateways = Gateways(on_kafka, devices, f"gw-{unique}")
        hotline = Hotline(on_kafka, unique)
        try:
            with workers(on_kafka, "writer", "monitor", "intake", "projector") as running:
                publishing = Publishing(gateways, 20, pause_s=0.003)
                hotline.send(40)
                wait_until(lambda: len(stored_water_levels(on_kafka)) > 300, 90, "readings")
                kafka = tansu_again(workdir, port, s3)
                killed_at = time.monotonic()
                hotline.send(40)
                wait_more_stored(on_kafka, 200, 90, "readings flowing again")
                back_s = time.monotonic() - killed_at
                publishing.stop()
                wait_all_stored(on_kafka, gateways, hotline)
                wait_positions_at_the_ends(on_kafka)
                caught_up_s = time.monotonic() - killed_at
                assert running.dead() == [], running.dead()
            readings = tally(gateways.accepted, stored_water_levels(on_kafka))
            log.warning(
                "Tansu (S3) SIGKILL: readings flowing again %.1f s, everything stored %.1f s "
                "after it; readings %s; hotline %d accepted, %d failed",
                back_s,
                caught_up_s,
                readings,
                len(hotline.accepted),
                hotline.failed,
            )
            assert readings.lost == 0, readings
            assert readings.duplicates == 0, readings
            submitted = event_counts(on_kafka, SUBMITTED)
            assert set(submitted.values()) == {1}
            hotline_cases = {c for c in submitted if c in hotline.case_ids()}
            assert hotline_cases == hotline.case_ids()
            assert_positions_at_the_ends(on_kafka)
            views_equal_a_rebuild(on_kafka)
        finally:
            mqtt_bridge.stop()
            gateways.close()
            hotline.close()
            app.close()
            kafka.stop()


def water_levels(devices: list[str], level: float, t0: float, n: int) -> list[TelemetryMessage]:
    """``n`` readings of ``level`` from each device, a second apart from ``t0``."""
    return [
        readings_message(d, {"water_level": level}, ts=t0 + i) for i in range(n) for d in devices
    ]


def reset_kafka_positions(settings: Settings) -> None:
    """Forget the Kafka positions of this test's topics (what `cityops demo` does for
    its unprefixed ones at start)."""
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM telemetry_positions")
        conn.execute(
            "DELETE FROM city_tracking WHERE application_name LIKE %s",
            (f"%|{settings.kafka_topic_prefix}cityops.%",),
        )


def test_kafka_broker_back_empty_is_detected_not_skipped(
    settings: Settings, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Tansu on memory storage restarted: its log is gone and the topics start again at
    offset 0, below the positions the workers recorded. The writer and the intake say
    so loudly and consume nothing of those partitions (reading on from their positions
    would silently skip the new records); once the positions are reset, as
    `cityops demo` does at start, every new record is stored."""
    devices = devices_of(unique, 4)
    with service_dir("cityops-kafka-") as workdir:
        kafka = start_kafka(workdir)
        port = int(kafka.url.rsplit(":", 1)[1])
        on_kafka = settings_on(settings, kafka)
        seed(on_kafka)
        app = city_with(on_kafka, [sensor(d) for d in devices])
        producer = topics.make_producer(on_kafka)
        hotline = Hotline(on_kafka, unique)
        try:
            with workers(on_kafka, "writer", "intake"):
                send(on_kafka, producer, water_levels(devices, 20.0, 1e9, 60))
                hotline.send(40)
                wait_until(lambda: readings_count(on_kafka) == 240, 60, "first readings")
                wait_until(lambda: len(event_counts(on_kafka, SUBMITTED)) >= 40, 60, "first cases")
                positions = writer_positions(on_kafka)
                kafka = tansu_again(workdir, port, None)
                topics.ensure_topics(on_kafka)
                caplog.clear()
                producer.close()
                producer = topics.make_producer(on_kafka)
                # Fewer new records than before: every partition's new end is below its
                # recorded position.
                send(on_kafka, producer, water_levels(devices, 30.0, 2e9, 5))
                hotline.close()
                hotline = Hotline(on_kafka, unique + "b")
                hotline.send(8)
                wait_until(lambda: "beyond the broker's log" in caplog.text, 60, "the loud error")
                time.sleep(3)
                assert readings_count(on_kafka) == 240  # nothing read past or around it
                assert writer_positions(on_kafka) == positions
            errors = [r for r in caplog.records if "beyond the broker's log" in r.getMessage()]
            assert all(r.levelno == logging.ERROR for r in errors)
            reset_kafka_positions(on_kafka)
            with workers(on_kafka, "writer", "intake"):
                wait_until(lambda: readings_count(on_kafka) == 240 + 20, 60, "the new readings")
                wait_until(
                    lambda: set(event_counts(on_kafka, SUBMITTED)) >= hotline.case_ids(),
                    60,
                    "the new cases",
                )
            log.warning(
                "Tansu back empty: %d 'beyond the log' errors; after the reset %d readings",
                len(errors),
                readings_count(on_kafka),
            )
        finally:
            producer.close()
            hotline.close()
            app.close()
            kafka.stop()
