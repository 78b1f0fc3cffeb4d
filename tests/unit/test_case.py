"""The ``ServiceCase`` aggregate and the ``ServiceDesk`` on the in-memory event store.

Deadlines are checked against values worked out by hand (Asia/Shanghai, working periods
09:00-12:00 and 13:00-18:00, Monday to Friday), never recomputed with ``core.case.sla``.
"""

from __future__ import annotations

import copy
import dataclasses
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.application import ProcessingEvent

from core.app import CityApp
from core.case import ACTIVE, STATUSES, ServiceCase, case_id
from core.case.categories import InvalidAttributeError, UnknownCategoryError
from core.case.desk import (
    SYSTEM_INTAKE,
    SYSTEM_SLA,
    DuplicateSubmissionError,
    InvalidLocationError,
    ServiceDesk,
    SubmitCase,
)
from core.errors import DomainError, IllegalTransitionError, NotFoundError
from core.personal import Contact, InvalidContactError
from tests.helpers.builders import sensor
from tests.helpers.desk import (
    EAST,
    OUTSIDE,
    WEST,
    FakeClock,
    FakeNearby,
    make_desk,
    request,
    utc,
)


def stored(app: CityApp, cid: UUID) -> list[Any]:
    return list(app.events.get(cid))


def names(app: CityApp, cid: UUID) -> list[str]:
    return [type(e).__name__ for e in stored(app, cid)]


# ======================================================================================
# The aggregate on its own
# ======================================================================================

D1 = utc(2026, 3, 4, 10)
D1_SOON = utc(2026, 3, 4, 5)
D2 = utc(2026, 3, 6, 10)
D2_SOON = utc(2026, 3, 6, 5)


def fresh(external_id: str = "x-1") -> ServiceCase:
    return ServiceCase.submit(
        case_id("app", external_id),
        channel="app",
        external_id=external_id,
        category="road_damage",
        categories_version=1,
        description="hole",
        lon=WEST[0],
        lat=WEST[1],
        address=None,
        attributes={},
        citizen_id=None,
        contact_token=None,
        actor="citizen:1",
        correlation_id="corr-submit",
    )


def place(grid: str, district: str, **decision: str) -> dict[str, Any]:
    """Where a case is and what decided its department, as ``assign`` takes them."""
    return {"grid_code": grid, "district_code": district, "decision": decision}


def at(status: str) -> ServiceCase:
    """A case brought to ``status`` by legal commands."""
    c = fresh()
    kw = {"actor": "user:setup", "correlation_id": "corr-setup"}
    if status == "submitted":
        return c
    if status == "cancelled":
        c.cancel(reason="changed my mind", **kw)
        return c
    if status == "rejected":
        c.reject(rejection="out_of_scope", duplicate_of=None, reason="not ours", **kw)
        return c
    c.accept(reason="registered", **kw)
    if status == "accepted":
        return c
    c.assign(
        department_code="roads-west",
        **place("g", "d", by="manual"),
        due_at=D1,
        due_soon_at=D1_SOON,
        reason="yours",
        **kw,
    )
    if status == "assigned":
        return c
    if status == "in_progress":
        c.start(reason="crew sent", **kw)
        return c
    c.resolve(reply="fixed", reason="done", **kw)
    if status == "resolved":
        return c
    if status == "closed":
        c.close(reason="no rating in time", **kw)
        return c
    assert status == "reopened"
    c.rate(rating=1, comment="not fixed", revisit=True, due_at=D2, due_soon_at=D2_SOON, **kw)
    return c


ACTOR = "user:alice"
CORR = "corr-42"
REASON = "because"
BY: dict[str, Any] = {"actor": ACTOR, "reason": REASON, "correlation_id": CORR}

Command = Callable[[ServiceCase], None]


def rate(
    rating: int,
    comment: str = "",
    *,
    revisit: bool = False,
    due_at: datetime | None = None,
    due_soon_at: datetime | None = None,
    actor: str = ACTOR,
) -> Command:
    """The rate command with these arguments, to run on a case."""
    return lambda c: c.rate(
        rating=rating,
        comment=comment,
        revisit=revisit,
        due_at=due_at,
        due_soon_at=due_soon_at,
        actor=actor,
        correlation_id=CORR,
    )


# command -> (call, verb in the refusal message, statuses where legal, status after)
COMMANDS: dict[str, tuple[Command, str, set[str], str | None]] = {
    "accept": (
        lambda c: c.accept(**BY),
        "accept",
        {"submitted"},
        "accepted",
    ),
    "suggest_duplicates": (
        lambda c: c.suggest_duplicates(possible_duplicates=["other"], **BY),
        "suggest duplicates for",
        {"submitted"},
        "submitted",
    ),
    "reject": (
        lambda c: c.reject(rejection="out_of_scope", duplicate_of=None, **BY),
        "reject",
        {"submitted", "accepted"},
        "rejected",
    ),
    "assign": (
        lambda c: c.assign(
            department_code="roads-east",
            **place("g2", "d2", by="manual"),
            due_at=D2,
            due_soon_at=D2_SOON,
            **BY,
        ),
        "assign",
        {"accepted"},
        "assigned",
    ),
    "await_manual_assignment": (
        lambda c: c.await_manual_assignment(**place("g2", "d2", rule="no_jurisdiction"), **BY),
        "hold for manual assignment",
        {"accepted"},
        "accepted",
    ),
    "return_to_dispatch": (
        lambda c: c.return_to_dispatch(**BY),
        "return",
        {"assigned", "in_progress"},
        "accepted",
    ),
    "start": (
        lambda c: c.start(**BY),
        "start",
        {"assigned", "reopened"},
        "in_progress",
    ),
    "resolve": (
        lambda c: c.resolve(reply="repaved", **BY),
        "resolve",
        set(ACTIVE),
        "resolved",
    ),
    "request_extension": (
        lambda c: c.request_extension(hours=4, **BY),
        "request an extension for",
        set(ACTIVE),
        None,
    ),
    "approve_extension": (
        lambda c: c.approve_extension(due_at=D2, due_soon_at=D2_SOON, **BY),
        "approve an extension for",
        set(),  # nothing is pending
        None,
    ),
    "refuse_extension": (
        lambda c: c.refuse_extension(**BY),
        "refuse an extension for",
        set(),  # nothing is pending
        None,
    ),
    "rate": (
        rate(4, "ok"),
        "rate",
        {"resolved"},
        "closed",
    ),
    "close": (
        lambda c: c.close(**BY),
        "close",
        {"resolved"},
        "closed",
    ),
    "cancel": (
        lambda c: c.cancel(**BY),
        "cancel",
        {"submitted", "accepted", *ACTIVE},
        "cancelled",
    ),
    "mark_due_soon": (
        lambda c: c.mark_due_soon(
            deadline_no=c.deadline_no, due_at=c.due_at or D1, actor=ACTOR, correlation_id=CORR
        ),
        "mark as due soon",
        set(ACTIVE),
        None,
    ),
    "mark_overdue": (
        lambda c: c.mark_overdue(
            deadline_no=c.deadline_no, due_at=c.due_at or D1, actor=ACTOR, correlation_id=CORR
        ),
        "mark as overdue",
        set(ACTIVE),
        None,
    ),
}
NO_REASON = {"rate", "mark_due_soon", "mark_overdue"}


