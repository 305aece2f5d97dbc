/** The node role of a local cluster process: a node agent hosting the workload applications, and its NBD export. */
import { chmodSync, chownSync, rmSync } from 'node:fs';
import { z } from 'zod';
import { Application, type Handle } from '../actors/application.js';
import { NodeAgent } from '../actors/node-agent.js';
import { parseCredential } from '../actors/auth.js';
import { ChildCommand } from '../runtime/ipc.js';
import { runWorkload, type WorkloadStats } from './workload.js';
import { processInspector, watchedTransport } from '../runtime/inspect.js';
import { nodeMetrics, serveMetrics } from './metrics.js';
import { NbdExport } from '../frontends/nbd.js';
import { ConnectFailed, MetricsPort, TlsConfig, exit, logger, send, transportFor } from './child-process.js';
import { describeChanged } from '../store/rules-changed.js';

const NodeConfig = z.object({
  tls: TlsConfig,
  metricsPort: MetricsPort,
  id: z.string(),
  replicas: z.array(z.string()),
  /** The replicas' names, in the order of `replicas` (what the inspector calls them). */
  replicaNames: z.array(z.string()).optional(),
  dir: z.string(),
  /** The node's credential and its applications' principals' (JSON, as `safe-resume credentials issue` prints them). */
  credential: z.string(),
  principals: z.array(z.string()),
  pauseTimeoutMs: z.number().int().positive(),
  intervalMs: z.number().int().nonnegative(),
  apps: z.array(z.object({ name: z.string(), target: z.string(), requestId: z.string().optional() })),
  history: z.boolean(),
  pretty: z.boolean(),
  /** Reopen a target afresh after an invalidation (chaos runs); otherwise the handle stays invalidated. */
  reload: z.boolean(),
  inspector: z.string().optional(),
  /** This process's credential for the inspector's /inspect (sent in a header). */
  inspectorToken: z.string().optional(),
  /**
   * Serve every target as a block device over NBD on this Unix socket (a connection there acts as the
   * node's `default` principal); absent, no export. `nbdGroup`: the group that may connect too.
   */
  nbdSocket: z.string().optional(),
  nbdGroup: z.number().int().nonnegative().optional(),
  /** Also on 127.0.0.1 at this TCP port, for clients that prove a principal with TLS-PSK only. */
  nbdTlsPort: z.number().int().min(0).max(65535).optional(),
  /**
   * Ready only once connected: a node that no replica welcomed within this long fails to start, with
   * each replica's cause (the launcher's start-up). Absent, it is ready at once and keeps trying.
   */
  startTimeoutMs: z.number().int().positive().optional(),
});

interface HostedApp {
  name: string;
  target: string;
  app: Application;
  handle: Handle | undefined;
  stats: WorkloadStats;
  stop: () => Promise<void>;
  stopped: boolean;
  /** The reason of the last invalidation, kept across reloads. */
  lastReason: string | undefined;
  /** When the handle entered its state, and when it left `active` (for the pause timeout), on this process's clock. */
  since: number;
  awaySince: number | undefined;
  /** Acknowledged writes a few seconds ago, for the rate. */
  rate: { at: number; acked: number; perS: number };
}

/** Changes of state held between two reports (the oldest dropped beyond: the report still says where each handle is). */
const MAX_TRANSITIONS = 1000;

