"""Map layers on the real database: viewports, filters, ETags, and a cache that never lags."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient

from gis.china import from_wgs84
from gis.crs import distance_m
from infra.pgstore import apply_schema
from infra.settings import Settings
from projections.map_layers import MapLayers
from projections.queries import (
    INCIDENT_COLUMNS,
    SENSOR_COLUMNS,
    BBox,
    LayerQuery,
    MapToken,
    MapTokenFeed,
    ReadModels,
)
from projections.runner import TRACKING_NAME
from tests.helpers.web import bearer, served

pytestmark = pytest.mark.integration

URL = "/api/v1/map/layers"
GEOJSON = "application/geo+json"
# Inside the demo city (about 121.423..121.517 E, 31.193..31.267 N).
WEST, SOUTH, EAST, NORTH = 121.43, 31.20, 121.51, 31.26


# -- builders ------------------------------------------------------------------------------


def add_sensor(
    conn: psycopg.Connection[Any],
    lon: float,
    lat: float,
    *,
    sensor_type: str = "water_level",
    state: str = "normal",
    grid_code: str | None = None,
) -> str:
    device_id = f"wl-{uuid.uuid4().hex[:12]}"
    conn.execute(
        "INSERT INTO map_sensors (device_id, sensor_id, sensor_type, gateway_id, lon, lat,"
        " grid_code, district_code, department_code, state, alarms, updated_at, version)"
        " VALUES (%s, %s, %s, 'gw-1', %s, %s, %s, '310101', '310101-water', %s, %s::jsonb,"
        " now(), 1)",
        (
            device_id,
            uuid.uuid4(),
            sensor_type,
            lon,
            lat,
            grid_code,
            state,
            '{"high": "major"}' if state == "alarm" else "{}",
        ),
    )
    return device_id


def add_incident(
    conn: psycopg.Connection[Any],
    lon: float,
    lat: float,
    *,
    severity: str = "major",
    category: str = "flooding",
    stage: str = "reported",
    status: str = "open",
    grid_code: str | None = None,
) -> str:
    incident_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO map_incidents (incident_id, kind, title, category, severity, status,"
        " alarm_status, acknowledged, device_id, rule_id, rule_version, metric, last_value,"
        " trigger_count, lon, lat, grid_code, district_code, department_code, opened_at,"
        " updated_at, version, stage) VALUES (%s, 'sensor_alarm', 'Water over the kerb',"
        " %s, %s, %s, 'active', false, 'wl-1', 'high', 1, 'level', 0.31, 1, %s, %s, %s,"
        " '310101', '310101-water', now(), now(), 1, %s)",
        (incident_id, category, severity, status, lon, lat, grid_code, stage),
    )
    return str(incident_id)


def advance(conn: psycopg.Connection[Any]) -> None:
    """What the map projection does with each batch: move its position, in the same commit."""
    conn.execute(
        "INSERT INTO map_tracking (application_name, notification_id) VALUES (%s, 1)"
        " ON CONFLICT (application_name)"
        " DO UPDATE SET notification_id = map_tracking.notification_id + 1",
        (TRACKING_NAME,),
    )
    conn.commit()


def random_point(rng: random.Random) -> tuple[float, float]:
    return rng.uniform(WEST, EAST), rng.uniform(SOUTH, NORTH)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def db(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(settings.database_url) as conn:
        apply_schema(conn)
        yield conn


@pytest.fixture
def http(settings: Settings, db: psycopg.Connection[Any]) -> Iterator[TestClient]:
    with served(settings, as_role="operator") as client:
        yield client


@pytest.fixture
def city(db: psycopg.Connection[Any]) -> dict[str, list[str]]:
    """Sensors and incidents at random places (fixed seed), committed with a position."""
    rng = random.Random(4)
    sensors = [
        add_sensor(
            db,
            *random_point(rng),
            sensor_type=rng.choice(["water_level", "pm25", "manhole_tilt"]),
            state=rng.choice(["normal", "normal", "alarm", "silent"]),
        )
        for _ in range(300)
    ]
    incidents = [
        add_incident(
            db,
            *random_point(rng),
            severity=rng.choice(["warning", "minor", "major", "critical"]),
            category=rng.choice(["flooding", "air_pollution"]),
            stage=rng.choice(["reported", "dispatched", "accepted"]),
        )
        for _ in range(150)
    ]
    closed = [add_incident(db, *random_point(rng), status="closed") for _ in range(20)]
    advance(db)
    return {"sensors": sensors, "incidents": incidents, "closed": closed}


def features(response: Any) -> dict[str, dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == GEOJSON
    doc = orjson.loads(response.content)
    assert doc["type"] == "FeatureCollection"
    return {f["id"]: f for f in doc["features"]}


def inside(f: dict[str, Any], box: BBox) -> bool:
    lon, lat = f["geometry"]["coordinates"]
    return box.west <= lon <= box.east and box.south <= lat <= box.north


# -- whole layers --------------------------------------------------------------------------


def test_whole_layers_are_valid_geojson(
    http: TestClient, settings: Settings, city: dict[str, list[str]]
) -> None:
    sensors = features(http.get(f"{URL}/sensors"))
    assert set(sensors) == set(city["sensors"])
    incidents = features(http.get(f"{URL}/incidents"))
    assert set(incidents) == set(city["incidents"])  # open ones only
    for found, columns in ((sensors, SENSOR_COLUMNS), (incidents, INCIDENT_COLUMNS)):
        expected = {c.strip() for c in columns.split(",")} - {"lon", "lat"}
        for f in found.values():
            assert f["type"] == "Feature"
            assert f["geometry"]["type"] == "Point"
            lon, lat = f["geometry"]["coordinates"]
            assert WEST <= lon <= EAST
            assert SOUTH <= lat <= NORTH
            assert set(f["properties"]) == expected
    # The same features as the read model's own GeoJSON (the /sensors and /incidents lists).
    read = ReadModels(http.app.state.container.pool)
    assert {f["id"]: f for f in read.sensors(limit=10_000)} == sensors
    assert {f["id"]: f for f in read.incidents(status="open", limit=10_000)} == incidents

    districts = features(http.get(f"{URL}/districts"))
    assert len(districts) == 6
    grid = features(http.get(f"{URL}/grid"))
    assert len(grid) >= 3_000
    cell = next(iter(grid.values()))
    assert {"grid_code", "district_code", "sensors", "open_incidents"} <= set(cell["properties"])
    assert cell["geometry"]["type"] == "Polygon"


def test_grid_counts_sensors_and_open_incidents(
    http: TestClient, db: psycopg.Connection[Any]
) -> None:
    grid = features(http.get(f"{URL}/grid"))
    code, cell = next(iter(grid.items()))
    lon, lat = cell["geometry"]["coordinates"][0][0]
    add_sensor(db, lon, lat, grid_code=code)
    add_sensor(db, lon, lat, grid_code=code)
    add_incident(db, lon, lat, grid_code=code)
    add_incident(db, lon, lat, grid_code=code, status="closed")
    advance(db)
    props = features(http.get(f"{URL}/grid"))[code]["properties"]
    assert (props["sensors"], props["open_incidents"]) == (2, 1)


# -- viewports and filters -----------------------------------------------------------------


def test_bbox_selects_exactly_the_features_in_the_viewport(
    http: TestClient, city: dict[str, list[str]]
) -> None:
    everything = {name: features(http.get(f"{URL}/{name}")) for name in ("sensors", "incidents")}
    rng = random.Random(9)
    for _ in range(20):
        w, e = sorted(rng.uniform(WEST, EAST) for _ in range(2))
        s, n = sorted(rng.uniform(SOUTH, NORTH) for _ in range(2))
        box = BBox(w, s, e, n)
        for name, whole in everything.items():
            got = features(http.get(f"{URL}/{name}", params={"bbox": f"{w},{s},{e},{n}"}))
            assert set(got) == {i for i, f in whole.items() if inside(f, box)}
            assert all(got[i] == whole[i] for i in got)
    # The edges belong to the viewport.
    one = next(iter(everything["sensors"].values()))
    lon, lat = one["geometry"]["coordinates"]
    exact = features(http.get(f"{URL}/sensors", params={"bbox": f"{lon},{lat},{lon},{lat}"}))
    assert list(exact) == [one["id"]]
    assert features(http.get(f"{URL}/sensors", params={"bbox": "0,0,1,1"})) == {}


def test_layers_for_a_chinese_base_map(http: TestClient, city: dict[str, list[str]]) -> None:
    """``coord_system=gcj02|bd09``: every position shifted as AMap / Baidu draw it, the
    bbox read in the same system, an ETag of its own; an unknown system is a 422."""
    whole = features(http.get(f"{URL}/sensors"))
    plain = http.get(f"{URL}/sensors")
    for system in ("gcj02", "bd09"):
        answer = http.get(f"{URL}/sensors", params={"coord_system": system})
        assert answer.status_code == 200
        assert answer.headers["etag"] != plain.headers["etag"]
        shifted = features(answer)
        assert set(shifted) == set(whole)
        for fid, feature in shifted.items():
            lon, lat = feature["geometry"]["coordinates"]
            expected = from_wgs84(*whole[fid]["geometry"]["coordinates"], system)
            assert distance_m(lon, lat, *expected) < 0.01
            assert distance_m(lon, lat, *whole[fid]["geometry"]["coordinates"]) > 300
            assert feature["properties"] == whole[fid]["properties"]
        # A viewport drawn on that base map selects the same sensors as its WGS-84 image.
        one = next(iter(shifted.values()))
        lon, lat = one["geometry"]["coordinates"]
        box = f"{lon - 0.01},{lat - 0.01},{lon + 0.01},{lat + 0.01}"
        cut = features(http.get(f"{URL}/sensors", params={"coord_system": system, "bbox": box}))
        assert one["id"] in cut
        again = http.get(
            f"{URL}/sensors",
            params={"coord_system": system},
            headers={"If-None-Match": answer.headers["etag"]},
        )
        assert again.status_code == 304
    grid = http.get(f"{URL}/grid", params={"coord_system": "gcj02"})
    assert grid.status_code == 200
    assert http.get(f"{URL}/sensors", params={"coord_system": "mars"}).status_code == 422


def test_grid_and_districts_take_a_viewport(http: TestClient) -> None:
    whole = features(http.get(f"{URL}/grid"))
    box = BBox(121.46, 31.22, 121.48, 31.24)
    part = features(http.get(f"{URL}/grid", params={"bbox": "121.46,31.22,121.48,31.24"}))
    assert 0 < len(part) < len(whole)
    for f in whole.values():
        ring = f["geometry"]["coordinates"][0]
        lons, lats = [p[0] for p in ring], [p[1] for p in ring]
        meets = (
            min(lons) <= box.east
            and max(lons) >= box.west
            and min(lats) <= box.north
            and max(lats) >= box.south
        )
        assert (f["id"] in part) == meets
    assert len(features(http.get(f"{URL}/districts", params={"bbox": "0,0,1,1"}))) == 0


@pytest.mark.parametrize(
    ("layer", "params", "keep"),
    [
        ("sensors", {"state": "alarm"}, lambda p: p["state"] == "alarm"),
        ("sensors", {"sensor_type": "pm25"}, lambda p: p["sensor_type"] == "pm25"),
        (
            "sensors",
            {"state": "normal", "sensor_type": "water_level"},
            lambda p: p["state"] == "normal" and p["sensor_type"] == "water_level",
        ),
        ("incidents", {"severity": "critical"}, lambda p: p["severity"] == "critical"),
        ("incidents", {"stage": "dispatched"}, lambda p: p["stage"] == "dispatched"),
        ("incidents", {"category": "flooding"}, lambda p: p["category"] == "flooding"),
        (
            "incidents",
            {"severity": "minor", "category": "air_pollution"},
            lambda p: p["severity"] == "minor" and p["category"] == "air_pollution",
        ),
    ],
)
def test_filters(
    http: TestClient, city: dict[str, list[str]], layer: str, params: dict, keep: Any
) -> None:
    whole = features(http.get(f"{URL}/{layer}"))
    wanted = {i for i, f in whole.items() if keep(f["properties"])}
    assert wanted
    assert set(features(http.get(f"{URL}/{layer}", params=params))) == wanted
    box = BBox(121.44, 31.21, 121.48, 31.24)
    in_box = {i for i in wanted if inside(whole[i], box)}
    got = http.get(f"{URL}/{layer}", params={**params, "bbox": "121.44,31.21,121.48,31.24"})
    assert set(features(got)) == in_box


def test_the_cache_answers_as_sql_does(
    http: TestClient, db: psycopg.Connection[Any], city: dict[str, list[str]]
) -> None:
    """Random viewports and filters, from memory and straight from SQL: the same features."""
    c = http.app.state.container
    cached = MapLayers(c.read, c.layers)
    direct = MapLayers(c.read, c.layers, cache=False)
    rng = random.Random(11)
    choices = {
        "sensors": [(), (("state", "alarm"),), (("sensor_type", "pm25"),)],
        "incidents": [(), (("severity", "major"),), (("stage", "accepted"),)],
        "grid": [()],
    }
    for round_ in range(3):
        for _ in range(30):
            layer = rng.choice(list(choices))
            w, e = sorted(rng.uniform(WEST - 0.01, EAST + 0.01) for _ in range(2))
            s, n = sorted(rng.uniform(SOUTH - 0.01, NORTH + 0.01) for _ in range(2))
            query = LayerQuery(BBox(w, s, e, n), rng.choice(choices[layer]))
            a = orjson.loads(cached.render(layer, query).body)["features"]
            b = orjson.loads(direct.render(layer, query).body)["features"]
            assert sorted(a, key=lambda f: f["id"]) == sorted(b, key=lambda f: f["id"])
        # Change the view between rounds: moved tiles are read again, the rest kept.
        db.execute(
            "UPDATE map_incidents SET severity = 'major', stage = 'accepted', version = version + 1"
            " WHERE incident_id = ANY(%s)",
            ([uuid.UUID(i) for i in city["incidents"][round_ * 10 : round_ * 10 + 10]],),
        )
        db.execute(
            "UPDATE map_sensors SET state = 'alarm', version = version + 1 WHERE device_id = %s",
            (city["sensors"][round_],),
        )
        add_sensor(db, *random_point(rng), state="alarm")
        advance(db)


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("sensors", {"bbox": "1,2,3"}, "four numbers"),
        ("sensors", {"bbox": "a,b,c,d"}, "four numbers"),
        ("sensors", {"bbox": ""}, "four numbers"),
        ("incidents", {"bbox": "200,0,201,1"}, "outside WGS84"),
        ("incidents", {"bbox": "3,2,1,4"}, "west <= east"),
        ("grid", {"bbox": "1,5,2,4"}, "south <= north"),
        ("volcanoes", {}, "invalid request"),
        ("sensors", {"state": "erupting"}, "invalid request"),
        ("sensors", {"sensor_type": "seismograph"}, "invalid request"),
        ("incidents", {"severity": "apocalyptic"}, "invalid request"),
        ("incidents", {"stage": "forgotten"}, "invalid request"),
        ("incidents", {"category": "x'; DROP TABLE map_incidents; --"}, "invalid request"),
        ("sensors", {"severity": "major"}, "no filter severity"),
        ("incidents", {"state": "alarm"}, "no filter state"),
        ("grid", {"category": "flooding"}, "no filter category"),
    ],
)
def test_bad_requests_get_a_json_422(
    http: TestClient, path: str, params: dict, message: str
) -> None:
    response = http.get(f"{URL}/{path}", params=params)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert message in response.json()["detail"]
    assert "Traceback" not in response.text


def test_layers_need_a_staff_token(http: TestClient, settings: Settings) -> None:
    assert http.get(f"{URL}/sensors", headers={"Authorization": ""}).status_code == 401
    citizen = bearer(settings, "citizen", subject=str(uuid.uuid4()))
    assert http.get(f"{URL}/sensors", headers=citizen).status_code == 403


# -- ETag and freshness --------------------------------------------------------------------


def test_etag_and_not_modified(
    http: TestClient, db: psycopg.Connection[Any], city: dict[str, list[str]]
) -> None:
    params = {"bbox": "121.44,31.21,121.48,31.24"}
    first = http.get(f"{URL}/sensors", params=params)
    etag = first.headers["etag"]
    assert etag.startswith('"')
    assert first.headers["cache-control"] == "no-cache"
    for sent in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = http.get(f"{URL}/sensors", params=params, headers={"If-None-Match": sent})
        assert again.status_code == 304, sent
        assert again.content == b""
        assert again.headers["etag"] == etag
    other = http.get(f"{URL}/sensors", params=params, headers={"If-None-Match": '"other"'})
    assert other.status_code == 200
    assert other.content == first.content
    assert http.get(f"{URL}/incidents", params=params).headers["etag"] != etag

    # The position moves but nothing in the layer changed: still the same ETag.
    add_incident(db, 121.45, 31.22)
    advance(db)
    same = http.get(f"{URL}/sensors", params=params, headers={"If-None-Match": etag})
    assert same.status_code == 304
    # A change in the viewport: a new body and a new ETag.
    device = add_sensor(db, 121.45, 31.22)
    advance(db)
    changed = http.get(f"{URL}/sensors", params=params, headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    assert device in features(changed)


def test_cache_is_never_behind_the_projection_position(
    http: TestClient, db: psycopg.Connection[Any], city: dict[str, list[str]]
) -> None:
    view = {"bbox": "121.44,31.21,121.48,31.24"}
    before = {
        (layer, bool(params)): features(http.get(f"{URL}/{layer}", params=params))
        for layer in ("sensors", "incidents")
        for params in ({}, view)
    }
    grid_before = features(http.get(f"{URL}/grid"))
    # Each step commits rows and the position together, as the projection does; the
    # very next request must show it, whichever cached body it replaces.
    device = add_sensor(db, 121.45, 31.22, state="alarm")
    incident = add_incident(db, 121.46, 31.23, severity="critical")
    advance(db)
    for whole in (False, True):
        got = features(http.get(f"{URL}/sensors", params={} if whole else view))
        assert set(got) == set(before[("sensors", not whole)]) | {device}
        got = features(http.get(f"{URL}/incidents", params={} if whole else view))
        assert set(got) == set(before[("incidents", not whole)]) | {incident}
    alarms = features(http.get(f"{URL}/sensors", params={**view, "state": "alarm"}))
    assert device in alarms

    db.execute(
        "UPDATE map_sensors SET state = 'normal', version = version + 1 WHERE device_id = %s",
        (device,),
    )
    db.execute(
        "UPDATE map_incidents SET status = 'closed', version = version + 1 WHERE incident_id = %s",
        (uuid.UUID(incident),),
    )
    advance(db)
    assert device not in features(http.get(f"{URL}/sensors", params={**view, "state": "alarm"}))
    assert incident not in features(http.get(f"{URL}/incidents", params=view))
    assert incident not in features(http.get(f"{URL}/incidents"))
    assert features(http.get(f"{URL}/sensors"))[device]["properties"]["state"] == "normal"
    assert features(http.get(f"{URL}/grid")) == grid_before

    # A rebuild empties the view and resets its position: the map empties with it.
    db.execute("TRUNCATE map_sensors, map_incidents")
    db.execute("DELETE FROM map_tracking")
    db.commit()
    assert features(http.get(f"{URL}/sensors")) == {}
    assert features(http.get(f"{URL}/incidents", params=view)) == {}
    # Emptied and filled again (here: by hand, with other rows) before anyone looks, the
    # position back where it was: the map shows the new rows only.
    first = add_sensor(db, 121.45, 31.22)
    advance(db)
    assert set(features(http.get(f"{URL}/sensors"))) == {first}
    db.execute("TRUNCATE map_sensors")
    again = add_sensor(db, 121.45, 31.22)
    db.commit()
    assert set(features(http.get(f"{URL}/sensors"))) == {again}
    db.execute("TRUNCATE map_sensors")
    db.commit()
    assert features(http.get(f"{URL}/sensors")) == {}


def test_rendered_bodies_are_bounded(
    http: TestClient, db: psycopg.Connection[Any], city: dict[str, list[str]]
) -> None:
    c = http.app.state.container
    layers = MapLayers(c.read, c.layers, max_entries=3)
    for i in range(6):
        layers.render("sensors", LayerQuery(BBox(121.43 + i / 100, 31.2, 121.47 + i / 100, 31.25)))
    assert len(layers.bodies) == 3
    tiny = MapLayers(c.read, c.layers, max_bytes=50_000)
    whole = tiny.render("sensors", LayerQuery())
    assert len(whole.body) > 50_000
    tiny.render("sensors", LayerQuery(BBox(121.45, 31.22, 121.46, 31.23)))
    assert 0 < tiny.body_bytes <= 50_000
    assert all(len(r.body) <= 50_000 for _, r in tiny.bodies.values())


def test_without_the_cache_the_answers_are_the_same(
    http: TestClient,
    settings: Settings,
    city: dict[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import api.map

    monkeypatch.setattr(api.map, "CACHE_LAYERS", False)
    with served(settings, as_role="operator") as direct:
        for layer, params in (
            ("sensors", {"bbox": "121.44,31.21,121.48,31.24", "state": "alarm"}),
            ("incidents", {"bbox": "121.44,31.21,121.48,31.24"}),
            ("incidents", {"severity": "minor"}),
            ("grid", {"bbox": "121.46,31.22,121.48,31.24"}),
        ):
            uncached = direct.get(f"{URL}/{layer}", params=params)
            assert features(uncached) == features(http.get(f"{URL}/{layer}", params=params))
            etag = uncached.headers["etag"]
            again = direct.get(f"{URL}/{layer}", params=params, headers={"If-None-Match": etag})
            assert again.status_code == 304


def test_the_layers_are_documented(http: TestClient) -> None:
    spec = http.get("/openapi.json").json()
    operation = spec["paths"]["/api/v1/map/layers/{layer}"]["get"]
    names = {p["name"] for p in operation["parameters"]}
    assert {"layer", "bbox", "state", "sensor_type", "severity", "stage", "category"} <= names
    assert GEOJSON in operation["responses"]["200"]["content"]


# -- the map token for the event loop ------------------------------------------------------


def test_token_feed_shares_reads_but_never_answers_with_one_begun_before_the_call(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    advance(db)

    class Gated(MapTokenFeed):
        """Reads as usual, then holds the answer until the test lets it go."""

        def __init__(self, conninfo: str) -> None:
            super().__init__(conninfo)
            self.reads = 0
            self.gate: asyncio.Event | None = None

        async def _read(self) -> MapToken:
            token = await super()._read()
            self.reads += 1
            if self.gate is not None:
                await self.gate.wait()
            return token

    async def scenario() -> tuple[int, int, int, int]:
        feed = Gated(settings.database_url)
        try:
            burst = await asyncio.gather(*(feed.token() for _ in range(50)))
            shared_reads = feed.reads
            assert len({t.position for t in burst}) == 1
            feed.gate = asyncio.Event()
            early = asyncio.ensure_future(feed.token())
            while feed.reads == shared_reads:  # the early read has its answer, held back
                await asyncio.sleep(0.005)
            await asyncio.to_thread(advance, db)  # committed after that read
            late = asyncio.ensure_future(feed.token())
            await asyncio.sleep(0.05)
            feed.gate.set()
            return shared_reads, burst[0].position, (await early).position, (await late).position
        finally:
            await feed.aclose()

    shared_reads, before, early, late = asyncio.run(scenario())
    assert shared_reads <= 2  # 50 callers at once: the first read, and one for the rest
    assert early == before
    assert late == before + 1  # came during the early read: got a read of its own, after


def test_token_feed_survives_a_lost_connection_and_a_new_event_loop(
    settings: Settings, db: psycopg.Connection[Any]
) -> None:
    advance(db)
    feed = MapTokenFeed(settings.database_url)
    first = asyncio.run(feed.token())  # this loop ends; its connection is left behind
    advance(db)

    async def across_a_lost_connection() -> tuple[MapToken, MapToken]:
        try:
            before = await feed.token()
            assert feed._conn is not None
            pid = feed._conn.info.backend_pid
            await asyncio.to_thread(db.execute, "SELECT pg_terminate_backend(%s)", (pid,))
            await asyncio.to_thread(advance, db)
            return before, await feed.token()
        finally:
            await feed.aclose()

    second, third = asyncio.run(across_a_lost_connection())
    assert second.position == first.position + 1
    assert third.position == second.position + 1
    down = MapTokenFeed("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(psycopg.OperationalError):
        asyncio.run(down.token())
