/**
 * `safe-resume replica`: one storage replica in the foreground, for a host of its own (docs/deploy.md).
 * It serves node agents on --listen over the store --store names (etcd across hosts), with the cluster
 * key from --dir, and stops cleanly on SIGTERM or SIGINT.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { UsageError } from './args.js';
import { pino } from 'pino';
import { keyFileExposed, loadOrCreateSecret, SECRET_FILE } from '../actors/auth.js';
import { StorageReplica } from '../actors/replica.js';
import { openStore, parseStoreSpec } from '../store/open.js';
import { loadTlsFiles } from '../transport/tls.js';
import { WebSocketTransport } from '../transport/ws.js';
import { replicaMetrics, serveMetrics } from '../cluster/metrics.js';

export const REPLICA_HELP = `safe-resume replica --id NAME --store SPEC [options]

Run one storage replica in the foreground (a host of its own; docs/deploy.md). Stop it with SIGTERM or Ctrl-C.
  --id NAME              this replica's name (replica-1, ...), in its logs and metrics
  --store SPEC           etcd://HOST:PORT[,HOST:PORT...] (replicas on several hosts), sqlite:PATH or memory
  --listen HOST:PORT     where node agents connect (default 127.0.0.1:7000)
  --dir PATH             where the cluster key is (<dir>/cluster-secret, mode 0600: refused if others may read it; default ./.safe-resume).
                         It must exist: copy it from where 'safe-resume credentials issue' made it
  --tls-cert F --tls-key F --tls-ca F
                         serve wss:// with this certificate and key (PEM; it must name the address node
                         agents dial) and accept client certificates from this CA (docs/tls.md)
  --etcd-ca F [--etcd-cert F --etcd-key F]
                         reach etcd over TLS: the CA of its members' certificates, and a client
                         certificate and key if the members ask for one
  --etcd-move-pages      move the data pages of a store written by an earlier safe-resume to the
                         current keys (docs/etcd.md); only once every replica of that version is stopped
  --hold-ms MS           hold period of a lost session's locks (default 5000)
  --metrics HOST:PORT    serve /metrics (Prometheus) and /healthz there (default: none)
  --log FILE             pino JSON log (default: standard output)
`;

/** A usage mistake: the CLI prints it with a pointer to `safe-resume help` and exits 2. */
export class ReplicaUsageError extends UsageError {}

