"""OGC API – Tiles (api.tiles): vector tiles of the grid and the sensors, read by two decoders.

One seeded city for the module: its grid of 150 m cells and 40 registered sensors,
projected into the map's read model. Tiles are decoded by ``mapbox_vector_tile`` and by
GDAL's MVT driver (``ogr2ogr`` of Debian's gdal-bin) and compared with the layers
themselves: the grid cells as loaded (a shapely query of the tile's buffered extent), the
sensors as PostgreSQL has them. The tile's extent is computed here from the tile matrix
set's numbers (pyproj for the geographic corners), not with the code under test.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import mapbox_vector_tile
import morecantile
import numpy as np
import pytest
import shapely
from fastapi.testclient import TestClient
from httpx import Response
from pyproj import Transformer

from cityops.bootstrap import api_app, city_layers, projections, seed
from infra.settings import Settings
from projections.runner import ProjectionWorker
from tests.helpers.builders import flood_alarm
from tests.helpers.city import City, open_city
from tests.helpers.db import fresh_settings
from tests.helpers.gdal import ogr2ogr_geojson
from tests.helpers.web import bearer

pytestmark = pytest.mark.integration  # GDAL's ogr2ogr: scripts/test.sh installs gdal-bin

WMQ = morecantile.tms.get("WebMercatorQuad")
MVT = "application/vnd.mapbox-vector-tile"
EXTENT = 4096
BUFFER = 64
TO_LONLAT = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)
TO_MERCATOR = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)


@dataclass
class World:
    settings: Settings
    city: City
    client: TestClient
    worker: ProjectionWorker
    grid: gpd.GeoDataFrame

    def get(self, path: str, role: str | None = None, **headers: str) -> Response:
        auth = bearer(self.settings, role) if role else {}
        return self.client.get(f"/ogc{path}", headers={**auth, **headers})

    def tile(self, layer: str, z: int, row: int, col: int, role: str | None = None) -> Response:
        return self.get(f"/collections/{layer}/tiles/WebMercatorQuad/{z}/{row}/{col}", role)

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.city.pool.connection() as conn:
            return conn.execute(query, params).fetchall()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with fresh_settings(tmp_path_factory.mktemp("tiles") / "city") as settings:
        seed(settings)
        with open_city(settings) as city:
            worker = ProjectionWorker(city.app, settings.database_url, projections())
            try:
                worker.catch_up()
                app = api_app(settings)
                with TestClient(app, client=("127.0.0.1", 50000)) as client:
                    yield World(settings, city, client, worker, city_layers(settings).grid)
            finally:
                worker.close()


# -- the tile's extent, from the tile matrix set's numbers ------------------------------------


@dataclass(frozen=True)
class Extent:
    left: float
    bottom: float
    right: float
    top: float

    @classmethod
    def of(cls, z: int, row: int, col: int) -> Extent:
        """The tile's square in EPSG:3857 grown by the buffer: the matrix's origin and
        cell size (``tileWidth`` pixels of ``cellSize`` metres per tile)."""
        matrix = WMQ.matrix(z)
        size = matrix.cellSize * matrix.tileWidth
        x0, y0 = matrix.pointOfOrigin
        left, top = x0 + col * size, y0 - row * size
        pad = size * BUFFER / EXTENT
        return cls(left - pad, top - size - pad, left + size + pad, top + pad)

    @property
    def unit(self) -> float:
        """Metres per tile unit."""
        return (self.right - self.left) / (EXTENT + 2 * BUFFER)

    def lonlat(self) -> tuple[float, float, float, float]:
        (west, east), (south, north) = TO_LONLAT.transform(
            [self.left, self.right], [self.bottom, self.top]
        )
        return west, south, east, north

    def box(self) -> shapely.Polygon:
        return shapely.box(self.left, self.bottom, self.right, self.top)

    def to_mercator(self, units: np.ndarray) -> np.ndarray:
        """Tile units (y down, 0 at the unbuffered tile's top left) to EPSG:3857."""
        origin = np.array([self.left + BUFFER * self.unit, self.top - BUFFER * self.unit])
        return origin + units * np.array([self.unit, -self.unit])


def mercator(geometry: Any) -> Any:
    return shapely.transform(geometry, lambda xy: np.column_stack(TO_MERCATOR.transform(*xy.T)))


def decoded(body: bytes) -> dict[str, Any]:
    """The tile's layers, coordinates in raw tile units (y down)."""
    layers: dict[str, Any] = mapbox_vector_tile.decode(body, None, {"y_coord_down": True})
    return layers


def city_tiles(world: World, z: int) -> list[morecantile.Tile]:
    west, south, east, north = world.grid.total_bounds
    return list(WMQ.tiles(west, south, east, north, [z]))


# -- metadata -------------------------------------------------------------------------------


def test_the_tile_matrix_set_is_webmercatorquad(world: World) -> None:
    listing = world.get("/tileMatrixSets")
    assert listing.status_code == 200, listing.text
    [entry] = listing.json()["tileMatrixSets"]
    assert entry["id"] == "WebMercatorQuad"
    assert entry["uri"] == "http://www.opengis.net/def/tilematrixset/OGC/1.0/WebMercatorQuad"
    definition = world.client.get(entry["links"][0]["href"])
    assert definition.status_code == 200
    doc = definition.json()
    assert doc["id"] == "WebMercatorQuad"
    assert doc["crs"] == "http://www.opengis.net/def/crs/EPSG/0/3857"
    assert [m["id"] for m in doc["tileMatrices"]] == [str(z) for z in range(25)]
    missing = world.get("/tileMatrixSets/WorldCRS84Quad")
    assert missing.status_code == 404
    assert missing.json()["code"] == "NotFound"


@pytest.mark.parametrize(("layer", "role"), [("grid", None), ("sensors", "operator")])
def test_a_tileset_links_its_tiles_and_limits_them_to_the_city(
    world: World, layer: str, role: str | None
) -> None:
    listing = world.get(f"/collections/{layer}/tiles", role)
    assert listing.status_code == 200, listing.text
    [summary] = listing.json()["tilesets"]
    assert summary["dataType"] == "vector"
    assert summary["crs"] == "http://www.opengis.net/def/crs/EPSG/0/3857"
    rels = {ln["rel"]: ln["href"] for ln in summary["links"]}
    assert rels["http://www.opengis.net/def/rel/ogc/1.0/tiling-scheme"].endswith(
        "/ogc/tileMatrixSets/WebMercatorQuad"
    )
    tileset = world.client.get(rels["self"], headers=bearer(world.settings, role) if role else {})
    assert tileset.status_code == 200, tileset.text
    doc = tileset.json()
    [item] = [ln for ln in doc["links"] if ln["rel"] == "item"]
    assert item["templated"] is True
    assert item["type"] == MVT
    assert item["href"].endswith(
        f"/collections/{layer}/tiles/WebMercatorQuad/{{tileMatrix}}/{{tileRow}}/{{tileCol}}"
    )
    assert doc["layers"][0]["id"] == layer
    # Every cell's tile is inside the limits, and every tile inside them meets the city.
    limits = {lim["tileMatrix"]: lim for lim in doc["tileMatrixSetLimits"]}
    lim = limits["14"]
    points = world.grid.geometry.representative_point()
    rows_cols = {(WMQ.tile(p.x, p.y, 14).y, WMQ.tile(p.x, p.y, 14).x) for p in points}
    assert {r for r, _ in rows_cols} == set(range(lim["minTileRow"], lim["maxTileRow"] + 1))
    assert {c for _, c in rows_cols} == set(range(lim["minTileCol"], lim["maxTileCol"] + 1))


def test_the_features_collections_link_their_tilesets(world: World) -> None:
    rel = "http://www.opengis.net/def/rel/ogc/1.0/tilesets-vector"
    for layer, role in (("grid", None), ("sensors", "operator"), ("incidents", "operator")):
        doc = world.get(f"/collections/{layer}", role).json()
        tilesets = [lk["href"] for lk in doc["links"] if lk["rel"] == rel]
        if layer == "incidents":
            assert tilesets == []
            continue
        assert len(tilesets) == 1
        path = tilesets[0].split("/ogc", 1)[1]
        assert world.get(path, role).status_code == 200


def test_only_the_grid_and_the_sensors_have_tiles(world: World) -> None:
    for layer in ("districts", "incidents", "cases", "nope"):
        answer = world.get(f"/collections/{layer}/tiles", "operator")
        assert answer.status_code == 404, (layer, answer.text)
        assert answer.json()["code"] == "NotFound"


# -- the grid -------------------------------------------------------------------------------


def grid_tile_cases(world: World) -> list[tuple[int, int, int]]:
    """A tile inside the city, one on its edge (z14), one close up (z16)."""
    inner = city_tiles(world, 14)
    rows = sorted({t.y for t in inner})
    cols = sorted({t.x for t in inner})
    middle = (14, rows[len(rows) // 2], cols[len(cols) // 2])
    edge = (14, rows[0], cols[0])
    cx, cy = world.grid.geometry.iloc[len(world.grid) // 2].centroid.coords[0]
    close = WMQ.tile(cx, cy, 16)
    return [middle, edge, (16, close.y, close.x)]


def test_a_grid_tile_holds_exactly_the_cells_of_its_extent(world: World) -> None:
    cells = mercator(np.asarray(world.grid.geometry, dtype=object))
    codes = world.grid.grid_code.to_numpy()
    districts = dict(zip(world.grid.grid_code, world.grid.district_code, strict=True))
    for z, row, col in grid_tile_cases(world):
        answer = world.tile("grid", z, row, col)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == MVT
        layer = decoded(answer.content)["grid"]
        assert layer["extent"] == EXTENT
        got = {f["properties"]["grid_code"]: f for f in layer["features"]}
        assert len(got) == len(layer["features"])  # each cell once

        extent = Extent.of(z, row, col)
        box = extent.box()
        clipped = shapely.intersection(cells, box)
        meets = shapely.area(clipped) > 0
        expected = {str(c): g for c, g in zip(codes[meets], clipped[meets], strict=True)}
        # A part narrower than one unit cannot be drawn: the only cells allowed missing.
        missing = set(expected) - set(got)
        for code in missing:
            x0, y0, x1, y1 = expected[code].bounds
            assert min(x1 - x0, y1 - y0) < extent.unit, code
        assert set(got) <= set(expected)
        assert len(got) > 10

        for code, feature in got.items():
            assert feature["properties"]["district_code"] == districts[code]
            shape = shapely.geometry.shape(feature["geometry"])
            assert shape.is_valid
            assert shape.area > 0
            # MVT 2.1: an exterior ring has a positive area in tile units (y down).
            polygons = getattr(shape, "geoms", [shape])
            assert all(shapely.is_ccw(p.exterior) for p in polygons), code
            back = shapely.transform(shape, extent.to_mercator)
            # Clipped to the buffered extent and quantised: within a unit of the cell.
            assert shapely.hausdorff_distance(back, expected[code]) <= extent.unit, code


def ogr2ogr(world: World, tmp: Path, body: bytes, z: int, row: int, col: int) -> dict[str, Any]:
    """The tile read by GDAL's MVT driver (georeferenced by its z/x/y, buffer kept), as
    GeoJSON in EPSG:3857."""
    source, out = tmp / "tile.mvt", tmp / "tile.geojson"
    source.write_bytes(body)
    out.unlink(missing_ok=True)
    return ogr2ogr_geojson(
        out,
        str(source),
        *("-oo", f"X={col}", "-oo", f"Y={row}", "-oo", f"Z={z}", "-oo", "CLIP=NO"),
    )


def test_gdal_reads_a_grid_tile_as_the_cells_there(world: World, tmp_path: Path) -> None:
    z, row, col = grid_tile_cases(world)[0]
    answer = world.tile("grid", z, row, col)
    assert answer.status_code == 200
    ours = {f["properties"]["grid_code"] for f in decoded(answer.content)["grid"]["features"]}
    read = ogr2ogr(world, tmp_path, answer.content, z, row, col)
    by_code = {f["properties"]["grid_code"]: f for f in read["features"]}
    assert set(by_code) == ours
    extent = Extent.of(z, row, col)
    cells = dict(zip(world.grid.grid_code, mercator(np.asarray(world.grid.geometry)), strict=True))
    for code, feature in by_code.items():
        shape = shapely.geometry.shape(feature["geometry"])
        clipped = shapely.intersection(cells[code], extent.box())
        assert shapely.hausdorff_distance(shape, clipped) <= extent.unit, code


# -- the sensors ----------------------------------------------------------------------------


def sensors_in(world: World, extent: Extent) -> dict[str, tuple[Any, ...]]:
    west, south, east, north = extent.lonlat()
    found = world.rows(
        "SELECT device_id, sensor_type, state, grid_code, district_code, lon, lat"
        " FROM map_sensors WHERE lon BETWEEN %s AND %s AND lat BETWEEN %s AND %s",
        west,
        east,
        south,
        north,
    )
    return {r[0]: r for r in found}


def test_every_sensor_tile_holds_exactly_the_sensors_of_its_extent(world: World) -> None:
    empty = full = 0
    for t in city_tiles(world, 14):
        extent = Extent.of(t.z, t.y, t.x)
        expected = sensors_in(world, extent)
        answer = world.tile("sensors", t.z, t.y, t.x, "operator")
        if not expected:
            assert answer.status_code == 204, answer.text
            assert answer.content == b""
            assert answer.headers["etag"]
            empty += 1
            continue
        assert answer.status_code == 200, answer.text
        features = decoded(answer.content)["sensors"]["features"]
        got = {f["properties"]["device_id"]: f for f in features}
        assert set(got) == set(expected)
        assert len(features) == len(got)
        for device, (_, kind, state, grid, district, lon, lat) in expected.items():
            props = got[device]["properties"]
            assert (props["sensor_type"], props["state"]) == (kind, state)
            assert (props.get("grid_code"), props.get("district_code")) == (grid, district)
            units = np.array([got[device]["geometry"]["coordinates"]], dtype=float)
            x, y = TO_MERCATOR.transform(lon, lat)
            assert np.abs(extent.to_mercator(units)[0] - (x, y)).max() <= extent.unit / 2 + 1e-6
        full += 1
    # The 40 sensors leave some tiles of the city empty.
    assert empty > 0
    assert full > 0


def busiest_sensor_tile(world: World, z: int = 14) -> tuple[int, int, int]:
    """The tile at ``z`` with the most sensors among those with a water sensor."""
    positions = world.rows("SELECT lon, lat, sensor_type FROM map_sensors")
    tiles_of = [WMQ.tile(lon, lat, z) for lon, lat, _ in positions]
    watered = {
        t for t, (*_, kind) in zip(tiles_of, positions, strict=True) if kind == "water_level"
    }
    best = max(watered, key=tiles_of.count)
    return best.z, best.y, best.x


def test_gdal_reads_a_sensor_tile(world: World, tmp_path: Path) -> None:
    z, row, col = busiest_sensor_tile(world)
    answer = world.tile("sensors", z, row, col, "operator")
    assert answer.status_code == 200
    read = ogr2ogr(world, tmp_path, answer.content, z, row, col)
    expected = sensors_in(world, Extent.of(z, row, col))
    assert {f["properties"]["device_id"] for f in read["features"]} == set(expected)
    unit = Extent.of(z, row, col).unit
    for f in read["features"]:
        *_, lon, lat = expected[f["properties"]["device_id"]]
        x, y = TO_MERCATOR.transform(lon, lat)
        assert np.abs(np.array(f["geometry"]["coordinates"]) - (x, y)).max() <= unit


def test_sensor_tiles_are_for_staff(world: World) -> None:
    z, row, col = busiest_sensor_tile(world)
    anonymous = world.tile("sensors", z, row, col)
    assert anonymous.status_code == 401
    assert anonymous.json()["code"] == "Unauthorized"
    assert world.get("/collections/sensors/tiles").status_code == 401
    for role in ("citizen", "gateway"):
        refused = world.tile("sensors", z, row, col, role)
        assert refused.status_code == 403, role
        assert refused.json()["code"] == "Forbidden"
    assert world.tile("sensors", z, row, col, "dispatcher").status_code == 200
    # The grid is a reference layer: anyone's.
    assert world.tile("grid", *grid_tile_cases(world)[0]).status_code == 200


# -- the sensors zoomed out: thinned ----------------------------------------------------------

FULL_ZOOM = 14  # from here a sensor tile holds every sensor of its extent
BIN = 64  # below it, one normal sensor per BIN x BIN units, and every one not normal


def square(extent: Extent, lon: float, lat: float) -> tuple[int, int]:
    """The BIN x BIN square of the tile's units that (lon, lat) falls in."""
    x, y = TO_MERCATOR.transform(lon, lat)
    left, top = extent.left + BUFFER * extent.unit, extent.top - BUFFER * extent.unit
    size = BIN * extent.unit
    return math.floor((x - left) / size), math.floor((top - y) / size)


def tile_sensors(world: World, z: int, row: int, col: int) -> dict[str, dict[str, Any]]:
    """The sensors' properties in a tile by device id ({} for a 204 or a 404)."""
    answer = world.tile("sensors", z, row, col, "operator")
    if answer.status_code in (204, 404):
        return {}
    assert answer.status_code == 200, answer.text
    features = decoded(answer.content)["sensors"]["features"]
    return {f["properties"]["device_id"]: f["properties"] for f in features}


def test_zoomed_out_a_sensor_tile_shows_every_square_that_has_a_sensor(world: World) -> None:
    doc = world.get("/collections/sensors/tiles/WebMercatorQuad", "operator").json()
    assert doc["tileMatrixSetLimits"][0]["tileMatrix"] == "8"  # a city seen whole
    thinned = 0
    for z in range(8, FULL_ZOOM):
        for t in city_tiles(world, z):
            extent = Extent.of(t.z, t.y, t.x)
            expected = sensors_in(world, extent)
            got = tile_sensors(world, t.z, t.y, t.x)
            assert set(got) <= set(expected)
            for device, props in got.items():
                assert props["state"] == expected[device][2]
            # Every sensor not normal, whatever the zoom.
            assert {d for d, r in expected.items() if r[2] != "normal"} <= set(got)
            # One normal sensor for each square that has any, and none twice.
            squares: dict[tuple[int, int], set[str]] = {}
            for device, (*_, state, _g, _d, lon, lat) in expected.items():
                if state == "normal":
                    squares.setdefault(square(extent, lon, lat), set()).add(device)
            for devices in squares.values():
                assert len(devices & set(got)) == 1, (t, devices & set(got))
            normal = sum(len(d) for d in squares.values())
            thinned += normal > len(squares)
    assert thinned > 0, "the test city's sensors never share a square"


def test_zooming_in_only_adds_sensors(world: World) -> None:
    for z in range(8, FULL_ZOOM):
        for t in city_tiles(world, z):
            extent = Extent.of(t.z, t.y, t.x)
            own = Extent(
                extent.left + BUFFER * extent.unit,
                extent.bottom + BUFFER * extent.unit,
                extent.right - BUFFER * extent.unit,
                extent.top - BUFFER * extent.unit,
            )
            inside = set(sensors_in(world, own))  # not in the buffer
            parent = set(tile_sensors(world, t.z, t.y, t.x)) & inside
            children: set[str] = set()
            for dr in (0, 1):
                for dc in (0, 1):
                    children |= set(tile_sensors(world, z + 1, 2 * t.y + dr, 2 * t.x + dc))
            assert parent <= children, (t, parent - children)


def test_a_thinned_sensor_tile_revalidates_by_etag(world: World) -> None:
    z, row, col = busiest_sensor_tile(world, 10)
    path = f"/collections/sensors/tiles/WebMercatorQuad/{z}/{row}/{col}"
    auth = bearer(world.settings, "operator")
    first = world.client.get(f"/ogc{path}", headers=auth)
    assert first.status_code == 200
    again = world.client.get(
        f"/ogc{path}", headers={**auth, "If-None-Match": first.headers["etag"]}
    )
    assert again.status_code == 304


# -- coordinates ----------------------------------------------------------------------------


def test_bad_coordinates_are_400_and_tiles_outside_the_limits_404(world: World) -> None:
    z, row, col = grid_tile_cases(world)[0]
    base = "/collections/grid/tiles/WebMercatorQuad"
    for path in (f"{base}/14/abc/{col}", f"{base}/14/{row}/-1", f"{base}/x/{row}/{col}"):
        answer = world.get(path)
        assert answer.status_code == 400, (path, answer.text)
        assert answer.json()["code"] == "InvalidParameterValue"
    for path in (
        f"{base}/25/{row}/{col}",  # no such tile matrix
        f"{base}/14/{2**14}/{col}",  # past the matrix's last row
        f"{base}/11/{row >> 3}/{col >> 3}",  # a tile matrix the grid has no tiles in
        f"{base}/14/0/0",  # outside the city
        f"/collections/grid/tiles/WorldCRS84Quad/14/{row}/{col}",
    ):
        answer = world.get(path)
        assert answer.status_code == 404, (path, answer.text)
        assert answer.json()["code"] == "NotFound"
    assert world.get(f"{base}/{z}/{row}/{col}?f=json").status_code == 400
    assert world.get(f"{base}/{z}/{row}/{col}?bbox=1,2,3,4").status_code == 400
    assert world.get(f"{base}/{z}/{row}/{col}?f=mvt").status_code == 200


# -- caching --------------------------------------------------------------------------------


def test_grid_tiles_revalidate_by_etag(world: World) -> None:
    z, row, col = grid_tile_cases(world)[0]
    first = world.tile("grid", z, row, col)
    etag = first.headers["etag"]
    assert first.headers["cache-control"].startswith("public, max-age=")
    path = f"/collections/grid/tiles/WebMercatorQuad/{z}/{row}/{col}"
    for sent in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = world.get(path, **{"If-None-Match": sent})
        assert again.status_code == 304, sent
        assert again.content == b""
        assert again.headers["etag"] == etag
    stale = world.get(path, **{"If-None-Match": '"other"'})
    assert stale.status_code == 200
    assert stale.content == first.content
    neighbour = world.tile("grid", z, row, col + 1)
    assert neighbour.headers["etag"] != etag


def test_a_sensor_change_changes_its_tile_and_its_etag(world: World) -> None:
    z, row, col = busiest_sensor_tile(world)
    path = f"/collections/sensors/tiles/WebMercatorQuad/{z}/{row}/{col}"
    auth = bearer(world.settings, "operator")
    first = world.client.get(f"/ogc{path}", headers=auth)
    assert first.status_code == 200
    assert first.headers["cache-control"] == "private, no-cache"
    etag = first.headers["etag"]
    unchanged = world.client.get(f"/ogc{path}", headers={**auth, "If-None-Match": etag})
    assert unchanged.status_code == 304
    # A water sensor of the tile goes into alarm, through the projection.
    west, south, east, north = Extent.of(z, row, col).lonlat()
    [(device,)] = world.rows(
        "SELECT device_id FROM map_sensors WHERE sensor_type = 'water_level' AND state <> 'alarm'"
        " AND lon BETWEEN %s AND %s AND lat BETWEEN %s AND %s ORDER BY device_id LIMIT 1",
        west,
        east,
        south,
        north,
    )
    flood_alarm(world.city.app, device, correlation_id=f"tiles-{device}")
    world.worker.catch_up()
    assert world.rows("SELECT state FROM map_sensors WHERE device_id = %s", device) == [("alarm",)]
    changed = world.client.get(f"/ogc{path}", headers={**auth, "If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    states = {
        f["properties"]["device_id"]: f["properties"]["state"]
        for f in decoded(changed.content)["sensors"]["features"]
    }
    assert states[device] == "alarm"
    again = world.client.get(
        f"/ogc{path}", headers={**auth, "If-None-Match": changed.headers["etag"]}
    )
    assert again.status_code == 304
