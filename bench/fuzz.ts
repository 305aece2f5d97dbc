/**
 * The fuzzer: malformed frames against a live replica process while a legitimate application keeps
 * writing and reading through it (SPEC "Bad input and trust": a bad frame gets a clear error and
 * never crashes a process or loses state).
 *
 *   node dist/bench/fuzz.js [--frames N] [--connections N] [--concurrency N] [--seed N] [--json]
 *
 * What it sends and what it reports: docs/fuzz.md. It runs from dist with production dependencies
 * only, so frames come from its own mutators driven by the project's seeded PRNG (one seed per run,
 * one derived seed per connection).
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { ConnPlan, Run, Tallies, buildPlan, checkAlive, postAuth, preAuth } from './fuzz-attack.js';
import { MAX_FRAME } from './fuzz-frames.js';
import { Legit, ReplicaProc, legitChild, legitProcess, logErrors, procMiB, sleep, startReplica } from './fuzz-procs.js';
import { FuzzOptions, FuzzReport } from './fuzz-report.js';

export type { FuzzOptions, FuzzReport } from './fuzz-report.js';
export { MAX_WAVE } from './fuzz-attack.js';

// ---------------------------------------------------------------- the run

/**
 * Start a replica process (SQLite store, temp dir), a legitimate application writing and reading
 * through it, then `frames` malformed frames over `connections` connections, `concurrency` at a
 * time. Always cleans up; stops by itself at `deadlineMs`.
 */
