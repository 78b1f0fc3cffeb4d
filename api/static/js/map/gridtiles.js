/*
 * The grid drawn and hit-tested from its vector tiles (vtiles.js): the cells of each tile
 * in view, clipped to the tile's square (a tile also holds a band of its neighbours'
 * cells, so that a cell across an edge is drawn without a seam), filled by load or by
 * hotspot as render.js fills the GeoJSON grid. A tile not here yet is stood in for by a
 * coarser one that is, until it comes.
 *
 * While cells are too small on screen for outlines (zoomed out), only the coloured cells
 * are drawn; coloured by load, those are where the open incidents are, so only the tiles
 * under them are asked for: the city seen whole costs a few tiles, not all of its grid.
 * Hotspots come with their cells' polygons (panels/hotspots.js) and are drawn from those
 * over the tiles: coloured by hotspot, zoomed out, no tile is asked for at all. (The
 * cells' size comes from the hotspots or the first tiles: until then the view's tiles are
 * asked for.)
 */
import { COLORS } from '../constants.js';
import { state, view } from '../store.js';
import { hasPos } from '../records.js';
import { ctx } from '../dom.js';
import { addRings, boundsOf, pointInRings } from './projection.js';
import { GRID_OUTLINE_PX, hotspotCells, paintHotspots } from './symbols.js';
import { tiledSensors } from './sensortiles.js';
import { grid, chooseSource, zoomFor, tilesIn, tileBox, tileAt, viewTiles, nextFrame, evict, recordDraw, loadByCode } from './vtiles.js';

export const tiledGrid = () => grid.source === 'tiles';

/** The grid cells of an MVT: records as layers.js makes from GeoJSON, rings in projected units. */
export function decodeCells(decoder, bytes, z, row, col) {
  const layer = new decoder.VectorTile(new decoder.PbfReader(bytes)).layers.grid;
  if (!layer) return [];
  const [x0, , , y1] = tileBox(z, row, col);
  const k = (2 * Math.PI) / 2 ** z / layer.extent;
  const cells = [];
  for (let i = 0; i < layer.length; i++) {
    const f = layer.feature(i);
    if (f.type !== 3) continue; // polygons only
    const rings = [];
    for (const ring of f.loadGeometry()) {
      if (ring.length < 3) continue;
      const a = new Float64Array(ring.length * 2);
      for (let j = 0; j < ring.length; j++) {
        a[2 * j] = x0 + ring[j].x * k;
        a[2 * j + 1] = y1 - ring[j].y * k;
      }
      rings.push(a);
    }
    if (!rings.length) continue;
    const props = { ...f.properties };
    const code = props.grid_code != null ? String(props.grid_code) : '';
    cells.push({ code, props, rings, bbox: boundsOf(rings), count: 0 });
  }
  learnCellSize(cells);
  return cells;
}

/** The cells' size on the map (the median width of some), if it is not known yet. */
function learnCellSize(cells) {
  if (!cells.length || view.cellSize) return;
  const widths = cells.slice(0, 400).map((c) => c.bbox[2] - c.bbox[0]).sort((a, b) => a - b);
  view.cellSize = widths[widths.length >> 1];
}

/** 'tiles' or 'geojson' for the grid (vtiles.js decides, once). */
export const chooseGridSource = () => chooseSource(grid, decodeCells);

/** The decoded tile for the slot (z, row, col), or the nearest coarser one here. */
function standIn(z, row, col) {
  for (let pz = z - 1; pz >= grid.tileset.minZ; pz--) {
    const tile = tileAt(grid, pz, row >> (z - pz), col >> (z - pz), false);
    if (tile) return tile;
  }
  return null;
}

/** The cells of `tile` coloured by load (hotspots are drawn from their own polygons). */
function coloured(tile, load) {
  const out = [];
  if (state.gridMode === 'hotspot') return out;
  if (load.size < tile.items.length) {
    for (const code of load.keys()) {
      const c = tile.byCode.get(code);
      if (c) out.push(c);
    }
  } else {
    for (const c of tile.items) if (load.has(c.code)) out.push(c);
  }
  return out;
}

const loadBucket = (n) => (n >= 5 ? 3 : n >= 3 ? 2 : n - 1);

