/*
 * Re-reading the side panels (key figures, SLA board, queue, hotspots).
 */
import { loadHotspots } from './hotspots.js';
import { loadKpis } from './kpis.js';
import { loadQueue } from './queues.js';
import { loadSla } from './sla.js';

let panelTimer = null;

/** Re-read the panels shortly after a burst of live changes (at most every 2 s). */
export function schedulePanels() {
  if (panelTimer) return;
  panelTimer = setTimeout(() => {
    panelTimer = null;
    loadPanels();
  }, 2000);
}

export function loadPanels() {
  return Promise.all([loadKpis(), loadSla(), loadQueue(), loadHotspots()]);
}
