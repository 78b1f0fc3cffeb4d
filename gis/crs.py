"""Coordinate reference systems and coordinate checks, applied at the door of ``gis``.

Every layer the platform stores or serves is WGS84 lon/lat (GeoJSON, RFC 7946). Metric
work (buffers, areas) happens in UTM zone 51N, the zone that holds Shanghai.
"""

from __future__ import annotations

import math
from typing import overload

import geopandas as gpd
import numpy as np
from numpy.typing import ArrayLike, NDArray
from pyproj import CRS, Geod

WGS84 = "EPSG:4326"
METRIC_CRS = "EPSG:32651"

_WGS84_CRS = CRS.from_user_input(WGS84)
_GEOD = Geod(ellps="WGS84")


class CRSMismatchError(ValueError):
    """A layer has no CRS, or not the one the platform works in."""


class CoordinateError(ValueError):
    """A coordinate is not a finite lon/lat inside the valid range."""


def ensure_wgs84(gdf: gpd.GeoDataFrame, name: str = "layer") -> gpd.GeoDataFrame:
    """Return ``gdf`` unchanged if its CRS is WGS84 lon/lat, else raise.

    Parameters
    ----------
    gdf : GeoDataFrame
        The layer to check.
    name : str
        Layer name used in the error message.

    Returns
    -------
    GeoDataFrame
        The same object, so the check can be chained.

    Raises
    ------
    CRSMismatchError
        If the CRS is missing or is not WGS84.

    Examples
    --------
    >>> import geopandas as gpd
    >>> from shapely import Point
    >>> gdf = gpd.GeoDataFrame(geometry=[Point(121.47, 31.23)], crs="EPSG:4326")
    >>> ensure_wgs84(gdf) is gdf
    True
    """
    if gdf.crs is None:
        raise CRSMismatchError(f"{name}: no CRS set; expected {WGS84} (WGS84 lon/lat)")
    # GeoJSON files often declare OGC:CRS84, which is WGS84 with lon/lat axis order:
    # the same coordinates as EPSG:4326 as geopandas stores them.
    if not CRS.from_user_input(gdf.crs).equals(_WGS84_CRS, ignore_axis_order=True):
        raise CRSMismatchError(
            f"{name}: CRS is {gdf.crs.to_string()}; expected {WGS84} (WGS84 lon/lat). "
            "Reproject with gdf.to_crs('EPSG:4326') before loading."
        )
    return gdf


def to_metric(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Reproject a WGS84 layer to the metric CRS (UTM 51N).

    Examples
    --------
    >>> import geopandas as gpd
    >>> from shapely import Point
    >>> gdf = gpd.GeoDataFrame(geometry=[Point(121.47, 31.23)], crs="EPSG:4326")
    >>> to_metric(gdf).crs.to_string()
    'EPSG:32651'
    """
    return ensure_wgs84(gdf).to_crs(METRIC_CRS)


def validate_lonlat(lon: float, lat: float) -> tuple[float, float]:
    """Return ``(lon, lat)`` as floats, or raise if they are not a valid position.

    Raises
    ------
    CoordinateError
        If either value is not a number, is NaN or infinite, or is out of range
        (lon -180..180, lat -90..90).

    Examples
    --------
    >>> validate_lonlat(121.47, 31.23)
    (121.47, 31.23)
    >>> validate_lonlat(31.23, 121.47)
    Traceback (most recent call last):
    ...
    gis.crs.CoordinateError: latitude 121.47 is outside -90..90
    """
    try:
        x, y = float(lon), float(lat)
    except (TypeError, ValueError) as exc:
        raise CoordinateError(f"coordinates must be numbers, got {lon!r}, {lat!r}") from exc
    if not (np.isfinite(x) and np.isfinite(y)):
        raise CoordinateError(f"coordinates must be finite, got {x!r}, {y!r}")
    if not -180.0 <= x <= 180.0:
        raise CoordinateError(f"longitude {x!r} is outside -180..180")
    if not -90.0 <= y <= 90.0:
        raise CoordinateError(f"latitude {y!r} is outside -90..90")
    return x, y


def valid_lonlat(lon: float, lat: float) -> bool:
    """:func:`validate_lonlat` as a test, for one point: True when it is a position.

    Examples
    --------
    >>> valid_lonlat(121.47, 31.23), valid_lonlat(31.23, 121.47), valid_lonlat(0, "x")
    (True, False, False)
    """
    try:
        x, y = float(lon), float(lat)
    except (TypeError, ValueError):
        return False
    return math.isfinite(x) and math.isfinite(y) and abs(x) <= 180.0 and abs(y) <= 90.0


def valid_lonlat_mask(lon: ArrayLike, lat: ArrayLike) -> NDArray[np.bool_]:
    """Vectorised :func:`validate_lonlat`: True where a position is finite and in range.

    Examples
    --------
    >>> valid_lonlat_mask([121.47, float("nan"), 200.0], [31.23, 31.0, 31.0]).tolist()
    [True, False, False]
    """
    x = np.asarray(lon, dtype=np.float64)
    y = np.asarray(lat, dtype=np.float64)
    # NaN compares False, so the range test also rejects it; isfinite spells it out.
    return np.isfinite(x) & np.isfinite(y) & (np.abs(x) <= 180.0) & (np.abs(y) <= 90.0)


@overload
def distance_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float: ...


@overload
def distance_m(
    lon1: ArrayLike, lat1: ArrayLike, lon2: ArrayLike, lat2: ArrayLike
) -> NDArray[np.float64]: ...


def distance_m(
    lon1: ArrayLike, lat1: ArrayLike, lon2: ArrayLike, lat2: ArrayLike
) -> float | NDArray[np.float64]:
    """Geodesic distance in metres on the WGS84 ellipsoid; arrays broadcast.

    Examples
    --------
    >>> round(distance_m(121.47, 31.23, 121.47, 31.24))
    1109
    >>> distance_m([121.47, 121.48], [31.23, 31.23], 121.47, 31.23).round().tolist()
    [0.0, 953.0]
    """
    x1, y1, x2, y2 = np.broadcast_arrays(
        *(np.asarray(a, dtype=np.float64) for a in (lon1, lat1, lon2, lat2))
    )
    _, _, dist = _GEOD.inv(x1, y1, x2, y2)
    out = np.asarray(dist, dtype=np.float64)
    return float(out) if out.ndim == 0 else out
