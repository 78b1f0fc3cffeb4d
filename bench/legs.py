"""Each leg of the ingest pipeline alone, on the benchmark's own services.

- MQTT with C clients: ``mosquitto_pub -l`` (QoS 1, MQTT 5) into ``mosquitto_sub -C N``
  (Debian's mosquitto-clients; installed with apt-get when missing and running as root);
- MQTT with the raw-socket publisher (:mod:`bench.mqtt_load`, a process of its own) into
  the bridge's own MQTT session (``sensors.mqtt_session``, QoS 1, each read's messages
  acknowledged in one write), and into one paho subscriber for comparison;
- Kafka produce -> consume on a fresh topic with kafka-python (the pipeline's client and
  producer settings) and with confluent-kafka (librdkafka), the consumer in a process
  of its own that reads while the producer writes;
- the writer's store path: ``sensors.writer.copy_readings`` (COPY into staging, insert
  of the new rows) in batches of 15,000 rows.

Rates are messages per second from the first message sent to the last one received
(rows per second for COPY, and rows / 3 as messages).

    from bench.legs import run_legs
    legs = run_legs(settings, messages=50_000)
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.mqtt_load import publisher_command, senml_payload
from cityops.services import full_access_mqtt_params, mosquitto_clients_env
from infra import kafka as topics
from infra.pgstore import make_pool
from infra.settings import Settings
from sensors.writer import copy_readings
from simulations.gateways import new_client

REPO = Path(__file__).resolve().parents[1]
LEG_TIMEOUT_S = 180.0
_SUBSCRIBE_SETTLE_S = 1.0
_KAFKA_VALUE = (
    b'{"kind":"readings","device_id":"wl-x","gateway_id":"g","received_at":1.0,'
    b'"readings":[{"ts":1.0,"metric":"water_level","value":1.0,"unit":"cm"},'
    b'{"ts":1.0,"metric":"battery","value":1.0,"unit":"%"},'
    b'{"ts":1.0,"metric":"temperature","value":1.0,"unit":"Cel"}]}'
)


@dataclass
class Leg:
    """One leg's figure; ``pipeline_client`` marks the clients the pipeline itself uses."""

    name: str
    msg_per_s: float | None
    messages: int
    seconds: float
    pipeline_client: bool
    note: str = ""


def _skipped(name: str, pipeline_client: bool, why: str) -> Leg:
    return Leg(name, None, 0, 0.0, pipeline_client, f"skipped: {why}")


# -- MQTT, C clients ---------------------------------------------------------------------


