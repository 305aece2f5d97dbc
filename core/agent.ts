/**
 * The node agent's protocol, as a pure core in the spirit of raft's Step/Ready: inputs in (SDK calls,
 * replica frames, session up/down, timer expiries, ticks), intents out (send this frame, keep this
 * requestId durably, tell this handle, settle this operation, arm this timer). No socket, file,
 * timer or clock in here; actors/node-agent.ts carries the intents out, keeps and fsyncs before it
 * sends, and feeds the answers back in.
 */
import { isErrorCode, type ErrorCode, type InvalidationReason } from '../errors.js';
import { REQUEST_TIMEOUT_INTERVALS, type Message, type MessageOf } from '../transport/messages.js';
import { filler, settleLost, type CoreHandle, type Op, type Settlement } from './handle.js';
import { CoreBase } from './base.js';
import type { AccessCall, Input, Intent } from './intents.js';
import { afterGrant, resumeBatches } from './resume.js';

export type { Input, Intent } from './intents.js';

/** SEQ_GAP answers one write may get before the session is dropped and everything replayed in order. */
const MAX_RESENDS = 8;

export class AgentCore extends CoreBase {
  /** Handles whose requestId the node-local file could not take: kept again on every tick until it does. */
  private readonly notDurable = new Set<CoreHandle>();
  /** Read handles with a `keep-later` the shell has not answered yet (at most one each). */
  private readonly keepingLater = new Set<CoreHandle>();
  /** Report every I/O call as a lifecycle event too (for the inspector's mirror; off on the hot path). */
  reportIo = false;
  /**
   * What one paused handle may hold queued: writes and reads issued while it is away, waiting for the
   * resume. Past either limit an operation fails at once with QUEUE_FULL (retryable: try again once
   * the handle is active), so an application cannot grow the node's memory without bound.
   */
  maxQueuedBytes = 64 * 1024 * 1024;
  maxQueuedOps = 4096;

  constructor(readonly node: string) {
    super();
  }

  step(input: Input): Intent[] {
    this.out = [];
    switch (input.type) {
      case 'open':
        this.open(input.h);
        break;
      case 'io':
        this.io(input.h, input.op);
        break;
      case 'close':
        this.close(input.h);
        break;
      case 'access':
        this.access(input.call);
        break;
      case 'app-gone':
        this.drop(input.h);
        break;
      case 'ready':
        this.session = input.session;
        this.connected = true;
        this.round();
        break;
      case 'unavailable': {
        const had = this.session;
        this.session = undefined;
        let paused = 0;
        for (const h of this.handles.values()) if (this.pause(h)) paused++;
        this.lost(had, paused, input.why);
        break;
      }
      case 'disconnected':
        this.disconnected(input.why);
        break;
      case 'frame':
        this.frame(input.msg);
        break;
      case 'pause-timeout':
        if (input.h.state === 'paused' || input.h.state === 'resuming') this.lose(input.h, 'PAUSE_TIMEOUT', 'TIMEOUT', undefined);
        break;
      case 'retry':
        if (this.session) this.round();
        break;
      case 'tick':
        this.tick();
        break;
      case 'kept':
        for (const h of input.hs) {
          if (input.error === undefined || this.handles.get(h.requestId) !== h) this.keepingLater.delete(h);
          if (this.handles.get(h.requestId) !== h || h.durable === (input.error === undefined)) continue;
          h.durable = input.error === undefined;
          if (h.durable) this.notDurable.delete(h);
          else this.notDurable.add(h);
          this.out.push({ kind: 'durability', h });
        }
        break;
    }
    return this.out;
  }

  // ---- The SDK's calls ----

  private open(h: CoreHandle): void {
    this.handles.set(h.requestId, h);
    // The instance is on disk before anything that could make the store hold it is sent.
    this.keep(h);
    if (this.session) this.sendOpen(h);
  }

