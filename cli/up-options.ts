/** `up`'s options: from its flags and a --config file, each checked, with what goes together. */
import { parseArgs } from 'node:util';
import { resolve } from 'node:path';
import { readFileSync } from 'node:fs';
import { FAULTS, type Fault } from '../cluster/chaos.js';
import { parseStoreSpec } from '../store/open.js';
import { WebSocketTransport } from '../transport/ws.js';
import { loadTlsFiles, type TlsFiles } from '../transport/tls.js';
import { int, portNumber, UsageError } from './args.js';
import { helpFor } from './help.js';

export interface UpOptions {
  replicas: number;
  nodes: number;
  apps: number;
  store: 'sqlite' | 'memory' | 'etcd';
  etcdEndpoints: string[] | undefined;
  dir: string;
  holdMs: number;
  pauseTimeoutMs: number;
  port: number;
  intervalMs: number;
  inspectorPort: number;
  statelyPort: number | undefined;
  pretty: boolean;
  noColor: boolean;
  chaos: boolean;
  forS: number;
  seed: number;
  json: boolean;
  tls: TlsFiles | undefined;
  /** --netns: a plan file putting each process on a host (network namespace) of its own. */
  netns: string | undefined;
  /** --faults: chaos faults in this order instead of at random. */
  faults: Fault[] | undefined;
  /** --nbd-tcp: each node's export on 127.0.0.1 too, TLS-PSK only. */
  nbdTcp: boolean;
  /** --nbd-group: a group that may reach the export sockets too. */
  nbdGroup: string | undefined;
}

