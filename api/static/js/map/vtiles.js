/*
 * Vector tiles of the grid and of the sensors (GET /ogc/collections/{id}/tiles/
 * WebMercatorQuad/{z}/{y}/{x}: Mapbox Vector Tiles, decoded by the bundle scripts/web.sh
 * builds in /static/vendor/): whether the page uses them, a tileset's limits, the tiles
 * fetched for the view, and a bounded cache of what they decode to. gridtiles.js and
 * sensortiles.js draw and hit-test them.
 *
 * The rule: both layers are drawn from their tiles, whatever the city's size, whenever the
 * page can (the decoder imported, the tileset read); otherwise, or with `?map=geojson` in
 * the page's address, they are loaded whole as GeoJSON (layers.js). `?map=tiles` asks for
 * the tiles, as the page does anyway. Zoomed out, tiles are what keeps the map's cost
 * bounded (a few tiles under the open incidents for the grid, thinned sensors: the server
 * keeps one normal sensor per 64 x 64 units of a tile below z14, and every sensor that is
 * not normal); zoomed in, a z18 tile places a cell's corner or a sensor within centimetres,
 * so no exact GeoJSON is kept for a small layer: one way of drawing each layer, not two.
 */
import { OGC } from '../constants.js';
import { state } from '../store.js';
import { obtainToken, request } from '../http.js';
import { invalidate } from '../frame.js';
import { projX, projY } from './projection.js';

const WORLD = 2 * Math.PI; // the map's projected units across the world
const MVT = 'application/vnd.mapbox-vector-tile';
// Tiles drawn at 512 to 1024 CSS pixels: a tile's 4096 units still give 4 per pixel, and
// a 1600 x 900 map needs at most 4 x 3 of them.
export const TILE_PX = 512;
const MAX_IN_FLIGHT = 6; // what a browser opens to one origin over HTTP/1.1
const RETRY_MS = 15_000; // a tile that failed is asked for again after this long
const STALE_MS = 3_000; // a tile marked stale is asked for again at most this often

/**
 * One tiled layer: `source` is 'geojson' or 'tiles' once chosen. The cache holds at most
 * `maxItems` decoded features and `maxTiles` tiles, the least recently drawn dropped first,
 * never one drawn in the last frame.
 */
function tileSource(id, maxItems, maxTiles, auth) {
  return {
    id, maxItems, maxTiles, auth, // auth: the tiles are for staff, with the bearer token
    source: null, choosing: null, tileset: null, decode: null, total: NaN, staleTimer: null,
    cache: new Map(), items: 0, inFlight: 0, frame: 0,
    stats: { requested: 0, loaded: 0, empty: 0, failed: 0, decoded: 0, evicted: 0, lastDraw: null },
  };
}

// Cells are about 1 kB each with their rings; sensors a tenth of that.
export const grid = tileSource('grid', 150_000, 400, false);
export const sensorTiles = tileSource('sensors', 400_000, 400, true);

/** What a layer's tiles did so far, for tests and the console (a copy: read-only). */
export function tileStats(src = grid) {
  const s = src.stats;
  return { source: src.source, cached: src.cache.size, items: src.items, inFlight: src.inFlight, ...s, lastDraw: s.lastDraw && { ...s.lastDraw } };
}

export const recordDraw = (src, figures) => {
  src.stats.lastDraw = figures;
};

function forced() {
  const v = new URLSearchParams(window.location.search).get('map');
  return v === 'tiles' || v === 'geojson' ? v : null;
}

let decoder = null; // the bundle's exports, {VectorTile, PbfReader}, once imported
let importing = null;

/** The decoder, imported once for both layers (null without it, said once). */
function loadDecoder() {
  if (!importing) {
    importing = import('../../vendor/mvt.js').then(
      (module) => {
        decoder = module;
        return module;
      },
      (err) => {
        console.warn(`CityOps: no vector tile decoder (/static/vendor/mvt.js, built by scripts/web.sh): layers are loaded whole as GeoJSON instead (${err && err.message})`);
        return null;
      },
    );
  }
  return importing;
}

/** 'tiles' or 'geojson' for a layer, decided once per page (the module's rule). */
export function chooseSource(src, decode) {
  if (src.source) return Promise.resolve(src.source);
  if (!src.choosing) {
    src.choosing = decide(src, decode).then((source) => {
      src.source = source;
      return source;
    });
  }
  return src.choosing;
}

