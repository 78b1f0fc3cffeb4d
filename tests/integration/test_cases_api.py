"""Service cases over HTTP on the real services: Open311, dispatch, workflow, personal data.

One seeded database, app and projector serve the whole module (``served_city``); every
test makes its own cases at its own places, so tests do not see each other's cases as
possible duplicates. List endpoints read the projected read model: ``World.sync`` waits
until the projector has caught up with the event log.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import orjson
import psycopg
import pytest
import shapely
from httpx import Response

from cityops.bootstrap import city_app, rebuild_projections
from core.case import ACTIVE, ServiceCase
from core.case.categories import load_categories
from core.personal import ERASED_VIEW
from gis.china import from_wgs84
from gis.crs import distance_m
from infra.apikeys import API_KEY_PREFIX, PgApiKeys
from tests.helpers.city import REQUESTS, World, served_city

pytestmark = pytest.mark.integration

PHONE, NAME, EMAIL = "13812345678", "张三", "zhang.san@example.com"
OUTSIDE_THE_CITY = (100.0, 10.0)  # lon, lat
CATEGORIES = load_categories()


# -- the module's city ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with served_city(tmp_path_factory.mktemp("city") / "city") as w:
        yield w


# -- helpers --------------------------------------------------------------------------------


def tag() -> str:
    return uuid.uuid4().hex[:8]


def flooding(lonlat: tuple[float, float], depth: str = "knee") -> dict[str, str]:
    lon, lat = lonlat
    return {
        "service_code": "flooding",
        "lat": str(lat),
        "long": str(lon),
        "attribute[water_depth]": depth,
        "description": f"water across the street {tag()}",
    }


def request_at(code: str, lonlat: tuple[float, float]) -> dict[str, str]:
    lon, lat = lonlat
    return {
        "service_code": code,
        "lat": str(lat),
        "long": str(lon),
        "description": f"{code} here {tag()}",
    }


def assert_spec_error(response: Response, status: int) -> str:
    """GeoReport v2 errors: ``[{"code": status, "description": text}]``; the text."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, list), body
    assert len(body) == 1, body
    assert set(body[0]) == {"code", "description"}, body
    assert body[0]["code"] == status
    assert isinstance(body[0]["description"], str)
    assert body[0]["description"]
    assert "Traceback" not in response.text
    return str(body[0]["description"])


def assert_no_personal_data(text: str, *secrets: str) -> None:
    for secret in secrets or (PHONE, NAME, EMAIL):
        assert secret not in text
        assert json.dumps(secret)[1:-1] not in text  # nor \\uXXXX-escaped


def ids(rows: list[dict[str, Any]]) -> set[str]:
    return {r["service_request_id"] for r in rows}


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


# -- 1. Open311: services and filing --------------------------------------------------------


def test_services_and_the_flooding_definition(world: World) -> None:
    services = world.client.get("/open311/v2/services.json")
    assert services.status_code == 200
    listed = {s["service_code"]: s for s in services.json()}
    assert len(listed) >= 20
    assert {"flooding", "road_damage", "streetlight_out", "illegal_parking"} <= set(listed)
    for s in listed.values():
        assert {"service_name", "description", "metadata", "type", "keywords", "group"} <= set(s)
    assert listed["flooding"]["metadata"] is True
    assert listed["manhole_cover_missing"]["metadata"] is False

    definition = world.client.get("/open311/v2/services/flooding.json").json()
    assert definition["service_code"] == "flooding"
    attributes = {a["code"]: a for a in definition["attributes"]}
    depth = attributes["water_depth"]
    assert depth["required"] is True
    assert depth["variable"] is True
    assert depth["datatype"] == "singlevaluelist"
    assert [v["key"] for v in depth["values"]] == ["ankle", "knee", "above_knee"]
    assert all(v["name"] for v in depth["values"])
    assert attributes["blocking_traffic"]["required"] is False
    assert [a["order"] for a in definition["attributes"]] == [1, 2]

    assert_spec_error(world.client.get("/open311/v2/services/volcano.json"), 404)


