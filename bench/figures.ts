/** A benchmark figure next to its baseline, and the arithmetic the measurements share. */

export interface Figure {
  name: string;
  value: number;
  unit: string;
  baseline: number | null;
  baselineName: string | null;
  ratio: number | null;
  target: string;
  met: boolean | null;
}

/** Rounds of each throughput figure and its baseline, alternated; the medians are compared. */
export const ROUNDS = 3;
export const now = () => performance.now();
export const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? 0;
};
export const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

/** `p`, or `fallback` after `ms`; the timer is cleared either way (a pending one kept the process alive). */
export function within<T, F>(p: Promise<T>, ms: number, fallback: F): Promise<T | F> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<F>((r) => (timer = setTimeout(() => r(fallback), ms)))]).finally(() =>
    clearTimeout(timer),
  );
}

export function figure(
  name: string,
  value: number,
  unit: string,
  baseline: number | null,
  baselineName: string | null,
  target: string,
  met: boolean | null,
): Figure {
  return {
    name,
    value: round(value),
    unit,
    baseline: baseline === null ? null : round(baseline),
    baselineName,
    ratio: baseline ? round(value / baseline, 3) : null,
    target,
    met,
  };
}
