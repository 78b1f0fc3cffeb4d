/*
 * The drawer for an incident: its fields, the workflow actions the API offers the caller,
 * its timeline, linked cases and sensors (a case's drawer is case.js).
 */
import { t } from '../i18n.js';
import { API, COLORS, SEV_RANK } from '../constants.js';
import { state } from '../store.js';
import { el, li } from '../dom.js';
import { formatTime, relativeTime, formatValue } from '../format.js';
import { request } from '../http.js';
import { invalidate } from '../frame.js';
import { applyIncident, incidentRecord } from '../records.js';
import { mayReadAudit } from '../user.js';
import { centerOn } from '../map/view.js';
import { showView, markSelectedCase, renderCase, rememberCase } from './case.js';
import { startChart, stopChart, loadChart, chart } from './chart.js';
import { schedulePanels } from './refresh.js';

const ACTION_ORDER = ['acknowledge', 'dispatch', 'accept', 'resolve', 'verify'];

export function selectIncident(id, { center = false } = {}) {
  id = String(id);
  const rec = state.incidents.get(id) || (state.selected && state.selected.id === id ? state.selected : null);
  const changed = state.selectedId !== id;
  state.selectedId = id;
  state.selected = rec;
  state.selectedMissing = false;
  state.selectedCase = null;
  showView('incident');
  if (changed) {
    delete el.detail.dataset.loaded;
    el.actionNote.value = '';
    el.actionError.hidden = true;
    el.actionOk.hidden = true;
    state.detailExtra = null;
    state.allowed = null;
    state.timeline = null;
    state.chartDevice = rec && rec.props.device_id != null ? String(rec.props.device_id) : null;
  }
  el.detail.hidden = false;
  if (center && rec) centerOn(rec);
  invalidate('detail', 'list', 'map');
  refreshSelected(id);
  startChart();
}

export function closeDetail() {
  state.selectedId = null;
  state.selected = null;
  state.selectedCase = null;
  el.detail.hidden = true;
  delete el.detail.dataset.incidentId;
  delete el.detail.dataset.caseId;
  stopChart();
  invalidate('list', 'map');
  markSelectedCase();
}

/** The incident, its linked cases and sensors, what the caller may do, its timeline. */
export async function refreshSelected(id) {
  const path = encodeURIComponent(id);
  const [res, allowed, trace] = await Promise.all([
    request(`${API}/incidents/${path}`),
    state.replay ? Promise.resolve(null) : request(`${API}/ops/actions/incidents/${path}`),
    mayReadAudit() ? request(`${API}/audit/incidents/${path}/trace`) : Promise.resolve(null),
  ]);
  if (state.selectedId !== id) return;
  // The read model trails a command's answer by a moment: while it is behind what the
  // last action answered, read again (the live push may be missed while it reconnects).
  const expected = state.awaitVersion && state.awaitVersion.id === id ? state.awaitVersion : null;
  if (expected && res.ok && res.data && res.data.properties) {
    if (Number(res.data.properties.version) >= expected.version || expected.tries <= 0) state.awaitVersion = null;
    else {
      expected.tries -= 1;
      setTimeout(() => {
        if (state.selectedId === id) refreshSelected(id);
      }, 500);
    }
  }
  if (res.ok && res.data && res.data.properties) {
    state.detailExtra = { linked_cases: res.data.linked_cases || [], sensors: res.data.sensors || [] };
    if (!state.replay) applyIncident(res.data);
    else if (!state.selected) state.selected = incidentRecord(res.data);
    if (!state.chartDevice && state.selected && state.selected.props.device_id != null) {
      state.chartDevice = String(state.selected.props.device_id);
      loadChart();
    }
  } else if (res.status === 404 || !state.selected) {
    state.selectedMissing = true;
  }
  state.allowed = allowed && allowed.ok ? (allowed.data.actions || []).map((a) => a.action) : [];
  state.departmentRequired = Boolean(allowed && allowed.ok && allowed.data.department_required);
  state.timeline = trace && trace.ok && Array.isArray(trace.data.steps) ? trace.data.steps : null;
  el.detail.dataset.loaded = 'true';
  invalidate('detail');
}

