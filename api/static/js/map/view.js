/*
 * The map's viewport: fit to the data, zoom about a point, centre on a record, follow the
 * map area's size.
 */
import { state, view } from '../store.js';
import { el } from '../dom.js';
import { invalidate } from '../frame.js';
import { hasPos } from '../records.js';
import { projX, projY, clamp } from './projection.js';
import { tilesetBounds } from './vtiles.js';
import { drawChart } from '../panels/chart.js';

export function dataBounds() {
  const b = [Infinity, Infinity, -Infinity, -Infinity];
  const addBox = (bb) => {
    b[0] = Math.min(b[0], bb[0]);
    b[1] = Math.min(b[1], bb[1]);
    b[2] = Math.max(b[2], bb[2]);
    b[3] = Math.max(b[3], bb[3]);
  };
  if (state.districts.length) state.districts.forEach((d) => addBox(d.bbox));
  else if (state.grid.length) state.grid.forEach((g) => addBox(g.bbox));
  else if (tilesetBounds()) addBox(tilesetBounds());
  else {
    for (const coll of [state.sensors, state.incidents]) {
      for (const r of coll.values()) if (hasPos(r)) addBox([r.x, r.y, r.x, r.y]);
    }
  }
  return Number.isFinite(b[0]) ? b : null;
}

export function fitView() {
  if (!view.w || !view.h) return;
  // Without data: central Shanghai.
  const b = dataBounds() || [projX(121.2), projY(31.0), projX(121.8), projY(31.45)];
  const minSpan = 0.0005; // about 3 km, so a single point does not zoom in forever
  const cx = (b[0] + b[2]) / 2;
  const cy = (b[1] + b[3]) / 2;
  const spanX = Math.max(b[2] - b[0], minSpan);
  const spanY = Math.max(b[3] - b[1], minSpan);
  const pad = 24;
  const s = Math.min((view.w - 2 * pad) / spanX, (view.h - 2 * pad) / spanY);
  view.scale = view.fitScale = Math.max(s, 1e-6);
  view.tx = view.w / 2 - cx * view.scale;
  view.ty = view.h / 2 + cy * view.scale;
  view.fitted = true;
  invalidate('map');
}

export function zoomAt(sx, sy, factor) {
  const s0 = view.scale;
  const s1 = clamp(s0 * factor, view.fitScale / 4, view.fitScale * 4096);
  const wx = (sx - view.tx) / s0;
  const wy = (view.ty - sy) / s0;
  view.scale = s1;
  view.tx = sx - wx * s1;
  view.ty = sy + wy * s1;
  invalidate('map');
}

export function centerOn(rec) {
  if (!hasPos(rec)) return;
  if (view.scale < view.fitScale * 4) view.scale = view.fitScale * 4;
  const panel = el.detail.hidden ? 0 : el.detail.offsetWidth || 0;
  const visibleW = Math.max(100, view.w - panel);
  view.tx = visibleW / 2 - rec.x * view.scale;
  view.ty = view.h / 2 + rec.y * view.scale;
  invalidate('map');
}

export function resize() {
  const rect = el.mapArea.getBoundingClientRect();
  const w = Math.max(1, Math.round(rect.width));
  const h = Math.max(1, Math.round(rect.height));
  const dpr = window.devicePixelRatio || 1;
  if (view.fitted && view.w && view.h) {
    // Keep the same place in the middle of the screen.
    view.tx += (w - view.w) / 2;
    view.ty += (h - view.h) / 2;
  }
  view.w = w;
  view.h = h;
  view.dpr = dpr;
  el.canvas.width = Math.round(w * dpr);
  el.canvas.height = Math.round(h * dpr);
  if (!view.fitted && state.loaded) fitView();
  invalidate('map');
  if (!el.detail.hidden) drawChart();
}
