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
 *   w/<target>/<page>   the version that last wrote the page, or left it all zeros (kept when the page key is deleted)
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
 * Group commit: the operations of one turn on different targets are decided together: their keys read
 * in read transactions sent at once, their effects in one write transaction of up to 16 groups, each a
 * nested transaction guarded by its own targets' revisions (within etcd's default 128 operations per
 * transaction). A group whose compares fail is decided again, then each of its operations on its own.
 */
import type { IKeyValue, IRequestOp } from 'etcd3/lib/rpc.js';
import * as rules from './rules.js';
import { extentsOf, pageSpan } from './rules-extents.js';
import { MAX_ATTEMPTS } from './etcd-connection.js';
import { EtcdBatches, MAX_TXN_OPS } from './etcd-batches.js';
import {
  ABSENT,
  PAGE,
  PAGES,
  enc,
  json,
  pageOfKey,
  prefixEnd,
  type Kv,
  type Meta,
  type TargetState,
} from './etcd-keys.js';
import {
  StoreUnavailableError,
  type AccessRequest,
  type AccessResult,
  type HandleRef,
  type LockRecord,
  type OpenRequest,
  type OpenResult,
  MAX_EXTENT_PAGES,
  type ExtentsRequest,
  type ExtentsResult,
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

export type { EtcdStoreOptions } from './etcd-connection.js';

export class EtcdStore extends EtcdBatches implements Store {
  readonly kind = 'etcd';

  // ---- the store ----

  open(req: OpenRequest): Promise<OpenResult> {
    const grant = req.mode === 'write' ? { session: req.session, ttl: this.ttlOf(req.leaseMs) } : undefined;
    return this.enqueue({
      target: req.target,
      pages: [],
      touch: 0,
      bytes: 0,
      grant,
      decide: (s) => rules.decideOpen(this.view(s), req, this.now()),
      decided: (out) => ({ op: 'open', req, out: out as OpenResult }),
    });
  }

  resume(reqs: ResumeRequest[]): Promise<ResumeOutcome[]> {
    // Each item is decided atomically on its own (the contract); a batch carries them together.
    return Promise.all(
      reqs.map((req) => {
        const grant = req.mode === 'write' ? { session: req.session, ttl: this.ttlOf(req.leaseMs) } : undefined;
        return this.enqueue<ResumeOutcome>({
          target: req.target,
          pages: [],
          touch: 0,
          bytes: 0,
          grant,
          decide: (s) => rules.decideResume(this.view(s), req, this.now()),
          decided: (out) => ({ op: 'resume', req, out: out as ResumeOutcome }),
        }).then(async (out) =>
          // A denial says what changed since the version the handle saw, read once it is decided.
          !out.granted && out.code === 'MODIFIED' && req.version !== undefined
            ? rules.withChanged(out, await this.changedSince(req.target, req.version))
            : out,
        );
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
    // Two puts per page: its data (or its deletion) and its version.
    const touch = req.data.length === 0 ? 0 : 2 * (Math.floor((end - 1) / PAGE) - Math.floor(req.offset / PAGE) + 1);
    return this.enqueue({
      target: req.target,
      pages,
      touch,
      bytes: req.data.length,
      decide: (s) => rules.decideWrite(this.view(s), req),
      decided: (out) => ({ op: 'write', req, out: out as WriteResult }),
    });
  }

  async read(req: ReadRequest): Promise<ReadResult> {
    if (!this.layoutOk) await this.ready();
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const first = Math.floor(req.offset / PAGE);
      const last = Math.floor((req.offset + Math.max(req.length, 1) - 1) / PAGE);
      const kp = `${this.prefix}k/${enc(req.target)}/`;
      this.stats.reads++;
      // The keys and the pages in one read transaction: one revision, so the bytes are the version's.
      const res = await this.txn(
        'read',
        [],
        [
          { request_range: { key: Buffer.from(kp), range_end: prefixEnd(kp) } },
          { request_range: this.pageRange(req.target, first, last) },
        ],
      );
      const kvs = new Map<string, Kv>();
      for (const kv of res.responses[0]?.response_range?.kvs ?? [])
        kvs.set(kv.key.toString(), { value: kv.value, mod: kv.mod_revision, lease: kv.lease });
      const r = kvs.get(this.k(req.target, 'r')) ?? ABSENT;
      const v = kvs.get(this.k(req.target, 'v')) ?? ABSENT;
      const view: rules.TargetView = {
        record: json<LockRecord | undefined>(r, undefined),
        version: 0,
        fixedSize: 0,
        tombstones: () => [],
        access: undefined,
      };
      const m = json<Meta>(v, { version: 0, size: 0 });
      const refused = rules.decideRead(view, req);
      let out: ReadResult;
      if (refused) out = refused;
      else {
        const end = Math.min(m.size, req.offset + req.length);
        const data = new Uint8Array(Math.max(0, end - req.offset));
        const dp = this.d(req.target);
        for (const kv of res.responses[1]?.response_range?.kvs ?? []) {
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
      const ok = await this.txn(
        'transaction',
        [this.modIs(this.k(req.target, 'r'), r.mod), this.modIs(this.k(req.target, 'v'), v.mod)],
        puts,
      );
      if (ok.succeeded) return out;
    }
    throw new StoreUnavailableError(`etcd: ${req.target} kept changing while it was read`);
  }

  editAccess(req: AccessRequest): Promise<AccessResult> {
    return this.enqueue({
      target: req.target,
      pages: [],
      touch: 0,
      bytes: 0,
      decide: (s) => rules.decideAccess(this.view(s), req),
      decided: (out) => ({ op: 'access', req, out: out as AccessResult }),
    });
  }

  async access(target: string): Promise<TargetAccess | undefined> {
    const { states } = await this.readTargets([target], []);
    return rules.accessOf(this.view(states.get(target)!));
  }

  close(ref: HandleRef, session: string): Promise<boolean> {
    return this.enqueue({
      target: ref.target,
      pages: [],
      touch: 0,
      bytes: 0,
      decide: (s) => rules.decideClose(this.view(s), ref, session),
      decided: (out) => ({ op: 'close', ref, session, out: out as boolean }),
    });
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
          if (this.leaseMode && held && s.live && s.lockLease === lease)
            return rules.decideRenew(this.view(s), ref, session, s.record!.expiresAt);
          return rules.decideRenew(this.view(s), ref, session, this.now() + leaseMs);
        },
        decided: (out) => ({
          op: 'renew',
          session,
          refs: [ref],
          out: { lost: out ? [out as RenewResult['lost'][number]] : [] },
        }),
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
    for (const part of await Promise.all(chunks.map((c) => this.readTargets(c, []))))
      for (const [t, st] of part.states) states.set(t, st);
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

  /**
   * The record and the names of the range's page keys (at most MAX_EXTENT_PAGES of them, no values) in
   * one read transaction: one revision. Fenced as a read is; not kept in the decision log (it changes
   * nothing and the checker judges nothing of it).
   */
  async extents(req: ExtentsRequest): Promise<ExtentsResult> {
    if (!this.layoutOk) await this.ready();
    const kp = `${this.prefix}k/${enc(req.target)}/`;
    const span = req.length > 0 ? pageSpan(req.offset, req.length) : undefined;
    const ops: IRequestOp[] = [{ request_range: { key: Buffer.from(kp), range_end: prefixEnd(kp) } }];
    if (span)
      ops.push({
        request_range: {
          ...this.pageRange(req.target, span.first, span.last),
          keys_only: true,
          limit: MAX_EXTENT_PAGES,
        },
      });
    this.stats.reads++;
    const res = await this.txn('read', [], ops);
    const kvs = new Map<string, Kv>();
    for (const kv of res.responses[0]?.response_range?.kvs ?? [])
      kvs.set(kv.key.toString(), { value: kv.value, mod: kv.mod_revision, lease: kv.lease });
    const view: rules.TargetView = {
      record: json<LockRecord | undefined>(kvs.get(this.k(req.target, 'r')) ?? ABSENT, undefined),
      version: 0,
      fixedSize: 0,
      tombstones: () => [],
      access: undefined,
    };
    const refused = rules.decideRead(view, req);
    if (refused) return refused;
    const m = json<Meta>(kvs.get(this.k(req.target, 'v')) ?? ABSENT, { version: 0, size: 0 });
    const dp = this.d(req.target);
    const pages = (res.responses[1]?.response_range?.kvs ?? []).map((kv) =>
      pageOfKey(kv.key.toString().slice(dp.length)),
    );
    return extentsOf(req, pages, MAX_EXTENT_PAGES, m.version);
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
    const res = await this.txn(
      'read',
      [],
      [{ request_range: { key: Buffer.from(p), range_end: prefixEnd(p), count_only: true } }],
    );
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
    const res = await this.call('lease ttl', () =>
      this.client.leaseClient.leaseTimeToLive({ ID: s.lockLease, keys: false }),
    );
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
      const res = await this.txn(
        'read',
        [],
        [{ request_range: { key: from, range_end: end, limit: 1000, ...(revision ? { revision } : {}) } }],
      );
      revision ??= res.revision;
      const r = res.responses[0]?.response_range;
      const kvs = r?.kvs ?? [];
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
