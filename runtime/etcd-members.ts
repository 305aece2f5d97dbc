/**
 * Local etcd members, one process each on 127.0.0.1 (Debian's etcd-server), for `safe-resume up
 * --store etcd` and the tests: started as one cluster, killed and restarted by id (etcd-1, ...) over
 * their data directories, stopped together. With `tls` (what `up` always passes: runtime/etcd-tls.ts)
 * they serve clients and peers over TLS only and take only clients and peers with a certificate of
 * its CA; without it (the tests' own members) plain HTTP.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { SafeResumeError } from '../errors.js';
import { EXIT, OperatorError } from './operator-error.js';
import { freePort } from '../transport/ports.js';
import { inHost, type Host } from './hosts.js';
import { readEtcdTls, type EtcdTls } from './etcd-tls.js';

export interface EtcdMember {
  id: string;
  endpoint: string;
  peer: string;
  dataDir: string;
  proc: ChildProcess | undefined;
  /** The host (network namespace) it runs on; none: this one. */
  host?: Host | undefined;
}

/** Whether the `etcd` binary runs here; a clear error naming the package otherwise. */
export function requireEtcd(): void {
  const r = spawnSync('etcd', ['--version']);
  if (r.error)
    throw new OperatorError(
      'etcd is not installed: apt-get install -y etcd-server (Debian), or pass --etcd-endpoints of a running cluster',
      EXIT.missingProgram,
    );
}

let setpriv: boolean | undefined;
/** Whether util-linux's setpriv is here (Debian has it always); without it a SIGKILLed launcher leaves its members running. */
function hasSetpriv(): boolean {
  return (setpriv ??= spawnSync('setpriv', ['--help']).error === undefined);
}

export class EtcdMembers {
  readonly members: EtcdMember[] = [];
  private readonly token: string;

  private constructor(readonly tls: EtcdTls | undefined) {
    this.token = `safe-resume-${process.pid}-${Date.now()}`;
  }

  /** The scheme of their client and peer URLs. */
  get scheme(): 'http' | 'https' {
    return this.tls ? 'https' : 'http';
  }

  private client(hosts: string[], dialTimeout?: number): Etcd3 {
    const c = this.tls ? readEtcdTls(this.tls.client) : undefined;
    return new Etcd3({
      hosts: hosts.map((x) => `${this.scheme}://${x}`),
      ...(dialTimeout ? { dialTimeout } : {}),
      ...(c
        ? {
            credentials: { rootCertificate: c.ca, certChain: c.cert, privateKey: c.key },
            grpcOptions: { 'grpc.ssl_target_name_override': c.serverName },
          }
        : {}),
    });
  }

  get endpoints(): string[] {
    return this.members.map((m) => m.endpoint);
  }

  /**
   * Start `n` members as one new cluster under `dir` and wait until it takes a write. `place` may put a
   * member on a host of its own (a network namespace with its address: runtime/hosts.ts). With `tls`,
   * the members' certificate must name each member's address.
   */
  static async start(
    dir: string,
    n: number,
    waitMs = 20_000,
    place?: (id: string) => Host | undefined,
    tls?: EtcdTls,
  ): Promise<EtcdMembers> {
    requireEtcd();
    const e = new EtcdMembers(tls);
    // A cluster started here before keeps its members' addresses: each member's data remembers its
    // peers' URLs, so the members start again on the ports they had (kept in members.json).
    const kept = readLayout(dir);
    const ids = Array.from({ length: n }, (_, i) => `etcd-${i + 1}`);
    const have = ids.filter((id) => existsSync(join(dir, id, 'member')));
    if (have.length > 0 && (have.length < n || !kept || ids.some((id) => !kept[id]))) {
      throw new SafeResumeError(
        'INVALID_ARGUMENT',
        `${dir} holds the data of ${have.length === n ? 'etcd members whose addresses were not kept' : `only ${have.join(', ')} of ${n} etcd members`}: start with the same number of members and data directory as before, or remove ${dir} to start an empty etcd (its data is lost)`,
      );
    }
    const existing = have.length === n;
    for (const id of ids) {
      const host = place?.(id);
      const address = host?.address ?? '127.0.0.1';
      const was = existing ? kept![id]! : undefined;
      const [client, peer] = was ? [was.client, was.peer] : host ? [2379, 2380] : [await freePort(), await freePort()];
      if (was && !host) {
        for (const port of [client, peer]) {
          if (!(await portFree(port)))
            throw new SafeResumeError(
              'UNAVAILABLE',
              `${id} of the etcd in ${dir} listened on 127.0.0.1:${port}, which another process holds now: stop it, or remove ${dir} to start an empty etcd (its data is lost)`,
            );
        }
      }
      e.members.push({
        id,
        endpoint: `${address}:${client}`,
        peer: `${e.scheme}://${address}:${peer}`,
        dataDir: join(dir, id),
        proc: undefined,
        host,
      });
    }
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    writeLayout(
      dir,
      Object.fromEntries(
        e.members.map((m) => [
          m.id,
          { client: Number(m.endpoint.split(':').pop()), peer: Number(m.peer.split(':').pop()) },
        ]),
      ),
    );
    for (const m of e.members) e.spawn(m, existing ? 'existing' : 'new');
    try {
      await e.ready(waitMs);
    } catch (err) {
      await e.stop();
      throw err;
    }
    return e;
  }

