"""OGC API – Features (api.ogc) on a real server, read by GDAL's own OAPIF client.

One seeded city for the module: its districts and grid, 40 registered sensors, open
incidents and open service cases, some recorded before an instant ``T1`` and some after.
The app (with the OGC router included) is served by uvicorn on a free port; GDAL's
``ogrinfo`` / ``ogr2ogr`` (Debian's gdal-bin) list and read it, and GDAL 3.12 (the
library inside the pyogrio wheel) reads it with Part 2's ``CRS`` open option. Counts
and coordinates are compared with the database.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from openapi_spec_validator import OpenAPIV30SpecValidator, validate
from pyproj import Transformer

from cityops.bootstrap import api_app, city_layers, projections, seed
from cityops.services import free_port
from infra.settings import Settings
from projections.runner import ProjectionWorker
from tests.helpers.builders import flood_alarm, offset, report
from tests.helpers.city import City, open_city
from tests.helpers.db import fresh_settings
from tests.helpers.gdal import ogr2ogr_geojson, run_gdal
from tests.helpers.web import bearer

pytestmark = pytest.mark.integration  # GDAL's ogrinfo/ogr2ogr: scripts/test.sh installs gdal-bin

CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
EPSG_4326 = "http://www.opengis.net/def/crs/EPSG/0/4326"
EPSG_4490 = "http://www.opengis.net/def/crs/EPSG/0/4490"


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """``app`` behind uvicorn on a free loopback port, in a thread; its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="ogc-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@dataclass
class World:
    settings: Settings
    city: City
    base: str
    t1: datetime  # between the first and the second batch of incidents and cases
    before: dict[str, set[str]]  # open incidents and cases at t1
    token: str

    @property
    def ogc(self) -> str:
        return f"{self.base}/ogc"

    def get(self, path: str, role: str | None = "operator", **params: Any) -> httpx.Response:
        headers = bearer(self.settings, role) if role else {}
        return httpx.get(f"{self.ogc}{path}", params=params, headers=headers, timeout=30)

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.city.pool.connection() as conn:
            return conn.execute(query, params).fetchall()

    def count(self, query: str, *params: Any) -> int:
        return int(self.rows(query, *params)[0][0])

    def sensor_positions(self) -> dict[str, tuple[float, float]]:
        """Each sensor's (lon, lat), as the map's read model has it."""
        rows = self.rows("SELECT device_id, lon, lat FROM map_sensors")
        return {device: (lon, lat) for device, lon, lat in rows}

    def gdal_env(self) -> dict[str, str]:
        return {**os.environ, "GDAL_HTTP_HEADERS": f"Authorization: Bearer {self.token}"}


def _open_ids(world_city: City) -> dict[str, set[str]]:
    with world_city.pool.connection() as conn:
        incidents = conn.execute("SELECT incident_id FROM map_incidents WHERE status = 'open'")
        cases = conn.execute(
            "SELECT case_id FROM service_cases WHERE lon IS NOT NULL AND status IN"
            " ('submitted', 'accepted', 'assigned', 'in_progress', 'reopened')"
        )
        return {
            "incidents": {str(r[0]) for r in incidents.fetchall()},
            "cases": {str(r[0]) for r in cases.fetchall()},
        }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with fresh_settings(tmp_path_factory.mktemp("ogc") / "city") as settings:
        seed(settings)
        sensors = city_layers(settings).sensors
        water = sensors[sensors.sensor_type == "water_level"]
        assert len(water) >= 3, "the test city needs three water sensors"
        with open_city(settings) as city:
            worker = ProjectionWorker(city.app, settings.database_url, projections())
            try:
                for i, row in enumerate(water.head(2).itertuples()):
                    flood_alarm(city.app, str(row.device_id), correlation_id=f"ogc-{i}")
                    for j in range(2):
                        report(
                            city.desk,
                            f"ogc-a{i}{j}",
                            *offset(row.geometry.x, row.geometry.y, 40 * j, 30),
                        )
                worker.catch_up()
                time.sleep(0.2)
                with city.pool.connection() as conn:
                    t1 = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
                before = _open_ids(city)
                time.sleep(0.2)
                third = water.iloc[2]
                flood_alarm(city.app, str(third.device_id), correlation_id="ogc-2")
                for j in range(3):
                    report(
                        city.desk,
                        f"ogc-b{j}",
                        *offset(third.geometry.x, third.geometry.y, 50 * j, -40),
                    )
                worker.catch_up()
            finally:
                worker.close()
            app = api_app(settings)
            token = bearer(settings, "operator")["Authorization"].removeprefix("Bearer ")
            with serving(app) as base:
                yield World(settings, city, base, t1, before, token)


