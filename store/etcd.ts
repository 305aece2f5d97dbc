/**
 * The store over an etcd cluster, so replicas on several hosts share one store. Each rule is the pure
 * decision of store/rules.ts: the adapter reads a target's keys with their revisions, decides, and
 * commits the decision's writes in one etcd transaction guarded by those revisions; if another
 * replica changed any of them meanwhile, it reads and decides again (a bounded number of times).
 *
 * Keys, under a prefix (default `/safe-resume/`):
 *   r/<target>          the record (JSON)
 *   t/<target>          the tombstones (JSON, newest first)
 *   v/<target>          the version and size (JSON)
 *   d/<target>/<page>   the data, in 4 KiB pages (an untouched page costs nothing)
 *
 * Lock expiries are set and compared on this process's clock, as SQLite's are on its host's: for
 * replicas on several hosts that is only as good as their clocks agree. Locks hung on etcd leases (one
 * per session, expiry judged by etcd) are the next step; see docs/etcd.md.
 */
import { Etcd3, type IKeyValue } from 'etcd3';
import type { IOperation } from 'etcd3/lib/builder.js';
import { SafeResumeError } from '../errors.js';
import * as rules from './rules.js';
import {
  StoreUnavailableError,
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
  type Tombstone,
  type WriteRequest,
  type WriteResult,
} from './types.js';

const PAGE = 4096;
/** Tries of one rule when other replicas keep changing the target under it. */
const MAX_ATTEMPTS = 32;

export interface EtcdStoreOptions {
  /** Key prefix (default `/safe-resume/`); stores with different prefixes share nothing. */
  prefix?: string;
  /** The clock lock expiries are judged on (default: this process's wall clock). */
  now?: () => number;
  /** How long one etcd call may take before the store counts as unavailable (default 5000 ms). */
  timeoutMs?: number;
}

/** One key as read: its value and the revision the transaction is guarded by (0: absent). */
interface Read {
  value: string | undefined;
  mod: string;
}

const pageKey = (n: number) => String(n).padStart(8, '0');

export class EtcdStore implements Store {
  readonly kind = 'etcd';
  private readonly client: Etcd3;
  private readonly prefix: string;
  private readonly now: () => number;
  private readonly timeoutMs: number;

  constructor(readonly endpoints: string[], opts: EtcdStoreOptions = {}) {
    this.client = new Etcd3({ hosts: endpoints.map((e) => (e.includes('://') ? e : `http://${e}`)), dialTimeout: opts.timeoutMs ?? 5000 });
    this.prefix = opts.prefix ?? '/safe-resume/';
    this.now = opts.now ?? (() => Date.now());
    this.timeoutMs = opts.timeoutMs ?? 5000;
  }

  private key(kind: 'r' | 't' | 'v', target: string): string {
    return `${this.prefix}${kind}/${target}`;
  }

  private dataPrefix(target: string): string {
    return `${this.prefix}d/${target}/`;
  }

