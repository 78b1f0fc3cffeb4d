"""The operations center's API on real PostgreSQL: KPI figures and the SLA board over
hand-made read-model rows (every figure worked out in the comments), the page's
configuration per role, and the incident actions it offers checked against the real
workflow routes, role by role and stage by stage.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from psycopg_pool import ConnectionPool

from api.ops import role_actions
from cityops.bootstrap import city_app, city_layers, incident_desk, seed
from core.app import CityApp
from core.incident.desk import IncidentDesk
from infra.pgstore import make_pool
from tests.helpers.builders import NOTHING_TO_RATE, operator_incident
from tests.helpers.db import fresh_settings
from tests.helpers.web import Api, bearer, served

pytestmark = pytest.mark.integration

WATER, ROADS = "310101-water", "310101-roads"
TILES = "https://tiles.example/{z}/{x}/{y}.png"
ZONE = ZoneInfo("Asia/Shanghai")
ALL_ACTIONS = ("acknowledge", "dispatch", "accept", "resolve", "verify")


# -- builders -------------------------------------------------------------------------------


def insert(pool: ConnectionPool, table: str, row: dict[str, Any]) -> None:
    columns = ", ".join(row)
    values = ", ".join(["%s"] * len(row))
    with pool.connection() as conn:
        conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({values})", list(row.values()))


def add_case(
    pool: ConnectionPool, key: str, status: str, submitted: datetime, **fields: Any
) -> str:
    case_id = uuid.uuid5(uuid.NAMESPACE_URL, f"ops-test:{key}")
    row = {
        "case_id": case_id,
        "channel": "hotline",
        "external_id": key,
        "category": "road_damage",
        "description": f"case {key}",
        "status": status,
        "submitted_by": "system:test",
        "submitted_at": submitted,
        "updated_at": submitted,
        "version": 1,
        **fields,
    }
    insert(pool, "service_cases", row)
    return str(case_id)


def add_incident(
    pool: ConnectionPool, key: str, severity: str, stage: str, opened: datetime, **fields: Any
) -> str:
    incident_id = uuid.uuid5(uuid.NAMESPACE_URL, f"ops-test:{key}")
    row = {
        "incident_id": incident_id,
        "kind": "operator",
        "title": f"incident {key}",
        "category": "flooding",
        "severity": severity,
        "status": "closed" if stage == "closed" else "open",
        "stage": stage,
        "alarm_status": "none",
        "acknowledged": True,
        "trigger_count": 1,
        "lon": 121.49,
        "lat": 31.23,
        "department_code": WATER,
        "opened_at": opened,
        "updated_at": opened,
        "version": 1,
        **fields,
    }
    insert(pool, "map_incidents", row)
    return str(incident_id)


def add_sensor(pool: ConnectionPool, device_id: str, state: str) -> None:
    insert(
        pool,
        "map_sensors",
        {
            "device_id": device_id,
            "sensor_id": uuid.uuid4(),
            "sensor_type": "water_level",
            "gateway_id": "gw-t",
            "lon": 121.49,
            "lat": 31.23,
            "state": state,
            "silent": state == "silent",
            "updated_at": datetime.now(UTC),
            "version": 1,
        },
    )


@dataclass
class Data:
    """The hand-made rows' ids, and the instants they were placed around."""

    now: datetime
    midnight: datetime
    ids: dict[str, str]


