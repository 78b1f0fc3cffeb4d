"""China's coordinate systems at the edge: WGS-84, GCJ-02 (AMap, Tencent), BD-09 (Baidu).

Everything the platform stores is WGS-84. Inside China, Chinese map providers show and
report positions shifted by a published obfuscation: GCJ-02 moves a point by a few hundred
metres, BD-09 adds Baidu's own shift on top of GCJ-02. Outside China both providers use
WGS-84, so there every system is the same and a position passes through unchanged.

The formulas and their inverses come from ``geocoordinates-rs`` (module
``geocoordinates_ffi``): the forward shift is exact, the inverse is its refined fixed-point
iteration (a round trip lands within a few micrometres; see tests/unit/test_china_crs.py).
The library calls one point at a time (about 25 µs each through its FFI); the array
helpers here convert each distinct position once and skip the points outside China.

"China" is the region where the providers apply the shift: the outlines of China and
Taiwan that ``countryinfo`` ships (drawn at 1:110m, without most small islands), widened
by :data:`REGION_MARGIN_DEG` over the sea but over no other country's outline, so that
the coastal islands (Chongming, Yangshan, Zhoushan, Shengsi) are inside and Vladivostok,
Korea, Japan, Mongolia and Vietnam are not. At that scale a land border is drawn to within
some kilometres: a town on one (Heihe on the Amur, Hekou across from Lao Cai, Sinuiju
across the Yalu from Dandong) may fall on either side. Near the region's edge a shifted
position and its original can fall on different sides of it; no city served here is there.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

import geocoordinates_ffi as gc
import numpy as np
import shapely
from countryinfo import CountryInfo
from numpy.typing import ArrayLike, NDArray
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from gis.crs import CoordinateError, valid_lonlat_mask, validate_lonlat

REGION_MARGIN_DEG = 1.0  # about 100 km of sea: the islands the 1:110m outlines leave out

G = TypeVar("G", BaseGeometry, NDArray[np.object_])


class UnknownCoordSystemError(ValueError):
    """A coordinate system name that is not one of :class:`CoordSystem`."""


class CoordSystem(enum.StrEnum):
    """A coordinate system an input may declare, or an answer may be given in."""

    WGS84 = "wgs84"  # GPS, OpenStreetMap, everything stored here
    GCJ02 = "gcj02"  # AMap (Gaode), Tencent, Google's map of China
    BD09 = "bd09"  # Baidu (its longitude/latitude form, bd09ll)

    @classmethod
    def parse(cls, name: str | CoordSystem) -> CoordSystem:
        """The system called ``name`` (case, hyphens and underscores ignored).

        Raises
        ------
        UnknownCoordSystemError
            If ``name`` is not a known system.

        Examples
        --------
        >>> CoordSystem.parse("GCJ-02")
        <CoordSystem.GCJ02: 'gcj02'>
        >>> CoordSystem.parse("bd09ll")
        <CoordSystem.BD09: 'bd09'>
        >>> CoordSystem.parse("mars")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        gis.china.UnknownCoordSystemError: unknown coordinate system 'mars': expected one of ...
        """
        if isinstance(name, CoordSystem):
            return name
        key = str(name).strip().lower().replace("-", "").replace("_", "")
        found = _ALIASES.get(key)
        if found is None:
            raise UnknownCoordSystemError(
                f"unknown coordinate system {name!r}: expected one of "
                + ", ".join(s.value for s in cls)
            )
        return found


_ALIASES: dict[str, CoordSystem] = {
    "wgs84": CoordSystem.WGS84,
    "gcj02": CoordSystem.GCJ02,
    "bd09": CoordSystem.BD09,
    "bd09ll": CoordSystem.BD09,
}


def parse_coord_system(name: str | CoordSystem) -> CoordSystem:
    """:meth:`CoordSystem.parse` as a function (for settings and query parameters).

    Examples
    --------
    >>> parse_coord_system("wgs84").value
    'wgs84'
    """
    return CoordSystem.parse(name)


# -- the region ---------------------------------------------------------------------------


@functools.cache
def china_region() -> BaseGeometry:
    """The region where the providers shift positions (see the module's docstring).

    Examples
    --------
    >>> china_region().contains(shapely.Point(121.47, 31.23))
    True
    """
    outlines = {name: _outline(info) for name, info in CountryInfo.all().items()}
    own = shapely.union_all([outlines.pop(name) for name in _SHIFTED])
    margin = own.buffer(REGION_MARGIN_DEG, quad_segs=4)
    neighbours = [g for g in outlines.values() if g is not None and g.intersects(margin)]
    region = shapely.union_all([own, margin.difference(shapely.union_all(neighbours))])
    shapely.prepare(region)
    return region


_SHIFTED = ("china", "taiwan")  # countryinfo's names; Hong Kong and Macau lie in China's


def _outline(info: Mapping[str, Any]) -> BaseGeometry | None:
    collection = info.get("geoJSON") or {}
    parts = [shape(f["geometry"]) for f in collection.get("features", []) if f.get("geometry")]
    # Some outlines (Antarctica's) are not valid polygons as drawn.
    return shapely.union_all(shapely.make_valid(parts)) if parts else None


@overload
def in_china(lon: float, lat: float) -> bool: ...


@overload
def in_china(lon: ArrayLike, lat: ArrayLike) -> NDArray[np.bool_]: ...


def in_china(lon: ArrayLike, lat: ArrayLike) -> bool | NDArray[np.bool_]:
    """Whether each position lies in China's region; arrays broadcast.

    Examples
    --------
    >>> in_china(121.47, 31.23), in_china(126.98, 37.57)  # Shanghai, Seoul
    (True, False)
    >>> in_china([139.69, 116.40], [35.69, 39.90]).tolist()  # Tokyo, Beijing
    [False, True]
    """
    inside = shapely.contains_xy(china_region(), lon, lat)
    return bool(inside) if np.ndim(inside) == 0 else np.asarray(inside, dtype=bool)


# -- one position -------------------------------------------------------------------------

Step = Callable[[float, float], tuple[float, float]]  # (lon, lat) -> (lon, lat), in China


def _step(shift: Callable[[Any], Any], point: Callable[..., Any]) -> Step:
    """The step that applies ``shift`` to a ``point(lat=..., lon=...)`` of its source system."""

    def step(lon: float, lat: float) -> tuple[float, float]:
        p = shift(point(lat=lat, lon=lon))
        return p.lon, p.lat

    return step


# The inverses are the library's refined (fixed-point) ones; see the module's docstring.
_STEPS: dict[tuple[CoordSystem, CoordSystem], Step] = {
    (CoordSystem.WGS84, CoordSystem.GCJ02): _step(gc.wgs84_to_gcj02, gc.Wgs84),
    (CoordSystem.GCJ02, CoordSystem.WGS84): _step(gc.gcj02_to_wgs84_refined, gc.Gcj02),
    (CoordSystem.GCJ02, CoordSystem.BD09): _step(gc.gcj02_to_bd09, gc.Gcj02),
    (CoordSystem.BD09, CoordSystem.GCJ02): _step(gc.bd09_to_gcj02_refined, gc.Bd09),
    (CoordSystem.WGS84, CoordSystem.BD09): _step(gc.wgs84_to_bd09, gc.Wgs84),
    (CoordSystem.BD09, CoordSystem.WGS84): _step(gc.bd09_to_wgs84_refined, gc.Bd09),
}


def convert(
    lon: float, lat: float, source: str | CoordSystem, target: str | CoordSystem
) -> tuple[float, float]:
    """``(lon, lat)`` in ``source`` as ``(lon, lat)`` in ``target``.

    The region test uses the position as given (in ``source``). Outside China the
    position comes back unchanged.

    Raises
    ------
    UnknownCoordSystemError
        If a system name is unknown.
    CoordinateError
        If the position is not a finite lon/lat in range.

    Examples
    --------
    >>> lon, lat = convert(121.4737, 31.2304, "wgs84", "gcj02")  # People's Square
    >>> round(lon, 4), round(lat, 4)
    (121.4782, 31.2285)
    >>> convert(139.6917, 35.6895, "wgs84", "bd09")  # Tokyo: outside China
    (139.6917, 35.6895)
    """
    src, dst = CoordSystem.parse(source), CoordSystem.parse(target)
    x, y = validate_lonlat(lon, lat)
    if src is dst or not in_china(x, y):
        return x, y
    return _STEPS[src, dst](x, y)


def to_wgs84(lon: float, lat: float, source: str | CoordSystem) -> tuple[float, float]:
    """An input's position, declared in ``source``, as the platform stores it.

    Examples
    --------
    >>> lon, lat = to_wgs84(121.478223, 31.228458, "gcj02")
    >>> round(lon, 4), round(lat, 4)
    (121.4737, 31.2304)
    """
    return convert(lon, lat, source, CoordSystem.WGS84)


def to_wgs84_named(lon: float, lat: float, source: str) -> tuple[float, float, str]:
    """:func:`to_wgs84`, with the name of ``source`` as :class:`CoordSystem` spells it (what
    a device said it reported in, for the record).

    Examples
    --------
    >>> to_wgs84_named(2.3522, 48.8566, "GCJ-02")
    (2.3522, 48.8566, 'gcj02')
    """
    system = CoordSystem.parse(source)
    return (*to_wgs84(lon, lat, system), system.value)


def from_wgs84(lon: float, lat: float, target: str | CoordSystem) -> tuple[float, float]:
    """A stored (WGS-84) position as a client in ``target`` wants it.

    Examples
    --------
    >>> from_wgs84(2.3522, 48.8566, "gcj02")  # Paris: outside China
    (2.3522, 48.8566)
    """
    return convert(lon, lat, CoordSystem.WGS84, target)


# -- many positions -----------------------------------------------------------------------


def convert_arrays(
    lon: ArrayLike, lat: ArrayLike, source: str | CoordSystem, target: str | CoordSystem
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Vectorised :func:`convert`: new arrays of the (broadcast) shape of the inputs.

    Each distinct position inside China is converted once (cells of a grid share their
    corners); positions outside China are copied.

    Raises
    ------
    CoordinateError
        If any position is not a finite lon/lat in range (the message counts them).

    Examples
    --------
    >>> x, y = convert_arrays([121.4737, 126.978], [31.2304, 37.5665], "wgs84", "gcj02")
    >>> x.round(4).tolist(), y.round(4).tolist()  # Shanghai moves, Seoul does not
    ([121.4782, 126.978], [31.2285, 37.5665])
    """
    src, dst = CoordSystem.parse(source), CoordSystem.parse(target)
    x, y = np.broadcast_arrays(np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64))
    x, y = x.copy(), y.copy()
    bad = ~valid_lonlat_mask(x, y)
    if bad.any():
        at = tuple(np.argwhere(bad)[0].tolist())
        raise CoordinateError(
            f"{int(bad.sum())} of {bad.size} positions are not a valid lon/lat"
            f" (the first at index {at}: {float(x[at])!r}, {float(y[at])!r})"
        )
    if src is dst or x.size == 0:
        return x, y
    inside = in_china(x, y)
    if not inside.any():
        return x, y
    step = _STEPS[src, dst]
    pairs, back = np.unique(np.column_stack([x[inside], y[inside]]), axis=0, return_inverse=True)
    done = np.array([step(px, py) for px, py in pairs.tolist()], dtype=np.float64)
    moved = done[back.reshape(-1)]
    x[inside], y[inside] = moved[:, 0], moved[:, 1]
    return x, y