def test_filing_by_citizen_token_and_by_api_key(world: World) -> None:
    citizen = uuid.uuid4()
    here = world.point("310101")
    fields = {
        **flooding(here),
        "first_name": "张",
        "last_name": "三",
        "phone": PHONE,
        "email": EMAIL,
    }
    response = world.post311(fields, world.citizen(citizen))
    assert response.status_code == 201, response.text
    [created] = response.json()
    request_id = created["service_request_id"]
    uuid.UUID(request_id)
    assert created["service_notice"].startswith("expected by")

    # Public, immediate (from the aggregate), and without any personal data.
    one = world.client.get(f"/open311/v2/requests/{request_id}.json")
    assert one.status_code == 200
    assert_no_personal_data(one.text, PHONE, "张", "三", EMAIL, "zhang")
    [public] = one.json()
    assert public["service_request_id"] == request_id
    assert public["status"] == "open"
    assert public["service_code"] == "flooding"
    assert public["service_name"] == "Street flooding"
    assert public["description"] == fields["description"]
    assert public["agency_responsible"] == world.departments["310101-water"]
    assert (public["long"], public["lat"]) == here
    requested, expected = when(public["requested_datetime"]), when(public["expected_datetime"])
    assert requested.tzinfo is not None
    # flooding: 2 hours on the calendar clock.
    assert expected - requested == pytest.approx(timedelta(hours=2), abs=timedelta(seconds=5))

    detail = world.case(request_id)
    assert detail["channel"] == "open311"
    assert detail["attributes"] == {"water_depth": "knee"}
    assert detail["submitted_by"] == f"citizen:{citizen}"
    assert detail["contact"]["phone"] == PHONE  # the dispatcher sees it
    assert detail["contact"]["name"] == "张 三"

    # An Open311 app with an API key, sent as the spec's api_key form field.
    app_name = f"open311-app-{tag()}"
    key = PgApiKeys(world.pool).create(app_name, "citizen")
    by_key = world.post311({**flooding(world.point("310106"), "ankle"), "api_key": key})
    assert by_key.status_code == 201, by_key.text
    [created_by_key] = by_key.json()
    key_request = created_by_key["service_request_id"]
    assert world.public(key_request)["agency_responsible"] == world.departments["310106-water"]
    assert world.case(key_request)["submitted_by"] == f"citizen:{app_name}"
    # ... or in the X-API-Key header.
    by_header = world.post311(flooding(world.point("310106"), "ankle"), {"X-API-Key": key})
    assert by_header.status_code == 201, by_header.text
    # The key itself is never stored, in the log or elsewhere.
    with world.pool.connection() as conn:
        states = b"".join(bytes(r[0]) for r in conn.execute("SELECT state FROM city_events"))
    assert key.encode() not in states
    secret = key.removeprefix(API_KEY_PREFIX).partition("_")[2]  # the secret may hold "_"
    assert len(secret) >= 40
    assert secret.encode() not in states

    world.sync()
    rows = world.listed(service_request_id=f"{request_id},{key_request}")
    assert ids(rows) == {request_id, key_request}
    assert_no_personal_data(json.dumps(rows, ensure_ascii=False), PHONE, "张", "三", EMAIL)


def test_a_position_from_a_chinese_map_app_is_stored_as_wgs84(world: World) -> None:
    """Open311's lat/long with the ``coord_system`` extension: GCJ-02 (AMap) and BD-09
    (Baidu) are turned into WGS-84 before anything is recorded; WGS-84 is the default."""
    here = world.point("310101")
    for system in ("gcj02", "bd09"):
        lon, lat = from_wgs84(*here, system)
        assert distance_m(lon, lat, *here) > 300
        fields = {**flooding((lon, lat)), "coord_system": system}
        response = world.post311(fields, world.citizen(uuid.uuid4()))
        assert response.status_code == 201, response.text
        [created] = response.json()
        one = world.client.get(f"/open311/v2/requests/{created['service_request_id']}.json")
        [public] = one.json()
        assert distance_m(public["long"], public["lat"], *here) < 0.01
        assert public["agency_responsible"] == world.departments["310101-water"]
    refused = world.post311({**flooding(here), "coord_system": "mars"}, world.citizen(uuid.uuid4()))
    assert "coordinate system" in assert_spec_error(refused, 400)


def test_open311_list_filters_each_filter(world: World) -> None:
    owner = uuid.uuid4()
    me = world.citizen(owner)
    trees = [world.file(request_at("fallen_tree", world.point()), me) for _ in range(3)]
    bikes = world.file(request_at("shared_bikes", world.point()), me)
    hydrant = world.file(request_at("hydrant_damaged", world.point()), me)
    # Close the hydrant case: its co-handler answers, its department resolves, the
    # citizen rates it well.
    case = world.case(hydrant)
    department = case["department_code"]
    assert department.endswith("-water")
    for unit in case["co_handlers"]:
        body = {"department_code": unit, "feedback": "road reopened"}
        answered = world.command(hydrant, "co-handling/answer", world.dept(unit), body)
        assert answered.status_code == 200, answered.text
    resolved = world.command(hydrant, "resolve", world.dept(department), {"reply": "fixed"})
    assert resolved.status_code == 200, resolved.text
    rated = world.command(hydrant, "rate", me, {"rating": 5, "comment": "quick"})
    assert rated.status_code == 200, rated.text
    assert rated.json()["status"] == "closed"
    world.sync()

    assert ids(world.listed(service_request_id=f"{trees[0]}, {bikes}")) == {trees[0], bikes}
    assert ids(world.listed(service_request_id=hydrant)) == {hydrant}
    # service_request_id overrides the other filters.
    assert ids(world.listed(service_request_id=hydrant, status="open")) == {hydrant}

    only_trees = world.listed(service_code="fallen_tree")
    assert ids(only_trees) == set(trees)
    assert {r["service_code"] for r in only_trees} == {"fallen_tree"}
    assert ids(world.listed(service_code="fallen_tree,shared_bikes")) == {*trees, bikes}

    closed = world.listed(status="closed")
    assert hydrant in ids(closed)
    assert {r["status"] for r in closed} == {"closed"}
    assert not ids(closed) & {*trees, bikes}
    assert world.public(hydrant)["status"] == "closed"
    assert world.public(hydrant)["expected_datetime"] is None
    opened = world.listed(status="open")
    assert {*trees, bikes} <= ids(opened)
    assert hydrant not in ids(opened)
    assert {r["status"] for r in opened} == {"open"}
    assert ids(world.listed(status="open", service_code="hydrant_damaged")) == set()
    assert ids(world.listed(status="closed", service_code="hydrant_damaged")) == {hydrant}
    assert ids(world.listed(status="open,closed", service_code="hydrant_damaged")) == {hydrant}

    # Dates: inclusive bounds on the submission time.
    times = [world.public(t)["requested_datetime"] for t in trees]
    assert times == sorted(times)
    assert len(set(times)) == 3
    assert ids(world.listed(service_code="fallen_tree", start_date=times[1])) == set(trees[1:])
    assert ids(world.listed(service_code="fallen_tree", end_date=times[1])) == set(trees[:2])
    between = world.listed(service_code="fallen_tree", start_date=times[1], end_date=times[1])
    assert ids(between) == {trees[1]}
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert world.listed(service_code="fallen_tree", start_date=future) == []
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    assert world.listed(service_code="fallen_tree", end_date=past) == []

    # Pages, newest first.
    pages = [
        [
            r["service_request_id"]
            for r in world.listed(service_code="fallen_tree", page_size=2, page=p)
        ]
        for p in (1, 2, 3)
    ]
    assert pages == [[trees[2], trees[1]], [trees[0]], []]
    assert len(world.listed(page_size=1)) == 1