  private io(h: CoreHandle, op: Op): void {
    if (this.reportIo) this.out.push({ kind: 'changed', h, from: h.state, to: h.state, event: 'IO' });
    switch (h.state) {
      case 'active':
        h.ops.push(op);
        return this.sendOp(h, op);
      case 'paused':
      case 'resuming':
        if (h.onFailure === 'error') return this.settle({ op, ok: false, code: 'UNAVAILABLE', message: `${h.target}: storage unavailable and the handle fails fast` });
        if (this.queueFull(h, op)) {
          return this.settle({ op, ok: false, code: 'QUEUE_FULL', message: `${h.target}: ${h.ops.length} operations are already queued while the handle is ${h.state} (at most ${this.maxQueuedOps} and ${this.maxQueuedBytes} bytes); retry once it is active` });
        }
        h.ops.push(op);
        return;
      case 'invalidated':
        return this.settle({ op, ok: false, code: h.reason ?? 'MODIFIED', message: `${h.target}: handle invalidated (${h.reason})` });
      default:
        return this.settle({ op, ok: false, code: 'CLOSED', message: `${h.target}: handle closed` });
    }
  }

  /** A grant or revocation goes now, or fails: it is no handle's, and waits for no resume. */
  private access(call: AccessCall): void {
    if (!this.session) return void this.out.push({ kind: 'access-done', call, ok: false, code: 'UNAVAILABLE', message: `${call.target}: no storage session now; nothing was changed (retry)` });
    const id = this.nextId++;
    this.inflight.set(id, { kind: 'access', call, tick: this.ticks });
    if (call.mode === 'none') this.send({ type: 'revoke', id, target: call.target, principal: call.principal, grantee: call.grantee });
    else this.send({ type: 'grant', id, target: call.target, principal: call.principal, grantee: call.grantee, mode: call.mode });
  }

  /** Whether queuing `op` on the paused handle would pass a limit (counting what is queued now). */
  private queueFull(h: CoreHandle, op: Op): boolean {
    if (h.ops.length >= this.maxQueuedOps) return true;
    let bytes = op.kind === 'write' ? (op.data?.length ?? 0) : op.length;
    for (const o of h.ops) bytes += o.kind === 'write' ? (o.data?.length ?? 0) : o.length;
    return bytes > this.maxQueuedBytes;
  }

  private close(h: CoreHandle): void {
    if (h.state === 'closing' || h.state === 'closed' || h.state === 'opening') return;
    this.out.push({ kind: 'forget', requestId: h.requestId });
    // A keep asked for later is void once the entry is forgotten (the shell skips a closing handle too).
    this.keepingLater.delete(h);
    if (h.state === 'active' && this.session) {
      this.to(h, 'CLOSE');
      // Writes already sent are answered before the close on the same connection; nothing is queued while active.
      const id = this.nextId++;
      h.pending = id;
      this.inflight.set(id, { kind: 'close', h, tick: this.ticks });
      this.send({ type: 'close', id, target: h.target, requestId: h.requestId });
      return;
    }
    // Away or invalidated: the record stays until another writer takes the target after the hold period.
    if (h.state !== 'invalidated') this.to(h, 'CLOSE');
    this.finishClose(h);
  }

  private finishClose(h: CoreHandle): void {
    if (h.state === 'closing') this.to(h, 'CLOSED');
    else if (h.state !== 'closed') this.to(h, 'CLOSE');
    this.out.push({ kind: 'pause-timer', h, on: false });
    this.lostOps(h, 'CLOSED', undefined);
    this.drop(h);
    this.out.push({ kind: 'closed', h });
  }

  /** Forget a handle here (its kept requestId is the caller's business). */
  private drop(h: CoreHandle): void {
    if (this.handles.get(h.requestId) === h) this.handles.delete(h.requestId);
    this.keepingLater.delete(h);
    for (const [id, p] of this.inflight) if ((p.kind === 'op' || p.kind === 'open' || p.kind === 'close') && p.h === h) this.inflight.delete(id);
    h.pending = 0;
    if (h.state !== 'closed' && h.state !== 'invalidated') this.out.push({ kind: 'pause-timer', h, on: false });
  }

