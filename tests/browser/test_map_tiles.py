"""The operations center draws the grid from its vector tiles, in headless Chromium.

The page draws both layers from their tiles whatever the city's size (``?map=tiles`` says
so explicitly here; ``?map=geojson`` loads them whole). The tiles the page asks for are
checked against the view (its corners as the page reports them, the tile matrix set's
arithmetic from ``morecantile``), the tileset's limits and, zoomed out, the open incidents
(only the tiles under them are needed then); the cells it drew against the grid's own
polygons (a hover's tooltip names the cell under the pointer); the colouring against an
incident the test causes. ``window.CityOps.tiles()`` is the page's read-only account of
what its tiles did. The page's Content-Security-Policy reports any violation as a console
error, and none may happen.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import httpx
import morecantile
import pytest
import shapely
from shapely.geometry import shape

from tests.browser.pages import VIEWPORT, Watched, first_load_ms, opened, watch
from tests.browser.stack import Stack
from tests.browser.test_ops_center import alarm, normal_water_sensors, wait_for_incident_of
from tests.helpers.web import auth_header, dev_token

pytestmark = pytest.mark.browser

WMQ = morecantile.tms.get("WebMercatorQuad")
TILE = re.compile(r"/ogc/collections/grid/tiles/WebMercatorQuad/(\d+)/(\d+)/(\d+)$")
TILE_PX = 512  # the page shows a tile at 512 to 1024 CSS pixels
# The last frame was drawn at the view's scale, every tile of it from its own tile, and
# no tile is on its way.
SETTLED = """() => {
    const t = window.CityOps.tiles();
    const d = t.lastDraw;
    if (d === null || d.scale !== window.CityOps.view.scale) return false;
    return d.tiles === d.slots && t.inFlight === 0;
}"""
# The map canvas's corners in lon/lat, `pad` CSS pixels outside it.
VIEW = """(pad) => {
    const r = document.querySelector('[data-testid="map-canvas"]').getBoundingClientRect();
    const [w, s] = window.CityOps.lonLatAt(r.left - pad, r.bottom + pad);
    const [e, n] = window.CityOps.lonLatAt(r.right + pad, r.top - pad);
    return [w, s, e, n];
}"""


@pytest.fixture
def tiled(browser: Any, stack: Stack) -> Iterator[Watched]:
    with opened(browser, stack.base + "/?map=tiles") as watched:
        yield watched


def settled(page: Any) -> dict[str, Any]:
    page.wait_for_function(SETTLED, timeout=20_000)
    stats: dict[str, Any] = page.evaluate("window.CityOps.tiles()")
    return stats


def requested(watched: Watched, since: int = 0) -> set[tuple[int, int, int]]:
    found = (TILE.search(u.split("?", 1)[0]) for u in watched.urls[since:])
    return {(int(m[1]), int(m[2]), int(m[3])) for m in found if m}


def city_tiles(stack: Stack, z: int) -> set[tuple[int, int, int]]:
    """The tiles of matrix ``z`` inside the grid tileset's limits."""
    doc = httpx.get(f"{stack.base}/ogc/collections/grid/tiles/WebMercatorQuad", timeout=10).json()
    [lim] = [m for m in doc["tileMatrixSetLimits"] if m["tileMatrix"] == str(z)]
    rows = range(lim["minTileRow"], lim["maxTileRow"] + 1)
    cols = range(lim["minTileCol"], lim["maxTileCol"] + 1)
    return {(z, r, c) for r in rows for c in cols}


def tiles_of(z: int, west: float, south: float, east: float, north: float) -> set[Any]:
    return {(t.z, t.y, t.x) for t in WMQ.tiles(west, south, east, north, [z])}


def view_tiles(page: Any, z: int, pad: int) -> set[tuple[int, int, int]]:
    return tiles_of(z, *page.evaluate(VIEW, pad))


def expected_z(page: Any) -> int:
    """The tile matrix whose tiles show at TILE_PX to twice that, within the tileset's."""
    scale = page.evaluate("window.CityOps.view.scale")  # CSS pixels per radian
    return min(18, max(12, math.floor(math.log2(2 * math.pi * scale / TILE_PX))))


