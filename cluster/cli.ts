#!/usr/bin/env node
/** The safe-resume command line. */
import { parseArgs } from 'node:util';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import os from 'node:os';
import { resolve, join } from 'node:path';
import { accessSync, constants, existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import Database from 'better-sqlite3';
import { FileKeptIds } from '../actors/kept.js';
import { dirHolder, isLauncher, lockDir } from './dir-lock.js';
import { formatEvent, type TimelineEvent } from './timeline.js';
import { EXIT, fromSystemError, OperatorError } from './operator-error.js';
import { isClusterFile, privateDataDir } from './private-dir.js';
import { pino } from 'pino';
import { Application } from '../actors/application.js';
import { LocalCluster } from './local.js';
import { runWorkload, type WorkloadStats } from './workload.js';
import type { Handle } from '../actors/application.js';
import { runSchedule } from '../sim/scheduler.js';
import { Launcher } from './launcher.js';
import { FAULTS, runChaos, type ChaosSummary, type Fault } from './chaos.js';
import { loadHostPlan } from './hosts.js';
import { replicaCommand, ReplicaUsageError } from './replica-cli.js';
import { formatReplay, formatSummary } from '../sim/run.js';
import { runSeedsParallel } from '../sim/parallel.js';
import { credentials, CredentialsUsageError } from './credentials-cli.js';
import { parseStoreSpec } from '../store/open.js';
import { SafeResumeError } from '../errors.js';
import { WebSocketTransport } from '../transport/ws.js';
import { loadTlsFiles, type TlsFiles } from '../transport/tls.js';
import { MAX_DISK_BYTES } from '../store/types.js';
import { targetUrl } from '../frontends/nbd.js';
import { didYouMean } from './suggest.js';
import { ALL_FLAGS, bashCompletion, COMMAND_FLAGS, COMMANDS, zshCompletion } from './completion.js';
import { logs } from './logs-cli.js';

const HELP = `safe-resume — pause applications through storage failures, resume them safely

Usage:
  safe-resume up [options]            start a local cluster (real processes) and show its status
  safe-resume status [<id>] [--target T] [-w] [--json]   every replica, node and handle of the running
                                      cluster (or of one replica or node, or one target's); -w: again
                                      every second (time in state, pause timeout left, writes/s)
  safe-resume kill <id>               SIGKILL a replica or node (replica-1, node-2, ...)
  safe-resume restart <id>            restart a replica or node (killing it first if it runs)
  safe-resume partition <node> [--for S]   cut a node off from every replica (heal after S seconds)
  safe-resume heal [<node>]           end partitions (of one node, or all)
  safe-resume dismount <replica> --for S   the replica's store is unavailable for S seconds
  safe-resume reboot-storage          restart every replica
  safe-resume move <app> --to <node>  move an application (with its requestId) to another node
  safe-resume write <target> <text> [--as NAME]   write text at offset 0 as an ad-hoc application
                                      (of principal default, as the workload's applications are)
  safe-resume read <target> [--offset N] [--length N] [--hex]   read a target as an ad-hoc reader
                                      (principal default; 1 MiB from offset 0 unless told, up to 16 MiB);
                                      on a terminal, data that is not printable text is shown as hex
  safe-resume create <target> --size SIZE [--node N]   create a disk of SIZE bytes (4G, 512M, 1T, 65536;
                                      K/M/G/T are powers of 1024; up to 1T), sparse, and print its NBD URL
  safe-resume events [--target T] [--since TIME|DURATION] [--follow]   the timeline: faults injected,
                                      processes down and up, and each handle's way through them (paused,
                                      resume granted or denied, why); --since 2026-12-02T10:00:00Z or 10m
                                      (s, m, h, d); --follow: then what happens next, until Ctrl-C
  safe-resume explain <target | requestId>   why a target or handle is where it is: its owner and who else
                                      may open it, who holds the lock, whether that session is alive,
                                      when the lock can lapse, the handles
  safe-resume grant <target> --principal P --mode read|write
                                      let principal P open a target (read, or write and read), whoever owns
                                      it (its owner does the same with app.grant; docs/security.md)
  safe-resume revoke <target> --principal P   take P's access away (its next open or resume is refused)
  safe-resume export <target> [--node N]   the URL a block client (qemu-io, QEMU) opens the target with:
                                      the node's Unix socket (acting as principal default), then, with
                                      up --nbd-tcp, its TLS address (a key: credentials nbd-psk)
  safe-resume down [--no-wait]        stop the cluster and wait until every process is gone (nothing
                                      running is fine: the cluster is down either way)
  safe-resume logs [<process>] [--follow]   the JSON logs in <dir>/logs/ (launcher, replica-N,
                                      node-N, ...), one pretty line each, merged by time; --follow: then
                                      what is logged next, until Ctrl-C; --json: the JSON lines as written
  safe-resume completion bash|zsh     print a shell completion script (eval "$(safe-resume completion bash)")
  safe-resume clean                   remove a stopped cluster's data (store, kept requestIds, logs, key)
  safe-resume sim [options]           run seeded fault schedules in the simulated world and check them
  safe-resume bench [--json] [--smoke] [--only GROUP,...]   run the benchmarks (in a Node with --expose-gc, as npm run bench)
  safe-resume fuzz [--frames N] [--connections N] [--seed N] [--json]
                                      malformed frames against a live replica while an application keeps
                                      working; reports crashes, the application's failures, replica memory
                                      (default 100,000 frames over 1,000 connections; docs/fuzz.md)
  safe-resume replica --id NAME --store etcd://HOST:PORT,... [--listen HOST:PORT] [--dir PATH] [--tls-* F] [--etcd-ca F [--etcd-cert F --etcd-key F]]
                                      run one storage replica on this host, in the foreground (docs/deploy.md;
                                      'safe-resume replica --help' for the options)
  safe-resume credentials issue --node NAME | --principal NAME [--out FILE]
                                      derive a node's or a principal's credential from the cluster key
                                      (docs/security.md; 'safe-resume credentials help' for the options)
  safe-resume credentials nbd-psk --principal NAME [--out DIR]
                                      a principal's TLS pre-shared key for the NBD export (DIR/keys.psk)
  safe-resume help [<command>]        show this help, or one command's (as <command> --help does)
  safe-resume --version               print the version

Every command takes --dir (default ./.safe-resume) to find the running cluster, and --json.

Options for up:
  --replicas N           storage replicas (default 3)
  --nodes N              node agents (default 2)
  --apps N               workload applications per node (default 2), named app-1, app-2, ... across nodes
  --store sqlite|etcd|memory
                         sqlite (default): real processes over <dir>/store.sqlite; etcd: real processes
                         over a local 3-member etcd in <dir>/etcd (etcd-1..3; needs Debian's etcd-server
                         and openssl; TLS only, and only clients with the certificate it makes in
                         <dir>/etcd/tls), or over --etcd-endpoints HOST:PORT,... of a running one (plain
                         HTTP); memory: everything in this one process, no control commands
  --dir PATH             data directory: store, cluster secret, kept requestIds, logs (default ./.safe-resume);
                         new, empty, or one an earlier up made: one holding other files is refused
  --hold-ms MS           hold period of a lost session's locks (default 5000)
  --pause-timeout-ms MS  how long a paused handle waits before it is invalidated (default 60000)
  --port N               first replica port; replicas use N, N+1, ... (default: free ports)
  --interval-ms MS       pause between workload writes (default 200)
  --inspector-port N     port of the inspector page on 127.0.0.1 (default: a free port; its address,
                         with the control token, is printed at start)
  --stately [--stately-port N]   also relay every event to the public Stately inspector from a page
                         on 127.0.0.1:N (default 8080; online only; its address is printed at start)
  --tls-cert F --tls-key F --tls-ca F
                         serve every replica over wss:// with this certificate and key (PEM; it must name
                         127.0.0.1 as an IP subjectAltName), and have nodes accept only a certificate from
                         this CA (docs/tls.md shows how to make them with openssl)
  --nbd-tcp              also serve each node's NBD export on 127.0.0.1 TCP, where a client must start
                         TLS and prove a principal with its pre-shared key (TLS-PSK; safe-resume
                         credentials nbd-psk); without it the export is only a Unix socket,
                         <dir>/nbd/<node>.sock, that only this user reaches (a client there acts as
                         principal default). The socket path must fit in 107 bytes: keep --dir short
  --nbd-group NAME       let group NAME reach the export sockets too (<dir>/nbd 0750, sockets 0660)
  --config FILE          JSON file with any of these options (flags win)
  --pretty               also print every process's log, pretty, on the terminal (coloured on a
                         terminal or with FORCE_COLOR=1)
  --no-color             no colour in any process's output (as NO_COLOR=1 does)
  --chaos --for S [--seed N] [--json]
                         drive a random fault schedule for S seconds, check the history, print a
                         summary and exit (non-zero on any violation)
  --faults K1,K2,...     chaos faults in this order (again from the start) instead of at random; kinds:
                         replica-kill, storage-reboot, partition, dismount, node-restart, app-move,
                         foreign-writer, etcd-leader-kill (--store etcd), link-cut (--netns)
  --netns FILE           run each process on a host of its own: a Linux network namespace you made, with
                         its address (JSON: {"hosts": {"replica-1": {"netns": "NS", "address": "IP"}, ...}},
                         every etcd-N, replica-N and node-N); needs root; docs/deploy.md

Options for sim:
  --seeds N              schedules to run (default 100); seeds start at --from (default 1)
  --from S               first seed
  --seed S               replay one seed and print its faults, verdict and trace
  --workers N            worker threads the seeds are spread over (default: one per core; 1 = this thread)
  --json                 print one JSON object (schedules, steps, faults, resumes, violations)
  Each run stops at its first violation; the summary lists every violating seed with its replay
  command, then the first one's trace. Exit code 1 if any guarantee (S1-S5, L1-L3) is violated.
  Soak: safe-resume sim --seeds 100000

Logs are pino JSON, one file per process, in <dir>/logs/.
`;

class UsageError extends Error {}

function int(name: string, value: string | undefined, dflt: number, min = 0): number {
  if (value === undefined) return dflt;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < min) throw new UsageError(`--${name} must be an integer >= ${min}, got ${JSON.stringify(value)}`);
  return n;
}

