/**
 * The history checker: verifies SPEC guarantees S1-S5 and L1-L3 over a recorded history. It reads
 * the history only; it never changes what happened.
 */
import type { History, HistoryEvent } from './history.js';

export type Guarantee = 'S1' | 'S2' | 'S3' | 'S4' | 'S5' | 'L1' | 'L2' | 'L3';

export interface Violation {
  guarantee: Guarantee;
  t: number;
  target?: string;
  message: string;
}

export const GUARANTEES: Record<Guarantee, string> = {
  S1: 'safe resume: a granted resume implies no other writer wrote since the grant (for a reader: since the version it saw)',
  S2: 'fencing: every applied write came from the record holder through its current session',
  S3: 'durability: every acknowledged write was applied and stays readable',
  S4: 'exactly once: every write is applied at most once',
  S5: 'truthful outcomes: a write that rejects with a code meaning "not applied" is never applied',
  L1: 'no needless denial: MODIFIED only if another writer took the target, SUPERSEDED only if another instance of the requestId was granted',
  L2: 'no stuck pause: once storage is reachable, every paused handle leaves paused',
  L3: 'progress: every operation completes',
};

interface TargetState {
  holder: { requestId: string; session: string } | undefined;
  /** For each requestId: index into `applied` when its current record was freshly granted. */
  epoch: Map<string, number>;
  /** requestIds granted the target freshly, in order, with the index into `applied` at that time. */
  fresh: Array<{ requestId: string; at: number }>;
  /** requestIds whose record was released (closed). */
  released: Set<string>;
  applied: Array<{ requestId: string; bytes: string; version: number }>;
  content: string;
  version: number;
  seqs: Set<string>;
  bytesApplied: Map<string, number>;
}

function splice(content: string, offset: number, bytes: string): string {
  const base = content.length < offset ? content.padEnd(offset, '\u0000') : content;
  return base.slice(0, offset) + bytes + base.slice(offset + bytes.length);
}

/** How long after every fault healed a paused handle may still time out (its timer started before). */
export const HEAL_GRACE_MS = 3000;

