/**
 * Another process holding the SQLite file's write lock for seconds must not freeze a replica: it
 * keeps answering heartbeats, answers the write it could not commit (applied once the lock is gone,
 * or refused as retryable UNAVAILABLE), and keeps the session and its handles. Underneath, the
 * store waits for the lock without holding the event loop, keeps operations in order, and gives up
 * (unavailable, nothing applied) after its bound.
 */
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import { StorageReplica } from '../actors/replica.js';
import { SqliteStore } from '../store/sqlite.js';
import type { Message } from '../transport/messages.js';
import type { Connection } from '../transport/types.js';
import { WebSocketTransport } from '../transport/ws.js';
import { loginAs, tempDir, waitFor } from './helpers.js';

const SECRET = 'busy-store-secret-busy-store-secret';
const RID = 'b'.repeat(21);
const bytes = (s: string) => new TextEncoder().encode(s);

/**
 * A second better-sqlite3 connection, in a thread of its own (so a replica blocking this thread
 * could not also block it): takes the write lock, keeps it `holdMs`, lets go. `state()`: 0 before
 * it has the lock, 1 while it holds it, 2 once released.
 */
function blocker(path: string, holdMs: number): { state: () => number; done: Promise<void> } {
  const flags = new Int32Array(new SharedArrayBuffer(8));
  const code = `
    const { workerData } = require('node:worker_threads');
    const Database = require(workerData.sqlite);
    const flags = new Int32Array(workerData.flags);
    const db = new Database(workerData.path);
    db.exec('BEGIN IMMEDIATE');
    Atomics.store(flags, 0, 1);
    Atomics.wait(flags, 1, 0, workerData.holdMs);
    db.exec('ROLLBACK');
    Atomics.store(flags, 0, 2);
    db.close();
  `;
  const sqlite = createRequire(import.meta.url).resolve('better-sqlite3');
  const w = new Worker(code, { eval: true, workerData: { path, holdMs, flags: flags.buffer, sqlite } });
  const done = new Promise<void>((resolve, reject) => {
    w.once('error', reject);
    w.once('exit', () => resolve());
  });
  return { state: () => Atomics.load(flags, 0), done };
}

/** A bare protocol client: every frame it receives, in order, and a wait for the next one that matches. */
async function client(url: string) {
  const conn: Connection = await new WebSocketTransport().connect(url);
  const got: Message[] = [];
  let closed = false;
  const waiters: Array<() => void> = [];
  const login = loginAs(SECRET, 'node-1');
  conn.onFrame((f) => {
    const auth = f.ok ? login.answer(f.msg) : undefined;
    if (auth) conn.send(auth);
    else if (f.ok) got.push(f.msg);
    for (const w of waiters.splice(0)) w();
  });
  conn.onClose(() => {
    closed = true;
    for (const w of waiters.splice(0)) w();
  });
  const next = (what: string, match: (m: Message) => boolean, from = 0): Promise<Message> =>
    new Promise((resolve, reject) => {
      const look = () => {
        const m = got.slice(from).find(match);
        if (m) return resolve(m);
        if (closed)
          return reject(
            new Error(`connection closed while waiting for ${what}; got ${got.map((x) => x.type).join(' ')}`),
          );
        waiters.push(look);
      };
      look();
    });
  conn.send(login.hello);
  await next('welcome', (m) => m.type === 'welcome');
  return { conn, got, next, isClosed: () => closed };
}

const T = 'vm1.disk';
const open = { target: T, requestId: RID, principal: 'p', mode: 'write' as const, session: 's1', leaseMs: 1e9 };
const write = (seq: number, text: string, offset = seq - 1) => ({
  target: T,
  requestId: RID,
  session: 's1',
  seq,
  offset,
  data: bytes(text),
});

describe('the SQLite store, while another process holds the write lock', () => {
  for (const groupCommit of [true, false]) {
    it(`waits with the event loop free, then commits every operation in order (group commit ${groupCommit ? 'on' : 'off'})`, async () => {
      const t = tempDir();
      const store = new SqliteStore(join(t.dir, 's.sqlite'), { groupCommit, busyTimeoutMs: 10_000 });
      try {
        await store.open(open);
        const lock = blocker(store.path, 1000);
        await waitFor('the other process to hold the lock', () => lock.state() === 1);
        const settled: number[] = [];
        const writes = ['a', 'b', 'c', 'd', 'e'].map((x, i) =>
          store.write(write(i + 1, x)).then((r) => (settled.push(i + 1), r)),
        );
        // A timer of this process runs while the lock is still held elsewhere: nothing blocks the loop.
        const during = await new Promise<number>((r) => setTimeout(() => r(lock.state()), 100));
        expect(during).toBe(1);
        expect(settled).toEqual([]);
        const results = await Promise.all(writes);
        expect(lock.state()).toBe(2);
        expect(results.map((r) => r.ok && r.applied && r.version)).toEqual([1, 2, 3, 4, 5]);
        expect(settled).toEqual([1, 2, 3, 4, 5]);
        const read = await store.read({ target: T, offset: 0, length: 5 });
        expect(read.ok && new TextDecoder().decode(read.data)).toBe('abcde');
        await lock.done;
      } finally {
        await store.shutdown();
        t.cleanup();
      }
    });

    it(`gives up after its bound: every waiting operation fails as unavailable and none is applied (group commit ${groupCommit ? 'on' : 'off'})`, async () => {
      const t = tempDir();
      const store = new SqliteStore(join(t.dir, 's.sqlite'), { groupCommit, busyTimeoutMs: 100 });
      try {
        await store.open(open);
        const lock = blocker(store.path, 1500);
        await waitFor('the other process to hold the lock', () => lock.state() === 1);
        const writes = [1, 2, 3].map((seq) => store.write(write(seq, 'x')));
        for (const w of writes) await expect(w).rejects.toMatchObject({ name: 'StoreUnavailableError' });
        expect(lock.state(), 'given up while the lock is still held').toBe(1);
        await lock.done;
        expect(await store.write(write(1, 'y'))).toMatchObject({ ok: true, applied: true, version: 1 });
      } finally {
        await store.shutdown();
        t.cleanup();
      }
    });
  }
});

