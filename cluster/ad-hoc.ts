/**
 * The launcher's ad-hoc applications: `write` (the foreign writer of the docs), `read`, `create`, and
 * the operator's `grant` and `revoke`, each against the storage with a deadline, on a node agent of
 * the launcher's own (`cli`).
 */
import { Application } from '../actors/application.js';
import { NodeAgent } from '../actors/node-agent.js';
import { SafeResumeError } from '../errors.js';
import { mayOpen } from '../store/rules.js';
import { NAME_PATTERN } from '../transport/messages.js';
import { WebSocketTransport } from '../transport/ws.js';
import { loadTlsFiles } from '../transport/tls.js';
import type { InspectorServer } from '../runtime/inspector-server.js';
import { MESSAGE_EVENT, watchedTransport } from '../runtime/inspect.js';
import { accessLine } from './explain.js';
import type { ControlResult, LauncherOptions } from './launcher-options.js';
import type { StoreView } from './store-view.js';

/** The most a read through the control endpoint returns at once (its answer is JSON). */
const MAX_READ_BYTES = 16 * 1024 * 1024;

/** How long an ad-hoc command (write, read, create) waits for the storage before it says what it waited for. */
const COMMAND_DEADLINE_MS = 10_000;

/** What an ad-hoc command has done so far, and whether it was given up (it then stops at its next step). */
interface Step {
  stage: 'connecting' | 'opening' | 'sent' | 'closing';
  cancelled: boolean;
}

/** What the ad-hoc commands need of the launcher. */
export interface AdHocContext {
  opts: LauncherOptions;
  secret: string;
  store: StoreView;
  /** The replicas' addresses and ids, in the same order. */
  urls(): string[];
  names(): string[];
  inspector(): InspectorServer | undefined;
  /** Each replica's state, for a command past its deadline: `replica-1 down, replica-2 serving but not answering`. */
  replicaStates(): string;
}

export class AdHoc {
  private cli: NodeAgent | undefined;

  constructor(private readonly c: AdHocContext) {}

  /** Stop the agent at once (the cluster is coming down). */
  crash(): void {
    this.cli?.crash();
  }

  /** The node agent ad-hoc applications run on (`cli`), started at the first command. */
  async agent(): Promise<NodeAgent> {
    if (!this.cli) {
      const transport = new WebSocketTransport(this.c.opts.tls ? { tls: loadTlsFiles(this.c.opts.tls) } : {});
      const inspector = this.c.inspector();
      const names = this.c.names();
      const urls = this.c.urls();
      // Its protocol messages (a foreign write, say) are on the inspector page too, from `cli`.
      const watched = inspector
        ? watchedTransport(
            transport,
            {
              get watching() {
                return inspector.watchers > 0;
              },
              message: (m) => inspector.report('cli', { type: MESSAGE_EVENT, createdAt: String(Date.now()), ...m }),
            },
            (url) => names[urls.indexOf(url)],
          )
        : transport;
      this.cli = new NodeAgent({
        id: 'cli',
        replicas: urls,
        transport: watched,
        secret: this.c.secret,
        env: { log: this.c.opts.agentLog ?? this.c.opts.log },
      });
      await this.cli.start();
    }
    return this.cli;
  }

  /** An ad-hoc application writes `text` at offset 0 of the target: the foreign writer of the docs. */
  async write(target: string, text: string, as = 'cli'): Promise<ControlResult> {
    return this.run(`write ${target}`, async (step) => {
      const app = new Application(await this.agent(), { name: as });
      step.stage = 'opening';
      const h = await app.open(target);
      try {
        if (step.cancelled) return { ok: false, code: 'UNAVAILABLE', message: 'given up' };
        const data = new TextEncoder().encode(text);
        step.stage = 'sent';
        const { version } = await h.write(0, data);
        return { ok: true, target, as, requestId: h.requestId, bytes: data.length, version };
      } finally {
        step.stage = 'closing';
        await h.close();
      }
    });
  }