  // ---- The session ----

  private disconnected(why: string | undefined): void {
    const had = this.session;
    this.session = undefined;
    this.connected = false;
    const closing: CoreHandle[] = [];
    for (const p of this.inflight.values()) {
      if (p.kind === 'close') closing.push(p.h);
      // A change to an access list is idempotent: the application may send it again.
      if (p.kind === 'access') this.out.push({ kind: 'access-done', call: p.call, ok: false, code: 'UNAVAILABLE', message: `${p.call.target}: the storage session was lost before the answer; the change may or may not have been made (send it again)` });
    }
    this.inflight.clear();
    // A close in flight is done as far as the application is concerned: the lock lapses after the hold.
    for (const h of closing) this.finishClose(h);
    let paused = 0;
    for (const h of this.handles.values()) {
      h.pending = 0;
      for (const op of h.ops) op.inflight = 0;
      if (this.pause(h)) paused++;
    }
    this.lost(had, paused, why);
  }

  /**
   * One line per loss of the storage (a session lost, or its store gone): when the outage began and
   * why, however many handles it paused (none, too). Later failed attempts do not repeat it.
   */
  private lost(session: string | undefined, paused: number, why: string | undefined): void {
    if (session === undefined && paused === 0) return;
    this.log('info', 'handles paused', { paused, why: why ?? 'storage unavailable', ...(session !== undefined ? { session } : {}) });
  }

  /** Pause an active or resuming handle; whether it was. */
  private pause(h: CoreHandle): boolean {
    if (h.state !== 'active' && h.state !== 'resuming') return false;
    const from = h.state;
    this.to(h, 'PAUSED');
    if (from === 'active') this.out.push({ kind: 'pause-timer', h, on: true });
    if (h.onFailure === 'error') this.failFast(h);
    return true;
  }

  /**
   * A fail-fast handle's operations fail at once. A write that was sent may have been applied: it
   * fails OUTCOME_UNKNOWN, and an empty write keeps its seq, so it is either applied already or never.
   */
  private failFast(h: CoreHandle): void {
    const message = `${h.target}: storage unavailable; the handle fails fast (onFailure: 'error')`;
    const kept: Op[] = [];
    for (const op of h.ops) {
      if (!op.settle) kept.push(op);
      else if (op.kind === 'write' && op.seq > 0) {
        if (op.sent) this.settle({ op, ok: false, code: 'OUTCOME_UNKNOWN', reason: 'UNAVAILABLE', message: `${message}; the write was sent and may have been applied` });
        else this.settle({ op, ok: false, code: 'UNAVAILABLE', message });
        kept.push(filler(op.seq));
      } else this.settle({ op, ok: false, code: 'UNAVAILABLE', message });
    }
    h.ops = kept;
  }

  /** Resume every paused handle in batches that fit a frame, and send the opens that wait. */
  private round(): void {
    for (const h of this.handles.values()) if (h.state === 'opening' && h.pending === 0) this.sendOpen(h);
    for (const { hs, items } of resumeBatches(this.handles.values(), this.nextEpoch)) this.sendResume(hs, items);
  }




  /** Keep the handle, durably, before anything later in this step is carried out. */
  private keep(h: CoreHandle): void {
    h.keptVersion = h.version;
    this.keepingLater.delete(h);
    this.out.push({ kind: 'keep', h });
  }

  /** Keep the handle's current version soon, holding nothing back; one pending keep per handle. */
  private keepLater(h: CoreHandle): void {
    h.keptVersion = h.version;
    if (this.keepingLater.has(h)) return;
    this.keepingLater.add(h);
    this.out.push({ kind: 'keep-later', h });
  }

