"""The simulated staff on the real services: cases and an incident worked to the end
through the HTTP API, then the scorecards and the KPI tiles have figures.

Time limits are compressed as the demo compresses them (``demo_time_files``), harder:
an hour of a time limit is three seconds, so a case's whole lifecycle takes seconds.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.auth import issue_token
from cityops.bootstrap import city_app
from core.case.categories import load_categories
from infra.settings import Settings
from simulations.staff import Actor, StaffModel, StaffParams, StaffSimulator, demo_time_files
from tests.helpers.builders import operator_incident
from tests.helpers.city import World, served_city

pytestmark = pytest.mark.integration

SCALE = 1_200.0  # 1 h of a time limit -> 3 s
# Short limits (1 h, 4 h, 8 h: 3 s, 12 s, 24 s here): some work is done late.
CATEGORIES = ("illegal_parking", "noise_social", "overflowing_bin", "illegal_dumping")
QUICK = StaffParams(
    pickup_s=(0.5, 2.0),
    rating_s=(0.5, 2.0),
    verify_s=(0.5, 2.0),
    min_delay_s=0.5,
    max_delay_s=8.0,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    limits = demo_time_files(Settings(), tmp_path_factory.mktemp("limits"), SCALE)
    changes = {
        "categories_file": Path(limits["CITYOPS_CATEGORIES_FILE"]),
        "correlation_file": Path(limits["CITYOPS_CORRELATION_FILE"]),
    }
    with served_city(tmp_path_factory.mktemp("city") / "city", **changes) as w:
        yield w


def staff(settings: Settings, world: World, seed_: int = 11) -> StaffSimulator:
    categories = load_categories(settings.categories_file)

    def token(actor: Actor) -> str:
        return issue_token(settings, actor.subject, actor.role, actor.department)

    model = StaffModel(seed_, QUICK, time_limits_h={c.code: c.time_limit_h for c in categories})
    return StaffSimulator(
        model,
        world.client,
        token,
        category_types={c.code: c.department_type for c in categories},
        tick_s=0.5,
    )


def case_status(world: World, case_id: str) -> dict[str, Any]:
    return world.case(case_id)


def request(code: str, lonlat: tuple[float, float], description: str) -> dict[str, str]:
    lon, lat = lonlat
    return {"service_code": code, "lat": str(lat), "long": str(lon), "description": description}


def test_staff_work_cases_and_an_incident_to_the_end(world: World) -> None:
    settings = world.settings
    operator = world.headers("operator")
    filed: list[str] = []
    for i in range(8):
        code = CATEGORIES[i % len(CATEGORIES)]
        filed.append(world.file(request(code, world.point(), f"{code} staff test"), operator))
    # A second report of the same dumping at the same place: held as a possible duplicate.
    first = request("illegal_dumping", world.point(), "bags again")
    filed.append(world.file(first, operator))
    filed.append(world.file({**first, "description": "bags, the same pile"}, operator))

    water = next(code for code in world.departments if code.endswith("water"))
    incident_id = uuid.uuid4()
    app = city_app(settings, pool_size=1)
    try:
        app.save(operator_incident(incident_id, "Underpass flooded", "major", water))
    finally:
        app.close()

    sim = staff(settings, world)

    def finished() -> bool:
        cases = [case_status(world, c)["status"] for c in filed]
        listed = world.client.get(
            f"/api/v1/incidents/{incident_id}", headers=world.headers("operator")
        )
        return all(s in ("closed", "rejected") for s in cases) and (
            listed.json()["properties"]["status"] == "closed"
        )

    deadline = time.monotonic() + 240
    while not finished():
        assert time.monotonic() < deadline, f"not finished: {sim.stats}"
        sim.tick()
        time.sleep(0.5)

    details = [case_status(world, c) for c in filed]
    rated = [d for d in details if d["status"] == "closed"]
    assert len(rated) >= len(filed) - 1  # the held duplicate may be rejected
    assert all(d["rating"] in (1, 2, 3, 4, 5) for d in rated)
    assert {d["status"] for d in details} <= {"closed", "rejected"}
    assert sim.stats.done["case:resolve"] >= len(rated)
    assert sim.stats.done["case:rate"] >= len(rated)
    assert sim.stats.done["incident:verify"] >= 1
    assert {"incident:acknowledge", "incident:dispatch", "incident:accept"} <= set(sim.stats.done)
    assert sim.stats.done["case:contact"] >= 1  # the first contact (响应)

    world.sync()
    cards = world.client.get(
        "/api/v1/scorecards", params={"level": "department"}, headers=operator
    ).json()["units"]
    assert cards, "no scorecard unit"
    assert all(u["closure_rate"] is not None for u in cards)
    assert any(u["on_time_rate"] is not None for u in cards)
    assert any(u["mean_rating"] is not None for u in cards)
    perf = world.client.get("/api/v1/ops/kpis", headers=operator).json()["performance"]
    assert perf["closed"] >= len(rated)
    assert perf["on_time_rate"] is not None
    assert perf["mean_rating"] is not None
    assert perf["rated"] >= len(rated)


def test_staff_survive_a_dead_api(world: World) -> None:
    """Pointed at nothing (the API restarting), the staff log and go on."""
    import httpx

    categories = load_categories(world.settings.categories_file)
    with httpx.Client(base_url="http://127.0.0.1:9", timeout=0.5) as dead:
        sim = StaffSimulator(
            StaffModel(1, QUICK),
            dead,
            lambda a: issue_token(world.settings, a.subject, a.role, a.department),
            category_types={c.code: c.department_type for c in categories},
        )
        assert sim.tick() == 0
        assert sim.tick() == 0
    assert sim.stats.failed == 2
