/** The benchmark harness runs end to end at tiny sizes. It measures nothing here: no speed is asserted. */
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { runBench, table } from '../bench/run.js';
import { CLI } from './cli-path.js';

describe('bench (smoke)', () => {
  it('produces every figure with its baseline, ratio, target and verdict', async () => {
    const figures = await runBench(true, () => undefined);
    const names = figures.map((f) => f.name);
    for (const n of [
      'io.write.seq.p50',
      'io.write.pipelined.memory',
      'durable.writes.full',
      'durable.writes.full.no-group-commit',
      'inspector.write.pipelined',
      'failover.20.p99',
      'partition.detect',
      'resume.storm',
      'memory.agent.per.handle.200',
      'memory.replica.per.handle.200',
      'sim.schedules.per.minute',
      'etcd.writes.fenced',
      'etcd.failover.20.p99',
      'nbd.write.seq',
      'nbd.read.depth16',
      'nbd.failover.stall',
    ]) {
      expect(names).toContain(n);
    }
    for (const f of figures) {
      expect(Number.isFinite(f.value), f.name).toBe(true);
      expect(f.ratio === null || Number.isFinite(f.ratio)).toBe(true);
      expect(typeof f.target).toBe('string');
    }
    expect(table(figures).split('\n')).toHaveLength(figures.length + 2);
  }, 180_000);

  it('safe-resume bench measures heap as npm run bench does (with --expose-gc)', () => {
    const cli = CLI;
    const out = execFileSync(process.execPath, [cli, 'bench', '--smoke', '--json', '--only', 'partition'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
      timeout: 60_000,
    });
    expect(JSON.parse(out)).toMatchObject({ smoke: true, exposeGc: true });
  }, 60_000);

  it('runs only the groups asked for', async () => {
    const figures = await runBench(true, () => undefined, ['partition']);
    expect(figures.map((f) => f.name)).toEqual(['partition.detect', 'partition.resume']);
  }, 60_000);
});
