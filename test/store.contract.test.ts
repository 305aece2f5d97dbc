/** One contract suite, run against every store adapter (SPEC "Rules of the store"). */
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { seededRandom } from '../actors/env.js';
import { quiesce, SimClock } from '../sim/clock.js';
import { SimStore } from '../sim/store.js';
import { historyLog, type HistoryEvent } from '../sim/history.js';
import { MemoryStore } from '../store/memory.js';
import { SqliteStore } from '../store/sqlite.js';
import { MAX_EXTENT_PAGES, type Store } from '../store/types.js';
import { NO_ACCESS } from '../store/rules.js';
import { EtcdStore } from '../store/etcd.js';
import { Etcd3 } from 'etcd3';
import { startEtcd, type EtcdCluster } from './etcd-cluster.js';
import { bytes, tempDir, text } from './helpers.js';

/**
 * Settle `p` by running the simulated clock: let every promise job run, then fire the next due
 * timer, until `p` settles (a group commit of the simulated store flushes on such a timer).
 */
async function drive<T>(clock: SimClock, p: Promise<T>): Promise<T> {
  let settled = false;
  p.then(
    () => (settled = true),
    () => (settled = true),
  );
  for (;;) {
    await quiesce();
    if (settled) return p;
    const due = clock.nextDue();
    if (due === undefined) throw new Error('the simulated store will never answer: no timer is pending');
    clock.advanceTo(due);
  }
}

/** The simulated store as a Store whose every call runs the simulated clock until it settles. */
function driven(store: SimStore, clock: SimClock): Store {
  return {
    kind: store.kind,
    open: (req) => drive(clock, store.open(req)),
    resume: (reqs) => drive(clock, store.resume(reqs)),
    write: (req) => drive(clock, store.write(req)),
    read: (req) => drive(clock, store.read(req)),
    extents: (req) => drive(clock, store.extents(req)),
    close: (ref, session) => drive(clock, store.close(ref, session)),
    renew: (session, refs, leaseMs) => drive(clock, store.renew(session, refs, leaseMs)),
    editAccess: (req) => drive(clock, store.editAccess(req)),
    access: (target) => drive(clock, store.access(target)),
    record: (target) => drive(clock, store.record(target)),
    tombstones: (target) => drive(clock, store.tombstones(target)),
    pages: (target) => drive(clock, store.pages(target)),
    ping: () => drive(clock, store.ping()),
    shutdown: () => store.shutdown(),
  };
}

interface Adapter {
  name: string;
  /** Start what the adapter needs (an etcd member), once for its suite. */
  start?: () => Promise<void>;
  stop?: () => Promise<void>;
  /**
   * A fresh store whose own clock reads `now`, and a function that closes it and opens it again
   * over the same data (a reboot).
   */
  make(now: () => number): {
    store: Store;
    reopen: () => Promise<Store>;
    cleanup: () => void;
    ready?: Promise<void>;
    legacy: (target: string) => Promise<void>;
  };
}

/** The memory store on a clock the test sets. */
class ClockedMemoryStore extends MemoryStore {
  constructor(state: MemoryStore['state'] | undefined, now: () => number) {
    super(state);
    this.clockNow = now;
  }
}

/** The SQLite store on a clock the test sets. */
class ClockedSqliteStore extends SqliteStore {
  constructor(path: string, now: () => number) {
    super(path);
    this.clockNow = now;
  }
}

const adapters: Adapter[] = [
  {
    name: 'memory',
    make(now) {
      const store = new ClockedMemoryStore(undefined, now);
      return {
        store,
        reopen: async () => new ClockedMemoryStore(store.state, now),
        cleanup: () => {},
        legacy: async (target) => void store.state.access?.delete(target),
      };
    },
  },
  {
    name: 'sim (SQLite model over shared memory, group commit on a simulated clock)',
    make(now) {
      const clock = new SimClock();
      // The database host's clock reads the test's time; its timers (group flushes) are the simulated clock's.
      const host = {
        now,
        setTimeout: (fn: () => void, ms: number) => clock.setTimeout(fn, ms),
        clearTimeout: (id: unknown) => clock.clearTimeout(id),
      };
      const random = seededRandom(7);
      let current = new SimStore(
        { records: new Map(), tombstones: new Map(), targets: new Map() },
        { clock: host, random },
      );
      return {
        store: driven(current, clock),
        reopen: async () => {
          // A reboot: the process dies and a new one opens the same database.
          current.crash();
          current = new SimStore(current.state, { clock: host, random });
          return driven(current, clock);
        },
        cleanup: () => {},
        legacy: async (target) => void current.state.access?.delete(target),
      };
    },
  },
  {
    name: 'sqlite',
    make(now) {
      const t = tempDir();
      const path = join(t.dir, 'store.sqlite');
      let current = new ClockedSqliteStore(path, now);
      return {
        store: current,
        reopen: async () => {
          await current.shutdown();
          current = new ClockedSqliteStore(path, now);
          return current;
        },
        cleanup: () => {
          void current.shutdown();
          t.cleanup();
        },
        // As an earlier version left it: no owner (and no row for a target never written).
        legacy: async (target) => {
          const db = new Database(path);
          db.prepare("UPDATE target_versions SET owner = NULL, grants = '[]' WHERE target = ?").run(target);
          db.prepare('DELETE FROM target_versions WHERE target = ? AND size = 0 AND version = 0').run(target);
          db.close();
        },
      };
    },
  },
];

/**
 * etcd: three members for the whole file. The contract suite runs on them with expiries on the test's
 * clock (lease expiry, judged by etcd in real time, has its own tests below); its reboot is a reboot of
 * every member, and the leader is killed in the middle of the suite and comes back a few tests later.
 */
let etcd: EtcdCluster | undefined;
let etcdStarting: Promise<EtcdCluster> | undefined;
const sharedEtcd = () => (etcdStarting ??= startEtcd(3).then((c) => (etcd = c)));
afterAll(async () => {
  await etcd?.stop();
});
/** Until a store answers again (a new leader elected, members back), as a dismounted replica's probe would. */
async function untilAvailable(s: EtcdStore): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      await s.ping();
      await s.record('probe');
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}
let prefixes = 0;
let killedLeader: string | undefined;
/**
 * Each test's store under a prefix of its own. The leader is killed as the read-handle test starts
 * (the suite's middle) and started again as the test of writes past the end starts.
 */
const makeEtcd = (now: () => number) => {
  const opts = { prefix: `/contract-${process.pid}-${++prefixes}/`, now, expiry: 'clock' as const, timeoutMs: 3000 };
  const test = expect.getState().currentTestName ?? '';
  let current = new EtcdStore(etcd!.endpoints, opts);
  const ready = (async () => {
    if (test.includes('grants a read handle resume') && killedLeader === undefined) {
      const leader = await etcd!.members.leader();
      if (!leader) throw new Error('etcd has no leader to kill');
      killedLeader = leader.id;
      etcd!.members.kill(leader.id);
    }
    if (test.includes('extends a target with zeros') && killedLeader) await etcd!.members.restart(killedLeader);
    await untilAvailable(current);
  })();
  return {
    store: current as Store,
    ready,
    reopen: async () => {
      await current.shutdown();
      // A reboot of the whole store: every member killed at once, then started over its data.
      for (const m of etcd!.members.members) if (m.proc) etcd!.members.kill(m.id);
      for (const m of etcd!.members.members) await etcd!.members.restart(m.id);
      current = new EtcdStore(etcd!.endpoints, opts);
      await untilAvailable(current);
      return current as Store;
    },
    cleanup: () => void current.shutdown(),
    // As an earlier version left it: a v key without owner (and none for a target never written).
    legacy: async (target: string) => {
      const client = new Etcd3({ hosts: etcd!.endpoints.map((e) => `http://${e}`) });
      try {
        const key = `${opts.prefix}k/${encodeURIComponent(target)}/v`;
        const raw = await client.get(key).string();
        if (raw === null) return;
        const {
          owner: _o,
          grants: _g,
          ...meta
        } = JSON.parse(raw) as { version: number; size: number; owner?: string; grants?: unknown };
        if (meta.version === 0 && meta.size === 0) await client.delete().key(key);
        else await client.put(key).value(JSON.stringify(meta));
      } finally {
        client.close();
      }
    },
  };
};
adapters.push({
  name: 'etcd (three members)',
  start: async () => {
    await sharedEtcd();
  },
  make: makeEtcd,
});

const X = 'X'.repeat(21);
const Y = 'Y'.repeat(21);
const T = 'vm1.disk';
const P = 'alice';

