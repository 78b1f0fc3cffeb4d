/*
 * The sign-in: the role (and a department's code) chosen in the header, and the caller
 * GET /ops/config names.
 */
import { API } from '../constants.js';
import { state } from '../store.js';
import { el } from '../dom.js';
import { request, chooseRole, obtainToken, auth } from '../http.js';
import { invalidate } from '../frame.js';
import { mayReadAudit } from '../user.js';
import { connectLive } from '../live.js';
import { refreshCase } from './case.js';
import { refreshSelected } from './detail.js';
import { scopeQueue } from './queues.js';
import { loadPanels } from './refresh.js';
import { goLive } from './timebar.js';

/** The caller (role, department) and the deployment's settings from GET /ops/config. */
export async function loadConfig() {
  const res = await request(`${API}/ops/config`);
  state.config = res.ok ? res.data : null;
  const user = state.config && state.config.user;
  el.userLabel.textContent = user ? `${user.subject}${user.department ? ` · ${user.department}` : ''}` : '';
  if (user) {
    el.roleSelect.value = user.role;
    document.body.dataset.role = user.role;
    if (user.department) document.body.dataset.department = user.department;
    else delete document.body.dataset.department;
    el.deptSelect.hidden = user.role !== 'department';
    if (user.department) el.deptSelect.value = user.department;
  }
  scopeQueue();
  invalidate('map');
}

export async function switchRole(role, department = null) {
  const seq = chooseRole(role, department);
  await obtainToken(true);
  if (seq !== auth.seq) return; // a later choice is signing in
  await loadConfig();
  if (seq !== auth.seq) return;
  if (state.replay && !mayReadAudit()) await goLive();
  connectLive();
  loadPanels();
  if (state.selectedId) {
    state.allowed = null;
    refreshSelected(state.selectedId);
  }
  if (state.selectedCase) refreshCase(state.selectedCase.id);
}

/** The role picker; a department signs in once one is chosen in the picker beside it. */
export function onRoleChosen() {
  const role = el.roleSelect.value;
  el.deptSelect.hidden = role !== 'department';
  if (role !== 'department') {
    switchRole(role);
    return;
  }
  if (el.deptSelect.value) switchRole('department', el.deptSelect.value);
  else el.deptSelect.focus();
}
