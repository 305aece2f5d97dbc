/**
 * The launcher of a local cluster: storage replicas and node agents as separate OS processes on
 * 127.0.0.1 over one SQLite file, fault proxies between every node and every replica, and one
 * control endpoint (HTTP on 127.0.0.1) that the CLI commands talk to. The control endpoint, the
 * inspector and the Stately relay are locked with one control token, made at start and kept in
 * the 0600 <dir>/control.json (see http-guard.ts).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import { capConnections, HTTP_TIMEOUTS } from './http-limits.js';
import { rmSync, writeFileSync } from 'node:fs';
import { privateDataDir } from './private-dir.js';
import { readBody } from './http-body.js';
import { bearer, checkHostOrigin, checkToken, newToken, refuse } from './http-guard.js';
import net from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { Application } from '../actors/application.js';
import { formatCredential, issueCredential, loadOrCreateSecret } from '../actors/auth.js';
import { NodeAgent } from '../actors/node-agent.js';
import { SafeResumeError } from '../errors.js';
import { findRequestSqlite, peekSqlite, SqliteStore } from '../store/sqlite.js';
import { mayOpen } from '../store/rules.js';
import { EtcdStore } from '../store/etcd.js';
import { openStore, parseStoreSpec } from '../store/open.js';
import type { LockRecord, TargetAccess, Tombstone } from '../store/types.js';
import { NAME_PATTERN } from '../transport/messages.js';
import { Timeline, type TimelineEvent } from './timeline.js';
import { WebSocketTransport } from '../transport/ws.js';
import { loadTlsFiles, type TlsFiles } from '../transport/tls.js';
import { FaultProxy } from './fault-proxy.js';
import { EtcdMembers, requireEtcd } from './etcd-members.js';
import { etcdTls, readEtcdTls, type EtcdTls } from './etcd-tls.js';
import { inHost, setLink, type Host, type HostPlan } from './hosts.js';
import { ChildReport, type ChildCommand, ChildConfig, type HandleStatus } from './ipc.js';
import { InspectorServer, StatelyRelay } from './inspector-server.js';
import { MESSAGE_EVENT, watchedTransport } from './inspect.js';
import { checkPortFree, EXIT, OperatorError } from './operator-error.js';
import { groupId, nbdSocketDir, nbdSocketPath } from './nbd-dir.js';
import { freePort } from '../transport/ports.js';

export interface LauncherOptions {
  dir: string;
  replicas: number;
  nodes: number;
  apps: number;
  holdMs: number;
  pauseTimeoutMs: number;
  intervalMs: number;
  /** First replica port (replica i listens on port + i); 0 picks free ports. */
  port: number;
  /** Record a history for the checker (chaos mode). */
  history: boolean;
  pretty: boolean;
  /** Port of the inspector page; 0 picks a free one, undefined turns the inspector off. */
  inspectorPort?: number | undefined;
  /** Also relay the events to the public Stately inspector (online) from a page on 127.0.0.1 at this port. */
  statelyPort?: number | undefined;
  log: Logger;
  /** The log of the launcher's own node agent (`cli`, for write/read/create...): one without an `actor`, as the agent names itself. Default: `log`. */
  agentLog?: Logger | undefined;
  /** Serve every replica over wss:// with these PEM files, and have the nodes check it against the CA. */
  tls?: TlsFiles | undefined;
  /**
   * `sqlite` (default): <dir>/store.sqlite; `etcd`: a local 3-member etcd in <dir>/etcd (TLS with client
   * certificates only: <dir>/etcd/tls), or `etcdEndpoints`.
   */
  store?: 'sqlite' | 'etcd';
  etcdEndpoints?: string[] | undefined;
  /** Put each process on a host of its own (a network namespace with its address): cluster/hosts.ts. */
  hosts?: HostPlan | undefined;
  /** Also serve each node's export on TCP (127.0.0.1), where clients must prove a principal with TLS-PSK. */
  nbdTcp?: boolean | undefined;
  /** A group whose members may reach the export sockets too (name or number); default: the owner only. */
  nbdGroup?: string | undefined;
}

interface Child {
  id: string;
  role: 'replica' | 'node';
  config: Record<string, unknown>;
  proc: ChildProcess | undefined;
  status: Extract<ChildReport, { type: 'status' }> | undefined;
  ready: Promise<void>;
  /** When this process was started and when it exited (ms since the epoch): the inspector tells its actors from those of the process before. */
  startedAt: number;
  exitedAt: number | undefined;
  /** Its counters went into the carried totals when it exited: its last status counts no more. */
  folded: boolean;
  /** Why its last incarnation could not start, as it said before it exited. */
  failure?: string | undefined;
  /** Its failure was that it could not connect to any replica in time. */
  unreachable?: boolean;
}

type StatusReport = Extract<ChildReport, { type: 'status' }>;

/** A process's counters in its last status: a replica's stats, or the sums of a node's applications. */
function countersOf(status: StatusReport | undefined): Record<string, number> {
  if (!status) return {};
  if (status.role === 'replica') return status.stats;
  return sumInto({}, ...status.handles.map((h) => ({ acked: h.acked, verified: h.verified, failed: h.failed })));
}

function sumInto(into: Record<string, number>, ...counts: Array<Record<string, number> | undefined>): Record<string, number> {
  for (const c of counts) for (const [k, v] of Object.entries(c ?? {})) into[k] = (into[k] ?? 0) + v;
  return into;
}

/** `deadline`: the command gave up waiting for the storage (the CLI exits 8). */
export type ControlResult = { ok: true; [k: string]: unknown } | { ok: false; code: string; message: string; deadline?: boolean };

/** Store errors that do not pass by themselves: the replica's state is 'failed' until an operator acts. */
const FATAL_STORE = /SQLITE_(READONLY|CORRUPT|NOTADB|FULL|CANTOPEN)|readonly database|database space exceeded/i;

/** The most a read through the control endpoint returns at once (its answer is JSON). */
const MAX_READ_BYTES = 16 * 1024 * 1024;

/** Commands that inject a fault or change the cluster: each goes on the timeline. */
const FAULT_COMMANDS = new Set(['/kill', '/restart', '/partition', '/heal', '/dismount', '/reboot-storage', '/move', '/write', '/grant', '/revoke']);

/** How long an ad-hoc command (write, read, create) waits for the storage before it says what it waited for. */
const COMMAND_DEADLINE_MS = 10_000;

/** How long `up` waits for each node to reach a replica before it fails with each replica's cause. */
const NODE_START_TIMEOUT_MS = 10_000;

/** What an ad-hoc command has done so far, and whether it was given up (it then stops at its next step). */
interface Step {
  stage: 'connecting' | 'opening' | 'sent' | 'closing';
  cancelled: boolean;
}

const CHILD = join(fileURLToPath(new URL('.', import.meta.url)), 'child.js');

