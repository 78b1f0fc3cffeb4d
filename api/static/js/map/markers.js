/*
 * Incident markers: one path per severity, unacknowledged rings, linked-case badges, and
 * clusters where more than CLUSTER_MIN incidents are in view.
 */
import { SEV_GROUPS, SEV_RANK, COLORS } from '../constants.js';
import { state } from '../store.js';
import { ctx } from '../dom.js';
import { hasPos } from '../records.js';
import { incidentRadius } from './symbols.js';

function incidentGroups() {
  if (state.incidentGroups) return state.incidentGroups;
  const groups = {};
  for (const g of SEV_GROUPS) groups[g] = [];
  for (const rec of state.incidents.values()) {
    const g = SEV_RANK[rec.props.severity] ? rec.props.severity : 'other';
    groups[g].push(rec);
  }
  for (const g of SEV_GROUPS) groups[g].sort((a, b) => (a.t || 0) - (b.t || 0)); // newest on top
  state.incidentGroups = groups;
  return groups;
}

// Above this many incidents in view, markers closer than CLUSTER_PX merge into clusters.
const CLUSTER_MIN = 300;
const CLUSTER_PX = 44;

function clusterIncidents(recs, s, tx, ty) {
  const cells = new Map();
  for (const rec of recs) {
    const sx = rec.x * s + tx;
    const sy = ty - rec.y * s;
    const key = `${Math.floor(sx / CLUSTER_PX)}:${Math.floor(sy / CLUSTER_PX)}`;
    let c = cells.get(key);
    if (!c) {
      c = { n: 0, sx: 0, sy: 0, rank: 0, sev: 'other', cases: 0, recs: [] };
      cells.set(key, c);
    }
    c.n += 1;
    c.sx += sx;
    c.sy += sy;
    c.cases += Number(rec.props.linked_cases) || 0;
    c.recs.push(rec);
    if (rec.rank > c.rank) {
      c.rank = rec.rank;
      c.sev = rec.props.severity;
    }
  }
  const out = [];
  for (const c of cells.values()) {
    c.sx /= c.n;
    c.sy /= c.n;
    c.r = 9 + Math.min(14, Math.log2(c.n) * 2.5);
    out.push(c);
  }
  return out;
}

export function drawIncidents(s, tx, ty, vx0, vx1, vy0, vy1) {
  const groups = incidentGroups();
  const visibleRec = (rec) => rec.x >= vx0 && rec.x <= vx1 && rec.y >= vy0 && rec.y <= vy1;
  let inView = 0;
  for (const rec of state.incidents.values()) if (visibleRec(rec)) inView += 1;
  state.clusters = [];
  const singles = [];
  if (inView > CLUSTER_MIN) {
    const visible = [];
    for (const rec of state.incidents.values()) if (visibleRec(rec)) visible.push(rec);
    for (const c of clusterIncidents(visible, s, tx, ty)) {
      if (c.n === 1) singles.push(c.recs[0]);
      else state.clusters.push(c);
    }
  }
  const clustered = inView > CLUSTER_MIN;
  const singleSet = clustered ? new Set(singles) : null;
  for (const g of SEV_GROUPS) {
    const recs = groups[g];
    if (!recs.length) continue;
    const fill = new Path2D();
    const rings = new Path2D();
    let any = false;
    for (const rec of recs) {
      if (!visibleRec(rec) || (singleSet && !singleSet.has(rec))) continue;
      any = true;
      const r = incidentRadius(rec);
      const sx = rec.x * s + tx;
      const sy = ty - rec.y * s;
      fill.moveTo(sx + r, sy);
      fill.arc(sx, sy, r, 0, 2 * Math.PI);
      if (!rec.props.acknowledged) {
        rings.moveTo(sx + r + 3.5, sy);
        rings.arc(sx, sy, r + 3.5, 0, 2 * Math.PI);
      }
    }
    if (!any) continue;
    ctx.fillStyle = COLORS.severity[g];
    ctx.fill(fill);
    ctx.strokeStyle = COLORS.background;
    ctx.lineWidth = 1.5;
    ctx.stroke(fill);
    ctx.strokeStyle = COLORS.unacked;
    ctx.lineWidth = 1.8;
    ctx.stroke(rings);
  }
  ctx.textAlign = 'center';
  ctx.textBaseline = 'middle';
  // Linked-case counts: a small badge on markers a citizen's report is linked to.
  if (!clustered || singles.length < 400) {
    ctx.font = '600 10px system-ui, sans-serif';
    for (const rec of clustered ? singles : state.incidents.values()) {
      const n = Number(rec.props.linked_cases) || 0;
      if (!n || !visibleRec(rec)) continue;
      const r = incidentRadius(rec);
      const bx = rec.x * s + tx + r * 0.9;
      const by = ty - rec.y * s - r * 0.9;
      ctx.beginPath();
      ctx.arc(bx, by, 7, 0, 2 * Math.PI);
      ctx.fillStyle = '#4fb3ff';
      ctx.fill();
      ctx.fillStyle = '#04121f';
      ctx.fillText(n > 99 ? '99+' : String(n), bx, by + 0.5);
    }
  }
  if (state.clusters.length) {
    ctx.font = '600 11px system-ui, sans-serif';
    for (const c of state.clusters) {
      ctx.beginPath();
      ctx.arc(c.sx, c.sy, c.r, 0, 2 * Math.PI);
      ctx.fillStyle = COLORS.severity[SEV_RANK[c.sev] ? c.sev : 'other'];
      ctx.globalAlpha = 0.85;
      ctx.fill();
      ctx.globalAlpha = 1;
      ctx.strokeStyle = 'rgba(255,255,255,0.85)';
      ctx.lineWidth = 1.5;
      ctx.stroke();
      ctx.fillStyle = '#0b1118';
      ctx.fillText(c.n > 999 ? `${Math.round(c.n / 100) / 10}k` : String(c.n), c.sx, c.sy + 0.5);
    }
  }
  const mark = (rec, extra, color, width) => {
    if (!hasPos(rec)) return;
    const r = incidentRadius(rec) + extra;
    ctx.beginPath();
    ctx.arc(rec.x * s + tx, ty - rec.y * s, r, 0, 2 * Math.PI);
    ctx.strokeStyle = color;
    ctx.lineWidth = width;
    ctx.stroke();
  };
  const hover = state.hover && state.hover.kind === 'incident' ? state.incidents.get(state.hover.rec.id) : null;
  if (hover && hover.id !== state.selectedId) mark(hover, 6, 'rgba(255,255,255,0.7)', 1.2);
  const sel = state.selectedId ? state.incidents.get(state.selectedId) : null;
  if (sel) mark(sel, 7, COLORS.selected, 2.5);
}
