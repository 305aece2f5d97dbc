/**
 * Several connections to one NBD export (NBD_FLAG_CAN_MULTI_CONN): nbdinfo reports it, nbdcopy copies
 * an image in and out over four connections at once, connections of one principal to one target share
 * one handle (both write, a FLUSH on one covers the writes in flight on the other, an invalidation
 * fails them all, and the target is unlocked once the last goes), and connections of different
 * principals do not share (the second writer is refused while the first holds the lock).
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { connect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { pino } from 'pino';
import { SocketBytes } from './socket-bytes.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Application } from '../actors/application.js';
import { issueCredential, nbdPsk } from '../actors/auth.js';
import { CMD, IHAVEOPT, NbdExport, OPT, REP, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC } from '../frontends/nbd.js';
import { clusters, tempDir, waitFor } from './helpers.js';

const run = promisify(execFile);
const cluster = clusters({ store: 'memory', replicas: 1 });
const MiB = 1024 * 1024;
const EIO = 5;
const dirs: Array<() => void> = [];
afterAll(() => dirs.forEach((cleanup) => cleanup()));

/** A raw NBD client (fixed newstyle, NBD_OPT_GO, simple replies), several requests in flight at once. */
class Client extends SocketBytes {
  private cookie = 0n;
  private readonly calls = new Map<bigint, { length: number; done: (r: { error: number; data?: Buffer }) => void }>();

  /** Connect at `path` and open `target`; with `psk`, first prove `psk.identity` over TLS (STARTTLS). */
  static async open(path: string, target: string, psk?: { identity: string; psk: Buffer }): Promise<Client> {
    const raw = connect(path);
    await once(raw, 'connect');
    let c: Client;
    if (!psk) {
      c = new Client(raw);
      await c.take(18);
      raw.write(Buffer.from([0, 0, 0, 3]));
    } else {
      // Greeting (18 bytes), then the STARTTLS reply (20): TLS from there on.
      let got = Buffer.alloc(0);
      await new Promise<void>((resolve) => {
        const onData = (d: Buffer) => {
          got = Buffer.concat([got, d]);
          if (got.length < 18 + 20) return;
          raw.off('data', onData);
          resolve();
        };
        raw.on('data', onData);
        const opt = Buffer.alloc(16);
        opt.writeBigUInt64BE(IHAVEOPT, 0);
        opt.writeUInt32BE(OPT.STARTTLS, 8);
        raw.write(Buffer.concat([Buffer.from([0, 0, 0, 3]), opt]));
      });
      const tls = tlsConnect({
        socket: raw,
        minVersion: 'TLSv1.3',
        ciphers: 'PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256',
        checkServerIdentity: () => undefined,
        pskCallback: () => psk,
      });
      await once(tls, 'secureConnect');
      c = new Client(tls);
    }
    const n = Buffer.from(target);
    const opt = Buffer.alloc(16 + 4 + n.length + 2);
    opt.writeBigUInt64BE(IHAVEOPT, 0);
    opt.writeUInt32BE(OPT.GO, 8);
    opt.writeUInt32BE(4 + n.length + 2, 12);
    opt.writeUInt32BE(n.length, 16);
    n.copy(opt, 20);
    c.socket.write(opt);
    for (;;) {
      const h = await c.take(20);
      const type = h.readUInt32BE(12);
      const data = await c.take(h.readUInt32BE(16));
      if (type === REP.ACK) break;
      if (type !== REP.INFO) throw new Error(`GO refused (${type.toString(16)}): ${data.toString()}`);
    }
    void c.replies();
    return c;
  }

  private async replies(): Promise<void> {
    try {
      for (;;) {
        const h = await this.take(16);
        if (h.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) throw new Error('bad reply magic');
        const error = h.readUInt32BE(4);
        const cookie = h.readBigUInt64BE(8);
        const call = this.calls.get(cookie)!;
        this.calls.delete(cookie);
        call.done(
          error === 0 && call.length > 0 ? { error, data: Buffer.from(await this.take(call.length)) } : { error },
        );
      }
    } catch {
      for (const call of this.calls.values()) call.done({ error: -1 });
    }
  }

  /** Send a request; resolves with its reply's error (0: done) and, for a read, the bytes. */
  call(type: number, offset: number, length: number, data?: Buffer): Promise<{ error: number; data?: Buffer }> {
    const cookie = ++this.cookie;
    const r = Buffer.alloc(28);
    r.writeUInt32BE(REQUEST_MAGIC, 0);
    r.writeUInt16BE(type, 6);
    r.writeBigUInt64BE(cookie, 8);
    r.writeBigUInt64BE(BigInt(offset), 16);
    r.writeUInt32BE(length, 24);
    const reply = new Promise<{ error: number; data?: Buffer }>((done) =>
      this.calls.set(cookie, { length: type === CMD.READ ? length : 0, done }),
    );
    this.socket.write(data ? Buffer.concat([r, data]) : r);
    return reply;
  }

  write(offset: number, data: Buffer) {
    return this.call(CMD.WRITE, offset, data.length, data);
  }

