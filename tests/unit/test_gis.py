"""gis/: CRS checks, coordinate validation, point assignment, layer files."""

from __future__ import annotations

import doctest
from pathlib import Path
from types import ModuleType

import geopandas as gpd
import numpy as np
import pytest
import shapely
from geopandas.testing import assert_geodataframe_equal

import gis.assign
import gis.crs
import gis.layers
from gis.assign import NOWHERE, GridIndex, Jurisdictions, Placement, Placer
from gis.crs import (
    METRIC_CRS,
    WGS84,
    CoordinateError,
    CRSMismatchError,
    distance_m,
    ensure_wgs84,
    to_metric,
    valid_lonlat_mask,
    validate_lonlat,
)
from gis.layers import CityLayers, LayerError, detect_format, load_layers, save_layers

X0, Y0, STEP = 121.40, 31.20, 0.002
NX, NY = 12, 10  # columns 0-5 are district 310101, 6-11 are 310104


# --- builders -------------------------------------------------------------------------


def make_grid(triangles: bool = False) -> gpd.GeoDataFrame:
    """A NX x NY lattice of square cells (or two triangles per square), two districts."""
    codes: list[str] = []
    districts: list[str] = []
    geoms: list[shapely.Polygon] = []
    for col in range(NX):
        for row in range(NY):
            district = "310101" if col < NX // 2 else "310104"
            x, y = X0 + col * STEP, Y0 + row * STEP
            if triangles:
                parts = [
                    shapely.Polygon([(x, y), (x + STEP, y), (x, y + STEP)]),
                    shapely.Polygon([(x + STEP, y), (x + STEP, y + STEP), (x, y + STEP)]),
                ]
            else:
                parts = [shapely.box(x, y, x + STEP, y + STEP)]
            for part in parts:
                geoms.append(part)
                districts.append(district)
                codes.append(f"{district}001001{len(codes) + 1:03d}")
    return gpd.GeoDataFrame(
        {"grid_code": codes, "district_code": districts}, geometry=geoms, crs=WGS84
    )


def district_box(code: str) -> shapely.Polygon:
    half = NX // 2
    c0 = 0 if code == "310101" else half
    return shapely.box(X0 + c0 * STEP, Y0, X0 + (c0 + half) * STEP, Y0 + NY * STEP)


def make_layers() -> CityLayers:
    codes = ["310101", "310104"]
    districts = gpd.GeoDataFrame(
        {
            "district_code": codes,
            "name": ["Huangpu District", "Xuhui District"],
            "name_zh": ["黄浦区", "徐汇区"],
        },
        geometry=[district_box(c) for c in codes],
        crs=WGS84,
    )
    jurisdictions = gpd.GeoDataFrame(
        [
            {
                "department_code": f"{c}-{t}",
                "department_type": t,
                "name": f"{c} {t}",
                "name_zh": f"{c}{t}局",
                "geometry": district_box(c),
            }
            for c in codes
            for t in ("water", "roads")
        ],
        geometry="geometry",
        crs=WGS84,
    )
    sensors = gpd.GeoDataFrame(
        {
            "device_id": ["wl-000001", "pm-000001"],
            "sensor_type": ["water_level", "pm25"],
            "gateway_id": ["gw-310101-01", "gw-310104-01"],
            "grid_code": ["310101001001001", None],
            "district_code": ["310101", "310104"],
        },
        geometry=shapely.points([X0 + STEP / 2, X0 + 9 * STEP], [Y0 + STEP / 2, Y0 + STEP]),
        crs=WGS84,
    )
    return CityLayers(districts, make_grid(), jurisdictions, sensors)


