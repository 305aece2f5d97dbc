/**
 * The simulation's model of the SQLite store: many instances (replica processes) over one shared
 * MemoryState (the database file), with what the real adapter does and MemoryStore does not:
 *
 * - group commit on the simulated clock: the operations queued while a group waits for its commit
 *   (an fsync of a seeded latency) share one transaction, each in its own savepoint, and are
 *   answered only once it commits;
 * - real transactions: an undo log restores the shared state exactly when a transaction or one of
 *   its savepoints throws (records, tombstones, target bytes, size and version);
 * - a process crash: queued operations are lost, never answered and never applied;
 * - injected faults: a busy database (another process holds the write lock), an I/O error at commit,
 *   an unavailable volume; and, for one replica's link to the store, a stall (its calls are held and
 *   decided only when the stall ends, long after the node may have left the session: a stopped
 *   replica process) and late commits (a commit is decided now, its answer never comes, and it lands
 *   later unless something it read changed meanwhile: an etcd transaction guarded by the revisions it
 *   read, sent to a member that hangs).
 *
 * A transaction runs synchronously in one turn, so the shared state only ever holds committed
 * transactions: a new instance over it (a reboot) sees exactly what was committed.
 */
import type { ActorClock } from '../actors/env.js';
import { StoreBusyError, TxStore, type SyncStore } from '../store/base.js';
import * as leases from '../store/leases.js';
import { memoryTx, type MemoryState } from '../store/memory.js';
import * as rules from '../store/rules.js';
import type { Tx } from '../store/rules.js';
import { StoreUnavailableError, type LockRecord, type Tombstone } from '../store/types.js';

export interface SimStoreOptions {
  /**
   * The database host's simulated clock: lock expiries are set and compared on its `now`, group
   * flushes and busy retries are its timers, the busy wait is measured on it.
   */
  clock: ActorClock;
  /** Seeded, uniform in [0, 1): draws each group's commit latency. */
  random: () => number;
  /** Each group's commit latency (the fsync), a whole number of ms drawn in [min, max]; default [0, 3]. */
  commitLatencyMs?: readonly [min: number, max: number];
  /** How long operations retry a busy store before failing as unavailable (default 1000, like SQLite's). */
  busyWaitMs?: number;
  /** Group commit (default on, like the SQLite adapter); off, each operation commits on its own at once. */
  groupCommit?: boolean;
  /**
   * The database's faults, shared by every instance over the same database (another process holding
   * the write lock, or a failing disk, stops every replica's transactions at once). Default: this
   * instance's own.
   */
  faults?: SimStoreFaults;
  /** Locks on leases, as the etcd store keeps them (see SimLeaseOptions); default: locks expire by their records' `expiresAt`. */
  leases?: SimLeaseOptions;
}

/**
 * etcd's side of the lease model, shared by every store instance over the same database (as etcd is
 * by every replica): each lease's expiry on the store's clock, and the lease each target's lock key
 * hangs on. A lock is live while its lease lives.
 */
export interface SimLeaseState {
  expiry: Map<number, number>;
  locks: Map<string, number>;
  nextId: number;
}

export const newLeaseState = (): SimLeaseState => ({ expiry: new Map(), locks: new Map(), nextId: 1 });

/**
 * The lease model of the etcd store: every session has a lease (per TTL), granted on its first write
 * open or resume (even one refused LOCKED), kept alive by `renew` (only when it has handles to renew),
 * and a granted lock hangs on it. Before a grant commits a lock onto a lease, the lease must surely
 * live a renewal interval past the time the commit can land (`busyWaitMs` here, as the etcd store's
 * call timeout there), or it is kept alive first: the same decision as the etcd store's
 * (store/leases.ts), with the same minimum TTL.
 */
export interface SimLeaseOptions {
  state: SimLeaseState;
  /** The replicas' renewal interval. */
  renewMs: number;
  /**
   * Check a lease's freshness before it carries a new lock (default true). False models the etcd
   * store without the check: any lease not surely lapsed carries it, TTLs have no minimum.
   */
  fresh?: boolean;
}

/** What one store instance knows of one of its sessions' leases. */
interface SimLease {
  id: number;
  ttl: number;
  times: leases.LeaseTimes;
}

/** Which injected faults are on. */
export type SimStoreFaults = Record<SimStoreFault, boolean>;

/**
 * - `busy`: every transaction fails StoreBusyError before running (another process holds the write
 *   lock); TxStore retries and, past `busyWaitMs`, fails the operations as unavailable.
 * - `io`: every transaction runs, then fails at commit with a StoreUnavailableError saying I/O error;
 *   everything it did is rolled back. A failing disk fails reads too, so read-only transactions and
 *   `ping` fail as well.
 * - `unavailable`: every transaction and `ping` fails StoreUnavailableError (a dismounted volume).
 */
