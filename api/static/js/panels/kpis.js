/*
 * The key figures: open incidents, cases today, on-time rate, satisfaction, the three
 * rates (三率) and the 接诉即办 index over the KPI period; and the three rates of each
 * department in the same period (the scorecards, worst index first: where to look).
 */
import { API } from '../constants.js';
import { request } from '../http.js';
import { t } from '../i18n.js';

const pct = (v) => (v == null ? '—' : `${Math.round(v * 1000) / 10}%`);
const SHOWN = 12; // departments listed

const set = (id, v) => {
  document.querySelector(`[data-testid="${id}"]`).textContent = v;
};

export async function loadKpis() {
  const res = await request(`${API}/ops/kpis`);
  if (!res.ok) return;
  const k = res.data;
  set('kpi-open', String(k.incidents ? k.incidents.open : '—'));
  set('kpi-cases-today', String(k.cases ? k.cases.today : '—'));
  const perf = k.performance || {};
  set('kpi-on-time', pct(perf.on_time_rate));
  set('kpi-satisfaction', perf.mean_rating == null ? '—' : `${perf.mean_rating.toFixed(2)} / 5`);
  set('kpi-response-rate', pct(perf.response_rate));
  set('kpi-resolution-rate', pct(perf.resolution_rate));
  set('kpi-satisfaction-rate', pct(perf.satisfaction_rate));
  set('kpi-three-rates', perf.three_rates_index == null ? '—' : perf.three_rates_index.toFixed(1));
  if (perf.start && perf.end) await loadRates(perf.start, perf.end);
}

async function loadRates(start, end) {
  const query = new URLSearchParams({ level: 'department', start, end });
  const res = await request(`${API}/scorecards?${query}`);
  const list = document.getElementById('rates-list');
  const empty = document.getElementById('rates-empty');
  if (!res.ok) {
    // Not every role reads the scorecards: the section stays empty.
    list.replaceChildren();
    empty.hidden = false;
    return;
  }
  const units = res.data.units
    .filter((u) => u.three_rates_index != null)
    .sort((a, b) => a.three_rates_index - b.three_rates_index)
    .slice(0, SHOWN);
  list.replaceChildren(
    ...units.map((u) => {
      const li = document.createElement('li');
      li.dataset.unit = u.unit_code;
      const code = document.createElement('strong');
      code.textContent = `${u.unit_code} `;
      const text = document.createElement('span');
      text.textContent = t('rates.row', {
        r: pct(u.response_rate),
        s: pct(u.resolution_rate),
        f: pct(u.satisfaction_rate),
        i: u.three_rates_index.toFixed(1),
      });
      li.append(code, text);
      return li;
    }),
  );
  empty.hidden = units.length > 0;
}
