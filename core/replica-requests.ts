/**
 * The replica's protocol handlers: each request of a session is checked (mounted, a proven principal,
 * a handle this session holds), counted in flight, sent to the store as one call, and answered when
 * the store's answer comes back: the reply, the handle's lifecycle step, and on a store outage the
 * dismount. Duplicated requests are dropped; bad frames are counted.
 */
import type { ErrorCode } from '../errors.js';
import type { Decoded } from '../transport/codec.js';
import type { MessageOf, ResumeResult } from '../transport/messages.js';
import type {
  AccessResult,
  ExtentsResult,
  OpenResult,
  ReadResult,
  ResumeOutcome,
  WriteResult,
} from '../store/types.js';
import type { Answer, Request, Serving, Session } from './replica-base.js';
import type { StoreCall, StoreFailure } from './replica-intents.js';
import { keyOf, type HandleRecord } from './replica-handles.js';
import { ReplicaHandshake } from './replica-handshake.js';

const SEEN_WINDOW = 4096;
/** What a request without bytes counts against the in-flight bytes (per open, per resume item): its decoded header and the work it holds. */
const REQUEST_COST = 1024;

/** A request refused before it reaches the store: answered with its code. */
class Refused extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'Refused';
  }
}

export abstract class ReplicaRequests extends ReplicaHandshake {
  protected abstract enterDismounted(kind: 'manual' | 'auto'): void;

  protected onFrame(s: Session, frame: Decoded): void {
    if (!frame.ok) {
      this.stats.badFrames++;
      if (this.cfg.observed) this.out.push({ kind: 'observe', what: 'bad-frame' });
      this.warn('bad frame', { session: s.id, node: s.node, code: frame.code, message: frame.message }, 'bad frame');
      this.reply(s.conn, frame.id, frame.code, frame.message);
      return this.countBad(s);
    }
    const msg = frame.msg;
    if ('id' in msg && msg.id !== undefined && msg.type !== 'error') {
      // A request is handled once per session, even if the network delivers it twice.
      if (s.seen.has(msg.id)) return;
      s.seen.add(msg.id);
      if (s.seen.size > SEEN_WINDOW) s.seen.delete(s.seen.values().next().value!);
    }
    switch (msg.type) {
      case 'ping':
        return this.send(s.conn, { type: 'pong', t: msg.t });
      case 'prove':
        return this.onProve(s, msg);
      case 'open':
      case 'grant':
      case 'revoke':
        return this.serve(s, msg, REQUEST_COST);
      case 'resume':
        return this.serve(s, msg, REQUEST_COST * msg.items.length);
      case 'write':
        return this.serve(s, msg, msg.data.length);
      case 'read':
        return this.serve(s, msg, msg.length);
      case 'extents':
        return this.serve(s, msg, REQUEST_COST);
      case 'close':
        return this.serve(s, msg, 0);
      default:
        this.reply(s.conn, 'id' in msg ? msg.id : undefined, 'BAD_FRAME', `a replica does not accept ${msg.type}`);
        this.countBad(s);
    }
  }

  /**
   * Serve one request, counted in flight (with `bytes`) until it is answered: checked, then sent to
   * the store as one call, answered when the call is (onServed). A check that fails answers at once.
   */
  private serve(s: Session, msg: Request, bytes: number): void {
    this.begin(s, bytes);
    const r: Serving = { s, msg, bytes, t0: this.now, h: undefined, allowed: undefined };
    let call: StoreCall;
    try {
      call = this.check(r);
    } catch (err) {
      if (err instanceof Refused) this.reply(s.conn, msg.id, err.code, err.message);
      else this.failed(s, msg.id, { kind: 'internal', error: err });
      return this.end(s, bytes, msg.type, r.t0);
    }
    this.call(call, r);
  }

  /** A request's checks; the store call that serves it. */
  private check(r: Serving): StoreCall {
    const msg = r.msg;
    switch (msg.type) {
      case 'open':
        return this.checkOpen(r.s, msg);
      case 'resume':
        return this.checkResume(r, msg);
      case 'write':
        return this.checkWrite(r, msg);
      case 'read':
      case 'extents':
        return this.checkRead(r, msg);
      case 'close':
        return this.checkClose(r, msg);
      case 'grant':
      case 'revoke':
        return this.checkAccess(r.s, msg);
    }
  }