export async function runFuzz(opts: FuzzOptions = {}): Promise<FuzzReport> {
  const frames = opts.frames ?? 100_000;
  const connections = opts.connections ?? 1000;
  const concurrency = Math.max(1, opts.concurrency ?? 50);
  const seed = (opts.seed ?? randomBytes(4).readUInt32BE(0)) >>> 0;
  const settleMs = opts.settleMs ?? 1000;
  const log = opts.log ?? (() => undefined);
  const t0 = performance.now();
  const t = new Tallies();
  const dir = mkdtempSync(join(os.tmpdir(), 'safe-resume-fuzz-'));
  const secret = randomBytes(32).toString('base64url');
  let replica: ReplicaProc | undefined;
  let legit: Legit | undefined;
  let timedOut = false;
  // Each is set by the run below; a run that throws reports nothing.
  let alive: { ok: boolean; detail: string };
  let legitReport: FuzzReport['legit'];
  let rssBefore: number | null;
  let rssAfter: number | null;
  let rssPeak: number | null;
  let logs: { count: number; samples: string[] };
  const run: Run = {
    url: '',
    maxNestingBytes: opts.heavy ? MAX_FRAME - 64 : 200_000,
    secret,
    seed,
    answerTimeoutMs: opts.answerTimeoutMs ?? 10_000,
    t,
    legit: undefined,
    remaining: frames,
    stopping: false,
    live: new Set(),
    lastAuth: undefined,
    onSent: () => undefined,
  };
  const stop = (why: string) => {
    if (run.stopping) return;
    run.stopping = true;
    log(`stopping: ${why}`);
    for (const c of run.live) c.terminate();
  };
  const deadline = setTimeout(() => {
    timedOut = true;
    stop(`deadline of ${opts.deadlineMs ?? 600_000} ms`);
  }, opts.deadlineMs ?? 600_000);
  const onAbort = () => stop('interrupted');
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    replica = await startReplica(dir, secret);
    const r = replica;
    r.onCrash = (why) => {
      t.finding(why);
      stop('the replica process exited');
    };
    run.url = r.url;
    log(`seed ${seed}; replica ${r.url} (pid ${r.proc.pid ?? '?'}), store sqlite in ${dir}`);
    legit = await legitProcess(r.url, secret, 10_000);
    run.legit = { target: legit.target, requestId: legit.requestId };
    const warm = legit;
    for (let i = 0; i < 40 && warm.ops() < 20; i++) await sleep(50);
    rssBefore = procMiB(r.proc.pid, 'VmRSS');

    const { plan, share } = buildPlan(seed, frames, connections);
    let step = Math.max(1, Math.round(frames / 10));
    run.onSent = () => {
      if (t.framesSent === opts.killReplicaAtFrame) r.proc.kill('SIGKILL');
      if (t.framesSent >= step) {
        log(`${t.framesSent} frames, ${t.connections} connections, legitimate ops ${warm.ops()}`);
        step += Math.max(1, Math.round(frames / 10));
      }
    };
    // The plan first; then, if sessions the replica closed early (4002) left frames unsent, more
    // sessions until they are sent (at most as many again).
    let next = 0;
    let extra = 0;
    const nextPlanned = () => plan[next++];
    const nextExtra = (): ConnPlan | undefined =>
      run.remaining > 0 && extra < Math.max(connections, 100)
        ? { index: plan.length + extra++, kind: 'post', scenario: 'silent', style: 'mixed', budget: share }
        : undefined;
    const worker = async (take: () => ConnPlan | undefined) => {
      for (let p = take(); p && !run.stopping; p = take()) {
        try {
          await (p.kind === 'pre' ? preAuth(run, p) : postAuth(run, p));
        } catch (err) {
          t.finding(`connection #${p.index}: the fuzzer failed: ${(err as Error).stack ?? String(err)}`);
        }
      }
    };
    await Promise.all(Array.from({ length: concurrency }, () => worker(nextPlanned)));
    await Promise.all(Array.from({ length: concurrency }, () => worker(nextExtra)));
    log(`fuzz done: ${t.framesSent} frames over ${t.connections} connections`);

    if (!r.crash) await sleep(settleMs);
    rssAfter = procMiB(r.proc.pid, 'VmRSS');
    rssPeak = procMiB(r.proc.pid, 'VmHWM');
    alive = r.crash ? { ok: false, detail: r.crash } : await checkAlive(r.url, secret);
    legitReport = await legit.stop();
  } finally {
    clearTimeout(deadline);
    opts.signal?.removeEventListener('abort', onAbort);
    run.stopping = true;
    for (const c of run.live) c.terminate();
    if (legit) legitReport = await legit.stop();
    await replica?.stop();
    logs = logErrors(dir);
    rmSync(dir, { recursive: true, force: true });
  }
  for (const s of logs.samples) t.finding(`replica log: ${s}`);
  for (const e of legitReport.errors) t.finding(`legitimate application: ${e}`);
  const crashes = replica?.crash ? 1 : 0;
  const report: FuzzReport = {
    ok: false,
    seed,
    heavy: opts.heavy ?? false,
    durationMs: Math.round(performance.now() - t0),
    timedOut,
    interrupted: opts.signal?.aborted ?? false,
    framesSent: t.framesSent,
    preAuthFrames: t.preAuthFrames,
    postAuthFrames: t.postAuthFrames,
    connections: t.connections,
    preAuthConnections: t.preAuthConnections,
    sessions: t.sessions,
    concurrency,
    refusedByLimit: t.refusedByLimit,
    errorsByCode: t.errorsByCode,
    otherAnswers: t.otherAnswers,
    closedByReplica: t.closedByReplica,
    answered: t.answered,
    absorbedByClose: t.absorbedByClose,
    unanswered: t.unanswered,
    unpredictedAnswers: t.unpredictedAnswers,
    preAuthUnrefused: t.preAuthUnrefused,
    sealedSessions: t.sealedSessions,
    brokenSeals: t.brokenSeals,
    brokenSealsKept: t.brokenSealsKept,
    handshakeFailures: t.handshakeFailures,
    invalidReplies: t.invalidReplies,
    crashes,
    crash: replica?.crash,
    aliveAtEnd: alive.ok,
    aliveDetail: alive.detail,
    legit: legitReport,
    replica: {
      rssBeforeMiB: rssBefore,
      rssPeakMiB: rssPeak,
      rssAfterMiB: rssAfter,
      badFramesCounted: replica?.status?.stats.badFrames ?? null,
      sessionsOpened: replica?.status?.stats.sessions ?? null,
      logErrors: logs.count,
    },
    framesByKind: t.framesByKind,
    preAuthScenarios: t.preAuthScenarios,
    findings: t.findings,
  };
  report.ok = failures(report).length === 0;
  return report;
}

