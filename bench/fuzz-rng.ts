/** The fuzzer's seeded PRNG: every draw of a run follows from its seed. */

export class Rng {
  constructor(readonly next: () => number) {}
  /** Uniform in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(xs: readonly T[]): T {
    const v = xs[this.int(xs.length)];
    if (v === undefined) throw new Error('pick from an empty list');
    return v;
  }
  weighted<T>(table: ReadonlyArray<readonly [number, T]>): T {
    let x = this.next() * table.reduce((s, [w]) => s + w, 0);
    for (const [w, v] of table) if ((x -= w) < 0) return v;
    return this.pick(table)[1];
  }
  /** Log-uniform in [lo, hi]: small sizes often, huge ones sometimes. */
  size(lo: number, hi: number): number {
    return Math.floor(lo * Math.pow(hi / lo, this.next()));
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
  str(n: number, alphabet = URL_SAFE): string {
    let s = '';
    for (let i = 0; i < n; i++) s += alphabet[this.int(alphabet.length)];
    return s;
  }
}

const URL_SAFE = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-';
/** Derive one connection's seed from the run's, so a connection's frames depend on the seed and its index only. */
export const connectionSeed = (seed: number, index: number) => (seed ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0;
