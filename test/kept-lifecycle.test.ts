/**
 * The node-local requestId file across a handle's end: a reader that read a newer version asked to
 * keep it later; once the handle closes (by the application, or by a graceful stop of the agent) its
 * entry stays forgotten, so the application's next open is a fresh one, never a closed requestId.
 */
import { describe, expect, it } from 'vitest';
import { Application } from '../actors/application.js';
import { FileKeptIds } from '../actors/kept.js';
import { bytes, clusters } from './helpers.js';

const cluster = clusters();

describe('a closed reader stays forgotten on its node', () => {
  it('await read(); await close(): no entry, and the next plain open is a new write handle', async () => {
    const c = await cluster({ replicas: 1 });
    const agent = await c.addNode('node-1');
    const w = await new Application(agent, { name: 'w' }).open('t.disk');
    await w.write(0, bytes('abcd'));
    const app = new Application(agent, { name: 'r' });
    const r = await app.open('t.disk', { mode: 'read' });
    await w.write(0, bytes('efgh'));
    await r.read(0, 4);
    await r.close();
    await new Promise((resolve) => setTimeout(resolve, 20)); // any keep asked for later has run
    expect(agent.findKept('r', 't.disk')).toBeUndefined();
    await w.close();
    const again = await app.open('t.disk');
    expect(again.requestId).not.toBe(r.requestId);
    expect(again.mode).toBe('write');
    await again.write(0, bytes('new!'));
  });

  it('agent.stop() after a read: the reader leaves no entry on disk, like the writer', async () => {
    const c = await cluster({ replicas: 1 });
    const agent = await c.addNode('node-1');
    const w = await new Application(agent, { name: 'w' }).open('t.disk');
    await w.write(0, bytes('abcd'));
    const r = await new Application(agent, { name: 'r' }).open('t.disk', { mode: 'read' });
    await w.write(0, bytes('efgh'));
    await r.read(0, 4);
    await agent.stop();
    const onDisk = new FileKeptIds(c.opts.dir, 'node-1');
    try {
      expect(onDisk.find('r', 't.disk')).toBeUndefined();
      expect(onDisk.find('w', 't.disk')).toBeUndefined();
    } finally {
      onDisk.close?.();
    }
  });
});