async function decide(src, decode) {
  if (forced() === 'geojson') return 'geojson';
  if (!(await loadDecoder())) return 'geojson';
  // OGC API - Features counts a collection without sending it: the header's sensor count.
  const [res, counted] = await Promise.all([
    request(`${OGC}/collections/${src.id}/tiles/WebMercatorQuad`),
    request(`${OGC}/collections/${src.id}/items?limit=1`),
  ]);
  src.tileset = res.ok ? readTileset(res.data) : null;
  if (!src.tileset) {
    console.warn(`CityOps: the ${src.id} tileset could not be read (${res.error || 'no tile link or limits'}): it is loaded whole as GeoJSON instead`);
    return 'geojson';
  }
  src.total = counted.ok ? Number(counted.data.numberMatched) : NaN;
  src.decode = decode;
  return 'tiles';
}

/** The parts of an OGC tileset document the page uses, or null. */
export function readTileset(doc) {
  if (!doc || !Array.isArray(doc.links) || !Array.isArray(doc.tileMatrixSetLimits)) return null;
  const item = doc.links.find((l) => l && l.rel === 'item' && typeof l.href === 'string');
  if (!item) return null;
  // The page reaches its own origin only, whatever host the API named itself by.
  const template = decodeURI(new URL(item.href, window.location.href).pathname);
  const limits = new Map();
  for (const l of doc.tileMatrixSetLimits) {
    const z = Number(l.tileMatrix);
    if (Number.isInteger(z)) limits.set(z, [l.minTileRow, l.maxTileRow, l.minTileCol, l.maxTileCol].map(Number));
  }
  if (!limits.size || !template.includes('{tileMatrix}')) return null;
  const zs = [...limits.keys()];
  let bbox = null;
  const b = doc.boundingBox;
  if (b && Array.isArray(b.lowerLeft) && Array.isArray(b.upperRight)) {
    bbox = [projX(b.lowerLeft[0]), projY(b.lowerLeft[1]), projX(b.upperRight[0]), projY(b.upperRight[1])];
  }
  return { minZ: Math.min(...zs), maxZ: Math.max(...zs), limits, template, bbox };
}

/** The tile matrix whose tiles show at TILE_PX to 2 x TILE_PX at scale `s`, unclamped. */
export const viewZoom = (s) => Math.floor(Math.log2((WORLD * s) / TILE_PX));

/** viewZoom within the tileset's tile matrices. */
export function zoomFor(src, s) {
  const ts = src.tileset;
  return Math.max(ts.minZ, Math.min(ts.maxZ, viewZoom(s)));
}

/** A tile's square in projected units: [x0, y0, x1, y1]. */
export function tileBox(z, row, col) {
  const w = WORLD / 2 ** z;
  const x0 = -Math.PI + col * w;
  const y1 = Math.PI - row * w;
  return [x0, y1 - w, x0 + w, y1];
}

/** The tiles of matrix `z` that meet the projected box, within the tileset's limits. */
export function tilesIn(src, z, x0, y0, x1, y1) {
  const lim = src.tileset.limits.get(z);
  if (!lim) return [];
  const w = WORLD / 2 ** z;
  const c0 = Math.max(lim[2], Math.floor((x0 + Math.PI) / w));
  const c1 = Math.min(lim[3], Math.floor((x1 + Math.PI) / w));
  const r0 = Math.max(lim[0], Math.floor((Math.PI - y1) / w));
  const r1 = Math.min(lim[1], Math.floor((Math.PI - y0) / w));
  const out = [];
  for (let row = r0; row <= r1; row++) for (let col = c0; col <= c1; col++) out.push({ z, row, col });
  return out;
}

/** The tiles of the view [vx0, vx1] x [vy0, vy1] at scale `s`, the middle of the view first. */
export function viewTiles(src, s, vx0, vx1, vy0, vy1) {
  const z = zoomFor(src, s);
  const slots = tilesIn(src, z, vx0, vy0, vx1, vy1);
  const cx = (vx0 + vx1) / 2;
  const cy = (vy0 + vy1) / 2;
  const dist = (t) => {
    const b = tileBox(t.z, t.row, t.col);
    return ((b[0] + b[2]) / 2 - cx) ** 2 + ((b[1] + b[3]) / 2 - cy) ** 2;
  };
  return { z, slots: slots.sort((a, b) => dist(a) - dist(b)) };
}

