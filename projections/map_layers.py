"""The live map's layers, served from memory while the map view is unchanged.

``MapLayers`` keeps each point layer (sensors, incidents) in ~500 m tiles of rendered
GeoJSON features. Every request first reads a ``MapToken`` (one small query: the map
projection's position and each layer's highest ``change_seq``; in the API through a
``MapTokenFeed``, which shares one read among the requests that arrive together, each
getting a read that began after it came). A layer whose rows have
not changed is served as it is; otherwise the rows written since the view's own
``change_seq`` are read (an index range scan: a few rows per projection batch) and only
their tiles are rebuilt. The map tables' trigger stamps every insert and update with the
next ``map_change_seq``, and one fenced projector writes them, one transaction per batch,
so a view that has read every row up to a committed ``change_seq`` has missed none.
A rebuild empties the tables and moves the position back: a view ahead of the position
is read again whole.

A viewport is cut from the tiles in memory (numpy masks over features PostgreSQL
rendered), so any bbox is served without SQL; the ETag comes from the query and the
signatures of the tiles it touched. The grid's counts are summed from the sensors' and
incidents' tiles: no query of their own. Rendered bodies are also kept per (layer, query)
in an LRU bounded by entries and bytes, tagged with the view's generation.

With ``cache=False`` every request is one SQL query that builds the GeoJSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from anyio.to_thread import run_sync as run_sync_in_worker_thread
from shapely.geometry import shape

from projections.queries import (
    MAP_TILE_DEG,
    POINT_LAYERS,
    BBox,
    LayerQuery,
    MapToken,
    MapTokenFeed,
    PointLayer,
    ReadModels,
    Rendered,
    entity_tag,
    joined_collection,
)

Tile = tuple[int, int]  # floor(lon / MAP_TILE_DEG), floor(lat / MAP_TILE_DEG)
Signature = tuple[int, int]  # rows in the tile, their highest change_seq
Row = tuple[Any, ...]  # change_seq, id, shown, lon, lat, grid_code, filters..., feature


def tile_of(lon: float, lat: float) -> Tile:
    return math.floor(lon / MAP_TILE_DEG), math.floor(lat / MAP_TILE_DEG)


class _PointTile:
    """One tile of a point layer: its rows, their features, and what bbox and filters test.

    Rows are kept in id order, so a tile rebuilt from the same rows renders the same bytes.
    """

    __slots__ = (
        "east",
        "features",
        "grid",
        "grid_digest",
        "joined",
        "lat",
        "lon",
        "north",
        "rows",
        "signature",
        "south",
        "values",
        "west",
    )

    def __init__(self, rows: list[Row], filters: tuple[str, ...]) -> None:
        rows.sort(key=lambda r: r[1])
        self.rows = rows
        self.signature: Signature = (len(rows), max(r[0] for r in rows))
        self.lon = np.array([r[3] for r in rows], dtype=np.float64)
        self.lat = np.array([r[4] for r in rows], dtype=np.float64)
        self.grid = Counter(r[5] for r in rows)  # features per grid cell
        self.grid_digest = repr(sorted(self.grid.items(), key=str))
        self.values = {
            column: np.array([r[6 + i] for r in rows], dtype=object)
            for i, column in enumerate(filters)
        }
        self.features = [r[-1].encode() for r in rows]
        self.joined = b",".join(self.features)
        # The tile's true extent (not its nominal square): "wholly inside" is then exact.
        self.west, self.east = float(self.lon.min()), float(self.lon.max())
        self.south, self.north = float(self.lat.min()), float(self.lat.max())

    def select(self, query: LayerQuery) -> list[bytes] | None:
        """The features ``query`` selects here; None when the viewport misses the tile."""
        box = query.bbox
        if box is None:
            inside = True
        elif (
            self.east < box.west
            or self.west > box.east
            or self.north < box.south
            or self.south > box.north
        ):
            return None
        else:
            inside = (
                box.west <= self.west
                and self.east <= box.east
                and box.south <= self.south
                and self.north <= box.north
            )
        if inside and not query.filters:
            return [self.joined]
        mask = np.ones(len(self.features), dtype=bool)
        if box is not None and not inside:
            mask &= (self.lon >= box.west) & (self.lon <= box.east)
            mask &= (self.lat >= box.south) & (self.lat <= box.north)
        for column, value in query.filters:
            mask &= self.values[column] == value
        return [self.features[i] for i in mask.nonzero()[0].tolist()]


@dataclass(frozen=True, slots=True)
class _PointView:
    """A point layer in memory as of ``position`` and ``seq``, tile by tile."""

    layer: PointLayer
    position: int = -1
    seq: int = -1  # the highest change_seq read; -1: never read
    read_at: float = float("-inf")  # monotonic clock when its state was read
    generation: int = 0  # changes when the content does
    tiles: dict[Tile, _PointTile] = field(default_factory=dict)
    where: dict[str, Tile] = field(default_factory=dict)  # feature id -> its tile
    grid: Counter[str | None] = field(default_factory=Counter)  # features per grid cell
    grid_digest: str = ""  # changes when ``grid`` does

    def render(self, query: LayerQuery) -> Rendered:
        """The features ``query`` selects, tagged by the signatures of the tiles it met."""
        parts: list[bytes] = []
        touched: list[tuple[Tile, Signature]] = []
        for key, tile in self._candidates(query.bbox):
            selected = tile.select(query)
            if selected is not None:
                parts.extend(selected)
                touched.append((key, tile.signature))
        return Rendered(
            joined_collection(parts), entity_tag(self.layer, MAP_TILE_DEG, query, touched)
        )

    def _candidates(self, box: BBox | None) -> list[tuple[Tile, _PointTile]]:
        """The tiles ``box`` may meet, in key order (a point inside ``box`` has its tile
        key inside this range: floor of a division is monotonic)."""
        if box is None:
            return sorted(self.tiles.items())
        x0, y0 = tile_of(box.west, box.south)
        x1, y1 = tile_of(box.east, box.north)
        if (x1 - x0 + 1) * (y1 - y0 + 1) >= len(self.tiles):
            return sorted(
                (k, t) for k, t in self.tiles.items() if x0 <= k[0] <= x1 and y0 <= k[1] <= y1
            )
        keys = ((x, y) for x in range(x0, x1 + 1) for y in range(y0, y1 + 1))
        return [(k, self.tiles[k]) for k in keys if k in self.tiles]

    def fresh_for(self, position: int, seq: int, asked_at: float) -> bool:
        """Whether this view may answer a request that read ``position`` and ``seq`` (the
        layer's) at ``asked_at``."""
        if self.read_at >= asked_at:  # read after the request asked: at least as new
            return True
        return self.position <= position and self.seq == seq

    def refreshed(self, read: ReadModels) -> _PointView:
        """The view now: the rows written since ``seq`` replace theirs, tile by tile."""
        read_at = time.monotonic()
        if self.seq < 0:
            return self._whole(read, read_at)
        changes = read.layer_rows(self.layer, self.seq)
        if (
            changes.position < self.position  # emptied by a rebuild, which is under way
            or changes.min_seq is None  # emptied
            or changes.min_seq > self.seq  # emptied, and filled again since
        ):
            return self._whole(read, read_at)
        seq = changes.max_seq or 0
        if not changes.rows:
            return dataclasses.replace(self, position=changes.position, seq=seq, read_at=read_at)
        tiles = dict(self.tiles)
        where = dict(self.where)
        changed: dict[str, Row] = {row[1]: row for row in changes.rows}
        dirty: dict[Tile, list[Row]] = {}
        for key in {where[i] for i in changed if i in where}:
            dirty[key] = [r for r in tiles[key].rows if r[1] not in changed]
        for i, row in changed.items():
            where.pop(i, None)
            if row[2]:  # shown
                key = where[i] = tile_of(row[3], row[4])
                dirty.setdefault(key, list(tiles[key].rows) if key in tiles else []).append(row)
        grid = self.grid.copy()
        for key, rows in dirty.items():
            old = tiles.pop(key, None)
            if old is not None:
                grid.subtract(old.grid)
                for cell in old.grid:  # no empty cells kept
                    if grid[cell] <= 0:
                        del grid[cell]
            if rows:
                new = tiles[key] = _PointTile(rows, self.layer.filters)
                grid.update(new.grid)
        return self._view(changes.position, seq, read_at, tiles, where, grid)

    def _whole(self, read: ReadModels, read_at: float) -> _PointView:
        whole = read.layer_rows(self.layer, None)
        by_tile: dict[Tile, list[Row]] = {}
        where: dict[str, Tile] = {}
        for row in whole.rows:
            key = where[row[1]] = tile_of(row[3], row[4])
            by_tile.setdefault(key, []).append(row)
        tiles = {key: _PointTile(rows, self.layer.filters) for key, rows in by_tile.items()}
        grid: Counter[str | None] = Counter()
        for tile in tiles.values():
            grid.update(tile.grid)
        return self._view(whole.position, whole.max_seq or 0, read_at, tiles, where, grid)

    def _view(
        self,
        position: int,
        seq: int,
        read_at: float,
        tiles: dict[Tile, _PointTile],
        where: dict[str, Tile],
        grid: Counter[str | None],
    ) -> _PointView:
        digest = entity_tag(*sorted((key, tile.grid_digest) for key, tile in tiles.items()))
        return _PointView(
            self.layer, position, seq, read_at, self.generation + 1, tiles, where, grid, digest
        )


class _ReferenceLayer:
    """A fixed polygon layer (districts, grid cells): each feature serialized once.

    ``counted`` features end in two counts (the grid's sensors and open incidents),
    filled in per render.
    """

    def __init__(self, collection: Mapping[str, Any], *, counted: bool) -> None:
        features = collection["features"]
        self.ids = [str(f["id"]) for f in features]
        self.parts: list[bytes] = []
        for f in features:
            head = orjson.dumps({"type": "Feature", "id": f["id"], "geometry": f["geometry"]})
            props = orjson.dumps(f.get("properties") or {})
            if counted:  # open the properties object for the counts
                props = props[:-1] + (b',"sensors":' if len(props) > 2 else b'"sensors":')
            self.parts.append(head[:-1] + b',"properties":' + props + (b"" if counted else b"}"))
        bounds = np.array([shape(f["geometry"]).bounds for f in features], dtype=np.float64)
        self.bounds = bounds.reshape(-1, 4)
        self.digest = hashlib.sha256(b"".join(self.parts)).hexdigest()

    def selected(self, box: BBox | None) -> list[int]:
        """Indexes of the features whose bounding box meets ``box``."""
        if box is None:
            return list(range(len(self.parts)))
        b = self.bounds
        meets = (
            (b[:, 0] <= box.east)
            & (b[:, 2] >= box.west)
            & (b[:, 1] <= box.north)
            & (b[:, 3] >= box.south)
        )
        indexes: list[int] = meets.nonzero()[0].tolist()
        return indexes

    def render(self, query: LayerQuery) -> Rendered:
        body = joined_collection([self.parts[i] for i in self.selected(query.bbox)])
        return Rendered(body, entity_tag(self.digest, query))

    def render_counted(
        self, box: BBox | None, sensors: Mapping[Any, int], incidents: Mapping[Any, int]
    ) -> bytes:
        parts = []
        for i in self.selected(box):
            code = self.ids[i]
            counts = b'%d,"open_incidents":%d}}' % (sensors.get(code, 0), incidents.get(code, 0))
            parts.append(self.parts[i] + counts)
        return joined_collection(parts)


class MapLayers:
    """The live map's layers as GeoJSON bodies (see the module's docstring)."""

    def __init__(
        self,
        read: ReadModels,
        reference: Mapping[str, Mapping[str, Any]],
        *,
        cache: bool = True,
        max_entries: int = 256,
        max_bytes: int = 64 << 20,
    ) -> None:
        self.read = read
        self.cache = cache
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.districts = _ReferenceLayer(reference["districts"], counted=False)
        self.grid = _ReferenceLayer(reference["grid"], counted=True)
        self.views = {name: _PointView(layer) for name, layer in POINT_LAYERS.items()}
        self.refreshing = {name: threading.Lock() for name in self.views}
        self.bodies: OrderedDict[tuple[str, LayerQuery], tuple[object, Rendered]] = OrderedDict()
        self.body_bytes = 0
        self.lock = threading.Lock()

    def render(self, layer: str, query: LayerQuery) -> Rendered:
        """``layer`` (districts, grid, sensors, incidents) as ``query`` asks for it."""
        if layer == "districts":
            return self._remember((layer, query), 0, lambda: self.districts.render(query))
        if not self.cache:
            return Rendered.of(self._uncached(layer, query))
        at = self.read.map_token()
        return self._render_at(layer, query, at, time.monotonic())

    async def render_async(self, layer: str, query: LayerQuery, tokens: MapTokenFeed) -> Rendered:
        """``render`` for the event loop: the token comes from ``tokens`` (shared reads,
        no thread), and a thread is taken only to refresh a view that has changed."""
        if layer == "districts":  # fixed, and cut from memory
            return self.render(layer, query)
        if not self.cache:
            return await run_sync_in_worker_thread(self.render, layer, query)
        asked_at = time.monotonic()
        at = await tokens.token()
        needed = ("sensors", "incidents") if layer == "grid" else (layer,)
        if all(self.views[n].fresh_for(at.position, at.seq[n], asked_at) for n in needed):
            return self._render_at(layer, query, at, asked_at)
        return await run_sync_in_worker_thread(self._render_at, layer, query, at, asked_at)

    def _render_at(self, layer: str, query: LayerQuery, at: MapToken, asked_at: float) -> Rendered:
        if layer != "grid":
            view = self._fresh(layer, at, asked_at)
            return self._remember((layer, query), view.generation, lambda: view.render(query))
        sensors = self._fresh("sensors", at, asked_at)
        incidents = self._fresh("incidents", at, asked_at)

        def grid() -> Rendered:
            body = self.grid.render_counted(query.bbox, sensors.grid, incidents.grid)
            tag = entity_tag(self.grid.digest, query, sensors.grid_digest, incidents.grid_digest)
            return Rendered(body, tag)

        return self._remember((layer, query), (sensors.generation, incidents.generation), grid)

    def _uncached(self, layer: str, query: LayerQuery) -> bytes:
        if layer in POINT_LAYERS:
            return self.read.point_layer(POINT_LAYERS[layer], query)
        load = self.read.grid_load()
        return self.grid.render_counted(
            query.bbox,
            {code: n["sensors"] for code, n in load.items()},
            {code: n["open_incidents"] for code, n in load.items()},
        )

    def _fresh(self, layer: str, at: MapToken, asked_at: float) -> _PointView:
        """The view of ``layer`` as of ``at`` (read at ``asked_at``) or later."""
        view = self.views[layer]
        if view.fresh_for(at.position, at.seq[layer], asked_at):
            return view
        with self.refreshing[layer]:
            view = self.views[layer]
            if not view.fresh_for(at.position, at.seq[layer], asked_at):
                view = self.views[layer] = view.refreshed(self.read)
            return view

    def _remember(
        self, key: tuple[str, LayerQuery], generation: object, render: Callable[[], Rendered]
    ) -> Rendered:
        with self.lock:
            hit = self.bodies.get(key)
            if hit is not None and hit[0] == generation:
                self.bodies.move_to_end(key)
                return hit[1]
        rendered = render()
        size = len(rendered.body)
        with self.lock:
            old = self.bodies.pop(key, None)
            if old is not None:
                self.body_bytes -= len(old[1].body)
            if size <= self.max_bytes:
                self.bodies[key] = (generation, rendered)
                self.body_bytes += size
            while len(self.bodies) > self.max_entries or self.body_bytes > self.max_bytes:
                _, (_, gone) = self.bodies.popitem(last=False)
                self.body_bytes -= len(gone.body)
        return rendered
