/**
 * What the launcher's start-up spawns: the store (local etcd members, if it runs them; emptied first
 * for a chaos run), each replica on its port over that store, and each node agent with its fault
 * proxies, applications, credentials and block export.
 */
import { formatCredential, issueCredential } from '../actors/auth.js';
import type { Host } from '../runtime/hosts.js';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { EtcdMembers, requireEtcd } from '../runtime/etcd-members.js';
import { etcdTls, type EtcdTls } from '../runtime/etcd-tls.js';
import { checkPortFree } from '../runtime/operator-error.js';
import { FaultProxy } from '../transport/fault-proxy.js';
import { freePort } from '../transport/ports.js';
import type { TlsFiles } from '../transport/tls.js';
import type { Children } from './children.js';
import type { LauncherOptions } from './launcher-options.js';
import { nbdSocketDir, nbdSocketPath } from './nbd-dir.js';

/** How long `up` waits for each node to reach a replica before it fails with each replica's cause. */
const NODE_START_TIMEOUT_MS = 10_000;

/** What the spawning reads of the launcher, and the maps it fills in. */
export interface Spawning {
  opts: LauncherOptions;
  secret: string;
  kids: Children;
  storeSpec: string;
  etcdTls: EtcdTls | undefined;
  /** The group that may reach the export sockets too (--nbd-group), if any. */
  nbdGid: number | undefined;
  /** The inspector's /inspect address, if there is an inspector. */
  inspectorWs: string | undefined;
  replicaUrls: string[];
  proxies: Map<string, FaultProxy[]>;
  apps: Map<string, { node: string; target: string }>;
  nbdUrls: Map<string, string>;
  nbdTlsUrls: Map<string, string>;
  host(id: string): Host | undefined;
  replicaNames(): string[];
  tlsConfig(): { tls?: TlsFiles };
  inspectorConfig(id: string, url: string | undefined): Record<string, string>;
}

/** A chaos run checks one history: its store and the nodes' kept requestIds start empty. */
export function startEmpty(opts: LauncherOptions): void {
  for (const f of ['store.sqlite', 'store.sqlite-wal', 'store.sqlite-shm']) rmSync(join(opts.dir, f), { force: true });
  for (let n = 1; n <= opts.nodes; n++) rmSync(join(opts.dir, `node-${n}.handles.jsonl`), { force: true });
  if (opts.store === 'etcd' && !opts.etcdEndpoints) rmSync(join(opts.dir, 'etcd'), { recursive: true, force: true });
}

/**
 * The store the replicas run over: SQLite in the data directory, or etcd (the endpoints given, or three
 * local members started here, over TLS with certificates made for them).
 */
export async function startStore(
  opts: LauncherOptions,
  dbPath: string,
  host: (id: string) => Host | undefined,
): Promise<{ spec: string; etcd?: EtcdMembers; etcdTls?: EtcdTls }> {
  if (opts.store !== 'etcd') return { spec: `sqlite:${dbPath}` };
  let tls: EtcdTls | undefined;
  if (!opts.etcdEndpoints) {
    requireEtcd(); // before the certificates: a missing etcd is the first thing to say
    // The members' certificate names each member's address (its host's, under --netns).
    const addresses = ['etcd-1', 'etcd-2', 'etcd-3'].flatMap((id) => host(id)?.address ?? []);
    tls = etcdTls(join(opts.dir, 'etcd', 'tls'), addresses);
  }
  const etcd = opts.etcdEndpoints ? undefined : await EtcdMembers.start(join(opts.dir, 'etcd'), 3, 20_000, host, tls);
  const endpoints = opts.etcdEndpoints ?? etcd!.endpoints;
  return { spec: `etcd://${endpoints.join(',')}`, ...(etcd ? { etcd } : {}), ...(tls ? { etcdTls: tls } : {}) };
}

