/**
 * The node agent's intent runner: it carries the pure core's intents out (core/agent.ts) in a stated
 * order: keeps and forgets first, written and fsynced in one batch, then everything else in the order
 * the core asked, so nothing that depends on a requestId being on disk is sent before it is. A
 * `keep-later` holds nothing back: it is written with the other pending ones in one batch on a later
 * turn of the event loop (or with the next batch of keeps, if sooner). The session, the connection
 * and the SDK's calls are in actors/node-connection.ts and actors/node-agent.ts.
 */
import type { Actor } from 'xstate';
import { SafeResumeError } from '../errors.js';
import type { AgentCore, Input, Intent } from '../core/agent.js';
import type { CoreHandle } from '../core/handle.js';
import { backoffDelay, type nodeSessionMachine } from '../machines/node-session.js';
import type { Connection } from '../transport/types.js';
import type { Env } from './env.js';
import type { KeptIds } from './kept.js';
import type { HandleMirrors } from './mirror.js';
import { LazyEmitter } from './emitter.js';
import type { NodeAgentEvents, NodeAgentOptions } from './node-agent-types.js';

export abstract class NodeAgentIntents extends LazyEmitter<NodeAgentEvents> {
  abstract readonly id: string;
  abstract readonly kept: KeptIds;
  abstract readonly core: AgentCore;
  protected abstract readonly env: Env;
  protected abstract readonly opts: NodeAgentOptions;
  protected abstract readonly session: Actor<typeof nodeSessionMachine>;
  protected abstract readonly mirrors: HandleMirrors | undefined;
  protected conn: Connection | undefined;
  protected outbox: Intent[] = [];
  protected flushing = false;
  /** Handles whose `keep-later` waits for the next write of the file (at most once each). */
  protected readonly later = new Set<CoreHandle>();
  protected laterTimer: unknown;
  protected readonly opening = new Map<CoreHandle, { resolve: () => void; reject: (e: Error) => void }>();
  protected readonly closing = new Map<CoreHandle, Array<() => void>>();
  protected readonly timers = new Map<CoreHandle, unknown>();
  protected retryTimer: unknown;
  protected diskError: string | undefined;
  /** requestIds whose removal the node-local file did not take; tried again with every later write and tick. */
  protected readonly unforgotten = new Set<string>();
  protected stopped = false;
  /** When each operation was called, while metrics are measured. */
  protected readonly calledAt = new WeakMap<object, number>();

  // ---- Carrying out the core's intents ----

  protected step(input: Input): void {
    if (this.stopped) return;
    const intents = this.core.step(input);
    if (intents.length === 0) return;
    for (const i of intents) this.outbox.push(i);
    if (!this.flushing) {
      this.flushing = true;
      queueMicrotask(() => this.flush());
    }
  }

  /** Keeps and forgets of the batch first (one write, one fsync), then every other intent in order. */
  private flush(): void {
    this.flushing = false;
    while (this.outbox.length > 0 && !this.stopped) {
      const batch = this.outbox;
      this.outbox = [];
      const last = new Map<string, CoreHandle | null>();
      for (const i of batch) {
        if (i.kind === 'keep') last.set(i.h.requestId, i.h);
        else if (i.kind === 'forget') last.set(i.requestId, null);
      }
      if (last.size > 0) {
        // Keeps waiting for later go along: this write costs no more for them, and reports them.
        const along: CoreHandle[] = [];
        for (const h of this.later) {
          const kept = last.get(h.requestId);
          if (kept === h) along.push(h);
          else if (kept === undefined && this.stillKept(h)) {
            last.set(h.requestId, h);
            along.push(h);
          }
        }
        for (const h of along) this.later.delete(h);
        if (this.persist(last) && along.length > 0) this.step({ type: 'kept', hs: along, error: undefined });
      }
      for (const i of batch) this.carry(i);
    }
  }

  /**
   * Write the keeps that wait for later, in one batch, skipping a handle no longer kept (stillKept).
   */
  protected keepLater(): void {
    this.laterTimer = undefined;
    if (this.stopped || this.later.size === 0) return;
    const hs = [...this.later].filter((h) => this.stillKept(h));
    this.later.clear();
    if (hs.length === 0) return;
    // A failure is reported by persist (the handles are then kept again on every tick).
    if (this.persist(new Map(hs.map((h) => [h.requestId, h])))) this.step({ type: 'kept', hs, error: undefined });
  }

  /**
   * Whether a keep asked for later may still be written: the core holds the handle and it is open. A
   * handle closing or closed had its entry forgotten (writing it back would let the application's
   * next open reclaim a closed requestId); one invalidated or gone is the business of what let it go.
   */
  private stillKept(h: CoreHandle): boolean {
    return (
      this.core.handles.get(h.requestId) === h &&
      (h.state === 'active' || h.state === 'paused' || h.state === 'resuming')
    );
  }

