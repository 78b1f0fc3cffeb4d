"""Points per second of GridIndex.assign against a geopandas sjoin, on the demo city.

    python -m bench.bench_grid_assign [--points 1000000] [--cell-m 75] [--repeat 3]

Both sides start from lon/lat arrays and end with a grid code per point; the best of
``--repeat`` runs is reported. The answers are compared point by point.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np

from gis.assign import GridIndex
from gis.crs import WGS84
from simulations.city import generate_city


def best_of(repeat: int, run: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    best, result = float("inf"), np.empty(0)
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return best, result


def sjoin_assign(grid: gpd.GeoDataFrame, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    points = gpd.GeoDataFrame(geometry=gpd.points_from_xy(lon, lat), crs=WGS84)
    joined = points.sjoin(grid[["grid_code", "geometry"]], how="left", predicate="intersects")
    # A point on a shared edge matches two cells: keep one, for one code per point.
    # (Random points practically never land exactly on an edge.)
    joined = joined[~joined.index.duplicated(keep="first")]
    codes = joined.grid_code.to_numpy(dtype=object)
    codes[joined.grid_code.isna().to_numpy()] = None
    return codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--cell-m", type=float, default=75.0, help="75 m gives 12,960 cells")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        grid = generate_city(1, 4, Path(tmp), cell_m=args.cell_m).grid
    west, south, east, north = grid.total_bounds
    pad_x, pad_y = (east - west) * 0.05, (north - south) * 0.05
    rng = np.random.default_rng(0)
    lon = rng.uniform(west - pad_x, east + pad_x, args.points)
    lat = rng.uniform(south - pad_y, north + pad_y, args.points)

    started = time.perf_counter()
    index = GridIndex(grid)
    build_s = time.perf_counter() - started
    strtree_s, ours = best_of(args.repeat, lambda: index.assign(lon, lat))
    sjoin_s, theirs = best_of(args.repeat, lambda: sjoin_assign(grid, lon, lat))

    disagree = int((ours != theirs).sum())
    inside = int(sum(code is not None for code in ours))
    print(f"grid cells            {len(grid):>12,}")
    print(f"points                {args.points:>12,}  ({inside:,} inside the grid)")
    print(f"GridIndex build       {build_s * 1e3:>12.1f} ms")
    print(f"GridIndex.assign      {args.points / strtree_s:>12,.0f} points/s  ({strtree_s:.3f} s)")
    print(f"geopandas sjoin       {args.points / sjoin_s:>12,.0f} points/s  ({sjoin_s:.3f} s)")
    print(f"speed-up              {sjoin_s / strtree_s:>12.2f} x")
    print(f"answers that differ   {disagree:>12,}")


if __name__ == "__main__":
    main()
