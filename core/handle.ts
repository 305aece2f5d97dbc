/**
 * A handle as the node agent's core holds it: plain data, stepped over the SPEC's handle lifecycle.
 * The lifecycle is `machines/app-handle.ts`, the machine the inspector draws: its config is compiled
 * once, at load, into the lookup table `nextState` reads (machines/compile.ts), so what is drawn is
 * what runs. `nextState` is the one place the node side decides a handle's state.
 */
import type { ChangedRanges, ErrorCode, InvalidationReason } from '../errors.js';
import type { Mode } from '../transport/messages.js';
import type { StateValueFrom } from 'xstate';
import { appHandleMachine, type AppHandleEvent } from '../machines/app-handle.js';
import { compileMachine, targetTable, transitionsOf } from '../machines/compile.js';

/** A handle's state, the same words on every side (SPEC "Handle lifecycle"). */
export type HandleState = 'opening' | 'active' | 'paused' | 'resuming' | 'invalidated' | 'closing' | 'closed';

/** Lifecycle events: the event names of machines/app-handle.ts. */
export type LifecycleEvent =
  | 'OPENED'
  | 'OPEN_FAILED'
  | 'PAUSED'
  | 'RESUMING'
  | 'GRANTED'
  | 'DENIED'
  | 'REVOKED'
  | 'CLOSE'
  | 'CLOSED'
  | 'PAUSE_TIMEOUT';

/** tsc holds the words above to the machine's: a state or event added to one and not the other does not compile. */
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const sameStates: Same<HandleState, StateValueFrom<typeof appHandleMachine>> = true;
const sameEvents: Same<LifecycleEvent, Exclude<AppHandleEvent['type'], 'IO'>> = true;
void sameStates;
void sameEvents;

/**
 * The machine's transition actions and its guard are carried out by the core itself, not looked up:
 * they are intents ordered with the protocol's (the pause timer starts only on leaving `active`, a
 * fail-fast handle's operations fail right after PAUSED, the reason is set before the handle is
 * told), and an I/O call does not change the state. Named here so that an action or guard added to
 * the drawing and not to the core fails the load instead of being drawn and not done.
 */
const CARRIED_BY_THE_CORE = {
  guards: ['failsFast'],
  actions: [
    'dispatchIo',
    'queueIo',
    'rejectIo',
    'rejectIoUnavailable',
    'setReason',
    'startPauseTimer',
    'stopPauseTimer',
    'notifyResumed',
  ],
};

const COMPILED = compileMachine(appHandleMachine, CARRIED_BY_THE_CORE);
const LIFECYCLE = targetTable(COMPILED);

/** The state `event` leads to from `state`, or undefined if the lifecycle has no such transition. */
export function nextState(state: HandleState, event: LifecycleEvent): HandleState | undefined {
  return LIFECYCLE[state][event];
}

/** Every transition of the lifecycle (the compiled machine's), for status views and tests. */
export function lifecycleTransitions(): Array<{ from: HandleState; event: LifecycleEvent; to: HandleState }> {
  return transitionsOf(COMPILED).map(({ from, event, to }) => ({ from, event: event as LifecycleEvent, to }));
}

/**
 * What settling an operation hands back: a write's new target version, a read's bytes, an extents'
 * kept ranges of `[offset, end)` (as the store answered them: store/types.ts ExtentsResult).
 */
export type OpResult = { version: number; data?: Uint8Array; kept?: Array<[number, number]>; end?: number };

/** The promise behind an operation; the core never calls it, it asks the shell to (an intent). */
export interface Settle {
  resolve(value: OpResult): void;
  reject(err: Error): void;
}

/**
 * One read or write of a handle, from the application's call until its answer. `extents` (which pages
 * of a range the target keeps) goes as a read does: never applied, so sent again freely.
 */
export interface Op {
  kind: 'write' | 'read' | 'extents';
  /**
   * Writes: the sequence number, given when the write is first sent and kept for every replay, so
   * a write is applied at most once. 0 = never sent (it cannot have been applied).
   */
  seq: number;
  offset: number;
  /** Write: the bytes (empty for a filler). */
  data: Uint8Array | undefined;
  /** Read, extents: how many bytes. */
  length: number;
  /** Correlation id of the request carrying it now, 0 if none. */
  inflight: number;
  /**
   * A copy of it may have been applied: sent on the current session and not refused. False for
   * one never sent, or whose only copy the store refused (then it was certainly not applied).
   */
  sent: boolean;
  /** SEQ_GAP answers so far: an earlier seq had not arrived yet, so the write is sent again. */
  resends: number;
  /** Undefined for a filler: an empty write that keeps the seq of a write refused or given up on. */
  settle: Settle | undefined;
}

/** What the shell attaches to a handle to tell its owner (the SDK handle) what happened. */
export interface HandleOwner {
  changed(from: HandleState, to: HandleState, event: LifecycleEvent): void;
  durability(durable: boolean, reason: string | undefined): void;
}