def random_points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Uniform points over the lattice plus a margin, so some fall outside it."""
    rng = np.random.default_rng(seed)
    margin = 2 * STEP
    lon = rng.uniform(X0 - margin, X0 + NX * STEP + margin, n)
    lat = rng.uniform(Y0 - margin, Y0 + NY * STEP + margin, n)
    return lon, lat


def sjoin_codes(grid: gpd.GeoDataFrame, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Reference answer: geopandas sjoin, first grid row on ties."""
    points = gpd.GeoDataFrame(geometry=gpd.points_from_xy(lon, lat), crs=WGS84)
    joined = points.sjoin(grid, how="left", predicate="intersects")
    first = joined.sort_values("index_right").groupby(level=0).head(1).sort_index()
    codes = first.grid_code.to_numpy(dtype=object)
    codes[first.grid_code.isna().to_numpy()] = None
    return codes


# --- CRS -------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [gis.crs, gis.layers, gis.assign])
def test_doc_examples_run(module: ModuleType) -> None:
    assert doctest.testmod(module).failed == 0


def test_ensure_wgs84_accepts_epsg4326_and_crs84() -> None:
    grid = make_grid()
    assert ensure_wgs84(grid) is grid
    ensure_wgs84(grid.set_crs("OGC:CRS84", allow_override=True))


def test_ensure_wgs84_rejects_missing_crs() -> None:
    grid = make_grid().set_crs(None, allow_override=True)
    with pytest.raises(CRSMismatchError, match="grid: no CRS"):
        ensure_wgs84(grid, "grid")


def test_ensure_wgs84_rejects_projected_crs() -> None:
    metric = make_grid().to_crs(METRIC_CRS)
    with pytest.raises(CRSMismatchError, match=r"EPSG:32651.*expected EPSG:4326"):
        ensure_wgs84(metric)
    assert issubclass(CRSMismatchError, ValueError)


def test_to_metric_projects_to_utm_51n() -> None:
    metric = to_metric(make_grid())
    assert metric.crs.to_epsg() == 32651
    width = distance_m(X0, Y0, X0 + STEP, Y0)
    height = distance_m(X0, Y0, X0, Y0 + STEP)
    # UTM scale error near Shanghai is about 1e-4, so areas agree with geodesic ones.
    assert metric.geometry.iloc[0].area == pytest.approx(width * height, rel=1e-3)


# --- coordinates -----------------------------------------------------------------------


def test_validate_lonlat_returns_floats() -> None:
    assert validate_lonlat(121, 31.5) == (121.0, 31.5)
    assert validate_lonlat(-180, 90) == (-180.0, 90.0)


@pytest.mark.parametrize(
    ("lon", "lat"),
    [
        (float("nan"), 31.0),
        (121.0, float("inf")),
        (180.01, 31.0),
        (-181.0, 31.0),
        (121.0, 90.5),
        (121.0, -91.0),
        ("east", 31.0),
        (None, 31.0),
    ],
)
def test_validate_lonlat_rejects(lon: object, lat: object) -> None:
    with pytest.raises(CoordinateError):
        validate_lonlat(lon, lat)  # type: ignore[arg-type]


def test_valid_lonlat_mask_is_vectorised() -> None:
    lon = np.array([121.4, np.nan, 181.0, -180.0, 0.0, np.inf])
    lat = np.array([31.2, 31.2, 31.2, -90.0, 91.0, 0.0])
    assert valid_lonlat_mask(lon, lat).tolist() == [True, False, False, True, False, False]


def test_distance_m_scalar_and_vectorised() -> None:
    one_degree_lat = distance_m(121.47, 31.0, 121.47, 32.0)
    assert isinstance(one_degree_lat, float)
    assert one_degree_lat == pytest.approx(110_900, rel=2e-3)
    d = distance_m(np.array([121.47, 121.48]), np.array([31.23, 31.23]), 121.47, 31.23)
    assert d.shape == (2,)
    assert d[0] == 0.0
    assert d[1] == pytest.approx(distance_m(121.48, 31.23, 121.47, 31.23))


# --- grid assignment -------------------------------------------------------------------


