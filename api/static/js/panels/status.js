/*
 * The header's status line: open incidents by severity, sensors in alarm, silent, in all.
 */
import { t } from '../i18n.js';
import { SEVERITIES } from '../constants.js';
import { state } from '../store.js';
import { el } from '../dom.js';
import { sensorTotal, tiledSensors } from '../map/sensortiles.js';

function setCount(node, n, label) {
  node.textContent = label ? `${n} ${label}` : String(n);
  node.classList.toggle('zero', n === 0);
  node.dataset.count = String(n);
}

export function renderStatus() {
  const sev = { warning: 0, minor: 0, major: 0, critical: 0 };
  for (const rec of state.incidents.values()) if (rec.props.severity in sev) sev[rec.props.severity] += 1;
  let alarm = 0;
  let silent = 0;
  for (const rec of state.sensors.values()) {
    if (rec.props.state === 'alarm') alarm += 1;
    else if (rec.props.state === 'silent') silent += 1;
  }
  for (const k of SEVERITIES) {
    setCount(el.counts[k], sev[k], t(`sev.${k}`));
    el.counts[k].textContent = `${t(`sev.${k}`)} ${sev[k]}`;
  }
  setCount(el.counts.alarm, alarm);
  el.counts.alarm.textContent = t('status.alarm', { n: alarm });
  setCount(el.counts.silent, silent);
  el.counts.silent.textContent = t('status.silent', { n: silent });
  // With the sensors' tiles, the records are the sensors not normal: the total is counted.
  const total = tiledSensors() && Number.isFinite(sensorTotal()) ? sensorTotal() : state.sensors.size;
  setCount(el.counts.sensors, total);
  el.counts.sensors.textContent = t('status.total', { n: total });
  el.canvas.dataset.sensors = String(state.sensors.size);
  el.canvas.dataset.incidents = String(state.incidents.size);
}
