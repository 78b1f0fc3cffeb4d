/*
 * Marker sizes and the grid cells the current colouring fills: shared by drawing and
 * hit-testing, so that what is clicked is what is drawn.
 */
import { COLORS, HOTSPOT_Z } from '../constants.js';
import { view, state } from '../store.js';
import { ctx } from '../dom.js';
import { addRings, clamp } from './projection.js';

// Grid cell outlines only once a cell is this wide on screen: stroking thousands of
// tiny cells is what costs most per frame on a software-rendered canvas.
export const GRID_OUTLINE_PX = 16;

export function sensorRadius() {
  const z = Math.log2(view.scale / view.fitScale);
  return clamp(1.5 + z * 0.6, 1.5, 5);
}

export function incidentRadius(rec) {
  const z = Math.log2(view.scale / view.fitScale);
  return 4 + (rec.rank || 0.5) + clamp(z * 0.5, 0, 3);
}

export const hotspotBucket = (score) => (score >= HOTSPOT_Z[1] ? 2 : score >= HOTSPOT_Z[0] ? 1 : 0);

// Hotspot cells filled and outlined by their score's bucket: the GeoJSON grid and the
// tiled grid draw them alike.
export function paintHotspots(cells, s, tx, ty) {
  const buckets = COLORS.hotspot.fill.map(() => new Path2D());
  for (const c of cells) addRings(buckets[hotspotBucket(state.hotspots.get(c.code).score)], c.rings, s, tx, ty);
  buckets.forEach((p, i) => {
    ctx.fillStyle = COLORS.hotspot.fill[i];
    ctx.fill(p, 'evenodd');
    ctx.strokeStyle = COLORS.hotspot.line[i];
    ctx.lineWidth = 1.2 + i * 0.6;
    ctx.stroke(p);
  });
}

/** The hotspots' cells: the loaded grid's (with its counts) or their own polygons. */
export function hotspotCells() {
  const out = [];
  for (const [code, h] of state.hotspots) {
    const cell = state.gridByCode.get(code) || h.cell;
    if (cell) out.push(cell);
  }
  return out;
}

/** The grid cells the current colouring fills: loaded cells, or hotspots. */
export function colouredCells() {
  if (state.gridMode === 'hotspot') return hotspotCells();
  if (state.hotDirty) {
    state.hotCells = state.grid.filter((c) => c.count > 0);
    state.hotDirty = false;
  }
  return state.hotCells;
}