def test_the_transition_table_covers_every_status_and_command() -> None:
    legal_somewhere = set().union(*(legal for _, _, legal, _ in COMMANDS.values()))
    assert legal_somewhere <= set(STATUSES)
    for status in STATUSES:
        assert at(status).status == status


def assert_refused(case: ServiceCase, run: Command, match: str) -> None:
    """``run`` raises IllegalTransitionError matching ``match`` and changes nothing."""
    before = copy.deepcopy(case.__dict__)
    with pytest.raises(IllegalTransitionError, match=match):
        run(case)
    assert case.__dict__ == before


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_in_every_status(status: str, command: str) -> None:
    run, verb, legal, after = COMMANDS[command]
    case = at(status)
    version = case.version
    if status not in legal:
        if command in ("approve_extension", "refuse_extension") and status in ACTIVE:
            match = "no extension request is pending"
        else:
            match = f"^cannot {verb} a case that is {status} \\(needs "
        assert_refused(case, run, match)
        assert case.version == version
        return
    run(case)
    assert case.version == version + 1
    assert case.status == (after or status)
    event = case.collect_events()[-1]
    assert event.actor == ACTOR  # type: ignore[attr-defined]
    assert event.correlation_id == CORR  # type: ignore[attr-defined]
    if command not in NO_REASON:
        assert event.reason == REASON  # type: ignore[attr-defined]


def test_refusal_message_names_the_allowed_statuses() -> None:
    with pytest.raises(IllegalTransitionError) as err:
        at("closed").start(actor=ACTOR, reason="", correlation_id=CORR)
    assert str(err.value) == "cannot start a case that is closed (needs assigned or reopened)"


@pytest.mark.parametrize("status", ACTIVE)
def test_extension_approved_moves_the_deadline(status: str) -> None:
    case = at(status)
    deadline_no = case.deadline_no
    case.request_extension(hours=8, actor="dept:roads", reason="asphalt", correlation_id="c1")
    assert case.extension_request == {"hours": 8, "reason": "asphalt", "by": "dept:roads"}
    assert_refused(
        case,
        lambda c: c.request_extension(
            hours=2, actor="dept:roads", reason="again", correlation_id="c2"
        ),
        "already pending",
    )
    case.approve_extension(
        due_at=utc(2026, 3, 9, 3),
        due_soon_at=utc(2026, 3, 9, 1),
        actor=ACTOR,
        reason="ok",
        correlation_id="c3",
    )
    assert case.extension_request is None
    assert case.extensions == 1
    assert case.deadline_no == deadline_no + 1
    assert (case.due_at, case.due_soon_at) == (utc(2026, 3, 9, 3), utc(2026, 3, 9, 1))
    assert case.status == status


@pytest.mark.parametrize("status", ACTIVE)
def test_extension_refused_keeps_the_deadline(status: str) -> None:
    case = at(status)
    due, deadline_no = case.due_at, case.deadline_no
    case.request_extension(hours=8, actor="dept:roads", reason="asphalt", correlation_id="c1")
    case.refuse_extension(actor=ACTOR, reason="no", correlation_id="c2")
    assert case.extension_request is None
    assert (case.due_at, case.deadline_no, case.extensions) == (due, deadline_no, 0)
    assert_refused(
        case,
        lambda c: c.refuse_extension(actor=ACTOR, reason="no", correlation_id="c3"),
        "no extension request is pending",
    )


@pytest.mark.parametrize("command", ["resolve", "return_to_dispatch", "cancel"])
def test_leaving_active_work_drops_a_pending_extension_request(command: str) -> None:
    case = at("in_progress")
    case.request_extension(hours=8, actor="dept:roads", reason="asphalt", correlation_id="c1")
    COMMANDS[command][0](case)
    assert case.extension_request is None


@pytest.mark.parametrize(
    ("run", "match"),
    [
        (
            lambda c: c.reject(
                rejection="spam", duplicate_of=None, actor=ACTOR, reason="", correlation_id=CORR
            ),
            "rejection must be one of duplicate, out_of_scope, not_our_city, not 'spam'",
        ),
        (
            lambda c: c.reject(
                rejection="duplicate",
                duplicate_of=None,
                actor=ACTOR,
                reason="",
                correlation_id=CORR,
            ),
            "a duplicate needs the case it duplicates",
        ),
    ],
)
def test_bad_rejections_are_refused(run: Command, match: str) -> None:
    assert_refused(at("submitted"), run, match)


def test_rejection_as_duplicate_records_the_original() -> None:
    case = at("accepted")
    case.reject(
        rejection="duplicate", duplicate_of="abc", actor=ACTOR, reason="", correlation_id=CORR
    )
    assert (case.status, case.rejection, case.duplicate_of) == ("rejected", "duplicate", "abc")
    assert case.status_notes == "duplicate"  # no reason given: the rejection is the note


def test_return_needs_a_reason_and_clears_the_assignment() -> None:
    case = at("in_progress")
    assert_refused(
        case,
        lambda c: c.return_to_dispatch(actor=ACTOR, reason="", correlation_id=CORR),
        "returning a case needs a reason",
    )
    case.return_to_dispatch(actor=ACTOR, reason="not roads: water", correlation_id=CORR)
    assert case.status == "accepted"
    assert (case.department_code, case.due_at, case.due_soon_at) == (None, None, None)
    assert case.returns == 1
    assert case.deadline_no == 1  # the next assignment is deadline 2
    COMMANDS["assign"][0](case)
    assert (case.deadline_no, case.department_code, case.due_at) == (2, "roads-east", D2)


