/*
 * Raster tiles under the map.
 */
import { state, view } from '../store.js';
import { ctx } from '../dom.js';
import { invalidate } from '../frame.js';
import { clamp } from './projection.js';

// Only when the deployment names a tile server (GET /ops/config tile_url); the page
// itself never reaches beyond its own origin.
const tiles = { cache: new Map() };

export function drawTiles(s, tx, ty) {
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
