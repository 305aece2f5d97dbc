/**
 * SPEC "Failures that must be handled", end to end over real WebSockets and SQLite: what only real
 * sockets, a real database file and real processes can show (frame sizes, a database another process
 * locks, the requestId file on a real disk, resume batching). Each failure's deterministic story is a
 * scenario in test/scenarios/ (failure-*.txt), played over the simulated world.
 */
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { Application } from '../actors/application.js';
import { bytes, clusters, reached, text, trace, waitFor, waitForState } from './helpers.js';

const cluster = clusters();

describe('1. connection interruption', () => {
  it('thousands of handles with long target names all resume after a dropped connection', async () => {
    const c = await cluster();
    const agent = await c.addNode('node-1', { proxied: true });
    const app = new Application(agent, { name: 'app-1' });
    // 1,200 resume items of ~300 bytes (~360 KB): more than one frame's 256 KiB header may carry,
    // so the agent must split them. The bounds below are generous on purpose: CI runs this beside
    // the simulation files on two cores; no speed is asserted.
    const n = 1200;
    const hs = await Promise.all(Array.from({ length: n }, (_, i) => app.open(`${'volume/'.repeat(35)}disk-${i}`)));
    const last = hs[n - 1]!;
    await last.write(0, bytes('last'));
    c.dropLinks('node-1');
    await waitFor('every handle to pause', () => hs.every((h) => h.state !== 'active'), 60_000);
    await waitFor('every handle to be active again', () => hs.every((h) => h.state === 'active'), 60_000);
    expect(text(await last.read(0, 4))).toBe('last');
  }, 150_000);
});

describe('2. dismount', () => {
  it('a store another process keeps locked makes the replica dismount by itself and remount when released', async () => {
    const c = await cluster({ replicas: 1, sqlite: { busyTimeoutMs: 50 } });
    const agent = await c.addNode('node-1');
    const h = await new Application(agent, { name: 'app-1' }).open('vm1.disk');
    await h.write(0, bytes('x'));
    const blocker = new Database(c.dbPath);
    blocker.exec('BEGIN IMMEDIATE');
    const pending = h.write(1, bytes('y'));
    await waitFor('replica to dismount', () => c.replica(0).isDismounted);
    await waitForState(h, 'paused');
    blocker.exec('ROLLBACK');
    blocker.close();
    await waitForState(h, 'active');
    await pending;
    expect(c.replica(0).isDismounted).toBe(false);
    expect(text(await h.read(0, 2))).toBe('xy');
  });
});

describe('3. reboot', () => {
  it('every replica restarts on SQLite: all handles resume and every acknowledged write is still there', async () => {
    const c = await cluster({ replicas: 3 });
    const agents = [await c.addNode('node-1'), await c.addNode('node-2')];
    const handles = await Promise.all(
      agents.flatMap((a, n) =>
        [0, 1].map((i) => new Application(a, { name: `app-${i + 1}` }).open(`n${n}-a${i}.disk`)),
      ),
    );
    const acked = new Map<string, string>();
    for (let round = 0; round < 20; round++) {
      await Promise.all(
        handles.map(async (h) => {
          const s = `${h.target}#${round};`;
          const offset = (acked.get(h.target) ?? '').length;
          await h.write(offset, bytes(s));
          acked.set(h.target, (acked.get(h.target) ?? '') + s);
        }),
      );
    }
    for (let i = 0; i < 3; i++) await c.kill(i);
    await Promise.all(handles.map((h) => waitForState(h, 'paused')));
    for (let i = 0; i < 3; i++) await c.restart(i);
    await Promise.all(handles.map((h) => waitForState(h, 'active')));
    for (const h of handles) {
      const want = acked.get(h.target)!;
      expect(text(await h.read(0, want.length + 10))).toBe(want);
    }
  });
});

describe('4. node agent restart', () => {
  it('a restarted agent resumes its application with the requestId it kept on disk', async () => {
    const c = await cluster();
    const agent = await c.addNode('node-1');
    const h = await new Application(agent, { name: 'app-1' }).open('vm1.disk');
    await h.write(0, bytes('state'));
    agent.crash();
    const again = await c.addNode('node-1');
    const h2 = await new Application(again, { name: 'app-1' }).open('vm1.disk');
    expect(h2.requestId).toBe(h.requestId);
    expect(h2.state).toBe('active');
    expect(text(await h2.read(0, 5))).toBe('state');
    await h2.write(5, bytes('ful'));
    expect(text(await h2.read(0, 8))).toBe('stateful');
  });
});

describe('batched resumes', () => {
  it('after a reconnect, every paused handle of the node is resumed in one message', async () => {
    const c = await cluster({ replicas: 1 });
    const agent = await c.addNode('node-1', { proxied: true });
    const app = new Application(agent, { name: 'app-1' });
    const handles = await Promise.all(Array.from({ length: 50 }, (_, i) => app.open(`disk-${i}`)));
    const traces = handles.map((h) => trace(h));
    const before = c.replica(0).stats.resumeMessages;
    c.dropLinks('node-1');
    await Promise.all(traces.map((t) => reached(t, 'paused')));
    await Promise.all(handles.map((h) => waitForState(h, 'active')));
    expect(c.replica(0).stats.resumeMessages - before).toBe(1);
    expect(c.replica(0).stats.resumesGranted).toBe(50);
  });
});
