/*
 * The time slider: the city as of a past instant, replayed by the audit API, and back to live.
 */
import { t } from '../i18n.js';
import { API, LAYER_TIMEOUT_MS } from '../constants.js';
import { state, live } from '../store.js';
import { el } from '../dom.js';
import { formatTime } from '../format.js';
import { request } from '../http.js';
import { showMessage, hideMessage } from '../message.js';
import { invalidate } from '../frame.js';
import { placeIncident } from '../records.js';
import { mayReadAudit } from '../user.js';
import { setLive } from '../live.js';
import { ingest, featuresOf, loadLayers } from '../map/layers.js';
import { refreshSelected } from './detail.js';

let replaySeq = 0;

function sliderInstant() {
  const seconds = Number(el.timeSlider.value); // seconds before now
  return seconds >= 0 ? null : Date.now() + seconds * 1000;
}

export function renderTimeLabel() {
  const at = state.replay ? state.replay.at : sliderInstant();
  if (at == null) {
    el.timeValue.textContent = t('time.now');
  } else {
    const mins = Math.round((Date.now() - at) / 60_000);
    const h = mins >= 60 ? `${Math.floor(mins / 60)} h ${mins % 60} min` : `${mins} min`;
    el.timeValue.textContent = t('time.ago', { t: formatTime(new Date(at).toISOString()), h });
  }
  el.timeLive.disabled = !state.replay;
  document.body.dataset.mode = state.replay ? 'past' : 'live';
}

/** Show the city as of the slider's instant, replayed from the log by the audit API. */
export async function showPast() {
  const at = sliderInstant();
  if (at == null) return goLive();
  if (!mayReadAudit()) {
    showMessage(t('time.denied'), 'info', 'replay');
    el.timeSlider.value = '0';
    renderTimeLabel();
    return null;
  }
  const seq = ++replaySeq;
  el.timeValue.textContent = t('time.loading');
  document.body.dataset.replaying = 'true';
  const res = await request(`${API}/audit/city?at=${encodeURIComponent(new Date(at).toISOString())}`, {}, LAYER_TIMEOUT_MS);
  if (seq !== replaySeq) return null;
  delete document.body.dataset.replaying;
  if (!res.ok) {
    showMessage(`Replay failed 回放失败: ${res.error}`, 'error', 'replay');
    renderTimeLabel();
    return null;
  }
  hideMessage('replay');
  const layers = res.data.layers || {};
  state.replay = { at, doc: res.data };
  if (layers.sensors) ingest.sensors(featuresOf(layers.sensors) || []);
  if (layers.incidents) ingest.incidents(featuresOf(layers.incidents) || []);
  if (layers.grid) {
    // Keep the reference geometry; take each cell's load as it was.
    for (const cell of state.grid) cell.count = 0;
    for (const f of featuresOf(layers.grid) || []) {
      const cell = state.gridByCode.get(String(f.id || (f.properties && f.properties.grid_code)));
      if (cell) cell.count = Number(f.properties.open_incidents) || 0;
    }
    state.hotDirty = true;
  }
  for (const rec of state.incidents.values()) placeIncident(rec);
  el.replayBanner.textContent = t('time.banner', { t: formatTime(new Date(at).toISOString()), n: res.data.replayed_events });
  el.replayBanner.hidden = false;
  document.body.dataset.replayAt = new Date(at).toISOString();
  setLive(live.state || 'live');
  renderTimeLabel();
  if (state.selectedId) invalidate('detail');
  invalidate('map', 'list', 'status');
  return res.data;
}

export async function goLive() {
  replaySeq += 1;
  const wasPast = Boolean(state.replay);
  state.replay = null;
  el.timeSlider.value = '0';
  el.replayBanner.hidden = true;
  delete document.body.dataset.replayAt;
  renderTimeLabel();
  setLive(live.state || 'live');
  if (wasPast || live.missed) {
    live.missed = false;
    await loadLayers(['grid', 'sensors', 'incidents']);
  }
  if (state.selectedId) refreshSelected(state.selectedId);
}

export function setHours() {
  const hours = Number(el.timeHours.value) || 6;
  el.timeSlider.min = String(-hours * 3600);
  renderTimeLabel();
}
