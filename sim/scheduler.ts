/**
 * Randomised fault schedules over the simulated world, and the runner that plays one seed to the
 * end and checks its history. Safety, then liveness: faults until `faultsUntilMs`, then everything
 * heals and every handle must settle.
 */
import { seededRandom } from '../actors/env.js';
import { quiesce } from './clock.js';
import type { Violation } from './checker.js';
import { FAULT_KINDS, healAll, inject, type FaultKind } from './faults.js';
import { tally, type History } from './history.js';
import { World, type WorldOptions } from './world.js';

export { FAULT_KINDS, type FaultKind } from './faults.js';

export interface ScheduleOptions {
  /** Faults to inject (default 4-10, drawn from the seed). */
  faults?: number;
  faultsUntilMs?: number;
  settleMs?: number;
  kinds?: readonly FaultKind[];
  makeStore?: WorldOptions['makeStore'];
  replicaTransport?: WorldOptions['replicaTransport'];
  makeKept?: WorldOptions['makeKept'];
  /** How long a fault lasts, drawn from this range (default 100-1500 ms). */
  faultMs?: [number, number];
  /** Locks on leases, as on etcd (default: drawn from the seed, on for one seed in four). */
  leases?: boolean;
}

export interface ScheduleResult {
  seed: number;
  settings: Omit<WorldOptions, 'seed' | 'makeStore' | 'makeKept'>;
  steps: number;
  simulatedMs: number;
  faults: Record<string, number>;
  resumes: { granted: number; denied: number };
  writesAcknowledged: number;
  /** Writes that rejected OUTCOME_UNKNOWN: sent, and whether they were applied could no longer be known. */
  outcomeUnknown: number;
  /** Resumes of read handles (granted or denied), and reads that returned to an application. */
  readResumes: number;
  reads: number;
  violations: Violation[];
  history: History;
}

export async function runSchedule(seed: number, opts: ScheduleOptions = {}): Promise<ScheduleResult> {
  const draw = seedDraws(seed);
  const settings = {
    replicas: draw.int(2, 3),
    nodes: draw.int(2, 3),
    appsPerNode: draw.int(1, 2),
    holdMs: draw.pick([0, 150, 400, 1000]),
    pauseTimeoutMs: draw.pick([2500, 6000]),
    keptOnDisk: true,
    leases: opts.leases ?? draw.int(0, 3) === 0,
  };
  const world = new World({
    seed,
    ...settings,
    store: 'sim',
    ...(opts.makeStore ? { makeStore: opts.makeStore } : {}),
    ...(opts.replicaTransport ? { replicaTransport: opts.replicaTransport } : {}),
    ...(opts.makeKept ? { makeKept: opts.makeKept } : {}),
  });
  const faultsUntil = opts.faultsUntilMs ?? 4000;
  const settle = opts.settleMs ?? 5000;
  const kinds = opts.kinds ?? FAULT_KINDS;

  // Every host's clock is a little off from the others'.
  for (const host of [...world.replicaNames, ...world.nodeNames]) world.skews.set(host, world.between(-50, 50));
  for (let i = 0; i < settings.replicas; i++) await world.startReplica(i);
  for (const node of world.nodeNames) world.startAgent(node);
  let appNo = 0;
  const nodes = world.nodeNames;
  nodes.forEach((node, n) => {
    for (let a = 0; a < settings.appsPerNode; a++) {
      appNo++;
      world.spawn(`app-${appNo}`, node, `vm${appNo}.disk`);
      // Every other target also has a reader, on another node, so its resumes meet other faults.
      if (appNo % 2 === 1)
        world.spawn(`reader-${appNo}`, nodes[(n + 1) % nodes.length]!, `vm${appNo}.disk`, { mode: 'read' });
    }
  });

  const nFaults = opts.faults ?? world.between(4, 10);
  for (let i = 0; i < nFaults; i++) {
    const at = world.between(200, faultsUntil - 200);
    const kind = world.pick(kinds);
    world.clock.setTimeout(() => void inject(world, kind, faultsUntil, opts.faultMs ?? [100, 1500]), at);
  }
  // Phases are relative to simulated time minus clock jumps, so a jump never eats the settle period.
  let steps = 0;
  let healed = false;
  let stopped = false;
  for (;;) {
    const healAt = faultsUntil + world.jumpedMs;
    const stopAt = healAt + settle;
    const endAt = stopAt + 2000;
    const due = world.clock.nextDue() ?? Infinity;
    if (!healed && due >= healAt) {
      world.clock.advanceTo(healAt);
      healed = true;
      await healAll(world);
    } else if (!stopped && due >= stopAt) {
      world.clock.advanceTo(stopAt);
      stopped = true;
      world.stopping = true;
    } else if (due > endAt) {
      world.clock.advanceTo(endAt);
      break;
    } else {
      world.clock.advanceTo(due);
    }
    steps++;
    await quiesce();
    // Stop at the first violation: what follows it is noise, and its trace is what matters.
    if (world.checker.violations.length > 0) break;
  }
  const early = world.checker.violations.length > 0;
  if (!early) world.recordFinal();
  await world.shutdown();
  const history = world.history.events;
  const { granted, denied, writesAcknowledged, outcomeUnknown, readResumes, reads } = tally(history);
  return {
    seed,
    settings,
    steps,
    simulatedMs: world.clock.now(),
    faults: Object.fromEntries(world.faults),
    resumes: { granted, denied },
    writesAcknowledged,
    outcomeUnknown,
    readResumes,
    reads,
    violations: early ? [...world.checker.violations].sort((a, b) => a.t - b.t) : world.checker.finish(),
    history,
  };
}

/** Settings drawn from the seed with a separate generator, so they never shift the run's own draws. */
function seedDraws(seed: number) {
  const next = seededRandom((seed ^ 0x9e3779b9) >>> 0);
  return {
    int: (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1)),
    pick: <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)]!,
  };
}