  /** An etcd call, with its failures (no leader, timeouts, refused connections) as StoreUnavailableError. */
  private async call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        fn(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no answer within ${this.timeoutMs} ms`)), this.timeoutMs);
        }),
      ]);
    } catch (err) {
      if (err instanceof SafeResumeError) throw err;
      throw new StoreUnavailableError(`etcd ${what}: ${(err as Error).message}`);
    } finally {
      clearTimeout(timer);
    }
  }

  private async get(key: string): Promise<Read> {
    const res = await this.call('get', () => this.client.get(key).exec());
    const kv: IKeyValue | undefined = res.kvs[0];
    return kv ? { value: kv.value.toString(), mod: kv.mod_revision } : { value: undefined, mod: '0' };
  }

  /**
   * Decide a rule on `target` and commit its effects guarded by what was read; again while another
   * replica changed the target in between.
   */
  private async decide<T>(target: string, decide: (v: rules.TargetView) => rules.Decision<T>): Promise<T> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const [rec, meta] = await Promise.all([this.get(this.key('r', target)), this.get(this.key('v', target))]);
      let tombs: Read | undefined;
      const parsedMeta = meta.value ? (JSON.parse(meta.value) as { version: number; size: number }) : { version: 0, size: 0 };
      // Tombstones are read only when the rule asks; a rule that asks is decided again with them read.
      let needTombs = false;
      const view: rules.TargetView = {
        record: rec.value ? (JSON.parse(rec.value) as LockRecord) : undefined,
        version: parsedMeta.version,
        tombstones: () => {
          if (tombs) return tombs.value ? (JSON.parse(tombs.value) as Tombstone[]) : [];
          needTombs = true;
          return [];
        },
      };
      let d = decide(view);
      if (needTombs) {
        tombs = await this.get(this.key('t', target));
        d = decide(view);
      }
      if (d.effects.length === 0) {
        // Nothing to write: the decision stands on what was read (a read-only check needs no guard).
        return d.out;
      }
      const ok = await this.commitEffects(target, d.effects, rec, meta, tombs, parsedMeta);
      if (ok) return d.out;
    }
    throw new StoreUnavailableError(`etcd: ${target} kept changing under ${MAX_ATTEMPTS} attempts`);
  }

  /** One transaction: every key read unchanged, then the effects. False if a compare failed. */
  private async commitEffects(target: string, effects: rules.Effect[], rec: Read, meta: Read, tombs: Read | undefined, m: { version: number; size: number }): Promise<boolean> {
    const txn = this.client.if(this.key('r', target), 'Mod', '==', rec.mod).and(this.key('v', target), 'Mod', '==', meta.mod);
    if (tombs) txn.and(this.key('t', target), 'Mod', '==', tombs.mod);
    const ops: IOperation[] = [];
    let version = m.version;
    let size = m.size;
    for (const e of effects) {
      if (e.kind === 'put') ops.push(this.client.put(this.key('r', target)).value(JSON.stringify(e.record)));
      else if (e.kind === 'delete') ops.push(this.client.delete().key(this.key('r', target)));
      else if (e.kind === 'tombstones') ops.push(this.client.put(this.key('t', target)).value(JSON.stringify(e.tombstones)));
      else {
        for (const [page, bytes] of await this.pagesAfterWrite(target, e.offset, e.data)) ops.push(this.client.put(this.dataPrefix(target) + pageKey(page)).value(Buffer.from(bytes)));
        version++;
        size = Math.max(size, e.offset + e.data.length);
        ops.push(this.client.put(this.key('v', target)).value(JSON.stringify({ version, size })));
      }
    }
    const res = await this.call('transaction', () => txn.then(...ops).commit());
    return res.succeeded;
  }

  /** The pages a write touches, with their bytes after it (a partial page merges with what was there). */
  private async pagesAfterWrite(target: string, offset: number, data: Uint8Array): Promise<Array<[number, Uint8Array]>> {
    const out: Array<[number, Uint8Array]> = [];
    const end = offset + data.length;
    for (let page = Math.floor(offset / PAGE); page * PAGE < end; page++) {
      const start = page * PAGE;
      const from = Math.max(offset, start);
      const to = Math.min(end, start + PAGE);
      if (from === start && to === start + PAGE) {
        out.push([page, data.subarray(from - offset, to - offset)]);
        continue;
      }
      const old = await this.call('get', () => this.client.get(this.dataPrefix(target) + pageKey(page)).buffer());
      const bytes = new Uint8Array(Math.max(to - start, old?.length ?? 0));
      if (old) bytes.set(old);
      bytes.set(data.subarray(from - offset, to - offset), from - start);
      out.push([page, bytes]);
    }
    return out;
  }

  open(req: OpenRequest): Promise<OpenResult> {
    return this.decide(req.target, (v) => rules.decideOpen(v, req, this.now()));
  }

  async resume(reqs: ResumeRequest[]): Promise<ResumeOutcome[]> {
    // Each item is decided atomically on its own (the contract), in parallel.
    return Promise.all(reqs.map((r) => this.decide(r.target, (v) => rules.decideResume(v, r, this.now()))));
  }

  write(req: WriteRequest): Promise<WriteResult> {
    return this.decide(req.target, (v) => rules.decideWrite(v, req));
  }

  async read(req: ReadRequest): Promise<ReadResult> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const [rec, meta] = await Promise.all([this.get(this.key('r', req.target)), this.get(this.key('v', req.target))]);
      const view: rules.TargetView = { record: rec.value ? (JSON.parse(rec.value) as LockRecord) : undefined, version: 0, tombstones: () => [] };
      const refused = rules.decideRead(view, req);
      if (refused) return refused;
      const m = meta.value ? (JSON.parse(meta.value) as { version: number; size: number }) : { version: 0, size: 0 };
      const end = Math.min(m.size, req.offset + req.length);
      const data = new Uint8Array(Math.max(0, end - req.offset));
      if (data.length > 0) {
        const first = Math.floor(req.offset / PAGE);
        const last = Math.floor((end - 1) / PAGE);
        const pages = await this.call('get', () => this.client.getAll().inRange({ start: this.dataPrefix(req.target) + pageKey(first), end: this.dataPrefix(req.target) + pageKey(last + 1) }).exec());
        for (const kv of pages.kvs) {
          const page = Number(kv.key.toString().slice(this.dataPrefix(req.target).length));
          const start = page * PAGE;
          const from = Math.max(req.offset, start);
          const to = Math.min(end, start + kv.value.length);
          if (to > from) data.set(kv.value.subarray(from - start, to - start), from - req.offset);
        }
      }
      // The data belongs to the version read only if nothing changed while the pages were read.
      const again = await this.get(this.key('v', req.target));
      if (again.mod === meta.mod) return { ok: true, data, version: m.version };
    }
    throw new StoreUnavailableError(`etcd: ${req.target} kept changing while it was read`);
  }

  close(ref: HandleRef, session: string): Promise<boolean> {
    return this.decide(ref.target, (v) => rules.decideClose(v, ref, session));
  }

  async renew(session: string, refs: HandleRef[], leaseMs: number): Promise<RenewResult> {
    const expiresAt = this.now() + leaseMs;
    const lost = await Promise.all(refs.map((ref) => this.decide(ref.target, (v) => rules.decideRenew(v, ref, session, expiresAt))));
    return { lost: lost.filter((l): l is NonNullable<typeof l> => l !== undefined) };
  }

  async record(target: string): Promise<LockRecord | undefined> {
    const r = await this.get(this.key('r', target));
    return r.value ? (JSON.parse(r.value) as LockRecord) : undefined;
  }

  async ping(): Promise<void> {
    await this.call('status', () => this.client.maintenance.status());
  }

  async shutdown(): Promise<void> {
    this.client.close();
  }
}