function drawTile(tile, clip, s, tx, ty, load, outlines) {
  ctx.save();
  ctx.beginPath();
  ctx.rect(clip[0] * s + tx, ty - clip[3] * s, (clip[2] - clip[0]) * s, (clip[3] - clip[1]) * s);
  ctx.clip();
  const cells = coloured(tile, load);
  const buckets = COLORS.hot.map(() => new Path2D());
  for (const c of cells) addRings(buckets[loadBucket(load.get(c.code))], c.rings, s, tx, ty);
  buckets.forEach((p, i) => {
    ctx.fillStyle = COLORS.hot[i];
    ctx.fill(p, 'evenodd');
  });
  if (outlines) {
    const lines = new Path2D();
    for (const c of tile.items) addRings(lines, c.rings, s, tx, ty);
    ctx.strokeStyle = COLORS.gridLine;
    ctx.lineWidth = view.cellSize * s >= 24 ? 0.8 : 0.5;
    ctx.stroke(lines);
  }
  ctx.restore();
  return cells.length;
}

/** The tiles of matrix `z` under the open incidents in the view, a cell's width around each. */
function tilesUnderIncidents(z, vx0, vx1, vy0, vy1) {
  const c = view.cellSize;
  const out = new Map();
  for (const rec of state.incidents.values()) {
    if (!hasPos(rec) || rec.x < vx0 || rec.x > vx1 || rec.y < vy0 || rec.y > vy1) continue;
    for (const t of tilesIn(grid, z, rec.x - c, rec.y - c, rec.x + c, rec.y + c)) out.set(`${t.row}/${t.col}`, t);
  }
  return [...out.values()];
}

/** The grid's tiles in the view [vx0, vx1] x [vy0, vy1] (projected units), fetched as needed. */
export function drawGridTiles(s, tx, ty, vx0, vx1, vy0, vy1) {
  if (!grid.tileset) return;
  nextFrame(grid);
  const hotspots = state.gridMode === 'hotspot' ? hotspotCells() : [];
  learnCellSize(hotspots);
  const outlines = view.cellSize * s >= GRID_OUTLINE_PX;
  // Until the cells' size is known, the view's tiles, middle first.
  const sparse = view.cellSize > 0 && !outlines;
  const z = zoomFor(grid, s);
  let slots;
  if (!sparse) slots = viewTiles(grid, s, vx0, vx1, vy0, vy1).slots;
  else if (state.gridMode === 'hotspot') slots = [];
  else slots = tilesUnderIncidents(z, vx0, vx1, vy0, vy1);
  const load = loadByCode();
  const figures = { scale: s, z, sparse, slots: slots.length, tiles: 0, standIns: 0, cells: 0, coloured: 0 };
  for (const slot of slots) {
    const own = tileAt(grid, slot.z, slot.row, slot.col, true);
    const tile = own || standIn(slot.z, slot.row, slot.col);
    if (!tile) continue;
    if (own) figures.tiles += 1;
    else figures.standIns += 1;
    figures.cells += tile.items.length;
    figures.coloured += drawTile(tile, tileBox(slot.z, slot.row, slot.col), s, tx, ty, load, outlines);
  }
  if (hotspots.length) {
    const shown = hotspots.filter((c) => c.bbox[2] >= vx0 && c.bbox[0] <= vx1 && c.bbox[3] >= vy0 && c.bbox[1] <= vy1);
    paintHotspots(shown, s, tx, ty);
    figures.coloured += shown.length;
  }
  recordDraw(grid, figures);
  evict(grid);
}

/** The grid cell at projected (x, y) as drawn from the tiles, with its counts; or null. */
export function cellAtTiles(x, y) {
  if (!grid.tileset) return null;
  const load = loadByCode();
  const outlined = view.cellSize * view.scale >= GRID_OUTLINE_PX;
  let cells;
  if (!outlined && state.gridMode === 'hotspot') cells = hotspotCells();
  else {
    const z = zoomFor(grid, view.scale);
    const w = (2 * Math.PI) / 2 ** z;
    const row = Math.floor((Math.PI - y) / w);
    const col = Math.floor((x + Math.PI) / w);
    const tile = tileAt(grid, z, row, col, false) || standIn(z, row, col);
    if (!tile) return null;
    cells = outlined ? tile.items : coloured(tile, load);
  }
  for (const c of cells) {
    const b = c.bbox;
    if (x < b[0] || x > b[2] || y < b[1] || y > b[3] || !pointInRings(c.rings, x, y)) continue;
    // With the sensors' tiles the records are not all of them: no count then.
    let sensors = tiledSensors() ? undefined : 0;
    if (sensors === 0) for (const rec of state.sensors.values()) if (String(rec.props.grid_code) === c.code) sensors += 1;
    return { ...c, count: load.get(c.code) || 0, props: { ...c.props, sensors } };
  }
  return null;
}
