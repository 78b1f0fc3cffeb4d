/*
 * A frame-time measurement of the map (window.CityOps.measureFrames).
 */
import { view, state } from '../store.js';
import { drawMap } from './render.js';
import { zoomAt } from './view.js';

/**
 * Frame times while the map pans and zooms on its own for `frames` frames: the time
 * to draw each frame (drawMap) and the interval between frames, p50/p95 in ms.
 */
export function measureFrames(frames = 120) {
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
