/**
 * The checker catches real bugs: each test runs the simulation against a deliberately broken store
 * or transport, injected through the replicas' normal parameters, or a broken node-local requestId
 * file, injected through the node agents' `kept` parameter, and expects the checker to name the
 * guarantee it breaks. Production code has no flags for any of this.
 */
import { describe, expect, it } from 'vitest';
import type { Guarantee } from '../sim/checker.js';
import { runSchedule, type FaultKind, type ScheduleOptions } from '../sim/scheduler.js';
import * as rules from '../store/rules.js';
import type { SyncStore } from '../store/base.js';
import type { MemoryStore } from '../store/memory.js';
import { SimStore } from '../sim/store.js';
import type { StoreContext } from '../sim/world.js';
import { StoreUnavailableError } from '../store/types.js';
import type { Connection, Transport } from '../transport/types.js';
import { FileKeptIds, type KeptChanges, type KeptDisk } from '../actors/kept.js';

type State = MemoryStore['state'];

/** The simulation's store (the model of the SQLite adapter) with one rule replaced; `now` is the store's clock. */
function storeWith(
  patch: (store: SimStore, run: <T>(fn: (tx: rules.Tx) => T) => T, now: () => number) => Partial<SyncStore>,
) {
  return (state: State, ctx: StoreContext) => {
    const store = new SimStore(state, { clock: ctx.clock, random: ctx.random });
    const run = <T>(fn: (tx: rules.Tx) => T): T => (store as unknown as { tx<U>(f: (tx: rules.Tx) => U): U }).tx(fn);
    Object.assign(
      store.sync,
      patch(store, run, () => ctx.clock.now()),
    );
    return store;
  };
}

const resumeIgnoresRevocation = storeWith((_, run, now) => ({
  resume: (reqs) =>
    run((tx) =>
      reqs.map((r) => {
        const rec = tx.getRecord(r.target);
        if (r.mode === 'write' && rec && rec.requestId !== r.requestId) {
          // Bug: a revoked requestId is granted its resume as if it still held the target.
          return { granted: true as const, lastSeq: 0, version: tx.version(r.target), size: 0 };
        }
        return rules.resume(tx, r, now());
      }),
    ),
}));

const writeSkipsFencing = storeWith((_, run) => ({
  write: (req) =>
    run((tx) => {
      const rec = tx.getRecord(req.target);
      // Bug: any session of any requestId may write; only the sequence number is checked.
      if (rec && (rec.requestId !== req.requestId || rec.session !== req.session)) {
        const version = tx.writeData(req.target, req.offset, req.data);
        return { ok: true as const, applied: true, version };
      }
      return rules.write(tx, req);
    }),
}));

let lossy = 0;
const writeLosesData = storeWith((_, run) => ({
  write: (req) =>
    run((tx) => {
      // Bug: one write in seven is acknowledged and counted but its bytes never reach the data.
      if (req.data.length > 0 && ++lossy % 7 === 0) {
        const rec = tx.getRecord(req.target);
        if (rec && rec.requestId === req.requestId && rec.session === req.session && req.seq === rec.lastSeq + 1) {
          tx.putRecord({ ...rec, lastSeq: req.seq });
          return { ok: true as const, applied: true, version: tx.version(req.target) + 1 };
        }
      }
      return rules.write(tx, req);
    }),
}));

const seqCheckOff = storeWith((_, run) => ({
  write: (req) =>
    run((tx) => {
      const rec = tx.getRecord(req.target);
      // Bug: a replayed sequence number is applied again instead of acknowledged.
      if (
        rec &&
        rec.requestId === req.requestId &&
        rec.session === req.session &&
        req.seq <= rec.lastSeq &&
        req.data.length > 0
      ) {
        return { ok: true as const, applied: true, version: tx.writeData(req.target, req.offset, req.data) };
      }
      return rules.write(tx, req);
    }),
}));

const resumeForgetsRecords = storeWith((_, run, now) => ({
  resume: (reqs) =>
    run((tx) =>
      reqs.map((r) => {
        // Bug: a write handle's resume is denied whenever its session changed, i.e. always.
        if (r.mode === 'write')
          return {
            granted: false as const,
            reason: 'MODIFIED' as const,
            code: 'MODIFIED' as const,
            version: tx.version(r.target),
          };
        return rules.resume(tx, r, now());
      }),
    ),
}));

