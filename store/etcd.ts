/**
 * The store over an etcd cluster, so replicas on several hosts share one store. Each rule is the pure
 * decision of store/rules.ts: the adapter reads a target's keys with their revisions, decides, and
 * commits the decision's writes in one etcd transaction guarded by those revisions; if another
 * replica changed the target meanwhile, it reads and decides again (a bounded number of times).
 *
 * Keys, under a prefix (default `/safe-resume/`), with the target name URI-encoded (no `/` in it):
 *   k/<target>/r        the record (JSON)
 *   k/<target>/t        the tombstones (JSON, newest first)
 *   k/<target>/v        the version, the size, the size fixed at creation, and the owner and access
 *                       list (JSON; put when a target is first opened, before anything is written)
 *   k/<target>/l        the lock: present while the holder's session lease lives (lease mode)
 *   p/<target>/<page>   the data, in 4 KiB pages (a page never written or left all zeros has no key); the page number in
 *                       12 decimal digits, so etcd's byte order of keys is their number order
 *   format              the key layout (KEY_LAYOUT), put when the store is first used
 *   h/...               the decision log, when one is kept (the chaos checker's history)
 *
 * Locks (lease mode, the default): every session of a replica has one etcd lease; a granted lock is the
 * key `l` put with that lease, so a renewal is one keep-alive of the lease, and a lock expires when
 * etcd lets the lease lapse, judged on etcd's clock: a replica whose clock is wrong cannot shorten a
 * live hold. Records and tombstones carry no lease and outlive it. (`expiry: 'clock'` judges expiries
 * on an injected clock instead, as the SQLite store does on its host's; the contract suite uses it to
 * step time.)
 *
 * Group commit: the operations of one turn on different targets are decided together: one read
 * transaction for all their keys, one guarded write transaction for all their effects (within etcd's
 * default 128 operations per transaction). If any compare fails, each operation is decided again on
 * its own.
 */
import { Etcd3 } from 'etcd3';
import type { ICompare, IKeyValue, IRequestOp, IResponseOp } from 'etcd3/lib/rpc.js';
import { SafeResumeError } from '../errors.js';
import * as leases from './leases.js';
import * as rules from './rules.js';
import {
  MAX_DISK_BYTES,
  PAGE_BYTES,
  StoreUnavailableError,
  isZeroPage,
  type AccessRequest,
  type AccessResult,
  type Decided,
  type Grant,
  type DecisionLog,
  type HandleRef,
  type LockRecord,
  type OpenRequest,
  type OpenResult,
  type ReadRequest,
  type ReadResult,
  type RenewResult,
  type ResumeOutcome,
  type ResumeRequest,
  type Store,
  type TargetAccess,
  type Tombstone,
  type WriteRequest,
  type WriteResult,
} from './types.js';

const PAGE = PAGE_BYTES;
/** Tries of one rule when other replicas keep changing the target under it. */
const MAX_ATTEMPTS = 32;
/** etcd's default --max-txn-ops is 128: a batch stays below it in compares, reads and writes. */
const MAX_TXN_OPS = 120;
/** Targets in one batch (each costs up to 4 compares). */
const MAX_BATCH_TARGETS = 30;
/** Bytes of data in one batch (etcd's default request limit is 1.5 MiB). */
const MAX_BATCH_BYTES = 1024 * 1024;
/** Targets whose last known state a store keeps, to decide without reading first. */
const CACHE_TARGETS = 4096;
/** Batches in flight at once (on different targets). */
const MAX_INFLIGHT_BATCHES = 4;
/** How long one try of an etcd call may take before it is sent again (within the call's timeout). */
const ATTEMPT_MS = 1500;
/** etcd errors that another try cannot fix. */
const PERMANENT = /too many operations|too large|duplicate key|permission denied|authentication|invalid auth|not capable/i;

export interface EtcdStoreOptions {
  /** Key prefix (default `/safe-resume/`); stores with different prefixes share nothing. */
  prefix?: string;
  /** Who judges lock expiry: etcd leases (default) or the clock `now` (tests). */
  expiry?: 'lease' | 'clock';
  /** The clock for `expiry: 'clock'`, and for the informational `expiresAt` of records (default: wall clock). */
  now?: () => number;
  /** How long one etcd call may take before the store counts as unavailable (default 5000 ms). */
  timeoutMs?: number;
  /** Keep each decision's log lines in etcd, committed with it (the chaos checker's history). */
  log?: DecisionLog;
  /**
   * A store written by an earlier safe-resume (page keys under `d/`, see KEY_LAYOUT): move its pages to
   * the current keys (the store is unavailable until they are all moved). Without it such a store is
   * refused. Only once every replica of the earlier version is stopped: they read the old keys only.
   */
  movePages?: boolean;
  /**
   * TLS to etcd (PEM contents): the CA that signed the members' certificates, and a client certificate and key if they ask for one;
   * `serverName`, a DNS name the members' certificate carries, checked instead of each endpoint's address.
   */
  tls?: { ca: Buffer; cert?: Buffer | undefined; key?: Buffer | undefined; serverName?: string | undefined } | undefined;
}

/** One key of a target as read: value and revisions (mod '0': absent). */
interface Kv {
  value: Buffer | undefined;
  mod: string;
  lease: string;
}

const ABSENT: Kv = { value: undefined, mod: '0', lease: '0' };

