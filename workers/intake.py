"""Case intake: Kafka ``cityops.cases.inbound`` (hotline systems) -> service cases.

Per partition and poll, one transaction records the new cases' events and the
partition's next offset (a tracking record, fenced like the sensor monitor's). The case
id is derived from the source and external id, so a message sent twice (or redelivered
after a crash) is the same case: the second is counted as a duplicate, not stored.
A message that fails the schema or the domain's checks goes to the dead letter with
its reason; nothing else in its batch is lost.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.application import ProcessingEvent
from eventsourcing.persistence import Tracking
from kafka import KafkaProducer, TopicPartition
from pydantic import ValidationError

from core.app import CityApp, CityProcessingEvent
from core.case.desk import DuplicateSubmissionError, ServiceDesk, SubmitCase
from core.errors import DomainError
from core.personal import Contact
from infra import kafka as topics
from infra.hotline_schema import HotlineCase
from infra.kafka import Topics, TrackedPositions
from infra.settings import Settings

SOURCE = "case-intake"


def to_command(msg: HotlineCase) -> SubmitCase:
    citizen = msg.citizen
    position = None if msg.location is None else msg.location.wgs84()
    return SubmitCase(
        channel="hotline",
        external_id=f"{msg.source}:{msg.external_id}",
        category=msg.service_code,
        description=msg.description,
        lon=None if position is None else position[0],
        lat=None if position is None else position[1],
        address=msg.address,
        attributes=msg.attributes,
        contact=Contact()
        if citizen is None
        else Contact.parse(citizen.name, citizen.phone, citizen.email, citizen.address),
        received_at=msg.received_at,
    )


def schema_reason(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "message"
    return f"schema: {where}: {first.get('msg', 'invalid')} ({exc.error_count()} error(s))"


@dataclass(eq=False)
class CaseIntake:
    settings: Settings
    desk: ServiceDesk
    producer: KafkaProducer
    group_id: str = "case-intake"
    topics: Topics = field(init=False)
    app: CityApp = field(init=False)
    tracked: TrackedPositions = field(init=False)
    counters: Counter[str] = field(init=False, default_factory=Counter)
    # ``run``'s stop: ends a wait for the broker to take dead letters.
    stop: threading.Event = field(init=False, default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.topics = Topics.of(self.settings)
        self.app = self.desk.app
        self.tracked = TrackedPositions(self.app.recorder, self.group_id)

    def process_partition(self, tp: TopicPartition, records: Sequence[Any]) -> Counter[str]:
        """Submit one partition's cases and record its position, in one transaction."""
        pe: ProcessingEvent[UUID] = CityProcessingEvent(
            tracking=Tracking(self.tracked.name(tp), records[-1].offset + 1)
        )
        counts: Counter[str] = Counter()
        rejects: list[bytes] = []
        for record in records:
            now = time.time()
            try:
                msg = HotlineCase.model_validate_json(record.value or b"")
            except ValidationError as exc:
                rejects.append(topics.deadletter_for(SOURCE, record, schema_reason(exc), now))
                continue
            try:
                self.desk.submit(
                    to_command(msg),
                    actor=f"system:hotline:{msg.source}",
                    correlation_id=f"{tp.topic}:{tp.partition}:{record.offset}",
                    pe=pe,
                )
                counts["submitted"] += 1
            except DuplicateSubmissionError:
                counts["duplicates"] += 1
            except DomainError as exc:
                rejects.append(
                    topics.deadletter_for(SOURCE, record, f"{type(exc).__name__}: {exc}", now)
                )
        pe.collect_events(expected_position=self.tracked.positions.get(tp))
        topics.send_deadletters(
            self.producer, self.topics.deadletter, SOURCE.encode(), rejects, self.stop
        )
        self.app.record(pe)
        self.tracked.positions[tp] = records[-1].offset + 1
        counts["rejected"] += len(rejects)
        self.counters.update(counts)
        return counts

    def run(self, stop: threading.Event) -> None:
        self.stop = stop
        consumer = topics.make_consumer(
            self.settings,
            self.topics.cases_inbound,
            self.group_id,
            load_positions=self.tracked.load,
            on_revoked=self.tracked.forget,
        )
        with topics.consuming(consumer, self.producer, stop, "case intake"):
            while not stop.is_set():
                batch = consumer.poll(timeout_ms=200, max_records=500)
                if batch:
                    topics.record_partitions(
                        consumer, batch, self.process_partition, self.tracked.load, stop, SOURCE
                    )
