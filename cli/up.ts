/** `safe-resume up`: a local cluster of real processes (or, with --store memory, in this one), its view, chaos runs. */
import { join } from 'node:path';
import { openSync, rmSync } from 'node:fs';
import { pino } from 'pino';
import { Application } from '../actors/application.js';
import type { Handle } from '../actors/application.js';
import { LocalCluster } from '../cluster/local.js';
import { runWorkload, type WorkloadStats } from '../cluster/workload.js';
import { Launcher } from '../cluster/launcher.js';
import { runChaos, type ChaosSummary } from '../cluster/chaos.js';
import { loadHostPlan } from '../runtime/hosts.js';
import { EXIT, OperatorError } from '../runtime/operator-error.js';
import { WebSocketTransport } from '../transport/ws.js';
import { loadTlsFiles } from '../transport/tls.js';
import { targetUrl } from '../frontends/nbd.js';
import { count } from './args.js';
import { storeInUse, takeDataDir } from './data-dir.js';
import { parseUp, type UpOptions } from './up-options.js';
import { liveView } from './view.js';

export async function up(argv: string[]): Promise<number> {
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
  // Opened here, not in the background: a run that fails removes the directory it made, and a log
  // file still being opened then would fail with ENOENT and take the process down before its answer.
  const logFd = openSync(join(o.dir, 'logs', 'launcher.log'), 'a', 0o600);
  const agentLog = pino({ base: null }, pino.destination({ fd: logFd, sync: false }));
  const log = agentLog.child({ actor: 'launcher' });
  const need = [
    ...(o.store === 'etcd' && !o.etcdEndpoints ? ['etcd-1', 'etcd-2', 'etcd-3'] : []),
    ...Array.from({ length: o.replicas }, (_, i) => `replica-${i + 1}`),
    ...Array.from({ length: o.nodes }, (_, i) => `node-${i + 1}`),
  ];
  const hosts = o.netns ? loadHostPlan(o.netns, need) : undefined;
  const launcher = new Launcher({
    dir: o.dir,
    replicas: o.replicas,
    nodes: o.nodes,
    apps: o.apps,
    holdMs: o.holdMs,
    pauseTimeoutMs: o.pauseTimeoutMs,
    intervalMs: o.intervalMs,
    port: o.port,
    history: o.chaos,
    pretty: o.pretty,
    inspectorPort: o.inspectorPort,
    statelyPort: o.statelyPort,
    log,
    agentLog,
    tls: o.tls,
    store: o.store === 'etcd' ? 'etcd' : 'sqlite',
    etcdEndpoints: o.etcdEndpoints,
    hosts,
    nbdTcp: o.nbdTcp,
    nbdGroup: o.nbdGroup,
  });
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
    if (signalled)
      throw new OperatorError(
        `interrupted (${signalled}) while the cluster was starting; every process it started is stopped`,
        EXIT.interrupted,
      );
    throw err;
  }
  started = true;
  const running = async (): Promise<number> => {
    const say = (line: string) => (o.json ? process.stderr : process.stdout).write(line + '\n');
    say(
      `safe-resume: ${count(o.replicas, 'replica')} over ${o.store === 'etcd' ? `etcd (${launcher.etcd ? `local members in ${join(o.dir, 'etcd')}, TLS with the client certificate in ${join(o.dir, 'etcd', 'tls')}` : (o.etcdEndpoints ?? []).join(',')})` : join(o.dir, 'store.sqlite')}, ${count(o.nodes, 'node')} x ${count(o.apps, 'app')}`,
    );
    if (reusing) say(`  ${reusing}`);
    for (const m of launcher.etcd?.members ?? []) say(`  ${m.id.padEnd(9)} ${m.endpoint}`);
    for (const [i, u] of launcher.replicaUrls.entries()) say(`  replica-${i + 1}  ${u}`);
    for (const [node, u] of launcher.nbdUrls)
      say(
        `  nbd       ${u}   (${node}: any target as a disk, as principal default, to this user only: qemu-io -f raw '${targetUrl(u, 'vm1.disk')}')`,
      );
    for (const [node, u] of launcher.nbdTlsUrls)
      say(
        `  nbd-tls   ${u}   (${node}: TLS-PSK only; a key: safe-resume credentials nbd-psk --principal default --out DIR --dir ${o.dir})`,
      );
    say(`  control   ${launcher.controlUrl}   (safe-resume status | kill | partition | write ... --dir ${o.dir})`);
    // The page addresses carry the control token (in the fragment): they open as printed.
    say(`  inspector ${launcher.inspector?.pageUrl ?? '-'}   (open it in a browser to watch every machine live)`);
    if (o.statelyPort !== undefined)
      say(`  stately   ${launcher.statelyUrl}   (the Stately inspector; needs an internet connection)`);
    if (o.chaos) {
      say(`chaos: ${o.forS}s of faults, seed ${o.seed}`);
      const summary = await runChaos(
        launcher,
        o.forS,
        o.seed,
        (k, d) => (say(`  fault ${k}: ${d}`), launcher.timeline.add({ kind: 'fault', what: `${k}: ${d}` })),
        o.faults,
        interrupt.signal,
      );
      await stop();
      process.stdout.write((o.json ? JSON.stringify(summary) : formatChaos(summary)) + '\n');
      return summary.violations.length > 0 ? EXIT.failed : summary.interrupted ? EXIT.interrupted : 0;
    }
    // --json: the addresses as one JSON object on stdout, then a status line every 5 s, then the end.
    if (o.json)
      process.stdout.write(
        JSON.stringify({
          event: 'up',
          store: launcher.storeSpec,
          etcd: launcher.etcd?.members.map((m) => ({ id: m.id, endpoint: m.endpoint })) ?? [],
          replicas: launcher.replicaUrls,
          nbd: Object.fromEntries(launcher.nbdUrls),
          nbdTls: Object.fromEntries(launcher.nbdTlsUrls),
          control: launcher.controlUrl,
          inspector: launcher.inspector?.pageUrl ?? null,
          ...(o.statelyPort !== undefined ? { stately: launcher.statelyUrl } : {}),
          reusing: reusing ?? null,
        }) + '\n',
      );
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
    `faults     ${
      Object.entries(s.faults)
        .map(([k, v]) => `${k}=${v}`)
        .join(' ') || 'none'
    }`,
    `pauses     ${s.pauses}`,
    `resumes    ${s.resumes.granted} granted, ${s.resumes.denied} denied`,
    `writes     ${s.writesAcknowledged} acknowledged`,
    `violations ${s.violations.length}`,
    ...s.violations.slice(0, 10).map((v) => `  ${v.guarantee} at ${v.t}: ${v.message}`),
  ].join('\n');
}

