/*
 * Times, deadlines and numbers as the panels show them.
 */
import { t } from './i18n.js';

export const pad2 = (n) => String(n).padStart(2, '0');

export function formatTime(iso) {
  const t = Date.parse(iso);
  if (!Number.isFinite(t)) return '—';
  const d = new Date(t);
  const today = new Date();
  const hms = `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  if (d.toDateString() === today.toDateString()) return hms;
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${hms}`;
}

export function relativeTime(iso) {
  const t = Date.parse(iso);
  if (!Number.isFinite(t)) return '—';
  const s = Math.round((Date.now() - t) / 1000);
  if (s < 45) return 'just now';
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** How long until a deadline, or how long since it passed. */
export function untilTime(iso) {
  const ms = Date.parse(iso) - Date.now();
  if (!Number.isFinite(ms)) return '—';
  const mins = Math.round(Math.abs(ms) / 60_000);
  const d = mins >= 1440 ? `${Math.floor(mins / 1440)} d ${Math.floor((mins % 1440) / 60)} h` : mins >= 60 ? `${Math.floor(mins / 60)} h ${mins % 60} min` : `${mins} min`;
  return t(ms >= 0 ? 'case.due_in' : 'case.due_ago', { d });
}

export function formatValue(v) {
  const n = Number(v);
  if (v == null || v === '' || !Number.isFinite(n)) return v == null ? '—' : String(v);
  const a = Math.abs(n);
  if (a >= 1000 || Number.isInteger(n)) return String(Math.round(n * 10) / 10);
  if (a >= 10) return n.toFixed(1);
  if (a >= 1) return n.toFixed(2);
  return n.toPrecision(3);
}
