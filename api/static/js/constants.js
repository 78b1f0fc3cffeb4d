/*
 * Constants of the operations center: the API's base path, the map's colours, severity
 * and sensor-state orders, and the limits and intervals the panels keep to.
 */

export const API = document.body.dataset.api || '/api/v1';
export const OGC = '/ogc'; // OGC API - Features and Tiles (the grid's vector tiles)

// Keep in sync with the CSS custom properties in app.css.
export const COLORS = {
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

export const SEVERITIES = ['warning', 'minor', 'major', 'critical']; // ascending
export const SEV_GROUPS = ['other', ...SEVERITIES]; // draw order: most severe on top
export const SEV_RANK = { warning: 1, minor: 2, major: 3, critical: 4 };
export const SEV_ZH = { warning: '一般', minor: '较大', major: '重大', critical: '特别重大' };
export const STATE_ORDER = ['other', 'normal', 'maintenance', 'silent', 'alarm']; // draw order
export const STATE_ZH = { normal: '正常', alarm: '告警', silent: '离线', maintenance: '维护' };

export const LAYERS = ['districts', 'grid', 'sensors', 'incidents'];
export const LIST_LIMIT = 500; // list items rendered; the rest are counted
export const LIST_MIN_INTERVAL_MS = 250; // list/status re-render at most 4x a second
export const CHART_REFRESH_MS = 60_000;
export const LAYER_TIMEOUT_MS = 60_000;
export const GRID_MODES = ['load', 'hotspot'];
export const HOTSPOT_HOURS = 24; // the window whose case counts are set against each cell's history
export const HOTSPOT_Z = [5, 8]; // bucket edges above the API's own threshold (z >= 3)
