/**
 * What the etcd store's batches read of their targets, and the writes a decision becomes: a target's keys
 * read with their revisions into its state, and a decision's effects turned into puts and deletes.
 */
import type { IRequestOp } from 'etcd3/lib/rpc.js';
import type * as rules from './rules.js';
import type { ChangedRanges } from '../errors.js';
import {
  ABSENT,
  PAGE,
  enc,
  json,
  metaOf,
  pageOfKey,
  prefixEnd,
  type Kv,
  type Meta,
  type TargetState,
} from './etcd-keys.js';
import { EtcdLeases } from './etcd-leases.js';
import { changedOf, changedRanges, MAX_CHANGED_PAGES } from './rules-changed.js';
import { isZeroPage, type LockRecord, type Tombstone } from './types.js';

/** etcd's default --max-txn-ops is 128: a batch stays below it in compares, reads and writes. */
export const MAX_TXN_OPS = 120;

/** The store's connection and leases, and how its batches read targets and turn decisions into writes. */
export class EtcdTargets extends EtcdLeases {
  /**
   * Read targets and pages in read transactions of up to MAX_TXN_OPS ranges, at once: a target with the
   * pages it wants in one (one revision, so the bytes are those of the version read); pages of targets
   * not read (decided on what this store committed) anywhere.
   */
  protected async readMany(
    targets: string[],
    wantPages: ReadonlyArray<readonly [string, number]>,
  ): Promise<{ states: Map<string, TargetState>; pages: Map<string, Uint8Array> }> {
    const chunks: Array<{ targets: string[]; pages: Array<readonly [string, number]> }> = [];
    const add = (ts: string[], ps: Array<readonly [string, number]>) => {
      const last = chunks[chunks.length - 1];
      if (last && last.targets.length + last.pages.length + ts.length + ps.length <= MAX_TXN_OPS) {
        last.targets.push(...ts);
        last.pages.push(...ps);
      } else chunks.push({ targets: [...ts], pages: [...ps] });
    };
    const pagesOf = new Map<string, Array<readonly [string, number]>>();
    for (const p of wantPages) pagesOf.set(p[0], [...(pagesOf.get(p[0]) ?? []), p]);
    for (const t of targets) {
      add([t], pagesOf.get(t) ?? []);
      pagesOf.delete(t);
    }
    for (const ps of pagesOf.values()) for (const p of ps) add([], [p]);
    const states = new Map<string, TargetState>();
    const pages = new Map<string, Uint8Array>();
    for (const part of await Promise.all(chunks.map((c) => this.readTargets(c.targets, c.pages)))) {
      for (const [t, s] of part.states) states.set(t, s);
      for (const [k, v] of part.pages) pages.set(k, v);
    }
    return { states, pages };
  }

  /**
   * What changed in `target` since version `since` (a resume denied MODIFIED): its v key and its pages'
   * versions, read at one revision in pages of 1,000 keys, at most MAX_CHANGED_PAGES keys (past them,
   * the rest of the target counts as changed).
   */
  protected async changedSince(target: string, since: number): Promise<ChangedRanges> {
    const prefix = this.w(target);
    const end = prefixEnd(prefix);
    const pages: number[] = [];
    let from = Buffer.from(prefix);
    let revision: string | undefined;
    let meta: Meta | undefined;
    let seen = 0;
    let last = -1;
    for (;;) {
      const range = { key: from, range_end: end, limit: 1000, ...(revision ? { revision } : {}) };
      const res = await this.txn(
        'read',
        [],
        [{ request_range: range }, ...(revision ? [] : [{ request_range: { key: Buffer.from(this.k(target, 'v')) } }])],
      );
      if (!revision) {
        revision = res.revision;
        const v = res.responses[1]?.response_range?.kvs?.[0];
        meta = v
          ? json<Meta>({ value: v.value, mod: v.mod_revision, lease: v.lease }, { version: 0, size: 0 })
          : undefined;
        // Changes before what the target keeps are not known: the whole target may have changed.
        if (meta && (meta.from === undefined || since < meta.from))
          return changedOf(undefined, meta.fixed || meta.size);
      }
      const r = res.responses[0]?.response_range;
      const kvs = r?.kvs ?? [];
      for (const kv of kvs) {
        last = pageOfKey(kv.key.toString().slice(prefix.length));
        if (Number(kv.value.toString()) > since) pages.push(last);
      }
      seen += kvs.length;
      if (!r?.more || kvs.length === 0) return changedRanges(pages);
      if (seen >= MAX_CHANGED_PAGES) {
        if (pages[pages.length - 1] !== last) pages.push(last);
        return changedRanges(pages, true, meta ? meta.fixed || meta.size : 0);
      }
      from = Buffer.concat([kvs[kvs.length - 1]!.key, Buffer.from([0])]);
    }
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
        // A target nobody wrote yet keeps every change; one of an earlier version from its next write on.
        from: v.value ? meta.from : 0,
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
    it: { target: string },
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
    // From now on this target's writes keep their pages' versions (a target of an earlier version).
    s.from ??= s.version;
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
          // The version that last wrote the page, kept when it is freed too (its freeing is a change).
          put(this.w(target, page), Buffer.from(String(s.version + 1)));
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
