/**
 * An in-process cluster of storage replicas over one store, for tests, examples and the demo.
 * Each SQLite replica opens its own connection to the shared database file, as separate replica
 * processes on one host would.
 */
import { join } from 'node:path';
import { loadOrCreateSecret } from '../actors/auth.js';
import { defaultEnv, type Env } from '../actors/env.js';
import { NodeAgent, type NodeAgentOptions } from '../actors/node-agent.js';
import { StorageReplica, type ReplicaOptions } from '../actors/replica.js';
import { MemoryStore } from '../store/memory.js';
import type { SqliteStoreOptions } from '../store/sqlite.js';
import { openStore } from '../store/open.js';
import type { Store } from '../store/types.js';
import type { Transport } from '../transport/types.js';
import { FaultProxy } from '../transport/fault-proxy.js';
import { WebSocketTransport } from '../transport/ws.js';

export interface LocalClusterOptions {
  dir: string;
  replicas?: number;
  /** `sqlite` (default: <dir>/store.sqlite), `memory` (replicas share one in-process state), or any spec of store/open.ts. */
  store?: string;
  sqlite?: SqliteStoreOptions;
  transport?: Transport;
  secret?: string;
  env?: Partial<Env>;
  replica?: Partial<
    Pick<ReplicaOptions, 'holdMs' | 'leaseMs' | 'renewIntervalMs' | 'heartbeatIntervalMs' | 'probeIntervalMs'>
  >;
  /** Replica i listens on basePort + i (default: free ports). */
  basePort?: number;
  node?: Partial<
    Pick<NodeAgentOptions, 'heartbeatIntervalMs' | 'backoffBaseMs' | 'backoffMaxMs' | 'unavailableFailoverMs'>
  >;
}

export class LocalCluster {
  readonly replicas: StorageReplica[] = [];
  readonly urls: string[] = [];
  readonly secret: string;
  readonly transport: Transport;
  readonly nodes: NodeAgent[] = [];
  private readonly ports: number[] = [];
  private readonly memory = new MemoryStore();
  /** Per node, one fault proxy per replica, when the node was added with `proxied`. */
  readonly links = new Map<string, FaultProxy[]>();

  private constructor(readonly opts: LocalClusterOptions) {
    this.transport = opts.transport ?? new WebSocketTransport();
    this.secret = opts.secret ?? loadOrCreateSecret(opts.dir);
  }

  static async start(opts: LocalClusterOptions): Promise<LocalCluster> {
    const c = new LocalCluster(opts);
    for (let i = 0; i < (opts.replicas ?? 3); i++) {
      const r = await c.startReplica(i, opts.basePort ? opts.basePort + i : undefined);
      c.urls.push(r.url);
      c.ports.push(Number(new URL(r.url).port) || 0);
    }
    return c;
  }

  get dbPath(): string {
    return join(this.opts.dir, 'store.sqlite');
  }

  openStore(): Store {
    // In one process, "memory" replicas share one state, as replicas share one store.
    const spec = this.opts.store ?? 'sqlite';
    if (spec === 'memory') return new MemoryStore(this.memory.state);
    return openStore(
      spec === 'sqlite' ? { kind: 'sqlite', path: this.dbPath } : spec,
      this.opts.sqlite ? { sqlite: this.opts.sqlite } : {},
    );
  }

  private async startReplica(i: number, port?: number): Promise<StorageReplica> {
    const env = defaultEnv(this.opts.env);
    const r = new StorageReplica({
      id: `replica-${i + 1}`,
      store: this.openStore(),
      transport: this.transport,
      secret: this.secret,
      env,
      ...this.opts.replica,
      ...(port ? { port } : {}),
    });
    await r.start();
    this.replicas[i] = r;
    return r;
  }

  replica(i: number): StorageReplica {
    const r = this.replicas[i];
    if (!r) throw new Error(`no replica ${i}`);
    return r;
  }

  /** Crash replica `i`: its connections drop, its store connection closes. */
  async kill(i: number): Promise<void> {
    const r = this.replica(i);
    await r.stop();
    await r.store.shutdown();
  }

  /** Start replica `i` again on its old address, over the same store. */
  async restart(i: number): Promise<StorageReplica> {
    return this.startReplica(i, this.ports[i]);
  }

  /**
   * Start a node agent. With `proxied`, its links to the replicas go through fault proxies, so
   * `partition`, `heal` and `dropLinks` can break them for real (WebSocket transport only).
   */
  async addNode(id: string, extra: Partial<NodeAgentOptions> & { proxied?: boolean } = {}): Promise<NodeAgent> {
    const { proxied, ...rest } = extra;
    let replicas = this.urls;
    if (proxied) {
      const proxies = this.urls.map((u) => FaultProxy.forUrl(u));
      replicas = await Promise.all(proxies.map((p) => p.listen()));
      this.links.set(id, proxies);
    }
    const agent = new NodeAgent({
      id,
      replicas,
      transport: this.transport,
      secret: this.secret,
      dataDir: this.opts.dir,
      env: this.opts.env,
      ...this.opts.node,
      ...rest,
    });
    this.nodes.push(agent);
    await agent.start();
    return agent;
  }

  private proxies(node: string): FaultProxy[] {
    const p = this.links.get(node);
    if (!p) throw new Error(`${node} was not added with proxied: true`);
    return p;
  }

  /** Cut a node off from every replica, silently: bytes vanish, sockets stay open. */
  partition(node: string): void {
    for (const p of this.proxies(node)) p.partition();
  }

  heal(node: string): void {
    for (const p of this.proxies(node)) p.heal();
  }

  /** Reset every connection of a node (it reconnects at once). */
  dropLinks(node: string): void {
    for (const p of this.proxies(node)) p.drop();
  }

  /** The proxy between a node and replica `i`. */
  link(node: string, i: number): FaultProxy {
    const p = this.proxies(node)[i];
    if (!p) throw new Error(`no link from ${node} to replica ${i}`);
    return p;
  }

  /** Index of the replica a node's session is on. */
  servingIndex(agent: NodeAgent): number {
    return this.replicas.findIndex((r) => r.id === agent.replica);
  }

  async stop(): Promise<void> {
    for (const n of this.nodes) n.crash();
    for (const proxies of this.links.values()) for (const p of proxies) await p.close();
    for (const r of this.replicas) {
      await r.stop();
      await r.store.shutdown();
    }
  }
}
