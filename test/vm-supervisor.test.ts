/**
 * The VM supervisor against a real QEMU whose disk is a safe-resume target served by the NBD export
 * (no guest: the disk is attached, nothing boots). A storage blip is the node cut off from the replica
 * (its handles pause) and healed (they resume); a denial is another node writing the target meanwhile.
 * A second QMP monitor on the same QEMU observes what the guest's run state is.
 */
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Application } from '../actors/application.js';
import { NbdExport } from '../frontends/nbd.js';
import type { ResumePolicy } from '../vm/policy.js';
import { QmpClient } from '../vm/qmp.js';
import { VmSupervisor } from '../vm/supervisor.js';
import { clusters, openWhenFree, tempDir, waitFor } from './helpers.js';
import { bareQemu, nbdDisk, requireQemu } from './qemu.js';

const cluster = clusters({ store: 'memory', replicas: 1 });
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});
const TARGET = 'vm1.disk';

async function setUp(policy: ResumePolicy, stopAfterMs: number) {
  const c = await cluster();
  const node = await c.addNode('node-1', { proxied: true });
  const app = new Application(node, { name: 'vm' });
  const t = tempDir();
  cleanups.push(t.cleanup);
  const nbdPath = join(t.dir, 'nbd.sock');
  const vm = new VmSupervisor({
    name: 'vm1',
    qmpPath: join(t.dir, 'qmp.sock'),
    disks: [{ target: TARGET, policy }],
    stopAfterMs,
  });
  cleanups.push(() => vm.close());
  const nbd = new NbdExport({
    app,
    path: nbdPath,
    size: () => 1024 * 1024,
    onHandle: vm.onHandle,
    onInvalidated: vm.onInvalidated,
  });
  await nbd.listen();
  cleanups.push(() => nbd.close());
  const observerPath = join(t.dir, 'observer.sock');
  const q = await bareQemu(
    ['-qmp', `unix:${observerPath},server=on,wait=off`, ...nbdDisk(nbdPath, TARGET)],
    join(t.dir, 'qmp.sock'),
  );
  cleanups.push(q.cleanup);
  await vm.connect();
  const observer = await QmpClient.connect(observerPath, { retryMs: 10_000 });
  cleanups.push(() => observer.close());
  // While a disk is paused under the guest's requests (the firmware reads it), QEMU's `stop` pauses the
  // vCPUs and sends STOP at once but answers nothing until those requests are done: watch the events.
  const events: string[] = [];
  observer.onEvent((ev) => events.push(ev.event));
  await observer.execute('cont');
  await waitFor('the disk to be served', () => vm.view().disks[0]!.state === 'active');
  const status = async () => (await observer.status()).status;
  /** Another node writes TARGET while node-1 is cut off: node-1's resume will be denied MODIFIED. */
  const writeElsewhere = async () => {
    const other = new Application(await c.addNode('node-2'), { name: 'other' });
    const h = await openWhenFree(other, TARGET);
    await h.write(0, new Uint8Array([1, 2, 3]));
    await h.close();
  };
  return { c, vm, q, status, writeElsewhere, events };
}

describe('VM supervisor with a real QEMU on the NBD export', () => {
  beforeAll(requireQemu);

  it('a disk paused past stopAfterMs stops the VM (paused); the resume granted continues it (running)', async () => {
    const e = await setUp('leave-paused', 300);
    expect(await e.status()).toBe('running');
    e.c.partition('node-1');
    await waitFor('the disk to pause', () => e.vm.view().disks[0]!.state === 'paused');
    expect(e.events).not.toContain('STOP');
    await waitFor('the VM to be stopped', () => e.vm.view().phase === 'stopped', 5000);
    await waitFor('QEMU to stop the guest', () => e.events.includes('STOP'), 5000);
    expect(e.vm.view().why).toMatch(/vm1\.disk paused for \d+ ms \(stopAfterMs 300\)/);
    e.c.heal('node-1');
    await waitFor('the VM to be continued', () => e.vm.view().phase === 'running', 10_000);
    await e.vm.settled();
    expect(await e.status()).toBe('running');
    expect(e.events.slice(-2)).toEqual(['STOP', 'RESUME']);
    expect(e.vm.view().history.map((h) => h.what)).toContain('cont: every disk resumed');
  }, 60_000);

  it('leave-paused: a denied resume keeps the VM paused with the disk and the reason', async () => {
    const e = await setUp('leave-paused', 0);
    e.c.partition('node-1');
    await waitFor('the VM to be stopped', () => e.vm.view().phase === 'stopped', 5000);
    await e.writeElsewhere();
    e.c.heal('node-1');
    await waitFor('the denial', () => e.vm.view().phase === 'held', 10_000);
    await e.vm.settled();
    expect(await e.status()).toBe('paused');
    const v = e.vm.view();
    expect(v.held).toMatchObject([{ target: TARGET, reason: 'MODIFIED', policy: 'leave-paused' }]);
    expect(v.held[0]!.details).toMatchObject({ mode: 'read', changed: '0-4095 (1 range)' });
    expect(v.why).toBe('vm1.disk: resume denied (MODIFIED); policy leave-paused');
    await expect(e.vm.resume()).rejects.toThrow(/--accept-modified/);
    expect(await e.status()).toBe('paused');
    await e.vm.resume({ acceptModified: true });
    expect(await e.status()).toBe('running');
  }, 60_000);

  it('kill: a denied resume ends the QEMU process', async () => {
    const e = await setUp('kill', 0);
    e.c.partition('node-1');
    await waitFor('the VM to be stopped', () => e.vm.view().phase === 'stopped', 5000);
    await e.writeElsewhere();
    e.c.heal('node-1');
    expect(await e.q.exited).toBe(0);
    expect(e.vm.view().phase).toBe('killed');
    expect(e.vm.view().why).toBe('vm1.disk: resume denied (MODIFIED); policy kill');
  }, 60_000);

  it('report: a denied resume continues the VM', async () => {
    const e = await setUp('report', 0);
    e.c.partition('node-1');
    await waitFor('QEMU to stop the guest', () => e.events.includes('STOP'), 5000);
    await e.writeElsewhere();
    e.c.heal('node-1');
    await waitFor('the VM to be continued', () => e.vm.view().phase === 'running', 10_000);
    await e.vm.settled();
    expect(await e.status()).toBe('running');
    expect(e.vm.view().disks[0]).toMatchObject({ state: 'invalidated', denial: { reason: 'MODIFIED' } });
  }, 60_000);
});
