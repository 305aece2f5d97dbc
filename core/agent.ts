/**
 * The node agent's protocol, as a pure core in the spirit of raft's Step/Ready: inputs in (SDK calls,
 * replica frames, session up/down, timer expiries, ticks), intents out (send this frame, keep this
 * requestId durably, tell this handle, settle this operation, arm this timer). No socket, file,
 * timer or clock in here; actors/node-agent.ts carries the intents out, keeps and fsyncs before it
 * sends, and feeds the answers back in. Here: the steps and the SDK's calls; the session and the
 * handles' endings are in core/agent-session.ts, the replica's answers in core/agent-replies.ts.
 */
import type { CoreHandle, Op } from './handle.js';
import { REQUEST_TIMEOUT_INTERVALS } from '../transport/messages.js';
import type { AccessCall, Input, Intent } from './intents.js';
import { AgentReplies } from './agent-replies.js';

export type { Input, Intent } from './intents.js';

export class AgentCore extends AgentReplies {
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
        if (input.h.state === 'paused' || input.h.state === 'resuming')
          this.lose(input.h, 'PAUSE_TIMEOUT', 'TIMEOUT', undefined);
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
        if (h.onFailure === 'error')
          return this.settle({
            op,
            ok: false,
            code: 'UNAVAILABLE',
            message: `${h.target}: storage unavailable and the handle fails fast`,
          });
        if (this.queueFull(h, op)) {
          return this.settle({
            op,
            ok: false,
            code: 'QUEUE_FULL',
            message: `${h.target}: ${h.ops.length} operations are already queued while the handle is ${h.state} (at most ${this.maxQueuedOps} and ${this.maxQueuedBytes} bytes); retry once it is active`,
          });
        }
        h.ops.push(op);
        return;
      case 'invalidated':
        return this.settle({
          op,
          ok: false,
          code: h.reason ?? 'MODIFIED',
          message: `${h.target}: handle invalidated (${h.reason})`,
          changed: h.changed,
        });
      default:
        return this.settle({ op, ok: false, code: 'CLOSED', message: `${h.target}: handle closed` });
    }
  }

  /** A grant or revocation goes now, or fails: it is no handle's, and waits for no resume. */
  private access(call: AccessCall): void {
    if (!this.session)
      return void this.out.push({
        kind: 'access-done',
        call,
        ok: false,
        code: 'UNAVAILABLE',
        message: `${call.target}: no storage session now; nothing was changed (retry)`,
      });
    const id = this.nextId++;
    this.inflight.set(id, { kind: 'access', call, tick: this.ticks });
    if (call.mode === 'none')
      this.send({ type: 'revoke', id, target: call.target, principal: call.principal, grantee: call.grantee });
    else
      this.send({
        type: 'grant',
        id,
        target: call.target,
        principal: call.principal,
        grantee: call.grantee,
        mode: call.mode,
      });
  }

  /** Whether queuing `op` on the paused handle would pass a limit (counting what is queued now). */
  private queueFull(h: CoreHandle, op: Op): boolean {
    if (h.ops.length >= this.maxQueuedOps) return true;
    let bytes = queuedBytes(op);
    for (const o of h.ops) bytes += queuedBytes(o);
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

  /** A request unanswered for REQUEST_TIMEOUT_INTERVALS means frames were lost: drop the session, resume, replay. */
  private tick(): void {
    this.ticks++;
    for (const h of this.notDurable) {
      if (this.handles.get(h.requestId) === h) this.keep(h);
      else this.notDurable.delete(h);
    }
    const oldest = this.inflight.values().next().value;
    if (this.connected && oldest && oldest.tick <= this.ticks - REQUEST_TIMEOUT_INTERVALS)
      this.out.push({ kind: 'drop-session', why: 'request timeout' });
  }
}

/** What an operation queued on a paused handle holds: a write its bytes, a read the bytes it will get, an extents none. */
function queuedBytes(op: Op): number {
  return op.kind === 'write' ? (op.data?.length ?? 0) : op.kind === 'read' ? op.length : 0;
}
