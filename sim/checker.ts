/**
 * The history checker: verifies SPEC guarantees S1-S5 and L1-L3 over a recorded history. It reads
 * the history only; it never changes what happened.
 */
import type { History, HistoryEvent } from './history.js';
import { TargetModel, type ModelWrite } from './read-model.js';
import { holds, slice, splice, type TargetState } from './checker-target.js';
import { Readers } from './checker-readers.js';
import { HEAL_GRACE_MS, type CheckOptions, type Guarantee, type Violation } from './guarantees.js';

export { GUARANTEES, HEAL_GRACE_MS, type CheckOptions, type Guarantee, type Violation } from './guarantees.js';
export { formatEvent, traceOf } from './trace.js';

type Ev<K extends HistoryEvent['kind']> = Extract<HistoryEvent, { kind: K }>;

/**
 * The checker, event by event: `observe` each event as it happens (a violation is known the moment
 * its event is recorded, so a run can stop there), then `finish` for what only the end can tell.
 * It reads events only; it never changes what happened.
 */
export class Checker {
  readonly violations: Violation[] = [];
  private readonly targets = new Map<string, TargetState>();
  /** Per target and requestId, every handle instance the store granted it to. */
  private readonly instances = new Map<string, Set<string>>();
  /** Writes that failed with a code that says "not applied": their bytes, checked against the data at the end. */
  private readonly notApplied: Array<{ e: Ev<'fail'>; bytes: string; offset: number }> = [];
  /** The same, by target and bytes, to catch one being applied later. */
  private readonly notAppliedBytes = new Map<string, Ev<'fail'>>();
  /** Bytes the store was seen to hold (its reads and the final content), per target: a store's own account of what it applied is not trusted for S5. */
  private readonly seen = new Map<string, Array<{ offset: number; bytes: string }>>();
  private readonly crashed = new Set<string>();
  /** When every fault ended (the 'heal' fault), if the history has one. */
  private healedAt: number | undefined;
  private readonly pending = new Map<number, { e: Ev<'invoke'>; at: number }>();
  private readonly acked: Array<{ e: Ev<'ok'>; bytes: string }> = [];
  private readonly handleState = new Map<string, { proc: string; target: string; state: string }>();
  /** L1 for readers (checker-readers.ts). */
  private readonly readers = new Readers((g, e, tgt, message) => this.violate(g, e, tgt, message));
  /** What applications may read, per target. */
  private readonly models = new Map<string, TargetModel>();
  private readonly modelWrites = new Map<number, ModelWrite>();
  /** Events observed so far: positions in real-time order for the read model. */
  private n = 0;
  private last: HistoryEvent | undefined;

  constructor(private readonly opts: CheckOptions = {}) {}

  private target(name: string): TargetState {
    let s = this.targets.get(name);
    if (!s) {
      s = {
        holder: undefined,
        extendedAt: 0,
        promisedUntil: 0,
        epoch: new Map(),
        fresh: [],
        released: new Set(),
        applied: [],
        content: { data: Buffer.alloc(0), size: 0 },
        version: 0,
        seqs: new Set(),
        bytesApplied: new Map(),
      };
      this.targets.set(name, s);
    }
    return s;
  }

  private model(name: string): TargetModel {
    let m = this.models.get(name);
    if (!m) this.models.set(name, (m = new TargetModel()));
    return m;
  }

  private violate(guarantee: Guarantee, e: HistoryEvent, tgt: string | undefined, message: string): void {
    const v: Violation = { guarantee, t: e.t, message };
    if (tgt !== undefined) v.target = tgt;
    this.violations.push(v);
  }

  /** Did another requestId freshly take the target, or was X's record released, since X's epoch? */
  private takenFrom(s: TargetState, requestId: string): boolean {
    const since = s.epoch.get(requestId);
    if (since === undefined) return true; // X's grant is not in this history: nothing to hold against it
    return s.released.has(requestId) || s.fresh.some((f) => f.requestId !== requestId && f.at >= since);
  }

