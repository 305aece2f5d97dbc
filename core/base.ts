/**
 * The state the node agent's core keeps besides its handles' own (the session, the requests in
 * flight, the intents of the step under way) and the small steps every part of it takes: send a
 * request, move a handle through its lifecycle, settle an operation. Pure, like the core.
 */
import type { Message, ResumeItem } from '../transport/messages.js';
import { nextState, type CoreHandle, type LifecycleEvent, type Op, type Settlement } from './handle.js';
import type { Intent, Pending } from './intents.js';
import { resumeItem } from './resume.js';

export abstract class CoreBase {
  readonly handles = new Map<string, CoreHandle>();
  /** Set while the session is up and its storage available: requests may be sent. */
  session: string | undefined;
  protected connected = false;
  protected nextId = 1;
  protected ticks = 0;
  protected readonly inflight = new Map<number, Pending>();
  protected out: Intent[] = [];
  /**
   * Hand-over counters: every open and resume of a write handle carries a larger one than any sent
   * before by this node, across restarts of the agent (`epochBase` comes from the node-local file,
   * one more boot each start, times 2^32). The store never moves a record back to a smaller one, so a
   * late copy of a request, from a session this node has left, cannot take a handle back.
   */
  epochBase = 0;
  private handovers = 0;
  protected readonly nextEpoch = (): number => this.epochBase + ++this.handovers;
  /**
   * The store holds a record of ours at `held`, a counter this node did not go past (its count of
   * starts could not be kept): count on from there, so the next request moves the record.
   */
  protected countFrom(held: number): void {
    this.handovers = Math.max(this.handovers, held - this.epochBase);
  }

  protected sendResume(hs: CoreHandle[], items: ResumeItem[]): void {
    const id = this.nextId++;
    for (const h of hs) this.to(h, 'RESUMING');
    this.inflight.set(id, { kind: 'resume', hs, tick: this.ticks });
    this.send({ type: 'resume', id, items });
    this.log('info', 'resuming handles', { handles: hs.length });
  }

  protected sendOpen(h: CoreHandle): void {
    const id = this.nextId++;
    h.pending = id;
    this.inflight.set(id, { kind: 'open', h, tick: this.ticks });
    if (h.how === 'open') {
      this.send({
        type: 'open',
        id,
        target: h.target,
        requestId: h.requestId,
        principal: h.principal,
        mode: h.mode,
        instance: h.instance,
        ...(h.size ? { size: h.size } : {}),
        ...(h.mode === 'write' ? { epoch: this.nextEpoch() } : {}),
      });
    } else this.send({ type: 'resume', id, items: [resumeItem(h, this.nextEpoch)] });
  }

  protected sendOp(h: CoreHandle, op: Op): void {
    if (!this.session) return; // replayed after the resume
    const id = this.nextId++;
    op.inflight = id;
    op.sent = true;
    this.inflight.set(id, { kind: 'op', h, op, tick: this.ticks });
    if (op.kind !== 'write') {
      this.send({ type: op.kind, id, target: h.target, requestId: h.requestId, offset: op.offset, length: op.length });
      return;
    }
    if (op.seq === 0) op.seq = h.nextSeq++;
    this.send({
      type: 'write',
      id,
      target: h.target,
      requestId: h.requestId,
      seq: op.seq,
      offset: op.offset,
      data: op.data!,
    });
  }

  protected take(id: number): Pending | undefined {
    const p = this.inflight.get(id);
    this.inflight.delete(id);
    return p;
  }

  protected remove(h: CoreHandle, op: Op): void {
    const i = h.ops.indexOf(op);
    if (i >= 0) h.ops.splice(i, 1);
  }

  protected to(h: CoreHandle, event: LifecycleEvent): void {
    const next = nextState(h.state, event);
    if (next === undefined) throw new Error(`handle lifecycle: no ${event} from ${h.state} (${h.target})`);
    const from = h.state;
    h.state = next;
    this.out.push({ kind: 'changed', h, from, to: next, event });
  }

  protected settle(s: Settlement): void {
    this.out.push({ kind: 'settle', s });
  }

  protected send(msg: Message): void {
    this.out.push({ kind: 'send', msg });
  }

  protected retryLater(): void {
    this.out.push({ kind: 'retry-later' });
  }

  protected log(level: 'debug' | 'info' | 'warn', msg: string, fields: Record<string, unknown>): void {
    this.out.push({ kind: 'log', level, msg, fields });
  }

  /** Operations in flight, for status views and tests. */
  get inflightCount(): number {
    return this.inflight.size;
  }
}