const UP_FLAGS = {
  netns: { type: 'string' },
  faults: { type: 'string' },
  'nbd-tcp': { type: 'boolean' },
  'nbd-group': { type: 'string' },
  'etcd-endpoints': { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  'tls-ca': { type: 'string' },
  replicas: { type: 'string' },
  nodes: { type: 'string' },
  apps: { type: 'string' },
  store: { type: 'string' },
  dir: { type: 'string' },
  'hold-ms': { type: 'string' },
  'pause-timeout-ms': { type: 'string' },
  port: { type: 'string' },
  'interval-ms': { type: 'string' },
  config: { type: 'string' },
  'inspector-port': { type: 'string' },
  stately: { type: 'boolean' },
  'stately-port': { type: 'string' },
  pretty: { type: 'boolean' },
  'no-color': { type: 'boolean' },
  chaos: { type: 'boolean' },
  for: { type: 'string' },
  seed: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

export function parseUp(argv: string[]): UpOptions | undefined {
  const { values: flags } = parseArgs({ args: argv, options: UP_FLAGS, strict: true });
  if (flags.help) return void process.stdout.write(helpFor('up'));
  // A config file gives defaults; flags on the command line win.
  let file: Record<string, unknown> = {};
  if (flags.config) {
    try {
      file = JSON.parse(readFileSync(flags.config, 'utf8')) as Record<string, unknown>;
    } catch (err) {
      throw new UsageError(`--config ${flags.config}: ${(err as Error).message}`);
    }
    if (typeof file !== 'object' || file === null || Array.isArray(file))
      throw new UsageError(`--config ${flags.config}: expected a JSON object`);
    for (const k of Object.keys(file))
      if (!(k in UP_FLAGS) || k === 'config')
        throw new UsageError(`--config ${flags.config}: unknown option ${JSON.stringify(k)}`);
  }
  const v = (k: keyof typeof UP_FLAGS): string | undefined => {
    const f = (flags as Record<string, unknown>)[k];
    const x = f ?? file[k];
    // As the command line would give it: a number or true in the file as its text.
    return x === undefined ? undefined : typeof x === 'string' ? x : JSON.stringify(x);
  };
  const b = (k: keyof typeof UP_FLAGS): boolean => {
    const f = (flags as Record<string, unknown>)[k];
    if (f !== undefined) return Boolean(f);
    const x = file[k];
    // In a config file a switch is true or false (JSON), never a string: "false" would read as on.
    if (x !== undefined && typeof x !== 'boolean')
      throw new UsageError(`--config ${flags.config}: ${k} must be true or false, got ${JSON.stringify(x)}`);
    return x === true;
  };
  const store = v('store') ?? 'sqlite';
  if (store !== 'sqlite' && store !== 'memory' && store !== 'etcd')
    throw new UsageError(`--store must be sqlite, etcd or memory, got ${JSON.stringify(store)}`);
  const endpoints = v('etcd-endpoints');
  if (endpoints !== undefined && store !== 'etcd') throw new UsageError('--etcd-endpoints goes with --store etcd');
  let etcdEndpoints: string[] | undefined;
  if (endpoints !== undefined) {
    try {
      const spec = parseStoreSpec(`etcd://${endpoints}`);
      etcdEndpoints = spec.kind === 'etcd' ? spec.endpoints : undefined;
    } catch (err) {
      throw new UsageError(`--etcd-endpoints: ${(err as Error).message}`);
    }
  }
  const o: UpOptions = {
    replicas: int('replicas', v('replicas'), 3, 1),
    nodes: int('nodes', v('nodes'), 2, 1),
    apps: int('apps', v('apps'), 2, 1),
    store,
    etcdEndpoints,
    dir: resolve(v('dir') ?? '.safe-resume'),
    holdMs: int('hold-ms', v('hold-ms'), 5000),
    pauseTimeoutMs: int('pause-timeout-ms', v('pause-timeout-ms'), 60_000, 1),
    port: portNumber('port', v('port'), 0),
    intervalMs: int('interval-ms', v('interval-ms'), 200),
    inspectorPort: portNumber('inspector-port', v('inspector-port'), 0),
    statelyPort: b('stately') ? portNumber('stately-port', v('stately-port'), 8080, 1) : undefined,
    pretty: b('pretty'),
    noColor: b('no-color'),
    chaos: b('chaos'),
    forS: int('for', v('for'), 60, 1),
    seed: int('seed', v('seed'), Date.now() % 1_000_000),
    json: b('json'),
    tls: tlsFlags(v('tls-cert'), v('tls-key'), v('tls-ca')),
    netns: v('netns'),
    faults: faultList(v('faults')),
    nbdTcp: b('nbd-tcp'),
    nbdGroup: v('nbd-group'),
  };
  if (o.port > 0 && o.port + o.replicas - 1 > 65535)
    throw new UsageError(
      `--port ${o.port} with ${o.replicas} replicas needs ports up to ${o.port + o.replicas - 1}; a port number is at most 65535`,
    );
  if (o.faults && !o.chaos) throw new UsageError('--faults goes with --chaos');
  if ((o.nbdTcp || o.nbdGroup !== undefined) && o.store === 'memory')
    throw new UsageError('--nbd-tcp and --nbd-group go with the NBD export of real processes: --store sqlite or etcd');
  if (o.netns && o.store === 'memory') throw new UsageError('--netns needs real processes: --store sqlite or etcd');
  if (o.netns && o.tls)
    throw new UsageError('--netns and --tls-* do not go together yet (the certificates name 127.0.0.1)');
  if (o.faults?.includes('etcd-leader-kill') && (o.store !== 'etcd' || o.etcdEndpoints))
    throw new UsageError('--faults etcd-leader-kill needs --store etcd on its local members');
  if (o.faults?.includes('link-cut') && !o.netns)
    throw new UsageError('--faults link-cut needs --netns (hosts whose links can be cut)');
  if (o.chaos && o.store === 'memory')
    throw new UsageError(
      '--chaos needs --store sqlite or etcd (real processes; the checker reads the history the store keeps)',
    );
  if (o.chaos && o.etcdEndpoints)
    throw new UsageError(
      '--chaos runs on the local etcd members (it starts the store empty and kills members); drop --etcd-endpoints',
    );
  if (o.chaos && o.nodes < 2) throw new UsageError('--chaos needs at least 2 nodes');
  return o;
}

/** A comma-separated list of fault kinds. */
function faultList(list: string | undefined): Fault[] | undefined {
  if (list === undefined) return undefined;
  const kinds = list.split(',').filter((k) => k.length > 0);
  const bad = kinds.find((k) => !(FAULTS as readonly string[]).includes(k));
  if (kinds.length === 0 || bad !== undefined)
    throw new UsageError(
      `--faults: expected kinds among ${FAULTS.join(', ')}${bad ? `, got ${JSON.stringify(bad)}` : ''}`,
    );
  return kinds as Fault[];
}

/** All three TLS files or none; each readable PEM (checked now, with the file named, not in a child). */
function tlsFlags(cert: string | undefined, key: string | undefined, ca: string | undefined): TlsFiles | undefined {
  const given = [cert, key, ca].filter((x) => x !== undefined).length;
  if (given === 0) return undefined;
  if (given !== 3) throw new UsageError('--tls-cert, --tls-key and --tls-ca go together');
  const files = { certFile: resolve(cert!), keyFile: resolve(key!), caFile: resolve(ca!) };
  try {
    new WebSocketTransport({ tls: loadTlsFiles(files) });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  return files;
}
