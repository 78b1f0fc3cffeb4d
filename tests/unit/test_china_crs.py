"""China's coordinate systems (gis.china): round trips, the region, reference points, parsing."""

from __future__ import annotations

import doctest
import itertools

import numpy as np
import pytest
import shapely

import gis.china
from gis.china import (
    CoordSystem,
    UnknownCoordSystemError,
    convert,
    convert_arrays,
    convert_geometry,
    from_wgs84,
    in_china,
    parse_coord_system,
    to_wgs84,
)
from gis.crs import CoordinateError, distance_m

SYSTEMS = list(CoordSystem)
PAIRS = list(itertools.permutations(SYSTEMS, 2))

# A 0.05° grid over Shanghai's land (Chongming included) and the sea by Yangshan.
SHANGHAI = [
    (round(lon, 3), round(lat, 3))
    for lon in np.arange(120.85, 122.15, 0.05)
    for lat in np.arange(30.65, 31.90, 0.05)
]
ACROSS_CHINA = {
    "Beijing": (116.3975, 39.9087),
    "Harbin": (126.6349, 45.7560),
    "Urumqi": (87.6168, 43.8256),
    "Kashgar": (75.9897, 39.4704),
    "Lhasa": (91.1409, 29.6456),
    "Chengdu": (104.0665, 30.5723),
    "Shenzhen": (114.0579, 22.5431),
    "Hong Kong": (114.1694, 22.3193),
    "Sanya": (109.5119, 18.2528),
    "Zhoushan": (122.2072, 29.9853),
}
OUTSIDE = {
    "Tokyo": (139.6917, 35.6895),
    "Seoul": (126.9780, 37.5665),
    "Pyongyang": (125.7625, 39.0392),
    "Vladivostok": (131.8869, 43.1155),
    "Ulaanbaatar": (106.9057, 47.8864),
    "Hanoi": (105.8342, 21.0278),
    "Paris": (2.3522, 48.8566),
    "Berlin": (13.4050, 52.5200),
    "London": (-0.1276, 51.5072),
}


def off_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    return float(distance_m(a[0], a[1], b[0], b[1]))


# -- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize(("there", "back"), PAIRS, ids=lambda s: s.value)
def test_round_trips_over_shanghai_land_within_a_millimetre(
    there: CoordSystem, back: CoordSystem
) -> None:
    worst = 0.0
    for point in SHANGHAI:
        moved = convert(*point, back, there)
        assert off_m(moved, point) > 100  # a shift of hundreds of metres, not none
        worst = max(worst, off_m(convert(*moved, there, back), point))
    assert worst < 0.001, f"{back.value} -> {there.value} -> back: {worst:.6f} m"


@pytest.mark.parametrize("name", ACROSS_CHINA)
def test_round_trips_across_china_within_a_millimetre(name: str) -> None:
    point = ACROSS_CHINA[name]
    assert in_china(*point)
    for source, target in PAIRS:
        moved = convert(*point, source, target)
        assert 100 < off_m(moved, point) < 1_500
        assert off_m(convert(*moved, target, source), point) < 0.001


def test_the_shift_is_the_documented_size() -> None:
    # GCJ-02 moves Shanghai some 500 m; BD-09 adds Baidu's shift of about 1 km more.
    square = (121.4737, 31.2304)
    assert 400 < off_m(from_wgs84(*square, "gcj02"), square) < 700
    assert 1_000 < off_m(from_wgs84(*square, "bd09"), square) < 1_600


# -- outside China ------------------------------------------------------------------------


@pytest.mark.parametrize("name", OUTSIDE)
def test_outside_china_nothing_moves(name: str) -> None:
    point = OUTSIDE[name]
    assert not in_china(*point)
    for source, target in PAIRS:
        assert convert(*point, source, target) == point
    x, y = convert_arrays([point[0]], [point[1]], "bd09", "wgs84")
    assert (x.tolist(), y.tolist()) == ([point[0]], [point[1]])


def test_the_region_holds_the_coast_and_islands_and_not_the_neighbours() -> None:
    islands = [(121.60, 31.60), (122.06, 30.62), (122.45, 30.72), (110.32, 20.03)]
    assert in_china([p[0] for p in islands], [p[1] for p in islands]).all()
    # Japan's islands nearest to Taiwan, and Korea's nearest to China.
    near = [(123.00, 24.47), (124.16, 24.34), (124.70, 37.95), (126.53, 33.50)]
    assert not in_china([p[0] for p in near], [p[1] for p in near]).any()


# -- published reference points -----------------------------------------------------------

# (lon, lat) WGS-84 -> GCJ-02.
AMAP_CONVERTOR = [
    # The two points of AMap's coordinate convertor example (coordsys=gps), and its answer.
    ((116.481499, 39.990475), (116.487585177952, 39.991754014757)),
    ((116.481499, 39.990375), (116.487585177952, 39.991653917101)),
]
EVILTRANSFORM = [
    # The Shanghai, Shenzhen and Beijing pairs of eviltransform's own tests.
    ((121.5272106, 31.1774276), (121.531541859215, 31.17530398364597)),
    ((113.912316, 22.543847), (113.9171764808363, 22.540796131694766)),
    ((116.377817, 39.911954), (116.38404722455657, 39.91334545536069)),
]