export async function node(raw: unknown): Promise<void> {
  const cfg = NodeConfig.parse(raw);
  const log = logger(cfg.dir, cfg.id, cfg.pretty);
  const insp = cfg.inspector ? processInspector(`${cfg.inspector}?from=${cfg.id}`, cfg.inspectorToken) : undefined;
  const env = { log, inspect: insp?.inspect };
  // What the metrics read, once made (they are made first: the agent observes through them).
  const made: { self?: NodeAgent } = {};
  const m = cfg.metricsPort !== undefined ? nodeMetrics(() => made.self) : undefined;
  const agent = new NodeAgent({
    ...(m ? { observe: m.observe } : {}),
    id: cfg.id,
    replicas: cfg.replicas,
    // Its protocol messages go to the inspector too, with the replica each went to or came from.
    transport: insp
      ? watchedTransport(transportFor(cfg.tls), insp.messages, (url) => cfg.replicaNames?.[cfg.replicas.indexOf(url)])
      : transportFor(cfg.tls),
    credential: parseCredential(cfg.credential, 'node credential'),
    principals: cfg.principals.map((p) => parseCredential(p, 'principal credential')),
    dataDir: cfg.dir,
    ...(cfg.startTimeoutMs !== undefined ? { startTimeoutMs: cfg.startTimeoutMs } : {}),
    env,
  });
  made.self = agent;
  const metrics = m
    ? await serveMetrics(
        m.registry,
        () => ({ ok: agent.state === 'connected', node: cfg.id, session: agent.state, replica: agent.replica ?? null }),
        cfg.metricsPort,
      )
    : undefined;
  // A replica is named as the operator knows it (the URL a node is given may be its fault proxy's).
  const named = (text: string) =>
    cfg.replicas
      .reduce(
        (t, url, i) =>
          cfg.replicaNames?.[i]
            ? t.replaceAll(`cannot connect to ${url}: `, '').replaceAll(url, `${cfg.replicaNames[i]} (${url})`)
            : t,
        text,
      )
      .replace(/\s+/g, ' ');
  const started = agent.start();
  if (cfg.startTimeoutMs !== undefined) {
    await started.catch((err: unknown) => {
      throw new ConnectFailed(named((err as Error).message));
    });
  } else started.catch((err: unknown) => log.error({ err: String(err) }, 'node agent could not start'));
  /**
   * Each handle's changes of state as they happen, sent with the next report: the timeline shows a
   * pause however short (a status report, every 300 ms, sees only where a handle is).
   */
  const transitions: Array<{
    at: number;
    app: string;
    target: string;
    requestId: string;
    state: string;
    reason: string | null;
    changed?: string;
  }> = [];
  const transition = (app: string, target: string, h: Handle): void => {
    if (transitions.length >= MAX_TRANSITIONS) transitions.shift();
    transitions.push({
      at: Date.now(),
      app,
      target,
      requestId: h.requestId,
      state: h.state,
      reason: h.reason ?? null,
      ...(h.state === 'invalidated' && h.changes ? { changed: describeChanged(h.changes) } : {}),
    });
  };
  // The block export: programs on this host open any target as a disk (one write handle per connection),
  // on a Unix socket only its owner (or --nbd-group) reaches, and on TCP for TLS-PSK clients if asked.
  const nbdApp =
    cfg.nbdSocket !== undefined
      ? new Application(agent, { name: `${cfg.id}-nbd`, pauseTimeoutMs: cfg.pauseTimeoutMs })
      : undefined;
  const perPrincipal = new Map<string, Application>();
  const appFor = (principal: string): Application => {
    if (principal === nbdApp!.principal) return nbdApp!;
    let a = perPrincipal.get(principal);
    if (!a)
      perPrincipal.set(
        principal,
        (a = new Application(agent, {
          name: `${cfg.id}-nbd:${principal}`,
          principal,
          pauseTimeoutMs: cfg.pauseTimeoutMs,
        })),
      );
    return a;
  };
  // Each handle an export connection serves through has its changes of state on the timeline, as a hosted
  // application's have, under a name of its own (`nbd#N`, numbered on this node).
  let nbdHandles = 0;
  const onHandle = (h: Handle, target: string): void => {
    const app = `nbd#${++nbdHandles}`;
    transition(app, target, h);
    h.on('state', () => transition(app, target, h));
  };
  const nbd = nbdApp ? new NbdExport({ app: nbdApp, appFor, path: cfg.nbdSocket!, log, onHandle }) : undefined;
  const nbdTls =
    nbdApp && cfg.nbdTlsPort !== undefined
      ? new NbdExport({ app: nbdApp, appFor, port: cfg.nbdTlsPort, log, onHandle })
      : undefined;
  // The export is a service of the node, not its reason to exist: one that cannot listen is logged and left out.
  const nbdUp = await (async () => {
    if (!nbd) return false;
    try {
      // The data directory is this node's alone (its launcher holds it): a socket left by a killed node goes.
      rmSync(cfg.nbdSocket!, { force: true });
      await nbd.listen();
      if (cfg.nbdGroup !== undefined) {
        chownSync(cfg.nbdSocket!, process.getuid?.() ?? -1, cfg.nbdGroup);
        chmodSync(cfg.nbdSocket!, 0o660);
      } else chmodSync(cfg.nbdSocket!, 0o600);
      await nbdTls?.listen();
      return true;
    } catch (err) {
      log.error({ err: String(err) }, 'the NBD export could not listen; the node runs without it');
      await nbd.close().catch(() => undefined);
      return false;
    }
  })();
  const apps = new Map<string, HostedApp>();
  const history: unknown[] = [];
  const record = (proc: string) => (e: Record<string, unknown>) => {
    if (cfg.history) history.push({ t: Date.now(), proc, ...e, id: `${cfg.id}:${String(e.id)}` });
  };

  /** Open the target (reclaiming a kept or given requestId) and write until stopped; reload after an invalidation. */
  const host = (name: string, target: string, requestId?: string): void => {
    const app = new Application(agent, { name, pauseTimeoutMs: cfg.pauseTimeoutMs, env });
    const hosted: HostedApp = {
      name,
      target,
      app,
      handle: undefined,
      stats: { acked: 0, verified: 0, failed: 0, lastError: undefined },
      stop: async () => {},
      stopped: false,
      lastReason: undefined,
      since: Date.now(),
      awaySince: undefined,
      rate: { at: Date.now(), acked: 0, perS: 0 },
    };
    apps.set(name, hosted);
    const proc = `${cfg.id}/${name}#${process.pid}`;
    const run = async (rid: string | undefined): Promise<void> => {
      while (!hosted.stopped) {
        try {
          const h = await app.open(target, rid ? { requestId: rid } : {});
          hosted.handle = h;
          hosted.since = Date.now();
          hosted.awaySince = undefined;
          transition(hosted.name, hosted.target, h);
          h.on('state', (to) => {
            transition(hosted.name, hosted.target, h);
            hosted.since = Date.now();
            if (to === 'active') hosted.awaySince = undefined;
            else if (to === 'paused') hosted.awaySince ??= hosted.since;
          });
          h.on('state', (to) =>
            record(proc)({
              kind: 'state',
              target,
              requestId: h.requestId,
              to,
              ...(h.reason && to === 'invalidated' ? { reason: h.reason } : {}),
              id: 0,
            }),
          );
          const w = runWorkload(h, `${proc}@${Date.now()}`, cfg.intervalMs, (e) => record(proc)({ ...e }));
          const before = hosted.stats;
          hosted.stats = w.stats;
          Object.assign(w.stats, {
            acked: w.stats.acked + before.acked,
            verified: w.stats.verified + before.verified,
            failed: w.stats.failed + before.failed,
          });
          hosted.stop = w.stop;
          await new Promise<void>((resolve) =>
            h.on('state', (s) => (s === 'invalidated' || s === 'closed') && resolve()),
          );
          hosted.lastReason = h.reason ?? hosted.lastReason;
          await w.stop();
          if (!cfg.reload) return;
        } catch (err) {
          hosted.stats.lastError = (err as { code?: string }).code ?? String(err);
        }
        rid = undefined; // after an invalidation the application reloads: a fresh open
        await new Promise((r) => setTimeout(r, 500));
      }
    };
    void run(requestId);
  };
  for (const a of cfg.apps) host(a.name, a.target, a.requestId);
  /** Time in state, pause timeout left, and writes per second (over at least 2 s) of a hosted application. */
  const timing = (a: HostedApp) => {
    const now = Date.now();
    if (now - a.rate.at >= 2000)
      a.rate = {
        at: now,
        acked: a.stats.acked,
        perS: Math.round(((a.stats.acked - a.rate.acked) * 1000) / (now - a.rate.at)),
      };
    const away =
      a.handle && (a.handle.state === 'paused' || a.handle.state === 'resuming') && a.awaySince !== undefined;
    return {
      inStateMs: now - a.since,
      pauseLeftMs: away ? Math.max(0, cfg.pauseTimeoutMs - (now - a.awaySince!)) : null,
      writesPerS: a.rate.perS,
    };
  };

  process.on('message', (m) => {
    const cmd = ChildCommand.safeParse(m);
    if (!cmd.success) return log.warn({ message: m }, 'bad command from launcher');
    const c = cmd.data;
    if (c.type === 'watch') insp?.watch(c.on);
    else if (c.type === 'release') {
      // The application moves away: this instance stops where it is (its requestId goes with it).
      const a = apps.get(c.app);
      if (!a) return send({ type: 'released', app: c.app, error: `${cfg.id} does not host ${c.app}` });
      a.stopped = true;
      const requestId = a.handle?.requestId;
      a.app.crash();
      apps.delete(c.app);
      send({ type: 'released', app: c.app, target: a.target, ...(requestId ? { requestId } : {}) });
    } else if (c.type === 'host') {
      host(c.app, c.target, c.requestId);
    } else if (c.type === 'stop-workload') {
      for (const a of apps.values()) a.stopped = true;
      void Promise.all([...apps.values()].map((a) => a.stop())).then(() => send({ type: 'workload-stopped' }));
    } else if (c.type === 'shutdown') {
      for (const a of apps.values()) a.stopped = true;
      void Promise.all([...apps.values()].map(async (a) => (await a.stop(), await a.handle?.close()))).finally(() => {
        agent.crash();
        exit(0);
      });
    }
  });
  const report = () => {
    if (transitions.length > 0) send({ type: 'transitions', events: transitions.splice(0) });
    send({
      type: 'status',
      role: 'node',
      id: cfg.id,
      state: agent.state,
      replica: agent.replica ?? null,
      ...(agent.state !== 'connected' && agent.lastConnectCause
        ? {
            cause: named(
              `${agent.lastConnectCause.cause} from ${agent.lastConnectCause.replica}: ${agent.lastConnectCause.message}`,
            ).slice(0, 1024),
          }
        : {}),
      ...(metrics ? { metrics: metrics.url } : {}),
      ...(nbd && nbdUp
        ? {
            nbd: {
              url: nbd.url,
              tls: nbdTls?.url || null,
              connections: [...nbd.connections(), ...(nbdTls?.connections() ?? [])].map((c) => ({
                ...c,
                reason: c.reason ?? null,
              })),
            },
          }
        : {}),
      handles: [...apps.values()].map((a) => ({
        app: a.name,
        target: a.target,
        requestId: a.handle?.requestId ?? null,
        state: a.handle?.state ?? 'opening',
        reason: a.handle?.reason ?? a.lastReason ?? null,
        ...(a.handle?.changes ? { changed: describeChanged(a.handle.changes) } : {}),
        acked: a.stats.acked,
        verified: a.stats.verified,
        failed: a.stats.failed,
        lastError: a.stats.lastError ?? null,
        ...timing(a),
      })),
    });
    if (history.length > 0) send({ type: 'history', events: history.splice(0) });
  };
  report();
  setInterval(report, 300).unref();
}
