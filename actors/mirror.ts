/**
 * What the inspector sees of the node's handles. A handle is plain data stepped by the core; while
 * somebody inspects (an inspection observer is set), each handle also gets an actor of the drawn
 * machine (machines/app-handle.ts) that is sent every lifecycle event the core reports. The actor has
 * no timers and no effects: it only shows the core's steps on the machine's picture, so the inspector
 * and the generated-path tests see the same machine. Without an observer nothing here exists.
 */
import { createActor, type Actor } from 'xstate';
import type { CoreHandle, HandleState, LifecycleEvent } from '../core/handle.js';
import { appHandleMachine, type AppHandleEvent } from '../machines/app-handle.js';
import { handleHolder, type Env, type HandleHolder } from './env.js';

const noop = () => {};

/** The drawn machine with nothing to do: the core does it. */
const mirrorMachine = appHandleMachine.provide({
  actions: {
    dispatchIo: noop,
    rejectIo: noop,
    rejectIoUnavailable: noop,
    notifyPaused: noop,
    notifyResumed: noop,
    notifyInvalidated: noop,
    sendClose: noop,
    startPauseTimer: noop,
    stopPauseTimer: noop,
  },
});

export class HandleMirrors {
  private readonly holder: HandleHolder;
  private readonly actors = new Map<CoreHandle, Actor<typeof mirrorMachine>>();

  constructor(private readonly env: Env) {
    this.holder = handleHolder(env);
  }

  add(h: CoreHandle): void {
    this.actors.set(h, createMirror(this.holder, h));
  }

  changed(h: CoreHandle, event: LifecycleEvent | 'IO', to: HandleState): void {
    const actor = this.actors.get(h);
    if (!actor) return;
    actor.send(toEvent(h, event));
    if (to === 'closed') this.actors.delete(h);
    if (actor.getSnapshot().value !== to) {
      this.env.log.error(
        { target: h.target, core: to, machine: actor.getSnapshot().value, event },
        'the handle lifecycle and machines/app-handle disagree',
      );
    }
  }
}

function createMirror(holder: HandleHolder, h: CoreHandle): Actor<typeof mirrorMachine> {
  const actor = createActor(mirrorMachine, {
    parent: holder.parent,
    input: {
      target: h.target,
      mode: h.mode,
      requestId: h.requestId,
      onFailure: h.onFailure,
      pauseTimeoutMs: h.pauseTimeoutMs,
    },
  });
  actor.start();
  return actor;
}

function toEvent(h: CoreHandle, event: LifecycleEvent | 'IO'): AppHandleEvent {
  switch (event) {
    case 'DENIED':
    case 'REVOKED':
      return { type: event, reason: h.reason ?? 'MODIFIED' };
    case 'OPEN_FAILED':
      return { type: event, code: 'OPEN_FAILED' };
    default:
      return { type: event };
  }
}