def add_rows(pool: ConnectionPool) -> Data:
    """Read-model rows around ``now``; ``midnight`` is the city's (Asia/Shanghai) last."""
    now = datetime.now(UTC)
    midnight = datetime.combine(now.astimezone(ZONE).date(), time(0), ZONE)

    def h(hours: float) -> datetime:
        return now + timedelta(hours=hours)

    def d(days: float) -> datetime:
        return now + timedelta(days=days)

    ids: dict[str, str] = {}
    marks = {"deadline_no": 1, "due_soon_marked": 1}
    # fmt: off
    # Closed on time (5 h of 24), rated 5; resolved late (24 h of 12), rated 2.
    ids["c1"] = add_case(pool, "c1", "closed", d(-10), resolved_at=d(-10) + timedelta(hours=5),
                         closed_at=d(-9), due_at=d(-9), rating=5)
    ids["c2"] = add_case(pool, "c2", "resolved", d(-9), resolved_at=d(-8),
                         due_at=d(-9) + timedelta(hours=12), rating=2)
    # Closed without a due time, rated 4.
    ids["c3"] = add_case(pool, "c3", "closed", d(-5), resolved_at=d(-5) + timedelta(hours=2),
                         closed_at=d(-4), rating=4)
    # Overdue: in progress, 24 h past its deadline; assigned, 30 h past (more overdue).
    ids["c4"] = add_case(pool, "c4", "in_progress", d(-3), department_code=WATER, due_at=h(-24),
                         **marks, overdue_marked=1)
    ids["c5"] = add_case(pool, "c5", "assigned", d(-3), department_code=ROADS, due_at=h(-30),
                         **marks, overdue_marked=1)
    # Due soon: in 3 h; reopened after a rating of 2, overdue on its first deadline and due
    # soon on its second, in 1 h.
    ids["c6"] = add_case(pool, "c6", "in_progress", d(-1), department_code=WATER, due_at=h(3),
                         **marks)
    ids["c7"] = add_case(pool, "c7", "reopened", d(-6), department_code=ROADS, due_at=h(1),
                         deadline_no=2, due_soon_marked=2, overdue_marked=1, rating=2,
                         revisits=1)
    # Today (local): assigned, not yet due soon; a new submission; a rejected one.
    ids["c8"] = add_case(pool, "c8", "assigned", midnight + timedelta(seconds=1),
                         department_code=WATER, due_at=h(20), deadline_no=1)
    ids["c9"] = add_case(pool, "c9", "submitted", midnight + timedelta(seconds=2))
    ids["c10"] = add_case(pool, "c10", "rejected", midnight + timedelta(seconds=3))
    # A second before midnight (yesterday), resolved at once, on time, rated 3.
    ids["c11"] = add_case(pool, "c11", "closed", midnight - timedelta(seconds=1),
                          resolved_at=midnight - timedelta(seconds=1), closed_at=midnight,
                          due_at=midnight + timedelta(hours=1), rating=3)
    # Before the 30-day period: in none of its figures.
    ids["c12"] = add_case(pool, "c12", "closed", d(-31), resolved_at=d(-31) + timedelta(hours=1),
                          due_at=d(-31) + timedelta(hours=2), closed_at=d(-30.5), rating=1)
    # Resolved late, carrying an overdue mark: no longer active, so not on the board.
    ids["c13"] = add_case(pool, "c13", "resolved", d(-4), resolved_at=d(-3),
                          due_at=d(-3.5), **marks, overdue_marked=1)

    # Incidents. Overdue by 2 h and escalated; critical (4 h limit, due soon in its last
    # 48 min) due in 30 min; reported, unacknowledged; escalated on an earlier deadline,
    # reworked, due in 100 h; minor, due in 10 h; resolved awaiting verification (past
    # its due time, but no longer the department's); critical due in 2 h (not yet soon);
    # closed on time (resolved after 2 h of 4).
    ids["i1"] = add_incident(pool, "i1", "major", "dispatched", d(-1), due_at=h(-2),
                             escalation_level=1, dispatched_at=d(-1))
    ids["i2"] = add_incident(pool, "i2", "critical", "accepted", h(-3), due_at=h(0.5),
                             department_code=ROADS)
    ids["i3"] = add_incident(pool, "i3", "major", "reported", h(-1), acknowledged=False)
    ids["i4"] = add_incident(pool, "i4", "warning", "dispatched", d(-8), due_at=h(100),
                             escalation_level=1, reworks=1, department_code=ROADS)
    ids["i5"] = add_incident(pool, "i5", "minor", "dispatched", d(-2), due_at=h(10))
    ids["i6"] = add_incident(pool, "i6", "major", "resolved", d(-2), due_at=h(-5),
                             resolved_at=h(-6))
    ids["i7"] = add_incident(pool, "i7", "critical", "dispatched", h(-2), due_at=h(2))
    ids["i8"] = add_incident(pool, "i8", "minor", "closed", d(-6),
                             resolved_at=d(-6) + timedelta(hours=2),
                             closed_at=d(-6) + timedelta(hours=3),
                             due_at=d(-6) + timedelta(hours=4))
    # fmt: on
    for i, state in enumerate(["normal"] * 3 + ["alarm"] * 2 + ["silent"]):
        add_sensor(pool, f"s{i}", state)
    return Data(now, midnight, ids)


