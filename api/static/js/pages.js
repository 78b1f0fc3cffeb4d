/*
 * My pages (我的呼叫): the signed-in person's pages from the pager (GET /api/v1/me/pages),
 * newest first, each with an acknowledge button while its escalation is open (POST
 * /api/v1/pages/{id}/acknowledge: acknowledging one page stops its escalation for
 * everyone). Loaded as a module of its own beside main.js; it polls, so it needs no hook
 * in the live channel. The panel is index.html's [data-testid="my-pages"] section.
 */
import { API } from './constants.js';
import { getLang } from './i18n.js';
import { formatTime } from './format.js';
import { request } from './http.js';

const POLL_MS = 15_000;
const TEXT = {
  zh: {
    empty: '暂无呼叫',
    ack: '确认',
    acked: '已确认',
    stopped: '已解除',
    denied: '无权查看呼叫',
    trigger: {
      critical_alarm: '紧急告警无人确认',
      incident_overdue: '事件处置超时',
      case_overdue: '工单办理超时',
      dispute_unarbitrated: '异议超时未裁定',
    },
    level: { street: '街镇', district: '区', city: '市' },
  },
  en: {
    empty: 'No pages',
    ack: 'Acknowledge',
    acked: 'acknowledged',
    stopped: 'stopped',
    denied: 'this role has no pages',
    trigger: {
      critical_alarm: 'critical alarm not acknowledged',
      incident_overdue: 'incident past its deadline',
      case_overdue: 'case past its deadline',
      dispute_unarbitrated: 'dispute not arbitrated in time',
    },
    level: { street: 'street', district: 'district', city: 'city' },
  },
};

const $ = (sel) => document.querySelector(sel);
// Escalations acknowledged from this tab: the pages view shows it after the pager's next
// pass (it keeps that view), the panel at once.
const acknowledged = new Set();
const words = () => TEXT[getLang() === 'en' ? 'en' : 'zh'];

/** One line per escalation: its in-app page (or the first page) stands for the others. */
function byEscalation(pages) {
  const seen = new Map();
  for (const p of pages) {
    const kept = seen.get(p.escalation_id);
    if (!kept || (p.channel === 'in_app' && kept.channel !== 'in_app')) seen.set(p.escalation_id, p);
  }
  return [...seen.values()];
}

function item(page, w) {
  const node = document.createElement('li');
  node.dataset.pageId = page.page_id;
  node.dataset.testid = 'my-page';
  node.classList.toggle('overdue', page.status === 'open' && page.critical);
  // The list's rows clip at one line: the label gives way, the button stays in view.
  node.style.display = 'flex';
  node.style.gap = '6px';
  const label = document.createElement('span');
  label.style.cssText = 'flex: 1; overflow: hidden; text-overflow: ellipsis;';
  label.title = page.title;
  const trigger = w.trigger[page.trigger] || page.trigger;
  label.textContent = `【${w.level[page.level] || page.level}】${trigger} · ${page.title} · ${formatTime(page.paged_at)}`;
  node.append(label);
  if (page.status === 'open') {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'link-button';
    button.dataset.testid = 'page-acknowledge';
    button.dataset.escalationId = page.escalation_id;
    button.textContent = w.ack;
    button.addEventListener('click', () => acknowledge(page.page_id, button));
    button.style.flex = 'none';
    node.append(button);
  } else {
    const done = document.createElement('em');
    done.style.flex = 'none';
    done.textContent = page.status === 'acknowledged' ? w.acked : w.stopped;
    node.append(done);
  }
  return node;
}

async function acknowledge(pageId, button) {
  button.disabled = true;
  const res = await request(`${API}/pages/${pageId}/acknowledge`, { method: 'POST' });
  if (res.ok || res.status === 409) acknowledged.add(res.ok ? res.data.escalation_id : button.dataset.escalationId);
  else button.title = res.error;
  await loadPages();
}

export async function loadPages() {
  const list = $('#my-pages-list');
  const empty = $('#my-pages-empty');
  const count = $('[data-testid="my-pages-open"]');
  if (!list) return;
  const w = words();
  const res = await request(`${API}/me/pages?limit=50`);
  if (!res.ok) {
    list.replaceChildren();
    empty.textContent = res.status === 403 ? w.denied : res.error;
    empty.hidden = false;
    return;
  }
  const pages = byEscalation(res.data.pages || []).map((p) =>
    p.status === 'open' && acknowledged.has(p.escalation_id) ? { ...p, status: 'acknowledged' } : p,
  );
  list.replaceChildren(...pages.map((p) => item(p, w)));
  count.textContent = String(pages.filter((p) => p.status === 'open').length);
  empty.textContent = w.empty;
  empty.hidden = pages.length > 0;
}

loadPages();
setInterval(loadPages, POLL_MS);
for (const id of ['role-select', 'department-select']) {
  const select = document.getElementById(id);
  if (select) select.addEventListener('change', () => setTimeout(loadPages, 1_000));
}
