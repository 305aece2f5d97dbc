/**
 * One batch of simulated seeds as a test; the suite splits its 2,000 seeds over two files. Each batch
 * spreads its seeds over a worker thread per core, running the built simulation (`npm test` builds
 * first), so vitest runs the seed files on their own, one at a time, before the other files
 * (vitest.config.ts); the summary is the same as one thread's (test/sim.test.ts checks that).
 */
import { expect, it } from 'vitest';
import { formatSummary } from '../sim/run.js';

type Parallel = typeof import('../sim/parallel.js');

export function seedBatch(from: number, count: number): void {
  it(`${count} seeded fault schedules (seeds ${from}-${from + count - 1}) keep S1-S5 and L1-L3`, async () => {
    const { runSeedsParallel } = (await import(new URL('../dist/sim/parallel.js', import.meta.url).href)) as Parallel;
    const summary = await runSeedsParallel(from, count);
    console.log(formatSummary(summary));
    expect(summary.schedules).toBe(count);
    expect(summary.resumes.granted).toBeGreaterThan(0);
    expect(summary.resumes.denied).toBeGreaterThan(0);
    expect(summary.violations).toEqual([]);
  }, 600_000);
}