const resumeSupersedesEveryWriter = storeWith((_, run, now) => ({
  resume: (reqs) =>
    run((tx) =>
      reqs.map((r) => {
        // Bug: every write handle's resume is denied SUPERSEDED, as if another instance had taken it over.
        if (r.mode === 'write')
          return {
            granted: false as const,
            reason: 'SUPERSEDED' as const,
            code: 'SUPERSEDED' as const,
            version: tx.version(r.target),
          };
        return rules.resume(tx, r, now());
      }),
    ),
}));

const readResumeAlwaysGranted = storeWith((_, run, now) => ({
  resume: (reqs) =>
    run((tx) =>
      reqs.map((r) => {
        // Bug: a reader's resume is granted without comparing versions, even after the target was written.
        if (r.mode === 'read') return { granted: true as const, lastSeq: 0, version: tx.version(r.target), size: 0 };
        return rules.resume(tx, r, now());
      }),
    ),
}));

const writeAppliedThenRefused = storeWith((_, run) => ({
  write: (req) =>
    run((tx) => {
      const res = rules.write(tx, req);
      // Bug: every seventh write is applied and then answered as refused, which tells the application it was not.
      if (res.ok && res.applied && req.seq % 7 === 0)
        return { ok: false as const, code: 'INVALID_ARGUMENT' as const, message: 'refused after all' };
      return res;
    }),
}));

const resumeAlwaysUnavailable = storeWith(() => ({
  resume: () => {
    // Bug: the resume path reports the store unavailable forever, so no pause ever ends.
    throw new StoreUnavailableError('broken resume');
  },
}));

const handOverBackwards = storeWith((_, run, now) => ({
  // Bug: the store moves a requestId's record to whichever session asks last, however old the request
  // (no hand-over counter), so a late open or resume from a session the node left takes a live handle back.
  open: (req) => run((tx) => rules.open(tx, { ...req, epoch: undefined }, now())),
  resume: (reqs) => run((tx) => reqs.map((r) => rules.resume(tx, { ...r, epoch: undefined }, now()))),
}));

/** A deep copy of the shared store state (what reached the disk at the last fsync). */
function snapshot(state: State): State {
  return {
    records: new Map([...state.records].map(([k, r]) => [k, { ...r }])),
    tombstones: new Map([...state.tombstones].map(([k, l]) => [k, l.map((x) => ({ ...x }))])),
    targets: new Map([...state.targets].map(([k, t]) => [k, { buf: t.buf.slice(), size: t.size, version: t.version }])),
  };
}

/**
 * A store that answers each operation as soon as it ran and fsyncs only every 200 ms: a replica
 * killed in between takes the unsynced tail with it, acknowledged writes included.
 */
const acksBeforeFsync = (state: State, ctx: StoreContext) => {
  const store = new SimStore(state, { clock: ctx.clock, random: ctx.random, groupCommit: false });
  let synced = snapshot(state);
  const fsync = () => {
    if (store.crashed) return;
    synced = snapshot(state);
    ctx.clock.setTimeout(fsync, 200);
  };
  ctx.clock.setTimeout(fsync, 200);
  const crash = store.crash.bind(store);
  store.crash = () => {
    crash();
    // Bug: what was acknowledged since the last fsync is gone.
    const back = snapshot(synced);
    for (const key of ['records', 'tombstones', 'targets'] as const) {
      const live = state[key] as Map<string, unknown>;
      live.clear();
      for (const [k, v] of back[key] as Map<string, unknown>) live.set(k, v);
    }
  };
  return store;
};

/** Lock expiries judged on the clock of the replica that asks (skewed like its host's), not the store's. */
const holdOnReplicaClock = (state: State, ctx: StoreContext) =>
  new SimStore(state, { clock: ctx.replicaClock, random: ctx.random });

