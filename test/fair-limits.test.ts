/**
 * Fair limits (SPEC "Bad input and trust"): a flood of connections that never authenticate, from
 * one source, cannot keep an authenticated node out. Real replicas, real sockets: the flooder dials
 * from another loopback address (Linux routes all of 127/8 to lo) than the node, or from the same.
 */
import net from 'node:net';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { Application } from '../actors/application.js';
import { NodeAgent } from '../actors/node-agent.js';
import { StorageReplica, type ReplicaOptions } from '../actors/replica.js';
import { FaultProxy } from '../transport/fault-proxy.js';
import { MemoryStore } from '../store/memory.js';
import { sourceOf } from '../transport/pre-auth.js';
import { loadTlsFiles } from '../transport/tls.js';
import { WebSocketTransport } from '../transport/ws.js';
import { certMaker } from './certs.js';
import { bytes, tempDir, text, waitFor, waitForState } from './helpers.js';

let cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups = [];
});

const SECRET = 'fair-limits-cluster-key-fair-limits-key';

async function replica(
  opts: Partial<ReplicaOptions> = {},
): Promise<{ r: StorageReplica; port: number; warnings: Array<Record<string, unknown>> }> {
  const warnings: Array<Record<string, unknown>> = [];
  const log = pino(
    { level: 'warn' },
    { write: (l: string) => void warnings.push(JSON.parse(l) as Record<string, unknown>) },
  );
  const r = await new StorageReplica({
    id: 'replica-1',
    store: new MemoryStore(),
    transport: new WebSocketTransport(),
    secret: SECRET,
    env: { log },
    ...opts,
  }).start();
  cleanups.push(() => r.stop());
  return { r, port: Number(r.url.slice(r.url.lastIndexOf(':') + 1)), warnings };
}

/** Silent TCP connections from `from`, opened one after another; each records when it closed. */
async function silent(port: number, from: string, n: number): Promise<Array<{ closed: boolean }>> {
  const out: Array<{ closed: boolean }> = [];
  for (let i = 0; i < n; i++) {
    const s = net.connect({ host: '127.0.0.1', port, localAddress: from });
    const rec = { closed: false };
    s.on('error', () => undefined);
    s.on('close', () => (rec.closed = true));
    cleanups.push(() => void s.destroy());
    await new Promise<void>((res) => s.once('connect', () => res()).once('close', () => res()));
    out.push(rec);
  }
  // Let the replica's accepts (and the drops they cause) reach these sockets.
  await new Promise((res) => setTimeout(res, 300));
  return out;
}

/**
 * A flooder: holds `sockets` silent TCP connections from `from` and re-opens each one as soon as it
 * is dropped, until `ms` have passed or it has dialled `maxDials` times (it stops by itself).
 */
function flood(port: number, from: string, opts: { sockets: number; ms: number; maxDials: number }) {
  const live = new Set<net.Socket>();
  let dials = 0;
  let stopped = false;
  const stop = () => {
    stopped = true;
    for (const s of live) s.destroy();
  };
  const timer = setTimeout(stop, opts.ms);
  const dial = () => {
    if (stopped || dials >= opts.maxDials) return;
    dials++;
    const s = net.connect({ host: '127.0.0.1', port, localAddress: from });
    live.add(s);
    s.on('error', () => undefined);
    s.on('close', () => {
      live.delete(s);
      setImmediate(dial);
    });
  };
  for (let i = 0; i < opts.sockets; i++) dial();
  const done = () => {
    clearTimeout(timer);
    stop();
  };
  cleanups.push(done);
  return { dials: () => dials, stop: done };
}

/** A node agent (through a proxy whose drop cuts its session) with one write handle that has written. */
async function nodeWithHandle(replicaUrl: string, transport = new WebSocketTransport()) {
  const proxy = FaultProxy.forUrl(replicaUrl);
  const url = await proxy.listen();
  cleanups.push(() => proxy.close());
  const agent = new NodeAgent({
    id: 'node-1',
    replicas: [url],
    transport,
    secret: SECRET,
    backoffBaseMs: 20,
    backoffMaxMs: 200,
  });
  await agent.start();
  cleanups.push(() => agent.crash());
  const h = await new Application(agent, { name: 'app' }).open('fair.disk', { pauseTimeoutMs: 15_000 });
  await h.write(0, bytes('before'));
  return { proxy, h };
}