  /** Write and fsync one batch; false (and the core told, for the handles it puts) if the disk refused it. */
  protected persist(last: Map<string, CoreHandle | null>): boolean {
    const put: CoreHandle[] = [];
    const removed: string[] = [];
    for (const id of this.unforgotten) if (!last.has(id)) last.set(id, null);
    for (const [id, h] of last) {
      if (h) put.push(h);
      else removed.push(id);
    }
    try {
      this.kept.apply({
        put: put.map((h) => ({
          app: h.app,
          target: h.target,
          requestId: h.requestId,
          principal: h.principal,
          mode: h.mode,
          version: h.keptVersion,
          instance: h.instance,
          ...(h.takeover ? { takeover: true } : {}),
        })),
        remove: removed,
      });
      this.diskError = undefined;
      this.unforgotten.clear();
      const recovered = put.filter((h) => !h.durable);
      if (recovered.length > 0) this.step({ type: 'kept', hs: recovered, error: undefined });
      return true;
    } catch (err) {
      // The agent keeps serving; the handles say they are not durable until a later write succeeds.
      const code = (err as { code?: unknown }).code;
      this.diskError = typeof code === 'string' ? code : String(err);
      this.env.log.error(
        { err: String(err), handles: put.length, removed: removed.length },
        'could not write the node-local requestId file',
      );
      for (const id of removed) this.unforgotten.add(id);
      if (put.length > 0) this.step({ type: 'kept', hs: put, error: this.diskError });
      return false;
    }
  }

  private carry(i: Intent): void {
    switch (i.kind) {
      case 'send':
        if (this.conn?.isOpen) this.conn.send(i.msg);
        return;
      case 'keep':
      case 'forget':
        return;
      case 'keep-later':
        this.later.add(i.h);
        this.laterTimer ??= this.env.clock.setTimeout(() => this.keepLater(), 0);
        return;
      case 'changed':
        this.mirrors?.changed(i.h, i.event, i.to);
        if (i.event !== 'IO') {
          i.h.owner.changed(i.from, i.to, i.event);
          this.opts.observe?.transition(i.to, i.to === 'invalidated' ? i.h.reason : undefined);
        }
        return;
      case 'durability':
        return i.h.owner.durability(i.h.durable, i.h.durable ? undefined : this.diskError);
      case 'opened': {
        const w = this.opening.get(i.h);
        this.opening.delete(i.h);
        return w?.resolve();
      }
      case 'open-failed': {
        const w = this.opening.get(i.h);
        this.opening.delete(i.h);
        const err = new SafeResumeError(i.code, i.message);
        if (i.h.how === 'resume') err.requestId = i.h.requestId;
        return w?.reject(err);
      }
      case 'closed': {
        const ws = this.closing.get(i.h) ?? [];
        this.closing.delete(i.h);
        for (const w of ws) w();
        return;
      }
      case 'settle': {
        const { s } = i;
        const t0 = this.opts.observe ? this.calledAt.get(s.op) : undefined;
        if (t0 !== undefined)
          this.opts.observe!.operation(s.op.kind === 'write' ? 'write' : 'read', s.ok, this.env.clock.now() - t0);
        if (s.ok) s.op.settle?.resolve(s.value);
        else {
          const err = new SafeResumeError(s.code, s.message, s.reason);
          // What another writer changed, when the store said (a resume denied MODIFIED).
          if (s.changed) [err.changed, err.coarse] = [s.changed.changed, s.changed.coarse];
          s.op.settle?.reject(err);
        }
        return;
      }
      case 'pause-timer': {
        this.env.clock.clearTimeout(this.timers.get(i.h));
        this.timers.delete(i.h);
        const h = i.h;
        if (i.on)
          this.timers.set(
            h,
            this.env.clock.setTimeout(() => this.step({ type: 'pause-timeout', h }), h.pauseTimeoutMs),
          );
        return;
      }
      case 'retry-later':
        if (this.retryTimer !== undefined) return;
        this.retryTimer = this.env.clock.setTimeout(
          () => {
            this.retryTimer = undefined;
            this.step({ type: 'retry' });
          },
          backoffDelay(2, this.opts.backoffBaseMs ?? 100, this.opts.backoffMaxMs ?? 2000, this.env.random()),
        );
        return;
      case 'drop-session':
        if (this.conn) this.session.send({ type: 'SOCKET_CLOSED', reason: i.why });
        return;
      case 'access-done':
        if (i.ok) i.call.settle.resolve(i.access);
        else i.call.settle.reject(new SafeResumeError(i.code, i.message));
        return;
      case 'log':
        this.env.log[i.level](i.fields, i.msg);
        return;
    }
  }
}