def convert_geometry(geom: G, source: str | CoordSystem, target: str | CoordSystem) -> G:
    """A shapely geometry (or an array of them) with every vertex converted; Z kept.

    Examples
    --------
    >>> from shapely import Point, box
    >>> p = convert_geometry(Point(121.4737, 31.2304), "wgs84", "gcj02")
    >>> round(p.x, 4), round(p.y, 4)
    (121.4782, 31.2285)
    >>> convert_geometry(box(2.0, 48.0, 3.0, 49.0), "gcj02", "wgs84").bounds  # Paris
    (2.0, 48.0, 3.0, 49.0)
    """
    src, dst = CoordSystem.parse(source), CoordSystem.parse(target)
    if src is dst:
        return geom

    def each(coords: NDArray[np.float64]) -> NDArray[np.float64]:
        out = coords.copy()
        out[:, 0], out[:, 1] = convert_arrays(coords[:, 0], coords[:, 1], src, dst)
        return out

    out: G = shapely.transform(geom, each, include_z=None)
    return out


def convert_feature_collection(
    doc: dict[str, Any], source: str | CoordSystem, target: str | CoordSystem
) -> dict[str, Any]:
    """A GeoJSON FeatureCollection (as a dict) with every geometry converted, in place.

    Features without a geometry are left as they are.

    Examples
    --------
    >>> doc = {"type": "FeatureCollection", "features": [
    ...     {"type": "Feature", "geometry": {"type": "Point", "coordinates": [121.4737, 31.2304]},
    ...      "properties": {}}]}
    >>> x, y = convert_feature_collection(doc, "wgs84", "gcj02")["features"][0]["geometry"][
    ...     "coordinates"]
    >>> round(x, 4), round(y, 4)
    (121.4782, 31.2285)
    """
    src, dst = CoordSystem.parse(source), CoordSystem.parse(target)
    located = [f for f in doc.get("features", ()) if f.get("geometry")]
    if src is dst or not located:
        return doc
    geoms = np.array([shape(f["geometry"]) for f in located], dtype=object)
    for feature, geom in zip(located, convert_geometry(geoms, src, dst), strict=True):
        feature["geometry"] = mapping(geom)
    return doc
