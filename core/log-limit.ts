/**
 * Warnings a peer can cause (a bad frame, a wrong secret) are rate-limited, so a flood of them cannot
 * flood the log: per kind, the first few of each window are logged, the rest counted, and the next
 * one logged after the window says how many were left out. Pure: the time comes from `clock.now()`,
 * which the replica's core answers with the now of the step under way.
 */

export class LogLimiter {
  private readonly kinds = new Map<string, { windowStart: number; logged: number; suppressed: number }>();

  constructor(
    private readonly clock: { now(): number },
    /** Lines per kind per window. */
    private readonly perWindow = 10,
    private readonly windowMs = 10_000,
  ) {}

  /** Whether to log this one; if so, how many of its kind were left out since the last one logged. */
  take(kind: string): { log: true; suppressed: number } | { log: false } {
    const now = this.clock.now();
    let k = this.kinds.get(kind);
    if (!k) this.kinds.set(kind, (k = { windowStart: now, logged: 0, suppressed: 0 }));
    if (now - k.windowStart >= this.windowMs) {
      k.windowStart = now;
      k.logged = 0;
    }
    if (k.logged >= this.perWindow) {
      k.suppressed++;
      return { log: false };
    }
    k.logged++;
    const suppressed = k.suppressed;
    k.suppressed = 0;
    return { log: true, suppressed };
  }
}
