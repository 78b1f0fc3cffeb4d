"""A synthetic demo city near central Shanghai, generated deterministically from a seed.

Six districts (real Shanghai names and codes, synthetic rectangular boundaries) share a
regular lattice of unit grid cells about 150 m across. Every district staffs one
department of each type, whose jurisdiction is the whole district. Sensors of the four
types sit at random points inside cells and report through gateways of about 200
devices each.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import yaml

from core.sensor.telemetry import SENSOR_TYPES
from gis.assign import GridIndex
from gis.crs import WGS84, distance_m
from gis.layers import CityLayers, LayerFormat, detect_format, load_layers, save_layers
from infra.settings import Settings

log = logging.getLogger(__name__)

CITY_VERSION = 2
CITY_YAML = "city.yaml"
CENTRE_LON, CENTRE_LAT = 121.47, 31.23
EXTENT_M = (9_000.0, 8_100.0)  # west-east, south-north
GATEWAY_SIZE = 200


@dataclass(frozen=True, slots=True)
class District:
    code: str
    name: str
    name_zh: str


# Laid out west to east, north row first, roughly as they lie on the real map.
DISTRICTS: tuple[District, ...] = (
    District("310107", "Putuo", "普陀区"),
    District("310106", "Jing'an", "静安区"),
    District("310109", "Hongkou", "虹口区"),
    District("310105", "Changning", "长宁区"),
    District("310104", "Xuhui", "徐汇区"),
    District("310101", "Huangpu", "黄浦区"),
)
# The districts along the Huangpu river: where the rainstorm scenario floods streets.
RIVERSIDE_DISTRICTS: tuple[str, ...] = ("310101", "310109")

# department_type -> (English name suffix, Chinese name suffix)
DEPARTMENTS: dict[str, tuple[str, str]] = {
    "water": ("Water Affairs Bureau", "水务局"),
    "environment": ("Ecology and Environment Bureau", "生态环境局"),
    "roads": ("Roads and Municipal Works Office", "道路市政管理所"),
    "lighting": ("Street Lighting Office", "路灯管理所"),
    "sanitation": ("Greening and City Appearance Bureau", "绿化和市容管理局"),
    "traffic": ("Traffic Police Detachment", "交警支队"),
    "urban_management": ("Urban Management and Law Enforcement Bureau", "城管执法局"),
}

DEVICE_PREFIXES: dict[str, str] = {
    "water_level": "wl",
    "pm25": "pm",
    "manhole_tilt": "mh",
    "streetlight_power": "sl",
}

# Street (街道) and community (社区) blocks, in cells, that structure the grid codes.
_STREET_CELLS = 10
_COMMUNITY_CELLS = 5


def generate_city(
    seed: int,
    n_sensors: int,
    out_dir: Path,
    fmt: LayerFormat = "geojson",
    *,
    cell_m: float = 150.0,
) -> CityLayers:
    """Generate the demo city, write it to ``out_dir`` and return its layers.

    The same ``seed``, ``n_sensors`` and ``cell_m`` always give the same city.

    Parameters
    ----------
    seed : int
        Seed of the random generator (district borders, sensor positions).
    n_sensors : int
        Number of sensors, split evenly over the four sensor types.
    out_dir : Path
        Where the layers and ``city.yaml`` are written.
    fmt : {"geojson", "gpkg"}
        Layer file format.
    cell_m : float
        Side of a grid cell in metres, 25 to 500; the city's extent is fixed, so
        smaller cells give more of them (150 m gives 3,240).

    Examples
    --------
    >>> layers = generate_city(42, 2000, Path("var/city"))  # doctest: +SKIP
    >>> len(layers.grid)  # doctest: +SKIP
    3240
    """
    if n_sensors < len(SENSOR_TYPES):
        raise ValueError(f"n_sensors must be at least {len(SENSOR_TYPES)}, got {n_sensors}")
    # Beyond this range districts get too few cells to split, or more streets than
    # the 3-digit street code can number.
    if not 25.0 <= cell_m <= 500.0:
        raise ValueError(f"cell_m must be between 25 and 500 metres, got {cell_m}")
    rng = np.random.default_rng(seed)
    lattice = _Lattice.around_centre(cell_m)
    col_splits, row_splits = _district_splits(rng, lattice.n_cols, lattice.n_rows)
    districts = _districts_layer(lattice, col_splits, row_splits)
    grid, cell_cols, cell_rows = _grid_layer(lattice, col_splits, row_splits)
    layers = CityLayers(
        districts=districts,
        grid=grid,
        jurisdictions=_jurisdictions_layer(districts),
        sensors=_sensors_layer(rng, n_sensors, lattice, grid, cell_cols, cell_rows),
    )
    out_dir = Path(out_dir)
    save_layers(layers, out_dir, fmt)
    _write_manifest(out_dir / CITY_YAML, layers, seed=seed, fmt=fmt, cell_m=cell_m)
    return layers


def ensure_city(settings: Settings) -> CityLayers:
    """Load the city from ``settings.data_dir``, generating it there first if absent.

    Examples
    --------
    >>> layers = ensure_city(Settings())  # doctest: +SKIP
    """
    data_dir = Path(settings.data_dir)
    if detect_format(data_dir) is None:
        log.info("generating demo city (seed %s) into %s", settings.city_seed, data_dir)
        return generate_city(settings.city_seed, settings.sim_sensors, data_dir)
    manifest_path = data_dir / CITY_YAML
    if manifest_path.is_file():
        manifest = yaml.safe_load(manifest_path.read_text(encoding="utf-8")) or {}
        if manifest.get("generator") == __name__ and manifest.get("version") != CITY_VERSION:
            # Generated by an older version of this generator (not someone's reference
            # data): regenerate, so that new layers (e.g. department types) exist.
            log.info("regenerating demo city in %s (generator version changed)", data_dir)
            return generate_city(settings.city_seed, settings.sim_sensors, data_dir)
        wanted = {"seed": settings.city_seed, "sensors": settings.sim_sensors}
        found = {"seed": manifest.get("seed"), "sensors": manifest.get("counts", {}).get("sensors")}
        if found != wanted:
            # Reference data is kept, never silently replaced: delete it to regenerate.
            log.warning(
                "city in %s was generated with %s, settings ask for %s; using it as is",
                data_dir,
                found,
                wanted,
            )
    return load_layers(data_dir)


@dataclass(frozen=True, slots=True)
class _Lattice:
    """Vertex coordinates of the regular lon/lat lattice; cells are (col, row) pairs."""

    xs: np.ndarray  # n_cols + 1 longitudes, west to east
    ys: np.ndarray  # n_rows + 1 latitudes, south to north

    @property
    def n_cols(self) -> int:
        return len(self.xs) - 1

    @property
    def n_rows(self) -> int:
        return len(self.ys) - 1

    @classmethod
    def around_centre(cls, cell_m: float) -> _Lattice:
        n_cols = max(1, round(EXTENT_M[0] / cell_m))
        n_rows = max(1, round(EXTENT_M[1] / cell_m))
        # Cells are equal steps in degrees, sized in metres at the centre: over 8 km the
        # difference from a true metric grid is well under a metre.
        m_per_deg_lon = distance_m(CENTRE_LON - 0.005, CENTRE_LAT, CENTRE_LON + 0.005, CENTRE_LAT)
        m_per_deg_lat = distance_m(CENTRE_LON, CENTRE_LAT - 0.005, CENTRE_LON, CENTRE_LAT + 0.005)
        dlon = cell_m / (m_per_deg_lon / 0.01)
        dlat = cell_m / (m_per_deg_lat / 0.01)
        west = CENTRE_LON - dlon * n_cols / 2
        south = CENTRE_LAT - dlat * n_rows / 2
        return cls(
            xs=west + dlon * np.arange(n_cols + 1),
            ys=south + dlat * np.arange(n_rows + 1),
        )


def _district_splits(
    rng: np.random.Generator, n_cols: int, n_rows: int
) -> tuple[list[int], list[int]]:
    """Column and row lattice indexes of district borders: 3 columns by 2 rows of blocks."""

    def split(n: int, parts: int) -> list[int]:
        jitter = max(0, n // (parts * 6))
        inner = [
            round(n * k / parts) + int(rng.integers(-jitter, jitter + 1)) for k in range(1, parts)
        ]
        return [0, *inner, n]

    return split(n_cols, 3), split(n_rows, 2)


Block = tuple[int, int, int, int]


def _district_blocks(col_splits: list[int], row_splits: list[int]) -> list[Block]:
    """(col0, col1, row0, row1) of each district in DISTRICTS order (north row first)."""
    blocks: list[Block] = []
    for r in reversed(range(len(row_splits) - 1)):
        for c in range(len(col_splits) - 1):
            blocks.append((col_splits[c], col_splits[c + 1], row_splits[r], row_splits[r + 1]))
    return blocks


def _districts_layer(
    lattice: _Lattice, col_splits: list[int], row_splits: list[int]
) -> gpd.GeoDataFrame:
    blocks = _district_blocks(col_splits, row_splits)
    return gpd.GeoDataFrame(
        {
            "district_code": [d.code for d in DISTRICTS],
            "name": [f"{d.name} District" for d in DISTRICTS],
            "name_zh": [d.name_zh for d in DISTRICTS],
        },
        geometry=[
            shapely.box(lattice.xs[c0], lattice.ys[r0], lattice.xs[c1], lattice.ys[r1])
            for c0, c1, r0, r1 in blocks
        ],
        crs=WGS84,
    )


def _grid_layer(
    lattice: _Lattice, col_splits: list[int], row_splits: list[int]
) -> tuple[gpd.GeoDataFrame, np.ndarray, np.ndarray]:
    """The grid layer sorted by grid code, and each cell's lattice column and row."""
    codes: list[str] = []
    districts: list[str] = []
    cols: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    for district, (c0, c1, r0, r1) in zip(
        DISTRICTS, _district_blocks(col_splits, row_splits), strict=True
    ):
        col_2d, row_2d = np.meshgrid(np.arange(c0, c1), np.arange(r0, r1))
        col, row = col_2d.ravel(), row_2d.ravel()
        # Streets, communities and cells are numbered from the district's north-west corner.
        across, down = col - c0, (r1 - 1) - row
        streets_across = math.ceil((c1 - c0) / _STREET_CELLS)
        street = (down // _STREET_CELLS) * streets_across + across // _STREET_CELLS + 1
        communities_across = _STREET_CELLS // _COMMUNITY_CELLS
        in_street_down, in_street_across = down % _STREET_CELLS, across % _STREET_CELLS
        community = (
            (in_street_down // _COMMUNITY_CELLS) * communities_across
            + in_street_across // _COMMUNITY_CELLS
            + 1
        )
        serial = (down % _COMMUNITY_CELLS) * _COMMUNITY_CELLS + across % _COMMUNITY_CELLS + 1
        codes.extend(
            f"{district.code}{s:03d}{c:03d}{n:03d}"
            for s, c, n in zip(street.tolist(), community.tolist(), serial.tolist(), strict=True)
        )
        districts.extend([district.code] * len(col))
        cols.append(col)
        rows.append(row)
    col_all, row_all = np.concatenate(cols), np.concatenate(rows)
    order = np.argsort(np.asarray(codes), kind="stable")
    col_all, row_all = col_all[order], row_all[order]
    grid = gpd.GeoDataFrame(
        {
            "grid_code": np.asarray(codes, dtype=object)[order],
            "district_code": np.asarray(districts, dtype=object)[order],
        },
        geometry=shapely.box(
            lattice.xs[col_all],
            lattice.ys[row_all],
            lattice.xs[col_all + 1],
            lattice.ys[row_all + 1],
        ),
        crs=WGS84,
    )
    return grid, col_all, row_all


def _jurisdictions_layer(districts: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    records = []
    for district in districts.itertuples(index=False):
        for dept_type, (name_en, name_zh) in DEPARTMENTS.items():
            records.append(
                {
                    "department_code": f"{district.district_code}-{dept_type}",
                    "department_type": dept_type,
                    "name": f"{district.name} {name_en}",
                    "name_zh": f"{district.name_zh}{name_zh}",
                    "district_code": district.district_code,
                    "geometry": district.geometry,
                }
            )
    return gpd.GeoDataFrame(records, geometry="geometry", crs=WGS84)


def _sensors_layer(
    rng: np.random.Generator,
    n_sensors: int,
    lattice: _Lattice,
    grid: gpd.GeoDataFrame,
    cell_cols: np.ndarray,
    cell_rows: np.ndarray,
) -> gpd.GeoDataFrame:
    types = list(SENSOR_TYPES)
    per_type = [n_sensors // len(types) + (i < n_sensors % len(types)) for i in range(len(types))]
    sensor_type = np.repeat(np.asarray(types, dtype=object), per_type)
    device_id = np.asarray(
        [
            f"{DEVICE_PREFIXES[t]}-{k:06d}"
            for t, n in zip(types, per_type, strict=True)
            for k in range(1, n + 1)
        ],
        dtype=object,
    )
    cell = rng.integers(0, len(grid), size=n_sensors)
    # Kept off the cell edges: a device sits in one cell beyond any rounding doubt.
    u, v = rng.uniform(0.05, 0.95, size=(2, n_sensors))
    col, row = cell_cols[cell], cell_rows[cell]
    lon = lattice.xs[col] + u * (lattice.xs[col + 1] - lattice.xs[col])
    lat = lattice.ys[row] + v * (lattice.ys[row + 1] - lattice.ys[row])

    index = GridIndex(grid)
    pos = index.locate(lon, lat)
    if (pos < 0).any():
        raise RuntimeError("bug: a generated sensor lies outside every grid cell")
    grid_code = index.grid_codes[pos]
    district_code = index.district_codes[pos]

    sensors = pd.DataFrame(
        {
            "device_id": device_id,
            "sensor_type": sensor_type,
            "grid_code": grid_code,
            "district_code": district_code,
        }
    )
    sensors["gateway_id"] = _gateway_ids(sensors)
    gdf = gpd.GeoDataFrame(
        sensors[["device_id", "sensor_type", "gateway_id", "grid_code", "district_code"]],
        geometry=shapely.points(lon, lat),
        crs=WGS84,
    )
    return gdf.sort_values("device_id", kind="stable", ignore_index=True)


def _gateway_ids(sensors: pd.DataFrame) -> pd.Series:
    """Gateways of about GATEWAY_SIZE devices, each serving neighbouring grid cells."""
    gateway = pd.Series("", index=sensors.index, dtype=object)
    for district, group in sensors.groupby("district_code", sort=True):
        ordered = group.sort_values(["grid_code", "device_id"]).index.to_numpy()
        n_gateways = math.ceil(len(ordered) / GATEWAY_SIZE)
        for k, chunk in enumerate(np.array_split(ordered, n_gateways), start=1):
            gateway[chunk] = f"gw-{district}-{k:02d}"
    return gateway


def _write_manifest(
    path: Path, layers: CityLayers, *, seed: int, fmt: LayerFormat, cell_m: float
) -> None:
    sensors = layers.sensors
    manifest = {
        "generator": __name__,
        "version": CITY_VERSION,
        "seed": seed,
        "format": fmt,
        "cell_m": cell_m,
        "crs": WGS84,
        "counts": {
            "districts": len(layers.districts),
            "grid_cells": len(layers.grid),
            "jurisdictions": len(layers.jurisdictions),
            "sensors": len(sensors),
            "gateways": int(sensors.gateway_id.nunique()),
        },
        "sensor_types": {t: int((sensors.sensor_type == t).sum()) for t in SENSOR_TYPES},
    }
    path.write_text(yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True), encoding="utf-8")
