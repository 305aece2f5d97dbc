/**
 * What one NBD export and one of its connections may hold: sizes, requests and bytes in flight,
 * connections (per principal: Admission), and how long each wait lasts.
 */
import { MAX_IO_BYTES } from '../transport/messages.js';

/** The longest option a client may send (an export name is at most 4 KiB). */
export const MAX_OPTION_BYTES = 8192;
/** The longest request payload taken (larger writes are refused and the connection closed). */
export const MAX_REQUEST_BYTES = 32 * 1024 * 1024;
/** Requests of one connection answered at once; past it the socket is not read. */
export const MAX_INFLIGHT = 64;
/** Bytes of one connection's requests in flight (reads reserve theirs) and of replies not yet sent. */
export const MAX_INFLIGHT_BYTES = 64 * 1024 * 1024;
export const MAX_UNSENT_BYTES = 16 * 1024 * 1024;
/** How long a client may take from connecting to the end of the handshake. */
export const HANDSHAKE_MS = 10_000;
/** Connections an export holds at once, and of those on TCP, how many may not have proved a principal yet. */
export const MAX_CONNECTIONS = 256;
export const MAX_UNAUTHENTICATED = 128;
/**
 * Replies to options a client may leave unread during the handshake (a client that sends options and
 * never reads the answers is closed past it), and options answered NBD_REP_ERR_TLS_REQD before
 * STARTTLS (past them the connection is closed): before authentication a peer gets a few KiB.
 */
export const MAX_HANDSHAKE_UNSENT_BYTES = 64 * 1024;
export const MAX_OPTIONS_BEFORE_TLS = 16;
/** How long a connection refused a place among its principal's is kept to be told why at its next option. */
export const REFUSED_GRACE_MS = 2000;
/** How long an open waits for a target another connection of this node is still releasing. */
export const LOCKED_RETRY_MS = 2000;
/**
 * How long a GO or INFO waits for the node agent's session when it has none (every replica down, or
 * reconnecting): a blip passes unseen; past it the client is told storage is unavailable
 * (NBD_REP_ERR_SHUTDOWN, "come back later", with the reason), well within its handshake deadline.
 */
export const STORAGE_WAIT_MS = 3000;
/** Connections of one principal that finished the handshake, held at once. */
export const MAX_CONNECTIONS_PER_PRINCIPAL = 64;
/** A connection with no request for this long is closed (unless requests are still waiting). */
export const IDLE_MS = 30 * 60_000;
/** What WRITE_ZEROES and TRIM write, a chunk at a time (the handle copies what it sends). */
export const ZEROS = new Uint8Array(MAX_IO_BYTES);

/** Connections admitted per principal (those that finished the handshake and are not closed yet). */
export class Admission {
  private readonly held = new Map<string, number>();
  constructor(readonly max: number) {}

  /** Take a place for `principal`; false if it holds `max` already. */
  take(principal: string): boolean {
    const n = this.held.get(principal) ?? 0;
    if (n >= this.max) return false;
    this.held.set(principal, n + 1);
    return true;
  }

  give(principal: string): void {
    const n = (this.held.get(principal) ?? 0) - 1;
    if (n > 0) this.held.set(principal, n);
    else this.held.delete(principal);
  }
}