  read(offset: number, length: number) {
    return this.call(CMD.READ, offset, length);
  }

  /** NBD_CMD_DISC, and wait for the server to close the connection. */
  async disconnect(): Promise<void> {
    const closed = this.closed ? Promise.resolve() : once(this.socket, 'close');
    void this.call(CMD.DISC, 0, 0);
    await closed;
  }
}

/** An export on a Unix socket, its warnings (pino at warn) and what it was told of invalidations. */
async function exported(size: number, extra: { maxConnectionsPerPrincipal?: number } = {}) {
  const c = await cluster();
  const app = new Application(await c.addNode('node-1'), { name: 'nbd' });
  const t = tempDir();
  dirs.push(t.cleanup);
  const path = join(t.dir, 'nbd.sock');
  const warnings: string[] = [];
  const invalidated: string[] = [];
  const log = pino({ level: 'warn' }, { write: (line: string) => void warnings.push(line) });
  const nbd = new NbdExport({
    app,
    path,
    size: () => size,
    log,
    onInvalidated: (target, reason) => invalidated.push(`${target} ${reason}`),
    ...extra,
  });
  await nbd.listen();
  return { c, app, nbd, path, dir: t.dir, warnings, invalidated };
}

const pattern = (byte: number, n = 4096) => Buffer.alloc(n, byte);

