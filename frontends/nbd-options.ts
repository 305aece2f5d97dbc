/** What an NBD export is given (NbdExportOptions), what it shows of a connection, and how it authenticates one. */
import type { Logger } from 'pino';
import type { Application, Handle } from '../actors/application.js';

export interface NbdExportOptions {
  /**
   * The application whose handles serve the exports (one handle shared by its principal's connections to
   * a target).
   */
  app: Application;
  /**
   * The size exported for a target that has no fixed size (default MAX_TARGET_BYTES, the most such a
   * target holds). A target created with a size (`size` at open, `safe-resume create --size`) is
   * exported with its own.
   */
  size?: (target: string) => number | Promise<number>;
  /**
   * Where to listen: a Unix socket `path` (a connection there acts as `app`'s principal unless it
   * upgrades to TLS), or TCP: a `port` on `host` (default 127.0.0.1, port 0: a free one), where only a
   * client that proves a principal with TLS-PSK gets anything. One of the two must be given.
   */
  host?: string;
  port?: number;
  path?: string;
  /**
   * The TLS pre-shared key of a principal, or undefined for one this export cannot verify (its TLS
   * handshake fails). Default: what `app`'s node agent can derive (`agent.nbdPsk`: the principals
   * whose credential it holds, or all with the cluster key).
   */
  psk?: (principal: string) => Buffer | undefined;
  /**
   * The application a connection proven as `principal` acts through. Default: `app` for its own
   * principal, otherwise one application per principal on `app`'s node agent (`<app.name>:<principal>`).
   */
  appFor?: (principal: string) => Application;
  /** `pause` (default): requests wait through storage failures. `error`: they fail with EIO at once. */
  onFailure?: 'pause' | 'error';
  log?: Logger;
  /** Told when a connection's handle is invalidated (target, reason), for status and the inspector. */
  onInvalidated?: (target: string, reason: string) => void;
  /**
   * Told of every handle connections serve requests through (a read handle, then a write handle; once
   * for a handle several connections share), once it is open: the node follows its changes of state for
   * the timeline.
   */
  onHandle?: (handle: Handle, target: string) => void;
  /** How long a client may take to finish the handshake (default 10 s). */
  handshakeTimeoutMs?: number;
  /**
   * Connections of one principal that finished the handshake, held at once (default 64); past it a
   * client is refused at `NBD_OPT_GO` with `NBD_REP_ERR_POLICY` and the reason.
   */
  maxConnectionsPerPrincipal?: number;
  /**
   * A connection that sends no request for this long is closed (default 30 minutes; 0: never), but
   * not while requests are still waiting (a paused handle's).
   */
  idleTimeoutMs?: number;
}

/** What `status` shows of an export connection. */
export interface NbdConnectionView {
  target: string;
  /** The principal the connection acts as (the one it proved). */
  principal: string;
  state: string;
  reason?: string | undefined;
  requests: number;
}

/** How an export authenticates its connections. */
export interface Auth {
  /** TCP: nothing but STARTTLS and ABORT before TLS. */
  tlsOnly: boolean;
  /** A Unix socket's: the application a connection acts through until it proves another principal. */
  local: Application | undefined;
  keyFor: (identity: string) => Buffer | undefined;
  appFor: (principal: string) => Application;
  /** Log a warning a client can cause, rate-limited per kind (actors/log-limit.ts). */
  warn: (kind: string, fields: Record<string, unknown>, message: string) => void;
}