def mosquitto_clients() -> tuple[str, str] | None:
    """Paths of mosquitto_pub and mosquitto_sub, installing mosquitto-clients if root."""
    found = shutil.which("mosquitto_pub"), shutil.which("mosquitto_sub")
    if all(found):
        return found[0] or "", found[1] or ""
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("  installing mosquitto-clients (apt-get) ...", flush=True)
        subprocess.run(
            ["apt-get", "install", "-y", "mosquitto-clients"],
            capture_output=True,
            timeout=600,
            check=False,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    pub, sub = shutil.which("mosquitto_pub"), shutil.which("mosquitto_sub")
    return (pub, sub) if pub and sub else None


def leg_mosquitto_c(settings: Settings, n: int) -> Leg:
    """mosquitto_pub -l into mosquitto_sub -C n, both QoS 1, MQTT 5."""
    name = "MQTT, C clients (mosquitto_pub -l -> mosquitto_sub)"
    clients = mosquitto_clients()
    if clients is None:
        return _skipped(name, False, "mosquitto_pub/mosquitto_sub not installed")
    pub_bin, sub_bin = clients
    login = full_access_mqtt_params(settings)
    with tempfile.TemporaryDirectory(prefix="bench-mosquitto-clients-") as config_dir:
        env = mosquitto_clients_env(login.username, login.password, Path(config_dir))
        return _mosquitto_c(name, pub_bin, sub_bin, login.host, login.port, n, env)


def _mosquitto_c(
    name: str, pub_bin: str, sub_bin: str, host: str, port: int, n: int, env: dict[str, str]
) -> Leg:
    topic = f"bench/leg-c/{uuid.uuid4().hex[:8]}"
    common = ["-h", host, "-p", str(port), "-V", "mqttv5", "-q", "1", "-t", topic]
    sub = subprocess.Popen([sub_bin, *common, "-C", str(n)], stdout=subprocess.DEVNULL, env=env)
    try:
        time.sleep(_SUBSCRIBE_SETTLE_S)
        line = senml_payload("wl-leg-00000")[0] + b"\n"
        t0 = time.perf_counter()
        pub = subprocess.Popen(
            [pub_bin, *common, "-M", "1000", "-l"], stdin=subprocess.PIPE, env=env
        )
        assert pub.stdin is not None
        pub.stdin.write(line * n)
        pub.stdin.close()
        sub.wait(LEG_TIMEOUT_S)
        seconds = time.perf_counter() - t0
        pub.wait(30)
    except subprocess.TimeoutExpired:
        return _skipped(name, False, f"not all {n} messages arrived in {LEG_TIMEOUT_S:.0f} s")
    finally:
        if sub.poll() is None:
            sub.kill()
    return Leg(name, n / seconds, n, seconds, False, "mosquitto_pub -M 1000")


# -- MQTT, raw publisher into paho ---------------------------------------------------------


class _Counter:
    """A paho subscriber's message count and the time of the last one."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.last = 0.0
        self.done = threading.Event()
        self.subscribed = threading.Event()

    def on_message(self, *_: object) -> None:
        self.count += 1
        if self.count >= self.n:
            self.last = time.time()
            self.done.set()

    def on_subscribe(self, *_: object) -> None:
        self.subscribed.set()


def _publish_and_wait(settings: Settings, prefix: str, n: int, counter: _Counter) -> Any:
    """Run the raw publisher for ``n`` messages under ``prefix``; wait for the subscriber."""
    host = settings.mqtt_host or "127.0.0.1"
    command = publisher_command(host, settings.mqtt_port, settings.mqtt_protocol, "--rate", "0")
    command += ["--count", str(n), "--device-prefix", "wl-leg-"]
    command += ["--topic-format", prefix + "/{device}"]
    out = subprocess.run(
        command, capture_output=True, cwd=REPO, timeout=LEG_TIMEOUT_S, check=True
    ).stdout
    result = json.loads(out)
    counter.done.wait(LEG_TIMEOUT_S)
    return result


def leg_raw_paho(settings: Settings, n: int) -> Leg:
    """The raw-socket publisher (unpaced, 1000 in flight) into one paho subscriber."""
    name = "MQTT, raw publisher -> one paho subscriber"
    login = full_access_mqtt_params(settings)
    counter = _Counter(n)
    sub = new_client(login)
    sub.on_message = counter.on_message
    sub.on_subscribe = counter.on_subscribe
    prefix = f"bench/leg-paho/{uuid.uuid4().hex[:8]}"
    sub.connect(login.host, login.port)
    sub.subscribe(f"{prefix}/#", qos=1)
    sub.loop_start()
    try:
        counter.subscribed.wait(10)
        result = _publish_and_wait(settings, prefix, n, counter)
    finally:
        sub.loop_stop()
        sub.disconnect()
    if counter.count < n:
        return _skipped(name, False, f"{counter.count} of {n} messages arrived")
    seconds = counter.last - result["started_at"]
    cpu_us = result["cpu_s"] / n * 1e6
    return Leg(name, n / seconds, n, seconds, False, f"publisher {cpu_us:.1f} µs CPU/msg")


def leg_raw_session(settings: Settings, n: int) -> Leg:
    """The raw-socket publisher into the bridge's MQTT session, acking what each read gave."""
    from sensors.mqtt_session import Incoming, MqttSession

    name = "MQTT, raw publisher -> the bridge's MQTT session"
    login = full_access_mqtt_params(settings)
    prefix = f"bench/leg-session/{uuid.uuid4().hex[:8]}"
    counter = _Counter(n)
    holder: list[MqttSession] = []

    def on_messages(messages: list[Incoming]) -> None:
        holder[0].ack(messages[0].connection, [m.packet_id for m in messages if m.qos])
        for _ in messages:
            counter.on_message()

    session = MqttSession(
        login.host,
        login.port,
        f"bench-leg-{uuid.uuid4().hex[:8]}",
        [f"{prefix}/#"],
        on_messages,
        protocol=5 if settings.mqtt_protocol == 5 else 4,
        username=login.username or None,
        password=login.password or None,
    )
    holder.append(session)
    session.start()
    try:
        session.subscribed.wait(10)
        result = _publish_and_wait(settings, prefix, n, counter)
    finally:
        session.stop(end_session=True)
    if counter.count < n:
        return _skipped(name, True, f"{counter.count} of {n} messages arrived")
    seconds = counter.last - result["started_at"]
    return Leg(name, n / seconds, n, seconds, True, "each read acknowledged in one write")


# -- Kafka ---------------------------------------------------------------------------------


def fresh_topic(settings: Settings, label: str) -> str:
    """A new topic with the pipeline's partition count."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    topic = f"{settings.kafka_topic_prefix}bench.leg.{label}.{uuid.uuid4().hex[:6]}"
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="bench-legs")
    try:
        admin.create_topics([NewTopic(topic, settings.kafka_partitions, 1)])
    finally:
        admin.close()
    return topic


def consume_kafka_python(
    bootstrap: str, topic: str, partitions: int, n: int, ready: Any, out: Any
) -> None:
    """Child process: read ``n`` records from the start; report (count, time of the last)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    consumer.poll(timeout_ms=100)
    ready.set()
    got, last, deadline = 0, 0.0, time.time() + LEG_TIMEOUT_S
    while got < n and time.time() < deadline:
        for records in consumer.poll(timeout_ms=200, max_records=10_000).values():
            got += len(records)
            last = time.time()
    consumer.close()
    out.put((got, last))


def consume_confluent(
    bootstrap: str, topic: str, partitions: int, n: int, ready: Any, out: Any
) -> None:
    """Child process: as :func:`consume_kafka_python`, with confluent-kafka."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-leg-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    consumer.consume(num_messages=1, timeout=0.1)
    ready.set()
    got, last, deadline = 0, 0.0, time.time() + LEG_TIMEOUT_S
    while got < n and time.time() < deadline:
        messages = consumer.consume(num_messages=10_000, timeout=0.2)
        ok = sum(1 for m in messages if m.error() is None)
        if ok:
            got += ok
            last = time.time()
    consumer.close()
    out.put((got, last))


def produce_kafka_python(settings: Settings, topic: str, n: int) -> None:
    """The pipeline's producer (infra.kafka.make_producer), keyed by device."""
    producer = topics.make_producer(settings)
    try:
        for i in range(n):
            producer.send(topic, key=b"wl-leg-%05d" % (i % 2000), value=_KAFKA_VALUE)
        producer.flush()
    finally:
        producer.close()


def produce_confluent(settings: Settings, topic: str, n: int) -> None:
    """confluent-kafka with the same guarantees: acks=all, linger 5 ms, one request in flight."""
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "acks": "all",
            "linger.ms": 5,
            "batch.size": 256 * 1024,
            "max.in.flight.requests.per.connection": 1,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    failed = [0]

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed[0] += 1

    for i in range(n):
        while True:
            try:
                producer.produce(
                    topic, _KAFKA_VALUE, b"wl-leg-%05d" % (i % 2000), on_delivery=delivered
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(LEG_TIMEOUT_S)
    if failed[0]:
        raise RuntimeError(f"confluent-kafka: {failed[0]} deliveries failed")


def leg_kafka(
    settings: Settings,
    n: int,
    label: str,
    produce: Callable[[Settings, str, int], None],
    consume: Callable[..., None],
) -> Leg:
    """Produce ``n`` records while another process consumes them; rate first send -> last read."""
    name = f"Kafka produce -> consume ({label})"
    topic = fresh_topic(settings, label.replace(" ", "-"))
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    args = (settings.kafka_bootstrap, topic, settings.kafka_partitions, n, ready, out)
    proc = ctx.Process(target=consume, args=args, daemon=True)
    proc.start()
    try:
        if not ready.wait(60):
            return _skipped(name, label == "kafka-python", "consumer did not start")
        t0 = time.time()
        produce(settings, topic, n)
        produced_s = time.time() - t0
        got, last = out.get(timeout=LEG_TIMEOUT_S + 30)
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    if got < n:
        return _skipped(name, label == "kafka-python", f"{got} of {n} records consumed")
    seconds = last - t0
    note = f"produce alone {n / produced_s:,.0f} msg/s"
    return Leg(name, n / seconds, n, seconds, label == "kafka-python", note)


# -- PostgreSQL ----------------------------------------------------------------------------


def leg_copy(settings: Settings, rows: int, batch: int = 15_000) -> Leg:
    """The writer's store path in batches; the leg's rows are deleted afterwards."""
    pool = make_pool(settings, max_size=1)
    start = datetime.now(UTC).timestamp()
    done = 0
    try:
        with pool.connection() as conn:
            t0 = time.perf_counter()
            while done < rows:
                with conn.transaction(), conn.cursor() as cur:
                    copy_readings(cur, _copy_batch(start, done, batch))
                done += batch
            seconds = time.perf_counter() - t0
            conn.execute("DELETE FROM readings WHERE device_id LIKE 'leg-%'")
            conn.commit()
    finally:
        pool.close()
    note = f"{done / seconds:,.0f} rows/s in transactions of {batch:,} rows"
    name = "COPY + dedup into readings (copy_readings)"
    return Leg(name, done / 3 / seconds, done // 3, seconds, True, note)


def _copy_batch(start: float, done: int, batch: int) -> list[tuple[datetime, str, str, float, str]]:
    return [
        (
            datetime.fromtimestamp(start + (done + i) * 1e-3, UTC),
            f"leg-{i % 1000}",
            "water_level",
            float(i),
            "cm",
        )
        for i in range(batch)
    ]


def run_legs(settings: Settings, messages: int) -> list[Leg]:
    """Every leg, one after the other, printing each as it is measured."""
    steps: list[tuple[str, Callable[[], Leg]]] = [
        ("MQTT, C clients", lambda: leg_mosquitto_c(settings, messages)),
        ("MQTT, raw publisher -> session", lambda: leg_raw_session(settings, messages)),
        ("MQTT, raw publisher -> paho", lambda: leg_raw_paho(settings, messages)),
        (
            "Kafka (kafka-python)",
            lambda: leg_kafka(
                settings, messages, "kafka-python", produce_kafka_python, consume_kafka_python
            ),
        ),
        (
            "Kafka (confluent-kafka)",
            lambda: leg_kafka(
                settings, messages, "confluent-kafka", produce_confluent, consume_confluent
            ),
        ),
        ("COPY into readings", lambda: leg_copy(settings, messages * 3)),
    ]
    legs = []
    for name, step in steps:
        try:
            leg = step()
        except Exception as exc:  # a leg that cannot run is reported, not fatal
            leg = Leg(name, None, 0, 0.0, False, f"failed: {exc!r}")
        legs.append(leg)
        print_leg(leg)
    return legs


def print_leg(leg: Leg) -> None:
    rate = f"{leg.msg_per_s:>9,.0f} msg/s" if leg.msg_per_s else f"{'-':>9} msg/s"
    note = f"  ({leg.note})" if leg.note else ""
    print(f"  {leg.name:<55} {rate}{note}", flush=True)
