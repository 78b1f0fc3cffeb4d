/*
 * The render loop: parts of the page are marked dirty with invalidate() and redrawn on the
 * next animation frame; the list and the status line at most every LIST_MIN_INTERVAL_MS.
 * main.js registers the function that draws each part.
 */
import { LIST_MIN_INTERVAL_MS } from './constants.js';
import { showMessage } from './message.js';

const dirty = { map: false, list: false, status: false, detail: false };
// What draws each part: set once by main.js with setRenderers().
const renderers = { map: null, list: null, status: null, detail: null };
let frameRequested = false;
let lastListRender = 0;
let listTimer = null;

/** Register the functions that draw the parts: {map, list, status, detail}. */
export function setRenderers(fns) {
  Object.assign(renderers, fns);
}

export function invalidate(...parts) {
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
          renderers.status();
        }
        if (dirty.list) {
          dirty.list = false;
          renderers.list();
        }
      }
    }
  });
  if (dirty.detail) {
    dirty.detail = false;
    guarded(renderers.detail);
  }
  if (dirty.map) {
    dirty.map = false;
    guarded(renderers.map);
  }
}

export function guarded(fn) {
  try {
    fn();
  } catch (err) {
    showMessage(`Display error: ${err && err.message ? err.message : err}`, 'error', 'render');
  }
}
