/**
 * A replica's handles: one small record per handle (the state of machines/replica-handle.ts as plain
 * data, stepped by `stepReplicaHandle`), the hold periods of paused ones (armed through the core's
 * timers: the holds that begin in one step share one timer, so a lost session of 10,000 handles arms
 * one, not 10,000), and the handles of lost sessions ("orphans") until they are resumed here or their
 * hold ends. While an inspector watches, every record is reported as an actor of the machine would be.
 */
import type { InvalidationReason } from '../errors.js';
import {
  HOLD_PERIOD_ENDED,
  isFinalReplicaHandleState,
  replicaHandleInitialState,
  replicaHandleMachine,
  stepReplicaHandle,
  type ReplicaHandleData,
  type ReplicaHandleState,
  type ReplicaHandleStepEvent,
} from '../machines/replica-handle.js';
import type { AnyStateMachine, EventObject, StateValue } from 'xstate';
import type { TimerFor } from './replica-intents.js';

/** What the inspector is shown of a record (actors/pure-inspect.ts reports it as an actor's snapshot). */
export interface RecordSnapshot {
  value: StateValue;
  context: unknown;
  status: 'active' | 'done' | 'stopped';
}

/** Where the records are reported while an inspector watches (actors/pure-inspect.ts's PureInspector). */
export interface RecordWatcher<K> {
  register(id: K, machine: AnyStateMachine, parent: undefined, snapshot: RecordSnapshot): void;
  update(id: K, event: EventObject, snapshot: RecordSnapshot): void;
  stop(id: K): void;
}

/** The core's timers: `arm` returns the timer's number; `fire` runs when the shell says it expired. */
export interface CoreTimers {
  arm(what: TimerFor, ms: number, fire: () => void): number;
  cancel(timer: number): void;
}

/**
 * One handle on this replica: the state of machines/replica-handle.ts as plain data, stepped by
 * `stepReplicaHandle`. A record, not an actor: a replica holds 100,000 of them.
 */
export class HandleRecord implements ReplicaHandleData {
  state: ReplicaHandleState;
  reason: InvalidationReason | undefined = undefined;
  /** The hold period this handle waits out, while paused. */
  hold: HoldBatch | undefined = undefined;

  constructor(
    readonly target: string,
    readonly requestId: string,
    readonly mode: 'read' | 'write',
    public session: string,
    resume: boolean,
  ) {
    this.state = replicaHandleInitialState(resume);
  }
}

/** The holds that began in one step: one core timer, and the handles still waiting on it, in order. */
interface HoldBatch {
  timer: number;
  handles: Set<HandleRecord>;
  /** The timer's label (shown where intents are listed): every handle that joined the batch. */
  refs: Array<{ target: string; requestId: string }>;
}

export interface ReplicaHandleView {
  target: string;
  requestId: string;
  mode: 'read' | 'write';
  session: string;
  node: string;
  state: string;
}

export const keyOf = (target: string, requestId: string) => `${target}\u0000${requestId}`;

export function view(h: HandleRecord, node: string): ReplicaHandleView {
  return { target: h.target, requestId: h.requestId, mode: h.mode, session: h.session, node, state: h.state };
}

export class HandleRecords {
  private readonly orphaned = new Map<string, HandleRecord>();
  /** The batch the holds of the step under way join. */
  private batch: HoldBatch | undefined;

  constructor(
    private readonly timers: CoreTimers,
    private readonly holdMs: number,
    private readonly insp: RecordWatcher<HandleRecord> | undefined,
  ) {}

  /** A new step of the core: holds that begin from now on share a new timer. */
  newStep(): void {
    this.batch = undefined;
  }