def zoom_in_until_outlined(watched: Watched) -> int:
    """Double-click the map's middle (each doubles the scale) until cells are outlined,
    so every cell in view is drawn; the number of requests made before the last one."""
    page = watched.page
    box = page.locator('[data-testid="map-canvas"]').bounding_box()
    since = len(watched.urls)
    for _ in range(8):
        if not settled(page)["lastDraw"]["sparse"]:
            return since
        since = len(watched.urls)
        page.mouse.dblclick(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    raise AssertionError("the cells were never outlined")


def lonlat(x: float, y: float) -> tuple[float, float]:
    """The page's projected units (radians of Web Mercator) to lon/lat."""
    return math.degrees(x), math.degrees(2 * math.atan(math.exp(y)) - math.pi / 2)


def grid_cells_at(stack: Stack, lon: float, lat: float) -> list[str]:
    """The grid cells whose polygons hold (lon, lat), from the grid's GeoJSON (OGC API):
    two or more on an edge between cells."""
    d = 0.0005
    doc = httpx.get(
        f"{stack.base}/ogc/collections/grid/items",
        params={"bbox": f"{lon - d},{lat - d},{lon + d},{lat + d}", "limit": 100},
        timeout=10,
    ).json()
    point = shapely.Point(lon, lat)
    return [
        str(f["properties"]["grid_code"])
        for f in doc["features"]
        if shape(f["geometry"]).buffer(1e-6).covers(point)
    ]


def test_near_enough_for_outlines_every_tile_of_the_view_is_drawn(
    tiled: Watched, stack: Stack
) -> None:
    page = tiled.page
    assert page.evaluate("window.CityOps.tiles().source") == "tiles"
    since = zoom_in_until_outlined(tiled)
    stats = settled(page)
    drawn = stats["lastDraw"]
    z = expected_z(page)
    assert drawn["z"] == z, drawn
    city = city_tiles(stack, z)
    inside, around = view_tiles(page, z, 0) & city, view_tiles(page, z, 24) & city
    assert inside <= {t for t in requested(tiled) if t[0] == z}
    # This view asked for its own tiles only (its margin for strokes is under 24 px).
    assert requested(tiled, since) <= around
    assert len(inside) <= drawn["slots"] == drawn["tiles"] <= len(around)
    assert drawn["cells"] > 0
    assert stats["requested"] == stats["loaded"] + stats["empty"]  # none failed
    assert stats["decoded"] >= drawn["cells"]
    assert page.evaluate("window.CityOps.state.grid.length") == 0
    assert tiled.errors == []  # CSP violations among them
    assert tiled.off_loopback() == []
    assert not any("/map/layers/grid" in u for u in tiled.urls)  # the GeoJSON grid: never


def test_a_cell_drawn_from_its_tile_is_the_grid_cell_there(tiled: Watched, stack: Stack) -> None:
    page = tiled.page
    zoom_in_until_outlined(tiled)
    settled(page)
    box = page.locator('[data-testid="map-canvas"]').bounding_box()
    tooltip = page.locator('[data-testid="map-tooltip"]')
    checked = 0
    for fx, fy in ((0.513, 0.487), (0.431, 0.572), (0.583, 0.414), (0.372, 0.361), (0.622, 0.663)):
        x, y = box["x"] + box["width"] * fx, box["y"] + box["height"] * fy
        page.mouse.move(x, y)
        if not tooltip.is_visible() or "Grid cell" not in tooltip.inner_text():
            continue  # a sensor's there
        code = tooltip.inner_text().split("\n")[0].rsplit(" ", 1)[1]
        lon, lat = page.evaluate("([x, y]) => window.CityOps.lonLatAt(x, y)", [x, y])
        there = grid_cells_at(stack, lon, lat)
        if len(there) != 1:
            continue  # within a micrometre of an edge
        assert code == there[0], (lon, lat)
        checked += 1
    assert checked >= 3
    assert tiled.errors == []


def test_zoomed_out_only_the_tiles_under_open_incidents_are_drawn(
    tiled: Watched, stack: Stack
) -> None:
    page = tiled.page
    before = settled(page)["lastDraw"]
    # The first few tiles told the page the cells' size; from now on only what is coloured.
    assert page.evaluate("window.CityOps.view.cellSize") > 0
    since = len(tiled.urls)
    open_codes = page.evaluate(
        "[...window.CityOps.state.incidents.values()].map((r) => r.props.grid_code)"
    )
    if not open_codes:
        assert before["coloured"] == 0
    sensor = next(
        s for s in reversed(normal_water_sensors(stack)) if s["grid_code"] not in open_codes
    )
    alarm(stack, sensor)
    incident = wait_for_incident_of(page, sensor["device_id"])
    code = page.evaluate("(id) => window.CityOps.state.incidents.get(id).props.grid_code", incident)
    assert code == sensor["grid_code"]
    for _ in range(2):  # past the whole city
        page.locator('[data-testid="zoom-out"]').click()
    page.wait_for_function(
        "(n) => window.CityOps.tiles().lastDraw.coloured > n", arg=before["coloured"]
    )
    drawn = settled(page)["lastDraw"]
    assert drawn["sparse"] is True
    assert drawn["z"] == expected_z(page) == 12

    # The tiles under the incidents, a cell's width around each: and no others.
    points = page.evaluate(
        "[...window.CityOps.state.incidents.values()].filter((r) => Number.isFinite(r.x))"
        ".map((r) => [r.x, r.y])"
    )
    cell = page.evaluate("window.CityOps.view.cellSize")
    city = city_tiles(stack, 12)
    under = {t for x, y in points for t in tiles_of(12, *lonlat(x, y), *lonlat(x, y))} & city
    near: set[Any] = set()
    for x, y in points:
        near |= tiles_of(12, *lonlat(x - cell, y - cell), *lonlat(x + cell, y + cell))
    assert under <= requested(tiled)
    asked = requested(tiled, since)
    assert asked <= near & city
    assert len(asked) < len(view_tiles(page, 12, 0) & city)  # not the whole city
    assert tiled.errors == []
    assert tiled.off_loopback() == []


SENSOR_TILE = re.compile(r"/ogc/collections/sensors/tiles/WebMercatorQuad/(\d+)/(\d+)/(\d+)$")
# A sensor's place on the page (client coordinates), from its lon/lat and the page's view.
SCREEN = """([lon, lat]) => {
    const v = window.CityOps.view;
    const r = document.querySelector('[data-testid="map-canvas"]').getBoundingClientRect();
    const x = (lon * Math.PI) / 180;
    const y = Math.log(Math.tan(Math.PI / 4 + (lat * Math.PI) / 360));
    return [r.left + x * v.scale + v.tx, r.top + v.ty - y * v.scale];
}"""


def test_sensors_not_normal_are_records_and_the_rest_come_from_tiles(
    tiled: Watched, stack: Stack
) -> None:
    page = tiled.page
    assert page.evaluate("window.CityOps.tiles('sensors').source") == "tiles"
    sensors = [u for u in tiled.urls if "/api/v1/map/layers/sensors" in u]
    assert sorted(u.rsplit("=", 1)[1] for u in sensors) == ["alarm", "maintenance", "silent"]
    states = page.evaluate("[...window.CityOps.state.sensors.values()].map((r) => r.props.state)")
    assert "normal" not in states
    total = httpx.get(
        f"{stack.base}/ogc/collections/sensors/items?limit=1",
        headers=auth_header(dev_token(stack.base, "operator")),
        timeout=10,
    ).json()["numberMatched"]
    assert page.locator('[data-testid="count-sensors"]').get_attribute("data-count") == str(total)

    # Zoomed in on a normal sensor, far enough for the sensors' tiles: it is drawn from one.
    waters = normal_water_sensors(stack)
    sensor = waters[len(waters) // 2]
    for _ in range(12):
        if page.evaluate(
            "(() => { const d = window.CityOps.tiles('sensors').lastDraw;"
            " return d !== null && d.z >= 14; })()"
        ):
            break
        x, y = page.evaluate(SCREEN, [sensor["lon"], sensor["lat"]])
        page.mouse.dblclick(x, y)
    page.wait_for_function(
        "() => { const d = window.CityOps.tiles('sensors').lastDraw;"
        " return d.z !== null && d.tiles === d.slots && d.sensors > 0; }",
        timeout=20_000,
    )
    drawn = page.evaluate("window.CityOps.tiles('sensors').lastDraw")
    assert drawn["z"] == min(18, math.floor(math.log2(2 * math.pi * scale(page) / TILE_PX))) >= 14
    asked = {
        (int(m[1]), int(m[2]), int(m[3])) for m in (SENSOR_TILE.search(u) for u in tiled.urls) if m
    }
    assert view_tiles(page, drawn["z"], 0) & asked  # the view's, at the tile matrix drawn
    assert not page.evaluate("(id) => window.CityOps.state.sensors.has(id)", sensor["device_id"])
    x, y = page.evaluate(SCREEN, [sensor["lon"], sensor["lat"]])
    page.mouse.move(x, y)
    tooltip = page.locator('[data-testid="map-tooltip"]')
    tooltip.wait_for(state="visible")
    assert tooltip.inner_text().split("\n")[0] == f"Sensor {sensor['device_id']}"
    assert "normal" in tooltip.inner_text()

    # Into alarm: a record now, and the tiles are asked for again.
    before = page.evaluate("window.CityOps.tiles('sensors').requested")
    alarm(stack, sensor)
    page.wait_for_function(
        "(id) => { const r = window.CityOps.state.sensors.get(id);"
        " return r !== undefined && r.props.state === 'alarm'; }",
        arg=sensor["device_id"],
        timeout=15_000,
    )
    page.wait_for_function(
        "(n) => window.CityOps.tiles('sensors').requested > n", arg=before, timeout=10_000
    )
    assert tiled.errors == []
    assert tiled.off_loopback() == []


def test_without_the_decoder_the_page_loads_the_whole_grid(browser: Any, stack: Stack) -> None:
    context = browser.new_context(viewport=VIEWPORT)
    try:
        context.route("**/static/vendor/mvt.js", lambda route: route.fulfill(status=404))
        watched = watch(context)
        warnings: list[str] = []
        watched.page.on(
            "console", lambda m: warnings.append(m.text) if m.type == "warning" else None
        )
        watched.page.goto(stack.base + "/?map=tiles")
        first_load_ms(watched.page)
        page = watched.page
        assert page.evaluate("window.CityOps.tiles().source") == "geojson"
        assert page.evaluate("window.CityOps.state.grid.length") > 0
        assert any("/api/v1/map/layers/grid" in u for u in watched.urls)
        assert any(u.endswith("/api/v1/map/layers/sensors") for u in watched.urls)
        assert requested(watched) == set()
        assert not any(SENSOR_TILE.search(u) for u in watched.urls)
        assert len(warnings) == 1, warnings
        assert "/static/vendor/mvt.js" in warnings[0]
        assert "scripts/web.sh" in warnings[0]
        # The browser's own line for the 404, and nothing else.
        assert all("404" in e for e in watched.errors), watched.errors
    finally:
        context.close()


def scale(page: Any) -> float:
    return float(page.evaluate("window.CityOps.view.scale"))


def test_whatever_the_city_s_size_the_page_uses_tiles(browser: Any, stack: Stack) -> None:
    cells = httpx.get(f"{stack.base}/ogc/collections/grid/items?limit=1", timeout=10).json()
    assert cells["numberMatched"] < 10_000  # the demo city: once loaded whole
    with opened(browser, stack.base + "/") as watched:
        page = watched.page
        assert page.evaluate("window.CityOps.tiles().source") == "tiles"
        assert page.evaluate("window.CityOps.tiles('sensors').source") == "tiles"
        assert not any("/api/v1/map/layers/grid" in u for u in watched.urls)
        # The city seen whole: its sensors from the tiles, below z14 (thinned there).
        page.wait_for_function(
            "() => { const d = window.CityOps.tiles('sensors').lastDraw;"
            " return d !== null && d.z < 14 && d.tiles === d.slots && d.sensors > 0; }",
            timeout=20_000,
        )
        assert watched.errors == []


def test_map_geojson_loads_the_layers_whole(browser: Any, stack: Stack) -> None:
    cells = httpx.get(f"{stack.base}/ogc/collections/grid/items?limit=1", timeout=10).json()
    with opened(browser, stack.base + "/?map=geojson") as watched:
        page = watched.page
        assert page.evaluate("window.CityOps.tiles().source") == "geojson"
        assert page.evaluate("window.CityOps.state.grid.length") == cells["numberMatched"]
        assert any("/api/v1/map/layers/grid" in u for u in watched.urls)
        assert requested(watched) == set()
        assert not any(SENSOR_TILE.search(u) for u in watched.urls)
        assert watched.errors == []


def test_zoomed_out_hotspots_need_no_grid_tile(tiled: Watched) -> None:
    page = tiled.page
    settled(page)
    assert page.evaluate("window.CityOps.view.cellSize") > 0
    page.locator('[data-testid="grid-mode-hotspot"]').check()
    page.wait_for_selector('body[data-grid-mode="hotspot"]')
    since = len(tiled.urls)
    for _ in range(2):  # past the whole city
        page.locator('[data-testid="zoom-out"]').click()
    drawn = settled(page)["lastDraw"]
    assert drawn["sparse"] is True
    assert drawn["slots"] == 0
    assert requested(tiled, since) == set()
    assert any("/api/v1/hotspots.geojson" in u for u in tiled.urls)
    assert tiled.errors == []
