"""The audit API on real PostgreSQL: an incident from a sensor reading to its citizens'
ratings, read back as history (order, positions, chain hashes, masking), as state at
each version and instant, and as a causal trace; who may read it; bad input; and every
successful read recorded in the city log."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from fastapi.testclient import TestClient

from core.audit import AuditRead, state_view
from core.sensor import sensor_id
from infra.settings import Settings
from tests.helpers.builders import REPORTER_PHONE as PHONE
from tests.helpers.builders import flood_alarm
from tests.helpers.city import City, flooded_place
from tests.helpers.db import rows
from tests.helpers.web import bearer

pytestmark = pytest.mark.integration

DEVICE = "wl-audit"


def audit_reads(settings: Settings, app: Any) -> list[AuditRead]:
    """Every recorded audit read, oldest first."""
    found = rows(
        settings,
        "SELECT DISTINCT originator_id, notification_id FROM city_events"
        " WHERE topic LIKE 'core.audit:AuditRead%%' ORDER BY notification_id",
    )
    return [app.repository.get(r[0]) for r in found]


@pytest.fixture
def world(settings: Settings) -> Iterator[dict[str, Any]]:
    """A sensor alarm on a stored reading, its incident, and two linked citizen reports."""
    crossed = round(time.time() - 120, 3)

    def alarm(city: City, device: str) -> UUID:
        with city.pool.connection() as conn:
            for dt, value in ((-60, 41.0), (0, 62.0), (60, 64.0)):
                conn.execute(
                    "INSERT INTO readings (ts, device_id, metric, value, unit)"
                    " VALUES (to_timestamp(%s), %s, 'water_level', %s, 'cm')",
                    (crossed + dt, device, value),
                )
        return flood_alarm(city.app, device, crossed, "audit-storm")

    with flooded_place(settings, DEVICE, "au", alarm) as place:
        yield {
            "client": place.client,
            "app": place.city.app,
            "desk": place.city.desk,
            "incident": place.incident,
            "cases": place.cases,
            "water": place.water,
            "crossed": crossed,
            "worker": place.worker,
        }


def run_workflow(settings: Settings, world: dict[str, Any]) -> None:
    """Dispatch, accept, resolve (the linked cases with it), verify; both citizens rate."""
    client: TestClient = world["client"]
    url = f"/api/v1/incidents/{world['incident']}"
    dispatcher = bearer(settings, "dispatcher")
    crew = bearer(settings, "department", "crew", department=world["water"])
    for path, body, who in (
        ("dispatch", {"reason": "storm"}, dispatcher),
        ("accept", None, crew),
        ("resolve", {"feedback": "pumped dry"}, crew),
        ("verify", {"passed": True, "note": "dry"}, dispatcher),
    ):
        r = client.post(f"{url}/{path}", json=body, headers=who)
        assert r.status_code == 200, r.text
    for case_id, rating in zip(world["cases"], (5, 2), strict=True):
        citizen = world["desk"].get(case_id).citizen_id
        r = client.post(
            f"/api/v1/cases/{case_id}/rate",
            json={"rating": rating, "comment": "ok"},
            headers=bearer(settings, "citizen", citizen),
        )
        assert r.status_code == 200, r.text


def test_history_state_and_trace_of_an_incident(settings: Settings, world: dict[str, Any]) -> None:
    run_workflow(settings, world)
    client: TestClient = world["client"]
    app = world["app"]
    iid: UUID = world["incident"]
    auditor = bearer(settings, "auditor", "ada")
    base = f"/api/v1/audit/incidents/{iid}"

    # History: every event in order, with positions, times, who, why, rule, chain hash.
    r = client.get(f"{base}/history", headers=auditor)
    assert r.status_code == 200, r.text
    doc = r.json()
    events = doc["events"]
    recorded = list(app.events.get(iid))
    assert [e["type"] for e in events] == [type(e).__name__ for e in recorded]
    assert [e["version"] for e in events] == list(range(1, len(recorded) + 1))
    assert doc["last_version"] == len(recorded)
    assert doc["next_after_version"] is None
    positions = [e["position"] for e in events]
    assert positions == sorted(positions)
    assert len(set(positions)) == len(positions)
    types = [e["type"] for e in events]
    for expected in ("Opened", "CaseLinked", "Dispatched", "WorkAccepted", "Resolved"):
        assert expected in types
    assert types[-2:] == ["Verified", "Closed"]
    opened = events[0]
    assert opened["actor"] == recorded[0].actor
    assert opened["correlation_id"] == "audit-storm"
    assert (opened["rule_id"], opened["rule_version"]) == ("water_level_high", 1)
    assert opened["attributes"]["device_id"] == DEVICE
    assert opened["time"] == recorded[0].timestamp.isoformat()
    dispatched = events[types.index("Dispatched")]
    assert dispatched["actor"] == "dispatcher:test-dispatcher"
    assert dispatched["reason"] == "storm"
    assert dispatched["correlation_id"].startswith("http:")
    assert dispatched["attributes"]["department_code"] == world["water"]
    links = dict(
        rows(
            settings,
            "SELECT notification_id, encode(hash, 'hex') FROM event_chain"
            " WHERE notification_id = ANY(%s)",
            positions,
        )
    )
    assert [e["hash"] for e in events] == [links[p] for p in positions]
    assert all(e["recorded_at"] for e in events)

    # Paging: two at a time gives the same events.
    paged: list[dict[str, Any]] = []
    after = 0
    while after is not None:
        page = client.get(
            f"{base}/history", params={"after_version": after, "limit": 2}, headers=auditor
        ).json()
        assert len(page["events"]) <= 2
        paged += page["events"]
        after = page["next_after_version"]
    assert [e["position"] for e in paged] == positions

    # Cases: personal data masked (the contact, the citizen's id, the citizen as actor).
    case_id = world["cases"][1]
    citizen = world["desk"].get(case_id).citizen_id
    r = client.get(f"/api/v1/audit/cases/{case_id}/history", headers=auditor)
    assert r.status_code == 200, r.text
    assert PHONE not in r.text
    assert citizen not in r.text
    assert "contact_token" not in r.text
    case_events = {e["type"]: e for e in r.json()["events"]}
    submitted = case_events["CaseSubmitted"]["attributes"]
    assert submitted["contact"]["phone"] == "138****8000"
    assert submitted["citizen_id"] == "[masked]"
    assert case_events["CaseRated"]["actor"] == "citizen:[masked]"
    assert case_events["CaseRated"]["attributes"]["rating"] == 2
    assert case_events["LinkedToIncident"]["attributes"]["incident_id"] == str(iid)
    r = client.get(f"/api/v1/audit/cases/{case_id}/state", headers=auditor)
    assert PHONE not in r.text
    assert citizen not in r.text
    case_state = r.json()["state"]["attributes"]
    assert case_state["contact"]["phone"] == "138****8000"
    assert case_state["status"] == "reopened"
    assert case_state["rating"] == 2

    # Sensors: by device id or by uuid, the same history.
    by_device = client.get(f"/api/v1/audit/sensors/{DEVICE}/history", headers=auditor).json()
    by_uuid = client.get(
        f"/api/v1/audit/sensors/{sensor_id(DEVICE)}/history", headers=auditor
    ).json()
    assert by_device["events"] == by_uuid["events"]
    assert [e["type"] for e in by_device["events"]] == ["Registered", "AlarmRaised"]

    # State at every version equals the aggregate as it was then.
    for version in range(1, len(recorded) + 1):
        r = client.get(f"{base}/state", params={"version": version}, headers=auditor)
        assert r.status_code == 200, r.text
        then = app.repository.get(iid, version=version)
        assert r.json()["state"] == state_view(then)
        assert r.json()["position"] == positions[version - 1]
    current = client.get(f"{base}/state", headers=auditor).json()
    assert current["version"] == len(recorded)
    assert current["state"]["attributes"]["stage"] == "closed"

    # State at an instant: the last event recorded at or before it.
    d = types.index("Dispatched")
    at_dispatch = datetime.fromisoformat(events[d]["recorded_at"])
    r = client.get(f"{base}/state", params={"as_of": at_dispatch.isoformat()}, headers=auditor)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == d + 1
    assert r.json()["state"]["attributes"]["stage"] == "dispatched"
    just_before = datetime.fromisoformat(events[d + 1]["recorded_at"]) - timedelta(microseconds=1)
    r = client.get(f"{base}/state", params={"as_of": just_before.isoformat()}, headers=auditor)
    assert r.json()["version"] == d + 1
    before = datetime.fromisoformat(events[d]["recorded_at"]) - timedelta(microseconds=1)
    r = client.get(f"{base}/state", params={"as_of": before.isoformat()}, headers=auditor)
    assert r.json()["version"] == d
    assert r.json()["state"]["attributes"]["stage"] == "reported"
    first = datetime.fromisoformat(events[0]["recorded_at"])
    r = client.get(
        f"{base}/state",
        params={"as_of": (first - timedelta(seconds=1)).isoformat()},
        headers=auditor,
    )
    assert r.status_code == 404
    assert "did not exist" in r.json()["detail"]

    # The causal trace: reading -> alarm -> incident -> ... -> linked cases -> ratings.
    r = client.get(f"{base}/trace", headers=auditor)
    assert r.status_code == 200, r.text
    trace = r.json()
    assert PHONE not in r.text
    assert citizen not in r.text
    steps = trace["steps"]
    kinds = [s["step"] for s in steps]
    reading = steps[0]
    assert reading["step"] == "reading"
    assert reading["position"] is None
    assert reading["reading"]["value"] == 62.0
    assert reading["reading"]["unit"] == "cm"
    assert datetime.fromisoformat(reading["time"]).timestamp() == pytest.approx(world["crossed"])
    assert kinds[1:3] == ["alarm", "incident"]
    assert steps[1]["aggregate"] == {"kind": "sensors", "id": str(sensor_id(DEVICE)), "version": 2}
    assert steps[1]["rule_id"] == "water_level_high"
    order = ["incident", "dispatch", "acceptance", "feedback", "verification", "closure"]
    assert [k for k in kinds if k in order] == order
    assert kinds.count("case_link") == 2
    assert kinds.count("report") == 2
    assert kinds.count("case_resolution") == 2
    assert kinds.count("rating") == 2
    assert kinds.index("feedback") < kinds.index("case_resolution") < kinds.index("rating")
    later = [s["position"] for s in steps[3:]]
    assert later == sorted(later)
    assert sorted(c["id"] for c in trace["linked_cases"]) == sorted(map(str, world["cases"]))
    assert sorted(r for c in trace["linked_cases"] for r in c["ratings"]) == [2, 5]
    ratings = [s for s in steps if s["step"] == "rating"]
    assert all(s["actor"] == "citizen:[masked]" for s in ratings)
    assert {s["summary"] for s in ratings} == {"rated 5/5", "rated 2/5: revisit ordered (回访)"}
    dispatch = steps[kinds.index("dispatch")]
    assert dispatch["actor"] == "dispatcher:test-dispatcher"
    # Navigable: each step's links lead to that event in its aggregate's history and state.
    hop = client.get(dispatch["href"], headers=auditor).json()
    assert [e["position"] for e in hop["events"]] == [dispatch["position"]]
    hop_state = client.get(dispatch["state_href"], headers=auditor).json()
    assert hop_state["state"]["attributes"]["stage"] == "dispatched"
    rating_history = client.get(ratings[0]["href"], headers=auditor).json()
    assert rating_history["events"][0]["type"] == "CaseRated"

    # Every read above is recorded, with reader, role, path and query; nothing else is.
    reads = audit_reads(settings, app)
    assert all(read.reader == "ada" and read.role == "auditor" for read in reads)
    paths = [read.path for read in reads]
    assert paths[0] == f"{base}/history"
    assert paths.count(f"{base}/trace") == 1
    assert sum(p == f"{base}/state" for p in paths) == len(recorded) + 5
    assert any(read.query == "after_version=0&limit=2" for read in reads)
    assert all(read.actor == "auditor:ada" and read.correlation_id for read in reads)
    # ... and chained like every event; the views skip them without harm.
    chained = rows(
        settings,
        "SELECT count(*) FROM city_events e JOIN event_chain c USING (notification_id)"
        " WHERE e.topic LIKE 'core.audit:%%'",
    )
    assert chained[0][0] == len(reads)
    world["worker"].catch_up()
    stage = rows(settings, "SELECT stage FROM map_incidents WHERE incident_id = %s", iid)
    assert stage == [("closed",)]


def test_who_may_read_and_bad_input(settings: Settings, world: dict[str, Any]) -> None:
    client: TestClient = world["client"]
    iid = world["incident"]
    base = f"/api/v1/audit/incidents/{iid}"
    auditor = bearer(settings, "auditor")

    # Roles: auditors and the operations center read; nobody else; no credentials 401.
    assert client.get(f"{base}/history").status_code == 401
    for role in ("citizen", "gateway", "dispatcher"):
        assert client.get(f"{base}/history", headers=bearer(settings, role)).status_code == 403
    dept = bearer(settings, "department", "crew", department=world["water"])
    assert client.get(f"{base}/trace", headers=dept).status_code == 403
    assert client.get(f"{base}/state", headers=bearer(settings, "citizen")).status_code == 403
    operator = client.get(f"{base}/history", headers=bearer(settings, "operator"))
    assert operator.status_code == 200
    # The auditor changes nothing, anywhere.
    incident_url = f"/api/v1/incidents/{iid}"
    assert client.post(f"{incident_url}/dispatch", json={}, headers=auditor).status_code == 403
    assert client.post(f"{incident_url}/acknowledge", json={}, headers=auditor).status_code == 403
    new_case = {"category": "flooding", "description": "x", "lon": 121.47, "lat": 31.23}
    assert client.post("/api/v1/cases", json=new_case, headers=auditor).status_code == 403
    assert client.post(f"{base}/history", headers=auditor).status_code == 405

    # Bad input: clear 404s and 422s.
    def detail(url: str, status: int, **params: Any) -> str:
        r = client.get(url, params=params, headers=auditor)
        assert r.status_code == status, (url, params, r.text)
        return str(r.json()["detail"])

    assert "unknown incident" in detail(f"/api/v1/audit/incidents/{uuid4()}/history", 404)
    assert "malformed incident id" in detail("/api/v1/audit/incidents/nope/history", 422)
    assert "malformed case id" in detail("/api/v1/audit/cases/12-34/state", 422)
    assert "unknown incident" in detail(f"/api/v1/audit/incidents/{uuid4()}/trace", 404)
    assert "unknown sensor" in detail("/api/v1/audit/sensors/no-such-device/history", 404)
    assert "malformed sensor id" in detail("/api/v1/audit/sensors/%20bad%20/history", 422)
    # An incident's id is not a case's.
    assert "unknown case" in detail(f"/api/v1/audit/cases/{iid}/history", 404)
    detail("/api/v1/audit/parcels/x/history", 422)
    detail(f"{base}/history", 422, limit=501)
    detail(f"{base}/history", 422, limit=0)
    detail(f"{base}/history", 422, after_version=-1)
    detail(f"{base}/state", 422, version=0)
    assert "beyond the last" in detail(f"{base}/state", 422, version=999)
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert "in the future" in detail(f"{base}/state", 422, as_of=future)
    assert "time zone" in detail(f"{base}/state", 422, as_of="2025-01-01T00:00:00")
    detail(f"{base}/state", 422, as_of="yesterday")
    assert "not both" in detail(f"{base}/state", 422, version=1, as_of=future)
    assert "did not exist" in detail(f"{base}/state", 404, as_of="2020-01-01T00:00:00Z")
    r = client.get(f"{base}/history", headers={**auditor, "X-Correlation-ID": "bad id!"})
    assert r.status_code == 422

    # Only the operator's successful read is on record; it keeps a given correlation id.
    r = client.get(f"{base}/trace", headers={**auditor, "X-Correlation-ID": "case-2025-17"})
    assert r.json()["audit_read"]["correlation_id"] == "case-2025-17"
    reads = audit_reads(settings, world["app"])
    assert [(read.role, read.path) for read in reads] == [
        ("operator", f"{base}/history"),
        ("auditor", f"{base}/trace"),
    ]
    assert reads[1].correlation_id == "case-2025-17"
    assert str(reads[1].id) == r.json()["audit_read"]["id"]
