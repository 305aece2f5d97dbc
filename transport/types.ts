/**
 * The narrow transport interface. The WebSocket peer and the in-memory network both implement it;
 * nothing above this line knows which one it has.
 */
import type { Decoded } from './codec.js';
import type { Message } from './messages.js';

export interface CloseInfo {
  code: number;
  reason: string;
}

export interface Connection {
  /** Where the other end is, for logs. */
  readonly remote: string;
  readonly isOpen: boolean;
  /** Encode and send. Returns false (and sends nothing) once the connection is closed. */
  send(msg: Message): boolean;
  /** Close gracefully; `terminate` drops the connection at once, as a crash would. */
  close(code?: number, reason?: string): void;
  terminate(): void;
  /** Every frame, decoded and validated; a bad frame arrives as `{ ok: false, code }`. */
  onFrame(cb: (frame: Decoded) => void): void;
  onClose(cb: (info: CloseInfo) => void): void;
  /** The peer authenticated: lift the limits a connection has before that (bytes and time). */
  trust(): void;
  /**
   * From now on every frame sent carries a MAC under the session key, and every frame received must
   * carry the next valid one or the connection is dropped (transport/frame-mac.ts). A transport whose
   * link already guarantees integrity (TLS, or an in-memory network) may ignore it. Until the first
   * valid frame arrives, a `client` still accepts an unsealed `error` (the replica's refusal).
   */
  protect(key: Uint8Array, role: 'client' | 'server'): void;
  /** Bytes given to `send` and not yet written to the network. */
  readonly bufferedBytes: number;
  /** Stop reading the peer's frames (backpressure: the peer's writes then wait in its own buffers), and start again. */
  pauseReading(): void;
  resumeReading(): void;
  /** Called each time what was buffered for sending has been written out. */
  onDrain(cb: () => void): void;
}

/**
 * What a listener allows a connection before its peer authenticates (`Connection.trust`), and how many
 * connections it holds at once. Past a limit the connection is dropped (terminated, not closed: a
 * close handshake would wait on the peer).
 */
export interface ListenLimits {
  /** Bytes a peer may send before it authenticates (the upgrade request's headers are capped apart). */
  preAuthBytes: number;
  /** Time from TCP accept until the peer authenticates: a fixed deadline, not an idle timeout. */
  preAuthMs: number;
  /** Connections held at once, authenticated or not; more are refused at accept. */
  maxConnections: number;
  /**
   * Of those, not yet authenticated (from TCP accept on). Past it a new connection is still taken:
   * the oldest unauthenticated one of the source holding the most is destroyed instead.
   */
  maxUnauthenticated: number;
  /**
   * Of those, from one source (an IPv4 address, an IPv6 /64); default a quarter of
   * `maxUnauthenticated`. Past it the source's own oldest is destroyed (silent ones first).
   */
  maxUnauthenticatedPerSource?: number;
}

export const DEFAULT_LISTEN_LIMITS: ListenLimits = {
  preAuthBytes: 8 * 1024,
  preAuthMs: 5000,
  maxConnections: 1024,
  maxUnauthenticated: 256,
};

export interface Listener {
  /** The address clients pass to `Transport.connect`. */
  readonly url: string;
  onConnection(cb: (conn: Connection) => void): void;
  /** Stop accepting and drop every connection. */
  close(): Promise<void>;
}

export interface ListenOptions {
  host?: string;
  port?: number;
  /** For the in-memory network: the name to listen under. */
  name?: string;
  limits?: Partial<ListenLimits>;
  /** Told each time a pre-authentication limit drops a connection: of which source, and how many it holds now. */
  onLimit?: (limited: { source: string; held: number }) => void;
}

export interface Transport {
  listen(opts: ListenOptions): Promise<Listener>;
  connect(url: string, opts?: { timeoutMs?: number }): Promise<Connection>;
}

/** Close codes used on connections (4000-4999 is the application range). */
export const CLOSE = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  AUTH_FAILED: 4001,
  PROTOCOL: 4002,
  HEARTBEAT: 4003,
  SHUTDOWN: 4004,
} as const;
