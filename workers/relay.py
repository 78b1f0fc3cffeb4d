"""Domain-events relay: the city log -> Kafka ``cityops.domain-events``, each event once.

The relay reads the notification log in order and publishes every event as a CloudEvent
(the contract: ``infra.domain_events``), keyed by its aggregate id, with its notification
id as the ``logposition`` attribute. Kafka and PostgreSQL share no transaction, so
exactly-once comes from two facts instead:

- the relay commits its position (``relay_positions``) only after Kafka acknowledged
  everything up to it; everything at or below the position is published;
- the producer keeps order per partition (one request in flight, retries), so if a
  partition's last record has notification id N, every event of that partition up to
  N is there.

After a crash the relay reads each partition's last record and skips the events in
(position, max of those] whose partition already holds them. Nothing is skipped that
is missing, nothing published twice. The reading loop is ``core.follow.LogTail``: after
an error it starts over from this recovery. Events the contract withholds (the audit
trail's reads) are passed over like published ones: the position moves past them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from psycopg_pool import ConnectionPool

from core.follow import LogTail
from infra import domain_events
from infra.kafka import Topics, default_partition
from infra.pgstore import DATABASE_UNAVAILABLE
from infra.settings import Settings

log = logging.getLogger(__name__)

RELAY_NAME = "domain-events"


def message(notification: Any) -> tuple[bytes, bytes, list[tuple[str, bytes]]] | None:
    """Kafka key, value and headers of one recorded event (None: not published)."""
    found = domain_events.kafka_message(domain_events.decode(notification), notification.id)
    if found is None:
        return None
    assert isinstance(found.key, bytes)  # the aggregate id, as before the contract
    return found.key, found.value, list(found.headers.items())


def position_of(value: bytes) -> int:
    """The notification id a published record carries (also in records from before the
    CloudEvents contract, which named it ``notification_id``)."""
    body = orjson.loads(value)
    return int(body.get(domain_events.POSITION, body.get("notification_id")))


class DomainEventRelay:
    def __init__(
        self,
        settings: Settings,
        recorder: Any,
        pool: ConnectionPool,
        producer: KafkaProducer,
        batch: int = 500,
    ) -> None:
        self.settings = settings
        self.topic = Topics.of(settings).domain_events
        self.recorder = recorder
        self.pool = pool
        self.producer = producer
        self.batch = batch
        self.published = 0
        self._skip: dict[int, int] = {}
        self._horizon = 0
        self.tail = LogTail(
            RELAY_NAME,
            recorder,
            self,
            batch_size=batch,
            expected=(*DATABASE_UNAVAILABLE, KafkaError),
        )

    # -- position -----------------------------------------------------------------------

    def position(self) -> int:
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT notification_id FROM relay_positions WHERE name = %s", (RELAY_NAME,)
            ).fetchone()
        return int(row[0]) if row else 0

    def commit(self, notification_id: int) -> None:
        with self.pool.connection() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO relay_positions (name, notification_id) VALUES (%s, %s)"
                " ON CONFLICT (name) DO UPDATE SET notification_id = EXCLUDED.notification_id",
                (RELAY_NAME, notification_id),
            )

    def published_tails(self) -> dict[int, int]:
        """Per partition, the notification id of its last record (what is already out)."""
        consumer = KafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            enable_auto_commit=False,
            consumer_timeout_ms=5_000,
        )
        try:
            partitions = consumer.partitions_for_topic(self.topic) or set()
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            ends = consumer.end_offsets(tps)
            tails: dict[int, int] = {}
            for tp in tps:
                if ends[tp] == 0:
                    continue
                consumer.seek(tp, ends[tp] - 1)
                # Read on to the end, not just the first poll: a broker may report an end
                # inside its last record batch (Tansu 0.6 does), so more can follow.
                last = None
                for _ in range(40):
                    got = consumer.poll(timeout_ms=500).get(tp)
                    if got:
                        last = got[-1]
                    elif last is not None:
                        break
                if last is not None:
                    tails[tp.partition] = position_of(last.value)
            return tails
        finally:
            consumer.close()

    # -- publishing -----------------------------------------------------------------------

    def recover(self) -> tuple[int, dict[int, int]]:
        """Where to go on from after a restart, and what the partitions already hold."""
        return self.position(), self.published_tails()

    def publish(self, notifications: Sequence[Any], skip: dict[int, int]) -> int:
        """Send a batch in order, skipping what ``skip`` says a partition already holds."""
        partitions = len(self.producer.partitions_for(self.topic))
        futures = []
        for n in notifications:
            out = message(n)
            if out is None:
                continue
            key, value, headers = out
            partition = default_partition(key, partitions)
            if skip.get(partition, 0) >= n.id:
                continue  # already out before the crash
            futures.append(
                self.producer.send(
                    self.topic, key=key, value=value, headers=headers, partition=partition
                )
            )
        self.producer.flush()
        # flush returns once every send is done, failed ones included (the broker was
        # away longer than the producer retries): a position committed past a failed
        # send would lose that event. Raised here, the tail starts over from recovery.
        for future in futures:
            future.get(timeout=0)
        return len(futures)

    def run_once(self, start: int, skip: dict[int, int]) -> int:
        """Publish the next batch after ``start``; return the new position."""
        notifications = self.recorder.select_notifications(
            start=start + 1, limit=self.batch, inclusive_of_start=True
        )
        if not notifications:
            return start
        return self._publish_and_commit(notifications, skip)

    def _publish_and_commit(self, notifications: Sequence[Any], skip: dict[int, int]) -> int:
        self.published += self.publish(notifications, skip)
        last = int(notifications[-1].id)
        self.commit(last)
        return last

    # -- the tail's sink ----------------------------------------------------------------

    def start(self) -> int:
        position, tails = self.recover()
        self._skip = {p: n for p, n in tails.items() if n > position}
        self._horizon = max(self._skip.values(), default=0)
        log.info("relay: position %d, partitions ahead up to %d", position, self._horizon)
        return position

    def apply(self, notifications: Sequence[Any], stop: threading.Event | None) -> int:
        ahead = (self.tail.position or 0) < self._horizon
        return self._publish_and_commit(notifications, self._skip if ahead else {})

    def reset(self) -> None:
        pass  # the next start recovers the position and the partitions' tails again

    def run(self, stop: threading.Event, idle_s: float = 0.2) -> None:
        self.tail.run(stop, idle_s)