# -- 2. dispatch by polygon -----------------------------------------------------------------


def cell_point(world: World, prefix: str) -> tuple[float, float]:
    """A point inside the first grid cell whose code starts with ``prefix``."""
    cells = world.layers.grid[world.layers.grid.grid_code.str.startswith(prefix)]
    p = cells.geometry.iloc[0].representative_point()
    return round(p.x, 7), round(p.y, 7)


def test_dispatch_by_the_responsibility_catalogue(world: World) -> None:
    """core/case/catalogue.yaml first: flooding anywhere has a lead and two co-handlers;
    dumping in the Bund's grid range goes to Huangpu's one unit, elsewhere by district."""
    flood = world.case(world.file(flooding(world.point("310104")), world.headers("operator")))
    assert flood["status"] == "assigned"
    assert flood["department_code"] == "310104-water"
    dispatch = flood["dispatch"]
    assert {k: dispatch[k] for k in ("rule", "catalogue_entry", "lead", "co_handlers")} == {
        "rule": "catalogue",
        "catalogue_entry": "drainage-flooding",
        "lead": "310104-water",
        "co_handlers": ["310104-roads", "310104-traffic"],
    }
    assert dispatch["catalogue_version"] == 2
    assert "排水" in dispatch["basis"]
    assigned = flood["timeline"][-1]
    assert assigned["event"] == "CaseAssigned"
    assert assigned["decision"]["catalogue_entry"] == "drainage-flooding"

    bund = world.case(
        world.file(
            request_at("illegal_dumping", cell_point(world, "310101001")), world.headers("operator")
        )
    )
    assert bund["grid_code"].startswith("310101001")
    assert bund["department_code"] == "310101-urban_management"
    assert bund["dispatch"]["catalogue_entry"] == "bund-waterfront"
    assert bund["dispatch"]["co_handlers"] == ["310101-sanitation"]
    other = world.case(
        world.file(request_at("illegal_dumping", world.point("310105")), world.headers("operator"))
    )
    assert other["department_code"] == "310105-urban_management"
    assert other["dispatch"]["catalogue_entry"] == "illegal-dumping"


@pytest.mark.parametrize(
    ("district", "code"),
    [
        # Categories the responsibility catalogue names no unit for (core/case/catalogue.yaml).
        ("310101", "streetlight_damaged"),
        ("310104", "traffic_signal_fault"),
        ("310105", "streetlight_out"),
        ("310106", "overflowing_bin"),
        ("310107", "illegal_parking"),
        ("310109", "noise_social"),
    ],
)
def test_dispatch_by_jurisdiction_polygon(world: World, district: str, code: str) -> None:
    here = world.point(district)
    assert world.districts[district].contains(shapely.Point(*here))
    request_id = world.file(request_at(code, here), world.headers("operator"))

    department = f"{district}-{CATEGORIES.get(code).department_type}"
    case = world.case(request_id)
    assert case["status"] == "assigned"
    assert case["department_code"] == department
    assert case["district_code"] == district
    cell = world.layers.grid[world.layers.grid.grid_code == case["grid_code"]]
    assert len(cell) == 1
    assert cell.district_code.iloc[0] == district
    assert cell.geometry.iloc[0].covers(shapely.Point(*here))
    dispatch = case["dispatch"]
    assert dispatch["rule"] == "jurisdiction_polygon"
    assert dispatch["jurisdiction"] == department
    assert dispatch["by"] == "policy"
    assert dispatch["department_type"] == CATEGORIES.get(code).department_type
    assert dispatch["time_limit_h"] == CATEGORIES.get(code).time_limit_h

    assert [e["event"] for e in case["timeline"]] == [
        "CaseSubmitted",
        "CaseAccepted",
        "CaseAssigned",
    ]
    assigned = case["timeline"][-1]
    assert assigned["decision"]["rule"] == "jurisdiction_polygon"
    assert assigned["department_code"] == department
    assert assigned["actor"] == "system:intake-policy"
    assert world.public(request_id)["agency_responsible"] == world.departments[department]


