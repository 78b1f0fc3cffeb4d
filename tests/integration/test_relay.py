"""The domain-events relay: every recorded event on Kafka exactly once, in order per
aggregate, also when the relay is killed with SIGKILL while it publishes. Records are
CloudEvents (``infra.domain_events``; tests/integration/test_cloudevents.py reads them as
an outside consumer would)."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections import defaultdict

import orjson
import psycopg
import pytest
from kafka import KafkaConsumer, TopicPartition

from cityops.bootstrap import city_app, seed
from core.case.desk import SubmitCase
from infra import kafka as topics
from infra.pgstore import make_pool
from infra.settings import Settings
from projections import positions
from tests.helpers.city import open_city
from tests.helpers.db import count
from tests.helpers.waiting import wait_until
from tests.helpers.workers import sigkill, start_worker, stop_all

pytestmark = pytest.mark.integration


def head(settings: Settings) -> int:
    with psycopg.connect(settings.database_url) as conn:
        return positions.head(conn)


def relay_position(settings: Settings) -> int:
    return count(settings, "SELECT notification_id FROM relay_positions")


def published(settings: Settings) -> list[tuple[int, dict[str, object]]]:
    """Every record of the domain-events topic: (partition, value)."""
    topic = topics.Topics.of(settings).domain_events
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: list[tuple[int, dict[str, object]]] = []
        # Tansu reports a partition's end inside its last record batch, and a poll may
        # stop inside a batch (500 records at most): past the ends, read on until quiet.
        quiet = 0
        while any(consumer.position(tp) < ends[tp] for tp in tps) or quiet < 2:
            got = consumer.poll(timeout_ms=1_000)
            for tp, records in got.items():
                out.extend((tp.partition, orjson.loads(r.value)) for r in records)
            quiet = 0 if got else quiet + 1
        return out
    finally:
        consumer.close()


def file_cases(settings: Settings, n: int, tag: str, until: threading.Event | None = None) -> None:
    """File ``n`` cases (or, with ``until``, keep filing until it is set)."""
    with open_city(settings) as city:
        for i in itertools.count():
            if (until is None and i >= n) or (until is not None and until.is_set()):
                return
            city.desk.submit(
                SubmitCase(
                    channel="hotline",
                    external_id=f"{tag}-{i}",
                    category="road_damage",
                    description=f"pothole {i}",
                    address=f"Road {i}",  # no coordinates: no duplicate check, manual dispatch
                ),
                actor="system:test",
                correlation_id=f"t:{i}",
            )


def test_each_event_is_published_once_in_order_across_sigkills(settings: Settings) -> None:
    seed(settings)
    file_cases(settings, 150, "before")
    # More events arrive all the time, so every kill lands while the relay is busy.
    enough = threading.Event()
    writer = threading.Thread(target=file_cases, args=(settings, 0, "during", enough))
    relays = [start_worker(settings, "relay")]
    kills = 0
    try:
        writer.start()
        for _ in range(3):
            seen = relay_position(settings)
            wait_until(lambda s=seen: relay_position(settings) > s, what="relay progress")
            sigkill(relays[-1])
            kills += 1
            relays.append(start_worker(settings, "relay"))
        enough.set()
        writer.join(120)
        total = head(settings)
        wait_until(lambda: relay_position(settings) == total, timeout=60, what="relay at head")
    finally:
        stop_all(relays)
    assert kills == 3
    records = published(settings)
    ids = [int(v["logposition"]) for _, v in records]  # type: ignore[call-overload]
    assert len(ids) == len(set(ids)), "an event was published twice"
    assert set(ids) == set(range(1, total + 1)), "an event is missing"
    # In order per aggregate: one partition per aggregate, versions rising without gaps.
    versions: dict[str, list[int]] = defaultdict(list)
    partition_of: dict[str, set[int]] = defaultdict(set)
    for partition, value in records:
        aggregate = str(value["subject"])
        versions[aggregate].append(int(value["aggregateversion"]))  # type: ignore[call-overload]
        partition_of[aggregate].add(partition)
    assert all(len(p) == 1 for p in partition_of.values())
    assert all(v == list(range(1, len(v) + 1)) for v in versions.values())
    # The value carries the event itself (what other systems consume), as plain JSON.
    some = next(v for _, v in records if v["type"] == "cityops.case.submitted")
    assert isinstance(some["data"], dict)
    assert some["data"]["category"] == "road_damage"
    uuid.UUID(str(some["subject"]))
    assert some["id"] == f"{some['subject']}:1"


def test_a_crash_between_publishing_and_committing_publishes_nothing_twice(
    settings: Settings,
) -> None:
    from workers.relay import DomainEventRelay

    seed(settings)
    file_cases(settings, 60, "x")
    pool = make_pool(settings, max_size=1)
    app = city_app(settings, pool_size=1)
    producer = topics.make_producer(settings)
    try:
        crashed = DomainEventRelay(settings, app.recorder, pool, producer, batch=50)
        position = crashed.run_once(0, {})  # 50 out and committed
        # The next 50 reach Kafka, then the "crash": the position is never committed.
        crashed.publish(app.recorder.select_notifications(start=position + 1, limit=50), {})
        assert crashed.position() == 50
        stop = threading.Event()
        fresh = DomainEventRelay(settings, app.recorder, pool, producer, batch=50)
        runner = threading.Thread(target=fresh.run, args=(stop,))
        runner.start()
        total = head(settings)
        wait_until(lambda: fresh.position() == total, what="relay at head")
        stop.set()
        runner.join(10)
    finally:
        producer.close()
        app.close()
        pool.close()
    ids = [int(v["logposition"]) for _, v in published(settings)]  # type: ignore[call-overload]
    assert sorted(ids) == list(range(1, total + 1))
    assert fresh.published == total - 100  # it skipped what the crashed one had sent
