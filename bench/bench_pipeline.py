"""End-to-end ingest benchmark: MQTT -> bridge -> Kafka -> writer -> PostgreSQL.

Shape of the ThingsBoard anchor: 3 data points per message, every service on this
machine. Prints the sustained rate, loss, publish-to-commit latency (p50/p99), and each
leg alone (MQTT publish->receive, Kafka produce->consume, COPY into the table).

    python -m bench.bench_pipeline --rate 10000 --duration 60

Uses the services named by CITYOPS_* variables if set, otherwise starts its own
(throwaway PostgreSQL cluster, Mosquitto, Tansu) in a temp dir.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cityops import kafka as topics
from cityops.bootstrap import city_app
from cityops.pgstore import apply_schema, make_pool
from cityops.services import throwaway_services
from cityops.settings import Settings
from core.sensor import SensorSpec
from sensors.writer import copy_readings


def payload(device_id: str, ts: float, i: int) -> bytes:
    return orjson.dumps(
        [
            {"bn": f"{device_id}:", "bt": ts, "n": "water_level", "u": "cm", "v": 20.0 + (i % 7)},
            {"n": "battery", "u": "%EL", "v": 90.0},
            {"n": "temperature", "u": "Cel", "v": 18.5},
        ]
    )


def publisher(
    host: str, port: int, devices: list[str], rate: float, duration: float, out: mp.Queue
) -> None:
    """Publish QoS 1 at ``rate`` msg/s for ``duration`` s; report how many were acked."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    acked = [0]

    def on_publish(*_: object) -> None:
        acked[0] += 1

    client.on_publish = on_publish
    client.connect(host, port)
    client.loop_start()
    sent = 0
    start = time.monotonic()
    end = start + duration
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - start) * rate)
        while sent < due:
            d = devices[sent % len(devices)]
            client.publish(f"cityops/gw-bench/{d}/telemetry", payload(d, time.time(), sent), qos=1)
            sent += 1
        time.sleep(0.001)
    deadline = time.monotonic() + 60
    while acked[0] < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    out.put((sent, acked[0], time.monotonic() - start))


def leg_mqtt(host: str, port: int, n: int) -> float:
    """Publish ``n`` QoS 1 messages; one paho subscriber receives them. Returns msg/s."""
    got = threading.Event()
    count = [0]
    topic = f"bench/{uuid.uuid4().hex[:6]}"
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(*_: object) -> None:
        count[0] += 1
        if count[0] >= n:
            got.set()

    sub.on_message = on_message
    sub.connect(host, port)
    sub.subscribe(topic, qos=1)
    sub.loop_start()
    time.sleep(0.5)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.max_inflight_messages_set(1000)
    pub.connect(host, port)
    pub.loop_start()
    body = payload("wl-x", time.time(), 0)
    t0 = time.perf_counter()
    for _ in range(n):
        pub.publish(topic, body, qos=1)
    got.wait(120)
    dt = time.perf_counter() - t0
    pub.loop_stop()
    sub.loop_stop()
    return count[0] / dt


def leg_kafka(settings: Settings, n: int) -> float:
    """Produce ``n`` telemetry-sized messages and consume them back. Returns msg/s."""
    from kafka import KafkaConsumer

    topic = f"bench.leg.{uuid.uuid4().hex[:6]}"
    producer = topics.make_producer(settings)
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    value = (
        b'{"kind":"readings","device_id":"wl-x","gateway_id":"g","received_at":1.0,'
        b'"readings":[{"ts":1.0,"metric":"water_level","value":1.0,"unit":"cm"},'
        b'{"ts":1.0,"metric":"battery","value":1.0,"unit":"%"},'
        b'{"ts":1.0,"metric":"temperature","value":1.0,"unit":"Cel"}]}'
    )
    t0 = time.perf_counter()
    for i in range(n):
        producer.send(topic, key=str(i % 1000).encode(), value=value)
    producer.flush()
    got = 0
    while got < n and time.perf_counter() - t0 < 120:
        for records in consumer.poll(timeout_ms=200, max_records=10_000).values():
            got += len(records)
    dt = time.perf_counter() - t0
    consumer.close()
    producer.close()
    return got / dt