/** A TCP port from the command line (0: any free one). */
function portNumber(name: string, value: string | undefined, dflt: number, min = 0): number {
  const n = value === undefined ? dflt : Number(value);
  if (!Number.isSafeInteger(n) || n < min || n > 65535) throw new UsageError(`--${name} must be a port number from ${min} to 65535, got ${JSON.stringify(value)}`);
  return n;
}

interface UpOptions {
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

function parseUp(argv: string[]): UpOptions | undefined {
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
    if (typeof file !== 'object' || file === null || Array.isArray(file)) throw new UsageError(`--config ${flags.config}: expected a JSON object`);
    for (const k of Object.keys(file)) if (!(k in UP_FLAGS) || k === 'config') throw new UsageError(`--config ${flags.config}: unknown option ${JSON.stringify(k)}`);
  }
  const v = (k: keyof typeof UP_FLAGS): string | undefined => {
    const f = (flags as Record<string, unknown>)[k];
    const x = f ?? file[k];
    return x === undefined ? undefined : String(x);
  };
  const b = (k: keyof typeof UP_FLAGS): boolean => {
    const f = (flags as Record<string, unknown>)[k];
    if (f !== undefined) return Boolean(f);
    const x = file[k];
    // In a config file a switch is true or false (JSON), never a string: "false" would read as on.
    if (x !== undefined && typeof x !== 'boolean') throw new UsageError(`--config ${flags.config}: ${k} must be true or false, got ${JSON.stringify(x)}`);
    return x === true;
  };
  const store = v('store') ?? 'sqlite';
  if (store !== 'sqlite' && store !== 'memory' && store !== 'etcd') throw new UsageError(`--store must be sqlite, etcd or memory, got ${JSON.stringify(store)}`);
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
  if (o.port > 0 && o.port + o.replicas - 1 > 65535) throw new UsageError(`--port ${o.port} with ${o.replicas} replicas needs ports up to ${o.port + o.replicas - 1}; a port number is at most 65535`);
  if (o.faults && !o.chaos) throw new UsageError('--faults goes with --chaos');
  if ((o.nbdTcp || o.nbdGroup !== undefined) && o.store === 'memory') throw new UsageError('--nbd-tcp and --nbd-group go with the NBD export of real processes: --store sqlite or etcd');
  if (o.netns && o.store === 'memory') throw new UsageError('--netns needs real processes: --store sqlite or etcd');
  if (o.netns && o.tls) throw new UsageError('--netns and --tls-* do not go together yet (the certificates name 127.0.0.1)');
  if (o.faults?.includes('etcd-leader-kill') && (o.store !== 'etcd' || o.etcdEndpoints)) throw new UsageError('--faults etcd-leader-kill needs --store etcd on its local members');
  if (o.faults?.includes('link-cut') && !o.netns) throw new UsageError('--faults link-cut needs --netns (hosts whose links can be cut)');
  if (o.chaos && o.store === 'memory') throw new UsageError('--chaos needs --store sqlite or etcd (real processes; the checker reads the history the store keeps)');
  if (o.chaos && o.etcdEndpoints) throw new UsageError('--chaos runs on the local etcd members (it starts the store empty and kills members); drop --etcd-endpoints');
  if (o.chaos && o.nodes < 2) throw new UsageError('--chaos needs at least 2 nodes');
  return o;
}

