/**
 * What the scenario commands share: the simulated world, the applications and handles a scenario
 * opened, the operations still pending, requestId aliases, and the output of the command being run.
 *
 * Output has one fixed format, so a changed behaviour reads as a diff of the story:
 *   node-1/app-1 vm1.disk: active -> paused -> resuming -> invalidated (MODIFIED)   (state changes, one line per handle per command)
 *   write node-1/app-1 vm1.disk @0 "abc": ok                                        (an operation, when it settles)
 * A requestId is printed as an alias (r1, r2, ...) given in the order they are first seen.
 */
import type { EventEmitter } from 'node:events';
import { Application, type Handle, type OpenOptions } from '../actors/application.js';
import type { NodeAgent } from '../actors/node-agent.js';
import { SafeResumeError } from '../errors.js';
import { quiesce } from './clock.js';
import { World, type WorldOptions } from './world.js';

/** A handle the scenario opened, under its label `node/app target`. */
export interface Tracked {
  label: string;
  node: string;
  app: string;
  target: string;
  options: OpenOptions;
  handle: Handle;
  /** The application process died: the handle's events and operations are no longer reported. */
  crashed: boolean;
  last: string;
  durable: boolean;
}

export interface AppEntry {
  node: string;
  name: string;
  app: Application;
  crashed: boolean;
  /** Targets it opened, in order, with their options (what a restarted process opens again). */
  opened: Map<string, OpenOptions>;
}

interface PendingOp {
  label: string;
  /** The handle it runs on (none for an open). */
  owner: Tracked | undefined;
  /** Whether the process that issued it died (its result is then never reported). */
  gone: () => boolean;
  settled: boolean;
}

/** A line of output; `key` is the label of the handle it is about, if any. */
type Entry =
  | { kind: 'line'; key: string | undefined; text: string }
  | { kind: 'states'; key: string; t: Tracked; states: string[]; reason?: string | undefined };

/** Words of a command after its name: positionals, `key=value`, a quoted text and an `@offset`. */
export class Args {
  readonly pos: string[] = [];
  readonly kv = new Map<string, string>();
  text: string | undefined;
  at: string | undefined;
  constructor(words: string[]) {
    for (const w of words) {
      if (w.startsWith('"')) this.text = JSON.parse(w) as string;
      else if (w.startsWith('@')) this.at = w.slice(1);
      else if (/^[a-zA-Z-]+=/.test(w)) this.kv.set(w.slice(0, w.indexOf('=')), w.slice(w.indexOf('=') + 1));
      else this.pos.push(w);
    }
  }
  need(i: number, what: string): string {
    const v = this.pos[i];
    if (v === undefined) throw new Error(`missing ${what}`);
    return v;
  }
  has(flag: string): boolean {
    return this.pos.includes(flag);
  }
  ms(key: string, dflt: number): number {
    const v = this.kv.get(key);
    return v === undefined ? dflt : duration(v);
  }
  int(key: string, dflt: number): number {
    const v = this.kv.get(key);
    return v === undefined ? dflt : size(v);
  }
}

export function duration(s: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(s);
  if (!m) throw new Error(`not a duration: ${s}`);
  return Math.round(Number(m[1]) * (m[2] === 's' ? 1000 : m[2] === 'm' ? 60_000 : 1));
}

export function size(s: string): number {
  const m = /^(\d+)(KiB|MiB|GiB)?$/.exec(s);
  if (!m) throw new Error(`not a size: ${s}`);
  return Number(m[1]) * (m[2] === 'KiB' ? 1024 : m[2] === 'MiB' ? 1024 ** 2 : m[2] === 'GiB' ? 1024 ** 3 : 1);
}

/** Bytes as a quoted string (latin1, JSON escapes); long data shows its start and its size. */
export function quoted(b: Uint8Array): string {
  const head = Buffer.from(b.buffer, b.byteOffset, Math.min(b.byteLength, 48)).toString('latin1');
  return b.byteLength > 48 ? `${JSON.stringify(head)}... (${b.byteLength} bytes)` : JSON.stringify(head);
}

/**
 * A handle's states in one command, with runs of a repeated cycle folded:
 * active -> paused -> resuming -> paused -> resuming -> paused  becomes  active -> (paused -> resuming) x2 -> paused.
 */
export function fold(states: string[]): string {
  const out: string[] = [];
  let i = 0;
  while (i < states.length) {
    let best = { len: 0, reps: 0 };
    for (let len = 1; len <= 4; len++) {
      let reps = 1;
      while (
        i + (reps + 1) * len <= states.length &&
        states.slice(i + reps * len, i + (reps + 1) * len).every((s, k) => s === states[i + k])
      )
        reps++;
      if (reps >= 3 && reps * len > best.reps * best.len) best = { len, reps };
    }
    if (best.reps === 0) {
      out.push(states[i++]!);
      continue;
    }
    out.push(`(${states.slice(i, i + best.len).join(' -> ')}) x${best.reps}`);
    i += best.reps * best.len;
  }
  return out.join(' -> ');
}