/** What a batch knows of one target: as read, then as its earlier decisions left it. */
interface TargetState {
  r: Kv;
  t: Kv;
  v: Kv;
  l: Kv;
  record: LockRecord | undefined;
  tombstones: Tombstone[];
  version: number;
  size: number;
  /** The size fixed at creation, 0 if none. */
  fixed: number;
  /** The owner and access list as recorded (undefined: none, a target nobody has or one of an earlier version). */
  access: TargetAccess | undefined;
  live: boolean;
  /** The lease the lock hangs on now ('0': none). */
  lockLease: string;
}

/** One rule waiting to be decided. */
interface Item {
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

const enc = (target: string) => encodeURIComponent(target);

/**
 * The key layout this code reads and writes, kept in the key `format` under the prefix. A store without
 * it that has keys under `d/` was written by the earlier layout (page numbers zero-padded to 8 digits,
 * whose byte order is not their number order from page 100,000,000 on): it is refused, or, with the
 * option movePages, its pages are moved to `p/` before it serves. A store marked with another layout is refused.
 */
const KEY_LAYOUT = '2';
/** Where the pages are, under the prefix; and where the earlier layout kept them. */
const PAGES = 'p/';
const OLD_PAGES = 'd/';
/**
 * Digits of a page number in its key: fixed, so etcd's byte order of page keys is their number order.
 * 10^12 pages of 4 KiB is 4 EB, far above the 2^28 pages of a disk of MAX_DISK_BYTES.
 */
const PAGE_DIGITS = 12;
const PAGE_LIMIT = 10 ** PAGE_DIGITS;
const PAGE_PART = new RegExp(`^[0-9]{${PAGE_DIGITS}}$`);
if (MAX_DISK_BYTES / PAGE > PAGE_LIMIT) throw new Error('etcd page keys are too narrow for MAX_DISK_BYTES');
/** The last part of a page's key: its number in PAGE_DIGITS decimal digits. */
function pageKey(page: number): string {
  if (!Number.isSafeInteger(page) || page < 0 || page >= PAGE_LIMIT) throw new RangeError(`etcd: page ${page} has no key`);
  return String(page).padStart(PAGE_DIGITS, '0');
}
/** The page number in the last part of a page key (`old`: of the earlier layout, digits of any width). */
function pageOfKey(part: string, old = false): number {
  // A key that is not a page's fails the one call that met it, not the store.
  if (!(old ? /^[0-9]{1,16}$/ : PAGE_PART).test(part)) throw new Error(`etcd: ${JSON.stringify(part)} is not a page key`);
  return Number(part);
}
/** The end of a prefix range: the prefix with its last byte plus one. */
function prefixEnd(prefix: string): Buffer {
  const b = Buffer.from(prefix);
  b[b.length - 1]! += 1;
  return b;
}
const json = <T>(kv: Kv, fallback: T): T => (kv.value ? (JSON.parse(kv.value.toString()) as T) : fallback);

/**
 * A target's v key: its version, its size (fixed, or as far as written), its fixed size if it has one,
 * and its owner and access list once recorded (absent in keys written by an earlier version).
 */
interface Meta {
  version: number;
  size: number;
  fixed?: number;
  owner?: string;
  grants?: Grant[];
}

const metaOf = (s: TargetState): Buffer =>
  Buffer.from(JSON.stringify({ version: s.version, size: s.size, ...(s.fixed ? { fixed: s.fixed } : {}), ...(s.access ? { owner: s.access.owner, grants: s.access.grants } : {}) }));
/** Keep-alives one commit may wait for before its lease counts as one etcd cannot keep alive in time. */
const MAX_LEASE_REFRESHES = 3;

/** One session's lease for one TTL: its id once granted, and what this store knows of when it lapses. */
interface Lease {
  id: Promise<string>;
  /** The id, once granted. */
  granted: string | undefined;
  ttl: number;
  times: leases.LeaseTimes;
  /** A keep-alive on its way (one at a time per lease). */
  refreshing: Promise<boolean> | undefined;
}

class LeaseLost extends Error {}

export class EtcdStore implements Store {
  readonly kind = 'etcd';
  private readonly client: Etcd3;
  private readonly prefix: string;
  private readonly now: () => number;
  private readonly timeoutMs: number;
  private readonly leaseMode: boolean;
  private readonly log: DecisionLog | undefined;
  private readonly movePages: boolean;
  /** Whether the store's key layout was found to be this code's (checked once, on first use). */
  private layoutOk = false;
  private layoutCheck: Promise<void> | undefined;
  /** Pages of the earlier layout being moved by this store, and why the last try stopped. */
  private moving: Promise<void> | undefined;
  private moveError: string | undefined;
  private closed = false;
  /** Each session's lease (by session and TTL in seconds), and when it was last kept alive. */
  private readonly leases = new Map<string, Lease>();
  private queue: Item[] = [];
  /** What each recently used target was when this store last read or committed it. */
  private readonly cache = new Map<string, TargetState>();
  private readonly busy = new Set<string>();
  private inflight = 0;
  private scheduled = false;
  private logSeq = 0;
  private commitSeq = 0;
  /** Commit-mark slots, one per batch in flight. */
  private readonly slots = Array.from({ length: MAX_INFLIGHT_BATCHES }, (_, i) => i);
  private readonly logId = Math.random().toString(36).slice(2, 10);
  /** What the store sent etcd (for tests and the bench). */
  readonly stats = { reads: 0, commits: 0, conflicts: 0, items: 0, keepAlives: 0, grants: 0 };
  onTransaction: ((ms: number) => void) | undefined;

