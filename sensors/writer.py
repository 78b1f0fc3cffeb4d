"""Telemetry writer: Kafka ``cityops.telemetry`` -> readings table, exactly once.

Each poll becomes one transaction: the rows go in with COPY, and each partition's next
offset is moved from the value this writer last saw to the new one. If another writer
moved it meanwhile (a rebalance gave it the partition), the transaction is refused and
this writer re-reads its positions: no reading is lost or written twice.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from psycopg_pool import ConnectionPool

from infra import kafka as topics
from infra.kafka import Topics
from infra.pgstore import DATABASE_UNAVAILABLE, until_database_back
from infra.settings import Settings

log = logging.getLogger(__name__)


Row = tuple[datetime, str, str, float, str]

# COPY's text format gives these characters a meaning; ids, metrics and units validated at
# the gateway never contain them, but a record on the topic may come from anywhere.
_COPY_SPECIAL = re.compile(r"[\\\t\n\r\x00]")


def _copy_text(text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"expected a string, got {type(text).__name__}")
    if _COPY_SPECIAL.search(text) is None:
        return text
    if "\x00" in text:
        raise ValueError("text with a NUL character")
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def copy_lines(value: bytes, lines: list[str]) -> int:
    """Decode one ``cityops.telemetry`` value into COPY text lines; return how many.

    One decode per record, straight to the row's text. Raises ValueError, KeyError or
    TypeError for a value that is not a telemetry message; a status or location message
    has no readings (a position is the sensor monitor's: a moved device is an event).
    """
    body = orjson.loads(value)
    kind = body["kind"]
    device = _copy_text(body["device_id"])
    _copy_text(body["gateway_id"])
    float(body["received_at"])
    if kind in ("status", "location"):
        return 0
    if kind != "readings":
        raise ValueError(f"unknown telemetry kind {kind!r}")
    n = 0
    for r in body["readings"]:
        ts = float(r["ts"])
        value_ = float(r["value"])
        if not (math.isfinite(ts) and math.isfinite(value_)):
            raise ValueError("a reading's time and value must be finite")
        lines.append(_line(_ts_text(ts), device, r["metric"], value_, r["unit"]))
        n += 1
    return n


def _line(ts: str, device: str, metric: object, value: float, unit: object) -> str:
    """One row of ``readings`` in COPY text (``device`` already escaped)."""
    return f"{ts}\t{device}\t{_copy_text(metric)}\t{value!r}\t{_copy_text(unit)}\n"


@functools.lru_cache(maxsize=4096)
def _ts_text(ts: float) -> str:
    # The readings of one message share their time: formatted once.
    return datetime.fromtimestamp(ts, UTC).isoformat()


def store_lines(cur: Any, lines: Sequence[str]) -> int:
    """Store COPY lines inside the caller's transaction; return how many readings were new.

    A reading delivered twice upstream (MQTT redelivery, producer retry) must be written
    once, and that is rare: COPY straight into the table, in a savepoint; only if a row
    is already there, COPY into a session-local staging table instead and insert the
    rows not yet stored.
    """
    data = "".join(lines)
    try:
        with cur.connection.transaction():
            with cur.copy("COPY readings (ts, device_id, metric, value, unit) FROM STDIN") as copy:
                copy.write(data)
            return len(lines)
    except psycopg.errors.UniqueViolation:
        pass
    cur.execute(
        "CREATE TEMP TABLE IF NOT EXISTS readings_in"
        " (LIKE readings INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    with cur.copy("COPY readings_in (ts, device_id, metric, value, unit) FROM STDIN") as copy:
        copy.write(data)
    cur.execute(
        "INSERT INTO readings (ts, device_id, metric, value, unit, ingested_at)"
        " SELECT ts, device_id, metric, value, unit, ingested_at FROM readings_in"
        " ON CONFLICT DO NOTHING"
    )
    return int(cur.rowcount)


def copy_readings(cur: Any, rows: Sequence[Row]) -> int:
    """Store readings given as rows, like ``store_lines`` (tests, benchmarks, backfills)."""
    lines = [_line(ts.isoformat(), _copy_text(d), m, float(v), u) for ts, d, m, v, u in rows]
    return store_lines(cur, lines)


class StaleWriterError(RuntimeError):
    """Another writer advanced a partition this writer was writing."""


@dataclass(eq=False)
class TelemetryWriter:
    """Kafka consumer group member writing readings in batches."""

    settings: Settings
    pool: ConnectionPool
    producer: KafkaProducer
    group_id: str = "telemetry-writer"
    topics: Topics = field(init=False)
    positions: dict[TopicPartition, int | None] = field(init=False, default_factory=dict)
    consumer: KafkaConsumer | None = field(init=False, default=None)
    counters: Counter[str] = field(init=False, default_factory=Counter)

    def __post_init__(self) -> None:
        self.topics = Topics.of(self.settings)

    # -- positions ------------------------------------------------------------------

    def load_positions(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT topic, partition, next_offset FROM telemetry_positions WHERE consumer = %s",
                (self.group_id,),
            ).fetchall()
        stored = {TopicPartition(t, p): o for t, p, o in rows}
        found: dict[TopicPartition, int] = {}
        for tp in tps:
            self.positions[tp] = stored.get(tp)
            if tp in stored:
                found[tp] = stored[tp]
        return found

    def forget(self, tps: Sequence[TopicPartition]) -> None:
        for tp in tps:
            self.positions.pop(tp, None)

    # -- writing --------------------------------------------------------------------

    def write(self, batch: Mapping[TopicPartition, Sequence[Any]]) -> int:
        """Write one poll's records and advance positions atomically; return rows written."""
        lines: list[str] = []
        rejects: list[bytes] = []
        for records in batch.values():
            for record in records:
                mark = len(lines)
                try:
                    copy_lines(record.value, lines)
                except (ValueError, KeyError, TypeError) as exc:
                    del lines[mark:]
                    reason = f"bad_message: {exc}"
                    rejects.append(
                        topics.deadletter_for("telemetry-writer", record, reason, time.time())
                    )
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            for tp, records in batch.items():
                if not records:
                    continue
                self._advance(cur, tp, records[-1].offset + 1)
            inserted = store_lines(cur, lines) if lines else 0
        # Only after commit: positions and dead letters reflect what is durable.
        for tp, records in batch.items():
            if records:
                self.positions[tp] = records[-1].offset + 1
        for value in rejects:
            self.producer.send(self.topics.deadletter, key=b"telemetry-writer", value=value)
        self.counters["rows"] += inserted
        self.counters["duplicates"] += len(lines) - inserted
        self.counters["rejected"] += len(rejects)
        return inserted

    def _advance(self, cur: Any, tp: TopicPartition, new: int) -> None:
        expected = self.positions.get(tp)
        if expected is None:
            cur.execute(
                "INSERT INTO telemetry_positions (consumer, topic, partition, next_offset) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (self.group_id, tp.topic, tp.partition, new),
            )
        else:
            cur.execute(
                "UPDATE telemetry_positions SET next_offset = %s "
                "WHERE consumer = %s AND topic = %s AND partition = %s AND next_offset = %s",
                (new, self.group_id, tp.topic, tp.partition, expected),
            )
        if cur.rowcount != 1:
            raise StaleWriterError(f"{tp.topic}[{tp.partition}] moved past {expected}")

    # -- loop -----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        consumer = topics.telemetry_consumer(
            self.settings, self.group_id, self.load_positions, self.forget
        )
        self.consumer = consumer
        try:
            while not stop.is_set():
                batch = poll(consumer, self.settings)
                if batch:
                    self.write_durably(consumer, batch, stop, self.load_positions)
        except DATABASE_UNAVAILABLE:
            if not stop.is_set():
                raise
            log.info("telemetry writer stopped while the database was unavailable")
        finally:
            log.info("telemetry writer stopping: %s", dict(self.counters))
            consumer.close(autocommit=False)
            self.producer.flush()

    def write_durably(
        self,
        consumer: KafkaConsumer,
        batch: Mapping[TopicPartition, Sequence[Any]],
        stop: threading.Event,
        load_positions: Callable[[list[TopicPartition]], dict[TopicPartition, int]],
    ) -> None:
        """``write`` one poll, waiting out a database that is down; after a lost race,
        seek every assigned partition to what ``load_positions`` says."""
        try:
            # A database that is down is waited out with the batch in hand: its records
            # are neither skipped nor written twice (a commit that got through before the
            # connection broke fails the fence next time).
            for attempt in until_database_back(stop, "telemetry writer", log):
                with attempt:
                    self.write(batch)
        except StaleWriterError as exc:
            log.warning("%s; re-reading positions", exc)
            for attempt in until_database_back(stop, "telemetry writer", log):
                with attempt:
                    reseek(consumer, load_positions)


def poll(consumer: KafkaConsumer, settings: Settings) -> dict[TopicPartition, list[Any]]:
    """One poll of the telemetry stream: up to ``writer_batch_max`` records."""
    batch: dict[TopicPartition, list[Any]] = consumer.poll(
        timeout_ms=settings.writer_poll_ms, max_records=settings.writer_batch_max
    )
    return batch


def reseek(
    consumer: KafkaConsumer,
    load_positions: Callable[[list[TopicPartition]], dict[TopicPartition, int]],
) -> None:
    """Seek every assigned partition to its stored position (none: the beginning)."""
    assigned = list(consumer.assignment())
    found = load_positions(assigned)
    for tp in assigned:
        if tp in found:
            consumer.seek(tp, found[tp])
        else:
            consumer.seek_to_beginning(tp)
