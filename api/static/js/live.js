/*
 * Live updates over server-sent events (GET /live): changes go to the map (or are buffered
 * while layers load) and to the alert feed; the indicator in the header shows the stream's state.
 */
import { t } from './i18n.js';
import { API } from './constants.js';
import { live, state } from './store.js';
import { el } from './dom.js';
import { formatTime } from './format.js';
import { auth, obtainToken } from './http.js';
import { guarded } from './frame.js';
import { applyChange } from './records.js';
import { loadLayers } from './map/layers.js';
import { pushFeed } from './panels/feed.js';
import { schedulePanels } from './panels/refresh.js';

export function setLive(st, detail) {
  el.live.dataset.state = st;
  live.state = st;
  el.liveText.textContent = state.replay ? t('live.past') : t(`live.${st}`);
  const last = state.lastChangeAt ? ` · last change ${formatTime(new Date(state.lastChangeAt).toISOString())}` : '';
  el.live.title = `Live updates (server-sent events) 实时推送: ${st}${detail ? ` (${detail})` : ''}${last} · ${state.changes} changes`;
}

function onLiveMessage(e) {
  let msg;
  try {
    msg = JSON.parse(e.data);
  } catch (_) {
    return;
  }
  if (!msg || typeof msg !== 'object' || !msg.feature) return;
  state.changes += 1;
  state.lastChangeAt = Date.now();
  guarded(() => pushFeed(msg));
  schedulePanels();
  if (state.replay) live.missed = true; // the map shows the past; catch up on "live"
  else if (state.pending) state.pending.push(msg);
  else guarded(() => applyChange(msg));
}

export function connectLive() {
  clearTimeout(live.timer);
  if (typeof window.EventSource !== 'function') {
    setLive('offline', 'this browser has no EventSource');
    return;
  }
  if (live.es) {
    // Replaced (a new sign-in): changes pushed while the new stream opens are not
    // resent, so catch up once it is open.
    live.es.close();
    live.lost = true;
  }
  const query = auth.token ? `?access_token=${encodeURIComponent(auth.token)}` : '';
  const es = new EventSource(`${API}/live${query}`);
  live.es = es;
  setLive(live.everOpen ? 'reconnecting' : 'connecting');
  es.onopen = () => {
    live.retry = 0;
    setLive('live');
    if (Object.keys(state.layerErrors).length) {
      loadLayers(); // the API is back: retry the layers that failed
    } else if (live.lost && state.loaded) {
      // Changes may have been missed while disconnected: catch up once.
      loadLayers(['grid', 'sensors', 'incidents']);
    }
    live.everOpen = true;
    live.lost = false;
  };
  es.addEventListener('change', onLiveMessage);
  es.onmessage = onLiveMessage; // a server that sends unnamed events
  es.onerror = () => {
    if (live.es !== es) return;
    live.lost = true;
    if (es.readyState === EventSource.CLOSED) {
      // The browser gave up (HTTP error or wrong content type): retry with backoff,
      // with a fresh token in case this one expired.
      es.close();
      obtainToken(true);
      live.es = null;
      const delay = Math.min(30_000, 1000 * 2 ** live.retry);
      live.retry += 1;
      setLive(live.everOpen ? 'reconnecting' : 'offline', `retrying in ${Math.round(delay / 1000)} s`);
      live.timer = setTimeout(connectLive, delay);
    } else {
      setLive('reconnecting');
    }
  };
}
