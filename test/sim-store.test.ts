/**
 * The simulation's model of the SQLite store: group commit on the simulated clock, transactions
 * that roll back exactly, a process crash that loses what was not committed, injected faults, and
 * callbacks that run only once their operation is durable.
 */
import { describe, expect, it } from 'vitest';
import { quiesce, SimClock } from '../sim/clock.js';
import { SimStore, type SimStoreOptions } from '../sim/store.js';
import { StoreBusyError } from '../store/base.js';
import type { MemoryState } from '../store/memory.js';
import type { Tx } from '../store/rules.js';
import { StoreUnavailableError, type WriteRequest } from '../store/types.js';
import { bytes, text } from './helpers.js';

const X = 'X'.repeat(21);
const Y = 'Y'.repeat(21);
const T = 'vm1.disk';
const P = 'alice';

const emptyState = (): MemoryState => ({ records: new Map(), tombstones: new Map(), targets: new Map() });

/** A store over `state` whose every group waits exactly `latency` ms for its commit. */
function simStore(clock: SimClock, state = emptyState(), opts: Partial<SimStoreOptions> = {}, latency = 3): SimStore {
  return new SimStore(state, { clock, random: () => 0, commitLatencyMs: [latency, latency], ...opts });
}

/** Advance the clock by `ms` one due timer at a time, as the simulation does, letting every promise job run in between. */
async function run(clock: SimClock, ms: number): Promise<void> {
  const until = clock.now() + ms;
  await quiesce();
  for (let due = clock.nextDue(); due !== undefined && due <= until; due = clock.nextDue()) {
    clock.advanceTo(due);
    await quiesce();
  }
  clock.advanceTo(until);
  await quiesce();
}

/** Watch a promise: what it settled to, if it did. */
function watch<T>(p: Promise<T>): { settled: boolean; value?: T; error?: unknown } {
  const w: { settled: boolean; value?: T; error?: unknown } = { settled: false };
  p.then(
    (value) => Object.assign(w, { settled: true, value }),
    (error: unknown) => Object.assign(w, { settled: true, error }),
  );
  return w;
}

const openReq = (requestId: string, session: string, leaseMs: number, target = T) => ({
  target,
  requestId,
  principal: P,
  mode: 'write' as const,
  session,
  leaseMs,
});
const writeReq = (seq: number, offset: number, s: string, requestId = X, session = 's1', target = T): WriteRequest => ({
  target,
  requestId,
  session,
  seq,
  offset,
  data: bytes(s),
});

/** A deep copy of the shared state, every byte of every target's buffer included. */
function snapshot(state: MemoryState) {
  return {
    records: structuredClone(state.records),
    tombstones: structuredClone(state.tombstones),
    targets: new Map(
      [...state.targets].map(([t, v]) => [
        t,
        { size: v.size, version: v.version, capacity: v.buf.length, bytes: [...v.buf] },
      ]),
    ),
  };
}

/** Open X on T, write `data`, acknowledged and committed. */
async function committed(clock: SimClock, store: SimStore, data = 'abcdefgh'): Promise<void> {
  const o = watch(store.open(openReq(X, 's1', 1000)));
  const w = watch(store.write(writeReq(1, 0, data)));
  await run(clock, 10);
  expect(o.value).toMatchObject({ ok: true });
  expect(w.value).toMatchObject({ ok: true, applied: true, version: 1 });
}

