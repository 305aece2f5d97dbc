/**
 * What an operator scrapes: `/metrics` in Prometheus text format (prom-client) and `/healthz` on every
 * replica and node agent process, on 127.0.0.1. Gauges are read from the actor when scraped; counters
 * and histograms are fed by the actors' `observe` hooks (no-ops unless metrics are served).
 */
import { createServer, type Server } from 'node:http';
import { capConnections, HTTP_TIMEOUTS } from '../runtime/http-limits.js';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { NodeAgent } from '../actors/node-agent.js';
import type { StorageReplica } from '../actors/replica.js';

/** Latency buckets in seconds: 100 µs to 2.5 s. */
const BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];
const STATES = ['opening', 'active', 'paused', 'resuming', 'invalidated', 'closing', 'closed'] as const;

/** `safe_resume_handles{state}`: every state, counted from `list` when scraped. */
function handlesByState(registry: Registry, help: string, list: () => Array<{ state: string }>): void {
  new Gauge({
    name: 'safe_resume_handles',
    help,
    labelNames: ['state'],
    registers: [registry],
    collect() {
      const counts = new Map<string, number>(STATES.map((s) => [s, 0]));
      for (const h of list()) counts.set(h.state, (counts.get(h.state) ?? 0) + 1);
      for (const [state, n] of counts) this.set({ state }, n);
    },
  });
}

export interface Health {
  ok: boolean;
  [k: string]: unknown;
}

/** The hooks a replica calls (ReplicaOptions.observe), and its registry. */
export function replicaMetrics(getReplica: () => StorageReplica | undefined): {
  registry: Registry;
  observe: NonNullable<import('../actors/replica.js').ReplicaOptions['observe']>;
} {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'safe_resume_process_' });
  new Gauge({
    name: 'safe_resume_sessions',
    help: 'Node agent sessions this replica serves',
    registers: [registry],
    collect() {
      this.set(getReplica()?.sessionCount ?? 0);
    },
  });
  handlesByState(
    registry,
    'Handles this replica knows, by state (paused: its session was lost and the hold period runs)',
    () => getReplica()?.handles() ?? [],
  );
  new Gauge({
    name: 'safe_resume_store_available',
    help: "1 while the replica's store is mounted, 0 while it is dismounted",
    registers: [registry],
    collect() {
      const r = getReplica();
      this.set(r && !r.isDismounted ? 1 : 0);
    },
  });
  const resumes = new Counter({
    name: 'safe_resume_resumes_total',
    help: 'Resume items answered, by outcome (granted, or the denial code)',
    labelNames: ['outcome'],
    registers: [registry],
  });
  const requests = new Histogram({
    name: 'safe_resume_request_seconds',
    help: "Time from a request's arrival to its answer, by type",
    labelNames: ['type'],
    buckets: BUCKETS,
    registers: [registry],
  });
  const transactions = new Histogram({
    name: 'safe_resume_store_transaction_seconds',
    help: 'Time of one store transaction (a group commit carries many operations)',
    buckets: BUCKETS,
    registers: [registry],
  });
  const writes = new Counter({
    name: 'safe_resume_writes_applied_total',
    help: 'Writes the store applied',
    registers: [registry],
  });
  const bad = new Counter({
    name: 'safe_resume_bad_frames_total',
    help: 'Frames refused as malformed',
    registers: [registry],
  });
  return {
    registry,
    observe: {
      request: (type, ms) => requests.observe({ type }, ms / 1000),
      resume: (outcome) => resumes.inc({ outcome }),
      transaction: (ms) => transactions.observe(ms / 1000),
      writeApplied: () => writes.inc(),
      badFrame: () => bad.inc(),
    },
  };
}

/** The hooks a node agent calls (NodeAgentOptions.observe), and its registry. */
export function nodeMetrics(getAgent: () => NodeAgent | undefined): {
  registry: Registry;
  observe: NonNullable<import('../actors/node-agent.js').NodeAgentOptions['observe']>;
} {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'safe_resume_process_' });
  handlesByState(registry, "Handles of this node's applications, by state", () => getAgent()?.list() ?? []);
  new Gauge({
    name: 'safe_resume_session_connected',
    help: '1 while the node has a session with a replica',
    registers: [registry],
    collect() {
      this.set(getAgent()?.state === 'connected' ? 1 : 0);
    },
  });
  const transitions = new Counter({
    name: 'safe_resume_handle_transitions_total',
    help: 'Handle lifecycle changes, by the state entered (paused counts pauses; active after resuming counts granted resumes)',
    labelNames: ['to', 'reason'],
    registers: [registry],
  });
  const ops = new Histogram({
    name: 'safe_resume_operation_seconds',
    help: "Time from an application's call to its answer, by kind and outcome",
    labelNames: ['kind', 'outcome'],
    buckets: BUCKETS,
    registers: [registry],
  });
  return {
    registry,
    observe: {
      transition: (to, reason) => transitions.inc({ to, reason: reason ?? '' }),
      operation: (kind, ok, ms) => ops.observe({ kind, outcome: ok ? 'ok' : 'error' }, ms / 1000),
    },
  };
}

/**
 * Serve `/metrics` and `/healthz` on host:port (default 127.0.0.1; port 0: a free one). Only GET; a Host
 * header other than the loopback names or the address listened on is refused (a page elsewhere cannot
 * read it through DNS rebinding).
 */
export async function serveMetrics(
  registry: Registry,
  health: () => Health,
  port = 0,
  listen = '127.0.0.1',
): Promise<{ url: string; close(): Promise<void> }> {
  const allowed = ['127.0.0.1', 'localhost', '[::1]', listen];
  const server: Server = createServer(HTTP_TIMEOUTS, (req, res) => {
    const host = (req.headers.host ?? '').replace(/:\d+$/, '');
    if (!allowed.includes(host))
      return void res.writeHead(403, { 'content-type': 'text/plain' }).end('forbidden host\n');
    if (req.method !== 'GET')
      return void res.writeHead(405, { allow: 'GET', 'content-type': 'text/plain' }).end('GET only\n');
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/healthz') {
      const h = health();
      return void res.writeHead(h.ok ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify(h) + '\n');
    }
    if (path !== '/metrics')
      return void res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: /metrics or /healthz\n');
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (err: unknown) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics failed: ${String(err)}\n`),
    );
  });
  capConnections(server);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, listen, () => resolve());
  });
  server.on('error', () => undefined);
  const url = `http://${listen}:${(server.address() as AddressInfo).port}`;
  return { url, close: () => new Promise<void>((r) => (server.closeAllConnections(), server.close(() => r()))) };
}