/** A comma-separated list of fault kinds. */
function faultList(list: string | undefined): Fault[] | undefined {
  if (list === undefined) return undefined;
  const kinds = list.split(',').filter((k) => k.length > 0);
  const bad = kinds.find((k) => !(FAULTS as readonly string[]).includes(k));
  if (kinds.length === 0 || bad !== undefined) throw new UsageError(`--faults: expected kinds among ${FAULTS.join(', ')}${bad ? `, got ${JSON.stringify(bad)}` : ''}`);
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

async function up(argv: string[]): Promise<number> {
  const o = parseUp(argv);
  if (!o) return 0;
  // Every process it runs reads NO_COLOR (pino-pretty's colours follow it).
  if (o.noColor) process.env.NO_COLOR = '1';
  const made = takeDataDir(o.dir, o.store === 'memory' ? 'memory' : undefined);
  try {
    return await upIn(o, made);
  } catch (err) {
    // A run that failed leaves no directory of its own making behind (one it found stays).
    if (made) rmSync(made, { recursive: true, force: true });
    throw err;
  }
}

/** `up` once its data directory is taken (`made`: the directory it made for this run, if any). */
async function upIn(o: UpOptions, made: string | undefined): Promise<number> {
  if (o.store === 'memory') {
    await upInProcess(o);
    return 0;
  }
  const reusing = storeInUse(o);
  // One file; the launcher's lines say actor launcher, its node agent's actor cli (each key once a line).
  const logFile = pino.destination({ dest: join(o.dir, 'logs', 'launcher.log'), sync: false });
  // Open before anything can fail: a failed start removes the directory it made, and a log file still
  // being opened then failed with an unhandled 'error' (a stack trace and exit 1 instead of the one line).
  await once(logFile, 'ready');
  const agentLog = pino({ base: null }, logFile);
  const log = agentLog.child({ actor: 'launcher' });
  const need = [...(o.store === 'etcd' && !o.etcdEndpoints ? ['etcd-1', 'etcd-2', 'etcd-3'] : []), ...Array.from({ length: o.replicas }, (_, i) => `replica-${i + 1}`), ...Array.from({ length: o.nodes }, (_, i) => `node-${i + 1}`)];
  const hosts = o.netns ? loadHostPlan(o.netns, need) : undefined;
  const launcher = new Launcher({ dir: o.dir, replicas: o.replicas, nodes: o.nodes, apps: o.apps, holdMs: o.holdMs, pauseTimeoutMs: o.pauseTimeoutMs, intervalMs: o.intervalMs, port: o.port, history: o.chaos, pretty: o.pretty, inspectorPort: o.inspectorPort, statelyPort: o.statelyPort, log, agentLog, tls: o.tls, store: o.store === 'etcd' ? 'etcd' : 'sqlite', etcdEndpoints: o.etcdEndpoints, hosts, nbdTcp: o.nbdTcp, nbdGroup: o.nbdGroup });
  let stopping: Promise<void> | undefined;
  const stop = () => (stopping ??= launcher.down());
  // The first Ctrl-C (or SIGTERM) stops the cluster; a chaos run first stops its faults, heals and
  // says what it found. A second one is out at once, leaving no process and no lock.
  let started = false;
  let signalled: NodeJS.Signals | undefined;
  const interrupt = new AbortController();
  const onSignal = (sig: NodeJS.Signals) => {
    if (signalled) {
      launcher.killNow();
      if (!started && made) rmSync(made, { recursive: true, force: true });
      process.stderr.write(`safe-resume: ${sig} again: every process killed\n`);
      process.exit(EXIT.interrupted); // the lock goes with the 'exit' handler
    }
    signalled = sig;
    interrupt.abort();
    if (!(o.chaos && started)) void stop();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    await launcher.start();
  } catch (err) {
    await stop();
    if (signalled) throw new OperatorError(`interrupted (${signalled}) while the cluster was starting; every process it started is stopped`, EXIT.interrupted);
    throw err;
  }
  started = true;
  const running = async (): Promise<number> => {
    const say = (line: string) => (o.json ? process.stderr : process.stdout).write(line + '\n');
    say(`safe-resume: ${count(o.replicas, 'replica')} over ${o.store === 'etcd' ? `etcd (${launcher.etcd ? `local members in ${join(o.dir, 'etcd')}, TLS with the client certificate in ${join(o.dir, 'etcd', 'tls')}` : (o.etcdEndpoints ?? []).join(',')})` : join(o.dir, 'store.sqlite')}, ${count(o.nodes, 'node')} x ${count(o.apps, 'app')}`);
    if (reusing) say(`  ${reusing}`);
    for (const m of launcher.etcd?.members ?? []) say(`  ${m.id.padEnd(9)} ${m.endpoint}`);
    for (const [i, u] of launcher.replicaUrls.entries()) say(`  replica-${i + 1}  ${u}`);
    for (const [node, u] of launcher.nbdUrls) say(`  nbd       ${u}   (${node}: any target as a disk, as principal default, to this user only: qemu-io -f raw '${targetUrl(u, 'vm1.disk')}')`);
    for (const [node, u] of launcher.nbdTlsUrls) say(`  nbd-tls   ${u}   (${node}: TLS-PSK only; a key: safe-resume credentials nbd-psk --principal default --out DIR --dir ${o.dir})`);
    say(`  control   ${launcher.controlUrl}   (safe-resume status | kill | partition | write ... --dir ${o.dir})`);
    // The page addresses carry the control token (in the fragment): they open as printed.
    say(`  inspector ${launcher.inspector?.pageUrl ?? '-'}   (open it in a browser to watch every machine live)`);
    if (o.statelyPort !== undefined) say(`  stately   ${launcher.statelyUrl}   (the Stately inspector; needs an internet connection)`);
    if (o.chaos) {
      say(`chaos: ${o.forS}s of faults, seed ${o.seed}`);
      const summary = await runChaos(launcher, o.forS, o.seed, (k, d) => (say(`  fault ${k}: ${d}`), launcher.timeline.add({ kind: 'fault', what: `${k}: ${d}` })), o.faults, interrupt.signal);
      await stop();
      process.stdout.write((o.json ? JSON.stringify(summary) : formatChaos(summary)) + '\n');
      return summary.violations.length > 0 ? EXIT.failed : summary.interrupted ? EXIT.interrupted : 0;
    }
    // --json: the addresses as one JSON object on stdout, then a status line every 5 s, then the end.
    if (o.json) process.stdout.write(JSON.stringify({ event: 'up', store: launcher.storeSpec, etcd: launcher.etcd?.members.map((m) => ({ id: m.id, endpoint: m.endpoint })) ?? [], replicas: launcher.replicaUrls, nbd: Object.fromEntries(launcher.nbdUrls), nbdTls: Object.fromEntries(launcher.nbdTlsUrls), control: launcher.controlUrl, inspector: launcher.inspector?.pageUrl ?? null, ...(o.statelyPort !== undefined ? { stately: launcher.statelyUrl } : {}), reusing: reusing ?? null }) + '\n');
    const stopView = liveView(() => launcher.status(), process.stdout.isTTY === true && !o.pretty && !o.json, o.json);
    await new Promise<void>((done) => {
      const check = setInterval(() => stopping && (clearInterval(check), done()), 100);
    });
    stopView();
    process.stdout.write(o.json ? '{"event":"stopping"}\n' : 'stopping...\n');
    await stopping;
    process.stdout.write(o.json ? '{"event":"stopped"}\n' : 'stopped\n');
    return 0;
  };
  try {
    return await running();
  } catch (err) {
    // Whatever fails once the cluster is up brings it down with the error said: never a headless cluster.
    await stop();
    throw err;
  }
}

function formatChaos(s: ChaosSummary): string {
  return [
    `chaos seed ${s.seed}, ${s.seconds}s${s.interrupted ? `, interrupted after ${s.ranSeconds}s (stopped, healed and checked at once: L2 and L3 at the end, which need time to settle, are not checked)` : ''}`,
    `faults     ${Object.entries(s.faults).map(([k, v]) => `${k}=${v}`).join(' ') || 'none'}`,
    `pauses     ${s.pauses}`,
    `resumes    ${s.resumes.granted} granted, ${s.resumes.denied} denied`,
    `writes     ${s.writesAcknowledged} acknowledged`,
    `violations ${s.violations.length}`,
    ...s.violations.slice(0, 10).map((v) => `  ${v.guarantee} at ${v.t}: ${v.message}`),
  ].join('\n');
}

/** Redraw the status view in place on a terminal (every 0.5 s), as plain lines otherwise (every 5 s). */
function liveView(status: () => Record<string, unknown>, tty: boolean, json = false): () => void {
  let lines = 0;
  const render = () => {
    const st = status();
    // Piped or logged, each view says when it was taken; with --json it is one JSON line.
    if (json) return void process.stdout.write(JSON.stringify({ event: 'status', at: new Date().toISOString(), ...st }) + '\n');
    const size = terminalSize();
    const out = tty ? fitFrame(statusLines(st, size.cols < WIDE), size) : [`-- ${new Date().toISOString()}`, ...statusLines(st)];
    if (tty && lines > 0) process.stdout.write(`\x1b[${lines}A\x1b[0J`);
    process.stdout.write(out.join('\n') + '\n');
    lines = tty ? out.length : 0;
  };
  const timer = setInterval(render, tty ? 500 : 5000);
  render();
  return () => clearInterval(timer);
}

/** A terminal narrower than this gets the short handle lines. */
const WIDE = 120;

/** The terminal's size, 80x24 when it does not say. */
function terminalSize(): { cols: number; rows: number } {
  return { cols: process.stdout.columns || 80, rows: process.stdout.rows || 24 };
}

/**
 * A view redrawn in place, as a terminal of `cols` x `rows` shows it whole: each line cut to fit (a
 * line that wraps takes two rows, and the next redraw, going back one per line, would leave a stale
 * one), and at most `rows - 1` lines (the cursor takes the last row), those that do not fit counted.
 */
export function fitFrame(lines: string[], { cols, rows }: { cols: number; rows: number }): string[] {
  const height = Math.max(2, rows - 1);
  const shown = lines.length <= height ? lines : [...lines.slice(0, height - 1), `  +${lines.length - height + 1} more (a taller terminal or 'safe-resume status' shows every line)`];
  const width = Math.max(10, cols - 1);
  return shown.map((l) => (l.length <= width ? l : `${l.slice(0, width - 1)}…`));
}

/**
 * The status view: one line per replica and node, one per handle. `short`: handle lines for a narrow
 * terminal (state and times first; no verified count, replica, requestId or last error).
 */
function statusLines(st: Record<string, unknown>, short = false): string[] {
  const s = st as { etcd?: Array<{ id: string; state: string; endpoint: string }>; replicas: Array<{ id: string; state: string; sessions: number; storeError?: string | null }>; nodes: Array<{ id: string; state: string; replica: string | null; cause?: string | null; partitioned: boolean; nbd?: { url: string; tls?: string | null; connections: Array<{ target: string; principal?: string; state: string; reason: string | null; requests: number }> } | null }>; handles: Array<{ node: string; app: string; target: string; state: string; reason: string | null; acked: number; verified: number; failed: number; lastError: string | null; requestId?: string | null; inStateMs?: number; pauseLeftMs?: number | null; writesPerS?: number; hold?: string | null; holdLeftMs?: number | null }> };
  const out: string[] = [];
  const secs = (ms: number) => `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)}s`;
  for (const m of s.etcd ?? []) out.push(`${m.id.padEnd(10)} ${m.state.padEnd(11)} ${m.endpoint}`);
  for (const r of s.replicas) out.push(`${r.id.padEnd(10)} ${r.state.padEnd(11)} sessions=${r.sessions}${r.storeError ? `  store: ${r.storeError}` : ''}`);
  for (const n of s.nodes) out.push(`${n.id.padEnd(10)} ${n.state.padEnd(11)} on ${n.replica ?? '-'}${n.partitioned ? '  (partitioned)' : ''}${n.cause ? `  cause: ${n.cause}` : ''}`);
  for (const n of s.nodes) {
    if (n.nbd) out.push(`  ${`${n.id}/nbd`.padEnd(14)} ${n.nbd.url}${n.nbd.tls ? `  tls=${n.nbd.tls}` : ''}`);
    for (const c of n.nbd?.connections ?? []) out.push(`  ${`${n.id}/nbd`.padEnd(14)} ${c.target.padEnd(12)} ${c.state.padEnd(11)}${c.principal ? ` as=${c.principal}` : ''} in-flight=${c.requests}${c.reason ? ` reason=${c.reason}` : ''}`);
  }
  for (const h of s.handles) {
    const node = s.nodes.find((n) => n.id === h.node);
    const timing = `${h.inStateMs !== undefined ? ` for=${secs(h.inStateMs)}` : ''}${h.pauseLeftMs != null ? ` timeout-in=${secs(h.pauseLeftMs)}` : ''}${h.holdLeftMs != null ? ` hold-in=${secs(h.holdLeftMs)}` : h.hold ? ` hold=${h.hold}` : ''}${h.writesPerS !== undefined ? ` writes/s=${h.writesPerS}` : ''}`;
    if (short) {
      out.push(`  ${`${h.node}/${h.app}`.padEnd(14)} ${h.target.padEnd(12)} ${h.state.padEnd(11)}${timing.replace(/ writes\/s=\S+/, '')} acked=${h.acked} failed=${h.failed}${h.reason ? ` reason=${h.reason}` : ''}`);
      continue;
    }
    out.push(`  ${`${h.node}/${h.app}`.padEnd(14)} ${h.target.padEnd(12)} ${h.state.padEnd(11)}${timing} on=${node?.replica ?? '-'} acked=${h.acked} verified=${h.verified} failed=${h.failed}${h.reason ? ` reason=${h.reason}` : ''}${h.requestId ? ` requestId=${h.requestId}` : ''}${h.lastError ? ` last=${h.lastError}` : ''}`);
  }
  return out;
}

/** `up --store memory`: the whole cluster in this process (no control endpoint). */
/**
 * Make the data directory (private), and take it for this launcher: one cluster per directory. Says
 * what to do when it cannot be written or another launcher has it. Returns the topmost directory it
 * made, if it made one (a failed `up` removes it).
 */
function takeDataDir(dir: string, store?: string): string | undefined {
  let made: string | undefined;
  try {
    made = privateDataDir(dir);
    mkdirSync(join(dir, 'logs'), { recursive: true });
    accessSync(dir, constants.W_OK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOTDIR' || code === 'EEXIST') throw new OperatorError(`data directory ${dir} cannot be created: a file is in the way (${code}); choose another --dir`, EXIT.dirNotWritable);
    if (code === 'ENOENT') throw new OperatorError(`data directory ${dir} cannot be created (${code}); choose a directory you can write with --dir`, EXIT.dirNotWritable);
    throw fromSystemError(err, `data directory ${dir}`) ?? err;
  }
  const release = lockDir(dir, store);
  process.once('exit', release);
  return made;
}

/**
 * What `up` finds in the data directory from an earlier run: a line to say so ("reusing the store in D:
 * N targets, M kept requestIds"), or undefined for a fresh one. A store that cannot be used (read-only,
 * corrupt) stops `up` here, with what to do, instead of leaving replicas failing on it.
 */
function storeInUse(o: UpOptions): string | undefined {
  const kept = keptCount(o.dir, o.nodes);
  if (o.store === 'etcd') {
    const local = join(o.dir, 'etcd');
    return !o.etcdEndpoints && existsSync(local) && !o.chaos ? `reusing the etcd data in ${local}, ${count(kept, 'kept requestId')}` : undefined;
  }
  const path = join(o.dir, 'store.sqlite');
  if (!existsSync(path) || o.chaos) return undefined;
  try {
    accessSync(path, constants.R_OK | constants.W_OK);
  } catch {
    throw new OperatorError(`the store ${path} is read-only: make it writable (chmod u+w) or start a new cluster with another --dir`, EXIT.storeUnusable);
  }
  try {
    const db = new Database(path, { fileMustExist: true });
    try {
      const hasTargets = db.prepare("SELECT 1 FROM sqlite_master WHERE name = 'target_versions'").get() !== undefined;
      const targets = hasTargets ? (db.prepare('SELECT count(*) AS n FROM target_versions').get() as { n: number }).n : 0;
      return `reusing the store in ${o.dir}: ${count(targets, 'target')}, ${count(kept, 'kept requestId')}`;
    } finally {
      db.close();
    }
  } catch (err) {
    throw new OperatorError(`the store ${path} cannot be used (${(err as Error).message}): restore it from a backup, or move it away to start empty`, EXIT.storeUnusable);
  }
}

/** `1 node`, `2 nodes`. */
const count = (n: number, noun: string): string => `${n} ${noun}${n === 1 ? '' : 's'}`;

/** RequestIds the nodes keep on disk for their applications (lines of node-N.handles.jsonl still standing). */
function keptCount(dir: string, nodes: number): number {
  let n = 0;
  for (let i = 1; i <= nodes; i++) {
    const path = join(dir, `node-${i}.handles.jsonl`);
    if (!existsSync(path)) continue;
    const kept = new FileKeptIds(dir, `node-${i}`);
    n += kept.list().length;
    kept.close();
  }
  return n;
}

async function upInProcess(o: UpOptions): Promise<void> {
  const log = pino({ level: 'info' }, pino.destination({ dest: join(o.dir, 'logs', 'cluster.log'), sync: false }));
  const cluster = await LocalCluster.start({ dir: o.dir, replicas: o.replicas, store: 'memory', ...(o.tls ? { transport: new WebSocketTransport({ tls: loadTlsFiles(o.tls) }) } : {}), env: { log }, replica: { holdMs: o.holdMs }, ...(o.port ? { basePort: o.port } : {}) });
  const workloads: Array<{ node: string; app: string; handle: Handle; stats: WorkloadStats; stop: () => Promise<void> }> = [];
  let appNo = 0;
  for (let n = 1; n <= o.nodes; n++) {
    const agent = await cluster.addNode(`node-${n}`);
    for (let a = 1; a <= o.apps; a++) {
      const name = `app-${++appNo}`;
      const app = new Application(agent, { name, pauseTimeoutMs: o.pauseTimeoutMs });
      const handle = await app.open(`${name}.disk`);
      workloads.push({ node: agent.id, app: name, handle, ...runWorkload(handle, `${agent.id}/${name}`, o.intervalMs) });
    }
  }
  process.stdout.write(`safe-resume: ${count(o.replicas, 'replica')} (memory store, one process), ${count(o.nodes, 'node')} x ${count(o.apps, 'app')}\n`);
  const stopView = liveView(() => ({
      replicas: cluster.replicas.map((r) => ({ id: r.id, state: r.isDismounted ? 'dismounted' : 'serving', sessions: r.sessionCount })),
      nodes: cluster.nodes.map((n) => ({ id: n.id, state: n.state, replica: n.replica ?? null, partitioned: false })),
      handles: workloads.map((w) => ({ node: w.node, app: w.app, target: w.handle.target, state: w.handle.state, reason: w.handle.reason ?? null, acked: w.stats.acked, verified: w.stats.verified, failed: w.stats.failed, lastError: w.stats.lastError ?? null })),
  }), process.stdout.isTTY === true);
  await new Promise<void>((done) => {
    process.once('SIGINT', () => done());
    process.once('SIGTERM', () => done());
  });
  stopView();
  await Promise.all(workloads.map(async (w) => (await w.stop(), await w.handle.close())));
  await cluster.stop();
  log.flush();
  process.stdout.write('stopped\n');
}

/**
 * One command's help: its usage lines from HELP, its options section if it has one, and the options
 * every command takes. An unknown command gets the whole help.
 */
export function helpFor(cmd: string): string {
  const lines = HELP.split('\n');
  const usage: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i]!;
    if (l !== `  safe-resume ${cmd}` && !l.startsWith(`  safe-resume ${cmd} `)) continue;
    usage.push(l);
    // Continuation lines are indented to the description column.
    while (lines[i + 1]?.startsWith(' '.repeat(20))) usage.push(lines[++i]!);
  }
  if (usage.length === 0) return HELP;
  const from = lines.indexOf(`Options for ${cmd}:`);
  const options = from < 0 ? [] : lines.slice(from, lines.indexOf('', from) < 0 ? undefined : lines.indexOf('', from));
  return ['Usage:', ...usage, '', ...(options.length ? [...options, ''] : []), 'Every command takes --dir (default ./.safe-resume) to find the running cluster, --json, and --help.', ''].join('\n');
}