describe('SimStore: group commit', () => {
  it('operations of one turn share one commit, after the commit latency, and settle only after it', async () => {
    const clock = new SimClock();
    const store = simStore(clock);
    const ops = [
      watch(store.open(openReq(X, 's1', 1000))),
      watch(store.write(writeReq(1, 0, 'ab'))),
      watch(store.read({ target: T, offset: 0, length: 2 })),
    ];
    await run(clock, 2);
    expect(ops.map((o) => o.settled)).toEqual([false, false, false]);
    expect(store.commits).toEqual({ transactions: 0, operations: 0 });
    expect(store.state.records.size).toBe(0);
    await run(clock, 1);
    expect(ops.map((o) => o.settled)).toEqual([true, true, true]);
    expect(store.commits).toEqual({ transactions: 1, operations: 3 });
    expect(ops[2]!.value).toMatchObject({ ok: true, version: 1 });
    expect(store.targets().map((t) => [t.target, text(t.data)])).toEqual([[T, 'ab']]);
  });

  it('draws each group commit latency from the seeded random source', async () => {
    const clock = new SimClock();
    const draws = [0.99, 0];
    const store = new SimStore(emptyState(), { clock, random: () => draws.shift()!, commitLatencyMs: [1, 5] });
    const a = watch(store.open(openReq(X, 's1', 1000)));
    await run(clock, 4);
    expect(a.settled).toBe(false);
    await run(clock, 1);
    expect(a.settled).toBe(true);
    const b = watch(store.write(writeReq(1, 0, 'x')));
    await run(clock, 1);
    expect(b.value).toMatchObject({ ok: true, applied: true });
    expect(store.commits.transactions).toBe(2);
  });

  it('several instances over one state share one database, each committing its own groups', async () => {
    const clock = new SimClock();
    const a = simStore(clock, emptyState(), {}, 1);
    const b = simStore(clock, a.state, {}, 2);
    const first = watch(a.open(openReq(X, 's1', 1000)));
    const second = watch(b.open(openReq(Y, 's2', 1000)));
    await run(clock, 3);
    expect(first.value).toMatchObject({ ok: true });
    expect(second.value).toMatchObject({ ok: false, code: 'LOCKED' });
  });
});

describe('SimStore: the store clock', () => {
  it('lock expiries are set and compared on the clock passed in, when the group commits', async () => {
    const clock = new SimClock();
    const store = simStore(clock);
    const o = watch(store.open(openReq(X, 's1', 100)));
    await run(clock, 3);
    expect(o.value).toMatchObject({ ok: true });
    expect(store.state.records.get(T)?.expiresAt).toBe(103);
    // Queued at 99, decided at 102: still locked. Queued at 102, decided at 105: the lock has lapsed.
    await run(clock, 96);
    const early = watch(store.open(openReq(Y, 's2', 100)));
    await run(clock, 3);
    expect(early.value).toMatchObject({ ok: false, code: 'LOCKED' });
    const late = watch(store.open(openReq(Y, 's3', 100)));
    await run(clock, 3);
    expect(late.value).toMatchObject({ ok: true });
    expect(store.state.records.get(T)).toMatchObject({ requestId: Y, session: 's3', expiresAt: 205 });
  });
});

describe('SimStore: crash and reboot', () => {
  it('a crash before the flush loses the queued operations; a new instance over the same state sees only what was committed', async () => {
    const clock = new SimClock();
    const store = simStore(clock);
    await committed(clock, store, 'durable');
    const lost = [watch(store.write(writeReq(2, 0, 'LOST!!!'))), watch(store.close({ target: T, requestId: X }, 's1'))];
    await quiesce();
    store.crash();
    expect(store.crashed).toBe(true);
    // Later calls on the dead instance are never answered either.
    const later = [watch(store.read({ target: T, offset: 0, length: 7 })), watch(store.ping()), watch(store.record(T))];
    await run(clock, 10_000);
    expect([...lost, ...later].map((o) => o.settled)).toEqual([false, false, false, false, false]);
    expect(store.commits).toEqual({ transactions: 1, operations: 2 });

    const rebooted = simStore(clock, store.state);
    const read = watch(rebooted.read({ target: T, offset: 0, length: 7 }));
    const rec = watch(rebooted.record(T));
    const resumed = watch(
      rebooted.resume([{ target: T, requestId: X, principal: P, mode: 'write', session: 's2', leaseMs: 2000 }]),
    );
    await run(clock, 3);
    expect(read.value).toMatchObject({ ok: true, version: 1 });
    expect(read.value?.ok && text(read.value.data)).toBe('durable');
    expect(rec.value).toMatchObject({ requestId: X, session: 's1', lastSeq: 1 });
    expect(resumed.value).toEqual([{ granted: true, lastSeq: 1, version: 1, size: 0 }]);
  });

  it('a crash during a busy wait drops the waiting operations: nothing is applied or answered', async () => {
    const clock = new SimClock();
    const store = simStore(clock, emptyState(), { busyWaitMs: 1000 });
    await committed(clock, store);
    store.setFault('busy', true);
    const w = watch(store.write(writeReq(2, 0, 'zz')));
    await run(clock, 50);
    store.crash();
    store.setFault('busy', false);
    await run(clock, 5000);
    expect(w.settled).toBe(false);
    expect(clock.nextDue()).toBeUndefined();
    expect(store.state.records.get(T)?.lastSeq).toBe(1);
  });
});

