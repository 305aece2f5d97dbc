/** A recorded history as text: one line per event, and the trace of one target up to a violation. */
import type { History, HistoryEvent } from './history.js';

/** The steps of one target (and every fault), up to a time: the shortest useful trace of a violation. */
export function traceOf(history: History, target: string | undefined, untilMs: number): string[] {
  return history
    .filter(
      (e) => e.t <= untilMs && (e.kind === 'fault' || target === undefined || ('target' in e && e.target === target)),
    )
    .map(formatEvent);
}

export function formatEvent(e: HistoryEvent): string {
  const { t, kind, ...rest } = e;
  const fields = Object.entries(rest)
    .map(([k, v]) => {
      // Long bytes (a large write, a whole target) are cut: the trace is for reading.
      const text: unknown = typeof v === 'string' && v.length > 120 ? `${v.slice(0, 100)}...(${v.length} bytes)` : v;
      return `${k}=${typeof text === 'string' && /[\s"\u0000]/.test(text) ? JSON.stringify(text) : String(text)}`;
    })
    .join(' ');
  return `${String(t).padStart(7)}ms ${kind.padEnd(8)} ${fields}`;
}