# -- fixture --------------------------------------------------------------------------------


@dataclass
class OpsApi(Api):
    """The served app with its hand-made rows, its city and incident desk."""

    data: Data
    city: CityApp
    desk: IncidentDesk

    def headers(self, role: str) -> dict[str, str]:
        """A token: ``department`` is the water department, ``other`` the roads one."""
        if role == "department":
            return bearer(self.settings, "department", "crew", department=WATER)
        if role == "other":
            return bearer(self.settings, "department", "other", department=ROADS)
        if role == "citizen":
            return bearer(self.settings, "citizen", str(uuid.uuid4()))
        return super().headers(role)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpsApi]:
    """The app over a seeded database with the hand-made read-model rows."""
    with fresh_settings(tmp_path_factory.mktemp("city") / "city", map_tile_url=TILES) as settings:
        seed(settings)
        pool = make_pool(settings, max_size=2)
        city = city_app(settings, pool_size=2)
        try:
            data = add_rows(pool)
            with served(settings) as client:
                yield OpsApi(settings, client, data, city, incident_desk(settings, city))
        finally:
            city.close()
            pool.close()


# -- KPIs -----------------------------------------------------------------------------------


def test_kpis_worked_out_by_hand(api: OpsApi) -> None:
    r = api.get("/api/v1/ops/kpis")
    assert r.status_code == 200, r.text
    k = r.json()
    assert k["timezone"] == "Asia/Shanghai"
    as_of = datetime.fromisoformat(k["as_of"])
    assert api.data.now <= as_of < api.data.now + timedelta(minutes=5)
    # Open: i1-i7 (i8 closed); unacknowledged: i3.
    assert k["incidents"] == {
        "open": 7,
        "by_severity": {"warning": 1, "minor": 1, "major": 3, "critical": 2},
        "unacknowledged": 1,
    }
    assert k["sensors"] == {"total": 6, "normal": 3, "alarm": 2, "silent": 1}
    # Today: c8, c9, c10 (rejected ones were submitted too); c11 a second too early.
    # Open: c4-c9. Overdue: c4, c5 (c13 is resolved).
    assert k["cases"] == {
        "today": 3,
        "today_since": api.data.midnight.isoformat(),
        "open": 6,
        "overdue": 2,
    }
    perf = k["performance"]
    assert perf["days"] == 30
    assert datetime.fromisoformat(perf["end"]) - datetime.fromisoformat(perf["start"]) == (
        timedelta(days=30)
    )
    # The period's work: cases c1-c9, c11, c13 (c10 rejected, c12 before it) and
    # incidents i1-i8: 11 + 8 = 19.
    # Closed: c1, c2, c3, c11, c13 and i8 = 6; with a due time: all but c3 = 5;
    # on time: c1, c11, i8 = 3 -> 0.6.
    # Rated: c1 5, c2 2, c3 4, c7 2, c11 3 -> mean 3.2; bad (<= 2): c2, c7 -> 0.4.
    assert {k: v for k, v in perf.items() if k not in ("start", "end", "days")} == {
        "volume": 19,
        "closed": 6,
        "closed_with_due": 5,
        "closed_on_time": 3,
        "on_time_rate": 0.6,
        "rated": 5,
        "mean_rating": 3.2,
        "bad_ratings": 2,
        "bad_rating_share": 0.4,
        # Satisfied (4-5): c1, c3 -> 0.4, the index 100 x 0.4 (the only rate there).
        **NOTHING_TO_RATE,
        "satisfied": 2,
        "satisfaction_rate": 0.4,
        "three_rates_index": 40.0,
    }


