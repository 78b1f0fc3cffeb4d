/*
 * The department queues and the department picker of the sign-in.
 */
import { getLang, t } from '../i18n.js';
import { API } from '../constants.js';
import { el } from '../dom.js';
import { formatTime } from '../format.js';
import { request, auth } from '../http.js';
import { ownDepartment } from '../user.js';
import { caseItem, caseStatus } from './case.js';

export async function loadDepartments() {
  const res = await request(`${API}/departments`);
  if (!res.ok) return;
  const zh = getLang() === 'zh';
  const options = () => res.data.departments.map((d) => {
    const o = document.createElement('option');
    o.value = d.code;
    o.textContent = zh && d.name_zh ? d.name_zh : d.name || d.code;
    return o;
  });
  const prev = el.queueSelect.value;
  el.queueSelect.replaceChildren(...options());
  if (prev) el.queueSelect.value = prev;
  // The sign-in's department picker: the same departments, after its prompt.
  const prompt = el.deptSelect.options[0];
  const chosen = el.deptSelect.value || (auth.role === 'department' ? auth.department : '');
  el.deptSelect.replaceChildren(prompt, ...options());
  el.deptSelect.value = chosen || '';
  scopeQueue();
  loadQueue();
}

/** A department works its own queue: the picker is fixed on it. */
export function scopeQueue() {
  const own = ownDepartment();
  el.queueSelect.disabled = Boolean(own);
  if (own && el.queueSelect.value !== own) el.queueSelect.value = own;
}

export async function loadQueue() {
  const code = el.queueSelect.value;
  if (!code) return;
  const res = await request(`${API}/departments/${encodeURIComponent(code)}/queue?limit=20`);
  if (!res.ok || el.queueSelect.value !== code) return;
  const cases = res.data.cases || [];
  el.queueList.replaceChildren(...cases.map((c) => {
    const node = caseItem(`${c.overdue ? '⏰ ' : c.due_soon ? '⌛ ' : ''}${c.category} · ${caseStatus(c.status)} · ${formatTime(c.due_at)}`, c, c.overdue ? 'overdue' : c.due_soon ? 'due-soon' : null);
    node.dataset.testid = 'queue-item';
    return node;
  }));
  el.queueEmpty.hidden = cases.length > 0;
  el.queueEmpty.textContent = res.data.total > cases.length ? '' : t('queue.empty');
}