for (const adapter of adapters) {
  describe(`store contract: ${adapter.name}`, () => {
    if (adapter.start) beforeAll(adapter.start, 30_000);
    if (adapter.stop) afterAll(adapter.stop);
    let env: ReturnType<Adapter['make']>;
    let store: Store;
    /** The store's clock. */
    let nowMs = 0;
    const setup = async () => {
      nowMs = 0;
      env = adapter.make(() => nowMs);
      store = env.store;
      await env.ready;
    };
    afterEach(() => env.cleanup());
    /** At store time `now`, open with a lock lasting until `expiresAt`. */
    const open = (
      requestId: string,
      session: string,
      now: number,
      expiresAt: number,
      mode: 'read' | 'write' = 'write',
      principal = P,
    ) => {
      nowMs = now;
      return store.open({ target: T, requestId, principal, mode, session, leaseMs: expiresAt - now });
    };
    const write = (requestId: string, session: string, seq: number, offset: number, s: string) =>
      store.write({ target: T, requestId, session, seq, offset, data: bytes(s) });
    const resume = (
      requestId: string,
      session: string,
      expiresAt = 10_000,
      mode: 'read' | 'write' = 'write',
      version?: number,
    ) =>
      store
        .resume([{ target: T, requestId, principal: P, mode, session, leaseMs: expiresAt - nowMs, version }])
        .then((r) => r[0]!);

    it('grants a write open and refuses another writer with LOCKED while the lock is live', async () => {
      await setup();
      expect(await open(X, 's1', 0, 1000)).toMatchObject({ ok: true, version: 0, lastSeq: 0 });
      expect(await open(Y, 's2', 999, 2000)).toMatchObject({ ok: false, code: 'LOCKED' });
      expect((await store.record(T))?.requestId).toBe(X);
    });

    it('revokes an expired lock: the new writer is granted and the old resume is denied MODIFIED', async () => {
      await setup();
      await open(X, 's1', 0, 1000);
      expect(await open(Y, 's2', 1000, 3000)).toMatchObject({ ok: true });
      expect(await resume(X, 's3')).toMatchObject({ granted: false, reason: 'MODIFIED' });
    });

    it('read opens never conflict and never revoke', async () => {
      await setup();
      await open(X, 's1', 0, 1000);
      expect(await open(Y, 's2', 5000, 0, 'read')).toMatchObject({ ok: true });
      expect((await store.record(T))?.requestId).toBe(X);
    });

    it('same requestId from a new session takes over and fences the old session', async () => {
      await setup();
      await open(X, 's1', 0, 1000);
      expect(await write(X, 's1', 1, 0, 'one')).toMatchObject({ ok: true, applied: true });
      expect(await open(X, 's2', 10, 1000)).toMatchObject({ ok: true, takeover: true, lastSeq: 1 });
      expect(await write(X, 's1', 2, 0, 'old')).toMatchObject({ ok: false, code: 'SUPERSEDED' });
      expect(await write(X, 's2', 2, 3, 'two')).toMatchObject({ ok: true, applied: true });
      const r = await store.read({ target: T, offset: 0, length: 10 });
      expect(r.ok && text(r.data)).toBe('onetwo');
    });

    it('grants a resume while the record holds the requestId, even after the lock expired, with the last seq', async () => {
      await setup();
      await open(X, 's1', 0, 100);
      await write(X, 's1', 1, 0, 'a');
      await write(X, 's1', 2, 1, 'b');
      nowMs = 500;
      expect(await resume(X, 's2')).toMatchObject({ granted: true, lastSeq: 2 });
      expect((await store.record(T))?.expiresAt).toBe(10_000);
      expect(await write(X, 's1', 3, 2, 'c')).toMatchObject({ ok: false, code: 'SUPERSEDED' });
    });

    const resumeAs = (requestId: string, session: string, instance: string, takeover = false) =>
      store
        .resume([
          { target: T, requestId, principal: P, mode: 'write', session, leaseMs: 10_000 - nowMs, instance, takeover },
        ])
        .then((r) => r[0]!);

    it('a writer taken over after its hold learns from the tombstone which of its writes were applied', async () => {
      await setup();
      await store.open({
        target: T,
        requestId: X,
        principal: P,
        mode: 'write',
        session: 's1',
        leaseMs: 1000,
        instance: 'inst-one',
      });
      await write(X, 's1', 1, 0, 'a');
      await write(X, 's1', 2, 1, 'b');
      expect(await open(Y, 's2', 1000, 3000)).toMatchObject({ ok: true });
      expect(await resumeAs(X, 's3', 'inst-one')).toMatchObject({ granted: false, reason: 'MODIFIED', lastSeq: 2 });
    });

    it("a lapsed holder's tombstone says who took the target over and when (the store's clock); one closed by its holder names nobody", async () => {
      await setup();
      await store.open({
        target: T,
        requestId: X,
        principal: P,
        mode: 'write',
        session: 's1',
        leaseMs: 1000,
        instance: 'inst-one',
      });
      await write(X, 's1', 1, 0, 'a');
      expect(await open(Y, 's2', 1000, 3000)).toMatchObject({ ok: true });
      expect((await store.tombstones(T))[0]).toMatchObject({
        requestId: X,
        lastSeq: 1,
        takenBy: { requestId: Y, principal: P, at: 1000 },
      });
      expect(await store.close({ target: T, requestId: Y }, 's2')).toBe(true);
      const tombs = await store.tombstones(T);
      expect(tombs.map((t) => t.requestId)).toEqual([Y, X]);
      expect(tombs[0]!.takenBy).toBeUndefined();
      expect(await store.tombstones('never-written')).toEqual([]);
    });

    it("a requestId stays its principal's while its tombstone is kept: another principal cannot open it after taking the target, and the victim learns MODIFIED with its lastSeq", async () => {
      await setup();
      // The victim (alice) writes; its lock lapses; mallory (whom alice let write) takes the target with a requestId of its own and closes.
      await store.open({
        target: T,
        requestId: X,
        principal: P,
        mode: 'write',
        session: 's1',
        leaseMs: 1000,
        instance: 'inst-one',
      });
      expect(await store.editAccess({ target: T, by: P, principal: 'mallory', mode: 'write' })).toMatchObject({
        ok: true,
      });
      await write(X, 's1', 1, 0, 'a');
      await write(X, 's1', 2, 1, 'b');
      expect(await open(Y, 's2', 1000, 3000, 'write', 'mallory')).toMatchObject({ ok: true });
      expect(await store.close({ target: T, requestId: Y }, 's2')).toBe(true);
      // Then it opens the target naming the victim's requestId: refused, nothing written.
      expect(await open(X, 's2', 1100, 3000, 'write', 'mallory')).toMatchObject({ ok: false, code: 'FORBIDDEN' });
      expect(await store.record(T)).toBeUndefined();
      expect(await write(X, 's2', 1, 0, 'M')).toMatchObject({ ok: false, code: 'MODIFIED' });
      const tombs = await store.tombstones(T);
      expect(tombs.map((t) => [t.requestId, t.principal])).toEqual([
        [Y, 'mallory'],
        [X, P],
      ]);
      expect(tombs[1]).toMatchObject({ session: 's1', lastSeq: 2 });
      // The victim's resume is told the truth: modified, and which of its writes were applied.
      expect(await resumeAs(X, 's3', 'inst-one')).toMatchObject({
        granted: false,
        reason: 'MODIFIED',
        code: 'MODIFIED',
        lastSeq: 2,
      });
      const r = await store.read({ target: T, offset: 0, length: 4 });
      expect(r.ok && text(r.data)).toBe('ab');
      // Its own principal's open of it again is a late copy (a node opens a requestId afresh once): refused, nothing written.
      expect(await open(X, 's4', 1200, 3000)).toMatchObject({ ok: false, code: 'SUPERSEDED' });
      expect(await store.record(T)).toBeUndefined();
    });

    it('a late takeover by any instance the record was taken from takes nothing, and a late resume of the holding instance neither', async () => {
      await setup();
      const at = (instance: string, session: string, epoch: number, takeover = true) =>
        store
          .resume([
            {
              target: T,
              requestId: X,
              principal: P,
              mode: 'write',
              session,
              leaseMs: 10_000 - nowMs,
              instance,
              takeover,
              epoch,
            },
          ])
          .then((r) => r[0]!);
      expect(
        await store.open({
          target: T,
          requestId: X,
          principal: P,
          mode: 'write',
          session: 's1',
          leaseMs: 1000,
          instance: 'inst-one',
          epoch: 1,
        }),
      ).toMatchObject({ ok: true });
      // The application moves twice: inst-two, then inst-three, each taking the record over.
      expect(await at('inst-two', 's2', 5)).toMatchObject({ granted: true });
      expect(await at('inst-three', 's3', 7)).toMatchObject({ granted: true });
      expect(await store.record(T)).toMatchObject({
        instance: 'inst-three',
        session: 's3',
        epoch: 7,
        retired: ['inst-two', 'inst-one'],
      });
      // Late copies from sessions their nodes left: the takeovers of the instances it moved from, and an older resume of inst-three.
      expect(await at('inst-one', 's8', 99)).toMatchObject({ granted: false, stale: true });
      expect(await at('inst-two', 's9', 6)).toMatchObject({ granted: false, stale: true });
      expect(await at('inst-three', 's7', 6, false)).toMatchObject({
        granted: false,
        reason: 'SUPERSEDED',
        stale: true,
        heldEpoch: 7,
      });
      expect(await store.record(T)).toMatchObject({ instance: 'inst-three', session: 's3', epoch: 7 });
      expect(await write(X, 's3', 1, 0, 'a')).toMatchObject({ ok: true, applied: true });
    });

    it('an instance whose successor took over and closed is denied SUPERSEDED, with what it had applied', async () => {
      await setup();
      await store.open({
        target: T,
        requestId: X,
        principal: P,
        mode: 'write',
        session: 's1',
        leaseMs: 1000,
        instance: 'inst-one',
      });
      await write(X, 's1', 1, 0, 'a');
      expect(await resumeAs(X, 's2', 'inst-two', true)).toMatchObject({ granted: true, lastSeq: 1 });
      await write(X, 's2', 2, 1, 'b');
      expect(await store.close({ target: T, requestId: X }, 's2')).toBe(true);
      expect(await resumeAs(X, 's3', 'inst-one')).toMatchObject({ granted: false, reason: 'SUPERSEDED', lastSeq: 1 });
    });

    it('denies a resume to another principal', async () => {
      await setup();
      await open(X, 's1', 0, 100);
      const r = await store.resume([
        { target: T, requestId: X, principal: 'mallory', mode: 'write', session: 's2', leaseMs: 1 },
      ]);
      expect(r[0]).toMatchObject({ granted: false, reason: 'FORBIDDEN', code: 'FORBIDDEN' });
      expect(await open(X, 's2', 0, 100, 'write', 'mallory')).toMatchObject({ ok: false, code: 'FORBIDDEN' });
    });

    it('grants a read handle resume iff the target version is unchanged', async () => {
      await setup();
      await open(X, 's1', 0, 1000);
      await write(X, 's1', 1, 0, 'a');
      expect(await resume(Y, 's9', 0, 'read', 1)).toMatchObject({ granted: true, version: 1 });
      await write(X, 's1', 2, 0, 'b');
      expect(await resume(Y, 's9', 0, 'read', 1)).toMatchObject({ granted: false, reason: 'MODIFIED', version: 2 });
    });

    it('applies each seq once: a replay is acknowledged without applying; a gap is refused', async () => {
      await setup();
      await open(X, 's1', 0, 1000);
      expect(await write(X, 's1', 1, 0, 'aaaa')).toMatchObject({ ok: true, applied: true, version: 1 });
      expect(await write(X, 's1', 1, 0, 'zzzz')).toMatchObject({ ok: true, applied: false, version: 1 });
      expect(await write(X, 's1', 3, 0, 'cccc')).toMatchObject({ ok: false, code: 'SEQ_GAP' });
      const r = await store.read({ target: T, offset: 0, length: 4 });
      expect(r.ok && text(r.data)).toBe('aaaa');
    });

    it('an empty write takes its sequence number without changing data or version', async () => {
      await setup();
      await open(X, 's1', 0, 1000);
      await write(X, 's1', 1, 0, 'data');
      expect(await write(X, 's1', 2, 0, '')).toMatchObject({ ok: true, applied: true, version: 1 });
      expect(await write(X, 's1', 3, 4, '!')).toMatchObject({ ok: true, applied: true, version: 2 });
      expect(await resume(X, 's2')).toMatchObject({ granted: true, lastSeq: 3 });
    });

    it('refuses writes from a requestId that lost the target', async () => {
      await setup();
      await open(X, 's1', 0, 10);
      await open(Y, 's2', 10, 1000);
      expect(await write(X, 's1', 1, 0, 'x')).toMatchObject({ ok: false, code: 'MODIFIED' });
      const r = await store.read({ target: T, offset: 0, length: 1 });
      expect(r.ok && r.data.length).toBe(0);
    });

    it('fences reads of a write handle but not of read handles', async () => {
      await setup();
      await open(X, 's1', 0, 1000);
      await open(X, 's2', 0, 1000);
      expect(
        await store.read({ target: T, offset: 0, length: 1, fence: { requestId: X, session: 's1' } }),
      ).toMatchObject({ ok: false, code: 'SUPERSEDED' });
      expect(await store.read({ target: T, offset: 0, length: 1 })).toMatchObject({ ok: true });
    });

    it('close releases the lock and deletes the record; a close from a fenced session does nothing', async () => {
      await setup();
      await open(X, 's1', 0, 1000);
      await open(X, 's2', 0, 1000);
      await store.close({ target: T, requestId: X }, 's1');
      expect((await store.record(T))?.session).toBe('s2');
      await store.close({ target: T, requestId: X }, 's2');
      expect(await store.record(T)).toBeUndefined();
      expect(await open(Y, 's3', 1, 1000)).toMatchObject({ ok: true });
      expect(await resume(X, 's4')).toMatchObject({ granted: false, reason: 'MODIFIED' });
    });

    it('renews a batch of locks of one session and reports the ones it lost', async () => {
      await setup();
      const refs = ['a', 'b', 'c'].map((target) => ({ target, requestId: X }));
      for (const r of refs) await store.open({ ...r, principal: P, mode: 'write', session: 's1', leaseMs: 100 });
      await store.open({ target: 'c', requestId: X, principal: P, mode: 'write', session: 's2', leaseMs: 100 });
      nowMs = 50;
      const res = await store.renew('s1', refs, 5000);
      expect(res.lost).toEqual([{ target: 'c', requestId: X, reason: 'SUPERSEDED' }]);
      expect((await store.record('a'))?.expiresAt).toBe(5050);
      nowMs = 5049;
      expect(
        await store.open({ target: 'a', requestId: Y, principal: P, mode: 'write', session: 's3', leaseMs: 1 }),
      ).toMatchObject({ ok: false, code: 'LOCKED' });
      nowMs = 5050;
      expect(
        await store.open({ target: 'a', requestId: Y, principal: P, mode: 'write', session: 's3', leaseMs: 1 }),
      ).toMatchObject({ ok: true });
    });

    it('extends a target with zeros on a write past its end and reads back ranges', async () => {
      await setup();
      await open(X, 's1', 0, 1000);
      await write(X, 's1', 1, 4, 'xy');
      const r = await store.read({ target: T, offset: 0, length: 100 });
      expect(r.ok && [...r.data]).toEqual([0, 0, 0, 0, 120, 121]);
    });

    it('reads back exactly what a series of writes at any offsets and lengths left, across page boundaries', async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.array(
            fc.record({
              offset: fc.nat(20_000),
              length: fc.integer({ min: 1, max: 9000 }),
              fill: fc.integer({ min: 1, max: 255 }),
            }),
            { minLength: 1, maxLength: 6 },
          ),
          async (ws) => {
            await setup();
            try {
              await open(X, 's1', 0, 1000);
              let model = new Uint8Array(0);
              for (const [i, w] of ws.entries()) {
                const data = new Uint8Array(w.length).fill(w.fill);
                if (w.offset + w.length > model.length) {
                  const grown = new Uint8Array(w.offset + w.length);
                  grown.set(model);
                  model = grown;
                }
                model.set(data, w.offset);
                expect(
                  await store.write({ target: T, requestId: X, session: 's1', seq: i + 1, offset: w.offset, data }),
                ).toMatchObject({ ok: true, applied: true, version: i + 1 });
              }
              const all = await store.read({ target: T, offset: 0, length: model.length + 100 });
              expect(all.ok && Buffer.from(all.data).equals(Buffer.from(model))).toBe(true);
              const from = Math.floor(model.length / 3);
              const part = await store.read({ target: T, offset: from, length: 5000 });
              expect(part.ok && Buffer.from(part.data).equals(Buffer.from(model.subarray(from, from + 5000)))).toBe(
                true,
              );
            } finally {
              env.cleanup();
            }
          },
        ),
        { numRuns: 25 },
      );
      await setup(); // for afterEach
    });

    it('a target created with a size reads as that many zeros, refuses writes past its end and keeps its size; another size is refused', async () => {
      await setup();
      const size = 3 * 4096 + 100;
      const sized = (requestId: string, session: string, mode: 'read' | 'write', n: number | undefined) =>
        store.open({ target: T, requestId, principal: P, mode, session, leaseMs: 1000, size: n });
      expect(await sized(X, 'r0', 'read', size)).toMatchObject({
        ok: false,
        code: 'INVALID_ARGUMENT',
        message: expect.stringContaining('does not exist yet'),
      });
      expect(await sized(X, 's1', 'write', size)).toMatchObject({ ok: true, version: 0, size });
      const zeros = await store.read({ target: T, offset: 0, length: size + 50 });
      expect(zeros.ok && zeros.data.length === size && zeros.data.every((b) => b === 0)).toBe(true);
      expect(
        await store.write({ target: T, requestId: X, session: 's1', seq: 1, offset: size - 2, data: bytes('end') }),
      ).toMatchObject({ ok: false, code: 'INVALID_ARGUMENT', message: expect.stringContaining(`${size} bytes`) });
      expect(
        await store.write({ target: T, requestId: X, session: 's1', seq: 1, offset: size - 3, data: bytes('end') }),
      ).toMatchObject({ ok: true, applied: true, version: 1 });
      const tail = await store.read({ target: T, offset: size - 5, length: 100 });
      expect(tail.ok && [...tail.data]).toEqual([0, 0, 101, 110, 100]);
      // The size is the target's: a resume learns it, other opens name it or none, never another.
      expect(await resume(X, 's2')).toMatchObject({ granted: true, size });
      expect(await sized(Y, 's3', 'read', undefined)).toMatchObject({ ok: true, size });
      expect(await sized(Y, 's3', 'read', size + 1)).toMatchObject({
        ok: false,
        code: 'INVALID_ARGUMENT',
        message: expect.stringContaining(`created with a size of ${size} bytes`),
      });
      nowMs = 5000;
      expect(await sized(Y, 's3', 'write', 2 * size)).toMatchObject({ ok: false, code: 'INVALID_ARGUMENT' });
      expect(await store.record(T)).toMatchObject({ requestId: X });
      // A target that holds data without a size cannot be given one; a size out of range is refused.
      const other = (size: number) =>
        store.open({ target: 'plain', requestId: X, principal: P, mode: 'write', session: 's1', leaseMs: 1000, size });
      expect(
        await store.open({ target: 'plain', requestId: X, principal: P, mode: 'write', session: 's1', leaseMs: 1000 }),
      ).toMatchObject({ ok: true, size: 0 });
      await store.write({ target: 'plain', requestId: X, session: 's1', seq: 1, offset: 0, data: bytes('x') });
      expect(await other(4096)).toMatchObject({
        ok: false,
        code: 'INVALID_ARGUMENT',
        message: expect.stringContaining('already holds data'),
      });
      expect(await other(0)).toMatchObject({ ok: false, code: 'INVALID_ARGUMENT' });
    });

    it('a disk far larger than a target without a size costs only the pages written (the memory store refuses it)', async () => {
      await setup();
      const GiB = 1024 ** 3;
      const res = await store.open({
        target: T,
        requestId: X,
        principal: P,
        mode: 'write',
        session: 's1',
        leaseMs: 1000,
        size: 4 * GiB,
      });
      // Memory and its simulation keep a target in one buffer: they allow sizes up to MAX_TARGET_BYTES.
      if (store.kind === 'memory' || store.kind === 'sim') {
        expect(res).toMatchObject({
          ok: false,
          code: 'INVALID_ARGUMENT',
          message: expect.stringContaining('between 1 and'),
        });
        return;
      }
      expect(res).toMatchObject({ ok: true, size: 4 * GiB });
      expect(
        await store.write({
          target: T,
          requestId: X,
          session: 's1',
          seq: 1,
          offset: 4 * GiB - 4096,
          data: new Uint8Array(4096).fill(7),
        }),
      ).toMatchObject({ ok: true, applied: true });
      const end = await store.read({ target: T, offset: 4 * GiB - 8192, length: 8192 });
      expect(end.ok && [end.data.length, end.data[0], end.data[4095], end.data[4096], end.data[8191]]).toEqual([
        8192, 0, 0, 7, 7,
      ]);
      const middle = await store.read({ target: T, offset: 2 * GiB, length: 1 << 20 });
      expect(middle.ok && middle.data.length === 1 << 20 && middle.data.every((b) => b === 0)).toBe(true);
      expect(
        await store.write({ target: T, requestId: X, session: 's1', seq: 2, offset: 4 * GiB - 1, data: bytes('ab') }),
      ).toMatchObject({ ok: false, code: 'INVALID_ARGUMENT' });
    });

    it('extents lists the pages a target keeps in a range, clipped to it; a page left all zeros is not kept', async () => {
      await setup();
      await open(X, 's1', 0, 1000);
      const w = (seq: number, offset: number, data: Uint8Array) =>
        store.write({ target: T, requestId: X, session: 's1', seq, offset, data });
      // Page 1, and pages 5 and 6 (one write across their boundary); nothing else.
      await w(1, 4096 + 10, bytes('one'));
      await w(2, 6 * 4096 - 2, bytes('five-six'));
      expect(await store.extents({ target: T, offset: 0, length: 10 * 4096 })).toEqual({
        ok: true,
        kept: [
          [4096, 4096],
          [5 * 4096, 2 * 4096],
        ],
        end: 10 * 4096,
        version: 2,
      });
      // Clipped to a range that starts and ends inside kept pages, and one that holds none.
      expect(await store.extents({ target: T, offset: 4096 + 100, length: 5 * 4096 })).toMatchObject({
        kept: [
          [4096 + 100, 4096 - 100],
          [5 * 4096, 4096 + 100],
        ],
        end: 6 * 4096 + 100,
      });
      expect(await store.extents({ target: T, offset: 2 * 4096, length: 3 * 4096 })).toMatchObject({
        kept: [],
        end: 5 * 4096,
      });
      expect(await store.extents({ target: T, offset: 100, length: 0 })).toMatchObject({ kept: [], end: 100 });
      // Zeros written over page 1 remove it; past the end, and on a target never written, nothing is kept.
      await w(3, 4096, new Uint8Array(4096));
      expect(await store.extents({ target: T, offset: 0, length: 100 * 4096 })).toEqual({
        ok: true,
        kept: [[5 * 4096, 2 * 4096]],
        end: 100 * 4096,
        version: 3,
      });
      expect(await store.extents({ target: 'never.disk', offset: 0, length: 4096 })).toEqual({
        ok: true,
        kept: [],
        end: 4096,
        version: 0,
      });
    });

    it('extents is fenced like a read: a write handle that lost the target is refused, a read handle is not', async () => {
      await setup();
      await open(X, 's1', 0, 1000);
      await write(X, 's1', 1, 0, 'data');
      const fenced = (requestId: string, session: string) =>
        store.extents({ target: T, offset: 0, length: 4096, fence: { requestId, session } });
      expect(await fenced(X, 's1')).toMatchObject({ ok: true, kept: [[0, 4096]] });
      await open(X, 's2', 0, 1000);
      expect(await fenced(X, 's1')).toMatchObject({ ok: false, code: 'SUPERSEDED' });
      expect(await fenced(Y, 's2')).toMatchObject({ ok: false, code: 'MODIFIED' });
      expect(await store.extents({ target: T, offset: 0, length: 4096 })).toMatchObject({
        ok: true,
        kept: [[0, 4096]],
      });
    });

    it(`extents lists at most MAX_EXTENT_PAGES kept pages: the answer describes the range up to the last one`, async () => {
      await setup();
      await open(X, 's1', 0, 1000);
      const MiB = 1 << 20;
      const full = new Uint8Array(MiB).fill(7);
      const kept = MAX_EXTENT_PAGES * 4096 + MiB;
      for (let at = 0, seq = 1; at < kept; at += MiB, seq++)
        expect(
          await store.write({ target: T, requestId: X, session: 's1', seq, offset: at, data: full }),
        ).toMatchObject({ ok: true });
      const first = await store.extents({ target: T, offset: 0, length: 2 * kept });
      expect(first).toMatchObject({ ok: true, kept: [[0, MAX_EXTENT_PAGES * 4096]], end: MAX_EXTENT_PAGES * 4096 });
      expect(await store.extents({ target: T, offset: MAX_EXTENT_PAGES * 4096, length: 2 * kept })).toMatchObject({
        ok: true,
        kept: [[MAX_EXTENT_PAGES * 4096, MiB]],
        end: MAX_EXTENT_PAGES * 4096 + 2 * kept,
      });
    }, 60_000);

    it('a write that leaves a page all zeros removes it (it reads as zeros); the version still moves', async () => {
      await setup();
      await open(X, 's1', 0, 1000);
      const w = (seq: number, offset: number, data: Uint8Array) =>
        store.write({ target: T, requestId: X, session: 's1', seq, offset, data });
      const size = 3 * 4096 + 100;
      expect(await w(1, 0, new Uint8Array(size).fill(7))).toMatchObject({ ok: true, version: 1 });
      expect(await store.pages(T)).toBe(4);
      // A whole page of zeros, then a page zeroed in two parts: each leaves the store.
      expect(await w(2, 4096, new Uint8Array(4096))).toMatchObject({ ok: true, applied: true, version: 2 });
      expect(await store.pages(T)).toBe(3);
      expect(await w(3, 100, new Uint8Array(4096 - 100))).toMatchObject({ ok: true, version: 3 });
      expect(await store.pages(T)).toBe(3);
      expect(await w(4, 0, new Uint8Array(100))).toMatchObject({ ok: true, version: 4 });
      expect(await store.pages(T)).toBe(2);
      const mid = await store.read({ target: T, offset: 0, length: 8192 + 1 });
      expect(mid.ok && [mid.data.length, mid.data.every((b, i) => b === (i === 8192 ? 7 : 0))]).toEqual([8193, true]);
      // The last (short) page and the one before it, in one write.
      expect(await w(5, 8192, new Uint8Array(4096 + 100))).toMatchObject({ ok: true, version: 5 });
      expect(await store.pages(T)).toBe(0);
      // Zeros past the end grow the target without storing anything.
      expect(await w(6, 1 << 20, new Uint8Array(1 << 20))).toMatchObject({ ok: true, version: 6 });
      expect(await store.pages(T)).toBe(0);
      const all = await store.read({ target: T, offset: 0, length: 2 << 20 });
      expect(all.ok && [all.data.length, all.data.every((b) => b === 0), all.version]).toEqual([2 << 20, true, 6]);
      // Data written again lands in a page again.
      expect(await w(7, 5000, bytes('back'))).toMatchObject({ ok: true, version: 7 });
      expect(await store.pages(T)).toBe(1);
      const back = await store.read({ target: T, offset: 5000, length: 4 });
      expect(back.ok && text(back.data)).toBe('back');
    });

    it('a resume denied MODIFIED says which byte ranges another writer changed since the version the handle last saw; a zeroed page counts', async () => {
      await setup();
      await open(X, 's1', 0, 1000);
      expect(await write(X, 's1', 1, 0, 'mine')).toMatchObject({ ok: true, version: 1 });
      expect(await write(X, 's1', 2, 5 * 4096, 'mine too')).toMatchObject({ ok: true, version: 2 });
      // X's lock lapses; Y takes the target and changes two ranges, and zeroes the page X wrote first.
      expect(await open(Y, 's2', 1000, 3000)).toMatchObject({ ok: true, version: 2 });
      expect(await write(Y, 's2', 1, 3 * 4096 + 10, 'theirs')).toMatchObject({ ok: true, version: 3 });
      await store.write({
        target: T,
        requestId: Y,
        session: 's2',
        seq: 2,
        offset: 1 << 20,
        data: new Uint8Array(8192).fill(9),
      });
      expect(
        await store.write({ target: T, requestId: Y, session: 's2', seq: 3, offset: 0, data: new Uint8Array(4) }),
      ).toMatchObject({ ok: true, version: 5 });
      const denied = await resume(X, 's3', 10_000, 'write', 2);
      expect(denied).toMatchObject({ granted: false, code: 'MODIFIED', lastSeq: 2 });
      expect(denied.granted === false && [denied.changed, denied.coarse]).toEqual([
        [
          [0, 4096],
          [3 * 4096, 4096],
          [1 << 20, 8192],
        ],
        undefined,
      ]);
      // Since a later version, only what changed after it.
      const later = await resume(X, 's3', 10_000, 'write', 4);
      expect(later.granted === false && later.changed).toEqual([[0, 4096]]);
      // A reader that saw version 3 learns the same way.
      const reader = await resume('reader-1', 's4', 10_000, 'read', 3);
      expect(reader.granted === false && reader.changed).toEqual([
        [0, 4096],
        [1 << 20, 8192],
      ]);
    });

    it('the changed ranges are bounded: past 64 ranges they are merged into coarser ones that cover every change, and the denial says so', async () => {
      await setup();
      await open(X, 's1', 0, 1000);
      expect(await open(Y, 's2', 1000, 3000)).toMatchObject({ ok: true, version: 0 });
      // 100 pages apart from each other: 100 ranges; the last 46 are closer together than the first 54.
      const pages = Array.from({ length: 100 }, (_, i) => (i < 54 ? i * 10 : 540 + (i - 54) * 2));
      for (const [i, p] of pages.entries()) await write(Y, 's2', i + 1, p * 4096, 'x');
      const denied = await resume(X, 's3', 10_000, 'write', 0);
      expect(denied).toMatchObject({ granted: false, code: 'MODIFIED', coarse: true });
      const changed = denied.granted === false ? (denied.changed ?? []) : [];
      expect(changed.length).toBe(64);
      // In order, disjoint, and every changed page inside one of them.
      for (let i = 1; i < changed.length; i++)
        expect(changed[i]![0]).toBeGreaterThan(changed[i - 1]![0] + changed[i - 1]![1]);
      for (const p of pages) expect(changed.some(([o, l]) => o <= p * 4096 && p * 4096 + 4096 <= o + l)).toBe(true);
      // The closest ranges were merged first: the first 54 stay a page each.
      expect(changed.slice(0, 54)).toEqual(pages.slice(0, 54).map((p) => [p * 4096, 4096]));
    });

    const refusal = { ok: false, code: 'FORBIDDEN', message: NO_ACCESS };

    it('a target belongs to the principal whose open created it: another is refused FORBIDDEN, in words that are the same for every target it may not open', async () => {
      await setup();
      expect(await store.access(T)).toBeUndefined();
      expect(await open(X, 's1', 0, 1000)).toMatchObject({ ok: true });
      await write(X, 's1', 1, 0, 'secret');
      expect(
        await store.open({
          target: 'other.disk',
          requestId: Y,
          principal: P,
          mode: 'read',
          session: 's1',
          leaseMs: 1000,
        }),
      ).toMatchObject({ ok: true });
      expect(await store.access(T)).toEqual({ owner: P, grants: [] });
      expect(await store.access('other.disk')).toEqual({ owner: P, grants: [] });
      // bob: not a read, not a write, not while the lock lapsed, not a resume of a read handle; the same answer each time.
      const asBob = (target: string, mode: 'read' | 'write', now = 10) => {
        nowMs = now;
        return store.open({ target, requestId: 'B'.repeat(21), principal: 'bob', mode, session: 'sb', leaseMs: 1000 });
      };
      expect(await asBob(T, 'read')).toEqual(refusal);
      expect(await asBob(T, 'write')).toEqual(refusal);
      expect(await asBob(T, 'write', 5000)).toEqual(refusal);
      expect(await asBob('other.disk', 'read')).toEqual(refusal);
      expect(
        await store.resume([
          {
            target: T,
            requestId: 'B'.repeat(21),
            principal: 'bob',
            mode: 'read',
            session: 'sb',
            leaseMs: 1000,
            version: 1,
          },
        ]),
      ).toEqual([{ granted: false, reason: 'FORBIDDEN', code: 'FORBIDDEN', version: 0 }]);
      expect(NO_ACCESS).not.toMatch(new RegExp(`${P}|${T}|${X}`));
      // Nothing of bob's was written: the owner, the holder and the bytes are as they were.
      expect(await store.access(T)).toEqual({ owner: P, grants: [] });
      expect((await store.record(T))?.requestId).toBe(X);
      // A name nobody has is bob's once he opens it.
      expect(await asBob('bobs.disk', 'write')).toMatchObject({ ok: true });
      expect(await store.access('bobs.disk')).toEqual({ owner: 'bob', grants: [] });
      expect(
        await store.open({
          target: 'bobs.disk',
          requestId: Y,
          principal: P,
          mode: 'read',
          session: 's1',
          leaseMs: 1000,
        }),
      ).toEqual(refusal);
    });

    it('the owner grants read, then write, and revokes; only the owner or the operator changes the list, and it outlives a reboot', async () => {
      await setup();
      const B = 'B'.repeat(21);
      const edit = (by: string | undefined, principal: string, mode: 'read' | 'write' | 'none', target = T) =>
        store.editAccess({ target, by, principal, mode });
      const asBob = (mode: 'read' | 'write', requestId = B) =>
        store.open({ target: T, requestId, principal: 'bob', mode, session: 'sb', leaseMs: 1000 });
      expect(await open(X, 's1', 0, 1000)).toMatchObject({ ok: true });
      await write(X, 's1', 1, 0, 'shared');
      // Only the owner: bob cannot grant himself access, to this target or to one nobody has (the same answer).
      expect(await edit('bob', 'bob', 'write')).toEqual(refusal);
      expect(await edit('bob', 'bob', 'write', 'nobody.disk')).toEqual(refusal);
      expect(await edit(P, 'bob', 'read')).toEqual({
        ok: true,
        access: { owner: P, grants: [{ principal: 'bob', mode: 'read' }] },
      });
      expect(await asBob('read')).toMatchObject({ ok: true, version: 1 });
      const r = await store.read({ target: T, offset: 0, length: 6 });
      expect(r.ok && text(r.data)).toBe('shared');
      expect(await asBob('write')).toEqual(refusal);
      // A reader may not pass access on.
      expect(await edit('bob', 'carol', 'read')).toEqual(refusal);
      // Write: bob meets the owner's live lock like any other writer, told only that another writer holds it.
      expect(await edit(P, 'bob', 'write')).toEqual({
        ok: true,
        access: { owner: P, grants: [{ principal: 'bob', mode: 'write' }] },
      });
      expect(await asBob('write', 'C'.repeat(21))).toEqual({
        ok: false,
        code: 'LOCKED',
        message: `${T} is locked by another writer; retry later`,
      });
      // Revoked: refused again, and his read handle's resume is refused too.
      expect(await edit(P, 'bob', 'none')).toEqual({ ok: true, access: { owner: P, grants: [] } });
      expect(await asBob('read', 'D'.repeat(21))).toEqual(refusal);
      expect(
        await store.resume([
          { target: T, requestId: B, principal: 'bob', mode: 'read', session: 'sb2', leaseMs: 1000, version: 1 },
        ]),
      ).toEqual([{ granted: false, reason: 'FORBIDDEN', code: 'FORBIDDEN', version: 0 }]);
      // The operator (no principal) edits any target's list; it is told when a target does not exist.
      expect(await edit(undefined, 'carol', 'read')).toEqual({
        ok: true,
        access: { owner: P, grants: [{ principal: 'carol', mode: 'read' }] },
      });
      expect(await edit(undefined, 'carol', 'read', 'nobody.disk')).toMatchObject({
        ok: false,
        code: 'INVALID_ARGUMENT',
        message: expect.stringContaining('does not exist'),
      });
      expect(await edit(P, P, 'none')).toMatchObject({
        ok: false,
        code: 'INVALID_ARGUMENT',
        message: expect.stringContaining('owns'),
      });
      expect(await store.access('nobody.disk')).toBeUndefined();
      store = await env.reopen();
      expect(await store.access(T)).toEqual({ owner: P, grants: [{ principal: 'carol', mode: 'read' }] });
      expect(
        await store.open({
          target: T,
          requestId: 'E'.repeat(21),
          principal: 'carol',
          mode: 'read',
          session: 'sc',
          leaseMs: 1000,
        }),
      ).toMatchObject({ ok: true, version: 1 });
    });

    it("a target written before owners were kept belongs to its lock record's principal, or its last holder's, never to whoever comes first", async () => {
      await setup();
      expect(await open(X, 's1', 0, 1000)).toMatchObject({ ok: true });
      await write(X, 's1', 1, 0, 'old');
      expect(
        await store.open({
          target: 'closed.disk',
          requestId: Y,
          principal: 'bob',
          mode: 'write',
          session: 'sb',
          leaseMs: 1000,
        }),
      ).toMatchObject({ ok: true });
      expect(
        await store.write({ target: 'closed.disk', requestId: Y, session: 'sb', seq: 1, offset: 0, data: bytes('b') }),
      ).toMatchObject({ ok: true });
      expect(await store.close({ target: 'closed.disk', requestId: Y }, 'sb')).toBe(true);
      await env.legacy(T);
      await env.legacy('closed.disk');
      expect(await store.access(T)).toEqual({ owner: P, grants: [] });
      expect(await store.access('closed.disk')).toEqual({ owner: 'bob', grants: [] });
      // Its lock lapsed: the first comer of another principal is refused all the same.
      expect(await open(Y, 's2', 5000, 9000, 'write', 'mallory')).toEqual(refusal);
      expect(
        await store.open({
          target: 'closed.disk',
          requestId: X,
          principal: P,
          mode: 'read',
          session: 's2',
          leaseMs: 1000,
        }),
      ).toEqual(refusal);
      // The owner's first change records it: once the record is gone, it is still the owner.
      expect(await resume(X, 's3')).toMatchObject({ granted: true, lastSeq: 1 });
      expect(await store.close({ target: T, requestId: X }, 's3')).toBe(true);
      expect(await store.record(T)).toBeUndefined();
      expect(await store.access(T)).toEqual({ owner: P, grants: [] });
      expect(await open(Y, 's4', 6000, 9000, 'write', 'mallory')).toEqual(refusal);
    });

    it('keeps data, records and sequence numbers across a close and reopen (reboot)', async () => {
      await setup();
      await open(X, 's1', 0, 1000);
      await write(X, 's1', 1, 0, 'durable');
      expect(
        await store.open({
          target: 'disk',
          requestId: Y,
          principal: P,
          mode: 'write',
          session: 's1',
          leaseMs: 1000,
          size: 8192,
        }),
      ).toMatchObject({ ok: true, size: 8192 });
      store = await env.reopen();
      expect(
        await store.open({ target: 'disk', requestId: X, principal: P, mode: 'read', session: 's2', leaseMs: 1000 }),
      ).toMatchObject({ ok: true, size: 8192 });
      const r = await store.read({ target: T, offset: 0, length: 7 });
      expect(r.ok && text(r.data)).toBe('durable');
      expect(await resume(X, 's2')).toMatchObject({ granted: true, lastSeq: 1, version: 1 });
      expect(await write(X, 's2', 1, 0, 'again')).toMatchObject({ ok: true, applied: false });
    });
  });
}

