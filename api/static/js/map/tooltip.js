/*
 * The map's tooltip for what the pointer is over, and the hover mark it draws.
 */
import { t } from '../i18n.js';
import { SEVERITIES, SEV_ZH, STATE_ZH, HOTSPOT_HOURS } from '../constants.js';
import { view, state } from '../store.js';
import { el } from '../dom.js';
import { formatTime, relativeTime, formatValue } from '../format.js';
import { invalidate } from '../frame.js';
import { clusterAt, incidentAt, sensorAt, openIncidentOfSensor, cellAt } from './hittest.js';

function showTooltip(sx, sy, title, lines) {
  const t = el.tooltip;
  const b = document.createElement('b');
  b.textContent = title;
  t.replaceChildren(b, document.createTextNode(lines.length ? `\n${lines.join('\n')}` : ''));
  t.hidden = false;
  const tw = t.offsetWidth;
  const th = t.offsetHeight;
  let left = sx + 14;
  let top = sy + 14;
  if (left + tw > view.w - 4) left = Math.max(4, sx - tw - 14);
  if (top + th > view.h - 4) top = Math.max(4, sy - th - 14);
  t.style.left = `${left}px`;
  t.style.top = `${top}px`;
}

export function hideTooltip() {
  el.tooltip.hidden = true;
}

export function updateHover(sx, sy) {
  const cluster = clusterAt(sx, sy);
  const inc = cluster ? null : incidentAt(sx, sy);
  const prevId = state.hover && state.hover.kind === 'incident' ? state.hover.rec.id : null;
  if (cluster) {
    state.hover = { kind: 'cluster', rec: cluster };
    const sev = {};
    for (const r of cluster.recs) sev[r.props.severity] = (sev[r.props.severity] || 0) + 1;
    showTooltip(sx, sy, t('tip.cluster', { n: cluster.n }), SEVERITIES.slice().reverse().filter((k) => sev[k]).map((k) => `${t(`sev.${k}`)}: ${sev[k]}`));
  } else if (inc) {
    state.hover = { kind: 'incident', rec: inc };
    const p = inc.props;
    showTooltip(sx, sy, p.title || `Incident ${inc.id}`, [
      `${p.severity || '?'} ${SEV_ZH[p.severity] || ''} · ${p.status || 'open'} · alarm ${p.alarm_status || '?'}`,
      p.acknowledged ? 'acknowledged 已确认' : 'not acknowledged 未确认',
      `device ${p.device_id ?? '—'} · grid ${p.grid_code ?? '—'} · ${t('legend.cases')} ${p.linked_cases ?? 0}`,
      `opened ${formatTime(p.opened_at)} (${relativeTime(p.opened_at)})`,
      'click for details 点击查看',
    ]);
  } else {
    const sensor = sensorAt(sx, sy);
    if (sensor) {
      state.hover = { kind: 'sensor', rec: sensor };
      const p = sensor.props;
      const alarms = p.alarms && typeof p.alarms === 'object' ? Object.entries(p.alarms) : [];
      const lines = [
        `${p.sensor_type || 'sensor'} · ${p.state || '?'} ${STATE_ZH[p.state] || ''}`,
        `grid ${p.grid_code ?? '—'} · dept ${p.department_code ?? '—'}`,
      ];
      if (alarms.length) lines.push(`alarms: ${alarms.map(([rule, sev]) => `${rule} (${sev})`).join(', ')}`);
      if (openIncidentOfSensor(sensor.id)) lines.push('click for its open incident');
      showTooltip(sx, sy, `Sensor ${sensor.id}`, lines);
    } else {
      const cell = cellAt(sx, sy);
      if (cell) {
        state.hover = { kind: 'cell', rec: cell };
        const lines = [
          `district ${cell.props.district_code ?? '—'}`,
          `${cell.props.sensors ?? '—'} sensors · ${cell.count} open incidents`,
        ];
        const hot = state.gridMode === 'hotspot' ? state.hotspots.get(cell.code) : null;
        if (hot) lines.push(t('tip.hotspot', { n: hot.count, h: HOTSPOT_HOURS, m: formatValue(hot.mean), z: formatValue(hot.score) }));
        showTooltip(sx, sy, `Grid cell 网格 ${cell.code}`, lines);
      } else {
        state.hover = null;
        hideTooltip();
      }
    }
  }
  const pointing = state.hover && (state.hover.kind === 'incident' || state.hover.kind === 'cluster' || (state.hover.kind === 'sensor' && openIncidentOfSensor(state.hover.rec.id)));
  el.canvas.classList.toggle('pointing', Boolean(pointing));
  const nowId = state.hover && state.hover.kind === 'incident' ? state.hover.rec.id : null;
  if (nowId !== prevId) invalidate('map');
}
