/*
 * CityOps operations center (一网统管): one map of districts, unit grid cells, sensors and
 * incidents (cells coloured by load or by case hotspot), an open-incident list, a drawer for
 * an incident (its workflow actions and a readings chart) or a service case (read-only), and
 * live updates over server-sent events.
 *
 * Plain ES2020, no dependencies, no build step. The map is one <canvas> in Web Mercator;
 * every redraw goes through requestAnimationFrame and draws each layer in a few batched
 * paths (one per colour), so 10,000 sensors and 10,000 grid cells stay smooth.
 *
 * Test hooks: elements carry data-testid attributes (see index.html) and window.CityOps
 * exposes the state, a `ready` promise and incidentScreenPoint(id) for clicking markers.
 */
'use strict';

(() => {
  const API = document.body.dataset.api || '/api/v1';
  const I18N = window.CityOpsI18n;
  const t = (key, vars) => I18N.t(key, vars);

  // Keep in sync with the CSS custom properties in app.css.
  const COLORS = {
    background: '#0b1118',
    districtFill: '#111c27',
    districtLine: '#5d88ad',
    gridLine: 'rgba(120, 155, 190, 0.28)',
    label: '#dce8f2',
    labelSub: '#9fb3c6',
    labelHalo: 'rgba(11, 17, 24, 0.9)',
    state: {
      normal: '#5fae7a',
      maintenance: '#d9a03a',
      silent: '#b065e8',
      alarm: '#ff4d4f',
      other: '#7d8a96',
    },
    severity: {
      other: '#9aa5b1',
      warning: '#e8c547',
      minor: '#f39237',
      major: '#ef4b3c',
      critical: '#e0206f',
    },
    // Grid cells by open incident count: 1, 2, 3-4, 5+.
    hot: [
      'rgba(255, 176, 64, 0.22)',
      'rgba(255, 140, 56, 0.34)',
      'rgba(255, 96, 56, 0.46)',
      'rgba(255, 48, 88, 0.58)',
    ],
    // Hotspot cells by z-score: at least 3 (the API's threshold), 5, 8.
    hotspot: {
      fill: ['rgba(199, 92, 255, 0.22)', 'rgba(199, 92, 255, 0.38)', 'rgba(226, 64, 255, 0.55)'],
      line: ['#b77cff', '#d36bff', '#f05cff'],
    },
    unacked: '#ffffff',
    selected: '#4fb3ff',
  };

  const SEVERITIES = ['warning', 'minor', 'major', 'critical']; // ascending
  const SEV_GROUPS = ['other', ...SEVERITIES]; // draw order: most severe on top
  const SEV_RANK = { warning: 1, minor: 2, major: 3, critical: 4 };
  const SEV_ZH = { warning: '一般', minor: '较大', major: '重大', critical: '特别重大' };
  const STATE_ORDER = ['other', 'normal', 'maintenance', 'silent', 'alarm']; // draw order
  const STATE_ZH = { normal: '正常', alarm: '告警', silent: '离线', maintenance: '维护' };
  const KIND_LABEL = { sensor_alarm: 'sensor alarm 设备告警', device_silent: 'device silent 设备离线' };
  const LAYERS = ['districts', 'grid', 'sensors', 'incidents'];
  const LIST_LIMIT = 500; // list items rendered; the rest are counted
  const LIST_MIN_INTERVAL_MS = 250; // list/status re-render at most 4x a second
  const CHART_REFRESH_MS = 60_000;
  const LAYER_TIMEOUT_MS = 60_000;
  const GRID_MODES = ['load', 'hotspot'];
  const HOTSPOT_HOURS = 24; // the window whose case counts are set against each cell's history
  const HOTSPOT_Z = [5, 8]; // bucket edges above the API's own threshold (z >= 3)

  // ---------------------------------------------------------------- elements

  const $ = (id) => document.getElementById(id);
  const el = {
    canvas: $('map'),
    mapArea: $('map-area'),
    tooltip: $('map-tooltip'),
    message: $('message'),
    messageText: $('message-text'),
    messageClose: $('message-close'),
    list: $('incident-list'),
    listEmpty: $('incident-list-empty'),
    listCount: document.querySelector('[data-testid="incident-count"]'),
    live: document.querySelector('[data-testid="live-indicator"]'),
    liveText: document.querySelector('[data-testid="live-indicator"] .live-text'),
    detail: $('detail'),
    detailTitle: $('detail-title'),
    detailSeverity: $('detail-severity'),
    detailNote: $('detail-note'),
    detailFields: $('detail-fields'),
    detailClose: $('detail-close'),
    actionNote: $('action-note'),
    actionButtons: $('action-buttons'),
    actionNone: $('action-none'),
    actionError: $('action-error'),
    actionOk: $('action-ok'),
    timeline: $('timeline'),
    linkedCases: $('linked-cases'),
    casesCount: $('cases-count'),
    detailSensors: $('detail-sensors'),
    roleSelect: $('role-select'),
    deptSelect: $('department-select'),
    incidentView: $('incident-view'),
    caseView: $('case-view'),
    caseFields: $('case-fields'),
    caseIncident: $('case-incident'),
    caseContact: $('case-contact'),
    caseTimeline: $('case-timeline'),
    legendNote: $('legend-hotspot-note'),
    userLabel: $('user-label'),
    langToggle: $('lang-toggle'),
    feed: $('alert-feed'),
    feedEmpty: $('feed-empty'),
    slaList: $('sla-list'),
    slaEmpty: $('sla-empty'),
    queueSelect: $('queue-select'),
    queueList: $('queue-list'),
    queueEmpty: $('queue-empty'),
    timeHours: $('time-hours'),
    timeSlider: $('time-slider'),
    timeValue: $('time-value'),
    timeLive: $('time-live'),
    replayBanner: $('replay-banner'),
    chart: $('chart'),
    chartMeta: $('chart-meta'),
    chartMessage: $('chart-message'),
    reload: $('reload-layers'),
    zoomIn: $('zoom-in'),
    zoomOut: $('zoom-out'),
    zoomFit: $('zoom-fit'),
    counts: {
      critical: document.querySelector('[data-testid="count-critical"]'),
      major: document.querySelector('[data-testid="count-major"]'),
      minor: document.querySelector('[data-testid="count-minor"]'),
      warning: document.querySelector('[data-testid="count-warning"]'),
      alarm: document.querySelector('[data-testid="count-alarm"]'),
      silent: document.querySelector('[data-testid="count-silent"]'),
      sensors: document.querySelector('[data-testid="count-sensors"]'),
    },
  };
  const ctx = el.canvas.getContext('2d');

  // ---------------------------------------------------------------- state

  const state = {
    districts: [], // {props, rings, bbox, label}
    grid: [], // {code, props, rings, bbox, count}
    gridByCode: new Map(),
    hotCells: [], // grid records with count > 0, rebuilt when hotDirty
    hotDirty: true,
    sensors: new Map(), // device_id -> {id, props, x, y}
    incidents: new Map(), // incident_id -> {id, props, x, y, t, rank}; open incidents only
    incidentGroups: null, // severity group -> records sorted by time; null when stale
    visible: { districts: true, grid: true, sensors: true, incidents: true },
    gridMode: 'load', // grid cells coloured by 'load' (open incidents) or 'hotspot'
    hotspots: new Map(), // grid_code -> {count, mean, stddev, score} from GET /hotspots
    hotspotsLoaded: false,
    hotspotsError: null,
    loaded: false,
    loading: null, // promise of the running layer load
    pending: null, // live changes buffered while layers load
    layerErrors: {},
    selectedId: null,
    selected: null, // record of the selected incident (kept even once it closes)
    selectedMissing: false,
    hover: null, // {kind, rec}
    freshUntil: new Map(), // incident id -> ms until which its list item flashes
    listPrimed: false,
    actionBusy: false,
    config: null, // GET /ops/config: the caller, their commands, tile_url
    detailExtra: null, // {linked_cases, sensors} of the selected incident
    allowed: null, // actions the caller may take on the selected incident now
    awaitVersion: null, // {id, version, tries}: the drawer waits for the read model to catch up
    timeline: null, // steps of the selected incident
    selectedCase: null, // {id, row, data, error}: the case the drawer shows instead
    caseRows: new Map(), // case_id -> its summary from the SLA board or a queue
    chartDevice: null, // the sensor whose readings the chart shows
    replay: null, // {at: ms, doc} while the map shows a past instant
    clusters: [], // incident clusters drawn in the last frame
    feed: [],
    lastChangeAt: null,
    changes: 0,
  };

  const view = {
    w: 0,
    h: 0,
    dpr: 1,
    scale: 1, // CSS pixels per projected unit
    tx: 0,
    ty: 0,
    fitScale: 1,
    fitted: false,
    cellSize: 0, // typical grid cell width in projected units
  };

  // ---------------------------------------------------------------- projection

  const DEG = Math.PI / 180;
  const MAX_LAT = 85.05112878;
  const projX = (lon) => lon * DEG;
  const projY = (lat) => {
    const l = Math.max(-MAX_LAT, Math.min(MAX_LAT, lat)) * DEG;
    return Math.log(Math.tan(Math.PI / 4 + l / 2));
  };
  const unprojX = (x) => x / DEG;
  const unprojY = (y) => (2 * Math.atan(Math.exp(y)) - Math.PI / 2) / DEG;
  const toScreenX = (x) => x * view.scale + view.tx;
  const toScreenY = (y) => view.ty - y * view.scale;
  const finite = (v) => typeof v === 'number' && Number.isFinite(v);
  const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));

  /** Projected rings (Float64Array [x0, y0, x1, y1, ...]) of a Polygon/MultiPolygon, or null. */
  function ringsOf(geom) {
    if (!geom || typeof geom !== 'object') return null;
    let polys = null;
    if (geom.type === 'Polygon') polys = [geom.coordinates];
    else if (geom.type === 'MultiPolygon') polys = geom.coordinates;
    if (!Array.isArray(polys)) return null;
    const rings = [];
    for (const poly of polys) {
      if (!Array.isArray(poly)) continue;
      for (const ring of poly) {
        if (!Array.isArray(ring) || ring.length < 3) continue;
        const a = new Float64Array(ring.length * 2);
        let n = 0;
        for (const c of ring) {
          if (!Array.isArray(c)) continue;
          const lon = Number(c[0]);
          const lat = Number(c[1]);
          if (!Number.isFinite(lon) || !Number.isFinite(lat)) continue;
          a[n++] = projX(lon);
          a[n++] = projY(lat);
        }
        if (n >= 6) rings.push(n === a.length ? a : a.slice(0, n));
      }
    }
    return rings.length ? rings : null;
  }

  function boundsOf(rings) {
    const b = [Infinity, Infinity, -Infinity, -Infinity];
    for (const r of rings) {
      for (let i = 0; i < r.length; i += 2) {
        if (r[i] < b[0]) b[0] = r[i];
        if (r[i] > b[2]) b[2] = r[i];
        if (r[i + 1] < b[1]) b[1] = r[i + 1];
        if (r[i + 1] > b[3]) b[3] = r[i + 1];
      }
    }
    return b;
  }

  /** Area-weighted centroid of the largest ring: where a district's label goes. */
  function labelPoint(rings, bbox) {
    let best = null;
    let bestArea = 0;
    for (const r of rings) {
      let a2 = 0;
      let cx = 0;
      let cy = 0;
      const n = r.length;
      for (let i = 0; i < n; i += 2) {
        const j = (i + 2) % n;
        const cross = r[i] * r[j + 1] - r[j] * r[i + 1];
        a2 += cross;
        cx += (r[i] + r[j]) * cross;
        cy += (r[i + 1] + r[j + 1]) * cross;
      }
      if (Math.abs(a2) > bestArea && a2 !== 0) {
        bestArea = Math.abs(a2);
        best = { x: cx / (3 * a2), y: cy / (3 * a2) };
      }
    }
    return best || { x: (bbox[0] + bbox[2]) / 2, y: (bbox[1] + bbox[3]) / 2 };
  }

  function pointOf(geom) {
    if (!geom || geom.type !== 'Point' || !Array.isArray(geom.coordinates)) return null;
    const lon = Number(geom.coordinates[0]);
    const lat = Number(geom.coordinates[1]);
    if (!Number.isFinite(lon) || !Number.isFinite(lat)) return null;
    return { x: projX(lon), y: projY(lat) };
  }

  function pointInRings(rings, x, y) {
    let inside = false; // even-odd over all rings handles holes
    for (const r of rings) {
      for (let i = 0, j = r.length - 2; i < r.length; j = i, i += 2) {
        const yi = r[i + 1];
        const yj = r[j + 1];
        if (yi > y !== yj > y && x < ((r[j] - r[i]) * (y - yi)) / (yj - yi) + r[i]) inside = !inside;
      }
    }
    return inside;
  }

  // ---------------------------------------------------------------- HTTP

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

  // ---------------------------------------------------------------- sign-in

  // The API wants a bearer token. A token given as #token=... (from `cityops token`) is
  // kept for this tab; without one, a development server hands out a token for the role
  // chosen (a department's for the department chosen).
  const TOKEN_KEY = 'cityops.token';
  const ROLE_KEY = 'cityops.role';
  const DEPT_KEY = 'cityops.department';
  const auth = {
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

  async function obtainToken(force = false) {
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
  async function request(url, options = {}, timeoutMs = 15_000, retried = false) {
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

  // ---------------------------------------------------------------- messages

  let messageKey = null;

  function showMessage(text, kind = 'error', key = 'general') {
    messageKey = key;
    el.messageText.textContent = text;
    el.message.classList.toggle('info', kind === 'info');
    el.message.dataset.kind = kind;
    el.message.hidden = false;
  }

  function hideMessage(key) {
    if (key && key !== messageKey) return;
    messageKey = null;
    el.message.hidden = true;
  }

  // ---------------------------------------------------------------- records

  function sensorRecord(feature) {
    const props = feature && feature.properties;
    if (!props || typeof props !== 'object') return null;
    const id = props.device_id != null ? String(props.device_id) : feature.id != null ? String(feature.id) : '';
    if (!id) return null;
    const p = pointOf(feature.geometry);
    return { id, props, x: p ? p.x : NaN, y: p ? p.y : NaN };
  }

  function incidentRecord(feature) {
    const props = feature && feature.properties;
    if (!props || typeof props !== 'object') return null;
    const id = props.incident_id != null ? String(props.incident_id) : feature.id != null ? String(feature.id) : '';
    if (!id) return null;
    const p = pointOf(feature.geometry);
    const t = Date.parse(props.opened_at);
    return {
      id,
      props,
      x: p ? p.x : NaN,
      y: p ? p.y : NaN,
      t: Number.isFinite(t) ? t : NaN,
      rank: SEV_RANK[props.severity] || 0,
    };
  }

  const isOpen = (rec) => rec && rec.props.status !== 'closed';
  const hasPos = (rec) => rec && finite(rec.x) && finite(rec.y);

  /** An incident without a point of its own sits on its sensor. */
  function placeIncident(rec) {
    if (hasPos(rec) || rec.props.device_id == null) return;
    const s = state.sensors.get(String(rec.props.device_id));
    if (hasPos(s)) {
      rec.x = s.x;
      rec.y = s.y;
    }
  }

  function bumpGrid(code, delta) {
    if (code == null) return;
    const cell = state.gridByCode.get(String(code));
    if (!cell) return;
    cell.count = Math.max(0, cell.count + delta);
    cell.props.open_incidents = cell.count;
    state.hotDirty = true;
  }

  /** Insert or update one incident from a live change, a GET or an acknowledge response. */
  function applyIncident(feature) {
    const rec = incidentRecord(feature);
    if (!rec) return;
    const prev = state.incidents.get(rec.id) || (state.selected && state.selected.id === rec.id ? state.selected : null);
    if (!hasPos(rec) && hasPos(prev)) {
      rec.x = prev.x;
      rec.y = prev.y;
    }
    placeIncident(rec);
    // Keep the grid cells' open-incident fill in step without reloading the grid layer.
    if (state.incidents.has(rec.id)) bumpGrid(prev.props.grid_code, -1);
    if (isOpen(rec)) {
      bumpGrid(rec.props.grid_code, +1);
      if (!state.incidents.has(rec.id) && state.listPrimed) state.freshUntil.set(rec.id, Date.now() + 2000);
      state.incidents.set(rec.id, rec);
    } else {
      state.incidents.delete(rec.id); // closed incidents leave the map and the list
    }
    state.incidentGroups = null;
    if (state.selectedId === rec.id) {
      state.selected = rec;
      state.selectedMissing = false;
      invalidate('detail');
    }
    invalidate('map', 'list', 'status');
  }

  function applySensor(feature) {
    const rec = sensorRecord(feature);
    if (!rec) return;
    const prev = state.sensors.get(rec.id);
    if (!hasPos(rec) && hasPos(prev)) {
      rec.x = prev.x;
      rec.y = prev.y;
    }
    state.sensors.set(rec.id, rec);
    if (state.selected && String(state.selected.props.device_id) === rec.id) invalidate('detail');
    invalidate('map', 'status');
  }

  function applyChange(msg) {
    if (!msg || typeof msg !== 'object' || !msg.feature) return;
    if (msg.layer === 'incidents') applyIncident(msg.feature);
    else if (msg.layer === 'sensors') applySensor(msg.feature);
  }

  // ---------------------------------------------------------------- layers

  function featuresOf(doc) {
    if (!doc || typeof doc !== 'object' || !Array.isArray(doc.features)) return null;
    return doc.features.filter((f) => f && typeof f === 'object');
  }

  const ingest = {
    districts(features) {
      const out = [];
      for (const f of features) {
        const rings = ringsOf(f.geometry);
        if (!rings) continue;
        const bbox = boundsOf(rings);
        out.push({ props: f.properties || {}, rings, bbox, label: labelPoint(rings, bbox) });
      }
      state.districts = out;
    },
    grid(features) {
      const out = [];
      const byCode = new Map();
      const widths = [];
      for (const f of features) {
        const rings = ringsOf(f.geometry);
        if (!rings) continue;
        const props = f.properties || {};
        const code = props.grid_code != null ? String(props.grid_code) : f.id != null ? String(f.id) : '';
        const count = Number(props.open_incidents);
        const rec = { code, props, rings, bbox: boundsOf(rings), count: Number.isFinite(count) && count > 0 ? count : 0 };
        out.push(rec);
        if (code) byCode.set(code, rec);
        if (widths.length < 400) widths.push(rec.bbox[2] - rec.bbox[0]);
      }
      widths.sort((a, b) => a - b);
      view.cellSize = widths.length ? widths[widths.length >> 1] : 0;
      state.grid = out;
      state.gridByCode = byCode;
      state.hotDirty = true;
    },
    sensors(features) {
      const map = new Map();
      for (const f of features) {
        const rec = sensorRecord(f);
        if (rec) map.set(rec.id, rec);
      }
      state.sensors = map;
    },
    incidents(features) {
      const map = new Map();
      for (const f of features) {
        const rec = incidentRecord(f);
        if (rec && isOpen(rec)) map.set(rec.id, rec);
      }
      state.incidents = map;
      state.incidentGroups = null;
    },
  };

  /** Load (or reload) layers; live changes arriving meanwhile are replayed afterwards. */
  function loadLayers(names = LAYERS) {
    if (state.replay) {
      live.missed = true; // the map shows the past: "live" reloads
      return Promise.resolve();
    }
    if (state.loading) return state.loading;
    state.pending = state.pending || [];
    const order = LAYERS.filter((n) => names.includes(n)); // sensors before incidents
    const hadBounds = dataBounds() !== null;
    state.loading = (async () => {
      const results = await Promise.all(order.map((n) => request(`${API}/map/layers/${n}`, {}, LAYER_TIMEOUT_MS)));
      order.forEach((name, i) => {
        const res = results[i];
        const features = res.ok ? featuresOf(res.data) : null;
        if (!res.ok) state.layerErrors[name] = res.error;
        else if (!features) state.layerErrors[name] = 'not a GeoJSON FeatureCollection';
        else {
          delete state.layerErrors[name];
          try {
            ingest[name](features);
          } catch (err) {
            state.layerErrors[name] = `could not read the layer (${err && err.message})`;
          }
        }
      });
      for (const rec of state.incidents.values()) placeIncident(rec);
      if (state.selectedId && state.incidents.has(state.selectedId)) state.selected = state.incidents.get(state.selectedId);
      state.loaded = true;
      const pending = state.pending || [];
      state.pending = null;
      for (const msg of pending) applyChange(msg);
      if (!view.fitted || !hadBounds) fitView(); // a reload keeps the operator's view
      reportLayers();
      invalidate('map', 'list', 'status', 'detail');
    })().finally(() => {
      state.loading = null;
      state.pending = null;
    });
    return state.loading;
  }

  function reportLayers() {
    const errors = Object.entries(state.layerErrors);
    if (errors.length) {
      const lines = errors.map(([name, err]) => `• ${name}: ${err}`);
      showMessage(`Could not load some map layers 图层加载失败:\n${lines.join('\n')}`, 'error', 'layers');
    } else if (!state.districts.length && !state.grid.length && !state.sensors.size && !state.incidents.size) {
      showMessage('The map layers are empty: no districts, grid cells, sensors or incidents yet. 暂无地图数据', 'info', 'layers');
    } else {
      hideMessage('layers');
    }
  }

  // ---------------------------------------------------------------- view

  function dataBounds() {
    const b = [Infinity, Infinity, -Infinity, -Infinity];
    const addBox = (bb) => {
      b[0] = Math.min(b[0], bb[0]);
      b[1] = Math.min(b[1], bb[1]);
      b[2] = Math.max(b[2], bb[2]);
      b[3] = Math.max(b[3], bb[3]);
    };
    if (state.districts.length) state.districts.forEach((d) => addBox(d.bbox));
    else if (state.grid.length) state.grid.forEach((g) => addBox(g.bbox));
    else {
      for (const coll of [state.sensors, state.incidents]) {
        for (const r of coll.values()) if (hasPos(r)) addBox([r.x, r.y, r.x, r.y]);
      }
    }
    return Number.isFinite(b[0]) ? b : null;
  }

  function fitView() {
    if (!view.w || !view.h) return;
    // Without data: central Shanghai.
    const b = dataBounds() || [projX(121.2), projY(31.0), projX(121.8), projY(31.45)];
    const minSpan = 0.0005; // about 3 km, so a single point does not zoom in forever
    const cx = (b[0] + b[2]) / 2;
    const cy = (b[1] + b[3]) / 2;
    const spanX = Math.max(b[2] - b[0], minSpan);
    const spanY = Math.max(b[3] - b[1], minSpan);
    const pad = 24;
    const s = Math.min((view.w - 2 * pad) / spanX, (view.h - 2 * pad) / spanY);
    view.scale = view.fitScale = Math.max(s, 1e-6);
    view.tx = view.w / 2 - cx * view.scale;
    view.ty = view.h / 2 + cy * view.scale;
    view.fitted = true;
    invalidate('map');
  }

  function zoomAt(sx, sy, factor) {
    const s0 = view.scale;
    const s1 = clamp(s0 * factor, view.fitScale / 4, view.fitScale * 4096);
    const wx = (sx - view.tx) / s0;
    const wy = (view.ty - sy) / s0;
    view.scale = s1;
    view.tx = sx - wx * s1;
    view.ty = sy + wy * s1;
    invalidate('map');
  }

  function centerOn(rec) {
    if (!hasPos(rec)) return;
    if (view.scale < view.fitScale * 4) view.scale = view.fitScale * 4;
    const panel = el.detail.hidden ? 0 : el.detail.offsetWidth || 0;
    const visibleW = Math.max(100, view.w - panel);
    view.tx = visibleW / 2 - rec.x * view.scale;
    view.ty = view.h / 2 + rec.y * view.scale;
    invalidate('map');
  }

  function resize() {
    const rect = el.mapArea.getBoundingClientRect();
    const w = Math.max(1, Math.round(rect.width));
    const h = Math.max(1, Math.round(rect.height));
    const dpr = window.devicePixelRatio || 1;
    if (view.fitted && view.w && view.h) {
      // Keep the same place in the middle of the screen.
      view.tx += (w - view.w) / 2;
      view.ty += (h - view.h) / 2;
    }
    view.w = w;
    view.h = h;
    view.dpr = dpr;
    el.canvas.width = Math.round(w * dpr);
    el.canvas.height = Math.round(h * dpr);
    if (!view.fitted && state.loaded) fitView();
    invalidate('map');
    if (!el.detail.hidden) drawChart();
  }

  // ---------------------------------------------------------------- render loop

  const dirty = { map: false, list: false, status: false, detail: false };
  let frameRequested = false;
  let lastListRender = 0;
  let listTimer = null;

  function invalidate(...parts) {
    for (const p of parts) dirty[p] = true;
    if (!frameRequested) {
      frameRequested = true;
      requestAnimationFrame(frame);
    }
  }

  function frame() {
    frameRequested = false;
    const now = performance.now();
    guarded(() => {
      if (dirty.list || dirty.status) {
        const wait = LIST_MIN_INTERVAL_MS - (now - lastListRender);
        if (wait > 0) {
          if (!listTimer) {
            listTimer = setTimeout(() => {
              listTimer = null;
              invalidate();
            }, wait);
          }
        } else {
          lastListRender = now;
          if (dirty.status) {
            dirty.status = false;
            renderStatus();
          }
          if (dirty.list) {
            dirty.list = false;
            renderList();
          }
        }
      }
    });
    if (dirty.detail) {
      dirty.detail = false;
      guarded(renderDetail);
    }
    if (dirty.map) {
      dirty.map = false;
      guarded(drawMap);
    }
  }

  function guarded(fn) {
    try {
      fn();
    } catch (err) {
      showMessage(`Display error: ${err && err.message ? err.message : err}`, 'error', 'render');
    }
  }

  // ---------------------------------------------------------------- map drawing

  // Grid cell outlines only once a cell is this wide on screen: stroking thousands of
  // tiny cells is what costs most per frame on a software-rendered canvas.
  const GRID_OUTLINE_PX = 16;

  function sensorRadius() {
    const z = Math.log2(view.scale / view.fitScale);
    return clamp(1.5 + z * 0.6, 1.5, 5);
  }

  function incidentRadius(rec) {
    const z = Math.log2(view.scale / view.fitScale);
    return 4 + (rec.rank || 0.5) + clamp(z * 0.5, 0, 3);
  }

  function incidentGroups() {
    if (state.incidentGroups) return state.incidentGroups;
    const groups = {};
    for (const g of SEV_GROUPS) groups[g] = [];
    for (const rec of state.incidents.values()) {
      const g = SEV_RANK[rec.props.severity] ? rec.props.severity : 'other';
      groups[g].push(rec);
    }
    for (const g of SEV_GROUPS) groups[g].sort((a, b) => (a.t || 0) - (b.t || 0)); // newest on top
    state.incidentGroups = groups;
    return groups;
  }

  function addRings(path, rings, s, tx, ty) {
    for (const r of rings) {
      path.moveTo(r[0] * s + tx, ty - r[1] * s);
      for (let i = 2; i < r.length; i += 2) path.lineTo(r[i] * s + tx, ty - r[i + 1] * s);
      path.closePath();
    }
  }

  function drawMap() {
    const { w, h, dpr } = view;
    if (!w || !h) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = COLORS.background;
    ctx.fillRect(0, 0, w, h);
    if (!view.fitted) {
      drawCenterText(state.loading || !state.loaded ? t('map.loading') : t('map.empty'));
      return;
    }
    const s = view.scale;
    const tx = view.tx;
    const ty = view.ty;
    // The viewport in projected units, with a margin for strokes and markers.
    const m = 12 / s;
    const vx0 = -tx / s - m;
    const vx1 = (w - tx) / s + m;
    const vy0 = (ty - h) / s - m;
    const vy1 = ty / s + m;
    const inView = (b) => b[2] >= vx0 && b[0] <= vx1 && b[3] >= vy0 && b[1] <= vy1;
    const showDistricts = state.visible.districts && state.districts.length > 0;

    drawTiles(s, tx, ty);
    if (showDistricts && !(state.config && state.config.tile_url)) {
      const fill = new Path2D();
      for (const d of state.districts) if (inView(d.bbox)) addRings(fill, d.rings, s, tx, ty);
      ctx.fillStyle = COLORS.districtFill;
      ctx.fill(fill, 'evenodd');
    }

    if (state.visible.grid && state.grid.length) {
      if (state.gridMode !== 'hotspot') {
        const buckets = COLORS.hot.map(() => new Path2D());
        for (const c of colouredCells()) {
          if (!inView(c.bbox)) continue;
          const i = c.count >= 5 ? 3 : c.count >= 3 ? 2 : c.count - 1;
          addRings(buckets[i], c.rings, s, tx, ty);
        }
        buckets.forEach((p, i) => {
          ctx.fillStyle = COLORS.hot[i];
          ctx.fill(p, 'evenodd');
        });
      }
      // Cell outlines only once cells are big enough on screen to be told apart.
      const cellPx = view.cellSize * s;
      if (cellPx >= GRID_OUTLINE_PX) {
        const lines = new Path2D();
        for (const c of state.grid) if (inView(c.bbox)) addRings(lines, c.rings, s, tx, ty);
        ctx.strokeStyle = COLORS.gridLine;
        ctx.lineWidth = cellPx >= 24 ? 0.8 : 0.5;
        ctx.stroke(lines);
      }
      // Hotspots are few: filled and outlined at every scale, so they show city-wide.
      if (state.gridMode === 'hotspot') {
        const buckets = COLORS.hotspot.fill.map(() => new Path2D());
        for (const c of colouredCells()) {
          if (inView(c.bbox)) addRings(buckets[hotspotBucket(state.hotspots.get(c.code).score)], c.rings, s, tx, ty);
        }
        buckets.forEach((p, i) => {
          ctx.fillStyle = COLORS.hotspot.fill[i];
          ctx.fill(p, 'evenodd');
          ctx.strokeStyle = COLORS.hotspot.line[i];
          ctx.lineWidth = 1.2 + i * 0.6;
          ctx.stroke(p);
        });
      }
    }

    if (showDistricts) {
      const outline = new Path2D();
      for (const d of state.districts) if (inView(d.bbox)) addRings(outline, d.rings, s, tx, ty);
      ctx.strokeStyle = COLORS.districtLine;
      ctx.lineWidth = 1.4;
      ctx.lineJoin = 'round';
      ctx.stroke(outline);
    }

    if (state.visible.sensors && state.sensors.size) drawSensors(s, tx, ty, vx0, vx1, vy0, vy1);
    if (showDistricts) drawDistrictLabels(s, tx, ty, inView);
    if (state.visible.incidents && state.incidents.size) drawIncidents(s, tx, ty, vx0, vx1, vy0, vy1);

    const nothing = !state.districts.length && !state.grid.length && !state.sensors.size && !state.incidents.size;
    if (nothing) drawCenterText(state.loading ? t('map.loading') : t('map.empty'));
  }

  const hotspotBucket = (score) => (score >= HOTSPOT_Z[1] ? 2 : score >= HOTSPOT_Z[0] ? 1 : 0);

  /** The grid cells the current colouring fills: loaded cells, or hotspots. */
  function colouredCells() {
    if (state.gridMode === 'hotspot') {
      const out = [];
      for (const code of state.hotspots.keys()) {
        const cell = state.gridByCode.get(code);
        if (cell) out.push(cell);
      }
      return out;
    }
    if (state.hotDirty) {
      state.hotCells = state.grid.filter((c) => c.count > 0);
      state.hotDirty = false;
    }
    return state.hotCells;
  }

  function drawSensors(s, tx, ty, vx0, vx1, vy0, vy1) {
    const r = sensorRadius();
    const round = r >= 2.5;
    const paths = {};
    for (const k of STATE_ORDER) paths[k] = new Path2D();
    for (const rec of state.sensors.values()) {
      const x = rec.x;
      const y = rec.y;
      if (!(x >= vx0 && x <= vx1 && y >= vy0 && y <= vy1)) continue; // also skips NaN
      const st = rec.props.state;
      const p = paths[st] && st !== 'other' ? paths[st] : paths.other;
      const rr = st === 'alarm' ? r * 1.35 : r;
      const sx = x * s + tx;
      const sy = ty - y * s;
      if (round) {
        p.moveTo(sx + rr, sy);
        p.arc(sx, sy, rr, 0, 2 * Math.PI);
      } else {
        p.rect(sx - rr, sy - rr, 2 * rr, 2 * rr);
      }
    }
    for (const k of STATE_ORDER) {
      ctx.fillStyle = COLORS.state[k];
      ctx.fill(paths[k]);
    }
  }

  function drawDistrictLabels(s, tx, ty, inView) {
    ctx.textAlign = 'center';
    ctx.textBaseline = 'middle';
    ctx.lineJoin = 'round';
    for (const d of state.districts) {
      if (!inView(d.bbox)) continue;
      const widthPx = (d.bbox[2] - d.bbox[0]) * s;
      if (widthPx < 60) continue;
      const x = d.label.x * s + tx;
      const y = ty - d.label.y * s;
      const name = d.props.name != null ? String(d.props.name) : d.props.district_code != null ? String(d.props.district_code) : '';
      const zh = d.props.name_zh != null ? String(d.props.name_zh) : '';
      ctx.lineWidth = 3;
      ctx.strokeStyle = COLORS.labelHalo;
      ctx.font = '600 12px system-ui, "PingFang SC", "Microsoft YaHei", "Noto Sans CJK SC", sans-serif';
      ctx.fillStyle = COLORS.label;
      const y1 = zh ? y - 7 : y;
      ctx.strokeText(name, x, y1);
      ctx.fillText(name, x, y1);
      if (zh) {
        ctx.font = '11px system-ui, "PingFang SC", "Microsoft YaHei", "Noto Sans CJK SC", sans-serif';
        ctx.fillStyle = COLORS.labelSub;
        ctx.strokeText(zh, x, y + 7);
        ctx.fillText(zh, x, y + 7);
      }
    }
  }

  // Above this many incidents in view, markers closer than CLUSTER_PX merge into clusters.
  const CLUSTER_MIN = 300;
  const CLUSTER_PX = 44;

  function clusterIncidents(recs, s, tx, ty) {
    const cells = new Map();
    for (const rec of recs) {
      const sx = rec.x * s + tx;
      const sy = ty - rec.y * s;
      const key = `${Math.floor(sx / CLUSTER_PX)}:${Math.floor(sy / CLUSTER_PX)}`;
      let c = cells.get(key);
      if (!c) {
        c = { n: 0, sx: 0, sy: 0, rank: 0, sev: 'other', cases: 0, recs: [] };
        cells.set(key, c);
      }
      c.n += 1;
      c.sx += sx;
      c.sy += sy;
      c.cases += Number(rec.props.linked_cases) || 0;
      c.recs.push(rec);
      if (rec.rank > c.rank) {
        c.rank = rec.rank;
        c.sev = rec.props.severity;
      }
    }
    const out = [];
    for (const c of cells.values()) {
      c.sx /= c.n;
      c.sy /= c.n;
      c.r = 9 + Math.min(14, Math.log2(c.n) * 2.5);
      out.push(c);
    }
    return out;
  }

  function drawIncidents(s, tx, ty, vx0, vx1, vy0, vy1) {
    const groups = incidentGroups();
    const visibleRec = (rec) => rec.x >= vx0 && rec.x <= vx1 && rec.y >= vy0 && rec.y <= vy1;
    let inView = 0;
    for (const rec of state.incidents.values()) if (visibleRec(rec)) inView += 1;
    state.clusters = [];
    const singles = [];
    if (inView > CLUSTER_MIN) {
      const visible = [];
      for (const rec of state.incidents.values()) if (visibleRec(rec)) visible.push(rec);
      for (const c of clusterIncidents(visible, s, tx, ty)) {
        if (c.n === 1) singles.push(c.recs[0]);
        else state.clusters.push(c);
      }
    }
    const clustered = inView > CLUSTER_MIN;
    const singleSet = clustered ? new Set(singles) : null;
    for (const g of SEV_GROUPS) {
      const recs = groups[g];
      if (!recs.length) continue;
      const fill = new Path2D();
      const rings = new Path2D();
      let any = false;
      for (const rec of recs) {
        if (!visibleRec(rec) || (singleSet && !singleSet.has(rec))) continue;
        any = true;
        const r = incidentRadius(rec);
        const sx = rec.x * s + tx;
        const sy = ty - rec.y * s;
        fill.moveTo(sx + r, sy);
        fill.arc(sx, sy, r, 0, 2 * Math.PI);
        if (!rec.props.acknowledged) {
          rings.moveTo(sx + r + 3.5, sy);
          rings.arc(sx, sy, r + 3.5, 0, 2 * Math.PI);
        }
      }
      if (!any) continue;
      ctx.fillStyle = COLORS.severity[g];
      ctx.fill(fill);
      ctx.strokeStyle = COLORS.background;
      ctx.lineWidth = 1.5;
      ctx.stroke(fill);
      ctx.strokeStyle = COLORS.unacked;
      ctx.lineWidth = 1.8;
      ctx.stroke(rings);
    }
    ctx.textAlign = 'center';
    ctx.textBaseline = 'middle';
    // Linked-case counts: a small badge on markers a citizen's report is linked to.
    if (!clustered || singles.length < 400) {
      ctx.font = '600 10px system-ui, sans-serif';
      for (const rec of clustered ? singles : state.incidents.values()) {
        const n = Number(rec.props.linked_cases) || 0;
        if (!n || !visibleRec(rec)) continue;
        const r = incidentRadius(rec);
        const bx = rec.x * s + tx + r * 0.9;
        const by = ty - rec.y * s - r * 0.9;
        ctx.beginPath();
        ctx.arc(bx, by, 7, 0, 2 * Math.PI);
        ctx.fillStyle = '#4fb3ff';
        ctx.fill();
        ctx.fillStyle = '#04121f';
        ctx.fillText(n > 99 ? '99+' : String(n), bx, by + 0.5);
      }
    }
    if (state.clusters.length) {
      ctx.font = '600 11px system-ui, sans-serif';
      for (const c of state.clusters) {
        ctx.beginPath();
        ctx.arc(c.sx, c.sy, c.r, 0, 2 * Math.PI);
        ctx.fillStyle = COLORS.severity[SEV_RANK[c.sev] ? c.sev : 'other'];
        ctx.globalAlpha = 0.85;
        ctx.fill();
        ctx.globalAlpha = 1;
        ctx.strokeStyle = 'rgba(255,255,255,0.85)';
        ctx.lineWidth = 1.5;
        ctx.stroke();
        ctx.fillStyle = '#0b1118';
        ctx.fillText(c.n > 999 ? `${Math.round(c.n / 100) / 10}k` : String(c.n), c.sx, c.sy + 0.5);
      }
    }
    const mark = (rec, extra, color, width) => {
      if (!hasPos(rec)) return;
      const r = incidentRadius(rec) + extra;
      ctx.beginPath();
      ctx.arc(rec.x * s + tx, ty - rec.y * s, r, 0, 2 * Math.PI);
      ctx.strokeStyle = color;
      ctx.lineWidth = width;
      ctx.stroke();
    };
    const hover = state.hover && state.hover.kind === 'incident' ? state.incidents.get(state.hover.rec.id) : null;
    if (hover && hover.id !== state.selectedId) mark(hover, 6, 'rgba(255,255,255,0.7)', 1.2);
    const sel = state.selectedId ? state.incidents.get(state.selectedId) : null;
    if (sel) mark(sel, 7, COLORS.selected, 2.5);
  }

  function clusterAt(sx, sy) {
    if (!state.visible.incidents) return null;
    for (const c of state.clusters) {
      const dx = c.sx - sx;
      const dy = c.sy - sy;
      if (dx * dx + dy * dy <= (c.r + 3) * (c.r + 3)) return c;
    }
    return null;
  }

  // ---------------------------------------------------------------- raster tiles

  // Only when the deployment names a tile server (GET /ops/config tile_url); the page
  // itself never reaches beyond its own origin.
  const tiles = { cache: new Map() };

  function drawTiles(s, tx, ty) {
    const url = state.config && state.config.tile_url;
    if (!url) return;
    const world = 2 * Math.PI;
    const z = clamp(Math.round(Math.log2((world * s) / 256)), 0, 19);
    const n = 2 ** z;
    const size = (world / n) * s; // tile size in CSS pixels
    const x0 = Math.floor(((-tx / s + Math.PI) / world) * n);
    const x1 = Math.floor((((view.w - tx) / s + Math.PI) / world) * n);
    const y0 = Math.floor(((Math.PI - ty / s) / world) * n);
    const y1 = Math.floor(((Math.PI - (ty - view.h) / s) / world) * n);
    for (let x = Math.max(0, x0); x <= Math.min(n - 1, x1); x++) {
      for (let y = Math.max(0, y0); y <= Math.min(n - 1, y1); y++) {
        const src = url.replace('{z}', z).replace('{x}', x).replace('{y}', y);
        let img = tiles.cache.get(src);
        if (!img) {
          if (tiles.cache.size > 400) tiles.cache.delete(tiles.cache.keys().next().value);
          img = new Image();
          img.onload = () => invalidate('map');
          img.src = src;
          tiles.cache.set(src, img);
        }
        if (img.complete && img.naturalWidth) {
          const px = (x / n) * world - Math.PI;
          const py = Math.PI - (y / n) * world;
          ctx.drawImage(img, px * s + tx, ty - py * s, size + 0.5, size + 0.5);
        }
      }
    }
  }

  function drawCenterText(text) {
    ctx.textAlign = 'center';
    ctx.textBaseline = 'middle';
    ctx.font = '15px system-ui, "PingFang SC", "Microsoft YaHei", sans-serif';
    ctx.fillStyle = '#8da0b3';
    ctx.fillText(text, view.w / 2, view.h / 2);
  }

  // ---------------------------------------------------------------- hit testing

  function incidentAt(sx, sy) {
    if (!state.visible.incidents) return null;
    let best = null;
    let bestD = Infinity;
    const clustered = state.clusters.length ? new Set(state.clusters.flatMap((c) => c.recs)) : null;
    for (const rec of state.incidents.values()) {
      if (!hasPos(rec) || (clustered && clustered.has(rec))) continue;
      const dx = toScreenX(rec.x) - sx;
      const dy = toScreenY(rec.y) - sy;
      const d = dx * dx + dy * dy;
      const r = incidentRadius(rec) + 4;
      // Prefer the nearest; on a tie the more severe one (it is drawn on top).
      if (d <= r * r && (d < bestD || (d === bestD && rec.rank > best.rank))) {
        best = rec;
        bestD = d;
      }
    }
    return best;
  }

  function sensorAt(sx, sy) {
    if (!state.visible.sensors) return null;
    const r = sensorRadius() + 3;
    let best = null;
    let bestD = r * r;
    for (const rec of state.sensors.values()) {
      if (!hasPos(rec)) continue;
      const dx = toScreenX(rec.x) - sx;
      const dy = toScreenY(rec.y) - sy;
      const d = dx * dx + dy * dy;
      if (d <= bestD) {
        best = rec;
        bestD = d;
      }
    }
    return best;
  }

  function cellAt(sx, sy) {
    if (!state.visible.grid || !state.grid.length) return null;
    const x = (sx - view.tx) / view.scale;
    const y = (view.ty - sy) / view.scale;
    const showAll = view.cellSize * view.scale >= GRID_OUTLINE_PX;
    const cells = showAll ? state.grid : colouredCells();
    for (const c of cells) {
      const b = c.bbox;
      if (x < b[0] || x > b[2] || y < b[1] || y > b[3]) continue;
      if (pointInRings(c.rings, x, y)) return c;
    }
    return null;
  }

  function openIncidentOfSensor(deviceId) {
    let best = null;
    for (const rec of state.incidents.values()) {
      if (String(rec.props.device_id) !== deviceId) continue;
      if (!best || rec.rank > best.rank || (rec.rank === best.rank && rec.t > best.t)) best = rec;
    }
    return best;
  }

  // ---------------------------------------------------------------- tooltip

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

  function hideTooltip() {
    el.tooltip.hidden = true;
  }

  function updateHover(sx, sy) {
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
            `${cell.props.sensors ?? 0} sensors · ${cell.count} open incidents`,
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

  // ---------------------------------------------------------------- interaction

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

  // ---------------------------------------------------------------- formatting

  const pad2 = (n) => String(n).padStart(2, '0');

  function formatTime(iso) {
    const t = Date.parse(iso);
    if (!Number.isFinite(t)) return '—';
    const d = new Date(t);
    const today = new Date();
    const hms = `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
    if (d.toDateString() === today.toDateString()) return hms;
    return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${hms}`;
  }

  function relativeTime(iso) {
    const t = Date.parse(iso);
    if (!Number.isFinite(t)) return '—';
    const s = Math.round((Date.now() - t) / 1000);
    if (s < 45) return 'just now';
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }

  /** How long until a deadline, or how long since it passed. */
  function untilTime(iso) {
    const ms = Date.parse(iso) - Date.now();
    if (!Number.isFinite(ms)) return '—';
    const mins = Math.round(Math.abs(ms) / 60_000);
    const d = mins >= 1440 ? `${Math.floor(mins / 1440)} d ${Math.floor((mins % 1440) / 60)} h` : mins >= 60 ? `${Math.floor(mins / 60)} h ${mins % 60} min` : `${mins} min`;
    return t(ms >= 0 ? 'case.due_in' : 'case.due_ago', { d });
  }

  function formatValue(v) {
    const n = Number(v);
    if (v == null || v === '' || !Number.isFinite(n)) return v == null ? '—' : String(v);
    const a = Math.abs(n);
    if (a >= 1000 || Number.isInteger(n)) return String(Math.round(n * 10) / 10);
    if (a >= 10) return n.toFixed(1);
    if (a >= 1) return n.toFixed(2);
    return n.toPrecision(3);
  }

  // ---------------------------------------------------------------- status line

  function setCount(node, n, label) {
    node.textContent = label ? `${n} ${label}` : String(n);
    node.classList.toggle('zero', n === 0);
    node.dataset.count = String(n);
  }

  function renderStatus() {
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
    setCount(el.counts.sensors, state.sensors.size);
    el.counts.sensors.textContent = t('status.total', { n: state.sensors.size });
    el.canvas.dataset.sensors = String(state.sensors.size);
    el.canvas.dataset.incidents = String(state.incidents.size);
  }

  // ---------------------------------------------------------------- incident list

  function sortedOpenIncidents() {
    const out = Array.from(state.incidents.values());
    out.sort((a, b) => {
      if (b.rank !== a.rank) return b.rank - a.rank;
      const ta = Number.isFinite(a.t) ? a.t : -Infinity;
      const tb = Number.isFinite(b.t) ? b.t : -Infinity;
      if (tb !== ta) return tb - ta; // newest first
      return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
    });
    return out;
  }

  function renderList() {
    const items = sortedOpenIncidents();
    const now = Date.now();
    el.listCount.textContent = String(items.length);
    const incidentsError = state.layerErrors.incidents;
    el.listEmpty.hidden = items.length > 0;
    el.listEmpty.textContent = incidentsError
      ? `Incidents could not be loaded: ${incidentsError}`
      : state.loaded
        ? t('list.empty')
        : t('list.loading');
    const frag = document.createDocumentFragment();
    for (const rec of items.slice(0, LIST_LIMIT)) {
      const p = rec.props;
      const li = document.createElement('li');
      li.className = 'incident-item';
      li.tabIndex = 0;
      li.dataset.testid = 'incident-item';
      li.dataset.incidentId = rec.id;
      li.dataset.severity = p.severity || '';
      li.dataset.acknowledged = p.acknowledged ? 'true' : 'false';
      if (!p.acknowledged) li.classList.add('unacked');
      if (rec.id === state.selectedId) li.classList.add('selected');
      const until = state.freshUntil.get(rec.id);
      if (until) {
        if (until > now) {
          li.classList.add('fresh');
          li.style.animationDelay = `${-(2000 - (until - now))}ms`;
        } else state.freshUntil.delete(rec.id);
      }
      const dot = document.createElement('span');
      dot.className = 'sev-dot';
      dot.style.setProperty('--c', COLORS.severity[SEV_RANK[p.severity] ? p.severity : 'other']);
      dot.title = `${p.severity || 'unknown'} ${SEV_ZH[p.severity] || ''}`;
      const title = document.createElement('span');
      title.className = 'title';
      title.textContent = p.title || `Incident ${rec.id}`;
      title.title = title.textContent;
      const time = document.createElement('span');
      time.className = 'time';
      time.textContent = relativeTime(p.opened_at);
      time.title = `opened ${formatTime(p.opened_at)}`;
      const meta = document.createElement('span');
      meta.className = 'meta';
      const parts = [t(`sev.${p.severity}`), p.grid_code ? `${t('field.grid')} ${p.grid_code}` : null, p.department_code || null];
      if (p.trigger_count > 1) parts.push(`×${p.trigger_count}`);
      if (p.linked_cases > 0) parts.push(`${t('legend.cases')} ${p.linked_cases}`);
      if (!p.acknowledged) parts.push(t('legend.unacked'));
      meta.textContent = parts.filter(Boolean).join(' · ');
      li.append(dot, title, time, meta);
      frag.append(li);
    }
    if (items.length > LIST_LIMIT) {
      const more = document.createElement('li');
      more.className = 'incident-more';
      more.textContent = t('list.more', { n: items.length - LIST_LIMIT });
      frag.append(more);
    }
    el.list.replaceChildren(frag);
    state.listPrimed = state.loaded;
  }

  function onListActivate(e) {
    const li = e.target.closest('[data-incident-id]');
    if (!li) return;
    if (e.type === 'keydown' && e.key !== 'Enter' && e.key !== ' ') return;
    e.preventDefault();
    selectIncident(li.dataset.incidentId, { center: true });
  }

  // ---------------------------------------------------------------- detail drawer

  let chartTimer = null;
  const ACTION_ORDER = ['acknowledge', 'dispatch', 'accept', 'resolve', 'verify'];

  function selectIncident(id, { center = false } = {}) {
    id = String(id);
    const rec = state.incidents.get(id) || (state.selected && state.selected.id === id ? state.selected : null);
    const changed = state.selectedId !== id;
    state.selectedId = id;
    state.selected = rec;
    state.selectedMissing = false;
    state.selectedCase = null;
    showView('incident');
    if (changed) {
      delete el.detail.dataset.loaded;
      el.actionNote.value = '';
      el.actionError.hidden = true;
      el.actionOk.hidden = true;
      state.detailExtra = null;
      state.allowed = null;
      state.timeline = null;
      state.chartDevice = rec && rec.props.device_id != null ? String(rec.props.device_id) : null;
    }
    el.detail.hidden = false;
    if (center && rec) centerOn(rec);
    invalidate('detail', 'list', 'map');
    refreshSelected(id);
    loadChart();
    clearInterval(chartTimer);
    chartTimer = setInterval(loadChart, CHART_REFRESH_MS);
  }

  function closeDetail() {
    state.selectedId = null;
    state.selected = null;
    state.selectedCase = null;
    el.detail.hidden = true;
    delete el.detail.dataset.incidentId;
    delete el.detail.dataset.caseId;
    stopChart();
    invalidate('list', 'map');
    markSelectedCase();
  }

  function stopChart() {
    clearInterval(chartTimer);
    chartTimer = null;
    chart.seq += 1;
  }

  /** The drawer shows an incident or a case; the other's id leaves its attributes. */
  function showView(kind) {
    el.detail.dataset.kind = kind;
    el.incidentView.hidden = kind !== 'incident';
    el.caseView.hidden = kind !== 'case';
    if (kind === 'case') delete el.detail.dataset.incidentId;
    else delete el.detail.dataset.caseId;
  }

  // ---------------------------------------------------------------- case drawer

  /** Open a service case, read-only; ``row`` is its summary from the list it was in. */
  function selectCase(id, row = null) {
    id = String(id);
    if (state.selectedId) {
      state.selectedId = null;
      state.selected = null;
      stopChart();
    }
    if (!state.selectedCase || state.selectedCase.id !== id) {
      state.selectedCase = { id, row, data: null, error: null };
      delete el.detail.dataset.loaded;
    } else if (row) {
      state.selectedCase.row = row;
    }
    showView('case');
    el.detail.dataset.caseId = id;
    el.detail.hidden = false;
    invalidate('detail', 'list', 'map');
    markSelectedCase();
    refreshCase(id);
  }

  async function refreshCase(id) {
    const res = await request(`${API}/cases/${encodeURIComponent(id)}`);
    const sel = state.selectedCase;
    if (!sel || sel.id !== id) return;
    sel.data = res.ok ? res.data : null;
    sel.error = res.ok ? null : { status: res.status, text: res.error };
    el.detail.dataset.loaded = 'true';
    invalidate('detail');
  }

  function markSelectedCase() {
    const id = state.selectedCase ? state.selectedCase.id : null;
    for (const node of document.querySelectorAll('.mini-list [data-case-id]')) node.classList.toggle('selected', node.dataset.caseId === id);
  }

  /** The incident a case is linked to: its summary says, or its LinkedToIncident event. */
  function linkedIncidentOf(sel) {
    const row = sel.row || {};
    if (row.incident_id) return String(row.incident_id);
    const events = (sel.data && sel.data.timeline) || [];
    for (let i = events.length - 1; i >= 0; i--) if (events[i].incident_id) return String(events[i].incident_id);
    return null;
  }

  const caseStatus = (status) => (status ? t(`cstatus.${status}`) : '—');

  function caseField(list, key, label, value, cls) {
    const dt = document.createElement('dt');
    dt.textContent = label;
    const dd = document.createElement('dd');
    dd.dataset.testid = `case-${key}`;
    if (value instanceof Node) dd.append(value);
    else dd.textContent = value == null || value === '' ? '—' : String(value);
    if (cls) dd.className = cls;
    list.append(dt, dd);
  }

  function renderCase() {
    const sel = state.selectedCase;
    // Until the case itself loads, the summary from its list.
    const c = sel.data || sel.row || {};
    el.detail.dataset.caseId = sel.id;
    el.detailTitle.textContent = `${t('case.title')} · ${c.category || '…'}`;
    el.detailSeverity.hidden = !c.status;
    el.detailSeverity.textContent = caseStatus(c.status);
    el.detailSeverity.style.setProperty('--c', c.overdue ? COLORS.severity.major : c.due_soon ? COLORS.severity.warning : '#8da0b3');
    el.detailSeverity.dataset.severity = '';
    el.detailNote.hidden = !sel.error;
    el.detailNote.textContent = sel.error ? t(sel.error.status === 403 ? 'case.forbidden' : sel.error.status === 404 ? 'case.not_found' : 'case.failed', { e: sel.error.text }) : '';

    el.caseFields.replaceChildren();
    caseField(el.caseFields, 'id', t('case.id'), sel.id);
    caseField(el.caseFields, 'status', t('field.status'), caseStatus(c.status));
    caseField(el.caseFields, 'category', t('field.category'), c.category);
    caseField(el.caseFields, 'department', t('field.department'), c.department_code);
    const due = document.createDocumentFragment();
    due.append(c.due_at ? `${formatTime(c.due_at)} · ${untilTime(c.due_at)}` : '—');
    for (const [flag, key, testid] of [[c.overdue, 'sla.overdue', 'case-overdue'], [c.due_soon && !c.overdue, 'sla.due_soon', 'case-due-soon']]) {
      if (!flag) continue;
      const mark = document.createElement('span');
      mark.className = `mark ${testid === 'case-overdue' ? 'overdue' : 'due-soon'}`;
      mark.dataset.testid = testid;
      mark.textContent = `${testid === 'case-overdue' ? '⏰' : '⌛'} ${t(key)}`;
      due.append(' ', mark);
    }
    caseField(el.caseFields, 'due', t('field.due'), due);
    caseField(el.caseFields, 'channel', t('case.channel'), c.channel);
    caseField(el.caseFields, 'submitted', t('case.submitted'), formatTime(c.submitted_at || c.created_at));
    caseField(el.caseFields, 'grid', t('field.grid'), c.grid_code);
    caseField(el.caseFields, 'address', t('case.address'), c.address);
    caseField(el.caseFields, 'description', t('case.description'), c.description);
    if (c.reply) caseField(el.caseFields, 'reply', t('case.reply'), c.reply);

    const incidentId = linkedIncidentOf(sel);
    if (incidentId) {
      const link = document.createElement('button');
      link.type = 'button';
      link.className = 'link-button';
      link.dataset.testid = 'case-incident-link';
      link.dataset.incidentId = incidentId;
      const known = state.incidents.get(incidentId);
      link.textContent = `${t('case.open_incident')} · ${known && known.props.title ? known.props.title : incidentId}`;
      el.caseIncident.replaceChildren(link);
    } else {
      el.caseIncident.textContent = t('case.no_incident');
    }

    // The contact as the API shows it to this role: in clear, masked or erased.
    el.caseContact.replaceChildren();
    const contact = sel.data ? sel.data.contact : null;
    const parts = contact ? Object.entries(contact).filter(([, v]) => v != null && v !== '') : [];
    if (parts.length) for (const [k, v] of parts) caseField(el.caseContact, `contact-${k}`, t(`contact.${k}`), v);
    else caseField(el.caseContact, 'contact', t('case.contact'), sel.data ? t('case.no_contact') : '…');

    const events = (sel.data && sel.data.timeline) || [];
    el.caseTimeline.replaceChildren(...events.map((ev) => {
      const node = li('', { event: ev.event || '' });
      const time = document.createElement('span');
      time.className = 'time';
      time.textContent = formatTime(ev.at);
      const what = document.createElement('b');
      what.textContent = ` ${t(`cevent.${ev.event}`) === `cevent.${ev.event}` ? ev.event : t(`cevent.${ev.event}`)} `;
      const rest = document.createElement('span');
      rest.textContent = [ev.actor, ev.department_code, ev.status, ev.reason, ev.reply].filter((v) => v != null && v !== '').join(' · ');
      node.append(time, what, rest);
      return node;
    }));
  }

  const mayReadAudit = () => ['operator', 'auditor'].includes(currentRole());

  /** The incident, its linked cases and sensors, what the caller may do, its timeline. */
  async function refreshSelected(id) {
    const path = encodeURIComponent(id);
    const [res, allowed, trace] = await Promise.all([
      request(`${API}/incidents/${path}`),
      state.replay ? Promise.resolve(null) : request(`${API}/ops/actions/incidents/${path}`),
      mayReadAudit() ? request(`${API}/audit/incidents/${path}/trace`) : Promise.resolve(null),
    ]);
    if (state.selectedId !== id) return;
    // The read model trails a command's answer by a moment: while it is behind what the
    // last action answered, read again (the live push may be missed while it reconnects).
    const expected = state.awaitVersion && state.awaitVersion.id === id ? state.awaitVersion : null;
    if (expected && res.ok && res.data && res.data.properties) {
      if (Number(res.data.properties.version) >= expected.version || expected.tries <= 0) state.awaitVersion = null;
      else {
        expected.tries -= 1;
        setTimeout(() => {
          if (state.selectedId === id) refreshSelected(id);
        }, 500);
      }
    }
    if (res.ok && res.data && res.data.properties) {
      state.detailExtra = { linked_cases: res.data.linked_cases || [], sensors: res.data.sensors || [] };
      if (!state.replay) applyIncident(res.data);
      else if (!state.selected) state.selected = incidentRecord(res.data);
      if (!state.chartDevice && state.selected && state.selected.props.device_id != null) {
        state.chartDevice = String(state.selected.props.device_id);
        loadChart();
      }
    } else if (res.status === 404 || !state.selected) {
      state.selectedMissing = true;
    }
    state.allowed = allowed && allowed.ok ? (allowed.data.actions || []).map((a) => a.action) : [];
    state.departmentRequired = Boolean(allowed && allowed.ok && allowed.data.department_required);
    state.timeline = trace && trace.ok && Array.isArray(trace.data.steps) ? trace.data.steps : null;
    el.detail.dataset.loaded = 'true';
    invalidate('detail');
  }

  function addField(key, label, value, cls) {
    const dt = document.createElement('dt');
    dt.textContent = label;
    const dd = document.createElement('dd');
    dd.dataset.testid = `detail-${key}`;
    dd.textContent = value == null || value === '' ? '—' : String(value);
    if (cls) dd.className = cls;
    el.detailFields.append(dt, dd);
  }

  function li(text, attrs = {}) {
    const node = document.createElement('li');
    node.textContent = text;
    for (const [k, v] of Object.entries(attrs)) node.dataset[k] = v;
    return node;
  }

  /** Steps from the audit trace, or (for roles without audit access) from the incident. */
  function timelineSteps(p) {
    if (state.timeline) {
      return state.timeline.map((st) => ({ time: st.time, what: st.step, who: st.actor, summary: st.summary }));
    }
    const steps = [{ time: p.opened_at, what: 'opened', summary: p.title }];
    if (p.acknowledged) steps.push({ time: p.acknowledged_at || p.updated_at, what: 'acknowledged', who: p.acknowledged_by });
    if (p.dispatched_at) steps.push({ time: p.dispatched_at, what: 'dispatched', summary: p.department_code });
    if (p.stage && !['reported', 'dispatched'].includes(p.stage)) steps.push({ time: p.updated_at, what: p.stage });
    if (p.status === 'closed') steps.push({ time: p.closed_at || p.updated_at, what: 'closed' });
    return steps;
  }

  function renderDetail() {
    if (el.detail.hidden) return;
    if (state.selectedCase) {
      renderCase();
      return;
    }
    if (!state.selectedId) return;
    const rec = state.selected;
    el.detailFields.replaceChildren();
    el.detail.dataset.incidentId = state.selectedId;
    if (!rec) {
      el.detailTitle.textContent = state.selectedMissing ? t('detail.not_found') : t('detail.loading');
      el.detailSeverity.textContent = '';
      el.detailSeverity.hidden = true;
      el.detailNote.hidden = true;
      el.actionButtons.replaceChildren();
      return;
    }
    const p = rec.props;
    el.detailTitle.textContent = p.title || `Incident ${rec.id}`;
    el.detailSeverity.hidden = false;
    el.detailSeverity.textContent = t(`sev.${p.severity}`);
    el.detailSeverity.style.setProperty('--c', COLORS.severity[SEV_RANK[p.severity] ? p.severity : 'other']);
    el.detailSeverity.dataset.severity = p.severity || '';
    el.detailNote.hidden = !state.selectedMissing;
    el.detailNote.textContent = state.selectedMissing ? t('detail.not_found') : '';

    addField('status', t('field.status'), p.status);
    addField('stage', t('field.stage'), p.stage);
    addField('alarm-status', t('field.alarm'), p.alarm_status, p.alarm_status === 'active' ? 'no' : 'yes');
    addField('acknowledged', t('field.acknowledged'), p.acknowledged ? `✓${p.acknowledged_by ? ` ${p.acknowledged_by}` : ''}` : '✗', p.acknowledged ? 'yes' : 'no');
    addField('category', t('field.category'), p.category);
    addField('device', t('field.device'), p.device_id);
    addField('grid', t('field.grid'), p.grid_code);
    addField('department', t('field.department'), p.department_code);
    addField('opened', t('field.opened'), p.opened_at ? `${formatTime(p.opened_at)} · ${relativeTime(p.opened_at)}` : null);
    addField('due', t('field.due'), p.due_at ? formatTime(p.due_at) : null);
    const unit = chart.unit ? ` ${chart.unit}` : '';
    addField('last-value', t('field.last_value'), p.last_value != null ? `${formatValue(p.last_value)}${unit}${p.metric ? ` · ${p.metric}` : ''}` : null);

    // Only the commands the API says this caller may run now; the API refuses the rest.
    const allowed = state.replay ? [] : state.allowed || [];
    const buttons = [];
    for (const action of ACTION_ORDER) {
      if (!allowed.includes(action)) continue;
      buttons.push(actionButton(action, action));
      if (action === 'verify') buttons.push(actionButton('reject', 'verify'));
    }
    el.actionButtons.replaceChildren(...buttons);
    el.actionNone.hidden = buttons.length > 0 || state.allowed === null;
    el.actionNote.hidden = buttons.length === 0;

    const steps = timelineSteps(p);
    el.timeline.replaceChildren(...steps.map((st) => {
      const node = li('', { step: st.what || '' });
      const time = document.createElement('span');
      time.className = 'time';
      time.textContent = formatTime(st.time);
      const what = document.createElement('b');
      what.textContent = ` ${st.what || ''} `;
      const rest = document.createElement('span');
      rest.textContent = [st.who, st.summary].filter(Boolean).join(' · ');
      node.append(time, what, rest);
      return node;
    }));

    const extra = state.detailExtra || { linked_cases: [], sensors: [] };
    el.casesCount.textContent = String(extra.linked_cases.length || p.linked_cases || 0);
    el.linkedCases.replaceChildren(...(extra.linked_cases.length
      ? extra.linked_cases.map((f) => {
        const c = f.properties || f;
        const node = li(`${c.category || ''} · ${c.status || ''} · ${c.channel || ''} · ${formatTime(c.submitted_at)}${c.description ? ` · ${c.description}` : ''}`, { caseId: String(c.case_id || f.id || '') });
        node.classList.add('clickable');
        node.tabIndex = 0;
        rememberCase({ ...c, case_id: node.dataset.caseId, incident_id: rec.id });
        return node;
      })
      : [li(t('detail.no_cases'), { empty: 'true' })]));
    el.detailSensors.replaceChildren(...(extra.sensors.length
      ? extra.sensors.map((sn) => {
        const known = state.sensors.get(String(sn.device_id));
        const st = known ? known.props.state : sn.silent ? 'silent' : sn.alarms && sn.alarms.length ? 'alarm' : 'normal';
        const node = li(`${sn.device_id} · ${t(`state.${st}`)} · ${formatValue(sn.distance_m)} m${sn.alarms && sn.alarms.length ? ` · ${sn.alarms.join(', ')}` : ''}`, { deviceId: String(sn.device_id) });
        node.classList.add('clickable');
        if (String(sn.device_id) === state.chartDevice) node.classList.add('selected');
        node.tabIndex = 0;
        return node;
      })
      : [li(t('detail.no_sensors'), { empty: 'true' })]));
  }

  function actionButton(label, action) {
    const b = document.createElement('button');
    b.type = 'button';
    b.dataset.action = label;
    b.dataset.testid = `action-${label}`;
    b.textContent = t(`action.${label}`);
    b.disabled = state.actionBusy;
    if (label === 'acknowledge' || label === 'verify') b.className = 'primary';
    b.addEventListener('click', () => runAction(label, action));
    return b;
  }

  async function runAction(label, action) {
    const rec = state.selected;
    if (!rec || state.actionBusy) return;
    const note = el.actionNote.value.trim();
    const bodies = {
      acknowledge: { reason: note },
      dispatch: { reason: note },
      accept: {},
      resolve: { feedback: note },
      verify: { passed: true, note },
      reject: { passed: false, note },
    };
    el.actionError.hidden = true;
    el.actionOk.hidden = true;
    if ((label === 'resolve' || label === 'reject') && !note) {
      el.actionError.textContent = t('action.need_feedback');
      el.actionError.hidden = false;
      return;
    }
    state.actionBusy = true;
    renderDetail();
    const res = await request(`${API}/incidents/${encodeURIComponent(rec.id)}/${action}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(bodies[label]),
    });
    state.actionBusy = false;
    if (state.selectedId === rec.id) {
      if (res.ok) {
        if (Number.isFinite(Number(res.data.version))) state.awaitVersion = { id: rec.id, version: Number(res.data.version), tries: 20 };
        el.actionNote.value = '';
        el.actionOk.textContent = t('action.done', { a: t(`action.${label}`) });
        el.actionOk.hidden = false;
      } else {
        el.actionError.textContent = t('action.failed', { a: t(`action.${label}`), e: res.error });
        el.actionError.dataset.status = String(res.status);
        el.actionError.hidden = false;
      }
      refreshSelected(rec.id);
    }
    schedulePanels();
    invalidate('detail');
  }

  // ---------------------------------------------------------------- readings chart

  const chart = { seq: 0, data: null, deviceId: null, unit: '' };
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

  async function loadChart() {
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

  function drawChart() {
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

  // ---------------------------------------------------------------- live updates

  const live = { es: null, retry: 0, timer: null, everOpen: false, lost: false };
  function setLive(st, detail) {
    el.live.dataset.state = st;
    live.state = st;
    el.liveText.textContent = state.replay ? t('live.past') : t(`live.${st}`);
    const last = state.lastChangeAt ? ` · last change ${formatTime(new Date(state.lastChangeAt).toISOString())}` : '';
    el.live.title = `Live updates (server-sent events) 实时推送: ${st}${detail ? ` (${detail})` : ''}${last} · ${state.changes} changes`;
  }

  function onLiveMessage(e) {
    let msg;
    try {
      msg = JSON.parse(e.data);
    } catch (_) {
      return;
    }
    if (!msg || typeof msg !== 'object' || !msg.feature) return;
    state.changes += 1;
    state.lastChangeAt = Date.now();
    guarded(() => pushFeed(msg));
    schedulePanels();
    if (state.replay) live.missed = true; // the map shows the past; catch up on "live"
    else if (state.pending) state.pending.push(msg);
    else guarded(() => applyChange(msg));
  }

  function connectLive() {
    clearTimeout(live.timer);
    if (typeof window.EventSource !== 'function') {
      setLive('offline', 'this browser has no EventSource');
      return;
    }
    if (live.es) {
      // Replaced (a new sign-in): changes pushed while the new stream opens are not
      // resent, so catch up once it is open.
      live.es.close();
      live.lost = true;
    }
    const query = auth.token ? `?access_token=${encodeURIComponent(auth.token)}` : '';
    const es = new EventSource(`${API}/live${query}`);
    live.es = es;
    setLive(live.everOpen ? 'reconnecting' : 'connecting');
    es.onopen = () => {
      live.retry = 0;
      setLive('live');
      if (Object.keys(state.layerErrors).length) {
        loadLayers(); // the API is back: retry the layers that failed
      } else if (live.lost && state.loaded) {
        // Changes may have been missed while disconnected: catch up once.
        loadLayers(['grid', 'sensors', 'incidents']);
      }
      live.everOpen = true;
      live.lost = false;
    };
    es.addEventListener('change', onLiveMessage);
    es.onmessage = onLiveMessage; // a server that sends unnamed events
    es.onerror = () => {
      if (live.es !== es) return;
      live.lost = true;
      if (es.readyState === EventSource.CLOSED) {
        // The browser gave up (HTTP error or wrong content type): retry with backoff,
        // with a fresh token in case this one expired.
        es.close();
        obtainToken(true);
        live.es = null;
        const delay = Math.min(30_000, 1000 * 2 ** live.retry);
        live.retry += 1;
        setLive(live.everOpen ? 'reconnecting' : 'offline', `retrying in ${Math.round(delay / 1000)} s`);
        live.timer = setTimeout(connectLive, delay);
      } else {
        setLive('reconnecting');
      }
    };
  }

  // ---------------------------------------------------------------- alert feed

  const FEED_MAX = 60;

  function pushFeed(msg) {
    const f = msg.feature;
    const p = (f && f.properties) || {};
    let item = null;
    if (msg.layer === 'incidents') {
      const id = String(p.incident_id || f.id || '');
      const known = state.incidents.has(id);
      const kind = p.status === 'closed' ? 'closed' : known ? 'changed' : 'opened';
      item = { id, kind, sev: p.severity, text: p.title || id, at: Date.now() };
    } else if (msg.layer === 'sensors' && (p.state === 'alarm' || p.state === 'silent')) {
      item = { device: String(p.device_id), kind: p.state, sev: p.state === 'alarm' ? 'major' : 'other', text: t('feed.sensor', { s: p.device_id }), at: Date.now() };
    }
    if (!item) return;
    state.feed.unshift(item);
    if (state.feed.length > FEED_MAX) state.feed.length = FEED_MAX;
    renderFeed();
  }

  function renderFeed() {
    el.feedEmpty.hidden = state.feed.length > 0;
    el.feed.replaceChildren(...state.feed.map((it) => {
      const node = document.createElement('li');
      node.className = `feed-item ${it.kind}`;
      node.dataset.testid = 'feed-item';
      if (it.id) node.dataset.incidentId = it.id;
      const dot = document.createElement('span');
      dot.className = 'sev-dot';
      dot.style.setProperty('--c', COLORS.severity[SEV_RANK[it.sev] ? it.sev : 'other']);
      const time = document.createElement('span');
      time.className = 'time';
      time.textContent = formatTime(new Date(it.at).toISOString());
      const what = document.createElement('b');
      what.textContent = ` ${it.id ? t(`feed.${it.kind}`) : t(`state.${it.kind}`)} `;
      const text = document.createElement('span');
      text.textContent = it.text;
      node.append(dot, time, what, text);
      return node;
    }));
  }

  // ---------------------------------------------------------------- KPI, SLA, queues

  const currentRole = () => (state.config && state.config.user ? state.config.user.role : auth.role);
  /** A department's own code; null for every other role. */
  const ownDepartment = () => (state.config && state.config.user && state.config.user.role === 'department' ? state.config.user.department : null);

  function rememberCase(row) {
    if (state.caseRows.size > 2000) state.caseRows.clear();
    state.caseRows.set(String(row.case_id), row);
  }

  /** A list item that opens a case in the drawer. */
  function caseItem(text, c, cls) {
    const node = li(text, { caseId: String(c.case_id) });
    node.classList.add('clickable');
    if (cls) node.classList.add(cls);
    if (state.selectedCase && state.selectedCase.id === String(c.case_id)) node.classList.add('selected');
    node.tabIndex = 0;
    rememberCase(c);
    return node;
  }
  let panelTimer = null;

  /** Re-read the panels shortly after a burst of live changes (at most every 2 s). */
  function schedulePanels() {
    if (panelTimer) return;
    panelTimer = setTimeout(() => {
      panelTimer = null;
      loadPanels();
    }, 2000);
  }

  const pct = (v) => (v == null ? '—' : `${Math.round(v * 1000) / 10}%`);

  async function loadKpis() {
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

  async function loadSla() {
    const res = await request(`${API}/ops/sla?limit=10`);
    if (!res.ok) return;
    const d = res.data;
    const overdue = (d.cases.overdue.total || 0) + (d.incidents.overdue || 0);
    const soon = (d.cases.due_soon.total || 0) + (d.incidents.due_soon || 0);
    const o = document.querySelector('[data-testid="sla-overdue"]');
    const ds = document.querySelector('[data-testid="sla-due-soon"]');
    o.textContent = `${t('sla.overdue')} ${overdue}`;
    ds.textContent = `${t('sla.due_soon')} ${soon}`;
    const items = [];
    for (const it of d.incidents.items || []) {
      const node = li(`${it.overdue ? '⏰' : '⌛'} ${it.title} · ${it.department_code || '—'} · ${formatTime(it.due_at)}`, { incidentId: it.incident_id });
      node.classList.add('clickable', it.overdue ? 'overdue' : 'due-soon');
      items.push(node);
    }
    for (const [kind, list] of [['overdue', d.cases.overdue.items], ['due-soon', d.cases.due_soon.items]]) {
      for (const c of list || []) {
        items.push(caseItem(`${kind === 'overdue' ? '⏰' : '⌛'} ${c.category} · ${c.department_code || '—'} · ${formatTime(c.due_at)}`, c, kind));
      }
    }
    el.slaList.replaceChildren(...items);
    el.slaEmpty.hidden = items.length > 0;
  }

  async function loadDepartments() {
    const res = await request(`${API}/departments`);
    if (!res.ok) return;
    const zh = I18N.lang === 'zh';
    const options = () => res.data.departments.map((d) => {
      const o = document.createElement('option');
      o.value = d.code;
      o.textContent = zh && d.name_zh ? d.name_zh : d.name || d.code;
      return o;
    });
    const prev = el.queueSelect.value;
    el.queueSelect.replaceChildren(...options());
    if (prev) el.queueSelect.value = prev;
    // The sign-in's department picker: the same departments, after its prompt.
    const prompt = el.deptSelect.options[0];
    const chosen = el.deptSelect.value || (auth.role === 'department' ? auth.department : '');
    el.deptSelect.replaceChildren(prompt, ...options());
    el.deptSelect.value = chosen || '';
    scopeQueue();
    loadQueue();
  }

  /** A department works its own queue: the picker is fixed on it. */
  function scopeQueue() {
    const own = ownDepartment();
    el.queueSelect.disabled = Boolean(own);
    if (own && el.queueSelect.value !== own) el.queueSelect.value = own;
  }

  async function loadQueue() {
    const code = el.queueSelect.value;
    if (!code) return;
    const res = await request(`${API}/departments/${encodeURIComponent(code)}/queue?limit=20`);
    if (!res.ok || el.queueSelect.value !== code) return;
    const cases = res.data.cases || [];
    el.queueList.replaceChildren(...cases.map((c) => {
      const node = caseItem(`${c.overdue ? '⏰ ' : c.due_soon ? '⌛ ' : ''}${c.category} · ${caseStatus(c.status)} · ${formatTime(c.due_at)}`, c, c.overdue ? 'overdue' : c.due_soon ? 'due-soon' : null);
      node.dataset.testid = 'queue-item';
      return node;
    }));
    el.queueEmpty.hidden = cases.length > 0;
    el.queueEmpty.textContent = res.data.total > cases.length ? '' : t('queue.empty');
  }

  function loadPanels() {
    return Promise.all([loadKpis(), loadSla(), loadQueue(), loadHotspots()]);
  }

  /** The hotspot cells (GET /hotspots), while the grid is coloured by them. */
  async function loadHotspots() {
    if (state.gridMode !== 'hotspot') return;
    const res = await request(`${API}/hotspots?hours=${HOTSPOT_HOURS}`);
    if (state.gridMode !== 'hotspot') return;
    if (res.ok && Array.isArray(res.data.hotspots)) {
      state.hotspots = new Map(res.data.hotspots.map((h) => [String(h.grid_code), h]));
      state.hotspotsError = null;
    } else {
      state.hotspotsError = res.error || 'not a list of hotspots';
    }
    state.hotspotsLoaded = true;
    renderGridLegend();
    invalidate('map');
  }

  function renderGridLegend() {
    const mode = state.gridMode;
    document.body.dataset.gridMode = mode;
    for (const node of document.querySelectorAll('.legend-grid')) node.hidden = node.dataset.gridMode !== mode;
    for (const input of document.querySelectorAll('input[name="grid-mode"]')) input.checked = input.value === mode;
    if (mode !== 'hotspot') return;
    el.legendNote.dataset.count = String(state.hotspots.size);
    el.legendNote.dataset.loaded = String(state.hotspotsLoaded);
    el.legendNote.textContent = state.hotspotsError
      ? t('legend.hotspot_error', { e: state.hotspotsError })
      : state.hotspotsLoaded
        ? t('legend.hotspot_count', { n: state.hotspots.size, h: HOTSPOT_HOURS })
        : t('list.loading');
  }

  function setGridMode(mode) {
    state.gridMode = GRID_MODES.includes(mode) ? mode : 'load';
    try {
      localStorage.setItem('cityops.gridMode', state.gridMode);
    } catch (_) {
      /* storage unavailable */
    }
    state.hover = null;
    hideTooltip();
    renderGridLegend();
    invalidate('map');
    loadHotspots();
  }

  async function loadConfig() {
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

  // ---------------------------------------------------------------- time slider

  let replaySeq = 0;

  function sliderInstant() {
    const seconds = Number(el.timeSlider.value); // seconds before now
    return seconds >= 0 ? null : Date.now() + seconds * 1000;
  }

  function renderTimeLabel() {
    const at = state.replay ? state.replay.at : sliderInstant();
    if (at == null) {
      el.timeValue.textContent = t('time.now');
    } else {
      const mins = Math.round((Date.now() - at) / 60_000);
      const h = mins >= 60 ? `${Math.floor(mins / 60)} h ${mins % 60} min` : `${mins} min`;
      el.timeValue.textContent = t('time.ago', { t: formatTime(new Date(at).toISOString()), h });
    }
    el.timeLive.disabled = !state.replay;
    document.body.dataset.mode = state.replay ? 'past' : 'live';
  }

  /** Show the city as of the slider's instant, replayed from the log by the audit API. */
  async function showPast() {
    const at = sliderInstant();
    if (at == null) return goLive();
    if (!mayReadAudit()) {
      showMessage(t('time.denied'), 'info', 'replay');
      el.timeSlider.value = '0';
      renderTimeLabel();
      return null;
    }
    const seq = ++replaySeq;
    el.timeValue.textContent = t('time.loading');
    document.body.dataset.replaying = 'true';
    const res = await request(`${API}/audit/city?at=${encodeURIComponent(new Date(at).toISOString())}`, {}, LAYER_TIMEOUT_MS);
    if (seq !== replaySeq) return null;
    delete document.body.dataset.replaying;
    if (!res.ok) {
      showMessage(`Replay failed 回放失败: ${res.error}`, 'error', 'replay');
      renderTimeLabel();
      return null;
    }
    hideMessage('replay');
    const layers = res.data.layers || {};
    state.replay = { at, doc: res.data };
    if (layers.sensors) ingest.sensors(featuresOf(layers.sensors) || []);
    if (layers.incidents) ingest.incidents(featuresOf(layers.incidents) || []);
    if (layers.grid) {
      // Keep the reference geometry; take each cell's load as it was.
      for (const cell of state.grid) cell.count = 0;
      for (const f of featuresOf(layers.grid) || []) {
        const cell = state.gridByCode.get(String(f.id || (f.properties && f.properties.grid_code)));
        if (cell) cell.count = Number(f.properties.open_incidents) || 0;
      }
      state.hotDirty = true;
    }
    for (const rec of state.incidents.values()) placeIncident(rec);
    el.replayBanner.textContent = t('time.banner', { t: formatTime(new Date(at).toISOString()), n: res.data.replayed_events });
    el.replayBanner.hidden = false;
    document.body.dataset.replayAt = new Date(at).toISOString();
    setLive(live.state || 'live');
    renderTimeLabel();
    if (state.selectedId) invalidate('detail');
    invalidate('map', 'list', 'status');
    return res.data;
  }

  async function goLive() {
    replaySeq += 1;
    const wasPast = Boolean(state.replay);
    state.replay = null;
    el.timeSlider.value = '0';
    el.replayBanner.hidden = true;
    delete document.body.dataset.replayAt;
    renderTimeLabel();
    setLive(live.state || 'live');
    if (wasPast || live.missed) {
      live.missed = false;
      await loadLayers(['grid', 'sensors', 'incidents']);
    }
    if (state.selectedId) refreshSelected(state.selectedId);
  }

  function setHours() {
    const hours = Number(el.timeHours.value) || 6;
    el.timeSlider.min = String(-hours * 3600);
    renderTimeLabel();
  }

  // ---------------------------------------------------------------- language and role

  function applyLanguage() {
    I18N.apply();
    el.langToggle.textContent = I18N.lang === 'zh' ? 'English' : '中文';
    setLive(live.state || 'connecting');
    renderTimeLabel();
    renderFeed();
    renderGridLegend();
    loadDepartments();
    loadSla();
    invalidate('map', 'list', 'status', 'detail');
  }

  async function switchRole(role, department = null) {
    auth.role = role;
    auth.department = role === 'department' ? department : null;
    sessionStorage.setItem(ROLE_KEY, role);
    if (auth.department) sessionStorage.setItem(DEPT_KEY, auth.department);
    else sessionStorage.removeItem(DEPT_KEY);
    sessionStorage.removeItem(TOKEN_KEY);
    auth.token = null;
    const seq = ++auth.seq;
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
  function onRoleChosen() {
    const role = el.roleSelect.value;
    el.deptSelect.hidden = role !== 'department';
    if (role !== 'department') {
      switchRole(role);
      return;
    }
    if (el.deptSelect.value) switchRole('department', el.deptSelect.value);
    else el.deptSelect.focus();
  }

  // ---------------------------------------------------------------- wiring

  function restoreGridMode() {
    let saved = null;
    try {
      saved = localStorage.getItem('cityops.gridMode');
    } catch (_) {
      saved = null;
    }
    state.gridMode = GRID_MODES.includes(saved) ? saved : 'load';
    renderGridLegend();
  }

  function restoreToggles() {
    let saved = null;
    try {
      saved = JSON.parse(localStorage.getItem('cityops.layers') || 'null');
    } catch (_) {
      saved = null;
    }
    for (const input of document.querySelectorAll('input[data-layer]')) {
      const name = input.dataset.layer;
      if (saved && typeof saved[name] === 'boolean') input.checked = saved[name];
      state.visible[name] = input.checked;
      input.addEventListener('change', () => {
        state.visible[name] = input.checked;
        try {
          localStorage.setItem('cityops.layers', JSON.stringify(state.visible));
        } catch (_) {
          /* storage unavailable */
        }
        state.hover = null;
        hideTooltip();
        invalidate('map');
      });
    }
  }

  function init() {
    restoreToggles();
    restoreGridMode();
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
      I18N.set(I18N.lang === 'zh' ? 'en' : 'zh');
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
    I18N.apply();
    el.langToggle.textContent = I18N.lang === 'zh' ? 'English' : '中文';
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

  /**
   * Frame times while the map pans and zooms on its own for `frames` frames: the time
   * to draw each frame (drawMap) and the interval between frames, p50/p95 in ms.
   */
  function measureFrames(frames = 120) {
    return new Promise((resolve) => {
      const draw = [];
      const gaps = [];
      let last = null;
      let i = 0;
      const cx = view.w / 2;
      const cy = view.h / 2;
      const step = (now) => {
        if (last !== null) gaps.push(now - last);
        last = now;
        if (i >= frames) {
          const q = (a, f) => {
            const b = a.slice().sort((x, y) => x - y);
            return b.length ? Math.round(b[Math.min(b.length - 1, Math.floor(f * b.length))] * 100) / 100 : null;
          };
          resolve({ frames, draw_p50: q(draw, 0.5), draw_p95: q(draw, 0.95), frame_p50: q(gaps, 0.5), frame_p95: q(gaps, 0.95),
            sensors: state.sensors.size, incidents: state.incidents.size, clusters: state.clusters.length });
          return;
        }
        // Half the frames pan, half zoom in and back out.
        const phase = Math.floor(i / 30) % 4;
        if (phase === 0) view.tx += 7;
        else if (phase === 1) zoomAt(cx, cy, 1.04);
        else if (phase === 2) view.ty -= 7;
        else zoomAt(cx, cy, 1 / 1.04);
        const t0 = performance.now();
        drawMap();
        draw.push(performance.now() - t0);
        i += 1;
        requestAnimationFrame(step);
      };
      requestAnimationFrame(step);
    });
  }

  init();
})();
