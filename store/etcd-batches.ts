/**
 * The etcd store's batches: rules queued by target, decided together on one read (or on what this
 * store last committed), and committed in one etcd transaction, each group of targets in a nested
 * transaction guarded by the revisions read; a commit whose answer is lost is found by its marks.
 */
import type { ICompare, IRequestOp } from 'etcd3/lib/rpc.js';
import * as rules from './rules.js';
import { LeaseLost, MAX_ATTEMPTS } from './etcd-connection.js';
import { ABSENT, prefixEnd, type TargetState } from './etcd-keys.js';
import { EtcdTargets, MAX_TXN_OPS } from './etcd-targets.js';
import { StoreUnavailableError, type Decided } from './types.js';

/**
 * Groups in one batch, each a nested transaction of its commit guarded by its own compares: so a node's
 * resume of 1,000 handles is 3 commits, not 34.
 */
export const MAX_BATCH_GROUPS = 16;
/**
 * Compares, and writes, of one group: etcd counts a nested transaction's operations together with those of
 * the transactions around it (at most 128 along the way), so a group has what the groups beside it leave.
 */
export const MAX_GROUP_OPS = MAX_TXN_OPS - MAX_BATCH_GROUPS;
/** Targets in a batch of one group (each costs up to 4 compares), and in a group of a batch of several. */
export const MAX_BATCH_TARGETS = 30;
export const MAX_GROUP_TARGETS = Math.floor(MAX_GROUP_OPS / 4);
/** Bytes of data in one batch (etcd's default request limit is 1.5 MiB). */
export const MAX_BATCH_BYTES = 1024 * 1024;
/** Targets whose last known state a store keeps, to decide without reading first. */
export const CACHE_TARGETS = 4096;
/** Batches in flight at once (on different targets). */
export const MAX_INFLIGHT_BATCHES = 4;

export { MAX_TXN_OPS };

/** One rule waiting to be decided. */
export interface Item {
  target: string;
  decide: (s: TargetState) => rules.Decision<unknown>;
  /** Grants a lock: the lease its lock key goes on (lease mode). */
  grant?: { session: string; ttl: number } | undefined;
  /** Pages a write needs read first (it covers them partly). */
  pages: number[];
  /** Puts it makes for its pages (a page: its data or deletion, and its version). */
  touch: number;
  /** Data bytes it writes. */
  bytes: number;
  /** The decision as the log sees it. */
  decided: (out: unknown) => Decided;
  resolve: (out: unknown) => void;
  reject: (err: unknown) => void;
}

/** The store's connection and leases, and the queue that decides and commits its rules in batches. */
export class EtcdBatches extends EtcdTargets {
  /** The items waiting, by target, the targets in the order their first item came. */
  protected readonly queue = new Map<string, Item[]>();
  /** What each recently used target was when this store last read or committed it. */
  protected readonly cache = new Map<string, TargetState>();
  protected readonly busy = new Set<string>();
  protected inflight = 0;
  protected scheduled = false;
  protected logSeq = 0;
  protected commitSeq = 0;
  /** Commit-mark slots, one per batch in flight. */
  protected readonly slots = Array.from({ length: MAX_INFLIGHT_BATCHES }, (_, i) => i);
  protected readonly logId = Math.random().toString(36).slice(2, 10);

