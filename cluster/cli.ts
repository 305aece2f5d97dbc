#!/usr/bin/env node
/** The safe-resume command line. */
import { parseArgs } from 'node:util';
import { resolve, join } from 'node:path';
import { mkdirSync } from 'node:fs';
import { pino } from 'pino';
import { Application } from '../actors/application.js';
import { LocalCluster } from './local.js';
import { runWorkload, type WorkloadStats } from './workload.js';
import type { Handle } from '../actors/application.js';
import { runSchedule } from '../sim/scheduler.js';
import { formatReplay, formatSummary, runSeeds } from '../sim/run.js';

const HELP = `safe-resume — pause applications through storage failures, resume them safely

Usage:
  safe-resume up [options]     start a local cluster with a workload and show its status
  safe-resume sim [options]    run seeded fault schedules in the simulated world and check them
  safe-resume help             show this help

Options for up:
  --replicas N           storage replicas (default 3)
  --nodes N              node agents (default 2)
  --apps N               workload applications per node (default 2)
  --store sqlite|memory  the store (default sqlite, in --dir)
  --dir PATH             data directory: store, cluster secret, kept requestIds, logs (default ./.safe-resume)
  --hold-ms MS           hold period of a lost session's locks (default 5000)
  --pause-timeout-ms MS  how long a paused handle waits before it is invalidated (default 60000)
  --port N               first replica port; replicas use N, N+1, ... (default: free ports)
  --interval-ms MS       pause between workload writes (default 200)

Options for sim:
  --seeds N              schedules to run (default 100); seeds start at --from (default 1)
  --from S               first seed
  --seed S               replay one seed and print its faults, verdict and trace
  --json                 print one JSON object (schedules, steps, faults, resumes, violations)
  Exit code 1 if any guarantee (S1-S4, L1-L3) is violated. Soak: safe-resume sim --seeds 100000

In this version the whole cluster runs in one process over real WebSockets on 127.0.0.1;
logs are pino JSON in <dir>/cluster.log. Ctrl-C stops it.
`;

class UsageError extends Error {}

function int(name: string, value: string | undefined, dflt: number, min = 0): number {
  if (value === undefined) return dflt;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < min) throw new UsageError(`--${name} must be an integer >= ${min}, got ${JSON.stringify(value)}`);
  return n;
}

async function up(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      replicas: { type: 'string' },
      nodes: { type: 'string' },
      apps: { type: 'string' },
      store: { type: 'string' },
      dir: { type: 'string' },
      'hold-ms': { type: 'string' },
      'pause-timeout-ms': { type: 'string' },
      port: { type: 'string' },
      'interval-ms': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) return void process.stdout.write(HELP);
  const store = values.store ?? 'sqlite';
  if (store !== 'sqlite' && store !== 'memory') throw new UsageError(`--store must be sqlite or memory, got ${JSON.stringify(store)}`);
  const replicas = int('replicas', values.replicas, 3, 1);
  const nodes = int('nodes', values.nodes, 2, 1);
  const apps = int('apps', values.apps, 2, 1);
  const holdMs = int('hold-ms', values['hold-ms'], 5000);
  const pauseTimeoutMs = int('pause-timeout-ms', values['pause-timeout-ms'], 60_000, 1);
  const port = int('port', values.port, 0);
  const intervalMs = int('interval-ms', values['interval-ms'], 200);
  const dir = resolve(values.dir ?? '.safe-resume');
  mkdirSync(dir, { recursive: true });
  const log = pino({ level: 'info' }, pino.destination({ dest: join(dir, 'cluster.log'), sync: false }));

  const cluster = await LocalCluster.start({ dir, replicas, store, env: { log }, replica: { holdMs }, ...(port ? { basePort: port } : {}) });
  const workloads: Array<{ node: string; app: string; handle: Handle; stats: WorkloadStats; stop: () => Promise<void> }> = [];
  for (let n = 1; n <= nodes; n++) {
    const agent = await cluster.addNode(`node-${n}`);
    for (let a = 1; a <= apps; a++) {
      const app = new Application(agent, { name: `app-${a}`, pauseTimeoutMs });
      const handle = await app.open(`node-${n}.app-${a}.disk`);
      workloads.push({ node: agent.id, app: app.name, handle, ...runWorkload(handle, `node-${n}/app-${a}`, intervalMs) });
    }
  }
  const tty = process.stdout.isTTY === true;
  process.stdout.write(`safe-resume: ${replicas} replicas (${store} store in ${dir}), ${nodes} nodes x ${apps} apps\n`);
  for (const r of cluster.replicas) process.stdout.write(`  ${r.id}  ${r.url}\n`);
  let lines = 0;
  const render = () => {
    const out: string[] = [];
    for (const r of cluster.replicas) out.push(`${r.id.padEnd(10)} ${r.isDismounted ? 'dismounted' : 'serving'}  sessions=${r.sessionCount}`);
    for (const agent of cluster.nodes) out.push(`${agent.id.padEnd(10)} ${agent.state} on ${agent.replica ?? '-'}`);
    for (const w of workloads) {
      out.push(`  ${`${w.node}/${w.app}`.padEnd(16)} ${w.handle.state.padEnd(11)} acked=${w.stats.acked} verified=${w.stats.verified} failed=${w.stats.failed}${w.stats.lastError ? ` last=${w.stats.lastError}` : ''}`);
    }
    if (tty && lines > 0) process.stdout.write(`\x1b[${lines}A\x1b[0J`);
    process.stdout.write(out.join('\n') + '\n');
    lines = out.length;
  };
  const timer = setInterval(render, tty ? 500 : 5000);
  render();
  await new Promise<void>((done) => {
    const stop = () => done();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  clearInterval(timer);
  process.stdout.write('stopping...\n');
  await Promise.all(workloads.map(async (w) => {
    await w.stop();
    await w.handle.close();
  }));
  await cluster.stop();
  log.flush();
  process.stdout.write('stopped\n');
}

async function sim(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { seeds: { type: 'string' }, from: { type: 'string' }, seed: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(HELP);
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
  const summary = await runSeeds(from, count, {}, (r) => {
    if (tty && (r.seed - from) % 100 === 99) process.stderr.write(`\r${r.seed - from + 1}/${count} schedules`);
  });
  if (tty) process.stderr.write('\r');
  process.stdout.write((values.json ? JSON.stringify(summary) : formatSummary(summary)) + '\n');
  return summary.violations.length > 0 ? 1 : 0;
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case 'up':
        await up(rest);
        return 0;
      case 'sim':
        return await sim(rest);
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        process.stdout.write(HELP);
        return 0;
      default:
        throw new UsageError(`unknown command ${JSON.stringify(cmd)}`);
    }
  } catch (err) {
    if (err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`safe-resume: ${(err as Error).message}\nRun 'safe-resume help' for usage.\n`);
      return 2;
    }
    process.stderr.write(`safe-resume: ${(err as Error).stack ?? String(err)}\n`);
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