export class Launcher {
  readonly children = new Map<string, Child>();
  readonly proxies = new Map<string, FaultProxy[]>();
  /** Which node hosts each application, and its target. */
  readonly apps = new Map<string, { node: string; target: string }>();
  readonly history: unknown[] = [];
  /** Faults, process exits and starts, and every handle's transitions, for `events` and the inspector. */
  readonly timeline = new Timeline();
  readonly secret: string;
  replicaUrls: string[] = [];
  private control: Server | undefined;
  private cli: NodeAgent | undefined;
  private timers = new Set<NodeJS.Timeout>();
  private released = new Map<string, (r: Extract<ChildReport, { type: 'released' }>) => void>();
  private stopping = false;
  controlUrl = '';
  /** The control token: the control endpoint, the inspector's /api and /stream and the Stately relay need it. */
  readonly token = newToken();
  /** The Stately relay (`--stately`), and its page's address with the token. */
  private relay: StatelyRelay | undefined;
  statelyUrl = '';
  /** In chaos mode: the checker's verdict so far (shown by status and the inspector). */
  chaos: { verdict: string; violations: number } | undefined;
  inspector: InspectorServer | undefined;
  private watching = false;
  /** The local etcd members of `--store etcd` (none when the endpoints were given). */
  etcd: EtcdMembers | undefined;
  /** The local members' certificates (cluster/etcd-tls.ts); the replicas and this process reach them with `client`. */
  etcdTls: EtcdTls | undefined;
  /** The store the replicas run over (sqlite:PATH or etcd://...). */
  storeSpec = '';
  /** Each node's NBD export: its Unix socket (`nbd+unix:///?socket=<dir>/nbd/<node>.sock`). */
  readonly nbdUrls = new Map<string, string>();
  /** And with `nbdTcp`, its TLS-only TCP address (`nbds://127.0.0.1:PORT/`). */
  readonly nbdTlsUrls = new Map<string, string>();
  /** Hosts whose link is cut now (--netns). */
  private readonly cut = new Set<string>();
  /**
   * Per child id, the counters of its processes that have exited (and of the applications that left a
   * node): status adds the running process's, so a restart does not take back what was counted.
   */
  private readonly carried = new Map<string, Record<string, number>>();

  constructor(readonly opts: LauncherOptions) {
    privateDataDir(opts.dir);
    this.secret = loadOrCreateSecret(opts.dir);
    // A --dir too long for the export sockets, or an unknown --nbd-group, is refused before anything starts.
    for (let n = 1; n <= opts.nodes; n++) nbdSocketPath(opts.dir, `node-${n}`);
    this.nbdGid = opts.nbdGroup !== undefined ? groupId(opts.nbdGroup) : undefined;
  }

  /** The group that may reach the export sockets too (--nbd-group), if any. */
  private readonly nbdGid: number | undefined;

  get dbPath(): string {
    return join(this.opts.dir, 'store.sqlite');
  }

  async start(): Promise<void> {
    if (this.opts.history) {
      // A chaos run checks one history: start it empty.
      for (const f of ['store.sqlite', 'store.sqlite-wal', 'store.sqlite-shm']) rmSync(join(this.opts.dir, f), { force: true });
      for (let n = 1; n <= this.opts.nodes; n++) rmSync(join(this.opts.dir, `node-${n}.handles.jsonl`), { force: true });
      if (this.opts.store === 'etcd' && !this.opts.etcdEndpoints) rmSync(join(this.opts.dir, 'etcd'), { recursive: true, force: true });
    }
    let inspectorWs: string | undefined;
    if (this.opts.inspectorPort !== undefined) {
      this.inspector = new InspectorServer({
        watching: (on) => {
          this.watching = on || this.opts.statelyPort !== undefined;
          on = this.watching;
          for (const c of this.children.values()) if (c.proc?.connected) c.proc.send({ type: 'watch', on } satisfies ChildCommand);
        },
        status: () => ({ ok: true, ...this.status() }),
        command: (method, path, body) => this.command(method, path, body),
        ...(this.opts.statelyPort !== undefined ? { forward: await this.stately(this.opts.statelyPort) } : {}),
      }, { token: this.token });
      const url = await this.inspector.listen(this.opts.inspectorPort);
      inspectorWs = `${url.replace('http', 'ws')}/inspect`;
    }
    if (this.opts.store === 'etcd') {
      if (!this.opts.etcdEndpoints) {
        requireEtcd(); // before the certificates: a missing etcd is the first thing to say
        // The members' certificate names each member's address (its host's, under --netns).
        const addresses = ['etcd-1', 'etcd-2', 'etcd-3'].flatMap((id) => this.host(id)?.address ?? []);
        this.etcdTls = etcdTls(join(this.opts.dir, 'etcd', 'tls'), addresses);
      }
      const endpoints = this.opts.etcdEndpoints ?? (this.etcd = await EtcdMembers.start(join(this.opts.dir, 'etcd'), 3, 20_000, (id) => this.host(id), this.etcdTls)).endpoints;
      this.storeSpec = `etcd://${endpoints.join(',')}`;
    } else this.storeSpec = `sqlite:${this.dbPath}`;
    for (let i = 0; i < this.opts.replicas; i++) {
      const id = `replica-${i + 1}`;
      const host = this.host(id);
      // On a host of its own a replica listens on its address (and any port is free there).
      const port = this.opts.port ? this.opts.port + i : host ? 7000 : await freePort();
      // A port asked for is checked here, so a taken one is named in one line, not found by a child.
      if (this.opts.port && !host) await checkPortFree(port, '127.0.0.1', id);
      this.replicaUrls.push(`${this.opts.tls ? 'wss' : 'ws'}://${host?.address ?? '127.0.0.1'}:${port}`);
      // The store's client certificate goes as file paths (0600 in the data directory), never its key.
      this.spawn(id, 'replica', { ...this.tlsConfig(), ...(this.etcdTls ? { etcdTls: this.etcdTls.client } : {}), metricsPort: 0, id, port, ...(host ? { host: host.address } : {}), dir: this.opts.dir, store: this.storeSpec, secret: this.secret, holdMs: this.opts.holdMs, history: this.opts.history, pretty: this.opts.pretty, ...this.inspectorConfig(id, inspectorWs) });
    }
    await Promise.all([...this.children.values()].map((c) => c.ready));
    // The export sockets' directory, before any node is started.
    const nbdGid = this.nbdGid;
    if (this.opts.nodes > 0) nbdSocketDir(this.opts.dir, nbdGid);
    let appNo = 0;
    for (let n = 1; n <= this.opts.nodes; n++) {
      const id = `node-${n}`;
      // On one host a node reaches the replicas through fault proxies (partitions); on hosts of their
      // own, directly (a partition cuts the node's link).
      const proxies = this.opts.hosts ? [] : this.replicaUrls.map((u) => FaultProxy.forUrl(u));
      const urls = this.opts.hosts ? this.replicaUrls : await Promise.all(proxies.map((p) => p.listen()));
      this.proxies.set(id, proxies);
      const apps = [];
      for (let a = 0; a < this.opts.apps; a++) {
        const name = `app-${++appNo}`;
        const target = `${name}.disk`;
        this.apps.set(name, { node: id, target });
        apps.push({ name, target });
      }
      // A node gets its own credential and its applications' principal's, never the cluster key.
      const credential = formatCredential(issueCredential(this.secret, 'node', id));
      const principals = [formatCredential(issueCredential(this.secret, 'principal', 'default'))];
      // Its block export on a Unix socket in the data directory, and on 127.0.0.1 with TLS-PSK if asked
      // (none on a host of its own: that address would name this machine).
      const nbd = this.host(id) ? undefined : { nbdSocket: nbdSocketPath(this.opts.dir, id), ...(nbdGid !== undefined ? { nbdGroup: nbdGid } : {}), ...(this.opts.nbdTcp ? { nbdTlsPort: await freePort() } : {}) };
      if (nbd) this.nbdUrls.set(id, `nbd+unix:///?socket=${nbd.nbdSocket}`);
      if (nbd?.nbdTlsPort !== undefined) this.nbdTlsUrls.set(id, `nbds://127.0.0.1:${nbd.nbdTlsPort}/`);
      // At start-up a node is ready once connected: one that cannot reach the storage fails `up` with why.
      this.spawn(id, 'node', { ...this.tlsConfig(), metricsPort: 0, ...nbd, startTimeoutMs: NODE_START_TIMEOUT_MS, id, replicas: urls, replicaNames: this.replicaNames(), dir: this.opts.dir, credential, principals, pauseTimeoutMs: this.opts.pauseTimeoutMs, intervalMs: this.opts.intervalMs, apps, history: this.opts.history, pretty: this.opts.pretty, reload: this.opts.history, ...this.inspectorConfig(id, inspectorWs) });
    }
    await Promise.all([...this.children.values()].map((c) => c.ready));
    await this.listen();
  }