def test_a_place_outside_the_city_is_rejected(world: World) -> None:
    request_id = world.file(request_at("road_damage", OUTSIDE_THE_CITY), world.headers("operator"))
    case = world.case(request_id)
    assert case["status"] == "rejected"
    assert case["rejection"] == "not_our_city"
    assert case["department_code"] is None
    assert [e["event"] for e in case["timeline"]] == ["CaseSubmitted", "CaseRejected"]
    public = world.public(request_id)
    assert public["status"] == "closed"
    assert "outside" in public["status_notes"]
    assert public["expected_datetime"] is None
    world.sync()
    assert ids(world.listed(service_request_id=request_id, status="closed")) == {request_id}
    assert [r["status"] for r in world.listed(service_request_id=request_id)] == ["closed"]


# -- 3. bad input ---------------------------------------------------------------------------


def _json_post(w: World, body: bytes) -> Response:
    headers = {**w.citizen(uuid.uuid4()), "content-type": "application/json"}
    return w.client.post(REQUESTS, content=body, headers=headers)


def _as_citizen(w: World, change: Callable[[dict[str, str]], dict[str, str]]) -> Response:
    return w.post311(change(flooding(w.centre())), w.citizen(uuid.uuid4()))


def _without(*names: str) -> Callable[[dict[str, str]], dict[str, str]]:
    return lambda f: {k: v for k, v in f.items() if k not in names}


def _with(values: dict[str, str]) -> Callable[[dict[str, str]], dict[str, str]]:
    return lambda f: {**f, **values}


BAD_POSTS: list[tuple[str, Callable[[World], Response], int, str]] = [
    ("lat_out_of_range", lambda w: _as_citizen(w, _with({"lat": "95"})), 400, "lat must be"),
    ("lat_not_finite", lambda w: _as_citizen(w, _with({"lat": "nan"})), 400, "lat must be"),
    ("long_not_a_number", lambda w: _as_citizen(w, _with({"long": "east"})), 400, "long must be"),
    ("lat_without_long", lambda w: _as_citizen(w, _without("long")), 400, "both lat and long"),
    (
        "no_location",
        lambda w: _as_citizen(w, _without("lat", "long")),
        400,
        "location is required",
    ),
    (
        "unknown_service_code",
        lambda w: _as_citizen(w, _with({"service_code": "volcano"})),
        400,
        "volcano",
    ),
    (
        "no_service_code",
        lambda w: _as_citizen(w, _without("service_code")),
        400,
        "service_code",
    ),
    (
        "missing_required_attribute",
        lambda w: _as_citizen(w, _without("attribute[water_depth]")),
        400,
        "water_depth is required",
    ),
    (
        "invalid_attribute_value",
        lambda w: _as_citizen(w, _with({"attribute[water_depth]": "waist"})),
        400,
        "water_depth",
    ),
    (
        "unknown_attribute",
        lambda w: _as_citizen(w, _with({"attribute[colour]": "red"})),
        400,
        "colour",
    ),
    (
        "description_too_long",
        lambda w: _as_citizen(w, _with({"description": "x" * 4_001})),
        400,
        "description",
    ),
    (
        "body_too_large",
        lambda w: _as_citizen(w, _with({"description": "x" * 70_000})),
        413,
        "larger than",
    ),
    ("invalid_phone", lambda w: _as_citizen(w, _with({"phone": "call me"})), 400, "phone"),
    ("invalid_email", lambda w: _as_citizen(w, _with({"email": "zhang@"})), 400, "email"),
    (
        "service_code_as_a_file",
        lambda w: w.client.post(
            REQUESTS,
            data=_without("service_code")(flooding(w.centre())),
            files={"service_code": ("code.txt", b"flooding", "text/plain")},
            headers=w.citizen(uuid.uuid4()),
        ),
        400,
        "service_code must be text",
    ),
    ("malformed_json", lambda w: _json_post(w, b'{"service_code": "flooding",'), 400, "JSON"),
    ("json_not_an_object", lambda w: _json_post(w, b'["flooding"]'), 400, "object"),
    (
        "unsupported_content_type",
        lambda w: w.client.post(
            REQUESTS,
            content=b"service_code=flooding",
            headers={**w.citizen(uuid.uuid4()), "content-type": "text/plain"},
        ),
        415,
        "form-urlencoded",
    ),
    ("no_credentials", lambda w: w.post311(flooding(w.centre())), 401, "required"),
    (
        "invalid_token",
        lambda w: w.post311(flooding(w.centre()), {"Authorization": "Bearer not.a.jwt"}),
        401,
        "invalid token",
    ),
    (
        "unknown_api_key",
        lambda w: w.post311({**flooding(w.centre()), "api_key": "cok_0000_nope"}),
        401,
        "API key",
    ),
    (
        "role_may_not_file",
        lambda w: w.post311(flooding(w.centre()), w.headers("auditor")),
        403,
        "auditor",
    ),
    (
        "citizen_token_without_citizen_id",
        lambda w: w.post311(flooding(w.centre()), w.headers("citizen", "not-a-uuid")),
        403,
        "citizen id",
    ),
]