/** The checks a run must pass, as the words of those it failed. */
export function failures(r: FuzzReport): string[] {
  const out: string[] = [];
  if (r.crashes > 0) out.push(`replica crashed (${r.crash ?? ''})`);
  if (!r.aliveAtEnd) out.push(`replica not answering a fresh session at the end (${r.aliveDetail})`);
  if (r.timedOut) out.push('the run hit its deadline');
  if (r.interrupted) out.push('the run was interrupted');
  if (r.legit.failures > 0) out.push(`${r.legit.failures} legitimate failure(s)`);
  if (r.legit.ops === 0) out.push('the legitimate application did nothing');
  if (r.unanswered > 0) out.push(`${r.unanswered} post-authentication frame(s) unanswered`);
  if (r.unpredictedAnswers > 0) out.push(`${r.unpredictedAnswers} answer(s) with another code than predicted`);
  if (r.preAuthUnrefused > 0)
    out.push(`${r.preAuthUnrefused} pre-authentication connection(s) neither refused nor closed`);
  if (r.brokenSealsKept > 0) out.push(`${r.brokenSealsKept} sealed session(s) kept after a broken seal`);
  if (r.handshakeFailures > 0) out.push(`${r.handshakeFailures} session(s) could not authenticate`);
  if (r.invalidReplies > 0) out.push(`${r.invalidReplies} reply frame(s) failed the codec`);
  if ((r.errorsByCode.INTERNAL ?? 0) > 0) out.push(`${r.errorsByCode.INTERNAL ?? 0} INTERNAL error(s)`);
  if (r.replica.logErrors > 0) out.push(`${r.replica.logErrors} error line(s) in the replica log`);
  return out;
}

const n = (x: number) => x.toLocaleString('en-US');
const mib = (x: number | null) => (x === null ? 'n/a' : `${x.toFixed(1)} MiB`);
const tally = (t: Record<string, number>, limit = 40) =>
  Object.entries(t)
    .sort((a, b) => b[1] - a[1])
    .slice(0, limit)
    .map(([k, v]) => `${k} ${n(v)}`)
    .join(' · ') || '-';

/** The report as the CLI prints it. */
export function formatFuzzReport(r: FuzzReport): string {
  const bad = failures(r);
  const lines = [
    `safe-resume fuzz: ${r.ok ? 'PASS' : 'FAIL'} (seed ${r.seed}${r.heavy ? ', heavy' : ''}; reproduce the frames with --seed ${r.seed}${r.heavy ? ' --heavy' : ''})`,
    `  frames sent         ${n(r.framesSent)} (pre-auth ${n(r.preAuthFrames)}, post-auth ${n(r.postAuthFrames)}) in ${(r.durationMs / 1000).toFixed(1)} s${r.timedOut ? ' (deadline hit)' : ''}`,
    `  connections         ${n(r.connections)} (${r.concurrency} at a time): pre-auth ${n(r.preAuthConnections)}, sessions ${n(r.sessions)}, refused by limit ${n(r.refusedByLimit)}`,
    `  post-auth frames    answered ${n(r.answered)}, absorbed by a replica close ${n(r.absorbedByClose)}, unanswered ${n(r.unanswered)}, unpredicted answers ${n(r.unpredictedAnswers)}`,
    `  pre-auth            unrefused ${n(r.preAuthUnrefused)}; sessions that failed to authenticate ${n(r.handshakeFailures)}; invalid replies ${n(r.invalidReplies)}`,
    `  sealed sessions     ${n(r.sealedSessions)}; broken seals sent ${n(r.brokenSeals)}, sessions kept after one ${n(r.brokenSealsKept)}`,
    `  errors received     ${tally(r.errorsByCode)}`,
    `  other answers       ${tally(r.otherAnswers)}`,
    `  closed by replica   ${tally(r.closedByReplica)}`,
    `  crashes             ${r.crashes}${r.crash ? ` (${r.crash})` : ''}; at the end: ${r.aliveDetail}`,
    `  legitimate app      ${n(r.legit.ops)} ops (4 KiB writes and verified reads), ${r.legit.failures} failures, p99 ${r.legit.p99Ms} ms, max ${r.legit.maxMs} ms`,
    `  replica RSS         before ${mib(r.replica.rssBeforeMiB)}, peak ${mib(r.replica.rssPeakMiB)}, after ${mib(r.replica.rssAfterMiB)}`,
    `  replica counters    bad frames ${r.replica.badFramesCounted ?? 'n/a'}, sessions opened ${r.replica.sessionsOpened ?? 'n/a'}, error lines in its log ${r.replica.logErrors}`,
    `  pre-auth scenarios  ${tally(r.preAuthScenarios)}`,
    `  frames by kind      ${tally(r.framesByKind)}`,
  ];
  if (bad.length > 0) lines.push('  failed checks:', ...bad.map((b) => `    - ${b}`));
  if (r.findings.length > 0) lines.push('  findings:', ...r.findings.map((f) => `    - ${f}`));
  return lines.join('\n');
}

