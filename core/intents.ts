/**
 * What goes into the node agent's core and what comes out of it (core/agent.ts): the whole interface
 * between the protocol and the shell that does its I/O.
 */
import type { ErrorCode } from '../errors.js';
import type { Message } from '../transport/messages.js';
import type { CoreHandle, HandleState, LifecycleEvent, Op, Settlement } from './handle.js';

export type Input =
  /** The SDK opens (or reclaims) a handle; the shell made sure its requestId is not open here. */
  | { type: 'open'; h: CoreHandle }
  | { type: 'io'; h: CoreHandle; op: Op }
  | { type: 'close'; h: CoreHandle }
  /** The application process died: forget the handle, keep its requestId for when it comes back. */
  | { type: 'app-gone'; h: CoreHandle }
  /** The session is up and its storage available: resume what is paused, open what waits. */
  | { type: 'ready'; session: string }
  /** The replica said its storage is unavailable: pause, keep the requests in flight. */
  | { type: 'unavailable' }
  /** The connection is gone: pause, and every request in flight is lost. */
  | { type: 'disconnected' }
  | { type: 'frame'; msg: Message }
  | { type: 'pause-timeout'; h: CoreHandle }
  | { type: 'retry' }
  /** One heartbeat interval passed. */
  | { type: 'tick' }
  /** What the node-local file made of the handles' last keep (every `keep-later`, and a failed or recovering `keep`). */
  | { type: 'kept'; hs: CoreHandle[]; error: string | undefined };

export type Intent =
  | { kind: 'send'; msg: Message }
  /** Write the handle's requestId and instance to the node-local file, durably, before any later send. */
  | { kind: 'keep'; h: CoreHandle }
  /**
   * Write the handle to the node-local file soon, without holding back anything of this step: nothing
   * sent or told depends on it being on disk. One per handle is pending at a time; the shell answers
   * with `kept` once it was written (or failed).
   */
  | { kind: 'keep-later'; h: CoreHandle }
  | { kind: 'forget'; requestId: string }
  | { kind: 'changed'; h: CoreHandle; from: HandleState; to: HandleState; event: LifecycleEvent | 'IO' }
  | { kind: 'durability'; h: CoreHandle }
  | { kind: 'opened'; h: CoreHandle }
  | { kind: 'open-failed'; h: CoreHandle; code: ErrorCode; message: string }
  | { kind: 'closed'; h: CoreHandle }
  | { kind: 'settle'; s: Settlement }
  | { kind: 'pause-timer'; h: CoreHandle; on: boolean }
  | { kind: 'retry-later' }
  | { kind: 'drop-session'; why: string }
  | { kind: 'log'; level: 'debug' | 'info' | 'warn'; msg: string; fields: Record<string, unknown> };

export type Pending =
  | { kind: 'op'; h: CoreHandle; op: Op; tick: number }
  | { kind: 'open'; h: CoreHandle; tick: number }
  | { kind: 'close'; h: CoreHandle; tick: number }
  | { kind: 'resume'; hs: CoreHandle[]; tick: number };