@pytest.mark.parametrize(
    ("post", "status", "message"),
    [pytest.param(post, status, message, id=name) for name, post, status, message in BAD_POSTS],
)
def test_bad_open311_posts_store_nothing(
    world: World, post: Callable[[World], Response], status: int, message: str
) -> None:
    world.sync()
    before = (
        world.cases_in_store(),
        world.cases_in_read_model(),
        world.scalar("SELECT count(*) FROM citizen_keys"),
    )
    description = assert_spec_error(post(world), status)
    assert message in description
    world.sync()
    after = (
        world.cases_in_store(),
        world.cases_in_read_model(),
        world.scalar("SELECT count(*) FROM citizen_keys"),
    )
    assert after == before


def test_multipart_with_a_media_file_is_accepted(world: World) -> None:
    """The spec lets a request carry its photo as a multipart ``media`` part."""
    response = world.client.post(
        REQUESTS,
        data=flooding(world.point()),
        files={"media": ("street.jpg", b"\xff\xd8\xff\xe0 not really a photo", "image/jpeg")},
        headers=world.citizen(uuid.uuid4()),
    )
    assert response.status_code == 201, response.text
    [created] = response.json()
    assert world.public(created["service_request_id"])["status"] == "open"


def test_a_chunked_body_over_the_limit_is_refused(world: World) -> None:
    body = urlencode({**flooding(world.point()), "padding": "x" * 200_000}).encode()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 16_384):
            yield body[i : i + 16_384]

    response = world.client.post(
        REQUESTS,
        content=chunks(),
        headers={
            **world.citizen(uuid.uuid4()),
            "content-type": "application/x-www-form-urlencoded",
        },
    )
    assert "content-length" not in response.request.headers
    assert_spec_error(response, 413)


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        pytest.param(f"/open311/v2/requests/{uuid.uuid4()}.json", {}, 404, id="unknown_id"),
        pytest.param("/open311/v2/requests/not-a-uuid.json", {}, 404, id="malformed_id"),
        pytest.param(REQUESTS, {"start_date": "yesterday"}, 400, id="bad_start_date"),
        pytest.param(REQUESTS, {"end_date": "2026-13-40"}, 400, id="bad_end_date"),
        pytest.param(
            REQUESTS,
            {"start_date": "2026-02-01T00:00:00Z", "end_date": "2026-01-01T00:00:00Z"},
            400,
            id="start_after_end",
        ),
        pytest.param(REQUESTS, {"status": "pending"}, 400, id="bad_status"),
        pytest.param(REQUESTS, {"service_code": "volcano"}, 400, id="unknown_service_code"),
        pytest.param(REQUESTS, {"service_request_id": "1,2"}, 400, id="bad_request_ids"),
        pytest.param(REQUESTS, {"page_size": 0}, 400, id="page_size_zero"),
        pytest.param(REQUESTS, {"page": "first"}, 400, id="page_not_a_number"),
    ],
)
def test_bad_open311_reads(world: World, path: str, params: dict[str, Any], status: int) -> None:
    assert_spec_error(world.client.get(path, params=params), status)


def test_duplicate_submissions_make_one_case(world: World) -> None:
    owner = world.citizen(uuid.uuid4())
    fields = flooding(world.point())
    before = world.cases_in_store()
    first = world.file(fields, owner)
    again = world.post311(fields, owner)
    assert first in assert_spec_error(again, 409)
    assert world.cases_in_store() == before + 1
    # Another caller sending the same words is another report.
    other = world.file(fields, world.citizen(uuid.uuid4()))
    assert other != first
    assert world.cases_in_store() == before + 2

    # The same Idempotency-Key twice: one case, even if the retry's body differs.
    key = {"Idempotency-Key": f"retry-{tag()}"}
    keyed = world.file(flooding(world.point()), {**owner, **key})
    retry = world.post311(flooding(world.point()), {**owner, **key})
    assert keyed in assert_spec_error(retry, 409)
    assert world.cases_in_store() == before + 3
    # Keys are per caller.
    assert world.file(flooding(world.point()), {**world.citizen(uuid.uuid4()), **key}) != keyed
    assert world.cases_in_store() == before + 4


# -- 4. the own API's workflow --------------------------------------------------------------