  /** A request unanswered for REQUEST_TIMEOUT_INTERVALS means frames were lost: drop the session, resume, replay. */
  private tick(): void {
    this.ticks++;
    for (const h of this.notDurable) {
      if (this.handles.get(h.requestId) === h) this.keep(h);
      else this.notDurable.delete(h);
    }
    const oldest = this.inflight.values().next().value;
    if (this.connected && oldest && oldest.tick <= this.ticks - REQUEST_TIMEOUT_INTERVALS) this.out.push({ kind: 'drop-session', why: 'request timeout' });
  }

  // ---- Frames from the replica ----

  private frame(msg: Message): void {
    switch (msg.type) {
      case 'opened': {
        const p = this.take(msg.id);
        if (p?.kind === 'open' && p.h.state === 'opening') this.grant(p.h, msg.lastSeq, msg.version, msg.size ?? 0);
        return;
      }
      case 'resumed':
        return this.resumed(msg);
      case 'written':
      case 'data':
        return this.answered(msg);
      case 'closed': {
        const p = this.take(msg.id);
        if (p?.kind === 'close' && p.h.state === 'closing') this.finishClose(p.h);
        return;
      }
      case 'access': {
        const p = this.take(msg.id);
        if (p?.kind === 'access') this.out.push({ kind: 'access-done', call: p.call, ok: true, access: { owner: msg.owner, grants: msg.grants } });
        return;
      }
      case 'revoked': {
        const h = this.handles.get(msg.requestId);
        if (h && h.target === msg.target) this.lose(h, 'REVOKED', msg.reason, msg.lastSeq);
        return;
      }
      case 'error':
        return this.refused(msg);
      default:
        this.log('warn', 'unexpected message from replica', { type: msg.type });
    }
  }


  private resumed(msg: MessageOf<'resumed'>): void {
    const p = this.take(msg.id);
    if (!p || (p.kind !== 'resume' && p.kind !== 'open')) return;
    const hs = p.kind === 'resume' ? p.hs : [p.h];
    let granted = 0;
    msg.results.forEach((r, i) => {
      const h = hs[i];
      if (!h || h.requestId !== r.requestId) return;
      if (this.handles.get(h.requestId) !== h) {
        // Gone while its resume was in flight. Closed or timed out: a grant it no longer wants would
        // hold the lock for as long as the session lives, so let it go. An application that died
        // keeps it: it comes back for it with the same requestId.
        if (r.granted && (h.state === 'closed' || h.state === 'invalidated')) this.send({ type: 'close', id: this.nextId++, target: h.target, requestId: h.requestId });
        return;
      }
      // A handle paused again after this resume was sent waits for the next round.
      if (h.state !== (p.kind === 'resume' ? 'resuming' : 'opening')) return;
      if (r.granted) {
        granted++;
        return this.grant(h, r.lastSeq ?? 0, r.version, r.size ?? 0);
      }
      // Denied as late, though sent on this session: this node's counter fell behind its own record
      // (its count of starts could not be kept). Count on from the record's and ask again.
      // (Every answer taken here is to a request of this session: those of a session left are dropped.)
      if (r.heldEpoch !== undefined) {
        this.countFrom(r.heldEpoch);
        this.log('warn', 'hand-over counter behind the store; resuming again', { target: h.target, requestId: h.requestId, heldEpoch: r.heldEpoch });
        if (h.state === 'opening') h.pending = 0;
        else this.to(h, 'PAUSED');
        return this.retryLater();
      }
      const reason = r.reason ?? 'MODIFIED';
      if (h.state === 'opening') return this.failOpen(h, r.code === 'FORBIDDEN' ? 'FORBIDDEN' : reason, `resume of ${h.target} denied: ${r.code ?? reason}`);
      h.version = r.version;
      this.lose(h, 'DENIED', reason, r.lastSeq);
    });
    if (p.kind === 'resume') this.log('info', 'handles resumed', { granted, of: hs.length });
  }