describe('sqlite specifics', () => {
  it('two connections to one file (two replica processes) see each other and keep each rule atomic', async () => {
    const t = tempDir();
    const a = new SqliteStore(join(t.dir, 's.sqlite'));
    const b = new SqliteStore(join(t.dir, 's.sqlite'));
    try {
      expect(
        await a.open({ target: T, requestId: X, principal: P, mode: 'write', session: 's1', leaseMs: 100 }),
      ).toMatchObject({ ok: true });
      expect(
        await b.open({ target: T, requestId: Y, principal: P, mode: 'write', session: 's2', leaseMs: 100 }),
      ).toMatchObject({ ok: false, code: 'LOCKED' });
      await a.write({ target: T, requestId: X, session: 's1', seq: 1, offset: 0, data: bytes('hi') });
      const r = await b.read({ target: T, offset: 0, length: 2 });
      expect(r.ok && text(r.data)).toBe('hi');
    } finally {
      await a.shutdown();
      await b.shutdown();
      t.cleanup();
    }
  });

  it('group commit: writes issued together share transactions, apply in order, and a read issued after them sees them', async () => {
    const t = tempDir();
    const a = new SqliteStore(join(t.dir, 's.sqlite'));
    try {
      await a.open({ target: T, requestId: X, principal: P, mode: 'write', session: 's1', leaseMs: 100 });
      const before = { ...a.commits };
      const writes = Array.from({ length: 200 }, (_, i) =>
        a.write({
          target: T,
          requestId: X,
          session: 's1',
          seq: i + 1,
          offset: i,
          data: bytes(String.fromCharCode(65 + (i % 26))),
        }),
      );
      const read = a.read({ target: T, offset: 0, length: 200 });
      const results = await Promise.all(writes);
      expect(results.map((r) => r.ok && r.version)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
      const r = await read;
      expect(r.ok && text(r.data)).toBe(
        Array.from({ length: 200 }, (_, i) => String.fromCharCode(65 + (i % 26))).join(''),
      );
      expect(a.commits.operations - before.operations).toBe(201);
      expect(a.commits.transactions - before.transactions).toBeLessThan(10);
    } finally {
      await a.shutdown();
      t.cleanup();
    }
  });

  it('group commit: when the store cannot commit, every operation of the group fails as unavailable and none is applied', async () => {
    const t = tempDir();
    const path = join(t.dir, 's.sqlite');
    const a = new SqliteStore(path, { busyTimeoutMs: 20 });
    try {
      await a.open({ target: T, requestId: X, principal: P, mode: 'write', session: 's1', leaseMs: 100 });
      const blocker = new Database(path);
      blocker.exec('BEGIN IMMEDIATE');
      const writes = [1, 2, 3].map((seq) =>
        a.write({ target: T, requestId: X, session: 's1', seq, offset: 0, data: bytes('x') }),
      );
      for (const w of writes) await expect(w).rejects.toMatchObject({ name: 'StoreUnavailableError' });
      blocker.exec('ROLLBACK');
      blocker.close();
      expect(
        await a.write({ target: T, requestId: X, session: 's1', seq: 1, offset: 0, data: bytes('y') }),
      ).toMatchObject({ ok: true, applied: true, version: 1 });
    } finally {
      await a.shutdown();
      t.cleanup();
    }
  });

  it('afterCommit with group commit: callbacks run after the commit, in operation order, before the promises settle; a throwing operation drops its own', async () => {
    const t = tempDir();
    const path = join(t.dir, 's.sqlite');
    const a = new SqliteStore(path);
    // Another process on the same file: it can take the write lock only once `a` has committed.
    const other = new SqliteStore(path);
    try {
      await a.open({ target: T, requestId: X, principal: P, mode: 'write', session: 's1', leaseMs: 100 });
      const log: string[] = [];
      const seen = () => {
        const r = other.sync.read({ target: T, offset: 0, length: 10 });
        return r.ok ? `${text(r.data)}@${r.version}` : r.code;
      };
      const before = a.commits.transactions;
      const w = (seq: number, s: string) =>
        a.sync.write({ target: T, requestId: X, session: 's1', seq, offset: seq - 1, data: bytes(s) });
      const ops = [
        a.commit(() => {
          const r = w(1, 'a');
          a.afterCommit(() => log.push(`cb1 sees ${seen()}`));
          return r;
        }),
        a.commit(() => {
          w(2, 'z');
          a.afterCommit(() => log.push('cb of the failed operation'));
          throw new Error('rule failed');
        }),
        a.commit(() => {
          const r = w(2, 'b');
          a.afterCommit(() => log.push(`cb3 sees ${seen()}`));
          a.afterCommit(() => log.push('cb3 again'));
          return r;
        }),
      ];
      ops.forEach(
        (p, i) =>
          void p.then(
            () => log.push(`settled ${i + 1}`),
            () => log.push(`settled ${i + 1}`),
          ),
      );
      expect(log).toEqual([]);
      const [r1, r2, r3] = await Promise.allSettled(ops);
      expect(r1).toMatchObject({ status: 'fulfilled', value: { ok: true, version: 1 } });
      expect(r2).toMatchObject({ status: 'rejected', reason: { message: 'rule failed' } });
      expect(r3).toMatchObject({ status: 'fulfilled', value: { ok: true, version: 2 } });
      expect(a.commits.transactions - before).toBe(1);
      expect(log).toEqual(['cb1 sees ab@2', 'cb3 sees ab@2', 'cb3 again', 'settled 1', 'settled 2', 'settled 3']);
      // Outside any transaction a callback runs at once.
      a.afterCommit(() => log.push('now'));
      expect(log.at(-1)).toBe('now');
    } finally {
      await a.shutdown();
      await other.shutdown();
      t.cleanup();
    }
  });

  it('moves a database written before targets were paged to pages, keeping every byte and version', async () => {
    const t = tempDir();
    const path = join(t.dir, 's.sqlite');
    const old = new Database(path);
    old.exec('CREATE TABLE targets (target TEXT PRIMARY KEY, data BLOB NOT NULL, version INTEGER NOT NULL) STRICT');
    const blob = Buffer.alloc(10_000, 0x61);
    blob.write('end', 9997);
    old.prepare('INSERT INTO targets VALUES (?, ?, ?)').run(T, blob, 7);
    old.close();
    const a = new SqliteStore(path);
    try {
      const r = await a.read({ target: T, offset: 9990, length: 100 });
      expect(r.ok && text(r.data)).toBe('aaaaaaaend');
      expect(r.ok && r.version).toBe(7);
      expect(a.targets()).toEqual([{ target: T, data: new Uint8Array(blob) }]);
    } finally {
      await a.shutdown();
      t.cleanup();
    }
  });

  it("a file written before targets had owners gets the owner columns; its targets belong to their lock record's principal, or default", async () => {
    const t = tempDir();
    const path = join(t.dir, 's.sqlite');
    const a = new SqliteStore(path);
    await a.open({ target: T, requestId: X, principal: P, mode: 'write', session: 's1', leaseMs: 100 });
    await a.write({ target: T, requestId: X, session: 's1', seq: 1, offset: 0, data: bytes('held') });
    await a.open({
      target: 'sized.disk',
      requestId: Y,
      principal: P,
      mode: 'write',
      session: 's1',
      leaseMs: 100,
      size: 4096,
    });
    await a.close({ target: 'sized.disk', requestId: Y }, 's1');
    await a.shutdown();
    // As an earlier version left the file: no owner columns, and no tombstone naming a principal.
    const old = new Database(path);
    old.exec(
      "ALTER TABLE target_versions DROP COLUMN owner; ALTER TABLE target_versions DROP COLUMN grants; UPDATE tombstones SET list = '[]'",
    );
    old.close();
    const b = new SqliteStore(path);
    try {
      expect(await b.access(T)).toEqual({ owner: P, grants: [] });
      expect(await b.access('sized.disk')).toEqual({ owner: 'default', grants: [] });
      expect(
        await b.open({
          target: 'sized.disk',
          requestId: 'Z'.repeat(21),
          principal: P,
          mode: 'read',
          session: 's2',
          leaseMs: 100,
        }),
      ).toMatchObject({ ok: false, code: 'FORBIDDEN' });
      expect(await b.editAccess({ target: 'sized.disk', by: undefined, principal: P, mode: 'write' })).toMatchObject({
        ok: true,
        access: { owner: 'default', grants: [{ principal: P, mode: 'write' }] },
      });
      expect(
        await b.open({
          target: 'sized.disk',
          requestId: 'Z'.repeat(21),
          principal: P,
          mode: 'read',
          session: 's2',
          leaseMs: 100,
        }),
      ).toMatchObject({ ok: true, size: 4096 });
      expect(b.targets().map((x) => x.target)).toEqual(['sized.disk', T]);
    } finally {
      await b.shutdown();
      t.cleanup();
    }
  });

  it('a file written before pages kept their versions: a resume from before it is told the whole target may have changed, one from after exactly what did', async () => {
    const t = tempDir();
    const path = join(t.dir, 's.sqlite');
    const a = new SqliteStore(path);
    const w = (s: SqliteStore, seq: number, offset: number) =>
      s.write({ target: T, requestId: X, session: 's1', seq, offset, data: bytes('held') });
    const resumeAt = async (s: SqliteStore, version: number) =>
      (
        await s.resume([
          { target: T, requestId: 'R'.repeat(21), principal: P, mode: 'read', session: 's2', leaseMs: 100, version },
        ])
      )[0];
    await a.open({ target: T, requestId: X, principal: P, mode: 'write', session: 's1', leaseMs: 100 });
    await w(a, 1, 0);
    await w(a, 2, 2 * 4096);
    await a.shutdown();
    // As an earlier version left the file: pages without versions, no freed pages, no changes_from.
    const old = new Database(path);
    old.exec(`DROP INDEX pages_by_version; ALTER TABLE pages DROP COLUMN version; DROP TABLE freed_pages;
      ALTER TABLE target_versions DROP COLUMN changes_from`);
    old.close();
    const b = new SqliteStore(path);
    try {
      expect(await w(b, 3, 5 * 4096)).toMatchObject({ ok: true, version: 3 });
      expect(await resumeAt(b, 1)).toMatchObject({ granted: false, changed: [[0, 5 * 4096 + 4]], coarse: true });
      const after = await resumeAt(b, 2);
      expect(after).toMatchObject({ granted: false, changed: [[5 * 4096, 4096]] });
      expect(after).not.toHaveProperty('coarse');
    } finally {
      await b.shutdown();
      t.cleanup();
    }
  });

  it('reports a closed database as unavailable, not as a crash', async () => {
    const t = tempDir();
    const a = new SqliteStore(join(t.dir, 's.sqlite'));
    await a.shutdown();
    await expect(a.ping()).rejects.toMatchObject({ name: 'StoreUnavailableError' });
    await expect(a.read({ target: T, offset: 0, length: 1 })).rejects.toMatchObject({ name: 'StoreUnavailableError' });
    t.cleanup();
  });
});

describe('etcd on three members', () => {
  beforeAll(sharedEtcd, 40_000);
  const cluster = () => etcd!;
  let n = 0;
  const prefix = () => `/etcd-${process.pid}-${++n}/`;
  const rid = (c: string) => c.repeat(21);
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  /** Until `check` holds, polling (etcd lets a lease lapse within about a second of its TTL). */
  const eventually = async (check: () => Promise<boolean>, ms: number) => {
    const deadline = Date.now() + ms;
    while (!(await check())) {
      if (Date.now() > deadline) return false;
      await sleep(100);
    }
    return true;
  };

  it('the leader killed mid-sequence: the store comes back under a new leader with every acknowledged write, and so it does after every member reboots', async () => {
    // The contract suite above ran with its leader killed halfway.
    expect(killedLeader).toMatch(/^etcd-\d$/);
    const s = new EtcdStore(cluster().endpoints, { prefix: prefix(), timeoutMs: 2000 });
    const r1 = rid('L');
    try {
      expect(
        await s.open({
          target: 'l.disk',
          requestId: r1,
          principal: 'p',
          mode: 'write',
          session: 's1',
          leaseMs: 600_000,
        }),
      ).toMatchObject({ ok: true });
      const w = (seq: number) =>
        s.write({
          target: 'l.disk',
          requestId: r1,
          session: 's1',
          seq,
          offset: (seq - 1) * 2,
          data: bytes(`${seq}`.padStart(2, '0')),
        });
      // While etcd elects or reboots, an operation may fail as unavailable; a replica then dismounts
      // and its node agent sends the write again, which the seq makes safe: do the same here.
      const retry = async <T>(op: () => Promise<T>): Promise<T> => {
        const deadline = Date.now() + 30_000;
        for (;;) {
          try {
            return await op();
          } catch (err) {
            if ((err as Error).name !== 'StoreUnavailableError' || Date.now() > deadline) throw err;
            await sleep(200);
          }
        }
      };
      const retried = (seq: number) => retry(() => w(seq));
      for (let seq = 1; seq <= 5; seq++) expect(await w(seq)).toMatchObject({ ok: true, applied: true });
      const leader = await cluster().members.leader();
      expect(leader).toBeDefined();
      cluster().members.kill(leader!.id);
      await untilAvailable(s);
      const newLeader = await cluster().members.leader();
      expect(newLeader?.id).not.toBe(leader!.id);
      // Acknowledged (applied now, or already by an attempt whose answer was lost).
      for (let seq = 6; seq <= 10; seq++) expect(await retried(seq)).toMatchObject({ ok: true });
      await cluster().members.restart(leader!.id);
      // Every member rebooted at once (a power cut of the whole store).
      for (const m of cluster().members.members) cluster().members.kill(m.id);
      for (const m of cluster().members.members) await cluster().members.restart(m.id);
      await untilAvailable(s);
      // A replay of an acknowledged seq is still acknowledged without being applied twice.
      expect(await retried(10)).toMatchObject({ ok: true, applied: false, version: 10 });
      const r = await retry(() => s.read({ target: 'l.disk', offset: 0, length: 20 }));
      expect(r.ok && text(r.data)).toBe('01020304050607080910');
    } finally {
      await s.shutdown();
    }
  }, 90_000);

  it('two stores (two replica hosts) racing to open one target: exactly one writer is granted, by revision-guarded transactions', async () => {
    const p = prefix();
    const a = new EtcdStore(cluster().endpoints, { prefix: p });
    const b = new EtcdStore(cluster().endpoints, { prefix: p });
    try {
      const rid = (i: number) => `R${String(i).padStart(20, '0')}`;
      const results = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          (i % 2 ? a : b).open({
            target: 'race.disk',
            requestId: rid(i),
            principal: 'p',
            mode: 'write',
            session: `s${i}`,
            leaseMs: 60_000,
          }),
        ),
      );
      expect(results.filter((r) => r.ok)).toHaveLength(1);
      expect(results.filter((r) => !r.ok && r.code === 'LOCKED')).toHaveLength(19);
      const winner = results.findIndex((r) => r.ok);
      expect((await a.record('race.disk'))?.requestId).toBe(rid(winner));
      // Writes of the winner through both stores, in parallel: each seq applied once, in order.
      const w = (seq: number) =>
        (seq % 2 ? a : b).write({
          target: 'race.disk',
          requestId: rid(winner),
          session: `s${winner}`,
          seq,
          offset: (seq - 1) * 2,
          data: bytes(`${seq}`.padStart(2, '0')),
        });
      for (let seq = 1; seq <= 10; seq++) expect(await w(seq)).toMatchObject({ ok: true, applied: true, version: seq });
      expect(await Promise.all([w(3), w(7)])).toEqual([
        { ok: true, applied: false, version: 10 },
        { ok: true, applied: false, version: 10 },
      ]);
      const r = await b.read({ target: 'race.disk', offset: 0, length: 20 });
      expect(r.ok && text(r.data)).toBe('01020304050607080910');
    } finally {
      await a.shutdown();
      await b.shutdown();
    }
  });

  it("a replica whose clock runs an hour ahead cannot expire a live lock: etcd's lease judges it, not the replica's clock", async () => {
    const hour = 3_600_000;
    const target = 'skew.disk';
    const open = (s: EtcdStore, r: string, session: string) =>
      s.open({ target, requestId: r, principal: 'p', mode: 'write', session, leaseMs: 2000 });
    // Judged on each replica's clock (as SQLite is on its host's), the fast replica takes a live lock.
    {
      const p = prefix();
      const a = new EtcdStore(cluster().endpoints, { prefix: p, expiry: 'clock' });
      const fast = new EtcdStore(cluster().endpoints, { prefix: p, expiry: 'clock', now: () => Date.now() + hour });
      try {
        expect(await open(a, rid('A'), 'sa')).toMatchObject({ ok: true });
        expect(await open(fast, rid('B'), 'sb')).toMatchObject({ ok: true });
      } finally {
        await a.shutdown();
        await fast.shutdown();
      }
    }
    // On leases, it is refused while the holder renews, and granted once the holder stops.
    const p = prefix();
    const a = new EtcdStore(cluster().endpoints, { prefix: p });
    const fast = new EtcdStore(cluster().endpoints, { prefix: p, now: () => Date.now() + hour });
    try {
      expect(await open(a, rid('A'), 'sa')).toMatchObject({ ok: true });
      expect(
        await a.write({ target, requestId: rid('A'), session: 'sa', seq: 1, offset: 0, data: bytes('a1') }),
      ).toMatchObject({ ok: true, applied: true });
      for (let i = 0; i < 6; i++) {
        expect(await open(fast, rid('B'), 'sb')).toMatchObject({ ok: false, code: 'LOCKED' });
        expect(await a.renew('sa', [{ target, requestId: rid('A') }], 2000)).toEqual({ lost: [] });
        await sleep(500);
      }
      // The holder's replica stops renewing (it crashed): etcd lets the lease lapse (its TTL at least 7 s, for the 5 s call timeout), and only then is B granted.
      expect(await eventually(async () => (await open(fast, rid('B'), 'sb')).ok, 15_000)).toBe(true);
      // The holder learns it lost the target, and what it had applied.
      expect(
        await a.resume([{ target, requestId: rid('A'), principal: 'p', mode: 'write', session: 'sa2', leaseMs: 2000 }]),
      ).toEqual([{ granted: false, reason: 'MODIFIED', code: 'MODIFIED', version: 1, lastSeq: 1 }]);
    } finally {
      await a.shutdown();
      await fast.shutdown();
    }
  }, 40_000);

  it('a renewal of many locks is one keep-alive and writes nothing; a lapsed lease is put back while the records still name the session', async () => {
    const p = prefix();
    const a = new EtcdStore(cluster().endpoints, { prefix: p });
    const b = new EtcdStore(cluster().endpoints, { prefix: p });
    try {
      const refs = Array.from({ length: 50 }, (_, i) => ({
        target: `many-${i}.disk`,
        requestId: `M${String(i).padStart(20, '0')}`,
      }));
      const opened = await Promise.all(
        refs.map((r) => a.open({ ...r, principal: 'p', mode: 'write', session: 'sa', leaseMs: 2000 })),
      );
      expect(opened.every((o) => o.ok)).toBe(true);
      expect(a.stats.grants).toBe(1);
      const before = { ...a.stats };
      expect(await a.renew('sa', refs, 2000)).toEqual({ lost: [] });
      expect(a.stats.keepAlives - before.keepAlives).toBe(1);
      expect(a.stats.commits - before.commits).toBe(0);
      // The replica was cut off from etcd for longer than the lease: the locks lapsed...
      expect(await eventually(async () => !(await a.locked(refs[0]!.target)), 15_000)).toBe(true);
      // ...nobody took them meanwhile, so its next renewal puts them back on a new lease, and they hold again.
      expect(await a.renew('sa', refs, 2000)).toEqual({ lost: [] });
      expect(a.stats.grants).toBe(2);
      expect(await a.locked(refs[49]!.target)).toBe(true);
      expect(
        await b.open({
          target: refs[0]!.target,
          requestId: rid('Y'),
          principal: 'p',
          mode: 'write',
          session: 'sb',
          leaseMs: 2000,
        }),
      ).toMatchObject({ ok: false, code: 'LOCKED' });
    } finally {
      await a.shutdown();
      await b.shutdown();
    }
  }, 40_000);
});

