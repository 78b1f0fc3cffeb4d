"""Lead and co-handlers (主办 / 协办), disputes (异议 / 改派) and first contacts (响应),
through the service desk on the in-memory store, legal paths and refused ones."""

from __future__ import annotations

from typing import Any

import pytest

from core.app import CityApp
from core.case import ServiceCase
from core.case.catalogue import parse_catalogue
from core.case.commands import (
    AddCoHandler,
    AnswerCoHandling,
    CaseCommand,
    ContactCitizen,
    Dispute,
    Rate,
    RejectDispute,
    RequestExtension,
    Resolve,
    ReturnCase,
    Start,
    UpholdDispute,
    WaiveCoHandling,
)
from core.case.desk import ServiceDesk
from core.commands import CommandContext
from core.errors import IllegalTransitionError, NotFoundError
from tests.helpers.desk import CATEGORIES, FakeClock, make_desk, request, utc

CTX = CommandContext("dispatcher:li", "corr-1")
PARTS = {"traffic-west": "close the lane while the crew works"}


def desk_and_clock(*co_handlers: str) -> tuple[ServiceDesk, FakeClock, CityApp]:
    """A desk whose catalogue sends road damage to roads-west with ``co_handlers``."""
    clock, app = FakeClock(), CityApp()
    entry = {
        "id": "roads",
        "categories": ["road_damage"],
        "area": "city",
        "lead": "roads-west",
        "co_handlers": list(co_handlers),
        "parts": {u: p for u, p in PARTS.items() if u in co_handlers},
        "basis": "a regulation",
    }
    catalogue = parse_catalogue({"version": 3, "entries": [entry]}, [c.code for c in CATEGORIES])
    return make_desk(app, clock, catalogue=catalogue), clock, app


def run(desk: ServiceDesk, case: ServiceCase, command: CaseCommand) -> ServiceCase:
    return desk.execute(case.id, command, CTX)


def refused(desk: ServiceDesk, case: ServiceCase, command: CaseCommand, match: str) -> None:
    """The command is refused with ``match`` and nothing is stored."""
    version = desk.get(case.id).version
    with pytest.raises(IllegalTransitionError, match=match):
        run(desk, case, command)
    assert desk.get(case.id).version == version


def names(app: CityApp, case: ServiceCase) -> list[str]:
    return [type(e).__name__ for e in app.events.get(case.id)]


# -- co-handling -------------------------------------------------------------------------


def test_the_catalogues_co_handlers_answer_before_the_lead_resolves() -> None:
    desk, _, app = desk_and_clock("traffic-west", "sanitation-west")
    case = desk.submit(request(), actor="citizen:1", correlation_id="c")
    assert case.department_code == "roads-west"
    assert case.co_handlers == {
        "sanitation-west": {"part": "", "status": "pending", "feedback": None},
        "traffic-west": {"part": PARTS["traffic-west"], "status": "pending", "feedback": None},
    }
    refused(
        desk,
        case,
        Resolve("filled"),
        r"co-handlers have not answered: sanitation-west, traffic-west \(a dispatcher may",
    )
    case = run(desk, case, AnswerCoHandling("traffic-west", "lane closed 10:00-11:30"))
    refused(desk, case, AnswerCoHandling("traffic-west", "again"), "traffic-west is answered")
    refused(desk, case, AnswerCoHandling("lighting-west", "x"), "lighting-west does not co-h")
    refused(desk, case, AnswerCoHandling("sanitation-west", "  "), "needs the co-handler's")
    refused(desk, case, Resolve("filled"), "co-handlers have not answered: sanitation-west ")
    case = run(desk, case, AnswerCoHandling("sanitation-west", "debris taken away"))
    case = run(desk, case, Resolve("filled"))
    assert case.status == "resolved"
    assert case.co_handlers["sanitation-west"]["feedback"] == "debris taken away"
    assert names(app, case)[-3:] == ["CoHandlingAnswered", "CoHandlingAnswered", "CaseResolved"]


