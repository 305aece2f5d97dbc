/**
 * The simulation's clock: XState's SimulatedClock, plus an index of due times so the simulation can
 * jump straight to the next timer instead of ticking through empty milliseconds.
 */
import { SimulatedClock } from 'xstate';
import type { ActorClock } from '../actors/env.js';

export class SimClock implements ActorClock {
  readonly inner = new SimulatedClock();
  /** Min-heap of [due, id]; entries of cleared or fired timers are skipped lazily. */
  private readonly heap: Array<[number, number]> = [];
  private readonly live = new Set<number>();

  now(): number {
    return this.inner.now();
  }

  setTimeout(fn: () => void, ms: number): number {
    const delay = Math.max(0, ms);
    const id = this.inner.setTimeout(() => {
      this.live.delete(id);
      fn();
    }, delay);
    this.live.add(id);
    this.push([this.now() + delay, id]);
    return id;
  }

  clearTimeout(id: unknown): void {
    this.live.delete(id as number);
    this.inner.clearTimeout(id as number);
  }

  /** When the next live timer is due, or undefined if none is pending. */
  nextDue(): number | undefined {
    while (this.heap.length > 0 && !this.live.has(this.heap[0]![1])) this.pop();
    return this.heap[0]?.[0];
  }

  /** Advance to `ms`, firing every timer due by then in order. */
  advanceTo(ms: number): void {
    if (ms > this.now()) this.inner.set(ms);
    else this.inner.increment(0);
  }

  private push(e: [number, number]): void {
    const h = this.heap;
    h.push(e);
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

const less = (a: [number, number], b: [number, number]) => a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]);
