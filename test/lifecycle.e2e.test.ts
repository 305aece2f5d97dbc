/**
 * The launcher's life as an operator sees it, through real processes: started, interrupted, started
 * twice, stopped. Every case here was seen going wrong once; each asserts what the user sees now.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { tempDir } from './helpers.js';

const CLI = join(import.meta.dirname, '..', 'dist', 'cluster', 'cli.js');
const running = new Set<ChildProcess>();

interface Up {
  proc: ChildProcess;
  out: () => string;
  err: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** `safe-resume up` on a small cluster in `dir`. */
function up(dir: string, extra: string[] = []): Up {
  // A process group of its own, as a shell gives a command: a Ctrl-C signals the whole group.
  const proc = spawn('node', [CLI, 'up', '--dir', dir, '--replicas', '1', '--nodes', '1', '--apps', '1', ...extra], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  running.add(proc);
  let out = '';
  let err = '';
  proc.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  proc.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => proc.once('exit', (code, signal) => (running.delete(proc), r({ code, signal }))));
  return { proc, out: () => out, err: () => err, exited };
}

function cli(dir: string, ...args: string[]) {
  const r = spawnSync('node', [CLI, ...args, '--dir', dir], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

async function until(what: string, check: () => boolean, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

afterEach(() => {
  for (const p of running) p.kill('SIGKILL');
});

describe('the launcher as an operator uses it', () => {
  it('Ctrl-C while its children are already dying (the terminal signals them all at once) stops cleanly: exit 0, no trace, no control.json', async () => {
    const t = tempDir();
    try {
      for (let round = 0; round < 6; round++) {
        const u = up(t.dir, ['--replicas', '3', '--nodes', '2', '--apps', '2']);
        await until('the cluster', () => existsSync(join(t.dir, 'control.json')) && /inspector/.test(u.out()));
        const s = JSON.parse(cli(t.dir, 'status', '--json').out) as { replicas: Array<{ pid: number }>; nodes: Array<{ pid: number }> };
        const pids = [...s.replicas, ...s.nodes].map((c) => c.pid);
        // As a terminal's Ctrl-C does: SIGINT to the launcher and every child at once.
        process.kill(-u.proc.pid!, 'SIGINT');
        const end = await u.exited;
        expect({ end, err: u.err() }).toEqual({ end: { code: 0, signal: null }, err: expect.not.stringMatching(/Error|EPIPE|at /) });
        expect(u.out()).toMatch(/stopped\n$/);
        expect(existsSync(join(t.dir, 'control.json'))).toBe(false);
        expect(pids.filter(alive)).toEqual([]);
      }
    } finally {
      t.cleanup();
    }
  }, 120_000);

  it('with --stately, Ctrl-C stops and exits (it printed "stopped" and never exited)', async () => {
    const t = tempDir();
    try {
      const u = up(t.dir, ['--stately', '--stately-port', String(await freePort())]);
      await until('the cluster', () => existsSync(join(t.dir, 'control.json')) && /stately/.test(u.out()));
      process.kill(-u.proc.pid!, 'SIGINT');
      const end = await Promise.race([u.exited, new Promise<'still running'>((r) => setTimeout(() => r('still running'), 15_000))]);
      expect({ end, out: u.out().slice(-40) }).toEqual({ end: { code: 0, signal: null }, out: expect.stringMatching(/stopped\n$/) });
    } finally {
      t.cleanup();
    }
  }, 60_000);
});
