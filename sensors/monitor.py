"""Sensor monitor: Kafka ``cityops.telemetry`` -> rules -> Sensor and Incident events.

Per partition and poll, one transaction records the domain events, the partition's
next offset (the eventsourcing library's tracking record, fenced against the position
this monitor last saw) and the pending rule state of the devices it touched. A crash at
any point therefore neither loses nor repeats an alarm, and the rule state (consecutive
readings, silence clocks) survives restarts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.application import ProcessingEvent
from eventsourcing.persistence import IntegrityError, Tracking
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from psycopg_pool import ConnectionPool

from core.app import CityApp, CityProcessingEvent
from core.case.desk import Locator
from core.errors import NotFoundError
from core.incident.policy import SYSTEM_MONITOR, IncidentPolicy
from core.sensor import Sensor, sensor_id
from core.sensor.rules import DEPARTMENT_TYPE, DeviceState, RuleSet, evaluate_readings, is_silent
from core.sensor.telemetry import TelemetryMessage
from gis.crs import distance_m
from infra import kafka as topics
from infra.pgstore import DATABASE_UNAVAILABLE, describe
from infra.settings import Settings

log = logging.getLogger(__name__)


class SensorMonitor:
    def __init__(
        self,
        settings: Settings,
        app: CityApp,
        ruleset: RuleSet,
        pool: ConnectionPool,
        producer: KafkaProducer,
        group_id: str = "sensor-monitor",
        clock: Callable[[], float] = time.time,
        locator: Locator | None = None,
    ) -> None:
        self.settings = settings
        self.topics = topics.Topics.of(settings)
        self.app = app
        self.ruleset = ruleset
        self.policy = IncidentPolicy(app, ruleset)
        self.pool = pool
        self.producer = producer
        self.group_id = group_id
        self.clock = clock
        # Places a device that reports a new position; without one, positions are only
        # a sign of life.
        self.locator = locator
        self.tracked = topics.TrackedPositions(app.recorder, group_id)
        self.states: dict[str, DeviceState] = {}
        self.partition_of: dict[str, int] = {}
        self.types: dict[str, str | None] = {}
        self.counters: Counter[str] = Counter()
        # ``run``'s stop: ends a wait for the broker to take dead letters.
        self.stop = threading.Event()
        self._next_silence_check = time.monotonic() + settings.monitor_silence_check_s

    # -- positions and state ------------------------------------------------------------

    def load_positions(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        found = self.tracked.load(tps)
        self._load_state({tp.partition for tp in tps})
        return found

    def _load_state(self, partitions: set[int]) -> None:
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT device_id, state FROM monitor_state").fetchall()
        for device_id, raw in rows:
            if raw.get("p") in partitions:
                self.states[device_id] = DeviceState.from_json(raw)
                self.partition_of[device_id] = raw["p"]

    def forget(self, tps: Sequence[TopicPartition]) -> None:
        gone = {tp.partition for tp in tps}
        self.tracked.forget(tps)
        for device_id in [d for d, p in self.partition_of.items() if p in gone]:
            self.states.pop(device_id, None)
            self.partition_of.pop(device_id, None)

    def sensor_type(self, device_id: str) -> str | None:
        if device_id not in self.types:
            try:
                self.types[device_id] = self.app.get_sensor(device_id).sensor_type
            except NotFoundError:
                # Not cached: a device registered later is picked up on its next message.
                return None
        return self.types[device_id]

    # -- processing ---------------------------------------------------------------------

    def _sensor(self, device_id: str, pe: ProcessingEvent[UUID]) -> Sensor:
        held = pe.aggregates.get(sensor_id(device_id))
        return held if isinstance(held, Sensor) else self.app.get_sensor(device_id)

    def process_partition(self, tp: TopicPartition, records: Sequence[Any]) -> None:
        """Evaluate one partition's records and record the outcome in one transaction."""
        next_offset = records[-1].offset + 1
        pe: ProcessingEvent[UUID] = CityProcessingEvent(
            tracking=Tracking(self.tracked.name(tp), next_offset)
        )
        before: dict[str, dict[str, Any] | None] = {}
        stored_partition: dict[str, int | None] = {}
        rejects: list[bytes] = []
        for record in records:
            msg = topics.telemetry_or_reject("sensor-monitor", record, rejects, self.clock())
            if msg is None:
                continue
            kind = self.sensor_type(msg.device_id)
            if kind is None:
                rejects.append(
                    topics.deadletter_for("sensor-monitor", record, "unknown_device", self.clock())
                )
                continue
            if msg.device_id not in before:
                known = self.states.get(msg.device_id)
                before[msg.device_id] = None if known is None else known.to_json()
                stored_partition[msg.device_id] = self.partition_of.get(msg.device_id)
            state = self.states.setdefault(msg.device_id, DeviceState())
            self.partition_of[msg.device_id] = tp.partition
            correlation_id = f"{tp.topic}:{tp.partition}:{record.offset}"
            self._apply(msg, kind, state, correlation_id, pe)
        # Only the devices whose state this batch changed (a repeated reading of a device
        # already known changes nothing), in one statement.
        state_rows = []
        for device_id, was in before.items():
            now = self.states[device_id].to_json()
            if now != was or stored_partition[device_id] != tp.partition:
                state_rows.append((device_id, _state_text(now, tp.partition)))
        pe.collect_events(expected_position=self.tracked.positions.get(tp), state_rows=state_rows)
        try:
            topics.send_deadletters(
                self.producer, self.topics.deadletter, b"sensor-monitor", rejects, self.stop
            )
            self.app.record(pe)
        except Exception:
            # Roll the in-memory rule state back to what is committed.
            for device_id, raw in before.items():
                if raw is None:
                    self.states.pop(device_id, None)
                else:
                    self.states[device_id] = DeviceState.from_json(raw)
            raise
        self.tracked.positions[tp] = next_offset
        self.counters["messages"] += len(records)
        self.counters["events"] += len(pe.events)
        self.counters["rejected"] += len(rejects)

    def _apply(
        self,
        msg: TelemetryMessage,
        kind: str,
        state: DeviceState,
        correlation_id: str,
        pe: ProcessingEvent[UUID],
    ) -> None:
        if msg.kind == "status" and msg.status == "offline":
            if not state.silent:
                sensor = self._sensor(msg.device_id, pe)
                self.policy.went_silent(sensor, "offline", state.last_seen, correlation_id, pe)
                state.silent = True
            return
        state.last_seen = msg.received_at
        if state.silent:
            sensor = self._sensor(msg.device_id, pe)
            self.policy.came_back(sensor, msg.received_at, correlation_id, pe)
            state.silent = False
        if msg.location is not None:
            self._relocate(msg, kind, correlation_id, pe)
        if msg.readings:
            transitions = evaluate_readings(
                self.ruleset,
                kind,
                state,
                [(r.metric, r.value, r.ts) for r in msg.readings],
            )
            if transitions:
                sensor = self._sensor(msg.device_id, pe)
                self.policy.apply(sensor, transitions, correlation_id, pe)

    def _relocate(
        self, msg: TelemetryMessage, kind: str, correlation_id: str, pe: ProcessingEvent[UUID]
    ) -> None:
        """Move the device to the position it reported, when it is newer than the one that
        placed it and further than ``relocation_min_m``: placed on the grid again, with the
        department of its type there."""
        where = msg.location
        if where is None or self.locator is None:
            return
        sensor = self._sensor(msg.device_id, pe)
        if sensor.located_at is not None and where.ts <= sensor.located_at:
            self.counters["locations_out_of_order"] += 1
            return
        moved = float(distance_m(sensor.lon, sensor.lat, where.lon, where.lat))
        if moved < self.settings.relocation_min_m:
            return
        place = self.locator.place(where.lon, where.lat)
        department_type = DEPARTMENT_TYPE.get(kind)
        sensor.relocate(
            lon=where.lon,
            lat=where.lat,
            grid_code=None if place is None else place.grid_code,
            district_code=None if place is None else place.district_code,
            department_code=None
            if department_type is None
            else self.locator.department_for(where.lon, where.lat, department_type),
            coord_system=where.coord_system,
            located_at=where.ts,
            moved_m=round(moved, 1),
            actor=SYSTEM_MONITOR,
            correlation_id=correlation_id,
        )
        pe.collect_events(sensor)
        self.counters["relocated"] += 1

    def check_silence(self) -> int:
        """Open silent-device incidents for devices quiet for too long; return how many."""
        now = self.clock()
        quiet = [
            d
            for d, st in self.states.items()
            if (t := self.types.get(d)) is not None and is_silent(self.ruleset, t, st, now)
        ]
        if not quiet:
            return 0
        pe: ProcessingEvent[UUID] = CityProcessingEvent()
        for device_id in quiet:
            state = self.states[device_id]
            sensor = self._sensor(device_id, pe)
            self.policy.went_silent(sensor, "no_data", state.last_seen, f"silence:{now:.0f}", pe)
        rows = []
        for device_id in quiet:
            self.states[device_id].silent = True
            raw = self.states[device_id].to_json()
            rows.append((device_id, _state_text(raw, self.partition_of[device_id])))
        pe.collect_events(state_rows=rows)
        try:
            self.app.record(pe)
        except Exception:
            for device_id in quiet:
                self.states[device_id].silent = False
            raise
        return len(quiet)

    # -- loop -------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        self.stop = stop
        consumer = topics.telemetry_consumer(
            self.settings, self.group_id, self.load_positions, self.forget
        )
        try:
            while not stop.is_set():
                batch = consumer.poll(timeout_ms=200, max_records=self.settings.writer_batch_max)
                if batch:
                    self.record(consumer, batch, self.load_positions)
                self.check_silence_when_due()
        except DATABASE_UNAVAILABLE:
            if not stop.is_set():
                raise
            log.info("sensor monitor stopped while the database was unavailable")
        finally:
            consumer.close(autocommit=False)
            self.producer.flush()

    def record(
        self,
        consumer: KafkaConsumer,
        batch: Mapping[TopicPartition, Sequence[Any]],
        load_positions: Callable[[list[TopicPartition]], dict[TopicPartition, int]],
    ) -> None:
        """Process one poll, partition by partition (``process_partition``); after a lost
        race, seek the partition to what ``load_positions`` says."""
        topics.record_partitions(
            consumer, batch, self.process_partition, load_positions, self.stop, "sensor monitor"
        )

    def check_silence_when_due(self) -> None:
        """``check_silence`` every ``monitor_silence_check_s``; a failure waits a round."""
        if time.monotonic() < self._next_silence_check:
            return
        try:
            self.check_silence()
        except IntegrityError:
            log.info("silence check raced an update; retrying next round")
        except DATABASE_UNAVAILABLE as exc:
            log.warning("silence check: database unavailable (%s); next round", describe(exc))
        self._next_silence_check = time.monotonic() + self.settings.monitor_silence_check_s


def _state_text(raw: dict[str, Any], partition: int) -> str:
    """A device's state as stored in ``monitor_state``, with the partition it is read from."""
    return orjson.dumps({**raw, "p": partition}).decode()