describe('SimStore: rollback', () => {
  /** A state with a record, a tombstone and two targets, all committed. */
  async function populated(clock: SimClock): Promise<SimStore> {
    const store = simStore(clock);
    await committed(clock, store, 'abcdefgh');
    const more = [
      watch(store.open(openReq(Y, 's2', 1000, 'other'))),
      watch(store.write(writeReq(1, 2, 'xyz', Y, 's2', 'other'))),
      watch(store.close({ target: 'other', requestId: Y }, 's2')),
    ];
    await run(clock, 10);
    expect(more.map((o) => o.value)).toEqual([
      expect.objectContaining({ ok: true }),
      expect.objectContaining({ ok: true }),
      true,
    ]);
    expect(store.state.tombstones.get('other')).toHaveLength(1);
    return store;
  }

  it('an io fault rolls the whole group back byte for byte, every operation rejects with an I/O error, and no afterCommit callback runs', async () => {
    const clock = new SimClock();
    const store = await populated(clock);
    const before = snapshot(store.state);
    const capacity = store.state.targets.get(T)!.buf.length;
    const ran: string[] = [];
    const op = <R>(name: string, fn: () => R) =>
      watch(
        store.commit(() => {
          const r = fn();
          store.afterCommit(() => ran.push(name));
          return r;
        }),
      );
    store.setFault('io', true);
    const ops = [
      op('overwrite', () => store.sync.write(writeReq(2, 1, 'QQ'))),
      // Past the end and past the buffer's room: the target grows.
      op('extend', () => store.sync.write(writeReq(3, capacity + 5, 'tail'))),
      op('renew', () => store.sync.renew('s1', [{ target: T, requestId: X }], 5000)),
      op('new target', () => store.sync.open(openReq(Y, 's3', 1000, 'fresh'))),
      op('new bytes', () => store.sync.write(writeReq(1, 0, 'new', Y, 's3', 'fresh'))),
      op('take over other', () => store.sync.open(openReq(X, 's4', 1000, 'other'))),
      op('close', () => store.sync.close({ target: T, requestId: X }, 's1')),
    ];
    await run(clock, 10);
    for (const o of ops) {
      expect(o.error).toBeInstanceOf(StoreUnavailableError);
      expect((o.error as Error).message).toMatch(/I\/O error/);
    }
    expect(ran).toEqual([]);
    expect(store.commits.transactions).toBe(2);
    expect(snapshot(store.state)).toEqual(before);

    // Switched off, the same operations commit (nothing was left half applied), and only their own callbacks run.
    store.setFault('io', false);
    expect(store.hasFault('io')).toBe(false);
    const again = watch(
      store.commit(() => {
        const r = store.sync.write(writeReq(2, capacity + 5, 'tail'));
        store.afterCommit(() => ran.push('again'));
        return r;
      }),
    );
    await run(clock, 10);
    expect(again.value).toMatchObject({ ok: true, applied: true, version: 2 });
    expect(ran).toEqual(['again']);
    const r = store.sync.read({ target: T, offset: 0, length: capacity + 20 });
    expect(r.ok && [...r.data.subarray(8, capacity + 5)].every((b) => b === 0)).toBe(true);
    expect(r.ok && text(r.data.subarray(0, 8))).toBe('abcdefgh');
  });

  it('a write past the end rolled back in place leaves zeros behind: a later sparse write reads zeros in the gap', async () => {
    const clock = new SimClock();
    const store = simStore(clock);
    await committed(clock, store, 'abcdefgh');
    const grow = watch(store.write(writeReq(2, 8, 'i')));
    await run(clock, 10);
    expect(grow.value).toMatchObject({ ok: true, applied: true });
    // The buffer has room past the target's end, so the rolled-back bytes were written in place.
    const cur = store.state.targets.get(T)!;
    const buf = cur.buf;
    expect(buf.length).toBeGreaterThanOrEqual(15);
    store.setFault('io', true);
    const failed = watch(store.write(writeReq(3, 9, 'ROLLED')));
    await run(clock, 10);
    expect(failed.error).toBeInstanceOf(StoreUnavailableError);
    expect(cur.buf).toBe(buf);
    expect(cur.size).toBe(9);
    store.setFault('io', false);
    const ok = watch(store.write(writeReq(3, 14, '!')));
    await run(clock, 10);
    expect(ok.value).toMatchObject({ ok: true, applied: true, version: 3 });
    const r = store.sync.read({ target: T, offset: 0, length: 100 });
    expect(r.ok && text(r.data)).toBe('abcdefghi\0\0\0\0\0!');
  });

  it('a rule that throws inside a group undoes only itself and drops only its own callbacks', async () => {
    const clock = new SimClock();
    const store = simStore(clock);
    await committed(clock, store, 'abcd');
    const before = store.commits.transactions;
    const ran: string[] = [];
    const ok1 = watch(
      store.commit(() => {
        const r = store.sync.write(writeReq(2, 0, 'A'));
        store.afterCommit(() => ran.push('first'));
        return r;
      }),
    );
    const bad = watch(
      store.commit(() => {
        store.sync.write(writeReq(3, 1, 'ZZZZZZZZ'));
        store.sync.open(openReq(Y, 's9', 1000, 'ghost'));
        store.afterCommit(() => ran.push('failed'));
        throw new Error('rule failed');
      }),
    );
    const ok2 = watch(
      store.commit(() => {
        const r = store.sync.write(writeReq(3, 1, 'B'));
        store.afterCommit(() => ran.push('third'));
        return r;
      }),
    );
    await run(clock, 10);
    expect(ok1.value).toMatchObject({ ok: true, applied: true, version: 2 });
    expect((bad.error as Error).message).toBe('rule failed');
    expect(ok2.value).toMatchObject({ ok: true, applied: true, version: 3 });
    expect(ran).toEqual(['first', 'third']);
    expect(store.commits.transactions - before).toBe(1);
    expect(store.state.records.has('ghost')).toBe(false);
    expect(store.state.targets.get(T)!.size).toBe(4);
    const r = store.sync.read({ target: T, offset: 0, length: 100 });
    expect(r.ok && text(r.data)).toBe('ABcd');
  });
});

