/**
 * The changed ranges a resume denied MODIFIED carries, decided purely from the pages a store lists as
 * written (or zeroed) since the version the handle last saw: runs of adjacent pages become ranges,
 * and past MAX_CHANGED_RANGES the ranges separated by the smallest gaps are merged until they fit.
 */
import { type ByteRange, type ChangedRanges, MAX_CHANGED_RANGES } from '../errors.js';
import { PAGE_BYTES } from './types.js';

/** Changed pages a store lists at most for one denial; past them, the rest of the target counts as changed. */
export const MAX_CHANGED_PAGES = 65536;

/**
 * The ranges of `pages` (ascending page numbers, distinct). `truncated`: the store listed only the
 * first pages; everything from the last one listed to `end` (the target's size) counts as changed.
 */
export function changedRanges(
  pages: readonly number[],
  truncated = false,
  end = 0,
  max = MAX_CHANGED_RANGES,
): ChangedRanges {
  const runs: ByteRange[] = [];
  for (const p of pages) {
    const last = runs[runs.length - 1];
    if (last && last[0] + last[1] === p * PAGE_BYTES) last[1] += PAGE_BYTES;
    else runs.push([p * PAGE_BYTES, PAGE_BYTES]);
  }
  let coarse = false;
  const tail = runs[runs.length - 1];
  if (truncated && tail && end > tail[0] + tail[1]) {
    tail[1] = end - tail[0];
    coarse = true;
  }
  if (runs.length <= max) return { changed: runs, coarse };
  // Merge across the smallest gaps (the leftmost first among equal ones) until `max` ranges are left.
  const gaps = runs
    .slice(1)
    .map((r, i) => ({ i, gap: r[0] - (runs[i]![0] + runs[i]![1]) }))
    .sort((a, b) => a.gap - b.gap || a.i - b.i);
  const joined = new Set(gaps.slice(0, runs.length - max).map((g) => g.i));
  const out: ByteRange[] = [[runs[0]![0], runs[0]![1]]];
  for (let i = 1; i < runs.length; i++) {
    const r = runs[i]!;
    const prev = out[out.length - 1]!;
    if (joined.has(i - 1)) prev[1] = r[0] + r[1] - prev[0];
    else out.push([r[0], r[1]]);
  }
  return { changed: out, coarse: true };
}

/**
 * What changed, from the pages a store listed (at most MAX_CHANGED_PAGES; as many means there may be
 * more, so the rest of the target counts as changed), or from none when it cannot tell (the changes
 * predate what it keeps): then the whole target, `[0, size)`, coarse.
 */
export function changedOf(pages: readonly number[] | undefined, size: number): ChangedRanges {
  if (pages === undefined) return { changed: size > 0 ? [[0, size]] : [], coarse: true };
  return changedRanges(pages, pages.length >= MAX_CHANGED_PAGES, size);
}

export { describeChanged } from '../errors.js';