def ogrinfo(world: World, *args: str) -> str:
    return run_gdal("ogrinfo", "-ro", *args, env=world.gdal_env())


def ogr2ogr(world: World, out: Path, source: str, *args: str) -> dict[str, Any]:
    return ogr2ogr_geojson(out, source, *args, env=world.gdal_env())


def feature_count(summary: str) -> int:
    [line] = [ln for ln in summary.splitlines() if ln.startswith("Feature Count:")]
    return int(line.split(":")[1])


# -- GDAL ---------------------------------------------------------------------------------


def test_gdal_lists_the_collections(world: World) -> None:
    listing = ogrinfo(world, f"OAPIF:{world.ogc}/")
    names = set(re.findall(r"^\d+: (\S+)", listing, re.MULTILINE))
    assert names == {"districts", "grid", "sensors", "incidents", "cases"}, listing
    # Without credentials only the reference layers are offered.
    anonymous = run_gdal("ogrinfo", "-ro", "-q", f"OAPIF:{world.ogc}/")
    assert "districts" in anonymous
    assert "grid" in anonymous
    assert "sensors" not in anonymous


def test_gdal_counts_match_the_database(world: World) -> None:
    expected = {
        "districts": len(city_layers(world.settings).districts),
        "grid": len(city_layers(world.settings).grid),
        "sensors": world.count("SELECT count(*) FROM map_sensors"),
        "incidents": world.count("SELECT count(*) FROM map_incidents WHERE status = 'open'"),
        "cases": len(_open_ids(world.city)["cases"]),
    }
    assert expected["incidents"] == 3
    assert expected["cases"] == 7
    assert expected["sensors"] == 40
    for name, n in expected.items():
        summary = ogrinfo(world, "-so", f"OAPIF:{world.ogc}/collections/{name}", name)
        assert feature_count(summary) == n, (name, summary)


def test_gdal_pages_through_a_layer_larger_than_a_page(world: World, tmp_path: Path) -> None:
    # 40 sensors, 7 a page: GDAL follows six next links.
    got = ogr2ogr(
        world,
        tmp_path / "s.geojson",
        f"OAPIF:{world.ogc}/collections/sensors",
        "-oo",
        "PAGE_SIZE=7",
    )
    ids = [f["properties"]["device_id"] for f in got["features"]]
    stored = world.sensor_positions()
    assert len(ids) == len(set(ids)) == len(stored) == 40
    assert set(ids) == set(stored)
    for f in got["features"]:
        assert tuple(f["geometry"]["coordinates"]) == stored[f["properties"]["device_id"]]
    # The grid (thousands of cells) with pages of 1,000.
    grid = ogr2ogr(
        world,
        tmp_path / "g.geojson",
        f"OAPIF:{world.ogc}/collections/grid",
        "-oo",
        "PAGE_SIZE=1000",
    )
    assert len(grid["features"]) == len(city_layers(world.settings).grid)


def test_gdal_reads_with_a_bbox(world: World, tmp_path: Path) -> None:
    west, south, east, north = world.rows(
        "SELECT percentile_cont(0.2) WITHIN GROUP (ORDER BY lon),"
        " percentile_cont(0.2) WITHIN GROUP (ORDER BY lat),"
        " percentile_cont(0.8) WITHIN GROUP (ORDER BY lon),"
        " percentile_cont(0.8) WITHIN GROUP (ORDER BY lat) FROM map_sensors"
    )[0]
    inside = {
        r[0]
        for r in world.rows(
            "SELECT device_id FROM map_sensors"
            " WHERE lon BETWEEN %s AND %s AND lat BETWEEN %s AND %s",
            west,
            east,
            south,
            north,
        )
    }
    assert 0 < len(inside) < 40
    spat = ["-spat", *(repr(v) for v in (west, south, east, north))]
    got = ogr2ogr(
        world,
        tmp_path / "b.geojson",
        f"OAPIF:{world.ogc}/collections/sensors",
        "-oo",
        "PAGE_SIZE=5",
        *spat,
    )
    assert {f["properties"]["device_id"] for f in got["features"]} == inside
    summary = ogrinfo(world, "-so", *spat, f"OAPIF:{world.ogc}/collections/sensors", "sensors")
    assert feature_count(summary) == len(inside)


