/*
 * The live alert feed: the latest FEED_MAX incident and sensor-alarm changes.
 */
import { t } from '../i18n.js';
import { COLORS, SEV_RANK } from '../constants.js';
import { state } from '../store.js';
import { el } from '../dom.js';
import { formatTime } from '../format.js';

const FEED_MAX = 60;

export function pushFeed(msg) {
  const f = msg.feature;
  const p = (f && f.properties) || {};
  let item = null;
  if (msg.layer === 'incidents') {
    const id = String(p.incident_id || f.id || '');
    const known = state.incidents.has(id);
    const kind = p.status === 'closed' ? 'closed' : known ? 'changed' : 'opened';
    item = { id, kind, sev: p.severity, text: p.title || id, at: Date.now() };
  } else if (msg.layer === 'sensors' && (p.state === 'alarm' || p.state === 'silent')) {
    item = { device: String(p.device_id), kind: p.state, sev: p.state === 'alarm' ? 'major' : 'other', text: t('feed.sensor', { s: p.device_id }), at: Date.now() };
  }
  if (!item) return;
  state.feed.unshift(item);
  if (state.feed.length > FEED_MAX) state.feed.length = FEED_MAX;
  renderFeed();
}

export function renderFeed() {
  el.feedEmpty.hidden = state.feed.length > 0;
  el.feed.replaceChildren(...state.feed.map((it) => {
    const node = document.createElement('li');
    node.className = `feed-item ${it.kind}`;
    node.dataset.testid = 'feed-item';
    if (it.id) node.dataset.incidentId = it.id;
    const dot = document.createElement('span');
    dot.className = 'sev-dot';
    dot.style.setProperty('--c', COLORS.severity[SEV_RANK[it.sev] ? it.sev : 'other']);
    const time = document.createElement('span');
    time.className = 'time';
    time.textContent = formatTime(new Date(it.at).toISOString());
    const what = document.createElement('b');
    what.textContent = ` ${it.id ? t(`feed.${it.kind}`) : t(`state.${it.kind}`)} `;
    const text = document.createElement('span');
    text.textContent = it.text;
    node.append(dot, time, what, text);
    return node;
  }));
}
