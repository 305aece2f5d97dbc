/**
 * The replica's protocol handlers: each request of a session is checked (mounted, a proven principal,
 * a handle this session holds), counted in flight, sent to the store as one call, and answered when
 * the store's answer comes back: the reply, the handle's lifecycle step, and on a store outage the
 * dismount. Duplicated requests are dropped; bad frames are counted.
 */
import type { ErrorCode } from '../errors.js';
import type { Decoded } from '../transport/codec.js';
import type { MessageOf, ResumeResult } from '../transport/messages.js';
import type { AccessResult, OpenResult, ReadResult, ResumeOutcome, WriteResult } from '../store/types.js';
import type { Answer, Session } from './replica-base.js';
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
        return this.serve(s, msg.id, REQUEST_COST, 'open', () => this.onOpen(s, msg));
      case 'resume':
        return this.serve(s, msg.id, REQUEST_COST * msg.items.length, 'resume', () => this.onResume(s, msg));
      case 'write':
        return this.serve(s, msg.id, msg.data.length, 'write', () => this.onWrite(s, msg));
      case 'read':
        return this.serve(s, msg.id, msg.length, 'read', () => this.onRead(s, msg));
      case 'close':
        return this.serve(s, msg.id, 0, 'close', () => this.onClose(s, msg));
      case 'grant':
      case 'revoke':
        return this.serve(s, msg.id, REQUEST_COST, msg.type, () => this.onAccess(s, msg));
      default:
        this.reply(s.conn, 'id' in msg ? msg.id : undefined, 'BAD_FRAME', `a replica does not accept ${msg.type}`);
        this.countBad(s);
    }
  }

  /**
   * Serve one request, counted in flight (with `bytes`) until it is answered. `work` checks it and
   * returns the store call's continuation, which answers it; a check that fails answers at once.
   */
  private serve(s: Session, id: number, bytes: number, type: string, work: () => Served): void {
    this.begin(s, bytes);
    const t0 = this.now;
    let served: Served;
    try {
      served = work();
    } catch (err) {
      if (err instanceof Refused) this.reply(s.conn, id, err.code, err.message);
      else this.failed(s, id, { kind: 'internal', error: err });
      return this.end(s, bytes, type, t0);
    }
    this.call(served.call, (a: Answer<unknown>) => {
      if (a.ok) served.then(a.value);
      else this.failed(s, id, a.failure);
      this.end(s, bytes, type, t0);
    });
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

  private onOpen(s: Session, msg: MessageOf<'open'>): Served {
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
    return served<OpenResult>({ op: 'open', req }, (res) => {
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
    });
  }

  private onResume(s: Session, msg: MessageOf<'resume'>): Served {
    this.checkMounted();
    // A resume attaches handles as an open does: it counts against the same limit.
    let added = 0;
    for (const it of msg.items) if (!s.handles.has(keyOf(it.target, it.requestId))) added++;
    if (s.handles.size + added > this.cfg.maxHandlesPerSession)
      throw new Refused('INVALID_ARGUMENT', 'too many handles on this session');
    const leaseMs = this.lockMs;
    this.stats.resumeMessages++;
    // Items naming a principal this session did not prove never reach the store.
    const allowed = msg.items.filter((it) => s.principals.has(it.principal));
    return served<ResumeOutcome[]>(
      { op: 'resume', reqs: allowed.map((it) => ({ ...it, session: s.id, leaseMs })) },
      (decided) => {
        let next = 0;
        const results: ResumeResult[] = msg.items.map((it) => {
          if (!s.principals.has(it.principal)) {
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
          const out = decided[next++]!;
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
          return denied;
        });
        this.send(s.conn, { type: 'resumed', id: msg.id, results });
      },
    );
  }

  private observeResume(outcome: string): void {
    if (this.cfg.observed) this.out.push({ kind: 'observe', what: 'resume', outcome });
  }

  private handle(s: Session, target: string, requestId: string): HandleRecord {
    const h = s.handles.get(keyOf(target, requestId));
    if (!h) throw new Refused('NOT_OPEN', `no open handle on ${target} for this requestId in this session`);
    return h;
  }

  private onWrite(s: Session, msg: MessageOf<'write'>): Served {
    this.checkMounted();
    const h = this.handle(s, msg.target, msg.requestId);
    if (h.mode !== 'write') throw new Refused('INVALID_ARGUMENT', 'handle was opened for reading');
    return served<WriteResult>(
      {
        op: 'write',
        req: {
          target: msg.target,
          requestId: msg.requestId,
          session: s.id,
          seq: msg.seq,
          offset: msg.offset,
          data: msg.data,
        },
      },
      (res) => {
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
      },
    );
  }

  private onRead(s: Session, msg: MessageOf<'read'>): Served {
    this.checkMounted();
    const h = this.handle(s, msg.target, msg.requestId);
    const fence = h.mode === 'write' ? { requestId: msg.requestId, session: s.id } : undefined;
    return served<ReadResult>(
      { op: 'read', req: { target: msg.target, offset: msg.offset, length: msg.length, fence } },
      (res) => {
        if (res.ok) return this.send(s.conn, { type: 'data', id: msg.id, version: res.version, data: res.data });
        this.records.step(h, { type: 'REVOKED', reason: res.code });
        this.records.detach(s.handles, msg.target, msg.requestId);
        this.reply(s.conn, msg.id, res.code, res.message);
      },
    );
  }

  private onClose(s: Session, msg: MessageOf<'close'>): Served {
    this.checkMounted();
    const h = s.handles.get(keyOf(msg.target, msg.requestId));
    // Only a handle this session holds can be closed through it; anything else is not a `closed`.
    if (!h) throw new Refused('NOT_OPEN', `${msg.target} is not open on this session`);
    return served<boolean>(
      { op: 'close', ref: { target: msg.target, requestId: msg.requestId }, session: s.id },
      () => {
        this.records.step(h, { type: 'CLOSE' });
        this.records.detach(s.handles, msg.target, msg.requestId);
        this.send(s.conn, { type: 'closed', id: msg.id });
      },
    );
  }

  /** A target's owner grants or revokes another principal's access: decided by the store (rules.decideAccess). */
  private onAccess(s: Session, msg: MessageOf<'grant'> | MessageOf<'revoke'>): Served {
    this.checkMounted();
    this.checkPrincipal(s, msg.principal);
    const req = {
      target: msg.target,
      by: msg.principal,
      principal: msg.grantee,
      mode: msg.type === 'grant' ? msg.mode : ('none' as const),
    };
    return served<AccessResult>({ op: 'access', req }, (res) => {
      if (!res.ok) return this.reply(s.conn, msg.id, res.code, res.message);
      this.send(s.conn, {
        type: 'access',
        id: msg.id,
        target: msg.target,
        owner: res.access.owner,
        grants: res.access.grants,
      });
    });
  }
}

/** A checked request: the store call to make, and what to do with its result. */
interface Served {
  call: StoreCall;
  then(value: unknown): void;
}

function served<T>(call: Served['call'], then: (value: T) => void): Served {
  return { call, then: then };
}
