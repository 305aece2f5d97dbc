/**
 * The launcher of a local cluster: storage replicas and node agents as separate OS processes on
 * 127.0.0.1 over one SQLite file, fault proxies between every node and every replica, and one
 * control endpoint (HTTP on 127.0.0.1) that the CLI commands talk to. The control endpoint, the
 * inspector and the Stately relay are locked with one control token, made at start and kept in
 * the 0600 <dir>/control.json (see runtime/http-guard.ts).
 */
import type { Server } from 'node:http';
import { rmSync } from 'node:fs';
import { privateDataDir } from './private-dir.js';
import { newToken } from '../runtime/http-guard.js';
import { join } from 'node:path';
import { loadOrCreateSecret } from '../actors/auth.js';
import { SafeResumeError } from '../errors.js';
import { Timeline } from './timeline.js';
import type { TlsFiles } from '../transport/tls.js';
import { FaultProxy } from '../transport/fault-proxy.js';
import { EtcdMembers } from '../runtime/etcd-members.js';
import { readEtcdTls, type EtcdTls } from '../runtime/etcd-tls.js';
import { type Host } from '../runtime/hosts.js';
import type { ChildCommand, HandleStatus } from '../runtime/ipc.js';
import { InspectorServer, StatelyRelay } from '../runtime/inspector-server.js';
import { groupId, nbdSocketPath } from './nbd-dir.js';
import { StoreView } from './store-view.js';
import { Links } from './links.js';
import { spawnNodes, spawnReplicas, startEmpty, startStore, type Spawning } from './spawn.js';
import { AdHoc } from './ad-hoc.js';
import { Children, sumInto, type Child } from './children.js';
import { explain, holds, tellTakeovers, type Explaining, type Hold } from './explain.js';
import { command, listenControl } from './control-server.js';
import type { ControlResult, LauncherOptions } from './launcher-options.js';

