"""simulations/staff.py: the staff model (seeded, its mix, its delays), the demo's
compressed time limits, and the driver against a fake API (errors included)."""

from __future__ import annotations

import doctest
import json
import logging
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

import simulations.staff
from core.brain.correlation import load_policy
from core.case.categories import load_categories
from core.paging.policy import load_paging_policy
from infra.settings import Settings
from simulations.staff import (
    DISPATCHER,
    INSPECTOR,
    CaseView,
    Directory,
    IncidentView,
    StaffModel,
    StaffParams,
    StaffSimulator,
    demo_time_files,
    department_staff,
)

T0 = 1_763_700_000.0
N = 4_000
DIRECTORY = Directory(
    {"roads": ["310101-roads", "310104-roads"], "water": ["310101-water"]},
    {"road_damage": "roads", "flooding": "water"},
)


def ids(n: int, salt: str = "") -> list[str]:
    return [str(uuid.uuid5(uuid.NAMESPACE_URL, f"staff-test{salt}-{i}")) for i in range(n)]


def case(case_id: str, status: str, window_s: float = 600.0, **kw: Any) -> CaseView:
    fields: dict[str, Any] = {
        "category": "road_damage",
        "district_code": "310101",
        "department_code": "310101-roads",
        "due_at": T0 + window_s,
        **kw,
    }
    return CaseView(case_id, status, **fields)


def incident(incident_id: str, stage: str, window_s: float = 600.0, **kw: Any) -> IncidentView:
    fields: dict[str, Any] = {
        "category": "flooding",
        "district_code": "310101",
        "department_code": "310101-water",
        "due_at": T0 + window_s,
        **kw,
    }
    return IncidentView(incident_id, stage, **fields)


def model(seed: int = 7, **params: Any) -> StaffModel:
    return StaffModel(seed, StaffParams(**params), DIRECTORY, {"road_damage": 24.0})


def test_doctests() -> None:
    assert doctest.testmod(simulations.staff).failed == 0


# -- the model ---------------------------------------------------------------------------


def test_same_seed_same_decisions_other_seed_others() -> None:
    views = [case(i, s) for i in ids(200) for s in ("submitted", "assigned", "in_progress")]
    views += [case(i, "resolved") for i in ids(200, "r")]
    a, b, c = model(7), model(7), model(8)
    plans_a = [a.case_plan(v, T0) for v in views]
    assert plans_a == [b.case_plan(v, T0) for v in views]
    assert plans_a != [c.case_plan(v, T0) for v in views]
    # One item's decisions do not depend on which others were asked first.
    assert [a.case_plan(v, T0) for v in reversed(views)] == plans_a[::-1]


def test_a_new_stage_draws_anew_the_same_stage_the_same() -> None:
    m = model()
    first = case(ids(1)[0], "in_progress")
    again = m.case_plan(first, T0)
    assert m.case_plan(first, T0) == again
    extended = replace(first, due_at=T0 + 1_200.0)  # an approved extension: a new deadline
    assert m.case_plan(extended, T0) != again


def share(flags: list[bool]) -> float:
    return sum(flags) / len(flags)


def test_the_mix_of_outcomes() -> None:
    m = model()
    p = m.params
    handled = [m.case_plan(case(i, "in_progress"), T0) for i in ids(N)]
    resolved_at = [plan[-1].at for plan in handled]
    assert all(plan[-1].action == "resolve" for plan in handled)
    late = share([at > T0 + 600.0 for at in resolved_at])
    assert late == pytest.approx(p.late_share, abs=0.02)
    asked = share([plan[0].action == "extension" for plan in handled])
    assert asked == pytest.approx(p.extension_share, abs=0.015)

    assigned = [
        [s.action for s in m.case_plan(case(i, "assigned", dispute_until=T0 + 300), T0)]
        for i in ids(N)
    ]
    returned = share([a == ["return"] for a in assigned])
    assert returned == pytest.approx(p.return_share, abs=0.015)
    disputed = [a for a in assigned if "dispute" in a]
    assert len(disputed) / N == pytest.approx(p.dispute_share, abs=0.015)
    upheld = share([a[1] == "dispute/uphold" for a in disputed])
    assert upheld == pytest.approx(p.dispute_upheld_share, abs=0.15)
    helped = share(["co-handlers" in a for a in assigned])
    assert helped == pytest.approx(p.co_handler_added_share * (1 - p.return_share), abs=0.015)
    assert all(a[-1] == "start" for a in assigned if a != ["return"])

    held = [
        m.case_plan(case(i, "submitted", possible_duplicates=(ids(1, "d")[0],)), T0)[0]
        for i in ids(N)
    ]
    rejected = share([s.action == "reject" for s in held])
    assert rejected == pytest.approx(p.duplicate_rejected_share, abs=0.03)
    by_hand = [s for s in held if s.action == "accept" and "department_code" in s.body]
    assert share([True] * len(by_hand) + [False] * (N - len(by_hand))) == pytest.approx(
        (1 - p.duplicate_rejected_share) * p.by_hand_share, abs=0.02
    )
    assert {s.body["department_code"] for s in by_hand} == {"310101-roads"}  # its district