  /**
   * Run an ad-hoc command against the storage with a deadline: past it, say what was waited for (each
   * replica's state) instead of hanging. Work not yet sent is given up; a write already sent may still
   * land, and the answer says so (OUTCOME_UNKNOWN), never that it failed.
   */
  private async run(what: string, work: (step: Step) => Promise<ControlResult>): Promise<ControlResult> {
    const step: Step = { stage: 'connecting', cancelled: false };
    const done = work(step);
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), COMMAND_DEADLINE_MS)));
    const first = await Promise.race([done, late]).finally(() => clearTimeout(timer));
    if (first) return first;
    step.cancelled = true;
    done.catch(() => undefined);
    const replicas = this.c.replicaStates();
    const waited = `no replica answered within ${COMMAND_DEADLINE_MS / 1000} s (${replicas})`;
    if (step.stage === 'sent')
      return {
        ok: false,
        code: 'OUTCOME_UNKNOWN',
        message: `${what}: the write was sent and ${waited}: it may still be applied once a replica is back`,
        deadline: true,
      };
    return { ok: false, code: 'UNAVAILABLE', message: `${what}: ${waited}; nothing was done`, deadline: true };
  }

  /** Create a disk: `target` with a size fixed now (sparse: nothing is written). Said again with the same size, it is a no-op. */
  async create(target: string, size: number | undefined): Promise<ControlResult> {
    if (size === undefined) throw new SafeResumeError('INVALID_ARGUMENT', 'missing size');
    return this.run(`create ${target}`, async (step) => {
      const app = new Application(await this.agent(), { name: 'cli-create' });
      step.stage = 'opening';
      // Whether it existed: a read open says its size (none yet: it is created now).
      const before = await app.open(target, { mode: 'read' });
      const had = before.size;
      await before.close();
      // Already that size: nothing to do (a write open would be LOCKED while a client uses the disk).
      if (had === size) return { ok: true, target, size, created: false };
      if (step.cancelled) return { ok: false, code: 'UNAVAILABLE', message: 'given up' };
      step.stage = 'sent'; // the open that fixes the size
      const h = await app.open(target, { size });
      await h.close();
      return { ok: true, target, size, created: had === undefined };
    });
  }

  /**
   * Read `length` bytes at `offset` as principal default. A target nobody has, and one default may not
   * open, are the same answer, NOT_FOUND (a read open would otherwise create the first, and say of the
   * second that it exists); only the operator's `explain` tells them apart.
   */
  async read(target: string, offset = 0, length = 1024 * 1024): Promise<ControlResult> {
    if (!Number.isSafeInteger(offset) || offset < 0)
      throw new SafeResumeError(
        'INVALID_ARGUMENT',
        `offset must be a whole number of bytes >= 0, not ${String(offset)}`,
      );
    if (!Number.isSafeInteger(length) || length < 1 || length > MAX_READ_BYTES)
      throw new SafeResumeError(
        'INVALID_ARGUMENT',
        `length must be from 1 to ${MAX_READ_BYTES} bytes, not ${String(length)}`,
      );
    const access = await this.c.store.accessOf(target).catch((err: Error) => {
      throw new SafeResumeError('UNAVAILABLE', `the store cannot be read: ${err.message}`);
    });
    if (!access || !mayOpen(access, 'default', 'read'))
      return {
        ok: false,
        code: 'NOT_FOUND',
        message: `no target called ${JSON.stringify(target)} that principal default may read: nobody has created or written it, or it is another principal's ('safe-resume explain' tells which)`,
      };
    return this.run(`read ${target}`, async (step) => {
      const app = new Application(await this.agent(), { name: 'cli-reader' });
      step.stage = 'opening';
      const h = await app.open(target, { mode: 'read' });
      try {
        const data = await h.read(offset, length);
        return {
          ok: true,
          target,
          offset,
          bytes: data.length,
          base64: Buffer.from(data).toString('base64'),
          text: new TextDecoder().decode(data),
        };
      } finally {
        await h.close();
      }
    });
  }

  /**
   * The operator grants `principal` read or write access to a target (replacing what it had), or
   * revokes it (`none`): decided by the store's rule as any owner's change is (rules.decideAccess),
   * on a client of the store of its own, as `explain` reads it.
   */
  async access(target: string, principal: string, mode: string): Promise<ControlResult> {
    if (!NAME_PATTERN.test(principal))
      throw new SafeResumeError(
        'INVALID_ARGUMENT',
        `principal ${JSON.stringify(principal.slice(0, 64))} must be 1-128 of A-Z a-z 0-9 . _ @ - (starting with a letter or digit)`,
      );
    if (mode !== 'read' && mode !== 'write' && mode !== 'none')
      throw new SafeResumeError(
        'INVALID_ARGUMENT',
        `mode must be read or write, not ${JSON.stringify(mode.slice(0, 64))}`,
      );
    const res = await this.c.store
      .withStore((store) => store.editAccess({ target, by: undefined, principal, mode }))
      .catch((err: Error) => {
        throw err instanceof SafeResumeError
          ? err
          : new SafeResumeError('UNAVAILABLE', `the store cannot be written: ${err.message}`);
      });
    if (!res.ok) throw new SafeResumeError(res.code, res.message);
    return {
      ok: true,
      target,
      owner: res.access.owner,
      grants: res.access.grants,
      text: accessLine(target, res.access),
    };
  }
}
