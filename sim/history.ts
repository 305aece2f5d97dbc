/**
 * The history of a simulated (or real) run: every application operation (invoke, ok, fail), every
 * handle state change, and what the store did (grants, denials, applied writes, reads, closes).
 * Checkers read it; they never steer the run.
 */
import type { InvalidationReason } from '../errors.js';
import type { TxStore } from '../store/base.js';
import type { Decided, DecisionLog, Store } from '../store/types.js';

export type Op = 'open' | 'write' | 'read' | 'close';

export type HistoryEvent =
  | {
      t: number;
      kind: 'invoke';
      id: number;
      proc: string;
      op: Op;
      target: string;
      requestId?: string;
      offset?: number;
      bytes?: string;
      length?: number;
    }
  | { t: number; kind: 'ok'; id: number; proc: string; op: Op; target: string; requestId: string; bytes?: string }
  | { t: number; kind: 'fail'; id: number; proc: string; op: Op; target: string; requestId?: string; code: string }
  | { t: number; kind: 'crash'; proc: string }
  | {
      t: number;
      kind: 'state';
      proc: string;
      target: string;
      requestId: string;
      to: string;
      reason?: InvalidationReason;
    }
  | {
      t: number;
      kind: 'grant';
      replica: string;
      target: string;
      requestId: string;
      session: string;
      mode: 'read' | 'write';
      via: 'open' | 'resume';
      fresh: boolean;
      version: number;
      instance?: string;
      seenVersion?: number;
    }
  /** `stale`: the store found a newer request of the same instance holding the record (this one came from a session its node left). */
  | {
      t: number;
      kind: 'deny';
      replica: string;
      target: string;
      requestId: string;
      session: string;
      mode: 'read' | 'write';
      reason: InvalidationReason;
      seenVersion?: number;
      version: number;
      instance?: string;
      stale?: true;
    }
  | {
      t: number;
      kind: 'applied';
      replica: string;
      target: string;
      requestId: string;
      session: string;
      seq: number;
      offset: number;
      bytes: string;
      version: number;
    }
  | { t: number; kind: 'dup'; replica: string; target: string; requestId: string; session: string; seq: number }
  | {
      t: number;
      kind: 'refused';
      replica: string;
      target: string;
      requestId: string;
      session: string;
      seq: number;
      code: string;
    }
  | { t: number; kind: 'renew'; replica: string; session: string; targets: string[] }
  | { t: number; kind: 'released'; replica: string; target: string; requestId: string; session: string }
  | {
      t: number;
      kind: 'read';
      replica: string;
      target: string;
      offset: number;
      length: number;
      bytes: string;
      version: number;
    }
  | { t: number; kind: 'fault'; fault: string; detail: string }
  | { t: number; kind: 'final'; target: string; bytes: string };

export type History = HistoryEvent[];

/** A history event before the recorder stamps its time. */
export type Untimed = HistoryEvent extends infer E ? (E extends HistoryEvent ? Omit<E, 't'> : never) : never;

/** What a history adds up to: resumes granted and denied, writes acknowledged, pauses, writes whose outcome is unknown. */
export function tally(history: History): {
  granted: number;
  denied: number;
  writesAcknowledged: number;
  pauses: number;
  outcomeUnknown: number;
  readResumes: number;
  reads: number;
} {
  const t = { granted: 0, denied: 0, writesAcknowledged: 0, pauses: 0, outcomeUnknown: 0, readResumes: 0, reads: 0 };
  for (const e of history) {
    if ((e.kind === 'grant' && e.via === 'resume') || (e.kind === 'deny' && !e.stale)) {
      if (e.kind === 'grant') t.granted++;
      else t.denied++;
      if (e.mode === 'read') t.readResumes++;
    } else if (e.kind === 'ok' && e.op === 'read') t.reads++;
    else if (e.kind === 'ok' && e.op === 'write') t.writesAcknowledged++;
    else if (e.kind === 'state' && e.to === 'paused') t.pauses++;
    else if (e.kind === 'fail' && e.op === 'write' && e.code === 'OUTCOME_UNKNOWN') t.outcomeUnknown++;
  }
  return t;
}

/** Bytes as a string: the workload writes ASCII records, so latin1 keeps every byte and stays readable. */
export const hex = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('latin1');

export class Recorder {
  readonly events: History = [];
  /** `observe` sees each event as it is recorded (a checker running alongside). */
  constructor(
    private readonly now: () => number,
    private readonly observe?: (e: HistoryEvent) => void,
  ) {}
  add(e: Untimed): void {
    const ev = { t: this.now(), ...e };
    this.events.push(ev);
    this.observe?.(ev);
  }
}

