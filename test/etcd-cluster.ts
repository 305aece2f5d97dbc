/**
 * etcd members for tests, on 127.0.0.1 with free ports and a temporary data directory each (Debian's
 * etcd-server; .ci/run installs it). A missing binary fails the test with the package to install.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { freePort } from '../cluster/launcher.js';

export interface EtcdMember {
  endpoint: string;
  proc: ChildProcess;
}

export interface EtcdCluster {
  endpoints: string[];
  members: EtcdMember[];
  stop(): Promise<void>;
}

/** Start `n` members as one cluster and wait until it answers. */
export async function startEtcd(n = 1): Promise<EtcdCluster> {
  if (spawnSync('etcd', ['--version']).error) throw new Error('etcd is not installed: apt-get install -y etcd-server (Debian), as .ci/run does');
  const dir = mkdtempSync(join(tmpdir(), 'safe-resume-etcd-'));
  const ports = await Promise.all(Array.from({ length: n }, async () => ({ client: await freePort(), peer: await freePort() })));
  const initial = ports.map((p, i) => `m${i + 1}=http://127.0.0.1:${p.peer}`).join(',');
  const members: EtcdMember[] = ports.map((p, i) => {
    const proc = spawn('etcd', [
      '--name', `m${i + 1}`, '--data-dir', join(dir, `m${i + 1}`),
      '--listen-client-urls', `http://127.0.0.1:${p.client}`, '--advertise-client-urls', `http://127.0.0.1:${p.client}`,
      '--listen-peer-urls', `http://127.0.0.1:${p.peer}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${p.peer}`,
      '--initial-cluster', initial, '--initial-cluster-state', 'new', '--initial-cluster-token', `t-${process.pid}-${p.client}`,
      '--log-level', 'error', '--logger', 'zap',
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    proc.stderr?.resume();
    return { endpoint: `127.0.0.1:${p.client}`, proc };
  });
  const endpoints = members.map((m) => m.endpoint);
  const stop = async () => {
    for (const m of members) if (m.proc.exitCode === null) m.proc.kill('SIGKILL');
    await Promise.all(members.map((m) => (m.proc.exitCode !== null || m.proc.signalCode !== null ? undefined : new Promise((r) => m.proc.once('exit', r)))));
    rmSync(dir, { recursive: true, force: true });
  };
  const client = new Etcd3({ hosts: endpoints.map((e) => `http://${e}`) });
  const deadline = Date.now() + 20_000;
  try {
    for (;;) {
      try {
        await client.put('/ready').value('1');
        break;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`etcd did not answer within 20 s: ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  } catch (err) {
    await stop();
    throw err;
  } finally {
    client.close();
  }
  return { endpoints, members, stop };
}
