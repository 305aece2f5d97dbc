/**
 * Several hosts for real: every etcd member, replica and node agent in a network namespace of its own
 * (its own address, a link on a shared bridge), the launcher on a control host. Faults in order: a
 * replica host's processes SIGKILLed, a replica host's link cut, the etcd leader killed, a node
 * partitioned (its link cut), again and again; then the chaos checker reads the history from etcd.
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ChaosSummary } from '../cluster/chaos.js';
import { makeHosts, type Hosts } from './netns.js';
import { tempDir } from './helpers.js';
import { CLI } from './cli-path.js';

const NAMES = ['ctl', 'etcd-1', 'etcd-2', 'etcd-3', 'replica-1', 'replica-2', 'replica-3', 'node-1', 'node-2'];

describe('replicas and nodes on hosts of their own, over a three-member etcd', () => {
  const t = tempDir();
  let hosts: Hosts;
  beforeAll(() => {
    // No namespaces here fails the suite with the reason: this test does not pass without hosts.
    hosts = makeHosts(NAMES);
  });
  afterAll(() => {
    hosts?.remove();
    t.cleanup();
  });

  it('a replica host killed, a replica link cut, the etcd leader killed and a node partitioned: no violation, every handle settles', () => {
    const plan = join(t.dir, 'hosts.json');
    writeFileSync(plan, JSON.stringify(hosts.plan(['ctl'])));
    const dir = join(t.dir, 'cluster');
    const faults = 'replica-kill,link-cut,etcd-leader-kill,partition';
    const run = spawnSync(
      'ip',
      [
        'netns',
        'exec',
        hosts.hosts.ctl!.netns,
        process.execPath,
        CLI,
        'up',
        '--store',
        'etcd',
        '--netns',
        plan,
        '--chaos',
        '--for',
        '30',
        '--faults',
        faults,
        '--seed',
        '3',
        '--json',
        '--hold-ms',
        '1000',
        '--dir',
        dir,
      ],
      { encoding: 'utf8', timeout: 240_000 },
    );
    const out = run.stdout.trim().split('\n').at(-1) ?? '';
    expect(run.status, `${run.stderr}\n${run.stdout}`).toBe(0);
    const summary = JSON.parse(out) as ChaosSummary;
    if (process.env.SHOW) console.log(run.stderr, out);
    // Each process listened on its own host's address.
    for (const name of ['etcd-1', 'etcd-2', 'etcd-3'])
      expect(run.stderr).toContain(`${hosts.hosts[name]!.address}:2379`);
    for (const name of ['replica-1', 'replica-2', 'replica-3'])
      expect(run.stderr).toContain(`ws://${hosts.hosts[name]!.address}:7000`);
    for (const kind of faults.split(',')) expect(summary.faults[kind], kind).toBeGreaterThan(0);
    expect(summary.writesAcknowledged).toBeGreaterThan(50);
    expect(summary.pauses).toBeGreaterThan(0);
    expect(summary.resumes.granted).toBeGreaterThan(0);
    // S1-S5 and L1-L3 (every paused handle left paused, every operation completed) over the whole run.
    expect(summary.violations).toEqual([]);
    // Nothing left running on any host.
    for (const name of NAMES) expect(hosts.pids(name), name).toEqual([]);
  }, 300_000);
});
