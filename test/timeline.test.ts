/** The launcher's timeline: the story in the order things happened, and a cursor that misses nothing. */
import { describe, expect, it } from 'vitest';
import { formatEvent, Timeline } from '../cluster/timeline.js';
import { describeChanged } from '../store/rules-changed.js';

describe('timeline', () => {
  it('keeps events in the order they happened, also a handle change reported after later events', () => {
    let now = 1000;
    const tl = new Timeline(() => now);
    tl.add({ kind: 'fault', what: 'kill replica-1' });
    now = 1300;
    tl.add({ kind: 'process', id: 'replica-1', what: 'exited', detail: 'SIGKILL' });
    // The node saw its handle pause at 1100 and says so with its next report, at 1300.
    tl.handles('node-1', [{ app: 'app-1', target: 'a.disk', requestId: 'r1', state: 'active', reason: null, at: 900 }]);
    tl.handles('node-1', [
      { app: 'app-1', target: 'a.disk', requestId: 'r1', state: 'paused', reason: null, at: 1100 },
    ]);
    expect(tl.list().map((e) => e.at)).toEqual([900, 1000, 1100, 1300]);
    expect(tl.list().map((e) => e.kind)).toEqual(['handle', 'fault', 'handle', 'process']);
    expect(formatEvent(tl.list()[2]!)).toMatch(
      /^00:00:01\.100 {2}handle {3}node-1\/app-1 +a\.disk {2}active -> paused {2}requestId r1$/,
    );
  });

  it('a handle denied MODIFIED says on its line which byte ranges another writer changed', () => {
    const tl = new Timeline(() => 1000);
    const h = { app: 'app-1', target: 'a.disk', requestId: 'r1' };
    tl.handles('node-1', [{ ...h, state: 'resuming', reason: null, at: 900 }]);
    const changed = describeChanged({
      changed: [
        [0, 4096],
        [1048576, 4096],
      ],
      coarse: false,
    });
    tl.handles('node-1', [{ ...h, state: 'invalidated', reason: 'MODIFIED', changed, at: 950 }]);
    expect(formatEvent(tl.list()[1]!)).toMatch(
      /resuming -> invalidated MODIFIED {2}requestId r1 {2}changed: 0-4095, 1048576-1052671 \(2 ranges\)$/,
    );
    expect(describeChanged({ changed: [[0, 8192]], coarse: true })).toBe('0-8191 (1 range, coarsened)');
  });

  it('gives a reader with a cursor every event added since, wherever it sorts', () => {
    let now = 1000;
    const tl = new Timeline(() => now);
    tl.add({ kind: 'fault', what: 'partition node-1' });
    now = 2000;
    tl.add({ kind: 'fault', what: 'heal node-1' });
    const cursor = tl.next;
    tl.handles('node-1', [
      { app: 'app-1', target: 'a.disk', requestId: 'r1', state: 'paused', reason: null, at: 1500 },
    ]);
    now = 2500;
    tl.add({ kind: 'fault', what: 'kill replica-2' });
    const since = tl.list(undefined, cursor);
    expect(since.map((e) => e.at)).toEqual([1500, 2500]);
    expect(tl.list(undefined, tl.next)).toEqual([]);
    // A target's story keeps every fault and process event.
    expect(tl.list('b.disk').map((e) => e.kind)).toEqual(['fault', 'fault', 'fault']);
  });

  it('counts every pause, also those whose events are no longer kept', () => {
    let now = 0;
    const tl = new Timeline(() => now);
    for (let i = 0; i < 3000; i++) {
      now = i * 10;
      tl.handles('node-1', [
        {
          app: 'app-1',
          target: 'a.disk',
          requestId: 'r1',
          state: i % 2 === 0 ? 'paused' : 'active',
          reason: null,
          at: now,
        },
      ]);
    }
    tl.handles('node-1', [{ app: 'app-1', target: 'a.disk', requestId: 'r1', state: 'paused', reason: null }]);
    expect(tl.pauses).toBe(1501);
    expect(tl.list().length).toBeLessThanOrEqual(5000);
  });
});