def test_a_dispatcher_waives_the_pending_co_handlers_with_a_reason() -> None:
    desk, _, app = desk_and_clock("traffic-west", "sanitation-west")
    case = desk.submit(request(), actor="citizen:1", correlation_id="c")
    case = run(desk, case, AnswerCoHandling("traffic-west", "lane closed"))
    refused(desk, case, WaiveCoHandling(" "), "waiving co-handlers needs a reason")
    case = run(desk, case, WaiveCoHandling("debris gone before sanitation came"))
    assert {u: p["status"] for u, p in case.co_handlers.items()} == {
        "traffic-west": "answered",
        "sanitation-west": "waived",
    }
    (waived,) = [e for e in app.events.get(case.id) if type(e).__name__ == "CoHandlingWaived"]
    assert (waived.departments, waived.reason) == (  # type: ignore[attr-defined]
        ["sanitation-west"],
        "debris gone before sanitation came",
    )
    refused(desk, case, WaiveCoHandling("again"), r"the pending co-handlers are none")
    assert run(desk, case, Resolve("filled")).status == "resolved"


def test_co_handlers_the_city_has_no_department_for_are_noted_not_asked() -> None:
    desk, _, _ = desk_and_clock("traffic-west", "parks-west")
    case = desk.submit(request(), actor="citizen:1", correlation_id="c")
    assert list(case.co_handlers) == ["traffic-west"]
    assert case.dispatch is not None
    assert case.dispatch["co_handlers_unknown"] == ["parks-west"]


def test_a_dispatcher_adds_a_co_handler_by_hand() -> None:
    desk, _, _ = desk_and_clock()
    case = desk.submit(request(), actor="citizen:1", correlation_id="c")
    assert case.co_handlers == {}
    refused(desk, case, AddCoHandler("roads-west", "help"), "roads-west leads this case")
    refused(desk, case, AddCoHandler("traffic-west", " "), "needs its part of the work")
    with pytest.raises(NotFoundError, match="unknown department 'parks-west'"):
        run(desk, case, AddCoHandler("parks-west", "trees"))
    case = run(desk, case, AddCoHandler("traffic-west", "close the lane"))
    refused(desk, case, AddCoHandler("traffic-west", "again"), "co-handles this case already")
    refused(desk, case, Resolve("filled"), "co-handlers have not answered: traffic-west")


def test_a_return_drops_the_co_handlers_with_the_assignment() -> None:
    desk, _, _ = desk_and_clock("traffic-west")
    case = desk.submit(request(), actor="citizen:1", correlation_id="c")
    case = run(desk, case, ReturnCase("a private road"))
    assert (case.status, case.co_handlers) == ("accepted", {})


# -- disputes ----------------------------------------------------------------------------


def test_an_upheld_dispute_moves_the_case_with_a_new_clock() -> None:
    desk, clock, app = desk_and_clock("traffic-west")
    case = desk.submit(request(), actor="citizen:1", correlation_id="c")
    first_due, first_respond = case.due_at, case.respond_by
    assert case.dispute_until == utc(2026, 3, 2, 5, 30)  # 4 calendar hours from 09:30
    clock.advance(hours=1)
    case = run(desk, case, Dispute("the hole is in a private car park", "roads-east"))
    # The arbitration is due in 4 working hours: 10:30 -> 15:30 (lunch 12-13 off).
    assert case.dispute == {
        "by": "roads-west",
        "reason": "the hole is in a private car park",
        "proposed_department_code": "roads-east",
        "arbitrate_by": utc(2026, 3, 2, 7, 30),
    }
    for blocked in (Resolve("filled"), RequestExtension(4, "parts"), ReturnCase("not ours")):
        refused(desk, case, blocked, "while the unit's dispute of the assignment waits")
    refused(desk, case, Dispute("again"), "cannot dispute again while")
    clock.advance(hours=2)
    case = run(desk, case, UpholdDispute())  # to the unit the dispute proposed
    assert (case.status, case.department_code) == ("assigned", "roads-east")
    assert case.wrongly_assigned == ["roads-west"]
    assert case.dispute is None
    assert case.deadline_no == 2
    assert case.dispatch is not None
    assert (case.dispatch["by"], case.dispatch["rule"], case.dispatch["disputed_by"]) == (
        "arbitration",
        "dispute_upheld",
        "roads-west",
    )
    # The new unit's clock starts at the reassignment (12:30 local), not at submission.
    assert case.dispatch["clock_started_at"] == "2026-03-02T04:30:00+00:00"
    assert first_due is not None
    assert case.due_at is not None
    assert case.due_at > first_due
    # Nobody called the citizen yet: the new unit's first contact is due from now.
    assert first_respond == utc(2026, 3, 2, 3, 30)
    assert case.respond_by == utc(2026, 3, 2, 6, 30)
    assert case.co_handlers["traffic-west"]["status"] == "pending"
    assert names(app, case)[-2:] == ["DisputeRaised", "DisputeUpheld"]
    # The new unit may dispute its own assignment, once.
    case = run(desk, case, Dispute("ours neither"))
    refused(desk, case, UpholdDispute(), "name the unit the case moves to")
    case = run(desk, case, RejectDispute("it is a public road"))
    refused(desk, case, Dispute("really not ours"), "disputed once already")