  private spawn(m: EtcdMember, state: 'new' | 'existing'): void {
    mkdirSync(m.dataDir, { recursive: true, mode: 0o700 });
    const initial = this.members.map((x) => `${x.id}=${x.peer}`).join(',');
    // The member dies with this process, even a SIGKILLed one (util-linux's setpriv sets the parent-death signal).
    const guard = hasSetpriv() ? ['setpriv', '--pdeathsig', 'KILL'] : [];
    const argv = [...guard, 'etcd'];
    const cmd = m.host ? inHost(m.host, argv[0]!) : { command: argv[0]!, args: [] };
    // TLS: certificates of the CA only, from clients and from peers (file paths: no key in the command line).
    const t = this.tls?.member;
    const tls = t
      ? [
          '--client-cert-auth',
          '--trusted-ca-file',
          t.caFile,
          '--cert-file',
          t.certFile,
          '--key-file',
          t.keyFile,
          '--peer-client-cert-auth',
          '--peer-trusted-ca-file',
          t.caFile,
          '--peer-cert-file',
          t.certFile,
          '--peer-key-file',
          t.keyFile,
        ]
      : [];
    const proc = spawn(
      cmd.command,
      [
        ...cmd.args,
        ...argv.slice(1),
        '--name',
        m.id,
        '--data-dir',
        m.dataDir,
        '--listen-client-urls',
        `${this.scheme}://${m.endpoint}`,
        '--advertise-client-urls',
        `${this.scheme}://${m.endpoint}`,
        ...tls,
        '--listen-peer-urls',
        m.peer,
        '--initial-advertise-peer-urls',
        m.peer,
        '--initial-cluster',
        initial,
        '--initial-cluster-state',
        state,
        '--initial-cluster-token',
        this.token,
        '--log-level',
        'error',
        '--logger',
        'zap',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    proc.stderr?.resume();
    proc.on('exit', () => {
      if (m.proc === proc) m.proc = undefined;
    });
    m.proc = proc;
  }

  /** Until the cluster takes a write (a quorum is up). */
  async ready(waitMs: number): Promise<void> {
    const client = this.client(this.endpoints);
    const deadline = Date.now() + waitMs;
    try {
      for (;;) {
        try {
          await client.put('/safe-resume-ready').value('1');
          return;
        } catch (err) {
          if (Date.now() > deadline)
            throw new SafeResumeError(
              'UNAVAILABLE',
              `etcd did not answer within ${waitMs / 1000} s: ${(err as Error).message}`,
            );
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    } finally {
      client.close();
    }
  }

  /** The member that is the leader now (asking each running member). */
  async leader(): Promise<EtcdMember | undefined> {
    for (const m of this.members) {
      if (!m.proc) continue;
      const c = this.client([m.endpoint], 2000);
      try {
        const st = await c.maintenance.status();
        if (st.leader === st.header.member_id) return m;
      } catch {
        // not answering: not the leader we can see
      } finally {
        c.close();
      }
    }
    return undefined;
  }

  member(id: string): EtcdMember | undefined {
    return this.members.find((m) => m.id === id);
  }

  /** SIGKILL a member (the leader included: the others elect another). */
  kill(id: string): void {
    const m = this.member(id);
    if (!m?.proc) throw new SafeResumeError('UNAVAILABLE', `${id} is not running`);
    m.proc.kill('SIGKILL');
  }

  /** Start a member again over its data directory (killing it first if it runs). */
  async restart(id: string): Promise<void> {
    const m = this.member(id);
    if (!m) throw new SafeResumeError('INVALID_ARGUMENT', `no etcd member called ${JSON.stringify(id)}`);
    if (m.proc) {
      const gone = new Promise((r) => m.proc!.once('exit', r));
      m.proc.kill('SIGKILL');
      await gone;
    }
    this.spawn(m, 'existing');
  }

  async stop(): Promise<void> {
    await Promise.all(
      this.members.map((m) => {
        const p = m.proc;
        if (!p || p.exitCode !== null || p.signalCode !== null) return Promise.resolve();
        const gone = new Promise((r) => p.once('exit', r));
        p.kill('SIGTERM');
        setTimeout(() => p.kill('SIGKILL'), 3000).unref();
        return gone;
      }),
    );
  }
}

/** Where members.json keeps each member's client and peer port (so a later start reuses them). */
type Layout = Record<string, { client: number; peer: number }>;
const LAYOUT_FILE = 'members.json';

function readLayout(dir: string): Layout | undefined {
  const path = join(dir, LAYOUT_FILE);
  if (!existsSync(path)) return undefined;
  try {
    const raw = JSON.parse(readFileSync(path, 'utf8')) as unknown;
    if (typeof raw !== 'object' || raw === null) return undefined;
    const out: Layout = {};
    for (const [id, v] of Object.entries(raw)) {
      const { client, peer } = (v ?? {}) as { client?: unknown; peer?: unknown };
      if (!Number.isInteger(client) || !Number.isInteger(peer)) return undefined;
      out[id] = { client: client as number, peer: peer as number };
    }
    return out;
  } catch {
    return undefined;
  }
}

function writeLayout(dir: string, layout: Layout): void {
  const path = join(dir, LAYOUT_FILE);
  writeFileSync(`${path}.tmp`, JSON.stringify(layout) + '\n', { mode: 0o600 });
  renameSync(`${path}.tmp`, path);
}

/** Whether nothing listens on 127.0.0.1:port now. */
function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}