def test_ratings_mostly_good_bad_ones_more_often_after_late_work() -> None:
    m = model()
    p = m.params
    plain = Counter(m.rating(case(i, "resolved")) for i in ids(N))
    late = Counter(m.rating(case(i, "resolved", resolved_late=True)) for i in ids(N))
    revisited = Counter(m.rating(case(i, "resolved", revisits=1)) for i in ids(N))
    assert set(plain) <= {1, 2, 3, 4, 5}
    assert (plain[4] + plain[5]) / N > 0.8
    assert (plain[1] + plain[2]) / N == pytest.approx(p.bad_rating_share, abs=0.02)
    assert (late[1] + late[2]) / N == pytest.approx(p.bad_rating_share_late, abs=0.03)
    assert (revisited[1] + revisited[2]) / N == pytest.approx(
        p.bad_rating_share_revisited, abs=0.015
    )
    step = m.case_plan(case(ids(1)[0], "resolved"), T0)[0]
    assert (step.action, step.actor) == ("rate", DISPATCHER)  # the revisit call (回访)


def test_incidents_through_the_workflow() -> None:
    m = model()
    p = m.params
    [i] = ids(1)
    assert m.incident_plan(incident(i, "reported"), T0)[0].action == "acknowledge"
    dispatch = m.incident_plan(incident(i, "reported", acknowledged=True), T0)[0]
    assert (dispatch.action, dispatch.actor) == ("dispatch", DISPATCHER)
    cleared = incident(i, "reported", acknowledged=True, alarm_status="cleared")
    assert m.incident_plan(cleared, T0) == []  # it closes by itself
    accept = m.incident_plan(incident(i, "dispatched"), T0)[0]
    assert accept.actor == department_staff("310101-water")
    verified = [m.incident_plan(incident(j, "resolved"), T0)[0] for j in ids(N)]
    assert {s.actor for s in verified} == {INSPECTOR}
    failed = share([not s.body["passed"] for s in verified])
    assert failed == pytest.approx(p.rework_share, abs=0.02)
    assert all(s.body["note"] for s in verified)
    resolved = [m.incident_plan(incident(j, "accepted"), T0)[0].at for j in ids(N)]
    neglected = share([at > T0 + 600.0 * p.neglect_fraction[0] - 1 for at in resolved])
    assert neglected == pytest.approx(p.neglect_share, abs=0.015)
    # Without a department for the place, a dispatcher picks one of the category's type.
    nowhere = incident(i, "reported", acknowledged=True, department_code=None)
    assert m.incident_plan(nowhere, T0)[0].body["department_code"] == "310101-water"
    unknown = replace(nowhere, category="something_else")
    assert m.incident_plan(unknown, T0) == []


def test_delays_within_bounds() -> None:
    p = StaffParams(min_delay_s=3.0, max_delay_s=200.0)
    m = model(min_delay_s=3.0, max_delay_s=200.0)
    for i in ids(500):
        for window in (0.0, 60.0, 600.0, 86_400.0):
            for s in ("submitted", "assigned", "in_progress", "resolved"):
                for step in m.case_plan(case(i, s, window), T0):
                    assert p.min_delay_s <= step.at - T0 <= p.max_delay_s, (s, window, step)
            for stage in ("reported", "dispatched", "accepted", "resolved"):
                for step in m.incident_plan(incident(i, stage, window), T0):
                    assert p.min_delay_s <= step.at - T0 <= p.max_delay_s, (stage, window)
    pickups = [m.case_plan(case(i, "submitted"), T0)[0].at - T0 for i in ids(500)]
    assert min(pickups) >= p.pickup_s[0]
    assert max(pickups) <= p.pickup_s[1]
    starts = [m.case_plan(case(i, "assigned", 100.0), T0)[-1] for i in ids(500)]
    assert all(3.0 <= s.at - T0 <= 100 * 0.2 for s in starts if s.action == "start")


