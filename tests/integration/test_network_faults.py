"""Network faults through a TCP proxy (tests/helpers/faults.py): between the workers and
PostgreSQL, 200 ms each way with connections cut right after a COMMIT went through (its
answer lost), and a partition of 30 s; a partition of 30 s between the bridge and
Mosquitto; one between the workers and the Kafka broker. Everything accepted is stored
once, the workers recover by themselves, and the views equal a rebuild from the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from functools import partial
from urllib.parse import urlsplit, urlunsplit

import pytest

from cityops.bootstrap import seed
from core.app import CityApp
from infra import kafka as topics
from infra.settings import Settings
from tests.helpers.brokers import bridge
from tests.helpers.builders import readings_message, send, sensor
from tests.helpers.city import city_with
from tests.helpers.db import caught_up, count, event_counts
from tests.helpers.faults import (
    SUBMITTED,
    Gateways,
    Hotline,
    TcpProxy,
    kafka_behind_a_proxy,
    kafka_ends,
    readings_count,
    stored_water_levels,
    tally,
    tracked_positions,
    views_equal_a_rebuild,
    workers,
    writer_positions,
)
from tests.helpers.waiting import poll, wait_until

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)

WORKERS = ("writer", "monitor", "intake", "projector")


def through(settings: Settings, proxy: TcpProxy) -> Settings:
    """``settings`` with the database reached through ``proxy``."""
    parts = urlsplit(settings.database_url)
    netloc = f"{parts.username or 'postgres'}@127.0.0.1:{proxy.port}"
    return settings.model_copy(update={"database_url": urlunsplit(parts._replace(netloc=netloc))})


@pytest.fixture
def city(settings: Settings, unique: str) -> Iterator[tuple[CityApp, list[str]]]:
    seed(settings)
    devices = [f"wl-{unique}-{i}" for i in range(8)]
    app = city_with(settings, [sensor(d) for d in devices])
    try:
        yield app, devices
    finally:
        app.close()


@pytest.fixture
def db_proxy(settings: Settings) -> Iterator[TcpProxy]:
    port = urlsplit(settings.database_url).port
    assert port is not None
    with TcpProxy(port) as proxy:
        yield proxy


class Feed:
    """Readings (Kafka-acknowledged batches, each reading at its own time) and hotline
    cases sent to the topics."""

    def __init__(self, settings: Settings, devices: list[str], unique: str) -> None:
        self.settings = settings
        self.devices = devices
        self.producer = topics.make_producer(settings)
        self.hotline = Hotline(settings, unique)
        self.rounds = 0

    def readings(self, rounds: int) -> None:
        for _ in range(rounds):
            ts = 1.7e9 + self.rounds
            self.rounds += 1
            send(
                self.settings,
                self.producer,
                [
                    readings_message(d, {"water_level": 20.0, "battery": 90.0}, ts)
                    for d in self.devices
                ],
            )

    @property
    def expected_readings(self) -> int:
        return self.rounds * len(self.devices) * 2

    def close(self) -> None:
        self.producer.close()
        self.hotline.close()


def all_stored(settings: Settings, feed: Feed) -> bool:
    return (
        count(settings, "SELECT count(*) FROM readings") >= feed.expected_readings
        and set(event_counts(settings, SUBMITTED)) >= feed.hotline.case_ids()
    )


class CatchUp:
    """Which worker is still behind once the feed has stopped, and when each caught up.

    The topics' ends are read once (the feed has stopped: they no longer move). The
    writer, the monitor and the intake are behind until the positions they recorded
    reach those ends; the projector until it is at the head of the city log.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.since = time.monotonic()
        names = topics.Topics.of(settings)
        self.names = names
        self.telemetry_ends = kafka_ends(settings, names.telemetry)
        self.cases_ends = kafka_ends(settings, names.cases_inbound)
        self.at: dict[str, float] = {}

    def start(self) -> None:
        """Count the catch-up times from now."""
        self.since = time.monotonic()

    def behind(self) -> list[str]:
        s = self.settings
        parts = {
            "writer": lambda: writer_positions(s) == self.telemetry_ends,
            "intake": lambda: (
                tracked_positions(s, "case-intake", self.names.cases_inbound) == self.cases_ends
            ),
            "monitor": lambda: (
                tracked_positions(s, "sensor-monitor", self.names.telemetry) == self.telemetry_ends
            ),
            "projector": lambda: caught_up(s),
        }
        late = []
        for name, done in parts.items():
            if name not in self.at:
                if done():
                    self.at[name] = time.monotonic() - self.since
                else:
                    late.append(name)
        return late

    def wait(self, timeout: float) -> None:
        try:
            wait_until(lambda: not self.behind(), timeout, "every worker caught up")
        except AssertionError:
            raise AssertionError(
                f"still behind after {timeout:.0f} s: {self.behind()} (caught up: {self.at})"
            ) from None

    def figures(self) -> str:
        return ", ".join(f"{name} {t:.1f} s" for name, t in sorted(self.at.items()))


