/*
 * The key figures: open incidents, cases today, on-time rate, satisfaction.
 */
import { API } from '../constants.js';
import { request } from '../http.js';

const pct = (v) => (v == null ? '—' : `${Math.round(v * 1000) / 10}%`);

export async function loadKpis() {
  const res = await request(`${API}/ops/kpis`);
  if (!res.ok) return;
  const k = res.data;
  const set = (id, v) => {
    document.querySelector(`[data-testid="${id}"]`).textContent = v;
  };
  set('kpi-open', String(k.incidents ? k.incidents.open : '—'));
  set('kpi-cases-today', String(k.cases ? k.cases.today : '—'));
  const perf = k.performance || {};
  set('kpi-on-time', pct(perf.on_time_rate));
  set('kpi-satisfaction', perf.mean_rating == null ? '—' : `${perf.mean_rating.toFixed(2)} / 5`);
}