def test_manual_dispatch_extension_resolution_and_a_bad_rating(world: World) -> None:
    owner_id = uuid.uuid4()
    owner = world.citizen(owner_id)
    dispatcher = world.headers("dispatcher", "disp-1")
    fields = {
        "service_code": "road_damage",
        "address_string": f"No. {tag()} Huaihai Road",
        "description": "a deep pothole in the bus lane",
    }
    case_id = world.file(fields, owner)
    waiting = world.case(case_id)
    assert waiting["status"] == "accepted"
    assert waiting["location"] is None
    assert waiting["department_code"] is None
    assert waiting["due_at"] is None
    assert waiting["dispatch"]["rule"] == "no_location"
    world.sync()
    pending = world.client.get(
        "/api/v1/cases", params={"awaiting_assignment": "true"}, headers=dispatcher
    ).json()["cases"]
    assert case_id in {c["case_id"] for c in pending}

    department = "310101-roads"
    assigned = world.command(case_id, "assign", dispatcher, {"department_code": department})
    assert assigned.status_code == 200, assigned.text
    case = assigned.json()
    assert case["status"] == "assigned"
    assert case["department_code"] == department
    assert case["dispatch"]["by"] == "manual"
    assert case["dispatch"]["rule"] == "dispatcher"
    first_due = when(case["due_at"])
    assert world.public(case_id)["agency_responsible"] == world.departments[department]
    unknown = world.command(case_id, "assign", dispatcher, {"department_code": "nowhere-roads"})
    assert unknown.status_code == 404

    staff = world.dept(department)
    started = world.command(case_id, "start", staff, {"reason": "crew on the way"})
    assert started.status_code == 200, started.text
    assert started.json()["status"] == "in_progress"
    asked = world.command(case_id, "extension", staff, {"hours": 8, "reason": "asphalt plant"})
    assert asked.status_code == 200, asked.text
    assert asked.json()["extension_request"]["hours"] == 8
    twice = world.command(case_id, "extension", staff, {"hours": 8, "reason": "again"})
    assert twice.status_code == 409
    approved = world.command(case_id, "extension/approve", dispatcher, {"reason": "ok"})
    assert approved.status_code == 200, approved.text
    assert approved.json()["extension_request"] is None
    assert approved.json()["extensions"] == 1
    assert when(approved.json()["due_at"]) > first_due
    nothing_pending = world.command(case_id, "extension/refuse", dispatcher, {"reason": "no"})
    assert nothing_pending.status_code == 409

    too_early = world.command(case_id, "rate", owner, {"rating": 4})
    assert too_early.status_code == 409
    assert "resolved" in too_early.json()["detail"]
    resolved = world.command(case_id, "resolve", staff, {"reply": "patched"})
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["status"] == "resolved"
    assert world.public(case_id)["status"] == "closed"  # resolved is closed in Open311

    bad = world.command(case_id, "rate", owner, {"rating": 1, "comment": "still a hole"})
    assert bad.status_code == 200, bad.text
    reopened = bad.json()
    assert reopened["status"] == "reopened"
    assert reopened["revisits"] == 1
    assert reopened["rating"] == 1
    assert reopened["deadline_no"] == 3
    assert reopened["due_at"] is not None
    assert reopened["due_at"] != approved.json()["due_at"]
    assert when(reopened["due_at"]) > datetime.now(UTC)
    assert world.public(case_id)["status"] == "open"
    assert world.command(case_id, "rate", owner, {"rating": 5}).status_code == 409

    assert world.command(case_id, "start", staff).status_code == 200
    assert world.command(case_id, "resolve", staff, {"reply": "resurfaced"}).status_code == 200
    good = world.command(case_id, "rate", owner, {"rating": 5})
    assert good.json()["status"] == "closed"
    for name, who in (("start", staff), ("cancel", owner), ("resolve", staff)):
        refused = world.command(case_id, name, who, {"reply": "x"} if name == "resolve" else {})
        assert refused.status_code == 409, (name, refused.text)
    assert world.command(case_id, "rate", owner, {"rating": 9}).status_code == 422

    final = world.case(case_id)
    timeline = final["timeline"]
    assert [e["event"] for e in timeline] == [
        "CaseSubmitted",
        "CaseAccepted",
        "AssignmentPending",
        "CaseAssigned",
        "CaseStarted",
        "ExtensionRequested",
        "ExtensionApproved",
        "CaseResolved",
        "CaseRated",
        "CaseStarted",
        "CaseResolved",
        "CaseRated",
    ]
    assert [e["version"] for e in timeline] == list(range(1, len(timeline) + 1))
    assert final["version"] == len(timeline)  # refused commands recorded nothing
    ats = [when(e["at"]) for e in timeline]
    assert ats == sorted(ats)
    assert all(e["actor"] and e["correlation_id"] for e in timeline)
    actors = {e["event"]: e["actor"] for e in timeline}
    assert actors["CaseSubmitted"] == f"citizen:{owner_id}"
    assert actors["CaseRated"] == f"citizen:{owner_id}"
    assert actors["CaseAssigned"] == "dispatcher:disp-1"
    assert actors["ExtensionApproved"] == "dispatcher:disp-1"
    assert actors["CaseStarted"] == f"department:staff-{department}"
    assert actors["CaseResolved"] == f"department:staff-{department}"
    assert actors["AssignmentPending"] == "system:intake-policy"
    assert timeline[5]["reason"] == "asphalt plant"
    assert "contact_token" not in json.dumps(timeline)


