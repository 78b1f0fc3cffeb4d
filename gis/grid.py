"""Unit grid cells (单元网格) over district polygons, with GB/T 30428-style codes.

A grid code has 15 digits: the district's 6-digit code, then a 3-digit street (街道),
a 3-digit community (社区) and a 3-digit cell number. Streets are blocks of
:data:`STREET_CELLS` x :data:`STREET_CELLS` cells and communities blocks of
:data:`COMMUNITY_CELLS` x :data:`COMMUNITY_CELLS` cells inside a street, counted from the
district's north-west corner: street by street, then community by community, then cell
by cell, each row west to east, rows north to south.

:func:`grid_over` lays a lattice of cells, equal steps in degrees, over each district and
clips it to the district: a cell inside the district is the lattice square itself (an
axis-aligned rectangle, which keeps point lookups on their fast path, see gis.assign); a
square on the border becomes its part inside the district (a polygon, or a multipolygon
where the border winds through it; pieces under about 1 m², slivers of the clip, are
dropped). The cells of a district therefore cover it, so a point of a district has a
cell of that district, and the grid and the jurisdiction polygons agree on which
district a point is in. One lattice origin serves every district, so the cells of two
districts with one cell size line up along their common border.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import geopandas as gpd
import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.geometry.base import BaseGeometry

from gis.crs import WGS84, distance_m, ensure_wgs84

STREET_CELLS = 10
COMMUNITY_CELLS = 5
# Pieces of a border square smaller than this (square degrees, about 1 m²) are slivers
# left by the clip along the district's outline, not cells.
MIN_PIECE_DEG2 = 1e-10


def degrees_per_metre(lat: float) -> tuple[float, float]:
    """Degrees of longitude and of latitude per metre at latitude ``lat``.

    Examples
    --------
    >>> dlon, dlat = degrees_per_metre(31.23)
    >>> round(150 * dlon, 6), round(150 * dlat, 6)
    (0.001574, 0.001353)
    """
    lon0 = 121.0  # the ellipsoid's scale does not depend on the longitude
    per_lon = distance_m(lon0 - 0.005, lat, lon0 + 0.005, lat) / 0.01
    per_lat = distance_m(lon0, lat - 0.005, lon0, lat + 0.005) / 0.01
    return 1.0 / per_lon, 1.0 / per_lat


def cell_codes(
    district_code: str, across: NDArray[np.int_], down: NDArray[np.int_], n_across: int
) -> list[str]:
    """Grid codes of cells at (``across``, ``down``) from a district's north-west corner.

    ``n_across`` is the width of the district's lattice in cells. Streets are numbered
    in order among those that hold a cell, so a district whose outline leaves some
    lattice blocks empty still numbers its streets 1, 2, 3...

    Raises
    ------
    ValueError
        If the district needs more than 999 streets (the code has three digits).

    Examples
    --------
    >>> cell_codes("310101", np.array([0, 1, 12]), np.array([0, 0, 6]), 20)
    ['310101001001001', '310101001001002', '310101002003008']
    """
    across = np.asarray(across)
    down = np.asarray(down)
    streets_across = math.ceil(n_across / STREET_CELLS)
    block = (down // STREET_CELLS) * streets_across + across // STREET_CELLS
    present, street0 = np.unique(block, return_inverse=True)
    if len(present) > 999:
        raise ValueError(f"district {district_code} needs {len(present)} streets; at most 999")
    communities_across = STREET_CELLS // COMMUNITY_CELLS
    in_down, in_across = down % STREET_CELLS, across % STREET_CELLS
    community = (in_down // COMMUNITY_CELLS) * communities_across + in_across // COMMUNITY_CELLS + 1
    serial = (down % COMMUNITY_CELLS) * COMMUNITY_CELLS + across % COMMUNITY_CELLS + 1
    return [
        f"{district_code}{s:03d}{c:03d}{n:03d}"
        for s, c, n in zip(
            (street0.reshape(-1) + 1).tolist(), community.tolist(), serial.tolist(), strict=True
        )
    ]


def grid_over(
    districts: gpd.GeoDataFrame,
    cell_m: Mapping[str, float],
    *,
    origin: tuple[float, float] | None = None,
    ref_lat: float | None = None,
) -> gpd.GeoDataFrame:
    """Unit grid cells clipped to each district, sorted by grid code.

    Parameters
    ----------
    districts : GeoDataFrame
        The districts layer (``district_code``, polygons), WGS84.
    cell_m : mapping of str to float
        Side of a cell in metres, per district code; every district needs one.
    origin : (float, float), optional
        South-west corner of the lattice (lon, lat); by default the districts' own.
    ref_lat : float, optional
        Latitude at which a cell measures ``cell_m`` (by default the middle of the
        districts' extent); cells are equal steps in degrees, so they are a little
        narrower north of it and wider south of it.

    Returns
    -------
    GeoDataFrame
        ``grid_code``, ``district_code`` and the cell's polygon, WGS84.

    Examples
    --------
    >>> import geopandas as gpd
    >>> from shapely import box
    >>> d = gpd.GeoDataFrame({"district_code": ["310101"]},
    ...                      geometry=[box(121.47, 31.22, 121.48, 31.23)], crs="EPSG:4326")
    >>> grid = grid_over(d, {"310101": 500.0})
    >>> len(grid), grid.grid_code.iloc[0]
    (6, '310101001001001')
    >>> bool(abs(shapely.area(grid.geometry.array).sum() - 0.01 * 0.01) < 1e-15)
    True
    """
    ensure_wgs84(districts, "districts")
    west, south, _, north = (float(b) for b in districts.total_bounds)
    x0, y0 = origin if origin is not None else (west, south)
    per_lon, per_lat = degrees_per_metre(ref_lat if ref_lat is not None else (south + north) / 2)
    codes: list[str] = []
    owners: list[str] = []
    cells: list[NDArray[np.object_]] = []
    for code, geom in zip(
        districts.district_code.astype(str), districts.geometry.array, strict=True
    ):
        if code not in cell_m:
            raise ValueError(f"no cell size for district {code}")
        dlon, dlat = cell_m[code] * per_lon, cell_m[code] * per_lat
        across, down, n_across, pieces = _clip_lattice(geom, x0, y0, dlon, dlat)
        codes.extend(cell_codes(code, across, down, n_across))
        owners.extend([code] * len(pieces))
        cells.append(pieces)
    order = np.argsort(np.asarray(codes), kind="stable")
    geometry = np.concatenate(cells) if cells else np.empty(0, dtype=object)
    return gpd.GeoDataFrame(
        {
            "grid_code": np.asarray(codes, dtype=object)[order],
            "district_code": np.asarray(owners, dtype=object)[order],
        },
        geometry=geometry[order],
        crs=WGS84,
    )


def _clip_lattice(
    geom: BaseGeometry, x0: float, y0: float, dlon: float, dlat: float
) -> tuple[NDArray[np.int_], NDArray[np.int_], int, NDArray[np.object_]]:
    """One district's cells: their lattice offsets from its north-west corner, the
    lattice's width in cells, and each cell's geometry."""
    west, south, east, north = geom.bounds
    c0, c1 = math.floor((west - x0) / dlon), math.ceil((east - x0) / dlon)
    r0, r1 = math.floor((south - y0) / dlat), math.ceil((north - y0) / dlat)
    col_2d, row_2d = np.meshgrid(np.arange(c0, c1), np.arange(r0, r1))
    col, row = col_2d.ravel(), row_2d.ravel()
    # Each edge is computed from its lattice index alone, so neighbouring cells share
    # their edges bit for bit.
    squares = shapely.box(
        x0 + col * dlon, y0 + row * dlat, x0 + (col + 1) * dlon, y0 + (row + 1) * dlat
    )
    shapely.prepare(geom)
    inside = shapely.contains_properly(geom, squares)
    border = np.flatnonzero(~inside & shapely.intersects(geom, squares))
    pieces = np.asarray(squares, dtype=object).copy()
    pieces[border] = [_polygonal(p) for p in shapely.intersection(squares[border], geom)]
    keep = inside.copy()
    keep[border] = [p is not None for p in pieces[border]]
    idx = np.flatnonzero(keep)
    return col[idx] - c0, (r1 - 1) - row[idx], c1 - c0, pieces[idx]


def _polygonal(geom: BaseGeometry) -> BaseGeometry | None:
    """The areal part of a clipped square (a clip can add lines and points where the
    outline only touches it), None if nothing of it is more than a sliver."""
    polygons = [
        q
        for p in shapely.get_parts(geom)
        for q in shapely.get_parts(p)
        if q.geom_type == "Polygon" and q.area > MIN_PIECE_DEG2
    ]
    if not polygons:
        return None
    if len(polygons) == 1:
        single: BaseGeometry = polygons[0]
        return single
    return shapely.MultiPolygon(polygons)