@pytest.mark.parametrize("reply", ["", "   \n"])
def test_resolving_needs_a_reply(reply: str) -> None:
    assert_refused(
        at("assigned"),
        lambda c: c.resolve(reply=reply, actor=ACTOR, reason="", correlation_id=CORR),
        "resolving needs a reply to the citizen",
    )


@pytest.mark.parametrize(
    ("hours", "reason", "match"),
    [
        (0, "x", "positive number of hours"),
        (-3, "x", "positive number of hours"),
        (float("nan"), "x", "positive number of hours"),
        (4, "", "needs a reason"),
    ],
)
def test_bad_extension_requests_are_refused(hours: float, reason: str, match: str) -> None:
    assert_refused(
        at("assigned"),
        lambda c: c.request_extension(hours=hours, actor=ACTOR, reason=reason, correlation_id=CORR),
        match,
    )


@pytest.mark.parametrize("rating", [0, 6, -1])
def test_ratings_outside_one_to_five_are_refused(rating: int) -> None:
    assert_refused(at("resolved"), rate(rating), "a rating is 1 to 5")


def test_a_revisit_without_a_deadline_is_refused_and_changes_nothing() -> None:
    assert_refused(
        at("resolved"), rate(1, "bad", revisit=True, due_at=D2), "a revisit needs a new deadline"
    )


def test_a_bad_rating_reopens_with_a_new_deadline() -> None:
    case = at("resolved")
    rate(2, "still broken", revisit=True, due_at=D2, due_soon_at=D2_SOON, actor="citizen:1")(case)
    assert (case.status, case.rating, case.rating_comment) == ("reopened", 2, "still broken")
    assert (case.revisits, case.deadline_no, case.due_at, case.due_soon_at) == (
        1,
        2,
        D2,
        D2_SOON,
    )


def test_marks_are_recorded_once_per_deadline() -> None:
    case = at("assigned")
    assert case.due_soon_pending(D1_SOON)
    assert not case.due_soon_pending(D1_SOON - timedelta(microseconds=1))
    case.mark_due_soon(deadline_no=1, due_at=D1, actor=SYSTEM_SLA, correlation_id=CORR)
    assert not case.due_soon_pending(D1)
    assert_refused(
        case,
        lambda c: c.mark_due_soon(deadline_no=1, due_at=D1, actor=SYSTEM_SLA, correlation_id=CORR),
        "deadline 1 is not pending a due-soon mark",
    )
    assert_refused(
        case,
        lambda c: c.mark_overdue(deadline_no=2, due_at=D1, actor=SYSTEM_SLA, correlation_id=CORR),
        "deadline 2 is not pending an overdue mark",
    )
    assert not case.overdue
    assert case.overdue_pending(D1)
    assert not case.overdue_pending(D1 - timedelta(microseconds=1))
    case.mark_overdue(deadline_no=1, due_at=D1, actor=SYSTEM_SLA, correlation_id=CORR)
    assert case.overdue
    assert not case.overdue_pending(D1 + timedelta(days=9))
    assert_refused(
        case,
        lambda c: c.mark_overdue(deadline_no=1, due_at=D1, actor=SYSTEM_SLA, correlation_id=CORR),
        "deadline 1 is not pending an overdue mark",
    )


@pytest.mark.parametrize("status", [s for s in STATUSES if s not in ACTIVE])
def test_nothing_is_pending_outside_active_work(status: str) -> None:
    case = at(status)
    far = utc(2030, 1, 1)
    assert not case.due_soon_pending(far)
    assert not case.overdue_pending(far)


def test_personal_data_erasure_is_noted_once() -> None:
    case = at("closed")
    case.note_erasure(actor="dpo", reason="PIPL request", correlation_id=CORR)
    assert case.erased
    assert_refused(
        case,
        lambda c: c.note_erasure(actor="dpo", reason="again", correlation_id=CORR),
        "personal data is already erased",
    )
    event = case.collect_events()[-1]
    assert (event.actor, event.reason, event.correlation_id) == ("dpo", "PIPL request", CORR)  # type: ignore[attr-defined]


def test_the_same_external_case_has_the_same_id() -> None:
    assert case_id("app", "1") == case_id("app", "1")
    assert case_id("app", "1") != case_id("web", "1")
    assert case_id("app", "1") != case_id("app", "2")


# ======================================================================================
# Through the ServiceDesk
# ======================================================================================


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app() -> CityApp:
    return CityApp()


@pytest.fixture
def desk(app: CityApp, clock: FakeClock) -> ServiceDesk:
    return make_desk(app, clock)


def submit(desk: ServiceDesk, cmd: SubmitCase | None = None, **kwargs: Any) -> ServiceCase:
    return desk.submit(cmd or request(**kwargs), actor="citizen:1", correlation_id="corr-in")


def test_submit_inside_a_jurisdiction_accepts_and_dispatches(
    app: CityApp, desk: ServiceDesk
) -> None:
    case = submit(desk)
    assert case.id == case_id("app", "e-1")
    assert names(app, case.id) == ["CaseSubmitted", "CaseAccepted", "CaseAssigned"]
    assert case.status == "assigned"
    assert case.department_code == "roads-west"
    assert (case.grid_code, case.district_code) == ("310101-g22", "310101")
    assert case.dispatch == {
        "by": "policy",
        "department_type": "roads",
        "categories_version": 2,
        "rule": "jurisdiction_polygon",
        "jurisdiction": "roads-west",
        "time_limit_h": 24.0,
        "clock": "working",
        "clock_started_at": "2026-03-02T01:30:00+00:00",
        # First contact within 2 calendar hours; disputable for 4 calendar hours.
        "respond_by": "2026-03-02T03:30:00+00:00",
        "dispute_until": "2026-03-02T05:30:00+00:00",
    }
    # 24 working hours from Monday 09:30: Mon 7.5 h, Tue 8, Wed 8, Thu 0.5 -> Thu 09:30.
    assert case.due_at == utc(2026, 3, 5, 1, 30)
    # 19.2 h: Mon 7.5, Tue 8, Wed 09:00-12:00 and 13:00-13:42.
    assert case.due_soon_at == utc(2026, 3, 4, 5, 42)
    assert case.deadline_no == 1
    assert app.repository.get(case.id).__dict__ == case.__dict__