function hostPort(flag: string, v: string): { host: string; port: number } {
  const m = /^(\d{1,3}(?:\.\d{1,3}){3}|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(v);
  const port = Number(m?.[2]);
  if (!m || port > 65535) throw new ReplicaUsageError(`--${flag} ${JSON.stringify(v)}: expected HOST:PORT`);
  return { host: m[1]!, port };
}

function pem(flag: string, file: string): Buffer {
  try {
    const b = readFileSync(file);
    if (!b.toString('utf8').includes('-----BEGIN')) throw new Error('not a PEM file');
    return b;
  } catch (err) {
    throw new ReplicaUsageError(`--${flag} ${file}: ${(err as Error).message}`);
  }
}

/** Run the command until a signal stops it; resolves with the exit code. */
export async function replicaCommand(argv: string[], out: (s: string) => void): Promise<number> {
  const { values: v } = parseArgs({
    args: argv,
    options: {
      id: { type: 'string' },
      store: { type: 'string' },
      listen: { type: 'string' },
      dir: { type: 'string' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'tls-ca': { type: 'string' },
      'etcd-ca': { type: 'string' },
      'etcd-cert': { type: 'string' },
      'etcd-key': { type: 'string' },
      'etcd-move-pages': { type: 'boolean' },
      'hold-ms': { type: 'string' },
      metrics: { type: 'string' },
      log: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (v.help) {
    out(REPLICA_HELP);
    return 0;
  }
  if (!v.id || !/^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$/.test(v.id))
    throw new ReplicaUsageError('--id NAME is required (1-128 of A-Z a-z 0-9 . _ @ -)');
  if (!v.store) throw new ReplicaUsageError('--store SPEC is required (etcd://HOST:PORT,..., sqlite:PATH or memory)');
  let spec;
  try {
    spec = parseStoreSpec(v.store);
  } catch (err) {
    throw new ReplicaUsageError(`--store: ${(err as Error).message}`);
  }
  const listen = hostPort('listen', v.listen ?? '127.0.0.1:7000');
  const metrics = v.metrics !== undefined ? hostPort('metrics', v.metrics) : undefined;
  const holdMs = v['hold-ms'] === undefined ? 5000 : Number(v['hold-ms']);
  if (!Number.isSafeInteger(holdMs) || holdMs < 0)
    throw new ReplicaUsageError(`--hold-ms must be an integer >= 0, got ${JSON.stringify(v['hold-ms'])}`);
  const tlsFlags = [v['tls-cert'], v['tls-key'], v['tls-ca']];
  if (tlsFlags.some((f) => f !== undefined) && tlsFlags.some((f) => f === undefined))
    throw new ReplicaUsageError('--tls-cert, --tls-key and --tls-ca go together');
  if ((v['etcd-cert'] === undefined) !== (v['etcd-key'] === undefined))
    throw new ReplicaUsageError('--etcd-cert and --etcd-key go together');
  if ((v['etcd-cert'] !== undefined || v['etcd-ca'] !== undefined || v['etcd-move-pages']) && spec.kind !== 'etcd')
    throw new ReplicaUsageError('--etcd-* go with --store etcd://...');
  if (v['etcd-cert'] !== undefined && v['etcd-ca'] === undefined)
    throw new ReplicaUsageError('--etcd-cert needs --etcd-ca');
  const dir = resolve(v.dir ?? '.safe-resume');
  // A replica never makes a cluster key: one made here would not be the cluster's.
  if (!existsSync(join(dir, SECRET_FILE)))
    throw new ReplicaUsageError(
      `no cluster key at ${join(dir, SECRET_FILE)}: copy the cluster's (mode 0600) from where 'safe-resume credentials issue' made it, or pass --dir`,
    );
  const exposed = keyFileExposed(join(dir, SECRET_FILE));
  if (exposed) throw new ReplicaUsageError(exposed);
  const secret = loadOrCreateSecret(dir);
  // Everything this process creates (the SQLite store, its log, the log file) is its owner's alone.
  process.umask(0o077);
  const tls = v['tls-cert']
    ? loadTlsFiles({ certFile: v['tls-cert'], keyFile: v['tls-key']!, caFile: v['tls-ca']! })
    : undefined;
  const etcdTls = v['etcd-ca']
    ? {
        ca: pem('etcd-ca', v['etcd-ca']),
        cert: v['etcd-cert'] ? pem('etcd-cert', v['etcd-cert']) : undefined,
        key: v['etcd-key'] ? pem('etcd-key', v['etcd-key']) : undefined,
      }
    : undefined;

  const log = v.log
    ? pino({ base: { actor: v.id } }, pino.destination({ dest: v.log, sync: false, mkdir: true }))
    : pino({ base: { actor: v.id } });
  const store = openStore(spec, {
    etcd: { ...(etcdTls ? { tls: etcdTls } : {}), ...(v['etcd-move-pages'] ? { movePages: true } : {}) },
  });
  // The metrics are made before the replica they read (it reports to them): they read it once it is there.
  const made: { replica?: StorageReplica } = {};
  const m = metrics ? replicaMetrics(() => made.replica) : undefined;
  const replica = new StorageReplica({
    id: v.id,
    store,
    transport: new WebSocketTransport(tls ? { tls } : {}),
    secret,
    host: listen.host,
    port: listen.port,
    holdMs,
    ...(m ? { observe: m.observe } : {}),
    env: { log },
  });
  made.replica = replica;
  try {
    await store.ping();
  } catch (err) {
    log.warn(
      { err: String(err) },
      'the store does not answer yet: node agents are told it is unavailable until it does',
    );
  }
  await replica.start();
  const served =
    m && metrics
      ? await serveMetrics(
          m.registry,
          () => ({
            ok: !replica.isDismounted,
            replica: v.id!,
            store: replica.isDismounted ? 'dismounted' : 'mounted',
            sessions: replica.sessionCount,
          }),
          metrics.port,
          metrics.host,
        )
      : undefined;
  out(
    `${v.id} serving ${replica.url} over ${spec.kind === 'etcd' ? `etcd://${spec.endpoints.join(',')}${etcdTls ? ' (TLS)' : ''}` : v.store}${served ? `; metrics ${served.url}/metrics` : ''}\n`,
  );
  await new Promise<void>((done) => {
    process.once('SIGTERM', done);
    process.once('SIGINT', done);
  });
  log.info('stopping');
  await replica.stop();
  await served?.close();
  await store.shutdown();
  log.flush();
  return 0;
}
