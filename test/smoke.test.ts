import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Application } from '../actors/application.js';
import { LocalCluster } from '../cluster/local.js';
import { bytes, tempDir, text, trace, waitForState } from './helpers.js';

describe('smoke', () => {
  let t: ReturnType<typeof tempDir>;
  let c: LocalCluster;
  beforeEach(async () => {
    t = tempDir();
    c = await LocalCluster.start({
      dir: t.dir,
      replicas: 2,
      replica: { holdMs: 200, heartbeatIntervalMs: 100 },
      node: { heartbeatIntervalMs: 100, backoffBaseMs: 20 },
    });
  });
  afterEach(async () => {
    await c.stop();
    t.cleanup();
  });

  it('opens, writes, reads, survives a replica kill', async () => {
    const agent = await c.addNode('node-1');
    const app = new Application(agent, { name: 'app-1' });
    const h = await app.open('vm1.disk');
    const states = trace(h);
    await h.write(0, bytes('hello'));
    expect(text(await h.read(0, 5))).toBe('hello');
    const serving = c.replicas.findIndex((r) => r.id === agent.replica);
    await c.kill(serving);
    const w = h.write(5, bytes(' world'));
    await waitForState(h, 'active');
    await w;
    expect(text(await h.read(0, 11))).toBe('hello world');
    expect(states).toEqual(['active', 'paused', 'resuming', 'active']);
    expect(agent.replica).not.toBe(`replica-${serving + 1}`);
  });
});
