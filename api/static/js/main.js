/*
 * CityOps operations center (一网统管): one map of districts, unit grid cells, sensors and
 * incidents (cells coloured by load or by case hotspot), an open-incident list, a drawer for
 * an incident (its workflow actions and a readings chart) or a service case (read-only), and
 * live updates over server-sent events.
 *
 * Plain ES modules with no build step, but for one vendored bundle, the vector tile decoder
 * (/static/vendor/mvt.js, from scripts/web.sh; without it a large grid is loaded whole):
 * this one wires the page's listeners, starts the first load and exposes window.CityOps. The map is one <canvas> in Web Mercator;
 * every redraw goes through requestAnimationFrame and draws each layer in a few batched
 * paths (one per colour), so 10,000 sensors and 10,000 grid cells stay smooth.
 *
 * Test hooks: elements carry data-testid attributes (see index.html) and window.CityOps
 * exposes the state, a `ready` promise, incidentScreenPoint(id) for clicking markers and
 * tiles(layer) for what the grid's or the sensors' vector tiles did.
 */
import { setLang, getLang, applyLabels } from './i18n.js';
import { state, view } from './store.js';
import { el } from './dom.js';
import { auth, obtainToken } from './http.js';
import { hideMessage } from './message.js';
import { setRenderers, invalidate } from './frame.js';
import { hasPos } from './records.js';
import { connectLive } from './live.js';
import { wireMap } from './map/interaction.js';
import { loadLayers } from './map/layers.js';
import { measureFrames } from './map/measure.js';
import { tileStats, grid, sensorTiles } from './map/vtiles.js';
import { toScreenX, toScreenY, unprojX, unprojY } from './map/projection.js';
import { drawMap } from './map/render.js';
import { resize, centerOn } from './map/view.js';
import { selectCase } from './panels/case.js';
import { loadChart } from './panels/chart.js';
import { renderDetail, closeDetail, selectIncident } from './panels/detail.js';
import { renderFeed } from './panels/feed.js';
import { restoreGridMode, setGridMode } from './panels/hotspots.js';
import { applyLanguage } from './panels/language.js';
import { renderList, onListActivate } from './panels/list.js';
import { loadQueue, loadDepartments } from './panels/queues.js';
import { loadPanels } from './panels/refresh.js';
import { onRoleChosen, switchRole, loadConfig } from './panels/signin.js';
import { renderStatus } from './panels/status.js';
import { setHours, showPast, renderTimeLabel, goLive } from './panels/timebar.js';
import { restoreToggles } from './panels/toggles.js';

function init() {
  setRenderers({ status: renderStatus, list: renderList, detail: renderDetail, map: drawMap });
  restoreToggles();
  restoreGridMode();
  wireMap();
  el.reload.addEventListener('click', () => loadLayers());
  el.messageClose.addEventListener('click', () => hideMessage());
  el.list.addEventListener('click', onListActivate);
  el.list.addEventListener('keydown', onListActivate);
  el.detailClose.addEventListener('click', closeDetail);
  el.detailSensors.addEventListener('click', (e) => {
    const node = e.target.closest('[data-device-id]');
    if (!node) return;
    state.chartDevice = node.dataset.deviceId;
    loadChart();
    invalidate('detail');
  });
  const openFrom = (e) => {
    const node = e.target.closest('[data-incident-id], [data-case-id]');
    if (!node || !e.currentTarget.contains(node)) return; // not the drawer's own ids
    if (e.type === 'keydown') {
      if (e.key !== 'Enter' && e.key !== ' ') return;
      e.preventDefault();
    }
    if (node.dataset.caseId) selectCase(node.dataset.caseId, state.caseRows.get(node.dataset.caseId) || null);
    else selectIncident(node.dataset.incidentId, { center: true });
  };
  for (const list of [el.feed, el.slaList, el.queueList, el.linkedCases, el.caseIncident]) {
    list.addEventListener('click', openFrom);
    list.addEventListener('keydown', openFrom);
  }
  el.queueSelect.addEventListener('change', loadQueue);
  for (const input of document.querySelectorAll('input[name="grid-mode"]')) {
    input.addEventListener('change', () => {
      if (input.checked) setGridMode(input.value);
    });
  }
  el.langToggle.addEventListener('click', () => {
    setLang(getLang() === 'zh' ? 'en' : 'zh');
    applyLanguage();
  });
  el.roleSelect.value = auth.role;
  el.deptSelect.hidden = auth.role !== 'department';
  el.roleSelect.addEventListener('change', onRoleChosen);
  el.deptSelect.addEventListener('change', () => {
    if (el.roleSelect.value === 'department' && el.deptSelect.value) switchRole('department', el.deptSelect.value);
  });
  el.timeHours.addEventListener('change', () => {
    setHours();
    if (state.replay) showPast();
  });
  el.timeSlider.addEventListener('input', renderTimeLabel);
  el.timeSlider.addEventListener('change', () => showPast());
  el.timeLive.addEventListener('click', () => goLive());
  setHours();
  applyLabels();
  el.langToggle.textContent = getLang() === 'zh' ? 'English' : '中文';
  renderFeed();
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && !el.detail.hidden) closeDetail();
  });

  if (typeof ResizeObserver === 'function') new ResizeObserver(resize).observe(el.mapArea);
  window.addEventListener('resize', resize);
  resize();

  // Relative times ("5 min ago") age on screen.
  setInterval(() => invalidate('list', 'detail'), 30_000);

  const ready = obtainToken().then(async () => {
    await loadConfig(); // the tile URL and the caller's role, before the first draw
    const loaded = loadLayers().then(() => {
      // Drawn on the next frame: the first load counts until the map is on screen.
      requestAnimationFrame(() => {
        document.body.dataset.ready = 'true';
        window.CityOps.readyAt = performance.now();
      });
    });
    connectLive(); // after loadLayers started, so early changes are buffered and replayed
    loadPanels();
    loadDepartments();
    return loaded;
  });

  window.CityOps = {
    state,
    view,
    ready,
    reload: loadLayers,
    selectIncident: (id) => selectIncident(id, { center: true }),
    selectCase: (id) => selectCase(id, state.caseRows.get(String(id)) || null),
    setGridMode,
    showPast,
    goLive,
    measureFrames,
    /** What the grid's (or with 'sensors' the sensors') vector tiles did: a copy. */
    tiles: (layer = 'grid') => tileStats(layer === 'sensors' ? sensorTiles : grid),
    /** Page (client) coordinates of an incident's marker, for tests that click it. */
    incidentScreenPoint(id) {
      const rec = state.incidents.get(String(id));
      if (!hasPos(rec)) return null;
      const r = el.canvas.getBoundingClientRect();
      return { x: r.left + toScreenX(rec.x), y: r.top + toScreenY(rec.y) };
    },
    /** Put an incident's marker in the middle of the visible map (for tests, screenshots). */
    centerIncident(id) {
      const rec = state.incidents.get(String(id));
      if (rec) centerOn(rec);
      drawMap();
      return Boolean(rec);
    },
    lonLatAt(clientX, clientY) {
      const r = el.canvas.getBoundingClientRect();
      return [unprojX((clientX - r.left - view.tx) / view.scale), unprojY((view.ty - (clientY - r.top)) / view.scale)];
    },
  };
}

init();
