/**
 * The simulated applications: each opens its target and writes self-identifying records (every
 * write's bytes are unique, so the checker can tell which write a byte came from), or, as a reader,
 * opens it for reading and reads. Writes are mostly one slot, sometimes across a 4 KiB page boundary,
 * sometimes large, sometimes invalid (past the target size limit, or too large to send); reads are
 * slots or ranges across page boundaries. Every call and its outcome goes into the history.
 */
import type { Handle } from '../actors/application.js';
import { SafeResumeError } from '../errors.js';
import { MAX_TARGET_BYTES } from '../store/types.js';
import { MAX_IO_BYTES } from '../transport/messages.js';
import { hex } from './history.js';
import { SLOT_BYTES, SLOTS, type Proc, type SpawnOptions, type WorkloadWorld } from './procs.js';

export { SLOT_BYTES, SLOTS, type Proc, type SpawnOptions } from './procs.js';
const PAGE = 4096;

/** The mix of operations: fractions of writes that cross a page, are large, or are invalid. */
export const MIX = { crossPage: 0.1, large: 0.02, invalid: 0.02, crossPageRead: 0.2 };

const TOO_LARGE = new Uint8Array(MAX_IO_BYTES + 1);
/** How much longer applications think between operations once every fault has healed. */
const CALM_FACTOR = 5;

type Outcome<T> = { ok: true; value: T } | { ok: false; code: string };

export class Workload {
  private opId = 0;
  private incarnation = 0;
  readonly procs: Proc[] = [];

  constructor(private readonly world: WorkloadWorld) {}

  spawn(app: string, node: string, target: string, opts: SpawnOptions = {}): Proc {
    const w = this.world;
    const agent = w.agents.get(node);
    if (!agent) throw new Error(`${node} has no agent`);
    const application = w.newApplication(agent, app, node);
    const proc: Proc = {
      id: `${node}/${app}#${++this.incarnation}`,
      app,
      node,
      target,
      application,
      handle: undefined,
      crashed: false,
      stopped: false,
      k: 0,
      mode: opts.mode ?? 'write',
    };
    this.procs.push(proc);
    void this.run(proc, opts);
    return proc;
  }

  crash(p: Proc): void {
    if (p.crashed) return;
    p.crashed = true;
    p.application.crash();
    this.world.history.add({ kind: 'crash', proc: p.id });
  }

  private live(p: Proc): boolean {
    return !p.crashed && !p.stopped && !this.world.stopping;
  }

  private async call<T>(
    p: Proc,
    op: 'open' | 'write' | 'read' | 'close',
    extra: { offset?: number; bytes?: string; length?: number },
    run: () => Promise<T>,
  ): Promise<Outcome<T>> {
    const h = this.world.history;
    const id = ++this.opId;
    const requestId = p.handle?.requestId;
    h.add({ kind: 'invoke', id, proc: p.id, op, target: p.target, ...(requestId ? { requestId } : {}), ...extra });
    try {
      const value = await run();
      if (p.crashed) return { ok: false, code: 'CRASHED' };
      // An open answers with its handle: its requestId, not the one of the handle it replaces.
      const opened = op === 'open' ? (value as { requestId?: unknown }).requestId : undefined;
      const rid = typeof opened === 'string' ? opened : (p.handle?.requestId ?? requestId ?? '');
      const bytes = value instanceof Uint8Array ? { bytes: hex(value) } : {};
      h.add({ kind: 'ok', id, proc: p.id, op, target: p.target, requestId: rid, ...bytes });
      return { ok: true, value };
    } catch (err) {
      const code = err instanceof SafeResumeError ? err.code : 'INTERNAL';
      // A refused reclaim names the requestId it reclaimed.
      const rid = requestId ?? (err instanceof SafeResumeError ? err.requestId : undefined);
      if (!p.crashed)
        h.add({ kind: 'fail', id, proc: p.id, op, target: p.target, ...(rid ? { requestId: rid } : {}), code });
      return { ok: false, code };
    }
  }