def test_calendar_hour_category_deadline(desk: ServiceDesk) -> None:
    case = submit(desk, category="manhole_cover_missing")
    assert case.due_at == utc(2026, 3, 2, 3, 30)
    assert case.due_soon_at == utc(2026, 3, 2, 3, 6)  # 80 % of 2 h = 96 min


def test_attributes_are_validated_and_normalised(desk: ServiceDesk) -> None:
    with pytest.raises(InvalidAttributeError, match="attribute water_depth is required"):
        submit(desk, category="flooding")
    with pytest.raises(InvalidAttributeError, match="'waist' is not one of"):
        submit(desk, category="flooding", attributes={"water_depth": "waist"})
    with pytest.raises(InvalidAttributeError, match="has no attribute 'colour'"):
        submit(desk, category="flooding", attributes={"water_depth": "knee", "colour": "x"})
    case = submit(desk, category="flooding", attributes={"water_depth": "knee"})
    assert case.attributes == {"water_depth": "knee"}
    assert case.category == "flooding"


def test_unknown_category_is_refused(app: CityApp, desk: ServiceDesk) -> None:
    with pytest.raises(UnknownCategoryError, match="unknown service_code 'ufo_sighting'"):
        submit(desk, category="ufo_sighting")
    assert not app.exists(case_id("app", "e-1"))


@pytest.mark.parametrize(
    ("lon", "lat", "match"),
    [
        (121.2, 91.0, "out of range"),
        (121.2, -90.5, "out of range"),
        (181.0, 31.2, "out of range"),
        (-180.01, 31.2, "out of range"),
        (float("nan"), 31.2, "finite"),
        (121.2, float("inf"), "finite"),
        (121.2, None, "both lat and long"),
        (None, 31.2, "both lat and long"),
        (None, None, "lat/long or an address"),
    ],
)
def test_bad_locations_are_refused(
    app: CityApp, desk: ServiceDesk, lon: float | None, lat: float | None, match: str
) -> None:
    cmd = SubmitCase(
        channel="app", external_id="e-1", category="road_damage", description="", lon=lon, lat=lat
    )
    with pytest.raises(InvalidLocationError, match=match):
        submit(desk, cmd)
    assert not app.exists(case_id("app", "e-1"))


@pytest.mark.parametrize(
    ("cmd", "match"),
    [
        (request(channel="fax"), "unknown channel 'fax'"),
        (request(external_id=""), r"external id must be 1 to \d+ characters"),
        (request(external_id="x" * 5000), r"external id must be 1 to \d+ characters"),
        (
            SubmitCase("app", "e-1", "road_damage", "x" * 4001, *WEST),
            "description is longer than 4000",
        ),
        (request(where=None, address="x" * 301), "address is longer than 300"),
    ],
)
def test_malformed_submissions_are_refused(
    app: CityApp, desk: ServiceDesk, cmd: SubmitCase, match: str
) -> None:
    with pytest.raises(DomainError, match=match):
        submit(desk, cmd)
    assert not app.exists(case_id(cmd.channel, cmd.external_id))


def test_duplicate_submission_is_refused(app: CityApp, desk: ServiceDesk) -> None:
    first = submit(desk)
    with pytest.raises(DuplicateSubmissionError) as err:
        submit(desk, description="again")
    assert err.value.case_id == first.id
    assert str(first.id) in str(err.value)
    assert len(stored(app, first.id)) == 3
    # Another channel's case with the same external id is another case.
    other = submit(desk, channel="hotline")
    assert other.id != first.id


def test_duplicate_submission_inside_one_processing_event(app: CityApp, desk: ServiceDesk) -> None:
    pe: ProcessingEvent[UUID] = ProcessingEvent()
    case = desk.submit(request(), actor="worker", correlation_id="c", pe=pe)
    assert not app.exists(case.id)  # collected, not saved
    with pytest.raises(DuplicateSubmissionError):
        desk.submit(request(), actor="worker", correlation_id="c", pe=pe)
    app.record(pe)
    assert names(app, case.id) == ["CaseSubmitted", "CaseAccepted", "CaseAssigned"]


def test_outside_the_city_is_rejected_as_not_our_city(app: CityApp, desk: ServiceDesk) -> None:
    case = submit(desk, where=OUTSIDE)
    assert (case.status, case.rejection) == ("rejected", "not_our_city")
    events = stored(app, case.id)
    assert names(app, case.id) == ["CaseSubmitted", "CaseRejected"]
    assert events[1].actor == SYSTEM_INTAKE
    assert events[1].correlation_id == "corr-in"
    assert events[1].reason == "the location is outside the city's districts"
    assert case.due_at is None


def test_possible_duplicates_are_held_for_a_dispatcher(app: CityApp, clock: FakeClock) -> None:
    own = str(case_id("app", "e-1"))
    nearby = FakeNearby(["c-1", own, "c-2"])
    desk = make_desk(app, clock, nearby=nearby)
    case = submit(desk)
    assert nearby.calls == [("road_damage", *WEST, 50.0, 10)]
    assert case.status == "submitted"
    assert case.possible_duplicates == ["c-1", "c-2"]  # never itself
    assert names(app, case.id) == ["CaseSubmitted", "DuplicatesSuggested"]
    event = stored(app, case.id)[1]
    assert event.actor == SYSTEM_INTAKE
    assert event.reason == "2 open road_damage case(s) within 50 m: a dispatcher decides"
    # The dispatcher registers it after all: dispatched by policy.
    clock.advance(hours=1)
    accepted = desk.accept(case.id, actor="user:disp", reason="", correlation_id="c2")
    assert (accepted.status, accepted.department_code) == ("assigned", "roads-west")
    assert accepted.status_notes == "jurisdiction of roads-west"
    assert accepted.due_at == utc(2026, 3, 5, 2, 30)  # Monday 10:30 + 24 working hours
    assert stored(app, case.id)[2].reason == "registered"  # the default reason
    assert stored(app, case.id)[3].actor == "user:disp"


def test_only_itself_nearby_is_no_duplicate(app: CityApp, clock: FakeClock) -> None:
    desk = make_desk(app, clock, nearby=FakeNearby([str(case_id("app", "e-1"))]))
    assert submit(desk).status == "assigned"


