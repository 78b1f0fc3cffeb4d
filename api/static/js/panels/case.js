/*
 * The drawer for a service case, read-only: opened from the SLA board, a queue or an
 * incident's linked cases; and the case rows those lists remember for it.
 */
import { t } from '../i18n.js';
import { API, COLORS } from '../constants.js';
import { state } from '../store.js';
import { el, li } from '../dom.js';
import { formatTime, untilTime } from '../format.js';
import { request } from '../http.js';
import { invalidate } from '../frame.js';
import { stopChart } from './chart.js';

/** The drawer shows an incident or a case; the other's id leaves its attributes. */
export function showView(kind) {
  el.detail.dataset.kind = kind;
  el.incidentView.hidden = kind !== 'incident';
  el.caseView.hidden = kind !== 'case';
  if (kind === 'case') delete el.detail.dataset.incidentId;
  else delete el.detail.dataset.caseId;
}

/** Open a service case, read-only; ``row`` is its summary from the list it was in. */
export function selectCase(id, row = null) {
  id = String(id);
  if (state.selectedId) {
    state.selectedId = null;
    state.selected = null;
    stopChart();
  }
  if (!state.selectedCase || state.selectedCase.id !== id) {
    state.selectedCase = { id, row, data: null, error: null };
    delete el.detail.dataset.loaded;
  } else if (row) {
    state.selectedCase.row = row;
  }
  showView('case');
  el.detail.dataset.caseId = id;
  el.detail.hidden = false;
  invalidate('detail', 'list', 'map');
  markSelectedCase();
  refreshCase(id);
}

export async function refreshCase(id) {
  const res = await request(`${API}/cases/${encodeURIComponent(id)}`);
  const sel = state.selectedCase;
  if (!sel || sel.id !== id) return;
  sel.data = res.ok ? res.data : null;
  sel.error = res.ok ? null : { status: res.status, text: res.error };
  el.detail.dataset.loaded = 'true';
  invalidate('detail');
}

export function markSelectedCase() {
  const id = state.selectedCase ? state.selectedCase.id : null;
  for (const node of document.querySelectorAll('.mini-list [data-case-id]')) node.classList.toggle('selected', node.dataset.caseId === id);
}

/** The incident a case is linked to: its summary says, or its LinkedToIncident event. */
function linkedIncidentOf(sel) {
  const row = sel.row || {};
  if (row.incident_id) return String(row.incident_id);
  const events = (sel.data && sel.data.timeline) || [];
  for (let i = events.length - 1; i >= 0; i--) if (events[i].incident_id) return String(events[i].incident_id);
  return null;
}

export const caseStatus = (status) => (status ? t(`cstatus.${status}`) : '—');

function caseField(list, key, label, value, cls) {
  const dt = document.createElement('dt');
  dt.textContent = label;
  const dd = document.createElement('dd');
  dd.dataset.testid = `case-${key}`;
  if (value instanceof Node) dd.append(value);
  else dd.textContent = value == null || value === '' ? '—' : String(value);
  if (cls) dd.className = cls;
  list.append(dt, dd);
}