  protected onServed(r: Serving, a: Answer<unknown>): void {
    const { s, msg } = r;
    if (!a.ok) this.failed(s, msg.id, a.failure);
    else {
      try {
        this.done(r, a.value);
      } catch (err) {
        // An answer the replica cannot take (a store's bug) fails this request, not the replica.
        this.failed(s, msg.id, { kind: 'internal', error: err });
      }
    }
    this.end(s, r.bytes, msg.type, r.t0);
  }

  /** A request's store call answered: its reply, and its handle's lifecycle step. */
  private done(r: Serving, value: unknown): void {
    const { s, msg } = r;
    switch (msg.type) {
      case 'open':
        return this.opened(s, msg, value as OpenResult);
      case 'resume':
        return this.resumed(r, msg, value as ResumeOutcome[]);
      case 'write':
        return this.written(s, msg, r.h!, value as WriteResult);
      case 'read':
        return this.dataRead(s, msg, r.h!, value as ReadResult);
      case 'extents':
        return this.keptPages(s, msg, r.h!, value as ExtentsResult);
      case 'close':
        return this.closedHandle(s, msg, r.h!);
      case 'grant':
      case 'revoke':
        return this.accessed(s, msg, value as AccessResult);
    }
  }

  /** Turn a failed store call into an error reply; a store outage dismounts the replica. */
  private failed(s: Session, id: number, f: StoreFailure): void {
    if (f.kind === 'unavailable') {
      this.lastStoreError = f.message;
      this.enterDismounted('auto');
      // A commit sent and never answered may land: the node must not take this refusal as proof.
      this.reply(s.conn, id, 'UNAVAILABLE', f.message, undefined, f.maybeApplied);
    } else if (f.kind === 'refused') {
      this.reply(s.conn, id, f.code, f.message);
    } else {
      this.log('error', 'request failed', { err: f.error, session: s.id });
      // Whatever failed may have failed after the store took the request: no proof it was not applied.
      this.reply(s.conn, id, 'INTERNAL', 'internal error; see the replica log', undefined, true);
    }
  }

  private checkMounted(): void {
    if (this.dismounted !== 'no') throw new Refused('UNAVAILABLE', `${this.cfg.id}: store dismounted`);
  }

  /** Refuse a request naming a principal this session did not prove. */
  private checkPrincipal(s: Session, principal: string): void {
    if (!s.principals.has(principal))
      throw new Refused('FORBIDDEN', `principal ${principal} is not proven on this session`);
  }

  /** How long a live session's lock lasts from the store's now: a lease, then the hold period. */
  protected get lockMs(): number {
    return this.cfg.leaseMs + this.cfg.holdMs;
  }

  private checkOpen(s: Session, msg: MessageOf<'open'>): StoreCall {
    this.checkMounted();
    this.checkPrincipal(s, msg.principal);
    if (s.handles.size >= this.cfg.maxHandlesPerSession)
      throw new Refused('INVALID_ARGUMENT', 'too many handles on this session');
    const req = {
      target: msg.target,
      requestId: msg.requestId,
      principal: msg.principal,
      mode: msg.mode,
      session: s.id,
      leaseMs: this.lockMs,
      instance: msg.instance,
      size: msg.size,
      epoch: msg.epoch,
    };
    return { op: 'open', req };
  }

  private opened(s: Session, msg: MessageOf<'open'>, res: OpenResult): void {
    if (!res.ok) return this.reply(s.conn, msg.id, res.code, res.message);
    this.records.step(this.records.attach(s.handles, s.id, msg.target, msg.requestId, msg.mode, false), {
      type: 'GRANTED',
    });
    this.send(s.conn, {
      type: 'opened',
      id: msg.id,
      version: res.version,
      lastSeq: res.lastSeq,
      ...(res.size ? { size: res.size } : {}),
    });
  }