/** This package's version, from its package.json. */
function version(): string {
  const pkg = JSON.parse(readFileSync(fileURLToPath(new URL('../../package.json', import.meta.url)), 'utf8')) as { version: string };
  return pkg.version;
}

/** A command against the running cluster, through its control endpoint. */
async function control(cmd: string, argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { dir: { type: 'string' }, json: { type: 'boolean' }, for: { type: 'string' }, to: { type: 'string' }, as: { type: 'string' }, node: { type: 'string' }, size: { type: 'string' }, target: { type: 'string' }, principal: { type: 'string' }, mode: { type: 'string' }, 'no-wait': { type: 'boolean' }, watch: { type: 'boolean', short: 'w' }, offset: { type: 'string' }, length: { type: 'string' }, hex: { type: 'boolean' }, since: { type: 'string' }, follow: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
    allowPositionals: true,
    strict: true,
  });
  if (values.help) return void process.stdout.write(helpFor(cmd)), 0;
  const dir = resolve(values.dir ?? '.safe-resume');
  if (values['no-wait'] && cmd !== 'down') throw new UsageError('--no-wait is for down');
  if (cmd === 'down') {
    if (positionals.length > 0) throw new UsageError('down takes no arguments');
    return await down(dir, values.json === true, !values['no-wait']);
  }
  // The address and the control token of the running cluster (a file only its owner can read).
  let url: string;
  let token: string;
  try {
    ({ url, token } = JSON.parse(readFileSync(join(dir, 'control.json'), 'utf8')) as { url: string; token: string });
  } catch {
    // A launcher holding the directory without a control endpoint: `up --store memory`, or one starting.
    const holder = dirHolder(dir);
    const code = holder ? 'NO_CONTROL' : 'NOT_RUNNING';
    const message = !holder
      ? `no running cluster in ${dir} (start one with 'safe-resume up --dir ${dir}')`
      : holder.store === 'memory'
        ? `the cluster in ${dir} (launcher pid ${holder.pid}) runs with --store memory, in one process, and takes no commands: its status is the view its 'up' prints; stop it with Ctrl-C there or 'safe-resume down --dir ${dir}'`
        : `the cluster in ${dir} (launcher pid ${holder.pid}) is still starting: its control endpoint is not up yet; try again in a moment`;
    if (values.json) process.stdout.write(JSON.stringify({ ok: false, code, message }) + '\n');
    else process.stderr.write(`safe-resume ${cmd}: ${message}\n`);
    return EXIT.failed;
  }
  const need = (n: number, what: string) => {
    if (positionals.length !== n) throw new UsageError(`${cmd} takes ${what}`);
  };
  if (values.watch && cmd !== 'status') throw new UsageError('--watch (-w) is for status');
  if (values.target !== undefined && cmd !== 'events' && cmd !== 'status') throw new UsageError('--target is for events and status');
  if ((values.offset !== undefined || values.length !== undefined || values.hex) && cmd !== 'read') throw new UsageError('--offset, --length and --hex are for read');
  if ((values.since !== undefined || values.follow) && cmd !== 'events') throw new UsageError('--since and --follow are for events');
  const view: StatusFilter = { id: cmd === 'status' ? positionals[0] : undefined, target: cmd === 'status' ? values.target : undefined };
  if (values.watch) {
    if (positionals.length > 1) throw new UsageError('status takes at most one replica or node');
    return await watchStatus(dir, url, token, values.json === true, view);
  }
  const since = values.since === undefined ? undefined : parseSince(values.since);
  if (cmd === 'events' && values.follow) {
    need(0, 'no arguments (--target T for one target)');
    return await followEvents(dir, url, token, { target: values.target, since, json: values.json === true });
  }
  const forS = values.for === undefined ? undefined : int('for', values.for, 0, 1);
  let path = `/${cmd}`;
  let body: Record<string, unknown> = {};
  switch (cmd) {
    case 'status':
      if (positionals.length > 1) throw new UsageError('status takes at most one replica or node');
      break;
    case 'kill':
    case 'restart':
      need(1, 'one id (replica-1, node-2, ...)');
      body = { id: positionals[0] };
      break;
    case 'partition':
      need(1, 'one node');
      body = { node: positionals[0], ...(forS ? { for: forS } : {}) };
      break;
    case 'heal':
      body = positionals[0] ? { node: positionals[0] } : {};
      break;
    case 'dismount':
      need(1, 'one replica');
      if (!forS) throw new UsageError('dismount needs --for <seconds>');
      body = { replica: positionals[0], for: forS };
      break;
    case 'reboot-storage':
    case 'down':
      need(0, 'no arguments');
      break;
    case 'move':
      need(1, 'one application and --to <node>');
      if (!values.to) throw new UsageError('move needs --to <node>');
      body = { app: positionals[0], to: values.to };
      break;
    case 'write':
      need(2, '<target> <text>');
      body = { target: positionals[0], text: positionals[1], ...(values.as ? { as: values.as } : {}) };
      break;
    case 'read':
      need(1, '<target>');
      body = { target: positionals[0], ...(values.offset !== undefined ? { offset: int('offset', values.offset, 0) } : {}), ...(values.length !== undefined ? { length: int('length', values.length, 0, 1) } : {}) };
      break;
    case 'events':
      need(0, 'no arguments (--target T for one target)');
      break;
    case 'explain':
      need(1, '<target | requestId>');
      body = { what: positionals[0] };
      break;
    case 'grant':
      need(1, '<target> --principal P --mode read|write');
      if (values.principal === undefined) throw new UsageError('grant needs --principal P');
      if (values.mode !== 'read' && values.mode !== 'write') throw new UsageError(`grant needs --mode read or --mode write${values.mode === undefined ? '' : `, not ${JSON.stringify(values.mode)}`}`);
      body = { target: positionals[0], principal: values.principal, mode: values.mode };
      break;
    case 'revoke':
      need(1, '<target> --principal P');
      if (values.principal === undefined) throw new UsageError('revoke needs --principal P');
      body = { target: positionals[0], principal: values.principal };
      break;
    case 'create':
      need(1, '<target> --size SIZE');
      if (values.size === undefined) throw new UsageError('create needs --size (e.g. --size 4G)');
      body = { target: positionals[0], size: parseSize(values.size) };
      break;
    case 'export':
      need(1, '<target> [--node N]');
      break;
  }
  if (values.node !== undefined && cmd !== 'export' && cmd !== 'create') throw new UsageError(`--node is for export and create`);
  if (values.size !== undefined && cmd !== 'create') throw new UsageError(`--size is for create`);
  if (values.principal !== undefined && cmd !== 'grant' && cmd !== 'revoke') throw new UsageError('--principal is for grant and revoke');
  if (values.mode !== undefined && cmd !== 'grant') throw new UsageError('--mode is for grant');
  if (cmd === 'status') path = '/status?hold=1';
  else if (cmd === 'export') path = '/status';
  else if (cmd === 'events') path = `/events${values.target !== undefined ? `?target=${encodeURIComponent(values.target)}` : ''}`;
  let res: Response;
  try {
    const authorization = `Bearer ${token}`;
    const signal = AbortSignal.timeout(CONTROL_DEADLINE_MS);
    res = await fetch(url + path, cmd === 'status' || cmd === 'export' || cmd === 'events' ? { headers: { authorization }, signal } : { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json', authorization }, signal });
  } catch (err) {
    if ((err as Error).name === 'TimeoutError') throw new OperatorError(`the launcher in ${dir} did not answer ${cmd} within ${CONTROL_DEADLINE_MS / 1000} s (it is at ${url})`, EXIT.timeout);
    throw new OperatorError(`the cluster in ${dir} does not answer at ${url}: it is not running (a stale control.json; 'safe-resume down --dir ${dir}' clears it)`, EXIT.failed);
  }
  let out = (await res.json()) as { ok: boolean; code?: string; message?: string; deadline?: boolean } & Record<string, unknown>;
  if (cmd === 'export' && out.ok) out = exportUrl(out, positionals[0]!, values.node);
  if (cmd === 'status' && out.ok && (view.id !== undefined || view.target !== undefined)) out = filterStatus(out, view);
  if (cmd === 'events' && out.ok && since !== undefined) out = { ...out, events: (out.events as TimelineEvent[]).filter((e) => e.at >= since) };
  if (cmd === 'create' && out.ok) {
    // The URL to open it with, from the cluster's status (none if no node serves an export).
    const st = (await (await fetch(url + '/status', { headers: { authorization: `Bearer ${token}` } })).json()) as Record<string, unknown>;
    const at = exportUrl(st, positionals[0]!, values.node);
    out = { ...out, url: at.ok ? at.url : null, ...(at.ok ? { node: at.node, ...(at.tls ? { tls: at.tls } : {}) } : {}) };
  }
  if (values.json) process.stdout.write(JSON.stringify(out) + '\n');
  else if (!out.ok) process.stderr.write(`safe-resume ${cmd}: ${out.code}: ${out.message}\n`);
  else if (cmd === 'status') process.stdout.write((statusLines(out).join('\n') || `no handle or NBD connection on ${String(view.target)}`) + '\n');
  else if (cmd === 'read') showRead(out, values.hex === true);
  else if (cmd === 'explain' || cmd === 'grant' || cmd === 'revoke') process.stdout.write(String(out.text) + '\n');
  else if (cmd === 'events') process.stdout.write((out.events as TimelineEvent[]).map(formatEvent).join('\n') + ((out.events as TimelineEvent[]).length ? '\n' : ''));
  else if (cmd === 'export') process.stdout.write(`${String(out.url)}\n${out.tls ? `${String(out.tls)}\n` : ''}`);
  else if (cmd === 'create') process.stdout.write(`${String(out.target)}: ${formatSize(Number(out.size))} (${String(out.size)} bytes)${out.created ? '' : ', as it already was'}\n${out.url ? String(out.url) : '(no node serves an NBD export)'}\n`);
  else process.stdout.write(done(cmd, out) + '\n');
  // An id that names no process (kill replica-9) is a command line to correct: the answer lists the ids.
  if (!out.ok && out.code === 'INVALID_ARGUMENT' && ID_COMMANDS.has(cmd)) return EXIT.usage;
  return out.ok ? 0 : out.deadline ? EXIT.timeout : out.code === 'NOT_FOUND' ? EXIT.notFound : EXIT.failed;
}

/** What `status` is narrowed to: one replica or node (`status node-1`), or one target's handles (`--target`). */
interface StatusFilter {
  id: string | undefined;
  target: string | undefined;
}

/**
 * The status of one replica or node (its line, and a node's handles and NBD connections), or of one
 * target (its handles and connections, and the nodes they are on). An id the cluster does not have is
 * NOT_FOUND.
 */
function filterStatus(st: Record<string, unknown>, f: StatusFilter): { ok: boolean; code?: string; message?: string } & Record<string, unknown> {
  type Node = { id: string; nbd?: { connections: Array<{ target: string }> } | null };
  let replicas = (st.replicas ?? []) as Array<{ id: string }>;
  let nodes = (st.nodes ?? []) as Node[];
  let etcd = st.etcd as Array<{ id: string }> | undefined;
  let handles = (st.handles ?? []) as Array<{ node: string; target: string }>;
  if (f.id !== undefined) {
    const ids = [...(etcd ?? []), ...replicas, ...nodes].map((x) => x.id);
    if (!ids.includes(f.id)) return { ok: false, code: 'NOT_FOUND', message: `no replica or node called ${JSON.stringify(f.id)}${didYouMean(f.id, ids)} (there are: ${ids.join(', ')})` };
    etcd = etcd?.filter((m) => m.id === f.id);
    replicas = replicas.filter((r) => r.id === f.id);
    nodes = nodes.filter((n) => n.id === f.id);
    handles = handles.filter((h) => h.node === f.id);
  }
  if (f.target !== undefined) {
    handles = handles.filter((h) => h.target === f.target);
    nodes = nodes
      .map((n) => (n.nbd ? { ...n, nbd: { ...n.nbd, connections: n.nbd.connections.filter((c) => c.target === f.target) } } : n))
      .filter((n) => handles.some((h) => h.node === n.id) || (n.nbd?.connections.length ?? 0) > 0);
    replicas = [];
    etcd = etcd ? [] : undefined;
  }
  return { ...st, ok: true, ...(etcd ? { etcd } : {}), replicas, nodes, handles };
}

/** `--since`: a time (ISO 8601, e.g. 2026-12-02T10:00:00Z) or how long ago (90s, 10m, 2h, 1d, 500ms), as ms since the epoch. */
function parseSince(text: string): number {
  const d = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(text.trim());
  if (d) return Date.now() - Number(d[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[d[2] as 'ms' | 's' | 'm' | 'h' | 'd'];
  const at = /^\d{4}-\d\d-\d\d/.test(text) ? Date.parse(text) : NaN;
  if (Number.isNaN(at)) throw new UsageError(`--since ${JSON.stringify(text)}: give a time (2026-12-02T10:00:00Z) or how long ago (30s, 10m, 2h, 1d)`);
  return at;
}

/**
 * `events --follow`: the events so far (since `since`), then each one as it is added, until Ctrl-C or
 * until the cluster stops (exit 0 either way). With --json, one event per line.
 */
async function followEvents(dir: string, url: string, token: string, o: { target: string | undefined; since: number | undefined; json: boolean }): Promise<number> {
  let stop = false;
  let wake: () => void = () => undefined;
  const quit = () => ((stop = true), wake());
  process.once('SIGINT', quit);
  process.once('SIGTERM', quit);
  let after = 0;
  while (!stop) {
    const q = new URLSearchParams({ ...(o.target !== undefined ? { target: o.target } : {}), ...(after > 0 ? { after: String(after) } : {}) });
    let got: { events: TimelineEvent[]; next: number } | undefined;
    try {
      got = (await (await fetch(`${url}/events${q.size ? `?${q}` : ''}`, { headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(5000) })).json()) as { events: TimelineEvent[]; next: number };
    } catch {
      if (!existsSync(join(dir, 'control.json'))) {
        process.stdout.write(o.json ? JSON.stringify({ ok: false, code: 'NOT_RUNNING', message: `the cluster in ${dir} stopped` }) + '\n' : `the cluster in ${dir} stopped\n`);
        return 0;
      }
    }
    if (got) {
      const events = got.events.filter((e) => o.since === undefined || e.at >= o.since);
      if (events.length) process.stdout.write(events.map((e) => (o.json ? JSON.stringify(e) : formatEvent(e))).join('\n') + '\n');
      after = got.next;
    }
    await new Promise<void>((r) => {
      const t = setTimeout(r, 500);
      wake = () => (clearTimeout(t), r());
    });
  }
  return 0;
}

/**
 * What `read` read: the bytes as they are when piped; on a terminal, text as text and anything else
 * (control bytes, not UTF-8) as a hex dump, never raw: data must not drive the terminal. --hex: a hex
 * dump anywhere.
 */
function showRead(out: Record<string, unknown>, hex: boolean): void {
  const data = Buffer.from(String(out.base64 ?? ''), 'base64');
  const offset = Number(out.offset ?? 0);
  const tty = process.stdout.isTTY === true;
  if (hex) return void process.stdout.write(hexDump(data, offset));
  if (!tty) return void process.stdout.write(data);
  if (data.length === 0) return void process.stderr.write(`(${String(out.target)}: no bytes at offset ${offset})\n`);
  if (isText(data)) return void process.stdout.write(data.toString('utf8') + (data.at(-1) === 0x0a ? '' : '\n'));
  process.stdout.write(hexDump(data, offset));
  process.stderr.write(`(${String(out.target)}: not printable text, shown as hex; pipe it for the bytes: safe-resume read ${String(out.target)} > FILE)\n`);
}

/** UTF-8 text without control characters other than tab and line ends. */
function isText(data: Buffer): boolean {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(data);
  } catch {
    return false;
  }
  return !/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u0080-\u009f]/.test(text);
}

/** The bytes as `hexdump -C` shows them, offsets from `offset`; runs of the same line are one `*`. */
function hexDump(data: Buffer, offset: number): string {
  const out: string[] = [];
  let prev = '';
  let starred = false;
  for (let i = 0; i < data.length; i += 16) {
    const row = data.subarray(i, i + 16);
    const key = row.toString('hex');
    if (key === prev && row.length === 16) {
      if (!starred) out.push('*');
      starred = true;
      continue;
    }
    prev = key;
    starred = false;
    const hexes = [...row].map((b) => b.toString(16).padStart(2, '0'));
    const cols = `${hexes.slice(0, 8).join(' ')}${hexes.length > 8 ? `  ${hexes.slice(8).join(' ')}` : ''}`;
    out.push(`${(offset + i).toString(16).padStart(8, '0')}  ${cols.padEnd(48)}  |${[...row].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('')}|`);
  }
  if (starred) out.push((offset + data.length).toString(16).padStart(8, '0'));
  return out.length ? out.join('\n') + '\n' : '';
}

/** What a command that changes the cluster did, in a sentence (its --json answer has the fields). */
function done(cmd: string, out: Record<string, unknown>): string {
  const names = (v: unknown) => (Array.isArray(v) ? v.map(String).join(', ') : String(v));
  switch (cmd) {
    case 'kill':
      return `killed ${String(out.killed)}`;
    case 'restart':
      return `restarted ${String(out.restarted)}`;
    case 'partition':
      return `${String(out.partitioned)} partitioned${out.healsInS ? `; it heals in ${String(out.healsInS)} s` : ` until 'safe-resume heal ${String(out.partitioned)}'`}`;
    case 'heal':
      return (out.healed as unknown[]).length ? `healed ${names(out.healed)}` : 'nothing was partitioned';
    case 'dismount':
      return `${String(out.dismounted)}'s store dismounted; it mounts again in ${String(out.mountsInS)} s`;
    case 'reboot-storage':
      return `restarted ${names(out.rebooted)}`;
    case 'move':
      return `moved ${String(out.moved)} from ${String(out.from)} to ${String(out.to)}${out.requestId ? `, resuming requestId ${String(out.requestId)}` : ', opening afresh'}`;
    case 'write':
      return `wrote ${String(out.bytes)} byte${out.bytes === 1 ? '' : 's'} to ${String(out.target)} as ${String(out.as)} (requestId ${String(out.requestId)}, version ${String(out.version)})`;
    default:
      return Object.entries(out).filter(([k]) => k !== 'ok').map(([k, v]) => `${k}: ${typeof v === 'string' ? v : JSON.stringify(v)}`).join('\n');
  }
}

/** The commands whose argument is a replica's or a node's id. */
const ID_COMMANDS = new Set(['kill', 'restart', 'partition', 'heal', 'dismount']);

/**
 * `status -w`: the status every second until Ctrl-C, redrawn in place on a terminal, as timestamped
 * blocks when piped, as JSON lines with --json. Ends by itself (exit 0) when the cluster stops.
 */
async function watchStatus(dir: string, url: string, token: string, json: boolean, view: StatusFilter): Promise<number> {
  const tty = process.stdout.isTTY === true && !json;
  let stop = false;
  let wake: () => void = () => undefined;
  const quit = () => ((stop = true), wake());
  process.once('SIGINT', quit);
  process.once('SIGTERM', quit);
  let lines = 0;
  while (!stop) {
    const at = new Date().toISOString();
    let st: Record<string, unknown> | undefined;
    try {
      st = (await (await fetch(url + '/status?hold=1', { headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(5000) })).json()) as Record<string, unknown>;
    } catch {
      if (!existsSync(join(dir, 'control.json'))) {
        process.stdout.write(json ? JSON.stringify({ at, ok: false, code: 'NOT_RUNNING', message: `the cluster in ${dir} stopped` }) + '\n' : `${at}  the cluster in ${dir} stopped\n`);
        return 0;
      }
    }
    if (st?.ok && (view.id !== undefined || view.target !== undefined)) {
      st = filterStatus(st, view);
      if (!st.ok) throw new OperatorError(`${String(st.code)}: ${String(st.message)}`, EXIT.notFound);
    }
    if (json) process.stdout.write(JSON.stringify({ at, ...(st ?? { ok: false, code: 'UNAVAILABLE', message: 'the launcher did not answer within 5 s' }) }) + '\n');
    else {
      const size = terminalSize();
      const view = [`safe-resume status  ${at}  (every second; Ctrl-C to stop)`, ...(st ? statusLines(st, tty && size.cols < WIDE) : ['  the launcher did not answer within 5 s'])];
      const out = tty ? fitFrame(view, size) : view;
      if (tty && lines > 0) process.stdout.write(`\x1b[${lines}A\x1b[0J`);
      process.stdout.write(out.join('\n') + '\n');
      lines = tty ? out.length : 0;
    }
    await new Promise<void>((r) => {
      const t = setTimeout(r, 1000);
      wake = () => (clearTimeout(t), r());
    });
  }
  return 0;
}

/** How long a command waits for the launcher's answer (its own deadlines for the storage are 10 s). */
const CONTROL_DEADLINE_MS = 30_000;

/**
 * Stop the cluster in `dir` and, unless told not to, wait until its launcher (and so every process it
 * started) is gone. Nothing running is not an error: the cluster is down either way.
 */
async function down(dir: string, json: boolean, wait: boolean): Promise<number> {
  const say = (out: Record<string, unknown>, line: string) => process.stdout.write((json ? JSON.stringify(out) : line) + '\n');
  let control: { url: string; token: string; pid: number } | undefined;
  try {
    control = JSON.parse(readFileSync(join(dir, 'control.json'), 'utf8')) as { url: string; token: string; pid: number };
  } catch {
    control = undefined;
  }
  const pid = dirHolder(dir)?.pid ?? (control && isLauncher(control.pid) ? control.pid : undefined);
  if (pid === undefined) {
    // A control.json left by a launcher that is gone says nothing runs: it goes too.
    if (control) rmSync(join(dir, 'control.json'), { force: true });
    say({ ok: true, running: false }, `no cluster is running in ${dir}`);
    return 0;
  }
  try {
    if (!control) throw new Error('no control endpoint yet');
    await fetch(control.url + '/down', { method: 'POST', body: '{}', headers: { 'content-type': 'application/json', authorization: `Bearer ${control.token}` }, signal: AbortSignal.timeout(5000) });
  } catch {
    process.kill(pid, 'SIGTERM'); // still starting, or not answering: the signal stops it the same way
  }
  if (!wait) {
    say({ ok: true, running: true, stopping: true, pid }, `stopping the cluster in ${dir} (launcher pid ${pid})`);
    return 0;
  }
  const deadline = Date.now() + DOWN_WAIT_MS;
  while (isLauncher(pid)) {
    if (Date.now() > deadline) throw new OperatorError(`the launcher (pid ${pid}) did not stop within ${DOWN_WAIT_MS / 1000} s; stop it with 'kill -9 ${pid}'`, EXIT.timeout);
    await new Promise((r) => setTimeout(r, 100));
  }
  say({ ok: true, running: false, stopped: pid }, `stopped the cluster in ${dir} (launcher pid ${pid} and every process it ran)`);
  return 0;
}

/** Remove a stopped cluster's data: its store, the nodes' kept requestIds, its logs and its key. */
async function clean(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, options: { dir: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true });
  if (values.help) return void process.stdout.write(helpFor('clean')), 0;
  if (positionals.length > 0) throw new UsageError('clean takes no arguments');
  const dir = resolve(values.dir ?? '.safe-resume');
  const say = (out: Record<string, unknown>, line: string) => process.stdout.write((values.json ? JSON.stringify(out) : line) + '\n');
  if (!existsSync(dir)) {
    say({ ok: true, removed: [], kept: [] }, `nothing to clean: ${dir} does not exist`);
    return 0;
  }
  const holder = dirHolder(dir);
  if (holder) throw new OperatorError(`a cluster is running in ${dir} (launcher pid ${holder.pid}): stop it first with 'safe-resume down --dir ${dir}'`, EXIT.dirInUse);
  const names = readdirSync(dir);
  const removed = names.filter(isClusterFile);
  for (const n of removed) rmSync(join(dir, n), { recursive: true, force: true });
  const kept = names.filter((n) => !removed.includes(n));
  if (kept.length === 0) rmSync(dir, { recursive: true, force: true });
  say({ ok: true, removed, kept }, `removed ${removed.length === 0 ? 'nothing' : removed.join(', ')} from ${dir}${kept.length ? `; left what is not a cluster's: ${kept.join(', ')}` : ' (and the directory)'}`);
  return 0;
}

/** `logs [process] [--follow]`: the cluster's logs, pretty (logs-cli.ts); no running cluster needed. */
async function logsCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, options: { dir: { type: 'string' }, json: { type: 'boolean' }, follow: { type: 'boolean', short: 'f' }, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true });
  if (values.help) return void process.stdout.write(helpFor('logs')), 0;
  if (positionals.length > 1) throw new UsageError('logs takes at most one process (launcher, replica-1, node-1, ...)');
  return await logs(resolve(values.dir ?? '.safe-resume'), positionals[0], { follow: values.follow === true, json: values.json === true }, (t) => process.stdout.write(t));
}