def test_kpi_period_is_a_parameter(api: OpsApi) -> None:
    # The last 5 days, up to the request (a little after the rows were made): c3 and c7
    # are out, submitted 5 and 6 days before the rows. In: c4-c6, c8, c9, c11, c13 (7)
    # and i1-i3, i5-i7 (6).
    perf = api.get("/api/v1/ops/kpis", period_days=5).json()["performance"]
    assert perf["days"] == 5
    assert perf["volume"] == 13
    # Closed: c11, c13, both with a due time; on time: c11 -> 0.5. Rated: c11, 3.
    assert (perf["closed"], perf["closed_on_time"], perf["on_time_rate"]) == (2, 1, 0.5)
    assert (perf["rated"], perf["mean_rating"], perf["bad_rating_share"]) == (1, 3.0, 0.0)


# -- the SLA board ------------------------------------------------------------------------


def ids_of(items: list[dict[str, Any]], key: str) -> list[str]:
    return [item[key] for item in items]


def test_sla_board_most_urgent_first(api: OpsApi) -> None:
    ids = api.data.ids
    r = api.get("/api/v1/ops/sla")
    assert r.status_code == 200, r.text
    board = r.json()
    cases = board["cases"]
    assert ids_of(cases["overdue"]["items"], "case_id") == [ids["c5"], ids["c4"]]
    assert cases["overdue"]["total"] == 2
    assert all(c["overdue"] for c in cases["overdue"]["items"])
    assert ids_of(cases["due_soon"]["items"], "case_id") == [ids["c7"], ids["c6"]]
    assert cases["due_soon"]["total"] == 2
    assert all(c["due_soon"] and not c["overdue"] for c in cases["due_soon"]["items"])
    # Summaries as the case lists give them: no personal data.
    assert "citizen_id" not in cases["overdue"]["items"][0]
    # Incidents being worked: i1 overdue (escalated), i2 due soon, i4 escalated only;
    # not i3 (reported), i5 and i7 (time enough), i6 (resolved), i8 (closed).
    incidents = board["incidents"]
    assert ids_of(incidents["items"], "incident_id") == [ids["i1"], ids["i2"], ids["i4"]]
    assert {k: incidents[k] for k in ("total", "overdue", "due_soon", "escalated")} == {
        "total": 3,
        "overdue": 1,
        "due_soon": 1,
        "escalated": 2,
    }
    i1, i2, i4 = incidents["items"]
    assert (i1["overdue"], i1["due_soon"], i1["escalation_level"]) == (True, False, 1)
    assert -2 * 3600 - 300 < i1["seconds_left"] <= -2 * 3600
    assert (i2["overdue"], i2["due_soon"]) == (False, True)
    assert (i4["overdue"], i4["due_soon"], i4["reworks"]) == (False, False, 1)


def test_sla_board_limits_keep_the_counts(api: OpsApi) -> None:
    ids = api.data.ids
    board = api.get("/api/v1/ops/sla", limit=1).json()
    assert board["limit"] == 1
    assert ids_of(board["cases"]["overdue"]["items"], "case_id") == [ids["c5"]]
    assert board["cases"]["overdue"]["total"] == 2
    assert ids_of(board["cases"]["due_soon"]["items"], "case_id") == [ids["c7"]]
    assert board["cases"]["due_soon"]["total"] == 2
    assert ids_of(board["incidents"]["items"], "incident_id") == [ids["i1"]]
    assert board["incidents"]["total"] == 3


