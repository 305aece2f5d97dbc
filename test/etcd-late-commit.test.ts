/**
 * S5 over a real etcd member: a write whose commit etcd took but did not answer in time is never
 * reported "not applied". The member is stopped (SIGSTOP) with a write in flight: the store gives up
 * on the transaction after its timeout, the replica answers UNAVAILABLE (outcome unknown) and
 * dismounts, the node pauses the handle, and the application closes it. Once the member runs again
 * (SIGCONT) it commits the transaction it had taken, and the write lands: the write must have been
 * rejected OUTCOME_UNKNOWN, never CLOSED "this write was not applied".
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Application } from '../actors/application.js';
import { NodeAgent } from '../actors/node-agent.js';
import { StorageReplica, type ReplicaObserver } from '../actors/replica.js';
import { SafeResumeError } from '../errors.js';
import { EtcdStore } from '../store/etcd.js';
import { WebSocketTransport } from '../transport/ws.js';
import { startEtcd, type EtcdCluster } from './etcd-cluster.js';
import { bytes, tempDir, text, waitFor } from './helpers.js';

const SECRET = 'late-commit-secret-late-commit-secret';
/** Whole pages: the store commits such a write from what it knows, with no read first (the read is not what stalls). */
const PAGE = 4096;
const page = (c: string) => bytes(c.repeat(PAGE));

describe('a write whose etcd commit went unanswered (etcd member stopped with the write in flight)', () => {
  let etcd: EtcdCluster | undefined;
  beforeAll(async () => {
    etcd = await startEtcd(1);
  }, 30_000);
  afterAll(async () => {
    await etcd?.stop();
  });

  it('is rejected OUTCOME_UNKNOWN when the paused handle is closed, and lands once the member runs again', async () => {
    const member = etcd!.members.members[0]!;
    const pid = member.proc?.pid;
    if (pid === undefined) throw new Error('the etcd member is not running');
    const t = tempDir();
    // Below etcd's own patience: the store gives up on the commit while the member still holds it.
    const store = new EtcdStore(etcd!.endpoints, { prefix: `/late-commit-${process.pid}/`, timeoutMs: 1000 });
    // Locks held far longer than the member is stopped, renewed seldom: the write is the first store call
    // that gets no answer, so the replica dismounts on it. Heartbeats of 1 s: the node drops a session
    // whose request is unanswered for 4 of them, longer than the store takes to give up on the write
    // (its commit, then the read of its mark, 1 s each), so the replica's answer reaches the node.
    const answered: string[] = [];
    const observe: ReplicaObserver = {
      request: (type: string) => void answered.push(type),
      resume: () => {},
      transaction: () => {},
      writeApplied: () => {},
      badFrame: () => {},
    };
    const replica = await new StorageReplica({
      id: 'replica-1',
      store,
      transport: new WebSocketTransport(),
      secret: SECRET,
      leaseMs: 30_000,
      renewIntervalMs: 20_000,
      holdMs: 30_000,
      heartbeatIntervalMs: 1000,
      probeIntervalMs: 100,
      observe,
    }).start();
    const agent = new NodeAgent({
      id: 'node-1',
      replicas: [replica.url],
      transport: new WebSocketTransport(),
      secret: SECRET,
      dataDir: t.dir,
      backoffBaseMs: 20,
      backoffMaxMs: 200,
    });
    let stopped = false;
    try {
      await agent.start();
      const app = new Application(agent, { name: 'db' });
      const h = await app.open('vm1.disk');
      await h.write(0, page('a'));

      const writesBefore = answered.filter((x) => x === 'write').length;
      process.kill(pid, 'SIGSTOP');
      stopped = true;
      const outcome = h.write(PAGE, page('b')).then(
        () => ({ code: 'OK', reason: undefined as string | undefined, message: '' }),
        (err: unknown) =>
          err instanceof SafeResumeError
            ? { code: err.code, reason: err.reason as string | undefined, message: err.message }
            : { code: 'THROWN', reason: undefined, message: String(err) },
      );
      await waitFor(
        'the replica to answer the write and the handle to pause',
        () => answered.filter((x) => x === 'write').length > writesBefore && h.state === 'paused',
        10_000,
      );
      expect(replica.storeError).toMatch(/^etcd transaction: no answer within/);
      // The refusal (UNAVAILABLE) follows the replica's notice that pauses the handle, on the same connection.
      await new Promise((r) => setTimeout(r, 300));
      await h.close();
      const written = await outcome;

      process.kill(pid, 'SIGCONT');
      stopped = false;
      await waitFor('the replica to mount the store again', () => !replica.isDismounted, 10_000);
      // The member commits the transaction it took before it answers anything after it.
      const reader = await app.open('vm1.disk', { mode: 'read' });
      const data = text(await reader.read(PAGE - 1, 2)).replaceAll('\0', '.');
      await reader.close();

      // Never "not applied" while it landed (S5): whatever the data shows, the write was rejected as unknown.
      expect(
        written,
        `the write was rejected ${written.code} (${written.message}); the data then read ${JSON.stringify(data)}`,
      ).toMatchObject({ code: 'OUTCOME_UNKNOWN', reason: 'CLOSED' });
      // The transaction etcd held when it stopped was committed when it ran again: the write landed.
      expect(data).toBe('ab');
    } finally {
      if (stopped) process.kill(pid, 'SIGCONT');
      agent.crash();
      await replica.stop();
      await store.shutdown();
      t.cleanup();
    }
  }, 40_000);
});
