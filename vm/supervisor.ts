/**
 * The VM supervisor's shell: it follows the handles a VM's disks are served through (the NBD export's
 * `onHandle` / `onInvalidated`, or any `Handle`), steps the pure decisions of vm/policy.ts with their
 * changes of state and the clock, and carries the intents out over QMP (vm/qmp.ts): `stop`, `cont`,
 * `quit`, and the timer that wakes it when a paused disk reaches `stopAfterMs`.
 *
 *   const vm = new VmSupervisor({ qmpPath, disks: [{ target: 'vm1.disk', policy: 'leave-paused' }] });
 *   const nbd = new NbdExport({ app, path, onHandle: vm.onHandle, onInvalidated: vm.onInvalidated });
 *   await vm.connect(); // once QEMU listens on qmpPath
 *
 * Commands are sent one at a time, in the order decided. QEMU's `stop` pauses the guest's vCPUs at once
 * (and sends STOP), then waits for the disks' requests in flight before it answers: while a disk is
 * paused under a guest's I/O, the answer (and every later command) waits for the resume's decision. QEMU's own STOP and RESUME events (a guest
 * stopped or continued through another monitor) are followed, so an operator's stop is never undone.
 */
import type { Handle, HandleState } from '../actors/application.js';
import { describeChanged, isErrorCode, SafeResumeError } from '../errors.js';
import { DEFAULT_QMP_TIMEOUT_MS, QmpClient, QmpError, type QmpEvent } from './qmp.js';
import {
  holding,
  initialVm,
  phaseOf,
  stepVm,
  type Denial,
  type DiskSpec,
  type DiskView,
  type VmInput,
  type VmPhase,
  type VmState,
} from './policy.js';

export interface VmSupervisorOptions {
  /** The VM's QMP Unix socket (`-qmp unix:<path>,server=on,wait=off`). */
  qmpPath: string;
  disks: DiskSpec[];
  /** How long a disk may stay paused before the VM is stopped (default DEFAULT_STOP_AFTER_MS; 0: at once). */
  stopAfterMs?: number;
  name?: string;
  /** The clock (ms since the epoch); default Date.now. */
  now?: () => number;
}

/** One thing the supervisor saw or did, for status, explain and the timeline. */
export interface VmEntry {
  at: number;
  what: string;
}

/** What status and explain show of a VM. */
export interface VmView {
  name: string;
  phase: VmPhase;
  why: string | undefined;
  stopAfterMs: number;
  disks: DiskView[];
  /** The denials keeping it stopped (leave-paused), with their details. */
  held: Denial[];
  history: VmEntry[];
}

/** How many entries of history a VM keeps. */
const MAX_HISTORY = 200;

export class VmSupervisor {
  readonly name: string;
  private readonly state: VmState;
  private readonly now: () => number;
  private qmp: QmpClient | undefined;
  /** The handle each disk is served through now (a read handle, then the write handle). */
  private readonly current = new Map<string, Handle>();
  private readonly history: VmEntry[] = [];
  /** Commands decided, sent one after another. */
  private queue: Promise<void> = Promise.resolve();
  /** Our stop/cont commands not yet answered: QEMU's STOP/RESUME events meanwhile are their own echo. */
  private ours = 0;
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;
  private readonly listeners = new Set<(view: VmView) => void>();
  private connected: (() => void) | undefined;
  private readonly ready: Promise<void>;

  constructor(private readonly opts: VmSupervisorOptions) {
    this.name = opts.name ?? opts.qmpPath;
    this.now = opts.now ?? Date.now;
    this.state = initialVm(opts.disks, opts.stopAfterMs);
    this.ready = new Promise<void>((resolve) => (this.connected = resolve));
  }

  /**
   * Connect to QEMU's QMP socket (waiting up to `timeoutMs`, default 10 s, for QEMU to listen there);
   * commands decided before then are sent once connected.
   */
  async connect(timeoutMs = DEFAULT_QMP_TIMEOUT_MS): Promise<void> {
    const qmp = await QmpClient.connect(this.opts.qmpPath, { timeoutMs, retryMs: timeoutMs });
    this.qmp = qmp;
    qmp.onEvent((ev) => this.event(ev));
    qmp.onClose((err) => {
      this.note(`QMP closed: ${err.message}`);
      this.step({ type: 'exited', at: this.now() });
    });
    this.note('QMP connected');
    this.connected?.();
  }

  /** For NbdExportOptions.onHandle: follow the handle `target` is served through from now on. */
  readonly onHandle = (handle: Handle, target: string = handle.target): void => {
    if (!this.state.disks.has(target)) return;
    this.current.set(target, handle);
    this.note(`${target}: following its ${handle.mode} handle (${handle.state})`);
    handle.on('state', (s) => {
      if (this.current.get(target) === handle) this.disk(target, s, handle);
    });
    this.disk(target, handle.state, handle);
  };

  /** For NbdExportOptions.onInvalidated: the export's requests to `target` now fail with EIO. */
  readonly onInvalidated = (target: string, reason: string): void => {
    const d = this.state.disks.get(target);
    if (!d || (d.state === 'invalidated' && d.denial)) return;
    this.note(`${target}: invalidated (${reason})`);
    const h = this.current.get(target);
    this.step({ type: 'disk', target, state: 'invalidated', at: this.now(), reason, details: h ? details(h) : {} });
  };

