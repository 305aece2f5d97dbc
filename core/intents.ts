/**
 * What goes into the node agent's core and what comes out of it (core/agent.ts): the whole interface
 * between the protocol and the shell that does its I/O.
 */
import type { ErrorCode } from '../errors.js';
import type { Message } from '../transport/messages.js';
import type { CoreHandle, HandleState, LifecycleEvent, Op, Settlement } from './handle.js';

/** An application's grant (`mode` read or write) or revocation (`none`) of a principal's access to a target its principal owns. */
export interface AccessCall {
  target: string;
  /** The application's principal: the owner asking. */
  principal: string;
  grantee: string;
  mode: 'read' | 'write' | 'none';
  settle: {
    resolve: (access: { owner: string; grants: Array<{ principal: string; mode: 'read' | 'write' }> }) => void;
    reject: (err: Error) => void;
  };
}

export type Input =
  /** The SDK opens (or reclaims) a handle; the shell made sure its requestId is not open here. */
  | { type: 'open'; h: CoreHandle }
  | { type: 'io'; h: CoreHandle; op: Op }
  | { type: 'close'; h: CoreHandle }
  /** The SDK changes who may open a target (sent now if the session is up, else refused UNAVAILABLE). */
  | { type: 'access'; call: AccessCall }
  /** The application process died: forget the handle, keep its requestId for when it comes back. */
  | { type: 'app-gone'; h: CoreHandle }
  /** The session is up and its storage available: resume what is paused, open what waits. */
  | { type: 'ready'; session: string }
  /** The replica said its storage is unavailable: pause, keep the requests in flight. */
  | { type: 'unavailable'; why?: string }
  /** The connection is gone: pause, and every request in flight is lost. */
  | { type: 'disconnected'; why?: string }
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
  /** An access call answered: the target's access list, or why not. */
  | {
      kind: 'access-done';
      call: AccessCall;
      ok: true;
      access: { owner: string; grants: Array<{ principal: string; mode: 'read' | 'write' }> };
    }
  | { kind: 'access-done'; call: AccessCall; ok: false; code: ErrorCode; message: string }
  | { kind: 'pause-timer'; h: CoreHandle; on: boolean }
  | { kind: 'retry-later' }
  | { kind: 'drop-session'; why: string }
  | { kind: 'log'; level: 'debug' | 'info' | 'warn'; msg: string; fields: Record<string, unknown> };

export type Pending =
  | { kind: 'op'; h: CoreHandle; op: Op; tick: number }
  | { kind: 'open'; h: CoreHandle; tick: number }
  | { kind: 'close'; h: CoreHandle; tick: number }
  | { kind: 'resume'; hs: CoreHandle[]; tick: number }
  | { kind: 'access'; call: AccessCall; tick: number };
