"""Vector tiles (Mapbox Vector Tile 2.1) of the unit grid cells and of the sensors.

Tiles are those of OGC's WebMercatorQuad tile matrix set, whose arithmetic ``morecantile``
does; ``mapbox_vector_tile`` encodes them. A tile holds the features that meet its extent
grown by ``BUFFER`` units of its ``EXTENT`` on each side, clipped to that grown square,
projected to EPSG:3857 and quantised to the tile's integer grid: (0, 0) at its top left,
``EXTENT`` at its right and bottom edges. The buffer lets a client draw an outline or a
symbol across a tile's edge without a seam.

- ``PolygonTiles``: a reference layer (the unit grid cells), indexed once in an STRtree in
  EPSG:3857. Its tiles do not change while the process runs: each is rendered once and
  kept (``TileCache``, least recently used dropped past a byte budget); its tag is the
  layer's digest and the tile.
- ``SensorTiles``: the sensors' read model, one range query per tile. A tile's signature
  is the number of sensors in its extent and their highest ``change_seq`` (the map tables'
  trigger stamps every insert and update from one sequence), as the map cache's tiles have
  (``projections.map_layers``): a sensor that changes, arrives or leaves changes it. A kept
  tile is served again while the signature read now is the one it was rendered at.

  From ``full_zoom`` on a tile holds every sensor of its extent. Below it a tile of a dense
  district would hold tens of thousands, so it is thinned: every sensor that is not normal
  (``kept``: an alarm shows at every zoom), and of the normal ones the first by key in each
  square of ``BIN`` x ``BIN`` units (64 x 64 squares to a tile, 66 x 66 with the buffer: at
  most 4,356 normal sensors). The squares are aligned on the tile matrix, so a neighbour's
  buffer holds the same sensors as that neighbour, and each one is four of the next tile
  matrix's: zooming in only adds sensors, and every square that has a sensor shows one.

Quantising may collapse a sliver of a polygon (a part less than a unit wide, at the edge
of the buffer) to nothing: that part is dropped, as no client could draw it. An empty
tile's body is empty (an MVT without layers is zero bytes long).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import mapbox_vector_tile
import morecantile
import numpy as np
import orjson
import shapely
from psycopg import sql
from psycopg_pool import ConnectionPool
from pyproj import Transformer

from projections.ogc_features import POINT_SOURCES, PointSource
from projections.queries import BBox, entity_tag

TMS = morecantile.tms.get("WebMercatorQuad")
MVT = "application/vnd.mapbox-vector-tile"
EXTENT = 4096  # MVT units across a tile
BUFFER = 64  # units around a tile that it also holds
BIN = 64  # units a side of the squares a thinned sensor tile keeps one normal sensor of
# The encoder gets integer coordinates, y down, rings already oriented (exterior with a
# positive area in tile units, as MVT 2.1 wants): it only writes them out.
_ENCODE = {"extents": EXTENT, "y_coord_down": True, "check_winding_order": False}
_MERCATOR = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
_POLYGONAL = (3, 6)  # shapely type ids of Polygon and MultiPolygon
_R = 6378137.0  # EPSG:3857's sphere, for the squares' arithmetic in SQL

SENSOR_PROPERTIES = ("device_id", "sensor_type", "state", "grid_code", "district_code")


class TileOutOfRangeError(ValueError):
    """A tile outside the tile matrix set or outside a tileset's limits."""


@dataclass(frozen=True, slots=True)
class TileId:
    """A tile of WebMercatorQuad: tile matrix (zoom), row (from the north), column."""

    z: int
    row: int
    col: int


@dataclass(frozen=True, slots=True)
class TileBox:
    """A tile's extent in EPSG:3857 metres, and the grown extent its features come from."""

    left: float
    bottom: float
    right: float
    top: float
    pad: float  # ``BUFFER`` units in metres

    @classmethod
    def of(cls, tile: TileId) -> TileBox:
        b = TMS.xy_bounds(morecantile.Tile(tile.col, tile.row, tile.z))
        return cls(b.left, b.bottom, b.right, b.top, (b.right - b.left) * BUFFER / EXTENT)

    @property
    def grown(self) -> tuple[float, float, float, float]:
        p = self.pad
        return self.left - p, self.bottom - p, self.right + p, self.top + p

    @property
    def lonlat(self) -> BBox:
        """The grown extent in lon/lat: a rectangle there too (Mercator maps each axis on
        its own, monotonically)."""
        left, bottom, right, top = self.grown
        west, north = TMS.lnglat(left, top)
        east, south = TMS.lnglat(right, bottom)
        return BBox(west, south, east, north)

    def units(self, xy: np.ndarray) -> np.ndarray:
        """EPSG:3857 coordinates (N x 2) to the tile's integer units (y down)."""
        scale = np.array([EXTENT / (self.right - self.left), -EXTENT / (self.top - self.bottom)])
        return np.rint((xy - np.array([self.left, self.top])) * scale)


