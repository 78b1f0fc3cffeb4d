/*
 * The map's pointer, wheel and keyboard handling: drag to pan, wheel and keys to zoom,
 * click a marker (or a sensor with an open incident) to open it, a cluster to zoom in.
 */
import { view, state } from '../store.js';
import { el } from '../dom.js';
import { invalidate, guarded } from '../frame.js';
import { clusterAt, incidentAt, sensorAt, openIncidentOfSensor } from './hittest.js';
import { clamp } from './projection.js';
import { hideTooltip, updateHover } from './tooltip.js';
import { zoomAt, fitView } from './view.js';
import { selectIncident } from '../panels/detail.js';

function localPoint(e) {
  const r = el.canvas.getBoundingClientRect();
  return { x: e.clientX - r.left, y: e.clientY - r.top };
}

let drag = null;

function onPointerDown(e) {
  if (e.button !== 0) return;
  drag = { id: e.pointerId, x: e.clientX, y: e.clientY, tx: view.tx, ty: view.ty, moved: false };
  try {
    el.canvas.setPointerCapture(e.pointerId);
  } catch (_) {
    /* pointer already gone */
  }
}

function onPointerMove(e) {
  if (drag && e.pointerId === drag.id) {
    const dx = e.clientX - drag.x;
    const dy = e.clientY - drag.y;
    if (!drag.moved && dx * dx + dy * dy < 16) return;
    drag.moved = true;
    el.canvas.classList.add('dragging');
    hideTooltip();
    view.tx = drag.tx + dx;
    view.ty = drag.ty + dy;
    invalidate('map');
    return;
  }
  const p = localPoint(e);
  guarded(() => updateHover(p.x, p.y));
}

function onPointerUp(e) {
  if (!drag || e.pointerId !== drag.id) return;
  const moved = drag.moved;
  drag = null;
  el.canvas.classList.remove('dragging');
  if (!moved) {
    const p = localPoint(e);
    guarded(() => onMapClick(p.x, p.y));
  }
}

function onMapClick(sx, sy) {
  const cluster = clusterAt(sx, sy);
  if (cluster) {
    zoomAt(cluster.sx, cluster.sy, 3);
    return;
  }
  const inc = incidentAt(sx, sy);
  if (inc) {
    selectIncident(inc.id);
    return;
  }
  const sensor = sensorAt(sx, sy);
  if (sensor) {
    const open = openIncidentOfSensor(sensor.id);
    if (open) selectIncident(open.id);
  }
}

function onWheel(e) {
  e.preventDefault();
  let dy = e.deltaY;
  if (e.deltaMode === 1) dy *= 16;
  else if (e.deltaMode === 2) dy *= view.h;
  const p = localPoint(e);
  zoomAt(p.x, p.y, Math.exp(-clamp(dy, -300, 300) * 0.002));
  hideTooltip();
}

function onKey(e) {
  const step = 80;
  switch (e.key) {
    case '+':
    case '=':
      zoomAt(view.w / 2, view.h / 2, 1.5);
      break;
    case '-':
    case '_':
      zoomAt(view.w / 2, view.h / 2, 1 / 1.5);
      break;
    case '0':
      fitView();
      break;
    case 'ArrowLeft':
      view.tx += step;
      break;
    case 'ArrowRight':
      view.tx -= step;
      break;
    case 'ArrowUp':
      view.ty += step;
      break;
    case 'ArrowDown':
      view.ty -= step;
      break;
    default:
      return;
  }
  e.preventDefault();
  invalidate('map');
}

/** The map canvas's listeners and its zoom buttons. */
export function wireMap() {
  el.canvas.addEventListener('pointerdown', onPointerDown);
  el.canvas.addEventListener('pointermove', onPointerMove);
  el.canvas.addEventListener('pointerup', onPointerUp);
  el.canvas.addEventListener('pointercancel', () => {
    drag = null;
    el.canvas.classList.remove('dragging');
  });
  el.canvas.addEventListener('pointerleave', () => {
    if (drag) return;
    hideTooltip();
    if (state.hover) {
      state.hover = null;
      invalidate('map');
    }
  });
  el.canvas.addEventListener('wheel', onWheel, { passive: false });
  el.canvas.addEventListener('dblclick', (e) => {
    const p = localPoint(e);
    zoomAt(p.x, p.y, 2);
  });
  el.canvas.addEventListener('keydown', onKey);
  el.zoomIn.addEventListener('click', () => zoomAt(view.w / 2, view.h / 2, 1.5));
  el.zoomOut.addEventListener('click', () => zoomAt(view.w / 2, view.h / 2, 1 / 1.5));
  el.zoomFit.addEventListener('click', fitView);
}