/** `completion bash|zsh`: a completion script for the shell. */
function completion(argv: string[]): number {
  const { values, positionals } = parseArgs({ args: argv, options: { help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true });
  if (values.help) return void process.stdout.write(helpFor('completion')), 0;
  const shell = positionals[0];
  if (positionals.length !== 1 || (shell !== 'bash' && shell !== 'zsh')) throw new UsageError(`completion takes bash or zsh${shell === undefined ? '' : `, not ${JSON.stringify(shell)}`}`);
  process.stdout.write(shell === 'bash' ? bashCompletion() : zshCompletion());
  return 0;
}

/** How long `down` waits for the launcher to stop its processes (each child gets 5 s before SIGKILL). */
const DOWN_WAIT_MS = 30_000;

/** A size as people write it: 4G, 512M, 1T, 4GiB, 65536 (K, M, G, T: powers of 1024). */
export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (!m) throw new UsageError(`--size ${JSON.stringify(text)}: give bytes or a number with K, M, G or T (e.g. 4G)`);
  const unit = m[2]!.toUpperCase();
  const bytes = Number(m[1]) * (unit ? 1024 ** ('KMGT'.indexOf(unit) + 1) : 1);
  if (!Number.isSafeInteger(bytes) || bytes < 1 || bytes > MAX_DISK_BYTES) throw new UsageError(`--size ${text}: a disk is a whole number of bytes from 1 to 1T`);
  return bytes;
}

