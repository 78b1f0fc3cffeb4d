/*
 * The map's layers from GET /map/layers/{name}: read into the store's records, with the
 * live changes that arrive meanwhile replayed afterwards. With vector tiles (vtiles.js
 * decides, once per layer) the grid is not loaded here but drawn from its tiles, and of the
 * sensors only those not normal are loaded, the rest drawn from their tiles.
 */
import { LAYERS, API, LAYER_TIMEOUT_MS } from '../constants.js';
import { state, view, live } from '../store.js';
import { request } from '../http.js';
import { showMessage, hideMessage } from '../message.js';
import { invalidate } from '../frame.js';
import { sensorRecord, incidentRecord, isOpen, placeIncident, applyChange } from '../records.js';
import { ringsOf, boundsOf, labelPoint } from './projection.js';
import { dataBounds, fitView } from './view.js';
import { chooseGridSource, tiledGrid } from './gridtiles.js';
import { chooseSensorSource } from './sensortiles.js';

// With the sensors' tiles on: the sensors loaded as records (the normal ones are in the tiles).
const NOT_NORMAL = ['alarm', 'silent', 'maintenance'];

/** One layer's GeoJSON as request() answers it; the sensors not normal, when `fewSensors`. */
async function fetchLayer(name, fewSensors) {
  if (name !== 'sensors' || !fewSensors) return request(`${API}/map/layers/${name}`, {}, LAYER_TIMEOUT_MS);
  const parts = await Promise.all(NOT_NORMAL.map((st) => request(`${API}/map/layers/sensors?state=${st}`, {}, LAYER_TIMEOUT_MS)));
  const failed = parts.find((r) => !r.ok || !featuresOf(r.data));
  if (failed) return failed;
  return { ok: true, status: 200, data: { type: 'FeatureCollection', features: parts.flatMap((r) => featuresOf(r.data)) }, error: '' };
}

export function featuresOf(doc) {
  if (!doc || typeof doc !== 'object' || !Array.isArray(doc.features)) return null;
  return doc.features.filter((f) => f && typeof f === 'object');
}

export const ingest = {
  districts(features) {
    const out = [];
    for (const f of features) {
      const rings = ringsOf(f.geometry);
      if (!rings) continue;
      const bbox = boundsOf(rings);
      out.push({ props: f.properties || {}, rings, bbox, label: labelPoint(rings, bbox) });
    }
    state.districts = out;
  },
  grid(features) {
    const out = [];
    const byCode = new Map();
    const widths = [];
    for (const f of features) {
      const rings = ringsOf(f.geometry);
      if (!rings) continue;
      const props = f.properties || {};
      const code = props.grid_code != null ? String(props.grid_code) : f.id != null ? String(f.id) : '';
      const count = Number(props.open_incidents);
      const rec = { code, props, rings, bbox: boundsOf(rings), count: Number.isFinite(count) && count > 0 ? count : 0 };
      out.push(rec);
      if (code) byCode.set(code, rec);
      if (widths.length < 400) widths.push(rec.bbox[2] - rec.bbox[0]);
    }
    widths.sort((a, b) => a - b);
    view.cellSize = widths.length ? widths[widths.length >> 1] : 0;
    state.grid = out;
    state.gridByCode = byCode;
    state.hotDirty = true;
  },
  sensors(features) {
    const map = new Map();
    for (const f of features) {
      const rec = sensorRecord(f);
      if (rec) map.set(rec.id, rec);
    }
    state.sensors = map;
  },
  incidents(features) {
    const map = new Map();
    for (const f of features) {
      const rec = incidentRecord(f);
      if (rec && isOpen(rec)) map.set(rec.id, rec);
    }
    state.incidents = map;
    state.incidentGroups = null;
  },
};

/** Load (or reload) layers; live changes arriving meanwhile are replayed afterwards. */
export function loadLayers(names = LAYERS) {
  if (state.replay) {
    live.missed = true; // the map shows the past: "live" reloads
    return Promise.resolve();
  }
  if (state.loading) return state.loading;
  state.pending = state.pending || [];
  const hadBounds = dataBounds() !== null;
  state.loading = (async () => {
    const [gridFrom, sensorsFrom] = await Promise.all([chooseGridSource(), chooseSensorSource()]);
    // sensors before incidents; a tiled grid comes tile by tile as it is drawn
    const order = LAYERS.filter((n) => names.includes(n) && !(gridFrom === 'tiles' && n === 'grid'));
    const results = await Promise.all(order.map((n) => fetchLayer(n, sensorsFrom === 'tiles')));
    order.forEach((name, i) => {
      const res = results[i];
      const features = res.ok ? featuresOf(res.data) : null;
      if (!res.ok) state.layerErrors[name] = res.error;
      else if (!features) state.layerErrors[name] = 'not a GeoJSON FeatureCollection';
      else {
        delete state.layerErrors[name];
        try {
          ingest[name](features);
        } catch (err) {
          state.layerErrors[name] = `could not read the layer (${err && err.message})`;
        }
      }
    });
    for (const rec of state.incidents.values()) placeIncident(rec);
    if (state.selectedId && state.incidents.has(state.selectedId)) state.selected = state.incidents.get(state.selectedId);
    state.loaded = true;
    const pending = state.pending || [];
    state.pending = null;
    for (const msg of pending) applyChange(msg);
    if (!view.fitted || !hadBounds) fitView(); // a reload keeps the operator's view
    reportLayers();
    invalidate('map', 'list', 'status', 'detail');
  })().finally(() => {
    state.loading = null;
    state.pending = null;
  });
  return state.loading;
}

function reportLayers() {
  const errors = Object.entries(state.layerErrors);
  if (errors.length) {
    const lines = errors.map(([name, err]) => `• ${name}: ${err}`);
    showMessage(`Could not load some map layers 图层加载失败:\n${lines.join('\n')}`, 'error', 'layers');
  } else if (!state.districts.length && !state.grid.length && !tiledGrid() && !state.sensors.size && !state.incidents.size) {
    showMessage('The map layers are empty: no districts, grid cells, sensors or incidents yet. 暂无地图数据', 'info', 'layers');
  } else {
    hideMessage('layers');
  }
}
