"""Cases the desk keeps between commands (``ServiceDesk(recent=N)``): a command on a kept
case runs without loading it, and when someone else changed the case meanwhile, the
stored case decides. Two desks on one in-memory store stand for two API processes."""

from __future__ import annotations

from collections import Counter
from typing import Any
from uuid import UUID

import pytest

from core.app import CityApp
from core.case import ServiceCase
from core.case.commands import Assign, ContactCitizen, Resolve, ReturnCase, Start
from core.case.desk import copy_of
from core.commands import CommandContext
from core.errors import DomainError, IllegalTransitionError
from tests.helpers.desk import make_desk, request

CTX = CommandContext("department:roads-west", "corr-1")


class RefusedError(DomainError):
    """The caller's authorization said no."""


def event_names(app: CityApp, case_id: UUID) -> Counter[str]:
    return Counter(type(e).__name__ for e in app.events.get(case_id))


def counting_loads(app: CityApp) -> list[UUID]:
    """Every case id the app's repository loads from now on."""
    loads: list[UUID] = []
    get = app.repository.get

    def counted(aggregate_id: UUID, **kwargs: Any) -> Any:
        loads.append(aggregate_id)
        return get(aggregate_id, **kwargs)

    app.repository.get = counted  # type: ignore[method-assign]
    return loads


def lead_is(department: str) -> Any:
    def check(case: ServiceCase) -> None:
        if case.department_code != department:
            raise RefusedError(f"{department} does not lead this case")

    return check


def test_the_next_command_runs_on_the_kept_case_without_loading_it() -> None:
    app = CityApp()
    desk = make_desk(app, recent=10)
    case = desk.submit(request(), "citizen:1", "c1")
    loads = counting_loads(app)
    desk.execute(case.id, Start("on our way"), CTX)
    done = desk.execute(case.id, Resolve("filled"), CTX)
    assert loads == []
    stored = make_desk(app).get(case.id)
    assert (stored.status, stored.version) == ("resolved", done.version)
    assert event_names(app, case.id)["CaseStarted"] == 1


def test_without_keeping_every_command_loads_the_case() -> None:
    app = CityApp()
    desk = make_desk(app)
    case = desk.submit(request(), "citizen:1", "c1")
    loads = counting_loads(app)
    desk.execute(case.id, Start(), CTX)
    assert loads == [case.id]


def test_changed_elsewhere_the_command_runs_again_on_the_stored_case() -> None:
    app = CityApp()
    here, there = make_desk(app, recent=10), make_desk(app, recent=10)
    case = here.submit(request(), "citizen:1", "c1")
    there.execute(case.id, ContactCitizen("called back"), CTX)
    # The kept case is a version behind: its save finds the version taken.
    started = here.execute(case.id, Start(), CTX)
    stored = make_desk(app).get(case.id)
    assert started.version == stored.version
    names = event_names(app, case.id)
    assert names["CaseStarted"] == 1
    assert names["CitizenContacted"] == 1


def test_a_command_the_stored_case_refuses_is_refused() -> None:
    app = CityApp()
    here, there = make_desk(app, recent=10), make_desk(app, recent=10)
    case = here.submit(request(), "citizen:1", "c1")
    there.execute(case.id, Resolve("filled"), CTX)
    # The kept case (assigned) would start; the stored one is resolved.
    with pytest.raises(IllegalTransitionError):
        here.execute(case.id, Start(), CTX)
    assert "CaseStarted" not in event_names(app, case.id)
    # The refusal dropped the kept case: the next command loads the stored one.
    loads = counting_loads(app)
    with pytest.raises(IllegalTransitionError):
        here.execute(case.id, Start(), CTX)
    assert loads == [case.id]


def test_the_check_is_decided_on_the_stored_case() -> None:
    app = CityApp()
    here, there = make_desk(app, recent=10), make_desk(app, recent=10)
    case = here.submit(request(), "citizen:1", "c1")
    assert case.department_code == "roads-west"
    there.execute(case.id, ReturnCase("not ours"), CTX)
    there.execute(case.id, Assign("roads-east", "east side"), CTX)
    # The kept case says roads-west leads: the stored one says roads-east.
    with pytest.raises(RefusedError):
        here.execute(case.id, Start(), CTX, lead_is("roads-west"))
    assert here.execute(case.id, Start(), CTX, lead_is("roads-east")).status == "in_progress"
    assert event_names(app, case.id)["CaseStarted"] == 1


