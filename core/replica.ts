/**
 * The replica's protocol as a pure core, in the spirit of the node agent's (core/agent.ts): inputs
 * in (connections accepted and closed, frames received, store answers, timer expiries, the operator's
 * dismount and mount, the clock's now), intents out (send this frame, run this store call, arm this
 * timer, stop reading this connection, drop it, log). No socket, store, timer or clock in here:
 * actors/replica.ts carries the intents out and feeds the answers back in.
 *
 * The rooms: core/replica-handshake.ts (hello, auth, prove), core/replica-flow.ts (requests in
 * flight, backpressure, silent and lost sessions), core/replica-requests.ts (the requests and their
 * store answers), core/replica-handles.ts (the handles' lifecycle records and hold periods). Here:
 * the step, the renewals, and the store's mount (dismount, probe, mount).
 */
import type { HandleRef, RenewResult } from '../store/types.js';
import type { Message } from '../transport/messages.js';
import { ReplicaRequests } from './replica-requests.js';
import { keyOf, view, type ReplicaHandleView } from './replica-handles.js';
import type { Session } from './replica-base.js';
import type { ReplicaInput, ReplicaIntent } from './replica-intents.js';
import { describe } from './replica-flow.js';

export type { ReplicaConfig, Session } from './replica-base.js';
export type { ReplicaInput, ReplicaIntent, StoreAnswer, StoreCall, StoreFailure, TimerFor } from './replica-intents.js';
export { MAX_PRINCIPALS_PER_SESSION } from './replica-handshake.js';

export class ReplicaCore extends ReplicaRequests {
  /** A renewal of every session is running. */
  private renewing = false;

  step(now: number, input: ReplicaInput): ReplicaIntent[] {
    this.now = now;
    this.out = [];
    this.records.newStep();
    switch (input.type) {
      case 'accept':
        this.accept(input.conn, input.remote);
        break;
      case 'frame':
        this.frame(input.conn, input.frame);
        break;
      case 'closed':
        this.closed(input.conn);
        break;
      case 'drain':
        this.onDrain(input.conn, input.buffered);
        break;
      case 'buffered':
        this.onBuffered(input.conn, input.bytes);
        break;
      case 'store-done':
        this.answered(input.call, input.answer);
        break;
      case 'timer':
        this.fired(input.timer);
        break;
      case 'renew-tick':
        this.renewAll();
        break;
      case 'reap-tick':
        this.reapSilent(input.buffered);
        break;
      case 'source-limited':
        this.warn(
          'pre-auth limit',
          { source: input.source, held: input.held },
          'limiting a source: dropped its oldest connection not yet authenticated',
        );
        break;
      case 'dismount':
        this.enterDismounted('manual');
        break;
      case 'mount':
        this.mount();
        break;
      case 'stop':
        this.stop();
        break;
    }
    return this.out;
  }

  get isDismounted(): boolean {
    return this.dismounted !== 'no';
  }

  /** While dismounted by a store error: that error, for status and the inspector. */
  get storeError(): string | undefined {
    return this.dismounted === 'no' ? undefined : this.lastStoreError;
  }

  /** Every live session: its id, its node, and how long ago (from `now`) it was last heard from. */
  sessionList(now: number): Array<{ id: string; node: string; silentMs: number }> {
    return [...this.sessions.values()].map((s) => ({
      id: s.id,
      node: s.node,
      silentMs: Math.max(0, now - s.lastHeardMs),
    }));
  }

  handles(): ReplicaHandleView[] {
    const out: ReplicaHandleView[] = [];
    for (const s of this.sessions.values()) {
      for (const h of s.handles.values()) out.push(view(h, s.node));
    }
    for (const h of this.records.orphans()) out.push(view(h, ''));
    return out;
  }

  /** Stop serving: every session is dropped as in a crash; locks keep their hold period. */
  private stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    for (const s of [...this.sessions.values()]) this.loseSession(s, 'replica stopping', false);
    this.records.dropOrphans();
  }

  private mount(): void {
    if (this.dismounted === 'no') return;
    this.dismounted = 'no';
    this.lastStoreError = undefined;
    this.log('warn', 'store available again: mounted');
    this.broadcast({ type: 'notice', kind: 'available' });
  }

  protected enterDismounted(kind: 'manual' | 'auto'): void {
    if (this.dismounted !== 'no') {
      if (kind === 'manual') this.dismounted = 'manual';
      return;
    }
    this.dismounted = kind;
    this.log('warn', 'store unavailable: dismounted', { kind });
    for (const s of this.sessions.values())
      for (const h of s.handles.values()) this.records.step(h, { type: 'STORAGE_UNAVAILABLE' });
    this.broadcast({ type: 'notice', kind: 'unavailable' });
    if (kind === 'auto') this.probe();
  }

  /** While dismounted by a store error, ping the store every probe interval; mount when it answers. */
  private probe(): void {
    this.arm({ kind: 'probe' }, this.cfg.probeIntervalMs, () => {
      if (this.stopped || this.dismounted !== 'auto') return;
      this.call<void>({ op: 'ping' }, (a) => {
        if (a.ok) {
          if (this.dismounted === 'auto') this.mount();
          return;
        }
        const f = a.failure;
        if (f.kind !== 'internal') this.lastStoreError = f.message;
        else if (f.error instanceof Error) this.lastStoreError = f.error.message;
        this.probe();
      });
    });
  }

  private broadcast(msg: Message): void {
    for (const s of this.sessions.values()) this.send(s.conn, msg);
  }

  /** Renew the locks of every session, one session's batch after another; a slow renewal is not joined by another. */
  private renewAll(): void {
    if (this.dismounted !== 'no' || this.renewing) return;
    this.renewing = true;
    this.renewNext([...this.sessions.values()], 0, this.lockMs);
  }

  private renewNext(sessions: Session[], i: number, leaseMs: number): void {
    for (; i < sessions.length; i++) {
      const s = sessions[i]!;
      const refs: HandleRef[] = [];
      for (const h of s.handles.values())
        if (h.mode === 'write' && h.state === 'active') refs.push({ target: h.target, requestId: h.requestId });
      if (refs.length === 0) continue;
      const at = i;
      return this.call<RenewResult>({ op: 'renew', session: s.id, refs, leaseMs }, (a) => {
        if (a.ok) this.renewed(s, a.value);
        else if (a.failure.kind === 'unavailable') {
          this.lastStoreError = a.failure.message;
          this.renewing = false;
          return this.enterDismounted('auto');
        } else
          this.log('error', 'renewal failed', {
            err: a.failure.kind === 'internal' ? a.failure.error : describe(a.failure),
          });
        this.renewNext(sessions, at + 1, leaseMs);
      });
    }
    this.renewing = false;
  }

  /** A renewal's answer: a lock it found lost revokes its handle, and the node is told. */
  private renewed(s: Session, { lost }: RenewResult): void {
    for (const l of lost) {
      const h = s.handles.get(keyOf(l.target, l.requestId));
      if (!h) continue;
      this.records.step(h, { type: 'REVOKED', reason: l.reason });
      this.records.detach(s.handles, l.target, l.requestId);
      this.send(s.conn, {
        type: 'revoked',
        target: l.target,
        requestId: l.requestId,
        reason: l.reason,
        ...(l.lastSeq !== undefined ? { lastSeq: l.lastSeq } : {}),
      });
    }
  }
}
