/** One batch of simulated seeds as a test; the suite splits its 2,000 seeds over files that run in parallel. */
import { expect, it } from 'vitest';
import { formatSummary, runSeeds } from '../sim/run.js';

export function seedBatch(from: number, count: number): void {
  it(`${count} seeded fault schedules (seeds ${from}-${from + count - 1}) keep S1-S4 and L1-L3`, async () => {
    const summary = await runSeeds(from, count);
    console.log(formatSummary(summary));
    expect(summary.schedules).toBe(count);
    expect(summary.resumes.granted).toBeGreaterThan(0);
    expect(summary.resumes.denied).toBeGreaterThan(0);
    expect(summary.violations).toEqual([]);
  }, 600_000);
}
