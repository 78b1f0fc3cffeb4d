"""Telemetry consumer: the writer and the monitor on one Kafka consumer, in one process.

``TelemetryWriter`` and ``SensorMonitor`` each read the whole of ``cityops.telemetry``
when they run alone (``cityops writer``, ``cityops monitor``): every record is fetched,
checked and parsed twice, and the broker serves two consumer groups. Here one consumer
group member fetches each record once and hands every poll to both, the writer first
(readings reach the table before the rules run).

Each keeps its own stored positions and fences, exactly as when it runs alone, so either
may be run alone later without losing or repeating anything. A partition assigned here
starts at the lower of the two positions; the records below a role's own position are
not given to it (the other one has not seen them yet).
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Any

from kafka import TopicPartition

from infra import kafka as topics
from infra.settings import Settings
from sensors.monitor import SensorMonitor
from sensors.writer import TelemetryWriter, poll

log = logging.getLogger(__name__)

Batch = Mapping[TopicPartition, Sequence[Any]]


def from_position(batch: Batch, positions: Mapping[TopicPartition, int | None]) -> Batch:
    """The records of ``batch`` at or after each partition's position (``None``: all)."""
    out: dict[TopicPartition, Sequence[Any]] = {}
    for tp, records in batch.items():
        at = positions.get(tp)
        if at is None or not records or records[0].offset >= at:
            out[tp] = records
            continue
        # Offsets rise within a partition's records (with gaps where the broker skipped).
        first = bisect_left(records, at, key=lambda r: r.offset)
        if first < len(records):
            out[tp] = records[first:]
    return out


class TelemetryConsumer:
    """One member of the ``group_id`` consumer group, writing and monitoring each poll."""

    def __init__(
        self,
        settings: Settings,
        writer: TelemetryWriter,
        monitor: SensorMonitor,
        group_id: str = "telemetry",
    ) -> None:
        self.settings = settings
        self.writer = writer
        self.monitor = monitor
        self.group_id = group_id

    def load_positions(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """Where to start: the lower stored position of the two (none stored: the start)."""
        written = self.writer.load_positions(tps)
        monitored = self.monitor.load_positions(tps)
        return {
            tp: min(written[tp], monitored[tp]) for tp in tps if tp in written and tp in monitored
        }

    def forget(self, tps: Sequence[TopicPartition]) -> None:
        self.writer.forget(tps)
        self.monitor.forget(tps)

    def handle(self, consumer: Any, batch: Batch, stop: threading.Event) -> None:
        """One poll: the writer's records, then the monitor's, each durably recorded."""
        mine = from_position(batch, self.writer.positions)
        if mine:
            self.writer.write_durably(consumer, mine, stop, self.load_positions)
        mine = from_position(batch, self.monitor.tracked.positions)
        if mine:
            self.monitor.record(consumer, mine, self.load_positions)

    def run(self, stop: threading.Event) -> None:
        self.monitor.stop = stop
        consumer = topics.telemetry_consumer(
            self.settings, self.group_id, self.load_positions, self.forget
        )
        self.writer.consumer = consumer
        try:
            with topics.consuming(consumer, self.writer.producer, stop, "telemetry consumer"):
                while not stop.is_set():
                    batch = poll(consumer, self.settings)
                    if batch:
                        self.handle(consumer, batch, stop)
                    self.monitor.check_silence_when_due()
        finally:
            log.info(
                "telemetry consumer stopping: writer %s, monitor %s",
                dict(self.writer.counters),
                dict(self.monitor.counters),
            )
            if self.monitor.producer is not self.writer.producer:
                self.monitor.producer.flush()