export interface CoreHandle {
  readonly app: string;
  readonly target: string;
  readonly requestId: string;
  readonly principal: string;
  readonly mode: Mode;
  readonly onFailure: 'pause' | 'error';
  readonly pauseTimeoutMs: number;
  /** This handle instance, kept with the requestId so a restarted agent or application resumes as it. */
  readonly instance: string;
  /** `open`: a fresh grant. `resume`: reclaim the requestId (as this instance, or taking it over). */
  how: 'open' | 'resume';
  /** Take the record over from another instance of the same requestId (until the first grant). */
  takeover: boolean;
  state: HandleState;
  reason: InvalidationReason | undefined;
  /** Denied MODIFIED: what the store said changed since the version the handle last saw. */
  changed?: ChangedRanges | undefined;
  /** The target version last seen (a read handle resumes only if it is unchanged). */
  version: number;
  /**
   * The version the node-local file holds for this handle, or will once the last keep asked for is
   * carried out: the shell writes this field, not `version`, so what is kept is what the core decided.
   */
  keptVersion: number;
  /** The size the open asks the target to have (0: none); once granted, the target's fixed size (0: none). */
  size: number;
  nextSeq: number;
  /** Operations not yet answered, in issue order: written ones (seq > 0) first, then queued ones. */
  ops: Op[];
  /** Correlation id of this handle's open or close in flight, 0 if none. */
  pending: number;
  /** False while the node could not write this handle's requestId to its node-local file. */
  durable: boolean;
  readonly owner: HandleOwner;
}

/** What the SDK gives to open a handle; the core's own fields start empty. */
export type OpenParams = Pick<
  CoreHandle,
  | 'app'
  | 'target'
  | 'requestId'
  | 'principal'
  | 'mode'
  | 'onFailure'
  | 'pauseTimeoutMs'
  | 'instance'
  | 'how'
  | 'takeover'
  | 'version'
  | 'size'
  | 'owner'
>;

/** A handle about to be opened. Field by field: an object spread gave handles V8's slow layout (~540 bytes more each). */
export function newHandle(p: OpenParams): CoreHandle {
  return {
    app: p.app,
    target: p.target,
    requestId: p.requestId,
    principal: p.principal,
    mode: p.mode,
    onFailure: p.onFailure,
    pauseTimeoutMs: p.pauseTimeoutMs,
    instance: p.instance,
    how: p.how,
    takeover: p.takeover,
    state: 'opening',
    reason: undefined,
    changed: undefined,
    version: p.version,
    keptVersion: p.version,
    size: p.size,
    nextSeq: 1,
    ops: [],
    pending: 0,
    durable: true,
    owner: p.owner,
  };
}

export const EMPTY = new Uint8Array(0);

/** An empty write that takes `seq`: the store applies it (or acknowledges the original) and moves on. */
export function filler(seq: number): Op {
  return {
    kind: 'write',
    seq,
    offset: 0,
    data: EMPTY,
    length: 0,
    inflight: 0,
    sent: false,
    resends: 0,
    settle: undefined,
  };
}

/** A settlement the core asks for: resolve, or reject with a code (and the reason behind an OUTCOME_UNKNOWN). */
export type Settlement =
  | { op: Op; ok: true; value: OpResult }
  | {
      op: Op;
      ok: false;
      code: ErrorCode;
      message: string;
      reason?: ErrorCode | undefined;
      /** MODIFIED (or OUTCOME_UNKNOWN because of it): what changed, when the store said. */
      changed?: ChangedRanges | undefined;
    };

/**
 * Settle every operation of a handle that lost the target (S5). A write that was never sent, or whose
 * only copy the store refused, was not applied; a sent one was applied iff its seq is at most
 * `lastSeq` (what the store says this instance applied). Without `lastSeq` the store no longer holds
 * the evidence: OUTCOME_UNKNOWN, with the reason.
 */
export function settleLost(h: CoreHandle, code: ErrorCode, lastSeq: number | undefined, out: Settlement[]): void {
  const message = `${h.target}: handle ${code === 'CLOSED' ? 'closed' : `invalidated (${code})`}`;
  const changed = code === 'MODIFIED' && h.changed ? { changed: h.changed } : {};
  for (const op of h.ops) {
    if (!op.settle) continue;
    if (op.kind !== 'write' || op.seq === 0) out.push({ op, ok: false, code, message, ...changed });
    else if (lastSeq === undefined && !op.sent)
      out.push({ op, ok: false, code, message: `${message}; this write was not applied`, ...changed });
    else if (lastSeq !== undefined) {
      if (op.seq <= lastSeq) out.push({ op, ok: true, value: { version: h.version } });
      else out.push({ op, ok: false, code, message: `${message}; this write was not applied`, ...changed });
    } else {
      out.push({
        op,
        ok: false,
        code: 'OUTCOME_UNKNOWN',
        reason: code,
        message: `${message}; the write was sent, and whether it was applied is no longer known`,
        ...changed,
      });
    }
  }
  h.ops = [];
}