export function check(history: History): Violation[] {
  const out: Violation[] = [];
  const targets = new Map<string, TargetState>();
  const target = (name: string): TargetState => {
    let s = targets.get(name);
    if (!s) {
      s = { holder: undefined, epoch: new Map(), fresh: [], released: new Set(), applied: [], content: '', version: 0, seqs: new Set(), bytesApplied: new Map() };
      targets.set(name, s);
    }
    return s;
  };
  const violate = (guarantee: Guarantee, e: HistoryEvent, tgt: string | undefined, message: string) => {
    const v: Violation = { guarantee, t: e.t, message };
    if (tgt !== undefined) v.target = tgt;
    out.push(v);
  };
  /** Did another requestId freshly take the target, or was X's record released, since X's epoch? */
  const takenFrom = (s: TargetState, requestId: string): boolean => {
    const since = s.epoch.get(requestId);
    if (since === undefined) return true; // X's grant is not in this history: nothing to hold against it
    return s.released.has(requestId) || s.fresh.some((f) => f.requestId !== requestId && f.at >= since);
  };

  /** Per target and requestId, every handle instance the store granted it to. */
  const instances = new Map<string, Set<string>>();
  /** Writes that failed with a code that says "not applied": their bytes, checked against every applied write at the end. */
  const notApplied: Array<{ e: Extract<HistoryEvent, { kind: 'fail' }>; bytes: string }> = [];
  /** Bytes the store was seen to hold (its reads and the final content), per target: a store's own account of what it applied is not trusted for S5. */
  const seen = new Map<string, string[]>();
  const saw = (tgt: string, bytes: string) => {
    const list = seen.get(tgt);
    if (list) list.push(bytes);
    else seen.set(tgt, [bytes]);
  };
  const crashed = new Set<string>();
  /** When every fault ended (the 'heal' fault), if the history has one. */
  let healedAt: number | undefined;
  const pending = new Map<number, Extract<HistoryEvent, { kind: 'invoke' }>>();
  const acked: Array<{ e: Extract<HistoryEvent, { kind: 'ok' }>; bytes: string }> = [];
  const handleState = new Map<string, { proc: string; target: string; state: string }>();

  for (const e of history) {
    switch (e.kind) {
      case 'grant': {
        if (e.mode === 'read') {
          // S1 for readers: a granted resume means nothing was written since the version the reader saw.
          const seen = e.seenVersion;
          const later = seen === undefined || e.via !== 'resume' ? undefined : target(e.target).applied.find((w) => w.version > seen);
          if (later) violate('S1', e, e.target, `read resume of ${e.requestId} granted at version ${seen} after ${later.requestId} wrote ${JSON.stringify(later.bytes)} (version ${later.version})`);
          break;
        }
        if (e.instance !== undefined) {
          const key = `${e.target}\u0000${e.requestId}`;
          let set = instances.get(key);
          if (!set) instances.set(key, (set = new Set()));
          set.add(e.instance);
        }
        const s = target(e.target);
        if (e.via === 'resume') {
          const since = s.epoch.get(e.requestId);
          if (since !== undefined) {
            const foreign = s.applied.slice(since).find((w) => w.requestId !== e.requestId);
            if (foreign) violate('S1', e, e.target, `resume of ${e.requestId} granted after ${foreign.requestId} wrote ${JSON.stringify(foreign.bytes)} (version ${foreign.version})`);
          }
        } else if (e.fresh) {
          s.epoch.set(e.requestId, s.applied.length);
          s.fresh.push({ requestId: e.requestId, at: s.applied.length });
          s.released.delete(e.requestId);
        }
        s.holder = { requestId: e.requestId, session: e.session };
        break;
      }
      case 'deny': {
        const s = target(e.target);
        if (e.mode === 'write' && e.reason === 'MODIFIED' && !takenFrom(s, e.requestId)) {
          violate('L1', e, e.target, `resume of ${e.requestId} denied MODIFIED, but no other writer took ${e.target}`);
        }
        if (e.mode === 'write' && e.reason === 'SUPERSEDED' && e.instance !== undefined) {
          const granted = instances.get(`${e.target}\u0000${e.requestId}`) ?? new Set<string>();
          if (![...granted].some((i) => i !== e.instance)) violate('L1', e, e.target, `resume of ${e.requestId} (instance ${e.instance}) denied SUPERSEDED, but no other instance of it was granted ${e.target}`);
        }
        if (e.mode === 'read' && e.seenVersion !== undefined && !s.applied.some((w) => w.version > e.seenVersion!)) {
          violate('L1', e, e.target, `read resume of ${e.requestId} denied, but ${e.target} was not written after version ${e.seenVersion}`);
        }
        break;
      }
      case 'applied': {
        const s = target(e.target);
        if (!s.holder || s.holder.requestId !== e.requestId || s.holder.session !== e.session) {
          violate('S2', e, e.target, `write seq ${e.seq} of ${e.requestId} via session ${e.session} applied while ${s.holder ? `${s.holder.requestId} via ${s.holder.session}` : 'nobody'} held the record`);
        }
        const key = `${e.requestId}:${e.seq}`;
        if (s.seqs.has(key)) violate('S4', e, e.target, `seq ${e.seq} of ${e.requestId} applied twice`);
        s.seqs.add(key);
        if (e.bytes.length === 0) break;
        const n = (s.bytesApplied.get(e.bytes) ?? 0) + 1;
        s.bytesApplied.set(e.bytes, n);
        if (n > 1) violate('S4', e, e.target, `write ${JSON.stringify(e.bytes)} applied ${n} times`);
        s.content = splice(s.content, e.offset, e.bytes);
        s.version++;
        s.applied.push({ requestId: e.requestId, bytes: e.bytes, version: e.version });
        break;
      }
      case 'released': {
        const s = target(e.target);
        if (s.holder?.requestId === e.requestId && s.holder.session === e.session) s.holder = undefined;
        s.released.add(e.requestId);
        break;
      }
      case 'read': {
        saw(e.target, e.bytes);
        const s = target(e.target);
        const want = s.content.slice(e.offset, e.offset + e.length);
        if (e.bytes !== want) violate('S3', e, e.target, `read at ${e.offset} returned ${JSON.stringify(e.bytes)}, but the applied writes give ${JSON.stringify(want)}`);
        break;
      }
      case 'final': {
        saw(e.target, e.bytes);
        const s = target(e.target);
        if (e.bytes !== s.content) violate('S3', e, e.target, `final content ${JSON.stringify(e.bytes.slice(0, 80))} differs from the applied writes ${JSON.stringify(s.content.slice(0, 80))}`);
        break;
      }
      case 'invoke':
        pending.set(e.id, e);
        break;
      case 'ok': {
        const inv = pending.get(e.id);
        pending.delete(e.id);
        // Checked at the end: with processes on one host, an acknowledgement and the store's record
        // of the write may carry the same millisecond.
        if (e.op === 'write' && inv?.bytes) acked.push({ e, bytes: inv.bytes });
        break;
      }
      case 'fail': {
        const inv = pending.get(e.id);
        pending.delete(e.id);
        // Every code but OUTCOME_UNKNOWN says the write was not applied, now or later.
        if (e.op === 'write' && inv?.bytes && e.code !== 'OUTCOME_UNKNOWN') notApplied.push({ e, bytes: inv.bytes });
        break;
      }
      case 'crash':
        crashed.add(e.proc);
        break;
      case 'state': {
        handleState.set(`${e.proc}\u0000${e.requestId}`, { proc: e.proc, target: e.target, state: e.to });
        // Storage has been reachable since the heal: a pause must end with an answer, not a timeout.
        if (e.to === 'invalidated' && e.reason === 'TIMEOUT' && healedAt !== undefined && e.t > healedAt + HEAL_GRACE_MS && !crashed.has(e.proc)) {
          violate('L2', e, e.target, `handle ${e.requestId} of ${e.proc} timed out paused ${e.t - healedAt} ms after storage was back`);
        }
        if (e.to === 'invalidated' && e.reason === 'MODIFIED') {
          const s = target(e.target);
          const isWriter = s.epoch.has(e.requestId);
          if (isWriter && !takenFrom(s, e.requestId)) violate('L1', e, e.target, `handle ${e.requestId} of ${e.proc} invalidated MODIFIED, but no other writer took ${e.target}`);
        }
        break;
      }
      case 'fault':
        if (e.fault === 'heal') healedAt = e.t;
        break;
    }
  }
  for (const { e, bytes } of acked) {
    if (!target(e.target).bytesApplied.has(bytes)) violate('S3', e, e.target, `write ${JSON.stringify(bytes)} by ${e.requestId} acknowledged but never applied`);
  }
  for (const { e, bytes } of notApplied) {
    const inData = target(e.target).bytesApplied.has(bytes) || (seen.get(e.target) ?? []).some((b) => b.includes(bytes));
    if (inData) violate('S5', e, e.target, `write ${JSON.stringify(bytes)} by ${e.proc} rejected ${e.code} (not applied), but it shows up in the data`);
  }
  const end = history.at(-1);
  if (end) {
    for (const h of handleState.values()) {
      if (!crashed.has(h.proc) && (h.state === 'paused' || h.state === 'resuming')) {
        violate('L2', end, h.target, `a handle of ${h.proc} on ${h.target} is still ${h.state} at the end`);
      }
    }
    for (const inv of pending.values()) {
      if (!crashed.has(inv.proc)) violate('L3', end, inv.target, `${inv.op} #${inv.id} by ${inv.proc} on ${inv.target} never completed`);
    }
  }
  return out.sort((a, b) => a.t - b.t);
}

/** The steps of one target (and every fault), up to a time: the shortest useful trace of a violation. */
export function traceOf(history: History, target: string | undefined, untilMs: number): string[] {
  return history
    .filter((e) => e.t <= untilMs && (e.kind === 'fault' || target === undefined || ('target' in e && e.target === target)))
    .map(formatEvent);
}

export function formatEvent(e: HistoryEvent): string {
  const { t, kind, ...rest } = e;
  const fields = Object.entries(rest)
    .map(([k, v]) => `${k}=${typeof v === 'string' && /[\s"\u0000]/.test(v) ? JSON.stringify(v) : String(v)}`)
    .join(' ');
  return `${String(t).padStart(7)}ms ${kind.padEnd(8)} ${fields}`;
}