def test_department_returns_a_case_and_the_citizen_cancels(world: World) -> None:
    owner = world.citizen(uuid.uuid4())
    lon, lat = world.point("310109")
    body = {
        "category": "flooding",
        "description": f"underpass flooded {tag()}",
        "lon": lon,
        "lat": lat,
        "attributes": {"water_depth": "above_knee"},
    }
    created = world.client.post("/api/v1/cases", json=body, headers=owner)
    assert created.status_code == 201, created.text
    case = created.json()
    case_id = case["case_id"]
    assert case["channel"] == "app"
    assert case["status"] == "assigned"
    department = case["department_code"]
    assert department == "310109-water"
    staff = world.dept(department)

    no_reason = world.command(case_id, "return", staff, {"reason": ""})
    assert no_reason.status_code == 409
    back = world.command(case_id, "return", staff, {"reason": "the drain is the roads office's"})
    assert back.status_code == 200, back.text
    returned = back.json()
    assert returned["status"] == "accepted"
    assert returned["department_code"] is None
    assert returned["due_at"] is None
    assert returned["returns"] == 1
    assert world.client.get(f"/api/v1/cases/{case_id}", headers=staff).status_code == 403
    world.sync()
    dispatcher = world.headers("dispatcher")
    pending = world.client.get(
        "/api/v1/cases", params={"awaiting_assignment": "true"}, headers=dispatcher
    ).json()["cases"]
    assert case_id in {c["case_id"] for c in pending}
    queue = world.client.get(f"/api/v1/departments/{department}/queue", headers=staff).json()
    assert case_id not in {c["case_id"] for c in queue["cases"]}

    cancelled = world.command(case_id, "cancel", owner, {"reason": "the water is gone"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert world.command(case_id, "cancel", owner).status_code == 409
    assert world.public(case_id)["status"] == "closed"
    events = [e["event"] for e in world.case(case_id)["timeline"]]
    assert events[-2:] == ["CaseReturned", "CaseCancelled"]
    world.sync()
    mine = world.client.get("/api/v1/cases", headers=owner).json()
    assert [(c["case_id"], c["status"]) for c in mine["cases"]] == [(case_id, "cancelled")]


def test_department_queue_is_sorted_by_due_time(world: World) -> None:
    district = "310107"
    department = f"{district}-roads"
    operator = world.headers("operator")
    # Filed longest deadline first: the queue must not simply follow filing order.
    codes = ["road_damage", "bus_shelter_damaged", "manhole_cover_damaged", "manhole_cover_missing"]
    mine = [world.file(request_at(code, world.point(district)), operator) for code in codes]
    world.sync()
    for who in (world.dept(department), world.headers("dispatcher")):
        response = world.client.get(f"/api/v1/departments/{department}/queue", headers=who)
        assert response.status_code == 200, response.text
        queue = response.json()["cases"]
        assert set(mine) <= {c["case_id"] for c in queue}
        dues = [when(c["due_at"]) for c in queue]
        assert dues == sorted(dues)
        assert {c["department_code"] for c in queue} == {department}
        assert {c["status"] for c in queue} <= set(ACTIVE)
        order = [c["case_id"] for c in queue if c["case_id"] in mine]
        assert order[0] == mine[-1]  # 2 calendar hours beats every working-hours limit
        assert order[-1] == mine[0]


# -- 5. personal data -----------------------------------------------------------------------


def _raw_events(world: World) -> bytes:
    with psycopg.connect(world.settings.database_url) as conn:
        rows = conn.execute("SELECT state FROM city_events").fetchall()
    return b"\n".join(bytes(r[0]) for r in rows)


def _assert_absent(blob: bytes, *secrets: str) -> None:
    for secret in secrets:
        assert secret.encode() not in blob, secret
        assert json.dumps(secret)[1:-1].encode() not in blob, secret


def test_personal_data_is_sealed_masked_and_erasable(world: World) -> None:
    citizen_id = uuid.uuid4()
    citizen = world.citizen(citizen_id)
    district = "310104"
    by_open311 = world.file(
        {
            **flooding(world.point(district)),
            "first_name": NAME,
            "phone": PHONE,
            "email": EMAIL,
        },
        citizen,
    )
    lon, lat = world.point(district)
    own = world.client.post(
        "/api/v1/cases",
        json={
            "category": "road_damage",
            "description": f"cracked kerb {tag()}",
            "lon": lon,
            "lat": lat,
            "contact": {"name": NAME, "phone": "138-1234-5678", "email": EMAIL.upper()},
        },
        headers=citizen,
    )
    assert own.status_code == 201, own.text
    by_api = own.json()["case_id"]
    # A hotline caller with another number, filed by an operator: found by a keyed hash.
    other_phone = "13900001111"
    hotline = world.client.post(
        "/api/v1/cases",
        json={
            "category": "fallen_tree",
            "description": f"a branch on the pavement {tag()}",
            "lon": world.point(district)[0],
            "lat": world.point(district)[1],
            "contact": {"name": "李四", "phone": other_phone},
        },
        headers=world.headers("operator"),
    )
    assert hotline.status_code == 201, hotline.text
    hotline_id = hotline.json()["case_id"]

    # The log: no contact in clear, in any encoding.
    blob = _raw_events(world)
    assert own.json()["description"].encode() in blob  # the rows are the right ones
    _assert_absent(blob, PHONE, NAME, EMAIL, EMAIL.upper(), other_phone, "李四")
    # The read model and the key store neither.
    with world.pool.connection() as conn:
        read_model = " ".join(
            r[0] for r in conn.execute("SELECT row_to_json(c)::text FROM service_cases c")
        )
        keys = conn.execute("SELECT citizen_id, lookup, key FROM citizen_keys").fetchall()
        key_rows = " ".join(
            r[0] for r in conn.execute("SELECT row_to_json(k)::text FROM citizen_keys k")
        )
    for text in (read_model, key_rows):
        assert_no_personal_data(text, PHONE, NAME, EMAIL, other_phone, "李四")
    by_id = {row[0]: row for row in keys}
    assert by_id[citizen_id][1] is None  # a logged-in citizen is known by id, not by phone
    assert len(bytes(by_id[citizen_id][2])) == 32
    lookups = [row[1] for row in keys if row[1] is not None]
    assert lookups
    assert all(re.fullmatch(r"[0-9a-f]{64}", lookup) for lookup in lookups)
    assert hashlib.sha256(other_phone.encode()).hexdigest() not in lookups  # keyed, not plain

    # Who sees what.
    clear = {"name": NAME, "phone": PHONE, "email": EMAIL, "address": None}
    masked = {"name": "张*", "phone": "138****5678", "email": "z***@example.com", "address": None}
    departments = {by_open311: f"{district}-water", by_api: f"{district}-roads"}
    for case_id, department in departments.items():
        assert world.case(case_id)["contact"] == clear
        assert world.case(case_id, headers=citizen)["contact"] == clear
        for role in ("operator", "auditor"):
            assert world.case(case_id, role)["contact"] == masked
        assert world.case(case_id, headers=world.dept(department))["contact"] == masked
        as_operator = world.client.get(
            f"/api/v1/cases/{case_id}", headers=world.headers("operator")
        )
        assert_no_personal_data(as_operator.text, PHONE, NAME, EMAIL)

    # Erasure: the key goes, the cases stay, every view reads [erased].
    world.sync()  # erasure finds the citizen's cases in the read model
    erased = world.client.delete("/api/v1/citizens/me/personal-data", headers=citizen)
    assert erased.status_code == 200, erased.text
    assert erased.json()["citizen_id"] == str(citizen_id)
    assert erased.json()["cases_noted"] == 2
    assert world.scalar(
        "SELECT key IS NULL AND lookup IS NULL AND erased_at IS NOT NULL FROM citizen_keys"
        " WHERE citizen_id = %s",
        citizen_id,
    )
    views = {
        "dispatcher": world.headers("dispatcher"),
        "operator": world.headers("operator"),
        "auditor": world.headers("auditor"),
        "citizen": citizen,
    }
    versions = {}
    for case_id, department in departments.items():
        for who in (*views.values(), world.dept(department)):
            case = world.case(case_id, headers=who)
            assert case["contact"] == ERASED_VIEW
            assert case["personal_data_erased"] is True
        last = case["timeline"][-1]
        assert last["event"] == "PersonalDataErased"
        assert last["actor"] == f"citizen:{citizen_id}"
        versions[case_id] = case["version"]
    assert world.case(hotline_id)["contact"]["phone"] == other_phone  # someone else's: kept
    again = world.client.delete("/api/v1/citizens/me/personal-data", headers=citizen)
    assert again.json()["cases_noted"] == 0

    # Replay: a fresh application loads every event of the erased cases.
    app = city_app(world.settings, pool_size=1)
    try:
        for case_id, version in versions.items():
            aggregate: ServiceCase = app.repository.get(uuid.UUID(case_id))
            assert aggregate.version == version
            assert len(list(app.events.get(uuid.UUID(case_id)))) == version
            assert aggregate.erased is True
            assert aggregate.status == "assigned"
    finally:
        app.close()

    # Rebuild the read model from the log: the cases are listed again.
    world.stop_projector()
    try:
        rebuild_projections(world.settings)
        assert world.cases_in_read_model() == 0
    finally:
        world.start_projector()
    world.sync()
    assert world.cases_in_read_model() == world.cases_in_store()
    listed = world.client.get(
        "/api/v1/cases", params={"limit": 1_000}, headers=world.headers("auditor")
    ).json()
    assert set(versions) <= {c["case_id"] for c in listed["cases"]}
    assert {c["status"] for c in listed["cases"] if c["case_id"] in versions} == {"assigned"}
    assert ids(world.listed(service_request_id=",".join(versions))) == set(versions)
    mine = world.client.get("/api/v1/cases", headers=citizen).json()
    assert {c["case_id"] for c in mine["cases"]} == set(versions)


def test_masked_viewers_cannot_recover_the_phone(world: World) -> None:
    phone = "13987654321"
    lon, lat = world.point("310105")
    fields = {**request_at("road_damage", (lon, lat)), "phone": phone}
    case_id = world.file(fields, world.headers("operator", "op-7"))
    seen = world.case(case_id, "auditor")
    masked = seen["contact"]["phone"]
    assert masked == "139****4321"
    digest = seen["external_id"].rsplit(":", 1)[-1]
    # What an auditor can rebuild of the form from the case detail.
    guess = {
        "service_code": seen["category"],
        "lat": str(seen["location"]["lat"]),
        "long": str(seen["location"]["lon"]),
        "description": seen["description"],
    }
    recovered = None
    for middle in range(10_000):
        candidate = f"{masked[:3]}{middle:04d}{masked[-4:]}"
        body = orjson.dumps({**guess, "phone": candidate}, option=orjson.OPT_SORT_KEYS)
        if hashlib.sha256(body).hexdigest()[:32] == digest:
            recovered = candidate
            break
    assert recovered is None, f"recovered {recovered} from the masked view"
