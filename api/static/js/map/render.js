/*
 * Drawing the map: tiles, districts, grid cells (from the GeoJSON layer, or from vector tiles:
 * gridtiles.js), sensors (records, and from vector tiles: sensortiles.js) and district labels, then the incident markers (markers.js). Each layer is drawn in a few batched paths, one per colour.
 */
import { t } from '../i18n.js';
import { COLORS, STATE_ORDER } from '../constants.js';
import { view, state } from '../store.js';
import { ctx } from '../dom.js';
import { drawIncidents } from './markers.js';
import { colouredCells, GRID_OUTLINE_PX, paintHotspots, sensorRadius } from './symbols.js';
import { drawTiles } from './tiles.js';
import { addRings } from './projection.js';
import { drawGridTiles, tiledGrid } from './gridtiles.js';
import { tileSensors, tiledSensors } from './sensortiles.js';

export function drawMap() {
  const { w, h, dpr } = view;
  if (!w || !h) return;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = COLORS.background;
  ctx.fillRect(0, 0, w, h);
  if (!view.fitted) {
    drawCenterText(state.loading || !state.loaded ? t('map.loading') : t('map.empty'));
    return;
  }
  const s = view.scale;
  const tx = view.tx;
  const ty = view.ty;
  // The viewport in projected units, with a margin for strokes and markers.
  const m = 12 / s;
  const vx0 = -tx / s - m;
  const vx1 = (w - tx) / s + m;
  const vy0 = (ty - h) / s - m;
  const vy1 = ty / s + m;
  const inView = (b) => b[2] >= vx0 && b[0] <= vx1 && b[3] >= vy0 && b[1] <= vy1;
  const showDistricts = state.visible.districts && state.districts.length > 0;

  drawTiles(s, tx, ty);
  if (showDistricts && !(state.config && state.config.tile_url)) {
    const fill = new Path2D();
    for (const d of state.districts) if (inView(d.bbox)) addRings(fill, d.rings, s, tx, ty);
    ctx.fillStyle = COLORS.districtFill;
    ctx.fill(fill, 'evenodd');
  }

  if (state.visible.grid && tiledGrid()) {
    drawGridTiles(s, tx, ty, vx0, vx1, vy0, vy1);
  } else if (state.visible.grid && state.grid.length) {
    if (state.gridMode !== 'hotspot') {
      const buckets = COLORS.hot.map(() => new Path2D());
      for (const c of colouredCells()) {
        if (!inView(c.bbox)) continue;
        const i = c.count >= 5 ? 3 : c.count >= 3 ? 2 : c.count - 1;
        addRings(buckets[i], c.rings, s, tx, ty);
      }
      buckets.forEach((p, i) => {
        ctx.fillStyle = COLORS.hot[i];
        ctx.fill(p, 'evenodd');
      });
    }
    // Cell outlines only once cells are big enough on screen to be told apart.
    const cellPx = view.cellSize * s;
    if (cellPx >= GRID_OUTLINE_PX) {
      const lines = new Path2D();
      for (const c of state.grid) if (inView(c.bbox)) addRings(lines, c.rings, s, tx, ty);
      ctx.strokeStyle = COLORS.gridLine;
      ctx.lineWidth = cellPx >= 24 ? 0.8 : 0.5;
      ctx.stroke(lines);
    }
    // Hotspots are few: filled and outlined at every scale, so they show city-wide.
    if (state.gridMode === 'hotspot') {
      paintHotspots(colouredCells().filter((c) => inView(c.bbox)), s, tx, ty);
    }
  }

  if (showDistricts) {
    const outline = new Path2D();
    for (const d of state.districts) if (inView(d.bbox)) addRings(outline, d.rings, s, tx, ty);
    ctx.strokeStyle = COLORS.districtLine;
    ctx.lineWidth = 1.4;
    ctx.lineJoin = 'round';
    ctx.stroke(outline);
  }

  if (state.visible.sensors && tiledSensors()) {
    const fromTiles = tileSensors(s, vx0, vx1, vy0, vy1); // the normal ones, under the records
    drawSensors(fromTiles.concat([...state.sensors.values()]), s, tx, ty, vx0, vx1, vy0, vy1);
  } else if (state.visible.sensors && state.sensors.size) {
    drawSensors(state.sensors.values(), s, tx, ty, vx0, vx1, vy0, vy1);
  }
  if (showDistricts) drawDistrictLabels(s, tx, ty, inView);
  if (state.visible.incidents && state.incidents.size) drawIncidents(s, tx, ty, vx0, vx1, vy0, vy1);

  const nothing = !state.districts.length && !state.grid.length && !tiledGrid() && !state.sensors.size && !state.incidents.size;
  if (nothing) drawCenterText(state.loading ? t('map.loading') : t('map.empty'));
}

function drawSensors(records, s, tx, ty, vx0, vx1, vy0, vy1) {
  const r = sensorRadius();
  const round = r >= 2.5;
  const paths = {};
  for (const k of STATE_ORDER) paths[k] = new Path2D();
  for (const rec of records) {
    const x = rec.x;
    const y = rec.y;
    if (!(x >= vx0 && x <= vx1 && y >= vy0 && y <= vy1)) continue; // also skips NaN
    const st = rec.props.state;
    const p = paths[st] && st !== 'other' ? paths[st] : paths.other;
    const rr = st === 'alarm' ? r * 1.35 : r;
    const sx = x * s + tx;
    const sy = ty - y * s;
    if (round) {
      p.moveTo(sx + rr, sy);
      p.arc(sx, sy, rr, 0, 2 * Math.PI);
    } else {
      p.rect(sx - rr, sy - rr, 2 * rr, 2 * rr);
    }
  }
  for (const k of STATE_ORDER) {
    ctx.fillStyle = COLORS.state[k];
    ctx.fill(paths[k]);
  }
}

function drawDistrictLabels(s, tx, ty, inView) {
  ctx.textAlign = 'center';
  ctx.textBaseline = 'middle';
  ctx.lineJoin = 'round';
  for (const d of state.districts) {
    if (!inView(d.bbox)) continue;
    const widthPx = (d.bbox[2] - d.bbox[0]) * s;
    if (widthPx < 60) continue;
    const x = d.label.x * s + tx;
    const y = ty - d.label.y * s;
    const name = d.props.name != null ? String(d.props.name) : d.props.district_code != null ? String(d.props.district_code) : '';
    const zh = d.props.name_zh != null ? String(d.props.name_zh) : '';
    ctx.lineWidth = 3;
    ctx.strokeStyle = COLORS.labelHalo;
    ctx.font = '600 12px system-ui, "PingFang SC", "Microsoft YaHei", "Noto Sans CJK SC", sans-serif';
    ctx.fillStyle = COLORS.label;
    const y1 = zh ? y - 7 : y;
    ctx.strokeText(name, x, y1);
    ctx.fillText(name, x, y1);
    if (zh) {
      ctx.font = '11px system-ui, "PingFang SC", "Microsoft YaHei", "Noto Sans CJK SC", sans-serif';
      ctx.fillStyle = COLORS.labelSub;
      ctx.strokeText(zh, x, y + 7);
      ctx.fillText(zh, x, y + 7);
    }
  }
}

function drawCenterText(text) {
  ctx.textAlign = 'center';
  ctx.textBaseline = 'middle';
  ctx.font = '15px system-ui, "PingFang SC", "Microsoft YaHei", sans-serif';
  ctx.fillStyle = '#8da0b3';
  ctx.fillText(text, view.w / 2, view.h / 2);
}