def test_gdal_3_6_reads_epsg_4490_in_its_axis_order(world: World, tmp_path: Path) -> None:
    # Debian's GDAL 3.6 predates Part 2: it passes the crs parameter of its URL on and
    # takes the coordinates as they come, latitude first, as EPSG:4490 orders them.
    url = f"OAPIF:{world.ogc}/collections/sensors?crs={EPSG_4490}"
    got = ogr2ogr(world, tmp_path / "c.geojson", url, "-oo", "PAGE_SIZE=15")
    stored = world.sensor_positions()
    assert len(got["features"]) == 40
    for f in got["features"]:
        lon, lat = stored[f["properties"]["device_id"]]
        assert f["geometry"]["coordinates"] == [lat, lon]


# Read in a child process: pyogrio holds the GIL while GDAL fetches, and the server
# answering it runs in this one.
_PYOGRIO_READ = """
import json, sys
import pyogrio
url, options = sys.argv[1], json.loads(sys.argv[2])
bbox = options.pop("bbox", None)
frame = pyogrio.read_dataframe(url, bbox=tuple(bbox) if bbox else None, **options)
print(json.dumps({
    "epsg": frame.crs.to_epsg(),
    "features": [[d, g.x, g.y] for d, g in zip(frame.device_id, frame.geometry)],
}))
"""


def gdal_3_12(world: World, url: str, **options: Any) -> dict[str, Any]:
    env = {**os.environ, "GDAL_HTTP_AUTH": "BEARER", "GDAL_HTTP_BEARER": world.token}
    read = run_gdal(sys.executable, "-c", _PYOGRIO_READ, url, json.dumps(options), env=env)
    return dict(json.loads(read))


def test_gdal_3_12_reads_epsg_4490_with_the_crs_option(world: World) -> None:
    # The GDAL inside the pyogrio wheel implements Part 2: asked for EPSG:4490, it sends
    # crs (and bbox-crs for a bbox), reads Content-Crs and gives the layer that CRS.
    url = f"OAPIF:{world.ogc}/collections/sensors"
    whole = gdal_3_12(world, url, CRS="EPSG:4490", PAGE_SIZE=9)
    near = gdal_3_12(world, url, CRS="EPSG:4490", bbox=[121.0, 31.0, 121.47, 31.5])
    assert whole["epsg"] == near["epsg"] == 4490
    stored = world.sensor_positions()
    assert sorted(d for d, _, _ in whole["features"]) == sorted(stored)
    for device, x, y in whole["features"]:
        assert (x, y) == pytest.approx(stored[device], abs=1e-12)
    west_of = {d for d, (lon, lat) in stored.items() if lon <= 121.47 and 31.0 <= lat <= 31.5}
    assert 0 < len(west_of) < 40
    assert {d for d, _, _ in near["features"]} == west_of
    # CGCS2000 and WGS-84 coordinates are the same numbers here, as PROJ has them too.
    to_cgcs = Transformer.from_crs("EPSG:4326", "EPSG:4490", always_xy=True)
    lon, lat = next(iter(stored.values()))
    assert to_cgcs.transform(lon, lat) == pytest.approx((lon, lat), abs=1e-9)


# -- plain HTTP ---------------------------------------------------------------------------


def test_landing_page_and_conformance(world: World) -> None:
    landing = world.get("/", role=None)
    assert landing.status_code == 200
    links = {link["rel"]: link for link in landing.json()["links"]}
    assert {"self", "service-desc", "service-doc", "conformance", "data"} <= set(links)
    for rel in ("self", "service-desc", "conformance", "data"):
        assert httpx.get(links[rel]["href"], timeout=30).status_code == 200, rel
    conformance = httpx.get(links["conformance"]["href"], timeout=30).json()
    assert set(conformance["conformsTo"]) == {
        "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
        "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
        "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
        "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs",
        # api.tiles (tests/integration/test_tiles.py)
        "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/core",
        "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tileset",
        "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tilesets-list",
        "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/geodata-tilesets",
        "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/mvt",
        "http://www.opengis.net/spec/tms/2.0/conf/tilematrixset",
        "http://www.opengis.net/spec/tms/2.0/conf/json-tilematrixset",
    }
    tiling = links["http://www.opengis.net/def/rel/ogc/1.0/tiling-schemes"]["href"]
    assert httpx.get(tiling, timeout=30).status_code == 200


