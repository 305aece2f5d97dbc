/** The simulated world: one seed is one whole run, replayed exactly. */
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { runSchedule } from '../sim/scheduler.js';
import { formatReplay, type SimSummary } from '../sim/run.js';
import { CLI } from './cli-path.js';

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
    expect(r.writesAcknowledged).toBeGreaterThan(50);
    expect(r.violations).toEqual([]);
  });
});

describe('safe-resume sim over worker threads', () => {
  const run = (...args: string[]) =>
    JSON.parse(
      execFileSync('node', [CLI, 'sim', ...args, '--json'], { encoding: 'utf8', timeout: 120_000 }),
    ) as SimSummary;

  it('adds up to exactly what one thread gets for the same seeds', () => {
    const { wallMs: _a, ...one } = run('--seeds', '6', '--from', '20', '--workers', '1');
    const { wallMs: _b, ...two } = run('--seeds', '6', '--from', '20', '--workers', '2');
    expect(one.schedules).toBe(6);
    expect(two).toEqual(one);
  }, 120_000);
});