@pytest.mark.parametrize("triangles", [False, True], ids=["squares", "triangles"])
def test_grid_index_agrees_with_sjoin(triangles: bool) -> None:
    grid = make_grid(triangles)
    lon, lat = random_points(4_000, seed=1)
    codes = GridIndex(grid).assign(lon, lat)
    expected = sjoin_codes(grid, lon, lat)
    assert codes.dtype == object
    assert (codes == expected).all()
    outside = (lon < X0) | (lon > X0 + NX * STEP) | (lat < Y0) | (lat > Y0 + NY * STEP)
    assert outside.sum() > 100
    assert all(c is None for c in codes[outside])
    assert all(isinstance(c, str) for c in codes[~outside])


@pytest.mark.parametrize("triangles", [False, True], ids=["squares", "triangles"])
def test_one_point_lookup_agrees_with_the_bulk_one(triangles: bool) -> None:
    index = GridIndex(make_grid(triangles))
    lon, lat = random_points(2_000, seed=2)
    # Edges and corners too: there the first cell of the layer wins, as in bulk.
    lon = np.concatenate([lon, X0 + STEP * np.arange(0, NX + 1) / 2])
    lat = np.concatenate([lat, Y0 + STEP * np.arange(0, NX + 1) % (NY * STEP)])
    bulk = index.locate(lon, lat)
    assert (bulk != NOWHERE).sum() > 1_000
    assert [index.locate_one(x, y) for x, y in zip(lon, lat, strict=True)] == bulk.tolist()


def test_one_point_lookup_of_overlapping_shapes_of_all_sizes_agrees_with_the_bulk_one() -> None:
    # One large star over many small squares and rings: each bucket lists boxes far
    # larger than itself, and shapes whose box holds points they do not.
    rng = np.random.default_rng(3)
    star = shapely.Polygon(
        [
            (X0 + 0.012 + r * np.cos(a), Y0 + 0.01 + r * np.sin(a))
            for a, r in zip(
                np.linspace(0, 2 * np.pi, 40, endpoint=False), [0.011, 0.004] * 20, strict=True
            )
        ]
    )
    small = [
        shapely.box(x, y, x + w, y + w)
        if i % 2
        else shapely.Point(x, y).buffer(w).difference(shapely.Point(x, y).buffer(w / 2))
        for i, (x, y, w) in enumerate(
            zip(
                rng.uniform(X0, X0 + 0.024, 300),
                rng.uniform(Y0, Y0 + 0.02, 300),
                rng.uniform(0.0002, 0.001, 300),
                strict=True,
            )
        )
    ]
    grid = gpd.GeoDataFrame(
        {"grid_code": [f"g{i}" for i in range(301)], "district_code": "310101"},
        geometry=[*small[:150], star, *small[150:]],
        crs="EPSG:4326",
    )
    index = GridIndex(grid)
    lon, lat = (
        rng.uniform(X0 - 0.002, X0 + 0.026, 5_000),
        rng.uniform(Y0 - 0.002, Y0 + 0.022, 5_000),
    )
    bulk = index.locate(lon, lat)
    counts = {
        "star": (bulk == 150).sum(),
        "small": (bulk < 150).sum(),
        "none": (bulk == NOWHERE).sum(),
    }
    assert min(counts.values()) > 300, counts
    assert [index.locate_one(x, y) for x, y in zip(lon, lat, strict=True)] == bulk.tolist()


