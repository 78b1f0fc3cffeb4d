"""MQTT publishers and bridges on the test broker; Kafka topics read back."""

from __future__ import annotations

import os
import time
from typing import Any

import paho.mqtt.client as mqtt
from kafka import KafkaConsumer, TopicPartition

from cityops.bootstrap import DeviceRegistry
from cityops.services import MqttAccounts, full_access_mqtt_params
from core.app import CityApp
from infra import kafka as topics
from infra.settings import Settings
from sensors.bridge import MqttBridge
from simulations.gateways import new_client


def mqtt_client(settings: Settings, client_id: str = "") -> mqtt.Client:
    """A paho client of ``settings``' broker and protocol, logged in as the test account
    (may publish and subscribe anywhere), not yet connected. ``settings``' own account
    is the bridge's, which may only read telemetry."""
    return new_client(full_access_mqtt_params(settings), client_id)


def shared_logins() -> MqttAccounts:
    """The test environment's MQTT logins, for a Mosquitto a test starts itself
    (``start_mosquitto(..., accounts=shared_logins())``): the helpers' clients and the
    settings' bridge account then log in to it as to the shared broker."""
    return MqttAccounts.from_env(os.environ)


def publisher(settings: Settings) -> mqtt.Client:
    """An MQTT client of ``settings``' broker and protocol, connected, its loop running."""
    client = mqtt_client(settings)
    client.max_inflight_messages_set(500)
    client.connect(settings.mqtt_host, settings.mqtt_port)
    client.loop_start()
    return client


def publish(settings: Settings, topic: str, payload: bytes) -> None:
    """One message at QoS 1, acknowledged by the broker, from a client of its own."""
    client = publisher(settings)
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def bridge(
    settings: Settings, app: CityApp, client_id: str, producer: Any = None, **kw: Any
) -> MqttBridge:
    """An MQTT bridge of ``app``'s registered devices (to a producer of its own unless
    given one), started: it connects in the background, the caller waits with
    ``wait_connected``."""
    started = MqttBridge(
        settings,
        producer or topics.make_producer(settings),
        DeviceRegistry(app),
        client_id=client_id,
        **kw,
    )
    started.start()
    return started


def read_topic(settings: Settings, topic: str, expect: int, timeout: float = 30) -> list[Any]:
    """The topic's records from the start: until ``expect`` are in (or ``timeout`` s),
    then a second more, so that a record beyond those expected (a duplicate) is seen."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=300).values():
            out.extend(records)
    for records in consumer.poll(timeout_ms=1_000).values():
        out.extend(records)
    consumer.close()
    return out


def topic_size(settings: Settings, topic: str) -> int:
    """Records in a topic now (the sum of its partitions' end offsets)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return sum(ends.values())
    finally:
        consumer.close()