/** A transport whose replica-side connections have one method replaced (the bug). */
function replicaSide(inner: Transport, prop: 'send' | 'onFrame', replace: (c: Connection) => unknown): Transport {
  const wrap = (c: Connection): Connection =>
    new Proxy(c, {
      get(target, p, receiver) {
        if (p === prop) return replace(target);
        const v = Reflect.get(target, p, receiver) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
  return {
    connect: (url, opts) => inner.connect(url, opts),
    listen: async (opts) => {
      const l = await inner.listen(opts);
      return { url: l.url, close: () => l.close(), onConnection: (cb) => l.onConnection((c) => cb(wrap(c))) };
    },
  };
}

/**
 * A network that delivers every write to the replica twice, the second time under another request id
 * (so the replica's duplicate filter does not catch it): only the store's seq check stands between it
 * and a write applied twice.
 */
const duplicatesWrites = (inner: Transport): Transport =>
  replicaSide(
    inner,
    'onFrame',
    (c) => (cb: Parameters<Connection['onFrame']>[0]) =>
      c.onFrame((frame) => {
        cb(frame);
        if (frame.ok && frame.msg.type === 'write')
          cb({ ...frame, msg: { ...frame.msg, id: frame.msg.id + 1_000_000_000 } });
      }),
  );

/**
 * A replica that does not say when a refusal's outcome is unknown (a commit sent and never answered):
 * the node takes the refusal as proof that the write was not applied, and a write that lands later
 * was reported not applied.
 */
const hidesUnknownOutcomes = (inner: Transport): Transport =>
  replicaSide(inner, 'send', (c) => (msg: Parameters<Connection['send']>[0]) => {
    if (msg.type !== 'error' || msg.outcome === undefined) return c.send(msg);
    const { outcome: _hidden, ...rest } = msg;
    return c.send(rest);
  });

/** A transport on which the replica's answers to reads are lost, every time. */
const losesReadReplies = (inner: Transport): Transport =>
  replicaSide(
    inner,
    'send',
    (c) => (msg: Parameters<Connection['send']>[0]) => (msg.type === 'data' ? true : c.send(msg)),
  );

/**
 * A replica that answers reads from a cache it never invalidates: the second read of the same range
 * gets the first answer again. The store read the right bytes (its history says so); only what the
 * application was handed is stale.
 */
const staleReadCache = (inner: Transport): Transport => {
  const asked = new Map<number, string>();
  const cache = new Map<string, unknown>();
  const withReads = replicaSide(
    inner,
    'onFrame',
    (c) => (cb: Parameters<Connection['onFrame']>[0]) =>
      c.onFrame((frame) => {
        if (frame.ok && frame.msg.type === 'read')
          asked.set(frame.msg.id, `${frame.msg.target}@${frame.msg.offset}+${frame.msg.length}`);
        cb(frame);
      }),
  );
  return replicaSide(withReads, 'send', (c) => (msg: Parameters<Connection['send']>[0]) => {
    if (msg.type !== 'data') return c.send(msg);
    const key = asked.get(msg.id);
    asked.delete(msg.id);
    if (key === undefined) return c.send(msg);
    const old = cache.get(key) as typeof msg | undefined;
    if (old) return c.send({ ...old, id: msg.id });
    cache.set(key, msg);
    return c.send(msg);
  });
};

/**
 * A node-local requestId file that keeps a handle once and never again: a reader's entry stays as it
 * was written before the store answered its open (version 0 for a fresh open), so a reclaim after an
 * application or agent restart resumes with that version and is denied MODIFIED on a target holding
 * data although nobody wrote it (the bug fixed in "A read handle's open is kept again with the
 * version the store granted it").
 */
class ReadOpenKeptOnce extends FileKeptIds {
  override apply(changes: KeptChanges): void {
    super.apply({
      put: changes.put.filter((h) => !(h.mode === 'read' && this.byId.has(h.requestId))),
      remove: changes.remove,
    });
  }
}
const readOpenKeptOnce = (dir: string, node: string, disk: KeptDisk) => new ReadOpenKeptOnce(dir, node, disk);

/**
 * A node-local requestId file that takes a reader's entry twice at most: when its open is kept before
 * the store answered, and again with the version the store granted it. Later versions, those of a
 * granted resume or of read answers, never reach it, so a reclaim after a restart resumes with the
 * open's version and is denied MODIFIED although nothing was written since the version the store
 * last granted the reader (the bug fixed in "A reader's node keeps the newest version it saw").
 */
class ReadVersionKeptAtOpen extends FileKeptIds {
  private readonly puts = new Map<string, number>();
  override apply(changes: KeptChanges): void {
    const put = changes.put.filter((h) => {
      if (h.mode !== 'read') return true;
      const n = (this.puts.get(h.requestId) ?? 0) + 1;
      this.puts.set(h.requestId, n);
      return n <= 2;
    });
    super.apply({ put, remove: changes.remove });
  }
}
const readVersionKeptAtOpen = (dir: string, node: string, disk: KeptDisk) => new ReadVersionKeptAtOpen(dir, node, disk);

/** Run seeds until the checker reports `g`; return the seed that showed it. */
async function findViolation(
  g: Guarantee,
  opts: ScheduleOptions,
  maxSeeds = 40,
  about?: RegExp,
): Promise<number | undefined> {
  for (let seed = 1; seed <= maxSeeds; seed++) {
    const r = await runSchedule(seed, opts);
    if (r.violations.some((v) => v.guarantee === g && (!about || about.test(v.message)))) return seed;
  }
  return undefined;
}

const kinds = (...k: FaultKind[]) => k;

describe('the checker catches a deliberately broken variant of each guarantee', () => {
  it('S1: a store whose resume ignores revocation', async () => {
    const opts: ScheduleOptions = {
      makeStore: resumeIgnoresRevocation,
      kinds: kinds('partition', 'foreign-writer'),
      faultMs: [1500, 3000],
      faultsUntilMs: 6000,
    };
    expect(await findViolation('S1', opts)).toBeDefined();
  }, 120_000);

  it('S2: a store whose write skips fencing', async () => {
    expect(
      await findViolation('S2', {
        makeStore: writeSkipsFencing,
        kinds: kinds('app-move', 'partition', 'foreign-writer'),
      }),
    ).toBeDefined();
  }, 120_000);

  it('S3: a store that acknowledges writes it never applies', async () => {
    expect(await findViolation('S3', { makeStore: writeLosesData, kinds: kinds('replica-crash') })).toBeDefined();
  }, 120_000);

  it('S4: a store whose seq check is off', async () => {
    // The node agent never sends one seq twice on a session, so the network does it for the test.
    expect(
      await findViolation('S4', { makeStore: seqCheckOff, replicaTransport: duplicatesWrites, faults: 0 }),
    ).toBeDefined();
  }, 120_000);

  it('S4: the correct store applies each write once on the same duplicating network', async () => {
    const r = await runSchedule(1, { replicaTransport: duplicatesWrites, faults: 0 });
    expect(r.writesAcknowledged).toBeGreaterThan(0);
    expect(r.violations).toEqual([]);
  }, 120_000);

  it('S1: a store that grants a reader its resume after the target was written (within 40 seeds)', async () => {
    expect(
      await findViolation('S1', { makeStore: readResumeAlwaysGranted, kinds: kinds('partition', 'replica-crash') }),
    ).toBeDefined();
  }, 120_000);

  it('S5: a store that applies a write and answers that it refused it (within 5 seeds)', async () => {
    expect(await findViolation('S5', { makeStore: writeAppliedThenRefused, faults: 0 }, 5)).toBeDefined();
  }, 120_000);

  it('L1: a store that denies every write resume SUPERSEDED (within 40 seeds)', async () => {
    expect(
      await findViolation('L1', { makeStore: resumeSupersedesEveryWriter, kinds: kinds('replica-crash', 'partition') }),
    ).toBeDefined();
  }, 120_000);

  it('L1: a store that denies every resume', async () => {
    expect(
      await findViolation('L1', { makeStore: resumeForgetsRecords, kinds: kinds('replica-crash', 'partition') }),
    ).toBeDefined();
  }, 120_000);

  it("L1: a node that keeps a reader's open with the version it had before the store answered (within 40 seeds)", async () => {
    // Readers are reclaimed after application and agent restarts; a partition of the writer's node
    // leaves their targets unwritten in between.
    expect(
      await findViolation(
        'L1',
        { makeKept: readOpenKeptOnce, kinds: kinds('app-restart', 'agent-restart', 'partition') },
        40,
        /read resume/,
      ),
    ).toBeDefined();
  }, 120_000);

  it("L1: a node that never keeps a reader's version past the one its open was granted (within 40 seeds)", async () => {
    // The reader resumes after a partition at the version it read last; then it, or its agent, restarts.
    const opts: ScheduleOptions = {
      makeKept: readVersionKeptAtOpen,
      kinds: kinds('app-restart', 'agent-restart', 'partition'),
    };
    expect(await findViolation('L1', opts, 40, /read resume/)).toBeDefined();
  }, 120_000);

  it('L2: a store whose resume path is always unavailable', async () => {
    expect(
      await findViolation('L2', { makeStore: resumeAlwaysUnavailable, kinds: kinds('replica-crash', 'partition') }),
    ).toBeDefined();
  }, 120_000);

  it('S3: a replica that serves application reads from a stale cache (within 5 seeds)', async () => {
    expect(await findViolation('S3', { replicaTransport: staleReadCache, faults: 0 }, 5, /stale read/)).toBeDefined();
  }, 120_000);

  it('S3: a store that acknowledges before its fsync loses acknowledged writes when a replica is killed (within 20 seeds)', async () => {
    expect(
      await findViolation('S3', { makeStore: acksBeforeFsync, kinds: kinds('replica-kill', 'storage-reboot') }, 20),
    ).toBeDefined();
  }, 120_000);

  it("L1: a replica with a stepped clock that judges holds on its own clock takes an active writer's target (within 100 seeds)", async () => {
    expect(
      await findViolation(
        'L1',
        { makeStore: holdOnReplicaClock, kinds: kinds('clock-step', 'foreign-writer') },
        100,
        /hold period/,
      ),
    ).toBeDefined();
  }, 120_000);

  it('L1: a store that lets a late open or resume, from a session the node left, take a live handle back (within 40 seeds)', async () => {
    const opts: ScheduleOptions = {
      makeStore: handOverBackwards,
      kinds: kinds('store-stall', 'partition', 'replica-kill'),
      faultsUntilMs: 6000,
    };
    expect(await findViolation('L1', opts, 40, /SUPERSEDED/)).toBeDefined();
  }, 240_000);

  it('S5: a replica that does not say a refused write may still land, when commits land after their timeout (within 40 seeds)', async () => {
    const opts: ScheduleOptions = {
      replicaTransport: hidesUnknownOutcomes,
      kinds: kinds('late-commit'),
      faultMs: [3000, 6000],
      faultsUntilMs: 8000,
    };
    expect(await findViolation('S5', opts)).toBeDefined();
  }, 240_000);

  it('L3: a transport that loses every answer to a read', async () => {
    expect(await findViolation('L3', { replicaTransport: losesReadReplies, faults: 0 })).toBeDefined();
  }, 120_000);

  it('the correct store, replica and agent pass the schedules of stalls and late commits', async () => {
    for (let seed = 1; seed <= 10; seed++) {
      const stalls = await runSchedule(seed, {
        kinds: kinds('store-stall', 'partition', 'replica-kill'),
        faultsUntilMs: 6000,
      });
      expect(stalls.violations, `seed ${seed}, stalls`).toEqual([]);
      const late = await runSchedule(seed, { kinds: kinds('late-commit'), faultMs: [3000, 6000], faultsUntilMs: 8000 });
      expect(late.violations, `seed ${seed}, late commits`).toEqual([]);
    }
  }, 240_000);

  it('the correct store passes the same schedules', async () => {
    for (let seed = 1; seed <= 10; seed++) {
      const r = await runSchedule(seed, {
        kinds: kinds('partition', 'foreign-writer', 'clock-jump', 'app-move', 'lossy-link', 'replica-crash'),
      });
      expect(r.violations, `seed ${seed}`).toEqual([]);
    }
  }, 120_000);
});

/**
 * The lease model of the etcd store without its freshness check (as it was): a lease not surely
 * lapsed carries a new lock however close its end, so a grant late in an idle session's lease puts
 * its lock on a lease that lapses before the session's next renewal, and another writer takes the
 * target from an active handle that never paused.
 */
const leasesWithoutFreshness = (state: State, ctx: StoreContext) =>
  new SimStore(state, {
    clock: ctx.clock,
    random: ctx.random,
    leases: { state: ctx.leases, renewMs: ctx.renewMs, fresh: false },
  });

describe('the checker catches a lock committed onto a lease about to lapse', () => {
  it("L1: a lease model whose grants do not keep a lease alive first takes an active writer's target (within 20 seeds)", async () => {
    const opts: ScheduleOptions = { makeStore: leasesWithoutFreshness, kinds: kinds('lease-race'), leases: true };
    expect(await findViolation('L1', opts, 20, /took lease-race-/)).toBeDefined();
  }, 120_000);

  it('the lease model with its freshness check passes the same schedules', async () => {
    for (let seed = 1; seed <= 20; seed++) {
      const r = await runSchedule(seed, {
        kinds: kinds('lease-race', 'partition', 'replica-crash', 'foreign-writer'),
        leases: true,
      });
      expect(r.violations, `seed ${seed}`).toEqual([]);
    }
  }, 120_000);
});
