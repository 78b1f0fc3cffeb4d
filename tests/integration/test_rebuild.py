"""Read models are rebuildable: emptied and replayed from the log, they are identical."""

from __future__ import annotations

import threading
from functools import partial

import psycopg
import pytest

from cityops.bootstrap import rebuild_projections, run_projector, seed
from core.case.desk import SubmitCase
from core.personal import Contact
from infra.settings import Settings
from tests.helpers.city import open_city
from tests.helpers.db import caught_up, checksums, project
from tests.helpers.waiting import wait_until
from tests.helpers.workers import threads

pytestmark = pytest.mark.integration


def test_rebuilt_views_equal_the_live_ones(settings: Settings) -> None:
    seed(settings)
    with open_city(settings) as city:
        desk = city.desk
        departments = sorted(desk.locator.departments())
        for i in range(40):
            case = desk.submit(
                SubmitCase(
                    channel="hotline",
                    external_id=f"r-{i}",
                    category="road_damage",
                    description=f"case {i}",
                    address=f"Road {i}",
                    contact=Contact.parse(phone=f"1380000{i:04d}"),
                ),
                actor="system:test",
                correlation_id=f"t{i}",
            )
            # Walk the cases through different paths, so every handler writes rows.
            if i % 4 == 0:
                continue
            desk.assign(case.id, departments[i % len(departments)], "dispatcher:d", "", "c")
            if i % 4 == 1:
                desk.return_case(case.id, "department:x", "not ours", "c")
            elif i % 4 == 2:
                desk.request_extension(case.id, 8, "department:x", "parts", "c")
                desk.decide_extension(case.id, True, "dispatcher:d", "ok", "c")
                desk.resolve(case.id, "fixed", "department:x", "", "c")
                desk.rate(case.id, 1 + i % 5, "", "citizen:c", "c")
            else:
                desk.cancel(case.id, "citizen:c", "solved myself", "c")
    project(settings)
    live = checksums(settings)
    assert live["map_sensors"][0] == settings.sim_sensors
    assert live["service_cases"][0] == 40
    rebuild_projections(settings)
    assert checksums(settings)["service_cases"][0] == 0
    project(settings)
    assert checksums(settings) == live


def test_views_count_what_the_log_holds_while_writers_run(settings: Settings) -> None:
    """Four writers and two projectors (fenced) at once: nothing skipped, nothing twice."""
    seed(settings)
    projector = partial(run_projector, settings, batch_size=7)
    with open_city(settings, pool_size=6) as city, threads(projector, projector):
        desk = city.desk
        department = sorted(desk.locator.departments())[0]

        def write(w: int) -> None:
            for i in range(60):
                case = desk.submit(
                    SubmitCase("hotline", f"w{w}-{i}", "road_damage", "hole", address="Road"),
                    actor="system:test",
                    correlation_id=f"w{w}-{i}",
                )
                if i % 2:
                    desk.assign(case.id, department, "dispatcher:d", "", "c")
                    desk.return_case(case.id, "department:x", "not ours", "c")

        writers = [threading.Thread(target=write, args=(w,)) for w in range(4)]
        for t in writers:
            t.start()
        for t in writers:
            t.join(120)
        wait_until(lambda: caught_up(settings), 60, "projections at the head")
    with psycopg.connect(settings.database_url) as conn:
        in_log = conn.execute(
            "SELECT count(*) FILTER (WHERE topic LIKE '%.CaseSubmitted'),"
            " count(*) FILTER (WHERE topic LIKE '%.CaseReturned') FROM city_events"
        ).fetchone()
        in_view = conn.execute("SELECT count(*), sum(returns) FROM service_cases").fetchone()
    assert in_log == (240, 120)
    assert in_view == (240, 120)  # a second apply of a return would count it twice
    live = checksums(settings)
    rebuild_projections(settings)
    project(settings)
    assert checksums(settings) == live