  /**
   * Where a child sends its inspection events, and its credential for that (its own: it cannot
   * report under another child's name); it goes over IPC with the rest of the configuration.
   */
  private tlsConfig(): { tls?: TlsFiles } {
    return this.opts.tls ? { tls: this.opts.tls } : {};
  }

  /** How this process's own etcd clients reach the local members (TLS, with the store's certificate). */
  private etcdOptions(): { tls?: { ca: Buffer; cert: Buffer; key: Buffer } } {
    return this.etcdTls ? { tls: readEtcdTls(this.etcdTls.client) } : {};
  }

  /** The replicas' ids, in the order of `replicaUrls`. */
  private replicaNames(): string[] {
    return this.replicaUrls.map((_, i) => `replica-${i + 1}`);
  }

  /** The host a process runs on (--netns), if any. */
  host(id: string): Host | undefined {
    return this.opts.hosts?.hosts[id];
  }

  private inspectorConfig(id: string, url: string | undefined): Record<string, string> {
    // The inspector listens on 127.0.0.1 of this host: a process on another host cannot reach it.
    return url && this.inspector && !this.host(id) ? { inspector: url, inspectorToken: this.inspector.processCredential(id) } : {};
  }

  /** Start the relay to the Stately inspector (on 127.0.0.1) and return a function that hands it events. */
  private async stately(port: number): Promise<(e: Record<string, unknown>) => void> {
    const relay = new StatelyRelay(this.token);
    await relay.listen(port);
    this.relay = relay;
    this.statelyUrl = relay.pageUrl;
    this.watching = true; // the Stately page may be watching at any time
    return (e) => relay.send(e);
  }

