/*
 * Web Mercator: longitude and latitude to projected units and back, projected units to the
 * canvas's CSS pixels, and the geometry helpers the map's layers are built with.
 */
import { view } from '../store.js';

const DEG = Math.PI / 180;
const MAX_LAT = 85.05112878;
export const projX = (lon) => lon * DEG;
export const projY = (lat) => {
  const l = Math.max(-MAX_LAT, Math.min(MAX_LAT, lat)) * DEG;
  return Math.log(Math.tan(Math.PI / 4 + l / 2));
};
export const unprojX = (x) => x / DEG;
export const unprojY = (y) => (2 * Math.atan(Math.exp(y)) - Math.PI / 2) / DEG;
export const toScreenX = (x) => x * view.scale + view.tx;
export const toScreenY = (y) => view.ty - y * view.scale;
export const finite = (v) => typeof v === 'number' && Number.isFinite(v);
export const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));

/** Projected rings (Float64Array [x0, y0, x1, y1, ...]) of a Polygon/MultiPolygon, or null. */
export function ringsOf(geom) {
  if (!geom || typeof geom !== 'object') return null;
  let polys = null;
  if (geom.type === 'Polygon') polys = [geom.coordinates];
  else if (geom.type === 'MultiPolygon') polys = geom.coordinates;
  if (!Array.isArray(polys)) return null;
  const rings = [];
  for (const poly of polys) {
    if (!Array.isArray(poly)) continue;
    for (const ring of poly) {
      if (!Array.isArray(ring) || ring.length < 3) continue;
      const a = new Float64Array(ring.length * 2);
      let n = 0;
      for (const c of ring) {
        if (!Array.isArray(c)) continue;
        const lon = Number(c[0]);
        const lat = Number(c[1]);
        if (!Number.isFinite(lon) || !Number.isFinite(lat)) continue;
        a[n++] = projX(lon);
        a[n++] = projY(lat);
      }
      if (n >= 6) rings.push(n === a.length ? a : a.slice(0, n));
    }
  }
  return rings.length ? rings : null;
}

export function boundsOf(rings) {
  const b = [Infinity, Infinity, -Infinity, -Infinity];
  for (const r of rings) {
    for (let i = 0; i < r.length; i += 2) {
      if (r[i] < b[0]) b[0] = r[i];
      if (r[i] > b[2]) b[2] = r[i];
      if (r[i + 1] < b[1]) b[1] = r[i + 1];
      if (r[i + 1] > b[3]) b[3] = r[i + 1];
    }
  }
  return b;
}

/** Area-weighted centroid of the largest ring: where a district's label goes. */
export function labelPoint(rings, bbox) {
  let best = null;
  let bestArea = 0;
  for (const r of rings) {
    let a2 = 0;
    let cx = 0;
    let cy = 0;
    const n = r.length;
    for (let i = 0; i < n; i += 2) {
      const j = (i + 2) % n;
      const cross = r[i] * r[j + 1] - r[j] * r[i + 1];
      a2 += cross;
      cx += (r[i] + r[j]) * cross;
      cy += (r[i + 1] + r[j + 1]) * cross;
    }
    if (Math.abs(a2) > bestArea && a2 !== 0) {
      bestArea = Math.abs(a2);
      best = { x: cx / (3 * a2), y: cy / (3 * a2) };
    }
  }
  return best || { x: (bbox[0] + bbox[2]) / 2, y: (bbox[1] + bbox[3]) / 2 };
}

export function pointOf(geom) {
  if (!geom || geom.type !== 'Point' || !Array.isArray(geom.coordinates)) return null;
  const lon = Number(geom.coordinates[0]);
  const lat = Number(geom.coordinates[1]);
  if (!Number.isFinite(lon) || !Number.isFinite(lat)) return null;
  return { x: projX(lon), y: projY(lat) };
}

/** Add projected rings to a Path2D at scale `s`, offset (tx, ty): screen y grows down. */
export function addRings(path, rings, s, tx, ty) {
  for (const r of rings) {
    path.moveTo(r[0] * s + tx, ty - r[1] * s);
    for (let i = 2; i < r.length; i += 2) path.lineTo(r[i] * s + tx, ty - r[i + 1] * s);
    path.closePath();
  }
}

export function pointInRings(rings, x, y) {
  let inside = false; // even-odd over all rings handles holes
  for (const r of rings) {
    for (let i = 0, j = r.length - 2; i < r.length; j = i, i += 2) {
      const yi = r[i + 1];
      const yj = r[j + 1];
      if (yi > y !== yj > y && x < ((r[j] - r[i]) * (y - yi)) / (yj - yi) + r[i]) inside = !inside;
    }
  }
  return inside;
}
