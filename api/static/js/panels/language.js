/*
 * Switching between English and Chinese labels.
 */
import { applyLabels, getLang } from '../i18n.js';
import { live } from '../store.js';
import { el } from '../dom.js';
import { invalidate } from '../frame.js';
import { setLive } from '../live.js';
import { renderFeed } from './feed.js';
import { renderGridLegend } from './hotspots.js';
import { loadDepartments } from './queues.js';
import { loadSla } from './sla.js';
import { renderTimeLabel } from './timebar.js';

export function applyLanguage() {
  applyLabels();
  el.langToggle.textContent = getLang() === 'zh' ? 'English' : '中文';
  setLive(live.state || 'connecting');
  renderTimeLabel();
  renderFeed();
  renderGridLegend();
  loadDepartments();
  loadSla();
  invalidate('map', 'list', 'status', 'detail');
}