def test_co_handlers_answer_before_the_lead_resolves() -> None:
    m = model()
    p = m.params
    units = ("310101-water", "310101-traffic")
    plans = [m.case_plan(case(i, "in_progress", co_handlers=units), T0) for i in ids(N)]
    silent = 0
    for plan in plans:
        resolve = plan[-1]
        assert resolve.action == "resolve"
        answers = [s for s in plan if s.action == "co-handling/answer"]
        for s in answers:
            assert s.actor == department_staff(s.body["department_code"])
            assert s.at <= resolve.at
        assert len({s.done_key for s in answers}) == len(answers)
        waived = [s for s in plan if s.action == "co-handling/waive"]
        assert len(waived) == (len(answers) < len(units))
        silent += len(units) - len(answers)
    assert silent / (2 * N) == pytest.approx(p.silent_co_handler_share, abs=0.02)


def test_the_first_contact_with_the_citizen() -> None:
    m = model()
    p = m.params
    plans = [m.case_plan(case(i, "assigned", respond_by=T0 + 60), T0) for i in ids(N)]
    contacts = [plan[0] for plan in plans]
    assert {s.action for s in contacts} == {"contact"}
    assert {s.actor for s in contacts} == {department_staff("310101-roads")}
    late = share([s.at > T0 + 60 for s in contacts])
    assert late == pytest.approx(p.late_contact_share, abs=0.02)
    again = m.case_plan(case(ids(1)[0], "assigned", respond_by=T0 + 60, contacts=1), T0)
    assert "contact" not in [s.action for s in again]


def test_params_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="shares"):
        StaffParams(late_share=1.5)
    with pytest.raises(ValueError, match="range"):
        StaffParams(pickup_s=(10.0, 5.0))
    with pytest.raises(ValueError, match="min_delay_s"):
        StaffParams(min_delay_s=10.0, max_delay_s=5.0)


# -- the demo's time limits ----------------------------------------------------------------


def test_demo_time_files_compress_every_limit(tmp_path: Path) -> None:
    settings = Settings()
    assert demo_time_files(settings, tmp_path, 1) == {}
    env = demo_time_files(settings, tmp_path, 120)
    real, fast = load_categories(), load_categories(Path(env["CITYOPS_CATEGORIES_FILE"]))
    assert fast.version == 1_000 + real.version
    for category in real:
        assert fast.get(category.code).time_limit_h == pytest.approx(
            category.time_limit_h / 120, abs=1e-6
        )
        assert fast.get(category.code).clock == "calendar"
    assert fast.revisit.time_limit_h == pytest.approx(real.revisit.time_limit_h / 120, abs=1e-6)
    policy = load_policy(Path(env["CITYOPS_CORRELATION_FILE"]))
    assert policy.version == load_policy().version
    assert policy.incident_time_limits_h["critical"] == pytest.approx(
        load_policy().incident_time_limits_h["critical"] / 120, abs=1e-6
    )
    paging, real_paging = (
        load_paging_policy(Path(env["CITYOPS_PAGING_POLICY_FILE"])),
        (load_paging_policy()),
    )
    for name, trigger in real_paging.triggers.items():
        fast_levels = paging.triggers[name].levels
        assert [s.after_minutes for s in fast_levels] == pytest.approx(
            [s.after_minutes / 120 for s in trigger.levels], abs=1e-6
        )
    with pytest.raises(ValueError, match="at least 1"):
        demo_time_files(settings, tmp_path, 0.5)


# -- the driver against a fake API ---------------------------------------------------------