  private checkResume(r: Serving, msg: MessageOf<'resume'>): StoreCall {
    const s = r.s;
    this.checkMounted();
    // A resume attaches handles as an open does: it counts against the same limit.
    let added = 0;
    for (const it of msg.items) if (!s.handles.has(keyOf(it.target, it.requestId))) added++;
    if (s.handles.size + added > this.cfg.maxHandlesPerSession)
      throw new Refused('INVALID_ARGUMENT', 'too many handles on this session');
    const leaseMs = this.lockMs;
    this.stats.resumeMessages++;
    // Items naming a principal this session did not prove never reach the store. Which those are is
    // decided now: a principal proven while the store decides the others does not change this resume.
    const allowed = msg.items.map((it) => s.principals.has(it.principal));
    r.allowed = allowed;
    const reqs = msg.items.filter((_, i) => allowed[i]).map((it) => ({ ...it, session: s.id, leaseMs }));
    return { op: 'resume', reqs };
  }

  private resumed(r: Serving, msg: MessageOf<'resume'>, decided: ResumeOutcome[]): void {
    const { s, allowed } = r;
    let next = 0;
    const results: ResumeResult[] = msg.items.map((it, i) => {
      if (!allowed![i]) {
        this.stats.resumesDenied++;
        this.observeResume('FORBIDDEN');
        return {
          target: it.target,
          requestId: it.requestId,
          granted: false,
          reason: 'FORBIDDEN',
          code: 'FORBIDDEN',
          version: 0,
        };
      }
      const out = decided[next++];
      // The store answers each item it was given, in order; an answer short of that is a broken store.
      if (!out) throw new Error(`the store answered ${decided.length} of the resume's items`);
      const h = this.records.attach(s.handles, s.id, it.target, it.requestId, it.mode, true);
      if (out.granted) {
        this.stats.resumesGranted++;
        this.observeResume('granted');
        this.records.step(h, { type: 'GRANTED' });
        return {
          target: it.target,
          requestId: it.requestId,
          granted: true,
          lastSeq: out.lastSeq,
          version: out.version,
          ...(out.size ? { size: out.size } : {}),
        };
      }
      this.stats.resumesDenied++;
      this.observeResume(out.code);
      this.log('info', 'resume denied', {
        target: it.target,
        requestId: it.requestId,
        reason: out.reason,
        session: s.id,
      });
      this.records.step(h, { type: 'DENIED', reason: out.reason });
      this.records.detach(s.handles, it.target, it.requestId);
      const denied: ResumeResult = {
        target: it.target,
        requestId: it.requestId,
        granted: false,
        reason: out.reason,
        code: out.code,
        version: out.version,
      };
      if (out.lastSeq !== undefined) denied.lastSeq = out.lastSeq;
      if (out.heldEpoch !== undefined) denied.heldEpoch = out.heldEpoch;
      if (out.changed) {
        denied.changed = out.changed;
        if (out.coarse) denied.coarse = true;
      }
      return denied;
    });
    boundChanged(results);
    this.send(s.conn, { type: 'resumed', id: msg.id, results });
  }

  private observeResume(outcome: string): void {
    if (this.cfg.observed) this.out.push({ kind: 'observe', what: 'resume', outcome });
  }

  private handle(s: Session, target: string, requestId: string): HandleRecord {
    const h = s.handles.get(keyOf(target, requestId));
    if (!h) throw new Refused('NOT_OPEN', `no open handle on ${target} for this requestId in this session`);
    return h;
  }

  private checkWrite(r: Serving, msg: MessageOf<'write'>): StoreCall {
    this.checkMounted();
    const h = this.handle(r.s, msg.target, msg.requestId);
    if (h.mode !== 'write') throw new Refused('INVALID_ARGUMENT', 'handle was opened for reading');
    r.h = h;
    const req = {
      target: msg.target,
      requestId: msg.requestId,
      session: r.s.id,
      seq: msg.seq,
      offset: msg.offset,
      data: msg.data,
    };
    return { op: 'write', req };
  }

  private written(s: Session, msg: MessageOf<'write'>, h: HandleRecord, res: WriteResult): void {
    if (res.ok) {
      if (res.applied) {
        this.stats.writesApplied++;
        if (this.cfg.observed) this.out.push({ kind: 'observe', what: 'write-applied' });
      }
      return this.send(s.conn, { type: 'written', id: msg.id, seq: msg.seq, version: res.version });
    }
    if (res.code === 'MODIFIED' || res.code === 'SUPERSEDED') {
      this.records.step(h, { type: 'REVOKED', reason: res.code });
      this.records.detach(s.handles, msg.target, msg.requestId);
    }
    this.reply(s.conn, msg.id, res.code, res.message, res.lastSeq);
  }

