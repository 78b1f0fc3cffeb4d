"""Escalation and paging on the in-memory store, under a controlled clock: the policy file,
the decision (levels, deduplication, quiet hours, rate caps), the race of a page with an
acknowledgement, and the outbox's delivery outcomes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from core.app import CityApp
from core.commands import CommandContext
from core.errors import IllegalTransitionError
from core.paging import Escalation, escalation_id
from core.paging.channels import Delivery, DeliveryError
from core.paging.decide import due_pages
from core.paging.desk import PagerDesk, Subject
from core.paging.policy import PagingPolicy, PagingPolicyError, load_paging_policy

# Monday 2 March 2026, 09:30 in Shanghai.
T0 = datetime(2026, 3, 2, 1, 30, tzinfo=UTC)
STREET = "310101001"
GRID = f"{STREET}002003"


def policy(**changes: Any) -> PagingPolicy:
    raw: dict[str, Any] = {
        "version": 3,
        "max_attempts": 3,
        "triggers": {
            "critical_alarm": {
                "critical": True,
                "levels": [
                    {"level": "street", "after_minutes": 0},
                    {"level": "district", "after_minutes": 10},
                    {"level": "city", "after_minutes": 30},
                ],
            },
            "case_overdue": {
                "levels": [
                    {"level": "street", "after_minutes": 0},
                    {"level": "district", "after_minutes": 60},
                ],
            },
            "dispute_unarbitrated": {"levels": [{"level": "district", "after_minutes": 0}]},
        },
        "people": [
            {
                "id": "dispatcher:street",
                "covers": [{"level": "street", "area": STREET}],
                "addresses": {"sms": "13800000001"},
                "channels": ["in_app", "sms"],
            },
            {
                "id": "dispatcher:other-street",
                "covers": [{"level": "street", "area": "310101002"}],
            },
            {
                "id": "dispatcher:district",
                "covers": [{"level": "district", "area": "310101"}],
                "addresses": {"email": "d@example.org", "webhook": "http://hook.example/p"},
                "channels": ["email", "webhook"],
                "quiet_hours": {"start": "22:00", "end": "07:00"},
            },
            {
                "id": "operator:city",
                "covers": [{"level": "city"}],
                "addresses": {"sms": "13800000009"},
                "channels": ["sms"],
                "max_pages": 2,
                "per_minutes": 60,
            },
        ],
    }
    raw.update(changes)
    return PagingPolicy.model_validate(raw)


class Recorder:
    """A channel that keeps what it was given; fails the first ``failures`` sends."""

    def __init__(self, failures: int = 0) -> None:
        self.sent: list[Delivery] = []
        self.failures = failures

    def send(self, delivery: Delivery) -> None:
        if self.failures:
            self.failures -= 1
            raise DeliveryError("gateway said 503")
        self.sent.append(delivery)


def alarm(trigger: str = "critical_alarm", started_at: datetime = T0) -> Subject:
    return Subject(trigger, "incident:i-1", "water on the road", GRID, "310101", started_at)


@pytest.fixture
def desk() -> PagerDesk:
    return PagerDesk(CityApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}), policy())


def opened(desk: PagerDesk, subject: Subject | None = None) -> Escalation:
    subject = subject or alarm()
    assert desk.open(subject, "t:open")
    return desk.get(subject.escalation_id)


def paged(desk: PagerDesk, at: datetime, subject: Subject | None = None) -> list[tuple[str, ...]]:
    orders = desk.escalate((subject or alarm()).escalation_id, at, "t:tick")
    return [(o.level, o.person, o.channel) for o in orders]


# -- the policy file ------------------------------------------------------------------------


def test_the_packaged_policy_loads() -> None:
    packaged = load_paging_policy()
    assert packaged.version >= 1
    assert set(packaged.triggers) == {
        "critical_alarm",
        "incident_overdue",
        "case_overdue",
        "dispute_unarbitrated",
    }
    assert packaged.on_call("city", None, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version: [", "not YAML"),
        ("version: 1\ntriggers: {}\npeople: []\nextra: 1", "extra"),
        (
            "version: 1\npeople: []\ntriggers: {case_overdue: {levels: "
            "[{level: city, after_minutes: 0}, {level: street, after_minutes: 5}]}}",
            "triggers.case_overdue",
        ),
        (
            "version: 1\ntriggers: {}\npeople: [{id: 'dispatcher:x', covers: "
            "[{level: street, area: '3101'}]}]",
            "9-digit",
        ),
        (
            "version: 1\ntriggers: {}\npeople: [{id: 'dispatcher:x', covers: [{level: city}],"
            " channels: [sms]}]",
            "no address",
        ),
        ("version: 1\ntriggers: {nobody_cares: {levels: []}}\npeople: []", "nobody_cares"),
    ],
)
def test_a_malformed_policy_is_refused_with_the_place(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PagingPolicyError, match="paging policy") as raised:
        load_paging_policy(path)
    assert message in str(raised.value)


def test_a_missing_policy_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(PagingPolicyError, match="cannot be read"):
        load_paging_policy(tmp_path / "absent.yaml")


# -- the decision under a controlled clock --------------------------------------------------


def test_escalates_street_then_district_then_stops_when_acknowledged(desk: PagerDesk) -> None:
    escalation = opened(desk)
    assert escalation.id == escalation_id("critical_alarm", "incident:i-1")
    assert paged(desk, T0) == [
        ("street", "dispatcher:street", "in_app"),
        ("street", "dispatcher:street", "sms"),
    ]
    assert paged(desk, T0 + timedelta(minutes=9)) == []
    assert paged(desk, T0 + timedelta(minutes=10)) == [
        ("district", "dispatcher:district", "in_app"),
        ("district", "dispatcher:district", "email"),
        ("district", "dispatcher:district", "webhook"),
    ]
    desk.acknowledge(escalation.id, None, CommandContext("dispatcher:district", "t:ack"))
    assert paged(desk, T0 + timedelta(minutes=31)) == []
    found = desk.get(escalation.id)
    assert found.status == "acknowledged"
    assert found.acknowledged_by == "dispatcher:district"
    assert {p["level"] for p in found.pages.values()} == {"street", "district"}


def test_each_person_is_paged_once_per_level_and_channel(desk: PagerDesk) -> None:
    opened(desk)
    first = paged(desk, T0 + timedelta(minutes=45))
    assert [level for level, _, _ in first].count("city") == 2
    assert paged(desk, T0 + timedelta(minutes=46)) == []
    assert desk.open(alarm(), "t:again") is False  # one escalation per trigger and subject


def test_quiet_hours_hold_outside_channels_of_pages_that_are_not_critical(
    desk: PagerDesk,
) -> None:
    night = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # 23:00 in Shanghai
    case = Subject("case_overdue", "case:c-1/1", "overflowing bin", GRID, "310101", night)
    opened(desk, case)
    paged(desk, night, case)
    late = night + timedelta(hours=1)
    decision = due_pages(desk.get(case.escalation_id), desk.policy, late)
    assert [(o.person, o.channel) for o in decision.due] == [("dispatcher:district", "in_app")]
    assert {(h.order.channel, h.reason) for h in decision.held} == {
        ("email", "quiet_hours"),
        ("webhook", "quiet_hours"),
    }
    paged(desk, late, case)
    morning = datetime(2026, 3, 2, 23, 0, tzinfo=UTC)  # 07:00 in Shanghai
    assert paged(desk, morning, case) == [
        ("district", "dispatcher:district", "email"),
        ("district", "dispatcher:district", "webhook"),
    ]


def test_critical_pages_go_out_in_quiet_hours(desk: PagerDesk) -> None:
    night = datetime(2026, 3, 2, 16, 0, tzinfo=UTC)  # midnight in Shanghai
    subject = alarm(started_at=night - timedelta(minutes=10))
    opened(desk, subject)
    assert ("district", "dispatcher:district", "email") in paged(desk, night, subject)


def test_the_rate_cap_holds_pages_until_the_window_has_room(desk: PagerDesk) -> None:
    escalation = opened(desk)
    at = T0 + timedelta(minutes=30)
    busy = {"operator:city": [at - timedelta(minutes=50), at - timedelta(minutes=5)]}
    decision = due_pages(escalation, desk.policy, at, busy)
    assert [(h.order.person, h.reason) for h in decision.held] == [("operator:city", "rate_cap")]
    later = at + timedelta(minutes=15)  # the first of the two has left the hour
    orders = desk.escalate(escalation.id, later, "t", busy)
    assert ("city", "operator:city", "sms") in [(o.level, o.person, o.channel) for o in orders]
    assert desk.escalate(escalation.id, later, "t", busy) == []


def test_a_dispute_not_arbitrated_in_time_pages_the_district() -> None:
    desk = PagerDesk(CityApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}), policy())
    due = T0 + timedelta(hours=24)
    dispute = Subject(
        "dispute_unarbitrated", f"case:c-9/dispute/{due.isoformat()}", "bin", GRID, "310101", due
    )
    opened(desk, dispute)
    assert paged(desk, due, dispute)[0] == ("district", "dispatcher:district", "in_app")
    assert desk.stop(dispute.escalation_id, "dispute arbitrated", "t:stop") is True
    assert desk.stop(dispute.escalation_id, "dispute arbitrated", "t:stop") is False
    assert paged(desk, due + timedelta(days=1), dispute) == []


# -- the race: a page and the acknowledgement -------------------------------------------------


def test_a_page_racing_the_acknowledgement_records_and_sends_nothing(desk: PagerDesk) -> None:
    escalation = opened(desk)
    paged(desk, T0)
    stale = desk.get(escalation.id)  # what the pager loaded before the acknowledgement landed
    before = stale.version
    desk.acknowledge(escalation.id, None, CommandContext("dispatcher:street", "t:ack"))
    loads = iter([stale])
    fresh = desk.get
    desk.get = lambda uuid: next(loads, None) or fresh(uuid)  # type: ignore[method-assign]
    assert paged(desk, T0 + timedelta(minutes=10)) == []  # its save lost, the reload saw the ack
    desk.get = fresh  # type: ignore[method-assign]
    found = desk.get(escalation.id)
    assert {p["level"] for p in found.pages.values()} == {"street"}
    assert found.version == before + 1  # the acknowledgement, and nothing after it


def test_an_acknowledgement_racing_the_pager_wins_on_retry(desk: PagerDesk) -> None:
    escalation = opened(desk)
    stale = desk.get(escalation.id)
    paged(desk, T0)  # the pager saved first
    loads = iter([stale])
    fresh = desk.get
    desk.get = lambda uuid: next(loads, None) or fresh(uuid)  # type: ignore[method-assign]
    acked = desk.acknowledge(escalation.id, None, CommandContext("dispatcher:street", "t:ack"))
    assert acked.status == "acknowledged"
    with pytest.raises(IllegalTransitionError):
        desk.acknowledge(escalation.id, None, CommandContext("dispatcher:street", "t:ack"))


def test_a_page_recorded_before_the_acknowledgement_is_withdrawn_not_sent(
    desk: PagerDesk,
) -> None:
    escalation = opened(desk)
    paged(desk, T0)
    desk.acknowledge(escalation.id, None, CommandContext("dispatcher:street", "t:ack"))
    sms = Recorder()
    (key,) = desk.get(escalation.id).undelivered()
    assert desk.deliver(escalation.id, key, {"sms": sms}, "t:send") == "withdrawn"
    assert sms.sent == []
    assert desk.get(escalation.id).undelivered() == []


# -- the outbox ------------------------------------------------------------------------------


def test_a_delivery_is_tried_again_with_the_same_key_until_recorded(desk: PagerDesk) -> None:
    escalation = opened(desk)
    paged(desk, T0)
    (key,) = desk.get(escalation.id).undelivered()
    sms = Recorder(failures=1)
    assert desk.deliver(escalation.id, key, {"sms": sms}, "t:1") == "failed"
    assert desk.deliver(escalation.id, key, {"sms": sms}, "t:2") == "delivered"
    assert desk.deliver(escalation.id, key, {"sms": sms}, "t:3") == "delivered"  # no resend
    assert [(d.key, d.address) for d in sms.sent] == [(key, "13800000001")]
    assert "water on the road" in sms.sent[0].text
    page = desk.get(escalation.id).pages[key]
    assert (page["delivery"], page["attempts"]) == ("delivered", 2)


def test_a_delivery_that_keeps_failing_is_given_up(desk: PagerDesk) -> None:
    escalation = opened(desk)
    paged(desk, T0)
    (key,) = desk.get(escalation.id).undelivered()
    sms = Recorder(failures=10)
    outcomes = [desk.deliver(escalation.id, key, {"sms": sms}, "t") for _ in range(4)]
    assert outcomes == ["failed", "failed", "failed", "withdrawn"]
    assert desk.get(escalation.id).undelivered() == []


def test_every_page_and_the_acknowledgement_are_events(desk: PagerDesk) -> None:
    escalation = opened(desk)
    paged(desk, T0)
    desk.acknowledge(escalation.id, None, CommandContext("dispatcher:street", "t:ack"))
    stored = desk.app.recorder.select_events(escalation.id)
    names = [type(desk.app.mapper.to_domain_event(s)).__name__ for s in stored]
    assert names == ["Opened", "Paged", "Paged", "Acknowledged"]
