/**
 * Which parts of a range a target keeps, from the pages an adapter listed (store.extents): pure, so
 * every adapter answers alike.
 */
import { PAGE_BYTES, type ExtentsRequest, type ExtentsResult } from './types.js';

/** The first and last page of PAGE_BYTES that `[offset, offset + length)` touches (length above 0). */
export function pageSpan(offset: number, length: number): { first: number; last: number } {
  return { first: Math.floor(offset / PAGE_BYTES), last: Math.floor((offset + length - 1) / PAGE_BYTES) };
}

/**
 * The answer to `req` from the kept pages an adapter listed of its span (ascending, at most `max`):
 * kept runs clipped to the range. A list of `max` pages may have stopped short: the answer then
 * describes the range only up to the end of the last page listed.
 */
export function extentsOf(
  req: Pick<ExtentsRequest, 'offset' | 'length'>,
  pages: readonly number[],
  max: number,
  version: number,
): Extract<ExtentsResult, { ok: true }> {
  const start = req.offset;
  let end = req.offset + req.length;
  if (req.length > 0 && pages.length >= max) end = Math.min(end, (pages[pages.length - 1]! + 1) * PAGE_BYTES);
  const kept: Array<[number, number]> = [];
  for (const p of pages) {
    const from = Math.max(start, p * PAGE_BYTES);
    const to = Math.min(end, (p + 1) * PAGE_BYTES);
    if (to <= from) continue;
    const last = kept[kept.length - 1];
    if (last && last[0] + last[1] === from) last[1] += to - from;
    else kept.push([from, to - from]);
  }
  return { ok: true, kept, end, version };
}