  observe(e: HistoryEvent): void {
    this.n++;
    this.last = e;
    switch (e.kind) {
      case 'grant':
        return this.grant(e);
      case 'deny':
        return this.deny(e);
      case 'renew':
        for (const t of e.targets) {
          const s = this.targets.get(t);
          if (s?.holder && s.holder.session === e.session) {
            s.extendedAt = e.t;
            // A renewal may be the hold period's, which promises only the hold.
            s.promisedUntil = e.t + (this.opts.holdMs ?? 0);
          }
        }
        return;
      case 'applied':
        return this.applied(e);
      case 'released': {
        const s = this.target(e.target);
        if (s.holder?.requestId === e.requestId && s.holder.session === e.session) s.holder = undefined;
        s.released.add(e.requestId);
        return;
      }
      case 'read': {
        this.saw(e.target, e.offset, e.bytes);
        const s = this.target(e.target);
        const want = slice(s.content, e.offset, e.offset + e.length);
        if (e.bytes !== want) {
          // Bytes of a write the application was told was not applied: that is the lie to report.
          const ghost = this.notApplied.find(
            (x) => x.e.target === e.target && holds({ offset: e.offset, bytes: e.bytes }, x),
          );
          if (ghost)
            this.violate(
              'S5',
              e,
              e.target,
              `read at ${e.offset} returned the bytes of a write ${ghost.e.proc} was told ${ghost.e.code} (not applied): ${JSON.stringify(ghost.bytes.slice(0, 40))}`,
            );
          else
            this.violate(
              'S3',
              e,
              e.target,
              `read at ${e.offset} returned ${JSON.stringify(e.bytes)}, but the applied writes give ${JSON.stringify(want)}`,
            );
        }
        return;
      }
      case 'final': {
        this.saw(e.target, 0, e.bytes);
        const s = this.target(e.target);
        const all = slice(s.content, 0, s.content.size);
        if (e.bytes !== all)
          this.violate(
            'S3',
            e,
            e.target,
            `final content ${JSON.stringify(e.bytes.slice(0, 80))} differs from the applied writes ${JSON.stringify(all.slice(0, 80))}`,
          );
        return;
      }
      case 'invoke':
        this.pending.set(e.id, { e, at: this.n });
        if (e.op === 'write' && e.bytes !== undefined && e.offset !== undefined) {
          this.model(e.target).invokeWrite(
            e.id,
            { offset: e.offset, end: e.offset + e.bytes.length, bytes: e.bytes, invokedAt: this.n, proc: e.proc },
            this.modelWrites,
          );
        } else if (e.op === 'read') this.model(e.target).invokeRead(e.id, this.n);
        return;
      case 'ok':
        return this.ok(e);
      case 'fail':
        return this.fail(e);
      case 'crash':
        this.crashed.add(e.proc);
        // Its reads in flight never return: they must not hold back what the read model forgets.
        for (const { e: inv } of this.pending.values())
          if (inv.proc === e.proc && inv.op === 'read') this.model(inv.target).abandonRead(inv.id);
        return;
      case 'state':
        return this.state(e);
      case 'fault':
        if (e.fault === 'heal') this.healedAt = e.t;
        return;
    }
  }

  private grant(e: Ev<'grant'>): void {
    // S1 for readers too (checker-readers.ts).
    if (e.mode === 'read') return this.readers.granted(e, () => this.target(e.target));
    if (e.instance !== undefined) {
      const key = `${e.target}\u0000${e.requestId}`;
      let set = this.instances.get(key);
      if (!set) this.instances.set(key, (set = new Set()));
      set.add(e.instance);
    }
    const s = this.target(e.target);
    if (e.via === 'resume') {
      const since = s.epoch.get(e.requestId);
      if (since !== undefined) {
        const foreign = s.applied.slice(since).find((w) => w.requestId !== e.requestId);
        if (foreign)
          this.violate(
            'S1',
            e,
            e.target,
            `resume of ${e.requestId} granted after ${foreign.requestId} wrote ${JSON.stringify(foreign.bytes)} (version ${foreign.version})`,
          );
      }
    } else if (e.fresh) {
      // A takeover of another writer's record: only once its hold period has run out.
      const prev = s.holder;
      const hold = this.opts.holdMs;
      if (prev && prev.requestId !== e.requestId && hold !== undefined && e.t < s.extendedAt + hold) {
        this.violate(
          'L1',
          e,
          e.target,
          `${e.requestId} took ${e.target} from ${prev.requestId} ${e.t - s.extendedAt} ms after its lock was last extended, inside the ${hold} ms hold period`,
        );
      } else if (prev && prev.requestId !== e.requestId && e.t < s.promisedUntil) {
        this.violate(
          'L1',
          e,
          e.target,
          `${e.requestId} took ${e.target} from ${prev.requestId} ${e.t - s.extendedAt} ms after its lock was granted, before the holder's session was due to renew it (a granted lock lasts at least the ${this.opts.renewMs} ms renewal interval)`,
        );
      }
      s.epoch.set(e.requestId, s.applied.length);
      s.fresh.push({ requestId: e.requestId, at: s.applied.length });
      s.released.delete(e.requestId);
    }
    s.holder = { requestId: e.requestId, session: e.session };
    s.extendedAt = e.t;
    s.promisedUntil = e.t + Math.max(this.opts.holdMs ?? 0, this.opts.renewMs ?? 0);
  }

