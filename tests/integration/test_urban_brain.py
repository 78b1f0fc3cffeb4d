"""The urban brain on real PostgreSQL: a rainstorm's reports and alarms, one incident per
flooded place; links, confirmation, merging, proactive resolution and notices, the
incident workflow with escalation, and a SIGKILLed projection worker."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from uuid import UUID

import psycopg
import pytest

from api.cases import summary
from cityops.bootstrap import (
    brain_follower,
    city_layers,
    incident_desk,
    rebuild_projections,
    run_projector,
    seed,
)
from core.app import CityApp
from core.brain.correlation import load_policy
from core.case.categories import load_categories
from core.case.desk import ServiceDesk, SubmitCase
from core.case.notify import Notice
from core.errors import IllegalTransitionError
from core.sensor import SensorSpec
from infra.settings import Settings
from projections.case_queries import CaseQueries
from projections.positions import head, position
from simulations.citizens import CaseReport, CitizenModel
from simulations.scenarios import Festival
from tests.helpers.builders import flood_alarm, offset, report
from tests.helpers.city import open_city, places
from tests.helpers.db import caught_up, checksums, project, rows
from tests.helpers.waiting import wait_until
from tests.helpers.workers import sigkill, threads, worker_env
from workers.brain import NOTICE_EVENTS, notice_handler
from workers.follower import LogFollower

pytestmark = pytest.mark.integration


class Outbox:
    def __init__(self) -> None:
        self.sent: list[Notice] = []

    def send(self, notice: Notice) -> None:
        self.sent.append(notice)


@pytest.fixture
def city(settings: Settings) -> Iterator[tuple[CityApp, ServiceDesk, Any]]:
    seed(settings)
    with open_city(settings, pool_size=4) as opened:
        yield opened.app, opened.desk, opened.pool


def test_rainstorm_gives_one_incident_per_flooded_place(
    settings: Settings, city: tuple[CityApp, ServiceDesk, Any]
) -> None:
    app, desk, pool = city
    (ax, ay, _), (bx, by, _), (cx, cy, _), (dx, dy, _) = places(settings, 4)
    # Water-level sensors: one at A (will alarm), one near B (stays normal), one at C.
    specs = [
        SensorSpec("wl-a", "water_level", "gw-t", ax, ay, None, None, "dept-water"),
        SensorSpec("wl-b", "water_level", "gw-t", *offset(bx, by, 150, 0), None, None, None),
        SensorSpec("wl-c", "water_level", "gw-t", *offset(cx, cy, 60, 0), None, None, "dept-w"),
    ]
    app.register_sensors(specs, actor="test", correlation_id="test")
    brain = brain_follower(settings, app, pool)
    with threads(partial(run_projector, settings), brain.run):
        incident_a = flood_alarm(app, "wl-a")
        # A: five reports 50-250 m around the flooded sensor.
        a_cases = [
            report(desk, f"a{i}", *offset(ax, ay, 50 * (i + 1) * (-1) ** i, 20)) for i in range(5)
        ]
        # B: three reports close together; the sensor nearby shows nothing.
        b_cases = [report(desk, f"b{i}", *offset(bx, by, 30 * i, 10)) for i in range(3)]
        # C: two reports first (they open an incident together), then the sensor alarms.
        c_cases = [report(desk, f"c{i}", *offset(cx, cy, -40 * i, 0)) for i in range(2)]
        # D: a lone report far from everything.
        d_case = report(desk, "d0", dx, dy)

        def linked(case_ids: list[UUID]) -> bool:
            return all(desk.get(c).incident_id is not None for c in case_ids)

        wait_until(lambda: linked(a_cases + b_cases + c_cases), 60, "reports linked")
        incident_c = flood_alarm(app, "wl-c")
        wait_until(
            lambda: all(desk.get(c).incident_id == str(incident_c) for c in c_cases),
            60,
            "C's reports adopted by the alarm",
        )
        wait_until(lambda: caught_up(settings), 60, "projections at the head")
        wait_until(lambda: brain.position is not None and brain.step() == 0, 30, "brain done")

        # A: all five linked to the alarm's incident; confirmed by reports -> critical.
        a = app.get_incident(incident_a)
        assert sorted(a.linked_cases) == sorted(str(c) for c in a_cases)
        assert a.confirmed_by_reports
        assert a.severity == "critical"
        for c in a_cases:
            case = desk.get(c)
            assert case.incident_id == str(incident_a)
            assert case.sensor_check == "confirmed"
        link = a.linked_cases[str(a_cases[0])]
        assert link["rule_id"] == "flooding"
        assert link["rule_version"] == load_policy().version
        # B: one incident opened by the citizens together, not confirmed by sensors.
        b_incidents = {desk.get(c).incident_id for c in b_cases}
        assert len(b_incidents) == 1
        b = app.get_incident(UUID(b_incidents.pop() or ""))
        assert b.kind == "citizen_reports"
        assert sorted(b.linked_cases) == sorted(str(c) for c in b_cases)
        assert {desk.get(c).sensor_check for c in b_cases} == {"not_confirmed"}
        # C: the reports' own incident merged into the alarm's.
        c = app.get_incident(incident_c)
        assert sorted(c.linked_cases) == sorted(str(x) for x in c_cases)
        merged = rows(
            settings,
            "SELECT incident_id, status FROM map_incidents WHERE merged_into = %s",
            incident_c,
        )
        assert len(merged) == 1
        assert merged[0][1] == "closed"
        # D: alone, no incident; with no sensor nearby.
        assert desk.get(d_case).incident_id is None
        assert desk.get(d_case).sensor_check == "no_sensors"
        # The map shows one open flooding incident per flooded place: A, B, C.
        open_flooding = rows(
            settings,
            "SELECT incident_id, linked_cases FROM map_incidents"
            " WHERE category = 'flooding' AND status = 'open' ORDER BY linked_cases",
        )
        assert sorted(n for _, n in open_flooding) == [2, 3, 5]
        linked_rows = rows(
            settings, "SELECT count(*) FROM service_cases WHERE incident_id IS NOT NULL"
        )
        assert linked_rows[0][0] == 10
        # The case API shows each report's incident and sensor check.
        shown = summary(CaseQueries(pool).case(a_cases[0]) or {})
        assert shown["incident_id"] == str(incident_a)
        assert shown["sensor_check"] == "confirmed"
        assert shown["proactive"] is False

        # Proactive service: resolving A resolves its five cases and notifies each citizen.
        incidents = incident_desk(settings, app)
        incidents.dispatch(incident_a, None, "user:dispatcher", "storm", "t-a")
        incidents.accept(incident_a, "user:water", "t-a")
        _, resolved = incidents.resolve(incident_a, "drains cleared, water gone", "user:w", "t-a")
        assert sorted(x.id for x in resolved) == sorted(a_cases)
        for cid in a_cases:
            case = desk.get(cid)
            assert case.status == "resolved"
            assert case.proactive
            assert "drains cleared" in (case.reply or "")
        outbox = Outbox()
        notifier = LogFollower(app, "notifier-test", NOTICE_EVENTS, notice_handler(desk, outbox))
        while notifier.step():
            pass
        assert sorted(n.case_id for n in outbox.sent) == sorted(a_cases)
        assert all(n.address == "13800138000" and n.channel == "sms" for n in outbox.sent)
        assert notifier.step() == 0  # recorded: a restart sends nothing again
        again = LogFollower(app, "notifier-test", NOTICE_EVENTS, notice_handler(desk, outbox))
        assert again.step() == 0
        assert len(outbox.sent) == 5

        # Verification fails -> rework; then passes -> closed.
        incidents.verify(incident_a, False, "water still on the road", "user:inspector", "t-a")
        assert app.get_incident(incident_a).stage == "dispatched"
        assert app.get_incident(incident_a).reworks == 1
        incidents.resolve(incident_a, "second pump run", "user:w", "t-a")
        incidents.verify(incident_a, True, "dry", "user:inspector", "t-a")
        assert app.get_incident(incident_a).status == "closed"
        with pytest.raises(IllegalTransitionError):
            incidents.verify(incident_a, True, "again", "user:inspector", "t-a")

        # Escalation: B dispatched and left; past its deadline it escalates once per level.
        incidents.dispatch(b.id, "dept-water", "user:dispatcher", "storm", "t-b")
        late = incident_desk(settings, app)
        late.now = lambda: datetime.now(UTC) + timedelta(hours=9)  # major: 8 h
        assert late.check_escalations([b.id], "t-b") == 1
        assert late.check_escalations([b.id], "t-b") == 0  # next one 8 h later
        later = incident_desk(settings, app)
        later.now = lambda: datetime.now(UTC) + timedelta(hours=18)
        assert later.check_escalations([b.id], "t-b") == 1
        assert later.check_escalations([b.id], "t-b") == 0  # max level 2
        assert app.get_incident(b.id).escalation_level == 2
        wait_until(lambda: caught_up(settings), 60, "projections at the head")
        b_row = rows(
            settings,
            "SELECT stage, escalation_level, escalate_at FROM map_incidents WHERE incident_id = %s",
            b.id,
        )
        assert b_row == [("dispatched", 2, None)]
    # Rebuild after all that: identical views.
    live = checksums(settings)
    rebuild_projections(settings)
    project(settings)
    assert checksums(settings) == live


PROJECTOR = """
import sys, threading
from cityops.bootstrap import run_projector
from infra.settings import Settings
run_projector(Settings(), threading.Event(), batch_size=int(sys.argv[1]))
"""


def festival_reports(settings: Settings) -> list[CaseReport]:
    festival = Festival(seed=3)
    model = CitizenModel(city_layers(settings), load_categories(), festival, seed=3)
    return [r for r in model.reports(0.0, festival.timeline.end_s) if r.cause == "scenario"]


def run_brain_over(
    settings: Settings,
    city: tuple[CityApp, ServiceDesk, Any],
    reports: list[CaseReport],
    after_first: Callable[[list[UUID]], None] = lambda _: None,
) -> tuple[list[UUID], list[UUID]]:
    """The first four ``reports`` filed and correlated (then ``after_first`` of their
    case ids), then the rest: the case ids of both."""
    app, desk, pool = city
    brain = brain_follower(settings, app, pool)

    def submit(r: CaseReport) -> UUID:
        case = desk.submit(
            SubmitCase(
                "hotline",
                r.external_id,
                r.service_code,
                r.description,
                lon=r.lon,
                lat=r.lat,
                attributes=dict(r.attributes),
            ),
            actor="hotline:test",
            correlation_id=r.external_id,
        )
        return case.id

    def brain_done() -> None:
        wait_until(lambda: caught_up(settings), 60, "projections at the head")
        while brain.step():
            wait_until(lambda: caught_up(settings), 60, "projections at the head")

    with threads(partial(run_projector, settings), join_s=10):
        first = [submit(r) for r in reports[:4]]
        brain_done()
        after_first(first)
        rest = [submit(r) for r in reports[4:]]
        brain_done()
        wait_until(lambda: caught_up(settings), 60, "projections at the head")
    return first, rest


def test_complaints_from_one_spot_become_one_incident(
    settings: Settings, city: tuple[CityApp, ServiceDesk, Any]
) -> None:
    """Callers at the very same point (one address, one phone mast): equally near, they
    are taken in the order of their ids, and the brain goes on."""
    spot = festival_reports(settings)[:8]
    same = [replace(r, lon=spot[0].lon, lat=spot[0].lat) for r in spot]
    first, rest = run_brain_over(settings, city, same)
    incidents = rows(settings, "SELECT incident_id, linked_cases FROM map_incidents")
    assert len(incidents) == 1, incidents
    _, desk, _ = city
    assert {desk.get(c).incident_id for c in first + rest} == {str(incidents[0][0])}
    assert incidents[0][1] == len(same)


def test_festival_crowd_complaints_become_one_incident(
    settings: Settings, city: tuple[CityApp, ServiceDesk, Any]
) -> None:
    """The festival scenario's calls (no sensor sees a crowd) through the real brain: four
    complaints stay cases; from the fifth, one citizen-reports incident holds them all."""
    app, desk, _ = city
    reports = festival_reports(settings)
    assert len(reports) >= 30

    def none_linked_yet(first: list[UUID]) -> None:
        assert all(desk.get(c).incident_id is None for c in first)

    first, rest = run_brain_over(settings, city, reports, none_linked_yet)
    incidents = rows(
        settings,
        "SELECT incident_id, kind, category, linked_cases FROM map_incidents WHERE status = 'open'",
    )
    assert len(incidents) == 1, incidents
    incident_id, kind, category, linked = incidents[0]
    assert (kind, category) == ("citizen_reports", "crowd_disturbance")
    crowd = app.get_incident(incident_id)
    assert crowd.rule_id == "crowd"
    # Every call but a few at the crowd's far edge (beyond 500 m of where it opened).
    assert linked == len(crowd.linked_cases) >= 0.9 * len(reports)
    assert set(crowd.linked_cases) <= {str(c) for c in first + rest}
    # The first four joined it when the fifth came (but one too far from the fifth).
    early = [desk.get(c).incident_id for c in first]
    assert early.count(str(incident_id)) >= 3
    assert set(early) <= {str(incident_id), None}


def test_projection_worker_killed_mid_batch_equals_a_fresh_rebuild(
    settings: Settings, city: tuple[CityApp, ServiceDesk, Any]
) -> None:
    _, desk, _ = city
    lon, lat, _ = places(settings, 1)[0]
    # Enough batches (about 1,800 of 5 events) that each kill lands mid-stream.
    for i in range(3_000):
        report(desk, f"k{i}", *offset(lon, lat, 20 * (i % 60), 20 * (i // 60)), "drain_blocked")
    env = worker_env(settings)
    with psycopg.connect(settings.database_url) as conn:
        top = head(conn)
    seen: list[int] = []
    for _ in range(3):
        # Kill it once it has written some batches but not all: mid-stream.
        before = seen[-1] if seen else 0
        proc = subprocess.Popen([sys.executable, "-c", PROJECTOR, "5"], env=env)
        try:
            wait_until(lambda b=before: b < cases_position(settings) < top, 60, "progress")
        finally:
            sigkill(proc)
        seen.append(cases_position(settings))
    assert seen[-1] < top, seen
    proc = subprocess.Popen([sys.executable, "-c", PROJECTOR, "50"], env=env)
    try:
        wait_until(lambda: caught_up(settings), 90, "projections at the head after kills")
    finally:
        sigkill(proc)
    survived = checksums(settings)
    assert survived["service_cases"][0] == 3_000
    rebuild_projections(settings)
    project(settings)
    assert checksums(settings) == survived


def cases_position(settings: Settings) -> int:
    with psycopg.connect(settings.database_url) as conn:
        return position(conn, "cases")
