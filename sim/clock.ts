/**
 * The simulation's clock: simulated time with a min-heap of timers, so the simulation jumps straight
 * to the next due timer instead of ticking through empty milliseconds. Timers due at the same time
 * fire in the order they were set; a timer set while others fire, and due by then, fires in the same
 * advance. (XState's SimulatedClock does the same job but sorts every pending timer on each advance,
 * and again whenever a timer is set during one: most of a busy simulation's clock time.)
 */
import type { ActorClock } from '../actors/env.js';

interface Timer {
  due: number;
  id: number;
  fn: () => void;
}

export class SimClock implements ActorClock {
  private nowMs = 0;
  private nextId = 1;
  /** Min-heap by (due, id); cleared timers leave their entry behind and are skipped lazily. */
  private readonly heap: Timer[] = [];
  private readonly live = new Map<number, Timer>();

  now(): number {
    return this.nowMs;
  }

  setTimeout(fn: () => void, ms: number): number {
    const t: Timer = { due: this.nowMs + Math.max(0, ms), id: this.nextId++, fn };
    this.live.set(t.id, t);
    this.push(t);
    return t.id;
  }

  clearTimeout(id: unknown): void {
    this.live.delete(id as number);
  }

  /** When the next live timer is due, or undefined if none is pending. */
  nextDue(): number | undefined {
    this.skipCleared();
    return this.heap[0]?.due;
  }

  /** Advance to `ms` (never back), firing every timer due by then in order. */
  advanceTo(ms: number): void {
    if (ms > this.nowMs) this.nowMs = ms;
    for (;;) {
      this.skipCleared();
      const t = this.heap[0];
      if (!t || t.due > this.nowMs) return;
      this.pop();
      this.live.delete(t.id);
      t.fn();
    }
  }

  private skipCleared(): void {
    while (this.heap.length > 0 && !this.live.has(this.heap[0]!.id)) this.pop();
  }

  private push(t: Timer): void {
    const h = this.heap;
    h.push(t);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (less(h[p]!, h[i]!)) break;
      [h[p], h[i]] = [h[i]!, h[p]!];
      i = p;
    }
  }

  private pop(): void {
    const h = this.heap;
    const last = h.pop()!;
    if (h.length === 0) return;
    h[0] = last;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < h.length && less(h[l]!, h[m]!)) m = l;
      if (r < h.length && less(h[r]!, h[m]!)) m = r;
      if (m === i) return;
      [h[m], h[i]] = [h[i]!, h[m]!];
      i = m;
    }
  }
}

const less = (a: Timer, b: Timer) => a.due < b.due || (a.due === b.due && a.id < b.id);

/**
 * Resolve once every promise job the last step started has run. The simulated world moves only in
 * promise jobs and simulated timers (its store commits without group commit, its network delivers
 * through this clock: no real timer, immediate or tick of its own), and Node runs a `process.nextTick`
 * callback queued from a promise job only after the whole promise-job queue is empty. A `setImmediate`
 * would do the same through a full event-loop turn, which cost 40% of a simulation's time (same
 * histories seed for seed).
 */
export function quiesce(): Promise<void> {
  return new Promise<void>((resolve) => process.nextTick(resolve));
}

/**
 * One process's view of the simulated clock. `now` and the timers are the process's monotonic clock
 * (what actors measure durations on: a step of the wall clock does not move them, as in Node with
 * `performance.now`); `wall` is its host's wall clock, off from simulated time by the host's skew,
 * which jumps when the host's clock is stepped. `kill` is the process dying: none of its timers fires
 * again, and any it sets never fires.
 */
export class ProcClock implements ActorClock {
  private dead = false;

  constructor(
    private readonly base: SimClock,
    private readonly skewMs: () => number,
  ) {}

  now(): number {
    return this.base.now();
  }

  /** The host's wall clock (what `Date.now` would say there). */
  wall(): number {
    return this.base.now() + this.skewMs();
  }

  /** This clock's timers with the host's wall clock as `now`. */
  get wallClock(): ActorClock {
    return {
      now: () => this.wall(),
      setTimeout: (fn, ms) => this.setTimeout(fn, ms),
      clearTimeout: (id) => this.clearTimeout(id),
    };
  }

  setTimeout(fn: () => void, ms: number): unknown {
    if (this.dead) return 0;
    return this.base.setTimeout(() => {
      if (!this.dead) fn();
    }, ms);
  }

  clearTimeout(id: unknown): void {
    this.base.clearTimeout(id);
  }

  kill(): void {
    this.dead = true;
  }
}
