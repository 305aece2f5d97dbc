/** The simulated world: one seed is one whole run, replayed exactly. */
import { describe, expect, it } from 'vitest';
import { runSchedule } from '../sim/scheduler.js';
import { formatReplay } from '../sim/run.js';

describe('simulation', () => {
  it('replays a seed exactly: same history, same trace', async () => {
    for (const seed of [3, 11, 42]) {
      const a = await runSchedule(seed);
      const b = await runSchedule(seed);
      expect(a.history.length).toBeGreaterThan(100);
      expect(JSON.stringify(b.history)).toBe(JSON.stringify(a.history));
      expect(formatReplay(b)).toBe(formatReplay(a));
    }
  });

  it('different seeds give different runs', async () => {
    const a = await runSchedule(1);
    const b = await runSchedule(2);
    expect(JSON.stringify(a.history)).not.toBe(JSON.stringify(b.history));
  });

  it('a simulated run covers seconds of cluster time with faults, resumes and acknowledged writes', async () => {
    const r = await runSchedule(5);
    expect(r.simulatedMs).toBeGreaterThan(10_000);
    expect(Object.values(r.faults).reduce((x, y) => x + y, 0)).toBeGreaterThan(0);
    expect(r.writesAcked).toBeGreaterThan(50);
    expect(r.violations).toEqual([]);
  });
});
