"""Random command sequences on one ``Escalation`` against a model of it.

A refused command raises ``IllegalTransitionError`` and changes nothing; after every step
the aggregate equals the replay of its recorded events, encoded and decoded by another
application's mapper; nothing is paged once it is acknowledged or stopped, and a page's
delivery only moves forward (pending or failed -> delivered or withdrawn).
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from core.app import CityApp
from core.errors import IllegalTransitionError
from core.paging import (
    DELIVERED,
    FAILED,
    IN_APP,
    PENDING,
    WITHDRAWN,
    Escalation,
    page_id,
)

T0 = datetime(2026, 3, 2, 1, 30, tzinfo=UTC)
STAMP = {"actor": "system:pager", "correlation_id": "t:machine"}
LEVELS = ("street", "district", "city")
PEOPLE = ("dispatcher:a", "dispatcher:b", "operator:c")
CHANNELS = ("in_app", "email", "sms", "webhook")
FINAL = {DELIVERED, WITHDRAWN, IN_APP}


class EscalationMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = CityApp(), CityApp()
        self.escalation = Escalation.open(
            "critical_alarm",
            "incident:machine",
            title="Water level high",
            grid_code="310101001001001",
            district_code="310101",
            critical=True,
            started_at=T0,
            policy_version=1,
            **STAMP,
        )
        self.recorded: list[Any] = list(self.escalation.collect_events())
        self.status = "open"
        self.pages: dict[str, str] = {}  # page id -> its delivery, as the model sees it
        self.clock = T0

    def attempt(self, legal: bool, name: str, change: Any) -> bool:
        """Run ``change``; it must succeed iff ``legal``, and a refusal changes nothing."""
        event(f"{name}: {'legal' if legal else 'refused'}")
        before = copy.deepcopy(self.escalation.__dict__)
        try:
            change()
        except IllegalTransitionError:
            assert not legal, f"{name} refused in {self.status}"
            assert self.escalation.__dict__ == before
            return False
        assert legal, f"{name} allowed in {self.status}"
        self.recorded.extend(self.escalation.collect_events())
        return True

    def key(self, level: int, person: int, channel: int) -> str:
        return str(page_id(self.escalation.id, LEVELS[level], PEOPLE[person], CHANNELS[channel]))

    @rule(level=st.integers(0, 2), person=st.integers(0, 2), channel=st.integers(0, 3))
    def page(self, level: int, person: int, channel: int) -> None:
        key = self.key(level, person, channel)
        self.clock += timedelta(minutes=1)

        def change() -> None:
            self.escalation.page(
                page_id=key,
                person=PEOPLE[person],
                channel=CHANNELS[channel],
                level=LEVELS[level],
                at=self.clock,
                **STAMP,
            )

        if self.attempt(self.status == "open" and key not in self.pages, "page", change):
            self.pages[key] = IN_APP if CHANNELS[channel] == "in_app" else PENDING

    def pick(self, data: Any) -> str | None:
        return data.draw(st.sampled_from(sorted(self.pages))) if self.pages else None

    @rule(data=st.data(), outcome=st.sampled_from(["delivered", "failed", "given up", "withdrawn"]))
    def deliver(self, data: Any, outcome: str) -> None:
        key = self.pick(data)
        if key is None:
            return
        legal = self.pages[key] in (PENDING, FAILED)
        attempt = {"attempt": 1, **STAMP}
        changes = {
            "delivered": lambda: self.escalation.record_delivery(key, **attempt),
            "failed": lambda: self.escalation.record_failure(
                key, error="503", final=False, **attempt
            ),
            "given up": lambda: self.escalation.record_failure(
                key, error="503", final=True, **attempt
            ),
            "withdrawn": lambda: self.escalation.withdraw(key, reason="ended", **STAMP),
        }
        if self.attempt(legal, outcome, changes[outcome]):
            self.pages[key] = {"delivered": DELIVERED, "failed": FAILED}.get(outcome, WITHDRAWN)

    # The ends come once a few pages are out, so that deliveries get explored too.
    @precondition(lambda self: len(self.pages) >= 3)
    @rule(who=st.sampled_from(PEOPLE))
    def acknowledge(self, who: str) -> None:
        stamp = {**STAMP, "actor": who}
        if self.attempt(
            self.status == "open",
            "acknowledge",
            lambda: self.escalation.acknowledge(page_id=None, **stamp),
        ):
            self.status = "acknowledged"

    @precondition(lambda self: len(self.pages) >= 3)
    @rule()
    def stop(self) -> None:
        if self.attempt(
            self.status == "open",
            "stop",
            lambda: self.escalation.stop(reason="incident closed", **STAMP),
        ):
            self.status = "stopped"

    @invariant()
    def the_replay_equals_the_aggregate(self) -> None:
        replayed: Any = None
        for domain_event in self.recorded:
            stored = self.first.mapper.to_stored_event(domain_event)
            replayed = self.second.mapper.to_domain_event(stored).mutate(replayed)
        assert isinstance(replayed, Escalation)
        assert replayed.__dict__ == self.escalation.__dict__
        assert replayed.version == len(self.recorded)
        assert replayed.status == self.status
        assert {k: p["delivery"] for k, p in replayed.pages.items()} == self.pages
        assert replayed.live == (self.status == "open")
        assert set(replayed.undelivered()) == {k for k, d in self.pages.items() if d not in FINAL}


EscalationMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
TestEscalationMachine = EscalationMachine.TestCase
