/*
 * Requests to the API: fetch() with the bearer token, a timeout and the API's error text;
 * the token itself, from #token=..., the tab's storage or the development sign-in.
 */
import { API } from './constants.js';

/** The text of the API's error answer: its detail and its field errors. */
function detailOf(data) {
  if (!data || typeof data !== 'object') return '';
  const d = data.detail;
  let text = '';
  if (typeof d === 'string') text = d;
  else if (Array.isArray(d)) text = d.map((e) => (e && e.msg) || JSON.stringify(e)).join('; ');
  else if (d != null) text = JSON.stringify(d);
  if (Array.isArray(data.errors) && data.errors.length) {
    const msgs = data.errors.map((e) => {
      const loc = e && Array.isArray(e.loc) ? e.loc.join('.') : '';
      return loc ? `${loc}: ${e.msg}` : (e && e.msg) || '';
    });
    text = `${text}${text ? ': ' : ''}${msgs.join('; ')}`;
  }
  return text;
}

// The API wants a bearer token. A token given as #token=... (from `cityops token`) is
// kept for this tab; without one, a development server hands out a token for the role
// chosen (a department's for the department chosen).
const TOKEN_KEY = 'cityops.token';
const ROLE_KEY = 'cityops.role';
const DEPT_KEY = 'cityops.department';
export const auth = {
  token: null,
  pending: null, // {key, promise} of the running sign-in
  seq: 0, // the latest role switch
  role: sessionStorage.getItem(ROLE_KEY) || 'operator',
  department: sessionStorage.getItem(DEPT_KEY) || null,
};
if (auth.role === 'department' && !auth.department) auth.role = 'operator';

const loginKey = () => (auth.role === 'department' ? `department:${auth.department}` : auth.role);

function tokenFromHash() {
  const m = /(?:^|[#&])token=([^&]+)/.exec(window.location.hash || '');
  if (!m) return null;
  history.replaceState(null, '', window.location.pathname + window.location.search);
  return decodeURIComponent(m[1]);
}

export async function obtainToken(force = false) {
  if (!force) {
    auth.token = auth.token || tokenFromHash() || sessionStorage.getItem(TOKEN_KEY);
    if (auth.token) return auth.token;
  }
  const key = loginKey();
  if (!auth.pending || auth.pending.key !== key) {
    const body = auth.role === 'department' ? { role: 'department', department_code: auth.department } : { role: auth.role };
    const promise = (async () => {
      try {
        const res = await fetch(`${API}/auth/dev-token`, {
          method: 'POST',
          headers: { Accept: 'application/json', 'Content-Type': 'application/json' },
          body: JSON.stringify(body),
        });
        if (!res.ok) return null;
        const data = await res.json();
        return data && data.access_token ? data.access_token : null;
      } catch (_) {
        return null;
      }
    })();
    auth.pending = { key, promise };
    promise.finally(() => {
      if (auth.pending && auth.pending.promise === promise) auth.pending = null;
    });
  }
  const token = await auth.pending.promise;
  // Another role was chosen meanwhile: its sign-in wins.
  if (key !== loginKey()) return obtainToken(force);
  auth.token = token;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  return token;
}

/** fetch() that never throws: {ok, status, data, error}. */
export async function request(url, options = {}, timeoutMs = 15_000, retried = false) {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), timeoutMs);
  try {
    const token = await obtainToken();
    const headers = { Accept: 'application/json', ...(options.headers || {}) };
    if (token) headers.Authorization = `Bearer ${token}`;
    const res = await fetch(url, { ...options, headers, signal: ctrl.signal });
    if (res.status === 401 && !retried) {
      // Expired or foreign token: get a fresh one once, then give up with the message.
      clearTimeout(timer);
      if (await obtainToken(true)) return request(url, options, timeoutMs, true);
      return { ok: false, status: 401, data: null, error: 'sign-in required: open this page with #token=<a token from `cityops token`>' };
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = null;
      }
    }
    if (!res.ok) {
      const detail = detailOf(data);
      return { ok: false, status: res.status, data, error: detail || `HTTP ${res.status} ${res.statusText}`.trim() };
    }
    if (data === null) return { ok: false, status: res.status, data: null, error: 'the response is not JSON' };
    return { ok: true, status: res.status, data, error: '' };
  } catch (err) {
    const timedOut = err && err.name === 'AbortError';
    return { ok: false, status: 0, data: null, error: timedOut ? 'request timed out' : 'network error: the API is unreachable' };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Sign in as `role` (a department's for `department`) from now on: the choice is kept for
 * this tab and the token of the previous one dropped. Returns the choice's number; a
 * later choice has a higher one.
 */
export function chooseRole(role, department = null) {
  auth.role = role;
  auth.department = role === 'department' ? department : null;
  sessionStorage.setItem(ROLE_KEY, role);
  if (auth.department) sessionStorage.setItem(DEPT_KEY, auth.department);
  else sessionStorage.removeItem(DEPT_KEY);
  sessionStorage.removeItem(TOKEN_KEY);
  auth.token = null;
  return ++auth.seq;
}