def test_no_location_awaits_manual_assignment(app: CityApp, desk: ServiceDesk) -> None:
    case = submit(desk, where=None, address="12 Nanjing Road")
    assert case.status == "accepted"
    assert names(app, case.id) == ["CaseSubmitted", "CaseAccepted", "AssignmentPending"]
    assert case.dispatch == {
        "by": "policy",
        "department_type": "roads",
        "categories_version": 2,
        "rule": "no_location",
    }
    assert (case.due_at, case.deadline_no, case.department_code) == (None, 0, None)


def test_no_jurisdiction_awaits_manual_assignment(
    app: CityApp, desk: ServiceDesk, clock: FakeClock
) -> None:
    case = submit(desk, where=EAST, category="manhole_cover_missing")
    assert case.status == "accepted"
    assert (case.grid_code, case.district_code) == ("310104-g72", "310104")
    assert case.dispatch is not None
    assert case.dispatch["rule"] == "no_jurisdiction"
    assert stored(app, case.id)[-1].reason == "no roads jurisdiction covers this place"
    with pytest.raises(NotFoundError, match="unknown department 'roads-north'"):
        desk.assign(case.id, "roads-north", actor="user:disp", reason="", correlation_id="c")
    clock.advance(minutes=30)
    case = desk.assign(
        case.id, "roads-east", actor="user:disp", reason="east crew", correlation_id="c2"
    )
    assert (case.status, case.department_code, case.deadline_no) == ("assigned", "roads-east", 1)
    assert case.dispatch == {
        "by": "manual",
        "rule": "dispatcher",
        "department_type": "roads",
        "categories_version": 2,
        "time_limit_h": 2.0,
        "clock": "calendar",
        "clock_started_at": "2026-03-02T02:00:00+00:00",
        "respond_by": "2026-03-02T02:30:00+00:00",  # the category's own half hour
        "dispute_until": "2026-03-02T06:00:00+00:00",
    }
    assert (case.due_at, case.due_soon_at) == (utc(2026, 3, 2, 4), utc(2026, 3, 2, 3, 36))
    event = stored(app, case.id)[-1]
    assert (event.actor, event.reason, event.correlation_id) == ("user:disp", "east crew", "c2")
    with pytest.raises(IllegalTransitionError, match="cannot assign a case that is assigned"):
        desk.assign(case.id, "roads-east", actor="user:disp", reason="", correlation_id="c3")


def test_without_auto_accept_the_case_waits(app: CityApp, clock: FakeClock) -> None:
    desk = make_desk(app, clock, auto_accept=False)
    case = submit(desk)
    assert case.status == "submitted"
    assert names(app, case.id) == ["CaseSubmitted"]
    case = desk.accept(case.id, actor="user:disp", reason="ok", correlation_id="c")
    assert case.status == "assigned"


def test_reject_by_a_dispatcher(app: CityApp, clock: FakeClock) -> None:
    desk = make_desk(app, clock, auto_accept=False)
    original = submit(desk, external_id="e-0")
    case = submit(desk)
    with pytest.raises(IllegalTransitionError, match="cannot duplicate itself"):
        desk.reject(case.id, "duplicate", case.id, actor="d", reason="", correlation_id="c")
    with pytest.raises(NotFoundError):
        desk.reject(case.id, "duplicate", uuid4(), actor="d", reason="", correlation_id="c")
    assert names(app, case.id) == ["CaseSubmitted"]
    case = desk.reject(
        case.id, "duplicate", original.id, actor="user:disp", reason="same hole", correlation_id="c"
    )
    assert (case.status, case.duplicate_of, case.status_notes) == (
        "rejected",
        str(original.id),
        "same hole",
    )
    with pytest.raises(IllegalTransitionError, match="cannot reject a case that is rejected"):
        desk.reject(case.id, "out_of_scope", None, actor="d", reason="", correlation_id="c")


def test_unknown_case_is_not_found(desk: ServiceDesk) -> None:
    with pytest.raises(NotFoundError, match="unknown case"):
        desk.start(uuid4(), actor="a", reason="", correlation_id="c")


def test_a_sensor_id_is_not_a_case(app: CityApp, desk: ServiceDesk) -> None:
    app.register_sensors([sensor("wl-9")], actor="t", correlation_id="c")
    sensor_uuid = app.get_sensor("wl-9").id
    with pytest.raises(NotFoundError):
        desk.get(sensor_uuid)


def test_full_life_cycle_records_actor_reason_and_correlation(
    app: CityApp, desk: ServiceDesk, clock: FakeClock
) -> None:
    case = submit(desk, contact=Contact.parse(name="王五", phone="13900001111"))
    cid = case.id
    desk.request_extension(cid, 4, actor="dept:roads", reason="asphalt", correlation_id="k1")
    desk.decide_extension(cid, False, actor="user:disp", reason="no", correlation_id="k2")
    desk.start(cid, actor="dept:roads", reason="crew out", correlation_id="k3")
    desk.return_case(cid, actor="dept:roads", reason="is water", correlation_id="k4")
    desk.assign(cid, "water-west", actor="user:disp", reason="water", correlation_id="k5")
    desk.request_extension(cid, 4, actor="dept:water", reason="pump", correlation_id="k6")
    desk.decide_extension(cid, True, actor="user:disp", reason="fine", correlation_id="k7")
    desk.resolve(cid, "pumped", actor="dept:water", reason="done", correlation_id="k8")
    desk.rate(cid, 1, "still wet", actor="citizen:1", correlation_id="k9")
    clock.advance(days=30)
    desk.check_deadlines([cid], correlation_id="k10")
    desk.resolve(cid, "pumped twice", actor="dept:water", reason="again", correlation_id="k11")
    desk.rate(cid, 5, "thanks", actor="citizen:1", correlation_id="k12")
    citizen = UUID(desk.get(cid).citizen_id or "")
    desk.erase_citizen(citizen, lambda _c: [cid], actor="dpo", correlation_id="k13")

    expected = [
        ("CaseSubmitted", "citizen:1", None, "corr-in"),
        ("CaseAccepted", SYSTEM_INTAKE, "registered", "corr-in"),
        ("CaseAssigned", SYSTEM_INTAKE, "jurisdiction of roads-west", "corr-in"),
        ("ExtensionRequested", "dept:roads", "asphalt", "k1"),
        ("ExtensionRefused", "user:disp", "no", "k2"),
        ("CaseStarted", "dept:roads", "crew out", "k3"),
        ("CaseReturned", "dept:roads", "is water", "k4"),
        ("CaseAssigned", "user:disp", "water", "k5"),
        ("ExtensionRequested", "dept:water", "pump", "k6"),
        ("ExtensionApproved", "user:disp", "fine", "k7"),
        ("CaseResolved", "dept:water", "done", "k8"),
        ("CaseRated", "citizen:1", None, "k9"),
        ("CaseDueSoon", SYSTEM_SLA, None, "k10"),
        ("CaseBecameOverdue", SYSTEM_SLA, None, "k10"),
        ("CaseResolved", "dept:water", "again", "k11"),
        ("CaseRated", "citizen:1", None, "k12"),
        ("PersonalDataErased", "dpo", "citizen's request (PIPL)", "k13"),
    ]
    events = stored(app, cid)
    got = [
        (type(e).__name__, e.actor, getattr(e, "reason", None), e.correlation_id) for e in events
    ]
    assert got == expected
    final = desk.get(cid)
    assert (final.status, final.rating, final.returns, final.revisits) == ("closed", 5, 1, 1)
    # Deadlines: dispatch, re-dispatch, extension, revisit.
    assert (final.extensions, final.deadline_no, final.erased) == (1, 4, True)
    assert final.overdue  # deadline 4 (the revisit) was missed
    assert marks(app, cid) == [("CaseDueSoon", 4), ("CaseBecameOverdue", 4)]