  protected enqueue<T>(item: Omit<Item, 'resolve' | 'reject'>): Promise<T> {
    if (!this.layoutOk) return this.ready().then(() => this.enqueue<T>(item));
    return new Promise<T>((resolve, reject) => {
      const it: Item = { ...item, resolve: resolve as (out: unknown) => void, reject };
      const waiting = this.queue.get(it.target);
      if (waiting) waiting.push(it);
      else this.queue.set(it.target, [it]);
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => {
          this.scheduled = false;
          this.pump();
        });
      }
    });
  }

  /**
   * Start batches of the queued items whose targets no running batch holds. While the batches that may
   * start can take every target waiting one group each, a batch is one group (as many items as one etcd
   * transaction takes), so the targets spread over batches in flight at once; with more waiting, a batch
   * takes up to MAX_BATCH_GROUPS groups (a resume of 1,000 handles: 3 commits, not 34).
   */
  protected pump(): void {
    while (this.inflight < MAX_INFLIGHT_BATCHES && this.queue.size > 0) {
      const groups: Item[][] = [];
      const targets = new Set<string>();
      const many = this.queue.size > (MAX_INFLIGHT_BATCHES - this.inflight) * MAX_BATCH_TARGETS;
      const limits = many
        ? { targets: MAX_GROUP_TARGETS, ops: MAX_GROUP_OPS }
        : { targets: MAX_BATCH_TARGETS, ops: MAX_TXN_OPS };
      let bytes = 0;
      while (groups.length < (many ? MAX_BATCH_GROUPS : 1)) {
        const group = this.group(targets, groups.length === 0, MAX_BATCH_BYTES - bytes, limits);
        if (!group) break;
        groups.push(group.items);
        bytes += group.bytes;
        // A large write alone goes alone: its pages need the room of a whole transaction.
        if (group.ops > limits.ops) break;
      }
      if (groups.length === 0) return;
      for (const t of targets) this.busy.add(t);
      this.inflight++;
      const slot = this.slots.pop()!;
      void this.runBatch(groups, slot).finally(() => {
        for (const t of targets) this.busy.delete(t);
        this.slots.push(slot);
        this.inflight--;
        this.pump();
      });
    }
  }

  /**
   * Take one group off the queue (its targets added to `targets`): at most `limits` targets, and compares
   * and writes, MAX_TXN_OPS reads, `bytesLeft` bytes of data. Targets in the order their first
   * item came; a target's items in their order (they decide in order), and one left behind keeps all its
   * later items behind too. Only the targets taken are walked past (and those a running batch holds).
   */
  protected group(
    targets: Set<string>,
    first: boolean,
    bytesLeft: number,
    limits: { targets: number; ops: number },
  ): { items: Item[]; bytes: number; ops: number } | undefined {
    const items: Item[] = [];
    let count = 0;
    let ops = 0;
    let reads = 0;
    let bytes = 0;
    for (const [target, waiting] of this.queue) {
      // Puts: the target's own keys once (r, t, v, l), its pages, its log lines.
      if (count >= limits.targets || ops + 4 + (this.log ? 2 : 0) > limits.ops) break;
      if (this.busy.has(target) || targets.has(target)) continue;
      let took = 0;
      for (const it of waiting) {
        const fresh = took === 0;
        const cost = (fresh ? 4 : 0) + it.touch + (this.log ? 2 : 0);
        // The first item of a batch always goes (a large write alone; its pages go in nested transactions).
        const fits =
          (first && items.length === 0) ||
          (ops + cost <= limits.ops &&
            reads + (fresh ? 1 : 0) + it.pages.length <= MAX_TXN_OPS &&
            bytes + it.bytes <= bytesLeft);
        if (!fits) break;
        items.push(it);
        took++;
        ops += cost;
        reads += (fresh ? 1 : 0) + it.pages.length;
        bytes += it.bytes;
      }
      if (took === 0) continue;
      targets.add(target);
      count++;
      if (took === waiting.length) this.queue.delete(target);
      else waiting.splice(0, took);
    }
    return items.length > 0 ? { items, bytes, ops } : undefined;
  }

  protected async runBatch(groups: Item[][], slot: number): Promise<void> {
    let left = groups;
    this.stats.items += left.reduce((n, g) => n + g.length, 0);
    try {
      // Decided on what this store last committed (no read), then the groups whose compares failed on a
      // fresh read.
      left = await this.attempt(left, slot);
      if (left.length > 0) left = await this.attempt(left, slot, true);
      if (left.length === 0) return;
    } catch (err) {
      if (!(err instanceof LeaseLost)) {
        for (const it of left.flat()) it.reject(err);
        return;
      }
      this.forgetLeases();
    }
    // A compare failed (another replica changed a target) or a lease lapsed: each item alone, in order.
    for (const it of left.flat()) {
      try {
        let done = false;
        for (let i = 1; i < MAX_ATTEMPTS && !done; i++) {
          try {
            done = (await this.attempt([[it]], slot, true)).length === 0;
          } catch (err) {
            if (!(err instanceof LeaseLost)) throw err;
            this.forgetLeases(it.grant?.session);
          }
        }
        if (!done) throw new StoreUnavailableError(`etcd: ${it.target} kept changing under ${MAX_ATTEMPTS} attempts`);
      } catch (err) {
        it.reject(err);
      }
    }
  }

  /**
   * Decide and commit a batch once: each group's compares and writes in one etcd transaction (one group)
   * or in one nested transaction of it each (several: they commit together, each group only if its own
   * compares hold). Settles the items of the groups that committed and returns the others (their
   * compares failed); nothing is settled when it throws. A target this store committed last is decided
   * on what it committed (no read; the commit's compares check that nothing changed since), others are
   * read first; `fresh` reads them all.
   */
  protected async attempt(groups: Item[][], slot: number, fresh = false): Promise<Item[][]> {
    const batch = groups.flat();
    const grants = new Map<Item, string>();
    /** The leases this commit puts locks on (by key), each with the id it uses. */
    const used = new Map<string, string>();
    const targets = [...new Set(batch.map((it) => it.target))];
    const known = fresh ? [] : targets.filter((t) => this.cache.has(t));
    const toRead = targets.filter((t) => fresh || !this.cache.has(t));
    const wantPages = batch.flatMap((it) => it.pages.map((p) => [it.target, p] as const));
    // The sessions' leases and the reads at once (a new session's first resume waits for both).
    const [, read] = await Promise.all([
      this.leaseMode
        ? Promise.all(
            batch
              .filter((it) => it.grant)
              .map(async (it) => grants.set(it, await this.leaseOf(it.grant!.session, it.grant!.ttl))),
          )
        : undefined,
      toRead.length > 0 || wantPages.length > 0
        ? this.readMany(toRead, wantPages)
        : { states: new Map<string, TargetState>(), pages: new Map<string, Uint8Array>() },
    ]);
    const st = new Map<string, TargetState>();
    for (const t of targets) st.set(t, read.states.get(t) ?? { ...this.cache.get(t)! });
    const pages = read.pages;
    const plans = groups.map((items) => {
      const ops = new Map<string, IRequestOp>();
      const outs: unknown[] = [];
      const lines: string[] = [];
      for (const it of items) {
        const s = st.get(it.target)!;
        const d = it.decide(s);
        outs.push(d.out);
        const lease = grants.get(it);
        if (lease !== undefined && it.grant && d.effects.some((e) => e.kind === 'put'))
          used.set(`${it.grant.session}/${it.grant.ttl}`, lease);
        this.effects(it, s, d.effects, lease, ops, pages);
        if (this.log) lines.push(...this.log(it.decided(d.out)));
      }
      return { items, ops, outs, lines, targets: [...new Set(items.map((it) => it.target))] };
    });
    if (known.length === 0 && plans.every((g) => g.ops.size === 0 && g.lines.length === 0)) {
      // Nothing to write: each decision stands on its target's consistent read.
      for (const [t, state] of read.states) this.remember(t, state);
      for (const g of plans) g.items.forEach((it, i) => it.resolve(g.outs[i]));
      return [];
    }
    // A mark per group of this commit: if its answer is lost (or the client sent it again), the marks say
    // which groups landed.
    const mark = `${this.logId}-${++this.commitSeq}`;
    const marks = `${this.prefix}c/${this.logId}/${slot}/`;
    const txns = plans.map((g, i) => {
      for (const line of g.lines) {
        const key = `${this.prefix}h/${this.logId}/${String(++this.logSeq).padStart(12, '0')}`;
        g.ops.set(key, { request_put: { key: Buffer.from(key), value: Buffer.from(line) } });
      }
      const compare: ICompare[] = [];
      for (const target of g.targets) {
        const s = st.get(target)!;
        // The tombstones too: a record can come and go (its revision back to none) while they change.
        compare.push(
          this.modIs(this.k(target, 'r'), s.r.mod),
          this.modIs(this.k(target, 'v'), s.v.mod),
          this.modIs(this.k(target, 't'), s.t.mod),
        );
        if (this.leaseMode) compare.push(this.modIs(this.k(target, 'l'), s.l.mod));
      }
      const markKey = `${marks}${i}`;
      g.ops.set(markKey, { request_put: { key: Buffer.from(markKey), value: Buffer.from(mark) } });
      // More puts than etcd takes in one transaction go in nested transactions of the same one.
      const all = [...g.ops.values()];
      const success: IRequestOp[] = [];
      if (all.length <= MAX_TXN_OPS) success.push(...all);
      else
        for (let j = 0; j < all.length; j += MAX_TXN_OPS)
          success.push({ request_txn: { compare: [], success: all.slice(j, j + MAX_TXN_OPS), failure: [] } });
      return { compare, success };
    });
    // No lock goes on a lease that may lapse before the session's next renewal can keep it alive.
    if (used.size > 0) await this.leasesFresh(used);
    this.stats.commits++;
    let revs: Array<string | undefined>;
    try {
      if (txns.length === 1) {
        const res = await this.txn('transaction', txns[0]!.compare, txns[0]!.success);
        revs = [res.succeeded ? res.revision : undefined];
      } else {
        const nested = txns.map((t): IRequestOp => ({ request_txn: { ...t, failure: [] } }));
        const res = await this.txn('transaction', [], nested, true);
        revs = txns.map((_, i) => (res.responses[i]?.response_txn?.succeeded ? res.revision : undefined));
      }
    } catch (err) {
      for (const t of targets) this.cache.delete(t);
      if (!(err instanceof StoreUnavailableError)) throw err;
      // No answer: it may have landed all the same (then the groups without their mark failed their compares).
      const landed = await this.landed(marks, mark).catch(() => undefined);
      if (!landed?.size) throw err;
      revs = txns.map((_, i) => landed.get(`${marks}${i}`));
    }
    if (revs.some((r) => r === undefined)) {
      // A compare fails against this very commit when it landed on an earlier try: then it stands.
      // Not knowing whether it did, the commit may have been applied.
      const landed = await this.landed(marks, mark).catch((err: unknown) => {
        throw new StoreUnavailableError(`etcd transaction: whether it landed is unknown (${(err as Error).message})`, {
          maybeApplied: true,
        });
      });
      revs = revs.map((r, i) => r ?? landed.get(`${marks}${i}`));
    }
    const failed: Item[][] = [];
    plans.forEach((g, i) => {
      const revision = revs[i];
      if (revision === undefined) {
        this.stats.conflicts++;
        for (const t of g.targets) this.cache.delete(t);
        failed.push(g.items);
        return;
      }
      // What the target is now: the keys put carry the commit's revision.
      for (const t of g.targets) {
        const state = st.get(t)!;
        for (const part of ['r', 't', 'v', 'l'] as const) {
          const op = g.ops.get(this.k(t, part));
          if (op?.request_put)
            state[part] = { value: op.request_put.value, mod: revision, lease: String(op.request_put.lease ?? '0') };
          else if (op?.request_delete_range) state[part] = ABSENT;
        }
        this.remember(t, state);
      }
    });
    for (const [i, g] of plans.entries()) if (revs[i] !== undefined) g.items.forEach((it, j) => it.resolve(g.outs[j]));
    return failed;
  }

  /** The revision at which each group of the commit marked `mark` landed, by its mark's key (those that did). */
  protected async landed(marks: string, mark: string): Promise<Map<string, string>> {
    const r = await this.txn('read', [], [{ request_range: { key: Buffer.from(marks), range_end: prefixEnd(marks) } }]);
    const out = new Map<string, string>();
    for (const kv of r.responses[0]?.response_range?.kvs ?? [])
      if (kv.value.toString() === mark) out.set(kv.key.toString(), kv.mod_revision);
    return out;
  }

  /** Keep a target's state as last read or committed (the most recent CACHE_TARGETS targets). */
  protected remember(target: string, state: TargetState): void {
    this.cache.delete(target);
    this.cache.set(target, state);
    if (this.cache.size > CACHE_TARGETS) this.cache.delete(this.cache.keys().next().value!);
  }
}