/** 4294967296 -> "4 GiB"; sizes that are not whole units in bytes. */
function formatSize(n: number): string {
  for (const [unit, f] of [['TiB', 2 ** 40], ['GiB', 2 ** 30], ['MiB', 2 ** 20], ['KiB', 2 ** 10]] as const) if (n >= f && n % f === 0) return `${n / f} ${unit}`;
  return `${n} bytes`;
}

/** The URL a block client opens `target` with on `node` (default: the first node with an export). */
function exportUrl(status: Record<string, unknown>, target: string, node: string | undefined): { ok: boolean; code?: string; message?: string } & Record<string, unknown> {
  const nodes = (status.nodes ?? []) as Array<{ id: string; nbd?: { url: string; tls?: string | null } | null }>;
  if (node !== undefined && !nodes.some((n) => n.id === node)) throw new UsageError(`no node called ${JSON.stringify(node)}`);
  const at = nodes.find((n) => (node === undefined || n.id === node) && n.nbd);
  if (!at?.nbd) return { ok: false, code: 'UNAVAILABLE', message: node ? `${node} serves no NBD export (it is down, or on a host of its own)` : 'no node serves an NBD export' };
  return { ok: true, target, node: at.id, url: targetUrl(at.nbd.url, target), ...(at.nbd.tls ? { tls: targetUrl(at.nbd.tls, target) } : {}) };
}