/** The history events of one decided rule, made by `replica`. */
export function eventsOf(replica: string, d: Decided): Untimed[] {
  switch (d.op) {
    case 'open': {
      const { req, out: r } = d;
      return r.ok
        ? [
            {
              kind: 'grant',
              replica,
              target: req.target,
              requestId: req.requestId,
              session: req.session,
              mode: req.mode,
              via: 'open',
              fresh: !r.takeover,
              version: r.version,
              ...(req.instance ? { instance: req.instance } : {}),
            },
          ]
        : [];
    }
    case 'resume': {
      const { req, out: r } = d;
      const instance = req.instance ? { instance: req.instance } : {};
      const seen = req.version !== undefined ? { seenVersion: req.version } : {};
      if (r.granted)
        return [
          {
            kind: 'grant',
            replica,
            target: req.target,
            requestId: req.requestId,
            session: req.session,
            mode: req.mode,
            via: 'resume',
            fresh: false,
            version: r.version,
            ...instance,
            ...seen,
          },
        ];
      return [
        {
          kind: 'deny',
          replica,
          target: req.target,
          requestId: req.requestId,
          session: req.session,
          mode: req.mode,
          reason: r.reason,
          ...seen,
          version: r.version,
          ...instance,
          ...(r.stale ? { stale: true as const } : {}),
        },
      ];
    }
    case 'write': {
      const { req, out: r } = d;
      const base = { replica, target: req.target, requestId: req.requestId, session: req.session, seq: req.seq };
      if (r.ok && r.applied)
        return [{ kind: 'applied', ...base, offset: req.offset, bytes: hex(req.data), version: r.version }];
      if (r.ok) return [{ kind: 'dup', ...base }];
      return [{ kind: 'refused', ...base, code: r.code }];
    }
    case 'read': {
      const { req, out: r } = d;
      return r.ok
        ? [
            {
              kind: 'read',
              replica,
              target: req.target,
              offset: req.offset,
              length: req.length,
              bytes: hex(r.data),
              version: r.version,
            },
          ]
        : [];
    }
    case 'close':
      return d.out
        ? [{ kind: 'released', replica, target: d.ref.target, requestId: d.ref.requestId, session: d.session }]
        : [];
    case 'renew': {
      const lost = new Set(d.out.lost.map((l) => l.target));
      const targets = d.refs.filter((ref) => !lost.has(ref.target)).map((ref) => ref.target);
      return targets.length > 0 ? [{ kind: 'renew', replica, session: d.session, targets }] : [];
    }
    // Who may open a target is no part of what the checker judges.
    case 'access':
      return [];
  }
}

/** A decision log that keeps each decision's history events as JSON lines stamped with this host's time. */
export function historyLog(replica: string, now: () => number = Date.now): DecisionLog {
  return (d) => eventsOf(replica, d).map((e) => JSON.stringify({ t: now(), ...e }));
}

/**
 * A store decorator that writes what the store decided into the history, in the same synchronous
 * step as the decision, so the history's order is the store's order. It is injected through the
 * normal store parameter of a replica; the replica does not know it is watched. (Stores that decide
 * asynchronously, such as etcd's, take a `DecisionLog` and commit the events with each decision.)
 */
export function observedStore(
  inner: TxStore,
  replica: string,
  recorder: Pick<Recorder, 'add'>,
  when: 'in-tx' | 'after-commit' = 'in-tx',
): Store {
  const s = inner.sync;
  // 'in-tx': the record is written inside the rule's transaction (a history table in the same
  // database), so it commits or rolls back with the rule and the history's order is the commit order
  // even with several replica processes on one database. 'after-commit': the record is written once
  // the transaction carrying the rule committed, and never if it rolled back.
  const rec: Pick<Recorder, 'add'> =
    when === 'in-tx' ? recorder : { add: (e) => inner.afterCommit(() => recorder.add(e)) };
  const note = (d: Decided) => {
    for (const e of eventsOf(replica, d)) rec.add(e);
  };
  const later = <T>(fn: () => T): Promise<T> => inner.commit(fn);
  return {
    kind: inner.kind,
    open: (req) =>
      later(() => {
        const out = s.open(req);
        note({ op: 'open', req, out });
        return out;
      }),
    resume: (reqs) =>
      later(() => {
        const out = s.resume(reqs);
        reqs.forEach((req, i) => note({ op: 'resume', req, out: out[i]! }));
        return out;
      }),
    write: (req) =>
      later(() => {
        const out = s.write(req);
        note({ op: 'write', req, out });
        return out;
      }),
    read: (req) =>
      later(() => {
        const out = s.read(req);
        note({ op: 'read', req, out });
        return out;
      }),
    // Which pages a target keeps changes nothing and proves nothing the checker judges: not noted.
    extents: (req) => later(() => s.extents(req)),
    close: (ref, session) =>
      later(() => {
        const out = s.close(ref, session);
        note({ op: 'close', ref, session, out });
        return out;
      }),
    renew: (session, refs, leaseMs) =>
      later(() => {
        const out = s.renew(session, refs, leaseMs);
        note({ op: 'renew', session, refs, out });
        return out;
      }),
    editAccess: (req) =>
      later(() => {
        const out = s.editAccess(req);
        note({ op: 'access', req, out });
        return out;
      }),
    access: (target) => inner.access(target),
    record: (target) => inner.record(target),
    tombstones: (target) => inner.tombstones(target),
    pages: (target) => inner.pages(target),
    ping: () => inner.ping(),
    shutdown: () => inner.shutdown(),
  };
}