  private deny(e: Ev<'deny'>): void {
    const s = this.target(e.target);
    if (e.mode === 'write' && e.reason === 'MODIFIED' && !this.takenFrom(s, e.requestId)) {
      this.violate('L1', e, e.target, `resume of ${e.requestId} denied MODIFIED, but no other writer took ${e.target}`);
    }
    // A late request of an instance whose newer request holds the record through another session is
    // denied so that it takes nothing back: it answers a session its node left, and nobody sees it.
    const staleOk = e.stale === true && s.holder?.requestId === e.requestId && s.holder.session !== e.session;
    if (e.stale && !staleOk)
      this.violate(
        'L1',
        e,
        e.target,
        `resume of ${e.requestId} through ${e.session} denied as late, but ${s.holder ? `${s.holder.requestId} holds ${e.target} through ${s.holder.session}` : `nobody holds ${e.target}`}`,
      );
    if (e.mode === 'write' && e.reason === 'SUPERSEDED' && e.instance !== undefined && !e.stale) {
      const granted = this.instances.get(`${e.target}\u0000${e.requestId}`) ?? new Set<string>();
      if (![...granted].some((i) => i !== e.instance))
        this.violate(
          'L1',
          e,
          e.target,
          `resume of ${e.requestId} (instance ${e.instance}) denied SUPERSEDED, but no other instance of it was granted ${e.target}`,
        );
    }
    if (e.mode === 'read') this.readers.denied(e, s);
  }

  private applied(e: Ev<'applied'>): void {
    const s = this.target(e.target);
    if (!s.holder || s.holder.requestId !== e.requestId || s.holder.session !== e.session) {
      this.violate(
        'S2',
        e,
        e.target,
        `write seq ${e.seq} of ${e.requestId} via session ${e.session} applied while ${s.holder ? `${s.holder.requestId} via ${s.holder.session}` : 'nobody'} held the record`,
      );
    }
    const key = `${e.requestId}:${e.seq}`;
    if (s.seqs.has(key)) this.violate('S4', e, e.target, `seq ${e.seq} of ${e.requestId} applied twice`);
    s.seqs.add(key);
    if (e.bytes.length === 0) return;
    const n = (s.bytesApplied.get(e.bytes) ?? 0) + 1;
    s.bytesApplied.set(e.bytes, n);
    if (n > 1) this.violate('S4', e, e.target, `write ${JSON.stringify(e.bytes.slice(0, 40))} applied ${n} times`);
    const ghost = this.notAppliedBytes.get(`${e.target}\u0000${e.bytes}`);
    if (ghost)
      this.violate(
        'S5',
        e,
        e.target,
        `write ${JSON.stringify(e.bytes.slice(0, 40))} applied after ${ghost.proc} was told ${ghost.code} (not applied)`,
      );
    splice(s.content, e.offset, e.bytes);
    s.version++;
    s.applied.push({ requestId: e.requestId, bytes: e.bytes, version: e.version });
  }

  private ok(e: Ev<'ok'>): void {
    const inv = this.pending.get(e.id);
    this.pending.delete(e.id);
    if (e.op === 'open') {
      // A fresh open was granted by an open, a reclaim by a resume: either way the node kept it.
      this.readers.opened(e.target, e.requestId);
    }
    // Checked at the end: with processes on one host, an acknowledgement and the store's record
    // of the write may carry the same millisecond.
    if (e.op === 'write' && inv?.e.bytes) {
      this.acked.push({ e, bytes: inv.e.bytes });
      const w = this.modelWrites.get(e.id);
      this.modelWrites.delete(e.id);
      if (w) this.model(e.target).ack(w, this.n);
    }
    if (e.op === 'read' && inv && e.bytes !== undefined) {
      const v = this.model(e.target).read(e.id, inv.e.offset ?? 0, inv.e.length ?? e.bytes.length, e.bytes, inv.at);
      if (v) this.violate(v.guarantee, e, e.target, `${e.proc}: ${v.message}`);
    }
  }