// ---------------------------------------------------------------- command line

const HELP = `node dist/bench/fuzz.js [--frames N] [--connections N] [--concurrency N] [--seed N] [--deadline SECONDS] [--heavy] [--json]

Starts a replica process and a legitimate application writing and reading through it, then sends
malformed frames over many connections and reports crashes, the application's failures, the
replica's answers and its memory before and after. Exit status 0 only if every check passed.
See docs/fuzz.md.
`;

export async function main(argv: string[]): Promise<number> {
  const num = (flag: string): number | undefined => {
    const at = argv.indexOf(flag);
    if (at < 0) return undefined;
    const v = Number(argv[at + 1]);
    if (!Number.isSafeInteger(v) || v < 0) throw new Error(`${flag} takes a non-negative integer`);
    return v;
  };
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(HELP);
    return 0;
  }
  const known = ['--frames', '--connections', '--concurrency', '--seed', '--deadline'];
  const unknown = argv.filter(
    (a, i) => a !== '--json' && a !== '--heavy' && !known.includes(a) && !known.includes(argv[i - 1] ?? ''),
  );
  if (unknown.length > 0) {
    process.stderr.write(`fuzz: unknown argument ${unknown[0]}\n\n${HELP}`);
    return 2;
  }
  const o: FuzzOptions = { log: (l) => process.stderr.write(`fuzz: ${l}\n`) };
  const frames = num('--frames');
  const connections = num('--connections');
  const concurrency = num('--concurrency');
  const seed = num('--seed');
  const deadline = num('--deadline');
  if (frames !== undefined) o.frames = frames;
  if (connections !== undefined) o.connections = connections;
  if (concurrency !== undefined) o.concurrency = concurrency;
  if (seed !== undefined) o.seed = seed;
  if (deadline !== undefined) o.deadlineMs = deadline * 1000;
  if (argv.includes('--heavy')) o.heavy = true;
  // Ctrl-C stops the run; it still cleans up and prints what it saw.
  const ac = new AbortController();
  process.once('SIGINT', () => ac.abort());
  o.signal = ac.signal;
  const r = await runFuzz(o);
  process.stdout.write(argv.includes('--json') ? JSON.stringify(r, null, 2) + '\n' : formatFuzzReport(r) + '\n');
  return r.ok ? 0 : 1;
}

if (process.argv[1]?.endsWith(join('bench', 'fuzz.js')) && process.argv.includes('--legit-child')) legitChild();
else if (process.argv[1]?.endsWith(join('bench', 'fuzz.js'))) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      console.error(err);
      process.exit(2);
    },
  );
}
