/**
 * SPEC "Changed ranges", through the SDK: a handle whose resume is denied MODIFIED learns which byte
 * ranges another writer changed since the version it last saw, on its errors and on the handle.
 */
import { describe, expect, it } from 'vitest';
import { Application } from '../actors/application.js';
import { boundChanged, MAX_RESUMED_RANGES } from '../core/replica-requests.js';
import { SafeResumeError } from '../errors.js';
import type { ResumeResult } from '../transport/messages.js';
import { bytes, clusters, openWhenFree, waitForState } from './helpers.js';

const cluster = clusters();

describe('changed ranges', () => {
  it('a writer denied MODIFIED is told on its error and its handle exactly what another writer changed after its own writes, a zeroed page too', async () => {
    const c = await cluster({ replicas: 1 });
    const app = new Application(await c.addNode('node-1', { proxied: true }), { name: 'vm' });
    const x = await app.open('vm1.disk');
    await x.write(0, new Uint8Array(4096).fill(1));
    await x.write(2 * 4096, bytes('page two'));
    // x's node is cut off; past the hold period another writer takes the disk.
    c.partition('node-1');
    await waitForState(x, 'paused');
    const queued = x.write(100, bytes('late')).then(
      () => undefined,
      (e: unknown) => e,
    );
    const y = await openWhenFree(new Application(await c.addNode('node-2'), { name: 'other' }), 'vm1.disk');
    await y.write(3 * 4096 + 5, bytes('theirs'));
    await y.write(1 << 20, new Uint8Array(8192).fill(2));
    // The page x wrote at 8192 is zeroed: freed, and changed.
    await y.write(2 * 4096, new Uint8Array(8));
    await y.close();
    c.heal('node-1');
    await waitForState(x, 'invalidated');
    const err = await queued;
    expect(err).toBeInstanceOf(SafeResumeError);
    const e = err as SafeResumeError;
    expect(e.code).toBe('MODIFIED');
    // Pages 2 and 3 are one range; x's own page 0 is not listed.
    const changed = [
      [2 * 4096, 2 * 4096],
      [1 << 20, 8192],
    ];
    expect([e.changed, e.coarse]).toEqual([changed, false]);
    expect(x.changes).toEqual({ changed, coarse: false });
  }, 30_000);
});

describe("a resume answer's changed ranges", () => {
  it('stay within MAX_RESUMED_RANGES in all: past them an item gets one coarse range over its own, and every item keeps one', () => {
    const denial = (i: number): ResumeResult => ({
      target: `vm${i}`,
      requestId: `r${i}`,
      granted: false,
      reason: 'MODIFIED',
      code: 'MODIFIED',
      version: 9,
      changed: Array.from({ length: 64 }, (_, j) => [(i * 1000 + j * 2) * 4096, 4096] as [number, number]),
    });
    const results = Array.from({ length: 1000 }, (_, i) => denial(i));
    boundChanged(results);
    expect(results.reduce((n, r) => n + (r.changed?.length ?? 0), 0)).toBeLessThanOrEqual(MAX_RESUMED_RANGES);
    // The first items keep theirs; a later one's ranges became one, from its first to its last.
    expect(results[0]).toEqual(denial(0));
    const last = results[999]!;
    expect([last.changed, last.coarse]).toEqual([[[999_000 * 4096, 127 * 4096]], true]);
  });
});
