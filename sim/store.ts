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
import { StoreBusyError, TxStore } from '../store/base.js';
import type { MemoryState } from '../store/memory.js';
import type { Tx } from '../store/rules.js';
import { StoreUnavailableError, type LockRecord, type Tombstone } from '../store/types.js';
import { leaseRules, type SimLeaseOptions } from './store-leases.js';
import { stampsOf, undoableTx } from './store-undo.js';

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

export { newLeaseState, type SimLeaseOptions, type SimLeaseState } from './store-leases.js';

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

/** Never settles: what a dead process answers. */
const silence = <T>(): Promise<T> => new Promise<T>(() => {});

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
    this.txImpl = undoableTx(this.state, this.undo, (t) => this.compare(t));
    if (opts.leases)
      Object.assign(
        this.sync,
        leaseRules(opts.leases, {
          tx: (fn) => this.tx(fn),
          now: () => this.clock.now(),
          commitMs: this.busyWaitMs,
          undo: this.undo,
        }),
      );
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
    if (this.clock.now() < this.stallUntil)
      return new Promise<T>((resolve, reject) => this.held.push(() => void super.commit(fn).then(resolve, reject)));
    if (this.late) return this.commitLate(fn, this.late);
    return super.commit(fn);
  }

  private commitLate<T>(fn: () => T, [lo, hi]: readonly [number, number]): Promise<T> {
    const stamps = new Map(stampsOf(this.state).of);
    this.clock.setTimeout(() => this.land(fn, stamps), lo + Math.floor(this.random() * (hi - lo + 1)));
    return new Promise<T>((_, reject) => {
      this.clock.setTimeout(
        () =>
          reject(
            new StoreUnavailableError('sim store: the commit was sent and no answer came in time; it may still land', {
              maybeApplied: true,
            }),
          ),
        this.latencyMs[1],
      );
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
    if ((stampsOf(this.state).of.get(target) ?? 0) !== (g.stamps.get(target) ?? 0))
      throw new LateConflict(`${target} changed since the late commit was decided`);
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
      // eslint-disable-next-line @typescript-eslint/prefer-promise-reject-errors -- what the transaction threw, passed on as it is
      return Promise.reject(err);
    }
  }

  /** Settles even after a crash, so tearing down a simulation never waits on a dead instance. */
  async shutdown(): Promise<void> {}

  /** Every target's committed bytes, sorted by target (for a final check). */
  targets(): Array<{ target: string; data: Uint8Array }> {
    return [...this.state.targets]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([target, t]) => ({ target, data: t.buf.slice(0, t.size) }));
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
}
