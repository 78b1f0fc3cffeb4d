"""Group commit: saves that arrive together in one process are recorded in one transaction.

Every save of the city log takes the events table's lock, inserts, runs the audit
chain's trigger and commits; under load the saves queue for the lock one by one. Here
the first save to arrive leads: it records its own events and those of every save
waiting behind it in one transaction, then hands the lead to the first save that came
in meanwhile. No save waits for a timer: alone, a save is recorded at once; under load
the groups grow by themselves.

When the group's transaction fails on a uniqueness violation (someone recorded one of
its versions first), each member is recorded again alone, so each gets its own result:
its notification ids, or its own ``IntegrityError`` (a 409 for an HTTP command). Any
other failure is every member's. The log's order is the order of the group's events,
each save's events kept together and in its own order, as one transaction of their own
would have been.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from eventsourcing.persistence import IntegrityError

E = TypeVar("E")
Insert = Callable[[Sequence[E]], Sequence[int] | None]


@dataclass(eq=False)
class _Save(Generic[E]):
    events: Sequence[E]
    woken: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    ids: Sequence[int] | None = None
    error: BaseException | None = None

    def result(self) -> Sequence[int] | None:
        if self.error is not None:
            raise self.error
        return self.ids


class GroupCommit(Generic[E]):
    """Records the events of concurrent saves through ``insert``, in groups of at most
    ``max_events`` events (a save larger than that is a group of its own)."""

    def __init__(self, insert: Insert[E], max_events: int = 1_000) -> None:
        self._insert = insert
        self.max_events = max_events
        self._lock = threading.Lock()
        self._waiting: list[_Save[E]] = []
        self._busy = False
        self.groups = 0  # transactions and saves so far (tests/integration/test_group_commit.py)
        self.saves = 0

    def insert(self, events: Sequence[E]) -> Sequence[int] | None:
        save = _Save(events)
        with self._lock:
            self._waiting.append(save)
            leads = not self._busy
            self._busy = True
        if not leads:
            save.woken.wait()
            if not save.lead:
                return save.result()
        try:
            self._record(self._take())
        finally:
            self._hand_over()
        return save.result()

    def _take(self) -> list[_Save[E]]:
        """The saves of the next group, in arrival order (the leader's is the first)."""
        with self._lock:
            group: list[_Save[E]] = []
            size = 0
            while self._waiting:
                if group and size + len(self._waiting[0].events) > self.max_events:
                    break
                save = self._waiting.pop(0)
                group.append(save)
                size += len(save.events)
            return group

    def _hand_over(self) -> None:
        with self._lock:
            if self._waiting:
                successor = self._waiting[0]
                successor.lead = True
                successor.woken.set()
            else:
                self._busy = False

    def _record(self, group: list[_Save[E]]) -> None:
        self.groups += 1
        self.saves += len(group)
        try:
            self._split(group, self._insert([e for save in group for e in save.events]))
        except IntegrityError as exc:
            if len(group) == 1:
                group[0].error = exc
            else:
                for save in group:  # each alone: its own success or its own conflict
                    try:
                        save.ids = self._insert(save.events)
                    except BaseException as alone:  # handed to its own save
                        save.error = alone
        except BaseException as exc:  # every member's, raised in each
            for save in group:
                save.error = exc
        for save in group[1:]:
            save.woken.set()

    @staticmethod
    def _split(group: list[_Save[E]], ids: Sequence[int] | None) -> None:
        start = 0
        for save in group:
            end = start + len(save.events)
            save.ids = None if ids is None else list(ids[start:end])
            start = end