def test_sla_board_of_one_department(api: OpsApi) -> None:
    ids = api.data.ids
    expected = ([ids["c4"]], [ids["c6"]], [ids["i1"]])
    for role, params in (("dispatcher", {"department_code": WATER}), ("department", {})):
        board = api.get("/api/v1/ops/sla", role=role, **params).json()
        assert board["department_code"] == WATER
        got = (
            ids_of(board["cases"]["overdue"]["items"], "case_id"),
            ids_of(board["cases"]["due_soon"]["items"], "case_id"),
            ids_of(board["incidents"]["items"], "incident_id"),
        )
        assert got == expected, role
    # A department sees its own board only.
    r = api.get("/api/v1/ops/sla", role="department", department_code=ROADS)
    assert r.status_code == 403


# -- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "incidents", "cases"),
    [
        ("operator", list(ALL_ACTIONS), ["submit"]),
        # The dispatcher's and the department's, command by command: tests/unit/test_ops_actions.py.
        ("dispatcher", list(ALL_ACTIONS), role_actions("dispatcher")["cases"]),
        ("department", ["accept", "resolve"], role_actions("department")["cases"]),
        ("auditor", [], []),
    ],
)
def test_config_per_role(api: OpsApi, role: str, incidents: list[str], cases: list[str]) -> None:
    r = api.get("/api/v1/ops/config", role=role)
    assert r.status_code == 200, r.text
    cfg = r.json()
    assert cfg["tile_url"] == TILES
    assert cfg["languages"] == ["zh", "en"]
    assert cfg["timezone"] == "Asia/Shanghai"
    assert cfg["user"]["role"] == role
    assert cfg["user"]["department"] == (WATER if role == "department" else None)
    assert cfg["actions"] == {"incidents": incidents, "cases": cases}
    assert cfg["own_department_only"] is (role == "department")
    west, south, east, north = city_layers(api.settings).districts.total_bounds
    assert cfg["bounds"] == pytest.approx([west, south, east, north])
    assert cfg["center"] == pytest.approx([(west + east) / 2, (south + north) / 2])


# -- actions vs the real routes -------------------------------------------------------------


def incident_in(api: OpsApi, stage: str, acknowledged: bool = True) -> uuid.UUID:
    """A new incident (an operator's, of the water department), taken to ``stage``."""
    incident_id = uuid.uuid4()
    api.city.save(operator_incident(incident_id, "test", "major", WATER))
    if acknowledged:
        api.city.acknowledge_incident(incident_id, "test", "seen", "t")
    steps = ("reported", "dispatched", "accepted", "resolved", "closed")
    reached = steps.index(stage)
    if reached >= 1:
        api.desk.dispatch(incident_id, None, "test", "go", "t")
    if reached >= 2:
        api.desk.accept(incident_id, "test", "t")
    if reached >= 3:
        api.desk.resolve(incident_id, "fixed", "test", "t")
    if reached >= 4:
        api.desk.verify(incident_id, True, "ok", "test", "t")
    return incident_id


BODIES: dict[str, dict[str, Any] | None] = {
    "acknowledge": {"reason": "seen"},
    "dispatch": {"reason": "go"},
    "accept": None,
    "resolve": {"feedback": "fixed"},
    "verify": {"passed": True, "note": "ok"},
}
# (stage, acknowledged) -> what an operator or dispatcher is offered.
STAGES = {
    ("reported", False): ["acknowledge", "dispatch"],
    ("reported", True): ["dispatch"],
    ("dispatched", False): ["acknowledge", "accept", "resolve"],
    ("accepted", True): ["resolve"],
    ("resolved", True): ["verify"],
    ("closed", True): [],
}
CALLERS = ("operator", "dispatcher", "department", "other", "auditor")


def offered(api: OpsApi, role: str, incident_id: uuid.UUID) -> dict[str, Any]:
    r = api.get(f"/api/v1/ops/actions/incidents/{incident_id}", role=role)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def post(api: OpsApi, role: str, incident_id: uuid.UUID, action: str) -> Any:
    url = f"/api/v1/incidents/{incident_id}/{action}"
    return api.client.post(url, json=BODIES[action], headers=api.headers(role))


