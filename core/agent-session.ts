/**
 * The node agent's core, its session and handles' endings: what happens to every handle when the
 * session is lost or its storage goes away (pause, fail fast), the resume round when it is back, the
 * keeps of requestIds, and how a handle ends (closed, refused, invalidated) with its operations
 * settled truthfully. Pure, like the core (core/agent.ts).
 */
import type { ErrorCode, InvalidationReason } from '../errors.js';
import { filler, settleLost, type CoreHandle, type Op, type Settlement } from './handle.js';
import { CoreBase } from './base.js';
import { resumeBatches } from './resume.js';

export abstract class AgentSession extends CoreBase {
  /** Handles whose requestId the node-local file could not take: kept again on every tick until it does. */
  protected readonly notDurable = new Set<CoreHandle>();
  /** Read handles with a `keep-later` the shell has not answered yet (at most one each). */
  protected readonly keepingLater = new Set<CoreHandle>();

  protected finishClose(h: CoreHandle): void {
    if (h.state === 'closing') this.to(h, 'CLOSED');
    else if (h.state !== 'closed') this.to(h, 'CLOSE');
    this.out.push({ kind: 'pause-timer', h, on: false });
    this.lostOps(h, 'CLOSED', undefined);
    this.drop(h);
    this.out.push({ kind: 'closed', h });
  }

  /** Forget a handle here (its kept requestId is the caller's business). */
  protected drop(h: CoreHandle): void {
    if (this.handles.get(h.requestId) === h) this.handles.delete(h.requestId);
    this.keepingLater.delete(h);
    for (const [id, p] of this.inflight)
      if ((p.kind === 'op' || p.kind === 'open' || p.kind === 'close') && p.h === h) this.inflight.delete(id);
    h.pending = 0;
    if (h.state !== 'closed' && h.state !== 'invalidated') this.out.push({ kind: 'pause-timer', h, on: false });
  }

  // ---- The session ----

  protected disconnected(why: string | undefined): void {
    const had = this.session;
    this.session = undefined;
    this.connected = false;
    const closing: CoreHandle[] = [];
    for (const p of this.inflight.values()) {
      if (p.kind === 'close') closing.push(p.h);
      // A change to an access list is idempotent: the application may send it again.
      if (p.kind === 'access')
        this.out.push({
          kind: 'access-done',
          call: p.call,
          ok: false,
          code: 'UNAVAILABLE',
          message: `${p.call.target}: the storage session was lost before the answer; the change may or may not have been made (send it again)`,
        });
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
  protected lost(session: string | undefined, paused: number, why: string | undefined): void {
    if (session === undefined && paused === 0) return;
    this.log('info', 'handles paused', {
      paused,
      why: why ?? 'storage unavailable',
      ...(session !== undefined ? { session } : {}),
    });
  }

  /** Pause an active or resuming handle; whether it was. */
  protected pause(h: CoreHandle): boolean {
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
  protected failFast(h: CoreHandle): void {
    const message = `${h.target}: storage unavailable; the handle fails fast (onFailure: 'error')`;
    const kept: Op[] = [];
    for (const op of h.ops) {
      if (!op.settle) kept.push(op);
      else if (op.kind === 'write' && op.seq > 0) {
        if (op.sent)
          this.settle({
            op,
            ok: false,
            code: 'OUTCOME_UNKNOWN',
            reason: 'UNAVAILABLE',
            message: `${message}; the write was sent and may have been applied`,
          });
        else this.settle({ op, ok: false, code: 'UNAVAILABLE', message });
        kept.push(filler(op.seq));
      } else this.settle({ op, ok: false, code: 'UNAVAILABLE', message });
    }
    h.ops = kept;
  }

  /** Resume every paused handle in batches that fit a frame, and send the opens that wait. */
  protected round(): void {
    for (const h of this.handles.values()) if (h.state === 'opening' && h.pending === 0) this.sendOpen(h);
    for (const { hs, items } of resumeBatches(this.handles.values(), this.nextEpoch)) this.sendResume(hs, items);
  }

  /** Keep the handle, durably, before anything later in this step is carried out. */
  protected keep(h: CoreHandle): void {
    h.keptVersion = h.version;
    this.keepingLater.delete(h);
    this.out.push({ kind: 'keep', h });
  }

  /** Keep the handle's current version soon, holding nothing back; one pending keep per handle. */
  protected keepLater(h: CoreHandle): void {
    h.keptVersion = h.version;
    if (this.keepingLater.has(h)) return;
    this.keepingLater.add(h);
    this.out.push({ kind: 'keep-later', h });
  }

  // ---- Endings ----

  protected failOpen(h: CoreHandle, code: ErrorCode, message: string): void {
    this.to(h, 'OPEN_FAILED');
    this.out.push({ kind: 'forget', requestId: h.requestId });
    this.drop(h);
    this.out.push({ kind: 'open-failed', h, code, message });
  }

  /** The handle lost the target: invalidated, its requestId forgotten, its operations settled truthfully. */
  protected lose(
    h: CoreHandle,
    event: 'DENIED' | 'REVOKED' | 'PAUSE_TIMEOUT',
    reason: InvalidationReason,
    lastSeq: number | undefined,
  ): void {
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

  protected lostOps(h: CoreHandle, code: ErrorCode, lastSeq: number | undefined): void {
    const s: Settlement[] = [];
    settleLost(h, code, lastSeq, s);
    for (const x of s) this.out.push({ kind: 'settle', s: x });
  }
}
