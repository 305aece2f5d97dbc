/**
 * The faults a schedule injects into the simulated world, each as one seeded play (a crash, a
 * partition, a stalled store, a foreign writer, ...), and the healing of every one at the end.
 */
import type { World } from './world.js';
import type { Proc } from './procs.js';
import { SimStore } from './store.js';

export const FAULT_KINDS = [
  'replica-crash',
  'replica-kill',
  'agent-crash-on-reply',
  'app-restart',
  'clock-step',
  'node-disk-error',
  'store-busy',
  'store-io',
  'storage-reboot',
  'dismount',
  'store-unavailable',
  'partition',
  'lossy-link',
  'agent-restart',
  'app-move',
  'foreign-writer',
  'clock-jump',
  'store-stall',
  'late-commit',
  'lease-race',
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

/** Inject one fault of `kind` now, lasting a time drawn from `faultMs` (never past `faultsUntil`). */
export async function inject(
  world: World,
  kind: FaultKind,
  faultsUntil: number,
  faultMs: [number, number],
): Promise<void> {
  const now = world.clock.now();
  const until = Math.min(faultsUntil, now + world.between(faultMs[0], faultMs[1]));
  const i = world.between(0, world.opts.replicas - 1);
  const name = world.replicaNames[i]!;
  switch (kind) {
    case 'replica-crash': {
      const r = world.replicas[i];
      if (!r) return;
      world.fault(kind, name);
      world.replicas[i] = undefined;
      const store = world.stores[i];
      await r.stop();
      // The process exits: what its store had not committed yet is gone with it.
      if (store instanceof SimStore) store.crash();
      world.clock.setTimeout(() => void restartReplica(world, i), until - now);
      return;
    }
    case 'storage-reboot': {
      // Power loss of the storage: every replica dies at once, losing what it had not committed.
      world.fault(kind, 'every replica');
      for (let j = 0; j < world.opts.replicas; j++) world.killReplica(j);
      world.clock.setTimeout(
        () => {
          for (let j = 0; j < world.opts.replicas; j++) void restartReplica(world, j);
        },
        world.between(50, 500),
      );
      return;
    }
    case 'dismount': {
      const r = world.replicas[i];
      if (!r) return;
      world.fault(kind, name);
      r.dismount();
      world.clock.setTimeout(() => r.mount(), until - now);
      return;
    }
    case 'store-unavailable': {
      // The database's volume goes away: every replica over it sees it (a replica's own dismount is
      // the 'dismount' fault).
      const store = world.stores[i];
      if (!(store && 'setAvailable' in store)) return;
      world.fault(kind, store instanceof SimStore ? 'the database' : name);
      (store as { setAvailable(v: boolean): void }).setAvailable(false);
      world.clock.setTimeout(() => (store as { setAvailable(v: boolean): void }).setAvailable(true), until - now);
      return;
    }
    case 'partition': {
      const node = world.pick(world.nodeNames);
      const all = world.random() < 0.5;
      const targets = all ? world.replicaNames : [name];
      world.fault(kind, `${node} from ${all ? 'every replica' : name}`);
      for (const r of targets) world.link(node, r).partitioned = true;
      world.clock.setTimeout(() => {
        for (const r of targets) world.link(node, r).partitioned = false;
      }, until - now);
      return;
    }
    case 'lossy-link': {
      const node = world.pick(world.nodeNames);
      const l = world.link(node, name);
      const dropP = world.pick([0, 0.05, 0.2]);
      const dupP = world.pick([0, 0.1, 0.3]);
      const jitterMs = world.pick([2, 20, 60]);
      world.fault(kind, `${node}<->${name} drop=${dropP} dup=${dupP} jitter=${jitterMs}ms, reordering`);
      Object.assign(l, { dropP, dupP, jitterMs, reorder: true });
      world.clock.setTimeout(() => Object.assign(l, { dropP: 0, dupP: 0, jitterMs: 2, reorder: false }), until - now);
      return;
    }
    case 'agent-restart': {
      const node = world.pick(world.nodeNames);
      if (!world.agents.get(node)) return;
      const powerLoss = world.random() < 0.5;
      world.fault(kind, `${node}${powerLoss ? ' (power loss)' : ''}`);
      restartAgent(world, node, world.crashAgent(node, powerLoss));
      return;
    }
    case 'agent-crash-on-reply': {
      // The store grants or applies, the replica answers, and the agent dies before handling it.
      const node = world.pick(world.nodeNames);
      if (!world.agents.get(node)) return;
      const types = world.pick([['resumed'], ['opened'], ['written'], ['resumed', 'opened', 'written', 'closed']]);
      const powerLoss = world.random() < 0.5;
      world.fault(kind, `${node} on its next ${types.join('/')}${powerLoss ? ' (power loss)' : ''}`);
      world.crashOnReply(node, types, () => restartAgent(world, node, world.crashAgent(node, powerLoss)));
      return;
    }
    case 'app-restart': {
      const live = world.procs.filter((p) => !p.crashed && !p.stopped && p.handle && !p.app.startsWith('intruder-'));
      if (live.length === 0) return;
      const p = world.pick(live);
      world.fault(kind, `${p.app} on ${p.node}`);
      world.crashProc(p);
      // It starts again on the same node and reclaims the requestId the node kept for it.
      world.clock.setTimeout(() => respawn(world, p.node, [p]), world.between(0, 300));
      return;
    }
    case 'replica-kill': {
      if (!world.killReplica(i)) return;
      world.fault(kind, name);
      world.clock.setTimeout(() => void restartReplica(world, i), until - now);
      return;
    }
    case 'store-busy':
    case 'store-io': {
      // Another process holds the database's write lock, or the disk under it fails commits: every
      // replica's transactions fail alike.
      const f = kind === 'store-busy' ? 'busy' : 'io';
      world.fault(kind, 'the database');
      world.dbFaults[f] = true;
      world.clock.setTimeout(() => (world.dbFaults[f] = false), until - now);
      return;
    }
    case 'clock-step': {
      const host = world.pick([...world.replicaNames, ...world.nodeNames]);
      const ms = world.pick([-2000, -600, -150, 150, 600, 2000]);
      world.fault(kind, `${host} ${ms > 0 ? '+' : ''}${ms}ms`);
      world.stepClock(host, ms);
      return;
    }
    case 'node-disk-error': {
      const node = world.pick(world.nodeNames);
      const code = world.pick(['EIO', 'ENOSPC']);
      world.fault(kind, `${node} ${code}`);
      world.disk(node).fail(code);
      world.clock.setTimeout(() => world.disk(node).fail(undefined), until - now);
      return;
    }
    case 'app-move': {
      const movable = world.procs.filter((p) => !p.crashed && !p.stopped && p.handle && p.app.startsWith('app-'));
      if (movable.length === 0 || world.opts.nodes < 2) return;
      const p = world.pick(movable);
      const to = world.pick(world.nodeNames.filter((n) => n !== p.node && world.agents.get(n)));
      if (!to) return;
      world.fault(kind, `${p.app} ${p.node} -> ${to}`);
      // The new instance takes over while the old one still runs for a moment (split brain):
      // fencing must refuse the old instance's writes.
      const requestId = p.handle!.requestId;
      world.spawn(p.app, to, p.target, { requestId });
      world.clock.setTimeout(() => world.crashProc(p), world.between(0, 300));
      return;
    }
    case 'foreign-writer': {
      // Prefer an application that is away right now: that is when a foreign write matters.
      const victims = world.procs.filter((p) => p.app.startsWith('app-'));
      const away = victims.filter((p) => p.handle && (p.handle.state === 'paused' || p.handle.state === 'resuming'));
      if (victims.length === 0) return;
      const v = world.pick(away.length > 0 ? away : victims);
      const node = world.pick(world.nodeNames.filter((n) => world.agents.get(n)));
      if (!node) return;
      world.fault(kind, `intruder on ${node} writes ${v.target}`);
      world.spawn(`intruder-${now}`, node, v.target, { once: true });
      return;
    }
    case 'store-stall': {
      // One replica's calls to the store stop for longer than a node waits for an answer (a stopped
      // replica process, or the store member it talks to hung): its nodes leave it and go on elsewhere,
      // and what it was asked is decided when it runs again, long after.
      const store = world.stores[i];
      if (!(store instanceof SimStore)) return;
      const ms = world.between(4000, 7000);
      world.fault(kind, `${name} for ${ms}ms`);
      store.stall(ms);
      return;
    }
    case 'late-commit': {
      // One replica's commits go unanswered (its store member hangs) and land later, if nothing they
      // read changed meanwhile: the replica cannot tell the node whether they were applied.
      const store = world.stores[i];
      if (!(store instanceof SimStore)) return;
      world.fault(kind, name);
      store.lateCommits([200, 4000]);
      world.clock.setTimeout(() => store.lateCommits(undefined), until - now);
      return;
    }
    case 'lease-race': {
      // A session whose only write open was refused LOCKED idles, so nothing keeps its lease alive;
      // near the end of that lease it is granted a fresh target, which another node keeps trying to open.
      const holders = world.procs.filter(
        (p) => !p.crashed && !p.stopped && p.mode === 'write' && p.handle?.state === 'active',
      );
      const contender = world.pick(world.nodeNames.filter((n) => world.agents.get(n)));
      if (holders.length === 0 || !contender) return;
      const n = world.faults.get(kind) ?? 0;
      const node = `node-lease-${n + 1}`;
      const target = `lease-race-${n + 1}.disk`;
      const held = world.pick(holders).target;
      world.fault(
        kind,
        `${node} is refused ${held}, idles, then opens ${target} near the end of its lease; ${contender} contends`,
      );
      void leaseRace(world, node, held, target, contender);
      return;
    }
    case 'clock-jump': {
      const jump = world.opts.holdMs + world.pick([100, world.opts.pauseTimeoutMs]);
      world.fault(kind, `+${jump}ms`);
      world.jumpedMs += jump;
      world.clock.advanceTo(now + jump);
      return;
    }
  }
}

/**
 * The lease race (fault `lease-race`): an application on a node of its own opens `held` (refused
 * LOCKED: its session's lease is granted, and with no active write handle nothing keeps it alive),
 * then opens `target` just before that lease's end (with the lease model; otherwise after a while),
 * while applications on `contender` try to open `target` every few ms across that end. Only the
 * store's grants go into the history: these applications are the fault's, not the workload's.
 */
async function leaseRace(world: World, node: string, held: string, target: string, contender: string): Promise<void> {
  const sleepUntil = (at: number) => world.sleep(Math.max(0, at - world.clock.now()));
  const agent = world.startAgent(node);
  const before = new Set(world.leases.expiry.keys());
  try {
    const h = await world.newApplication(agent, `${node}-idler`, node).open(held);
    // Not held after all: let it go again.
    await h.close().catch(() => undefined);
  } catch {
    // LOCKED, as intended (or storage away: the race goes on all the same).
  }
  const granted = [...world.leases.expiry.keys()].filter((id) => !before.has(id));
  const end =
    granted.length > 0
      ? world.leases.expiry.get(granted[granted.length - 1]!)!
      : world.clock.now() + world.between(500, 1500);
  const at = end - world.between(5, 40);
  await sleepUntil(at);
  if (world.stopping) return;
  const idler = world.newApplication(agent, `${node}-app`, node);
  const opening = idler.open(target).catch(() => undefined);
  const contending = (async () => {
    const other = world.agents.get(contender);
    for (
      let k = 0;
      other && world.agents.get(contender) === other && world.clock.now() < at + 300 && !world.stopping;
      k++
    ) {
      try {
        const h = await world.newApplication(other, `${node}-racer-${k}`, contender).open(target);
        await world.sleep(50);
        await h.close().catch(() => undefined);
        return;
      } catch {
        await world.sleep(world.between(2, 8));
      }
    }
  })();
  const h = await opening;
  await contending;
  await world.sleep(world.between(200, 600));
  await h?.close().catch(() => undefined);
}

/** Bring a node's agent back after a while, then the applications that died with it. */
function restartAgent(world: World, node: string, procs: Proc[]): void {
  world.clock.setTimeout(
    () => {
      if (world.agents.get(node)) return;
      world.startAgent(node);
      respawn(world, node, procs);
    },
    world.between(20, 300),
  );
}

/** The node's applications come back and reclaim the requestIds the node kept. */
function respawn(world: World, node: string, procs: Proc[]): void {
  if (!world.agents.get(node) || world.stopping) return;
  for (const p of procs) {
    if (p.app.startsWith('app-')) world.spawn(p.app, node, p.target);
    else if (p.app.startsWith('reader-')) world.spawn(p.app, node, p.target, { mode: 'read' });
  }
}

async function restartReplica(world: World, i: number): Promise<void> {
  if (world.replicas[i] || world.starting.has(i)) return;
  world.starting.add(i);
  try {
    await world.startReplica(i);
  } finally {
    world.starting.delete(i);
  }
}

/** Every fault ends: replicas back and mounted, the store and the links whole, every agent running. */
export async function healAll(world: World): Promise<void> {
  world.history.add({ kind: 'fault', fault: 'heal', detail: 'every fault ends; handles must settle' });
  world.disarmCrashTraps();
  world.calm = true;
  for (let i = 0; i < world.opts.replicas; i++) {
    if (!world.replicas[i]) await restartReplica(world, i);
    world.replicas[i]?.mount();
    const store = world.stores[i];
    if (store && 'setAvailable' in store) (store as { setAvailable(v: boolean): void }).setAvailable(true);
    if (store instanceof SimStore) {
      store.lateCommits(undefined);
      store.endStall();
    }
  }
  world.dbFaults.busy = false;
  world.dbFaults.io = false;
  for (const node of world.nodeNames) {
    world.disk(node).fail(undefined);
    for (const r of world.replicaNames)
      Object.assign(world.link(node, r), { partitioned: false, dropP: 0, dupP: 0, jitterMs: 2, reorder: false });
    if (!world.agents.get(node)) world.startAgent(node);
  }
}
