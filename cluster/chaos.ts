/**
 * Chaos mode: a seeded, randomised fault schedule against the real processes of a launched cluster,
 * then heal, settle, and check the recorded history with the simulation's checker.
 */
import { seededRandom } from '../actors/env.js';
import { check, type Violation } from '../sim/checker.js';
import { tally, type History, type HistoryEvent } from '../sim/history.js';
import type { Launcher } from './launcher.js';

export interface ChaosSummary {
  seed: number;
  seconds: number;
  faults: Record<string, number>;
  pauses: number;
  resumes: { granted: number; denied: number };
  writesAcknowledged: number;
  violations: Violation[];
  /** Stopped before its time (Ctrl-C): then `ranSeconds` of faults, and no time given to settle. */
  interrupted: boolean;
  ranSeconds: number;
}

/** Every kind of fault; `etcd-leader-kill` needs the local etcd members, `link-cut` hosts of their own (--netns). */
export const FAULTS = [
  'replica-kill',
  'storage-reboot',
  'partition',
  'dismount',
  'node-restart',
  'app-move',
  'foreign-writer',
  'etcd-leader-kill',
  'link-cut',
] as const;
export type Fault = (typeof FAULTS)[number];

/** The faults a cluster can take: every kind whose parts it has. */
export function faultsFor(l: Launcher): Fault[] {
  return FAULTS.filter((f) =>
    f === 'etcd-leader-kill' ? l.etcd !== undefined : f === 'link-cut' ? l.opts.hosts !== undefined : true,
  );
}

/**
 * Faults for `seconds`, one every 1-3 s: drawn at random among the cluster's kinds (seeded), or, given
 * `schedule`, its kinds in order (again from the start when it runs out). Once `interrupt` is aborted
 * no fault starts; the run heals, stops its workloads and checks at once (the end's liveness, L2 and
 * L3, needs the settling time it skips, so it is not checked then).
 */