function addField(key, label, value, cls) {
  const dt = document.createElement('dt');
  dt.textContent = label;
  const dd = document.createElement('dd');
  dd.dataset.testid = `detail-${key}`;
  dd.textContent = value == null || value === '' ? '—' : String(value);
  if (cls) dd.className = cls;
  el.detailFields.append(dt, dd);
}

/** Steps from the audit trace, or (for roles without audit access) from the incident. */
function timelineSteps(p) {
  if (state.timeline) {
    return state.timeline.map((st) => ({ time: st.time, what: st.step, who: st.actor, summary: st.summary }));
  }
  const steps = [{ time: p.opened_at, what: 'opened', summary: p.title }];
  if (p.acknowledged) steps.push({ time: p.acknowledged_at || p.updated_at, what: 'acknowledged', who: p.acknowledged_by });
  if (p.dispatched_at) steps.push({ time: p.dispatched_at, what: 'dispatched', summary: p.department_code });
  if (p.stage && !['reported', 'dispatched'].includes(p.stage)) steps.push({ time: p.updated_at, what: p.stage });
  if (p.status === 'closed') steps.push({ time: p.closed_at || p.updated_at, what: 'closed' });
  return steps;
}

export function renderDetail() {
  if (el.detail.hidden) return;
  if (state.selectedCase) {
    renderCase();
    return;
  }
  if (!state.selectedId) return;
  const rec = state.selected;
  el.detailFields.replaceChildren();
  el.detail.dataset.incidentId = state.selectedId;
  if (!rec) {
    el.detailTitle.textContent = state.selectedMissing ? t('detail.not_found') : t('detail.loading');
    el.detailSeverity.textContent = '';
    el.detailSeverity.hidden = true;
    el.detailNote.hidden = true;
    el.actionButtons.replaceChildren();
    return;
  }
  const p = rec.props;
  el.detailTitle.textContent = p.title || `Incident ${rec.id}`;
  el.detailSeverity.hidden = false;
  el.detailSeverity.textContent = t(`sev.${p.severity}`);
  el.detailSeverity.style.setProperty('--c', COLORS.severity[SEV_RANK[p.severity] ? p.severity : 'other']);
  el.detailSeverity.dataset.severity = p.severity || '';
  el.detailNote.hidden = !state.selectedMissing;
  el.detailNote.textContent = state.selectedMissing ? t('detail.not_found') : '';

  addField('status', t('field.status'), p.status);
  addField('stage', t('field.stage'), p.stage);
  addField('alarm-status', t('field.alarm'), p.alarm_status, p.alarm_status === 'active' ? 'no' : 'yes');
  addField('acknowledged', t('field.acknowledged'), p.acknowledged ? `✓${p.acknowledged_by ? ` ${p.acknowledged_by}` : ''}` : '✗', p.acknowledged ? 'yes' : 'no');
  addField('category', t('field.category'), p.category);
  addField('device', t('field.device'), p.device_id);
  addField('grid', t('field.grid'), p.grid_code);
  addField('department', t('field.department'), p.department_code);
  addField('opened', t('field.opened'), p.opened_at ? `${formatTime(p.opened_at)} · ${relativeTime(p.opened_at)}` : null);
  addField('due', t('field.due'), p.due_at ? formatTime(p.due_at) : null);
  const unit = chart.unit ? ` ${chart.unit}` : '';
  addField('last-value', t('field.last_value'), p.last_value != null ? `${formatValue(p.last_value)}${unit}${p.metric ? ` · ${p.metric}` : ''}` : null);

  // Only the commands the API says this caller may run now; the API refuses the rest.
  const allowed = state.replay ? [] : state.allowed || [];
  const buttons = [];
  for (const action of ACTION_ORDER) {
    if (!allowed.includes(action)) continue;
    buttons.push(actionButton(action, action));
    if (action === 'verify') buttons.push(actionButton('reject', 'verify'));
  }
  el.actionButtons.replaceChildren(...buttons);
  el.actionNone.hidden = buttons.length > 0 || state.allowed === null;
  el.actionNote.hidden = buttons.length === 0;

  const steps = timelineSteps(p);
  el.timeline.replaceChildren(...steps.map((st) => {
    const node = li('', { step: st.what || '' });
    const time = document.createElement('span');
    time.className = 'time';
    time.textContent = formatTime(st.time);
    const what = document.createElement('b');
    what.textContent = ` ${st.what || ''} `;
    const rest = document.createElement('span');
    rest.textContent = [st.who, st.summary].filter(Boolean).join(' · ');
    node.append(time, what, rest);
    return node;
  }));

  const extra = state.detailExtra || { linked_cases: [], sensors: [] };
  el.casesCount.textContent = String(extra.linked_cases.length || p.linked_cases || 0);
  el.linkedCases.replaceChildren(...(extra.linked_cases.length
    ? extra.linked_cases.map((f) => {
      const c = f.properties || f;
      const node = li(`${c.category || ''} · ${c.status || ''} · ${c.channel || ''} · ${formatTime(c.submitted_at)}${c.description ? ` · ${c.description}` : ''}`, { caseId: String(c.case_id || f.id || '') });
      node.classList.add('clickable');
      node.tabIndex = 0;
      rememberCase({ ...c, case_id: node.dataset.caseId, incident_id: rec.id });
      return node;
    })
    : [li(t('detail.no_cases'), { empty: 'true' })]));
  el.detailSensors.replaceChildren(...(extra.sensors.length
    ? extra.sensors.map((sn) => {
      const known = state.sensors.get(String(sn.device_id));
      const st = known ? known.props.state : sn.silent ? 'silent' : sn.alarms && sn.alarms.length ? 'alarm' : 'normal';
      const node = li(`${sn.device_id} · ${t(`state.${st}`)} · ${formatValue(sn.distance_m)} m${sn.alarms && sn.alarms.length ? ` · ${sn.alarms.join(', ')}` : ''}`, { deviceId: String(sn.device_id) });
      node.classList.add('clickable');
      if (String(sn.device_id) === state.chartDevice) node.classList.add('selected');
      node.tabIndex = 0;
      return node;
    })
    : [li(t('detail.no_sensors'), { empty: 'true' })]));
}

