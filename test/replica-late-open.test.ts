/**
 * L1 through real replica processes: a late open from a session the node has left cannot take a live
 * handle back. Two `safe-resume replica` processes share one store (a SQLite file; an etcd member). The replica serving the node
 * is stopped (SIGSTOP) just before the application opens a target: its socket takes the open, its
 * process does not run. The node gives up on that session, sends the open to the other replica and is
 * granted there. Then the stopped replica runs again (SIGCONT) and decides the open it had received,
 * from the session the node left: it must not move the record there, so the live handle keeps writing.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Application } from '../actors/application.js';
import { loadOrCreateSecret } from '../actors/auth.js';
import { NodeAgent } from '../actors/node-agent.js';
import { freePort } from '../transport/ports.js';
import { SafeResumeError } from '../errors.js';
import { WebSocketTransport } from '../transport/ws.js';
import { startEtcd, type EtcdCluster } from './etcd-cluster.js';
import { bytes, tempDir, text, trace, waitFor } from './helpers.js';
import { CLI } from './cli-path.js';

describe.each(['sqlite', 'etcd'] as const)('a late open from a stopped replica process, over %s', (kind) => {
  const t = tempDir();
  const procs: ChildProcess[] = [];
  let secret = '';
  let etcd: EtcdCluster | undefined;
  let store = `sqlite:${join(t.dir, 'store.sqlite')}`;
  beforeAll(async () => {
    secret = loadOrCreateSecret(t.dir);
    if (kind === 'etcd') {
      etcd = await startEtcd(1);
      store = `etcd://${etcd.endpoints.join(',')}`;
    }
  }, 30_000);
  afterAll(async () => {
    for (const p of procs) {
      if (p.exitCode !== null || p.signalCode !== null) continue;
      p.kill('SIGCONT');
      p.kill('SIGKILL');
    }
    await etcd?.stop();
    t.cleanup();
  });

  /** Start a replica process over the shared store; resolves once it serves. */
  const replica = async (id: string) => {
    const [port, metrics] = [await freePort(), await freePort()];
    const p = spawn(
      process.execPath,
      [
        CLI,
        'replica',
        '--id',
        id,
        '--store',
        store,
        '--listen',
        `127.0.0.1:${port}`,
        '--dir',
        t.dir,
        '--hold-ms',
        '2000',
        '--metrics',
        `127.0.0.1:${metrics}`,
        '--log',
        join(t.dir, `${id}.log`),
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    procs.push(p);
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (out += d.toString()));
    await waitFor(`${id} to serve`, () => out.includes('serving') || p.exitCode !== null, 20_000);
    expect(out).toContain(`${id} serving ws://127.0.0.1:${port}`);
    return { id, p, url: `ws://127.0.0.1:${port}`, metrics: `http://127.0.0.1:${metrics}/metrics` };
  };

  it('the node fails over and is granted on the other replica; the stalled open, decided later, leaves the live handle active', async () => {
    const replicas = [await replica('replica-1'), await replica('replica-2')];
    const agent = new NodeAgent({
      id: 'node-1',
      replicas: replicas.map((r) => r.url),
      transport: new WebSocketTransport(),
      secret,
      dataDir: t.dir,
      backoffBaseMs: 20,
      backoffMaxMs: 200,
    });
    let stalled: ChildProcess | undefined;
    try {
      await agent.start();
      const first = replicas.find((r) => r.id === agent.replica);
      if (!first) throw new Error(`node-1 is on ${agent.replica}, not on a replica of this test`);
      const other = replicas.find((r) => r !== first)!;
      const app = new Application(agent, { name: 'db' });

      // Its socket takes the open; its process does not run to decide it.
      stalled = first.p;
      first.p.kill('SIGSTOP');
      const h = await app.open('vm1.disk');
      // The node left the stalled replica's session (its requests went unanswered) and was granted on the other.
      expect(agent.replica).toBe(other.id);
      expect(h.state).toBe('active');
      const seen = trace(h);

      first.p.kill('SIGCONT');
      stalled = undefined;
      // The stalled replica reads the open it took and answers it, decided for the session the node left.
      await answeredOpen(first.metrics, 10_000);

      const written = await h.write(0, bytes('after')).then(
        () => 'ok',
        (err: unknown) => (err instanceof SafeResumeError ? `${err.code}: ${err.message}` : String(err)),
      );
      expect(
        written,
        `the write after the late open was answered ${written} (the handle went ${seen.join(' -> ')})`,
      ).toBe('ok');
      expect(h.state).toBe('active');
      expect(seen).toEqual(['active']);
      expect(text(await h.read(0, 5))).toBe('after');
      await h.close();
    } finally {
      stalled?.kill('SIGCONT');
      agent.crash();
    }
  }, 60_000);
});

/** Until the replica's /metrics counts one open answered (or throw after `timeoutMs`). */
async function answeredOpen(url: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const last = await fetch(url, { signal: AbortSignal.timeout(2000) }).then(
      (r) => r.text(),
      (err: unknown) => String(err),
    );
    if (/^safe_resume_request_seconds_count\{type="open"\} 1$/m.test(last)) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${url} to count an open answered:\n${last}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
