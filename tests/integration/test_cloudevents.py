"""``cityops.domain-events`` as an outside system sees it: a case filed and dispatched, a
sensor's alarm and its incident dispatched, recorded in PostgreSQL, published by the
relay (``cityops relay``), read back from the test broker with confluent-kafka
(librdkafka): every record a CloudEvent that validates against its schema, once per
event, and none carrying the citizen's phone, e-mail or name."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import orjson
import psycopg
import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_structured
from cloudevents.core.formats.json import JSONFormat
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from eventsourcing.utils import get_topic

from cityops.bootstrap import incident_desk, seed
from core.audit import record_read
from core.case.desk import SubmitCase
from core.personal import Contact
from core.sensor import SensorSpec
from infra import domain_events as contract
from infra import kafka as topics
from infra.settings import Settings
from projections import positions
from tests.helpers.builders import flood_alarm
from tests.helpers.city import open_city, places
from tests.helpers.db import count
from tests.helpers.waiting import wait_until
from tests.helpers.workers import start_worker, stop_all

pytestmark = pytest.mark.integration

PHONE = "13912345678"
EMAIL = "wang.fang@example.cn"
NAME = "王芳"


def published_positions(settings: Settings) -> set[int]:
    """The log positions of every event the contract publishes (not the audit reads)."""
    withheld = [get_topic(cls) for cls in contract.NOT_PUBLISHED]
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT notification_id FROM city_events WHERE NOT topic = ANY(%s)", (withheld,)
        ).fetchall()
    return {int(n) for (n,) in rows}


def read_topic(settings: Settings, expected: int, idle_s: float = 3.0) -> list[Any]:
    """Every record of the topic, read from the start by librdkafka outside any group's
    commits: until ``expected`` records are in and then ``idle_s`` with nothing new, so
    that a duplicate would be read too."""
    topic = topics.Topics.of(settings).domain_events
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"outside-{settings.kafka_topic_prefix}",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        out: list[Any] = []
        deadline = time.monotonic() + 60
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            got = [m for m in consumer.consume(num_messages=1_000, timeout=0.5)]
            errors = [m.error() for m in got if m.error() is not None]
            assert not errors, errors
            if got:
                out.extend(got)
                last_new = time.monotonic()
            elif len(out) >= expected and time.monotonic() - last_new > idle_s:
                break
        return out
    finally:
        consumer.close()


def make_events(settings: Settings) -> None:
    """A citizen's case filed and dispatched; a water sensor's alarm, its incident
    dispatched; an auditor's read of the audit trail (withheld by the contract)."""
    with open_city(settings) as city:
        lon, lat, _ = places(settings, 1)[0]
        water = city.desk.locator.department_for(lon, lat, "water")
        assert water is not None
        case = city.desk.submit(
            SubmitCase(
                "hotline",
                "ce-1",
                "flooding",
                f"积水很深，请联系 {PHONE} 或 {EMAIL}",
                lon=lon,
                lat=lat,
                address="长宁路 88 弄",
                attributes={"water_depth": "knee"},
                contact=Contact.parse(name=NAME, phone=PHONE, email=EMAIL),
            ),
            actor="hotline:12345",
            correlation_id="ce-1",
        )
        assert case.status == "assigned", case.status_notes
        city.app.register_sensors(
            [SensorSpec("wl-ce-1", "water_level", "gw-t", lon, lat, None, None, water)],
            actor="test",
            correlation_id="t",
        )
        incident = flood_alarm(city.app, "wl-ce-1")
        incident_desk(settings, city.app).dispatch(
            incident, None, actor="dispatcher:li", reason="flooding", correlation_id="ce-2"
        )
        record_read(
            city.app,
            reader="auditor-1",
            role="auditor",
            path="/api/v1/audit/cases",
            query=f"phone={PHONE}",
            actor="auditor:auditor-1",
            correlation_id="ce-3",
        )


def test_an_outside_consumer_reads_each_event_once_as_a_valid_cloudevent(
    settings: Settings,
) -> None:
    seed(settings)
    make_events(settings)
    relay = [start_worker(settings, "relay")]
    try:
        with psycopg.connect(settings.database_url) as conn:
            head = positions.head(conn)
        wait_until(
            lambda: count(settings, "SELECT notification_id FROM relay_positions") == head,
            timeout=60,
            what="relay at head",
        )
    finally:
        stop_all(relay)
    expected = published_positions(settings)
    assert len(expected) < head  # the audit read is in the log, not on the topic

    records = read_topic(settings, len(expected))
    events = []
    for record in records:
        headers = dict(record.headers() or [])
        assert headers == {"content-type": b"application/cloudevents+json"}
        event = from_structured(KafkaMessage(headers, record.key(), record.value()), JSONFormat())
        assert record.key() == str(event.get_subject()).encode()
        body = contract.validate(record.value())  # the envelope, then data by dataschema
        assert body["id"] == event.get_id()
        events.append((record.partition(), body))
        raw = record.value().decode() + orjson.dumps(body).decode()
        for secret in (PHONE, EMAIL, NAME, "knee", "长宁路"):
            assert secret not in raw, (body["type"], secret)

    ids = [body["id"] for _, body in events]
    assert len(ids) == len(set(ids)), "an event was published twice"
    assert sorted(body["logposition"] for _, body in events) == sorted(expected)
    types = {body["type"] for _, body in events}
    assert {
        "cityops.case.submitted",
        "cityops.case.accepted",
        "cityops.case.assigned",
        "cityops.sensor.registered",
        "cityops.sensor.alarm-raised",
        "cityops.incident.opened",
        "cityops.incident.dispatched",
    } <= types
    # One partition per subject, its versions 1, 2, ... in order.
    versions: dict[str, list[int]] = defaultdict(list)
    partition_of: dict[str, set[int]] = defaultdict(set)
    for partition, body in events:
        versions[body["subject"]].append(body["aggregateversion"])
        partition_of[body["subject"]].add(partition)
    assert all(len(p) == 1 for p in partition_of.values())
    assert all(v == list(range(1, len(v) + 1)) for v in versions.values())