  private spawn(id: string, role: 'replica' | 'node', config: Record<string, unknown>): Child {
    // Once the cluster is coming down nothing starts again (a process started now would outlive it).
    if (this.stopping) throw new SafeResumeError('UNAVAILABLE', `the cluster is stopping: ${id} is not started`);
    // The configuration (keys with it) goes over the IPC channel, never in argv.
    const host = this.host(id);
    const at = host ? inHost(host, process.execPath) : undefined;
    const proc = fork(CHILD, [role], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], ...(at ? { execPath: at.command, execArgv: [...at.args, ...process.execArgv] } : {}) });
    proc.send({ type: 'config', config } satisfies ChildConfig);
    let ready!: () => void;
    let failed!: (e: Error) => void;
    const child: Child = { id, role, config, proc, status: undefined, ready: new Promise<void>((r, j) => ((ready = r), (failed = j))), startedAt: Date.now(), exitedAt: undefined, folded: false };
    this.children.set(id, child);
    proc.on('message', (m) => {
      const msg = ChildReport.safeParse(m);
      if (!msg.success) return this.opts.log.warn({ child: id }, 'bad report from child');
      const r = msg.data;
      if (r.type === 'failed') {
        child.failure = r.error;
        child.unreachable = r.connect === true;
      }
      else if (r.type === 'ready') {
        child.failure = undefined;
        if (this.watching || this.opts.statelyPort !== undefined) proc.send({ type: 'watch', on: true } satisfies ChildCommand);
        ready();
      }
      else if (r.type === 'status') {
        if (child.folded) return;
        this.observe(id, child.status, r);
        // An application gone from a node that runs on (moved away): what it counted stays counted.
        if (r.role === 'node' && child.status?.role === 'node') {
          const still = new Set(r.handles.map((h) => h.app));
          for (const h of child.status.handles) if (!still.has(h.app)) this.carry(id, { acked: h.acked, verified: h.verified, failed: h.failed });
        }
        child.status = r;
      }
      else if (r.type === 'transitions') {
        if (!child.folded) this.onTimeline(this.timeline.handles(id, r.events));
      }
      else if (r.type === 'history') this.history.push(...r.events);
      else if (r.type === 'released') this.released.get(r.app)?.(r);
    });
    // A message sent to a child that is dying fails (EPIPE) on this event; its exit is handled below.
    proc.on('error', (err) => this.opts.log.warn({ child: id, err: err.message }, 'child channel error'));
    if (!this.stopping) this.timeline.add({ kind: 'process', id, what: 'started', detail: `pid ${proc.pid}` });
    proc.on('exit', (code, signal) => {
      if (!this.stopping) this.timeline.add({ kind: 'process', id, what: 'exited', detail: child.failure ? `could not start: ${child.failure}` : (signal ?? `code ${code}`) });
      if (child.proc === proc) child.proc = undefined;
      child.exitedAt = Date.now();
      if (!child.folded) {
        child.folded = true;
        this.carry(id, countersOf(child.status));
      }
      // A node that no replica welcomed in time: its own words name each replica's cause.
      failed(child.failure && child.unreachable ? new OperatorError(child.failure, EXIT.timeout) : new Error(child.failure ? `${id} could not start: ${child.failure}` : `${id} exited (${signal ?? code}) before it was ready`));
      if (!this.stopping) this.opts.log.warn({ child: id, code, signal }, 'child exited');
    });
    return child;
  }

  /** A child's report, against its previous one: handle transitions and replica mounts go on the timeline. */
  private observe(id: string, before: Child['status'], now: NonNullable<Child['status']>): void {
    if (now.role === 'node') {
      this.onTimeline(this.timeline.handles(id, now.handles));
    } else if (now.role === 'replica' && before?.role === 'replica' && before.dismounted !== now.dismounted) {
      this.timeline.add({ kind: 'process', id, what: now.dismounted ? 'dismounted' : 'mounted' });
    }
  }

  /** Handle events just put on the timeline: one denied because another writer took the target says who holds it now. */
  private onTimeline(events: Array<TimelineEvent & { kind: 'handle' }>): void {
    for (const e of events) {
      if (e.to !== 'invalidated' || e.reason !== 'MODIFIED') continue;
      void this.holder(e.target).then(({ record: rec, tombstones, now }) => {
        const taken = tombstones.find((t) => t.requestId === e.requestId)?.takenBy;
        e.detail = taken ? `${takenOver(taken, now)}${rec && rec.requestId !== taken.requestId ? `; now held by requestId ${rec.requestId}` : ''}` : rec ? `the target is now held by requestId ${rec.requestId} (principal ${rec.principal})` : 'nobody holds the target now';
      }, () => undefined);
    }
  }

  /** Every session a running replica has, with the replica. */
  private liveSessions(): Array<{ id: string; node: string; silentMs: number; replica: string }> {
    return [...this.children.values()].flatMap((c) => (c.proc && c.status?.role === 'replica' ? (c.status.sessionList ?? []).map((s) => ({ ...s, replica: c.id })) : []));
  }

  /**
   * Each paused or resuming handle's lock, from the store: `renewed` while the session holding it lives
   * (no hold period runs), `running` with the time left once that session is lost (`holdLeftMs`;
   * over etcd the TTL of that session's lease, in whole seconds), `lapsed` (another writer may take the target; the
   * handle's resume is granted until one does), or `taken` (another requestId holds it, or nobody).
   * Other handles get `null`; so does every handle if the store does not answer within 2 s.
   */
  private async holds(handles: Array<HandleStatus & Hold>): Promise<void> {
    for (const h of handles) Object.assign(h, { hold: null, holdLeftMs: null });
    const away = handles.filter((h) => (h.state === 'paused' || h.state === 'resuming') && h.requestId).slice(0, 100);
    if (away.length === 0) return;
    const live = new Set(this.liveSessions().map((x) => x.id));
    const found = await this.peek([...new Set(away.map((h) => h.target))], true).catch(() => undefined);
    if (!found) return; // the store cannot be read now: the holds stay unknown (null)
    for (const h of away) {
      const { record: rec, left } = found.targets.get(h.target)!;
      if (!rec || rec.requestId !== h.requestId) h.hold = 'taken';
      else if (live.has(rec.session)) h.hold = 'renewed';
      else if (found.now === undefined) Object.assign(h, left === undefined ? { hold: 'running' } : left > 0 ? { hold: 'running', holdLeftMs: left } : { hold: 'lapsed' });
      else if (rec.expiresAt > found.now) Object.assign(h, { hold: 'running', holdLeftMs: rec.expiresAt - found.now });
      else h.hold = 'lapsed';
    }
  }

  /** The target's lock record and tombstones, read from the store, and the store's now when its clock can be read here. */
  private async holder(target: string): Promise<{ record: LockRecord | undefined; tombstones: Tombstone[]; now: number | undefined }> {
    const { targets, now } = await this.peek([target], false);
    return { ...targets.get(target)!, now };
  }

  /** Who may open the target (its owner and access list; rules.accessOf), read from the store within 2 s. */
  private async accessOf(target: string): Promise<TargetAccess | undefined> {
    if (parseStoreSpec(this.storeSpec).kind === 'sqlite') return peekSqlite(this.dbPath, [target]).access.get(target);
    return this.withStore((store) => store.access(target));
  }

  /** Run `fn` on a client of the store of its own (etcd's, or a connection to the SQLite file), given up after 2 s. */
  private async withStore<T>(fn: (store: ReturnType<typeof openStore>) => Promise<T>): Promise<T> {
    const spec = parseStoreSpec(this.storeSpec);
    const store = spec.kind === 'sqlite' ? new SqliteStore(this.dbPath) : openStore(this.storeSpec, { etcd: this.etcdOptions() });
    let timer: NodeJS.Timeout | undefined;
    try {
      const done = await Promise.race([fn(store).then((v) => ({ v })), new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), 2000)))]);
      if (!done) throw new SafeResumeError('UNAVAILABLE', 'the store did not answer within 2 s');
      return done.v;
    } finally {
      clearTimeout(timer);
      void store.shutdown().catch(() => undefined);
    }
  }

  /**
   * What the store holds of `targets`, for inspection, within 2 s. SQLite is read through a read-only
   * connection that waits for nothing (a replica holding the write lock cannot stall the launcher);
   * etcd through a client of its own, with each lock's time left from its session lease (`left`);
   * etcd's records are on the wall clock, so no store clock is returned for it (`now`).
   */
  private async peek(targets: string[], withLeft: boolean): Promise<{ targets: Map<string, { record: LockRecord | undefined; tombstones: Tombstone[]; left?: number }>; now: number | undefined }> {
    if (parseStoreSpec(this.storeSpec).kind === 'sqlite') {
      const p = peekSqlite(this.dbPath, targets);
      return { targets: new Map(targets.map((t) => [t, { record: p.records.get(t), tombstones: p.tombstones.get(t) ?? [] }])), now: p.now };
    }
    const store = openStore(this.storeSpec, { etcd: this.etcdOptions() });
    let timer: NodeJS.Timeout | undefined;
    try {
      const read = Promise.all(
        targets.map(async (t) => {
          const [record, tombstones, left] = await Promise.all([store.record(t), store.tombstones(t), withLeft && store instanceof EtcdStore ? store.lockLeftMs(t) : undefined]);
          return [t, { record, tombstones, ...(left !== undefined ? { left } : {}) }] as const;
        }),
      );
      const found = await Promise.race([read, new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), 2000)))]);
      if (!found) throw new Error('the store did not answer within 2 s');
      return { targets: new Map(found), now: undefined };
    } finally {
      clearTimeout(timer);
      void store.shutdown().catch(() => undefined);
    }
  }

  private child(id: string, role?: 'replica' | 'node'): Child {
    const c = this.children.get(id);
    if (!c || (role && c.role !== role)) {
      const ids = [...this.children.values()].filter((x) => !role || x.role === role).map((x) => x.id);
      throw new SafeResumeError('INVALID_ARGUMENT', `no ${role ?? 'replica or node'} called ${JSON.stringify(id)}; the ids are ${ids.join(', ') || 'none yet'}`);
    }
    return c;
  }

  private tell(c: Child, cmd: ChildCommand): void {
    if (!c.proc?.connected) throw new SafeResumeError('UNAVAILABLE', `${c.id} is not running`);
    c.proc.send(cmd);
  }

  /** Run `fn` after `ms`, unless the cluster is brought down first. */
  later(ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
  }

  /** Add to what child `id` has counted in processes and applications gone. */
  private carry(id: string, counts: Record<string, number>): void {
    this.carried.set(id, sumInto(this.carried.get(id) ?? {}, counts));
  }

  /** What child `id` has counted since the cluster started: its processes gone, and the running one. */
  private counted(c: Child): Record<string, number> {
    return sumInto({}, this.carried.get(c.id), c.folded ? undefined : countersOf(c.status));
  }

  // ---- Commands (the control endpoint and chaos mode call these) ----

  /**
   * Every replica and node (with when its process started, and exited if it is down), the handles of
   * the running nodes, and the counters: a replica's `stats` and `totals` count from the start of the
   * cluster, through restarts; a handle's `acked` (and the rest) is its node process's.
   */
  status(): Record<string, unknown> {
    const children = [...this.children.values()];
    const replicas = children.filter((c) => c.role === 'replica').map((c) => ({
      id: c.id,
      // A store that cannot be written or read as a database needs an operator: 'failed', with the error.
      state: !c.proc ? (c.failure ? 'failed' : 'down') : c.status?.role === 'replica' && c.status.dismounted ? (FATAL_STORE.test(c.status.storeError ?? '') ? 'failed' : 'dismounted') : 'serving',
      storeError: c.proc && c.status?.role === 'replica' ? (c.status.storeError ?? null) : (c.failure ?? null),
      pid: c.proc?.pid ?? null,
      sessions: c.proc && c.status?.role === 'replica' ? c.status.sessions : 0,
      stats: this.counted(c),
      metrics: c.proc ? (c.status?.metrics ?? null) : null,
      startedAt: c.startedAt,
      exitedAt: c.proc ? null : (c.exitedAt ?? null),
    }));
    const nodes = children.filter((c) => c.role === 'node').map((c) => ({
      id: c.id,
      state: !c.proc ? 'down' : c.status?.role === 'node' ? c.status.state : 'starting',
      pid: c.proc?.pid ?? null,
      replica: c.status?.role === 'node' ? c.status.replica : null,
      /** While it is not connected: its last failed attempt and why. */
      cause: c.proc && c.status?.role === 'node' ? (c.status.cause ?? null) : null,
      metrics: c.proc ? (c.status?.metrics ?? null) : null,
      nbd: c.proc && c.status?.role === 'node' ? (c.status.nbd ?? null) : null,
      partitioned: (this.proxies.get(c.id) ?? []).some((p) => p.mode === 'partition') || this.cut.has(c.id),
      startedAt: c.startedAt,
      exitedAt: c.proc ? null : (c.exitedAt ?? null),
    }));
    const handles: Array<HandleStatus & { node: string }> = [];
    for (const c of children) if (c.proc && c.status?.role === 'node') for (const h of c.status.handles) handles.push({ node: c.id, ...h });
    // Writes acknowledged, verified and failed by every application, and every replica's stats, summed.
    const totals = { ...sumInto({ acked: 0, verified: 0, failed: 0 }, ...children.map((c) => this.counted(c))), pauses: this.timeline.pauses };
    const etcd = this.etcd?.members.map((m) => ({ id: m.id, state: m.proc ? 'running' : 'down', pid: m.proc?.pid ?? null, endpoint: m.endpoint }));
    return { replicas, nodes, handles, totals, ...(etcd ? { etcd } : {}), store: this.storeSpec, control: this.controlUrl, dir: this.opts.dir, ...(this.chaos ? { chaos: this.chaos } : {}) };
  }

  kill(id: string): ControlResult {
    if (this.etcd?.member(id)) {
      this.etcd.kill(id);
      return { ok: true, killed: id };
    }
    const c = this.child(id);
    if (!c.proc) throw new SafeResumeError('UNAVAILABLE', `${id} is not running`);
    this.noteCrash(c);
    c.proc.kill('SIGKILL');
    return { ok: true, killed: id };
  }

  async restart(id: string): Promise<ControlResult> {
    if (this.stopping) throw new SafeResumeError('UNAVAILABLE', `the cluster is stopping: ${id} is not restarted`);
    if (this.etcd?.member(id)) {
      await this.etcd.restart(id);
      return { ok: true, restarted: id };
    }
    const c = this.child(id);
    if (c.proc) {
      this.noteCrash(c);
      const proc = c.proc;
      const gone = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGKILL');
      await gone;
    }
    const config = { ...c.config };
    // A node restarted later is ready at once and keeps trying (the storage may be away on purpose).
    delete config.startTimeoutMs;
    if (c.role === 'node') {
      // Its applications come back and reclaim the requestIds the node kept on disk.
      config.apps = [...this.apps.entries()].filter(([, a]) => a.node === id).map(([name, a]) => ({ name, target: a.target }));
    }
    await this.spawn(id, c.role, config).ready.catch((err: Error) => {
      throw new SafeResumeError('UNAVAILABLE', err.message);
    });
    return { ok: true, restarted: id };
  }

  /** Chaos history: the applications of a killed or moved process stop without a word. */
  private noteCrash(c: Child, app?: string): void {
    if (!this.opts.history || c.role !== 'node' || !c.proc) return;
    for (const h of c.status?.role === 'node' ? c.status.handles : []) {
      if (!app || h.app === app) this.history.push({ t: Date.now(), kind: 'crash', proc: `${c.id}/${h.app}#${c.proc.pid}` });
    }
  }

  partition(node: string, forS?: number): ControlResult {
    const proxies = this.proxies.get(node);
    if (!proxies) throw new SafeResumeError('INVALID_ARGUMENT', `no node called ${JSON.stringify(node)}`);
    for (const p of proxies) p.partition();
    const host = this.host(node);
    if (host) {
      setLink(host, false);
      this.cut.add(node);
    }
    if (forS) this.later(forS * 1000, () => this.heal(node));
    return { ok: true, partitioned: node, ...(forS ? { healsInS: forS } : {}) };
  }

  /** Heal `node` (or every node); `healed` names only those that were cut off (partitioned or losing replies). */
  heal(node?: string): ControlResult {
    const names = node ? [node] : [...this.proxies.keys()];
    const healed: string[] = [];
    for (const n of names) {
      const proxies = this.proxies.get(n);
      if (!proxies) throw new SafeResumeError('INVALID_ARGUMENT', `no node called ${JSON.stringify(n)}`);
      let was = proxies.some((p) => p.mode !== 'pass');
      for (const p of proxies) p.heal();
      const host = this.host(n);
      if (host && this.cut.delete(n)) {
        setLink(host, true);
        was = true;
      }
      if (was) healed.push(n);
    }
    return { ok: true, healed };
  }

  /** Cut a replica's (or node's) host off the network for `forS` seconds (--netns). */
  cutLink(id: string, forS: number): ControlResult {
    this.child(id);
    const host = this.host(id);
    if (!host) throw new SafeResumeError('INVALID_ARGUMENT', `${id} has no host of its own (--netns) whose link could be cut`);
    setLink(host, false);
    this.cut.add(id);
    this.later(forS * 1000, () => this.cut.delete(id) && setLink(host, true));
    return { ok: true, cut: id, restoresInS: forS };
  }

  dismount(replica: string, forS: number): ControlResult {
    const c = this.child(replica, 'replica');
    this.tell(c, { type: 'dismount' });
    this.later(forS * 1000, () => c.proc?.connected && c.proc.send({ type: 'mount' } satisfies ChildCommand));
    return { ok: true, dismounted: replica, mountsInS: forS };
  }

  async rebootStorage(): Promise<ControlResult> {
    const replicas = [...this.children.values()].filter((c) => c.role === 'replica');
    await Promise.all(replicas.map((c) => this.restart(c.id)));
    return { ok: true, rebooted: replicas.map((c) => c.id) };
  }

  async move(app: string, to: string): Promise<ControlResult> {
    const a = this.apps.get(app);
    if (!a) throw new SafeResumeError('INVALID_ARGUMENT', `no application called ${JSON.stringify(app)}`);
    if (a.node === to) throw new SafeResumeError('INVALID_ARGUMENT', `${app} already runs on ${to}`);
    const from = this.child(a.node, 'node');
    const dest = this.child(to, 'node');
    if (!dest.proc) throw new SafeResumeError('UNAVAILABLE', `${to} is not running`);
    let requestId: string | undefined;
    if (from.proc?.connected) {
      const answer = new Promise<Extract<ChildReport, { type: 'released' }>>((r) => this.released.set(app, r));
      this.noteCrash(from, app);
      this.tell(from, { type: 'release', app });
      const r = await Promise.race([answer, new Promise<undefined>((r) => setTimeout(() => r(undefined), 5000))]);
      this.released.delete(app);
      requestId = r?.requestId;
    }
    this.tell(dest, { type: 'host', app, target: a.target, ...(requestId ? { requestId } : {}) });
    this.apps.set(app, { node: to, target: a.target });
    return { ok: true, moved: app, from: from.id, to, requestId: requestId ?? null };
  }

  private async cliAgent(): Promise<NodeAgent> {
    if (!this.cli) {
      const transport = new WebSocketTransport(this.opts.tls ? { tls: loadTlsFiles(this.opts.tls) } : {});
      const inspector = this.inspector;
      const names = this.replicaNames();
      // Its protocol messages (a foreign write, say) are on the inspector page too, from `cli`.
      const watched = inspector
        ? watchedTransport(transport, { get watching() { return inspector.watchers > 0; }, message: (m) => inspector.report('cli', { type: MESSAGE_EVENT, createdAt: String(Date.now()), ...m }) }, (url) => names[this.replicaUrls.indexOf(url)])
        : transport;
      this.cli = new NodeAgent({ id: 'cli', replicas: this.replicaUrls, transport: watched, secret: this.secret, env: { log: this.opts.agentLog ?? this.opts.log } });
      await this.cli.start();
    }
    return this.cli;
  }

  /** An ad-hoc application writes `text` at offset 0 of the target: the foreign writer of the docs. */
  async write(target: string, text: string, as = 'cli'): Promise<ControlResult> {
    return this.adHoc(`write ${target}`, async (step) => {
      const app = new Application(await this.cliAgent(), { name: as });
      step.stage = 'opening';
      const h = await app.open(target);
      try {
        if (step.cancelled) return { ok: false, code: 'UNAVAILABLE', message: 'given up' };
        const data = new TextEncoder().encode(text);
        step.stage = 'sent';
        const { version } = await h.write(0, data);
        return { ok: true, target, as, requestId: h.requestId, bytes: data.length, version };
      } finally {
        step.stage = 'closing';
        await h.close();
      }
    });
  }

  /**
   * Run an ad-hoc command against the storage with a deadline: past it, say what was waited for (each
   * replica's state) instead of hanging. Work not yet sent is given up; a write already sent may still
   * land, and the answer says so (OUTCOME_UNKNOWN), never that it failed.
   */
  private async adHoc(what: string, work: (step: Step) => Promise<ControlResult>): Promise<ControlResult> {
    const step: Step = { stage: 'connecting', cancelled: false };
    const done = work(step);
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), COMMAND_DEADLINE_MS)));
    const first = await Promise.race([done, late]).finally(() => clearTimeout(timer));
    if (first) return first;
    step.cancelled = true;
    done.catch(() => undefined);
    const replicas = [...this.children.values()].filter((c) => c.role === 'replica').map((c) => `${c.id} ${!c.proc ? 'down' : c.status?.role === 'replica' && c.status.dismounted ? 'dismounted' : 'serving but not answering'}`).join(', ');
    const waited = `no replica answered within ${COMMAND_DEADLINE_MS / 1000} s (${replicas})`;
    if (step.stage === 'sent') return { ok: false, code: 'OUTCOME_UNKNOWN', message: `${what}: the write was sent and ${waited}: it may still be applied once a replica is back`, deadline: true };
    return { ok: false, code: 'UNAVAILABLE', message: `${what}: ${waited}; nothing was done`, deadline: true };
  }

  /** Create a disk: `target` with a size fixed now (sparse: nothing is written). Said again with the same size, it is a no-op. */
  async create(target: string, size: number | undefined): Promise<ControlResult> {
    if (size === undefined) throw new SafeResumeError('INVALID_ARGUMENT', 'missing size');
    return this.adHoc(`create ${target}`, async (step) => {
      const app = new Application(await this.cliAgent(), { name: 'cli-create' });
      step.stage = 'opening';
      // Whether it existed: a read open says its size (none yet: it is created now).
      const before = await app.open(target, { mode: 'read' });
      const had = before.size;
      await before.close();
      // Already that size: nothing to do (a write open would be LOCKED while a client uses the disk).
      if (had === size) return { ok: true, target, size, created: false };
      if (step.cancelled) return { ok: false, code: 'UNAVAILABLE', message: 'given up' };
      step.stage = 'sent'; // the open that fixes the size
      const h = await app.open(target, { size });
      await h.close();
      return { ok: true, target, size, created: had === undefined };
    });
  }

  /**
   * Read `length` bytes at `offset` as principal default. A target nobody has, and one default may not
   * open, are the same answer, NOT_FOUND (a read open would otherwise create the first, and say of the
   * second that it exists); only the operator's `explain` tells them apart.
   */
  async read(target: string, offset = 0, length = 1024 * 1024): Promise<ControlResult> {
    if (!Number.isSafeInteger(offset) || offset < 0) throw new SafeResumeError('INVALID_ARGUMENT', `offset must be a whole number of bytes >= 0, not ${String(offset)}`);
    if (!Number.isSafeInteger(length) || length < 1 || length > MAX_READ_BYTES) throw new SafeResumeError('INVALID_ARGUMENT', `length must be from 1 to ${MAX_READ_BYTES} bytes, not ${String(length)}`);
    const access = await this.accessOf(target).catch((err: Error) => {
      throw new SafeResumeError('UNAVAILABLE', `the store cannot be read: ${err.message}`);
    });
    if (!access || !mayOpen(access, 'default', 'read')) return { ok: false, code: 'NOT_FOUND', message: `no target called ${JSON.stringify(target)} that principal default may read: nobody has created or written it, or it is another principal's ('safe-resume explain' tells which)` };
    return this.adHoc(`read ${target}`, async (step) => {
      const app = new Application(await this.cliAgent(), { name: 'cli-reader' });
      step.stage = 'opening';
      const h = await app.open(target, { mode: 'read' });
      try {
        const data = await h.read(offset, length);
        return { ok: true, target, offset, bytes: data.length, base64: Buffer.from(data).toString('base64'), text: new TextDecoder().decode(data) };
      } finally {
        await h.close();
      }
    });
  }

  /**
   * The operator grants `principal` read or write access to a target (replacing what it had), or
   * revokes it (`none`): decided by the store's rule as any owner's change is (rules.decideAccess),
   * on a client of the store of its own, as `explain` reads it.
   */
  async access(target: string, principal: string, mode: string): Promise<ControlResult> {
    if (!NAME_PATTERN.test(principal)) throw new SafeResumeError('INVALID_ARGUMENT', `principal ${JSON.stringify(principal.slice(0, 64))} must be 1-128 of A-Z a-z 0-9 . _ @ - (starting with a letter or digit)`);
    if (mode !== 'read' && mode !== 'write' && mode !== 'none') throw new SafeResumeError('INVALID_ARGUMENT', `mode must be read or write, not ${JSON.stringify(mode.slice(0, 64))}`);
    const res = await this.withStore((store) => store.editAccess({ target, by: undefined, principal, mode })).catch((err: Error) => {
      throw err instanceof SafeResumeError ? err : new SafeResumeError('UNAVAILABLE', `the store cannot be written: ${err.message}`);
    });
    if (!res.ok) throw new SafeResumeError(res.code, res.message);
    return { ok: true, target, owner: res.access.owner, grants: res.access.grants, text: accessLine(target, res.access) };
  }

  /**
   * Why a target (or the handle of a requestId) is where it is: who holds its lock, whether that
   * session is alive (which replica has it, when it was last heard from), when the lock can lapse,
   * the handles on it, and the state of the store's replicas. Read from the store itself.
   */
  async explain(what: string): Promise<ControlResult> {
    const st = this.status() as { handles: Array<HandleStatus & { node: string }>; nodes: Array<{ id: string; state: string; replica: string | null; partitioned: boolean }>; replicas: Array<{ id: string; state: string }> };
    const target = st.handles.find((h) => h.requestId === what)?.target ?? (await this.targetOfRequest(what)) ?? what;
    const { record, tombstones, now } = await this.holder(target).catch((err: Error) => {
      throw new SafeResumeError('UNAVAILABLE', `the store cannot be read: ${err.message}`);
    });
    const access = await this.accessOf(target).catch((err: Error) => {
      throw new SafeResumeError('UNAVAILABLE', `the store cannot be read: ${err.message}`);
    });
    // Nobody has the target (accessOf: no owner, record, tombstone, data or size), and no requestId is called so.
    if (!access && target === what) return { ok: false, code: 'NOT_FOUND', message: `no target or requestId called ${JSON.stringify(what)} in the store (${this.storeSpec}): nobody has opened that target, and no handle had that requestId` };
    const session = record ? this.liveSessions().find((s) => s.id === record!.session) : undefined;
    const handles = st.handles.filter((h) => h.target === target).map((h) => {
      const node = st.nodes.find((n) => n.id === h.node);
      return { node: h.node, app: h.app, state: h.state, reason: h.reason, requestId: h.requestId ?? null, holds: record?.requestId === h.requestId, nodeState: node?.state ?? 'unknown', nodeReplica: node?.replica ?? null, partitioned: node?.partitioned ?? false };
    });
    const leftMs = record && now !== undefined ? record.expiresAt - now : undefined;
    const lines: string[] = [target];
    if (!access) lines.push('  owner     none: nobody has opened it; the first open creates it for its principal');
    else {
      lines.push(`  owner     ${access.owner}`);
      lines.push(`  access    ${access.grants.length === 0 ? 'the owner only' : access.grants.map((g) => `${g.principal} ${g.mode}`).join(', ')}`);
    }
    if (!record) lines.push('  lock      none: no writer holds it; a write open is granted at once');
    else {
      lines.push(`  holder    requestId ${record.requestId} (principal ${record.principal}, instance ${record.instance || '-'}), writes applied up to seq ${record.lastSeq}`);
      if (session) {
        lines.push(`  session   ${record.session} on ${session.replica}, node ${session.node}, heard from ${session.silentMs} ms ago: alive, and renewing the lock`);
        lines.push(`  lock      held while that session lives${leftMs !== undefined ? ` (if it stops renewing: ${Math.max(0, leftMs)} ms at most)` : ''}; another writer is refused LOCKED`);
      } else {
        lines.push(`  session   ${record.session}: no running replica has it (lost)`);
        if (leftMs === undefined) lines.push("  lock      lapses when that session's lease does; then another writer may open the target");
        else if (leftMs > 0) lines.push(`  lock      the hold period runs: it lapses in ${leftMs} ms; until then the holder's resume is granted and other writers are refused LOCKED`);
        else lines.push(`  lock      lapsed ${-leftMs} ms ago: another writer may open the target now (the holder's resume is granted until one does)`);
      }
    }
    // The holders before: whose lock lapsed and who took the target then, or who closed it.
    for (const t of tombstones) lines.push(`  earlier   requestId ${t.requestId}, writes applied up to seq ${t.lastSeq}: ${t.takenBy ? `its lock lapsed; ${takenOver(t.takenBy, now)}` : 'closed by its holder (or taken over before the store kept who took it)'}`);
    for (const h of handles) {
      const why = h.state === 'paused' || h.state === 'resuming' ? `: its node is ${h.nodeState}${h.partitioned ? ' (partitioned)' : ''}${h.nodeReplica ? ` on ${h.nodeReplica}` : ''}` : '';
      lines.push(`  handle    ${h.node}/${h.app} ${h.state}${h.reason ? ` (${h.reason})` : ''}${h.requestId ? ` requestId ${h.requestId}` : ''}${h.holds ? ', the holder' : ''}${why}`);
    }
    lines.push(`  store     ${this.storeSpec}; ${st.replicas.map((r) => `${r.id} ${r.state}`).join(', ')}`);
    return { ok: true, target, owner: access?.owner ?? null, grants: access?.grants ?? [], record: record ?? null, earlier: tombstones.map((t) => ({ requestId: t.requestId, lastSeq: t.lastSeq, takenBy: t.takenBy ?? null })), session: session ?? null, lockLeftMs: leftMs ?? null, handles, replicas: st.replicas.map((r) => ({ id: r.id, state: r.state })), text: lines.join('\n') };
  }

  /**
   * The target a requestId the cluster's handles are not using now holds or held: from the timeline,
   * and from a SQLite store itself (its records and tombstones); undefined if neither knows it.
   */
  private async targetOfRequest(requestId: string): Promise<string | undefined> {
    const seen = this.timeline.list().find((e) => e.kind === 'handle' && e.requestId === requestId);
    if (seen?.kind === 'handle') return seen.target;
    if (parseStoreSpec(this.storeSpec).kind !== 'sqlite') return undefined;
    try {
      return findRequestSqlite(this.dbPath, requestId);
    } catch (err) {
      throw new SafeResumeError('UNAVAILABLE', `the store cannot be read: ${(err as Error).message}`);
    }
  }

  /** Stop every workload (chaos mode) and wait until each node has flushed its history. */
  async stopWorkloads(): Promise<void> {
    const nodes = [...this.children.values()].filter((c) => c.role === 'node' && c.proc?.connected);
    await Promise.all(
      nodes.map(
        (c) =>
          new Promise<void>((resolve) => {
            const onMsg = (m: unknown) => {
              if ((m as { type?: string }).type === 'workload-stopped') {
                c.proc?.off('message', onMsg);
                clearTimeout(deadline); // a pending deadline would keep this process up 10 s longer
                setTimeout(resolve, 400); // one more status report carries the last history
              }
            };
            c.proc!.on('message', onMsg);
            c.proc!.send({ type: 'stop-workload' } satisfies ChildCommand);
            const deadline = setTimeout(resolve, 10_000);
          }),
      ),
    );
  }

  /** The store's half of the history (commit order) and the final bytes of every target. */
  async storeHistory(): Promise<{ events: unknown[]; finals: Array<{ target: string; bytes: string }> }> {
    const latin1 = (ts: Array<{ target: string; data: Uint8Array }>) => ts.map((t) => ({ target: t.target, bytes: Buffer.from(t.data).toString('latin1') }));
    const spec = parseStoreSpec(this.storeSpec);
    if (spec.kind === 'etcd') {
      const store = new EtcdStore(spec.endpoints, { ...this.etcdOptions(), timeoutMs: 10_000 });
      try {
        const events = (await store.readLog()).map((l) => JSON.parse(l) as unknown);
        return { events, finals: latin1(await store.targets()) };
      } finally {
        await store.shutdown();
      }
    }
    const store = new SqliteStore(this.dbPath);
    try {
      const events = store.readHistory().map((l) => JSON.parse(l) as unknown);
      return { events, finals: latin1(store.targets()) };
    } finally {
      void store.shutdown();
    }
  }

  /**
   * Out at once (a second Ctrl-C): SIGKILL every process this cluster runs, give back the links it
   * cut, and drop the control endpoint's file. Synchronous: the caller exits right after.
   */
  killNow(): void {
    this.stopping = true;
    for (const t of this.timers) clearTimeout(t);
    for (const c of this.children.values()) c.proc?.kill('SIGKILL');
    for (const m of this.etcd?.members ?? []) m.proc?.kill('SIGKILL');
    for (const id of this.cut) {
      const host = this.host(id);
      if (host) setLink(host, true);
    }
    rmSync(join(this.opts.dir, 'control.json'), { force: true });
  }

  async down(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    for (const t of this.timers) clearTimeout(t);
    this.cli?.crash();
    // Links this cluster cut come back: the namespaces are the operator's.
    for (const id of this.cut) {
      const host = this.host(id);
      if (host) setLink(host, true);
    }
    this.cut.clear();
    const exits = [...this.children.values()].filter((c) => c.proc).map((c) => {
      const proc = c.proc!;
      return new Promise<void>((resolve) => {
        if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
        const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
        proc.once('exit', () => {
          clearTimeout(timer);
          resolve();
        });
        if (proc.connected) proc.send({ type: 'shutdown' } satisfies ChildCommand);
        else proc.kill('SIGKILL');
      });
    });
    await Promise.all(exits);
    for (const ps of this.proxies.values()) for (const p of ps) await p.close();
    if (this.control?.listening) {
      const closed = new Promise<void>((r) => this.control!.close(() => r()));
      this.control.closeAllConnections(); // a kept-alive connection would keep this process running
      await closed;
    }
    await this.inspector?.close();
    await this.relay?.close();
    // The store's own processes go last, once no replica needs them.
    await this.etcd?.stop();
    rmSync(join(this.opts.dir, 'control.json'), { force: true });
  }

  // ---- The control endpoint ----

  /**
   * Only the CLI talks to it: a request must carry the token, under a loopback Host, and no Origin
   * (a web page's request has one), before its body is even read.
   */
  private async listen(): Promise<void> {
    let port = 0;
    this.control = createServer(HTTP_TIMEOUTS, (req, res) => {
      const refusal = checkHostOrigin(req, port, 'none') ?? checkToken(bearer(req), this.token);
      if (refusal) {
        req.resume();
        return refuse(res, refusal);
      }
      void readBody(req, res).then(async (body) => {
        if (body === undefined) return;
        const r = await this.command(req.method ?? 'GET', req.url ?? '/', body);
        res.writeHead(r.ok ? 200 : 400, { 'content-type': 'application/json' });
        res.end(JSON.stringify(r));
      });
    });
    capConnections(this.control);
    await new Promise<void>((r) => this.control!.listen(0, '127.0.0.1', r));
    port = (this.control.address() as net.AddressInfo).port;
    this.controlUrl = `http://127.0.0.1:${port}`;
    // The token with the address, for the CLI: a file only its owner can read (made afresh, so an
    // older file's mode does not carry over).
    const file = join(this.opts.dir, 'control.json');
    rmSync(file, { force: true });
    writeFileSync(file, JSON.stringify({ url: this.controlUrl, pid: process.pid, token: this.token }) + '\n', { mode: 0o600 });
  }

  /**
   * One command, as the control endpoint and the inspector page send it. What breaks or changes the
   * cluster goes on the timeline at the time it was asked (what only looks does not): a fault if it was
   * done (or a write whose outcome is unknown), marked refused with the code if nothing was done.
   */
  async command(method: string, url: string, body: string): Promise<ControlResult> {
    const at = Date.now();
    const r = await this.run(method, url, body);
    if (method === 'POST' && FAULT_COMMANDS.has(url)) {
      const what = commandText(url, body);
      if (r.ok) this.timeline.add({ at, kind: 'fault', what });
      else if (r.code === 'OUTCOME_UNKNOWN') this.timeline.add({ at, kind: 'fault', what: `${what} (outcome unknown)` });
      else this.timeline.add({ at, kind: 'refused', what, code: r.code, message: r.message.slice(0, 300) });
    }
    return r;
  }

  private async run(method: string, url: string, body: string): Promise<ControlResult> {
    try {
      if (method === 'GET' && url === '/status') return { ok: true, ...this.status() };
      // The CLI's status: with each paused handle's hold period, read from the store.
      if (method === 'GET' && url === '/status?hold=1') {
        const st = this.status();
        await this.holds(st.handles as Array<HandleStatus & Hold>);
        return { ok: true, ...st };
      }
      if (method === 'GET' && (url === '/events' || url.startsWith('/events?'))) {
        const q = new URLSearchParams(url.slice('/events'.length));
        // `after`: the `next` of an earlier answer, for only what came since (the inspector polls so).
        const after = Number(q.get('after') ?? 0);
        return { ok: true, events: this.timeline.list(q.get('target') ?? undefined, Number.isSafeInteger(after) && after > 0 ? after : 0), next: this.timeline.next };
      }
      if (method !== 'POST') throw new SafeResumeError('INVALID_ARGUMENT', `unknown endpoint ${method} ${url}`);
      const args = (body ? JSON.parse(body) : {}) as Record<string, unknown>;
      const str = (k: string) => {
        const v = args[k];
        if (typeof v !== 'string' || v.length === 0) throw new SafeResumeError('INVALID_ARGUMENT', `missing ${k}`);
        return v;
      };
      const num = (k: string) => (typeof args[k] === 'number' ? (args[k] as number) : undefined);
      switch (url) {
        case '/kill':
          return this.kill(str('id'));
        case '/restart':
          return await this.restart(str('id'));
        case '/partition':
          return this.partition(str('node'), num('for'));
        case '/heal':
          return this.heal(typeof args.node === 'string' ? args.node : undefined);
        case '/dismount':
          return this.dismount(str('replica'), num('for') ?? 10);
        case '/reboot-storage':
          return await this.rebootStorage();
        case '/move':
          return await this.move(str('app'), str('to'));
        case '/write':
          return await this.write(str('target'), str('text'), typeof args.as === 'string' ? args.as : 'cli');
        case '/read':
          return await this.read(str('target'), num('offset'), num('length'));
        case '/create':
          return await this.create(str('target'), num('size'));
        case '/explain':
          return await this.explain(str('what'));
        case '/grant':
          return await this.access(str('target'), str('principal'), str('mode'));
        case '/revoke':
          return await this.access(str('target'), str('principal'), 'none');
        case '/down':
          setTimeout(() => process.kill(process.pid, 'SIGTERM'), 50);
          return { ok: true, down: true };
        default:
          throw new SafeResumeError('INVALID_ARGUMENT', `unknown endpoint ${method} ${url}`);
      }
    } catch (err) {
      if (err instanceof SafeResumeError) return { ok: false, code: err.code, message: err.message };
      if (err instanceof SyntaxError) return { ok: false, code: 'INVALID_ARGUMENT', message: `body is not JSON: ${err.message}` };
      return { ok: false, code: 'INTERNAL', message: String(err) };
    }
  }
}