  private grant(h: CoreHandle, lastSeq: number, version: number, size: number): void {
    const opening = h.state === 'opening';
    h.size = size;
    h.pending = 0;
    h.version = version;
    // A takeover is kept as one until the store grants it (a restart in between takes over again). A
    // reader is kept again with the version granted whenever the file does not hold it for sure: an
    // open was kept before the store answered, with the version it had then (0 for a fresh open); a
    // resume carries the version the reader last read, which a read answer only asked to keep later
    // (still pending, or failed). The reclaim after a restart resumes with the kept version, and this
    // keep is on disk before the open or the resume is acknowledged (the shell fsyncs a step's keeps
    // before it carries the rest). A writer resumes by its instance, not a version.
    if (h.takeover || (h.mode === 'read' && (h.keptVersion !== version || this.keepingLater.has(h)))) this.keep(h);
    h.takeover = false;
    h.how = 'resume';
    this.to(h, opening ? 'OPENED' : 'GRANTED');
    if (!opening) this.out.push({ kind: 'pause-timer', h, on: false });
    const { applied, replay } = afterGrant(h, lastSeq);
    for (const op of applied) this.settle({ op, ok: true, value: { version } });
    const ops = replay;
    if (opening) this.out.push({ kind: 'opened', h });
    else this.log('debug', 'handle resumed', { app: h.app, target: h.target, requestId: h.requestId, lastSeq, replayed: ops.length });
    // Granted, but the replica said its store went away before this answer arrived (it waited for a
    // group commit): the handle is away like the others, and resumed with them.
    if (!this.session) return void this.pause(h);
    for (const op of ops) this.sendOp(h, op);
  }

  private answered(msg: MessageOf<'written'> | MessageOf<'data'>): void {
    const p = this.take(msg.id);
    if (p?.kind !== 'op') return;
    const { h, op } = p;
    const i = h.ops.indexOf(op);
    if (i < 0) return;
    h.ops.splice(i, 1);
    if (msg.type === 'data') h.version = msg.version;
    if (op.settle) this.settle({ op, ok: true, value: msg.type === 'data' ? { version: msg.version, data: msg.data } : { version: msg.version } });
    // A reader that read a newer version resumes with it, and so should its reclaim after a restart:
    // keep it, but later, without holding back this answer (no fsync on the read's path, and none at
    // all while the version stays the same; a burst of reads leaves one keep pending, which writes the
    // newest version). A keep that has not reached the disk when the node crashes costs liveness only,
    // never safety: the reclaim carries the older version, which the store grants only if nothing was
    // written after it (then nothing changed under the reader at all), and denies MODIFIED otherwise,
    // so the reader reloads; an older version never makes the store grant what it should deny. The
    // next resume's grant keeps the version before the resume is acknowledged (see grant).
    // Only for a handle still open: a read answered while it closes must not bring its entry back.
    if (msg.type === 'data' && h.mode === 'read' && h.state === 'active' && h.keptVersion !== h.version) this.keepLater(h);
  }

