/*
 * The layer checkboxes, kept in localStorage.
 */
import { state } from '../store.js';
import { invalidate } from '../frame.js';
import { hideTooltip } from '../map/tooltip.js';

export function restoreToggles() {
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
