/**
 * The etcd store's connection: the client (endpoints, TLS), each call tried again until its timeout
 * with etcd's failures as StoreUnavailableError, one transaction, a target's keys, and the check (and
 * move) of the key layout on first use.
 */
import { Etcd3 } from 'etcd3';
import type { ICompare, IRequestOp, IResponseOp } from 'etcd3/lib/rpc.js';
import { SafeResumeError } from '../errors.js';
import { CHANGES, KEY_LAYOUT, OLD_PAGES, PAGES, PAGE_LIMIT, enc, pageKey, pageOfKey, prefixEnd } from './etcd-keys.js';
import { StoreUnavailableError, type DecisionLog } from './types.js';

/** Tries of one rule when other replicas keep changing the target under it. */
export const MAX_ATTEMPTS = 32;
/** How long one try of an etcd call may take before it is sent again (within the call's timeout). */
export const ATTEMPT_MS = 1500;
/** etcd errors that another try cannot fix. */
export const PERMANENT =
  /too many operations|too large|duplicate key|permission denied|authentication|invalid auth|not capable/i;

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
  tls?:
    { ca: Buffer; cert?: Buffer | undefined; key?: Buffer | undefined; serverName?: string | undefined } | undefined;
}

export class LeaseLost extends Error {}

/** The client and the calls every part of the etcd store makes. */
export class EtcdConnection {
  protected readonly client: Etcd3;
  protected readonly prefix: string;
  protected readonly now: () => number;
  protected readonly timeoutMs: number;
  protected readonly leaseMode: boolean;
  protected readonly log: DecisionLog | undefined;
  protected readonly movePages: boolean;
  /** Whether the store's key layout was found to be this code's (checked once, on first use). */
  protected layoutOk = false;
  protected layoutCheck: Promise<void> | undefined;
  /** Pages of the earlier layout being moved by this store, and why the last try stopped. */
  protected moving: Promise<void> | undefined;
  protected moveError: string | undefined;
  protected closed = false;
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
      ...(tls
        ? {
            credentials: {
              rootCertificate: tls.ca,
              ...(tls.cert ? { certChain: tls.cert } : {}),
              ...(tls.key ? { privateKey: tls.key } : {}),
            },
          }
        : {}),
      ...(tls?.serverName ? { grpcOptions: { 'grpc.ssl_target_name_override': tls.serverName } } : {}),
    });
    this.prefix = opts.prefix ?? '/safe-resume/';
    this.now = opts.now ?? (() => Date.now());
    this.timeoutMs = opts.timeoutMs ?? 5000;
    this.leaseMode = (opts.expiry ?? 'lease') === 'lease';
    this.log = opts.log;
    this.movePages = opts.movePages ?? false;
  }

  protected k(target: string, part: 'r' | 't' | 'v' | 'l'): string {
    return `${this.prefix}k/${enc(target)}/${part}`;
  }

  /** A page's key, or (no page) the prefix of the target's page keys. The one place page keys are made. */
  protected d(target: string, page?: number): string {
    return `${this.prefix}${PAGES}${enc(target)}/${page === undefined ? '' : pageKey(page)}`;
  }

  /** The key of the version that last wrote (or freed) a page, or (no page) the prefix of the target's. */
  protected w(target: string, page?: number): string {
    return `${this.prefix}${CHANGES}${enc(target)}/${page === undefined ? '' : pageKey(page)}`;
  }

  /** The keys of the target's pages first..last, as a range (pages past the last a key can name are none). */
  protected pageRange(target: string, first: number, last: number): { key: Buffer; range_end: Buffer } {
    const end = prefixEnd(this.d(target));
    return {
      key: first < PAGE_LIMIT ? Buffer.from(this.d(target, first)) : end,
      range_end: last + 1 < PAGE_LIMIT ? Buffer.from(this.d(target, last + 1)) : end,
    };
  }

  /** An etcd call, with its failures (no leader, timeouts, refused connections) as StoreUnavailableError. */
  protected async call<T>(what: string, fn: () => Promise<T>): Promise<T> {
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
        if (permanent || Date.now() + pause >= deadline)
          throw new StoreUnavailableError(`etcd ${what}: ${message}`, {
            maybeApplied: what === 'transaction' && maybeSent,
          });
      } finally {
        clearTimeout(timer);
      }
      await new Promise((r) => setTimeout(r, pause));
    }
  }

  /** One etcd transaction (a read when `compare` is empty and every op a range; `guarded`: its nested ones compare). */
  protected async txn(
    what: string,
    compare: ICompare[],
    success: IRequestOp[],
    guarded = compare.length > 0,
  ): Promise<{ succeeded: boolean; responses: IResponseOp[]; revision: string }> {
    const t0 = performance.now();
    const res = await this.call(what, () => this.client.kv.txn({ compare, success, failure: [] }));
    if (guarded) this.onTransaction?.(performance.now() - t0);
    return { succeeded: res.succeeded, responses: res.responses, revision: res.header.revision };
  }

  protected modIs(key: string, mod: string): ICompare {
    return { key: Buffer.from(key), target: 'Mod', result: 'Equal', mod_revision: mod };
  }

  // ---- the key layout ----

  /** Resolves once the store's key layout is this code's: checked on first use, then never again. */
  protected ready(): Promise<void> {
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
  protected async checkLayout(): Promise<void> {
    const marker = Buffer.from(`${this.prefix}format`);
    const old = `${this.prefix}${OLD_PAGES}`;
    const none: ICompare = {
      key: Buffer.from(old),
      range_end: prefixEnd(old),
      target: 'Mod',
      result: 'Equal',
      mod_revision: '0',
    };
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const res = await this.txn(
        'read',
        [],
        [
          { request_range: { key: marker } },
          { request_range: { key: Buffer.from(old), range_end: prefixEnd(old), count_only: true } },
        ],
      );
      const kv = res.responses[0]?.response_range?.kvs?.[0];
      if (kv) {
        const layout = kv.value.toString();
        if (layout === KEY_LAYOUT) return;
        throw new StoreUnavailableError(
          `etcd: the store under ${this.prefix} has key layout ${layout.slice(0, 40)} (key ${this.prefix}format), and this safe-resume knows layout ${KEY_LAYOUT} only: run the newer safe-resume that wrote it`,
        );
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
        throw new StoreUnavailableError(
          `etcd: ${pages} data pages under ${old} were written by an earlier safe-resume (page keys whose order breaks from page 100,000,000); they are being moved to ${this.prefix}${PAGES}, and the store serves once every one is moved${last}`,
        );
      }
      const put = await this.txn(
        'transaction',
        [{ key: marker, target: 'Create', result: 'Equal', create_revision: '0' }, none],
        [{ request_put: { key: marker, value: Buffer.from(KEY_LAYOUT) } }],
      );
      if (put.succeeded) return;
    }
    throw new StoreUnavailableError(
      `etcd: the key layout of the store under ${this.prefix} kept changing while it was checked`,
    );
  }

  /**
   * Move every page of the earlier layout (`d/<target>/<page, 8 digits or more>`) to its key in this
   * one, up to 50 pages per transaction: each page is put under its new key and its old key deleted,
   * if the old key is still as read (another replica moving the same pages at once moves each once).
   */
  protected async moveOldPages(): Promise<void> {
    const old = `${this.prefix}${OLD_PAGES}`;
    while (!this.closed) {
      const res = await this.txn(
        'read',
        [],
        [{ request_range: { key: Buffer.from(old), range_end: prefixEnd(old), limit: 50 } }],
      );
      const kvs = res.responses[0]?.response_range?.kvs ?? [];
      if (kvs.length === 0) return;
      const compare: ICompare[] = [];
      const success: IRequestOp[] = [];
      for (const kv of kvs) {
        const key = kv.key.toString();
        const [target, page, ...rest] = key.slice(old.length).split('/');
        if (!target || page === undefined || rest.length > 0)
          throw new StoreUnavailableError(`etcd: ${JSON.stringify(key)} is not a page key of the earlier layout`);
        compare.push(this.modIs(key, kv.mod_revision));
        success.push(
          {
            request_put: {
              key: Buffer.from(this.d(decodeURIComponent(target), pageOfKey(page, true))),
              value: kv.value,
            },
          },
          { request_delete_range: { key: kv.key } },
        );
      }
      // A compare that failed: another replica moved (some of) them; read what is left.
      await this.txn('transaction', compare, success);
    }
  }
}
