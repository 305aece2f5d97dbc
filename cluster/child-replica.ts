/** The replica role of a local cluster process: a storage replica over the cluster's store, with its metrics. */
import { join } from 'node:path';
import { z } from 'zod';
import { StorageReplica } from '../actors/replica.js';
import { SqliteStore } from '../store/sqlite.js';
import { openStore } from '../store/open.js';
import { historyLog, observedStore } from '../sim/history.js';
import { ChildCommand } from '../runtime/ipc.js';
import { readEtcdTls } from '../runtime/etcd-tls.js';
import { processInspector } from '../runtime/inspect.js';
import { replicaMetrics, serveMetrics } from './metrics.js';
import { MetricsPort, TlsConfig, exit, logger, send, transportFor } from './child-process.js';

/** etcd over TLS with a client certificate (PEM files: the members' CA, the store's certificate and key), for the local members of `up --store etcd`. */
const EtcdTlsConfig = z.object({ caFile: z.string(), certFile: z.string(), keyFile: z.string() }).optional();

const ReplicaConfig = z.object({
  tls: TlsConfig,
  etcdTls: EtcdTlsConfig,
  metricsPort: MetricsPort,
  id: z.string(),
  port: z.number().int(),
  /** The address to listen on (default 127.0.0.1; a host's own address under --netns). */
  host: z.string().optional(),
  dir: z.string(),
  /** The store, as store/open.ts parses it (memory, sqlite:PATH, etcd://...); `sqlite` is <dir>/store.sqlite. */
  store: z.string(),
  secret: z.string(),
  holdMs: z.number().int().nonnegative(),
  history: z.boolean(),
  pretty: z.boolean(),
  inspector: z.string().optional(),
  /** This process's credential for the inspector's /inspect (sent in a header). */
  inspectorToken: z.string().optional(),
  /** SQLite group commit (default on); the benchmarks turn it off to measure one transaction per write. */
  groupCommit: z.boolean().optional(),
  /** Advertised to node agents, which adopt it (default 1000 ms). */
  heartbeatIntervalMs: z.number().int().positive().optional(),
});

export async function replica(raw: unknown): Promise<void> {
  const cfg = ReplicaConfig.parse(raw);
  const log = logger(cfg.dir, cfg.id, cfg.pretty);
  // `sqlite` alone is the data directory's store.sqlite.
  const spec = cfg.store === 'sqlite' ? `sqlite:${join(cfg.dir, 'store.sqlite')}` : cfg.store;
  // A chaos run keeps the history with the store's decisions: in SQLite's history table, or in etcd's decision log.
  const etcdTls = cfg.etcdTls ? readEtcdTls(cfg.etcdTls) : undefined;
  const inner = openStore(spec, {
    sqlite: { groupCommit: cfg.groupCommit ?? true },
    etcd: { ...(cfg.history ? { log: historyLog(cfg.id) } : {}), ...(etcdTls ? { tls: etcdTls } : {}) },
  });
  const store =
    cfg.history && inner instanceof SqliteStore
      ? observedStore(inner, cfg.id, { add: (e) => inner.appendHistory(JSON.stringify({ t: Date.now(), ...e })) })
      : inner;
  const insp = cfg.inspector ? processInspector(`${cfg.inspector}?from=${cfg.id}`, cfg.inspectorToken) : undefined;
  // What the metrics read, once made (they are made first: the r observes through them).
  const made: { self?: StorageReplica } = {};
  const m = cfg.metricsPort !== undefined ? replicaMetrics(() => made.self) : undefined;
  const r = new StorageReplica({
    id: cfg.id,
    store,
    transport: transportFor(cfg.tls),
    secret: cfg.secret,
    port: cfg.port,
    holdMs: cfg.holdMs,
    ...(cfg.host ? { host: cfg.host } : {}),
    ...(cfg.heartbeatIntervalMs ? { heartbeatIntervalMs: cfg.heartbeatIntervalMs } : {}),
    ...(m ? { observe: m.observe } : {}),
    env: { log, inspect: insp?.inspect },
  });
  made.self = r;
  const metrics = m
    ? await serveMetrics(
        m.registry,
        () => ({
          ok: !r.isDismounted,
          replica: cfg.id,
          store: r.isDismounted ? 'dismounted' : 'mounted',
          sessions: r.sessionCount,
        }),
        cfg.metricsPort,
      )
    : undefined;
  await r.start();
  process.on('message', (m) => {
    const cmd = ChildCommand.safeParse(m);
    if (!cmd.success) return log.warn({ message: m }, 'bad command from launcher');
    if (cmd.data.type === 'watch') insp?.watch(cmd.data.on);
    else if (cmd.data.type === 'dismount') r.dismount();
    else if (cmd.data.type === 'mount') r.mount();
    else if (cmd.data.type === 'shutdown')
      void r
        .stop()
        .then(() => inner.shutdown())
        .then(
          () => exit(0),
          () => exit(1),
        );
  });
  const report = () =>
    send({
      type: 'status',
      role: 'replica',
      id: cfg.id,
      url: r.url,
      dismounted: r.isDismounted,
      ...(r.storeError ? { storeError: r.storeError.slice(0, 4096) } : {}),
      sessions: r.sessionCount,
      sessionList: r.sessionList().slice(0, 1000),
      stats: { ...r.stats },
      ...(metrics ? { metrics: metrics.url } : {}),
    });
  report();
  setInterval(report, 300).unref();
}
