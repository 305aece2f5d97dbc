/** Seeds 1001-2000 of the simulation (the suite runs 2,000 in two files, in parallel). */
import { expect, it } from 'vitest';
import { formatSummary, runSeeds } from '../sim/run.js';

it('1,000 seeded fault schedules keep S1-S4 and L1-L3', async () => {
  const summary = await runSeeds(1001, 1000);
  console.log(formatSummary(summary));
  expect(summary.schedules).toBe(1000);
  expect(summary.resumes.granted).toBeGreaterThan(0);
  expect(summary.resumes.denied).toBeGreaterThan(0);
  expect(summary.violations).toEqual([]);
}, 600_000);