def leg_copy(settings: Settings, rows: int) -> float:
    """The writer's store path (COPY to staging, insert new rows) in batches of 15,000."""
    pool = make_pool(settings, max_size=1)
    start = datetime.now(UTC).timestamp()
    t0 = time.perf_counter()
    done = 0
    with pool.connection() as conn:
        while done < rows:
            batch = [
                (
                    datetime.fromtimestamp(start + (done + i) * 1e-3, UTC),
                    f"leg-{i % 1000}",
                    "water_level",
                    float(i),
                    "cm",
                )
                for i in range(15_000)
            ]
            with conn.transaction(), conn.cursor() as cur:
                copy_readings(cur, batch)
            done += len(batch)
        dt = time.perf_counter() - t0
        conn.execute("DELETE FROM readings WHERE device_id LIKE 'leg-%'")
        conn.commit()
    pool.close()
    return done / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rate", type=float, default=10_000, help="messages per second")
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--devices", type=int, default=2_000)
    ap.add_argument("--bridges", type=int, default=2)
    ap.add_argument("--writers", type=int, default=1)
    ap.add_argument("--publishers", type=int, default=2)
    ap.add_argument(
        "--monitor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the sensor monitor on the same stream",
    )
    args = ap.parse_args()

    with ExitStack() as stack:
        if not os.environ.get("CITYOPS_DATABASE_URL"):
            os.environ.update(stack.enter_context(throwaway_services("cityops-bench-")))
        run = uuid.uuid4().hex[:6]
        os.environ["CITYOPS_KAFKA_TOPIC_PREFIX"] = f"bench{run}."
        os.environ["CITYOPS_MQTT_SHARE_GROUP"] = f"bench{run}"
        os.environ.setdefault("CITYOPS_LOG_LEVEL", "WARNING")
        settings = Settings()
        pool = make_pool(settings, max_size=1)
        with pool.connection() as conn:
            apply_schema(conn)
            conn.execute("TRUNCATE readings")
            conn.commit()
        topics.ensure_topics(settings)
        devices = [f"wl-b{run}-{i:05d}" for i in range(args.devices)]
        app = city_app(settings, pool_size=2, create_tables=True)
        app.register_sensors(
            [
                SensorSpec(d, "water_level", "gw-bench", 121.47, 31.23, None, None, None)
                for d in devices
            ],
            actor="bench",
            correlation_id="bench",
        )
        app.close()

        print("legs alone:")
        mqtt_rate = leg_mqtt(settings.mqtt_host, settings.mqtt_port, 50_000)
        print(f"  MQTT publish->receive (QoS 1, one paho subscriber): {mqtt_rate:,.0f} msg/s")
        kafka_rate = leg_kafka(settings, 100_000)
        print(f"  Kafka produce->consume (kafka-python, Tansu):        {kafka_rate:,.0f} msg/s")
        copy_rows = leg_copy(settings, 600_000)
        print(
            f"  COPY + dedup into readings:                           {copy_rows:,.0f} rows/s"
            f" = {copy_rows / 3:,.0f} msg/s"
        )

        env = dict(os.environ)
        workers = []
        commands = [["bridge", "--client-id", f"bench{run}-bridge{i}"] for i in range(args.bridges)]
        commands += [["writer"]] * args.writers
        if args.monitor:
            commands.append(["monitor"])
        for command in commands:
            workers.append(subprocess.Popen([sys.executable, "-m", "cityops", *command], env=env))

        def stop_workers() -> None:
            for w in workers:
                w.terminate()
            for w in workers:
                w.wait(30)

        stack.callback(stop_workers)
        time.sleep(8)  # consumer groups join, shared subscriptions settle

        out: mp.Queue = mp.Queue()
        per = args.rate / args.publishers
        procs = [
            mp.Process(
                target=publisher,
                args=(
                    settings.mqtt_host,
                    settings.mqtt_port,
                    devices[i :: args.publishers],
                    per,
                    args.duration,
                    out,
                ),
            )
            for i in range(args.publishers)
        ]
        t0 = time.monotonic()
        for p in procs:
            p.start()
        results = [out.get(timeout=args.duration + 120) for _ in procs]
        for p in procs:
            p.join()
        sent = sum(r[0] for r in results)
        acked = sum(r[1] for r in results)
        publish_s = max(r[2] for r in results)
        expected_rows = sent * 3
        with pool.connection() as conn:
            deadline = time.monotonic() + 300
            rows = 0
            while time.monotonic() < deadline:
                rows = conn.execute("SELECT count(*) FROM readings").fetchone()[0]  # type: ignore[index]
                conn.commit()
                if rows >= expected_rows:
                    break
                time.sleep(0.5)
            drained_s = time.monotonic() - t0
            lat = conn.execute(
                "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP"
                " (ORDER BY extract(epoch FROM ingested_at - ts)) FROM readings"
            ).fetchone()[0]  # type: ignore[index]
            first_last = conn.execute(
                "SELECT min(ingested_at), max(ingested_at) FROM readings"
            ).fetchone()
        ingest_s = (
            (first_last[1] - first_last[0]).total_seconds() if first_last and first_last[0] else 0
        )
        e2e_rate = rows / 3 / max(drained_s, publish_s)
        print(
            f"\nend to end ({args.bridges} bridges, {args.writers} writer(s), monitor "
            f"{'on' if args.monitor else 'off'}, {args.devices} devices):"
        )
        print(
            f"  offered {args.rate:,.0f} msg/s for {args.duration:.0f} s; published {sent:,}"
            f" ({acked:,} acked by the broker) in {publish_s:.1f} s"
        )
        missing = expected_rows - rows
        verdict = (
            "zero loss"
            if missing == 0
            else f"{missing:,} not committed within 300 s of the last publish (backlog or loss)"
        )
        print(
            f"  rows committed {rows:,} of {expected_rows:,} expected: {verdict};"
            f" drained {drained_s:.1f} s after the first publish"
        )
        print(
            f"  sustained: {e2e_rate:,.0f} msg/s = {e2e_rate * 3:,.0f} data points/s "
            f"(commit span {ingest_s:.1f} s)"
        )
        print(f"  publish->commit latency p50 {lat[0] * 1000:,.0f} ms, p99 {lat[1] * 1000:,.0f} ms")
        slowest = min(mqtt_rate, kafka_rate, copy_rows / 3)
        print(f"  end-to-end rate / slowest leg ({slowest:,.0f} msg/s): {e2e_rate / slowest:.0%}")
        pool.close()


if __name__ == "__main__":
    main()
