"""The city's reference layers: districts, unit grid cells, jurisdictions, sensors.

On disk a city is either one GeoJSON file per layer (``districts.geojson``,
``grid.geojson``, ...) or one GeoPackage ``city.gpkg`` with one layer per name. Layers
are WGS84 lon/lat; codes are strings so leading zeros and 15-digit grid codes survive.

GeoPackage keeps coordinates bit-exact. GeoJSON is text: GDAL writes about 15
significant digits, so the last bits of a coordinate can change; equal coordinates
are written identically, so cells that share an edge still share it after a reload.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import geopandas as gpd
import pandas as pd

from core.sensor.telemetry import SENSOR_TYPES
from gis.crs import WGS84, ensure_wgs84

LayerFormat = Literal["geojson", "gpkg"]

LAYER_NAMES: tuple[str, ...] = ("districts", "grid", "jurisdictions", "sensors")
GPKG_NAME = "city.gpkg"

REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "districts": ("district_code", "name", "name_zh"),
    "grid": ("grid_code", "district_code"),
    "jurisdictions": ("department_code", "department_type", "name", "name_zh"),
    "sensors": ("device_id", "sensor_type", "gateway_id", "grid_code", "district_code"),
}

_GEOM_TYPES: dict[str, frozenset[str]] = {
    "districts": frozenset({"Polygon", "MultiPolygon"}),
    "grid": frozenset({"Polygon", "MultiPolygon"}),
    "jurisdictions": frozenset({"Polygon", "MultiPolygon"}),
    "sensors": frozenset({"Point"}),
}


class LayerError(ValueError):
    """A reference layer is missing, malformed or inconsistent."""


@dataclass
class CityLayers:
    """The four reference layers of one city, all in WGS84.

    Examples
    --------
    >>> layers = CityLayers(districts, grid, jurisdictions, sensors)  # doctest: +SKIP
    >>> layers.validate()  # doctest: +SKIP
    """

    districts: gpd.GeoDataFrame
    grid: gpd.GeoDataFrame
    jurisdictions: gpd.GeoDataFrame
    sensors: gpd.GeoDataFrame

    def layer(self, name: str) -> gpd.GeoDataFrame:
        """Return a layer by its name in :data:`LAYER_NAMES`."""
        if name not in LAYER_NAMES:
            raise LayerError(f"unknown layer {name!r}; expected one of {LAYER_NAMES}")
        gdf: gpd.GeoDataFrame = getattr(self, name)
        return gdf

    def validate(self) -> None:
        """Check CRS, columns, geometry types and code formats of every layer.

        Raises
        ------
        CRSMismatchError
            If a layer is not WGS84.
        LayerError
            If a column is missing or a value breaks the layer's rules.
        """
        for name in LAYER_NAMES:
            _check_layer(name, self.layer(name))
        _check_codes(self)


def load_layers(data_dir: Path, fmt: LayerFormat | None = None) -> CityLayers:
    """Read and validate the city's reference layers from ``data_dir``.

    Parameters
    ----------
    data_dir : Path
        Directory holding ``<layer>.geojson`` files or ``city.gpkg``.
    fmt : {"geojson", "gpkg"}, optional
        Which format to read. By default the one present; if both are, an error
        asks for a choice rather than guessing which copy is current.

    Returns
    -------
    CityLayers

    Raises
    ------
    LayerError
        If no layers are found, or a layer is incomplete or inconsistent.
    CRSMismatchError
        If a layer is not WGS84.

    Examples
    --------
    >>> layers = load_layers(Path("var/city"))  # doctest: +SKIP
    >>> layers.grid.grid_code.str.len().unique().tolist()  # doctest: +SKIP
    [15]
    """
    data_dir = Path(data_dir)
    chosen = fmt or detect_format(data_dir)
    if chosen is None:
        raise LayerError(
            f"no city layers in {data_dir}: expected {GPKG_NAME} or "
            + ", ".join(f"{n}.geojson" for n in LAYER_NAMES)
        )
    frames = {name: _read_layer(data_dir, name, chosen) for name in LAYER_NAMES}
    layers = CityLayers(**frames)
    layers.validate()
    return layers


def save_layers(layers: CityLayers, data_dir: Path, fmt: LayerFormat = "geojson") -> list[Path]:
    """Validate and write the layers to ``data_dir``; return the files written.

    Each file is written to a temporary name and renamed into place, so a process
    loading the city never reads a half-written layer.

    Examples
    --------
    >>> save_layers(layers, Path("var/city"), fmt="gpkg")  # doctest: +SKIP
    [PosixPath('var/city/city.gpkg')]
    """
    layers.validate()
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "geojson":
        written = []
        for name in LAYER_NAMES:
            target = data_dir / f"{name}.geojson"
            with _replacing(target) as tmp:
                _frame_for_write(layers.layer(name)).to_file(tmp, driver="GeoJSON")
            written.append(target)
        return written
    if fmt == "gpkg":
        target = data_dir / GPKG_NAME
        with _replacing(target) as tmp:
            for name in LAYER_NAMES:
                _frame_for_write(layers.layer(name)).to_file(tmp, driver="GPKG", layer=name)
        return [target]
    raise LayerError(f"unknown layer format {fmt!r}; expected 'geojson' or 'gpkg'")


def detect_format(data_dir: Path) -> LayerFormat | None:
    """Return which layer format ``data_dir`` holds, or None if it holds none.

    Raises
    ------
    LayerError
        If both formats are present, or only some of the GeoJSON files.

    Examples
    --------
    >>> detect_format(Path("/nonexistent"))
    """
    geojson = [n for n in LAYER_NAMES if (data_dir / f"{n}.geojson").is_file()]
    has_gpkg = (data_dir / GPKG_NAME).is_file()
    if geojson and has_gpkg:
        raise LayerError(
            f"{data_dir} holds both {GPKG_NAME} and GeoJSON layers; pass fmt= to choose"
        )
    if has_gpkg:
        return "gpkg"
    if not geojson:
        return None
    missing = [n for n in LAYER_NAMES if n not in geojson]
    if missing:
        raise LayerError(
            f"{data_dir}: GeoJSON layers incomplete, missing "
            + ", ".join(f"{n}.geojson" for n in missing)
        )
    return "geojson"


def _read_layer(data_dir: Path, name: str, fmt: LayerFormat) -> gpd.GeoDataFrame:
    if fmt == "geojson":
        path = data_dir / f"{name}.geojson"
        if not path.is_file():
            raise LayerError(f"missing layer file {path}")
        gdf = gpd.read_file(path)
    elif fmt == "gpkg":
        path = data_dir / GPKG_NAME
        if not path.is_file():
            raise LayerError(f"missing GeoPackage {path}")
        try:
            gdf = gpd.read_file(path, layer=name)
        except ValueError as exc:
            raise LayerError(f"{path}: cannot read layer {name!r}: {exc}") from exc
    else:
        raise LayerError(f"unknown layer format {fmt!r}; expected 'geojson' or 'gpkg'")
    # A layer with no rows comes back without a CRS; an empty layer is still valid.
    if len(gdf) == 0 and gdf.crs is None:
        gdf = gdf.set_crs(WGS84)
    return gdf


def _check_layer(name: str, gdf: gpd.GeoDataFrame) -> None:
    ensure_wgs84(gdf, name)
    missing = [c for c in REQUIRED_COLUMNS[name] if c not in gdf.columns]
    if missing:
        raise LayerError(f"{name}: missing required column(s) {', '.join(missing)}")
    no_geometry = int((gdf.geometry.isna() | gdf.geometry.is_empty).sum())
    if no_geometry:
        raise LayerError(f"{name}: {no_geometry} feature(s) without geometry")
    bad_types = set(gdf.geom_type.unique()) - _GEOM_TYPES[name]
    if bad_types:
        raise LayerError(
            f"{name}: geometry type(s) {sorted(bad_types)} not allowed; "
            f"expected {sorted(_GEOM_TYPES[name])}"
        )


def _check_codes(layers: CityLayers) -> None:
    districts = layers.districts.district_code.astype(str)
    _require(districts.str.fullmatch(r"\d{6}"), "districts", "district_code", "6 digits")
    _require_unique(districts, "districts", "district_code")

    grid = layers.grid
    grid_codes = grid.grid_code.astype(str)
    _require(grid_codes.str.fullmatch(r"\d{15}"), "grid", "grid_code", "15 digits")
    _require_unique(grid_codes, "grid", "grid_code")
    _require(
        grid_codes.str[:6] == grid.district_code.astype(str),
        "grid",
        "grid_code",
        "its district_code as first 6 digits",
    )
    _require(grid.district_code.isin(districts), "grid", "district_code", "a known district")

    _require_unique(
        layers.jurisdictions.department_code.astype(str), "jurisdictions", "department_code"
    )

    sensors = layers.sensors
    _require_unique(sensors.device_id.astype(str), "sensors", "device_id")
    _require(
        sensors.sensor_type.isin(list(SENSOR_TYPES)),
        "sensors",
        "sensor_type",
        f"one of {sorted(SENSOR_TYPES)}",
    )
    # A sensor outside every grid cell has no grid_code; one that has must exist.
    placed = sensors.grid_code.notna()
    _require(sensors.grid_code[placed].isin(grid_codes), "sensors", "grid_code", "a known cell")


def _require(ok: pd.Series, layer: str, column: str, rule: str) -> None:
    if not bool(ok.all()):
        bad = ok.index[~ok.to_numpy(dtype=bool)]
        raise LayerError(
            f"{layer}: {len(bad)} row(s) where {column} is not {rule} (first at row {bad[0]})"
        )


def _require_unique(values: pd.Series, layer: str, column: str) -> None:
    dup = values[values.duplicated()]
    if len(dup):
        raise LayerError(f"{layer}: duplicate {column} {dup.iloc[0]!r} ({len(dup)} duplicates)")


def _frame_for_write(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    # The index carries no meaning in a layer; writing it would add a spurious column.
    return gdf.reset_index(drop=True)


@contextmanager
def _replacing(target: Path) -> Iterator[Path]:
    """Yield a temporary path in the target's directory that replaces ``target`` on success."""
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp = tmp_dir / target.name
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_dir.rmdir()