  constructor(
    readonly endpoints: string[],
    opts: EtcdStoreOptions = {},
  ) {
    const tls = opts.tls;
    this.client = new Etcd3({
      hosts: endpoints.map((e) => (e.includes('://') ? e : `${tls ? 'https' : 'http'}://${e}`)),
      dialTimeout: opts.timeoutMs ?? 5000,
      ...(tls ? { credentials: { rootCertificate: tls.ca, ...(tls.cert ? { certChain: tls.cert } : {}), ...(tls.key ? { privateKey: tls.key } : {}) } } : {}),
      ...(tls?.serverName ? { grpcOptions: { 'grpc.ssl_target_name_override': tls.serverName } } : {}),
    });
    this.prefix = opts.prefix ?? '/safe-resume/';
    this.now = opts.now ?? (() => Date.now());
    this.timeoutMs = opts.timeoutMs ?? 5000;
    this.leaseMode = (opts.expiry ?? 'lease') === 'lease';
    this.log = opts.log;
    this.movePages = opts.movePages ?? false;
  }

  private k(target: string, part: 'r' | 't' | 'v' | 'l'): string {
    return `${this.prefix}k/${enc(target)}/${part}`;
  }

  /** A page's key, or (no page) the prefix of the target's page keys. The one place page keys are made. */
  private d(target: string, page?: number): string {
    return `${this.prefix}${PAGES}${enc(target)}/${page === undefined ? '' : pageKey(page)}`;
  }

  /** The keys of the target's pages first..last, as a range (pages past the last a key can name are none). */
  private pageRange(target: string, first: number, last: number): { key: Buffer; range_end: Buffer } {
    const end = prefixEnd(this.d(target));
    return { key: first < PAGE_LIMIT ? Buffer.from(this.d(target, first)) : end, range_end: last + 1 < PAGE_LIMIT ? Buffer.from(this.d(target, last + 1)) : end };
  }

