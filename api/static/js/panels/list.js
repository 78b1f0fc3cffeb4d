/*
 * The open-incident list: most severe, then newest first; the first LIST_LIMIT are shown.
 */
import { t } from '../i18n.js';
import { LIST_LIMIT, COLORS, SEV_RANK, SEV_ZH } from '../constants.js';
import { state } from '../store.js';
import { el } from '../dom.js';
import { relativeTime, formatTime } from '../format.js';
import { selectIncident } from './detail.js';

function sortedOpenIncidents() {
  const out = Array.from(state.incidents.values());
  out.sort((a, b) => {
    if (b.rank !== a.rank) return b.rank - a.rank;
    const ta = Number.isFinite(a.t) ? a.t : -Infinity;
    const tb = Number.isFinite(b.t) ? b.t : -Infinity;
    if (tb !== ta) return tb - ta; // newest first
    return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
  });
  return out;
}

export function renderList() {
  const items = sortedOpenIncidents();
  const now = Date.now();
  el.listCount.textContent = String(items.length);
  const incidentsError = state.layerErrors.incidents;
  el.listEmpty.hidden = items.length > 0;
  el.listEmpty.textContent = incidentsError
    ? `Incidents could not be loaded: ${incidentsError}`
    : state.loaded
      ? t('list.empty')
      : t('list.loading');
  const frag = document.createDocumentFragment();
  for (const rec of items.slice(0, LIST_LIMIT)) {
    const p = rec.props;
    const li = document.createElement('li');
    li.className = 'incident-item';
    li.tabIndex = 0;
    li.dataset.testid = 'incident-item';
    li.dataset.incidentId = rec.id;
    li.dataset.severity = p.severity || '';
    li.dataset.acknowledged = p.acknowledged ? 'true' : 'false';
    if (!p.acknowledged) li.classList.add('unacked');
    if (rec.id === state.selectedId) li.classList.add('selected');
    const until = state.freshUntil.get(rec.id);
    if (until) {
      if (until > now) {
        li.classList.add('fresh');
        li.style.animationDelay = `${-(2000 - (until - now))}ms`;
      } else state.freshUntil.delete(rec.id);
    }
    const dot = document.createElement('span');
    dot.className = 'sev-dot';
    dot.style.setProperty('--c', COLORS.severity[SEV_RANK[p.severity] ? p.severity : 'other']);
    dot.title = `${p.severity || 'unknown'} ${SEV_ZH[p.severity] || ''}`;
    const title = document.createElement('span');
    title.className = 'title';
    title.textContent = p.title || `Incident ${rec.id}`;
    title.title = title.textContent;
    const time = document.createElement('span');
    time.className = 'time';
    time.textContent = relativeTime(p.opened_at);
    time.title = `opened ${formatTime(p.opened_at)}`;
    const meta = document.createElement('span');
    meta.className = 'meta';
    const parts = [t(`sev.${p.severity}`), p.grid_code ? `${t('field.grid')} ${p.grid_code}` : null, p.department_code || null];
    if (p.trigger_count > 1) parts.push(`×${p.trigger_count}`);
    if (p.linked_cases > 0) parts.push(`${t('legend.cases')} ${p.linked_cases}`);
    if (!p.acknowledged) parts.push(t('legend.unacked'));
    meta.textContent = parts.filter(Boolean).join(' · ');
    li.append(dot, title, time, meta);
    frag.append(li);
  }
  if (items.length > LIST_LIMIT) {
    const more = document.createElement('li');
    more.className = 'incident-more';
    more.textContent = t('list.more', { n: items.length - LIST_LIMIT });
    frag.append(more);
  }
  el.list.replaceChildren(frag);
  state.listPrimed = state.loaded;
}

export function onListActivate(e) {
  const li = e.target.closest('[data-incident-id]');
  if (!li) return;
  if (e.type === 'keydown' && e.key !== 'Enter' && e.key !== ' ') return;
  e.preventDefault();
  selectIncident(li.dataset.incidentId, { center: true });
}
