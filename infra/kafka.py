"""Kafka adapter (kafka-python): topic names, producer, consumer, topic creation.

Nothing here depends on the broker being Apache Kafka or Tansu.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, KafkaTimeoutError, RetriableError, TopicAlreadyExistsError
from kafka.partitioner.default import murmur2
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from core.sensor.telemetry import TelemetryMessage
from infra.settings import Settings

log = logging.getLogger(__name__)

TELEMETRY = "cityops.telemetry"
CASES_INBOUND = "cityops.cases.inbound"
DOMAIN_EVENTS = "cityops.domain-events"
DEADLETTER = "cityops.deadletter"

# kafka-python backs off reconnecting to a broker it lost exponentially, up to 30 s by
# default: after an outage of 30 s a client could wait that long again once the broker
# is back. Every client here tries at least every 2 s.
RECONNECT_BACKOFF_MAX_MS = 2_000


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


DEADLETTER_WAIT_S = 30.0


class DeadLettersUnsentError(KafkaError):
    """Dead letters the broker had not acknowledged when the worker was told to stop."""

    retriable = True


def send_deadletters(
    producer: Any,
    topic: str,
    key: bytes,
    values: Sequence[bytes],
    stop: threading.Event | None = None,
    wait_s: float = DEADLETTER_WAIT_S,
) -> None:
    """Send dead letters and wait until Kafka holds every one.

    Workers call this before they commit the position past the records these came from:
    a crash in between sends them again (the same source topic, partition and offset, so
    a reader can tell), but never loses one.

    A broker that does not answer is waited out, one log line per ``wait_s`` without
    every acknowledgement: a letter still queued in the producer is waited for, not sent
    twice; one the producer gave up on (its delivery timeout passed, or no metadata in
    ``max_block_ms``) is sent again. An error that no retry can cure is raised at once;
    ``stop`` ends the wait with ``DeadLettersUnsentError``.
    """
    futures: list[Any] = [None] * len(values)
    pause = stop if stop is not None else threading.Event()
    attempt = 0
    while True:
        attempt += 1
        for i, value in enumerate(values):
            future = futures[i]
            if future is None or (future.is_done and future.failed()):
                try:
                    futures[i] = producer.send(topic, key=key, value=value)
                except KafkaTimeoutError:  # no metadata for the topic in max_block_ms
                    futures[i] = None
        deadline = time.monotonic() + wait_s
        for future in futures:
            if future is not None and not future.is_done:
                with contextlib.suppress(KafkaError):
                    future.get(timeout=max(0.0, deadline - time.monotonic()))
        errors = [f.exception for f in futures if f is not None and f.is_done and f.failed()]
        for error in errors:
            if not getattr(error, "retriable", False):
                raise error
        unsent = sum(1 for f in futures if f is None or not (f.is_done and f.succeeded()))
        if not unsent:
            return
        log.warning(
            "dead letters to %s: %d of %d not acknowledged (%s); attempt %d, waiting on",
            topic,
            unsent,
            len(values),
            errors[0] if errors else f"no answer in {wait_s:.0f} s",
            attempt,
        )
        if pause.wait(min(wait_s, 1.0)):
            raise DeadLettersUnsentError(f"{unsent} of {len(values)} dead letters to {topic}")


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


def socket_options(settings: Settings) -> list[tuple[int, int, int]]:
    """kafka-python's socket options: its default TCP_NODELAY, and TCP keepalive as the
    database connections have it (``Settings.tcp_keepalive``)."""
    idle, interval, count = settings.tcp_keepalive()
    return [
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle),
        (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval),
        (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count),
    ]


def make_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    """A producer that waits for the broker's acknowledgement (no silent loss)."""
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "acks": "all",
        "linger_ms": 5,
        "retries": 10,
        "max_in_flight_requests_per_connection": 1,  # keep per-key order across retries
        # At least once, not kafka-python's idempotent producer: a broker that keeps no
        # producer state across its restart (Tansu 0.6 on S3) answers a batch sent
        # again after it as a duplicate, and the producer takes that for delivered: 6
        # and 77 readings lost in tests/integration/test_service_restarts.py. Every
        # consumer here drops a repeat by its key instead.
        "enable_idempotence": False,
        "batch_size": 256 * 1024,
        "client_id": "cityops",
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
        "socket_options": socket_options(settings),
    }
    config.update(overrides)
    return KafkaProducer(**config)


