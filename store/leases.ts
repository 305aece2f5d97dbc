/**
 * The bookkeeping of a session's lock lease (etcd's lease mode, and the simulation's model of it),
 * decided purely: times are passed in, nothing here reads a clock or sets a timer.
 *
 * A store knows a lease only from its side of the wire: when it sent the grant or the last keep-alive
 * that etcd answered, and when that answer came back. etcd starts the TTL somewhere in between, so:
 *
 * - the lease lives at least until `sentAt + ttl` (a lower bound: what a new lock may count on), and
 * - it is surely gone only once `answeredAt + ttl` is well past (an upper bound: when to forget it).
 *
 * A lock put on a lease lives only as long as the lease. A grant must therefore not commit a lock
 * onto a lease that may lapse before the session's next renewal keeps it alive: the lower bound must
 * reach past the time the commit can land (its call's deadline) plus one renewal interval, or the
 * lease is kept alive (or a fresh one taken) first.
 */

/** How often a replica renews its sessions' locks by default: the store counts on the next renewal within it. */
export const RENEW_INTERVAL_MS = 1000;

/** Time left for a keep-alive's answer to reach the commit that relies on it, within the minimum TTL. */
export const KEEPALIVE_SLACK_MS = 500;

/** How long past its latest possible expiry a lease is still not taken as surely gone (etcd revokes expired leases in its own time). */
export const LAPSE_MARGIN_MS = 1000;

/** What a store knows of one lease. */
export interface LeaseTimes {
  /** The TTL asked for, in ms (etcd may raise it, never lower it). */
  ttlMs: number;
  /** When the grant or the last answered keep-alive was sent. */
  sentAt: number;
  /** When that answer came back; undefined while the grant is on its way. */
  answeredAt: number | undefined;
}

/**
 * The shortest TTL, in whole seconds, under which a fresh lease can carry a lock at all: a commit may
 * land up to `commitMs` after the lease was kept alive, and must leave a renewal interval after it.
 */
export function minTtlSeconds(commitMs: number, renewMs = RENEW_INTERVAL_MS): number {
  return Math.ceil((commitMs + renewMs + KEEPALIVE_SLACK_MS) / 1000);
}

/** The TTL, in whole seconds, of the lease for locks that last `lockMs` when a commit may take up to `commitMs`. */
export function ttlSeconds(lockMs: number, commitMs: number, renewMs = RENEW_INTERVAL_MS): number {
  return Math.max(1, Math.ceil(lockMs / 1000), minTtlSeconds(commitMs, renewMs));
}

/** The earliest the lease can lapse, unless kept alive again. */
export function livesAtLeastUntil(l: LeaseTimes): number {
  return l.sentAt + l.ttlMs;
}

/**
 * Whether the lease may carry a new lock committed by `landsBy` (the commit call's deadline): it
 * surely lives a renewal interval past it, so the session's next renewal keeps it alive in time.
 * False: keep it alive (or take a fresh one) before the commit.
 */
export function canCarry(l: LeaseTimes, landsBy: number, renewMs = RENEW_INTERVAL_MS): boolean {
  return livesAtLeastUntil(l) > landsBy + renewMs;
}

/**
 * Whether the lease has surely lapsed by `now` (it may be forgotten): judged from when its last
 * answer came back, not when the call was sent, and never while its grant is on its way.
 */
export function surelyLapsed(l: LeaseTimes, now: number): boolean {
  return l.answeredAt !== undefined && now > l.answeredAt + l.ttlMs + LAPSE_MARGIN_MS;
}
