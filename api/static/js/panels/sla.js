/*
 * The SLA board: incidents and cases overdue or due soon.
 */
import { t } from '../i18n.js';
import { API } from '../constants.js';
import { li, el } from '../dom.js';
import { formatTime } from '../format.js';
import { request } from '../http.js';
import { caseItem } from './case.js';

export async function loadSla() {
  const res = await request(`${API}/ops/sla?limit=10`);
  if (!res.ok) return;
  const d = res.data;
  const overdue = (d.cases.overdue.total || 0) + (d.incidents.overdue || 0);
  const soon = (d.cases.due_soon.total || 0) + (d.incidents.due_soon || 0);
  const o = document.querySelector('[data-testid="sla-overdue"]');
  const ds = document.querySelector('[data-testid="sla-due-soon"]');
  o.textContent = `${t('sla.overdue')} ${overdue}`;
  ds.textContent = `${t('sla.due_soon')} ${soon}`;
  const items = [];
  for (const it of d.incidents.items || []) {
    const node = li(`${it.overdue ? '⏰' : '⌛'} ${it.title} · ${it.department_code || '—'} · ${formatTime(it.due_at)}`, { incidentId: it.incident_id });
    node.classList.add('clickable', it.overdue ? 'overdue' : 'due-soon');
    items.push(node);
  }
  for (const [kind, list] of [['overdue', d.cases.overdue.items], ['due-soon', d.cases.due_soon.items]]) {
    for (const c of list || []) {
      items.push(caseItem(`${kind === 'overdue' ? '⏰' : '⌛'} ${c.category} · ${c.department_code || '—'} · ${formatTime(c.due_at)}`, c, kind));
    }
  }
  el.slaList.replaceChildren(...items);
  el.slaEmpty.hidden = items.length > 0;
}
