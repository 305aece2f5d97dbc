/**
 * Bounded everything (SPEC "Bad input and trust"): what a peer may cost a replica before and after it
 * authenticates, and what an application may queue on a paused handle. Real sockets, real replicas.
 */
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { Application } from '../actors/application.js';
import { StorageReplica, type ReplicaOptions } from '../actors/replica.js';
import { LocalCluster } from '../cluster/local.js';
import { MemoryStore } from '../store/memory.js';
import type { Store, WriteRequest, WriteResult } from '../store/types.js';
import { decode, encode } from '../transport/codec.js';
import type { Message } from '../transport/messages.js';
import { WebSocketTransport } from '../transport/ws.js';
import { bytes, FAST, loginAs, tempDir, text, waitFor, waitForState } from './helpers.js';

let cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups = [];
});

const SECRET = 'limits-cluster-key-limits-cluster-key';

async function replica(opts: Partial<ReplicaOptions> = {}, store: Store = new MemoryStore()): Promise<StorageReplica> {
  const r = await new StorageReplica({
    id: 'replica-1',
    store,
    transport: new WebSocketTransport(),
    secret: SECRET,
    ...opts,
  }).start();
  cleanups.push(() => r.stop());
  return r;
}

/** A raw WebSocket peer: replies decoded, the close recorded, logged in on request. */
async function peer(url: string) {
  const ws = new WebSocket(url, { maxPayload: 64 * 1024 * 1024 });
  const replies: Message[] = [];
  let closed: number | undefined;
  let login: ReturnType<typeof loginAs> | undefined;
  ws.on('message', (data: Buffer) => {
    const d = decode(new Uint8Array(data));
    if (!d.ok) return;
    const auth = login?.answer(d.msg);
    if (auth) ws.send(encode(auth));
    else replies.push(d.msg);
  });
  ws.on('close', (code) => (closed = code));
  ws.on('error', () => undefined);
  await new Promise((r, j) => ws.once('open', r).once('error', j));
  cleanups.push(() => ws.terminate());
  const hello = async (node = 'raw') => {
    login = loginAs(SECRET, node);
    ws.send(encode(login.hello));
    await waitFor('an answer to the login', () => replies.length > 0 || closed !== undefined);
    return replies.shift();
  };
  return { ws, replies, closed: () => closed, hello };
}