def test_extension_approval_moves_the_deadline_on_the_working_clock(
    app: CityApp, desk: ServiceDesk
) -> None:
    case = submit(desk)  # due Thu 5 March 09:30 local
    with pytest.raises(IllegalTransitionError, match="no extension request is pending"):
        desk.decide_extension(case.id, True, actor="d", reason="", correlation_id="c")
    with pytest.raises(IllegalTransitionError, match="no extension request is pending"):
        desk.decide_extension(case.id, False, actor="d", reason="", correlation_id="c")
    desk.request_extension(case.id, 4, actor="dept", reason="parts", correlation_id="c1")
    case = desk.decide_extension(case.id, True, actor="d", reason="ok", correlation_id="c2")
    # Thu 09:30 + 4 working hours = 2.5 h to noon, 1.5 h after lunch: 14:30 local.
    assert case.due_at == utc(2026, 3, 5, 6, 30)
    # Due soon at 80 % of the added time from the old deadline: 3.2 h -> 13:42 local.
    assert case.due_soon_at == utc(2026, 3, 5, 5, 42)
    assert (case.deadline_no, case.extensions, case.extension_request) == (2, 1, None)
    assert app.repository.get(case.id).__dict__ == case.__dict__


def test_extension_approval_on_the_calendar_clock(desk: ServiceDesk) -> None:
    case = submit(desk, category="manhole_cover_missing")  # due 03:30Z
    desk.request_extension(case.id, 3, actor="dept", reason="parts", correlation_id="c1")
    case = desk.decide_extension(case.id, True, actor="d", reason="ok", correlation_id="c2")
    assert (case.due_at, case.due_soon_at) == (utc(2026, 3, 2, 6, 30), utc(2026, 3, 2, 5, 54))


def test_return_and_reassign_gets_a_new_deadline(desk: ServiceDesk, clock: FakeClock) -> None:
    case = submit(desk)
    with pytest.raises(IllegalTransitionError, match="needs a reason"):
        desk.return_case(case.id, actor="dept", reason="", correlation_id="c")
    case = desk.return_case(case.id, actor="dept", reason="not roads", correlation_id="c")
    assert (case.status, case.due_at, case.returns) == ("accepted", None, 1)
    clock.advance(minutes=30)
    case = desk.assign(case.id, "roads-east", actor="disp", reason="", correlation_id="c")
    assert case.status_notes == "assigned by a dispatcher"
    # Monday 10:00 local + 24 working hours -> Thursday 10:00 local.
    assert (case.due_at, case.deadline_no) == (utc(2026, 3, 5, 2), 2)


@pytest.mark.parametrize(("rating", "status"), [(1, "reopened"), (2, "reopened"), (3, "closed")])
def test_rating_two_or_less_reopens_with_a_revisit_deadline(
    desk: ServiceDesk, clock: FakeClock, rating: int, status: str
) -> None:
    case = submit(desk)
    with pytest.raises(IllegalTransitionError, match="cannot rate a case that is assigned"):
        desk.rate(case.id, 5, "", actor="citizen:1", correlation_id="c")
    desk.resolve(case.id, "filled", actor="dept", reason="", correlation_id="c")
    clock.now = utc(2026, 3, 2, 6)  # Monday 14:00 local
    case = desk.rate(case.id, rating, "meh", actor="citizen:1", correlation_id="c")
    assert case.status == status
    if status == "closed":
        assert (case.deadline_no, case.revisits, case.status_notes) == (1, 0, "filled")
        return
    # 16 working hours: Mon 4 h, Tue 8, Wed 09:00-12:00 and 13:00-14:00.
    assert case.due_at == utc(2026, 3, 4, 6)
    # 12.8 h: Mon 4, Tue 8, Wed 09:00-09:48.
    assert case.due_soon_at == utc(2026, 3, 4, 1, 48)
    assert (case.deadline_no, case.revisits) == (2, 1)
    case = desk.start(case.id, actor="dept", reason="", correlation_id="c")
    assert case.status == "in_progress"


@pytest.mark.parametrize("rating", [0, 6])
def test_rating_out_of_range_through_the_desk(app: CityApp, desk: ServiceDesk, rating: int) -> None:
    case = submit(desk)
    desk.resolve(case.id, "filled", actor="dept", reason="", correlation_id="c")
    with pytest.raises(IllegalTransitionError, match="a rating is 1 to 5"):
        desk.rate(case.id, rating, "", actor="citizen:1", correlation_id="c")
    assert desk.get(case.id).status == "resolved"
    assert len(stored(app, case.id)) == 4


