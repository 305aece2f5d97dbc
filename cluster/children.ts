/**
 * The launcher's processes: each replica and node agent forked from child.js with its configuration
 * over IPC, what each reports, its counters carried through restarts, and stopping them.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { SafeResumeError } from '../errors.js';
import { inHost, type Host } from '../runtime/hosts.js';
import { ChildReport, type ChildCommand, ChildConfig, type HandleStatus } from '../runtime/ipc.js';
import { EXIT, OperatorError } from '../runtime/operator-error.js';
import type { Timeline, TimelineEvent } from './timeline.js';

export interface Child {
  id: string;
  role: 'replica' | 'node';
  config: Record<string, unknown>;
  proc: ChildProcess | undefined;
  status: Extract<ChildReport, { type: 'status' }> | undefined;
  ready: Promise<void>;
  /** When this process was started and when it exited (ms since the epoch): the inspector tells its actors from those of the process before. */
  startedAt: number;
  exitedAt: number | undefined;
  /** Its counters went into the carried totals when it exited: its last status counts no more. */
  folded: boolean;
  /** Why its last incarnation could not start, as it said before it exited. */
  failure?: string | undefined;
  /** Its failure was that it could not connect to any replica in time. */
  unreachable?: boolean;
}

type StatusReport = Extract<ChildReport, { type: 'status' }>;

/** A process's counters in its last status: a replica's stats, or the sums of a node's applications. */
export function countersOf(status: StatusReport | undefined): Record<string, number> {
  if (!status) return {};
  if (status.role === 'replica') return status.stats;
  return sumInto({}, ...status.handles.map((h) => ({ acked: h.acked, verified: h.verified, failed: h.failed })));
}

export function sumInto(
  into: Record<string, number>,
  ...counts: Array<Record<string, number> | undefined>
): Record<string, number> {
  for (const c of counts) for (const [k, v] of Object.entries(c ?? {})) into[k] = (into[k] ?? 0) + v;
  return into;
}

/** Store errors that do not pass by themselves: the replica's state is 'failed' until an operator acts. */
export const FATAL_STORE = /SQLITE_(READONLY|CORRUPT|NOTADB|FULL|CANTOPEN)|readonly database|database space exceeded/i;

const CHILD = join(fileURLToPath(new URL('.', import.meta.url)), 'child.js');

/** What the processes need of the launcher. */
export interface ChildrenContext {
  log: Logger;
  timeline: Timeline;
  /** The chaos history the processes' reports go into, and whether one is recorded. */
  history: unknown[];
  recording: boolean;
  host(id: string): Host | undefined;
  /** Whether a process that is ready sends its inspection events from the start. */
  watching(): boolean;
  /** Handle events just put on the timeline. */
  onTimeline(events: Array<TimelineEvent & { kind: 'handle' }>): void;
}

export class Children {
  /** An application asked to leave its node (move): the answer it waits for, with its requestId. */
  readonly released = new Map<string, (r: Extract<ChildReport, { type: 'released' }>) => void>();
  /** The cluster is coming down: nothing starts again. */
  stopping = false;
  /**
   * Per child id, the counters of its processes that have exited (and of the applications that left a
   * node): status adds the running process's, so a restart does not take back what was counted.
   */
  private readonly carried = new Map<string, Record<string, number>>();

  constructor(
    readonly map: Map<string, Child>,
    private readonly c: ChildrenContext,
  ) {}

