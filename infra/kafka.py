"""Kafka adapter (kafka-python): topic names, producer, consumer, topic creation.

Nothing here depends on the broker being Apache Kafka or Tansu.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.partitioner.default import murmur2
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from core.sensor.telemetry import TelemetryMessage
from infra.settings import Settings

log = logging.getLogger(__name__)

TELEMETRY = "cityops.telemetry"
CASES_INBOUND = "cityops.cases.inbound"
DOMAIN_EVENTS = "cityops.domain-events"
DEADLETTER = "cityops.deadletter"


def deadletter_for(source: str, record: Any, reason: str, now: float) -> bytes:
    """A dead-letter value for a Kafka record a worker cannot use (foreign or corrupt)."""
    return orjson.dumps(
        {
            "source": source,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "reason": reason,
            "payload": (record.value or b"")[:4096].decode("utf-8", "replace"),
            "received_at": now,
        }
    )


def send_deadletters(producer: Any, topic: str, key: bytes, values: Sequence[bytes]) -> None:
    """Send dead letters and wait until Kafka holds every one.

    Workers call this before they commit the position past the records these came from:
    a crash in between sends them again (the same source topic, partition and offset, so
    a reader can tell), but never loses one.
    """
    futures = [producer.send(topic, key=key, value=value) for value in values]
    for future in futures:
        future.get(timeout=30)


def telemetry_or_reject(
    source: str, record: Any, rejects: list[bytes], now: float
) -> TelemetryMessage | None:
    """Decode a telemetry record; a corrupt one is added to ``rejects`` (dead letters)."""
    try:
        return TelemetryMessage.from_json(record.value)
    except (ValueError, KeyError, TypeError) as exc:
        rejects.append(deadletter_for(source, record, f"bad_message: {exc}", now))
        return None


@dataclass(frozen=True, slots=True)
class Topics:
    """The contract topic names, with the configured prefix (empty in production)."""

    telemetry: str
    cases_inbound: str
    domain_events: str
    deadletter: str

    @classmethod
    def of(cls, settings: Settings) -> Topics:
        p = settings.kafka_topic_prefix
        return cls(p + TELEMETRY, p + CASES_INBOUND, p + DOMAIN_EVENTS, p + DEADLETTER)

    def all(self) -> tuple[str, ...]:
        return (self.telemetry, self.cases_inbound, self.domain_events, self.deadletter)


@retry(
    retry=retry_if_exception_type(KafkaError),
    wait=wait_exponential(multiplier=0.2, max=3),
    stop=stop_after_delay(30),
    reraise=True,
)
def ensure_topics(settings: Settings) -> None:
    """Create the project's topics if they do not exist (idempotent)."""
    topics = Topics.of(settings).all()
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="cityops-admin")
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(name=t, num_partitions=settings.kafka_partitions, replication_factor=1)
            for t in topics
            if t not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new)
    finally:
        admin.close()


def make_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    """A producer that waits for the broker's acknowledgement (no silent loss)."""
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "acks": "all",
        "linger_ms": 5,
        "retries": 10,
        "max_in_flight_requests_per_connection": 1,  # keep per-key order across retries
        "batch_size": 256 * 1024,
        "client_id": "cityops",
    }
    config.update(overrides)
    return KafkaProducer(**config)