describe('a flood of unauthenticated connections from one source', () => {
  it('cannot keep a node from another address out: it reconnects and its write handle resumes within a few heartbeats', async () => {
    const { r, port, warnings } = await replica({ heartbeatIntervalMs: 100, holdMs: 10_000 });
    const { proxy, h } = await nodeWithHandle(r.url);
    // The flooder dials from 127.0.0.2, the node (through the proxy) from 127.0.0.1.
    const f = flood(port, '127.0.0.2', { sockets: 400, ms: 8000, maxDials: 200_000 });
    await waitFor('the flood to be under way', () => f.dials() > 1000, 5000);
    proxy.drop();
    await waitForState(h, 'paused', 2000);
    const lostAt = Date.now();
    await waitForState(h, 'active', 3000);
    // Well before the 15 s pause timeout (and the 10 s hold period).
    expect(Date.now() - lostAt).toBeLessThan(3000);
    await h.write(6, bytes(' after'));
    expect(text(await h.read(0, 12))).toBe('before after');
    f.stop();
    // The replica said which source it limited.
    expect(warnings.some((w) => w.source === '127.0.0.2' && typeof w.held === 'number')).toBe(true);
  });

  it('cannot keep out a node dialling from the same address either: its connection is not silent, the flooder evicts its own', async () => {
    const { r, port } = await replica({ heartbeatIntervalMs: 100, holdMs: 10_000 });
    const { proxy, h } = await nodeWithHandle(r.url);
    const f = flood(port, '127.0.0.1', { sockets: 400, ms: 8000, maxDials: 200_000 });
    await waitFor('the flood to be under way', () => f.dials() > 1000, 5000);
    proxy.drop();
    await waitForState(h, 'paused', 2000);
    await waitForState(h, 'active', 3000);
    await h.write(6, bytes(' after'));
    expect(text(await h.read(0, 12))).toBe('before after');
    f.stop();
  });

  it('holds at most its per-source cap of connections not yet authenticated: the oldest go, other sources are not touched', async () => {
    const { port, warnings } = await replica({ maxUnauthenticated: 256 });
    // The default cap of one source is a quarter of maxUnauthenticated: 64.
    const flooder = await silent(port, '127.0.0.2', 100);
    const other = await silent(port, '127.0.0.3', 30);
    expect(flooder.filter((s) => !s.closed).length).toBe(64);
    // The first 36 (the oldest) were dropped, the latest 64 are held.
    expect(flooder.slice(0, 36).every((s) => s.closed)).toBe(true);
    expect(other.every((s) => !s.closed)).toBe(true);
    expect(warnings.find((w) => w.source === '127.0.0.2')).toMatchObject({ level: 40, source: '127.0.0.2', held: 64 });
    expect(warnings.some((w) => w.source === '127.0.0.3')).toBe(false);
  });

  it('prefers to drop a silent socket over one that has started its handshake, however old', async () => {
    const { r, port } = await replica({ maxUnauthenticatedPerSource: 4 });
    // An upgraded WebSocket that has not said hello yet: the oldest of its source.
    const ws = new WebSocket(r.url, { localAddress: '127.0.0.2' });
    let wsClosed = false;
    ws.on('error', () => undefined);
    ws.on('close', () => (wsClosed = true));
    cleanups.push(() => ws.terminate());
    await new Promise((res, rej) => ws.once('open', res).once('error', rej));
    const later = await silent(port, '127.0.0.2', 6);
    expect(wsClosed).toBe(false);
    expect(later.map((s) => s.closed)).toEqual([true, true, true, false, false, false]);
  });

  it('when every slot is taken (several sources at their cap), a new connection drops the oldest of the source holding the most, and a node still gets in', async () => {
    const { r, port, warnings } = await replica({ maxUnauthenticated: 8, maxUnauthenticatedPerSource: 4 });
    const a = await silent(port, '127.0.0.2', 4);
    const b = await silent(port, '127.0.0.3', 4);
    // 127.0.0.2 and .3 hold 4 each; .2 has held them longer: its oldest goes first, then .3's.
    const c = await silent(port, '127.0.0.4', 2);
    expect(a.map((s) => s.closed)).toEqual([true, false, false, false]);
    expect(b.map((s) => s.closed)).toEqual([true, false, false, false]);
    expect(c.every((s) => !s.closed)).toBe(true);
    expect(
      warnings
        .filter((w) => w.msg === 'limiting a source: dropped its oldest connection not yet authenticated')
        .map((w) => [w.source, w.held]),
    ).toEqual([
      ['127.0.0.2', 3],
      ['127.0.0.3', 3],
    ]);
    // The table is full again (3 + 3 + 2); a node from 127.0.0.1 dials, authenticates and writes.
    const agent = new NodeAgent({
      id: 'node-1',
      replicas: [r.url],
      transport: new WebSocketTransport(),
      secret: SECRET,
    });
    await agent.start();
    cleanups.push(() => agent.crash());
    const h = await new Application(agent, { name: 'app' }).open('full.disk');
    await h.write(0, bytes('in'));
    expect(text(await h.read(0, 2))).toBe('in');
  });

  it('WebSockets that never say hello, from several sources, taking every slot: a node still gets in, and the oldest of them goes', async () => {
    const { r } = await replica({ maxUnauthenticated: 8, maxUnauthenticatedPerSource: 4 });
    const idle: Array<{ from: string; closed: boolean }> = [];
    for (const from of ['127.0.0.2', '127.0.0.3']) {
      for (let i = 0; i < 4; i++) {
        const ws = new WebSocket(r.url, { localAddress: from });
        const rec = { from, closed: false };
        ws.on('error', () => undefined);
        ws.on('close', () => (rec.closed = true));
        cleanups.push(() => ws.terminate());
        await new Promise((res, rej) => ws.once('open', res).once('error', rej));
        idle.push(rec);
      }
    }
    const agent = new NodeAgent({
      id: 'node-1',
      replicas: [r.url],
      transport: new WebSocketTransport(),
      secret: SECRET,
    });
    await agent.start();
    cleanups.push(() => agent.crash());
    const h = await new Application(agent, { name: 'app' }).open('idle.disk');
    await h.write(0, bytes('in'));
    expect(text(await h.read(0, 2))).toBe('in');
    expect(idle.map((w) => w.closed)).toEqual([true, false, false, false, false, false, false, false]);
  });

  it('over TLS (wss) too: the limits count from TCP accept, and a node resumes through a flood from another address', async () => {
    const t = tempDir();
    cleanups.push(t.cleanup);
    const certs = certMaker(t.dir);
    certs.ca('ca');
    certs.cert('replica', 'ca', 'IP:127.0.0.1');
    certs.cert('node', 'ca', 'DNS:node-1');
    const tls = (name: string) =>
      loadTlsFiles({
        certFile: join(t.dir, `${name}.crt`),
        keyFile: join(t.dir, `${name}.key`),
        caFile: join(t.dir, 'ca.crt'),
      });
    const { r, port } = await replica({
      transport: new WebSocketTransport({ tls: tls('replica') }),
      heartbeatIntervalMs: 100,
      holdMs: 10_000,
      maxUnauthenticatedPerSource: 16,
    });
    expect(r.url).toMatch(/^wss:/);
    const held = await silent(port, '127.0.0.2', 20);
    expect(held.filter((s) => !s.closed).length).toBe(16);
    const { proxy, h } = await nodeWithHandle(r.url, new WebSocketTransport({ tls: tls('node') }));
    const f = flood(port, '127.0.0.2', { sockets: 400, ms: 8000, maxDials: 200_000 });
    await waitFor('the flood to be under way', () => f.dials() > 1000, 5000);
    proxy.drop();
    await waitForState(h, 'paused', 2000);
    await waitForState(h, 'active', 3000);
    await h.write(6, bytes(' after'));
    expect(text(await h.read(0, 12))).toBe('before after');
    f.stop();
  });

  it('counts an IPv4-mapped IPv6 peer (a replica listening on ::) as its IPv4 address, and an IPv6 one by its /64', async () => {
    const { port, warnings } = await replica({ host: '::', maxUnauthenticatedPerSource: 4 });
    const held = await silent(port, '127.0.0.2', 6);
    expect(held.map((s) => s.closed)).toEqual([true, true, false, false, false, false]);
    expect(warnings.filter((w) => w.source !== undefined).map((w) => w.source)).toEqual(['127.0.0.2', '127.0.0.2']);
    // One host commonly holds a whole /64: its addresses are one source.
    expect(sourceOf('2001:db8:1:2:3:4:5:6')).toBe(sourceOf('2001:db8:1:2::9'));
    expect(sourceOf('2001:db8:1:2::9')).toBe('2001:db8:1:2::/64');
    expect(sourceOf('2001:db8:1:3::9')).not.toBe(sourceOf('2001:db8:1:2::9'));
    expect(sourceOf('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
    expect(sourceOf('::FFFF:10.0.0.1')).toBe('10.0.0.1');
  });
});