  private fail(e: Ev<'fail'>): void {
    // A reclaim refused MODIFIED: its application was told (the failure names the requestId it reclaimed).
    if (e.op === 'open' && e.code === 'MODIFIED') this.readers.tellApp(e.target, e.requestId);
    const inv = this.pending.get(e.id);
    this.pending.delete(e.id);
    if (e.op === 'read') this.model(e.target).abandonRead(e.id);
    if (e.op !== 'write' || !inv?.e.bytes) return;
    const w = this.modelWrites.get(e.id);
    this.modelWrites.delete(e.id);
    // Every code but OUTCOME_UNKNOWN says the write was not applied, now or later.
    if (e.code === 'OUTCOME_UNKNOWN') return;
    if (w) w.rejected = true;
    this.notApplied.push({ e, bytes: inv.e.bytes, offset: inv.e.offset ?? 0 });
    this.notAppliedBytes.set(`${e.target}\u0000${inv.e.bytes}`, e);
    if (inv.e.bytes.length > 0 && this.target(e.target).bytesApplied.has(inv.e.bytes)) {
      this.violate(
        'S5',
        e,
        e.target,
        `write ${JSON.stringify(inv.e.bytes.slice(0, 40))} by ${e.proc} rejected ${e.code} (not applied), but the store applied it`,
      );
    }
  }

  private state(e: Ev<'state'>): void {
    this.handleState.set(`${e.proc}\u0000${e.requestId}`, { proc: e.proc, target: e.target, state: e.to });
    // A handle becomes active again only through a granted resume that reached its node.
    if (e.to === 'active') {
      this.readers.active(e.target, e.requestId);
    }
    // Storage has been reachable since the heal: a pause must end with an answer, not a timeout.
    const healedAt = this.healedAt;
    if (
      e.to === 'invalidated' &&
      e.reason === 'TIMEOUT' &&
      healedAt !== undefined &&
      e.t > healedAt + HEAL_GRACE_MS &&
      !this.crashed.has(e.proc)
    ) {
      this.violate(
        'L2',
        e,
        e.target,
        `handle ${e.requestId} of ${e.proc} timed out paused ${e.t - healedAt} ms after storage was back`,
      );
    }
    // SUPERSEDED only if another instance of the requestId was granted the target (a handle moved):
    // a handle taken back by a late request of its own instance, from a session its node left, was not.
    if (e.to === 'invalidated' && e.reason === 'SUPERSEDED') {
      const granted = this.instances.get(`${e.target}\u0000${e.requestId}`);
      if (granted && granted.size <= 1)
        this.violate(
          'L1',
          e,
          e.target,
          `handle ${e.requestId} of ${e.proc} invalidated SUPERSEDED, but no other instance of it was granted ${e.target}`,
        );
    }
    if (e.to === 'invalidated' && e.reason === 'MODIFIED') {
      this.readers.tellApp(e.target, e.requestId);
      const s = this.target(e.target);
      const isWriter = s.epoch.has(e.requestId);
      if (isWriter && !this.takenFrom(s, e.requestId))
        this.violate(
          'L1',
          e,
          e.target,
          `handle ${e.requestId} of ${e.proc} invalidated MODIFIED, but no other writer took ${e.target}`,
        );
    }
  }

  private saw(tgt: string, offset: number, bytes: string): void {
    const list = this.seen.get(tgt);
    if (list) list.push({ offset, bytes });
    else this.seen.set(tgt, [{ offset, bytes }]);
  }

  /** What only the end of a run can tell (acknowledged writes applied, rejected ones absent, nothing stuck); every violation, by time. */
  finish(): Violation[] {
    for (const { e, bytes } of this.acked) {
      if (!this.target(e.target).bytesApplied.has(bytes))
        this.violate(
          'S3',
          e,
          e.target,
          `write ${JSON.stringify(bytes.slice(0, 40))} by ${e.requestId} acknowledged but never applied`,
        );
    }
    for (const w of this.notApplied) {
      const { e, bytes } = w;
      if (bytes.length === 0) continue;
      const inData = (this.seen.get(e.target) ?? []).some((b) => holds(b, w));
      if (inData)
        this.violate(
          'S5',
          e,
          e.target,
          `write ${JSON.stringify(bytes.slice(0, 40))} by ${e.proc} rejected ${e.code} (not applied), but it shows up in the data`,
        );
    }
    const end = this.last;
    if (end) {
      for (const h of this.handleState.values()) {
        if (!this.crashed.has(h.proc) && (h.state === 'paused' || h.state === 'resuming')) {
          this.violate('L2', end, h.target, `a handle of ${h.proc} on ${h.target} is still ${h.state} at the end`);
        }
      }
      for (const { e: inv } of this.pending.values()) {
        if (!this.crashed.has(inv.proc))
          this.violate('L3', end, inv.target, `${inv.op} #${inv.id} by ${inv.proc} on ${inv.target} never completed`);
      }
    }
    return [...this.violations].sort((a, b) => a.t - b.t);
  }
}

/** Check a whole recorded history. */
export function check(history: History, opts: CheckOptions = {}): Violation[] {
  const c = new Checker(opts);
  for (const e of history) c.observe(e);
  return c.finish();
}