/** `up --store memory`: the whole cluster in this process (no control endpoint). */
async function upInProcess(o: UpOptions): Promise<void> {
  const log = pino({ level: 'info' }, pino.destination({ dest: join(o.dir, 'logs', 'cluster.log'), sync: false }));
  const cluster = await LocalCluster.start({
    dir: o.dir,
    replicas: o.replicas,
    store: 'memory',
    ...(o.tls ? { transport: new WebSocketTransport({ tls: loadTlsFiles(o.tls) }) } : {}),
    env: { log },
    replica: { holdMs: o.holdMs },
    ...(o.port ? { basePort: o.port } : {}),
  });
  const workloads: Array<{
    node: string;
    app: string;
    handle: Handle;
    stats: WorkloadStats;
    stop: () => Promise<void>;
  }> = [];
  let appNo = 0;
  for (let n = 1; n <= o.nodes; n++) {
    const agent = await cluster.addNode(`node-${n}`);
    for (let a = 1; a <= o.apps; a++) {
      const name = `app-${++appNo}`;
      const app = new Application(agent, { name, pauseTimeoutMs: o.pauseTimeoutMs });
      const handle = await app.open(`${name}.disk`);
      workloads.push({
        node: agent.id,
        app: name,
        handle,
        ...runWorkload(handle, `${agent.id}/${name}`, o.intervalMs),
      });
    }
  }
  process.stdout.write(
    `safe-resume: ${count(o.replicas, 'replica')} (memory store, one process), ${count(o.nodes, 'node')} x ${count(o.apps, 'app')}\n`,
  );
  const stopView = liveView(
    () => ({
      replicas: cluster.replicas.map((r) => ({
        id: r.id,
        state: r.isDismounted ? 'dismounted' : 'serving',
        sessions: r.sessionCount,
      })),
      nodes: cluster.nodes.map((n) => ({ id: n.id, state: n.state, replica: n.replica ?? null, partitioned: false })),
      handles: workloads.map((w) => ({
        node: w.node,
        app: w.app,
        target: w.handle.target,
        state: w.handle.state,
        reason: w.handle.reason ?? null,
        acked: w.stats.acked,
        verified: w.stats.verified,
        failed: w.stats.failed,
        lastError: w.stats.lastError ?? null,
      })),
    }),
    process.stdout.isTTY === true,
  );
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
