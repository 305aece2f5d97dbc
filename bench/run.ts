/**
 * safe-resume benchmarks: each figure measured next to its baseline in the same run.
 *   npm run bench            the full run; writes bench/results/latest.json, BENCHMARKS.md, bench/results/failover.svg
 *   npm run bench -- --smoke tiny sizes, to check the harness works (npm test runs this; no speeds asserted)
 *   npm run bench -- --json  the figures as JSON on stdout
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { runSeeds } from '../sim/run.js';
import { runSeedsParallel } from '../sim/parallel.js';
import { replicaProcess, ROOT } from './replica-process.js';
import { Figure, ROUNDS, figure, pct } from './figures.js';
import { etcdGroup, nbdGroup } from './groups.js';
import {
  agentMemory,
  failover,
  inspectorOn,
  ioPath,
  rawSqlite,
  replicaMemory,
  replicaResumes,
  resumeStorm,
  silentPartition,
  wsEcho,
} from './measures.js';

export { ROOT };
export type { Figure } from './figures.js';

/** The groups of figures, in run order; `--only` picks some of them. */
export const GROUPS = [
  'io',
  'durable',
  'failover',
  'partition',
  'storm',
  'memory',
  'sim',
  'inspector',
  'etcd',
  'nbd',
] as const;
export type Group = (typeof GROUPS)[number];

