/** The fuzzer's processes: the replica under test, and the legitimate application working through it. */
import { fork, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { Application, type Handle } from '../actors/application.js';
import { NodeAgent } from '../actors/node-agent.js';
import { ChildReport } from '../runtime/ipc.js';
import { freePort } from '../transport/ports.js';
import { WebSocketTransport } from '../transport/ws.js';
import { FuzzReport } from './fuzz-report.js';

// ---------------------------------------------------------------- the replica process

const HERE = fileURLToPath(new URL('.', import.meta.url));
const ROOT = join(HERE, HERE.includes(join('dist', 'bench')) ? '../..' : '..');
const CHILD = join(ROOT, 'dist', 'cluster', 'child.js');
const REPLICA_ID = 'replica-fuzz';

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
    p.then(
      (v) => (clearTimeout(t), resolve(v)),
      (e: unknown) => (clearTimeout(t), reject(e instanceof Error ? e : new Error(String(e)))),
    );
  });
}

/** A field of /proc/<pid>/status in MiB (VmRSS now, VmHWM the peak); null where /proc is not there. */
export function procMiB(pid: number | undefined, field: 'VmRSS' | 'VmHWM'): number | null {
  if (pid === undefined) return null;
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m?.[1] ? Math.round((Number(m[1]) / 1024) * 10) / 10 : null;
  } catch {
    return null;
  }
}

export interface ReplicaProc {
  url: string;
  proc: ChildProcess;
  /** Set when the process exited without being asked to. */
  crash: string | undefined;
  status: Extract<ChildReport, { type: 'status'; role: 'replica' }> | undefined;
  onCrash: (why: string) => void;
  stop(): Promise<void>;
}