describe('SimStore: busy and unavailable', () => {
  it('busy for less than busyWaitMs delays the operations, which then commit in order', async () => {
    const clock = new SimClock();
    const store = simStore(clock, emptyState(), { busyWaitMs: 100 });
    await committed(clock, store);
    store.setFault('busy', true);
    const start = clock.now();
    const ws = ['a', 'b', 'c'].map((s, i) => watch(store.write(writeReq(i + 2, i, s))));
    clock.setTimeout(() => store.setFault('busy', false), 60);
    await run(clock, 59);
    expect(ws.map((w) => w.settled)).toEqual([false, false, false]);
    for (let i = 0; i < 30 && !ws.every((w) => w.settled); i++) await run(clock, 1);
    expect(ws.map((w) => w.value)).toEqual(
      [2, 3, 4].map((version) => expect.objectContaining({ ok: true, applied: true, version })),
    );
    expect(clock.now() - start).toBeGreaterThanOrEqual(60);
    expect(clock.now() - start).toBeLessThan(100);
  });

  it('busy for longer than busyWaitMs fails every waiting operation as unavailable, none applied', async () => {
    const clock = new SimClock();
    const store = simStore(clock, emptyState(), { busyWaitMs: 100 });
    await committed(clock, store);
    const before = snapshot(store.state);
    store.setFault('busy', true);
    const ws = [2, 3].map((seq) => watch(store.write(writeReq(seq, 0, 'zz'))));
    await run(clock, 99);
    expect(ws.map((w) => w.settled)).toEqual([false, false]);
    await expect(store.ping()).rejects.toBeInstanceOf(StoreBusyError);
    await run(clock, 30);
    for (const w of ws) {
      expect(w.error).toBeInstanceOf(StoreUnavailableError);
      expect(w.error).not.toBeInstanceOf(StoreBusyError);
      expect((w.error as Error).message).toMatch(/still busy after 100 ms/);
    }
    expect(snapshot(store.state)).toEqual(before);
    store.setFault('busy', false);
    const w = watch(store.write(writeReq(2, 0, 'ok')));
    await run(clock, 10);
    expect(w.value).toMatchObject({ ok: true, applied: true, version: 2 });
  });

  it('unavailable: every operation and ping rejects StoreUnavailableError until set available again', async () => {
    const clock = new SimClock();
    const store = simStore(clock);
    await committed(clock, store);
    store.setAvailable(false);
    expect(store.hasFault('unavailable')).toBe(true);
    const w = watch(store.write(writeReq(2, 0, 'zz')));
    await run(clock, 10);
    expect(w.error).toBeInstanceOf(StoreUnavailableError);
    await expect(store.ping()).rejects.toBeInstanceOf(StoreUnavailableError);
    await expect(store.record(T)).rejects.toBeInstanceOf(StoreUnavailableError);
    store.setAvailable(true);
    await expect(store.ping()).resolves.toBeUndefined();
    const again = watch(store.write(writeReq(2, 0, 'zz')));
    await run(clock, 10);
    expect(again.value).toMatchObject({ ok: true, applied: true });
  });

  it('without group commit each operation commits on its own, at once', async () => {
    const clock = new SimClock();
    const store = simStore(clock, emptyState(), { groupCommit: false });
    expect(await store.open(openReq(X, 's1', 1000))).toMatchObject({ ok: true });
    expect(await store.write(writeReq(1, 0, 'a'))).toMatchObject({ ok: true, applied: true });
    expect(store.commits).toEqual({ transactions: 2, operations: 2 });
  });
});

