/**
 * Who a connection to the NBD export acts as (frontends/nbd.ts, docs/security.md), with the real
 * clients (qemu-io, qemu-img, nbdinfo): on TCP nothing is answered before TLS, and a client proves a
 * principal with its TLS pre-shared key and then acts as exactly that principal; a principal the node
 * holds no credential for is refused at the handshake (and logged); on the Unix socket a client acts as
 * the export's own principal, or, after STARTTLS, as the one it proved.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { Application } from '../actors/application.js';
import { issueCredential, nbdPsk, nbdPskLine } from '../actors/auth.js';
import { IHAVEOPT, NbdExport, OPT, REP } from '../frontends/nbd.js';
import { clusters, tempDir } from './helpers.js';

const run = promisify(execFile);
const cluster = clusters({ store: 'memory', replicas: 1 });
const MiB = 1024 * 1024;
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/**
 * A node that holds the credentials of principals `default` and `alice` only (not the cluster key),
 * its export on TCP and on a Unix socket, and what the export logs at warn.
 */
async function setup() {
  const c = await cluster();
  const agent = await c.addNode('node-1', {
    secret: undefined,
    credential: issueCredential(c.secret, 'node', 'node-1'),
    principals: ['default', 'alice'].map((p) => issueCredential(c.secret, 'principal', p)),
  });
  const warnings: string[] = [];
  const log = pino({ level: 'warn' }, { write: (line: string) => void warnings.push(line) });
  const app = new Application(agent, { name: 'nbd' });
  const t = tempDir();
  const tcp = new NbdExport({ app, size: () => MiB, port: 0, log });
  const unix = new NbdExport({ app, size: () => MiB, path: join(t.dir, 'nbd.sock'), log });
  await tcp.listen();
  await unix.listen();
  cleanups.push(
    t.cleanup,
    () => tcp.close(),
    () => unix.close(),
  );
  const port = Number(new URL(tcp.url).port);
  /** A directory with keys.psk for `principal`, its key from the cluster key (as `credentials nbd-psk` makes it). */
  const pskDir = (principal: string, line = nbdPskLine(issueCredential(c.secret, 'principal', principal))) => {
    const d = join(t.dir, `psk-${principal}-${Math.random().toString(36).slice(2)}`);
    mkdirSync(d, { mode: 0o700 });
    writeFileSync(join(d, 'keys.psk'), line, { mode: 0o600 });
    return d;
  };
  return { c, agent, app, tcp, unix, port, warnings, pskDir, sock: join(t.dir, 'nbd.sock') };
}

/** The principals of the handles that opened `target` for writing and closed (the store's tombstones, and a live lock). */
async function writers(
  e: {
    c: {
      replicas: Array<{
        store: {
          record: (t: string) => Promise<{ principal: string } | undefined>;
          tombstones: (t: string) => Promise<Array<{ principal?: string | undefined }>>;
        };
      }>;
    };
  },
  target: string,
): Promise<Array<string | undefined>> {
  const store = e.c.replicas[0]!.store;
  const live = await store.record(target);
  return [...(await store.tombstones(target)).map((t) => t.principal), ...(live ? [live.principal] : [])];
}

/** qemu-io through TLS-PSK as `user` (the key in `dir`/keys.psk) at `server` (qemu's server.* options). */
function qemuIoTls(dir: string, user: string, server: string, target: string, cmds: string[]) {
  return run('qemu-io', [
    '--object',
    `tls-creds-psk,id=t0,endpoint=client,dir=${dir},username=${user}`,
    '--image-opts',
    `driver=nbd,${server},export=${target},tls-creds=t0`,
    ...cmds.flatMap((x) => ['-c', x]),
  ]).then(
    (r) => ({ ok: true, out: r.stdout + r.stderr }),
    (err: { stdout?: string; stderr?: string }) => ({ ok: false, out: `${err.stdout ?? ''}${err.stderr ?? ''}` }),
  );
}