describe('etcd group commit and failures', () => {
  beforeAll(sharedEtcd, 40_000);

  it('writes of one turn on many targets go in a few transactions, each applied once; other replicas changing targets meanwhile only cost retries', async () => {
    const p = `/group-${process.pid}/`;
    const a = new EtcdStore(etcd!.endpoints, { prefix: p });
    const b = new EtcdStore(etcd!.endpoints, { prefix: p });
    try {
      const refs = Array.from({ length: 64 }, (_, i) => ({
        target: `g-${i}.disk`,
        requestId: `G${String(i).padStart(20, '0')}`,
      }));
      expect(
        (
          await Promise.all(
            refs.map((r) => a.open({ ...r, principal: 'p', mode: 'write', session: 'sa', leaseMs: 60_000 })),
          )
        ).every((o) => o.ok),
      ).toBe(true);
      const page = (i: number, seq: number) => new Uint8Array(4096).fill(65 + ((i + seq) % 26));
      const before = a.stats.commits;
      const first = await Promise.all(
        refs.map((r, i) => a.write({ ...r, session: 'sa', seq: 1, offset: 0, data: page(i, 1) })),
      );
      expect(first.every((w) => w.ok && w.applied)).toBe(true);
      expect(a.stats.commits - before).toBeLessThanOrEqual(8);
      // The same writes and the next ones together, while b opens the targets for reading and writes nothing:
      // replays are acknowledged without being applied again, the next seq applies once.
      const mixed = await Promise.all([
        ...refs.map((r, i) => a.write({ ...r, session: 'sa', seq: 1, offset: 0, data: page(i, 1) })),
        ...refs.map((r, i) => a.write({ ...r, session: 'sa', seq: 2, offset: 4096, data: page(i, 2) })),
        ...refs.map((r) =>
          b.open({ ...r, requestId: 'H'.repeat(21), principal: 'p', mode: 'write', session: 'sb', leaseMs: 1000 }),
        ),
      ]);
      expect(mixed.slice(0, 64)).toEqual(refs.map(() => ({ ok: true, applied: false, version: 1 })));
      expect(mixed.slice(64, 128)).toEqual(refs.map(() => ({ ok: true, applied: true, version: 2 })));
      expect(mixed.slice(128).every((o) => 'ok' in o && !o.ok && o.code === 'LOCKED')).toBe(true);
      for (const [i, r] of refs.entries()) {
        const got = await b.read({ target: r.target, offset: 0, length: 8192 });
        expect(got.ok && Buffer.from(got.data).equals(Buffer.concat([page(i, 1), page(i, 2)]))).toBe(true);
      }
    } finally {
      await a.shutdown();
      await b.shutdown();
    }
  });

  it('1,000 resumes through another replica go in a few transactions, each decided on its own target', async () => {
    const p = `/storm-${process.pid}/`;
    const a = new EtcdStore(etcd!.endpoints, { prefix: p });
    const b = new EtcdStore(etcd!.endpoints, { prefix: p });
    try {
      const refs = Array.from({ length: 1000 }, (_, i) => ({
        target: `st-${i}.disk`,
        requestId: `S${String(i).padStart(20, '0')}`,
      }));
      const opened = await Promise.all(
        refs.map((r) => a.open({ ...r, principal: 'p', mode: 'write', session: 'sa', leaseMs: 60_000 })),
      );
      expect(opened.every((o) => o.ok)).toBe(true);
      // a closed the last one: its resume is refused, every other granted.
      expect(await a.close(refs[999]!, 'sa')).toBe(true);
      const before = b.stats.commits;
      const out = await b.resume(
        refs.map((r) => ({ ...r, principal: 'p', mode: 'write', session: 'sb', leaseMs: 60_000 })),
      );
      expect(out.slice(0, 999).every((o) => o.granted)).toBe(true);
      expect(out[999]).toMatchObject({ granted: false });
      expect(b.stats.commits - before).toBeLessThanOrEqual(6);
      for (const i of [0, 479, 480, 998]) expect(await a.record(refs[i]!.target)).toMatchObject({ session: 'sb' });
      // The locks moved to b's session: a write through a's session is refused.
      expect(await a.write({ ...refs[0]!, session: 'sa', seq: 1, offset: 0, data: bytes('late') })).toMatchObject({
        ok: false,
      });
      // a takes one target back; b resumes them all again on what it committed: the group holding that
      // target fails its compares and is decided again on what a wrote, the other groups commit as they are.
      const [moved] = await a.resume([
        { ...refs[500]!, principal: 'p', mode: 'write', session: 'sa2', leaseMs: 60_000 },
      ]);
      expect(moved).toMatchObject({ granted: true });
      const conflicts = b.stats.conflicts;
      const again = await b.resume(
        refs.slice(0, 999).map((r) => ({ ...r, principal: 'p', mode: 'write', session: 'sb2', leaseMs: 60_000 })),
      );
      expect(again.every((o) => o.granted)).toBe(true);
      expect(b.stats.conflicts - conflicts).toBe(1);
      for (const i of [0, 500, 998]) expect(await a.record(refs[i]!.target)).toMatchObject({ session: 'sb2' });
    } finally {
      await a.shutdown();
      await b.shutdown();
    }
  });

  it('a commit of many groups of targets whose answer was lost acknowledges each write as applied, once', async () => {
    const s = new EtcdStore(etcd!.endpoints, { prefix: `/lost-many-${process.pid}/` });
    try {
      // More targets than the batches in flight take one group each: one commit of nested groups.
      const refs = Array.from({ length: 200 }, (_, i) => ({
        target: `lm-${i}.disk`,
        requestId: `L${String(i).padStart(20, '0')}`,
      }));
      const opened = await Promise.all(
        refs.map((r) => s.open({ ...r, principal: 'p', mode: 'write', session: 's', leaseMs: 60_000 })),
      );
      expect(opened.every((o) => o.ok)).toBe(true);
      // The next guarded commit reaches etcd, but its answer is lost (a member died after applying it).
      type Req = { compare?: unknown[]; success?: Array<{ request_txn?: Req }> };
      const guarded = (req: Req): boolean =>
        (req.compare?.length ?? 0) > 0 || (req.success ?? []).some((op) => op.request_txn && guarded(op.request_txn));
      const kv = (s as unknown as { client: { kv: { txn: (req: Req) => Promise<unknown> } } }).client.kv;
      const real = kv.txn.bind(kv);
      let lost = 0;
      kv.txn = async (req) => {
        const res = await real(req);
        if (guarded(req) && lost++ === 0) throw new Error('14 UNAVAILABLE: Connection dropped');
        return res;
      };
      const out = await Promise.all(
        refs.map((r) => s.write({ ...r, session: 's', seq: 1, offset: 0, data: bytes('once') })),
      );
      expect(out).toEqual(refs.map(() => ({ ok: true, applied: true, version: 1 })));
      expect(lost).toBeGreaterThan(1);
      for (const r of [refs[0]!, refs[199]!])
        expect(await s.read({ target: r.target, offset: 0, length: 10 })).toMatchObject({ ok: true, version: 1 });
    } finally {
      await s.shutdown();
    }
  });

  it('a replica decides on what it last committed without reading, but never answers from it once another replica changed the target', async () => {
    const p = `/stale-${process.pid}/`;
    let t = 0;
    const a = new EtcdStore(etcd!.endpoints, { prefix: p, expiry: 'clock', now: () => t });
    const b = new EtcdStore(etcd!.endpoints, { prefix: p, expiry: 'clock', now: () => t });
    try {
      const [x, y] = ['X'.repeat(21), 'Y'.repeat(21)];
      expect(
        await a.open({ target: 's.disk', requestId: x, principal: 'p', mode: 'write', session: 'sa', leaseMs: 1000 }),
      ).toMatchObject({ ok: true });
      const reads = a.stats.reads;
      const page = new Uint8Array(4096).fill(120);
      // Whole 4 KiB pages (a partial page is read first, to merge).
      for (let seq = 1; seq <= 3; seq++)
        expect(
          await a.write({ target: 's.disk', requestId: x, session: 'sa', seq, offset: seq * 4096, data: page }),
        ).toMatchObject({ ok: true, applied: true });
      expect(a.stats.reads).toBe(reads);
      // Another replica takes the target once the lock lapsed; a's remembered record is stale now.
      t = 5000;
      expect(
        await b.open({ target: 's.disk', requestId: y, principal: 'p', mode: 'write', session: 'sb', leaseMs: 1000 }),
      ).toMatchObject({ ok: true });
      // A replay a remembers as applied, and the next write: both answered from etcd as it is.
      expect(
        await a.write({ target: 's.disk', requestId: x, session: 'sa', seq: 3, offset: 3 * 4096, data: page }),
      ).toMatchObject({ ok: false, code: 'MODIFIED', lastSeq: 3 });
      expect(
        await a.write({ target: 's.disk', requestId: x, session: 'sa', seq: 4, offset: 4 * 4096, data: page }),
      ).toMatchObject({ ok: false, code: 'MODIFIED', lastSeq: 3 });
      expect(await a.record('s.disk')).toMatchObject({ requestId: y });
    } finally {
      await a.shutdown();
      await b.shutdown();
    }
  });

  it('a write of 1 MiB (256 pages, more than etcd allows operations in one transaction) lands whole', async () => {
    const s = new EtcdStore(etcd!.endpoints, { prefix: `/big-${process.pid}/` });
    try {
      const r = 'B'.repeat(21);
      expect(
        await s.open({
          target: 'big.disk',
          requestId: r,
          principal: 'p',
          mode: 'write',
          session: 's',
          leaseMs: 60_000,
        }),
      ).toMatchObject({ ok: true });
      const data = new Uint8Array(1024 * 1024).map((_, i) => (i * 7) % 251);
      const small = s.write({ target: 'other.disk', requestId: r, session: 's', seq: 1, offset: 0, data: bytes('x') });
      expect(await s.write({ target: 'big.disk', requestId: r, session: 's', seq: 1, offset: 100, data })).toEqual({
        ok: true,
        applied: true,
        version: 1,
      });
      expect(await small).toMatchObject({ ok: false, code: 'MODIFIED' });
      const back = await s.read({ target: 'big.disk', offset: 0, length: 2 * 1024 * 1024 });
      expect(back.ok && back.data.length).toBe(100 + data.length);
      expect(back.ok && Buffer.from(back.data.subarray(100)).equals(Buffer.from(data))).toBe(true);
    } finally {
      await s.shutdown();
    }
  });

  it('with a decision log kept (chaos mode), renewals still keep the session lease alive: a renewed lock never lapses', async () => {
    const p = `/logged-lease-${process.pid}/`;
    const a = new EtcdStore(etcd!.endpoints, { prefix: p, log: historyLog('replica-a') });
    const b = new EtcdStore(etcd!.endpoints, { prefix: p });
    try {
      const ref = { target: 'kept.disk', requestId: 'K'.repeat(21) };
      expect(await a.open({ ...ref, principal: 'p', mode: 'write', session: 'sa', leaseMs: 2000 })).toMatchObject({
        ok: true,
      });
      // Renewed every 600 ms, the lock is looked at just before each renewal, for 6 s (three TTLs).
      for (let i = 0; i < 10; i++) {
        await new Promise((r) => setTimeout(r, 600));
        expect(
          await b.open({
            target: ref.target,
            requestId: 'J'.repeat(21),
            principal: 'p',
            mode: 'write',
            session: 'sb',
            leaseMs: 2000,
          }),
        ).toMatchObject({ ok: false, code: 'LOCKED' });
        expect(await a.renew('sa', [ref], 2000)).toEqual({ lost: [] });
      }
    } finally {
      await a.shutdown();
      await b.shutdown();
    }
  }, 30_000);

  it('an instance superseded while the record came and went through another replica learns SUPERSEDED, not MODIFIED (tombstones are guarded too)', async () => {
    const p = `/tombs-${process.pid}/`;
    const a = new EtcdStore(etcd!.endpoints, { prefix: p, expiry: 'clock', now: () => 0 });
    const b = new EtcdStore(etcd!.endpoints, { prefix: p, expiry: 'clock', now: () => 0 });
    try {
      const y = 'Y'.repeat(21);
      const T2 = 'come-and-go.disk';
      // a has decided on T2 while it had no record (a resume of an unknown requestId, denied).
      expect(
        await a.resume([
          { target: T2, requestId: 'Z'.repeat(21), principal: 'p', mode: 'write', session: 'sz', leaseMs: 1000 },
        ]),
      ).toMatchObject([{ granted: false, reason: 'MODIFIED' }]);
      // Through b: instance i1 opens, instance i2 of the same requestId takes over, then closes.
      expect(
        await b.open({
          target: T2,
          requestId: y,
          principal: 'p',
          mode: 'write',
          session: 's1',
          leaseMs: 1000,
          instance: 'i1',
        }),
      ).toMatchObject({ ok: true });
      expect(
        await b.resume([
          {
            target: T2,
            requestId: y,
            principal: 'p',
            mode: 'write',
            session: 's2',
            leaseMs: 1000,
            instance: 'i2',
            takeover: true,
          },
        ]),
      ).toMatchObject([{ granted: true }]);
      expect(await b.close({ target: T2, requestId: y }, 's2')).toBe(true);
      // i1 comes back through a: the tombstone says another instance superseded it.
      expect(
        await a.resume([
          { target: T2, requestId: y, principal: 'p', mode: 'write', session: 's3', leaseMs: 1000, instance: 'i1' },
        ]),
      ).toMatchObject([{ granted: false, reason: 'SUPERSEDED' }]);
    } finally {
      await a.shutdown();
      await b.shutdown();
    }
  });

  it('a commit that landed although its answer was lost is acknowledged as applied, once', async () => {
    const s = new EtcdStore(etcd!.endpoints, { prefix: `/lost-answer-${process.pid}/` });
    try {
      const r = 'A'.repeat(21);
      expect(
        await s.open({ target: 'la.disk', requestId: r, principal: 'p', mode: 'write', session: 's', leaseMs: 60_000 }),
      ).toMatchObject({ ok: true });
      // The next guarded commit reaches etcd, but its answer is lost (a member died after applying it).
      const kv = (s as unknown as { client: { kv: { txn: (req: { compare?: unknown[] }) => Promise<unknown> } } })
        .client.kv;
      const real = kv.txn.bind(kv);
      let lost = 0;
      kv.txn = async (req) => {
        const res = await real(req);
        if ((req.compare?.length ?? 0) > 0 && lost++ === 0) throw new Error('14 UNAVAILABLE: Connection dropped');
        return res;
      };
      expect(
        await s.write({ target: 'la.disk', requestId: r, session: 's', seq: 1, offset: 0, data: bytes('once') }),
      ).toEqual({ ok: true, applied: true, version: 1 });
      expect(lost).toBeGreaterThan(1);
      const back = await s.read({ target: 'la.disk', offset: 0, length: 10 });
      expect(back).toMatchObject({ ok: true, version: 1 });
    } finally {
      await s.shutdown();
    }
  });

  it("the decision log (the checker's history) is in etcd's commit order, across replicas and batches", async () => {
    const p = `/log-${process.pid}/`;
    const a = new EtcdStore(etcd!.endpoints, { prefix: p, log: historyLog('replica-a') });
    const b = new EtcdStore(etcd!.endpoints, { prefix: p, log: historyLog('replica-b') });
    try {
      const r = 'W'.repeat(21);
      expect(
        await a.open({
          target: 'log.disk',
          requestId: r,
          principal: 'p',
          mode: 'write',
          session: 's',
          leaseMs: 60_000,
        }),
      ).toMatchObject({ ok: true });
      // 40 writes sent through both replicas at once, each seq until it lands: they apply in seq order.
      const w = async (seq: number) => {
        for (;;) {
          const res = await (seq % 2 ? a : b).write({
            target: 'log.disk',
            requestId: r,
            session: 's',
            seq,
            offset: seq - 1,
            data: bytes(String.fromCharCode(64 + (seq % 26))),
          });
          if (res.ok) return res;
          await new Promise((done) => setTimeout(done, 5));
        }
      };
      await Promise.all(Array.from({ length: 40 }, (_, i) => w(i + 1)));
      await b.read({ target: 'log.disk', offset: 0, length: 40 });
      const events = (await a.readLog()).map((l) => JSON.parse(l) as HistoryEvent);
      expect(events[0]).toMatchObject({ kind: 'grant', replica: 'replica-a', via: 'open', fresh: true });
      const applied = events.filter((e) => e.kind === 'applied');
      expect(applied.map((e) => e.version)).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
      expect(new Set(applied.map((e) => e.replica))).toEqual(new Set(['replica-a', 'replica-b']));
      const refused = events.filter((e) => e.kind === 'refused');
      expect(refused.every((e) => e.code === 'SEQ_GAP')).toBe(true);
      expect(events.at(-1)).toMatchObject({ kind: 'read', replica: 'replica-b', version: 40 });
    } finally {
      await a.shutdown();
      await b.shutdown();
    }
  });

  it('an etcd that does not answer makes the store unavailable (the replica dismounts), not a crash', async () => {
    const lone = await startEtcd(1);
    const s = new EtcdStore(lone.endpoints, { prefix: '/down/', timeoutMs: 1500 });
    try {
      await s.ping();
      await lone.stop();
      await expect(s.ping()).rejects.toMatchObject({ name: 'StoreUnavailableError' });
      await expect(
        s.open({ target: 't', requestId: 'R'.repeat(21), principal: 'p', mode: 'write', session: 's', leaseMs: 1000 }),
      ).rejects.toMatchObject({ name: 'StoreUnavailableError' });
    } finally {
      await s.shutdown();
    }
  }, 30_000);
});

