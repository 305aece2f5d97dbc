/** Run many seeds and sum them up: what `safe-resume sim` prints. */
import { formatEvent, GUARANTEES, traceOf, type Violation } from './checker.js';
import { runSchedule, type ScheduleOptions, type ScheduleResult } from './scheduler.js';

export interface SimSummary {
  schedules: number;
  steps: number;
  simulatedMs: number;
  faults: Record<string, number>;
  resumes: { granted: number; denied: number };
  writesAcknowledged: number;
  outcomeUnknown: number;
  readResumes: number;
  reads: number;
  violations: Array<Violation & { seed: number; replay: string }>;
  wallMs: number;
}

/** What one seed adds to a summary (a ScheduleResult without its history, small enough to post between threads). */
export type SeedResult = Omit<ScheduleResult, 'history' | 'settings'>;

export function emptySummary(): SimSummary {
  return {
    schedules: 0,
    steps: 0,
    simulatedMs: 0,
    faults: {},
    resumes: { granted: 0, denied: 0 },
    writesAcknowledged: 0,
    outcomeUnknown: 0,
    readResumes: 0,
    reads: 0,
    violations: [],
    wallMs: 0,
  };
}

export function addSeed(sum: SimSummary, r: SeedResult): void {
  sum.schedules++;
  sum.steps += r.steps;
  sum.simulatedMs += r.simulatedMs;
  for (const [k, v] of Object.entries(r.faults)) sum.faults[k] = (sum.faults[k] ?? 0) + v;
  sum.resumes.granted += r.resumes.granted;
  sum.resumes.denied += r.resumes.denied;
  sum.writesAcknowledged += r.writesAcknowledged;
  sum.outcomeUnknown += r.outcomeUnknown;
  sum.readResumes += r.readResumes;
  sum.reads += r.reads;
  // The first violated guarantee of a seed is the one to report; later ones often follow from it.
  const first = r.violations[0];
  if (first) sum.violations.push({ ...first, seed: r.seed, replay: `safe-resume sim --seed ${r.seed}` });
}

/** Run seeds one after another in this thread. */
export async function runSeeds(
  first: number,
  count: number,
  opts: ScheduleOptions = {},
  onResult?: (r: SeedResult) => void,
): Promise<SimSummary> {
  const started = performance.now();
  const sum = emptySummary();
  for (let seed = first; seed < first + count; seed++) {
    const r = await runSchedule(seed, opts);
    addSeed(sum, r);
    onResult?.(r);
  }
  sum.wallMs = Math.round(performance.now() - started);
  return sum;
}

export function formatSummary(s: SimSummary): string {
  const lines = [
    `schedules        ${s.schedules}`,
    `simulated steps  ${s.steps}`,
    `simulated time   ${(s.simulatedMs / 1000).toFixed(1)} s`,
    `wall time        ${(s.wallMs / 1000).toFixed(1)} s`,
    `writes acked     ${s.writesAcknowledged}`,
    `outcome unknown  ${s.outcomeUnknown} writes`,
    `reads            ${s.reads} returned to applications; ${s.readResumes} read-handle resumes`,
    `resumes          ${s.resumes.granted} granted, ${s.resumes.denied} denied`,
    `faults           ${Object.entries(s.faults)
      .sort()
      .map(([k, v]) => `${k}=${v}`)
      .join(' ')}`,
    `violations       ${s.violations.length}`,
  ];
  for (const v of s.violations.slice(0, 20))
    lines.push(`  seed ${v.seed}: ${v.guarantee} ${v.message} (replay: ${v.replay})`);
  return lines.join('\n');
}

/** One seed in full: settings, the verdict, and a trace: of the run (faults, handle states, resumes), or on a violation of the target up to it. */
export function formatReplay(r: ScheduleResult): string {
  const lines = [
    `seed ${r.seed}: ${JSON.stringify(r.settings)}`,
    `steps ${r.steps}, simulated ${r.simulatedMs} ms, writes acked ${r.writesAcknowledged}, resumes ${r.resumes.granted} granted / ${r.resumes.denied} denied`,
  ];
  const v = r.violations[0];
  if (!v) {
    // The run's story without its thousands of reads and writes: faults, crashes, every handle's state, every resume's answer.
    const story = new Set(['fault', 'crash', 'state', 'grant', 'deny']);
    lines.push('trace:', ...r.history.filter((e) => story.has(e.kind)).map((e) => `  ${formatEvent(e)}`));
    lines.push('all guarantees hold (S1-S5, L1-L3)');
    return lines.join('\n');
  }
  lines.push(`VIOLATION ${v.guarantee} (${GUARANTEES[v.guarantee]}) at ${v.t} ms: ${v.message}`);
  lines.push(`trace of ${v.target ?? 'the run'} up to the violation:`);
  lines.push(...traceOf(r.history, v.target, v.t).map((l) => `  ${l}`));
  lines.push(`replay: safe-resume sim --seed ${r.seed}`);
  return lines.join('\n');
}