@pytest.mark.parametrize(("stage", "acknowledged"), list(STAGES))
def test_offered_actions_are_what_the_routes_accept(
    api: OpsApi, stage: str, acknowledged: bool
) -> None:
    """Each offered action succeeds on the real route (on a fresh incident in that
    stage); each action not offered is refused, and changes nothing."""
    shared = incident_in(api, stage, acknowledged)
    version = api.city.get_incident(shared).version
    seen: dict[str, list[str]] = {}
    for role in CALLERS:
        answer = offered(api, role, shared)
        assert answer["stage"] == stage
        assert answer["acknowledged"] is acknowledged
        actions = [a["action"] for a in answer["actions"]]
        assert all(
            a["path"] == f"/api/v1/incidents/{shared}/{a['action']}" for a in answer["actions"]
        )
        seen[role] = actions
        for action in ALL_ACTIONS:
            if action in actions:
                fresh = incident_in(api, stage, acknowledged)
                r = post(api, role, fresh, action)
                assert r.status_code == 200, (role, stage, action, r.text)
            else:
                r = post(api, role, shared, action)
                assert r.status_code in (403, 409), (role, stage, action, r.text)
        assert api.city.get_incident(shared).version == version
    # The table itself (the unit tests hold all of it).
    assert seen["operator"] == seen["dispatcher"] == STAGES[stage, acknowledged]
    own = [a for a in STAGES[stage, acknowledged] if a in ("accept", "resolve")]
    assert seen["department"] == own
    assert seen["auditor"] == seen["other"] == []


def test_dispatch_of_an_incident_without_a_department_needs_one(api: OpsApi) -> None:
    incident_id = uuid.uuid4()
    api.city.save(operator_incident(incident_id, "nowhere", "minor", None))
    answer = offered(api, "dispatcher", incident_id)
    assert [a["action"] for a in answer["actions"]] == ["acknowledge", "dispatch"]
    assert answer["department_required"] is True
    assert post(api, "dispatcher", incident_id, "dispatch").status_code == 409
    r = api.client.post(
        f"/api/v1/incidents/{incident_id}/dispatch",
        json={"department_code": WATER},
        headers=api.headers("dispatcher"),
    )
    assert r.status_code == 200, r.text
    assert offered(api, "department", incident_id)["department_required"] is False


# -- refusals -------------------------------------------------------------------------------

PATHS = [
    "/api/v1/ops/kpis",
    "/api/v1/ops/sla",
    "/api/v1/ops/config",
    f"/api/v1/ops/actions/incidents/{uuid.UUID(int=1)}",
]


@pytest.mark.parametrize("path", PATHS)
def test_staff_only(api: OpsApi, path: str) -> None:
    assert api.get(path, role=None).status_code == 401
    for role in ("citizen", "gateway"):
        r = api.get(path, role=role)
        assert r.status_code == 403, (role, r.text)
        assert "may not" in r.json()["detail"]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/ops/kpis", {"period_days": 0}),
        ("/api/v1/ops/kpis", {"period_days": 367}),
        ("/api/v1/ops/kpis", {"period_days": "month"}),
        ("/api/v1/ops/sla", {"limit": 0}),
        ("/api/v1/ops/sla", {"limit": 201}),
        ("/api/v1/ops/sla", {"department_code": ""}),
        ("/api/v1/ops/actions/incidents/not-a-uuid", {}),
    ],
)
def test_bad_parameters_are_422(api: OpsApi, path: str, params: dict[str, Any]) -> None:
    r = api.get(path, **params)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


def test_unknown_incident_is_404(api: OpsApi) -> None:
    r = api.get(f"/api/v1/ops/actions/incidents/{uuid.uuid4()}")
    assert r.status_code == 404
    assert "unknown incident" in r.json()["detail"]
