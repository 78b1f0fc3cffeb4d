"""Network faults between the workers and PostgreSQL, through a TCP proxy: 200 ms each
way, connections cut right after a COMMIT went through (its answer lost), a partition
of 30 s. Everything accepted is stored once, the workers recover by themselves, and the
views equal a rebuild from the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from cityops.bootstrap import seed
from core.app import CityApp
from infra import kafka as topics
from infra.settings import Settings
from tests.helpers.builders import readings_message, send, sensor
from tests.helpers.city import city_with
from tests.helpers.db import count
from tests.helpers.faults import (
    SUBMITTED,
    Hotline,
    TcpProxy,
    event_counts,
    kafka_ends,
    tracked_positions,
    views_equal_a_rebuild,
    workers,
    writer_positions,
)
from tests.helpers.waiting import wait_until

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


def assert_once(settings: Settings, feed: Feed) -> None:
    """Every reading and case stored once; every position at the end of its topic; the
    views equal a rebuild."""
    time.sleep(1)  # would a duplicate still come?
    assert count(settings, "SELECT count(*) FROM readings") == feed.expected_readings
    submitted = event_counts(settings, SUBMITTED)
    assert set(submitted.values()) == {1}
    assert set(submitted) >= feed.hotline.case_ids()
    names = topics.Topics.of(settings)
    ends = kafka_ends(settings, names.telemetry)
    assert writer_positions(settings) == ends
    assert tracked_positions(settings, "sensor-monitor", names.telemetry) == ends
    assert tracked_positions(settings, "case-intake", names.cases_inbound) == kafka_ends(
        settings, names.cases_inbound
    )
    views_equal_a_rebuild(settings)


@pytest.mark.xfail(
    reason="unfinished: only 2 of the 5 COMMIT cuts happen within 60 s at 200 ms latency",
    strict=False,
)
def test_latency_and_connections_cut_after_commit(
    settings: Settings, unique: str, city: tuple[CityApp, list[str]], db_proxy: TcpProxy
) -> None:
    """200 ms each way to PostgreSQL, and five times every connection cut right after a
    COMMIT reached the server (the commit done, its answer lost): the fenced positions
    tell each worker what went through; nothing lost, nothing twice."""
    _, devices = city
    db_proxy.latency_s = 0.2
    feed = Feed(settings, devices, unique)
    try:
        with workers(through(settings, db_proxy), *WORKERS) as running:
            feed.readings(10)
            feed.hotline.send(20)
            wait_until(lambda: count(settings, "SELECT count(*) FROM readings") > 0, 60, "flow")
            db_proxy.cut_after_marker(b"COMMIT", 5)
            started = time.monotonic()
            while db_proxy.marker_cuts < 5 and time.monotonic() - started < 60:
                feed.readings(2)
                feed.hotline.send(3)
            assert db_proxy.marker_cuts == 5
            feed.readings(5)
            feed.hotline.send(10)
            wait_until(lambda: all_stored(settings, feed), 90, "everything stored")
            recovered_s = time.monotonic() - started
            assert running.dead() == [], running.dead()
        log.warning(
            "latency 200 ms + 5 cuts after COMMIT: %d readings, %d cases, all stored %.1f s "
            "after the first cut; %d connections accepted by the proxy",
            feed.expected_readings,
            len(feed.hotline.accepted),
            recovered_s,
            db_proxy.accepted,
        )
        assert_once(settings, feed)
    finally:
        feed.close()


@pytest.mark.xfail(
    reason="open bug: after the 30 s partition the sensor monitor's positions stay behind "
    "(writer and intake catch up in ~5 s)",
    strict=False,
)
def test_partition_of_30_s_then_heal(
    settings: Settings, unique: str, city: tuple[CityApp, list[str]], db_proxy: TcpProxy
) -> None:
    """PostgreSQL unreachable for 30 s (connections dropped, new ones refused) while
    readings and cases keep coming into Kafka: the workers wait it out and are caught
    up within a bounded time after the heal."""
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
            db_proxy.heal()
            healed_at = time.monotonic()
            wait_until(lambda: all_stored(settings, feed), 60, "everything stored after the heal")
            caught_up_s = time.monotonic() - healed_at
            assert running.dead() == [], running.dead()
        log.warning(
            "30 s partition: %d readings stored when it healed, %d in all, caught up %.1f s "
            "after the heal",
            during,
            feed.expected_readings,
            caught_up_s,
        )
        assert caught_up_s < 30
        assert_once(settings, feed)
    finally:
        feed.close()
