/** The same actors over the in-memory network and store: only transport and store change. */
import { describe, expect, it } from 'vitest';
import { Application } from '../actors/application.js';
import { MemoryNetwork } from '../transport/memory.js';
import { bytes, clusters, openWhenFree, text, trace, waitForState } from './helpers.js';

const memoryCluster = clusters({
  store: 'memory',
  transport: new MemoryNetwork(),
  secret: 's'.repeat(32),
  replica: { holdMs: 100, heartbeatIntervalMs: 50 },
  node: { heartbeatIntervalMs: 50, backoffBaseMs: 10 },
});

describe('in-memory world', () => {
  it('a replica kill pauses the handle, which resumes on the other replica with its data', async () => {
    const c = await memoryCluster();
    expect(c.urls).toEqual(['mem://replica-1', 'mem://replica-2']);
    const agent = await c.addNode('node-1');
    const h = await new Application(agent, { name: 'app-1' }).open('vm1.disk');
    const states = trace(h);
    await h.write(0, bytes('memory'));
    await c.kill(c.servingIndex(agent));
    const w = h.write(6, bytes('!'));
    await waitForState(h, 'active');
    await w;
    expect(states).toEqual(['active', 'paused', 'resuming', 'active']);
    expect(text(await h.read(0, 7))).toBe('memory!');
  });

  it('a foreign writer after the hold makes the resume be denied, as over WebSockets', async () => {
    const c = await memoryCluster();
    const x = await new Application(await c.addNode('node-1'), { name: 'x' }).open('vm1.disk');
    c.nodes[0]!.crash();
    const other = new Application(await c.addNode('node-2'), { name: 'y' });
    const y = await openWhenFree(other, 'vm1.disk');
    await y.write(0, bytes('y'));
    const again = await c.addNode('node-1');
    await expect(new Application(again, { name: 'x' }).open('vm1.disk')).rejects.toMatchObject({ code: 'MODIFIED' });
    expect(x.requestId).toHaveLength(21);
  });
});

describe('SDK input checks', () => {
  it('rejects bad arguments with INVALID_ARGUMENT and keeps the handle usable', async () => {
    const c = await memoryCluster();
    const app = new Application(await c.addNode('node-1'), { name: 'app' });
    await expect(app.open('')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(app.open('t', { requestId: 'short' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    const h = await app.open('t');
    await expect(h.write(-1, bytes('x'))).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(h.write(0, 'text' as unknown as Uint8Array)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(h.write(0, new Uint8Array(1024 * 1024 + 1))).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(h.read(0, 2 ** 40)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    const r = await app.open('t', { mode: 'read' });
    await expect(r.write(0, bytes('x'))).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await h.write(0, bytes('fine'));
    expect(text(await h.read(0, 4))).toBe('fine');
    await h.close();
    expect(h.state).toBe('closed');
    await expect(h.write(0, bytes('x'))).rejects.toMatchObject({ code: 'CLOSED' });
  });
});
