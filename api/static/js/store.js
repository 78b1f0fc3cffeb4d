/*
 * The shared state of the operations center: the map's records and what the panels show
 * (`state`, exposed as window.CityOps.state), the map's viewport (`view`) and the live
 * stream's status (`live`). Modules read and change these objects in place and ask for a
 * redraw with invalidate() (frame.js).
 */

export const state = {
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

export const view = {
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

/** The live stream's status: read and set by the stream, the layer loader and the time slider. */
export const live = { es: null, retry: 0, timer: null, everOpen: false, lost: false };