def test_cancel(desk: ServiceDesk) -> None:
    case = submit(desk)
    case = desk.cancel(case.id, actor="citizen:1", reason="", correlation_id="c")
    assert (case.status, case.status_notes) == ("cancelled", "cancelled by the citizen")
    with pytest.raises(IllegalTransitionError, match="cannot cancel a case that is cancelled"):
        desk.cancel(case.id, actor="citizen:1", reason="", correlation_id="c")
    with pytest.raises(IllegalTransitionError, match="cannot start a case that is cancelled"):
        desk.start(case.id, actor="dept", reason="", correlation_id="c")


def test_a_resolved_case_cannot_be_cancelled(desk: ServiceDesk) -> None:
    case = submit(desk)
    desk.resolve(case.id, "done", actor="dept", reason="", correlation_id="c")
    with pytest.raises(IllegalTransitionError, match="cannot cancel a case that is resolved"):
        desk.cancel(case.id, actor="citizen:1", reason="", correlation_id="c")


# -- the SLA clock ----------------------------------------------------------------------


def marks(app: CityApp, cid: UUID) -> list[tuple[str, int]]:
    return [
        (type(e).__name__, e.deadline_no)
        for e in stored(app, cid)
        if type(e).__name__ in ("CaseDueSoon", "CaseBecameOverdue")
    ]


def checked(due_soon: int = 0, overdue: int = 0) -> dict[str, int]:
    """What ``check_deadlines`` returns having marked this many cases, none raced or missing."""
    return {"due_soon": due_soon, "overdue": overdue, "raced": 0, "missing": 0}


def test_check_deadlines_marks_each_once(app: CityApp, desk: ServiceDesk, clock: FakeClock) -> None:
    cid = submit(desk, category="manhole_cover_missing").id  # soon 03:06Z, due 03:30Z
    clock.now = utc(2026, 3, 2, 3, 5, 59)
    assert desk.check_deadlines([cid], "s1") == checked()
    clock.now = utc(2026, 3, 2, 3, 6)
    assert desk.check_deadlines([cid, cid], "s2") == checked(due_soon=1)
    assert desk.check_deadlines([cid], "s3") == checked()
    clock.now = utc(2026, 3, 2, 3, 29, 59)
    assert desk.check_deadlines([cid], "s4")["overdue"] == 0
    assert not desk.get(cid).overdue
    clock.now = utc(2026, 3, 2, 3, 30)
    assert desk.check_deadlines([cid], "s5") == checked(overdue=1)
    for _ in range(3):
        clock.advance(hours=5)
        assert desk.check_deadlines([cid, cid], "s6") == checked()
    # Another desk (another worker, after a restart) reads the marks from the store.
    other = make_desk(app, FakeClock(utc(2026, 4, 1)))
    assert other.check_deadlines([cid], "s7") == checked()
    assert marks(app, cid) == [("CaseDueSoon", 1), ("CaseBecameOverdue", 1)]
    events = [e for e in stored(app, cid) if type(e).__name__.startswith("Case")][-2:]
    assert [(e.actor, e.correlation_id, e.due_at) for e in events] == [
        (SYSTEM_SLA, "s2", utc(2026, 3, 2, 3, 30)),
        (SYSTEM_SLA, "s5", utc(2026, 3, 2, 3, 30)),
    ]
    assert desk.get(cid).overdue


def test_both_marks_at_once_when_the_check_comes_late(
    app: CityApp, desk: ServiceDesk, clock: FakeClock
) -> None:
    a = submit(desk, category="manhole_cover_missing").id
    b = submit(desk, external_id="e-2").id  # working clock: due Thursday
    clock.now = utc(2026, 3, 3)
    assert desk.check_deadlines([a, b], "s") == checked(due_soon=1, overdue=1)
    assert marks(app, a) == [("CaseDueSoon", 1), ("CaseBecameOverdue", 1)]
    assert marks(app, b) == []


def test_a_new_deadline_gets_its_own_marks(
    app: CityApp, desk: ServiceDesk, clock: FakeClock
) -> None:
    cid = submit(desk, category="manhole_cover_missing").id
    clock.now = utc(2026, 3, 2, 4)
    desk.check_deadlines([cid], "s1")
    desk.request_extension(cid, 3, actor="dept", reason="parts", correlation_id="c")
    case = desk.decide_extension(cid, True, actor="disp", reason="ok", correlation_id="c")
    assert not case.overdue
    assert (case.due_soon_at, case.due_at) == (utc(2026, 3, 2, 5, 54), utc(2026, 3, 2, 6, 30))
    clock.now = utc(2026, 3, 2, 5, 53)
    assert desk.check_deadlines([cid], "s2") == checked()
    clock.now = utc(2026, 3, 2, 7)
    assert desk.check_deadlines([cid], "s3") == checked(due_soon=1, overdue=1)
    desk.resolve(cid, "covered", actor="dept", reason="", correlation_id="c")
    clock.now = utc(2026, 3, 2, 8)  # Monday 16:00 local
    case = desk.rate(cid, 1, "it rattles", actor="citizen:1", correlation_id="c")
    assert case.deadline_no == 3
    # Revisit: 16 working hours from Monday 16:00 -> Wednesday 16:00 local.
    assert case.due_at == utc(2026, 3, 4, 8)
    clock.now = utc(2026, 3, 4, 8)
    assert desk.check_deadlines([cid], "s4") == checked(due_soon=1, overdue=1)
    assert desk.check_deadlines([cid], "s5") == checked()
    assert marks(app, cid) == [
        ("CaseDueSoon", 1),
        ("CaseBecameOverdue", 1),
        ("CaseDueSoon", 2),
        ("CaseBecameOverdue", 2),
        ("CaseDueSoon", 3),
        ("CaseBecameOverdue", 3),
    ]


def test_a_resolved_case_gets_no_overdue_mark(
    app: CityApp, desk: ServiceDesk, clock: FakeClock
) -> None:
    cid = submit(desk, category="manhole_cover_missing").id
    clock.now = utc(2026, 3, 2, 3, 10)
    assert desk.check_deadlines([cid], "s1")["due_soon"] == 1
    desk.resolve(cid, "covered", actor="dept", reason="", correlation_id="c")
    clock.now = utc(2026, 3, 9)
    assert desk.check_deadlines([cid], "s2") == checked()
    assert marks(app, cid) == [("CaseDueSoon", 1)]
    case = desk.get(cid)
    assert not case.overdue
    # Nor can anyone record one by hand.
    with pytest.raises(IllegalTransitionError, match="cannot mark as overdue a case that is"):
        case.mark_overdue(
            deadline_no=1, due_at=utc(2026, 3, 2, 3, 30), actor="x", correlation_id="c"
        )