export function renderCase() {
  const sel = state.selectedCase;
  // Until the case itself loads, the summary from its list.
  const c = sel.data || sel.row || {};
  el.detail.dataset.caseId = sel.id;
  el.detailTitle.textContent = `${t('case.title')} · ${c.category || '…'}`;
  el.detailSeverity.hidden = !c.status;
  el.detailSeverity.textContent = caseStatus(c.status);
  el.detailSeverity.style.setProperty('--c', c.overdue ? COLORS.severity.major : c.due_soon ? COLORS.severity.warning : '#8da0b3');
  el.detailSeverity.dataset.severity = '';
  el.detailNote.hidden = !sel.error;
  el.detailNote.textContent = sel.error ? t(sel.error.status === 403 ? 'case.forbidden' : sel.error.status === 404 ? 'case.not_found' : 'case.failed', { e: sel.error.text }) : '';

  el.caseFields.replaceChildren();
  caseField(el.caseFields, 'id', t('case.id'), sel.id);
  caseField(el.caseFields, 'status', t('field.status'), caseStatus(c.status));
  caseField(el.caseFields, 'category', t('field.category'), c.category);
  caseField(el.caseFields, 'department', t('field.department'), c.department_code);
  const due = document.createDocumentFragment();
  due.append(c.due_at ? `${formatTime(c.due_at)} · ${untilTime(c.due_at)}` : '—');
  for (const [flag, key, testid] of [[c.overdue, 'sla.overdue', 'case-overdue'], [c.due_soon && !c.overdue, 'sla.due_soon', 'case-due-soon']]) {
    if (!flag) continue;
    const mark = document.createElement('span');
    mark.className = `mark ${testid === 'case-overdue' ? 'overdue' : 'due-soon'}`;
    mark.dataset.testid = testid;
    mark.textContent = `${testid === 'case-overdue' ? '⏰' : '⌛'} ${t(key)}`;
    due.append(' ', mark);
  }
  caseField(el.caseFields, 'due', t('field.due'), due);
  caseField(el.caseFields, 'channel', t('case.channel'), c.channel);
  caseField(el.caseFields, 'submitted', t('case.submitted'), formatTime(c.submitted_at || c.created_at));
  caseField(el.caseFields, 'grid', t('field.grid'), c.grid_code);
  caseField(el.caseFields, 'address', t('case.address'), c.address);
  caseField(el.caseFields, 'description', t('case.description'), c.description);
  if (c.reply) caseField(el.caseFields, 'reply', t('case.reply'), c.reply);

  const incidentId = linkedIncidentOf(sel);
  if (incidentId) {
    const link = document.createElement('button');
    link.type = 'button';
    link.className = 'link-button';
    link.dataset.testid = 'case-incident-link';
    link.dataset.incidentId = incidentId;
    const known = state.incidents.get(incidentId);
    link.textContent = `${t('case.open_incident')} · ${known && known.props.title ? known.props.title : incidentId}`;
    el.caseIncident.replaceChildren(link);
  } else {
    el.caseIncident.textContent = t('case.no_incident');
  }

  // The contact as the API shows it to this role: in clear, masked or erased.
  el.caseContact.replaceChildren();
  const contact = sel.data ? sel.data.contact : null;
  const parts = contact ? Object.entries(contact).filter(([, v]) => v != null && v !== '') : [];
  if (parts.length) for (const [k, v] of parts) caseField(el.caseContact, `contact-${k}`, t(`contact.${k}`), v);
  else caseField(el.caseContact, 'contact', t('case.contact'), sel.data ? t('case.no_contact') : '…');

  const events = (sel.data && sel.data.timeline) || [];
  el.caseTimeline.replaceChildren(...events.map((ev) => {
    const node = li('', { event: ev.event || '' });
    const time = document.createElement('span');
    time.className = 'time';
    time.textContent = formatTime(ev.at);
    const what = document.createElement('b');
    what.textContent = ` ${t(`cevent.${ev.event}`) === `cevent.${ev.event}` ? ev.event : t(`cevent.${ev.event}`)} `;
    const rest = document.createElement('span');
    rest.textContent = [ev.actor, ev.department_code, ev.status, ev.reason, ev.reply].filter((v) => v != null && v !== '').join(' · ');
    node.append(time, what, rest);
    return node;
  }));
}

export function rememberCase(row) {
  if (state.caseRows.size > 2000) state.caseRows.clear();
  state.caseRows.set(String(row.case_id), row);
}

/** A list item that opens a case in the drawer. */
export function caseItem(text, c, cls) {
  const node = li(text, { caseId: String(c.case_id) });
  node.classList.add('clickable');
  if (cls) node.classList.add(cls);
  if (state.selectedCase && state.selectedCase.id === String(c.case_id)) node.classList.add('selected');
  node.tabIndex = 0;
  rememberCase(c);
  return node;
}
