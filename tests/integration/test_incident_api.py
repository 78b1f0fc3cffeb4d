"""The incident workflow over HTTP on real PostgreSQL: detail with linked cases and
sensors, dispatch -> accept -> resolve (linked cases resolved) -> verify, rework, and
every refusal with its status code."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest
from fastapi.testclient import TestClient

from infra.settings import Settings
from tests.helpers.builders import report
from tests.helpers.city import flooded_place, places
from tests.helpers.web import bearer

pytestmark = pytest.mark.integration


@pytest.fixture
def world(settings: Settings) -> Iterator[dict[str, Any]]:
    with flooded_place(settings, "wl-x", "x") as place:
        assert place.city.desk.locator.place(place.lon, place.lat) is not None
        yield {
            "client": place.client,
            "incident": place.incident,
            "cases": place.cases,
            "water": place.water,
            "worker": place.worker,
            "desk": place.city.desk,
        }


def test_incident_workflow_over_http(settings: Settings, world: dict[str, Any]) -> None:
    client: TestClient = world["client"]
    iid = world["incident"]
    url = f"/api/v1/incidents/{iid}"
    operator = bearer(settings, "operator")
    dispatcher = bearer(settings, "dispatcher")
    own = bearer(settings, "department", "crew", department=world["water"])
    other = bearer(settings, "department", "other", department="not-" + world["water"])

    detail = client.get(url, headers=operator).json()
    assert detail["properties"]["stage"] == "reported"
    assert detail["properties"]["linked_cases"] == 2
    assert sorted(f["id"] for f in detail["linked_cases"]) == sorted(str(c) for c in world["cases"])
    assert detail["sensors"][0]["device_id"] == "wl-x"
    assert detail["sensors"][0]["alarms"] == ["water_level_high"]

    # Refusals: no token, wrong role, unknown ids, bad bodies.
    assert client.post(f"{url}/dispatch", json={}).status_code == 401
    assert client.post(f"{url}/dispatch", json={}, headers=own).status_code == 403
    assert client.post(f"{url}/verify", json={"passed": True}, headers=own).status_code == 403
    auditor = bearer(settings, "auditor")
    assert client.post(f"{url}/dispatch", json={}, headers=auditor).status_code == 403
    missing = f"/api/v1/incidents/{uuid4()}/dispatch"
    assert client.post(missing, json={}, headers=dispatcher).status_code == 404
    malformed = client.post("/api/v1/incidents/nope/dispatch", json={}, headers=dispatcher)
    assert malformed.status_code == 422
    unknown = client.post(f"{url}/dispatch", json={"department_code": "xx"}, headers=dispatcher)
    assert unknown.status_code == 422
    assert "unknown department" in unknown.json()["detail"]
    assert client.post(f"{url}/accept", headers=own).status_code == 409  # not dispatched yet

    r = client.post(f"{url}/dispatch", json={"reason": "storm"}, headers=dispatcher)
    assert r.status_code == 200, r.text
    assert r.json()["stage"] == "dispatched"
    assert r.json()["department_code"] == world["water"]
    assert r.json()["due_at"] is not None
    assert client.post(f"{url}/dispatch", json={}, headers=dispatcher).status_code == 409
    assert client.post(f"{url}/accept", headers=other).status_code == 403
    assert client.post(f"{url}/accept", headers=own).json()["stage"] == "accepted"
    assert client.post(f"{url}/resolve", json={"feedback": ""}, headers=own).status_code == 422
    r = client.post(f"{url}/resolve", json={"feedback": "pumped dry"}, headers=own)
    assert r.status_code == 200, r.text
    assert sorted(r.json()["resolved_cases"]) == sorted(str(c) for c in world["cases"])
    for case_id in world["cases"]:
        assert world["desk"].get(case_id).status == "resolved"

    bad = client.post(f"{url}/verify", json={"passed": False}, headers=dispatcher)
    assert bad.status_code == 422
    rework = client.post(
        f"{url}/verify", json={"passed": False, "note": "still wet"}, headers=dispatcher
    )
    assert rework.json()["stage"] == "dispatched"
    assert rework.json()["reworks"] == 1
    client.post(f"{url}/resolve", json={"feedback": "second pass"}, headers=own)
    done = client.post(f"{url}/verify", json={"passed": True, "note": "dry"}, headers=dispatcher)
    assert done.json()["status"] == "closed"
    again = client.post(f"{url}/verify", json={"passed": True}, headers=dispatcher)
    assert again.status_code == 409

    world["worker"].catch_up()
    final = client.get(url, headers=operator).json()["properties"]
    assert final["stage"] == "closed"
    assert final["reworks"] == 1
    assert final["resolution"] == "second pass"


def test_metrics_show_each_projection_lag(settings: Settings, world: dict[str, Any]) -> None:
    client: TestClient = world["client"]
    text = client.get("/metrics").text
    assert 'cityops_projection_lag_events{projection="map"} 0.0' in text
    assert 'cityops_projection_lag_events{projection="cases"} 0.0' in text
    # An event the projector has not seen yet shows as lag.
    report(world["desk"], "lagging", *places(settings, 2)[1][:2], "drain_blocked")
    text = client.get("/metrics").text
    assert 'cityops_projection_lag_events{projection="cases"} 0.0' not in text
    ready = client.get("/readyz").json()["checks"]
    assert ready["projection_cases"]["lag_events"] > 0
    world["worker"].catch_up()
    assert 'cityops_projection_lag_events{projection="cases"} 0.0' in client.get("/metrics").text
