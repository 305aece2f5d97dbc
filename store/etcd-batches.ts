/**
 * The etcd store's batches: rules queued by target, decided together on one read (or on what this
 * store last committed), and committed in one etcd transaction guarded by the revisions read; a commit
 * whose answer is lost is found by its mark.
 */
import type { ICompare, IRequestOp } from 'etcd3/lib/rpc.js';
import * as rules from './rules.js';
import { LeaseLost, MAX_ATTEMPTS } from './etcd-connection.js';
import { ABSENT, PAGE, enc, json, metaOf, prefixEnd, type Kv, type Meta, type TargetState } from './etcd-keys.js';
import { EtcdLeases } from './etcd-leases.js';
import { StoreUnavailableError, isZeroPage, type Decided, type LockRecord, type Tombstone } from './types.js';

/** etcd's default --max-txn-ops is 128: a batch stays below it in compares, reads and writes. */
export const MAX_TXN_OPS = 120;
/** Targets in one batch (each costs up to 4 compares). */
export const MAX_BATCH_TARGETS = 30;
/** Bytes of data in one batch (etcd's default request limit is 1.5 MiB). */
export const MAX_BATCH_BYTES = 1024 * 1024;
/** Targets whose last known state a store keeps, to decide without reading first. */
export const CACHE_TARGETS = 4096;
/** Batches in flight at once (on different targets). */
export const MAX_INFLIGHT_BATCHES = 4;

/** One rule waiting to be decided. */
export interface Item {
  target: string;
  decide: (s: TargetState) => rules.Decision<unknown>;
  /** Grants a lock: the lease its lock key goes on (lease mode). */
  grant?: { session: string; ttl: number } | undefined;
  /** Pages a write needs read first (it covers them partly). */
  pages: number[];
  /** Pages it writes. */
  touch: number;
  /** Data bytes it writes. */
  bytes: number;
  /** The decision as the log sees it. */
  decided: (out: unknown) => Decided;
  resolve: (out: unknown) => void;
  reject: (err: unknown) => void;
}

/** The store's connection and leases, and the queue that decides and commits its rules in batches. */
export class EtcdBatches extends EtcdLeases {
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

  /** Start batches of the queued items whose targets no running batch holds. */
  protected pump(): void {
    while (this.inflight < MAX_INFLIGHT_BATCHES && this.queue.size > 0) {
      const batch: Item[] = [];
      const targets = new Set<string>();
      let ops = 0;
      let reads = 0;
      let bytes = 0;
      // Targets in the order their first item came; a target's items in their order (they decide in order),
      // and one left behind keeps all its later items behind too. Only the targets taken are walked past
      // (and those a running batch holds), not the whole queue.
      for (const [target, items] of this.queue) {
        // Puts: the target's own keys once (r, t, v, l), its pages, its log lines.
        if (targets.size >= MAX_BATCH_TARGETS || ops + 4 + (this.log ? 2 : 0) > MAX_TXN_OPS) break;
        if (this.busy.has(target)) continue;
        let took = 0;
        for (const it of items) {
          const fresh = took === 0;
          const cost = (fresh ? 4 : 0) + it.touch + (this.log ? 2 : 0);
          // The first item always goes (a large write alone; its pages go in nested transactions).
          const fits =
            batch.length === 0 ||
            (ops + cost <= MAX_TXN_OPS &&
              reads + (fresh ? 1 : 0) + it.pages.length <= MAX_TXN_OPS &&
              bytes + it.bytes <= MAX_BATCH_BYTES);
          if (!fits) break;
          batch.push(it);
          took++;
          ops += cost;
          reads += (fresh ? 1 : 0) + it.pages.length;
          bytes += it.bytes;
        }
        if (took === 0) continue;
        targets.add(target);
        if (took === items.length) this.queue.delete(target);
        else items.splice(0, took);
      }
      if (batch.length === 0) return;
      for (const t of targets) this.busy.add(t);
      this.inflight++;
      const slot = this.slots.pop()!;
      void this.runBatch(batch, slot).finally(() => {
        for (const t of targets) this.busy.delete(t);
        this.slots.push(slot);
        this.inflight--;
        this.pump();
      });
    }
  }