  private refused(msg: MessageOf<'error'>): void {
    const p = msg.id === undefined ? undefined : this.take(msg.id);
    const code: ErrorCode = isErrorCode(msg.code) ? msg.code : 'INTERNAL';
    if (!p) return this.log('warn', 'error from replica', { code, message: msg.message });
    if (p.kind === 'access') return void this.out.push({ kind: 'access-done', call: p.call, ok: false, code, message: msg.message });
    if (p.kind === 'resume') {
      // The whole resume failed (the store went away): the handles wait for the next round.
      for (const h of p.hs) if (h.state === 'resuming') this.pause(h);
      return this.retryLater();
    }
    const h = p.h;
    if (this.handles.get(h.requestId) !== h) return;
    if (p.kind === 'open') {
      h.pending = 0;
      // LOCKED is retryable for the application (wait and retry), not something to retry blindly here.
      if (code === 'UNAVAILABLE') return this.retryLater();
      return this.failOpen(h, code, msg.message);
    }
    if (p.kind === 'close') return this.finishClose(h);
    const op = p.op;
    // The store answered this copy with a refusal: it was not applied (and an older copy, on a session
    // since lost, was either acknowledged by the grant that replayed it or never applied).
    // Unless the replica says the store may still apply it: a commit sent and never answered.
    const unknown = msg.outcome === 'unknown';
    if (op.inflight === msg.id) {
      op.inflight = 0;
      if (!unknown) op.sent = false;
    }
    if (code === 'SEQ_GAP' && h.state === 'active') {
      // An earlier seq had not arrived (a filler or a replay is on its way): send this one again after it.
      if (++op.resends > MAX_RESENDS) return void this.out.push({ kind: 'drop-session', why: `write seq ${op.seq} of ${h.target} kept arriving before its predecessor` });
      return this.sendOp(h, op);
    }
    if (msg.retryable) {
      // Kept; the handle pauses and is resumed (and the operation replayed) in the next round.
      this.pause(h);
      return this.retryLater();
    }
    if (code === 'MODIFIED' || code === 'SUPERSEDED' || code === 'NOT_OPEN') {
      const reason: InvalidationReason = code === 'NOT_OPEN' ? 'CLOSED_BY_STORAGE' : code;
      this.remove(h, op);
      // The refused operation itself was not applied, and its session is fenced for good.
      if (op.settle) this.settle({ op, ok: false, code: reason, message: `${h.target}: ${msg.message}` });
      return this.lose(h, h.state === 'active' ? 'REVOKED' : 'DENIED', reason, msg.lastSeq);
    }
    // Refused on its own (a bad argument, a size limit): it fails alone. A write's seq goes to a
    // filler, so the next write follows in order (L3) and this one can never be applied later (S5).
    // One the store may still apply (an internal error after the store took it) is not known refused.
    if (op.settle) {
      if (unknown && op.kind === 'write' && op.seq > 0) this.settle({ op, ok: false, code: 'OUTCOME_UNKNOWN', reason: code, message: `${msg.message}; the write was sent and may have been applied` });
      else this.settle({ op, ok: false, code, message: msg.message });
    }
    const i = h.ops.indexOf(op);
    if (op.kind === 'read' || i < 0) return this.remove(h, op);
    const f = filler(op.seq);
    h.ops[i] = f;
    if (h.state === 'active') this.sendOp(h, f);
  }


  // ---- Endings ----

  private failOpen(h: CoreHandle, code: ErrorCode, message: string): void {
    this.to(h, 'OPEN_FAILED');
    this.out.push({ kind: 'forget', requestId: h.requestId });
    this.drop(h);
    this.out.push({ kind: 'open-failed', h, code, message });
  }

  /** The handle lost the target: invalidated, its requestId forgotten, its operations settled truthfully. */
  private lose(h: CoreHandle, event: 'DENIED' | 'REVOKED' | 'PAUSE_TIMEOUT', reason: InvalidationReason, lastSeq: number | undefined): void {
    if (h.state === 'opening') return this.failOpen(h, reason, `${h.target}: ${reason}`);
    if (h.state !== 'active' && h.state !== 'paused' && h.state !== 'resuming') return;
    // The lifecycle reaches `invalidated` from `paused` only through `resuming`.
    if (h.state === 'paused' && event !== 'PAUSE_TIMEOUT') this.to(h, 'RESUMING');
    h.reason = reason;
    this.to(h, h.state === 'active' ? 'REVOKED' : event === 'PAUSE_TIMEOUT' ? 'PAUSE_TIMEOUT' : 'DENIED');
    this.log('warn', 'handle invalidated', { app: h.app, target: h.target, requestId: h.requestId, reason });
    this.out.push({ kind: 'forget', requestId: h.requestId });
    this.out.push({ kind: 'pause-timer', h, on: false });
    this.lostOps(h, reason, lastSeq);
    this.drop(h);
  }

  private lostOps(h: CoreHandle, code: ErrorCode, lastSeq: number | undefined): void {
    const s: Settlement[] = [];
    settleLost(h, code, lastSeq, s);
    for (const x of s) this.out.push({ kind: 'settle', s: x });
  }






}
