/**
 * The VM supervisor and its resume policies with a real Linux guest writing to its disk: the guest's
 * node is cut off from the replicas while the guest's writes are in flight. Cut off past stopAfterMs and
 * healed, the VM is stopped (QEMU's STOP) and continued (RESUME), and the guest finishes its workload
 * with no error. Cut off past the hold period while another node writes two ranges of the disk, the
 * resume is denied MODIFIED and the disk's policy decides: leave-paused keeps the VM stopped and says
 * which disk, why and what changed; report continues it and the guest sees its write fail (EIO); kill
 * ends QEMU.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Application } from '../actors/application.js';
import { NbdExport } from '../frontends/nbd.js';
import { guestBlock, guestInitramfs, guestKernel, GUEST_BLOCK } from '../vm/guest-image.js';
import type { ResumePolicy } from '../vm/policy.js';
import { QmpClient } from '../vm/qmp.js';
import { startGuest, type Guest } from '../vm/qemu.js';
import { VmSupervisor } from '../vm/supervisor.js';
import { clusters, openWhenFree, tempDir, waitFor } from './helpers.js';

const cluster = clusters({ store: 'memory', replicas: 1 });
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});
const TARGET = 'vm1.disk';
const MiB = 1024 * 1024;
/** The two ranges another node writes while the guest's node is cut off (away from the guest's blocks). */
const OTHER_WRITES: Array<[number, number]> = [
  [4 * MiB, GUEST_BLOCK],
  [6 * MiB, 2 * GUEST_BLOCK],
];

/** The block numbers the guest reported done, in the order it did. */
const doneBlocks = (g: Guest) =>
  g.console.map((l) => /^block (\d+) done$/.exec(l.text)?.[1]).flatMap((n) => (n === undefined ? [] : [Number(n)]));

/**
 * A guest writing `blocks` blocks to TARGET on node-1's export, supervised with `policy`; a second QMP
 * monitor records QEMU's events. Resolves once the guest has reported `block 3 done`.
 */
async function setUp(policy: ResumePolicy, blocks: number) {
  const c = await cluster();
  const app = new Application(await c.addNode('node-1', { proxied: true }), { name: 'vm' });
  const t = tempDir();
  cleanups.push(t.cleanup);
  const nbdPath = join(t.dir, 'nbd.sock');
  const qmpPath = join(t.dir, 'qmp.sock');
  const vm = new VmSupervisor({ name: 'vm1', qmpPath, disks: [{ target: TARGET, policy }], stopAfterMs: 300 });
  cleanups.push(() => vm.close());
  const nbd = new NbdExport({
    app,
    path: nbdPath,
    size: () => 8 * MiB,
    onHandle: vm.onHandle,
    onInvalidated: vm.onInvalidated,
  });
  await nbd.listen();
  cleanups.push(() => nbd.close());
  const observerPath = join(t.dir, 'observer.sock');
  const g = await startGuest({
    disk: { socket: nbdPath, target: TARGET },
    workload: { blocks, pauseMs: 20 },
    qmp: qmpPath,
    qemuArgs: ['-qmp', `unix:${observerPath},server=on,wait=off`],
  });
  cleanups.push(() => g.stop());
  await vm.connect();
  const observer = await QmpClient.connect(observerPath, { retryMs: 10_000 });
  cleanups.push(() => observer.close());
  const events: string[] = [];
  observer.onEvent((ev) => events.push(ev.event));
  await g.line(/^block 3 done$/, 40_000);
  /** Another node writes OTHER_WRITES to TARGET (once node-1's lock is free): node-1's resume is denied. */
  const writeElsewhere = async () => {
    const other = new Application(await c.addNode('node-2'), { name: 'other' });
    const h = await openWhenFree(other, TARGET);
    for (const [at, len] of OTHER_WRITES) await h.write(at, new Uint8Array(len).fill(7));
    await h.close();
  };
  return { c, app, vm, g, events, writeElsewhere };
}

/** Cut node-1 off while the guest writes; another node writes two ranges; heal: the resume is denied. */
async function deniedUnderGuest(e: Awaited<ReturnType<typeof setUp>>) {
  e.c.partition('node-1');
  await waitFor('QEMU to stop the guest', () => e.events.includes('STOP'), 5000);
  await e.writeElsewhere();
  e.c.heal('node-1');
}

