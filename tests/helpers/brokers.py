"""MQTT publishers and bridges on the test broker; Kafka topics read back."""

from __future__ import annotations

import time
from typing import Any

import paho.mqtt.client as mqtt
from kafka import KafkaConsumer, TopicPartition
from paho.mqtt.enums import CallbackAPIVersion

from cityops.bootstrap import DeviceRegistry
from core.app import CityApp
from infra import kafka as topics
from infra.settings import Settings
from sensors.bridge import MqttBridge


def publisher(settings: Settings) -> mqtt.Client:
    """An MQTT client of ``settings``' broker and protocol, connected, its loop running."""
    v5 = settings.mqtt_protocol == 5
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
    if settings.mqtt_username:
        client.username_pw_set(settings.mqtt_username, settings.mqtt_password or None)
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