describe('SimStore: afterCommit', () => {
  it('callbacks run in operation order right after the commit (the state already holds it), before any promise settles', async () => {
    const clock = new SimClock();
    const store = simStore(clock);
    const log: string[] = [];
    /** What a new instance over the same state (another process) sees of T now. */
    const seen = () => `${store.state.records.get(T)?.lastSeq ?? '-'}/${store.commits.transactions}`;
    const ops = [1, 2, 3].map((i) =>
      store.commit(() => {
        if (i === 1) store.sync.open(openReq(X, 's1', 1000));
        else store.sync.write(writeReq(i - 1, 0, 'x'));
        store.afterCommit(() => log.push(`cb${i}a ${seen()}`));
        store.afterCommit(() => log.push(`cb${i}b`));
        return i;
      }),
    );
    ops.forEach((p) => void p.then((i) => log.push(`settled ${i}`)));
    await run(clock, 2);
    expect(log).toEqual([]);
    await run(clock, 1);
    expect(log).toEqual([
      'cb1a 2/1',
      'cb1b',
      'cb2a 2/1',
      'cb2b',
      'cb3a 2/1',
      'cb3b',
      'settled 1',
      'settled 2',
      'settled 3',
    ]);
  });

  it('outside any transaction a callback runs at once', () => {
    const store = simStore(new SimClock());
    const log: string[] = [];
    store.afterCommit(() => log.push('now'));
    expect(log).toEqual(['now']);
  });

  it('a transaction retried after failing busy at commit runs its operations again, and each callback runs once', async () => {
    /** A store whose next transactions run and then fail busy at COMMIT (SQLite can report busy there too). */
    class BusyAtCommit extends SimStore {
      busyCommits = 0;
      private nesting = 0;
      protected override tx<T>(fn: (tx: Tx) => T): T {
        const failThis = this.nesting === 0 && this.busyCommits > 0;
        if (failThis) this.busyCommits--;
        this.nesting++;
        try {
          return super.tx(
            failThis
              ? (t) => {
                  fn(t);
                  throw new StoreBusyError('database is locked at commit');
                }
              : fn,
          );
        } finally {
          this.nesting--;
        }
      }
    }
    const clock = new SimClock();
    const store = new BusyAtCommit(emptyState(), { clock, random: () => 0, commitLatencyMs: [1, 1] });
    await committed(clock, store);
    const ran: string[] = [];
    let attempts = 0;
    store.busyCommits = 2;
    const ops = [2, 3].map((seq) =>
      watch(
        store.commit(() => {
          attempts++;
          const r = store.sync.write(writeReq(seq, seq, 'w'));
          store.afterCommit(() => ran.push(`cb${seq}`));
          return r;
        }),
      ),
    );
    await run(clock, 50);
    expect(attempts).toBe(6);
    expect(ran).toEqual(['cb2', 'cb3']);
    expect(ops.map((o) => o.value)).toEqual([
      expect.objectContaining({ ok: true, applied: true, version: 2 }),
      expect.objectContaining({ ok: true, applied: true, version: 3 }),
    ]);
  });
});
