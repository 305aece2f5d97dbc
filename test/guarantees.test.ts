/** S1, L1, S4 and the lock rules, end to end over real WebSockets and SQLite. */
import { describe, expect, it } from 'vitest';
import { Application } from '../actors/application.js';
import type { LocalCluster } from '../cluster/local.js';
import { bytes, clusters, FAST, openWhenFree, reached, text, trace, waitFor, waitForState } from './helpers.js';

const HOLD_MS = 300;
const cluster = clusters({ replica: { ...FAST.replica, holdMs: HOLD_MS } });

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** X on node-1 writes, then node-1 is cut off until X is paused and its hold period has expired. */
async function pausedPastHold(c: LocalCluster) {
  const n1 = await c.addNode('node-1', { proxied: true });
  const x = await new Application(n1, { name: 'x' }).open('vm1.disk');
  await x.write(0, bytes('mine'));
  const states = trace(x);
  c.partition('node-1');
  await waitForState(x, 'paused');
  // The replicas notice the silence (3 heartbeats), then hold the lock for HOLD_MS.
  await sleep(3 * 100 + HOLD_MS + 300);
  return { x, states };
}

describe('S1 safe resume', () => {
  it('another writer during an expired hold makes X resume be denied MODIFIED; X stale write never lands', async () => {
    const c = await cluster();
    const { x, states } = await pausedPastHold(c);
    const stale = x.write(20, bytes('STALE'));
    const staleResult = stale.then(() => 'ok', (e: { code?: string }) => e.code);
    const y = await openWhenFree(new Application(await c.addNode('node-2'), { name: 'y' }), 'vm1.disk');
    await y.write(0, bytes('theirs'));
    c.heal('node-1');
    await waitForState(x, 'invalidated');
    expect(x.reason).toBe('MODIFIED');
    expect(await staleResult).toBe('MODIFIED');
    await expect(x.write(0, bytes('again'))).rejects.toMatchObject({ code: 'MODIFIED' });
    expect(states).toEqual(['active', 'paused', 'resuming', 'invalidated']);
    // Nothing of X's stale write reached the data (it would have extended the target to 25 bytes).
    expect(text(await y.read(0, 100))).toBe('theirs');
  });

  it('a reader learns that the data changed under it: its resume is denied after a write', async () => {
    const c = await cluster();
    const n1 = await c.addNode('node-1', { proxied: true });
    const reader = await new Application(n1, { name: 'reader' }).open('vm1.disk', { mode: 'read' });
    const writer = await new Application(await c.addNode('node-2'), { name: 'w' }).open('vm1.disk');
    c.partition('node-1');
    await waitForState(reader, 'paused');
    await writer.write(0, bytes('changed'));
    c.heal('node-1');
    await waitForState(reader, 'invalidated');
    expect(reader.reason).toBe('MODIFIED');
  });

  it('a reader whose data did not change resumes', async () => {
    const c = await cluster();
    const n1 = await c.addNode('node-1', { proxied: true });
    const writer = await new Application(await c.addNode('node-2'), { name: 'w' }).open('vm1.disk');
    await writer.write(0, bytes('fixed'));
    const reader = await new Application(n1, { name: 'reader' }).open('vm1.disk', { mode: 'read' });
    expect(text(await reader.read(0, 5))).toBe('fixed');
    c.partition('node-1');
    await waitForState(reader, 'paused');
    c.heal('node-1');
    await waitForState(reader, 'active');
    expect(text(await reader.read(0, 5))).toBe('fixed');
  });
});

describe('L1 no needless denial', () => {
  it('without another writer, X resumes even after its hold period expired, and its queued write lands', async () => {
    const c = await cluster();
    const { x, states } = await pausedPastHold(c);
    const queued = x.write(4, bytes('+more'));
    c.heal('node-1');
    await waitForState(x, 'active');
    await queued;
    expect(states).toEqual(['active', 'paused', 'resuming', 'active']);
    expect(text(await x.read(0, 9))).toBe('mine+more');
  });
});