def test_one_point_lookup_skips_empty_shapes_and_bounds_its_buckets() -> None:
    # Empty shapes hold no point; 500 large boxes over 1,500 small ones do
    # not list each large one in every bucket.
    rng = np.random.default_rng(4)
    x, y = rng.uniform(X0, X0 + 0.02, 2_000), rng.uniform(Y0, Y0 + 0.02, 2_000)
    w = np.where(np.arange(2_000) % 4 == 0, 0.01, 0.0002)
    shapes = [shapely.box(a, b, a + c, b + c) for a, b, c in zip(x, y, w, strict=True)]
    shapes[0] = shapes[7] = shapely.Polygon()
    grid = gpd.GeoDataFrame(
        {"grid_code": [f"g{i}" for i in range(2_000)], "district_code": "310101"},
        geometry=shapes,
        crs="EPSG:4326",
    )
    index = GridIndex(grid)
    buckets = index._index._buckets
    assert buckets is not None
    assert sum(len(cell) for cell in buckets.cells) <= 16 * 2_000
    lon, lat = rng.uniform(X0 - 0.001, X0 + 0.031, 3_000), rng.uniform(Y0, Y0 + 0.031, 3_000)
    bulk = index.locate(lon, lat)
    assert (bulk == NOWHERE).sum() > 100
    assert [index.locate_one(a, b) for a, b in zip(lon, lat, strict=True)] == bulk.tolist()
    empty = GridIndex(grid.iloc[[0, 7]])
    assert empty.locate_one(X0 + 0.01, Y0 + 0.01) == NOWHERE


def test_one_point_lookup_of_invalid_points_is_nowhere() -> None:
    index = GridIndex(make_grid())
    for lon, lat in ((np.nan, Y0), (500.0, Y0), (X0, -91.0), (float("inf"), Y0)):
        assert index.locate_one(lon, lat) == NOWHERE


def test_grid_index_shared_edge_goes_to_first_cell() -> None:
    grid = make_grid()
    index = GridIndex(grid)
    # The edge between the first two cells of column 0 (rows 0 and 1).
    pos = index.locate([X0 + STEP / 2], [Y0 + STEP])
    assert pos.tolist() == [0]
    # Corner shared by four cells: still the first of them.
    assert index.assign([X0 + STEP], [Y0 + STEP])[0] == grid.grid_code.iloc[0]


def test_grid_index_invalid_points_are_nowhere() -> None:
    index = GridIndex(make_grid())
    codes = index.assign([np.nan, 500.0, X0 + 0.001], [Y0, Y0, Y0 + 0.001])
    assert codes[0] is None
    assert codes[1] is None
    assert codes[2] == "310101001001001"


def test_grid_index_rejects_mismatched_arrays_and_crs() -> None:
    index = GridIndex(make_grid())
    with pytest.raises(ValueError, match="one length"):
        index.assign([121.4, 121.5], [31.2])
    with pytest.raises(CRSMismatchError):
        GridIndex(make_grid().to_crs(METRIC_CRS))


# --- jurisdictions and placement -------------------------------------------------------


def test_jurisdictions_department_for() -> None:
    jur = Jurisdictions(make_layers().jurisdictions)
    assert jur.department_types == ("roads", "water")
    assert jur.department_for(X0 + STEP, Y0 + STEP, "water") == "310101-water"
    assert jur.department_for(X0 + 10 * STEP, Y0 + STEP, "roads") == "310104-roads"
    assert jur.department_for(X0 - 1.0, Y0, "water") is None


def test_jurisdictions_vectorised_matches_scalar() -> None:
    jur = Jurisdictions(make_layers().jurisdictions)
    lon, lat = random_points(500, seed=2)
    many = jur.departments_for(lon, lat, "water")
    assert many.tolist() == [
        jur.department_for(x, y, "water") for x, y in zip(lon, lat, strict=True)
    ]


def test_jurisdictions_errors() -> None:
    jur = Jurisdictions(make_layers().jurisdictions)
    with pytest.raises(ValueError, match="known types: roads, water"):
        jur.department_for(X0, Y0, "lighting")
    with pytest.raises(CoordinateError):
        jur.department_for(float("nan"), Y0, "water")


def test_placer_places_a_point() -> None:
    placer = Placer.from_layers(make_layers())
    placement = placer.place(X0 + 7.5 * STEP, Y0 + 0.5 * STEP, "roads")
    assert placement == Placement("310104001001071", "310104", "310104-roads")