describe('etcd: a lock never hangs on a lease about to lapse', () => {
  beforeAll(sharedEtcd, 40_000);
  const rid = (c: string) => c.repeat(21);
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  it("a write open granted near the end of its session's idle lease keeps its lock past that lease's TTL, and the renewals keep it", async () => {
    const p = `/lease-race-${process.pid}/`;
    // Locks of 3 s: the session's lease has a TTL of 3 s, with or without a minimum for the 1 s call timeout.
    const leaseMs = 3000;
    const s = new EtcdStore(etcd!.endpoints, { prefix: p, timeoutMs: 1000 });
    const other = new EtcdStore(etcd!.endpoints, { prefix: p, timeoutMs: 1000 });
    // Leases of the test's own, granted right after S's with the same TTL: once etcd revoked one (TTL -1),
    // S's lease lapsed too, unless something kept it alive.
    const client = new Etcd3({ hosts: etcd!.endpoints.map((e) => `http://${e}`) });
    const control = async () => String((await client.leaseClient.leaseGrant({ TTL: 3, ID: 0 })).ID);
    const lapsed = async (id: string) => {
      const deadline = Date.now() + 6000;
      while (Number((await client.leaseClient.leaseTimeToLive({ ID: id, keys: false })).TTL) >= 0) {
        if (Date.now() > deadline) return false;
        await sleep(50);
      }
      return true;
    };
    const open = (st: EtcdStore, target: string, requestId: string, session: string) =>
      st.open({ target, requestId, principal: 'p', mode: 'write', session, leaseMs });
    try {
      expect(await open(other, 'a.disk', rid('H'), 'sh')).toMatchObject({ ok: true });
      // S's first write open is refused: its session's lease is granted all the same, and nothing keeps it alive.
      expect(await open(s, 'a.disk', rid('S'), 'ss')).toMatchObject({ ok: false, code: 'LOCKED' });
      const t0 = Date.now();
      const first = await control();
      // Near the end of that lease's TTL, S is granted a write open of B.
      await sleep(2600 - (Date.now() - t0));
      expect(await open(s, 'b.disk', rid('T'), 'ss')).toMatchObject({ ok: true });
      const second = await control();
      // The old lease's TTL passes, well within S's first renewal interval after the grant: B is still S's.
      expect(await lapsed(first)).toBe(true);
      expect(await open(other, 'b.disk', rid('K'), 'sk')).toMatchObject({ ok: false, code: 'LOCKED' });
      expect(await s.locked('b.disk')).toBe(true);
      // S renews once a second, as a replica does; past what the grant alone gave, the lock holds.
      const renewing = (async () => {
        for (;;) {
          expect(await s.renew('ss', [{ target: 'b.disk', requestId: rid('T') }], leaseMs)).toEqual({ lost: [] });
          if (Number((await client.leaseClient.leaseTimeToLive({ ID: second, keys: false })).TTL) < 0) return;
          await sleep(1000);
        }
      })();
      expect(await lapsed(second)).toBe(true);
      await renewing;
      expect(await s.locked('b.disk')).toBe(true);
      expect(await open(other, 'b.disk', rid('K'), 'sk')).toMatchObject({ ok: false, code: 'LOCKED' });
    } finally {
      client.close();
      await s.shutdown();
      await other.shutdown();
    }
  }, 30_000);
});