def to_mercator(xy: np.ndarray) -> np.ndarray:
    """lon/lat coordinates (N x 2) to EPSG:3857 metres."""
    x, y = _MERCATOR.transform(xy[:, 0], xy[:, 1])
    return np.column_stack([x, y])


@dataclass(frozen=True, slots=True)
class Tileset:
    """Where a layer has tiles: from ``min_zoom`` to ``max_zoom``, over ``bbox`` (lon/lat)."""

    min_zoom: int
    max_zoom: int
    bbox: tuple[float, float, float, float]

    def limits(self, z: int) -> tuple[int, int, int, int]:
        """The first and last row, the first and last column of tile matrix ``z``."""
        west, south, east, north = self.bbox
        top_left = TMS.tile(west, north, z, truncate=True)
        bottom_right = TMS.tile(east, south, z, truncate=True)
        return top_left.y, bottom_right.y, top_left.x, bottom_right.x

    def check(self, tile: TileId) -> None:
        """Raise ``TileOutOfRangeError`` unless ``tile`` is one of this tileset's."""
        if tile.z > TMS.maxzoom:
            raise TileOutOfRangeError(f"WebMercatorQuad has tile matrices 0 to {TMS.maxzoom}")
        size = 2**tile.z
        if tile.row >= size or tile.col >= size:
            raise TileOutOfRangeError(f"tile matrix {tile.z} has rows and columns 0 to {size - 1}")
        if not self.min_zoom <= tile.z <= self.max_zoom:
            raise TileOutOfRangeError(
                f"this tileset has tile matrices {self.min_zoom} to {self.max_zoom}"
            )
        row0, row1, col0, col1 = self.limits(tile.z)
        if not (row0 <= tile.row <= row1 and col0 <= tile.col <= col1):
            raise TileOutOfRangeError(
                f"tile matrix {tile.z} of this tileset has rows {row0} to {row1}"
                f" and columns {col0} to {col1}"
            )


@dataclass(frozen=True, slots=True)
class Tag:
    """What a tile is now, before it is rendered: its entity tag and its signature."""

    etag: str
    signature: Hashable


@dataclass(frozen=True, slots=True)
class RenderedTile:
    body: bytes  # an MVT; empty when the tile holds nothing
    features: int
    etag: str


