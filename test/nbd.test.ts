/**
 * The NBD export with real clients from Debian (qemu-utils, libnbd-bin; installed by .ci/run): qemu-io
 * writes patterns and reads them back, nbdinfo reports the size, qemu-img copies a raw image in and out
 * with identical checksums, a replica killed under a client goes unnoticed (in this process, and a
 * replica process SIGKILLed under qemu-img bench), and malformed input gets an error or a closed
 * connection while the export keeps serving.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { Application } from '../actors/application.js';
import { NbdExport, type NbdExportOptions } from '../frontends/nbd.js';
import type { LocalCluster } from '../cluster/local.js';
import type { NodeAgent } from '../actors/node-agent.js';
import { failoverExport, type FailoverExport } from '../bench/nbd.js';
import { clusters, openWhenFree, tempDir, trace, waitFor } from './helpers.js';

const run = promisify(execFile);
const cluster = clusters({ store: 'memory', replicas: 2 });
const MiB = 1024 * 1024;

/** The export on a Unix socket in a fresh directory (as `up` serves it); `url(target)` opens a target. */
async function exported(size = 8 * MiB, extra: Partial<NbdExportOptions> = {}, c?: LocalCluster, agent?: NodeAgent) {
  c ??= await cluster();
  const app = new Application(agent ?? (await c.addNode('node-1')), { name: 'nbd' });
  const t = tempDir();
  const path = join(t.dir, 'nbd.sock');
  const nbd = new NbdExport({ app, size: () => size, path, ...extra });
  await nbd.listen();
  return {
    c,
    app,
    nbd,
    path,
    url: (target: string) => nbd.urlFor(target),
    stop: async () => (await nbd.close(), t.cleanup()),
  };
}