export type SimStoreFault = 'busy' | 'io' | 'unavailable';

type TargetState = MemoryState['targets'] extends Map<string, infer V> ? V : never;

/** Never settles: what a dead process answers. */
const silence = <T>(): Promise<T> => new Promise<T>(() => {});

/**
 * Every target's change stamp, shared by every instance over the same database: a number that moves
 * whenever a transaction changes the target (record, tombstones, bytes, size), so a late commit can
 * tell whether what it read is still as it was (the revisions an etcd transaction compares).
 */
const changeStamps = new WeakMap<MemoryState, { next: number; of: Map<string, number> }>();
function stampsOf(state: MemoryState): { next: number; of: Map<string, number> } {
  let s = changeStamps.get(state);
  if (!s) changeStamps.set(state, (s = { next: 0, of: new Map() }));
  return s;
}

/** A late commit that found a target it read changed since it was decided: it does not land. */
class LateConflict extends Error {}

export class SimStore extends TxStore {
  readonly kind = 'sim';
  private readonly clock: ActorClock;
  private readonly random: () => number;
  private readonly latencyMs: readonly [number, number];
  private readonly txImpl: Tx;
  private readonly faults: SimStoreFaults;
  private dead = false;
  /** The last flush or busy retry scheduled (TxStore keeps at most one pending): cleared by a crash. */
  private timer: unknown;
  /** Nesting of the running transaction: 0 outside one, 1 in it, more in savepoints. */
  private depth = 0;
  /**
   * How to put back what the running transaction changed, oldest first; a savepoint is a length of
   * it. Reused from one transaction to the next.
   */
  private readonly undo: Array<() => void> = [];
  /** Calls arriving before this time on the store's clock are held until then (a stall). */
  private stallUntil = 0;
  private readonly held: Array<() => void> = [];
  /** Late commits are on: each commit's answer never comes, and it lands after a delay drawn from this range. */
  private late: readonly [number, number] | undefined;
  /** While a late commit lands: each target's stamp when it was decided; the targets compared so far. */
  private guard: { stamps: Map<string, number>; compared: Set<string> } | undefined;
  /** Set while a late commit lands: it is the store's doing, not this process's, so a crash does not stop it. */
  private landing = false;

  /** Pass another instance's `state` to model another process, or a restart, over the same database. */
  constructor(
    readonly state: MemoryState,
    opts: SimStoreOptions,
  ) {
    super();
    this.clock = opts.clock;
    this.faults = opts.faults ?? { busy: false, io: false, unavailable: false };
    this.random = opts.random;
    this.latencyMs = opts.commitLatencyMs ?? [0, 3];
    this.groupCommit = opts.groupCommit ?? true;
    this.busyWaitMs = opts.busyWaitMs ?? 1000;
    this.timers = {
      defer: (fn) => {
        const [lo, hi] = this.latencyMs;
        this.timer = this.clock.setTimeout(fn, lo + Math.floor(this.random() * (hi - lo + 1)));
      },
      after: (ms, fn) => {
        this.timer = this.clock.setTimeout(fn, ms);
      },
      now: () => this.clock.now(),
    };
    this.clockNow = () => this.clock.now();
    this.txImpl = this.makeTx();
    if (opts.leases) Object.assign(this.sync, this.leaseRules(opts.leases));
  }

  /** Switch an injected fault on or off. */
  setFault(fault: SimStoreFault, on: boolean): void {
    this.faults[fault] = on;
  }

  /** Whether an injected fault is on. */
  hasFault(fault: SimStoreFault): boolean {
    return this.faults[fault];
  }

  /** Make every operation fail as unavailable (a dismounted volume) until set back; as MemoryStore's. */
  setAvailable(available: boolean): void {
    this.faults.unavailable = !available;
  }

  /**
   * The process holding this instance died: the operations it had queued are dropped, never
   * answered and never applied, and no later call on it settles. Already committed transactions
   * stay in the shared state, where a new instance finds them.
   */
  crash(): void {
    this.dead = true;
    this.clock.clearTimeout(this.timer);
  }

  get crashed(): boolean {
    return this.dead;
  }

  /**
   * Hold every call that arrives in the next `ms` (on the store's clock); when the stall ends they run
   * in order, decided then. What a replica process that was stopped does once it runs again.
   */
  stall(ms: number): void {
    const until = this.clock.now() + ms;
    if (until <= this.stallUntil) return;
    this.stallUntil = until;
    this.clock.setTimeout(() => {
      if (this.clock.now() >= this.stallUntil) this.endStall(); // else a longer stall came after this one
    }, ms);
  }

