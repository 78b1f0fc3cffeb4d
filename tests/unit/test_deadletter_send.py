"""``infra.kafka.send_deadletters`` against a producer whose answers the test decides."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from kafka.producer.future import FutureProduceResult, FutureRecordMetadata

from infra.kafka import DeadLettersUnsentError, send_deadletters


class Producer:
    """Hands out kafka-python's own futures; ``answers`` says, send by send, how each
    ends: "ok", an exception to fail it with, or None to leave it unanswered."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.sent: list[bytes] = []

    def send(self, topic: str, key: bytes, value: bytes) -> FutureRecordMetadata:
        answer = self.answers.pop(0)
        if answer == "no metadata":
            raise KafkaTimeoutError("Failed to update metadata after 5.0 secs.")
        self.sent.append(value)
        produced = FutureProduceResult((topic, 0))
        future = FutureRecordMetadata(produced, 0, -1, None, len(key), len(value), -1)
        if answer == "ok":
            produced.success((0, -1, None))
        elif answer is not None:
            produced.failure(answer)
        return future


def test_every_letter_acknowledged_returns_at_once() -> None:
    producer = Producer("ok", "ok")
    send_deadletters(producer, "dl", b"k", [b"a", b"b"], wait_s=0.01)
    assert producer.sent == [b"a", b"b"]


def test_a_letter_the_producer_gave_up_on_is_sent_again_an_acknowledged_one_is_not() -> None:
    expired = KafkaTimeoutError("Expiring 1 record(s): 120000 ms has passed")
    producer = Producer("ok", expired, "ok")
    send_deadletters(producer, "dl", b"k", [b"a", b"b"], wait_s=0.01)
    assert producer.sent == [b"a", b"b", b"b"]


def test_no_metadata_is_tried_again() -> None:
    producer = Producer("no metadata", "ok")
    send_deadletters(producer, "dl", b"k", [b"a"], wait_s=0.01)
    assert producer.sent == [b"a"]


def test_an_error_no_retry_cures_is_raised_at_once() -> None:
    producer = Producer(MessageSizeTooLargeError("too big"))
    with pytest.raises(MessageSizeTooLargeError):
        send_deadletters(producer, "dl", b"k", [b"a"], wait_s=0.01)


def test_stop_ends_the_wait_for_an_unanswered_letter() -> None:
    stop = threading.Event()
    stop.set()
    producer = Producer(None)
    with pytest.raises(DeadLettersUnsentError, match="1 of 1 dead letters to dl"):
        send_deadletters(producer, "dl", b"k", [b"a"], stop, wait_s=0.01)
    assert producer.sent == [b"a"]  # waited for, never sent twice


def test_nothing_to_send_sends_nothing() -> None:
    producer = Producer()
    send_deadletters(producer, "dl", b"k", [], wait_s=0.01)
    assert producer.sent == []