describe('NBD export with real clients', () => {
  beforeAll(() => {
    const missing = ['qemu-io', 'qemu-img', 'nbdinfo'].filter((b) => !existsSync(`/usr/bin/${b}`));
    if (missing.length > 0)
      throw new Error(`${missing.join(', ')} missing: apt-get install -y qemu-utils libnbd-bin (as .ci/run does)`);
  });

  it('nbdinfo reports the size; qemu-io writes patterns and reads them back', async () => {
    const e = await exported(8 * MiB);
    try {
      const info = await run('nbdinfo', ['--json', e.url('disk-a')]);
      expect(JSON.parse(info.stdout)).toMatchObject({ exports: [{ 'export-size': 8 * MiB }] });
      const io = (...cmds: string[]) =>
        run('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), e.url('disk-a')]);
      await io('write -P 0xab 0 64k', 'write -P 0xcd 1M 4k', 'write -P 0x11 8188k 4k', 'flush');
      const back = await io('read -P 0xab 0 64k', 'read -P 0xcd 1M 4k', 'read -P 0x11 8188k 4k', 'read -P 0 2M 4k');
      expect(back.stdout).not.toMatch(/Pattern verification failed|error/i);
      expect(back.stdout.match(/read \d+\/\d+ bytes/g)).toHaveLength(4);
      // Past the end: an error, not a crash; the export still serves.
      const past = await io('read 8M 4k').then(
        (r) => r.stdout + r.stderr,
        (err: { stdout?: string; stderr?: string }) => `${err.stdout}${err.stderr}`,
      );
      expect(past).toMatch(/error|Invalid argument|Input\/output/i);
      expect((await io('read -P 0xab 0 4k')).stdout).toMatch(/read 4096\/4096 bytes/);
    } finally {
      await e.stop();
    }
  }, 60_000);

  it('qemu-img copies a raw image in and out with identical checksums', async () => {
    const e = await exported(4 * MiB);
    const t = tempDir();
    try {
      const src = join(t.dir, 'in.raw');
      const img = Buffer.alloc(4 * MiB);
      randomBytes(MiB).copy(img, 0);
      randomBytes(512 * 1024).copy(img, 3 * MiB);
      writeFileSync(src, img);
      await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, e.url('image')]);
      const out = join(t.dir, 'out.raw');
      await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', e.url('image'), out]);
      const sum = (b: Buffer) => createHash('sha256').update(b).digest('hex');
      expect(sum(readFileSync(out))).toBe(sum(img));
    } finally {
      await e.stop();
      t.cleanup();
    }
  }, 60_000);

  it('a replica killed under a running client: the client never sees an error and its data verifies', async () => {
    const e = await exported(4 * MiB);
    try {
      const io = run('qemu-io', [
        '-f',
        'raw',
        ...Array.from({ length: 64 }, (_, i) => ['-c', `write -P ${(i % 200) + 1} ${i * 64}k 64k`]).flat(),
        e.url('failover'),
      ]);
      // The export reads through a read handle until the first write takes the write handle: trace that one.
      const writer = () => e.app.list().find((h) => h.mode === 'write');
      await waitFor('the export to be writing', () => writer() !== undefined, 10_000);
      const seen = trace(writer()!);
      const serving = e.c.replicas.findIndex((r) => r.sessionCount > 0);
      await e.c.kill(serving >= 0 ? serving : 0);
      const res = await io;
      // It paused, resumed on the other replica, and closed when the client disconnected.
      expect(seen.indexOf('active', seen.indexOf('paused'))).toBeGreaterThan(0);
      expect(res.stdout + res.stderr).not.toMatch(/error|failed/i);
      const check = await run('qemu-io', [
        '-f',
        'raw',
        ...Array.from({ length: 64 }, (_, i) => ['-c', `read -P ${(i % 200) + 1} ${i * 64}k 64k`]).flat(),
        e.url('failover'),
      ]);
      expect(check.stdout).not.toMatch(/Pattern verification failed/);
      expect(check.stdout.match(/read 65536\/65536 bytes/g)).toHaveLength(64);
    } finally {
      await e.stop();
    }
  }, 60_000);

  it('a replica process SIGKILLed during a qemu-img bench write run: the run completes with no error and the data verifies', async () => {
    // Two replica processes over one SQLite file (the dist build's), the node agent and the export here.
    const t = tempDir();
    const count = 6000;
    let started: FailoverExport | undefined;
    let bench: ChildProcess | undefined;
    try {
      const e = (started = await failoverExport(t.dir, 64 * MiB));
      const url = e.nbd.urlFor('killed.disk');
      const b = (bench = spawn(
        'qemu-img',
        ['bench', '-w', '-f', 'raw', '-c', String(count), '-d', '8', '-s', '4k', '-S', '4k', '--pattern=0x5a', url],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      ));
      let stdout = '';
      let stderr = '';
      b.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      b.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const exited = new Promise<number | null>((r) => b.once('exit', (code) => r(code)));
      await waitFor(
        'the export in use with writes acknowledged',
        () => e.app.list()[0]?.state === 'active' && e.writes.ok >= 200,
        20_000,
      );
      const seen = trace(e.app.list()[0]!);
      const before = e.writes.ok;
      const killed = e.killServing();
      expect(await exited, stderr).toBe(0);
      expect(stderr).toBe('');
      expect(stdout).toMatch(/Run completed/);
      // The kill landed mid-run: the handle paused, resumed on the other replica, and every write succeeded.
      expect(before).toBeLessThan(count);
      expect(seen.indexOf('active', seen.indexOf('paused'))).toBeGreaterThan(0);
      expect(e.agent.replica).not.toBe(killed);
      expect(e.writes).toEqual({ ok: count, failed: 0 });
      await waitFor('the handle released', () => e.app.list().length === 0, 10_000);
      const check = await run('qemu-io', [
        '-f',
        'raw',
        '-c',
        `read -P 0x5a 0 ${count * 4096}`,
        '-c',
        `read -P 0 ${count * 4096} 4k`,
        url,
      ]);
      expect(check.stdout).not.toMatch(/Pattern verification failed/);
      expect(check.stdout).toMatch(
        new RegExp(`read ${count * 4096}/${count * 4096} bytes[\\s\\S]*read 4096/4096 bytes`),
      );
    } finally {
      bench?.kill('SIGKILL');
      await started?.stop();
      t.cleanup();
    }
  }, 60_000);

  it('a node partitioned past its hold while another writer changes the target: the client gets EIO, never a stale success', async () => {
    const c = await cluster();
    const { app, nbd, url, stop } = await exported(MiB, {}, c, await c.addNode('node-1', { proxied: true }));
    try {
      // 400 writes of 4 KiB, one after another; the node is cut off while they run.
      const io = run('qemu-io', [
        '-f',
        'raw',
        ...Array.from({ length: 400 }, (_, i) => ['-c', `write -P 7 ${(i % 256) * 4}k 4k`]).flat(),
        url('shared.disk'),
      ]).then(
        (r) => r.stdout + r.stderr,
        (err: { stdout?: string; stderr?: string }) => `${err.stdout ?? ''}${err.stderr ?? ''}`,
      );
      // The connection reads through a read handle and takes a write handle at its first write.
      await waitFor('the export to be writing', () => app.list().some((x) => x.mode === 'write'), 10_000);
      const h = app.list().find((x) => x.mode === 'write')!;
      const seen = trace(h);
      await new Promise((r) => setTimeout(r, 50));
      c.partition('node-1');
      await waitFor('the handle to pause', () => seen.includes('paused'), 10_000);
      // Past the hold period another application opens the target and writes it.
      const intruder = new Application(await c.addNode('node-2'), { name: 'intruder' });
      const other = await openWhenFree(intruder, 'shared.disk');
      await other.write(0, new Uint8Array(4096).fill(9));
      await other.close();
      c.heal('node-1');
      const out = await io;
      expect(h.reason).toBe('MODIFIED');
      const lines = out.split('\n');
      const firstError = lines.findIndex((l) => /Input\/output error/.test(l));
      expect(firstError).toBeGreaterThan(0);
      // Nothing succeeds once one request failed: every later write is refused too.
      expect(lines.slice(firstError).some((l) => /^wrote /.test(l))).toBe(false);
      await waitFor('the client connection gone', () => nbd.connections().length === 0, 10_000);
      // The invalidated handle was closed, not kept by the application for the node's lifetime.
      await waitFor('the invalidated handle to be released', () => app.list().length === 0, 10_000);
    } finally {
      await stop();
    }
  }, 60_000);

  it('a client that goes away while its target is being opened leaves nothing held: the next client opens it', async () => {
    const c = await cluster();
    const agent = await c.addNode('node-1', { proxied: true });
    const { app, url, stop } = await exported(MiB, {}, c, agent);
    try {
      // Storage is away, so the open waits; the client gives up and disconnects meanwhile.
      c.partition('node-1');
      await waitFor('the node to notice', () => agent.state !== 'connected', 10_000);
      const gone = run('qemu-io', ['-f', 'raw', '-c', 'read 0 4k', url('left.disk')], { timeout: 1500 }).catch(
        () => undefined,
      );
      await gone;
      c.heal('node-1');
      await waitFor('the node to reconnect', () => agent.state === 'connected', 10_000);
      const next = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 4k', url('left.disk')]);
      expect(next.stdout).toMatch(/wrote 4096\/4096 bytes/);
      await waitFor('every handle released', () => app.list().length === 0, 10_000);
    } finally {
      c.heal('node-1');
      await stop();
    }
  }, 60_000);

  it('a client that connects and says nothing is dropped when the handshake time is up', async () => {
    const { path, stop } = await exported(MiB, { handshakeTimeoutMs: 300 });
    try {
      const closed = await new Promise<boolean>((resolve) => {
        const s = connect(path);
        s.on('data', () => undefined);
        s.on('close', () => resolve(true));
        setTimeout(() => (s.destroy(), resolve(false)), 5000);
      });
      expect(closed).toBe(true);
    } finally {
      await stop();
    }
  }, 30_000);

  it('with onFailure error, a request fails with EIO at once while storage is away', async () => {
    const c = await cluster();
    const { app, url, stop } = await exported(
      MiB,
      { onFailure: 'error' },
      c,
      await c.addNode('node-1', { proxied: true }),
    );
    try {
      const io = run('qemu-io', [
        '-f',
        'raw',
        ...Array.from({ length: 400 }, (_, i) => ['-c', `write -P 3 ${(i % 256) * 4}k 4k`]).flat(),
        url('fast.disk'),
      ]).then(
        (r) => r.stdout + r.stderr,
        (err: { stdout?: string; stderr?: string }) => `${err.stdout ?? ''}${err.stderr ?? ''}`,
      );
      await waitFor('the export to be in use', () => app.list().length > 0, 10_000);
      await new Promise((r) => setTimeout(r, 50));
      c.partition('node-1');
      // The link heals only after the client is done: it finishes because its requests fail, not wait.
      const out = await io;
      expect(out).toMatch(/Input\/output error/);
    } finally {
      c.heal('node-1');
      await stop();
    }
  }, 60_000);

  it('a target created with a size is exported with its own size, not the default; writes past its end fail', async () => {
    const e = await exported(8 * MiB);
    try {
      const h = await e.app.open('sized.disk', { size: 12 * MiB + 512 });
      expect(h.size).toBe(12 * MiB + 512);
      await h.close();
      const info = await run('nbdinfo', ['--json', e.url('sized.disk')]);
      expect(JSON.parse(info.stdout)).toMatchObject({ exports: [{ 'export-size': 12 * MiB + 512 }] });
      const io = await run('qemu-io', [
        '-f',
        'raw',
        '-c',
        'write -P 0x33 12M 512',
        '-c',
        'read -P 0x33 12M 512',
        '-c',
        'read -P 0 11M 4k',
        e.url('sized.disk'),
      ]);
      expect(io.stdout).not.toMatch(/verification failed|error/i);
      expect(io.stdout.match(/(wrote|read) \d+\/\d+ bytes/g)).toHaveLength(3);
      // The SDK refuses to open it with another size, and its size survives being opened without one.
      await expect(e.app.open('sized.disk', { size: MiB })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
      const again = await e.app.open('sized.disk', { mode: 'read' });
      expect(again.size).toBe(12 * MiB + 512);
      await again.close();
    } finally {
      await e.stop();
    }
  }, 60_000);

  it('serves on a Unix socket too', async () => {
    const c = await cluster();
    const t = tempDir();
    const nbd = new NbdExport({
      app: new Application(await c.addNode('node-1'), { name: 'nbd' }),
      size: () => MiB,
      path: join(t.dir, 'nbd.sock'),
    });
    try {
      await nbd.listen();
      expect(nbd.urlFor('unix.disk')).toBe(`nbd+unix:///unix.disk?socket=${join(t.dir, 'nbd.sock')}`);
      const out = await run('qemu-io', [
        '-f',
        'raw',
        '-c',
        'write -P 5 0 4k',
        '-c',
        'read -P 5 0 4k',
        nbd.urlFor('unix.disk'),
      ]);
      expect(out.stdout).toMatch(/wrote 4096\/4096 bytes[\s\S]*read 4096\/4096 bytes/);
    } finally {
      await nbd.close();
      t.cleanup();
    }
  }, 60_000);

  it('malformed input: a bad magic closes the connection, an unknown option is refused, and the export keeps serving', async () => {
    const e = await exported(MiB);
    try {
      const talk = (bytes: Buffer) =>
        new Promise<{ data: Buffer; closed: boolean }>((resolve) => {
          const s = connect(e.path);
          let data = Buffer.alloc(0);
          s.on('data', (d) => (data = Buffer.concat([data, d])));
          s.on('connect', () => s.write(bytes));
          s.on('close', () => resolve({ data, closed: true }));
          setTimeout(() => {
            s.destroy();
            resolve({ data, closed: false });
          }, 1500);
        });
      const flags = Buffer.from([0, 0, 0, 3]);
      const bad = await talk(Buffer.concat([flags, Buffer.from('not an option header')]));
      expect(bad.closed).toBe(true);
      const opt = Buffer.alloc(16);
      opt.writeBigUInt64BE(0x49484156454f5054n, 0);
      opt.writeUInt32BE(999, 8);
      const unknown = await talk(Buffer.concat([flags, opt]));
      // 18 bytes of greeting, then a 20-byte reply whose type is NBD_REP_ERR_UNSUP.
      expect(unknown.data.readUInt32BE(18 + 12)).toBe(0x80000001);
      // (The export runs in this process: a client must be run asynchronously.)
      expect((await run('nbdinfo', ['--size', e.url('still')])).stdout.trim()).toBe(String(MiB));
    } finally {
      await e.stop();
    }
  }, 60_000);
});