/** Start every replica (each URL added to `replicaUrls`); the caller waits until they are ready. */
export async function spawnReplicas(s: Spawning): Promise<void> {
  for (let i = 0; i < s.opts.replicas; i++) {
    const id = `replica-${i + 1}`;
    const host = s.host(id);
    // On a host of its own a replica listens on its address (and any port is free there).
    const port = s.opts.port ? s.opts.port + i : host ? 7000 : await freePort();
    // A port asked for is checked here, so a taken one is named in one line, not found by a child.
    if (s.opts.port && !host) await checkPortFree(port, '127.0.0.1', id);
    s.replicaUrls.push(`${s.opts.tls ? 'wss' : 'ws'}://${host?.address ?? '127.0.0.1'}:${port}`);
    // The store's client certificate goes as file paths (0600 in the data directory), never its key.
    s.kids.spawn(id, 'replica', {
      ...s.tlsConfig(),
      ...(s.etcdTls ? { etcdTls: s.etcdTls.client } : {}),
      metricsPort: 0,
      id,
      port,
      ...(host ? { host: host.address } : {}),
      dir: s.opts.dir,
      store: s.storeSpec,
      secret: s.secret,
      holdMs: s.opts.holdMs,
      history: s.opts.history,
      pretty: s.opts.pretty,
      ...s.inspectorConfig(id, s.inspectorWs),
    });
  }
}

/** Start every node agent with its applications; the replicas are ready. */
export async function spawnNodes(s: Spawning): Promise<void> {
  // The export sockets' directory, before any node is started.
  const nbdGid = s.nbdGid;
  if (s.opts.nodes > 0) nbdSocketDir(s.opts.dir, nbdGid);
  let appNo = 0;
  for (let n = 1; n <= s.opts.nodes; n++) {
    const id = `node-${n}`;
    // On one host a node reaches the replicas through fault proxies (partitions); on hosts of their
    // own, directly (a partition cuts the node's link).
    const proxies = s.opts.hosts ? [] : s.replicaUrls.map((u) => FaultProxy.forUrl(u));
    const urls = s.opts.hosts ? s.replicaUrls : await Promise.all(proxies.map((p) => p.listen()));
    s.proxies.set(id, proxies);
    const apps = [];
    for (let a = 0; a < s.opts.apps; a++) {
      const name = `app-${++appNo}`;
      const target = `${name}.disk`;
      s.apps.set(name, { node: id, target });
      apps.push({ name, target });
    }
    // A node gets its own credential and its applications' principal's, never the cluster key.
    const credential = formatCredential(issueCredential(s.secret, 'node', id));
    const principals = [formatCredential(issueCredential(s.secret, 'principal', 'default'))];
    // Its block export on a Unix socket in the data directory, and on 127.0.0.1 with TLS-PSK if asked
    // (none on a host of its own: that address would name this machine).
    const nbd = s.host(id)
      ? undefined
      : {
          nbdSocket: nbdSocketPath(s.opts.dir, id),
          ...(nbdGid !== undefined ? { nbdGroup: nbdGid } : {}),
          ...(s.opts.nbdTcp ? { nbdTlsPort: await freePort() } : {}),
        };
    if (nbd) s.nbdUrls.set(id, `nbd+unix:///?socket=${nbd.nbdSocket}`);
    if (nbd?.nbdTlsPort !== undefined) s.nbdTlsUrls.set(id, `nbds://127.0.0.1:${nbd.nbdTlsPort}/`);
    // At start-up a node is ready once connected: one that cannot reach the storage fails `up` with why.
    s.kids.spawn(id, 'node', {
      ...s.tlsConfig(),
      metricsPort: 0,
      ...nbd,
      startTimeoutMs: NODE_START_TIMEOUT_MS,
      id,
      replicas: urls,
      replicaNames: s.replicaNames(),
      dir: s.opts.dir,
      credential,
      principals,
      pauseTimeoutMs: s.opts.pauseTimeoutMs,
      intervalMs: s.opts.intervalMs,
      apps,
      history: s.opts.history,
      pretty: s.opts.pretty,
      reload: s.opts.history,
      ...s.inspectorConfig(id, s.inspectorWs),
    });
  }
}
