/**
 * S4 end to end over real WebSockets and SQLite: a write applied whose acknowledgement was lost is
 * acknowledged after the resume on another replica and applied once (the version counts it once).
 * The other guarantees (S1, L1, the lock rules, read handles, hold periods, pause timeout, fail-fast
 * handles, exactly once over the simulated network) are scenarios in test/scenarios/.
 */
import { describe, expect, it } from 'vitest';
import { Application } from '../actors/application.js';
import { bytes, clusters, FAST, text, trace, waitFor } from './helpers.js';

const cluster = clusters({ replica: { ...FAST.replica, holdMs: 300 } });

describe('S4 exactly once', () => {
  it('a write applied whose acknowledgement was lost is acknowledged after the resume, not applied again', async () => {
    const c = await cluster({ store: 'sqlite' });
    const n1 = await c.addNode('node-1', { proxied: true });
    const x = await new Application(n1, { name: 'x' }).open('vm1.disk');
    await x.write(0, bytes('a'));
    const serving = c.servingIndex(n1);
    c.link('node-1', serving).dropReplies();
    const states = trace(x);
    let acked = false;
    const inflight = x.write(1, bytes('b')).then(() => (acked = true));
    // The replica applies it; the reply never arrives.
    const store = c.replica(serving).store;
    await waitFor('the write to reach the store', () => c.replica(serving).handles().length > 0 && acked === false);
    await waitFor('the write to be applied', () => false, 100).catch(() => undefined);
    const before = await store.read({ target: 'vm1.disk', offset: 0, length: 10 });
    expect(before.ok && text(before.data)).toBe('ab');
    expect(acked).toBe(false);
    await inflight;
    expect(states).toEqual(['active', 'paused', 'resuming', 'active']);
    expect(c.servingIndex(n1)).not.toBe(serving);
    await x.write(2, bytes('c'));
    const after = await c.replica(c.servingIndex(n1)).store.read({ target: 'vm1.disk', offset: 0, length: 10 });
    expect(after.ok && text(after.data)).toBe('abc');
    // One version per write: 'b' was applied once.
    expect(after.ok && after.version).toBe(3);
  });
});