  protected async runBatch(batch: Item[], slot: number): Promise<void> {
    this.stats.items += batch.length;
    try {
      // Decided on what this store last committed (no read), then, if that was stale, on a fresh read.
      if ((await this.attempt(batch, slot)) || (await this.attempt(batch, slot, true))) return;
    } catch (err) {
      if (!(err instanceof LeaseLost)) {
        for (const it of batch) it.reject(err);
        return;
      }
      this.forgetLeases();
    }
    // A compare failed (another replica changed a target) or a lease lapsed: each item alone, in order.
    for (const it of batch) {
      try {
        let done = false;
        for (let i = 1; i < MAX_ATTEMPTS && !done; i++) {
          try {
            done = await this.attempt([it], slot, true);
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
   * Decide and commit a batch once; false if a compare failed. Settles the items on success. A target
   * this store committed last is decided on what it committed (no read; the commit's compares check
   * that nothing changed since), others are read first; `fresh` reads them all.
   */
  protected async attempt(batch: Item[], slot: number, fresh = false): Promise<boolean> {
    const grants = new Map<Item, string>();
    if (this.leaseMode) {
      await Promise.all(
        batch
          .filter((it) => it.grant)
          .map(async (it) => grants.set(it, await this.leaseOf(it.grant!.session, it.grant!.ttl))),
      );
    }
    /** The leases this commit puts locks on (by key), each with the id it uses. */
    const used = new Map<string, string>();
    const targets = [...new Set(batch.map((it) => it.target))];
    const known = fresh ? [] : targets.filter((t) => this.cache.has(t));
    const toRead = targets.filter((t) => fresh || !this.cache.has(t));
    const wantPages = batch.flatMap((it) => it.pages.map((p) => [it.target, p] as const));
    const read =
      toRead.length > 0 || wantPages.length > 0
        ? await this.readTargets(toRead, wantPages)
        : { states: new Map<string, TargetState>(), pages: new Map<string, Uint8Array>() };
    const st = new Map<string, TargetState>();
    for (const t of targets) st.set(t, read.states.get(t) ?? { ...this.cache.get(t)! });
    const pages = read.pages;
    const ops = new Map<string, IRequestOp>();
    const outs: unknown[] = [];
    const lines: string[] = [];
    for (const it of batch) {
      const s = st.get(it.target)!;
      const d = it.decide(s);
      outs.push(d.out);
      const lease = grants.get(it);
      if (lease !== undefined && it.grant && d.effects.some((e) => e.kind === 'put'))
        used.set(`${it.grant.session}/${it.grant.ttl}`, lease);
      this.effects(it, s, d.effects, lease, ops, pages);
      if (this.log) lines.push(...this.log(it.decided(d.out)));
    }
    if (ops.size === 0 && lines.length === 0 && known.length === 0) {
      // Nothing to write: the decisions stand on one consistent read.
      for (const [t, state] of read.states) this.remember(t, state);
      batch.forEach((it, i) => it.resolve(outs[i]));
      return true;
    }
    for (const line of lines) {
      const key = `${this.prefix}h/${this.logId}/${String(++this.logSeq).padStart(12, '0')}`;
      ops.set(key, { request_put: { key: Buffer.from(key), value: Buffer.from(line) } });
    }
    const compare: ICompare[] = [];
    for (const [target, s] of st) {
      // The tombstones too: a record can come and go (its revision back to none) while they change.
      compare.push(
        this.modIs(this.k(target, 'r'), s.r.mod),
        this.modIs(this.k(target, 'v'), s.v.mod),
        this.modIs(this.k(target, 't'), s.t.mod),
      );
      if (this.leaseMode) compare.push(this.modIs(this.k(target, 'l'), s.l.mod));
    }
    // A mark of this commit: if its answer is lost (or the client sent it again), the mark says whether it landed.
    const mark = `${this.logId}-${++this.commitSeq}`;
    const markKey = `${this.prefix}c/${this.logId}/${slot}`;
    ops.set(markKey, { request_put: { key: Buffer.from(markKey), value: Buffer.from(mark) } });
    // More puts than etcd takes in one transaction go in nested transactions of the same one.
    const all = [...ops.values()];
    const success: IRequestOp[] = [];
    if (all.length <= MAX_TXN_OPS) success.push(...all);
    else
      for (let i = 0; i < all.length; i += MAX_TXN_OPS)
        success.push({ request_txn: { compare: [], success: all.slice(i, i + MAX_TXN_OPS), failure: [] } });
    // No lock goes on a lease that may lapse before the session's next renewal can keep it alive.
    if (used.size > 0) await this.leasesFresh(used);
    this.stats.commits++;
    let res: { succeeded: boolean; revision: string } | undefined;
    try {
      res = await this.txn('transaction', compare, success);
    } catch (err) {
      for (const t of targets) this.cache.delete(t);
      if (!(err instanceof StoreUnavailableError)) throw err;
      // No answer: it may have landed all the same.
      const landed = await this.landed(markKey, mark).catch(() => undefined);
      if (!landed) throw err;
      res = { succeeded: true, revision: landed };
    }
    if (!res.succeeded) {
      for (const t of targets) this.cache.delete(t);
      // A compare fails against this very commit when it landed on an earlier try: then it stands.
      // Not knowing whether it did, the commit may have been applied.
      const landed = await this.landed(markKey, mark).catch((err: unknown) => {
        throw new StoreUnavailableError(`etcd transaction: whether it landed is unknown (${(err as Error).message})`, {
          maybeApplied: true,
        });
      });
      if (!landed) {
        this.stats.conflicts++;
        return false;
      }
      res = { succeeded: true, revision: landed };
    }
    // What the target is now: the keys put carry the commit's revision.
    for (const [t, state] of st) {
      for (const part of ['r', 't', 'v', 'l'] as const) {
        const op = ops.get(this.k(t, part));
        if (op?.request_put)
          state[part] = {
            value: op.request_put.value,
            mod: res.revision,
            lease: String(op.request_put.lease ?? '0'),
          };
        else if (op?.request_delete_range) state[part] = ABSENT;
      }
      this.remember(t, state);
    }
    batch.forEach((it, i) => it.resolve(outs[i]));
    return true;
  }

  /** The revision at which the commit marked `mark` landed, if it did. */
  protected async landed(markKey: string, mark: string): Promise<string | undefined> {
    const r = await this.txn('read', [], [{ request_range: { key: Buffer.from(markKey) } }]);
    const kv = r.responses[0]?.response_range?.kvs?.[0];
    return kv && kv.value.toString() === mark ? kv.mod_revision : undefined;
  }

  /** Keep a target's state as last read or committed (the most recent CACHE_TARGETS targets). */
  protected remember(target: string, state: TargetState): void {
    this.cache.delete(target);
    this.cache.set(target, state);
    if (this.cache.size > CACHE_TARGETS) this.cache.delete(this.cache.keys().next().value!);
  }

  /** Read every key of `targets` and the listed pages in one transaction (one revision). */
  protected async readTargets(
    targets: string[],
    wantPages: ReadonlyArray<readonly [string, number]>,
  ): Promise<{ states: Map<string, TargetState>; pages: Map<string, Uint8Array> }> {
    const success: IRequestOp[] = targets.map((t) => {
      const p = `${this.prefix}k/${enc(t)}/`;
      return { request_range: { key: Buffer.from(p), range_end: prefixEnd(p) } };
    });
    const pageKeys = [...new Set(wantPages.map(([t, p]) => this.d(t, p)))];
    for (const key of pageKeys) success.push({ request_range: { key: Buffer.from(key) } });
    this.stats.reads++;
    const res = await this.txn('read', [], success);
    const states = new Map<string, TargetState>();
    targets.forEach((t, i) => {
      const kvs = new Map<string, Kv>();
      for (const kv of res.responses[i]?.response_range?.kvs ?? [])
        kvs.set(kv.key.toString(), { value: kv.value, mod: kv.mod_revision, lease: kv.lease });
      const get = (part: 'r' | 't' | 'v' | 'l') => kvs.get(this.k(t, part)) ?? ABSENT;
      const r = get('r');
      const v = get('v');
      const l = get('l');
      const meta = json<Meta>(v, { version: 0, size: 0 });
      const access = meta.owner !== undefined ? { owner: meta.owner, grants: meta.grants ?? [] } : undefined;
      states.set(t, {
        r,
        t: get('t'),
        v,
        l,
        record: json<LockRecord | undefined>(r, undefined),
        tombstones: json<Tombstone[]>(get('t'), []),
        version: meta.version,
        size: meta.size,
        fixed: meta.fixed ?? 0,
        access,
        live: l.value !== undefined,
        lockLease: l.lease,
      });
    });
    const pages = new Map<string, Uint8Array>();
    pageKeys.forEach((key, j) => {
      const kv = res.responses[targets.length + j]?.response_range?.kvs?.[0];
      if (kv) pages.set(key, new Uint8Array(kv.value));
    });
    return { states, pages };
  }

  /** Turn a decision's effects into puts and deletes (the last per key wins), and update the batch's view. */
  protected effects(
    it: Item,
    s: TargetState,
    effects: rules.Effect[],
    lease: string | undefined,
    ops: Map<string, IRequestOp>,
    pages: Map<string, Uint8Array>,
  ): void {
    const put = (key: string, value: Buffer, lease?: string) =>
      ops.set(key, { request_put: { key: Buffer.from(key), value, ...(lease ? { lease } : {}) } });
    const del = (key: string) => ops.set(key, { request_delete_range: { key: Buffer.from(key) } });
    const target = it.target;
    for (const e of effects) {
      if (e.kind === 'put') {
        s.record = e.record;
        put(this.k(target, 'r'), Buffer.from(JSON.stringify(e.record)));
        if (this.leaseMode && lease !== undefined) {
          put(this.k(target, 'l'), Buffer.from(e.record.session), lease);
          s.live = true;
          s.lockLease = lease;
        }
      } else if (e.kind === 'delete') {
        s.record = undefined;
        del(this.k(target, 'r'));
        if (this.leaseMode) {
          del(this.k(target, 'l'));
          s.live = false;
          s.lockLease = '0';
        }
      } else if (e.kind === 'tombstones') {
        s.tombstones = e.tombstones;
        put(this.k(target, 't'), Buffer.from(JSON.stringify(e.tombstones)));
      } else if (e.kind === 'access') {
        s.access = e.access;
        put(this.k(target, 'v'), metaOf(s));
      } else if (e.kind === 'size') {
        s.fixed = e.size;
        s.size = Math.max(s.size, e.size);
        put(this.k(target, 'v'), metaOf(s));
      } else {
        const end = e.offset + e.data.length;
        for (let page = Math.floor(e.offset / PAGE); page * PAGE < end; page++) {
          const start = page * PAGE;
          const from = Math.max(e.offset, start);
          const to = Math.min(end, start + PAGE);
          const key = this.d(target, page);
          let bytes: Uint8Array;
          if (from === start && to === start + PAGE) bytes = e.data.subarray(from - e.offset, to - e.offset);
          else {
            const old = pages.get(key);
            bytes = new Uint8Array(Math.max(to - start, old?.length ?? 0));
            if (old) bytes.set(old);
            bytes.set(e.data.subarray(from - e.offset, to - e.offset), from - start);
          }
          // A page left all zeros is deleted (it reads as zeros, as one never written does).
          if (isZeroPage(bytes)) {
            pages.delete(key);
            del(key);
          } else {
            pages.set(key, bytes);
            put(key, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
          }
        }
        s.version++;
        s.size = Math.max(s.size, end);
        put(this.k(target, 'v'), metaOf(s));
      }
    }
  }

  protected view(s: TargetState): rules.TargetView {
    return {
      record: s.record,
      version: s.version,
      fixedSize: s.fixed,
      tombstones: () => s.tombstones,
      access: s.access,
      live: this.leaseMode ? s.live : undefined,
    };
  }
}
