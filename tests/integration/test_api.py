"""The HTTP API on the real database: answers, and clear errors for bad input."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from cityops.bootstrap import seed
from gis.china import from_wgs84
from infra.settings import Settings
from tests.helpers.waiting import wait_until
from tests.helpers.web import served
from tests.helpers.workers import in_threads

pytestmark = pytest.mark.integration


@pytest.fixture
def http(settings: Settings) -> Iterator[TestClient]:
    seed(settings)
    with served(settings, as_role="operator") as client:
        yield client


def test_health_and_layers(http: TestClient) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["checks"]) == {
        "postgres",
        "projection_map",
        "projection_cases",
        "kafka",
        "mqtt",
    }
    districts = http.get("/api/v1/map/layers/districts").json()
    assert districts["type"] == "FeatureCollection"
    assert len(districts["features"]) == 6
    grid = http.get("/api/v1/map/layers/grid").json()["features"]
    assert len(grid) >= 3_000
    assert all(len(f["id"]) == 15 for f in grid)
    assert {"sensors", "open_incidents"} <= set(grid[0]["properties"])
    assert http.get("/docs").status_code == 200
    assert http.get("/").status_code == 200


def test_sensor_filters_on_the_projected_read_model(http: TestClient, settings: Settings) -> None:
    with in_threads(settings, "projector"):
        wait_until(
            lambda: len(http.get("/api/v1/sensors").json()["features"]) == settings.sim_sensors,
            what="all sensors projected",
        )
    water = http.get("/api/v1/sensors", params={"type": "water_level"}).json()["features"]
    assert water
    assert {f["properties"]["sensor_type"] for f in water} == {"water_level"}
    one = water[0]
    lon, lat = one["geometry"]["coordinates"]
    box = f"{lon - 1e-6},{lat - 1e-6},{lon + 1e-6},{lat + 1e-6}"
    inside = http.get("/api/v1/sensors", params={"bbox": box}).json()["features"]
    assert [f["id"] for f in inside] == [one["id"]]
    by_cell = http.get("/api/v1/sensors", params={"grid_code": one["properties"]["grid_code"]})
    assert one["id"] in [f["id"] for f in by_cell.json()["features"]]
    assert http.get(f"/api/v1/sensors/{one['id']}").json()["properties"]["state"] == "normal"
    readings = http.get(f"/api/v1/sensors/{one['id']}/readings", params={"agg": "avg"})
    assert readings.status_code == 200
    assert readings.json()["series"] == []


@pytest.mark.parametrize("system", ["gcj02", "bd09"])
def test_a_bbox_taken_from_a_chinese_base_map(
    http: TestClient, settings: Settings, system: str
) -> None:
    """``bbox_coord_system``: a box drawn on an AMap or Baidu map finds what lies under it;
    the same numbers read as WGS-84 are some 500 m off and find nothing there."""
    with in_threads(settings, "projector"):
        wait_until(
            lambda: len(http.get("/api/v1/sensors").json()["features"]) == settings.sim_sensors,
            what="all sensors projected",
        )
    one = http.get("/api/v1/sensors", params={"type": "water_level"}).json()["features"][0]
    lon, lat = from_wgs84(*one["geometry"]["coordinates"], system)
    box = f"{lon - 1e-5},{lat - 1e-5},{lon + 1e-5},{lat + 1e-5}"
    shifted = {"bbox": box, "bbox_coord_system": system}
    found = http.get("/api/v1/sensors", params=shifted).json()["features"]
    assert [f["id"] for f in found] == [one["id"]]
    assert found[0]["geometry"] == one["geometry"]  # the answer stays WGS-84
    assert http.get("/api/v1/sensors", params={"bbox": box}).json()["features"] == []
    for path in ("/api/v1/incidents", "/api/v1/cases", "/api/v1/scorecards"):
        assert http.get(path, params=shifted).status_code == 200, path
        wrong = http.get(path, params={**shifted, "bbox_coord_system": "mars"})
        assert wrong.status_code == 422, path


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "message"),
    [
        ("get", "/api/v1/sensors/wl-nobody", {}, 404, "unknown sensor"),
        ("get", "/api/v1/sensors", {"params": {"bbox": "200,0,201,1"}}, 400, "outside WGS84"),
        ("get", "/api/v1/sensors", {"params": {"bbox": "1,2,3"}}, 400, "four numbers"),
        ("get", "/api/v1/sensors", {"params": {"bbox": "3,2,1,4"}}, 400, "west <= east"),
        ("get", "/api/v1/sensors", {"params": {"grid_code": "12x"}}, 422, "invalid request"),
        ("get", "/api/v1/sensors", {"params": {"type": "volcano"}}, 422, "invalid request"),
        ("get", "/api/v1/incidents/not-a-uuid", {}, 422, "invalid request"),
        ("get", f"/api/v1/incidents/{uuid.uuid4()}", {}, 404, "unknown incident"),
        (
            "post",
            f"/api/v1/incidents/{uuid.uuid4()}/acknowledge",
            {"json": {"actor": "op"}},
            404,
            "unknown incident",
        ),
        (
            "post",
            f"/api/v1/incidents/{uuid.uuid4()}/acknowledge",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            422,
            "invalid request",
        ),
        (
            "post",
            f"/api/v1/incidents/{uuid.uuid4()}/acknowledge",
            {"json": {"reason": ["not", "text"]}},
            422,
            "invalid request",
        ),
        (
            "post",
            f"/api/v1/incidents/{uuid.uuid4()}/acknowledge",
            {"json": {"actor": "op", "reason": "x" * 100_000}},
            413,
            "larger than",
        ),
        ("get", "/api/v1/map/layers/volcanoes", {}, 422, "invalid request"),
        ("get", "/api/v1/nowhere", {}, 404, "Not Found"),
    ],
)
def test_bad_input_gets_a_clear_json_error(
    http: TestClient, method: str, path: str, kwargs: dict, status: int, message: str
) -> None:
    response = getattr(http, method)(path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert message in response.json()["detail"]
    assert "Traceback" not in response.text


def test_reading_windows_are_bounded(http: TestClient, settings: Settings) -> None:
    from cityops.bootstrap import city_layers

    device = str(city_layers(settings).sensors.device_id.iloc[0])
    # The read model may not be projected yet in this test: project once.
    with in_threads(settings, "projector"):
        wait_until(
            lambda: http.get(f"/api/v1/sensors/{device}").status_code == 200,
            what="sensor projected",
        )
    url = f"/api/v1/sensors/{device}/readings"
    huge = http.get(url, params={"from": "2000-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"})
    assert huge.status_code == 400
    assert "window longer" in huge.json()["detail"]
    backwards = http.get(url, params={"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"})
    assert backwards.status_code == 400
    assert http.get(url, params={"interval": 0}).status_code == 422


def test_live_channel_pushes_the_changed_feature(http: TestClient, settings: Settings) -> None:
    import asyncio

    import orjson

    from api.services import ChangeHub
    from infra.pgstore import make_pool
    from projections.map import NOTIFY_CHANNEL
    from projections.queries import ReadModels

    with in_threads(settings, "projector"):
        wait_until(
            lambda: len(http.get("/api/v1/sensors").json()["features"]) > 0,
            what="sensors projected",
        )
    feature = http.get("/api/v1/sensors").json()["features"][0]
    pool = make_pool(settings, max_size=2)
    notice = {
        "layer": "sensors",
        "sensor_id": feature["properties"]["sensor_id"],
        "event": "AlarmRaised",
    }

    async def scenario() -> dict:
        hub = ChangeHub(settings.database_url, ReadModels(pool))
        await hub.start()
        try:
            async with hub.subscribe() as queue:
                await asyncio.sleep(0.5)  # LISTEN is in place
                with pool.connection() as conn:
                    conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, "not json"))
                    conn.execute(
                        "SELECT pg_notify(%s, %s)",
                        (NOTIFY_CHANNEL, orjson.dumps(notice).decode()),
                    )
                    conn.commit()
                return await asyncio.wait_for(queue.get(), timeout=10)
        finally:
            await hub.stop()

    try:
        message = asyncio.run(scenario())
    finally:
        pool.close()
    assert message["layer"] == "sensors"
    assert message["feature"]["id"] == feature["id"]
    assert message["feature"]["type"] == "Feature"