describe('before authentication', () => {
  it('a peer that sends more than a few KiB before it authenticates is dropped before the replica buffers it', async () => {
    const r = await replica();
    const p = await peer(r.url);
    p.ws.send(Buffer.alloc(1024 * 1024, 0x41));
    await waitFor('the connection to go', () => p.closed() !== undefined);
    // Terminated at the socket (1006), with no answer: the megabyte was never decoded.
    expect(p.closed()).toBe(1006);
    expect(p.replies).toEqual([]);
  });

  it('a TCP connection that never sends a byte is dropped at the pre-authentication deadline', async () => {
    const r = await replica({ helloTimeoutMs: 300 });
    const port = Number(new URL(r.url).port);
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', () => undefined);
    let ended = false;
    socket.on('close', () => (ended = true));
    cleanups.push(() => void socket.destroy());
    await waitFor('the silent socket to be dropped', () => ended, 3000);
  });

  it('the deadline runs from TCP accept: bytes trickled into an upgrade request do not move it', async () => {
    const r = await replica({ helloTimeoutMs: 400 });
    const socket = net.connect(Number(new URL(r.url).port), '127.0.0.1');
    socket.on('error', () => undefined);
    let ended = false;
    socket.on('close', () => (ended = true));
    cleanups.push(() => void socket.destroy());
    const request = 'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Slow: ';
    let i = 0;
    const drip = setInterval(() => !ended && socket.write(request[i++ % request.length]!), 50);
    cleanups.push(() => clearInterval(drip));
    await waitFor('the trickling socket to be dropped', () => ended, 3000);
  });

  it('a plain HTTP request gets 426 and the connection closes: no keep-alive to hold a slot', async () => {
    const r = await replica();
    const socket = net.connect(Number(new URL(r.url).port), '127.0.0.1');
    socket.on('error', () => undefined);
    let got = '';
    let ended = false;
    socket.on('data', (b) => (got += b.toString()));
    socket.on('close', () => (ended = true));
    cleanups.push(() => void socket.destroy());
    socket.write('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n');
    await waitFor('the connection to close after the answer', () => ended, 3000);
    expect(got).toMatch(/^HTTP\/1\.1 426/);
  });

  it('sockets not yet authenticated count from TCP accept: past maxUnauthenticated the oldest are dropped before any upgrade', async () => {
    const r = await replica({ maxUnauthenticated: 3, maxUnauthenticatedPerSource: 3 });
    const port = Number(new URL(r.url).port);
    const sockets = Array.from({ length: 5 }, () => {
      const s = net.connect(port, '127.0.0.1');
      s.on('error', () => undefined);
      cleanups.push(() => void s.destroy());
      return s;
    });
    const closed = sockets.map(() => false);
    sockets.forEach((s, i) => s.on('close', () => (closed[i] = true)));
    await waitFor('two of the silent sockets to be dropped', () => closed.filter(Boolean).length >= 2, 3000);
    await new Promise((res) => setTimeout(res, 200));
    expect(closed.filter(Boolean).length).toBe(2);
  });

  it('a WebSocket that never says hello is terminated at the deadline, not closed politely', async () => {
    const r = await replica({ helloTimeoutMs: 300 });
    const p = await peer(r.url);
    await waitFor('the silent peer to go', () => p.closed() !== undefined, 3000);
    expect(p.closed()).toBe(1006);
  });

  it('connections past maxConnections are refused at accept, and unauthenticated ones past maxUnauthenticated make room by dropping the oldest', async () => {
    const r = await replica({ maxConnections: 4, maxUnauthenticated: 2, maxUnauthenticatedPerSource: 2 });
    const a = await peer(r.url);
    const b = await peer(r.url);
    // A third unauthenticated peer is taken: the oldest (a) is dropped at its accept, before its upgrade.
    const c = await peer(r.url);
    await waitFor('the oldest unauthenticated peer to go', () => a.closed() !== undefined, 3000);
    expect(a.closed()).toBe(1006);
    expect(b.closed()).toBeUndefined();
    // Authenticated ones do not count against the unauthenticated limit ...
    expect(await b.hello('node-b')).toMatchObject({ type: 'welcome' });
    expect(await c.hello('node-c')).toMatchObject({ type: 'welcome' });
    const d = await peer(r.url);
    expect(await d.hello('node-d')).toMatchObject({ type: 'welcome' });
    // ... but every connection counts against maxConnections (b, c, d and one more).
    const e = await peer(r.url);
    expect(await e.hello('node-e')).toMatchObject({ type: 'welcome' });
    const refused = new WebSocket(r.url).once('error', () => undefined);
    await waitFor('the fifth connection to be refused', () => refused.readyState === WebSocket.CLOSED, 3000);
    expect(b.closed()).toBeUndefined();
  });
});