async function sim(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { seeds: { type: 'string' }, from: { type: 'string' }, seed: { type: 'string' }, workers: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(helpFor('sim'));
    return 0;
  }
  if (values.seed !== undefined) {
    const seed = int('seed', values.seed, 0);
    const r = await runSchedule(seed);
    if (values.json) {
      const { history, ...rest } = r;
      process.stdout.write(JSON.stringify({ ...rest, events: history.length }) + '\n');
    } else process.stdout.write(formatReplay(r) + '\n');
    return r.violations.length > 0 ? 1 : 0;
  }
  const count = int('seeds', values.seeds, 100, 1);
  const from = int('from', values.from, 1);
  const tty = process.stderr.isTTY === true && !values.json;
  const workers = int('workers', values.workers, os.availableParallelism(), 1);
  let done = 0;
  const summary = await runSeedsParallel(from, count, workers, () => {
    if (tty && ++done % 100 === 0) process.stderr.write(`\r${done}/${count} schedules`);
  });
  if (tty) process.stderr.write('\r');
  process.stdout.write((values.json ? JSON.stringify(summary) : formatSummary(summary)) + '\n');
  const first = summary.violations[0];
  // The first violating seed again, in this thread (a seed replays exactly): its trace.
  if (first && !values.json) process.stdout.write('\n' + formatReplay(await runSchedule(first.seed)) + '\n');
  return summary.violations.length > 0 ? 1 : 0;
}

