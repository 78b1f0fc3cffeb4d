"""Random command sequences through the ServiceDesk against a model of the case life cycle.

Illegal commands must raise ``IllegalTransitionError`` and store nothing; after every
step, each case loaded from the store equals a replay of its stored records decoded by
a second application, and equals the object the desk last returned for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from uuid import UUID

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from core.app import CityApp
from core.case import ACTIVE, OPEN, ServiceCase
from core.case.commands import (
    AddCoHandler,
    AnswerCoHandling,
    CaseCommand,
    ContactCitizen,
    Dispute,
    RejectDispute,
    UpholdDispute,
    WaiveCoHandling,
)
from core.case.desk import ServiceDesk, SubmitCase
from core.commands import CommandContext
from core.errors import IllegalTransitionError
from core.personal import Contact
from tests.helpers.desk import FakeClock, FakeLocator, make_desk

# Where a case can be: each kind has its own intake outcome.
PLACES: dict[str, tuple[float, float] | None] = {
    "jurisdiction": (121.2, 31.2),
    "duplicate_zone": (121.2, 31.05),  # the nearby read model knows an open case here
    "no_jurisdiction": (121.7, 31.2),
    "outside": (116.4, 39.9),
    "address_only": None,
}
AFTER_INTAKE = {
    "jurisdiction": "assigned",
    "duplicate_zone": "submitted",
    "no_jurisdiction": "accepted",
    "outside": "rejected",
    "address_only": "accepted",
}
CATEGORIES = {
    "road_damage": {},
    "manhole_cover_missing": {},
    "streetlight_out": {"pole_number": "A-17"},
    "flooding": {"water_depth": "knee"},
}
PHONES = ("13800000001", "13800000002", None)
MARKS = ("CaseDueSoon", "CaseBecameOverdue")


class ZoneNearby:
    """Open cases near a point: one known case south of latitude 31.1."""

    def open_cases_near(
        self, category: str, lon: float, lat: float, radius_m: float, limit: int
    ) -> list[str]:
        return ["an-earlier-case"] if lat < 31.1 else []


@dataclass
class Model:
    status: str
    place: str
    citizen: str | None
    pending_extension: bool = False
    deadline_no: int = 0
    erased: bool = False
    lead: str | None = None
    co_handlers: dict[str, str] = field(default_factory=dict)  # unit -> its part's status
    dispute: str | None = None  # the unit whose dispute waits for arbitration
    disputed: bool = False  # the current assignment was disputed once
    contacts: int = 0

    def assigned(self, lead: str) -> None:
        self.status, self.lead = "assigned", lead
        self.deadline_no += 1
        self.pending_extension = self.disputed = False

    @property
    def co_pending(self) -> bool:
        return "pending" in self.co_handlers.values()


def replay(second: CityApp, app: CityApp, cid: UUID) -> tuple[ServiceCase, list[str]]:
    """Fold the stored records, decoded by another app; check each SLA mark on the way."""
    case: Any = None
    problems: list[str] = []
    seen: set[tuple[str, int]] = set()
    for record in app.recorder.select_events(cid):
        event: Any = second.mapper.to_domain_event(record)
        name = type(event).__name__
        if name in MARKS:
            key = (name, event.deadline_no)
            if key in seen:
                problems.append(f"{name} recorded twice for deadline {event.deadline_no}")
            seen.add(key)
            if case.status not in ACTIVE:
                problems.append(f"{name} recorded on a {case.status} case")
            if event.deadline_no != case.deadline_no or event.due_at != case.due_at:
                problems.append(f"{name} for a deadline that is not the current one")
        if not (event.actor and event.correlation_id):
            problems.append(f"{name} without actor or correlation id")
        case = event.mutate(case)
    assert isinstance(case, ServiceCase)
    return case, problems


class CaseMachine(RuleBasedStateMachine):
    cases = Bundle("cases")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.app = CityApp()
        self.second = CityApp()  # decodes the first app's records with its own mapper
        self.desk: ServiceDesk = make_desk(self.app, self.clock)
        self.desk.nearby = ZoneNearby()
        self.model: dict[UUID, Model] = {}
        self.returned: dict[UUID, ServiceCase] = {}
        self.dirty: set[UUID] = set()  # cases the invariant must look at again
        self.serial = 0
        self.departments = sorted(FakeLocator().departments())

    # -- helpers --------------------------------------------------------------------------

    def attempt(self, cid: UUID, legal: bool, command: Any, *args: Any, **kwargs: Any) -> bool:
        """Run a desk command that must succeed iff ``legal``; a refusal stores nothing."""
        event(f"{command.__name__}: {'legal' if legal else 'refused'}")
        self.dirty.add(cid)
        before = list(self.app.recorder.select_events(cid))
        loaded: dict[str, Any] = self.app.repository.get(cid).__dict__
        try:
            case = command(cid, *args, **kwargs)
        except IllegalTransitionError:
            assert not legal, f"{command.__name__} refused on {self.model[cid]}"
            assert list(self.app.recorder.select_events(cid)) == before
            assert self.app.repository.get(cid).__dict__ == loaded
            return False
        assert legal, f"{command.__name__} allowed on {self.model[cid]}"
        assert isinstance(case, ServiceCase)
        assert len(list(self.app.recorder.select_events(cid))) > len(before)
        self.returned[cid] = case
        return True

    # -- commands -------------------------------------------------------------------------

    @initialize(target=cases, place=st.sampled_from(sorted(PLACES)))
    def first_case(self, place: str) -> UUID:
        return self.new_case(place, "road_damage", PHONES[0])

    @rule(
        target=cases,
        place=st.sampled_from(sorted(PLACES)),
        category=st.sampled_from(sorted(CATEGORIES)),
        phone=st.sampled_from(PHONES),
    )
    def submit(self, place: str, category: str, phone: str | None) -> UUID:
        return self.new_case(place, category, phone)

    def new_case(self, place: str, category: str, phone: str | None) -> UUID:
        self.serial += 1
        where = PLACES[place]
        cmd = SubmitCase(
            channel="app",
            external_id=f"ext-{self.serial}",
            category=category,
            description="something is wrong",
            lon=None if where is None else where[0],
            lat=None if where is None else where[1],
            address="12 Nanjing Road" if where is None else None,
            attributes=dict(CATEGORIES[category]),
            contact=Contact.parse(name="市民", phone=phone),
        )
        case = self.desk.submit(cmd, actor="citizen", correlation_id=f"sub-{self.serial}")
        status = AFTER_INTAKE[place]
        self.model[case.id] = Model(
            status=status,
            place=place,
            citizen=case.citizen_id,
            deadline_no=1 if status == "assigned" else 0,
            lead=case.department_code,
        )
        self.returned[case.id] = case
        self.dirty.add(case.id)
        return case.id

    @rule(cid=cases)
    def accept(self, cid: UUID) -> None:
        m = self.model[cid]
        if self.attempt(cid, m.status == "submitted", self.desk.accept, "disp", "", "acc"):
            m.status = "assigned" if m.place in ("jurisdiction", "duplicate_zone") else "accepted"
            m.deadline_no += m.status == "assigned"
            m.lead = self.returned[cid].department_code

    @rule(
        cid=cases,
        rejection=st.sampled_from(["duplicate", "out_of_scope", "not_our_city", "spam"]),
        original=st.one_of(st.none(), cases),
    )
    def reject(self, cid: UUID, rejection: str, original: UUID | None) -> None:
        m = self.model[cid]
        legal = (
            m.status in ("submitted", "accepted")
            and rejection != "spam"
            and original != cid
            and not (rejection == "duplicate" and original is None)
        )
        if self.attempt(cid, legal, self.desk.reject, rejection, original, "disp", "no", "rej"):
            m.status = "rejected"

    @rule(cid=cases, department=st.integers(0, 7))
    def assign(self, cid: UUID, department: int) -> None:
        m = self.model[cid]
        dep = self.departments[department]
        if self.attempt(cid, m.status == "accepted", self.desk.assign, dep, "disp", "", "asg"):
            m.assigned(dep)
            m.co_handlers = {}

    @rule(cid=cases)
    def start(self, cid: UUID) -> None:
        m = self.model[cid]
        legal = m.status in ("assigned", "reopened")
        if self.attempt(cid, legal, self.desk.start, "dept", "go", "sta"):
            m.status = "in_progress"

    @rule(cid=cases, reply=st.sampled_from(["fixed", "  "]))
    def resolve(self, cid: UUID, reply: str) -> None:
        m = self.model[cid]
        legal = m.status in ACTIVE and bool(reply.strip()) and not (m.co_pending or m.dispute)
        if self.attempt(cid, legal, self.desk.resolve, reply, "dept", "done", "res"):
            m.status = "resolved"
            m.pending_extension = False

    @rule(cid=cases, reason=st.sampled_from(["not ours", ""]))
    def return_case(self, cid: UUID, reason: str) -> None:
        m = self.model[cid]
        legal = m.status in ("assigned", "in_progress") and bool(reason) and not m.dispute
        if self.attempt(cid, legal, self.desk.return_case, "dept", reason, "ret"):
            m.status, m.lead, m.co_handlers = "accepted", None, {}
            m.pending_extension = False

    @rule(
        cid=cases,
        hours=st.sampled_from([0.0, 2.5, 8.0, 30.0]),
        reason=st.sampled_from(["parts", ""]),
    )
    def request_extension(self, cid: UUID, hours: float, reason: str) -> None:
        m = self.model[cid]
        legal = (
            m.status in ACTIVE
            and not (m.pending_extension or m.dispute)
            and hours > 0
            and bool(reason)
        )
        if self.attempt(cid, legal, self.desk.request_extension, hours, "dept", reason, "ext"):
            m.pending_extension = True

    @rule(cid=cases, approve=st.booleans())
    def decide_extension(self, cid: UUID, approve: bool) -> None:
        m = self.model[cid]
        assert not m.pending_extension or m.status in ACTIVE
        if self.attempt(
            cid, m.pending_extension, self.desk.decide_extension, approve, "disp", "ok", "dec"
        ):
            m.pending_extension = False
            m.deadline_no += approve

    @rule(cid=cases, rating=st.integers(0, 6))
    def rate(self, cid: UUID, rating: int) -> None:
        m = self.model[cid]
        legal = m.status == "resolved" and 1 <= rating <= 5
        if self.attempt(cid, legal, self.desk.rate, rating, "", "citizen", "rat"):
            m.status = "reopened" if rating <= 2 else "closed"
            m.deadline_no += rating <= 2

    @rule(cid=cases)
    def cancel(self, cid: UUID) -> None:
        m = self.model[cid]
        if self.attempt(cid, m.status in OPEN, self.desk.cancel, "citizen", "", "can"):
            m.status = "cancelled"
            m.pending_extension = False
            m.dispute = None

    # -- co-handling, disputes, contacts --------------------------------------------------

    def run(self, cid: UUID, legal: bool, command: CaseCommand) -> bool:
        name = type(command).__name__
        ctx = CommandContext("disp", f"cmd-{name}")

        def execute(c: UUID) -> ServiceCase:
            return self.desk.execute(c, command, ctx)

        execute.__name__ = name
        return self.attempt(cid, legal, execute)

    @rule(cid=cases, department=st.integers(0, 7), part=st.sampled_from(["close the lane", " "]))
    def add_co_handler(self, cid: UUID, department: int, part: str) -> None:
        m = self.model[cid]
        dep = self.departments[department]
        legal = (
            m.status in ACTIVE and dep != m.lead and dep not in m.co_handlers and bool(part.strip())
        )
        if self.run(cid, legal, AddCoHandler(dep, part)):
            m.co_handlers[dep] = "pending"

    @rule(cid=cases, department=st.integers(0, 7), feedback=st.sampled_from(["done", ""]))
    def answer_co_handling(self, cid: UUID, department: int, feedback: str) -> None:
        m = self.model[cid]
        dep = self.departments[department]
        legal = m.status in ACTIVE and m.co_handlers.get(dep) == "pending" and bool(feedback)
        if self.run(cid, legal, AnswerCoHandling(dep, feedback)):
            m.co_handlers[dep] = "answered"

    @rule(cid=cases, reason=st.sampled_from(["urgent", ""]))
    def waive_co_handling(self, cid: UUID, reason: str) -> None:
        m = self.model[cid]
        legal = m.status in ACTIVE and m.co_pending and bool(reason)
        if self.run(cid, legal, WaiveCoHandling(reason)):
            m.co_handlers = {u: "waived" if s == "pending" else s for u, s in m.co_handlers.items()}

    @rule(
        cid=cases,
        proposed=st.one_of(st.none(), st.integers(0, 7)),
        reason=st.sampled_from(["not ours", " "]),
    )
    def dispute(self, cid: UUID, proposed: int | None, reason: str) -> None:
        m = self.model[cid]
        dep = None if proposed is None else self.departments[proposed]
        until = self.app.repository.get(cid).dispute_until
        legal = (
            m.status in ("assigned", "in_progress")
            and not (m.dispute or m.disputed)
            and (until is None or self.clock.now <= until)
            and bool(reason.strip())
            and dep != m.lead
        )
        if self.run(cid, legal, Dispute(reason, dep)):
            m.dispute, m.disputed = m.lead, True

    @rule(cid=cases, department=st.one_of(st.none(), st.integers(0, 7)))
    def uphold_dispute(self, cid: UUID, department: int | None) -> None:
        m = self.model[cid]
        case: ServiceCase = self.app.repository.get(cid)
        named = None if department is None else self.departments[department]
        proposed = None if case.dispute is None else case.dispute["proposed_department_code"]
        target = named or proposed
        legal = m.status in ACTIVE and m.dispute is not None and target not in (None, m.dispute)
        if self.run(cid, legal, UpholdDispute(named)):
            assert target is not None
            m.assigned(target)
            m.dispute = None
            m.co_handlers.pop(target, None)

    @rule(cid=cases, reason=st.sampled_from(["it is yours", ""]))
    def reject_dispute(self, cid: UUID, reason: str) -> None:
        m = self.model[cid]
        legal = m.status in ACTIVE and m.dispute is not None and bool(reason)
        if self.run(cid, legal, RejectDispute(reason)):
            m.dispute = None

    @rule(cid=cases, note=st.sampled_from(["called back", ""]))
    def contact_citizen(self, cid: UUID, note: str) -> None:
        m = self.model[cid]
        if self.run(cid, m.status in ACTIVE and bool(note), ContactCitizen(note)):
            m.contacts += 1

    @rule(
        cid=cases,
        choices=st.lists(st.integers(0, 9), min_size=1, max_size=8),
        wait=st.sampled_from([None, 1.7, 24.0, 72.0]),
    )
    def progress(self, cid: UUID, choices: list[int], wait: float | None) -> None:
        """A few legal next steps, maybe then the SLA clock: runs reach deep states."""
        for choice in choices:
            self.step(cid, choice)
        if wait is not None:
            self.check_deadlines(repeat=1, advance=wait)

    def step(self, cid: UUID, choice: int) -> None:
        m = self.model[cid]
        if m.pending_extension:
            self.decide_extension(cid, approve=choice % 2 == 0)
        elif m.status == "submitted":
            self.accept(cid)
        elif m.status == "accepted":
            self.assign(cid, department=choice % 8)
        elif m.status == "resolved":
            self.rate(cid, rating=choice % 5 + 1)
        elif m.status in ACTIVE:
            if choice in (1, 2, 3):
                self.request_extension(cid, hours=[8.0, 2.5, 30.0][choice - 1], reason="parts")
                self.decide_extension(cid, approve=choice != 3)
            elif choice == 4:
                self.start(cid)  # refused when in progress
            elif choice == 5:
                self.return_case(cid, reason="not ours")  # refused when reopened
            elif choice == 6:
                self.add_co_handler(cid, department=len(m.co_handlers) % 8, part="close the lane")
            elif choice == 7:
                self.dispute(cid, proposed=(len(m.co_handlers) + 1) % 8, reason="not ours")
            elif choice == 8 and m.dispute is not None:
                self.uphold_dispute(cid, department=None)
            elif m.dispute is not None:
                self.reject_dispute(cid, reason="it is yours")
            elif choice == 9:
                self.contact_citizen(cid, note="called back")
            elif m.co_pending:
                pending = [u for u, s in m.co_handlers.items() if s == "pending"]
                if choice % 2:
                    self.waive_co_handling(cid, reason="urgent")
                else:
                    dep = self.departments.index(pending[0])
                    self.answer_co_handling(cid, department=dep, feedback="done")
            else:
                self.resolve(cid, reply="fixed")

    @rule(hours=st.floats(min_value=0.05, max_value=40.0, allow_nan=False))
    def tick(self, hours: float) -> None:
        self.clock.now += timedelta(hours=hours)

    @precondition(lambda self: bool(self.model))
    @rule(
        repeat=st.integers(1, 2),
        advance=st.sampled_from([24.0, 1.7, 72.0, 8.0, 2.0, 120.0, 1.0, 0.0]),
    )
    def check_deadlines(self, repeat: int, advance: float) -> None:
        self.clock.now += timedelta(hours=advance)
        now = self.clock.now
        expected = {"due_soon": 0, "overdue": 0, "raced": 0, "missing": 0}
        for cid, m in self.model.items():
            case: ServiceCase = self.app.repository.get(cid)
            if m.status not in ACTIVE:
                continue
            assert case.due_at is not None
            assert case.due_soon_at is not None
            soon, due = self.recorded(cid)
            expected["due_soon"] += now >= case.due_soon_at and m.deadline_no not in soon
            expected["overdue"] += now >= case.due_at and m.deadline_no not in due
        ids = list(self.model)
        event(f"check_deadlines: {'marks' if any(expected.values()) else 'nothing'} due")
        assert self.desk.check_deadlines(ids, "sla") == expected
        for _ in range(repeat - 1):  # again: nothing new
            assert self.desk.check_deadlines(ids, "sla") == dict.fromkeys(expected, 0)
        for cid, m in self.model.items():
            case = self.app.repository.get(cid)
            soon, due = self.recorded(cid)
            if m.status in ACTIVE:
                assert case.due_soon_at is not None
                assert case.due_at is not None
                assert (m.deadline_no in soon) == (now >= case.due_soon_at)
                assert (m.deadline_no in due) == (now >= case.due_at)
                assert case.overdue == (now >= case.due_at)
        self.returned.clear()  # the desk returns no case objects here
        self.dirty.update(self.model)

    @rule(cid=cases)
    def erase_citizen(self, cid: UUID) -> None:
        citizen = self.model[cid].citizen
        if citizen is None:
            return
        mine = [c for c, m in self.model.items() if m.citizen == citizen]
        expected = sum(not self.model[c].erased for c in mine)
        noted = self.desk.erase_citizen(UUID(citizen), lambda _c: list(self.model), "dpo", "era")
        assert noted == expected
        for c in mine:
            self.model[c].erased = True
            self.returned.pop(c, None)
            self.dirty.add(c)
            assert self.desk.contact_of(self.desk.get(c)) is None

    # -- invariants -----------------------------------------------------------------------

    def recorded(self, cid: UUID) -> tuple[set[int], set[int]]:
        soon: set[int] = set()
        due: set[int] = set()
        e: Any
        for e in self.app.events.get(cid):
            name = type(e).__name__
            if name == "CaseDueSoon":
                soon.add(e.deadline_no)
            elif name == "CaseBecameOverdue":
                due.add(e.deadline_no)
        return soon, due

    @invariant()
    def store_replay_and_memory_agree(self) -> None:
        for cid in self.dirty:
            m = self.model[cid]
            loaded: ServiceCase = self.app.repository.get(cid)
            replayed, problems = replay(self.second, self.app, cid)
            assert problems == []
            assert loaded.__dict__ == replayed.__dict__
            if cid in self.returned:
                assert self.returned[cid].__dict__ == loaded.__dict__
            assert loaded.version == len(list(self.app.recorder.select_events(cid)))
            assert (loaded.status, loaded.deadline_no, loaded.erased) == (
                m.status,
                m.deadline_no,
                m.erased,
            )
            assert (loaded.extension_request is not None) == m.pending_extension
            assert loaded.department_code == (m.lead if m.status != "accepted" else None)
            assert {u: p["status"] for u, p in loaded.co_handlers.items()} == m.co_handlers
            assert (None if loaded.dispute is None else loaded.dispute["by"]) == m.dispute
            assert loaded.contacts == m.contacts
            if m.status in ACTIVE:
                assert loaded.due_at is not None
                assert loaded.due_soon_at is not None
                assert loaded.due_soon_at <= loaded.due_at
            if m.citizen is not None and not m.erased:
                contact = self.desk.contact_of(loaded)
                assert contact is not None
                assert contact.name == "市民"
        self.dirty.clear()


CaseMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCaseMachine = CaseMachine.TestCase