def assert_once(settings: Settings, feed: Feed, catch_up: CatchUp) -> None:
    """Every reading and case stored once; every position at the end of its topic; the
    views equal a rebuild."""
    assert count(settings, "SELECT count(*) FROM readings") == feed.expected_readings
    submitted = event_counts(settings, SUBMITTED)
    assert set(submitted.values()) == {1}
    assert set(submitted) >= feed.hotline.case_ids()
    names = topics.Topics.of(settings)
    ends = kafka_ends(settings, names.telemetry)
    assert ends == catch_up.telemetry_ends
    assert writer_positions(settings) == ends
    assert tracked_positions(settings, "sensor-monitor", names.telemetry) == ends
    assert tracked_positions(settings, "case-intake", names.cases_inbound) == kafka_ends(
        settings, names.cases_inbound
    )
    views_equal_a_rebuild(settings)


def cut_times(proxy: TcpProxy, n: int) -> bool:
    """Whether ``proxy`` has cut ``n`` times after its marker."""
    return proxy.marker_cuts >= n


def test_latency_and_connections_cut_after_commit(
    settings: Settings,
    unique: str,
    city: tuple[CityApp, list[str]],
    db_proxy: TcpProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """200 ms each way to PostgreSQL, and five times every connection cut right after a
    COMMIT of a write reached the server (the commit done, its answer lost): the fenced
    positions tell each worker what went through; nothing lost, nothing twice."""
    _, devices = city
    db_proxy.latency_s = 0.2
    feed = Feed(settings, devices, unique)
    try:
        with workers(through(settings, db_proxy), *WORKERS) as running:
            feed.readings(2)
            feed.hotline.send(2)
            wait_until(lambda: count(settings, "SELECT count(*) FROM readings") > 0, 60, "flow")
            started = time.monotonic()
            for n in range(1, 6):
                # One cut at a time, with a little more to do for every worker: each cut
                # lands on whichever worker commits a write next.
                db_proxy.cut_after_marker(b"COMMIT\x00", 1)
                feed.readings(1)
                feed.hotline.send(1)
                wait_until(partial(cut_times, db_proxy, n), 120, f"cut {n} after a COMMIT")
            cuts_s = time.monotonic() - started
            feed.readings(1)
            feed.hotline.send(1)
            catch_up = CatchUp(settings)
            catch_up.wait(150)
            assert running.dead() == [], running.dead()
        fenced = sum("re-reading position" in r.getMessage() for r in caplog.records)
        log.warning(
            "latency 200 ms + 5 cuts after a COMMIT: %d readings, %d cases; the 5 cuts in "
            "%.1f s; caught up after the last feed: %s; %d commits found gone through by "
            "the fence; %d connections accepted by the proxy",
            feed.expected_readings,
            len(feed.hotline.accepted),
            cuts_s,
            catch_up.figures(),
            fenced,
            db_proxy.accepted,
        )
        assert_once(settings, feed, catch_up)
    finally:
        feed.close()


def test_partition_of_30_s_then_heal(
    settings: Settings, unique: str, city: tuple[CityApp, list[str]], db_proxy: TcpProxy
) -> None:
    """PostgreSQL unreachable for 30 s and more (connections dropped, new ones refused)
    while readings and cases keep coming into Kafka: the workers wait it out and every
    one of them catches up after the heal, without anyone restarting it."""
    _, devices = city
    feed = Feed(settings, devices, unique)
    try:
        with workers(through(settings, db_proxy), *WORKERS) as running:
            feed.readings(10)
            feed.hotline.send(20)
            wait_until(lambda: all_stored(settings, feed), 60, "the first records stored")
            db_proxy.partition()
            cut_at = time.monotonic()
            while time.monotonic() - cut_at < 30:
                feed.readings(2)
                feed.hotline.send(2)
                time.sleep(0.5)
            during = count(settings, "SELECT count(*) FROM readings")
            catch_up = CatchUp(settings)  # the topics' ends, read while still cut off
            db_proxy.heal()
            catch_up.start()
            catch_up.wait(90)
            assert running.dead() == [], running.dead()
        log.warning(
            "30 s partition: %d readings stored when it healed, %d in all; caught up after "
            "the heal: %s; %d connections accepted by the proxy",
            during,
            feed.expected_readings,
            catch_up.figures(),
            db_proxy.accepted,
        )
        assert_once(settings, feed, catch_up)
    finally:
        feed.close()


def test_mqtt_partition_of_30_s_between_the_bridge_and_mosquitto(
    settings: Settings, unique: str, city: tuple[CityApp, list[str]]
) -> None:
    """The bridge's link to Mosquitto down for 30 s (dropped, reconnections refused)
    while the gateways keep publishing to the broker: the broker queues them in the
    bridge's session, the bridge reconnects by itself and gets them; every reading the
    broker acknowledged is stored once."""
    app, devices = city
    assert settings.mqtt_port is not None
    with TcpProxy(settings.mqtt_port) as proxy:
        via = settings.model_copy(update={"mqtt_host": "127.0.0.1", "mqtt_port": proxy.port})
        running = bridge(via, app, f"b-{unique}")
        gateways: Gateways | None = None
        try:
            assert running.wait_connected(15)
            gateways = Gateways(settings, devices, f"gw-{unique}")
            with workers(settings, "writer", "monitor", "projector") as pipeline:
                gateways.publish(200, pause_s=0.002)
                wait_until(lambda: readings_count(settings) >= 100, 60, "readings flowing")
                proxy.partition()
                cut_at = time.monotonic()
                wait_until(lambda: not running.connected, 30, "the bridge to notice", 0.01)
                while time.monotonic() - cut_at < 30:
                    gateways.publish(20, pause_s=0.01)
                during = readings_count(settings)
                proxy.heal()
                healed_at = time.monotonic()
                wait_until(lambda: running.connected, 60, "the bridge subscribed again", 0.01)
                reconnected_s = time.monotonic() - healed_at
                gateways.publish(100, pause_s=0.002)
                wait_until(lambda: gateways.unacknowledged == 0, 60, "every reading acknowledged")
                readings = poll(
                    lambda: tally(gateways.accepted, stored_water_levels(settings)),
                    lambda t: t.lost == 0,
                    90,
                    0.5,
                )
                stored_s = time.monotonic() - healed_at
                catch_up = CatchUp(settings)
                catch_up.wait(90)
                assert pipeline.dead() == [], pipeline.dead()
            log.warning(
                "MQTT partition of 30 s (MQTT %d): %d readings stored when it healed; the "
                "bridge subscribed again %.1f s and every accepted reading stored %.1f s "
                "after the heal; %s",
                settings.mqtt_protocol,
                during,
                reconnected_s,
                stored_s,
                readings,
            )
            assert readings.lost == 0, readings
            assert readings.duplicates == 0, readings
            ends = kafka_ends(settings, topics.Topics.of(settings).telemetry)
            assert writer_positions(settings) == ends
            assert tracked_positions(settings, "sensor-monitor", catch_up.names.telemetry) == ends
            views_equal_a_rebuild(settings)
        finally:
            running.stop()
            if gateways is not None:
                gateways.close()


def test_kafka_partition_of_30_s_between_the_workers_and_the_broker(
    settings: Settings, unique: str, city: tuple[CityApp, list[str]]
) -> None:
    """A broker of this test's own, reached only through the proxy (it advertises the
    proxy's address), unreachable for 30 s while the workers hold batches they fetched:
    they record what they hold, lose their groups, join again after the heal and go on
    from the positions they recorded; every reading and case sent is stored once."""
    _, devices = city
    with kafka_behind_a_proxy(settings, "cityops-kafka-") as (on_kafka, proxy):
        feed = Feed(on_kafka, devices, unique)
        try:
            with workers(on_kafka, *WORKERS) as running:
                feed.readings(10)
                feed.hotline.send(20)
                wait_until(lambda: all_stored(on_kafka, feed), 60, "the first stored")
                feed.readings(20)  # acknowledged, and not all fetched yet
                feed.hotline.send(10)
                proxy.partition()
                time.sleep(30)
                during = readings_count(on_kafka)
                proxy.heal()
                healed_at = time.monotonic()
                feed.readings(5)
                feed.hotline.send(5)
                sent_s = time.monotonic() - healed_at
                catch_up = CatchUp(on_kafka)
                catch_up.since = healed_at
                catch_up.wait(90)
                assert running.dead() == [], running.dead()
            log.warning(
                "Kafka partition of 30 s: %d readings stored when it healed, %d in "
                "all, %d cases; the feed sent again %.1f s after the heal; caught "
                "up after the heal: %s",
                during,
                feed.expected_readings,
                len(feed.hotline.accepted),
                sent_s,
                catch_up.figures(),
            )
            assert_once(on_kafka, feed, catch_up)
        finally:
            feed.close()