describe('a SQLite file another process keeps busy', () => {
  let cleanup: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanup.reverse()) await c();
    cleanup = [];
  });

  it('the replica answers pings while the lock is held, answers the write, and keeps the session', async () => {
    const t = tempDir();
    const store = new SqliteStore(join(t.dir, 'store.sqlite'));
    const replica = await new StorageReplica({
      id: 'replica-1',
      store,
      transport: new WebSocketTransport(),
      secret: SECRET,
      holdMs: 2000,
      heartbeatIntervalMs: 200,
      probeIntervalMs: 50,
    }).start();
    cleanup.push(
      t.cleanup,
      () => store.shutdown(),
      () => replica.stop(),
    );
    const c = await client(replica.url);
    cleanup.push(() => c.conn.close());
    // Heartbeats, as a node agent sends them.
    let t0 = 0;
    const heartbeat = setInterval(() => c.conn.send({ type: 'ping', t: ++t0 }), 100);
    cleanup.push(() => clearInterval(heartbeat));

    c.conn.send({ type: 'open', id: 1, target: 'vm1.disk', requestId: RID, principal: 'p', mode: 'write' });
    expect(await c.next('opened', (m) => m.type === 'opened' && m.id === 1)).toMatchObject({ type: 'opened' });

    const lock = blocker(store.path, 3000);
    await waitFor('the other process to hold the lock', () => lock.state() === 1);
    const sentAt = c.got.length;
    c.conn.send({ type: 'write', id: 2, target: 'vm1.disk', requestId: RID, seq: 1, offset: 0, data: bytes('x') });
    // Let the replica start on the write (and find the file busy) before asking whether it still answers.
    await new Promise((r) => setTimeout(r, 200));
    c.conn.send({ type: 'ping', t: 1_000_000 });
    await c.next('the pong', (m) => m.type === 'pong' && m.t === 1_000_000, sentAt);
    expect(lock.state(), 'the pong must come while the other process still holds the lock').toBe(1);

    const answer = await c.next(
      'the write answer',
      (m) => (m.type === 'written' || m.type === 'error') && m.id === 2,
      sentAt,
    );
    if (answer.type === 'error') expect(answer).toMatchObject({ code: 'UNAVAILABLE', retryable: true });
    else expect(answer).toMatchObject({ type: 'written', seq: 1 });

    await lock.done;
    expect(lock.state()).toBe(2);
    // A replica that reported the store unavailable says when it is back; the handle is then resumed, as a node agent does.
    if (c.got.slice(sentAt).some((m) => m.type === 'notice' && m.kind === 'unavailable')) {
      await c.next('the store back', (m) => m.type === 'notice' && m.kind === 'available', sentAt);
      c.conn.send({
        type: 'resume',
        id: 6,
        items: [{ target: 'vm1.disk', requestId: RID, principal: 'p', mode: 'write' }],
      });
      const resumed = await c.next(
        'the resume answer',
        (m) => (m.type === 'resumed' || m.type === 'error') && m.id === 6,
        sentAt,
      );
      expect(resumed.type === 'resumed' && resumed.results[0]!.granted).toBe(true);
    }
    // Same session, same handle: the write (again, if it was refused) is applied exactly once.
    const againAt = c.got.length;
    c.conn.send({ type: 'write', id: 3, target: 'vm1.disk', requestId: RID, seq: 1, offset: 0, data: bytes('x') });
    c.conn.send({ type: 'write', id: 4, target: 'vm1.disk', requestId: RID, seq: 2, offset: 1, data: bytes('y') });
    expect(
      await c.next('the write of seq 2', (m) => (m.type === 'written' || m.type === 'error') && m.id === 4, againAt),
    ).toMatchObject({ type: 'written', seq: 2 });
    c.conn.send({ type: 'read', id: 5, target: 'vm1.disk', requestId: RID, offset: 0, length: 2 });
    const data = await c.next('the read', (m) => (m.type === 'data' || m.type === 'error') && m.id === 5, againAt);
    expect(data.type === 'data' && new TextDecoder().decode(data.data)).toBe('xy');
    expect(c.isClosed()).toBe(false);
    expect(replica.sessionCount).toBe(1);
    expect(replica.stats.sessions).toBe(1);
    expect(replica.handles().map((h) => h.state)).toEqual(['active']);
  }, 20_000);
});