export async function runChaos(
  l: Launcher,
  seconds: number,
  seed: number,
  onFault?: (kind: string, detail: string) => void,
  schedule?: readonly Fault[],
  interrupt?: AbortSignal,
): Promise<ChaosSummary> {
  const started = Date.now();
  // A sleep that an interrupt ends early.
  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      if (interrupt?.aborted) return resolve();
      const done = () => {
        clearTimeout(t);
        interrupt?.removeEventListener('abort', done);
        resolve();
      };
      const t = setTimeout(done, ms);
      interrupt?.addEventListener('abort', done, { once: true });
    });
  const random = seededRandom(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!;
  const between = (lo: number, hi: number) => lo + Math.floor(random() * (hi - lo + 1));
  const faults: Record<string, number> = {};
  const replicas = () => [...l.children.values()].filter((c) => c.role === 'replica').map((c) => c.id);
  const nodes = () => [...l.children.values()].filter((c) => c.role === 'node').map((c) => c.id);
  const note = (kind: string, detail: string) => {
    faults[kind] = (faults[kind] ?? 0) + 1;
    l.history.push({ t: Date.now(), kind: 'fault', fault: kind, detail });
    onFault?.(kind, detail);
  };
  const until = Date.now() + seconds * 1000;
  let scheduled = 0;
  // The checker runs while the faults do (safety only: pauses and pending operations are normal mid-run).
  l.chaos = { verdict: `chaos seed ${seed}: running`, violations: 0 };
  let checking = false;
  const verdict = setInterval(() => {
    if (checking) return;
    checking = true;
    l.storeHistory()
      .then((h) => {
        const n = check(merge(h.events, l.history)).filter((v) => v.guarantee.startsWith('S')).length;
        l.chaos = { verdict: `chaos seed ${seed}: ${n} safety violations so far`, violations: n };
      })
      .catch(() => {
        // the store is being rebooted; next time
      })
      .finally(() => (checking = false));
  }, 5000);
  while (Date.now() < until && !interrupt?.aborted) {
    await sleep(between(1000, 3000));
    if (Date.now() >= until || interrupt?.aborted) break;
    const kind = schedule && schedule.length > 0 ? schedule[scheduled++ % schedule.length]! : pick(faultsFor(l));
    try {
      switch (kind) {
        case 'replica-kill': {
          const id = pick(replicas());
          note(kind, id);
          await l.restart(id);
          break;
        }
        case 'storage-reboot':
          note(kind, 'every replica');
          await l.rebootStorage();
          break;
        case 'partition': {
          const node = pick(nodes());
          const s = between(1, 4);
          note(kind, `${node} for ${s}s`);
          l.partition(node, s);
          break;
        }
        case 'dismount': {
          const id = pick(replicas());
          const s = between(1, 3);
          note(kind, `${id} for ${s}s`);
          l.dismount(id, s);
          break;
        }
        case 'node-restart': {
          const node = pick(nodes());
          note(kind, node);
          await l.restart(node);
          break;
        }
        case 'app-move': {
          const [app, where] = pick([...l.apps.entries()]);
          const to = pick(nodes().filter((n) => n !== where.node));
          note(kind, `${app} ${where.node} -> ${to}`);
          await l.move(app, to);
          break;
        }
        case 'etcd-leader-kill': {
          // The store's own failure: its leader dies; a quorum elects another; it comes back a little later.
          const leader = await l.etcd!.leader();
          if (!leader) break;
          const s = between(2, 5);
          note(kind, `${leader.id}, back after ${s}s`);
          l.kill(leader.id);
          l.later(s * 1000, () => void l.restart(leader.id).catch(() => undefined));
          break;
        }
        case 'link-cut': {
          // A replica host drops off the network: its sessions go silent; nodes fail over to the others.
          const id = pick(replicas());
          const s = between(2, 5);
          note(kind, `${id} for ${s}s`);
          l.cutLink(id, s);
          break;
        }
        case 'foreign-writer': {
          // Cut a node off long enough for its locks to lapse, then write one of its targets.
          const node = pick(nodes());
          const victim = [...l.apps.entries()].find(([, a]) => a.node === node);
          if (!victim) break;
          note(kind, `${node} partitioned, then ${victim[1].target} written by an intruder`);
          l.partition(node, Math.ceil((l.opts.holdMs + 6000) / 1000));
          await sleep(l.opts.holdMs + 4000);
          if (interrupt?.aborted) break;
          await l.write(victim[1].target, `intruder ${Date.now()}`, 'intruder').catch(() => undefined);
          break;
        }
      }
    } catch {
      // A fault that could not be applied (e.g. the process was already down) is just skipped.
    }
  }
  clearInterval(verdict);
  const ranSeconds = Math.round((Date.now() - started) / 1000);
  // Heal everything, let every handle settle, stop the workloads, check.
  const healedAt = Date.now();
  l.history.push({
    t: healedAt,
    kind: 'fault',
    fault: 'heal',
    detail: interrupt?.aborted ? 'interrupted: every fault ends' : 'every fault ends; handles must settle',
  });
  l.heal();
  if (!interrupt?.aborted) for (const c of l.children.values()) if (!c.proc) await l.restart(c.id);
  for (const c of l.children.values()) if (c.role === 'replica' && c.proc?.connected) c.proc.send({ type: 'mount' });
  await sleep(Math.max(8000, l.opts.holdMs + 6000));
  // Interrupted at any point until now: the handles did not get their time to settle.
  const interrupted = interrupt?.aborted === true;
  await l.stopWorkloads();
  const store = await l.storeHistory();
  const history = merge(store.events, l.history);
  for (const f of store.finals) history.push({ t: Date.now(), kind: 'final', target: f.target, bytes: f.bytes });
  const { granted, denied, writesAcknowledged: acked, pauses } = tally(history);
  // Cut short, handles had no time to settle: what is still paused or pending at the end is not a finding.
  const violations = check(history).filter(
    (v) => !interrupted || !((v.guarantee === 'L2' || v.guarantee === 'L3') && v.t >= healedAt),
  );
  l.chaos = {
    verdict: `chaos seed ${seed}: ${violations.length} violation${violations.length === 1 ? '' : 's'}`,
    violations: violations.length,
  };
  return {
    seed,
    seconds,
    faults,
    pauses,
    resumes: { granted, denied },
    writesAcknowledged: acked,
    violations,
    interrupted,
    ranSeconds,
  };
}

/** Store events (in commit order) and process events, by time; on a tie the store's event comes first. */
function merge(store: unknown[], procs: unknown[]): History {
  const tagged = [
    ...store.map((e, i) => ({ e: e as HistoryEvent, k: 0, i })),
    ...procs.map((e, i) => ({ e: e as HistoryEvent, k: 1, i })),
  ];
  tagged.sort((a, b) => a.e.t - b.e.t || a.k - b.k || a.i - b.i);
  return tagged.map((x) => x.e);
}