describe('locks', () => {
  it('a live lock makes another writer open fail with LOCKED; readers are never refused', async () => {
    const c = await cluster();
    const x = await new Application(await c.addNode('node-1'), { name: 'x' }).open('vm1.disk');
    await x.write(0, bytes('held'));
    const other = new Application(await c.addNode('node-2'), { name: 'y' });
    await expect(other.open('vm1.disk')).rejects.toMatchObject({ code: 'LOCKED', retryable: true });
    const r = await other.open('vm1.disk', { mode: 'read' });
    expect(text(await r.read(0, 4))).toBe('held');
    await x.close();
    const y = await other.open('vm1.disk');
    expect(y.state).toBe('active');
  });

  for (const holdMs of [0, 5000]) {
    it(`holdMs ${holdMs}: right after the replicas drop the lost session, another writer is ${holdMs ? 'refused LOCKED' : 'granted'}`, async () => {
      const c = await cluster({ replica: { ...FAST.replica, holdMs } });
      const n1 = await c.addNode('node-1', { proxied: true });
      const x = await new Application(n1, { name: 'x' }).open('vm1.disk');
      await x.write(0, bytes('x'));
      c.partition('node-1');
      await waitFor('the replicas to drop the silent session', () => c.replicas.every((r) => r.sessionCount === 0));
      const other = new Application(await c.addNode('node-2'), { name: 'y' });
      if (holdMs) {
        await expect(other.open('vm1.disk')).rejects.toMatchObject({ code: 'LOCKED' });
        return;
      }
      const y = await other.open('vm1.disk');
      await y.write(0, bytes('y'));
      c.heal('node-1');
      await waitForState(x, 'invalidated');
      expect(x.reason).toBe('MODIFIED');
    });
  }
});

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

  it('a write lost on the way is replayed after the resume and applied once', async () => {
    const c = await cluster();
    const n1 = await c.addNode('node-1', { proxied: true });
    const x = await new Application(n1, { name: 'x' }).open('vm1.disk');
    await x.write(0, bytes('1'));
    const serving = c.servingIndex(n1);
    const states = trace(x);
    c.link('node-1', serving).partition();
    const writes = [x.write(1, bytes('2')), x.write(2, bytes('3')), x.write(3, bytes('4'))];
    // Nothing crossed the partition.
    const mid = await c.replica(serving).store.read({ target: 'vm1.disk', offset: 0, length: 10 });
    expect(mid.ok && text(mid.data)).toBe('1');
    await reached(states, 'paused');
    await waitForState(x, 'active');
    await Promise.all(writes);
    const r = await c.replica(c.servingIndex(n1)).store.read({ target: 'vm1.disk', offset: 0, length: 10 });
    expect(r.ok && text(r.data)).toBe('1234');
    expect(r.ok && r.version).toBe(4);
  });
});

describe('pause timeout and fail-fast', () => {
  it('a handle paused longer than its pause timeout is invalidated with TIMEOUT and its I/O rejects', async () => {
    const c = await cluster();
    const n1 = await c.addNode('node-1', { proxied: true });
    const x = await new Application(n1, { name: 'x', pauseTimeoutMs: 300 }).open('vm1.disk');
    c.partition('node-1');
    await waitForState(x, 'paused');
    const pending = x.write(0, bytes('late')).then(() => 'ok', (e: { code?: string }) => e.code);
    await waitForState(x, 'invalidated');
    expect(x.reason).toBe('TIMEOUT');
    expect(await pending).toBe('TIMEOUT');
  });

  it("onFailure: 'error' fails I/O fast while storage is away, and works again after the resume", async () => {
    const c = await cluster();
    const n1 = await c.addNode('node-1', { proxied: true });
    const x = await new Application(n1, { name: 'x' }).open('vm1.disk', { onFailure: 'error' });
    await x.write(0, bytes('ok'));
    c.partition('node-1');
    await waitForState(x, 'paused');
    await expect(x.write(2, bytes('no'))).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    c.heal('node-1');
    await waitForState(x, 'active');
    await x.write(2, bytes('!!'));
    expect(text(await x.read(0, 4))).toBe('ok!!');
  });
});