class _Positions(ConsumerRebalanceListener):
    """Places each assigned partition at the position stored with our own writes.

    kafka-python runs the listener on its network thread, where a blocking call (a
    database read, an offsets request) fails, and where an error ends ``poll`` and with
    it the worker. So assignment only pauses the new partitions; ``place``, called by
    ``TrackedConsumer.poll`` on the worker's thread, reads their positions, seeks and
    resumes them. A database that is down leaves them paused (the consumer stays in its
    group) and is tried again with a backoff, one log line per attempt.
    """

    def __init__(
        self,
        consumer: KafkaConsumer,
        load_positions: Callable[[list[TopicPartition]], dict[TopicPartition, int]],
        on_revoked: Callable[[list[TopicPartition]], None] | None,
    ) -> None:
        self.consumer = consumer
        self.load_positions = load_positions
        self.on_revoked = on_revoked
        self.unplaced: set[TopicPartition] = set()
        self.lost: dict[TopicPartition, int] = {}
        self._failures = 0
        self._next_try = 0.0

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.unplaced.difference_update(revoked)
        for tp in revoked:
            self.lost.pop(tp, None)
        if self.on_revoked is not None:
            self.on_revoked(list(revoked))

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if assigned:
            self.consumer.pause(*assigned)
            self.unplaced.update(assigned)

    def place(self) -> None:
        """Seek and resume the partitions assigned since the last call."""
        if not self.unplaced or time.monotonic() < self._next_try:
            return
        from infra.pgstore import DATABASE_UNAVAILABLE, describe

        tps = sorted(self.unplaced)
        try:
            positions = self.load_positions(tps)
            lost = beyond_the_log(self.consumer, {tp: positions[tp] for tp in positions})
        except (*DATABASE_UNAVAILABLE, KafkaError) as exc:
            self._failures += 1
            wait = _backoff_s(self._failures)
            self._next_try = time.monotonic() + wait
            log.warning(
                "cannot place %d assigned partitions yet (%s); attempt %d, retrying in %.1f s",
                len(tps),
                describe(exc),
                self._failures,
                wait,
            )
            return
        self._failures = 0
        for tp in tps:
            offset = positions.get(tp)
            if offset is None:
                self.consumer.seek_to_beginning(tp)
            elif tp in lost:
                # Reading on from the recorded position would skip every record the
                # broker gets below it; reading from the start would record positions
                # backwards. Neither silently: this partition waits for an operator.
                log.error(
                    "%s[%d]: the recorded position %d is beyond the broker's log (it ends "
                    "at %d): the broker has lost its log (memory storage restarted, topic "
                    "re-created?). NOT consuming this partition: reset this group's "
                    "positions (as `cityops demo` does at start) and restart the worker",
                    tp.topic,
                    tp.partition,
                    offset,
                    lost[tp],
                )
                self.lost[tp] = offset
                continue
            else:
                self.consumer.seek(tp, offset)
            self.consumer.resume(tp)
        self.unplaced.clear()
        log.info("assigned %s", [(tp.topic, tp.partition) for tp in tps])


class TrackedConsumer(KafkaConsumer):
    """A group consumer whose partitions start at the positions stored in our database
    (``make_consumer``); ``lost`` names the partitions found beyond the broker's log.

    A broker out of reach is waited out: kafka-python's ``poll`` raises a retriable
    error when it cannot reach the broker to find the group's coordinator (connection
    refused or reset); this ``poll`` logs it, pauses (backing off, one line per
    attempt) and returns no records, and the worker polls again.
    """

    positions: _Positions
    _broker_failures: int = 0

    def poll(self, timeout_ms: int = 0, max_records: int | None = None, **kw: Any) -> Any:
        try:
            records = super().poll(timeout_ms=timeout_ms, max_records=max_records, **kw)
        except RetriableError as exc:
            self._broker_unreachable(exc)
            return {}
        if self._broker_failures:
            log.info("%s: broker reachable again", self.config["client_id"])
            self._broker_failures = 0
        self.positions.place()
        return records

    def _broker_unreachable(self, exc: KafkaError) -> None:
        from infra.pgstore import describe

        self._broker_failures += 1
        wait = _backoff_s(self._broker_failures - 1)
        log.warning(
            "%s: broker unreachable (%s); attempt %d, polling again in %.1f s",
            self.config["client_id"],
            describe(exc),
            self._broker_failures,
            wait,
        )
        time.sleep(wait)

    @property
    def lost(self) -> dict[TopicPartition, int]:
        return dict(self.positions.lost)


# How long a probe waits for the last record a worker recorded before it says the
# broker no longer has it, and how long each of its fetches may wait: Tansu 0.6 on S3
# lists a partition's whole log for every fetch and answers with no records once the
# fetch's wait is up (kafka-python's default, 500 ms, is up before it has listed a few
# thousand batches, or sooner on a slow object store), which would read as a lost log.
_PROBE_S = 5.0
_PROBE_FETCH_WAIT_MS = 4_000