export type { ControlResult, LauncherOptions } from './launcher-options.js';

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
  private timers = new Set<NodeJS.Timeout>();
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
  /** The local members' certificates (runtime/etcd-tls.ts); the replicas and this process reach them with `client`. */
  etcdTls: EtcdTls | undefined;
  /** The store the replicas run over (sqlite:PATH or etcd://...). */
  storeSpec = '';
  /** Each node's NBD export: its Unix socket (`nbd+unix:///?socket=<dir>/nbd/<node>.sock`). */
  readonly nbdUrls = new Map<string, string>();
  /** And with `nbdTcp`, its TLS-only TCP address (`nbds://127.0.0.1:PORT/`). */
  readonly nbdTlsUrls = new Map<string, string>();
  /** Partitions and cut links (links.ts). */
  private readonly links = new Links(
    this.proxies,
    (id) => this.host(id),
    (ms, fn) => this.later(ms, fn),
  );
  /** The processes: started, watched, counted, stopped (children.ts). */
  private readonly kids: Children;
  /** The store, as this process reads it (explain, status's holds, read's access check, chaos's history). */
  private readonly store = new StoreView(() => ({
    spec: this.storeSpec,
    dbPath: this.dbPath,
    etcd: this.etcdOptions(),
  }));
  /** The ad-hoc applications of write, read, create, grant and revoke, on a node agent of this process's own. */
  private readonly adHoc: AdHoc;

  constructor(readonly opts: LauncherOptions) {
    privateDataDir(opts.dir);
    this.secret = loadOrCreateSecret(opts.dir);
    this.kids = new Children(this.children, {
      log: opts.log,
      timeline: this.timeline,
      history: this.history,
      recording: opts.history,
      host: (id) => this.host(id),
      watching: () => this.watching || opts.statelyPort !== undefined,
      onTimeline: (events) => tellTakeovers(this.store, events),
    });
    this.adHoc = new AdHoc({
      opts: this.opts,
      secret: this.secret,
      store: this.store,
      urls: () => this.replicaUrls,
      names: () => this.replicaNames(),
      inspector: () => this.inspector,
      replicaStates: () =>
        [...this.children.values()]
          .filter((c) => c.role === 'replica')
          .map(
            (c) =>
              `${c.id} ${!c.proc ? 'down' : c.status?.role === 'replica' && c.status.dismounted ? 'dismounted' : 'serving but not answering'}`,
          )
          .join(', '),
    });
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
    if (this.opts.history) startEmpty(this.opts);
    let inspectorWs: string | undefined;
    if (this.opts.inspectorPort !== undefined) {
      this.inspector = new InspectorServer(
        {
          watching: (on) => {
            this.watching = on || this.opts.statelyPort !== undefined;
            on = this.watching;
            for (const c of this.children.values())
              if (c.proc?.connected) c.proc.send({ type: 'watch', on } satisfies ChildCommand);
          },
          status: () => ({ ok: true, ...this.status() }),
          command: (method, path, body) => this.command(method, path, body),
          ...(this.opts.statelyPort !== undefined ? { forward: await this.stately(this.opts.statelyPort) } : {}),
        },
        { token: this.token },
      );
      const url = await this.inspector.listen(this.opts.inspectorPort);
      inspectorWs = `${url.replace('http', 'ws')}/inspect`;
    }
    const store = await startStore(this.opts, this.dbPath, (id) => this.host(id));
    this.etcd = store.etcd;
    this.etcdTls = store.etcdTls;
    this.storeSpec = store.spec;
    const spawning: Spawning = {
      opts: this.opts,
      secret: this.secret,
      kids: this.kids,
      storeSpec: this.storeSpec,
      etcdTls: this.etcdTls,
      nbdGid: this.nbdGid,
      inspectorWs,
      replicaUrls: this.replicaUrls,
      proxies: this.proxies,
      apps: this.apps,
      nbdUrls: this.nbdUrls,
      nbdTlsUrls: this.nbdTlsUrls,
      host: (id) => this.host(id),
      replicaNames: () => this.replicaNames(),
      tlsConfig: () => this.tlsConfig(),
      inspectorConfig: (id, url) => this.inspectorConfig(id, url),
    };
    await spawnReplicas(spawning);
    await Promise.all([...this.children.values()].map((c) => c.ready));
    await spawnNodes(spawning);
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
    return url && this.inspector && !this.host(id)
      ? { inspector: url, inspectorToken: this.inspector.processCredential(id) }
      : {};
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

  /** Run `fn` after `ms`, unless the cluster is brought down first. */
  later(ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
  }

  // ---- Commands (the control endpoint and chaos mode call these) ----

  /**
   * Every replica and node (with when its process started, and exited if it is down), the handles of
   * the running nodes, and the counters: a replica's `stats` and `totals` count from the start of the
   * cluster, through restarts; a handle's `acked` (and the rest) is its node process's.
   */
  status(): Record<string, unknown> {
    const { replicas, nodes, handles, counted } = this.kids.rows((id) => this.links.isCutOff(id));
    // Writes acknowledged, verified and failed by every application, and every replica's stats, summed.
    const totals = { ...sumInto({ acked: 0, verified: 0, failed: 0 }, ...counted), pauses: this.timeline.pauses };
    const etcd = this.etcd?.members.map((m) => ({
      id: m.id,
      state: m.proc ? 'running' : 'down',
      pid: m.proc?.pid ?? null,
      endpoint: m.endpoint,
    }));
    return {
      replicas,
      nodes,
      handles,
      totals,
      ...(etcd ? { etcd } : {}),
      store: this.storeSpec,
      control: this.controlUrl,
      dir: this.opts.dir,
      ...(this.chaos ? { chaos: this.chaos } : {}),
    };
  }

  kill(id: string): ControlResult {
    if (this.etcd?.member(id)) {
      this.etcd.kill(id);
      return { ok: true, killed: id };
    }
    const c = this.kids.child(id);
    if (!c.proc) throw new SafeResumeError('UNAVAILABLE', `${id} is not running`);
    this.kids.noteCrash(c);
    c.proc.kill('SIGKILL');
    return { ok: true, killed: id };
  }

  async restart(id: string): Promise<ControlResult> {
    if (this.kids.stopping) throw new SafeResumeError('UNAVAILABLE', `the cluster is stopping: ${id} is not restarted`);
    if (this.etcd?.member(id)) {
      await this.etcd.restart(id);
      return { ok: true, restarted: id };
    }
    // A node's applications come back and reclaim the requestIds the node kept on disk.
    await this.kids.restart(
      id,
      [...this.apps.entries()].filter(([, a]) => a.node === id).map(([name, a]) => ({ name, target: a.target })),
    );
    return { ok: true, restarted: id };
  }

  /** Cut `node` off every replica, healed after `forS` seconds if given (links.ts). */
  partition(node: string, forS?: number): ControlResult {
    return this.links.partition(node, forS);
  }

  /** Heal `node` (or every node); `healed` names only those that were cut off (partitioned or losing replies). */
  heal(node?: string): ControlResult {
    return this.links.heal(node);
  }

  /** Cut a replica's (or node's) host off the network for `forS` seconds (--netns). */
  cutLink(id: string, forS: number): ControlResult {
    this.kids.child(id);
    return this.links.cutLink(id, forS);
  }

  dismount(replica: string, forS: number): ControlResult {
    const c = this.kids.child(replica, 'replica');
    this.kids.tell(c, { type: 'dismount' });
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
    const from = this.kids.child(a.node, 'node');
    const dest = this.kids.child(to, 'node');
    if (!dest.proc) throw new SafeResumeError('UNAVAILABLE', `${to} is not running`);
    let requestId: string | undefined;
    if (from.proc?.connected) requestId = await this.kids.release(from, app);
    this.kids.tell(dest, { type: 'host', app, target: a.target, ...(requestId ? { requestId } : {}) });
    this.apps.set(app, { node: to, target: a.target });
    return { ok: true, moved: app, from: from.id, to, requestId: requestId ?? null };
  }

  /** An ad-hoc application writes `text` at offset 0 of the target: the foreign writer of the docs. */
  write(target: string, text: string, as = 'cli'): Promise<ControlResult> {
    return this.adHoc.write(target, text, as);
  }

  /** Create a disk: `target` with a size fixed now (sparse: nothing is written). Said again with the same size, it is a no-op. */
  create(target: string, size: number | undefined): Promise<ControlResult> {
    return this.adHoc.create(target, size);
  }

  /** Read `length` bytes at `offset` as principal default (ad-hoc.ts). */
  read(target: string, offset?: number, length?: number): Promise<ControlResult> {
    return this.adHoc.read(target, offset, length);
  }

  /** The operator grants `principal` read or write access to a target, or revokes it (`none`). */
  access(target: string, principal: string, mode: string): Promise<ControlResult> {
    return this.adHoc.access(target, principal, mode);
  }

  /** Why a target (or the handle of a requestId) is where it is (explain.ts). */
  explain(what: string): Promise<ControlResult> {
    return explain(this.explaining(), what);
  }

  /** Each paused or resuming handle's lock, from the store (explain.ts). */
  holds(handles: Array<HandleStatus & Hold>): Promise<void> {
    return holds(this.explaining(), handles);
  }

  /** What explain and holds read. */
  private explaining(): Explaining {
    return {
      status: () => this.status(),
      liveSessions: () => this.kids.liveSessions(),
      targetOfRequest: (id) => this.targetOfRequest(id),
      store: this.store,
      storeSpec: this.storeSpec,
    };
  }

  /**
   * The target a requestId the cluster's handles are not using now holds or held: from the timeline,
   * and from a SQLite store itself (its records and tombstones); undefined if neither knows it.
   */
  private async targetOfRequest(requestId: string): Promise<string | undefined> {
    const seen = this.timeline.list().find((e) => e.kind === 'handle' && e.requestId === requestId);
    if (seen?.kind === 'handle') return seen.target;
    return this.store.targetOfRequest(requestId);
  }

  /** Stop every workload (chaos mode) and wait until each node has flushed its history. */
  stopWorkloads(): Promise<void> {
    return this.kids.stopWorkloads();
  }

  /** The store's half of the history (commit order) and the final bytes of every target. */
  storeHistory(): Promise<{ events: unknown[]; finals: Array<{ target: string; bytes: string }> }> {
    return this.store.history();
  }

  /**
   * Out at once (a second Ctrl-C): SIGKILL every process this cluster runs, give back the links it
   * cut, and drop the control endpoint's file. Synchronous: the caller exits right after.
   */
  killNow(): void {
    this.kids.stopping = true;
    for (const t of this.timers) clearTimeout(t);
    this.kids.killAll();
    for (const m of this.etcd?.members ?? []) m.proc?.kill('SIGKILL');
    this.links.restoreAll();
    rmSync(join(this.opts.dir, 'control.json'), { force: true });
  }

  async down(): Promise<void> {
    if (this.kids.stopping) return;
    this.kids.stopping = true;
    for (const t of this.timers) clearTimeout(t);
    this.adHoc.crash();
    // Links this cluster cut come back: the namespaces are the operator's.
    this.links.restoreAll();
    await this.kids.stopAll();
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

  /** The control endpoint (control-server.ts): only the CLI talks to it, with the token. */
  private async listen(): Promise<void> {
    const { server, url } = await listenControl(this.opts.dir, this.token, (method, path, body) =>
      this.command(method, path, body),
    );
    this.control = server;
    this.controlUrl = url;
  }

  /** One command, as the control endpoint and the inspector page send it (control-server.ts). */
  command(method: string, url: string, body: string): Promise<ControlResult> {
    return command(this, method, url, body);
  }
}
