/**
 * The NBD export's resources and read-only clients: zeros cost no store pages (WRITE_ZEROES, TRIM),
 * zero requests count against a connection's budget, a client that only reads never locks its
 * target, a client whose target another writer changed since it connected never writes over it, and
 * connections are limited per principal and closed when idle.
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync, statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { promisify } from 'node:util';
import { SocketBytes } from './socket-bytes.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Application } from '../actors/application.js';
import { issueCredential, nbdPskLine } from '../actors/auth.js';
import { CMD, IHAVEOPT, NbdExport, OPT, REP, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC } from '../frontends/nbd.js';
import { join } from 'node:path';
import { clusters, tempDir, waitFor } from './helpers.js';

const run = promisify(execFile);
const cluster = clusters({ store: 'sqlite', replicas: 1 });
const MiB = 1024 * 1024;
/** A fresh Unix socket path for an export (its directory is removed with the test run's temp files). */
const sockets: Array<() => void> = [];
function socketPath(): string {
  const t = tempDir();
  sockets.push(t.cleanup);
  return join(t.dir, 'nbd.sock');
}
/** The Unix socket an export listens on (its URL is `nbd+unix:///?socket=PATH`). */
const socketOf = (nbd: NbdExport): string => new URL(nbd.url).searchParams.get('socket')!;

/** A raw NBD client: the fixed newstyle handshake and NBD_OPT_GO, then simple requests. */
class RawClient extends SocketBytes {
  static async connect(path: string): Promise<RawClient> {
    const s = connect(path);
    await new Promise<void>((resolve, reject) => {
      s.once('connect', resolve);
      s.once('error', reject);
    });
    return new RawClient(s);
  }

  /** Greeting, flags, NBD_OPT_GO for `name`: the final reply's type and its text (an error's message). */
  async go(name: string): Promise<{ type: number; text: string }> {
    await this.take(18);
    this.socket.write(Buffer.from([0, 0, 0, 3]));
    const n = Buffer.from(name);
    const opt = Buffer.alloc(16 + 4 + n.length + 2);
    opt.writeBigUInt64BE(IHAVEOPT, 0);
    opt.writeUInt32BE(OPT.GO, 8);
    opt.writeUInt32BE(4 + n.length + 2, 12);
    opt.writeUInt32BE(n.length, 16);
    n.copy(opt, 20);
    this.socket.write(opt);
    for (;;) {
      const h = await this.take(20);
      const type = h.readUInt32BE(12);
      const data = await this.take(h.readUInt32BE(16));
      if (type !== REP.INFO) return { type, text: data.toString() };
    }
  }

  request(type: number, cookie: number, offset: number, length: number): void {
    const r = Buffer.alloc(28);
    r.writeUInt32BE(REQUEST_MAGIC, 0);
    r.writeUInt16BE(type, 6);
    r.writeBigUInt64BE(BigInt(cookie), 8);
    r.writeBigUInt64BE(BigInt(offset), 16);
    r.writeUInt32BE(length, 24);
    this.socket.write(r);
  }

  /** One simple reply without data: its error and cookie. */
  async reply(): Promise<{ error: number; cookie: number }> {
    const h = await this.take(16);
    if (h.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) throw new Error('bad reply magic');
    return { error: h.readUInt32BE(4), cookie: Number(h.readBigUInt64BE(8)) };
  }
}

