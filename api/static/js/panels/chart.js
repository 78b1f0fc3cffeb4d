/*
 * The drawer's chart of a sensor's readings over the last hour, re-read every
 * CHART_REFRESH_MS while the drawer shows an incident.
 */
import { t } from '../i18n.js';
import { API, CHART_REFRESH_MS } from '../constants.js';
import { state } from '../store.js';
import { el } from '../dom.js';
import { formatValue, pad2 } from '../format.js';
import { request } from '../http.js';
import { invalidate } from '../frame.js';

let chartTimer = null; // re-reads the chart while an incident is shown

export const chart = { seq: 0, data: null, deviceId: null, unit: '' };
const SERIES_COLORS = ['#4fb3ff', '#f39237', '#5fae7a', '#b065e8'];

function chartMessage(text) {
  el.chartMessage.textContent = text || '';
  el.chartMessage.hidden = !text;
}

function normalizeSeries(data) {
  const raw = data && Array.isArray(data.series) ? data.series : [];
  const out = [];
  for (const s of raw) {
    if (!s || !Array.isArray(s.points)) continue;
    const pts = [];
    for (const pt of s.points) {
      if (!Array.isArray(pt)) continue;
      const t = Date.parse(pt[0]);
      const v = pt[1] == null ? NaN : Number(pt[1]);
      if (Number.isFinite(t) && Number.isFinite(v)) pts.push([t, v]);
    }
    pts.sort((a, b) => a[0] - b[0]);
    out.push({ metric: String(s.metric ?? ''), unit: s.unit ? String(s.unit) : '', points: pts });
  }
  return out;
}

export async function loadChart() {
  const seq = ++chart.seq;
  const rec = state.selected;
  const device = state.chartDevice || (rec && rec.props.device_id != null ? String(rec.props.device_id) : null);
  chart.deviceId = device;
  if (!device) {
    chart.data = null;
    el.chartMeta.textContent = '';
    chartMessage(rec ? 'No sensor linked to this incident.' : '');
    drawChart();
    return;
  }
  if (!chart.data || chart.data.device !== device) chartMessage(t('chart.loading'));
  const to = new Date();
  const from = new Date(to.getTime() - 3600_000);
  const q = `agg=avg&interval=60&from=${encodeURIComponent(from.toISOString())}&to=${encodeURIComponent(to.toISOString())}`;
  const res = await request(`${API}/sensors/${encodeURIComponent(device)}/readings?${q}`);
  if (seq !== chart.seq) return; // another incident was selected meanwhile
  if (!res.ok) {
    chart.data = null;
    el.chartMeta.textContent = device;
    chartMessage(`Readings unavailable: ${res.error}`);
    drawChart();
    return;
  }
  const series = normalizeSeries(res.data);
  const metric = rec && String(rec.props.device_id) === device ? rec.props.metric : null;
  series.sort((a, b) => (b.metric === metric) - (a.metric === metric)); // the incident's metric first
  chart.data = { device, series, from: from.getTime(), to: to.getTime() };
  const main = series[0];
  chart.unit = main ? main.unit : '';
  const n = series.reduce((acc, s) => acc + s.points.length, 0);
  if (n === 0) {
    el.chartMeta.textContent = `${device}`;
    chartMessage(t('chart.none'));
  } else {
    const last = main.points[main.points.length - 1];
    el.chartMeta.textContent = `${device} · ${series.map((s) => `${s.metric}${s.unit ? ` (${s.unit})` : ''}`).join(', ')} · avg per minute · last ${last ? `${formatValue(last[1])} ${main.unit}` : '—'}`;
    chartMessage('');
  }
  el.chart.dataset.points = String(n);
  drawChart();
  invalidate('detail');
}

export function drawChart() {
  const canvas = el.chart;
  const cw = canvas.clientWidth;
  const ch = canvas.clientHeight;
  if (!cw || !ch) return;
  const dpr = window.devicePixelRatio || 1;
  if (canvas.width !== Math.round(cw * dpr) || canvas.height !== Math.round(ch * dpr)) {
    canvas.width = Math.round(cw * dpr);
    canvas.height = Math.round(ch * dpr);
  }
  const c = canvas.getContext('2d');
  c.setTransform(dpr, 0, 0, dpr, 0, 0);
  c.clearRect(0, 0, cw, ch);
  const d = chart.data;
  const all = d ? d.series.filter((s) => s.points.length) : [];
  if (!all.length) return;
  const pad = { l: 46, r: 10, t: 10, b: 22 };
  const pw = cw - pad.l - pad.r;
  const ph = ch - pad.t - pad.b;
  let lo = Infinity;
  let hi = -Infinity;
  for (const s of all) for (const [, v] of s.points) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (hi === lo) {
    const e = Math.abs(hi) * 0.1 || 1;
    lo -= e;
    hi += e;
  }
  const span = hi - lo;
  lo -= span * 0.08;
  hi += span * 0.08;
  const t0 = d.from;
  const t1 = d.to;
  const X = (t) => pad.l + ((t - t0) / (t1 - t0)) * pw;
  const Y = (v) => pad.t + (1 - (v - lo) / (hi - lo)) * ph;

  c.font = '11px system-ui, sans-serif';
  c.lineWidth = 1;
  c.strokeStyle = '#223140';
  c.fillStyle = '#8da0b3';
  c.textAlign = 'right';
  c.textBaseline = 'middle';
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    const y = Math.round(Y(v)) + 0.5;
    c.beginPath();
    c.moveTo(pad.l, y);
    c.lineTo(pad.l + pw, y);
    c.stroke();
    c.fillText(formatValue(v), pad.l - 5, y);
  }
  c.textAlign = 'center';
  c.textBaseline = 'top';
  const quarter = 15 * 60_000;
  for (let t = Math.ceil(t0 / quarter) * quarter; t <= t1; t += quarter) {
    const x = Math.round(X(t)) + 0.5;
    c.beginPath();
    c.moveTo(x, pad.t);
    c.lineTo(x, pad.t + ph);
    c.stroke();
    const dt = new Date(t);
    c.fillText(`${pad2(dt.getHours())}:${pad2(dt.getMinutes())}`, x, pad.t + ph + 5);
  }

  const gap = 3 * 60_000; // break the line where minutes are missing
  all.forEach((s, i) => {
    const color = SERIES_COLORS[i % SERIES_COLORS.length];
    c.strokeStyle = color;
    c.fillStyle = color;
    c.lineWidth = i === 0 ? 1.8 : 1.2;
    c.beginPath();
    let prev = null;
    for (const [t, v] of s.points) {
      const x = X(t);
      const y = Y(v);
      if (prev === null || t - prev > gap) c.moveTo(x, y);
      else c.lineTo(x, y);
      prev = t;
    }
    c.stroke();
    const [lt, lv] = s.points[s.points.length - 1];
    c.beginPath();
    c.arc(X(lt), Y(lv), 2.5, 0, 2 * Math.PI);
    c.fill();
  });
}

/** Load the chart now and again every CHART_REFRESH_MS. */
export function startChart() {
  loadChart();
  clearInterval(chartTimer);
  chartTimer = setInterval(loadChart, CHART_REFRESH_MS);
}

/** Stop re-reading; an answer still on its way is dropped. */
export function stopChart() {
  clearInterval(chartTimer);
  chartTimer = null;
  chart.seq += 1;
}
