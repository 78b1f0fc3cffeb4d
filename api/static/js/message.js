/*
 * The map's message box: errors and notes, each under a key so that its owner can clear it.
 */
import { el } from './dom.js';

let messageKey = null;

export function showMessage(text, kind = 'error', key = 'general') {
  messageKey = key;
  el.messageText.textContent = text;
  el.message.classList.toggle('info', kind === 'info');
  el.message.dataset.kind = kind;
  el.message.hidden = false;
}

export function hideMessage(key) {
  if (key && key !== messageKey) return;
  messageKey = null;
  el.message.hidden = true;
}
