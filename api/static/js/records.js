/*
 * Sensor and incident records from GeoJSON features, and the changes that keep them (and the
 * grid cells' open-incident counts) current: from the live stream, a GET or an action's answer.
 */
import { SEV_RANK } from './constants.js';
import { state } from './store.js';
import { invalidate } from './frame.js';
import { pointOf, finite } from './map/projection.js';
import { sensorChanged, tiledSensors } from './map/sensortiles.js';

export function sensorRecord(feature) {
  const props = feature && feature.properties;
  if (!props || typeof props !== 'object') return null;
  const id = props.device_id != null ? String(props.device_id) : feature.id != null ? String(feature.id) : '';
  if (!id) return null;
  const p = pointOf(feature.geometry);
  return { id, props, x: p ? p.x : NaN, y: p ? p.y : NaN };
}

export function incidentRecord(feature) {
  const props = feature && feature.properties;
  if (!props || typeof props !== 'object') return null;
  const id = props.incident_id != null ? String(props.incident_id) : feature.id != null ? String(feature.id) : '';
  if (!id) return null;
  const p = pointOf(feature.geometry);
  const t = Date.parse(props.opened_at);
  return {
    id,
    props,
    x: p ? p.x : NaN,
    y: p ? p.y : NaN,
    t: Number.isFinite(t) ? t : NaN,
    rank: SEV_RANK[props.severity] || 0,
  };
}

export const isOpen = (rec) => rec && rec.props.status !== 'closed';
export const hasPos = (rec) => rec && finite(rec.x) && finite(rec.y);

/** An incident without a point of its own sits on its sensor. */
export function placeIncident(rec) {
  if (hasPos(rec) || rec.props.device_id == null) return;
  const s = state.sensors.get(String(rec.props.device_id));
  if (hasPos(s)) {
    rec.x = s.x;
    rec.y = s.y;
  }
}

function bumpGrid(code, delta) {
  if (code == null) return;
  const cell = state.gridByCode.get(String(code));
  if (!cell) return;
  cell.count = Math.max(0, cell.count + delta);
  cell.props.open_incidents = cell.count;
  state.hotDirty = true;
}

/** Insert or update one incident from a live change, a GET or an acknowledge response. */
export function applyIncident(feature) {
  const rec = incidentRecord(feature);
  if (!rec) return;
  const prev = state.incidents.get(rec.id) || (state.selected && state.selected.id === rec.id ? state.selected : null);
  if (!hasPos(rec) && hasPos(prev)) {
    rec.x = prev.x;
    rec.y = prev.y;
  }
  placeIncident(rec);
  // Keep the grid cells' open-incident fill in step without reloading the grid layer.
  if (state.incidents.has(rec.id)) bumpGrid(prev.props.grid_code, -1);
  if (isOpen(rec)) {
    bumpGrid(rec.props.grid_code, +1);
    if (!state.incidents.has(rec.id) && state.listPrimed) state.freshUntil.set(rec.id, Date.now() + 2000);
    state.incidents.set(rec.id, rec);
  } else {
    state.incidents.delete(rec.id); // closed incidents leave the map and the list
  }
  state.incidentGroups = null;
  if (state.selectedId === rec.id) {
    state.selected = rec;
    state.selectedMissing = false;
    invalidate('detail');
  }
  invalidate('map', 'list', 'status');
}

function applySensor(feature) {
  const rec = sensorRecord(feature);
  if (!rec) return;
  const prev = state.sensors.get(rec.id);
  if (!hasPos(rec) && hasPos(prev)) {
    rec.x = prev.x;
    rec.y = prev.y;
  }
  if (tiledSensors()) sensorChanged(rec);
  else state.sensors.set(rec.id, rec);
  if (state.selected && String(state.selected.props.device_id) === rec.id) invalidate('detail');
  invalidate('map', 'status');
}

export function applyChange(msg) {
  if (!msg || typeof msg !== 'object' || !msg.feature) return;
  if (msg.layer === 'incidents') applyIncident(msg.feature);
  else if (msg.layer === 'sensors') applySensor(msg.feature);
}