@pytest.mark.parametrize("leave", ["cancel", "return"])
def test_cancelled_or_returned_cases_get_no_marks(
    app: CityApp, desk: ServiceDesk, clock: FakeClock, leave: str
) -> None:
    cid = submit(desk, category="manhole_cover_missing").id
    if leave == "cancel":
        desk.cancel(cid, actor="citizen:1", reason="", correlation_id="c")
    else:
        desk.return_case(cid, actor="dept", reason="not ours", correlation_id="c")
    clock.now = utc(2026, 3, 9)
    assert desk.check_deadlines([cid], "s") == checked()
    assert marks(app, cid) == []


def test_a_concurrent_mark_is_counted_as_raced_not_written_twice(
    app: CityApp, desk: ServiceDesk, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = submit(desk, category="manhole_cover_missing").id
    stale = desk.get(cid)
    clock.now = utc(2026, 3, 3)
    make_desk(app, clock).check_deadlines([cid], "other-worker")
    monkeypatch.setattr(desk, "get", lambda _id: copy.deepcopy(stale))
    counts = desk.check_deadlines([cid], "late-worker")
    assert counts["raced"] == 1
    assert counts["due_soon"] == counts["overdue"] == 0  # nothing of it was written
    assert marks(app, cid) == [("CaseDueSoon", 1), ("CaseBecameOverdue", 1)]
    assert {e.correlation_id for e in stored(app, cid)[-2:]} == {"other-worker"}


# -- personal data --------------------------------------------------------------------


def test_contact_is_sealed_and_erasable(app: CityApp, desk: ServiceDesk) -> None:
    contact = Contact.parse(name="李四", phone="138 1234 5678")
    a = submit(desk, contact=contact)
    b = submit(desk, external_id="e-2", contact=Contact.parse(phone="13812345678"))
    c = submit(desk, external_id="e-3", contact=Contact.parse(phone="13999999999"))
    assert a.citizen_id is not None
    assert a.citizen_id == b.citizen_id != c.citizen_id  # the same phone, the same citizen
    assert desk.contact_of(a) == contact
    assert desk.contact_of(desk.get(b.id)) == Contact(phone="13812345678")
    anonymous = submit(desk, external_id="e-4")
    assert (anonymous.citizen_id, anonymous.contact_token) == (None, None)
    assert desk.contact_of(anonymous) is None

    citizen = UUID(a.citizen_id)
    ids = [a.id, b.id, c.id, anonymous.id]
    assert desk.erase_citizen(citizen, lambda _c: ids, actor="dpo", correlation_id="e") == 2
    assert desk.contact_of(desk.get(a.id)) is None
    assert desk.contact_of(desk.get(b.id)) is None
    assert desk.contact_of(desk.get(c.id)) == Contact(phone="13999999999")
    assert [desk.get(i).erased for i in ids] == [True, True, False, False]
    assert desk.erase_citizen(citizen, lambda _c: ids, actor="dpo", correlation_id="e") == 0
    assert names(app, a.id).count("PersonalDataErased") == 1
    # The events stay replayable after erasure.
    assert app.repository.get(a.id).contact_token == a.contact_token


def test_logged_in_citizen_keeps_their_id(desk: ServiceDesk) -> None:
    citizen = uuid4()
    case = submit(desk, citizen_id=citizen, contact=Contact.parse(name="赵六"))
    assert case.citizen_id == str(citizen)
    assert desk.contact_of(case) == Contact(name="赵六")
    no_contact = submit(desk, external_id="e-2", citizen_id=citizen)
    assert (no_contact.citizen_id, no_contact.contact_token) == (str(citizen), None)


def test_an_erased_citizen_cannot_submit_contact_data_again(
    app: CityApp, desk: ServiceDesk
) -> None:
    citizen = uuid4()
    submit(desk, citizen_id=citizen, contact=Contact.parse(name="赵六"))
    desk.erase_citizen(citizen, lambda _c: [], actor="dpo", correlation_id="e")
    with pytest.raises(InvalidContactError, match="erased"):
        submit(desk, external_id="e-2", citizen_id=citizen, contact=Contact.parse(name="赵六"))
    assert not app.exists(case_id("app", "e-2"))


def test_an_unknown_case_id_is_skipped_and_the_batch_goes_on(
    app: CityApp, desk: ServiceDesk, clock: FakeClock
) -> None:
    cid = submit(desk, category="manhole_cover_missing").id
    clock.now = utc(2026, 3, 3)
    counts = desk.check_deadlines([uuid.uuid4(), cid], "s")
    assert counts == {"due_soon": 1, "overdue": 1, "raced": 0, "missing": 1}


def test_a_dispatcher_accepts_a_held_case_into_a_department_of_their_choice(app: CityApp) -> None:
    desk = make_desk(app, nearby=FakeNearby([str(uuid.uuid4())]))
    held = submit(desk)
    assert held.status == "submitted"
    case = desk.accept(
        held.id, "dispatcher:d", "not a duplicate", "c", department_code="roads-east"
    )
    assert (case.status, case.department_code) == ("assigned", "roads-east")
    assert case.dispatch is not None
    assert (case.dispatch["by"], case.dispatch["rule"]) == ("manual", "dispatcher")
    with pytest.raises(NotFoundError):
        desk.accept(held.id, "dispatcher:d", "", "c", department_code="nowhere")


@pytest.mark.parametrize(
    ("received", "expected_start"),
    [
        (utc(2026, 3, 2, 1, 0), utc(2026, 3, 2, 1, 0)),  # the hotline took the call earlier
        (utc(2026, 3, 3), utc(2026, 3, 2, 1, 30)),  # in the future: now
        (utc(2026, 1, 1), utc(2026, 3, 2, 1, 30)),  # months ago: now
        (None, utc(2026, 3, 2, 1, 30)),
    ],
)
def test_the_clock_starts_when_the_source_received_the_case(
    desk: ServiceDesk, received: datetime | None, expected_start: datetime
) -> None:
    case = submit(
        desk,
        cmd=dataclasses.replace(request(category="manhole_cover_missing"), received_at=received),
    )
    assert case.dispatch is not None
    assert case.dispatch["clock_started_at"] == expected_start.isoformat()
    assert case.due_at == expected_start + timedelta(hours=2)