class TileCache:
    """Rendered tiles by key with the signature they were rendered at; the least recently
    used are dropped past ``max_bytes``."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.entries: OrderedDict[Hashable, tuple[Hashable, RenderedTile]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: Hashable, signature: Hashable) -> RenderedTile | None:
        with self.lock:
            hit = self.entries.get(key)
            if hit is None or hit[0] != signature:
                return None
            self.entries.move_to_end(key)
            return hit[1]

    def put(self, key: Hashable, signature: Hashable, tile: RenderedTile) -> None:
        with self.lock:
            old = self.entries.pop(key, None)
            if old is not None:
                self.bytes -= len(old[1].body)
            if len(tile.body) > self.max_bytes:
                return
            self.entries[key] = (signature, tile)
            self.bytes += len(tile.body)
            while self.bytes > self.max_bytes:
                _, (_, gone) = self.entries.popitem(last=False)
                self.bytes -= len(gone.body)


def encode(layer: str, geometries: Sequence[Any], properties: Sequence[Mapping[str, Any]]) -> bytes:
    """One MVT layer of ``geometries`` (in tile units, y down) with their properties;
    b"" for none. Properties without a value are left out (MVT has no null)."""
    if not len(geometries):
        return b""
    features = [
        {"geometry": g, "properties": {k: v for k, v in p.items() if v is not None}}
        for g, p in zip(geometries, properties, strict=True)
    ]
    body: bytes = mapbox_vector_tile.encode({"name": layer, "features": features}, None, _ENCODE)
    return body


def _scalars(props: Mapping[str, Any]) -> dict[str, Any]:
    """The properties an MVT can carry (strings, numbers, booleans)."""
    return {k: v for k, v in props.items() if isinstance(v, str | int | float | bool)}


class PolygonTiles:
    """The tiles of a fixed polygon layer (lon/lat geometries and their properties)."""

    dimension = 2  # of the geometries

    def __init__(
        self,
        name: str,
        geometries: np.ndarray | Sequence[Any],
        properties: Sequence[Mapping[str, Any]],
        zooms: tuple[int, int],
        cache: TileCache | None = None,
    ) -> None:
        lonlat = np.asarray(geometries, dtype=object)
        self.name = name
        self.geometries = shapely.transform(lonlat, to_mercator)
        self.tree = shapely.STRtree(self.geometries)
        self.properties = [_scalars(p) for p in properties]
        self.fields = tuple(dict.fromkeys(k for p in self.properties for k in p))
        digest = hashlib.sha256(name.encode())
        for wkb in shapely.to_wkb(lonlat):
            digest.update(wkb)
        digest.update(orjson.dumps(self.properties))
        self.digest = digest.hexdigest()
        west, south, east, north = (float(b) for b in shapely.total_bounds(lonlat))
        self.tileset = Tileset(zooms[0], zooms[1], (west, south, east, north))
        self.cache = cache if cache is not None else TileCache()

    def tag(self, tile: TileId) -> Tag:
        return Tag(entity_tag(self.digest, tile.z, tile.row, tile.col), self.digest)

    def render(self, tile: TileId, tag: Tag) -> RenderedTile:
        """The tile as MVT (kept: the layer does not change)."""
        key = (tile.z, tile.row, tile.col)
        hit = self.cache.get(key, tag.signature)
        if hit is not None:
            return hit
        indexes, shapes = self.features(tile)
        body = encode(self.name, shapes, [self.properties[i] for i in indexes])
        rendered = RenderedTile(body, len(indexes), tag.etag)
        self.cache.put(key, tag.signature, rendered)
        return rendered

    def features(self, tile: TileId) -> tuple[list[int], list[Any]]:
        """The layer's features in ``tile``: their indexes in layer order, and their
        geometries clipped to the grown extent, in tile units, valid and oriented."""
        box = TileBox.of(tile)
        grown = box.grown
        hits = np.sort(self.tree.query(shapely.box(*grown), predicate="intersects"))
        clipped = shapely.clip_by_rect(self.geometries[hits], *grown)
        shapes = shapely.transform(clipped, box.units)
        broken = ~shapely.is_valid(shapes)
        if broken.any():  # rounding can make a ring touch itself or fold
            shapes[broken] = shapely.make_valid(
                shapes[broken], method="structure", keep_collapsed=False
            )
        kept = (
            ~shapely.is_empty(shapes)
            & np.isin(shapely.get_type_id(shapes), _POLYGONAL)
            & (shapely.area(shapes) > 0)
        )
        oriented = shapely.orient_polygons(shapes[kept], exterior_cw=False)
        return hits[kept].tolist(), list(oriented)


class SensorTiles:
    """The tiles of the sensors' read model (see the module's docstring)."""

    name = "sensors"
    dimension = 0

    def __init__(
        self,
        pool: ConnectionPool,
        tileset: Tileset,
        cache: TileCache | None = None,
        source: PointSource = POINT_SOURCES["sensors"],
        properties: tuple[str, ...] = SENSOR_PROPERTIES,
        full_zoom: int = 14,
        kept: str = "t.state IS DISTINCT FROM 'normal'",
    ) -> None:
        self.pool = pool
        self.tileset = tileset
        self.cache = cache if cache is not None else TileCache()
        self.fields = properties
        self.full_zoom = full_zoom
        where = sql.SQL(
            "{always} AND {shown} AND t.lon BETWEEN %(west)s AND %(east)s"
            " AND t.lat BETWEEN %(south)s AND %(north)s"
        ).format(always=sql.SQL(source.always), shown=sql.SQL(source.shown))
        table = sql.Identifier(source.table)
        key = sql.Identifier("t", source.key)
        columns = sql.SQL(", ").join(sql.Identifier("t", c) for c in properties)
        self._signature_sql = sql.SQL(
            "SELECT count(*), max(t.change_seq) FROM {table} t WHERE {where}"
        ).format(table=table, where=where)
        self._rows_sql = sql.SQL(
            "SELECT t.change_seq, t.lon, t.lat, {columns} FROM {table} t WHERE {where}"
            " ORDER BY {key}"
        ).format(columns=columns, table=table, where=where, key=key)
        # The squares from EPSG:3857 metres (x to the east, y to the north; the tile's top
        # left at (left, top)); the signature is the whole extent's, counted before
        # DISTINCT ON keeps one normal sensor a square (and every one ``kept``).
        mx = sql.SQL(f"{_R} * radians(t.lon)")
        my = sql.SQL(f"{_R} * ln(tan(pi() / 4 + radians(t.lat) / 2))")
        self._thinned_sql = sql.SQL(
            "SELECT * FROM (SELECT DISTINCT ON (bin_x, bin_y, one) * FROM ("
            "SELECT t.change_seq, t.lon, t.lat, {columns}, {key} AS sort_key,"
            " count(*) OVER () AS n, max(t.change_seq) OVER () AS seq,"
            " floor(({mx} - %(left)s) / %(bin)s) AS bin_x,"
            " floor((%(top)s - {my}) / %(bin)s) AS bin_y,"
            " CASE WHEN {kept} THEN {key} END AS one"
            " FROM {table} t WHERE {where}) s ORDER BY bin_x, bin_y, one, sort_key) d"
            " ORDER BY sort_key"
        ).format(
            columns=columns,
            key=key,
            mx=mx,
            my=my,
            kept=sql.SQL(kept),
            table=table,
            where=where,
        )

    @staticmethod
    def _params(tile: TileId) -> dict[str, float]:
        box = TileBox.of(tile).lonlat
        return {"west": box.west, "south": box.south, "east": box.east, "north": box.north}

    def _etag(self, tile: TileId, signature: Hashable) -> str:
        return entity_tag(self.name, tile.z, tile.row, tile.col, signature)

    def tag(self, tile: TileId) -> Tag:
        """The tile's tag now: one aggregate over the sensors in its grown extent."""
        with self.pool.connection() as conn:
            row = conn.execute(self._signature_sql, self._params(tile)).fetchone()
        signature = (0, None) if row is None else (int(row[0]), row[1])
        return Tag(self._etag(tile, signature), signature)

    def render(self, tile: TileId, tag: Tag) -> RenderedTile:
        """The tile as MVT: the one kept at ``tag``'s signature, or read and rendered now
        (tagged with the signature of the rows it was rendered from)."""
        key = (tile.z, tile.row, tile.col)
        hit = self.cache.get(key, tag.signature)
        if hit is not None:
            return hit
        rows, signature = self._read(tile)
        if rows:
            xy = to_mercator(np.array([(r[1], r[2]) for r in rows], dtype=np.float64))
            points = shapely.points(TileBox.of(tile).units(xy))
            width = len(self.fields)
            props = [dict(zip(self.fields, r[3 : 3 + width], strict=True)) for r in rows]
            body = encode(self.name, list(points), props)
        else:
            body = b""
        rendered = RenderedTile(body, len(rows), self._etag(tile, signature))
        self.cache.put(key, signature, rendered)
        return rendered

    def _read(self, tile: TileId) -> tuple[list[Any], Hashable]:
        """The tile's rows (change_seq, lon, lat, properties...) and the signature of its
        extent: every sensor there, or below ``full_zoom`` the thinned set."""
        params: dict[str, float] = self._params(tile)
        thinned = tile.z < self.full_zoom
        if thinned:
            box = TileBox.of(tile)
            bin_m = (box.right - box.left) * BIN / EXTENT
            params |= {"left": box.left, "top": box.top, "bin": bin_m}
        with self.pool.connection() as conn:
            rows = conn.execute(self._thinned_sql if thinned else self._rows_sql, params).fetchall()
        if not rows:
            return rows, (0, None)
        if thinned:
            n, seq = rows[0][-5], rows[0][-4]  # n, seq, bin_x, bin_y, one
            return rows, (int(n), seq)
        return rows, (len(rows), max(r[0] for r in rows))
