/**
 * The scenario commands, one handler each. Operations (open, write, read, close) run the world
 * until they settle or their handle stops being active; faults act at once and let no time pass;
 * `advance` and `stabilize` are the only other commands that move the clock.
 */
import type { OpenOptions } from '../actors/application.js';
import type { MemoryStore } from '../store/memory.js';
import { SimStore } from './store.js';
import { Args, duration, OP_LIMIT_MS, quoted, size, type Driver } from './scenario-driver.js';

type Handler = (d: Driver, a: Args, line: string) => Promise<void>;

const STABILIZE_MS = 60_000;

/** The command line as an operation's label (without the `nowait` flag). */
const label = (line: string) => line.replace(/\s+nowait(?=\s|$)/, '').trim();

function nodeApp(a: Args): [string, string] {
  const [node, app] = a.need(0, 'node/app').split('/');
  if (!node || !app) throw new Error(`expected node/app, got ${a.pos[0]}`);
  return [node, app];
}

function nodeName(d: Driver, a: Args): string {
  const node = a.need(0, 'node');
  if (!d.world.nodeNames.includes(node)) throw new Error(`no such node: ${node}`);
  return node;
}

/** The replicas a link fault applies to: `from=replica-k`, or all of them. */
function fromReplicas(d: Driver, a: Args): string[] {
  const from = a.kv.get('from');
  if (from === undefined) return d.world.replicaNames;
  d.replicaIndex(from);
  return [from];
}

function crashAgent(d: Driver, node: string): void {
  // The agent first: an application crashing beside a live agent would make it forget its requestIds.
  d.agent(node).crash();
  d.world.agents.set(node, undefined);
  for (const e of d.apps.values()) if (e.node === node) d.crashApp(e);
}

async function startAgent(d: Driver, node: string): Promise<void> {
  if (d.world.agents.get(node)) throw new Error(`${node} already has an agent running`);
  try {
    d.world.startAgent(node);
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    d.print(`${node}: agent failed to start: ${typeof code === 'string' ? code : String(err)}`);
    return;
  }
  const up = await d.run(5000, () => d.world.agents.get(node)?.state === 'connected');
  if (!up) d.print(`${node}: agent not connected after 5s`);
}

/** The simulated store of the replica named first (a cluster with store=sim). */
function simStore(d: Driver, a: Args): SimStore {
  const store = d.world.stores[d.replicaIndex(a.need(0, 'replica'))];
  if (!(store instanceof SimStore)) throw new Error('this fault needs the simulated store: cluster ... store=sim');
  return store;
}

/** Open targets and run until every open settled. */
async function openAll(d: Driver, opens: Array<ReturnType<Driver['open']>>): Promise<void> {
  await d.run(OP_LIMIT_MS, () => opens.every((o) => o.settled));
}