def test_placer_outside_and_invalid() -> None:
    placer = Placer.from_layers(make_layers())
    assert placer.place(120.0, 30.0, "water") == Placement(None, None, None)
    with pytest.raises(CoordinateError):
        placer.place(31.2, 121.4, "water")


# --- layer files -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["geojson", "gpkg"])
def test_layers_round_trip(tmp_path: Path, fmt: str) -> None:
    layers = make_layers()
    written = save_layers(layers, tmp_path, fmt)  # type: ignore[arg-type]
    assert all(p.is_file() for p in written)
    assert detect_format(tmp_path) == fmt
    loaded = load_layers(tmp_path)
    for name in ("districts", "grid", "jurisdictions", "sensors"):
        assert_geodataframe_equal(
            loaded.layer(name),
            layers.layer(name),
            check_dtype=False,
            # GeoJSON text can drop the last bits of a coordinate; GeoPackage is exact.
            check_less_precise=fmt == "geojson",
        )
    assert loaded.grid.grid_code.iloc[0] == "310101001001001"  # leading digits kept as text


def test_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    save_layers(make_layers(), tmp_path, "gpkg")
    save_layers(make_layers(), tmp_path / "json", "geojson")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["city.gpkg", "json"]


def test_load_refuses_ambiguous_or_missing_layers(tmp_path: Path) -> None:
    with pytest.raises(LayerError, match="no city layers"):
        load_layers(tmp_path)
    save_layers(make_layers(), tmp_path, "geojson")
    (tmp_path / "sensors.geojson").unlink()
    with pytest.raises(LayerError, match=r"missing sensors\.geojson"):
        load_layers(tmp_path)
    save_layers(make_layers(), tmp_path, "geojson")
    save_layers(make_layers(), tmp_path, "gpkg")
    with pytest.raises(LayerError, match="both"):
        load_layers(tmp_path)
    assert len(load_layers(tmp_path, fmt="gpkg").grid) == NX * NY


def test_load_rejects_missing_column(tmp_path: Path) -> None:
    layers = make_layers()
    save_layers(layers, tmp_path, "geojson")
    layers.districts.drop(columns="name_zh").to_file(tmp_path / "districts.geojson")
    with pytest.raises(LayerError, match=r"districts: missing required column.*name_zh"):
        load_layers(tmp_path)


def test_load_rejects_projected_layer(tmp_path: Path) -> None:
    layers = make_layers()
    save_layers(layers, tmp_path, "gpkg")
    layers.grid.to_crs(METRIC_CRS).to_file(tmp_path / "city.gpkg", layer="grid", driver="GPKG")
    with pytest.raises(CRSMismatchError, match="grid"):
        load_layers(tmp_path)


@pytest.mark.parametrize(
    ("layer", "column", "value", "message"),
    [
        ("grid", "grid_code", "31010100100100", "grid_code is not 15 digits"),
        ("grid", "grid_code", "310104001001001", "first 6 digits"),
        ("districts", "district_code", "31010", "6 digits"),
        ("sensors", "sensor_type", "seismograph", "sensor_type is not one of"),
        ("sensors", "grid_code", "310101999999999", "a known cell"),
    ],
)
def test_validate_rejects_bad_codes(layer: str, column: str, value: str, message: str) -> None:
    layers = make_layers()
    layers.layer(layer).loc[0, column] = value
    with pytest.raises(LayerError, match=message):
        layers.validate()


def test_validate_rejects_wrong_geometry_type() -> None:
    layers = make_layers()
    discs = shapely.buffer(np.asarray(layers.sensors.geometry.array), 0.0001)
    layers.sensors = layers.sensors.set_geometry(gpd.GeoSeries(discs, crs=WGS84))
    with pytest.raises(LayerError, match="sensors: geometry type"):
        layers.validate()
