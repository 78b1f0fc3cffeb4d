"""A broker that stops answering while a worker sends a batch's dead letters.

The case intake has fetched a batch holding good and bad hotline messages; the broker
(its own, reached only through a TCP proxy) becomes unreachable before the dead letters
of the bad ones are sent. The worker must neither die nor record the batch without its
dead letters: it waits, runs the batch again once the broker is back, and then records
every good case once and every bad message's dead letter.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import closing

import orjson
import pytest
from kafka import KafkaProducer

from cityops.bootstrap import city_app, seed, service_desk
from infra import kafka as topics
from infra.pgstore import make_pool
from infra.settings import Settings
from tests.helpers.brokers import read_topic
from tests.helpers.faults import (
    SUBMITTED,
    Hotline,
    event_counts,
    kafka_behind_a_proxy,
    tracked_positions,
)
from tests.helpers.waiting import wait_until
from workers.intake import CaseIntake

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)

GOOD = 6
BAD = (b"{not json", b'{"external_id": "x"}', b"\xff\xfe")
CUT_S = 40  # longer than one wait for the dead letters (topics.DEADLETTER_WAIT_S)


def test_dead_letters_wait_out_an_unreachable_broker(settings: Settings, unique: str) -> None:
    seed(settings)
    with kafka_behind_a_proxy(settings, "cityops-kafka-dl-") as (on_kafka, proxy):
        names = topics.Topics.of(on_kafka)
        hotline = Hotline(on_kafka, unique)
        hotline.send(GOOD)
        raw = KafkaProducer(bootstrap_servers=on_kafka.kafka_bootstrap)
        for value in BAD:  # one partition, so that one batch holds them all
            raw.send(names.cases_inbound, key=b"bad", value=value).get(timeout=30)
        raw.close()
        assert len(hotline.accepted) == GOOD
        with (
            closing(make_pool(on_kafka, max_size=2)) as pool,
            closing(city_app(on_kafka, pool_size=2)) as app,
        ):
            producer = topics.make_producer(on_kafka, max_block_ms=5_000)
            intake = CaseIntake(on_kafka, service_desk(on_kafka, app, pool), producer)
            consumer = topics.make_consumer(
                on_kafka,
                names.cases_inbound,
                "case-intake",
                load_positions=intake.tracked.load,
                on_revoked=intake.tracked.forget,
            )
            batch: dict = {}

            def fetched() -> bool:
                for tp, records in consumer.poll(timeout_ms=300).items():
                    batch.setdefault(tp, []).extend(records)
                return sum(map(len, batch.values())) == GOOD + len(BAD)

            wait_until(fetched, 60, "the whole inbound topic fetched")

            # The broker goes away with the batch in hand, before its dead letters.
            proxy.partition()
            stop = threading.Event()
            intake.stop = stop
            failure: list[BaseException] = []

            def record() -> None:
                try:
                    topics.record_partitions(
                        consumer,
                        batch,
                        intake.process_partition,
                        intake.tracked.load,
                        stop,
                        "case intake",
                    )
                except BaseException as exc:  # the thread's end, seen by the test
                    failure.append(exc)

            worker = threading.Thread(target=record, name="intake-batch", daemon=True)
            worker.start()
            time.sleep(CUT_S)
            assert worker.is_alive(), f"the worker ended during the outage: {failure}"
            # The partition of the bad messages waits for its dead letters (the
            # others, holding none, may be recorded meanwhile).
            ends = {tp.partition: rs[-1].offset + 1 for tp, rs in batch.items()}
            (bad,) = {tp.partition for tp, rs in batch.items() for r in rs if r.key == b"bad"}
            recorded = tracked_positions(on_kafka, "case-intake", names.cases_inbound)
            assert recorded.get(bad) != ends[bad], "recorded without its dead letters"
            proxy.heal()
            healed_at = time.monotonic()
            worker.join(120)
            assert not worker.is_alive(), "the batch not recorded 120 s after the heal"
            assert failure == [], failure
            log.warning(
                "dead letters with the broker unreachable %d s: batch recorded %.1f s "
                "after the heal",
                CUT_S,
                time.monotonic() - healed_at,
            )
            consumer.close(autocommit=False)
            producer.close(timeout=5)

        submitted = event_counts(on_kafka, SUBMITTED)
        assert set(submitted) == hotline.case_ids()
        assert set(submitted.values()) == {1}
        assert tracked_positions(on_kafka, "case-intake", names.cases_inbound) == ends
        letters = [orjson.loads(r.value) for r in read_topic(on_kafka, names.deadletter, len(BAD))]
        # Each once: the letters queued in the producer were waited for, not sent
        # again.
        sources = [(d["source"], d["partition"], d["offset"]) for d in letters]
        assert sorted(sources) == sorted({*sources})
        assert len(sources) == len(BAD)
        hotline.close()