  /** An etcd call, with its failures (no leader, timeouts, refused connections) as StoreUnavailableError. */
  private async call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    // Tried again while etcd elects a leader or a member is down, until timeoutMs: a guarded commit
    // sent twice applies at most once (its compares), and its mark tells whether it landed.
    const deadline = Date.now() + this.timeoutMs;
    // Whether a try failed in a way that may have reached etcd (no answer, a connection lost): a
    // transaction sent so may still land, whatever the later tries say.
    let maybeSent = false;
    for (let pause = 50; ; pause = Math.min(pause * 2, 400)) {
      let timer: NodeJS.Timeout | undefined;
      try {
        // One try waits at most ATTEMPT_MS: a request that reached a member during an election can
        // hang there for seconds, while a new one to any member goes through once a leader is elected.
        const left = Math.max(1, Math.min(ATTEMPT_MS, deadline - Date.now()));
        return await Promise.race([
          fn(),
          new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new Error(`no answer within ${left} ms`)), left);
          }),
        ]);
      } catch (err) {
        if (err instanceof SafeResumeError || err instanceof StoreUnavailableError) throw err;
        const message = String((err as Error).message);
        if (/lease not found/i.test(message)) throw new LeaseLost(message);
        // A transaction given up on may still land (a member that took it and stalls commits it later);
        // one etcd refused outright never will.
        const permanent = PERMANENT.test(message);
        if (!permanent) maybeSent = true;
        if (permanent || Date.now() + pause >= deadline) throw new StoreUnavailableError(`etcd ${what}: ${message}`, { maybeApplied: what === 'transaction' && maybeSent });
      } finally {
        clearTimeout(timer);
      }
      await new Promise((r) => setTimeout(r, pause));
    }
  }

  /** One etcd transaction (a read when `compare` is empty and every op a range). */
  private async txn(what: string, compare: ICompare[], success: IRequestOp[]): Promise<{ succeeded: boolean; responses: IResponseOp[]; revision: string }> {
    const t0 = performance.now();
    const res = await this.call(what, () => this.client.kv.txn({ compare, success, failure: [] }));
    if (compare.length > 0) this.onTransaction?.(performance.now() - t0);
    return { succeeded: res.succeeded, responses: res.responses, revision: res.header.revision };
  }

  private modIs(key: string, mod: string): ICompare {
    return { key: Buffer.from(key), target: 'Mod', result: 'Equal', mod_revision: mod };
  }

  // ---- the key layout ----

  /** Resolves once the store's key layout is this code's: checked on first use, then never again. */
  private ready(): Promise<void> {
    if (this.layoutOk) return Promise.resolve();
    if (!this.layoutCheck) {
      const check = this.checkLayout();
      this.layoutCheck = check;
      check.then(
        () => (this.layoutOk = true),
        // Checked again on the next use (etcd unreachable, or pages still being moved).
        () => this.layoutCheck === check && (this.layoutCheck = undefined),
      );
    }
    return this.layoutCheck;
  }

  /**
   * Read the layout marker. A store without one is marked, if no page of the earlier layout is in it
   * (in a transaction that checks both); otherwise it is refused, or (movePages) its pages are moved
   * first and the store is unavailable until they are. A marker of another layout is refused.
   */
  private async checkLayout(): Promise<void> {
    const marker = Buffer.from(`${this.prefix}format`);
    const old = `${this.prefix}${OLD_PAGES}`;
    const none: ICompare = { key: Buffer.from(old), range_end: prefixEnd(old), target: 'Mod', result: 'Equal', mod_revision: '0' };
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const res = await this.txn('read', [], [{ request_range: { key: marker } }, { request_range: { key: Buffer.from(old), range_end: prefixEnd(old), count_only: true } }]);
      const kv = res.responses[0]?.response_range?.kvs?.[0] as IKeyValue | undefined;
      if (kv) {
        const layout = kv.value.toString();
        if (layout === KEY_LAYOUT) return;
        throw new StoreUnavailableError(`etcd: the store under ${this.prefix} has key layout ${layout.slice(0, 40)} (key ${this.prefix}format), and this safe-resume knows layout ${KEY_LAYOUT} only: run the newer safe-resume that wrote it`);
      }
      const pages = Number(res.responses[1]?.response_range?.count ?? 0);
      if (pages > 0 && !this.movePages) {
        throw new StoreUnavailableError(
          `etcd: ${pages} data pages under ${old} were written by an earlier safe-resume, whose page keys are read wrong from page 100,000,000 (offset 381 GiB) on; they are not served as they are. Stop every replica of the earlier version, then start one replica with --etcd-move-pages (EtcdStore option movePages): it moves them to ${this.prefix}${PAGES}, and every replica serves once all are moved`,
        );
      }
      if (pages > 0) {
        this.moving ??= this.moveOldPages().then(
          () => {
            this.moveError = undefined;
            this.moving = undefined;
          },
          (err: unknown) => {
            this.moveError = String((err as Error).message);
            this.moving = undefined;
          },
        );
        const last = this.moveError ? ` (the last try stopped: ${this.moveError})` : '';
        throw new StoreUnavailableError(`etcd: ${pages} data pages under ${old} were written by an earlier safe-resume (page keys whose order breaks from page 100,000,000); they are being moved to ${this.prefix}${PAGES}, and the store serves once every one is moved${last}`);
      }
      const put = await this.txn('transaction', [{ key: marker, target: 'Create', result: 'Equal', create_revision: '0' }, none], [{ request_put: { key: marker, value: Buffer.from(KEY_LAYOUT) } }]);
      if (put.succeeded) return;
    }
    throw new StoreUnavailableError(`etcd: the key layout of the store under ${this.prefix} kept changing while it was checked`);
  }

  /**
   * Move every page of the earlier layout (`d/<target>/<page, 8 digits or more>`) to its key in this
   * one, up to 50 pages per transaction: each page is put under its new key and its old key deleted,
   * if the old key is still as read (another replica moving the same pages at once moves each once).
   */
  private async moveOldPages(): Promise<void> {
    const old = `${this.prefix}${OLD_PAGES}`;
    while (!this.closed) {
      const res = await this.txn('read', [], [{ request_range: { key: Buffer.from(old), range_end: prefixEnd(old), limit: 50 } }]);
      const kvs = (res.responses[0]?.response_range?.kvs ?? []) as IKeyValue[];
      if (kvs.length === 0) return;
      const compare: ICompare[] = [];
      const success: IRequestOp[] = [];
      for (const kv of kvs) {
        const key = kv.key.toString();
        const [target, page, ...rest] = key.slice(old.length).split('/');
        if (!target || page === undefined || rest.length > 0) throw new StoreUnavailableError(`etcd: ${JSON.stringify(key)} is not a page key of the earlier layout`);
        compare.push(this.modIs(key, kv.mod_revision));
        success.push({ request_put: { key: Buffer.from(this.d(decodeURIComponent(target), pageOfKey(page, true))), value: kv.value } }, { request_delete_range: { key: kv.key } });
      }
      // A compare that failed: another replica moved (some of) them; read what is left.
      await this.txn('transaction', compare, success);
    }
  }

  // ---- leases ----

  /**
   * The TTL in whole seconds of the lease for locks that last `leaseMs`: at least long enough that a
   * lease just kept alive still lives a renewal interval after a commit that takes the whole call
   * timeout (store/leases.ts), so a lock can always be put on it.
   */
  private ttlOf(leaseMs: number): number {
    return leases.ttlSeconds(leaseMs, this.timeoutMs);
  }

  /** The lease of `session` for `ttl` seconds, granted on first use. */
  private leaseOf(session: string, ttl: number): Promise<string> {
    const key = `${session}/${ttl}`;
    const have = this.leases.get(key);
    if (have) return have.id;
    // The TTL starts when etcd grants it: after this send, before the answer.
    const entry: Lease = { id: Promise.resolve(''), granted: undefined, ttl, times: { ttlMs: ttl * 1000, sentAt: Date.now(), answeredAt: undefined }, refreshing: undefined };
    entry.id = this.call('lease grant', () => this.client.leaseClient.leaseGrant({ TTL: ttl, ID: 0 })).then((r) => {
      this.stats.grants++;
      entry.times.answeredAt = Date.now();
      entry.granted = String(r.ID);
      return entry.granted;
    });
    this.leases.set(key, entry);
    entry.id.catch(() => this.leases.get(key) === entry && this.leases.delete(key));
    return entry.id;
  }

  /**
   * Keep a lease alive once (a keep-alive already on its way is joined); false if etcd let it lapse,
   * and then it is forgotten. Its times move only by a keep-alive that etcd answered alive.
   */
  private refresh(key: string, entry: Lease, id: string): Promise<boolean> {
    entry.refreshing ??= (async () => {
      const sentAt = Date.now();
      try {
        const alive = await this.keepAlive(id);
        if (alive) entry.times = { ttlMs: entry.ttl * 1000, sentAt: Math.max(sentAt, entry.times.sentAt), answeredAt: Date.now() };
        else if (this.leases.get(key) === entry) this.leases.delete(key);
        return alive;
      } finally {
        entry.refreshing = undefined;
      }
    })();
    return entry.refreshing;
  }

  /**
   * Before a commit that puts locks on these leases (by key, with the id each lock goes on): each
   * must surely live a renewal interval past the time the commit can land (its call's deadline), or
   * it is kept alive first. A lease that lapsed, or was forgotten meanwhile, throws LeaseLost (the
   * items are decided again, on a new lease).
   */
  private async leasesFresh(used: Map<string, string>): Promise<void> {
    await Promise.all(
      [...used].map(async ([key, id]) => {
        for (let i = 0; ; i++) {
          const entry = this.leases.get(key);
          if (!entry || entry.granted !== id) throw new LeaseLost(`etcd: lease ${id} was given up`);
          if (leases.canCarry(entry.times, Date.now() + this.timeoutMs)) return;
          if (i === MAX_LEASE_REFRESHES) throw new StoreUnavailableError(`etcd: lease ${id} could not be kept alive long enough to carry a lock (keep-alives too slow for a TTL of ${entry.ttl} s)`);
          if (!(await this.refresh(key, entry, id))) throw new LeaseLost(`etcd: lease ${id} lapsed`);
        }
      }),
    );
  }

  /** Keep a lease alive once; false if etcd let it lapse. */
  private async keepAlive(id: string): Promise<boolean> {
    this.stats.keepAlives++;
    const res = await this.call('lease keep-alive', async () => {
      const stream = await this.client.leaseClient.leaseKeepAlive();
      try {
        return await new Promise<{ TTL: string }>((resolve, reject) => {
          stream.on('data', resolve);
          stream.on('error', reject);
          stream.write({ ID: id });
        });
      } finally {
        stream.end();
      }
    });
    return Number(res.TTL) > 0;
  }

  /** Forget leases that surely lapsed (judged from when etcd last answered for them), and those of a session known lost. */
  private forgetLeases(lost?: string): void {
    const now = Date.now();
    for (const [key, l] of this.leases) if ((lost !== undefined && key.startsWith(`${lost}/`)) || leases.surelyLapsed(l.times, now)) this.leases.delete(key);
  }

  // ---- batches ----

  private enqueue<T>(item: Omit<Item, 'resolve' | 'reject'>): Promise<T> {
    if (!this.layoutOk) return this.ready().then(() => this.enqueue<T>(item));
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ ...item, resolve: resolve as (out: unknown) => void, reject });
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
  private pump(): void {
    while (this.inflight < MAX_INFLIGHT_BATCHES && this.queue.length > 0) {
      const batch: Item[] = [];
      const rest: Item[] = [];
      const targets = new Set<string>();
      // A target left behind keeps all its later items behind too (they decide in order).
      const behind = new Set<string>();
      let ops = 0;
      let reads = 0;
      let bytes = 0;
      for (const it of this.queue) {
        const fresh = !targets.has(it.target);
        // A batch with its most targets takes no other: the rest of the queue waits as it is, and only
        // the items of its own targets are looked at (a long queue is walked once per batch).
        if (fresh && targets.size >= MAX_BATCH_TARGETS) {
          rest.push(it);
          continue;
        }
        // Puts: the target's own keys once (r, t, v, l), its pages, its log lines.
        const cost = (fresh ? 4 : 0) + it.touch + (this.log ? 2 : 0);
        const fits =
          !this.busy.has(it.target) &&
          !behind.has(it.target) &&
          (!fresh || targets.size < MAX_BATCH_TARGETS) &&
          // The first item always goes (a large write alone; its pages go in nested transactions).
          (batch.length === 0 || (ops + cost <= MAX_TXN_OPS && reads + (fresh ? 1 : 0) + it.pages.length <= MAX_TXN_OPS && bytes + it.bytes <= MAX_BATCH_BYTES));
        if (!fits) {
          behind.add(it.target);
          rest.push(it);
          continue;
        }
        batch.push(it);
        targets.add(it.target);
        ops += cost;
        reads += (fresh ? 1 : 0) + it.pages.length;
        bytes += it.bytes;
      }
      if (batch.length === 0) return;
      this.queue = rest;
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

  private async runBatch(batch: Item[], slot: number): Promise<void> {
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
  private async attempt(batch: Item[], slot: number, fresh = false): Promise<boolean> {
    const grants = new Map<Item, string>();
    if (this.leaseMode) {
      await Promise.all(batch.filter((it) => it.grant).map(async (it) => grants.set(it, await this.leaseOf(it.grant!.session, it.grant!.ttl))));
    }
    /** The leases this commit puts locks on (by key), each with the id it uses. */
    const used = new Map<string, string>();
    const targets = [...new Set(batch.map((it) => it.target))];
    const known = fresh ? [] : targets.filter((t) => this.cache.has(t));
    const toRead = targets.filter((t) => fresh || !this.cache.has(t));
    const wantPages = batch.flatMap((it) => it.pages.map((p) => [it.target, p] as const));
    const read = toRead.length > 0 || wantPages.length > 0 ? await this.readTargets(toRead, wantPages) : { states: new Map<string, TargetState>(), pages: new Map<string, Uint8Array>() };
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
      if (lease !== undefined && it.grant && d.effects.some((e) => e.kind === 'put')) used.set(`${it.grant.session}/${it.grant.ttl}`, lease);
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
      compare.push(this.modIs(this.k(target, 'r'), s.r.mod), this.modIs(this.k(target, 'v'), s.v.mod), this.modIs(this.k(target, 't'), s.t.mod));
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
    else for (let i = 0; i < all.length; i += MAX_TXN_OPS) success.push({ request_txn: { compare: [], success: all.slice(i, i + MAX_TXN_OPS), failure: [] } });
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
        throw new StoreUnavailableError(`etcd transaction: whether it landed is unknown (${(err as Error).message})`, { maybeApplied: true });
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
        if (op?.request_put) state[part] = { value: op.request_put.value as Buffer, mod: res.revision, lease: String(op.request_put.lease ?? '0') };
        else if (op?.request_delete_range) state[part] = ABSENT;
      }
      this.remember(t, state);
    }
    batch.forEach((it, i) => it.resolve(outs[i]));
    return true;
  }

  /** The revision at which the commit marked `mark` landed, if it did. */
  private async landed(markKey: string, mark: string): Promise<string | undefined> {
    const r = await this.txn('read', [], [{ request_range: { key: Buffer.from(markKey) } }]);
    const kv = r.responses[0]?.response_range?.kvs?.[0] as IKeyValue | undefined;
    return kv && kv.value.toString() === mark ? kv.mod_revision : undefined;
  }

  /** Keep a target's state as last read or committed (the most recent CACHE_TARGETS targets). */
  private remember(target: string, state: TargetState): void {
    this.cache.delete(target);
    this.cache.set(target, state);
    if (this.cache.size > CACHE_TARGETS) this.cache.delete(this.cache.keys().next().value!);
  }

  /** Read every key of `targets` and the listed pages in one transaction (one revision). */
  private async readTargets(targets: string[], wantPages: ReadonlyArray<readonly [string, number]>): Promise<{ states: Map<string, TargetState>; pages: Map<string, Uint8Array> }> {
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
      for (const kv of (res.responses[i]?.response_range?.kvs ?? []) as IKeyValue[]) kvs.set(kv.key.toString(), { value: kv.value, mod: kv.mod_revision, lease: kv.lease });
      const get = (part: 'r' | 't' | 'v' | 'l') => kvs.get(this.k(t, part)) ?? ABSENT;
      const r = get('r');
      const v = get('v');
      const l = get('l');
      const meta = json<Meta>(v, { version: 0, size: 0 });
      const access = meta.owner !== undefined ? { owner: meta.owner, grants: meta.grants ?? [] } : undefined;
      states.set(t, { r, t: get('t'), v, l, record: json<LockRecord | undefined>(r, undefined), tombstones: json<Tombstone[]>(get('t'), []), version: meta.version, size: meta.size, fixed: meta.fixed ?? 0, access, live: l.value !== undefined, lockLease: l.lease });
    });
    const pages = new Map<string, Uint8Array>();
    pageKeys.forEach((key, j) => {
      const kv = res.responses[targets.length + j]?.response_range?.kvs?.[0] as IKeyValue | undefined;
      if (kv) pages.set(key, new Uint8Array(kv.value));
    });
    return { states, pages };
  }

  /** Turn a decision's effects into puts and deletes (the last per key wins), and update the batch's view. */
  private effects(it: Item, s: TargetState, effects: rules.Effect[], lease: string | undefined, ops: Map<string, IRequestOp>, pages: Map<string, Uint8Array>): void {
    const put = (key: string, value: Buffer, lease?: string) => ops.set(key, { request_put: { key: Buffer.from(key), value, ...(lease ? { lease } : {}) } });
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

  private view(s: TargetState): rules.TargetView {
    return { record: s.record, version: s.version, fixedSize: s.fixed, tombstones: () => s.tombstones, access: s.access, live: this.leaseMode ? s.live : undefined };
  }

  // ---- the store ----

  open(req: OpenRequest): Promise<OpenResult> {
    const grant = req.mode === 'write' ? { session: req.session, ttl: this.ttlOf(req.leaseMs) } : undefined;
    return this.enqueue({ target: req.target, pages: [], touch: 0, bytes: 0, grant, decide: (s) => rules.decideOpen(this.view(s), req, this.now()), decided: (out) => ({ op: 'open', req, out: out as OpenResult }) });
  }

  resume(reqs: ResumeRequest[]): Promise<ResumeOutcome[]> {
    // Each item is decided atomically on its own (the contract); a batch carries them together.
    return Promise.all(
      reqs.map((req) => {
        const grant = req.mode === 'write' ? { session: req.session, ttl: this.ttlOf(req.leaseMs) } : undefined;
        return this.enqueue<ResumeOutcome>({ target: req.target, pages: [], touch: 0, bytes: 0, grant, decide: (s) => rules.decideResume(this.view(s), req, this.now()), decided: (out) => ({ op: 'resume', req, out: out as ResumeOutcome }) });
      }),
    );
  }

  write(req: WriteRequest): Promise<WriteResult> {
    const pages: number[] = [];
    const end = req.offset + req.data.length;
    if (req.data.length > 0) {
      const first = Math.floor(req.offset / PAGE);
      const last = Math.floor((end - 1) / PAGE);
      if (req.offset % PAGE !== 0 || (first === last && end % PAGE !== 0)) pages.push(first);
      if (last !== first && end % PAGE !== 0) pages.push(last);
    }
    const touch = req.data.length === 0 ? 0 : Math.floor((end - 1) / PAGE) - Math.floor(req.offset / PAGE) + 1;
    return this.enqueue({ target: req.target, pages, touch, bytes: req.data.length, decide: (s) => rules.decideWrite(this.view(s), req), decided: (out) => ({ op: 'write', req, out: out as WriteResult }) });
  }

  async read(req: ReadRequest): Promise<ReadResult> {
    if (!this.layoutOk) await this.ready();
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const first = Math.floor(req.offset / PAGE);
      const last = Math.floor((req.offset + Math.max(req.length, 1) - 1) / PAGE);
      const kp = `${this.prefix}k/${enc(req.target)}/`;
      this.stats.reads++;
      // The keys and the pages in one read transaction: one revision, so the bytes are the version's.
      const res = await this.txn('read', [], [
        { request_range: { key: Buffer.from(kp), range_end: prefixEnd(kp) } },
        { request_range: this.pageRange(req.target, first, last) },
      ]);
      const kvs = new Map<string, Kv>();
      for (const kv of (res.responses[0]?.response_range?.kvs ?? []) as IKeyValue[]) kvs.set(kv.key.toString(), { value: kv.value, mod: kv.mod_revision, lease: kv.lease });
      const r = kvs.get(this.k(req.target, 'r')) ?? ABSENT;
      const v = kvs.get(this.k(req.target, 'v')) ?? ABSENT;
      const view: rules.TargetView = { record: json<LockRecord | undefined>(r, undefined), version: 0, fixedSize: 0, tombstones: () => [], access: undefined };
      const m = json<Meta>(v, { version: 0, size: 0 });
      const refused = rules.decideRead(view, req);
      let out: ReadResult;
      if (refused) out = refused;
      else {
        const end = Math.min(m.size, req.offset + req.length);
        const data = new Uint8Array(Math.max(0, end - req.offset));
        const dp = this.d(req.target);
        for (const kv of (res.responses[1]?.response_range?.kvs ?? []) as IKeyValue[]) {
          const start = pageOfKey(kv.key.toString().slice(dp.length)) * PAGE;
          const from = Math.max(req.offset, start);
          const to = Math.min(end, start + kv.value.length);
          if (to > from) data.set(kv.value.subarray(from - start, to - start), from - req.offset);
        }
        out = { ok: true, data, version: m.version };
      }
      const lines = this.log?.({ op: 'read', req, out }) ?? [];
      if (lines.length === 0) return out;
      // The log keeps the read in the store's order: committed only if nothing changed since it was read.
      const puts: IRequestOp[] = lines.map((line) => {
        const key = `${this.prefix}h/${this.logId}/${String(++this.logSeq).padStart(12, '0')}`;
        return { request_put: { key: Buffer.from(key), value: Buffer.from(line) } };
      });
      const ok = await this.txn('transaction', [this.modIs(this.k(req.target, 'r'), r.mod), this.modIs(this.k(req.target, 'v'), v.mod)], puts);
      if (ok.succeeded) return out;
    }
    throw new StoreUnavailableError(`etcd: ${req.target} kept changing while it was read`);
  }

  editAccess(req: AccessRequest): Promise<AccessResult> {
    return this.enqueue({ target: req.target, pages: [], touch: 0, bytes: 0, decide: (s) => rules.decideAccess(this.view(s), req), decided: (out) => ({ op: 'access', req, out: out as AccessResult }) });
  }

  async access(target: string): Promise<TargetAccess | undefined> {
    const { states } = await this.readTargets([target], []);
    return rules.accessOf(this.view(states.get(target)!));
  }

  close(ref: HandleRef, session: string): Promise<boolean> {
    return this.enqueue({ target: ref.target, pages: [], touch: 0, bytes: 0, decide: (s) => rules.decideClose(this.view(s), ref, session), decided: (out) => ({ op: 'close', ref, session, out: out as boolean }) });
  }

  /**
   * Lease mode: one keep-alive of the session's lease, then one read of the handles' keys to find those
   * lost; a lock that is off the lease (it lapsed, or it hangs on the lease of another duration) is put
   * back on it if its record still names the session.
   */
  async renew(session: string, refs: HandleRef[], leaseMs: number): Promise<RenewResult> {
    if (!this.layoutOk) await this.ready();
    const ttl = this.ttlOf(leaseMs);
    const item = (ref: HandleRef, lease: string | undefined) =>
      this.enqueue<RenewResult['lost'][number] | undefined>({
        target: ref.target,
        pages: [],
        touch: 0,
        bytes: 0,
        grant: { session, ttl },
        decide: (s) => {
          const held = s.record?.requestId === ref.requestId && s.record.session === session;
          // On the lease already: nothing to write. Otherwise the record's expiry moves (and the lock key with it).
          if (this.leaseMode && held && s.live && s.lockLease === lease) return rules.decideRenew(this.view(s), ref, session, s.record!.expiresAt);
          return rules.decideRenew(this.view(s), ref, session, this.now() + leaseMs);
        },
        decided: (out) => ({ op: 'renew', session, refs: [ref], out: { lost: out ? [out as RenewResult['lost'][number]] : [] } }),
      });
    if (!this.leaseMode || refs.length === 0) {
      const lost = await Promise.all(refs.map((ref) => item(ref, undefined)));
      return { lost: lost.filter((l): l is NonNullable<typeof l> => l !== undefined) };
    }
    this.forgetLeases();
    const key = `${session}/${ttl}`;
    const entry = this.leases.get(key);
    let lease = await this.leaseOf(session, ttl);
    if (entry && !(await this.refresh(key, entry, lease))) {
      this.forgetLeases(session);
      lease = await this.leaseOf(session, ttl);
    }
    if (this.log) {
      // Each handle through the queue, so the log keeps its renewal in the store's order.
      const lost = await Promise.all(refs.map((ref) => item(ref, lease)));
      return { lost: lost.filter((l): l is NonNullable<typeof l> => l !== undefined) };
    }
    // One read of every handle's keys (in transactions of up to MAX_TXN_OPS targets, at once): a lock
    // still on the lease needs nothing more; one off it is put back through the queue; one whose record
    // names another session or requestId is lost.
    const targets = [...new Set(refs.map((r) => r.target))];
    const chunks: string[][] = [];
    for (let i = 0; i < targets.length; i += MAX_TXN_OPS) chunks.push(targets.slice(i, i + MAX_TXN_OPS));
    const states = new Map<string, TargetState>();
    for (const part of await Promise.all(chunks.map((c) => this.readTargets(c, [])))) for (const [t, st] of part.states) states.set(t, st);
    const lost: RenewResult['lost'] = [];
    const again: Array<Promise<RenewResult['lost'][number] | undefined>> = [];
    for (const ref of refs) {
      const s = states.get(ref.target)!;
      const held = s.record?.requestId === ref.requestId && s.record.session === session;
      if (held && s.live && s.lockLease === lease) continue;
      if (held) again.push(item(ref, lease));
      else {
        const out = rules.decideRenew(this.view(s), ref, session, 0).out;
        if (out) lost.push(out);
      }
    }
    for (const l of await Promise.all(again)) if (l) lost.push(l);
    return { lost };
  }

  async record(target: string): Promise<LockRecord | undefined> {
    const { states } = await this.readTargets([target], []);
    return states.get(target)!.record;
  }

  async tombstones(target: string): Promise<Tombstone[]> {
    const { states } = await this.readTargets([target], []);
    return states.get(target)!.tombstones;
  }

  async pages(target: string): Promise<number> {
    if (!this.layoutOk) await this.ready();
    const p = this.d(target);
    const res = await this.txn('read', [], [{ request_range: { key: Buffer.from(p), range_end: prefixEnd(p), count_only: true } }]);
    return Number(res.responses[0]?.response_range?.count ?? 0);
  }

  /**
   * For inspection: how long the target's lock has left if its session stops renewing it, from the
   * TTL etcd gives the session's lease (whole seconds); 0 once it lapsed, or if no lease holds it.
   */
  async lockLeftMs(target: string): Promise<number> {
    const { states } = await this.readTargets([target], []);
    const s = states.get(target)!;
    if (!s.live || s.lockLease === '0') return 0;
    const res = await this.call('lease ttl', () => this.client.leaseClient.leaseTimeToLive({ ID: s.lockLease, keys: false }));
    return Math.max(0, Number(res.TTL) * 1000);
  }

  /** For inspection and tests: whether the target's lock is live (its key still hangs on a lease). */
  async locked(target: string): Promise<boolean> {
    const { states } = await this.readTargets([target], []);
    return states.get(target)!.live;
  }

  /** Every key under `prefix`, read in pages of 1,000 keys (a gRPC answer is at most 4 MiB). */
  private async scan(prefix: string): Promise<IKeyValue[]> {
    const out: IKeyValue[] = [];
    const end = prefixEnd(prefix);
    let from = Buffer.from(prefix);
    let revision: string | undefined;
    for (;;) {
      const res = await this.txn('read', [], [{ request_range: { key: from, range_end: end, limit: 1000, ...(revision ? { revision } : {}) } }]);
      revision ??= res.revision;
      const r = res.responses[0]?.response_range;
      const kvs = (r?.kvs ?? []) as IKeyValue[];
      out.push(...kvs);
      if (!r?.more || kvs.length === 0) return out;
      from = Buffer.concat([kvs[kvs.length - 1]!.key, Buffer.from([0])]);
    }
  }

  /** Every target's bytes (for the chaos checker's final comparison). */
  async targets(): Promise<Array<{ target: string; data: Uint8Array }>> {
    await this.ready();
    const kp = `${this.prefix}k/`;
    const dp = `${this.prefix}${PAGES}`;
    const [keys, data] = [await this.scan(kp), await this.scan(dp)];
    const out = new Map<string, { size: number; data: Uint8Array }>();
    for (const kv of keys) {
      const key = kv.key.toString().slice(kp.length);
      if (!key.endsWith('/v')) continue;
      const { size, version } = JSON.parse(kv.value.toString()) as Meta;
      // Not a target only opened (its key keeps only its owner).
      if (size === 0 && version === 0) continue;
      out.set(decodeURIComponent(key.slice(0, -2)), { size, data: new Uint8Array(size) });
    }
    for (const kv of data) {
      const [t, p] = kv.key.toString().slice(dp.length).split('/');
      const entry = out.get(decodeURIComponent(t!));
      if (!entry) continue;
      const start = pageOfKey(p!) * PAGE;
      entry.data.set(kv.value.subarray(0, Math.max(0, Math.min(kv.value.length, entry.size - start))), start);
    }
    return [...out].map(([target, e]) => ({ target, data: e.data })).sort((a, b) => (a.target < b.target ? -1 : 1));
  }

  /** The decision log's lines, in the order etcd committed them (a line put again keeps its first revision). */
  async readLog(): Promise<string[]> {
    return (await this.scan(`${this.prefix}h/`))
      .map((kv) => ({ rev: BigInt(kv.create_revision), key: kv.key.toString(), line: kv.value.toString() }))
      .sort((a, b) => (a.rev === b.rev ? (a.key < b.key ? -1 : 1) : a.rev < b.rev ? -1 : 1))
      .map((e) => e.line);
  }

  async ping(): Promise<void> {
    await this.call('status', () => this.client.maintenance.status());
    await this.ready();
  }

  async shutdown(): Promise<void> {
    // Leases are not revoked: the locks of this replica's sessions lapse at their end, as after a crash.
    this.closed = true;
    this.client.close();
  }
}