@pytest.mark.parametrize(("wgs", "gcj"), AMAP_CONVERTOR)
def test_amap_convertor_example(wgs: tuple[float, float], gcj: tuple[float, float]) -> None:
    # AMap's service answers within 5 cm of the formula (its own rounding).
    assert off_m(convert(*wgs, "wgs84", "gcj02"), gcj) < 0.1
    assert off_m(to_wgs84(*gcj, "gcj02"), wgs) < 0.1


@pytest.mark.parametrize(("wgs", "gcj"), EVILTRANSFORM)
def test_eviltransform_reference_pairs(wgs: tuple[float, float], gcj: tuple[float, float]) -> None:
    assert off_m(convert(*wgs, "wgs84", "gcj02"), gcj) < 0.001
    assert off_m(convert(*gcj, "gcj02", "wgs84"), wgs) < 0.001


def test_aliyun_transfer_coord_example_gcj02_to_bd09() -> None:
    # The GCJ-02 and BD-09 values of Aliyun's coordinate system conversion example (six
    # decimals: 5 cm). Its WGS-84 value is a one-step approximate inverse, 1.7 m from the
    # exact one, so it is not a reference for the inverse.
    gcj, bd = (120.026268, 30.279164), (120.032768, 30.285238)
    assert off_m(convert(*gcj, "gcj02", "bd09"), bd) < 0.1
    assert off_m(convert(*bd, "bd09", "gcj02"), gcj) < 0.1


def test_geochina_beijing_railway_station() -> None:
    # geoChina's documented example, Beijing railway station, given to five decimals
    # (1e-5 degree: up to 1.1 m a coordinate).
    wgs, gcj, bd = (116.42079, 39.90105), (116.42703, 39.90245), (116.43351, 39.90851)
    assert off_m(convert(*wgs, "wgs84", "gcj02"), gcj) < 1.6
    assert off_m(convert(*wgs, "wgs84", "bd09"), bd) < 1.6
    assert off_m(convert(*gcj, "gcj02", "bd09"), bd) < 1.6


# -- arrays and geometries ----------------------------------------------------------------


def test_arrays_equal_the_points_one_by_one_and_keep_their_shape() -> None:
    lon = np.array([[121.47, 121.47, 139.69], [87.61, 121.5, 2.35]])
    lat = np.array([[31.23, 31.23, 35.69], [43.82, 31.2, 48.86]])
    x, y = convert_arrays(lon, lat, "wgs84", "bd09")
    assert x.shape == y.shape == (2, 3)
    for i, j in np.ndindex(lon.shape):
        assert (x[i, j], y[i, j]) == convert(lon[i, j], lat[i, j], "wgs84", "bd09")
    assert (lon[0, 0], lat[0, 0]) == (121.47, 31.23)  # the inputs are not changed


def test_a_polygon_moves_vertex_by_vertex() -> None:
    cell = shapely.box(121.47, 31.23, 121.48, 31.24)
    moved = convert_geometry(cell, "wgs84", "gcj02")
    for (x0, y0), (x1, y1) in zip(cell.exterior.coords, moved.exterior.coords, strict=True):
        assert (x1, y1) == convert(x0, y0, "wgs84", "gcj02")
    back = convert_geometry(moved, CoordSystem.GCJ02, CoordSystem.WGS84)
    assert shapely.equals_exact(back, cell, tolerance=1e-8)
    point = convert_geometry(shapely.Point(121.47, 31.23, 7.5), "wgs84", "bd09")
    assert point.has_z
    assert point.z == 7.5
    abroad = shapely.box(2.0, 48.0, 3.0, 49.0)
    assert convert_geometry(abroad, "bd09", "wgs84").equals_exact(abroad, tolerance=0)


def test_bad_positions_are_refused() -> None:
    with pytest.raises(CoordinateError, match=r"latitude 121\.47"):
        convert(31.23, 121.47, "wgs84", "gcj02")
    with pytest.raises(CoordinateError, match="1 of 3 positions"):
        convert_arrays([121.4, 121.5, float("nan")], [31.2, 31.2, 31.2], "gcj02", "wgs84")


# -- names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "system"),
    [
        ("wgs84", CoordSystem.WGS84),
        ("WGS-84", CoordSystem.WGS84),
        ("gcj02", CoordSystem.GCJ02),
        ("GCJ_02", CoordSystem.GCJ02),
        (" bd09 ", CoordSystem.BD09),
        ("bd09ll", CoordSystem.BD09),
        (CoordSystem.BD09, CoordSystem.BD09),
    ],
)
def test_names_parse(name: str, system: CoordSystem) -> None:
    assert parse_coord_system(name) is system
    assert CoordSystem.parse(name) is system


@pytest.mark.parametrize("name", ["", "mars", "epsg:4326", "bd09mc", "gcj"])
def test_an_unknown_name_is_a_clear_error(name: str) -> None:
    with pytest.raises(UnknownCoordSystemError, match="expected one of wgs84, gcj02, bd09"):
        parse_coord_system(name)
    with pytest.raises(ValueError, match="unknown coordinate system"):
        convert(121.47, 31.23, name, "wgs84")


def test_docstring_examples() -> None:
    assert doctest.testmod(gis.china).failed == 0