  private async open(p: Proc, requestId?: string): Promise<boolean> {
    const w = this.world;
    for (let attempt = 0; this.live(p); attempt++) {
      const mode = p.mode === 'read' ? { mode: 'read' as const } : {};
      const r = await this.call(p, 'open', {}, () =>
        p.application.open(p.target, { ...(requestId ? { requestId } : {}), ...mode }),
      );
      if (r.ok) {
        const h = r.value;
        p.handle = h;
        h.on('state', (to) => {
          if (!p.crashed)
            w.history.add({
              kind: 'state',
              proc: p.id,
              target: p.target,
              requestId: h.requestId,
              to,
              ...(to === 'invalidated' && h.reason ? { reason: h.reason } : {}),
            });
        });
        return true;
      }
      requestId = undefined; // a refused reclaim is not retried: the application reloads
      if (r.code !== 'LOCKED' && r.code !== 'UNAVAILABLE' && r.code !== 'MODIFIED' && r.code !== 'CLOSED') return false;
      await w.sleep(w.between(50, 200));
    }
    return false;
  }

  private async run(p: Proc, opts: SpawnOptions): Promise<void> {
    const w = this.world;
    const think = () => {
      const [lo, hi] = w.opts.thinkMs ?? [10, 80];
      // Once every fault has healed, applications idle down while their handles settle.
      return w.between(lo, hi) * (w.calm ? CALM_FACTOR : 1);
    };
    if (!(await this.open(p, opts.requestId))) return;
    while (this.live(p)) {
      const h = p.handle!;
      if (h.state === 'invalidated' || h.state === 'closed') {
        // The application knows to reload: it opens the target afresh.
        await w.sleep(think());
        if (!(await this.open(p))) return;
        continue;
      }
      if (p.mode === 'read') {
        // A reader waits through pauses like a writer does.
        await this.read(p, h);
        await w.sleep(think());
        continue;
      }
      // A burst of 1-4 pipelined writes: several in flight at once, as a real application has.
      const burst = opts.once ? 1 : w.between(1, 4);
      const writes: Array<Promise<unknown>> = [];
      for (let b = 0; b < burst; b++) writes.push(this.write(p, h));
      await Promise.all(writes);
      if (!this.live(p)) break;
      if (w.random() < 0.3) await this.read(p, h);
      if (opts.once) {
        await this.call(p, 'close', {}, () => h.close());
        p.stopped = true;
        return;
      }
      await w.sleep(think());
    }
  }

  /** One write of the mix. Its bytes start with the process and a counter, so no two writes are alike. */
  private write(p: Proc, h: Handle): Promise<unknown> {
    const w = this.world;
    p.k++;
    const record = `${p.id}:${p.k}|`.padEnd(SLOT_BYTES, '.').slice(0, SLOT_BYTES);
    let offset = (p.k % SLOTS) * SLOT_BYTES;
    let length = SLOT_BYTES;
    const roll = w.random();
    if (roll < MIX.invalid) {
      // Half past the store's size limit (the store refuses it), half too large to send (the SDK
      // refuses it; its bytes are not worth keeping in the history).
      if (w.random() < 0.5) offset = MAX_TARGET_BYTES - w.between(0, SLOT_BYTES - 1);
      else return this.call(p, 'write', { offset, length: TOO_LARGE.length }, () => h.write(offset, TOO_LARGE));
    } else if (roll < MIX.invalid + MIX.large) {
      offset = w.between(0, 2 * PAGE);
      length = w.between(PAGE, 4 * PAGE);
    } else if (roll < MIX.invalid + MIX.large + MIX.crossPage) {
      const page = w.between(1, 3) * PAGE;
      length = w.between(SLOT_BYTES + 1, 3 * SLOT_BYTES);
      offset = page - w.between(1, length - 1);
    }
    const text = length === SLOT_BYTES ? record : record.repeat(Math.ceil(length / SLOT_BYTES)).slice(0, length);
    return this.call(p, 'write', { offset, bytes: text }, () => h.write(offset, Buffer.from(text, 'latin1')));
  }

  private read(p: Proc, h: Handle): Promise<unknown> {
    const w = this.world;
    let offset = w.between(0, SLOTS - 1) * SLOT_BYTES;
    let length = SLOT_BYTES;
    if (w.random() < MIX.crossPageRead) {
      length = w.between(SLOT_BYTES, 4 * SLOT_BYTES);
      offset = w.between(1, 3) * PAGE - w.between(1, length - 1);
    }
    return this.call(p, 'read', { offset, length }, () => h.read(offset, length));
  }
}