function actionButton(label, action) {
  const b = document.createElement('button');
  b.type = 'button';
  b.dataset.action = label;
  b.dataset.testid = `action-${label}`;
  b.textContent = t(`action.${label}`);
  b.disabled = state.actionBusy;
  if (label === 'acknowledge' || label === 'verify') b.className = 'primary';
  b.addEventListener('click', () => runAction(label, action));
  return b;
}

async function runAction(label, action) {
  const rec = state.selected;
  if (!rec || state.actionBusy) return;
  const note = el.actionNote.value.trim();
  const bodies = {
    acknowledge: { reason: note },
    dispatch: { reason: note },
    accept: {},
    resolve: { feedback: note },
    verify: { passed: true, note },
    reject: { passed: false, note },
  };
  el.actionError.hidden = true;
  el.actionOk.hidden = true;
  if ((label === 'resolve' || label === 'reject') && !note) {
    el.actionError.textContent = t('action.need_feedback');
    el.actionError.hidden = false;
    return;
  }
  state.actionBusy = true;
  renderDetail();
  const res = await request(`${API}/incidents/${encodeURIComponent(rec.id)}/${action}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(bodies[label]),
  });
  state.actionBusy = false;
  if (state.selectedId === rec.id) {
    if (res.ok) {
      if (Number.isFinite(Number(res.data.version))) state.awaitVersion = { id: rec.id, version: Number(res.data.version), tries: 20 };
      el.actionNote.value = '';
      el.actionOk.textContent = t('action.done', { a: t(`action.${label}`) });
      el.actionOk.hidden = false;
    } else {
      el.actionError.textContent = t('action.failed', { a: t(`action.${label}`), e: res.error });
      el.actionError.dataset.status = String(res.status);
      el.actionError.hidden = false;
    }
    refreshSelected(rec.id);
  }
  schedulePanels();
  invalidate('detail');
}