export const OP_LIMIT_MS = 10_000;

export class Driver {
  private worldOrNone: World | undefined;
  readonly apps = new Map<string, AppEntry>();
  readonly handles = new Map<string, Tracked>();
  private ops: PendingOp[] = [];
  private readonly aliases = new Map<string, string>();
  private entries: Entry[] = [];
  private output: string[] = [];

  get world(): World {
    if (!this.worldOrNone) throw new Error('no cluster yet (start with `cluster`)');
    return this.worldOrNone;
  }

  async newWorld(opts: WorldOptions): Promise<World> {
    if (this.worldOrNone) throw new Error('a scenario has one cluster');
    const w = new World(opts);
    this.worldOrNone = w;
    for (let i = 0; i < opts.replicas; i++) await w.startReplica(i);
    for (const node of w.nodeNames) w.startAgent(node);
    await this.run(5000, () => w.nodeNames.every((n) => w.agents.get(n)?.state === 'connected'));
    return w;
  }

  agent(node: string): NodeAgent {
    if (!this.world.nodeNames.includes(node)) throw new Error(`no such node: ${node}`);
    const a = this.world.agents.get(node);
    if (!a) throw new Error(`${node} has no agent running`);
    return a;
  }

  replicaIndex(name: string): number {
    const i = this.world.replicaNames.indexOf(name);
    if (i < 0) throw new Error(`no such replica: ${name}`);
    return i;
  }

  alias(requestId: string): string {
    let a = this.aliases.get(requestId);
    if (!a) this.aliases.set(requestId, (a = `r${this.aliases.size + 1}`));
    return a;
  }

  requestIdOf(alias: string): string {
    for (const [id, a] of this.aliases) if (a === alias) return id;
    throw new Error(`no requestId has the alias ${alias}`);
  }

  // ---- Output ----

  /** Print a line, about the handle labelled `key` if given. */
  print(text: string, key?: string): void {
    this.entries.push({ kind: 'line', key, text });
  }

  private stateChange(t: Tracked, to: string): void {
    if (t.crashed || to === t.last) return;
    let e = this.entries.find((x): x is Extract<Entry, { kind: 'states' }> => x.kind === 'states' && x.t === t);
    if (!e) this.entries.push((e = { kind: 'states', key: t.label, t, states: [t.last] }));
    e.states.push(to);
    e.reason = to === 'invalidated' ? t.handle.reason : undefined;
    t.last = to;
  }

  /** Whether the node could keep the handle's requestId on its disk (printed on change). */
  private durability(t: Tracked, durable: boolean): void {
    if (t.crashed || durable === t.durable) return;
    t.durable = durable;
    this.print(`${t.label}: ${durable ? 'durable again' : 'not durable'}`, t.label);
  }

  /**
   * Flush the command's output: what is about each handle, handle by handle in label order (so the
   * order of events on different handles, a matter of network timing, does not make a diff), each
   * in the order it happened; then the other lines.
   */
  endCommand(): void {
    const about = this.entries
      .filter((e) => e.key !== undefined)
      .sort((a, b) => (a.key! < b.key! ? -1 : a.key! > b.key! ? 1 : 0));
    for (const e of [...about, ...this.entries.filter((x) => x.key === undefined)]) {
      if (e.kind === 'line') this.output.push(e.text);
      else this.output.push(`${e.t.label}: ${fold(e.states)}${e.reason ? ` (${e.reason})` : ''}`);
    }
    this.entries = [];
  }

  takeOutput(): string[] {
    const o = this.output;
    this.output = [];
    return o;
  }

  // ---- Time ----

  /** Let promise jobs run (no simulated time passes). */
  settleMicrotasks(): Promise<void> {
    return quiesce();
  }

  /**
   * Run the world, timer by timer, for at most `limitMs` of simulated time, stopping as soon as
   * `done` holds; without `done`, run the whole `limitMs`. Returns whether `done` held. An exception
   * thrown by a timer (an actor crashing the process it runs in) is printed, and the world goes on.
   */
  async run(limitMs: number, done?: () => boolean): Promise<boolean> {
    const clock = this.world.clock;
    const until = clock.now() + limitMs;
    await quiesce();
    if (done?.()) return true;
    for (;;) {
      const due = clock.nextDue();
      if (due === undefined || due > until) break;
      this.step(due);
      await quiesce();
      if (done?.()) return true;
    }
    this.step(until);
    await quiesce();
    return done ? done() : true;
  }

