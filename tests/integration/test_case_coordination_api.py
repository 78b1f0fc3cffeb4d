"""Lead and co-handlers, disputes and first contacts over HTTP, on the real event store
and read model: who may do what, the co-handling queue, and the scorecards after an
upheld dispute (the first unit's card as if the case had never been its own)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.helpers.city import World, served_city

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with served_city(tmp_path_factory.mktemp("city") / "city") as w:
        yield w


def report(world: World, code: str, district: str, **attributes: str) -> str:
    lon, lat = world.point(district)
    fields = {
        "service_code": code,
        "lat": str(lat),
        "long": str(lon),
        "description": f"{code} {uuid.uuid4().hex[:8]}",
        **{f"attribute[{k}]": v for k, v in attributes.items()},
    }
    return world.file(fields, world.headers("operator"))


def ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def refused(response: Any, status: int, text: str) -> None:
    assert response.status_code == status, response.text
    assert text in response.json()["detail"], response.text


def test_a_flooding_case_with_its_co_handlers(world: World) -> None:
    """The catalogue's drainage entry: water leads, roads and traffic co-handle."""
    case_id = report(world, "flooding", "310104", water_depth="knee")
    water, roads, traffic = "310104-water", "310104-roads", "310104-traffic"
    case = world.case(case_id, headers=world.dept(roads))  # a co-handler reads the case
    assert case["department_code"] == water
    assert {u: p["status"] for u, p in case["co_handlers"].items()} == {
        roads: "pending",
        traffic: "pending",
    }
    assert "雨水口" in case["co_handlers"][roads]["part"]
    world.sync()
    queue = ok(
        world.client.get(f"/api/v1/departments/{roads}/co-handling", headers=world.dept(roads))
    )
    assert case_id in {c["case_id"] for c in queue["cases"]}
    refused(
        world.client.get(f"/api/v1/departments/{traffic}/co-handling", headers=world.dept(roads)),
        403,
        "own queue",
    )
    # A co-handler cannot act as the lead, nor answer for another unit.
    refused(world.command(case_id, "resolve", world.dept(roads), {"reply": "x"}), 403, "lead")
    refused(
        world.command(
            case_id,
            "co-handling/answer",
            world.dept(roads),
            {"department_code": traffic, "feedback": "x"},
        ),
        403,
        "your own department's part",
    )
    # A department with no part at all sees nothing.
    refused(
        world.command(
            case_id,
            "co-handling/answer",
            world.dept("310104-lighting"),
            {"department_code": "310104-lighting", "feedback": "x"},
        ),
        403,
        "not in your department's queue",
    )
    refused(world.command(case_id, "resolve", world.dept(water), {"reply": "pumped"}), 409, roads)
    answer = {"department_code": roads, "feedback": "gullies cleared"}
    ok(world.command(case_id, "co-handling/answer", world.dept(roads), answer))
    refused(
        world.command(case_id, "co-handling/answer", world.dept(roads), answer), 409, "answered"
    )
    refused(
        world.command(case_id, "co-handling/waive", world.dept(water), {"reason": "x"}), 403, ""
    )
    refused(world.command(case_id, "co-handling/waive", world.headers("dispatcher"), {}), 422, "")
    ok(world.command(case_id, "co-handling/waive", world.headers("dispatcher"), {"reason": "dry"}))
    resolved = ok(world.command(case_id, "resolve", world.dept(water), {"reply": "pumped out"}))
    assert resolved["status"] == "resolved"
    world.sync()
    row = ok(
        world.client.get(
            "/api/v1/cases", params={"status": "resolved"}, headers=world.headers("dispatcher")
        )
    )
    (listed,) = [c for c in row["cases"] if c["case_id"] == case_id]
    assert listed["co_handlers"] == {roads: "answered", traffic: "waived"}
    assert case_id not in {
        c["case_id"]
        for c in ok(
            world.client.get(f"/api/v1/departments/{roads}/co-handling", headers=world.dept(roads))
        )["cases"]
    }


def cards(world: World, department: str) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    body = ok(
        world.client.get(
            "/api/v1/scorecards",
            params={
                "level": "department",
                "start": (now - timedelta(days=1)).isoformat(),
                "end": (now + timedelta(days=1)).isoformat(),
                "department_code": department,
            },
            headers=world.headers("dispatcher"),
        )
    )
    units: list[dict[str, Any]] = body["units"]
    return units


def test_an_upheld_dispute_leaves_the_first_units_scorecard_as_it_was(world: World) -> None:
    first, second = "310105-roads", "310105-urban_management"
    world.sync()
    before = cards(world, first)
    case_id = report(world, "road_damage", "310105")
    case = world.case(case_id)
    assert case["department_code"] == first
    world.sync()
    assert cards(world, first) != before  # the case is on the first unit's card meanwhile
    # Only the lead disputes; a dispute needs a reason (422) and a known unit (404).
    refused(world.command(case_id, "dispute", world.dept(second), {"reason": "x"}), 403, "")
    refused(world.command(case_id, "dispute", world.dept(first), {}), 422, "")
    refused(
        world.command(
            case_id,
            "dispute",
            world.dept(first),
            {"reason": "x", "proposed_department_code": "nowhere-roads"},
        ),
        404,
        "unknown department",
    )
    body = {"reason": "a private estate's road", "proposed_department_code": second}
    disputed = ok(world.command(case_id, "dispute", world.dept(first), body))
    assert disputed["dispute"]["proposed_department_code"] == second
    refused(world.command(case_id, "resolve", world.dept(first), {"reply": "x"}), 409, "dispute")
    world.sync()
    waiting = ok(
        world.client.get(
            "/api/v1/cases", params={"dispute_pending": "true"}, headers=world.headers("dispatcher")
        )
    )
    assert case_id in {c["case_id"] for c in waiting["cases"]}
    refused(world.command(case_id, "dispute/uphold", world.dept(first), {}), 403, "")
    moved = ok(world.command(case_id, "dispute/uphold", world.headers("dispatcher"), {}))
    assert (moved["department_code"], moved["wrongly_assigned"]) == (second, [first])
    ok(world.command(case_id, "contact", world.dept(second), {"note": "called back"}))
    ok(world.command(case_id, "resolve", world.dept(second), {"reply": "the estate repaired it"}))
    world.sync()
    assert cards(world, first) == before
    (card,) = cards(world, second)
    assert card["closed"] >= 1
    assert card["response_due"] >= 1
    # The read model keeps the upheld dispute and when the second unit took over.
    listed = ok(
        world.client.get(
            "/api/v1/cases",
            params={"department_code": second, "status": "resolved"},
            headers=world.headers("dispatcher"),
        )
    )
    (row,) = [c for c in listed["cases"] if c["case_id"] == case_id]
    assert (row["disputes_upheld"], row["dispute_pending"]) == (1, False)
    assert row["first_contact_at"] is not None


def test_a_rejected_dispute_keeps_the_case_and_its_deadline(world: World) -> None:
    case_id = report(world, "road_damage", "310104")
    case = world.case(case_id)
    unit, due = case["department_code"], case["due_at"]
    ok(world.command(case_id, "dispute", world.dept(unit), {"reason": "not ours"}))
    refused(world.command(case_id, "dispute/reject", world.headers("dispatcher"), {}), 422, "")
    kept = ok(
        world.command(case_id, "dispute/reject", world.headers("dispatcher"), {"reason": "yours"})
    )
    assert (kept["department_code"], kept["due_at"], kept["dispute"]) == (unit, due, None)
    refused(world.command(case_id, "dispute", world.dept(unit), {"reason": "again"}), 409, "once")