class _Positions(ConsumerRebalanceListener):
    """On assignment, seek each partition to the position stored with our own writes."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        load_positions: Callable[[list[TopicPartition]], dict[TopicPartition, int]],
        on_revoked: Callable[[list[TopicPartition]], None] | None,
    ) -> None:
        self.consumer = consumer
        self.load_positions = load_positions
        self.on_revoked = on_revoked

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if self.on_revoked is not None:
            self.on_revoked(list(revoked))

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        positions = self.load_positions(list(assigned))
        for tp in assigned:
            offset = positions.get(tp)
            if offset is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)
        log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in assigned))


class TrackedPositions:
    """A worker's Kafka positions, kept as eventsourcing tracking records in its app.

    One tracking name per (group, topic, partition); ``positions`` holds what this
    worker last saw, which its next write is fenced against.
    """

    def __init__(self, recorder: Any, group_id: str) -> None:
        self.recorder = recorder
        self.group_id = group_id
        self.positions: dict[TopicPartition, int | None] = {}

    def name(self, tp: TopicPartition) -> str:
        return f"{self.group_id}|{tp.topic}|{tp.partition}"

    def load(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """Read the stored next offsets of ``tps`` (those that have one)."""
        found: dict[TopicPartition, int] = {}
        for tp in tps:
            pos = self.recorder.max_tracking_id(self.name(tp))
            self.positions[tp] = pos
            if pos is not None:
                found[tp] = pos
        return found

    def forget(self, tps: Sequence[TopicPartition]) -> None:
        for tp in tps:
            self.positions.pop(tp, None)


def record_partitions(
    consumer: KafkaConsumer,
    batch: Mapping[TopicPartition, Sequence[Any]],
    process_partition: Callable[[TopicPartition, Sequence[Any]], object],
    load_positions: Callable[[list[TopicPartition]], dict[TopicPartition, int]],
) -> None:
    """Record each partition's batch with its fenced position; retry lost races.

    A ``StalePositionError`` means another worker owns the partition now: re-read the
    stored position and seek there. Another ``IntegrityError`` means a concurrent write
    to the same aggregates: run the batch again on fresh state.
    """
    from eventsourcing.persistence import IntegrityError

    from infra.pgstore import StalePositionError

    for tp, records in batch.items():
        if not records:
            continue
        for attempt in range(5):
            try:
                process_partition(tp, records)
                break
            except StalePositionError as exc:
                log.warning("%s; re-reading position", exc)
                found = load_positions([tp])
                if tp in found:
                    consumer.seek(tp, found[tp])
                break
            except IntegrityError:
                log.info("concurrent update on %s, retry %d", tp, attempt + 1)
        else:
            raise RuntimeError(f"could not record batch of {tp} after 5 attempts")


def default_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as the Java client) gives ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def telemetry_fetch(settings: Settings) -> dict[str, Any]:
    """Consumer settings for the telemetry stream: fewer, larger fetches.

    The broker answers a fetch once it holds ``fetch_min_bytes`` or after
    ``fetch_max_wait_ms``, so under load each poll brings thousands of records (one
    transaction for the writer, one per partition for the monitor) instead of a few.
    """
    return {
        "fetch_min_bytes": settings.kafka_fetch_min_bytes,
        "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
        "max_poll_records": settings.writer_batch_max,
    }


def make_consumer(
    settings: Settings,
    topic: str,
    group_id: str,
    load_positions: Callable[[list[TopicPartition]], dict[TopicPartition, int]],
    on_revoked: Callable[[list[TopicPartition]], None] | None = None,
    **overrides: Any,
) -> KafkaConsumer:
    """A group consumer whose positions live in our database, not in Kafka.

    ``load_positions`` returns the next offset to read per partition (None: from the start).
    Kafka's own offset commits are not used for correctness.
    """
    # The topic prefix also names the groups, so that prefixed deployments never share one.
    group_id = settings.kafka_topic_prefix + group_id
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_interval_ms": settings.kafka_max_poll_interval_ms,
        "session_timeout_ms": 6_000,
        "heartbeat_interval_ms": 1_000,
        "fetch_max_bytes": 16 * 1024 * 1024,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "client_id": group_id,
    }
    config.update(overrides)
    consumer = KafkaConsumer(**config)
    consumer.subscribe([topic], listener=_Positions(consumer, load_positions, on_revoked))
    return consumer


def telemetry_consumer(
    settings: Settings,
    group_id: str,
    load_positions: Callable[[list[TopicPartition]], dict[TopicPartition, int]],
    on_revoked: Callable[[list[TopicPartition]], None],
) -> KafkaConsumer:
    """A ``make_consumer`` of the telemetry topic, fetching as ``telemetry_fetch`` says."""
    return make_consumer(
        settings,
        Topics.of(settings).telemetry,
        group_id,
        load_positions=load_positions,
        on_revoked=on_revoked,
        **telemetry_fetch(settings),
    )
