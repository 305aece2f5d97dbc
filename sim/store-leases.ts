/**
 * The simulation's model of the etcd store's leases (SimLeaseOptions): etcd's side shared by every
 * store instance, and the rules that decide on whether a target's lock key still hangs on a live lease.
 */
import type { SyncStore } from '../store/base.js';
import * as leases from '../store/leases.js';
import * as rules from '../store/rules.js';
import type { Tx } from '../store/rules.js';
import { restore } from './store-undo.js';

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

/** What the lease rules use of the store instance they serve. */
export interface LeaseRulesStore {
  /** Run `fn` in one transaction of the store. */
  tx<T>(fn: (tx: Tx) => T): T;
  /** The store's clock. */
  now: () => number;
  /** How long a commit may take to land (the store's busy wait). */
  commitMs: number;
  /** The running transaction's undo log. */
  undo: Array<() => void>;
}

/**
 * The rules of the lease model (SimLeaseOptions): open, resume, close and renew decide on whether
 * the target's lock key still hangs on a live lease, and move it with the record. Granting a lease
 * and keeping it alive are not part of the transaction (they are etcd calls of their own): a
 * transaction rolled back leaves them done; a lock key put or deleted is undone with it.
 */
export function leaseRules(o: SimLeaseOptions, store: LeaseRulesStore): Partial<SyncStore> {
  const shared = o.state;
  const fresh = o.fresh ?? true;
  const commitMs = store.commitMs;
  const mine = new Map<string, SimLease>();
  const now = store.now;
  const ttlOf = (ms: number) =>
    fresh ? leases.ttlSeconds(ms, commitMs, o.renewMs) : Math.max(1, Math.ceil(ms / 1000));
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
    store.undo.push(() => restore(shared.locks, target, prev));
    if (id === undefined) shared.locks.delete(target);
    else shared.locks.set(target, id);
  };
  /** Apply a decision, the lock key with the record: put on the session's lease, or deleted. */
  const apply = <T>(
    tx: Tx,
    target: string,
    d: rules.Decision<T>,
    lease: { key: string; lease: SimLease } | undefined,
  ): T => {
    for (const e of d.effects) {
      if (e.kind === 'put' && lease) setLock(target, carrier(lease));
      else if (e.kind === 'delete') setLock(target, undefined);
    }
    return rules.apply(tx, target, d);
  };
  return {
    open: (req) =>
      store.tx((tx) => {
        const lease = req.mode === 'write' ? leaseOf(req.session, ttlOf(req.leaseMs)) : undefined;
        return apply(tx, req.target, rules.decideOpen(view(tx, req.target), req, now(), tx.maxSize), lease);
      }),
    resume: (reqs) =>
      store.tx((tx) =>
        reqs.map((req) => {
          const lease = req.mode === 'write' ? leaseOf(req.session, ttlOf(req.leaseMs)) : undefined;
          return apply(tx, req.target, rules.decideResume(view(tx, req.target), req, now()), lease);
        }),
      ),
    close: (ref, session) =>
      store.tx((tx) => apply(tx, ref.target, rules.decideClose(view(tx, ref.target), ref, session), undefined)),
    renew: (session, refs, leaseMs) =>
      store.tx((tx) => {
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