export async function runBench(
  smoke: boolean,
  log: (l: string) => void,
  only: readonly Group[] = GROUPS,
): Promise<Figure[]> {
  const want = (g: Group) => only.includes(g);
  const dir = mkdtempSync(join(os.tmpdir(), 'safe-resume-bench-'));
  const F: Figure[] = [];
  const s = (full: number, tiny: number) => (smoke ? tiny : full);
  try {
    // This machine's speed drifts from minute to minute, so throughput is measured in rounds that
    // alternate each figure with its baseline, and the medians are compared.
    const R = smoke ? 1 : ROUNDS;
    const med = (xs: number[]) => pct(xs, 50);
    if (want('io') || want('durable') || want('inspector')) {
      const mem = await replicaProcess(dir, 'memory');
      const sq = await replicaProcess(join(dir, 'gc'), 'sqlite');
      const one = await replicaProcess(join(dir, 'nogc'), 'sqlite', { groupCommit: false });
      const r: Record<'echo' | 'mem' | 'insp' | 'sql' | 'one' | 'raw', number[]> = {
        echo: [],
        mem: [],
        insp: [],
        sql: [],
        one: [],
        raw: [],
      };
      let echoSeq = { p50: 0, p99: 0 };
      let memSeq = { p50: 0, p99: 0, readP50: 0 };
      let sqlSeq = 0;
      for (let i = 0; i < R; i++) {
        log(
          `I/O round ${i + 1} of ${R}: raw ws echo, memory store${want('inspector') ? ' (inspector off, on)' : ''}, SQLite FULL with and without group commit, raw SQLite`,
        );
        const echo = await wsEcho(s(20_000, 300), 64, i === 0 ? 2000 : 0);
        r.echo.push(echo.rate);
        const io = await ioPath(mem.url, s(20_000, 300), 16, 8, { sequential: i === 0 ? s(2000, 50) : 0 });
        r.mem.push(io.rate);
        if (i === 0) [echoSeq, memSeq] = [echo, io];
        if (want('inspector')) r.insp.push(await inspectorOn(mem.url, s(20_000, 300), 16, 8));
        if (want('io') || want('durable')) {
          const ios = await ioPath(sq.url, s(10_000, 200), 16, 8, { sequential: i === 0 ? s(500, 20) : 0 });
          r.sql.push(ios.rate);
          if (i === 0) sqlSeq = ios.p50;
          r.one.push((await ioPath(one.url, s(5_000, 200), 16, 8, { sequential: 0 })).rate);
          r.raw.push(rawSqlite(dir, s(5_000, 200)));
        }
      }
      for (const p of [mem, sq, one]) p.proc.kill();
      const echo = med(r.echo);
      if (want('io')) {
        F.push(figure('io.write.seq.p50', memSeq.p50, 'ms', echoSeq.p50, 'ws echo p50', 'none', null));
        F.push(figure('io.write.seq.p99', memSeq.p99, 'ms', echoSeq.p99, 'ws echo p99', 'none', null));
        F.push(figure('io.read.seq.p50', memSeq.readP50, 'ms', echoSeq.p50, 'ws echo p50', 'none', null));
        F.push(
          figure(
            'io.write.pipelined.memory',
            med(r.mem),
            'writes/s',
            echo,
            'ws echo 4 KiB msgs/s',
            '>= 1.0x',
            med(r.mem) >= echo,
          ),
        );
        F.push(
          figure(
            'io.write.pipelined.sqlite',
            med(r.sql),
            'writes/s',
            echo,
            'ws echo 4 KiB msgs/s',
            '>= 1.0x',
            med(r.sql) >= echo,
          ),
        );
      }
      if (want('durable')) {
        const raw = med(r.raw);
        F.push(figure('durable.write.seq.p50', sqlSeq, 'ms', 1000 / raw, 'raw FULL CAS txn, ms each', 'none', null));
        F.push(
          figure(
            'durable.writes.full',
            med(r.sql),
            'writes/s',
            raw,
            'raw better-sqlite3 CAS txn per 4 KiB write, FULL',
            '>= 3x',
            med(r.sql) >= 3 * raw,
          ),
        );
        F.push(
          figure(
            'durable.writes.full.no-group-commit',
            med(r.one),
            'writes/s',
            raw,
            'raw better-sqlite3 CAS txn per 4 KiB write, FULL',
            'none',
            null,
          ),
        );
      }
      if (want('inspector'))
        F.push(
          figure(
            'inspector.write.pipelined',
            med(r.insp),
            'writes/s',
            med(r.mem),
            'the same writes, inspector off',
            'none',
            null,
          ),
        );
    }
    if (want('failover')) {
      const sizes = smoke ? [20] : [100, 1000, 10_000];
      const chart: Array<{ n: number; p50: number; p99: number; max: number }> = [];
      for (const n of sizes) {
        // Every handle's time, pooled over the rounds (one round at 10,000).
        const times: number[] = [];
        const rounds = n >= 10_000 ? 1 : R;
        for (let i = 0; i < rounds; i++) {
          log(`failover of ${n} handles, round ${i + 1} of ${rounds}`);
          times.push(...(await failover(join(dir, `f${n}-${i}`), n, 4)));
        }
        const f = { p50: pct(times, 50), p99: pct(times, 99), max: Math.max(...times) };
        chart.push({ n, ...f });
        F.push(figure(`failover.${n}.p50`, f.p50, 'ms', null, null, 'none', null));
        F.push(
          figure(
            `failover.${n}.p99`,
            f.p99,
            'ms',
            null,
            null,
            n === 1000 ? '<= 250 ms' : 'none',
            n === 1000 ? f.p99 <= 250 : null,
          ),
        );
        F.push(figure(`failover.${n}.max`, f.max, 'ms', null, null, 'none', null));
      }
      // Only a full run writes its results (the help says --only writes nothing).
      if (!smoke && only.length === GROUPS.length) writeChart(chart);
    }
    if (want('partition')) {
      log('silent partition');
      const hb = s(1000, 200);
      const sp = await silentPartition(join(dir, 'sp'), hb);
      F.push(figure('partition.detect', sp.detect, 'ms', hb, 'heartbeat interval', '<= 2x', sp.detect <= 2 * hb));
      F.push(figure('partition.resume', sp.resume, 'ms', hb, 'heartbeat interval', 'none', null));
    }
    if (want('storm')) {
      const replica: number[] = [];
      const e2e: number[] = [];
      for (let i = 0; i < R; i++) {
        log(`resume storm round ${i + 1} of ${R}: one replica, then end to end through a node agent`);
        replica.push(await replicaResumes(join(dir, `rr${i}`), s(10_000, 200)));
        e2e.push(await resumeStorm(join(dir, `rs${i}`), s(10_000, 200)));
      }
      F.push(figure('resume.storm', med(replica), 'resumes/s', null, null, '>= 100,000', med(replica) >= 100_000));
      F.push(figure('resume.storm.end-to-end', med(e2e), 'resumes/s', med(replica), 'the replica alone', 'none', null));
    }
    if (want('memory')) {
      for (const n of smoke ? [200] : [10_000, 100_000]) {
        log(`memory per handle at ${n} handles`);
        const am = await agentMemory(join(dir, `m${n}`), n);
        const rm = await replicaMemory(n);
        F.push(figure(`memory.agent.per.handle.${n}`, am, 'bytes', null, null, '<= 1024', am <= 1024));
        F.push(figure(`memory.replica.per.handle.${n}`, rm, 'bytes', null, null, '<= 1024', rm <= 1024));
      }
    }
    if (want('sim')) {
      // Batches long enough that starting the workers and warming up the JIT (about 5 s in all
      // here) do not decide the figure: 200 seeds take 15 s, 600 take 30 s.
      log('simulation speed: one thread, then a worker per core');
      const one = await runSeeds(1, s(200, 5));
      const onePerMin = one.schedules / (one.wallMs / 60_000);
      const cores = os.availableParallelism();
      const all = await runSeedsParallel(1, s(600, 6), cores);
      const perMin = all.schedules / (all.wallMs / 60_000);
      F.push(figure('sim.schedules.per.minute.one-thread', onePerMin, 'schedules/min', null, null, 'none', null));
      F.push(
        figure(
          `sim.schedules.per.minute`,
          perMin,
          'schedules/min',
          onePerMin,
          `one thread (this run: ${cores} workers)`,
          '>= 1,000',
          perMin >= 1000,
        ),
      );
    }
    if (want('etcd')) F.push(...(await etcdGroup(dir, smoke, log, R)));
    if (want('nbd')) F.push(...(await nbdGroup(dir, smoke, log, R)));
    return F;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The nbd group (bench/nbd.ts): qemu-img bench through the export (a replica process over SQLite FULL,
 * the node agent and the export in this process) against qemu-nbd serving a raw file, the SDK path
 * (the same writes through an Application handle), and the longest write a client waits through while
 * the replica serving the export is SIGKILLed (two replica processes over one SQLite file).
 */

function writeChart(points: Array<{ n: number; p50: number; p99: number; max: number }>): void {
  const W = 520;
  const H = 300;
  const maxY = Math.max(...points.map((p) => p.max), 1);
  const x = (i: number) => 60 + (i * (W - 100)) / Math.max(1, points.length - 1);
  const y = (v: number) => H - 40 - (v / maxY) * (H - 80);
  const line = (k: 'p50' | 'p99' | 'max', color: string) =>
    `<polyline fill="none" stroke="${color}" stroke-width="2" points="${points.map((p, i) => `${x(i)},${y(p[k])}`).join(' ')}"/>` +
    points
      .map(
        (p, i) =>
          `<circle cx="${x(i)}" cy="${y(p[k])}" r="3" fill="${color}"/><text x="${x(i) + 5}" y="${y(p[k]) - 5}" font-size="10">${Math.round(p[k])}</text>`,
      )
      .join('');
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif"><rect width="100%" height="100%" fill="#fff"/>
<text x="10" y="18" font-size="13">Failover after SIGKILL of the serving replica: time until each handle is active (ms)</text>
<line x1="60" y1="${H - 40}" x2="${W - 30}" y2="${H - 40}" stroke="#888"/><line x1="60" y1="30" x2="60" y2="${H - 40}" stroke="#888"/>
${points.map((p, i) => `<text x="${x(i) - 10}" y="${H - 22}" font-size="11">N=${p.n}</text>`).join('')}
${line('p50', '#1a7f37')}${line('p99', '#c97a00')}${line('max', '#cf222e')}
<text x="${W - 160}" y="40" font-size="11" fill="#1a7f37">p50</text><text x="${W - 120}" y="40" font-size="11" fill="#c97a00">p99</text><text x="${W - 80}" y="40" font-size="11" fill="#cf222e">max</text></svg>`;
  mkdirSync(join(ROOT, 'bench', 'results'), { recursive: true });
  writeFileSync(join(ROOT, 'bench', 'results', 'failover.svg'), svg);
}

export function table(F: Figure[]): string {
  const rows = F.map(
    (f) =>
      `| ${f.name} | ${f.value} ${f.unit} | ${f.baseline ?? '-'}${f.baselineName ? ` (${f.baselineName})` : ''} | ${f.ratio ?? '-'} | ${f.target} | ${f.met === null ? '-' : f.met ? 'yes' : 'no'} |`,
  );
  return ['| figure | value | baseline | ratio | target | met |', '|---|---|---|---|---|---|', ...rows].join('\n');
}

export function writeResults(F: Figure[]): void {
  mkdirSync(join(ROOT, 'bench', 'results'), { recursive: true });
  writeFileSync(
    join(ROOT, 'bench', 'results', 'latest.json'),
    JSON.stringify({ date: new Date().toISOString(), machine: machine(), figures: F }, null, 2) + '\n',
  );
}

export function machine(): string {
  return `${os.cpus().length} x ${os.cpus()[0]?.model ?? 'cpu'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}, ${os.platform()} ${os.release()}`;
}