def test_the_api_definition_is_openapi_3_0(world: World) -> None:
    links = world.get("/", role=None).json()["links"]
    # The first service-desc (the one GDAL takes: its type) is the OGC API's own.
    described = next(link for link in links if link["rel"] == "service-desc")
    assert described["type"] == "application/vnd.oai.openapi+json;version=3.0"
    got = httpx.get(described["href"], timeout=30)
    assert got.status_code == 200
    assert got.headers["content-type"] == described["type"]
    api = got.json()
    validate(api, cls=OpenAPIV30SpecValidator)
    assert api["servers"] == [{"url": world.ogc}]
    items = api["paths"]["/collections/{collection_id}/items"]["get"]
    assert {p["name"] for p in items["parameters"]} >= {"bbox", "bbox-crs", "crs", "datetime"}
    assert "/collections/{collection_id}/tiles" in api["paths"]  # api.tiles' routes too
    # The whole app's definition stays linked, for what lies beside the OGC API.
    whole = [link["href"] for link in links if link["rel"] == "service-desc"][1:]
    assert whole == [f"{world.base}/openapi.json"]
    assert httpx.get(whole[0], timeout=30).json()["openapi"].startswith("3.1")
    # Built from the routes, not from the data: nothing a citizen wrote is in it.
    assert "13800138000" not in got.text
    assert "storm report" not in got.text


def test_collections_describe_extent_and_crs(world: World) -> None:
    docs = {c["id"]: c for c in world.get("/collections").json()["collections"]}
    assert set(docs) == {"districts", "grid", "sensors", "incidents", "cases"}
    lon, lat = world.rows("SELECT min(lon), min(lat) FROM map_sensors")[0]
    for doc in docs.values():
        assert doc["crs"] == [CRS84, EPSG_4326, EPSG_4490]
        assert doc["storageCrs"] == CRS84
        assert doc["extent"]["spatial"]["crs"] == CRS84
        rels = {link["rel"]: link["href"] for link in doc["links"]}
        assert world.get(rels["items"].removeprefix(world.ogc)).status_code == 200
    assert docs["sensors"]["extent"]["spatial"]["bbox"][0][:2] == [lon, lat]
    assert docs["incidents"]["extent"]["temporal"]["interval"][0][1] is None


def test_paging_links_numbers_and_content_crs(world: World) -> None:
    seen: list[str] = []
    url: str | None = f"{world.ogc}/collections/sensors/items?limit=15"
    pages = 0
    while url:
        page = httpx.get(url, headers=bearer(world.settings, "operator"), timeout=30)
        assert page.headers["content-type"] == "application/geo+json"
        assert page.headers["content-crs"] == f"<{CRS84}>"
        body = page.json()
        assert body["numberMatched"] == 40
        assert body["numberReturned"] == len(body["features"]) <= 15
        seen += [f["id"] for f in body["features"]]
        links = {link["rel"]: link["href"] for link in body["links"]}
        assert ("prev" in links) == (pages > 0)
        url = links.get("next")
        pages += 1
    assert pages == 3
    assert len(seen) == len(set(seen)) == 40
    too_many = world.get("/collections/sensors/items", limit=50_000).json()
    assert too_many["numberReturned"] == 40  # a limit over 10,000 is taken as 10,000


def test_crs_and_bbox_crs_use_latitude_first_for_epsg(world: World) -> None:
    device, lon, lat = world.rows(
        "SELECT device_id, lon, lat FROM map_sensors ORDER BY device_id LIMIT 1"
    )[0]
    one = world.get(f"/collections/sensors/items/{device}", crs=EPSG_4326)
    assert one.headers["content-crs"] == f"<{EPSG_4326}>"
    assert one.json()["geometry"]["coordinates"] == [lat, lon]
    box = f"{lat - 1e-6},{lon - 1e-6},{lat + 1e-6},{lon + 1e-6}"  # lat, lon order
    hit = world.get("/collections/sensors/items", bbox=box, **{"bbox-crs": "EPSG:4490"}).json()
    assert [f["id"] for f in hit["features"]] == [device]
    # The same numbers read as CRS84 (lon, lat) put the latitude at 121°: refused.
    assert world.get("/collections/sensors/items", bbox=box).status_code == 400
    district = world.get("/collections/districts/items", crs=EPSG_4490, limit=1).json()["features"][
        0
    ]
    ring = (
        district["geometry"]["coordinates"][0]
        if district["geometry"]["type"] == "Polygon"
        else district["geometry"]["coordinates"][0][0]
    )
    assert 30 < ring[0][0] < 32
    assert 120 < ring[0][1] < 123


