"""Access control over HTTP: every role against every endpoint group, then object-level rules.

The expected matrix is written out from api/auth.py's rules (and api/app.py, api/cases.py,
api/open311.py, api/telemetry.py): no credentials is 401, a role the route does not allow
or someone else's object is 403. ``OK`` means the call got past access control: any
answer but 401/403 (a 404 or a 409 on purpose, so the matrix changes no state) and no 5xx.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient
from httpx import Response

from api.auth import ApiKeyVerifier, Unauthorized
from infra.apikeys import PgApiKeys
from tests.helpers.city import REQUESTS, World, served_city
from tests.helpers.waiting import wait_until
from tests.helpers.web import auth_header, served

pytestmark = pytest.mark.integration

OK = "ok"
ROLES = ("none", "operator", "dispatcher", "department", "auditor", "gateway", "citizen")

# fmt: off
#                           none  operator dispatcher department auditor gateway citizen
MATRIX: dict[str, tuple[Any, ...]] = {
    # Public: health probes and the Open311 reads.
    "health":               (OK,  OK,  OK,  OK,  OK,  OK,  OK),
    "open311_read":         (OK,  OK,  OK,  OK,  OK,  OK,  OK),
    # Open311 filing: a citizen, or staff filing for a caller.
    "open311_post":         (401, OK,  OK,  403, 403, 403, OK),
    # The management network's reads: staff only.
    "sensors_map_incidents": (401, OK, OK,  OK,  OK,  403, 403),
    "incident_acknowledge": (401, OK,  OK,  403, 403, 403, 403),
    # Service cases: staff read (departments their own), citizens their own.
    "cases_list":           (401, OK,  OK,  OK,  OK,  403, OK),
    "case_detail":          (401, OK,  OK,  OK,  OK,  403, OK),
    "case_submit":          (401, OK,  OK,  403, 403, 403, OK),
    "dispatcher_commands":  (401, 403, OK,  403, 403, 403, 403),
    "department_commands":  (401, 403, 403, OK,  403, 403, 403),
    "citizen_commands":     (401, 403, OK,  403, 403, 403, OK),
    "department_queue":     (401, OK,  OK,  OK,  OK,  403, 403),
    "personal_data_erase":  (401, 403, 403, 403, 403, 403, OK),
    # Gateways send telemetry, and only that.
    "telemetry":            (401, 403, 403, 403, 403, OK,  403),
    "auth_me":              (401, OK,  OK,  OK,  OK,  OK,  OK),
    # Pages: staff read their own (an auditor's list is empty); the paged acknowledge.
    "my_pages":             (401, OK,  OK,  OK,  OK,  403, 403),
    "page_acknowledge":     (401, OK,  OK,  OK,  403, 403, 403),
}
# fmt: on


@dataclass
class Ctx:
    """The module's city and one case: filed by ``citizen_id``, in ``department``'s hands."""

    world: World
    case_id: str
    department: str
    citizen_id: uuid.UUID
    device: str
    gateway: str

    @property
    def client(self) -> TestClient:
        return self.world.client

    def as_(self, role: str) -> dict[str, str]:
        w = self.world
        return {
            "none": {},
            "operator": w.headers("operator"),
            "dispatcher": w.headers("dispatcher"),
            "department": w.dept(self.department),
            "auditor": w.headers("auditor"),
            "gateway": w.headers("gateway", self.gateway),
            "citizen": w.citizen(self.citizen_id),
        }[role]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with served_city(tmp_path_factory.mktemp("city") / "city") as w:
        yield w


@pytest.fixture(scope="module")
def ctx(world: World) -> Ctx:
    citizen_id = uuid.uuid4()
    lon, lat = world.point("310101")
    created = world.client.post(
        "/api/v1/cases",
        json={
            "category": "flooding",
            "description": "a flooded crossing",
            "lon": lon,
            "lat": lat,
            "attributes": {"water_depth": "knee"},
        },
        headers=world.citizen(citizen_id),
    )
    assert created.status_code == 201, created.text
    case = created.json()
    assert case["department_code"] == "310101-water"
    # In progress: every command the matrix sends is then refused (409) or aimed at an
    # unknown case (404) for the roles that may send it; no state changes.
    started = world.client.post(
        f"/api/v1/cases/{case['case_id']}/start", json={}, headers=world.dept("310101-water")
    )
    assert started.status_code == 200, started.text
    sensors = world.layers.sensors
    device = sensors[sensors.sensor_type == "water_level"].iloc[0]
    world.sync()
    return Ctx(
        world=world,
        case_id=case["case_id"],
        department="310101-water",
        citizen_id=citizen_id,
        device=str(device.device_id),
        gateway=str(device.gateway_id),
    )


def _json(method: str, path: Callable[[Ctx], str], body: Any = None) -> Callable[..., Response]:
    def call(c: Ctx, headers: dict[str, str]) -> Response:
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None:
            kwargs["json"] = body() if callable(body) else body
        return c.client.request(method, path(c), **kwargs)

    return call


def _open311_post(c: Ctx, headers: dict[str, str]) -> Response:
    fields = {
        "service_code": "road_damage",
        "address_string": "No. 1 People's Square",
        "description": f"pothole {uuid.uuid4().hex[:8]}",
    }
    return c.client.post(REQUESTS, data=fields, headers=headers)


def _new_case() -> dict[str, Any]:
    return {
        "category": "road_damage",
        "address": "No. 2 People's Square",
        "description": f"pothole {uuid.uuid4().hex[:8]}",
    }


def _case(suffix: str = "") -> Callable[[Ctx], str]:
    return lambda c: f"/api/v1/cases/{c.case_id}{suffix}"


def _unknown_case(suffix: str) -> Callable[[Ctx], str]:
    return lambda c: f"/api/v1/cases/{uuid.uuid4()}{suffix}"


def _fixed(path: str) -> Callable[[Ctx], str]:
    return lambda c: path


ENDPOINTS: list[tuple[str, str, Callable[..., Response]]] = [
    ("health", "healthz", _json("GET", _fixed("/healthz"))),
    ("open311_read", "services", _json("GET", _fixed("/open311/v2/services.json"))),
    ("open311_read", "service", _json("GET", _fixed("/open311/v2/services/flooding.json"))),
    ("open311_read", "requests", _json("GET", _fixed(REQUESTS))),
    (
        "open311_read",
        "request",
        _json("GET", lambda c: f"/open311/v2/requests/{c.case_id}.json"),
    ),
    ("open311_post", "requests", _open311_post),
    ("sensors_map_incidents", "sensors", _json("GET", _fixed("/api/v1/sensors"))),
    (
        "sensors_map_incidents",
        "sensor",
        _json("GET", lambda c: f"/api/v1/sensors/{c.device}"),
    ),
    (
        "sensors_map_incidents",
        "map",
        _json("GET", _fixed("/api/v1/map/layers/districts")),
    ),
    ("sensors_map_incidents", "incidents", _json("GET", _fixed("/api/v1/incidents"))),
    (
        "incident_acknowledge",
        "acknowledge",
        _json("POST", lambda c: f"/api/v1/incidents/{uuid.uuid4()}/acknowledge", {}),
    ),
    ("cases_list", "cases", _json("GET", _fixed("/api/v1/cases"))),
    ("cases_list", "overdue", _json("GET", _fixed("/api/v1/cases/overdue"))),
    ("cases_list", "departments", _json("GET", _fixed("/api/v1/departments"))),
    ("case_detail", "case", _json("GET", _case())),
    ("case_submit", "submit", _json("POST", _fixed("/api/v1/cases"), _new_case)),
    (
        "dispatcher_commands",
        "reject",
        _json("POST", _case("/reject"), {"rejection": "out_of_scope"}),
    ),
    ("dispatcher_commands", "accept", _json("POST", _case("/accept"), {})),
    (
        "dispatcher_commands",
        "assign",
        _json("POST", _case("/assign"), {"department_code": "310101-roads"}),
    ),
    ("dispatcher_commands", "approve", _json("POST", _case("/extension/approve"), {})),
    ("dispatcher_commands", "refuse", _json("POST", _case("/extension/refuse"), {})),
    # Co-handling and disputes: the case's co-handler is added again, there is no
    # dispute to arbitrate, the pending parts are waived on an unknown case (409, 404).
    (
        "dispatcher_commands",
        "add_co_handler",
        _json("POST", _case("/co-handlers"), {"department_code": "310101-roads", "part": "x"}),
    ),
    (
        "dispatcher_commands",
        "waive",
        _json("POST", _unknown_case("/co-handling/waive"), {"reason": "x"}),
    ),
    ("dispatcher_commands", "uphold", _json("POST", _case("/dispute/uphold"), {})),
    (
        "dispatcher_commands",
        "reject_dispute",
        _json("POST", _case("/dispute/reject"), {"reason": "x"}),
    ),
    ("department_commands", "start", _json("POST", _case("/start"), {})),
    ("department_commands", "return", _json("POST", _case("/return"), {"reason": ""})),
    (
        "department_commands",
        "resolve",
        _json("POST", _unknown_case("/resolve"), {"reply": "done"}),
    ),
    (
        "department_commands",
        "extension",
        _json("POST", _unknown_case("/extension"), {"hours": 4, "reason": "parts"}),
    ),
    # The lead unit answering as a co-handler it is not (409); a dispute and a contact
    # on an unknown case (404).
    (
        "department_commands",
        "answer_co_handling",
        _json(
            "POST",
            _case("/co-handling/answer"),
            lambda: {"department_code": "310101-water", "feedback": "x"},
        ),
    ),
    ("department_commands", "dispute", _json("POST", _unknown_case("/dispute"), {"reason": "x"})),
    ("department_commands", "contact", _json("POST", _unknown_case("/contact"), {"note": "x"})),
    ("citizen_commands", "rate", _json("POST", _case("/rate"), {"rating": 5})),
    ("citizen_commands", "cancel", _json("POST", _unknown_case("/cancel"), {})),
    (
        "department_queue",
        "queue",
        _json("GET", lambda c: f"/api/v1/departments/{c.department}/queue"),
    ),
    (
        "department_queue",
        "co_handling",
        _json("GET", lambda c: f"/api/v1/departments/{c.department}/co-handling"),
    ),
    (
        "personal_data_erase",
        "erase",
        _json("DELETE", _fixed("/api/v1/citizens/me/personal-data")),
    ),
    (
        "telemetry",
        "telemetry",
        _json(
            "POST",
            lambda c: f"/api/v1/telemetry/{c.device}",
            {"metrics": {"water_level": 20.0, "battery": 90.0}},
        ),
    ),
    (
        "telemetry",
        "location",
        _json(
            "POST",
            lambda c: f"/api/v1/telemetry/{c.device}/location",
            {"lon": 121.4782, "lat": 31.2285, "coord_system": "gcj02"},
        ),
    ),
    ("auth_me", "me", _json("GET", _fixed("/api/v1/auth/me"))),
    ("my_pages", "pages", _json("GET", _fixed("/api/v1/me/pages"))),
    (
        "page_acknowledge",
        "acknowledge",
        _json("POST", lambda c: f"/api/v1/pages/{uuid.uuid4()}/acknowledge"),
    ),
]


def test_the_matrix_covers_every_group() -> None:
    assert {group for group, _, _ in ENDPOINTS} == set(MATRIX)
    assert all(len(row) == len(ROLES) for row in MATRIX.values())


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    ("group", "call"),
    [pytest.param(group, call, id=f"{group}-{name}") for group, name, call in ENDPOINTS],
)
def test_access_matrix(ctx: Ctx, group: str, call: Callable[..., Response], role: str) -> None:
    expected = MATRIX[group][ROLES.index(role)]
    response = call(ctx, ctx.as_(role))
    assert response.status_code < 500, response.text
    if expected == OK:
        assert response.status_code not in (401, 403), response.text
        assert response.json() != {"detail": "Not Found"}  # a route, not a typo
        return
    assert response.status_code == expected, response.text
    if expected == 401:
        assert response.headers.get("www-authenticate") == "Bearer"


def test_state_unchanged_by_the_matrix(ctx: Ctx) -> None:
    case = ctx.world.case(ctx.case_id)
    assert case["status"] == "in_progress"
    assert case["department_code"] == ctx.department


# -- object level: someone else's department, someone else's case ---------------------------


def test_another_department_gets_403_on_the_case_and_the_queue(ctx: Ctx) -> None:
    path = f"/api/v1/cases/{ctx.case_id}"
    for other in ("310104-water", "310101-lighting"):  # another district; same district
        them = ctx.world.dept(other)
        assert ctx.client.get(path, headers=them).status_code == 403
        for command, body in (("resolve", {"reply": "done"}), ("return", {"reason": "x"})):
            refused = ctx.client.post(f"{path}/{command}", json=body, headers=them)
            assert refused.status_code == 403, refused.text
        queue = f"/api/v1/departments/{ctx.department}/queue"
        assert ctx.client.get(queue, headers=them).status_code == 403
        listed = ctx.client.get(
            "/api/v1/cases", params={"department_code": ctx.department}, headers=them
        )
        assert listed.status_code == 403
        overdue = ctx.client.get(
            "/api/v1/cases/overdue", params={"department_code": ctx.department}, headers=them
        )
        assert overdue.status_code == 403
        own = ctx.client.get(f"/api/v1/departments/{other}/queue", headers=them)
        assert own.status_code == 200
        assert ctx.case_id not in {c["case_id"] for c in own.json()["cases"]}
        everything = ctx.client.get("/api/v1/cases", headers=them).json()["cases"]
        assert {c["department_code"] for c in everything} <= {other}
    mine = ctx.client.get("/api/v1/cases", headers=ctx.as_("department")).json()["cases"]
    assert ctx.case_id in {c["case_id"] for c in mine}
    assert ctx.world.case(ctx.case_id)["status"] == "in_progress"


def test_a_co_handler_reads_the_case_and_answers_but_does_not_lead(ctx: Ctx) -> None:
    path = f"/api/v1/cases/{ctx.case_id}"
    roads = ctx.world.dept("310101-roads")  # a co-handler of the flooding case
    assert ctx.client.get(path, headers=roads).status_code == 200
    for command, body in (
        ("resolve", {"reply": "done"}),
        ("return", {"reason": "x"}),
        ("dispute", {"reason": "x"}),
        ("contact", {"note": "x"}),
        ("extension", {"hours": 2, "reason": "x"}),
    ):
        refused = ctx.client.post(f"{path}/{command}", json=body, headers=roads)
        assert refused.status_code == 403, refused.text
    # Not for another unit's part.
    body = {"department_code": "310101-traffic", "feedback": "x"}
    refused = ctx.client.post(f"{path}/co-handling/answer", json=body, headers=roads)
    assert refused.status_code == 403, refused.text
    queue = ctx.client.get("/api/v1/departments/310101-roads/co-handling", headers=roads)
    assert ctx.case_id in {c["case_id"] for c in queue.json()["cases"]}
    assert ctx.world.case(ctx.case_id)["status"] == "in_progress"


def test_a_citizen_gets_403_on_someone_elses_case(ctx: Ctx) -> None:
    stranger = ctx.world.citizen(uuid.uuid4())
    path = f"/api/v1/cases/{ctx.case_id}"
    assert ctx.client.get(path, headers=stranger).status_code == 403
    for command, body in (("cancel", {}), ("rate", {"rating": 1})):
        refused = ctx.client.post(f"{path}/{command}", json=body, headers=stranger)
        assert refused.status_code == 403, refused.text
    assert ctx.client.get("/api/v1/cases", headers=stranger).json()["cases"] == []
    assert ctx.world.case(ctx.case_id)["status"] == "in_progress"
    # The owner sees it, and the public Open311 view is open to all.
    assert ctx.client.get(path, headers=ctx.as_("citizen")).status_code == 200
    mine = ctx.client.get("/api/v1/cases", headers=ctx.as_("citizen")).json()["cases"]
    assert ctx.case_id in {c["case_id"] for c in mine}
    assert ctx.client.get(f"/open311/v2/requests/{ctx.case_id}.json").status_code == 200


def test_a_citizen_token_must_carry_a_citizen_id(ctx: Ctx) -> None:
    nameless = ctx.world.headers("citizen", "not-a-uuid")
    for path in ("/api/v1/cases", "/api/v1/cases/overdue"):
        response = ctx.client.get(path, headers=nameless)
        assert response.status_code == 403, response.text
    assert ctx.client.get(f"/api/v1/cases/{ctx.case_id}", headers=nameless).status_code == 403


def test_an_open311_app_key_sees_the_cases_it_filed_only(ctx: Ctx) -> None:
    name = f"app-{uuid.uuid4().hex[:8]}"
    key = {"X-API-Key": PgApiKeys(ctx.world.pool).create(name, "citizen")}
    filed = _open311_post(ctx, key)
    assert filed.status_code == 201, filed.text
    [created] = filed.json()
    case_id = created["service_request_id"]
    ctx.world.sync()
    listed = ctx.client.get("/api/v1/cases", headers=key)
    assert listed.status_code == 200, listed.text
    assert [c["case_id"] for c in listed.json()["cases"]] == [case_id]
    assert ctx.client.get(f"/api/v1/cases/{case_id}", headers=key).status_code == 200
    assert ctx.client.get(f"/api/v1/cases/{ctx.case_id}", headers=key).status_code == 403
    # The key's name is no citizen id: it has no personal data to erase.
    assert ctx.client.delete("/api/v1/citizens/me/personal-data", headers=key).status_code == 403


def test_a_gateway_sends_for_its_own_devices_only(ctx: Ctx) -> None:
    own = ctx.client.post(
        f"/api/v1/telemetry/{ctx.device}",
        json={"metrics": {"water_level": 20.0}},
        headers=ctx.as_("gateway"),
    )
    assert own.status_code == 202, own.text
    other = ctx.client.post(
        f"/api/v1/telemetry/{ctx.device}",
        json={"metrics": {"water_level": 20.0}},
        headers=ctx.world.headers("gateway", "gw-elsewhere"),
    )
    assert other.status_code == 403, other.text
    assert "gw-elsewhere" in other.json()["detail"]


def test_a_gateway_says_where_its_device_is_in_gcj02_and_gets_it_back_in_wgs84(
    ctx: Ctx,
) -> None:
    route = f"/api/v1/telemetry/{ctx.device}/location"
    gateway = ctx.as_("gateway")
    # People's Square as AMap gives it, and as GPS does.
    moved = ctx.client.post(
        route, json={"lon": 121.478223, "lat": 31.228458, "coord_system": "gcj02"}, headers=gateway
    )
    assert moved.status_code == 202, moved.text
    assert moved.json()["lon"] == pytest.approx(121.4737, abs=1e-4)
    assert moved.json()["lat"] == pytest.approx(31.2304, abs=1e-4)
    for body, reason in (
        ({"lon": 121.47, "lat": 31.23, "coord_system": "mars"}, "unknown_coord_system"),
        ({"lon": 121.47, "lat": 95.0}, "bad_location"),
        ({"lon": 121.47, "lat": 31.23, "crs": "gcj02"}, "bad_location"),
    ):
        refused = ctx.client.post(route, json=body, headers=gateway)
        assert refused.status_code == 422, refused.text
        assert refused.json()["reason"] == reason
    other = ctx.client.post(
        route, json={"lon": 121.47, "lat": 31.23}, headers=ctx.world.headers("gateway", "gw-x")
    )
    assert other.status_code == 403, other.text


# -- credentials that are not (or no longer) valid -------------------------------------------


def _claims(ctx: Ctx, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "someone",
        "role": "operator",
        "iss": ctx.world.settings.jwt_issuer,
        "aud": ctx.world.settings.jwt_audience,
        "iat": now,
        "exp": now + 600,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _signed(ctx: Ctx, secret: str | None = None, **changes: Any) -> str:
    key = secret or ctx.world.settings.jwt_secret.get_secret_value()
    return jwt.encode(_claims(ctx, **changes), key, algorithm="HS256")


BAD_TOKENS: list[tuple[str, Callable[[Ctx], str], str]] = [
    (
        "expired",
        lambda c: _signed(c, iat=int(time.time()) - 700, exp=int(time.time()) - 60),
        "expired",
    ),
    ("other_secret", lambda c: _signed(c, secret="another-secret-of-32-characters!!"), "invalid"),
    ("other_audience", lambda c: _signed(c, aud="someone-else"), "invalid"),
    ("other_issuer", lambda c: _signed(c, iss="someone-else"), "invalid"),
    ("no_expiry", lambda c: _signed(c, exp=None), "invalid"),
    ("unknown_role", lambda c: _signed(c, role="mayor"), "role"),
    ("no_role", lambda c: _signed(c, role=None), "role"),
    ("department_without_dept", lambda c: _signed(c, role="department"), "department"),
    ("unsigned", lambda c: jwt.encode(_claims(c), "", algorithm="none"), "invalid"),
    ("garbage", lambda c: "not-a-token", "invalid"),
]


@pytest.mark.parametrize(
    ("token", "message"),
    [pytest.param(token, message, id=name) for name, token, message in BAD_TOKENS],
)
def test_invalid_tokens_get_401(ctx: Ctx, token: Callable[[Ctx], str], message: str) -> None:
    headers = auth_header(token(ctx))
    for path in ("/api/v1/auth/me", f"/api/v1/cases/{ctx.case_id}", "/api/v1/sensors"):
        response = ctx.client.get(path, headers=headers)
        assert response.status_code == 401, (path, response.text)
        assert message in response.json()["detail"]
        assert response.headers["www-authenticate"] == "Bearer"
    filed = _open311_post(ctx, headers)
    assert filed.status_code == 401
    assert filed.json()[0]["code"] == 401
    # A valid token is let through, to show the 401s are about the token.
    fine = ctx.client.get("/api/v1/auth/me", headers=auth_header(_signed(ctx)))
    assert fine.status_code == 200


def test_api_keys_and_their_revocation(ctx: Ctx) -> None:
    keys = PgApiKeys(ctx.world.pool)
    name = f"ops-{uuid.uuid4().hex[:8]}"
    key = keys.create(name, "operator")
    me = ctx.client.get("/api/v1/auth/me", headers={"X-API-Key": key})
    assert me.status_code == 200, me.text
    assert me.json() == {
        "subject": name,
        "role": "operator",
        "department": None,
        "via": "api_key",
        "actor": f"operator:{name}",
    }
    assert ctx.client.get("/api/v1/auth/me", params={"api_key": key}).status_code == 200
    key_id = key.split("_")[1]
    for wrong in ("cok_nothing", f"cok_{key_id}_not-the-secret", f"cok_000000000000_{'x' * 43}"):
        response = ctx.client.get("/api/v1/auth/me", headers={"X-API-Key": wrong})
        assert response.status_code == 401, wrong

    assert keys.revoke(name) == 1
    with pytest.raises(Unauthorized):
        ApiKeyVerifier(keys.lookup).verify(key)
    # The running app had the key in its cache (30 s): the revocation is pushed to it.
    assert ctx.world.client.app.state.container.api_keys.ttl >= 30
    wait_until(
        lambda: ctx.client.get("/api/v1/auth/me", headers={"X-API-Key": key}).status_code == 401,
        10,
        "the running app to refuse the revoked key",
        interval=0.05,
    )
    # A fresh app refuses it at once.
    with served(ctx.world.settings) as fresh:
        revoked = fresh.get("/api/v1/auth/me", headers={"X-API-Key": key})
        assert revoked.status_code == 401
        assert "revoked" in revoked.json()["detail"]
        filed = fresh.post(
            REQUESTS,
            data={"service_code": "road_damage", "address_string": "x", "api_key": key},
        )
        assert filed.status_code == 401
        assert filed.json()[0]["code"] == 401