/**
 * The decoded tile (z, row, col) if it is here; otherwise null, and it is asked for when
 * `fetchIt` and fewer than MAX_IN_FLIGHT requests are out. A tile handed out is marked
 * used in this frame, so the cache keeps it; a stale one is handed out and asked for again.
 */
export function tileAt(src, z, row, col, fetchIt) {
  const key = `${z}/${row}/${col}`;
  const tile = src.cache.get(key);
  const now = performance.now();
  const ready = tile && tile.items;
  const due = !tile || (tile.failedAt && now - tile.failedAt > RETRY_MS) || (tile.staleAt && !tile.refetching && now - tile.staleAt > STALE_MS);
  if (fetchIt && due && src.inFlight < MAX_IN_FLIGHT) fetchTile(src, key, tile, z, row, col);
  if (!ready) return null;
  src.cache.delete(key); // to the end: the most recently used
  src.cache.set(key, tile);
  tile.frame = src.frame;
  return tile;
}

async function fetchTile(src, key, old, z, row, col) {
  const tile = old && old.items ? old : { z, row, col, items: null, byCode: null, frame: src.frame, failedAt: 0, staleAt: 0 };
  tile.refetching = true;
  const askedAt = performance.now();
  src.cache.set(key, tile);
  src.inFlight += 1;
  src.stats.requested += 1;
  const url = src.tileset.template.replace('{tileMatrix}', z).replace('{tileRow}', row).replace('{tileCol}', col);
  try {
    const headers = { Accept: MVT };
    // The grid's tiles are public: no token, so that any cache may keep them.
    if (src.auth) headers.Authorization = `Bearer ${await obtainToken()}`;
    const res = await fetch(url, { headers });
    if (res.status === 204 || res.status === 404) {
      src.stats.empty += 1; // nothing there (204), or outside the layer (404)
      setItems(src, tile, []);
    } else if (!res.ok) {
      throw new Error(`HTTP ${res.status}`);
    } else {
      setItems(src, tile, src.decode(decoder, new Uint8Array(await res.arrayBuffer()), z, row, col));
      src.stats.loaded += 1;
    }
    tile.failedAt = 0;
    if (tile.staleAt <= askedAt) tile.staleAt = 0; // else it changed again meanwhile
  } catch (_) {
    src.stats.failed += 1;
    tile.failedAt = performance.now();
  } finally {
    tile.refetching = false;
    src.inFlight -= 1;
    evict(src);
    invalidate('map');
  }
}

function setItems(src, tile, items) {
  if (tile.items) src.items -= tile.items.length;
  tile.items = items;
  tile.byCode = new Map();
  for (const c of items) if (c.code) tile.byCode.set(c.code, c);
  src.items += items.length;
  src.stats.decoded += items.length;
}

/** Drop the least recently drawn tiles past the cache's bounds (not this frame's). */
export function evict(src) {
  for (const [key, tile] of src.cache) {
    if (src.items <= src.maxItems && src.cache.size <= src.maxTiles) return;
    if (tile.frame >= src.frame || tile.refetching) continue; // in view, or on its way
    src.cache.delete(key);
    if (tile.items) src.items -= tile.items.length;
    src.stats.evicted += 1;
  }
}

/** Called once per frame before tiles are handed out: the cache keeps the tiles it draws. */
export function nextFrame(src) {
  src.frame += 1;
}

/** Every cached tile of `src` is asked for again (at most every STALE_MS), drawn meanwhile. */
export function markStale(src) {
  const now = performance.now();
  for (const tile of src.cache.values()) if (!tile.staleAt) tile.staleAt = now;
  if (!src.staleTimer) {
    // A frame once they are due, to ask for them (nothing else may redraw the map).
    src.staleTimer = setTimeout(() => {
      src.staleTimer = null;
      invalidate('map');
    }, STALE_MS + 50);
  }
}

/** The grid tileset's extent in projected units, for fitting the view (no districts). */
export const tilesetBounds = () => (grid.source === 'tiles' && grid.tileset ? grid.tileset.bbox : null);

/** Open incidents per grid cell, from the open incidents the page holds (live, and as of
 * a replayed instant): what the GeoJSON layer's open_incidents counts. */
export function loadByCode() {
  const out = new Map();
  for (const rec of state.incidents.values()) {
    const code = rec.props.grid_code;
    if (code != null) out.set(String(code), (out.get(String(code)) || 0) + 1);
  }
  return out;
}
