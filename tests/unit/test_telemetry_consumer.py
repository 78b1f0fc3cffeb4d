"""Which records of a poll each role of ``cityops telemetry`` is given."""

from __future__ import annotations

from typing import NamedTuple

from kafka import TopicPartition

from sensors.consumer import from_position

A = TopicPartition("t", 0)
B = TopicPartition("t", 1)


class Record(NamedTuple):
    offset: int


def records(*offsets: int) -> list[Record]:
    return [Record(o) for o in offsets]


def test_no_position_or_a_position_at_or_below_the_first_record_gives_everything() -> None:
    batch = {A: records(5, 6, 7), B: records(0, 1)}
    assert from_position(batch, {}) == batch
    assert from_position(batch, {A: None, B: 0}) == batch
    assert from_position(batch, {A: 5}) == batch


def test_records_below_the_position_are_left_out() -> None:
    batch = {A: records(5, 6, 7), B: records(0, 1)}
    assert from_position(batch, {A: 7, B: 1}) == {A: records(7), B: records(1)}


def test_gaps_in_the_offsets_are_kept() -> None:
    # A compacted or transactional log skips offsets: the position may fall in a gap.
    assert from_position({A: records(2, 5, 9)}, {A: 4}) == {A: records(5, 9)}


def test_a_partition_wholly_below_the_position_is_dropped() -> None:
    assert from_position({A: records(5, 6), B: records(3)}, {A: 7}) == {B: records(3)}
