/*
 * Grid cells coloured by load or by case hotspot: the choice, the hotspots from
 * GET /hotspots.geojson and the legend that goes with each colouring. Each hotspot comes
 * with its cell's polygon, so the map draws and hit-tests hotspots without the grid: a
 * tiled grid needs no tile for them (map/gridtiles.js).
 */
import { t } from '../i18n.js';
import { API, HOTSPOT_HOURS, GRID_MODES } from '../constants.js';
import { state } from '../store.js';
import { el } from '../dom.js';
import { request } from '../http.js';
import { invalidate } from '../frame.js';
import { hideTooltip } from '../map/tooltip.js';
import { featuresOf } from '../map/layers.js';
import { ringsOf, boundsOf } from '../map/projection.js';

/** A hotspot's figures, with `cell` its grid cell as layers.js makes one (null without a polygon). */
export function hotspotOf(feature) {
  const h = feature.properties || {};
  const code = String(h.grid_code != null ? h.grid_code : feature.id);
  const rings = ringsOf(feature.geometry);
  const cell = rings ? { code, props: { ...h }, rings, bbox: boundsOf(rings), count: 0 } : null;
  return { ...h, grid_code: code, cell };
}

/** The hotspot cells (GET /hotspots.geojson), while the grid is coloured by them. */
export async function loadHotspots() {
  if (state.gridMode !== 'hotspot') return;
  const res = await request(`${API}/hotspots.geojson?hours=${HOTSPOT_HOURS}`);
  if (state.gridMode !== 'hotspot') return;
  const features = res.ok ? featuresOf(res.data) : null;
  if (features) {
    state.hotspots = new Map(features.map((f) => hotspotOf(f)).map((h) => [h.grid_code, h]));
    state.hotspotsError = null;
  } else {
    state.hotspotsError = res.error || 'not a GeoJSON FeatureCollection of hotspots';
  }
  state.hotspotsLoaded = true;
  renderGridLegend();
  invalidate('map');
}

export function renderGridLegend() {
  const mode = state.gridMode;
  document.body.dataset.gridMode = mode;
  for (const node of document.querySelectorAll('.legend-grid')) node.hidden = node.dataset.gridMode !== mode;
  for (const input of document.querySelectorAll('input[name="grid-mode"]')) input.checked = input.value === mode;
  if (mode !== 'hotspot') return;
  el.legendNote.dataset.count = String(state.hotspots.size);
  el.legendNote.dataset.loaded = String(state.hotspotsLoaded);
  el.legendNote.textContent = state.hotspotsError
    ? t('legend.hotspot_error', { e: state.hotspotsError })
    : state.hotspotsLoaded
      ? t('legend.hotspot_count', { n: state.hotspots.size, h: HOTSPOT_HOURS })
      : t('list.loading');
}

export function setGridMode(mode) {
  state.gridMode = GRID_MODES.includes(mode) ? mode : 'load';
  try {
    localStorage.setItem('cityops.gridMode', state.gridMode);
  } catch (_) {
    /* storage unavailable */
  }
  state.hover = null;
  hideTooltip();
  renderGridLegend();
  invalidate('map');
  loadHotspots();
}

export function restoreGridMode() {
  let saved = null;
  try {
    saved = localStorage.getItem('cityops.gridMode');
  } catch (_) {
    saved = null;
  }
  state.gridMode = GRID_MODES.includes(saved) ? saved : 'load';
  renderGridLegend();
}