/** Send `bytes` after the greeting and collect what comes back until the server closes or 1.5 s pass. */
function talk(to: { port: number } | { path: string }, bytes: Buffer): Promise<{ data: Buffer; closed: boolean }> {
  return new Promise((resolve) => {
    const s: Socket = 'port' in to ? connect(to.port, '127.0.0.1') : connect(to.path);
    let data = Buffer.alloc(0);
    s.on('data', (d: Buffer) => (data = Buffer.concat([data, d])));
    s.on('connect', () => s.write(bytes));
    s.on('error', () => undefined);
    s.on('close', () => resolve({ data, closed: true }));
    setTimeout(() => (s.destroy(), resolve({ data, closed: false })), 1500);
  });
}

function option(type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(IHAVEOPT, 0);
  h.writeUInt32BE(type, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}

function goData(name: string): Buffer {
  const b = Buffer.alloc(4 + name.length + 2);
  b.writeUInt32BE(name.length, 0);
  b.write(name, 4);
  b.writeUInt16BE(0, 4 + name.length);
  return b;
}

/** The option replies in `data` after the 18-byte greeting: [option, type, message]. */
function replies(data: Buffer): Array<{ option: number; type: number; text: string }> {
  const out = [];
  for (let at = 18; at + 20 <= data.length;) {
    const len = data.readUInt32BE(at + 16);
    out.push({
      option: data.readUInt32BE(at + 8),
      type: data.readUInt32BE(at + 12),
      text: data.subarray(at + 20, at + 20 + len).toString(),
    });
    at += 20 + len;
  }
  return out;
}

describe('NBD export: authentication', () => {
  it('on TCP, LIST, INFO, GO and unknown options before STARTTLS get NBD_REP_ERR_TLS_REQD, EXPORT_NAME closes the connection, and nothing is opened', async () => {
    const e = await setup();
    const flags = Buffer.from([0, 0, 0, 3]);
    const r = await talk(
      { port: e.port },
      Buffer.concat([
        flags,
        option(OPT.LIST),
        option(OPT.INFO, goData('secret.disk')),
        option(OPT.GO, goData('secret.disk')),
        option(999),
      ]),
    );
    // The greeting offers fixed newstyle.
    expect(r.data.readUInt16BE(16) & 1).toBe(1);
    expect(replies(r.data)).toEqual([
      { option: OPT.LIST, type: REP.ERR_TLS_REQD, text: expect.stringMatching(/TLS/) },
      { option: OPT.INFO, type: REP.ERR_TLS_REQD, text: expect.stringMatching(/TLS/) },
      { option: OPT.GO, type: REP.ERR_TLS_REQD, text: expect.stringMatching(/TLS/) },
      { option: 999, type: REP.ERR_TLS_REQD, text: expect.stringMatching(/TLS/) },
    ]);
    const name = await talk(
      { port: e.port },
      Buffer.concat([flags, option(OPT.EXPORT_NAME, Buffer.from('secret.disk'))]),
    );
    expect(name.closed).toBe(true);
    expect(name.data.length).toBe(18);
    expect(e.app.list()).toEqual([]);
    expect(e.tcp.connections()).toEqual([]);
    // A client without TLS is told so: qemu-io and nbdinfo read nothing.
    const plain = await run('qemu-io', ['-f', 'raw', '-c', 'read 0 4k', `nbd://127.0.0.1:${e.port}/secret.disk`]).then(
      (x) => x.stdout + x.stderr,
      (err: { stdout?: string; stderr?: string }) => `${err.stdout ?? ''}${err.stderr ?? ''}`,
    );
    expect(plain).toMatch(/TLS/i);
    expect(plain).not.toMatch(/read 4096/);
    // (libnbd reports NBD_REP_ERR_TLS_REQD to LIST as 'Operation not supported'.)
    await expect(run('nbdinfo', ['--list', `nbd://127.0.0.1:${e.port}/`])).rejects.toThrow(/list request/);
  }, 60_000);

  it('a client with the PSK of alice reads and writes through qemu-io, qemu-img and nbdinfo over TCP, and the store records the writer as alice', async () => {
    const e = await setup();
    const d = e.pskDir('alice');
    const server = `server.type=inet,server.host=127.0.0.1,server.port=${e.port}`;
    const io = await qemuIoTls(d, 'alice', server, 'alice.disk', ['write -P 0x7a 0 64k', 'read -P 0x7a 0 64k']);
    expect(io.out).toMatch(/wrote 65536\/65536 bytes[\s\S]*read 65536\/65536 bytes/);
    expect(io.out).not.toMatch(/verification failed/);
    // The requestId the write was made under is bound to its principal: alice, not the export's own (default).
    expect(await writers(e, 'alice.disk')).toEqual(['alice']);
    const img = await run('qemu-img', [
      'info',
      '--object',
      `tls-creds-psk,id=t0,endpoint=client,dir=${d},username=alice`,
      '--image-opts',
      `driver=nbd,${server},export=alice.disk,tls-creds=t0`,
    ]);
    expect(img.stdout).toMatch(/virtual size: 1 MiB/);
    const out = join(d, 'out.raw');
    await run('qemu-img', [
      'convert',
      '--object',
      `tls-creds-psk,id=t0,endpoint=client,dir=${d},username=alice`,
      '--image-opts',
      `driver=nbd,${server},export=alice.disk,tls-creds=t0`,
      '-O',
      'raw',
      out,
    ]);
    const back = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x7a 0 64k', '-c', 'read -P 0 64k 4k', out]);
    expect(back.stdout).toMatch(/read 65536\/65536 bytes[\s\S]*read 4096\/4096 bytes/);
    const info = await run('nbdinfo', [
      '--json',
      `nbds://alice@127.0.0.1:${e.port}/alice.disk?tls-psk-file=${join(d, 'keys.psk')}`,
    ]);
    expect(JSON.parse(info.stdout)).toMatchObject({ exports: [{ 'export-size': MiB }] });
  }, 60_000);

  it('a flood of silent TCP connections from one address cannot keep a client with a key out: the flooder holds at most a quarter of the unauthenticated places', async () => {
    const e = await setup();
    const flood: Socket[] = [];
    try {
      // 300 connections from 127.0.0.2 that never say a word (more than the export's 256 places), bounded.
      for (let i = 0; i < 300; i++) {
        const s = connect({ host: '127.0.0.1', port: e.port, localAddress: '127.0.0.2' });
        s.on('error', () => undefined);
        s.resume(); // read the greeting, so a close by the server is seen
        await new Promise<void>((resolve) => {
          s.once('connect', () => resolve());
          s.once('close', () => resolve());
        });
        flood.push(s);
      }
      await new Promise((r) => setTimeout(r, 200));
      const held = flood.filter((s) => !s.destroyed && s.readyState === 'open').length;
      expect(held).toBeLessThanOrEqual(32);
      const server = `server.type=inet,server.host=127.0.0.1,server.port=${e.port}`;
      const io = await qemuIoTls(e.pskDir('alice'), 'alice', server, 'flood.disk', [
        'write -P 0x3c 0 4k',
        'read -P 0x3c 0 4k',
      ]);
      expect(io.out).toMatch(/wrote 4096\/4096 bytes[\s\S]*read 4096\/4096 bytes/);
      expect(e.warnings.some((w) => /"source":"127.0.0.2"/.test(w))).toBe(true);
    } finally {
      for (const s of flood) s.destroy();
    }
  }, 60_000);

  it('before TLS a client gets a few options answered, then is closed, and what clients break is logged a few lines per 10 s, not once each', async () => {
    const e = await setup();
    const flags = Buffer.from([0, 0, 0, 3]);
    // 1,000 LIST options before STARTTLS, never reading: closed after the first few, not kept for the handshake's 10 s.
    const many = await talk(
      { port: e.port },
      Buffer.concat([flags, ...Array.from({ length: 1000 }, () => option(OPT.LIST))]),
    );
    expect(many.closed).toBe(true);
    expect(replies(many.data).length).toBeLessThanOrEqual(16);
    // 200 connections that break the protocol: the log holds a bounded number of lines about them.
    for (let i = 0; i < 200; i++) await talk({ port: e.port }, Buffer.from('GET / HTTP/1.1\r\n\r\n'));
    const lines = e.warnings.filter((w) => /nbd connection closed/.test(w));
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.length).toBeLessThanOrEqual(12);
  }, 60_000);

  it("a connection counts among its principal's once its TLS handshake proves it, so one that proved a principal and never asks for an export cannot hold places past the cap", async () => {
    const c = await cluster();
    const agent = await c.addNode('node-1');
    const app = new Application(agent, { name: 'nbd' });
    const tcp = new NbdExport({ app, size: () => MiB, port: 0, maxConnectionsPerPrincipal: 2 });
    await tcp.listen();
    cleanups.push(() => tcp.close());
    const port = Number(new URL(tcp.url).port);
    const psk = nbdPsk(issueCredential(c.secret, 'principal', 'alice'));
    /** Connect, STARTTLS, prove alice; resolves with the TLS socket once secure. */
    const proved = () =>
      new Promise<TLSSocket>((resolve, reject) => {
        const raw = connect(port, '127.0.0.1');
        raw.on('error', reject);
        let got = Buffer.alloc(0);
        const onData = (d: Buffer) => {
          got = Buffer.concat([got, d]);
          if (got.length < 18 + 20) return;
          raw.off('data', onData);
          const tls = tlsConnect({
            socket: raw,
            minVersion: 'TLSv1.3',
            ciphers: 'PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256',
            checkServerIdentity: () => undefined,
            pskCallback: () => ({ identity: 'alice', psk }),
          });
          tls.on('error', reject);
          tls.once('secureConnect', () => resolve(tls));
        };
        raw.on('data', onData);
        raw.on('connect', () => raw.write(Buffer.concat([Buffer.from([0, 0, 0, 3]), option(OPT.STARTTLS)])));
      });
    const held = [await proved(), await proved()];
    const third = await proved();
    const closed = new Promise<void>((r) => third.once('close', () => r()));
    let answer = Buffer.alloc(0);
    third.on('data', (d: Buffer) => (answer = Buffer.concat([answer, d])));
    third.write(option(OPT.GO, goData('alice.disk')));
    await closed;
    expect(answer.readUInt32BE(12)).toBe(REP.ERR_POLICY);
    expect(answer.subarray(20).toString()).toMatch(/principal "alice" holds 2 connections/);
    for (const h of held) h.destroy();
  }, 30_000);

  it('a client proving a principal the node holds no credential for, or with a wrong key, is refused at the TLS handshake and logged; nothing is opened', async () => {
    const e = await setup();
    const server = `server.type=inet,server.host=127.0.0.1,server.port=${e.port}`;
    // mallory's key is right (from the cluster key) but node-1 cannot verify mallory.
    const mallory = await qemuIoTls(e.pskDir('mallory'), 'mallory', server, 'alice.disk', ['read 0 4k']);
    expect(mallory.ok).toBe(false);
    expect(mallory.out).not.toMatch(/read 4096/);
    expect(e.warnings.some((w) => /"principal":"mallory"/.test(w) && /refused/.test(w))).toBe(true);
    // alice's name with another key.
    const forged = await qemuIoTls(e.pskDir('alice', `alice:${'ab'.repeat(32)}\n`), 'alice', server, 'alice.disk', [
      'write -P 1 0 4k',
    ]);
    expect(forged.ok).toBe(false);
    expect(forged.out).not.toMatch(/wrote 4096/);
    expect(e.app.list()).toEqual([]);
    expect(await writers(e, 'alice.disk')).toEqual([]);
  }, 60_000);

  it('on the Unix socket a client acts as the export principal, and after STARTTLS as the principal it proved', async () => {
    const e = await setup();
    const plain = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 5 0 4k', e.unix.urlFor('mine.disk')]);
    expect(plain.stdout).toMatch(/wrote 4096\/4096 bytes/);
    expect(await writers(e, 'mine.disk')).toEqual(['default']);
    const tls = await qemuIoTls(e.pskDir('alice'), 'alice', `server.type=unix,server.path=${e.sock}`, 'hers.disk', [
      'write -P 6 0 4k',
    ]);
    expect(tls.out).toMatch(/wrote 4096\/4096 bytes/);
    expect(await writers(e, 'hers.disk')).toEqual(['alice']);
    expect(nbdPsk(issueCredential(e.c.secret, 'principal', 'alice')).length).toBe(32);
  }, 60_000);

  it('an export with neither a socket path nor a port is refused', async () => {
    const c = await cluster();
    const nbd = new NbdExport({ app: new Application(await c.addNode('node-1'), { name: 'nbd' }) });
    await expect(nbd.listen()).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  }, 30_000);
});
