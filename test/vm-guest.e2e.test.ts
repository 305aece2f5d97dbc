/**
 * A real Linux guest under QEMU (TCG) whose disk is a target served by the NBD export on a Unix socket:
 * it boots, writes numbered 4 KiB blocks with direct I/O and fsync, each reported done on its serial
 * console, and powers off; every block it reported done reads back with its number from outside. And the
 * same through a SIGKILL of the replica process serving the export's node: the guest sees no error, only
 * a longer write.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Application } from '../actors/application.js';
import { NbdExport } from '../frontends/nbd.js';
import { failoverExport, type FailoverExport } from '../bench/nbd.js';
import { guestBlock, guestInitramfs, guestKernel, GUEST_BLOCK } from '../vm/guest-image.js';
import { startGuest, type ConsoleLine, type Guest } from '../vm/qemu.js';
import { clusters, tempDir } from './helpers.js';

const cluster = clusters({ store: 'memory', replicas: 2 });
const MiB = 1024 * 1024;
let guests: Guest[] = [];

afterEach(async () => {
  for (const g of guests) await g.stop();
  guests = [];
});

/** The block numbers the guest reported done, in the order it did. */
const doneBlocks = (g: Guest) =>
  g.console.map((l) => /^block (\d+) done$/.exec(l.text)?.[1]).flatMap((n) => (n === undefined ? [] : [Number(n)]));

/** Every block in `blocks` read back through a read handle of `app` holds its own number. */
async function readBack(app: Application, target: string, blocks: number[]): Promise<number[]> {
  const h = await app.open(target, { mode: 'read' });
  try {
    const wrong: number[] = [];
    for (const n of blocks) {
      const got = await h.read(n * GUEST_BLOCK, GUEST_BLOCK);
      if (Buffer.compare(Buffer.from(got), Buffer.from(guestBlock(n))) !== 0) wrong.push(n);
    }
    return wrong;
  } finally {
    await h.close();
  }
}

describe('a Linux guest under QEMU on the NBD export', () => {
  beforeAll(async () => {
    if (!existsSync('/usr/bin/qemu-system-x86_64') || !existsSync('/bin/busybox'))
      throw new Error('qemu-system-x86_64 or busybox missing: apt-get install -y qemu-system-x86 busybox-static');
    // Fetched (once) and built before the clocks of the tests start.
    await guestKernel();
    guestInitramfs();
  }, 120_000);

  it('boots with its disk on the export, writes 16 blocks each reported done, and every one reads back with its number', async () => {
    const c = await cluster();
    const app = new Application(await c.addNode('node-1'), { name: 'vm' });
    const t = tempDir();
    const nbd = new NbdExport({ app, size: () => 8 * MiB, path: join(t.dir, 'nbd.sock') });
    await nbd.listen();
    try {
      const g = await startGuest({
        disk: { socket: join(t.dir, 'nbd.sock'), target: 'guest.disk' },
        workload: { blocks: 16 },
      });
      guests.push(g);
      const up = await g.line(/^init up /, 40_000);
      await g.line(/^workload done$/, 30_000);
      expect(await g.exited).toEqual({ code: 0, signal: null });
      expect(g.console.map((l) => l.text).join('\n')).not.toMatch(/I\/O error|failed/);
      expect(doneBlocks(g)).toEqual([...Array(16).keys()]);
      console.log(
        `guest boot: init started ${up.text.slice('init up '.length)} s after the kernel (guest clock), ` +
          `${((up.at - g.startedAt) / 1000).toFixed(1)} s after QEMU was started`,
      );
      // The guest is gone: its handle is closed with its connection, and the blocks are read from outside.
      expect(await readBack(app, 'guest.disk', doneBlocks(g))).toEqual([]);
    } finally {
      await nbd.close();
      t.cleanup();
    }
  }, 60_000);

  it('writes through a SIGKILL of the replica process serving its node: no error in the guest, every block reported done reads back', async () => {
    // Two replica processes over one SQLite file (the dist build's), the node agent and the export here.
    const t = tempDir();
    const blocks = 120;
    const killAfter = 20;
    let e: FailoverExport | undefined;
    try {
      e = await failoverExport(t.dir, 8 * MiB);
      const g = await startGuest({ disk: { socket: e.socket, target: 'failover.disk' }, workload: { blocks } });
      guests.push(g);
      let killed: { replica: string; at: number } | undefined;
      let states: string[] = [];
      const ex = e;
      g.onLine((l) => {
        if (l.text === 'block 0 done') {
          const h = ex.app.list()[0]!;
          states = [h.state];
          h.on('state', (s) => states.push(s));
        }
        if (l.text === `block ${killAfter} done`) killed = { replica: ex.killServing(), at: performance.now() };
      });
      await g.line(/^workload done$/, 50_000);
      expect(await g.exited).toEqual({ code: 0, signal: null });
      const text = g.console.map((l) => l.text).join('\n');
      expect(text).not.toMatch(/I\/O error|failed|blk_update_request|nvme.*(timeout|reset)/i);
      expect(doneBlocks(g)).toEqual([...Array(blocks).keys()]);
      // The kill landed mid-workload: the export's handle paused and was resumed on the other replica.
      expect(killed).toBeDefined();
      expect(states.indexOf('active', states.indexOf('paused'))).toBeGreaterThan(0);
      expect(e.agent.replica).not.toBe(killed!.replica);
      expect(e.writes.failed).toBe(0);
      const done = g.console.filter((l) => /^block \d+ done$/.test(l.text));
      const gaps = done.slice(1).map((l, i): [ConsoleLine, number] => [l, l.at - done[i]!.at]);
      const [after, stall] = gaps.filter(([l]) => l.at >= killed!.at)[0]!;
      const longest = Math.max(...gaps.map(([, gap]) => gap));
      console.log(
        `guest through the failover: '${after.text}' came ${stall.toFixed(0)} ms after the block before it ` +
          `(the kill in between); the longest gap between two blocks ${longest.toFixed(0)} ms; ` +
          `a block took ${(gaps.slice(0, killAfter).reduce((a, [, d]) => a + d, 0) / killAfter).toFixed(0)} ms on average before the kill`,
      );
      expect(await readBack(e.app, 'failover.disk', doneBlocks(g))).toEqual([]);
    } finally {
      await e?.stop();
      t.cleanup();
    }
  }, 60_000);
});