  spawn(id: string, role: 'replica' | 'node', config: Record<string, unknown>): Child {
    // Once the cluster is coming down nothing starts again (a process started now would outlive it).
    if (this.stopping) throw new SafeResumeError('UNAVAILABLE', `the cluster is stopping: ${id} is not started`);
    // The configuration (keys with it) goes over the IPC channel, never in argv.
    const host = this.c.host(id);
    const at = host ? inHost(host, process.execPath) : undefined;
    const proc = fork(CHILD, [role], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      ...(at ? { execPath: at.command, execArgv: [...at.args, ...process.execArgv] } : {}),
    });
    proc.send({ type: 'config', config } satisfies ChildConfig);
    let ready!: () => void;
    let failed!: (e: Error) => void;
    const child: Child = {
      id,
      role,
      config,
      proc,
      status: undefined,
      ready: new Promise<void>((r, j) => ((ready = r), (failed = j))),
      startedAt: Date.now(),
      exitedAt: undefined,
      folded: false,
    };
    this.map.set(id, child);
    proc.on('message', (m) => {
      const msg = ChildReport.safeParse(m);
      if (!msg.success) return this.c.log.warn({ child: id }, 'bad report from child');
      const r = msg.data;
      if (r.type === 'failed') {
        child.failure = r.error;
        child.unreachable = r.connect === true;
      } else if (r.type === 'ready') {
        child.failure = undefined;
        if (this.c.watching()) proc.send({ type: 'watch', on: true } satisfies ChildCommand);
        ready();
      } else if (r.type === 'status') {
        if (child.folded) return;
        this.observe(id, child.status, r);
        // An application gone from a node that runs on (moved away): what it counted stays counted.
        if (r.role === 'node' && child.status?.role === 'node') {
          const still = new Set(r.handles.map((h) => h.app));
          for (const h of child.status.handles)
            if (!still.has(h.app)) this.carry(id, { acked: h.acked, verified: h.verified, failed: h.failed });
        }
        child.status = r;
      } else if (r.type === 'transitions') {
        if (!child.folded) this.c.onTimeline(this.c.timeline.handles(id, r.events));
      } else if (r.type === 'history') this.c.history.push(...r.events);
      else if (r.type === 'released') this.released.get(r.app)?.(r);
    });
    // A message sent to a child that is dying fails (EPIPE) on this event; its exit is handled below.
    proc.on('error', (err) => this.c.log.warn({ child: id, err: err.message }, 'child channel error'));
    if (!this.stopping) this.c.timeline.add({ kind: 'process', id, what: 'started', detail: `pid ${proc.pid}` });
    proc.on('exit', (code, signal) => {
      if (!this.stopping)
        this.c.timeline.add({
          kind: 'process',
          id,
          what: 'exited',
          detail: child.failure ? `could not start: ${child.failure}` : (signal ?? `code ${code}`),
        });
      if (child.proc === proc) child.proc = undefined;
      child.exitedAt = Date.now();
      if (!child.folded) {
        child.folded = true;
        this.carry(id, countersOf(child.status));
      }
      // A node that no replica welcomed in time: its own words name each replica's cause.
      failed(
        child.failure && child.unreachable
          ? new OperatorError(child.failure, EXIT.timeout)
          : new Error(
              child.failure
                ? `${id} could not start: ${child.failure}`
                : `${id} exited (${signal ?? code}) before it was ready`,
            ),
      );
      if (!this.stopping) this.c.log.warn({ child: id, code, signal }, 'child exited');
    });
    return child;
  }

  /** A child's report, against its previous one: handle transitions and replica mounts go on the timeline. */
  private observe(id: string, before: Child['status'], now: NonNullable<Child['status']>): void {
    if (now.role === 'node') {
      this.c.onTimeline(this.c.timeline.handles(id, now.handles));
    } else if (now.role === 'replica' && before?.role === 'replica' && before.dismounted !== now.dismounted) {
      this.c.timeline.add({ kind: 'process', id, what: now.dismounted ? 'dismounted' : 'mounted' });
    }
  }

  /** Every session a running replica has, with the replica. */
  liveSessions(): Array<{ id: string; node: string; silentMs: number; replica: string }> {
    return [...this.map.values()].flatMap((c) =>
      c.proc && c.status?.role === 'replica' ? (c.status.sessionList ?? []).map((s) => ({ ...s, replica: c.id })) : [],
    );
  }

  child(id: string, role?: 'replica' | 'node'): Child {
    const c = this.map.get(id);
    if (!c || (role && c.role !== role)) {
      const ids = [...this.map.values()].filter((x) => !role || x.role === role).map((x) => x.id);
      throw new SafeResumeError(
        'INVALID_ARGUMENT',
        `no ${role ?? 'replica or node'} called ${JSON.stringify(id)}; the ids are ${ids.join(', ') || 'none yet'}`,
      );
    }
    return c;
  }

  tell(c: Child, cmd: ChildCommand): void {
    if (!c.proc?.connected) throw new SafeResumeError('UNAVAILABLE', `${c.id} is not running`);
    c.proc.send(cmd);
  }

  /** Add to what child `id` has counted in processes and applications gone. */
  private carry(id: string, counts: Record<string, number>): void {
    this.carried.set(id, sumInto(this.carried.get(id) ?? {}, counts));
  }

  /** What child `id` has counted since the cluster started: its processes gone, and the running one. */
  counted(c: Child): Record<string, number> {
    return sumInto({}, this.carried.get(c.id), c.folded ? undefined : countersOf(c.status));
  }

  /** Chaos history: the applications of a killed or moved process stop without a word. */
  noteCrash(c: Child, app?: string): void {
    if (!this.c.recording || c.role !== 'node' || !c.proc) return;
    for (const h of c.status?.role === 'node' ? c.status.handles : []) {
      if (!app || h.app === app)
        this.c.history.push({ t: Date.now(), kind: 'crash', proc: `${c.id}/${h.app}#${c.proc.pid}` });
    }
  }

  /** Stop every workload (chaos mode) and wait until each node has flushed its history. */
  async stopWorkloads(): Promise<void> {
    const nodes = [...this.map.values()].filter((c) => c.role === 'node' && c.proc?.connected);
    await Promise.all(
      nodes.map(
        (c) =>
          new Promise<void>((resolve) => {
            const onMsg = (m: unknown) => {
              if ((m as { type?: string }).type === 'workload-stopped') {
                c.proc?.off('message', onMsg);
                clearTimeout(deadline); // a pending deadline would keep this process up 10 s longer
                setTimeout(resolve, 400); // one more status report carries the last history
              }
            };
            c.proc!.on('message', onMsg);
            c.proc!.send({ type: 'stop-workload' } satisfies ChildCommand);
            const deadline = setTimeout(resolve, 10_000);
          }),
      ),
    );
  }

  /**
   * Each replica and node as status shows it (with when its process started, and exited if it is
   * down), the handles of the running nodes, and what each process has counted since the cluster
   * started (`partitioned`: whether a node is cut off now).
   */
  rows(partitioned: (id: string) => boolean) {
    const children = [...this.map.values()];
    const replicas = children
      .filter((c) => c.role === 'replica')
      .map((c) => ({
        id: c.id,
        // A store that cannot be written or read as a database needs an operator: 'failed', with the error.
        state: !c.proc
          ? c.failure
            ? 'failed'
            : 'down'
          : c.status?.role === 'replica' && c.status.dismounted
            ? FATAL_STORE.test(c.status.storeError ?? '')
              ? 'failed'
              : 'dismounted'
            : 'serving',
        storeError: c.proc && c.status?.role === 'replica' ? (c.status.storeError ?? null) : (c.failure ?? null),
        pid: c.proc?.pid ?? null,
        sessions: c.proc && c.status?.role === 'replica' ? c.status.sessions : 0,
        stats: this.counted(c),
        metrics: c.proc ? (c.status?.metrics ?? null) : null,
        startedAt: c.startedAt,
        exitedAt: c.proc ? null : (c.exitedAt ?? null),
      }));
    const nodes = children
      .filter((c) => c.role === 'node')
      .map((c) => ({
        id: c.id,
        state: !c.proc ? 'down' : c.status?.role === 'node' ? c.status.state : 'starting',
        pid: c.proc?.pid ?? null,
        replica: c.status?.role === 'node' ? c.status.replica : null,
        /** While it is not connected: its last failed attempt and why. */
        cause: c.proc && c.status?.role === 'node' ? (c.status.cause ?? null) : null,
        metrics: c.proc ? (c.status?.metrics ?? null) : null,
        nbd: c.proc && c.status?.role === 'node' ? (c.status.nbd ?? null) : null,
        partitioned: partitioned(c.id),
        startedAt: c.startedAt,
        exitedAt: c.proc ? null : (c.exitedAt ?? null),
      }));
    const handles: Array<HandleStatus & { node: string }> = [];
    for (const c of children)
      if (c.proc && c.status?.role === 'node') for (const h of c.status.handles) handles.push({ node: c.id, ...h });
    return { replicas, nodes, handles, counted: children.map((c) => this.counted(c)) };
  }

  /** Start process `id` again, SIGKILLed first if it runs; a node with its applications `apps`. */
  async restart(id: string, apps: Array<{ name: string; target: string }>): Promise<void> {
    const c = this.child(id);
    if (c.proc) {
      this.noteCrash(c);
      const proc = c.proc;
      const gone = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGKILL');
      await gone;
    }
    const config = { ...c.config };
    // A node restarted later is ready at once and keeps trying (the storage may be away on purpose).
    delete config.startTimeoutMs;
    if (c.role === 'node') config.apps = apps;
    await this.spawn(id, c.role, config).ready.catch((err: Error) => {
      throw new SafeResumeError('UNAVAILABLE', err.message);
    });
  }

  /** Ask `app` to leave node `from` (its handle released, not closed): the requestId to resume it with elsewhere, if it answers within 5 s. */
  async release(from: Child, app: string): Promise<string | undefined> {
    const answer = new Promise<Extract<ChildReport, { type: 'released' }>>((r) => this.released.set(app, r));
    this.noteCrash(from, app);
    this.tell(from, { type: 'release', app });
    const r = await Promise.race([answer, new Promise<undefined>((r) => setTimeout(() => r(undefined), 5000))]);
    this.released.delete(app);
    return r?.requestId;
  }

  /** Stop every process: a shutdown over IPC, SIGKILL 5 s later (or at once if its channel is gone). */
  async stopAll(): Promise<void> {
    const exits = [...this.map.values()]
      .filter((c) => c.proc)
      .map((c) => {
        const proc = c.proc!;
        return new Promise<void>((resolve) => {
          if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
          const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
          proc.once('exit', () => {
            clearTimeout(timer);
            resolve();
          });
          if (proc.connected) proc.send({ type: 'shutdown' } satisfies ChildCommand);
          else proc.kill('SIGKILL');
        });
      });
    await Promise.all(exits);
  }

  /** SIGKILL every process. */
  killAll(): void {
    for (const c of this.map.values()) c.proc?.kill('SIGKILL');
  }
}