describe('VM resume policies with a Linux guest writing to its disk', () => {
  beforeAll(async () => {
    if (!existsSync('/usr/bin/qemu-system-x86_64') || !existsSync('/bin/busybox'))
      throw new Error('qemu-system-x86_64 or busybox missing: apt-get install -y qemu-system-x86 busybox-static');
    await guestKernel();
    guestInitramfs();
  }, 120_000);

  it('a blip past stopAfterMs stops the VM, the granted resume continues it, and the workload completes', async () => {
    const blocks = 40;
    const e = await setUp('leave-paused', blocks);
    e.c.partition('node-1');
    await waitFor('the disk to pause', () => e.vm.view().disks[0]!.state === 'paused', 5000);
    await waitFor('QEMU to stop the guest', () => e.events.includes('STOP'), 5000);
    expect(e.vm.view().phase).toBe('stopped');
    expect(e.vm.view().why).toMatch(/^vm1\.disk paused for \d+ ms \(stopAfterMs 300\)$/);
    // Held cut off well past stopAfterMs (and past the hold period: nobody else writes, so it is granted).
    await new Promise((r) => setTimeout(r, 1000));
    const stoppedAt = doneBlocks(e.g).length;
    e.c.heal('node-1');
    await waitFor('QEMU to continue the guest', () => e.events.includes('RESUME'), 10_000);
    await e.g.line(/^workload done$/, 40_000);
    expect(await e.g.exited).toEqual({ code: 0, signal: null });
    expect(e.events.filter((ev) => ev === 'STOP' || ev === 'RESUME')).toEqual(['STOP', 'RESUME']);
    expect(e.g.console.map((l) => l.text).join('\n')).not.toMatch(/failed|I\/O error/);
    expect(doneBlocks(e.g)).toEqual([...Array(blocks).keys()]);
    expect(stoppedAt).toBeLessThan(blocks);
    expect(e.vm.view().history.map((h) => h.what)).toContain('cont: every disk resumed');
    const h = await e.app.open(TARGET, { mode: 'read' });
    try {
      for (const n of doneBlocks(e.g))
        expect(Buffer.from(await h.read(n * GUEST_BLOCK, GUEST_BLOCK)), `block ${n}`).toEqual(
          Buffer.from(guestBlock(n)),
        );
    } finally {
      await h.close();
    }
  }, 60_000);

  it('leave-paused: the denied resume keeps the VM stopped, naming the disk, the reason and the two changed ranges', async () => {
    const e = await setUp('leave-paused', 400);
    await deniedUnderGuest(e);
    await waitFor('the denial', () => e.vm.view().phase === 'held', 10_000);
    const before = e.g.console.length;
    await new Promise((r) => setTimeout(r, 1000));
    const v = e.vm.view();
    expect(v.why).toBe('vm1.disk: resume denied (MODIFIED); policy leave-paused');
    expect(v.held).toMatchObject([
      {
        target: TARGET,
        reason: 'MODIFIED',
        policy: 'leave-paused',
        details: { changed: `4194304-4198399, 6291456-6299647 (2 ranges)` },
      },
    ]);
    expect(e.events.filter((ev) => ev === 'STOP' || ev === 'RESUME')).toEqual(['STOP']);
    // Stopped: the guest prints nothing more, and QEMU is still there.
    expect(e.g.console.slice(before)).toEqual([]);
    expect(e.g.running).toBe(true);
  }, 60_000);

  it('report: the denied resume continues the VM and the guest sees its write fail', async () => {
    const e = await setUp('report', 400);
    await deniedUnderGuest(e);
    const failed = await e.g.line(/^block \d+ failed/, 20_000);
    // The export answers EIO; QEMU's NVMe reports it to the guest as a write fault, which Linux's NVMe
    // driver turns into a medium error: dd says ENODATA.
    expect(failed.text).toMatch(/dd: error writing '\/dev\/nvme0n1': No data available/);
    expect(e.vm.view().history.map((h) => h.what)).toContain(
      'cont: continued; vm1.disk (MODIFIED) reported to the guest as I/O errors',
    );
    expect(e.events).toContain('RESUME');
    expect(e.vm.view().disks[0]).toMatchObject({ state: 'invalidated', denial: { reason: 'MODIFIED' } });
    const n = Number(/^block (\d+)/.exec(failed.text)![1]);
    expect(doneBlocks(e.g)).toEqual([...Array(n).keys()]);
    // The guest powers off after the failure.
    expect(await e.g.exited).toEqual({ code: 0, signal: null });
  }, 60_000);

  it('kill: the denied resume ends QEMU', async () => {
    const e = await setUp('kill', 400);
    await deniedUnderGuest(e);
    // QEMU's `quit`: it exits before the guest finished its workload.
    expect(await e.g.exited).toEqual({ code: 0, signal: null });
    expect(e.g.console.map((l) => l.text)).not.toContain('workload done');
    expect(e.vm.view().phase).toBe('killed');
    expect(e.vm.view().why).toBe('vm1.disk: resume denied (MODIFIED); policy kill');
  }, 60_000);
});
