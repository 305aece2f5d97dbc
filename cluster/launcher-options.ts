/** What a launcher is started with, and what each of its commands answers. */
import type { Logger } from 'pino';
import type { TlsFiles } from '../transport/tls.js';
import type { HostPlan } from '../runtime/hosts.js';

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
  /** Put each process on a host of its own (a network namespace with its address): runtime/hosts.ts. */
  hosts?: HostPlan | undefined;
  /** Also serve each node's export on TCP (127.0.0.1), where clients must prove a principal with TLS-PSK. */
  nbdTcp?: boolean | undefined;
  /** A group whose members may reach the export sockets too (name or number); default: the owner only. */
  nbdGroup?: string | undefined;
}

/** `deadline`: the command gave up waiting for the storage (the CLI exits 8). */
export type ControlResult =
  { ok: true; [k: string]: unknown } | { ok: false; code: string; message: string; deadline?: boolean };