def beyond_the_log(
    consumer: KafkaConsumer, positions: Mapping[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """The partitions whose recorded next offset lies beyond the broker's log, with the
    end the broker reports.

    A position past the end means the broker lost records it had acknowledged (a broker
    with memory storage restarted, or the topic was deleted and created again). Some
    brokers report an end below their last record (Tansu 0.6 on S3 reports the base
    offset + 1 of the batch it stored last by modification time), so a position past
    the reported end is confirmed by fetching the last record recorded (offset
    position - 1): the log is intact if it is still there. Detects a lost log only while
    the new one is shorter than the recorded position.
    """
    wanted = {tp: p for tp, p in positions.items() if p > 0}
    if not wanted:
        return {}
    ends = consumer.end_offsets(list(wanted))
    suspects = {tp: p for tp, p in wanted.items() if p > ends.get(tp, 0)}
    if not suspects:
        return {}
    probe = KafkaConsumer(
        bootstrap_servers=consumer.config["bootstrap_servers"],
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="none",
        client_id=f"{consumer.config['client_id']}-probe",
        fetch_max_wait_ms=_PROBE_FETCH_WAIT_MS,
    )
    try:
        probe.assign(list(suspects))
        for tp, p in suspects.items():
            probe.seek(tp, p - 1)
        missing = set(suspects)
        deadline = time.monotonic() + _PROBE_S
        while missing and time.monotonic() < deadline:
            try:
                got = probe.poll(timeout_ms=200)
            except KafkaError as exc:  # e.g. offset out of range: below the new end
                log.debug("probe: %r", exc)
                break
            for tp, records in got.items():
                if any(r.offset >= suspects[tp] - 1 for r in records):
                    missing.discard(tp)
    finally:
        probe.close()
    return {tp: ends.get(tp, 0) for tp in missing}


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
    stop: threading.Event | None = None,
    name: str = "consumer",
) -> None:
    """Record each partition's batch with its fenced position; retry lost races.

    A ``StalePositionError`` means another worker owns the partition now: re-read the
    stored position and seek there. Another ``IntegrityError`` means a concurrent write
    to the same aggregates: run the batch again on fresh state. A database that is
    down is waited out (``until_database_back``: one log line per attempt) and the batch
    run again; only ``stop`` ends the wait, re-raising, with nothing recorded.
    """
    from eventsourcing.persistence import IntegrityError

    from infra.pgstore import StalePositionError, until_database_back

    for tp, records in batch.items():
        if not records:
            continue
        for attempt in range(5):
            try:
                for waiting in until_database_back(stop, f"{name} {tp.topic}[{tp.partition}]"):
                    with waiting:
                        process_partition(tp, records)
                break
            except StalePositionError as exc:
                log.warning("%s; re-reading position", exc)
                for waiting in until_database_back(stop, f"{name}: reading positions"):
                    with waiting:
                        found = load_positions([tp])
                if tp in found:
                    consumer.seek(tp, found[tp])
                break
            except IntegrityError:
                log.info("concurrent update on %s, retry %d", tp, attempt + 1)
        else:
            raise RuntimeError(f"could not record batch of {tp} after 5 attempts")


@contextlib.contextmanager
def consuming(
    consumer: KafkaConsumer, producer: KafkaProducer, stop: threading.Event, name: str
) -> Iterator[None]:
    """The span of a worker's poll loop: at its end the consumer closes (no offset
    commit: the positions live in the database) and the producer flushes. The database
    going away while ``stop`` is set (all stopping together) ends it quietly; at any
    other time it is raised."""
    from infra.pgstore import DATABASE_UNAVAILABLE

    try:
        yield
    except DATABASE_UNAVAILABLE:
        if not stop.is_set():
            raise
        log.info("%s stopped while the database was unavailable", name)
    finally:
        consumer.close(autocommit=False)
        producer.flush()


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
) -> TrackedConsumer:
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
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
        "socket_options": socket_options(settings),
    }
    config.update(overrides)
    consumer = TrackedConsumer(**config)
    consumer.positions = _Positions(consumer, load_positions, on_revoked)
    consumer.subscribe([topic], listener=consumer.positions)
    return consumer


def telemetry_consumer(
    settings: Settings,
    group_id: str,
    load_positions: Callable[[list[TopicPartition]], dict[TopicPartition, int]],
    on_revoked: Callable[[list[TopicPartition]], None],
) -> TrackedConsumer:
    """A ``make_consumer`` of the telemetry topic, fetching as ``telemetry_fetch`` says."""
    return make_consumer(
        settings,
        Topics.of(settings).telemetry,
        group_id,
        load_positions=load_positions,
        on_revoked=on_revoked,
        **telemetry_fetch(settings),
    )


def _backoff_s(attempt: int) -> float:
    """Seconds to wait before try ``attempt + 1``: doubling from 0.25 s, at most the
    workers' longest pause (``infra.pgstore.RETRY_MAX_S``)."""
    from infra.pgstore import RETRY_MAX_S

    return float(min(0.25 * 2**attempt, RETRY_MAX_S))