/** A replica in its own process over a SQLite store in `dir`, configured over IPC as the launcher does. */
export async function startReplica(dir: string, secret: string): Promise<ReplicaProc> {
  const port = await freePort();
  // Its own process group: a Ctrl-C meant for the fuzzer must not look like a crash. It exits when
  // the fuzzer goes away all the same (its IPC channel closes).
  const proc = fork(CHILD, ['replica'], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'], execArgv: [], detached: true });
  // A send to a process that just died is an 'error' event; its exit is what counts.
  proc.on('error', () => undefined);
  let stderr = '';
  proc.stderr?.on('data', (d: Buffer) => void (stderr = (stderr + d.toString()).slice(-4000)));
  let stopping = false;
  const r: ReplicaProc = {
    url: `ws://127.0.0.1:${port}`,
    proc,
    crash: undefined,
    status: undefined,
    onCrash: () => undefined,
    stop: async () => {
      stopping = true;
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = new Promise<void>((res) => proc.once('exit', () => res()));
      if (proc.connected) proc.send({ type: 'shutdown' }, undefined, {}, () => undefined);
      if (!(await Promise.race([exited.then(() => true), sleep(3000).then(() => false)]))) {
        proc.kill('SIGKILL');
        await Promise.race([exited, sleep(2000)]);
      }
    },
  };
  proc.on('message', (m) => {
    const msg = ChildReport.safeParse(m);
    if (msg.success && msg.data.type === 'status' && msg.data.role === 'replica') r.status = msg.data;
  });
  proc.once('exit', (code, signal) => {
    if (stopping) return;
    // Let the last stderr lines arrive before they are quoted.
    setTimeout(() => {
      r.crash = `replica process exited (code ${code ?? '-'}, signal ${signal ?? '-'})${stderr ? `: ${stderr.trim().split('\n').slice(-5).join(' | ')}` : ''}`;
      r.onCrash(r.crash);
    }, 50);
  });
  proc.send({
    type: 'config',
    config: {
      id: REPLICA_ID,
      port,
      dir,
      store: `sqlite:${join(dir, 'store.sqlite')}`,
      secret,
      holdMs: 5000,
      history: false,
      pretty: false,
    },
  });
  await withTimeout(
    new Promise<void>((resolve, reject) => {
      proc.on('message', (m) => (m as { type?: unknown }).type === 'ready' && resolve());
      proc.once('exit', () => reject(new Error(`replica process exited before ready: ${stderr.trim()}`)));
    }),
    15_000,
    'replica start',
  );
  return r;
}

/** Lines at level error (50) or fatal (60) in the replica's pino log, with the first few messages. */
export function logErrors(dir: string): { count: number; samples: string[] } {
  const out = { count: 0, samples: [] as string[] };
  const logs = join(dir, 'logs');
  if (!existsSync(logs)) return out;
  for (const f of readdirSync(logs)) {
    for (const line of readFileSync(join(logs, f), 'utf8').split('\n')) {
      if (!line.includes('"level":5') && !line.includes('"level":6')) continue;
      try {
        const e = JSON.parse(line) as { level?: number; msg?: string; err?: unknown };
        if ((e.level ?? 0) < 50) continue;
        out.count++;
        if (out.samples.length < 5) out.samples.push(`${e.msg ?? ''} ${JSON.stringify(e.err ?? '').slice(0, 300)}`);
      } catch {
        // A line cut by the process's exit.
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------- the legitimate application

export interface Legit {
  target: string;
  requestId: string;
  ops(): number;
  /** Stop writing, close the handle, stop the agent; the figures. */
  stop(): Promise<FuzzReport['legit']>;
}

/** 4 KiB whose every byte depends on the op's number, so a stale or foreign block shows. */
function pattern(i: number): Buffer {
  const b = Buffer.allocUnsafe(4096);
  for (let j = 0; j < 4096; j++) b[j] = (i * 31 + j * 7 + (j >> 8)) & 0xff;
  b.writeUInt32BE(i >>> 0, 0);
  return b;
}

/**
 * A node agent and an application that writes 4 KiB blocks and reads each back for as long as the
 * fuzz runs. A rejected operation, wrong bytes, an operation slower than `opTimeoutMs` or the
 * handle leaving `active` is a failure.
 */
async function startLegit(url: string, secret: string, opTimeoutMs: number): Promise<Legit> {
  const agent = new NodeAgent({ id: 'fuzz-legit', replicas: [url], transport: new WebSocketTransport(), secret });
  const errors: string[] = [];
  let failures = 0;
  const fail = (why: string) => {
    failures++;
    if (errors.length < 10) errors.push(why);
  };
  let h: Handle;
  try {
    await withTimeout(agent.start(), 10_000, 'legitimate agent start');
    const app = new Application(agent, { name: 'legit', pauseTimeoutMs: 60_000 });
    h = await withTimeout(app.open('fuzz-legit.disk'), 10_000, 'legitimate open');
  } catch (err) {
    agent.crash();
    throw err;
  }
  let stopping = false;
  const onState = (s: string) => !stopping && fail(`handle left active: ${s}${h.reason ? ` (${h.reason})` : ''}`);
  h.on('state', onState);
  const lat: number[] = [];
  let ops = 0;
  const timed = async <T>(p: Promise<T>, what: string): Promise<T> => {
    const t = performance.now();
    const v = await withTimeout(p, opTimeoutMs, what);
    lat.push(performance.now() - t);
    ops++;
    return v;
  };
  const loop = (async () => {
    for (let i = 0; !stopping; i++) {
      const offset = (i % 64) * 4096;
      const want = pattern(i);
      try {
        await timed(h.write(offset, want), `write ${i}`);
        const got = await timed(h.read(offset, 4096), `read ${i}`);
        if (Buffer.compare(Buffer.from(got), want) !== 0) fail(`read ${i} at ${offset}: wrong bytes`);
      } catch (err) {
        if (stopping) return;
        fail(`op ${i}: ${(err as { code?: string }).code ?? ''} ${(err as Error).message}`);
        // A stuck or refused handle will not get better within this run.
        return;
      }
    }
  })();
  let result: FuzzReport['legit'] | undefined;
  return {
    target: h.target,
    requestId: h.requestId,
    ops: () => ops,
    stop: async () => {
      if (result) return result;
      stopping = true;
      h.off('state', onState);
      // A handle still active finishes its operation and closes; one cut off from its replica is dropped.
      if (h.state === 'active') {
        await Promise.race([loop, sleep(2000)]);
        await Promise.race([h.close().catch(() => undefined), sleep(2000)]);
      }
      agent.crash();
      const sorted = [...lat].sort((a, b) => a - b);
      const q = (p: number) =>
        Math.round((sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? 0) * 100) / 100;
      result = { ops, failures, errors, p99Ms: q(0.99), maxMs: q(1) };
      return result;
    },
  };
}

/** What the legitimate application's process and the fuzzer say to each other over IPC (validated on arrival). */
const LegitCommand = z.discriminatedUnion('type', [
  z.object({ type: z.literal('start'), url: z.string(), secret: z.string(), opTimeoutMs: z.number() }),
  z.object({ type: z.literal('stop') }),
]);
const LegitFigures = z.object({
  ops: z.number(),
  failures: z.number(),
  errors: z.array(z.string()),
  p99Ms: z.number(),
  maxMs: z.number(),
});
const LegitReport = z.discriminatedUnion('type', [
  z.object({ type: z.literal('ready'), target: z.string(), requestId: z.string() }),
  z.object({ type: z.literal('failed'), error: z.string() }),
  z.object({ type: z.literal('ops'), ops: z.number() }),
  z.object({ type: z.literal('figures'), figures: LegitFigures }),
]);
type LegitReport = z.infer<typeof LegitReport>;

/** `node dist/bench/fuzz.js --legit-child`: the legitimate application, in a process of its own. */
export function legitChild(): void {
  const send = (m: LegitReport) => process.connected && process.send?.(m, undefined, {}, () => undefined);
  let legit: Legit | undefined;
  process.on('disconnect', () => process.exit(0));
  process.on('message', (raw) => {
    const m = LegitCommand.safeParse(raw);
    if (!m.success) return;
    if (m.data.type === 'start' && !legit) {
      startLegit(m.data.url, m.data.secret, m.data.opTimeoutMs).then(
        (l) => {
          legit = l;
          send({ type: 'ready', target: l.target, requestId: l.requestId });
          setInterval(() => send({ type: 'ops', ops: l.ops() }), 100).unref();
        },
        (err: unknown) => {
          send({ type: 'failed', error: String(err) });
          setTimeout(() => process.exit(1), 100);
        },
      );
    } else if (m.data.type === 'stop') {
      void (
        legit?.stop() ??
        Promise.resolve({ ops: 0, failures: 1, errors: ['stopped before it started'], p99Ms: 0, maxMs: 0 })
      ).then((figures) => {
        send({ type: 'figures', figures });
        setTimeout(() => process.exit(0), 100);
      });
    }
  });
}

/**
 * The legitimate application in its own process (dist/bench/fuzz.js --legit-child): the fuzzer's
 * own work (drawing and checking frames) must not show up as the replica's latency. Its process
 * exiting early is a legitimate failure.
 */
export async function legitProcess(url: string, secret: string, opTimeoutMs: number): Promise<Legit> {
  const proc = fork(join(ROOT, 'dist', 'bench', 'fuzz.js'), ['--legit-child'], {
    stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
    execArgv: [],
    detached: true,
  });
  proc.on('error', () => undefined);
  let stderr = '';
  proc.stderr?.on('data', (d: Buffer) => void (stderr = (stderr + d.toString()).slice(-2000)));
  let ops = 0;
  let figures: FuzzReport['legit'] | undefined;
  let stopping = false;
  const listeners = new Set<(m: LegitReport) => void>();
  proc.on('message', (raw) => {
    const m = LegitReport.safeParse(raw);
    if (!m.success) return;
    if (m.data.type === 'ops') ops = m.data.ops;
    if (m.data.type === 'figures') figures = m.data.figures;
    for (const l of listeners) l(m.data);
  });
  const gone = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const next = <T>(pick: (m: LegitReport) => T | undefined, ms: number, what: string): Promise<T> =>
    withTimeout(
      new Promise<T>((resolve, reject) => {
        const l = (m: LegitReport) => {
          const v = pick(m);
          if (v === undefined) return;
          listeners.delete(l);
          resolve(v);
        };
        listeners.add(l);
        void gone.then(() =>
          reject(new Error(`the legitimate application's process exited${stderr ? `: ${stderr.trim()}` : ''}`)),
        );
      }),
      ms,
      what,
    );
  try {
    proc.send({ type: 'start', url, secret, opTimeoutMs });
    const ready = await next(
      (m) => (m.type === 'ready' ? m : m.type === 'failed' ? { error: m.error } : undefined),
      25_000,
      'legitimate application start',
    );
    if ('error' in ready) throw new Error(`the legitimate application could not start: ${ready.error}`);
    void gone.then(() => {
      if (!stopping)
        figures = {
          ops,
          failures: 1,
          errors: [`its process exited during the run${stderr ? `: ${stderr.trim()}` : ''}`],
          p99Ms: 0,
          maxMs: 0,
        };
    });
    return {
      target: ready.target,
      requestId: ready.requestId,
      ops: () => ops,
      stop: async () => {
        stopping = true;
        if (!figures && proc.connected) {
          proc.send({ type: 'stop' }, undefined, {}, () => undefined);
          await next((m) => (m.type === 'figures' ? m : undefined), 10_000, 'legitimate application stop').catch(
            () => undefined,
          );
        }
        if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
        return figures ?? { ops, failures: 1, errors: ['its process did not report its figures'], p99Ms: 0, maxMs: 0 };
      },
    };
  } catch (err) {
    proc.kill('SIGKILL');
    throw err;
  }
}