def test_a_check_refusing_the_kept_case_is_asked_again_on_the_stored_one() -> None:
    app = CityApp()
    here, there = make_desk(app, recent=10), make_desk(app, recent=10)
    case = here.submit(request(), "citizen:1", "c1")
    there.execute(case.id, ReturnCase("not ours"), CTX)
    there.execute(case.id, Assign("roads-east", "east side"), CTX)
    here.get(case.id)  # a read does not refresh what is kept
    started = here.execute(case.id, Start(), CTX, lead_is("roads-east"))
    assert started.department_code == "roads-east"


def test_a_save_that_fails_otherwise_is_not_run_again() -> None:
    app = CityApp()
    desk = make_desk(app, recent=10)
    case = desk.submit(request(), "citizen:1", "c1")
    saves = 0
    save = app.save

    def broken(*aggregates: Any, **kwargs: Any) -> Any:
        nonlocal saves
        saves += 1
        raise ConnectionError("the database went away mid-commit")

    app.save = broken  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        desk.execute(case.id, ContactCitizen("called back"), CTX)
    assert saves == 1
    app.save = save  # type: ignore[method-assign]
    # Nothing was recorded, and nothing wrong is kept: the next command loads the case.
    loads = counting_loads(app)
    desk.execute(case.id, ContactCitizen("called back"), CTX)
    assert loads == [case.id]
    assert event_names(app, case.id)["CitizenContacted"] == 1


def test_the_caller_gets_its_own_copy() -> None:
    app = CityApp()
    desk = make_desk(app, recent=10)
    case = desk.submit(request(), "citizen:1", "c1")
    case.department_code = "scribbled on by the caller"
    started = desk.execute(case.id, Start(), CTX, lead_is("roads-west"))
    assert started.department_code == "roads-west"
    assert started is not desk.execute(case.id, ContactCitizen("on site"), CTX)


def test_the_desk_keeps_at_most_recent_cases() -> None:
    app = CityApp()
    desk = make_desk(app, recent=2)
    first, *_ = [desk.submit(request(f"e-{n}"), "citizen:1", f"c{n}") for n in range(3)]
    loads = counting_loads(app)
    desk.execute(first.id, Start(), CTX)
    assert loads == [first.id]


def test_the_check_runs_on_the_kept_case_too() -> None:
    app = CityApp()
    desk = make_desk(app, recent=10)
    case = desk.submit(request(), "citizen:1", "c1")
    with pytest.raises(RefusedError):
        desk.execute(case.id, Start(), CTX, lead_is("roads-east"))
    assert "CaseStarted" not in event_names(app, case.id)


def test_a_copy_has_the_same_state_and_changes_apart() -> None:
    desk = make_desk(CityApp())
    case = desk.submit(request(attributes={"size": "large"}), "citizen:1", "c1")
    twin = copy_of(case)
    assert type(twin) is ServiceCase
    assert vars(twin) == vars(case)
    twin.attributes["size"] = "small"
    twin.dispatch["rule"] = "changed"
    twin.possible_duplicates.append("another case")
    assert case.attributes == {"size": "large"}
    assert "changed" not in case.dispatch.values()
    assert case.possible_duplicates == []


def test_a_copy_shares_nothing_that_changes_at_any_depth() -> None:
    desk = make_desk(CityApp())
    case = desk.submit(request(), "citizen:1", "c1")
    case.attributes = {"photos": [{"url": "a"}]}
    case.co_handlers["water"] = {"part": "the pipe", "answers": []}
    twin = copy_of(case)
    assert vars(twin) == vars(case)
    twin.attributes["photos"][0]["url"] = "b"
    twin.co_handlers["water"]["answers"].append("done")
    assert case.attributes == {"photos": [{"url": "a"}]}
    assert case.co_handlers["water"]["answers"] == []
    # The twin goes on alone: its new events are its own.
    twin.start(actor="department:roads-west", reason="on our way", correlation_id="c2")
    assert (case.status, twin.status) == ("assigned", "in_progress")
    assert case.version == twin.version - 1
    assert not case.collect_events()
