/*
 * The page's elements (index.html gives them ids and data-testid attributes), the map
 * canvas's 2D context, and a helper for list items.
 */

const $ = (id) => document.getElementById(id);
export const el = {
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

export const ctx = el.canvas.getContext('2d');

/** A list item with `text` and the data-* attributes `attrs` (camelCase keys). */
export function li(text, attrs = {}) {
  const node = document.createElement('li');
  node.textContent = text;
  for (const [k, v] of Object.entries(attrs)) node.dataset[k] = v;
  return node;
}