  /** The handle's record on a session: an orphan of a lost session resumed here, or a new one. */
  attach(
    handles: Map<string, HandleRecord>,
    session: string,
    target: string,
    requestId: string,
    mode: 'read' | 'write',
    resume: boolean,
  ): HandleRecord {
    const key = keyOf(target, requestId);
    const existing = handles.get(key);
    if (existing && !isFinalReplicaHandleState(existing.state)) {
      this.step(existing, { type: 'RESUME', session });
      return existing;
    }
    this.drop(existing);
    const orphan = this.orphaned.get(key);
    if (orphan && resume && orphan.state === 'paused') {
      this.orphaned.delete(key);
      this.step(orphan, { type: 'RESUME', session });
      handles.set(key, orphan);
      return orphan;
    }
    this.drop(orphan);
    this.orphaned.delete(key);
    const h = new HandleRecord(target, requestId, mode, session, resume);
    this.insp?.register(h, replicaHandleMachine, undefined, this.snapshotOf(h));
    handles.set(key, h);
    return h;
  }

  detach(handles: Map<string, HandleRecord>, target: string, requestId: string): void {
    const key = keyOf(target, requestId);
    this.drop(handles.get(key));
    handles.delete(key);
  }

  /** Keep the handle of a lost session until it is resumed here or its hold period ends. */
  orphan(key: string, h: HandleRecord): void {
    if (isFinalReplicaHandleState(h.state)) return this.drop(h);
    this.drop(this.orphaned.get(key));
    this.orphaned.set(key, h);
  }

  orphans(): Iterable<HandleRecord> {
    return this.orphaned.values();
  }

  dropOrphans(): void {
    for (const h of this.orphaned.values()) this.drop(h);
    this.orphaned.clear();
  }

  /**
   * Step a handle's lifecycle (a handle in a final state takes nothing more) and do what the step
   * asks: the hold period runs, on a core timer, while the handle is paused.
   */
  step(h: HandleRecord | undefined, event: ReplicaHandleStepEvent): void {
    if (!h || isFinalReplicaHandleState(h.state)) return;
    const from = h.state;
    stepReplicaHandle(h, event);
    if (h.state === 'paused' && from !== 'paused') this.startHold(h);
    else if (from === 'paused' && h.state !== 'paused') this.cancelHold(h);
    this.insp?.update(h, event, this.snapshotOf(h));
  }

  /** Forget a handle record: no more timer, and the inspector sees it stop. */
  drop(h: HandleRecord | undefined): void {
    if (!h) return;
    this.cancelHold(h);
    this.insp?.stop(h);
  }

  /** Start `h`'s hold period: it joins this step's batch, which arms the batch's timer when it is made. */
  private startHold(h: HandleRecord): void {
    let b = this.batch;
    if (!b) {
      const batch: HoldBatch = { timer: 0, handles: new Set(), refs: [] };
      batch.timer = this.timers.arm({ kind: 'hold', handles: batch.refs }, this.holdMs, () => this.holdsEnded(batch));
      this.batch = b = batch;
    }
    b.handles.add(h);
    b.refs.push({ target: h.target, requestId: h.requestId });
    h.hold = b;
  }

  /** The hold period of a batch ran out: each handle still paused on it is released, an orphan forgotten. */
  private holdsEnded(b: HoldBatch): void {
    for (const h of b.handles) {
      b.handles.delete(h);
      h.hold = undefined;
      this.step(h, { type: HOLD_PERIOD_ENDED });
      const key = keyOf(h.target, h.requestId);
      if (this.orphaned.get(key) === h) this.orphaned.delete(key);
    }
  }

  /** `h` no longer waits out its hold; the batch's timer goes when no handle waits on it. */
  private cancelHold(h: HandleRecord): void {
    const b = h.hold;
    if (b === undefined) return;
    h.hold = undefined;
    b.handles.delete(h);
    if (b.handles.size > 0) return;
    this.timers.cancel(b.timer);
    if (this.batch === b) this.batch = undefined;
  }

  private snapshotOf(h: HandleRecord): RecordSnapshot {
    const { target, requestId, mode, session, reason } = h;
    return {
      value: h.state,
      status: isFinalReplicaHandleState(h.state) ? 'done' : 'active',
      context: { target, requestId, mode, session, holdMs: this.holdMs, reason },
    };
  }
}