  private step(to: number): void {
    try {
      this.world.clock.advanceTo(to);
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      this.print(
        `uncaught exception: ${typeof code === 'string' ? code : err instanceof Error ? err.message : String(err)}`,
      );
    }
  }

  /** Every live handle is active, invalidated or closed, and every operation has settled. */
  settled(): boolean {
    for (const t of this.handles.values())
      if (!t.crashed && !['active', 'invalidated', 'closed'].includes(t.handle.state)) return false;
    return this.ops.every((o) => o.settled || o.gone());
  }

  unsettled(): string[] {
    const out: string[] = [];
    for (const t of this.handles.values())
      if (!t.crashed && !['active', 'invalidated', 'closed'].includes(t.handle.state))
        out.push(`${t.label} ${t.handle.state}`);
    for (const o of this.ops) if (!o.settled && !o.gone()) out.push(`${o.label} pending`);
    return out;
  }

  // ---- Applications, handles, operations ----

  /** The live application `name` on `node`, started on the node's current agent if there is none. */
  application(node: string, name: string): AppEntry {
    const key = `${node}/${name}`;
    const cur = this.apps.get(key);
    if (cur && !cur.crashed) return cur;
    const app = new Application(this.agent(node), {
      name,
      pauseTimeoutMs: this.world.opts.pauseTimeoutMs,
      env: this.world.env,
    });
    const e: AppEntry = { node, name, app, crashed: false, opened: new Map() };
    this.apps.set(key, e);
    return e;
  }

  /** The application process dies: its handles and pending operations stop being reported. */
  crashApp(e: AppEntry): void {
    if (e.crashed) return;
    e.crashed = true;
    for (const t of this.handles.values()) if (t.node === e.node && t.app === e.name) t.crashed = true;
    e.app.crash();
  }

  tracked(label: string): Tracked {
    const t = this.handles.get(label);
    if (!t) throw new Error(`no handle ${label} (open it first)`);
    if (t.crashed) throw new Error(`${label}: its application crashed`);
    return t;
  }

  /** Open `target`; the result is printed when it settles, and the handle tracked under its label. */
  open(e: AppEntry, target: string, options: OpenOptions, label: string): PendingOp {
    e.opened.set(target, options);
    const hLabel = `${e.node}/${e.name} ${target}`;
    const opening = e.app.open(target, options);
    // A refused open leaves no handle: forget the one a crashed process had under this label.
    opening.catch(() => this.handles.get(hLabel)?.crashed && this.handles.delete(hLabel));
    return this.track(
      label,
      hLabel,
      undefined,
      () => e.crashed,
      opening,
      (h) => {
        const t: Tracked = {
          label: hLabel,
          node: e.node,
          app: e.name,
          target,
          options,
          handle: h,
          crashed: e.crashed,
          last: 'opening',
          durable: true,
        };
        this.handles.set(hLabel, t);
        h.on('state', (s) => this.stateChange(t, s));
        (h as unknown as EventEmitter).on('durability', (durable: boolean) => this.durability(t, durable));
        this.stateChange(t, h.state);
        // The node may have failed to keep the requestId before the open settled here.
        if ((h as unknown as { durable?: boolean }).durable === false) this.durability(t, false);
        return `ok ${this.alias(h.requestId)}`;
      },
    );
  }

  /** Follow an operation; its result is printed in whichever command it settles. */
  track<T>(
    label: string,
    key: string | undefined,
    owner: Tracked | undefined,
    gone: () => boolean,
    p: Promise<T>,
    ok: (v: T) => string,
  ): PendingOp {
    const op: PendingOp = { label, owner, gone, settled: false };
    this.ops = this.ops.filter((o) => !o.settled);
    this.ops.push(op);
    p.then(
      (v) => {
        op.settled = true;
        if (!gone()) this.print(`${label}: ${ok(v)}`, key);
      },
      (err: unknown) => {
        op.settled = true;
        if (gone()) return;
        this.print(
          `${label}: ${err instanceof SafeResumeError ? err.code : `error ${err instanceof Error ? err.message : String(err)}`}`,
          key,
        );
      },
    );
    return op;
  }

  /**
   * Run until the operation settles, or (for an operation on a handle) until its handle is not
   * active: a paused handle's operation waits for a later command (pipelining, pauses).
   */
  async waitFor(op: PendingOp, evenIfAway = false): Promise<void> {
    const away = () => !evenIfAway && op.owner !== undefined && op.owner.handle.state !== 'active';
    await this.run(OP_LIMIT_MS, () => op.settled || away());
  }

  async shutdown(): Promise<void> {
    if (!this.worldOrNone) return;
    await this.worldOrNone.shutdown();
  }
}