describe('NBD export: several connections to one target (multi-conn)', () => {
  beforeAll(() => {
    const missing = ['nbdinfo', 'nbdcopy'].filter((b) => !existsSync(`/usr/bin/${b}`));
    if (missing.length > 0)
      throw new Error(`${missing.join(', ')} missing: apt-get install -y qemu-utils libnbd-bin (as .ci/run does)`);
  });

  it('nbdinfo shows can_multi_conn; nbdcopy copies an image in and out over 4 connections at once, byte-identical, and nothing stays held', async () => {
    const e = await exported(8 * MiB);
    try {
      const info = JSON.parse((await run('nbdinfo', ['--json', e.nbd.urlFor('multi.disk')])).stdout) as {
        exports: Array<Record<string, unknown>>;
      };
      expect(info.exports[0]).toMatchObject({ 'export-size': 8 * MiB, can_multi_conn: true });
      const img = randomBytes(8 * MiB);
      const src = join(e.dir, 'in.raw');
      writeFileSync(src, img);
      let most = 0;
      const watch = setInterval(
        () => (most = Math.max(most, e.nbd.connections().filter((v) => v.target === 'multi.disk').length)),
        2,
      );
      try {
        await run('nbdcopy', ['--connections=4', '--threads=4', '--flush', src, e.nbd.urlFor('multi.disk')]);
      } finally {
        clearInterval(watch);
      }
      expect(most).toBe(4);
      const out = join(e.dir, 'out.raw');
      await run('nbdcopy', ['--connections=4', '--threads=4', e.nbd.urlFor('multi.disk'), out]);
      const sum = (b: Buffer) => createHash('sha256').update(b).digest('hex');
      expect(sum(readFileSync(out))).toBe(sum(img));
      await waitFor('the export to hold no handle', () => e.app.list().length === 0, 10_000);
    } finally {
      await e.nbd.close();
    }
  }, 60_000);

  it("two connections of one principal share the handle: both write, a FLUSH on one waits for the other's write in flight, reads on each see the other's writes, and the target is unlocked once the last goes", async () => {
    const e = await exported(MiB, { maxConnectionsPerPrincipal: 2 });
    const a = await Client.open(e.path, 'shared.disk');
    const b = await Client.open(e.path, 'shared.disk');
    const other = new Application(await e.c.addNode('node-2'), { name: 'other' });
    try {
      // Another writer holds the lock (it writes nothing): a's first write waits for it to go.
      const holder = await other.open('shared.disk');
      const order: string[] = [];
      const wa = a.write(0, pattern(0xa1)).then((r) => (order.push('a write'), r));
      await new Promise((r) => setTimeout(r, 200));
      const fb = b.call(CMD.FLUSH, 0, 0).then((r) => (order.push('b flush'), r));
      await new Promise((r) => setTimeout(r, 300));
      await holder.close();
      expect([(await wa).error, (await fb).error]).toEqual([0, 0]);
      expect(order).toEqual(['a write', 'b flush']);
      // b writes through the same write handle (not refused as another writer), and each reads the other's.
      expect((await b.write(4096, pattern(0xb2))).error).toBe(0);
      expect(await b.read(0, 4096)).toEqual({ error: 0, data: pattern(0xa1) });
      expect(await a.read(4096, 4096)).toEqual({ error: 0, data: pattern(0xb2) });
      expect(e.app.list().map((h) => h.mode)).toEqual(['write']);
      // Each connection still counts against its principal's limit.
      await expect(Client.open(e.path, 'shared.disk')).rejects.toThrow(/principal "default" holds 2 connections/);
      // One goes: the other keeps the handle and writes on.
      await a.disconnect();
      expect((await b.write(8192, pattern(0xb3))).error).toBe(0);
      expect(e.app.list().map((h) => h.mode)).toEqual(['write']);
      await b.disconnect();
      expect(e.app.list()).toEqual([]);
      // The last one gone, the target is unlocked at once.
      const next = await other.open('shared.disk');
      expect(Buffer.from(await next.read(0, 3 * 4096))).toEqual(
        Buffer.concat([pattern(0xa1), pattern(0xb2), pattern(0xb3)]),
      );
      await next.close();
    } finally {
      a.socket.destroy();
      b.socket.destroy();
      await e.nbd.close();
    }
  }, 60_000);

  it('a shared handle whose target another writer changed: the first write fails EIO (MODIFIED) and so does every later request on both connections; a new connection starts afresh', async () => {
    const e = await exported(MiB);
    const a = await Client.open(e.path, 'stale.disk');
    const b = await Client.open(e.path, 'stale.disk');
    let c: Client | undefined;
    try {
      expect((await b.read(0, 4096)).error).toBe(0);
      const other = new Application(await e.c.addNode('node-2'), { name: 'other' });
      const h = await other.open('stale.disk');
      await h.write(0, pattern(3));
      await h.close();
      expect((await a.write(0, pattern(4))).error).toBe(EIO);
      expect((await b.read(0, 4096)).error).toBe(EIO);
      expect((await b.write(0, pattern(5))).error).toBe(EIO);
      expect((await a.call(CMD.FLUSH, 0, 0)).error).toBe(EIO);
      expect(e.invalidated).toEqual(['stale.disk MODIFIED']);
      expect(e.nbd.connections()).toMatchObject([
        { target: 'stale.disk', state: 'invalidated', reason: 'MODIFIED' },
        { target: 'stale.disk', state: 'invalidated', reason: 'MODIFIED' },
      ]);
      // A connection made now sees the target as it is, and writes.
      c = await Client.open(e.path, 'stale.disk');
      expect(await c.read(0, 4096)).toEqual({ error: 0, data: pattern(3) });
      expect((await c.write(0, pattern(6))).error).toBe(0);
      await c.disconnect();
      const check = await other.open('stale.disk', { mode: 'read' });
      expect(Buffer.from(await check.read(0, 4096))).toEqual(pattern(6));
      await check.close();
    } finally {
      for (const cl of [a, b, c]) cl?.socket.destroy();
      await e.nbd.close();
    }
  }, 60_000);

  it('connections of different principals do not share: the second writer is refused while the first holds the lock, and its own two connections share once it has the target', async () => {
    const e = await exported(MiB);
    const alice = { identity: 'alice', psk: nbdPsk(issueCredential(e.c.secret, 'principal', 'alice')) };
    const d = await Client.open(e.path, 'two.disk');
    // default opened it first, so owns it: alice may write it too.
    await e.app.grant('two.disk', 'alice', 'write');
    let x: Client | undefined;
    let y: Client | undefined;
    try {
      expect((await d.write(0, pattern(1))).error).toBe(0);
      x = await Client.open(e.path, 'two.disk', alice);
      // alice's write finds the target LOCKED by default's handle (retried for 2 s, then EIO).
      expect((await x.write(0, pattern(2))).error).toBe(EIO);
      expect(e.warnings.join('')).toMatch(/"code":"LOCKED"[^\n]*nbd write refused/);
      expect(await d.read(0, 4096)).toEqual({ error: 0, data: pattern(1) });
      await d.disconnect();
      y = await Client.open(e.path, 'two.disk', alice);
      // default gone: alice's connections take the target and share its write handle.
      expect((await y.write(0, pattern(2))).error).toBe(0);
      expect((await x.write(4096, pattern(2))).error).toBe(0);
      expect(await y.read(0, 8192)).toEqual({ error: 0, data: pattern(2, 8192) });
      await x.disconnect();
      await y.disconnect();
      const next = await e.app.open('two.disk');
      expect(Buffer.from(await next.read(0, 8192))).toEqual(pattern(2, 8192));
      await next.close();
    } finally {
      for (const cl of [d, x, y]) cl?.socket.destroy();
      await e.nbd.close();
    }
  }, 60_000);

  it('revocation takes effect at the next connection: a revoked principal cannot join the handle its open connection still shares', async () => {
    const e = await exported(MiB);
    const bob = { identity: 'bob', psk: nbdPsk(issueCredential(e.c.secret, 'principal', 'bob')) };
    const d = await Client.open(e.path, 'shared.disk');
    let x: Client | undefined;
    try {
      expect((await d.write(0, pattern(3))).error).toBe(0);
      await e.app.grant('shared.disk', 'bob', 'read');
      x = await Client.open(e.path, 'shared.disk', bob);
      expect(await x.read(0, 4096)).toEqual({ error: 0, data: pattern(3) });
      await e.app.revoke('shared.disk', 'bob');
      // bob's open connection keeps reading until it goes (docs/security.md); a new one is a new open.
      await expect(Client.open(e.path, 'shared.disk', bob)).rejects.toThrow(/GO refused.*FORBIDDEN/);
    } finally {
      for (const cl of [d, x]) cl?.socket.destroy();
      await e.nbd.close();
    }
  }, 60_000);
});
