/**
 * NodeAgent: one per compute node. The protocol is decided by the pure core (core/agent.ts); this
 * shell owns the I/O: the session with a replica (the node-session machine: connect, heartbeats,
 * failover), the node-local requestId file, timers, and the SDK's promises. It carries the core's
 * intents out (actors/node-intents.ts) in a stated order: keeps and forgets first, written and fsynced in one batch, then
 * everything else in the order the core asked, so nothing that depends on a requestId being on
 * disk is sent before it is. A `keep-later` holds nothing back: it is written with the other pending
 * ones in one batch on a later turn of the event loop (or with the next batch of keeps, if sooner).
 */
import { SafeResumeError } from '../errors.js';
import type { AccessCall } from '../core/intents.js';
import { newHandle, type CoreHandle, type HandleState, type OpenParams } from '../core/handle.js';
import { issueCredential, NAME_PATTERN, nbdPsk } from './auth.js';
import type { KeptHandle } from './kept.js';
import { NodeAgentConnection } from './node-connection.js';

export type { OpenParams } from '../core/handle.js';
export type {
  ConnectCause,
  ConnectRound,
  NodeAgentEvents,
  NodeAgentOptions,
  NodeObserver,
} from './node-agent-types.js';

/**
 * The API the application SDK uses. The session and the connection are in actors/node-connection.ts,
 * the carrying out of the core's intents in actors/node-intents.ts, the options and events in
 * actors/node-agent-types.ts.
 */
export class NodeAgent extends NodeAgentConnection {
  /**
   * Make sure this node can prove `principal`: known already, or derived from the cluster key if the
   * node was given it. Otherwise FORBIDDEN: the application must bring the principal's credential.
   */
  usePrincipal(principal: string): void {
    if (this.principals.has(principal)) return;
    if (!this.opts.secret)
      throw new SafeResumeError(
        'FORBIDDEN',
        `node ${this.id} holds no credential for principal ${JSON.stringify(principal)}; pass the application the principal's credential (safe-resume credentials issue --principal ${principal})`,
      );
    this.addPrincipal(issueCredential(this.opts.secret, 'principal', principal));
  }

  /**
   * The NBD TLS pre-shared key of `principal` (actors/auth.ts nbdPsk), if this node can verify it: it
   * holds the principal's credential, or the cluster key. Undefined otherwise (or for a bad name).
   */
  nbdPsk(principal: string): Buffer | undefined {
    const held = this.principals.get(principal);
    if (held) return nbdPsk(held);
    if (!this.opts.secret || !NAME_PATTERN.test(principal)) return undefined;
    return nbdPsk(issueCredential(this.opts.secret, 'principal', principal));
  }

  /** Open (or reclaim) a handle: the handle at once, and a promise that settles when it is granted or refused. */
  open(p: OpenParams): { h: CoreHandle; opened: Promise<void> } {
    if (this.stopped) throw new SafeResumeError('CLOSED', `node agent ${this.id} is stopped`);
    if (this.core.handles.has(p.requestId))
      throw new SafeResumeError('INVALID_ARGUMENT', `requestId ${p.requestId} is already open on ${this.id}`);
    const h = newHandle(p);
    this.mirrors?.add(h);
    const opened = new Promise<void>((resolve, reject) => this.opening.set(h, { resolve, reject }));
    this.step({ type: 'open', h });
    return { h, opened };
  }

  /** Grant (`read`, `write`) or revoke (`none`) a principal's access to a target `principal` owns; the target's access list once done. */
  access(
    call: Omit<AccessCall, 'settle'>,
  ): Promise<{ owner: string; grants: Array<{ principal: string; mode: 'read' | 'write' }> }> {
    if (this.stopped) return Promise.reject(new SafeResumeError('CLOSED', `node agent ${this.id} is stopped`));
    return new Promise((resolve, reject) =>
      this.step({ type: 'access', call: { ...call, settle: { resolve, reject } } }),
    );
  }

  io(h: CoreHandle, op: CoreHandle['ops'][number]): void {
    if (this.opts.observe) this.calledAt.set(op, this.env.clock.now());
    this.step({ type: 'io', h, op });
  }

  close(h: CoreHandle): Promise<void> {
    if (h.state === 'closed') return Promise.resolve();
    return new Promise((resolve) => {
      const waiters = this.closing.get(h);
      if (waiters) waiters.push(resolve);
      else this.closing.set(h, [resolve]);
      this.step({ type: 'close', h });
    });
  }

  /** The application process is gone: drop its handle without a word to the storage. */
  appGone(h: CoreHandle): void {
    this.step({ type: 'app-gone', h });
  }

  /** Handles the agent holds, for status views and tests. */
  list(): Array<{
    app: string;
    target: string;
    requestId: string;
    mode: 'read' | 'write';
    state: HandleState;
    durable: boolean;
  }> {
    return [...this.core.handles.values()].map(({ app, target, requestId, mode, state, durable }) => ({
      app,
      target,
      requestId,
      mode,
      state,
      durable,
    }));
  }

  /** Whether a handle with this requestId is open (or being opened) on this agent. */
  holds(requestId: string): boolean {
    return this.core.handles.has(requestId);
  }

  findKept(app: string, target: string): KeptHandle | undefined {
    return this.kept.find(app, target);
  }
}