/**
 * `safe-resume bench` measures as `npm run bench` does: the heap figures need `--expose-gc`, so without
 * it the benchmarks run in a child Node with it (the same figures, not about 6,000 B per handle for 3,800).
 */
async function benchCommand(argv: string[]): Promise<number> {
  if (typeof (globalThis as { gc?: unknown }).gc === 'function') return (await import('../bench/main.js')).bench(argv);
  const main = fileURLToPath(new URL('../bench/main.js', import.meta.url));
  const child = spawn(process.execPath, ['--expose-gc', main, ...argv], { stdio: 'inherit' });
  const stop = () => child.kill('SIGINT');
  process.once('SIGINT', stop);
  const code = await new Promise<number>((done) => child.once('exit', (c, sig) => done(c ?? (sig ? 130 : 1))));
  process.off('SIGINT', stop);
  return code;
}

/**
 * `--size -5` as `--size=-5`: a negative number after an option is that option's value (to be refused
 * by its own check, in one line), not an option of its own.
 */
function negativeValues(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const next = argv[i + 1];
    if (/^--[a-z][a-z-]*$/.test(a) && next !== undefined && /^-\d/.test(next)) out.push(`${a}=${argv[++i]}`);
    else out.push(a);
  }
  return out;
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = negativeValues(argv);
  try {
    switch (cmd) {
      case 'up':
        return await up(rest);
      case 'status':
      case 'kill':
      case 'restart':
      case 'partition':
      case 'heal':
      case 'dismount':
      case 'reboot-storage':
      case 'move':
      case 'write':
      case 'read':
      case 'export':
      case 'create':
      case 'explain':
      case 'grant':
      case 'revoke':
      case 'events':
      case 'down':
        return await control(cmd, rest);
      case 'clean':
        return await clean(rest);
      case 'logs':
        return await logsCommand(rest);
      case 'completion':
        return completion(rest);
      case 'sim':
        return await sim(rest);
      case 'bench':
        return await benchCommand(rest);
      case 'fuzz':
        return await (await import('../bench/fuzz.js')).main(rest);
      case 'replica':
        return await replicaCommand(rest, (t) => process.stdout.write(t));
      case 'credentials':
        return credentials(rest, (t) => process.stdout.write(t), (t) => process.stderr.write(t));
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        process.stdout.write(rest[0] && !rest[0].startsWith('-') ? helpFor(rest[0]) : HELP);
        return 0;
      case '--version':
      case '-V':
      case 'version':
        process.stdout.write(`safe-resume ${version()}\n`);
        return 0;
      default:
        throw new UsageError(`unknown command ${JSON.stringify(cmd)}${didYouMean(cmd, COMMANDS)}`);
    }
  } catch (err) {
    // An option no command of this name takes: the one it is closest to, if one is close.
    const unknown = (err as { code?: string }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' ? /'(-{1,2})([^'=]+)'/.exec((err as Error).message) : null;
    if (unknown) {
      const flags = COMMAND_FLAGS[cmd ?? ''] ?? ALL_FLAGS;
      process.stderr.write(`safe-resume: unknown option ${unknown[1]}${unknown[2]}${didYouMean(unknown[2]!, flags, (f) => `--${f}`)}\nRun 'safe-resume help${cmd && cmd in COMMAND_FLAGS ? ` ${cmd}` : ''}' for usage.\n`);
      return EXIT.usage;
    }
    if (err instanceof OperatorError) {
      process.stderr.write(`safe-resume: ${err.message}\n`);
      return err.exitCode;
    }
    if (err instanceof SafeResumeError) {
      process.stderr.write(`safe-resume: ${err.code}: ${err.message}\n`);
      return 1;
    }
    if (err instanceof UsageError || err instanceof CredentialsUsageError || err instanceof ReplicaUsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`safe-resume: ${(err as Error).message}\nRun 'safe-resume help' for usage.\n`);
      return 2;
    }
    process.stderr.write(`safe-resume: ${(err as Error).stack ?? String(err)}\n`);
    return 1;
  }
}

// A closed pipe (e.g. `safe-resume up | head`) must not bring the cluster down: the view just stops.
process.stdout.on('error', () => undefined);
process.exitCode = await main(process.argv.slice(2));