  /** A read, or a question of which pages a range keeps (extents): any handle of this session; a write handle's is fenced. */
  private checkRead(r: Serving, msg: MessageOf<'read' | 'extents'>): StoreCall {
    this.checkMounted();
    const h = this.handle(r.s, msg.target, msg.requestId);
    r.h = h;
    const fence = h.mode === 'write' ? { requestId: msg.requestId, session: r.s.id } : undefined;
    return { op: msg.type, req: { target: msg.target, offset: msg.offset, length: msg.length, fence } };
  }

  private keptPages(s: Session, msg: MessageOf<'extents'>, h: HandleRecord, res: ExtentsResult): void {
    if (res.ok)
      return this.send(s.conn, { type: 'kept', id: msg.id, version: res.version, end: res.end, kept: res.kept });
    // Refused as a read is: the write handle lost the target.
    this.records.step(h, { type: 'REVOKED', reason: res.code });
    this.records.detach(s.handles, msg.target, msg.requestId);
    this.reply(s.conn, msg.id, res.code, res.message);
  }

  private dataRead(s: Session, msg: MessageOf<'read'>, h: HandleRecord, res: ReadResult): void {
    if (res.ok) return this.send(s.conn, { type: 'data', id: msg.id, version: res.version, data: res.data });
    this.records.step(h, { type: 'REVOKED', reason: res.code });
    this.records.detach(s.handles, msg.target, msg.requestId);
    this.reply(s.conn, msg.id, res.code, res.message);
  }

  private checkClose(r: Serving, msg: MessageOf<'close'>): StoreCall {
    this.checkMounted();
    // Only a handle this session holds can be closed through it; anything else is not a `closed`.
    r.h = r.s.handles.get(keyOf(msg.target, msg.requestId));
    if (!r.h) throw new Refused('NOT_OPEN', `${msg.target} is not open on this session`);
    return { op: 'close', ref: { target: msg.target, requestId: msg.requestId }, session: r.s.id };
  }

  private closedHandle(s: Session, msg: MessageOf<'close'>, h: HandleRecord): void {
    this.records.step(h, { type: 'CLOSE' });
    this.records.detach(s.handles, msg.target, msg.requestId);
    this.send(s.conn, { type: 'closed', id: msg.id });
  }

  /** A target's owner grants or revokes another principal's access: decided by the store (rules.decideAccess). */
  private checkAccess(s: Session, msg: MessageOf<'grant'> | MessageOf<'revoke'>): StoreCall {
    this.checkMounted();
    this.checkPrincipal(s, msg.principal);
    const req = {
      target: msg.target,
      by: msg.principal,
      principal: msg.grantee,
      mode: msg.type === 'grant' ? msg.mode : ('none' as const),
    };
    return { op: 'access', req };
  }

  private accessed(s: Session, msg: MessageOf<'grant'> | MessageOf<'revoke'>, res: AccessResult): void {
    if (!res.ok) return this.reply(s.conn, msg.id, res.code, res.message);
    this.send(s.conn, {
      type: 'access',
      id: msg.id,
      target: msg.target,
      owner: res.access.owner,
      grants: res.access.grants,
    });
  }
}

/**
 * The changed ranges of one answer, at most MAX_RESUMED_RANGES in all, so the answer stays far inside
 * the codec's header limit (1,000 denials of 64 ranges each would not): past them, an item's ranges
 * become one, from its first to the end of its last (coarse).
 */
export const MAX_RESUMED_RANGES = 2048;

export function boundChanged(results: ResumeResult[]): void {
  let left = MAX_RESUMED_RANGES;
  results.forEach((r, i) => {
    const c = r.changed;
    if (!c || c.length === 0) return;
    // Room for one range for each item after this one.
    if (c.length > Math.max(1, left - (results.length - i - 1))) {
      const last = c[c.length - 1]!;
      r.changed = [[c[0]![0], last[0] + last[1] - c[0]![0]]];
      r.coarse = true;
    }
    left -= r.changed!.length;
  });
}
