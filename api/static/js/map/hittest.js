/*
 * What is under a point of the map: a cluster, an incident, a sensor or a grid cell.
 */
import { state, view } from '../store.js';
import { hasPos } from '../records.js';
import { toScreenX, toScreenY, pointInRings } from './projection.js';
import { incidentRadius, sensorRadius, GRID_OUTLINE_PX, colouredCells } from './symbols.js';
import { cellAtTiles, tiledGrid } from './gridtiles.js';
import { drawnTileSensors } from './sensortiles.js';

export function clusterAt(sx, sy) {
  if (!state.visible.incidents) return null;
  for (const c of state.clusters) {
    const dx = c.sx - sx;
    const dy = c.sy - sy;
    if (dx * dx + dy * dy <= (c.r + 3) * (c.r + 3)) return c;
  }
  return null;
}

export function incidentAt(sx, sy) {
  if (!state.visible.incidents) return null;
  let best = null;
  let bestD = Infinity;
  const clustered = state.clusters.length ? new Set(state.clusters.flatMap((c) => c.recs)) : null;
  for (const rec of state.incidents.values()) {
    if (!hasPos(rec) || (clustered && clustered.has(rec))) continue;
    const dx = toScreenX(rec.x) - sx;
    const dy = toScreenY(rec.y) - sy;
    const d = dx * dx + dy * dy;
    const r = incidentRadius(rec) + 4;
    // Prefer the nearest; on a tie the more severe one (it is drawn on top).
    if (d <= r * r && (d < bestD || (d === bestD && rec.rank > best.rank))) {
      best = rec;
      bestD = d;
    }
  }
  return best;
}

export function sensorAt(sx, sy) {
  if (!state.visible.sensors) return null;
  const r = sensorRadius() + 3;
  let best = null;
  let bestD = r * r;
  for (const rec of [...state.sensors.values(), ...drawnTileSensors()]) {
    if (!hasPos(rec)) continue;
    const dx = toScreenX(rec.x) - sx;
    const dy = toScreenY(rec.y) - sy;
    const d = dx * dx + dy * dy;
    if (d <= bestD) {
      best = rec;
      bestD = d;
    }
  }
  return best;
}

export function cellAt(sx, sy) {
  if (!state.visible.grid) return null;
  const x = (sx - view.tx) / view.scale;
  const y = (view.ty - sy) / view.scale;
  if (tiledGrid()) return cellAtTiles(x, y);
  if (!state.grid.length) return null;
  const showAll = view.cellSize * view.scale >= GRID_OUTLINE_PX;
  const cells = showAll ? state.grid : colouredCells();
  for (const c of cells) {
    const b = c.bbox;
    if (x < b[0] || x > b[2] || y < b[1] || y > b[3]) continue;
    if (pointInRings(c.rings, x, y)) return c;
  }
  return null;
}

export function openIncidentOfSensor(deviceId) {
  let best = null;
  for (const rec of state.incidents.values()) {
    if (String(rec.props.device_id) !== deviceId) continue;
    if (!best || rec.rank > best.rank || (rec.rank === best.rank && rec.t > best.t)) best = rec;
  }
  return best;
}