  /**
   * A disk's handle state told from elsewhere (a running cluster's timeline: `safe-resume vm run`), for
   * a supervisor that holds no Handle of its own.
   */
  diskState(target: string, state: HandleState, reason?: string, details: Record<string, unknown> = {}): void {
    const d = this.state.disks.get(target);
    if (!d || d.state === state) return;
    this.note(`${target}: ${state}${reason ? ` (${reason})` : ''}`);
    const input: VmInput = { type: 'disk', target, state, at: this.now() };
    if (state === 'invalidated') {
      input.reason = reason ?? 'MODIFIED';
      input.details = details;
    }
    this.step(input);
  }

  /** Follow any handle of a disk (an application's own, not the export's). */
  watch(handle: Handle): void {
    this.onHandle(handle, handle.target);
  }

  /** An operator's stop: the VM stays stopped until `resume`. */
  stop(): Promise<void> {
    return this.operator({ type: 'operator-stop', at: this.now() });
  }

  /**
   * An operator's resume: continues the VM. Refused while a denial holds it (leave-paused), unless
   * `acceptModified`: then it continues and the guest's I/O to that disk fails with EIO.
   */
  resume(opts: { acceptModified?: boolean } = {}): Promise<void> {
    return this.operator({ type: 'operator-resume', at: this.now(), acceptModified: opts.acceptModified === true });
  }

  view(): VmView {
    return {
      name: this.name,
      phase: phaseOf(this.state),
      why: this.state.why,
      stopAfterMs: this.state.stopAfterMs,
      disks: [...this.state.disks.values()].map((d) => ({ ...d })),
      held: holding(this.state),
      history: [...this.history],
    };
  }

  /** Told after every change the supervisor decides or sees. */
  onChange(fn: (view: VmView) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Wait until every command decided so far was sent and answered. */
  settled(): Promise<void> {
    return this.queue;
  }

  /** Stop following: the timer goes, the QMP connection closes (QEMU keeps running as it is). */
  close(): void {
    clearTimeout(this.timer);
    this.timerAt = Infinity;
    this.state.ended ??= 'exited';
    this.qmp?.close();
  }

  private disk(target: string, state: HandleState, h: Handle): void {
    const input: VmInput = { type: 'disk', target, state, at: this.now() };
    if (state === 'invalidated') {
      input.reason = h.reason ?? 'MODIFIED';
      input.details = details(h);
    }
    this.note(`${target}: ${state}${state === 'invalidated' ? ` (${input.reason})` : ''}`);
    this.step(input);
  }

  private event(ev: QmpEvent): void {
    if (ev.event === 'BLOCK_IO_ERROR') this.note(`guest I/O error: ${JSON.stringify(ev.data)}`);
    if ((ev.event === 'STOP' || ev.event === 'RESUME') && this.ours === 0) {
      this.note(`QEMU ${ev.event === 'STOP' ? 'stopped' : 'continued'} the guest (not this supervisor)`);
      this.step({ type: 'qemu', running: ev.event === 'RESUME', at: this.now() });
    }
  }

  private async operator(input: VmInput): Promise<void> {
    const refused = this.step(input);
    if (refused) throw new SafeResumeError(isErrorCode(refused.code) ? refused.code : 'INTERNAL', refused.why);
    await this.settled();
  }

  /** Step the decisions; carry out what they say. Returns the refusal, if the input was refused. */
  private step(input: VmInput): { code: string; why: string } | undefined {
    let refused: { code: string; why: string } | undefined;
    for (const intent of stepVm(this.state, input)) {
      switch (intent.type) {
        case 'wake':
          this.wake(intent.at);
          break;
        case 'refuse':
          refused = intent;
          break;
        default:
          this.send(intent.type, intent.why);
      }
    }
    for (const fn of [...this.listeners]) fn(this.view());
    return refused;
  }

  private send(command: 'stop' | 'cont' | 'quit', why: string): void {
    this.note(`${command}: ${why}`);
    if (command !== 'quit') this.ours++;
    this.queue = this.queue.then(async () => {
      await this.ready;
      try {
        // No timeout: QEMU answers `stop` only once the requests in flight to the disks are done
        // (it pauses the vCPUs and sends STOP at once, then drains), i.e. once the resume is decided.
        await this.qmp!.execute(command, undefined, 0);
      } catch (err) {
        // `quit` may find the socket closing under it: QEMU is going, as asked.
        if (!(command === 'quit' && err instanceof QmpError && err.kind === 'closed'))
          this.note(`${command} failed: ${(err as Error).message}`);
      } finally {
        if (command !== 'quit') this.ours--;
      }
    });
  }

  private wake(at: number): void {
    if (at >= this.timerAt) return;
    clearTimeout(this.timer);
    this.timerAt = at;
    this.timer = setTimeout(
      () => {
        this.timerAt = Infinity;
        this.step({ type: 'tick', at: this.now() });
      },
      Math.max(0, at - this.now()),
    );
  }

  private note(what: string): void {
    this.history.push({ at: this.now(), what });
    if (this.history.length > MAX_HISTORY) this.history.splice(0, this.history.length - MAX_HISTORY);
  }
}

/** What a denied handle tells beside its reason: what another writer changed, when the denial says. */
function details(h: Handle): Record<string, unknown> {
  const c = h.changes;
  return { mode: h.mode, version: h.version, requestId: h.requestId, ...(c ? { changed: describeChanged(c) } : {}) };
}
