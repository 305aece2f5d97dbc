/**
 * `safe-resume replica`: the storage side of docs/deploy.md. Two replica processes over an etcd that
 * takes only TLS clients with a certificate, each serving wss://; a node agent with its own credential
 * writes through them, the serving replica is SIGKILLed, the handle resumes on the other.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Application } from '../actors/application.js';
import { parseCredential } from '../actors/auth.js';
import { NodeAgent } from '../actors/node-agent.js';
import { freePort } from '../transport/ports.js';
import { loadTlsFiles } from '../transport/tls.js';
import { WebSocketTransport } from '../transport/ws.js';
import { certMaker } from './certs.js';
import { tempDir, text, trace, waitFor } from './helpers.js';
import { CLI } from './cli-path.js';

const cli = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 30_000 });

describe('safe-resume replica', () => {
  const t = tempDir();
  const f = (name: string) => join(t.dir, name);
  const procs: ChildProcess[] = [];
  let etcdUrl = '';
  beforeAll(async () => {
    const certs = certMaker(t.dir);
    certs.ca('ca');
    for (const name of ['etcd', 'etcd-client', 'replica', 'node-1']) certs.cert(name, 'ca', 'IP:127.0.0.1');
    const [client, peer] = [await freePort(), await freePort()];
    etcdUrl = `127.0.0.1:${client}`;
    // One etcd member that takes only TLS clients with a certificate from the CA.
    const etcd = spawn(
      'etcd',
      [
        '--name',
        'e1',
        '--data-dir',
        f('etcd-data'),
        '--listen-client-urls',
        `https://${etcdUrl}`,
        '--advertise-client-urls',
        `https://${etcdUrl}`,
        '--listen-peer-urls',
        `http://127.0.0.1:${peer}`,
        '--initial-advertise-peer-urls',
        `http://127.0.0.1:${peer}`,
        '--initial-cluster',
        `e1=http://127.0.0.1:${peer}`,
        '--cert-file',
        f('etcd.crt'),
        '--key-file',
        f('etcd.key'),
        '--trusted-ca-file',
        f('ca.crt'),
        '--client-cert-auth',
        '--log-level',
        'error',
        '--logger',
        'zap',
      ],
      { stdio: 'ignore' },
    );
    procs.push(etcd);
    // The cluster key and the node's credentials, made where the operator keeps them.
    expect(cli('credentials', 'issue', '--node', 'node-1', '--dir', f('keys'), '--out', f('node-1.cred')).status).toBe(
      0,
    );
    expect(
      cli('credentials', 'issue', '--principal', 'default', '--dir', f('keys'), '--out', f('default.cred')).status,
    ).toBe(0);
  }, 60_000);
  afterAll(() => {
    for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL');
    t.cleanup();
  });

  /** Start a replica; resolves with its process and the line it printed once serving. */
  const replica = async (id: string, port: number, metricsPort: number) => {
    const p = spawn(
      process.execPath,
      [
        CLI,
        'replica',
        '--id',
        id,
        '--store',
        `etcd://${etcdUrl}`,
        '--etcd-ca',
        f('ca.crt'),
        '--etcd-cert',
        f('etcd-client.crt'),
        '--etcd-key',
        f('etcd-client.key'),
        '--listen',
        `127.0.0.1:${port}`,
        '--dir',
        f('keys'),
        '--tls-cert',
        f('replica.crt'),
        '--tls-key',
        f('replica.key'),
        '--tls-ca',
        f('ca.crt'),
        '--hold-ms',
        '1000',
        '--metrics',
        `127.0.0.1:${metricsPort}`,
        '--log',
        f(`${id}.log`),
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    procs.push(p);
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (out += d.toString()));
    await waitFor(`${id} to serve`, () => out.includes('serving') || p.exitCode !== null, 20_000);
    return { p, out: () => out };
  };

  it('two replica hosts over etcd with TLS: a node writes, the serving replica is SIGKILLed, the handle resumes on the other; SIGTERM stops one cleanly', async () => {
    const [p1, p2, m1, m2] = [await freePort(), await freePort(), await freePort(), await freePort()];
    const r1 = await replica('replica-1', p1, m1);
    expect(r1.out()).toContain(
      `replica-1 serving wss://127.0.0.1:${p1} over etcd://${etcdUrl} (TLS); metrics http://127.0.0.1:${m1}/metrics`,
    );
    const r2 = await replica('replica-2', p2, m2);
    const tls = loadTlsFiles({ certFile: f('node-1.crt'), keyFile: f('node-1.key'), caFile: f('ca.crt') });
    const agent = new NodeAgent({
      id: 'node-1',
      replicas: [`wss://127.0.0.1:${p1}`, `wss://127.0.0.1:${p2}`],
      transport: new WebSocketTransport({ tls }),
      credential: parseCredential(readFileSync(f('node-1.cred'), 'utf8')),
      principals: [parseCredential(readFileSync(f('default.cred'), 'utf8'))],
    });
    await agent.start();
    try {
      const app = new Application(agent, { name: 'db' });
      const h = await app.open('db.disk');
      await h.write(0, new TextEncoder().encode('before'));
      const metrics = await fetch(`http://127.0.0.1:${m1}/metrics`).then((r) => r.text());
      expect(metrics).toMatch(/safe_resume_sessions(\{[^}]*\})? 1/);
      const seen = trace(h);
      r1.p.kill('SIGKILL');
      await waitFor('the handle to resume on replica-2', () => seen.includes('paused') && h.state === 'active', 20_000);
      await h.write(6, new TextEncoder().encode('+after'));
      expect(text(await h.read(0, 12))).toBe('before+after');
      const gone = new Promise<number | null>((r) => r2.p.once('exit', (code) => r(code)));
      r2.p.kill('SIGTERM');
      expect(await gone).toBe(0);
    } finally {
      agent.crash();
    }
  }, 90_000);

  it('refuses a cluster key other users may read, saying chmod 600; creates its store and log for its owner alone', async () => {
    const key = join(f('keys'), 'cluster-secret');
    chmodSync(key, 0o644);
    try {
      const exposed = cli('replica', '--id', 'r', '--store', 'memory', '--dir', f('keys'));
      expect(exposed.status).toBe(2);
      expect(exposed.stderr).toContain(`${key} may be read by other users (mode 0644)`);
      expect(exposed.stderr).toContain(`chmod 600 ${key}`);
    } finally {
      chmodSync(key, 0o600);
    }
    // Under the usual umask (022) the store, its write-ahead log and the log file are still 0600.
    const port = await freePort();
    const p = spawn(
      process.execPath,
      [
        CLI,
        'replica',
        '--id',
        'r-private',
        '--store',
        `sqlite:${f('private/store.sqlite')}`,
        '--listen',
        `127.0.0.1:${port}`,
        '--dir',
        f('keys'),
        '--log',
        f('private/r.log'),
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    procs.push(p);
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    await waitFor('the replica to serve', () => out.includes('serving') || p.exitCode !== null, 20_000);
    try {
      for (const name of ['private/store.sqlite', 'private/store.sqlite-wal', 'private/r.log']) {
        await waitFor(`${name} to exist`, () => existsSync(f(name)), 5000);
        expect((statSync(f(name)).mode & 0o777).toString(8), name).toBe('600');
      }
    } finally {
      p.kill('SIGTERM');
    }
  }, 60_000);

  it('refuses to start without the cluster key, an id, a store or a good address, saying what is missing', () => {
    const noKey = cli('replica', '--id', 'r', '--store', 'memory', '--dir', f('nowhere'));
    expect(noKey.status).toBe(2);
    expect(noKey.stderr).toContain(`no cluster key at ${join(f('nowhere'), 'cluster-secret')}`);
    expect(cli('replica', '--store', 'memory').stderr).toContain('--id NAME is required');
    expect(cli('replica', '--id', 'r').stderr).toContain('--store SPEC is required');
    expect(cli('replica', '--id', 'r', '--store', 'memory', '--listen', 'nowhere').stderr).toContain(
      '--listen "nowhere": expected HOST:PORT',
    );
    expect(cli('replica', '--id', 'r', '--store', 'memory', '--etcd-ca', f('ca.crt')).stderr).toContain(
      '--etcd-* go with --store etcd',
    );
    expect(cli('replica', '--help').stdout).toContain('safe-resume replica --id NAME --store SPEC');
  });
});
