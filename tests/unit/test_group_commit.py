"""Group commit (``infra.group_commit``) over a fake event table: saves that arrive
together share one insert, each save gets its own ids or its own conflict, and the
table's order keeps each save's events together in its own order."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest
from eventsourcing.persistence import IntegrityError

from infra.group_commit import GroupCommit

Event = tuple[str, int]  # (aggregate, version)


class Table:
    """Inserts all or nothing; a version recorded twice is an IntegrityError. The first
    insert blocks until ``gate`` opens, so that the others queue behind it."""

    def __init__(self, fail_with: BaseException | None = None) -> None:
        self.rows: list[Event] = []
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.fail_with = fail_with
        self.lock = threading.Lock()

    def insert(self, events: Sequence[Event]) -> list[int]:
        self.entered.set()
        self.gate.wait(5)
        with self.lock:
            self.calls.append(len(events))
            if self.fail_with is not None:
                raise self.fail_with
            keys = set(self.rows)
            if len(set(events)) != len(events) or keys & set(events):
                raise IntegrityError("duplicate version")
            first = len(self.rows) + 1
            self.rows.extend(events)
            return list(range(first, first + len(events)))


def run_saves(group: GroupCommit[Event], table: Table, saves: list[list[Event]]) -> list[object]:
    """The first save holds the table; the others arrive meanwhile; then it opens."""
    results: list[object] = [None] * len(saves)

    def save(i: int) -> None:
        try:
            results[i] = group.insert(saves[i])
        except BaseException as exc:  # the save's own outcome, checked by the test
            results[i] = exc

    first = threading.Thread(target=save, args=(0,))
    first.start()
    assert table.entered.wait(5)
    rest = [threading.Thread(target=save, args=(i,)) for i in range(1, len(saves))]
    for t in rest:
        t.start()
    deadline = time.monotonic() + 5
    while len(group._waiting) < len(rest) and time.monotonic() < deadline:
        time.sleep(0.001)
    table.gate.set()
    for t in (first, *rest):
        t.join(5)
    return results


def test_a_save_alone_is_recorded_at_once() -> None:
    table = Table()
    table.gate.set()
    group = GroupCommit(table.insert)
    assert group.insert([("a", 1), ("a", 2)]) == [1, 2]
    assert (group.groups, group.saves) == (1, 1)


def test_saves_waiting_behind_one_share_the_next_transaction() -> None:
    table = Table()
    group = GroupCommit(table.insert)
    saves = [[("a", 1)], [("b", 1), ("b", 2)], [("c", 1)], [("d", 1)]]
    results = run_saves(group, table, saves)
    # The first alone (it held the table), then the three that waited, in one insert.
    assert table.calls == [1, 4]
    assert results == [[1], [2, 3], [4], [5]]
    assert table.rows == [("a", 1), ("b", 1), ("b", 2), ("c", 1), ("d", 1)]
    assert (group.groups, group.saves) == (2, 4)


def test_a_conflict_in_the_group_is_its_members_own() -> None:
    table = Table()
    table.rows.append(("x", 1))  # recorded by someone else first
    group = GroupCommit(table.insert)
    saves = [[("a", 1)], [("b", 1)], [("x", 1)], [("c", 1)]]
    results = run_saves(group, table, saves)
    assert results[0] == [2]
    assert isinstance(results[2], IntegrityError)
    # The group failed, then each was recorded alone: b and c are stored, once each.
    assert table.calls == [1, 3, 1, 1, 1]
    assert results[1] == [3]
    assert results[3] == [4]
    assert table.rows == [("x", 1), ("a", 1), ("b", 1), ("c", 1)]


def test_two_saves_of_one_version_in_a_group_one_wins() -> None:
    table = Table()
    group = GroupCommit(table.insert)
    results = run_saves(group, table, [[("a", 1)], [("b", 1)], [("b", 1)]])
    assert results[:2] == [[1], [2]]
    assert isinstance(results[2], IntegrityError)
    assert table.rows == [("a", 1), ("b", 1)]


def test_any_other_failure_is_every_members() -> None:
    table = Table(fail_with=OSError("the database went away"))
    group = GroupCommit(table.insert)
    results = run_saves(group, table, [[("a", 1)], [("b", 1)], [("c", 1)]])
    assert all(isinstance(r, OSError) for r in results)
    assert table.calls == [1, 2]  # the leader's, then the group's: not one by one
    # And the next save leads again: nothing is left waiting.
    table.fail_with = None
    assert group.insert([("d", 1)]) == [1]


def test_groups_are_capped_in_events() -> None:
    table = Table()
    group = GroupCommit(table.insert, max_events=3)
    saves = [[("a", 1)], [("b", 1), ("b", 2)], [("c", 1)], [("d", 1), ("d", 2), ("d", 3)]]
    results = run_saves(group, table, saves)
    # 1; then b + c (3 events); then d alone (adding it would pass the cap).
    assert table.calls == [1, 3, 3]
    assert results == [[1], [2, 3], [4], [5, 6, 7]]


@pytest.mark.parametrize("threads", [8, 32])
def test_many_concurrent_saves_each_recorded_once(threads: int) -> None:
    table = Table()
    table.gate.set()
    group = GroupCommit(table.insert)
    results: dict[int, object] = {}

    def save(i: int) -> None:
        for n in range(20):
            results[i * 100 + n] = group.insert([(f"agg-{i}", n + 1)])

    workers = [threading.Thread(target=save, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(10)
    assert len(table.rows) == threads * 20 == len(set(table.rows))
    ids = [r[0] for r in results.values() if isinstance(r, list)]
    assert sorted(ids) == list(range(1, threads * 20 + 1))
    # Each aggregate's versions in order in the table.
    for i in range(threads):
        versions = [v for a, v in table.rows if a == f"agg-{i}"]
        assert versions == list(range(1, 21))