export const COMMANDS: Record<string, Handler> = {
  /**
   * cluster [replicas=2] [nodes=1] [hold=500ms] [pause-timeout=30s] [seed=1] [heartbeat=100ms] [store=sim]
   * (`store=sim`: the model of the SQLite store, with group commit and the faults `stall-store` and
   * `late-commits` need; the memory store otherwise.)
   */
  async cluster(d, a) {
    const hb = a.kv.has('heartbeat') ? a.ms('heartbeat', 100) : undefined;
    const store = a.kv.get('store');
    if (store !== undefined && store !== 'sim' && store !== 'memory')
      throw new Error(`store= takes sim or memory, not ${store}`);
    await d.newWorld({
      ...(store ? { store } : {}),
      seed: a.int('seed', 1),
      replicas: a.int('replicas', 2),
      nodes: a.int('nodes', 1),
      appsPerNode: 0,
      holdMs: a.ms('hold', 500),
      pauseTimeoutMs: a.ms('pause-timeout', 30_000),
      keptOnDisk: true,
      ...(hb ? { timing: { heartbeatIntervalMs: hb } } : {}),
    });
  },

  /** open node/app target [write|read] [on-failure=error] [requestId=rN] [pause-timeout=D] [nowait] */
  async open(d, a, line) {
    const [node, app] = nodeApp(a);
    const options: OpenOptions = {};
    if (a.has('read')) options.mode = 'read';
    else if (a.has('write')) options.mode = 'write';
    const onFailure = a.kv.get('on-failure');
    if (onFailure === 'error' || onFailure === 'pause') options.onFailure = onFailure;
    else if (onFailure !== undefined) throw new Error(`on-failure is pause or error, not ${onFailure}`);
    const rid = a.kv.get('requestId');
    if (rid) options.requestId = d.requestIdOf(rid);
    if (a.kv.has('pause-timeout')) options.pauseTimeoutMs = a.ms('pause-timeout', 0);
    const op = d.open(d.application(node, app), a.need(1, 'target'), options, label(line));
    if (!a.has('nowait')) await d.waitFor(op);
  },

  /** write node/app target [@offset] ("text" | size=N) [nowait] */
  async write(d, a, line) {
    const t = d.tracked(`${a.need(0, 'node/app')} ${a.need(1, 'target')}`);
    const data = a.text !== undefined ? new TextEncoder().encode(a.text) : new Uint8Array(a.int('size', 1)).fill(0x78);
    const op = d.track(
      label(line),
      t.label,
      t,
      () => t.crashed,
      t.handle.write(a.at ? size(a.at) : 0, data),
      () => 'ok',
    );
    if (!a.has('nowait')) await d.waitFor(op);
  },

  /** read node/app target [@offset] [length=64] [nowait] */
  async read(d, a, line) {
    const t = d.tracked(`${a.need(0, 'node/app')} ${a.need(1, 'target')}`);
    const length = a.pos[2] ? size(a.pos[2]) : 64;
    const op = d.track(label(line), t.label, t, () => t.crashed, t.handle.read(a.at ? size(a.at) : 0, length), quoted);
    if (!a.has('nowait')) await d.waitFor(op);
  },

  /** close node/app target */
  async close(d, a, line) {
    const t = d.tracked(`${a.need(0, 'node/app')} ${a.need(1, 'target')}`);
    await d.waitFor(
      d.track(
        label(line),
        t.label,
        t,
        () => t.crashed,
        t.handle.close(),
        () => 'ok',
      ),
      true,
    );
  },

  /** partition node [from=replica-k]: frames both ways vanish silently. */
  async partition(d, a) {
    const node = nodeName(d, a);
    for (const r of fromReplicas(d, a)) d.world.link(node, r).partitioned = true;
  },

  /** heal node: every link fault of the node ends. */
  async heal(d, a) {
    const node = nodeName(d, a);
    for (const r of d.world.replicaNames) d.world.link(node, r).partitioned = false;
    d.world.dropReplies(node, false);
    d.world.breakOn(node, undefined);
  },

  /** drop-replies node [from=replica-k]: requests are delivered, the replicas' frames to the node are lost. */
  async 'drop-replies'(d, a) {
    d.world.dropReplies(nodeName(d, a), true, fromReplicas(d, a));
  },

  /**
   * drop-link node [at=TYPE] [times=N]: the node's connections close (a socket reset). With `at`,
   * when the node next sends a TYPE frame (e.g. resume): that frame is lost and the link drops;
   * `times` repeats it, running the world until each one happened.
   */
  async 'drop-link'(d, a) {
    const node = nodeName(d, a);
    const at = a.kv.get('at');
    if (at === undefined) return d.world.dropLinks(node);
    const times = a.int('times', 1);
    for (let i = 0; i < times; i++) {
      d.world.breakOn(node, at);
      if (!(await d.run(OP_LIMIT_MS, () => !d.world.breakPending(node)))) {
        d.world.breakOn(node, undefined);
        return d.print(`drop-link ${node}: no ${at} frame within ${OP_LIMIT_MS / 1000}s (after ${i} drops)`);
      }
    }
  },

  /**
   * hold-replies node TYPE[,TYPE...]: the replicas' frames of these types to the node are held back
   * (in order) until `release-replies node`; other frames overtake them, as a reply answered after a
   * group commit is overtaken by a notice sent before it.
   */
  async 'hold-replies'(d, a) {
    d.world.hold(nodeName(d, a), a.need(1, 'message types').split(','));
  },

  async 'release-replies'(d, a) {
    d.world.release(nodeName(d, a));
  },

  async 'kill-replica'(d, a) {
    const i = d.replicaIndex(a.need(0, 'replica'));
    const r = d.world.replicas[i];
    d.world.replicas[i] = undefined;
    await r?.stop();
  },

  async 'restart-replica'(d, a) {
    const i = d.replicaIndex(a.need(0, 'replica'));
    if (!d.world.replicas[i]) await d.world.startReplica(i);
  },

  async dismount(d, a) {
    d.world.replicas[d.replicaIndex(a.need(0, 'replica'))]?.dismount();
  },

  async mount(d, a) {
    d.world.replicas[d.replicaIndex(a.need(0, 'replica'))]?.mount();
  },

  /** reboot-storage [down=200ms]: every replica stops, and starts again after `down`. */
  async 'reboot-storage'(d, a) {
    const w = d.world;
    for (let i = 0; i < w.opts.replicas; i++) {
      const r = w.replicas[i];
      w.replicas[i] = undefined;
      await r?.stop();
    }
    await d.run(a.ms('down', 200));
    for (let i = 0; i < w.opts.replicas; i++) if (!w.replicas[i]) await w.startReplica(i);
  },

  /** store-unavailable replica for=D: the replica's store fails every call (a busy or lost volume) for D. */
  async 'store-unavailable'(d, a) {
    const i = d.replicaIndex(a.need(0, 'replica'));
    const store = d.world.stores[i] as MemoryStore;
    store.setAvailable(false);
    d.world.clock.setTimeout(() => store.setAvailable(true), a.ms('for', 1000));
  },

  /**
   * stall-store replica for=D: the replica's calls to its store are held for D and decided only then
   * (a stopped replica process); its nodes may leave it and go on elsewhere meanwhile. Needs store=sim.
   */
  async 'stall-store'(d, a) {
    simStore(d, a).stall(a.ms('for', 1000));
  },

  /**
   * late-commits replica [after=D] | late-commits replica off: the replica's commits go unanswered
   * (it answers UNAVAILABLE, outcome unknown) and land D later unless something they read changed
   * meanwhile (an etcd transaction sent to a member that hangs). Needs store=sim.
   */
  async 'late-commits'(d, a) {
    const store = simStore(d, a);
    if (a.pos[1] === 'off') return store.lateCommits(undefined);
    const after = a.ms('after', 1000);
    store.lateCommits([after, after]);
  },

  /**
   * crash-agent node [after=resume-granted]: the agent dies, and the node's applications with it.
   * With after=resume-granted: at the moment the store has granted a resume of one of the node's
   * handles on a new session and the reply is still on its way (it is lost).
   */
  async 'crash-agent'(d, a) {
    const node = nodeName(d, a);
    const after = a.kv.get('after');
    if (after !== undefined && after !== 'resume-granted') throw new Error(`after= takes resume-granted, not ${after}`);
    if (after) {
      const w = d.world;
      w.hold(node, ['resumed']);
      const ids = new Set(
        [...d.handles.values()].filter((t) => t.node === node && !t.crashed).map((t) => t.handle.requestId),
      );
      let seen = w.history.events.length;
      const granted = () => {
        const evs = w.history.events;
        for (; seen < evs.length; seen++) {
          const e = evs[seen]!;
          if (e.kind === 'grant' && e.via === 'resume' && ids.has(e.requestId)) return true;
        }
        return false;
      };
      if (!(await d.run(OP_LIMIT_MS, granted)))
        d.print(`crash-agent ${node}: no resume granted within ${OP_LIMIT_MS / 1000}s`);
      crashAgent(d, node);
      w.discardHeld(node);
      return;
    }
    crashAgent(d, node);
  },

  /** restart-agent node: a new agent process; it reads the requestIds the node kept. */
  async 'restart-agent'(d, a) {
    await startAgent(d, nodeName(d, a));
  },

  /** crash-app node/app: the application process dies; the node agent keeps running. */
  async 'crash-app'(d, a) {
    const [node, app] = nodeApp(a);
    const e = d.apps.get(`${node}/${app}`);
    if (!e) throw new Error(`no application ${node}/${app}`);
    d.crashApp(e);
  },

  /** restart-app node/app: the application starts again on its node and opens the targets it had open. */
  async 'restart-app'(d, a) {
    const [node, app] = nodeApp(a);
    const old = d.apps.get(`${node}/${app}`);
    if (!old?.crashed) throw new Error(`${node}/${app} is not a crashed application`);
    const e = d.application(node, app);
    const opens = [...old.opened].map(([target, { requestId: _, ...options }]) =>
      d.open(e, target, options, `open ${node}/${app} ${target}`),
    );
    await openAll(d, opens);
  },

  /** move node/app [target] to=node-k: the application opens the target on node-k with the same requestId. */
  async move(d, a) {
    const [node, app] = nodeApp(a);
    const to = a.kv.get('to');
    if (!to || !d.world.nodeNames.includes(to)) throw new Error('move needs to=node-k');
    const mine = [...d.handles.values()].filter(
      (t) => t.node === node && t.app === app && !t.crashed && (!a.pos[1] || t.target === a.pos[1]),
    );
    if (mine.length !== 1) throw new Error(`move: name one target of ${node}/${app}`);
    const t = mine[0]!;
    const options: OpenOptions = { requestId: t.handle.requestId, ...(t.options.mode ? { mode: t.options.mode } : {}) };
    await openAll(d, [d.open(d.application(to, app), t.target, options, `open ${to}/${app} ${t.target}`)]);
  },

  /** advance D: run the world for D of simulated time. */
  async advance(d, a) {
    await d.run(duration(a.need(0, 'duration')));
  },

  /** stabilize [limit=60s]: run until every handle is active, invalidated or closed and no operation is pending. */
  async stabilize(d, a) {
    const limit = a.ms('limit', STABILIZE_MS);
    if (!(await d.run(limit, () => d.settled())))
      d.print(`stabilize: not settled after ${limit / 1000}s: ${d.unsettled().join(', ')}`);
  },

  /** power-loss node: the node loses power (agent and applications die, unsynced disk writes are lost) and boots. */
  async 'power-loss'(d, a) {
    const node = nodeName(d, a);
    // The node vanishes without closing its connections: the replicas notice only the silence.
    const links = d.world.replicaNames.map((r) => d.world.link(node, r));
    const cut = links.map((l) => l.partitioned);
    for (const l of links) l.partitioned = true;
    crashAgent(d, node);
    links.forEach((l, i) => (l.partitioned = cut[i]!));
    d.world.disk(node).powerLoss();
    await startAgent(d, node);
  },

  /** clock-step host +D|-D: the wall clock of a replica's or node's host jumps (its timers do not). */
  async 'clock-step'(d, a) {
    const host = a.need(0, 'replica or node');
    if (!d.world.replicaNames.includes(host) && !d.world.nodeNames.includes(host)) throw new Error(`no host ${host}`);
    const step = a.need(1, '+D or -D');
    const sign = step.startsWith('-') ? -1 : 1;
    d.world.stepClock(host, sign * duration(step.replace(/^[+-]/, '')));
  },

  /** disk-error node CODE|ok: the node's disk fails writes and fsyncs with CODE (ENOSPC, EIO), or works again. */
  async 'disk-error'(d, a) {
    const code = a.need(1, 'error code or ok');
    d.world.disk(nodeName(d, a)).fail(code === 'ok' ? undefined : code);
  },

  /** handles: every handle of a live application, with its state and requestId. */
  async handles(d) {
    for (const t of d.handles.values()) {
      if (t.crashed) continue;
      const durable = (t.handle as unknown as { durable?: boolean }).durable;
      d.print(
        `${t.label}: ${t.handle.state} ${d.alias(t.handle.requestId)} ${t.handle.mode}${durable === false ? ' not-durable' : ''}`,
      );
    }
  },

  /** agents: each node agent's session state and replica. */
  async agents(d) {
    for (const node of d.world.nodeNames) {
      const ag = d.world.agents.get(node);
      d.print(`${node}: ${ag ? `${ag.state}${ag.replica ? ` ${ag.replica}` : ''}` : 'down'}`);
    }
  },

  /** data target: the target's bytes and version in the store, and which requestId holds its record. */
  async data(d, a) {
    const target = a.need(0, 'target');
    const cur = d.world.state.targets.get(target);
    const rec = d.world.state.records.get(target);
    const bytes = cur ? quoted(cur.buf.subarray(0, cur.size)) : '(none)';
    d.print(`${target}: ${bytes} version=${cur?.version ?? 0}${rec ? ` holder=${d.alias(rec.requestId)}` : ''}`);
  },
};