  /** The stall ends now: the held calls run, in order, unless the process died meanwhile. */
  endStall(): void {
    this.stallUntil = 0;
    const held = this.held.splice(0);
    if (this.dead) return;
    for (const run of held) run();
  }

  /**
   * Late commits on (a range of delays in ms) or off: while on, every commit fails at once as
   * unavailable with `maybeApplied` (its answer was lost), and lands after the delay if nothing it read
   * changed meanwhile (as an etcd transaction guarded by the revisions it read); a store that fails
   * then (unavailable, busy, I/O errors) never lands it.
   */
  lateCommits(delayMs: readonly [number, number] | undefined): void {
    this.late = delayMs;
  }

  override commit<T>(fn: () => T): Promise<T> {
    if (this.dead) return silence();
    if (this.clock.now() < this.stallUntil) return new Promise<T>((resolve, reject) => this.held.push(() => void super.commit(fn).then(resolve, reject)));
    if (this.late) return this.commitLate(fn, this.late);
    return super.commit(fn);
  }

  private commitLate<T>(fn: () => T, [lo, hi]: readonly [number, number]): Promise<T> {
    const stamps = new Map(stampsOf(this.state).of);
    this.clock.setTimeout(() => this.land(fn, stamps), lo + Math.floor(this.random() * (hi - lo + 1)));
    return new Promise<T>((_, reject) => {
      this.clock.setTimeout(() => reject(new StoreUnavailableError('sim store: the commit was sent and no answer came in time; it may still land', { maybeApplied: true })), this.latencyMs[1]);
    });
  }

  /** A late commit lands, in one transaction of its own, unless a target it reads changed since `stamps`. */
  private land(fn: () => unknown, stamps: Map<string, number>): void {
    if (this.faults.unavailable || this.faults.busy || this.faults.io) return;
    this.guard = { stamps, compared: new Set() };
    this.landing = true;
    try {
      this.tx(() => fn());
    } catch (err) {
      if (!(err instanceof LateConflict) && !(err instanceof StoreUnavailableError)) throw err;
    } finally {
      this.guard = undefined;
      this.landing = false;
    }
  }

  /** A late commit reads `target`: the first read compares its stamp with the one it was decided on. */
  private compare(target: string): void {
    const g = this.guard;
    if (!g || g.compared.has(target)) return;
    g.compared.add(target);
    if ((stampsOf(this.state).of.get(target) ?? 0) !== (g.stamps.get(target) ?? 0)) throw new LateConflict(`${target} changed since the late commit was decided`);
  }

  override record(target: string): Promise<LockRecord | undefined> {
    return this.dead ? silence() : super.record(target);
  }

  override tombstones(target: string): Promise<Tombstone[]> {
    return this.dead ? silence() : super.tombstones(target);
  }