def test_a_rejected_dispute_leaves_the_deadline_where_it_was() -> None:
    desk, clock, _ = desk_and_clock()
    case = desk.submit(request(), actor="citizen:1", correlation_id="c")
    due = (case.due_at, case.due_soon_at, case.deadline_no)
    case = run(desk, case, Start())
    case = run(desk, case, Dispute("not a road of ours"))
    refused(desk, case, RejectDispute(" "), "rejecting a dispute needs a reason")
    clock.advance(hours=3)
    case = run(desk, case, RejectDispute("the road register says it is"))
    assert (case.due_at, case.due_soon_at, case.deadline_no) == due
    assert (case.status, case.department_code, case.wrongly_assigned) == (
        "in_progress",
        "roads-west",
        [],
    )
    assert run(desk, case, Resolve("filled")).status == "resolved"


@pytest.mark.parametrize(
    ("command", "match"),
    [
        (Dispute(" "), "a dispute needs a reason"),
        (Dispute("ours?", "roads-west"), "names another unit than the one disputing"),
        (RejectDispute("x"), "no dispute is pending"),
        (UpholdDispute("roads-east"), "no dispute is pending"),
    ],
)
def test_bad_disputes_are_refused(command: CaseCommand, match: str) -> None:
    desk, _, _ = desk_and_clock()
    case = desk.submit(request(), actor="citizen:1", correlation_id="c")
    refused(desk, case, command, match)


def test_a_dispute_after_its_time_and_of_an_unknown_unit_are_refused() -> None:
    desk, clock, _ = desk_and_clock()
    case = desk.submit(request(), actor="citizen:1", correlation_id="c")
    with pytest.raises(NotFoundError, match="unknown department 'parks-west'"):
        run(desk, case, Dispute("the park's", "parks-west"))
    clock.advance(hours=4, minutes=1)
    refused(desk, case, Dispute("not ours"), r"could be disputed until 2026-03-02T05:30:00")


def test_upholding_to_the_disputing_unit_is_refused() -> None:
    desk, _, _ = desk_and_clock()
    case = desk.submit(request(), actor="citizen:1", correlation_id="c")
    case = run(desk, case, Dispute("not ours"))
    refused(desk, case, UpholdDispute("roads-west"), "moves the case to another unit")


# -- the citizen: first contact and the answer -------------------------------------------


def test_contacts_are_counted_and_the_first_contact_deadline_is_the_cases() -> None:
    desk, clock, app = desk_and_clock()
    case = desk.submit(request(), actor="citizen:1", correlation_id="c")
    assert case.respond_by == utc(2026, 3, 2, 3, 30)  # 2 calendar hours
    refused(desk, case, ContactCitizen("  "), "a contact needs a note")
    clock.advance(minutes=40)
    case = run(desk, case, ContactCitizen("called: crew tomorrow morning"))
    case = run(desk, case, ContactCitizen("called again: crew on site"))
    assert case.contacts == 2
    contacts = [e for e in app.events.get(case.id) if type(e).__name__ == "CitizenContacted"]
    assert [e.note for e in contacts] == [  # type: ignore[attr-defined]
        "called: crew tomorrow morning",
        "called again: crew on site",
    ]


def test_a_categorys_own_response_time_is_used() -> None:
    desk, _, _ = desk_and_clock()
    case = desk.submit(
        request(category="manhole_cover_missing"), actor="citizen:1", correlation_id="c"
    )
    assert case.respond_by == utc(2026, 3, 2, 2, 0)  # half an hour


def test_the_citizen_says_whether_it_was_solved() -> None:
    desk, _, app = desk_and_clock()
    case = desk.submit(request(), actor="citizen:1", correlation_id="c")
    case = run(desk, case, Resolve("filled"))
    case = run(desk, case, Rate(4, solved=False))
    assert (case.status, case.rating, case.solved) == ("closed", 4, False)
    rated: Any = list(app.events.get(case.id))[-1]
    assert rated.solved is False