/** A command of FAULT_COMMANDS as the timeline tells it: `kill replica-1`, `write app-1.disk "x" intruder`. */
function commandText(url: string, body: string): string {
  let args: Record<string, unknown> = {};
  try {
    const parsed: unknown = body ? JSON.parse(body) : {};
    if (typeof parsed === 'object' && parsed !== null) args = parsed as Record<string, unknown>;
  } catch {
    // Refused as not JSON: the command's name says enough.
  }
  return [url.slice(1), ...Object.entries(args).map(([k, v]) => (k === 'text' ? JSON.stringify(v) : k === 'for' ? `for ${String(v)} s` : String(v)))].join(' ');
}

/** A target's owner and access list, in one line. */
function accessLine(target: string, a: TargetAccess): string {
  return `${target}: owner ${a.owner}; ${a.grants.length === 0 ? 'no other principal may open it' : `access: ${a.grants.map((g) => `${g.principal} ${g.mode}`).join(', ')}`}`;
}

/** A handle's lock as `status` tells it (see Launcher.holds). */
interface Hold {
  hold?: 'renewed' | 'running' | 'lapsed' | 'taken' | null;
  holdLeftMs?: number | null;
}

/**
 * Who took a lapsed requestId's target, and when (UTC). `at` is on the store's clock; `storeNow`, that
 * clock now, turns it into this host's time (a SQLite store counts from boot); without it `at` is one.
 */
function takenOver(t: NonNullable<Tombstone['takenBy']>, storeNow: number | undefined): string {
  const at = storeNow === undefined ? t.at : Date.now() - (storeNow - t.at);
  return `requestId ${t.requestId} (principal ${t.principal}) took the target over at ${new Date(at).toISOString()}`;
}