  /** An empty transaction, as the SQLite adapter's ping: fails while the store is busy, unavailable or failing. */
  ping(): Promise<void> {
    if (this.dead) return silence();
    try {
      this.tx(() => undefined);
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Settles even after a crash, so tearing down a simulation never waits on a dead instance. */
  async shutdown(): Promise<void> {}

  /** Every target's committed bytes, sorted by target (for a final check). */
  targets(): Array<{ target: string; data: Uint8Array }> {
    return [...this.state.targets].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([target, t]) => ({ target, data: t.buf.slice(0, t.size) }));
  }

  protected tx<T>(fn: (tx: Tx) => T): T {
    if (this.depth > 0) return this.savepoint(fn);
    if (this.dead && !this.landing) throw new StoreUnavailableError('sim store: the process holding it crashed');
    if (this.faults.unavailable) throw new StoreUnavailableError('sim store is unavailable');
    if (this.faults.busy) throw new StoreBusyError('sim store: SQLITE_BUSY: database is locked');
    this.depth = 1;
    try {
      const v = fn(this.txImpl);
      if (this.faults.io) throw new StoreUnavailableError('sim store: SQLITE_IOERR: disk I/O error at commit');
      this.undo.length = 0;
      return v;
    } catch (err) {
      this.rollback(0);
      throw err;
    } finally {
      this.depth = 0;
    }
  }

  /** A nested transaction: if `fn` throws, only what it did is undone. */
  private savepoint<T>(fn: (tx: Tx) => T): T {
    const mark = this.undo.length;
    this.depth++;
    try {
      return fn(this.txImpl);
    } catch (err) {
      this.rollback(mark);
      throw err;
    } finally {
      this.depth--;
    }
  }

  /** Undo every change after the first `mark` ones, newest first. */
  private rollback(mark: number): void {
    const undo = this.undo;
    for (let i = undo.length - 1; i >= mark; i--) undo[i]!();
    undo.length = mark;
  }

  /**
   * The rules of the lease model (SimLeaseOptions): open, resume, close and renew decide on whether
   * the target's lock key still hangs on a live lease, and move it with the record. Granting a lease
   * and keeping it alive are not part of the transaction (they are etcd calls of their own): a
   * transaction rolled back leaves them done; a lock key put or deleted is undone with it.
   */
  private leaseRules(o: SimLeaseOptions): Partial<SyncStore> {
    const shared = o.state;
    const fresh = o.fresh ?? true;
    const commitMs = this.busyWaitMs;
    const mine = new Map<string, SimLease>();
    const now = () => this.clock.now();
    const ttlOf = (ms: number) => (fresh ? leases.ttlSeconds(ms, commitMs, o.renewMs) : Math.max(1, Math.ceil(ms / 1000)));
    const alive = (id: number) => (shared.expiry.get(id) ?? -Infinity) > now();
    const grant = (key: string, ttl: number): SimLease => {
      const id = shared.nextId++;
      shared.expiry.set(id, now() + ttl * 1000);
      const l = { id, ttl, times: { ttlMs: ttl * 1000, sentAt: now(), answeredAt: now() } };
      mine.set(key, l);
      return l;
    };
    const keepAlive = (l: SimLease): boolean => {
      if (!alive(l.id)) return false;
      shared.expiry.set(l.id, now() + l.ttl * 1000);
      l.times = { ttlMs: l.ttl * 1000, sentAt: now(), answeredAt: now() };
      return true;
    };
    /** The session's lease for `ttl`, granted on first use or once surely lapsed. */
    const leaseOf = (session: string, ttl: number): { key: string; lease: SimLease } => {
      const key = `${session}/${ttl}`;
      let l = mine.get(key);
      if (l && leases.surelyLapsed(l.times, now())) mine.delete(key);
      l = mine.get(key) ?? grant(key, ttl);
      return { key, lease: l };
    };
    /** The lease a lock committed now goes on: kept alive first if it may lapse too soon; a lapsed one (etcd refuses it) replaced. */
    const carrier = ({ key, lease }: { key: string; lease: SimLease }): number => {
      if (fresh && !leases.canCarry(lease.times, now() + commitMs, o.renewMs) && keepAlive(lease)) return lease.id;
      return alive(lease.id) ? lease.id : grant(key, lease.ttl).id;
    };
    const live = (target: string) => {
      const id = shared.locks.get(target);
      return id !== undefined && alive(id);
    };
    const view = (tx: Tx, target: string): rules.TargetView => rules.viewOf(tx, target, live(target));
    const setLock = (target: string, id: number | undefined) => {
      const prev = shared.locks.get(target);
      this.undo.push(() => restore(shared.locks, target, prev));
      if (id === undefined) shared.locks.delete(target);
      else shared.locks.set(target, id);
    };
    /** Apply a decision, the lock key with the record: put on the session's lease, or deleted. */
    const apply = <T>(tx: Tx, target: string, d: rules.Decision<T>, lease: { key: string; lease: SimLease } | undefined): T => {
      for (const e of d.effects) {
        if (e.kind === 'put' && lease) setLock(target, carrier(lease));
        else if (e.kind === 'delete') setLock(target, undefined);
      }
      return rules.apply(tx, target, d);
    };
    return {
      open: (req) =>
        this.tx((tx) => {
          const lease = req.mode === 'write' ? leaseOf(req.session, ttlOf(req.leaseMs)) : undefined;
          return apply(tx, req.target, rules.decideOpen(view(tx, req.target), req, now(), tx.maxSize), lease);
        }),
      resume: (reqs) =>
        this.tx((tx) =>
          reqs.map((req) => {
            const lease = req.mode === 'write' ? leaseOf(req.session, ttlOf(req.leaseMs)) : undefined;
            return apply(tx, req.target, rules.decideResume(view(tx, req.target), req, now()), lease);
          }),
        ),
      close: (ref, session) => this.tx((tx) => apply(tx, ref.target, rules.decideClose(view(tx, ref.target), ref, session), undefined)),
      renew: (session, refs, leaseMs) =>
        this.tx((tx) => {
          if (refs.length === 0) return { lost: [] };
          // One keep-alive of the session's lease (a lapsed one is replaced), then the locks off it put back.
          const ttl = ttlOf(leaseMs);
          const key = `${session}/${ttl}`;
          const had = mine.get(key);
          if (had && !leases.surelyLapsed(had.times, now()) && !keepAlive(had)) {
            for (const k of [...mine.keys()]) if (k.startsWith(`${session}/`)) mine.delete(k);
          }
          const l = leaseOf(session, ttl);
          const lost: Array<NonNullable<ReturnType<typeof rules.decideRenew>['out']>> = [];
          for (const ref of refs) {
            const v = view(tx, ref.target);
            const rec = v.record;
            const held = rec?.requestId === ref.requestId && rec.session === session;
            if (held && v.live && shared.locks.get(ref.target) === l.lease.id) continue;
            const out = apply(tx, ref.target, rules.decideRenew(v, ref, session, now() + leaseMs), held ? l : undefined);
            if (out) lost.push(out);
          }
          return { lost };
        }),
    };
  }

  /**
   * The rules' view of the shared state (MemoryStore's), logging how to undo each change. Stored
   * records and tombstone lists are replaced, never changed in place, so undoing one puts the old
   * object back; a target's bytes are changed in place, so undoing a write copies back only the
   * bytes it overwrote (a write that grows the buffer leaves the old one as it was, and the undo
   * entry puts it back).
   */
  private makeTx(): Tx {
    const { records, tombstones, targets } = this.state;
    const undo = this.undo;
    const base = memoryTx(this.state);
    const stamps = stampsOf(this.state);
    /** The target changed: a new stamp, put back if the change is undone. */
    const changed = (t: string) => {
      const prev = stamps.of.get(t);
      stamps.of.set(t, ++stamps.next);
      undo.push(() => restore(stamps.of, t, prev));
    };
    const read = <A extends unknown[], R>(f: (t: string, ...rest: A) => R) => (t: string, ...rest: A): R => {
      this.compare(t);
      return f(t, ...rest);
    };
    return {
      ...base,
      getRecord: read(base.getRecord),
      getTombstones: read(base.getTombstones),
      version: read(base.version),
      size: read(base.size),
      fixedSize: read(base.fixedSize),
      readData: read(base.readData),
      getAccess: read(base.getAccess),
      putAccess: (t, a) => {
        const owners = (this.state.access ??= new Map());
        const prev = owners.get(t);
        undo.push(() => restore(owners, t, prev));
        changed(t);
        base.putAccess(t, a);
      },
      putRecord: (r) => {
        const target = r.target;
        const prev = records.get(target);
        undo.push(() => restore(records, target, prev));
        changed(target);
        base.putRecord(r);
      },
      deleteRecord: (t) => {
        const prev = records.get(t);
        if (!prev) return;
        undo.push(() => records.set(t, prev));
        changed(t);
        base.deleteRecord(t);
      },
      putTombstones: (t, list) => {
        const prev = tombstones.get(t);
        undo.push(() => restore(tombstones, t, prev));
        changed(t);
        base.putTombstones(t, list);
      },
      writeData: (t, offset, data) => {
        const cur = targets.get(t);
        undo.push(cur ? undoWrite(cur, offset, offset + data.length) : () => targets.delete(t));
        changed(t);
        return base.writeData(t, offset, data);
      },
      fixSize: (t, size) => {
        const cur = targets.get(t);
        if (cur) {
          const { size: was, fixed } = cur;
          undo.push(() => Object.assign(cur, { size: was, fixed }));
        } else undo.push(() => targets.delete(t));
        changed(t);
        base.fixSize(t, size);
      },
    };
  }
}

function restore<V>(map: Map<string, V>, key: string, prev: V | undefined): void {
  if (prev === undefined) map.delete(key);
  else map.set(key, prev);
}

/**
 * How to undo a write of [offset, end) to `cur`: its buffer, size and version as they are now, and
 * the bytes it is about to overwrite. Bytes past a target's size are always zero, so the part of the
 * write past the current size is undone by zeroing it, without copying.
 */
function undoWrite(cur: TargetState, offset: number, end: number): () => void {
  const { buf, size, version } = cur;
  const keepTo = Math.min(end, size);
  const saved = offset < keepTo ? buf.slice(offset, keepTo) : undefined;
  return () => {
    if (cur.buf !== buf) cur.buf = buf;
    else {
      if (saved) buf.set(saved, offset);
      const zeroFrom = Math.max(offset, size);
      const zeroTo = Math.min(end, buf.length);
      if (zeroTo > zeroFrom) buf.fill(0, zeroFrom, zeroTo);
    }
    cur.size = size;
    cur.version = version;
  };
}
