/*
 * The sensors from their vector tiles (vtiles.js), for staff. The page then loads as
 * records (layers.js) only the sensors that are not normal: those the header counts and
 * the map shows at every scale, kept live by the stream. The normal ones come from the
 * tiles of the view at every scale: below the tileset's first tile matrix (a city seen
 * whole) from that one's; below z14 the server thins them to one per 64 x 64 units of a
 * tile (8 to 16 CSS pixels here), which shows where the sensors are, and zooming in only
 * adds sensors. They are drawn under the records, which win where both have a sensor. A
 * live change marks the cached tiles stale: they are asked for again (an unchanged one
 * answers 304 to its ETag) and drawn as they were meanwhile.
 */
import { state } from '../store.js';
import { sensorTiles, chooseSource, tileAt, tileBox, viewTiles, nextFrame, evict, recordDraw, markStale } from './vtiles.js';

export const tiledSensors = () => sensorTiles.source === 'tiles';

/** The sensors of an MVT: records as records.js makes from GeoJSON, in projected units. */
export function decodePoints(decoder, bytes, z, row, col) {
  const layer = new decoder.VectorTile(new decoder.PbfReader(bytes)).layers.sensors;
  if (!layer) return [];
  const [x0, , , y1] = tileBox(z, row, col);
  const k = (2 * Math.PI) / 2 ** z / layer.extent;
  const out = [];
  for (let i = 0; i < layer.length; i++) {
    const f = layer.feature(i);
    if (f.type !== 1) continue; // points only
    const props = { ...f.properties };
    const p = f.loadGeometry()[0][0];
    if (props.device_id == null || !p) continue;
    out.push({ id: String(props.device_id), props, x: x0 + p.x * k, y: y1 - p.y * k });
  }
  return out;
}

/** 'tiles' or 'geojson' for the sensors (vtiles.js decides, once). */
export const chooseSensorSource = () => chooseSource(sensorTiles, decodePoints);

/** How many sensors there are, as counted when the page chose (tiles only). */
export const sensorTotal = () => sensorTiles.total;

let drawn = []; // the tiles' sensors drawn in the last frame, for hit-testing

/** The tiles' sensors in the view that are not records, fetching the tiles as needed. */
export function tileSensors(s, vx0, vx1, vy0, vy1) {
  drawn = [];
  if (!sensorTiles.tileset) return drawn;
  nextFrame(sensorTiles);
  const { z, slots } = viewTiles(sensorTiles, s, vx0, vx1, vy0, vy1);
  const figures = { scale: s, z, slots: slots.length, tiles: 0, sensors: 0 };
  const seen = new Set(); // a tile's buffer holds some of its neighbours' sensors
  for (const slot of slots) {
    const tile = tileAt(sensorTiles, slot.z, slot.row, slot.col, true);
    if (!tile) continue;
    figures.tiles += 1;
    for (const rec of tile.items) {
      if (seen.has(rec.id) || state.sensors.has(rec.id)) continue;
      seen.add(rec.id);
      drawn.push(rec);
    }
  }
  figures.sensors = drawn.length;
  recordDraw(sensorTiles, figures);
  evict(sensorTiles);
  return drawn;
}

/** The tiles' sensors drawn in the last frame. */
export const drawnTileSensors = () => drawn;

/**
 * A live change of a sensor, with the tiles on: a sensor that is not normal is a record;
 * one back to normal is left to the tiles, which are asked for again.
 */
export function sensorChanged(rec) {
  if (rec.props.state === 'normal') state.sensors.delete(rec.id);
  else state.sensors.set(rec.id, rec);
  markStale(sensorTiles);
}
