/**
 * `safe-resume vm` through the built CLI against a running `up` cluster and a real QEMU (no guest to
 * boot; its firmware reads the disk): a partition of the node stops the VM after --stop-after, the heal
 * continues it; a target written by another writer meanwhile leaves the VM held with the disk and the
 * reason, `vm resume` is refused without --accept-modified and continues it with it; `vm stop` stops it,
 * and QEMU's exit ends `vm run`.
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI } from './cli-path.js';
import { launch, until } from './e2e.js';
import { tempDir } from './helpers.js';
import { requireQemu } from './qemu.js';

const running = new Set<ChildProcess>();
const t = tempDir();
const dir = t.dir;
afterAll(() => {
  for (const p of running) p.kill('SIGKILL');
  if (existsSync(dir)) spawnSync('node', [CLI, 'down', '--dir', dir], { timeout: 30_000 });
  t.cleanup();
});

function cli(...args: string[]) {
  const r = spawnSync('node', [CLI, ...args, '--dir', dir], { encoding: 'utf8', timeout: 30_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}
const list = () => cli('vm', 'list').out;

describe('safe-resume vm against a running cluster', () => {
  beforeAll(async () => {
    requireQemu();
    launch(['up', '--dir', dir, '--replicas', '1', '--nodes', '1', '--apps', '1', '--hold-ms', '400'], { running });
    await until('the cluster to serve its export', () => existsSync(join(dir, 'nbd', 'node-1.sock')), 60_000);
    await until('the control endpoint', () => existsSync(join(dir, 'control.json')), 30_000);
    expect(cli('create', 'vm1.disk', '--size', '16M').code).toBe(0);
  }, 90_000);

  it('stops on a pause past --stop-after, continues on the grant, stays held on a denial until resumed with --accept-modified', async () => {
    expect(cli('vm', 'run', 'vm1', '--disk', 'vm1.disk:leave-paused', '--stop-after', 'soon').code).toBe(2);
    const vm = launch(
      ['vm', 'run', 'vm1', '--dir', dir, '--disk', 'vm1.disk', '--stop-after', '300', '--', '-machine', 'q35'].concat([
        '-accel',
        'tcg',
        '-m',
        '64',
        '-nodefaults',
        '-display',
        'none',
      ]),
      { running },
    );
    const detail = () => `\n${vm.both()}\n${list()}`;
    await until(
      'the VM to run with its disk served',
      () => /vm1: running[^]*vm1\.disk \[leave-paused\]: active/.test(list()),
      30_000,
      { detail },
    );

    expect(cli('partition', 'node-1').code).toBe(0);
    await until(
      'the VM to be stopped',
      () => /vm1: stopped \(vm1\.disk paused for \d+ ms \(stopAfterMs 300\)\)/.test(list()),
      20_000,
      { detail },
    );
    expect(cli('heal', 'node-1').code).toBe(0);
    await until('the VM to be continued', () => /vm1: running/.test(list()), 20_000, { detail });

    expect(cli('partition', 'node-1').code).toBe(0);
    await until('the VM to be stopped again', () => /vm1: stopped/.test(list()), 20_000, { detail });
    expect(cli('write', 'vm1.disk', 'another writer').code).toBe(0);
    expect(cli('heal', 'node-1').code).toBe(0);
    await until('the VM to be held', () => /vm1: held/.test(list()), 20_000, { detail });
    const held = list();
    expect(held).toMatch(/vm1: held \(vm1\.disk: resume denied \(MODIFIED\); policy leave-paused\)/);
    expect(held).toMatch(/vm1\.disk \[leave-paused\]: invalidated; denied MODIFIED/);
    // What the other writer changed: its write at the start of the disk.
    expect(held).toMatch(/denied MODIFIED [^\n]*"changed":"0-4095 \(1 range\)"/);
    // explain of the disk's target names the VM it holds, and why.
    const explained = cli('explain', 'vm1.disk');
    expect(explained.out).toMatch(/vm vm1: held \(vm1\.disk: resume denied \(MODIFIED\); policy leave-paused\)/);
    expect(held).toMatch(/safe-resume vm resume vm1 --accept-modified/);
    const refused = cli('vm', 'resume', 'vm1');
    expect(refused.code).toBe(1);
    expect(refused.err).toMatch(
      /^safe-resume vm resume vm1: MODIFIED: resume denied for vm1\.disk \(MODIFIED\).*--accept-modified/,
    );
    const refusedJson = JSON.parse(cli('vm', 'resume', 'vm1', '--json').out) as { ok: boolean; code: string };
    expect(refusedJson).toMatchObject({ ok: false, code: 'MODIFIED' });
    const listed = JSON.parse(cli('vm', 'list', '--json').out) as { ok: boolean; vms: Array<Record<string, unknown>> };
    expect(listed).toMatchObject({
      ok: true,
      vms: [{ name: 'vm1', phase: 'held', held: [{ target: 'vm1.disk', reason: 'MODIFIED' }] }],
    });
    expect(cli('vm', 'resume', 'vm1', '--accept-modified').out).toMatch(/^vm1: running/);

    expect(cli('vm', 'stop', 'vm1').out).toMatch(/^vm1: stopped \(stopped by an operator\)/);
    vm.proc.kill('SIGTERM');
    expect((await vm.exited).code).toBe(0);
    expect(vm.out()).toMatch(/vm vm1: QEMU exited \(0\)/);
    expect(list()).toMatch(/no VM runs/);
    expect(cli('vm', 'stop', 'vm1')).toMatchObject({
      code: 1,
      err: expect.stringMatching(/NOT_FOUND: no VM vm1 runs/) as string,
    });
    // The VMs' directory is the cluster's own: clean takes it with the rest.
    expect(cli('down').code).toBe(0);
    const cleaned = cli('clean');
    expect(cleaned.out).toMatch(/\(and the directory\)/);
    expect(existsSync(dir)).toBe(false);
  }, 120_000);
});