describe('after authentication', () => {
  it('one node may hold at most maxSessionsPerNode sessions; more are refused retryably, other nodes are served', async () => {
    const r = await replica({ maxSessionsPerNode: 2 });
    for (let i = 0; i < 2; i++) expect(await (await peer(r.url)).hello('node-1')).toMatchObject({ type: 'welcome' });
    expect(await (await peer(r.url)).hello('node-1')).toMatchObject({
      type: 'error',
      code: 'UNAVAILABLE',
      retryable: true,
    });
    expect(await (await peer(r.url)).hello('node-2')).toMatchObject({ type: 'welcome' });
  });

  it('a peer that does not read its replies stops being read: the replica buffers a few MiB, not every reply, and loses none', async () => {
    const r = await replica({ maxSendBufferBytes: 2 * 1024 * 1024, maxInflightBytesPerSession: 4 * 1024 * 1024 });
    const p = await peer(r.url);
    await p.hello();
    const rid = 'R'.repeat(21);
    p.ws.send(encode({ type: 'open', id: 1, target: 'big.disk', requestId: rid, principal: 'p', mode: 'write' }));
    p.ws.send(
      encode({
        type: 'write',
        id: 2,
        target: 'big.disk',
        requestId: rid,
        seq: 1,
        offset: 0,
        data: new Uint8Array(1024 * 1024).fill(7),
      }),
    );
    await waitFor('the write', () => p.replies.some((m) => m.type === 'written'));
    // 100 reads of 1 MiB each, and the peer stops reading its socket.
    p.ws.pause();
    for (let i = 0; i < 100; i++)
      p.ws.send(
        encode({ type: 'read', id: 10 + i, target: 'big.disk', requestId: rid, offset: 0, length: 1024 * 1024 }),
      );
    await waitFor('the replica to stop reading the peer', () => r.sessionLoad()[0]?.paused === true);
    await new Promise((res) => setTimeout(res, 300));
    const load = r.sessionLoad()[0]!;
    expect(load.paused).toBe(true);
    // The replica holds about its limits (4 MiB in flight, 2 MiB of replies, and one reply more),
    // never the 100 MiB asked for.
    expect(load.bufferedBytes + load.inflightBytes).toBeLessThan(8 * 1024 * 1024);
    p.ws.resume();
    await waitFor('every read answered', () => p.replies.filter((m) => m.type === 'data').length === 100, 20_000);
    expect(r.sessionLoad()[0]?.paused).toBe(false);
  });

  it('a peer that floods pings and never reads the pongs stops being read too', async () => {
    const r = await replica({ maxSendBufferBytes: 256 * 1024 });
    const p = await peer(r.url);
    await p.hello();
    p.ws.pause();
    const ping = encode({ type: 'ping', t: 1 });
    for (let i = 0; i < 60_000; i++) p.ws.send(ping);
    await waitFor('the replica to stop reading the pinger', () => r.sessionLoad()[0]?.paused === true, 10_000);
    await new Promise((res) => setTimeout(res, 300));
    expect(r.sessionLoad()[0]!.bufferedBytes).toBeLessThan(2 * 1024 * 1024);
    p.ws.resume();
    await waitFor('every ping answered', () => p.replies.filter((m) => m.type === 'pong').length === 60_000, 20_000);
  });

  it('requests in flight per session are bounded: past the limit the replica waits for answers before reading more', async () => {
    // A store whose writes wait until released (a slow disk).
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const mem = new MemoryStore();
    const slow = new Proxy(mem, {
      get(t, p, rcv) {
        if (p === 'write') return async (req: WriteRequest): Promise<WriteResult> => (await gate, mem.write(req));
        const v = Reflect.get(t, p, rcv) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
      },
    }) as Store;
    const r = await replica({ maxInflightPerSession: 8 }, slow);
    const p = await peer(r.url);
    await p.hello();
    const rid = 'S'.repeat(21);
    p.ws.send(encode({ type: 'open', id: 1, target: 'slow.disk', requestId: rid, principal: 'p', mode: 'write' }));
    await waitFor('the open', () => p.replies.some((m) => m.type === 'opened'));
    for (let i = 1; i <= 40; i++)
      p.ws.send(
        encode({
          type: 'write',
          id: 100 + i,
          target: 'slow.disk',
          requestId: rid,
          seq: i,
          offset: i,
          data: bytes('x'),
        }),
      );
    await waitFor('the replica to stop reading', () => r.sessionLoad()[0]?.paused === true);
    expect(r.sessionLoad()[0]!.inflight).toBeLessThanOrEqual(9);
    release();
    await waitFor('every write answered', () => p.replies.filter((m) => m.type === 'written').length === 40);
  });
});

describe('a paused handle', () => {
  it('queues writes up to its limit; past it a write fails at once with QUEUE_FULL, and the queued ones land after the resume', async () => {
    const t = tempDir();
    const c = await LocalCluster.start({ ...FAST, dir: t.dir, replicas: 1 });
    cleanups.push(t.cleanup, () => c.stop());
    const agent = await c.addNode('node-1', { maxQueuedBytesPerHandle: 3 * 1024 });
    const h = await new Application(agent, { name: 'app' }).open('q.disk');
    await c.kill(0);
    await waitForState(h, 'paused');
    const queued = [0, 1, 2].map((i) => h.write(i * 1024, new Uint8Array(1024).fill(65 + i)));
    await expect(h.write(3 * 1024, new Uint8Array(1024))).rejects.toMatchObject({
      code: 'QUEUE_FULL',
      retryable: true,
    });
    await c.restart(0);
    await Promise.all(queued);
    expect(text(await h.read(1023, 2))).toBe('AB');
  });
});

describe('renewals', () => {
  it('a renewal slower than its interval is not joined by the next one (renewals never pile up on a slow store)', async () => {
    let running = 0;
    let most = 0;
    let calls = 0;
    class SlowRenewals extends MemoryStore {
      override async renew(...args: Parameters<MemoryStore['renew']>) {
        calls++;
        most = Math.max(most, ++running);
        await new Promise((r) => setTimeout(r, 120));
        running--;
        return super.renew(...args);
      }
    }
    const r = await replica({ leaseMs: 3000, renewIntervalMs: 20 }, new SlowRenewals());
    const p = await peer(r.url);
    expect(await p.hello('node-1')).toMatchObject({ type: 'welcome' });
    p.ws.send(
      encode({ type: 'open', id: 1, target: 'slow.disk', requestId: 'S'.repeat(21), principal: 'p', mode: 'write' }),
    );
    await waitFor('the open', () => p.replies.some((m) => m.type === 'opened'));
    await waitFor('several renewals', () => calls >= 4, 5000);
    expect(most).toBe(1);
  });
});
