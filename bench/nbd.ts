/**
 * The nbd group: `qemu-img bench` (Debian's qemu-utils) 4 KiB writes and reads, one at a time and 16
 * deep, through the safe-resume NBD export (a node agent in this process, a replica process over SQLite
 * FULL), against `qemu-nbd` serving a raw file on the same machine: the block export a user would
 * otherwise pick (it writes to the page cache; flushes reach the disk).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface QemuBench {
  /** Operations per second. */
  rate: number;
}

/** `qemu-img bench` of `count` 4 KiB requests at `depth` on `url` (writes with `write`). */
export async function qemuImgBench(url: string, count: number, depth: number, write: boolean): Promise<QemuBench> {
  // -S 4k: consecutive requests walk the disk 4 KiB at a time (wrapping within the export).
  const args = ['bench', '-f', 'raw', '-c', String(count), '-d', String(depth), '-s', '4k', '-S', '4k', ...(write ? ['-w'] : []), url];
  const t0 = performance.now();
  const { stdout } = await run('qemu-img', args, { timeout: 600_000 });
  const m = /Run completed in ([\d.]+) seconds/.exec(stdout);
  const seconds = m ? Number(m[1]) : (performance.now() - t0) / 1000;
  return { rate: count / seconds };
}

/**
 * `qemu-nbd` serving a raw file of `size` bytes in `dir` on a Unix socket (as the export is measured:
 * TCP on loopback adds delayed-ACK stalls to qemu-nbd's pipelined replies); resolves once it accepts.
 */
export async function qemuNbd(dir: string, size: number): Promise<{ url: string; proc: ChildProcess }> {
  const file = join(dir, 'baseline.raw');
  writeFileSync(file, Buffer.alloc(0));
  await run('qemu-img', ['resize', '-f', 'raw', file, String(size)]);
  const socket = join(dir, 'qemu-nbd.sock');
  const proc = spawn('qemu-nbd', ['-f', 'raw', '-x', 'disk', '-k', socket, '--persistent', '--shared', '16', file], { stdio: 'ignore' });
  const url = `nbd+unix:///disk?socket=${socket}`;
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      await run('nbdinfo', ['--size', url]);
      return { url, proc };
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`qemu-nbd did not answer: ${String(err)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}