def test_single_features_and_personal_data(world: World) -> None:
    case_id = next(iter(world.before["cases"]))
    case = world.get(f"/collections/cases/items/{case_id}").json()
    assert case["id"] == case_id
    for private in (
        "description",
        "address",
        "citizen_id",
        "submitted_by",
        "status_notes",
        "contact",
    ):
        assert private not in case["properties"]
    page = world.get("/collections/cases/items", limit=100).json()
    assert "13800138000" not in json.dumps(page)
    assert "storm report" not in json.dumps(page)
    district = world.get("/collections/districts/items/310101", role=None).json()
    assert district["properties"]["district_code"] == "310101"
    assert world.get(f"/collections/incidents/items/{uuid.uuid4()}").status_code == 404
    assert world.get("/collections/incidents/items/not-a-uuid").status_code == 404


def test_datetime_interval_filters_on_the_time_span(world: World) -> None:
    t1 = world.t1.isoformat()
    until = world.get("/collections/incidents/items", datetime=f"../{t1}").json()
    assert {f["id"] for f in until["features"]} == world.before["incidents"]
    since = world.get("/collections/incidents/items", datetime=f"{t1}/..").json()
    assert since["numberMatched"] == 3  # every incident is still open after t1
    cases = world.get("/collections/cases/items", datetime=f"../{t1}", limit=100).json()
    assert {f["id"] for f in cases["features"]} == world.before["cases"]


def test_datetime_instant_replays_the_city_log(world: World) -> None:
    reads = "SELECT count(*) FROM city_events WHERE topic LIKE %s"
    recorded = world.count(reads, "core.audit:AuditRead%")
    then = world.get("/collections/incidents/items", datetime=world.t1.isoformat(), role="auditor")
    assert then.status_code == 200, then.text
    body = then.json()
    assert {f["id"] for f in body["features"]} == world.before["incidents"]
    assert body["logPosition"] > 0
    cases = world.get(
        "/collections/cases/items", datetime=world.t1.isoformat(), limit=100, role="auditor"
    )
    assert {f["id"] for f in cases.json()["features"]} == world.before["cases"]
    now = world.get("/collections/incidents/items").json()
    assert now["numberMatched"] == 3 > len(world.before["incidents"])
    assert (
        world.count(reads, "core.audit:AuditRead%") == recorded + 2
    )  # each time-travel read is in the log
    # Time travel is an auditor's or operator's read, as in the audit API.
    refused = world.get(
        "/collections/incidents/items", datetime=world.t1.isoformat(), role="dispatcher"
    )
    assert refused.status_code == 403
    assert refused.json()["code"] == "Forbidden"


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"bbox": "1,2,3"}, "bbox: give 4 numbers"),
        ({"bbox": "121,31,abc,32"}, "not a list of numbers"),
        ({"bbox": "121,95,122,96"}, "outside longitude"),
        ({"bbox": "121,32,122,31"}, "southern edge"),
        ({"limit": "0"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"crs": "EPSG:3857"}, "crs: 'EPSG:3857' is not supported"),
        ({"bbox-crs": "EPSG:32651", "bbox": "1,2,3,4"}, "bbox-crs"),
        ({"datetime": "yesterday"}, "not a date-time"),
        ({"datetime": "2025-01-01"}, "not a date-time"),
        ({"datetime": "2025-01-01T00:00:00"}, "no time zone"),
        ({"datetime": "2025-02-01T00:00:00Z/2025-01-01T00:00:00Z"}, "ends before it starts"),
        ({"datetime": "../.."}, "at least one end"),
        ({"datetime": "2999-01-01T00:00:00Z"}, "in the future"),
        ({"color": "red"}, "unknown parameter color"),
        ({"f": "html"}, "f: 'html' is not offered"),
    ],
)
def test_bad_parameters_are_400_with_an_ogc_exception(
    world: World, params: dict[str, str], says: str
) -> None:
    got = world.get("/collections/incidents/items", role="auditor", **params)
    assert got.status_code == 400, got.text
    body = got.json()
    assert body["code"] == "InvalidParameterValue"
    assert says in body["description"]


def test_unknown_collections_and_access(world: World) -> None:
    missing = world.get("/collections/buildings/items")
    assert missing.status_code == 404
    assert missing.json()["code"] == "NotFound"
    assert world.get("/collections/buildings").status_code == 404
    anonymous = world.get("/collections/sensors/items", role=None)
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "Unauthorized"
    assert world.get("/collections/cases", role="citizen").status_code == 403
    assert world.get("/collections/grid/items", role=None).status_code == 200
    assert world.get("/conformance", role=None, color="red").status_code == 400