class FakeApi:
    """Cases and incidents in memory, commands applied as the platform would (only the
    few this test needs), with scripted failures."""

    def __init__(self) -> None:
        self.cases: dict[str, dict[str, Any]] = {}
        self.incidents: dict[str, dict[str, Any]] = {}
        self.posts: list[tuple[str, str, str]] = []  # (path, token subject, body)
        self.fail_next: list[int | str] = []  # statuses, or "drop" (a transport error)
        self.reads_fail = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET":
            if self.reads_fail:
                self.reads_fail -= 1
                return httpx.Response(503, json={"detail": "restarting"})
            if path == "/api/v1/departments":
                return httpx.Response(
                    200, json={"departments": [{"code": "310101-roads", "type": "roads"}]}
                )
            if path == "/api/v1/incidents":
                features = [{"properties": p} for p in self.incidents.values()]
                return httpx.Response(200, json={"features": features})
            if path.startswith("/api/v1/cases/"):  # one case's detail
                found = self.cases.get(path.rsplit("/", 1)[-1])
                return httpx.Response(200 if found else 404, json=found or {})
            rows = list(self.cases.values())
            return httpx.Response(200, json={"cases": rows, "total": len(rows)})
        if self.fail_next:
            failure = self.fail_next.pop(0)
            if failure == "drop":
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(int(failure), json={"detail": "scripted"})
        subject = request.headers["Authorization"].removeprefix("Bearer ")
        self.posts.append((path, subject, request.content.decode()))
        _, _, _, kind, item, *action = path.split("/")
        return self._apply(kind, item, "/".join(action), json.loads(request.content))

    def _apply(self, kind: str, item: str, action: str, body: dict[str, Any]) -> httpx.Response:
        if kind == "incidents":
            row = self.incidents[item]
            stage = {"dispatch": "dispatched", "accept": "accepted", "resolve": "resolved"}
            if action == "acknowledge":
                row["acknowledged"] = True
            elif action == "verify":
                row["stage"] = "closed"
                del self.incidents[item]
            else:
                row["stage"] = stage[action]
            return httpx.Response(200, json={})
        row = self.cases[item]
        status = {"start": "in_progress", "resolve": "resolved"}
        if action == "rate":
            row["status"] = "closed"
            del self.cases[item]
            return httpx.Response(200, json={"revisits": 0})
        row["status"] = status[action]
        return httpx.Response(200, json={})


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def simulator(api: FakeApi, clock: Clock, **params: Any) -> StaffSimulator:
    quick = StaffModel(
        3,
        StaffParams(
            pickup_s=(1.0, 5.0),
            rating_s=(1.0, 5.0),
            verify_s=(1.0, 5.0),
            late_share=0.0,
            neglect_share=0.0,
            return_share=0.0,
            extension_share=0.0,
            rework_share=0.0,
            **params,
        ),
    )
    http = httpx.Client(base_url="http://api", transport=httpx.MockTransport(api.handler))
    return StaffSimulator(
        quick,
        http,
        lambda actor: actor.subject,  # the fake reads the subject as the token
        category_types={"road_damage": "roads"},
        clock=clock,
    )


def run_ticks(sim: StaffSimulator, clock: Clock, seconds: float, step_s: float = 2.0) -> None:
    end = clock.now + seconds
    while clock.now < end:
        sim.tick()
        clock.now += step_s


def test_driver_works_cases_and_incidents_to_the_end() -> None:
    api, clock = FakeApi(), Clock()
    [c] = ids(1, "c")
    [i] = ids(1, "i")
    api.cases[c] = {
        "case_id": c,
        "status": "assigned",
        "category": "road_damage",
        "district_code": "310101",
        "department_code": "310101-roads",
        "due_at": "2025-11-21T05:00:00+00:00",  # T0 + 20 min
    }
    api.incidents[i] = {
        "incident_id": i,
        "stage": "reported",
        "category": "flooding",
        "acknowledged": False,
        "alarm_status": "active",
        "department_code": "310101-water",
        "due_at": None,
    }
    sim = simulator(api, clock)
    run_ticks(sim, clock, 3_600)
    assert not api.cases
    assert not api.incidents
    actions = [(p.rsplit("/", 1)[-1], who) for p, who, _ in api.posts]
    assert actions == sorted(actions, key=actions.index)  # each once
    assert ("start", "sim-staff-310101-roads") in actions
    assert ("rate", "sim-dispatcher") in actions
    assert ("acknowledge", "sim-dispatcher") in actions
    assert ("accept", "sim-staff-310101-water") in actions
    assert ("verify", "sim-inspector") in actions
    assert sim.stats.done["case:resolve"] == 1
    assert sim.stats.done["incident:verify"] == 1
    assert "case:resolve 1" in sim.stats.line()


def test_driver_survives_conflicts_server_errors_and_a_dead_api(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "simulations.staff")
    api, clock = FakeApi(), Clock()
    [c] = ids(1, "e")
    api.cases[c] = {
        "case_id": c,
        "status": "assigned",
        "category": "road_damage",
        "department_code": "310101-roads",
        "due_at": "2025-11-21T05:00:00+00:00",
    }
    sim = simulator(api, clock)
    api.reads_fail = 3  # the API restarting
    run_ticks(sim, clock, 6)
    assert sim.stats.failed == 3
    assert not api.posts
    api.fail_next = ["drop", 503, 409]  # lost, then a restart, then someone was first
    run_ticks(sim, clock, 600)
    # The 409 dropped the step for that stage: the case waits, no command is repeated.
    assert sim.stats.refused == 1
    assert api.cases[c]["status"] == "assigned"
    assert api.posts == []
    assert "refused: HTTP 409" in caplog.text
    # A new stage (the other actor's move) is planned anew.
    api.cases[c]["status"] = "in_progress"
    run_ticks(sim, clock, 1_200)
    assert c not in api.cases
    assert [p.rsplit("/", 1)[-1] for p, _, _ in api.posts] == ["resolve", "rate"]
