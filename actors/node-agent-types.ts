/**
 * What a node agent is given (NodeAgentOptions) and what it tells (connect causes and rounds, metrics
 * hooks), and the words its log uses for a lost session. actors/node-agent.ts re-exports them.
 */
import { SafeResumeError } from '../errors.js';
import type { HandleState } from '../core/handle.js';
import type { Transport } from '../transport/types.js';
import type { Env } from './env.js';
import type { Credential } from './auth.js';
import type { KeptIds } from './kept.js';

export interface NodeAgentOptions {
  id: string;
  /** Replica addresses, tried in order; a lost replica fails over to the next. */
  replicas: string[];
  transport: Transport;
  /** This node's credential (`safe-resume credentials issue --node ID`); its name must be `id`. */
  credential?: Credential;
  /** Principals this node may speak for; an application may also bring its own credential. */
  principals?: Credential[];
  /**
   * The cluster key itself, for processes of the storage side (tests, the simulation, the launcher's
   * own commands): the node's and any principal's credential are derived from it. A compute node
   * should get `credential` instead.
   */
  secret?: string;
  /** Where the node keeps its applications' requestIds. Without it they live in memory only. */
  dataDir?: string;
  kept?: KeptIds;
  env?: Partial<Env>;
  /**
   * The heartbeat interval is the replica's (adopted from `welcome`). Set this to insist on a value:
   * a replica advertising another one is refused.
   */
  heartbeatIntervalMs?: number;
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  unavailableFailoverMs?: number;
  connectTimeoutMs?: number;
  /**
   * `start()` rejects (UNAVAILABLE, with each replica's last cause) if no replica welcomed the node
   * within this long; the agent keeps trying after that (crash() or stop() ends it). Absent, start()
   * waits until it connects or is refused.
   */
  startTimeoutMs?: number;
  /** Metrics hooks (cluster/metrics.ts); absent, nothing is measured. */
  observe?: NodeObserver;
  /** Operations one paused handle may queue, and their bytes (default 4096 and 64 MiB); past them QUEUE_FULL. */
  maxQueuedOpsPerHandle?: number;
  maxQueuedBytesPerHandle?: number;
}

/** Why the last attempt to reach one replica failed. */
export interface ConnectCause {
  replica: string;
  /**
   * A short code: a socket's (`ECONNREFUSED`, `ECONNRESET`), a TLS one (`ERR_TLS_CERT_ALTNAME_INVALID`,
   * ...), `NOT_WEBSOCKET` (an HTTP answer that is not an upgrade), `TIMEOUT`, `CLOSED` (dropped during
   * the handshake), or the storage's refusal (`AUTH_FAILED`, `INVALID_ARGUMENT`).
   */
  cause: string;
  /** The error's message, in words. */
  message: string;
}

/** One round over every replica that failed: the round's number since the last session, and each replica's cause. */
export interface ConnectRound {
  round: number;
  causes: ConnectCause[];
}

export interface NodeAgentEvents {
  /** Every replica was tried once more and none welcomed the node. */
  'connect-failed': [ConnectRound];
}
/** The short code of a failed connect (see ConnectCause.cause). */
export function causeOf(err: unknown): string {
  if (err instanceof SafeResumeError) return err.code;
  const code = (err as { code?: unknown } | undefined)?.code;
  if (typeof code === 'string' && code.length > 0) return code;
  const message = err instanceof Error ? err.message : String(err);
  if (/timed out|no welcome/i.test(message)) return 'TIMEOUT';
  if (/closed the connection/.test(message)) return 'CLOSED';
  return 'ERROR';
}

/** What a node agent reports as it works, for /metrics. */
export interface NodeObserver {
  /** A handle entered state `to` (with the invalidation reason, if any). */
  transition(to: HandleState, reason: string | undefined): void;
  /** An application's read or write answered after `ms`. */
  operation(kind: 'read' | 'write', ok: boolean, ms: number): void;
}

/** Why a session was lost (or an attempt failed), in the words of a log line. */
export function lostWhy(lastError: string | undefined, event: { type: string; reason?: string }): string {
  if (event.type === 'SOCKET_CLOSED') return `socket closed (${event.reason ?? 'no reason given'})`;
  if (lastError === 'heartbeat timeout') return 'heartbeat silence (no pong in time)';
  return lastError ?? event.type;
}