/** qemu-io in interactive mode, fed one command at a time. */
function interactive(args: string[]) {
  const p = spawn('qemu-io', args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  p.stdout.on('data', (d: Buffer) => (out += d.toString()));
  p.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((r) => p.once('exit', () => r()));
  return {
    /** Send a command and wait until the output matches `until`. */
    async cmd(line: string, until: RegExp): Promise<string> {
      const from = out.length;
      p.stdin.write(`${line}\n`);
      await waitFor(`qemu-io to answer ${line}`, () => until.test(out.slice(from)), 20_000);
      return out.slice(from);
    },
    async quit(): Promise<void> {
      p.stdin.end('quit\n');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
      p.kill();
    },
  };
}

describe('NBD export: zeros, read-only clients and connection limits', () => {
  beforeAll(() => {
    const missing = ['qemu-io', 'nbdinfo'].filter((b) => !existsSync(`/usr/bin/${b}`));
    if (missing.length > 0)
      throw new Error(`${missing.join(', ')} missing: apt-get install -y qemu-utils libnbd-bin (as .ci/run does)`);
  });
  afterAll(() => sockets.forEach((cleanup) => cleanup()));

  it('WRITE_ZEROES of 48 MiB leaves the SQLite store small and reads back zeros; TRIM frees the pages of a written range', async () => {
    const c = await cluster();
    const app = new Application(await c.addNode('node-1'), { name: 'nbd' });
    const nbd = new NbdExport({ app, path: socketPath(), size: () => 64 * MiB });
    await nbd.listen();
    const store = c.replicas[0]!.store;
    const bytesOnDisk = () =>
      ['', '-wal'].reduce((n, s) => n + (existsSync(c.dbPath + s) ? statSync(c.dbPath + s).size : 0), 0);
    const io = (...cmds: string[]) =>
      run('qemu-io', ['-f', 'raw', ...cmds.flatMap((x) => ['-c', x]), nbd.urlFor('zeros.disk')]);
    try {
      await io('write -P 0x5a 0 4M');
      expect(await store.pages('zeros.disk')).toBe(1024);
      const before = bytesOnDisk();
      const z = await io('write -z 0 48M', 'read -P 0 0 48M');
      expect(z.stdout).not.toMatch(/verification failed|error/i);
      expect(z.stdout).toMatch(/wrote 50331648\/50331648 bytes[\s\S]*read 50331648\/50331648 bytes/);
      expect(await store.pages('zeros.disk')).toBe(0);
      expect(bytesOnDisk() - before).toBeLessThan(8 * MiB);
      // TRIM of a written range: its pages go, and it reads back as zeros.
      await io('write -P 7 0 1M', 'write -P 8 1M 4k');
      expect(await store.pages('zeros.disk')).toBe(257);
      const t = await io('discard 0 1M', 'read -P 0 0 1M', 'read -P 8 1M 4k');
      expect(t.stdout).not.toMatch(/verification failed|error/i);
      expect(t.stdout.match(/(discard|read) \d+\/\d+ bytes/g)).toHaveLength(3);
      expect(await store.pages('zeros.disk')).toBe(1);
    } finally {
      await nbd.close();
    }
  }, 120_000);

  it('WRITE_ZEROES counts against the connection budget like a write of its length: 48 MiB requests are served one at a time', async () => {
    const c = await cluster();
    const app = new Application(await c.addNode('node-1'), { name: 'nbd' });
    const nbd = new NbdExport({ app, path: socketPath(), size: () => 64 * MiB });
    await nbd.listen();
    const client = await RawClient.connect(socketOf(nbd));
    try {
      expect((await client.go('budget.disk')).type).toBe(REP.ACK);
      for (let i = 1; i <= 3; i++) client.request(CMD.WRITE_ZEROES, i, 0, 48 * MiB);
      let most = 0;
      const watch = setInterval(() => (most = Math.max(most, ...nbd.connections().map((v) => v.requests))), 5);
      try {
        const replies = [await client.reply(), await client.reply(), await client.reply()];
        expect(replies.map((r) => r.error)).toEqual([0, 0, 0]);
      } finally {
        clearInterval(watch);
      }
      expect(most).toBe(1);
    } finally {
      client.socket.destroy();
      await nbd.close();
    }
  }, 120_000);

  it('a read-only client (qemu-io -r) holding a connection open does not lock the target: a writer elsewhere opens and writes it', async () => {
    const c = await cluster();
    const app = new Application(await c.addNode('node-1'), { name: 'nbd' });
    const nbd = new NbdExport({ app, path: socketPath(), size: () => MiB });
    await nbd.listen();
    const reader = interactive(['-r', '-f', 'raw', nbd.urlFor('shared-ro.disk')]);
    try {
      await reader.cmd('read -P 0 0 4k', /read 4096\/4096 bytes/);
      const other = new Application(await c.addNode('node-2'), { name: 'writer' });
      const h = await other.open('shared-ro.disk');
      await h.write(0, new Uint8Array(4096).fill(1));
      await h.close();
      // The reader reads what the writer wrote.
      const out = await reader.cmd('read -P 1 0 4k', /read 4096\/4096 bytes|verification failed|error/i);
      expect(out).not.toMatch(/verification failed|error/i);
    } finally {
      await reader.quit();
      await nbd.close();
    }
  }, 60_000);

  it("a client whose target another writer changed since it connected gets EIO at its first write, and the target keeps the other writer's data", async () => {
    const c = await cluster();
    const app = new Application(await c.addNode('node-1'), { name: 'nbd' });
    const told: string[] = [];
    const nbd = new NbdExport({
      app,
      path: socketPath(),
      size: () => MiB,
      onInvalidated: (target, reason) => told.push(`${target} ${reason}`),
    });
    await nbd.listen();
    const client = interactive(['-f', 'raw', nbd.urlFor('stale.disk')]);
    try {
      await client.cmd('read -P 0 0 4k', /read 4096\/4096 bytes/);
      const other = new Application(await c.addNode('node-2'), { name: 'writer' });
      const h = await other.open('stale.disk');
      await h.write(0, new Uint8Array(4096).fill(3));
      await h.close();
      const out = await client.cmd('write -P 4 0 4k', /wrote 4096\/4096 bytes|Input\/output error/);
      expect(out).toMatch(/Input\/output error/);
      expect(told).toEqual(['stale.disk MODIFIED']);
      expect(nbd.connections()).toMatchObject([{ target: 'stale.disk', state: 'invalidated', reason: 'MODIFIED' }]);
      const check = await other.open('stale.disk', { mode: 'read' });
      expect((await check.read(0, 4096)).every((b) => b === 3)).toBe(true);
      await check.close();
    } finally {
      await client.quit();
    }
    // A client that connects now writes (the target has not changed since it connected).
    const fresh = await run('qemu-io', [
      '-f',
      'raw',
      '-c',
      'read -P 3 0 4k',
      '-c',
      'write -P 5 0 4k',
      '-c',
      'read -P 5 0 4k',
      nbd.urlFor('stale.disk'),
    ]);
    expect(fresh.stdout).not.toMatch(/verification failed|error/i);
    expect(fresh.stdout.match(/(wrote|read) 4096\/4096 bytes/g)).toHaveLength(3);
    await nbd.close();
  }, 60_000);

  it('past the connections a principal may hold a client is refused at GO with the reason; another principal still gets in, and once one closes the next gets in', async () => {
    const c = await cluster();
    const app = new Application(await c.addNode('node-1'), { name: 'nbd' });
    const nbd = new NbdExport({ app, path: socketPath(), size: () => MiB, maxConnectionsPerPrincipal: 2 });
    await nbd.listen();
    const at = socketOf(nbd);
    const clients: RawClient[] = [];
    try {
      for (const name of ['a.disk', 'b.disk']) {
        const cl = await RawClient.connect(at);
        clients.push(cl);
        expect((await cl.go(name)).type).toBe(REP.ACK);
      }
      const third = await RawClient.connect(at);
      clients.push(third);
      const refused = await third.go('c.disk');
      expect(refused.type).toBe(REP.ERR_POLICY);
      expect(refused.text).toMatch(/principal "default" holds 2 connections/);
      // Another principal (proved with TLS-PSK on the same socket) still gets in.
      const keys = tempDir();
      sockets.push(keys.cleanup);
      writeFileSync(join(keys.dir, 'keys.psk'), nbdPskLine(issueCredential(c.secret, 'principal', 'alice')), {
        mode: 0o600,
      });
      const other = await run('qemu-io', [
        '--object',
        `tls-creds-psk,id=t0,endpoint=client,dir=${keys.dir},username=alice`,
        '--image-opts',
        `driver=nbd,server.type=unix,server.path=${at},export=alice.disk,tls-creds=t0`,
        '-c',
        'write -P 7 0 4k',
      ]);
      expect(other.stdout).toMatch(/wrote 4096\/4096 bytes/);
      clients[0]!.socket.destroy();
      await waitFor('the closed connection to be gone', () => nbd.connections().length === 1, 10_000);
      const next = await RawClient.connect(at);
      clients.push(next);
      expect((await next.go('c.disk')).type).toBe(REP.ACK);
    } finally {
      for (const cl of clients) cl.socket.destroy();
      await nbd.close();
    }
  }, 60_000);

  it('a connection that sends no request for the idle time is closed; one that keeps sending is not', async () => {
    const c = await cluster();
    const app = new Application(await c.addNode('node-1'), { name: 'nbd' });
    const nbd = new NbdExport({ app, path: socketPath(), size: () => MiB, idleTimeoutMs: 400 });
    await nbd.listen();
    const at = socketOf(nbd);
    const idle = await RawClient.connect(at);
    const busy = await RawClient.connect(at);
    try {
      expect((await idle.go('idle.disk')).type).toBe(REP.ACK);
      expect((await busy.go('busy.disk')).type).toBe(REP.ACK);
      for (let i = 0; i < 8; i++) {
        busy.request(CMD.FLUSH, i, 0, 0);
        expect(await busy.reply()).toEqual({ error: 0, cookie: i });
        await new Promise((r) => setTimeout(r, 150));
      }
      expect(idle.closed).toBe(true);
      expect(busy.closed).toBe(false);
      await waitFor('the busy connection to be closed once idle', () => busy.closed, 5000);
    } finally {
      idle.socket.destroy();
      busy.socket.destroy();
      await nbd.close();
    }
  }, 60_000);
});
