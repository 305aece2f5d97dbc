/**
 * One injected environment per actor: clock, seeded random, logger. Machines get time only through
 * the clock handed to `createActor`, so a simulation swaps in `SimulatedClock`.
 */
import { pino, type Logger } from 'pino';
import { nanoid } from 'nanoid';
import {
  createActor,
  createMachine,
  SimulatedClock,
  stopChild,
  type AnyActorRef,
  type InspectionEvent,
  type Snapshot,
} from 'xstate';

/** XState's clock (timers) plus the current time, in milliseconds. */
export interface ActorClock {
  // The timer id type is the clock's own (a Node Timeout, a number in simulation).
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(id: unknown): void;
  /**
   * Whole milliseconds on a clock that never jumps (for measuring durations within one process,
   * never compared with another process's): a step of the wall clock must not make a session look
   * silent or a timer look late.
   */
  now(): number;
}

export interface Env {
  clock: ActorClock;
  /** Uniform in [0, 1); seeded in simulation. */
  random: () => number;
  /** Fresh identifiers (requestIds, session ids): nanoid, or seeded in simulation. */
  newId: () => string;
  log: Logger;
  /** Receives the XState inspection events of every actor this environment creates. */
  inspect?: InspectionObserver | undefined;
}

/**
 * `log` with `actor: id` on every line, once: a logger made for this actor (pino's `base` holding it)
 * is used as it is, since a child binding the same key again would write it twice in every JSON line.
 */
export function actorLog(log: Logger, id: string): Logger {
  return log.bindings().actor === id ? log : log.child({ actor: id });
}

export type InspectionObserver = (event: InspectionEvent) => void;

const URL_ALPHABET = 'useandom-26T198340PX75pxJACKVERYMINDBUSHWOLF_GQZbfghjklqvwyzrict';

/** 21-character identifiers drawn from a seeded random source, in nanoid's alphabet. */
export function seededIds(random: () => number): () => string {
  return () => {
    let id = '';
    for (let i = 0; i < 21; i++) id += URL_ALPHABET[Math.floor(random() * 64)];
    return id;
  };
}

export const realClock: ActorClock = {
  now: () => Math.floor(performance.timeOrigin + performance.now()),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (id) => clearTimeout(id as NodeJS.Timeout),
};

/** XState's SimulatedClock, starting at `startMs`. Advance it with `increment(ms)`. */
export function simulatedClock(startMs = 0): SimulatedClock & ActorClock {
  const clock = new SimulatedClock();
  clock.set(startMs);
  return clock;
}

/** mulberry32: a small, fast, seeded PRNG. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const silent = pino({ level: 'silent' });

export function defaultEnv(overrides: Partial<Env> = {}): Env {
  return { clock: realClock, random: Math.random, newId: () => nanoid(), log: silent, ...overrides };
}

/** Repeat `fn` every `ms` on the actor clock until the returned stop function is called. */
export function every(clock: ActorClock, ms: number, fn: () => void): () => void {
  let id: unknown;
  let stopped = false;
  const tick = () => {
    if (stopped) return;
    fn();
    if (!stopped) id = clock.setTimeout(tick, ms);
  };
  id = clock.setTimeout(tick, ms);
  return () => {
    stopped = true;
    clock.clearTimeout(id);
  };
}

/** The parent of many handle actors: `parent` goes to createActor; `stop` ends one of them. */
export interface HandleHolder {
  readonly parent: AnyActorRef;
  stop(actor: AnyActorRef | undefined): void;
}

/**
 * Without a holder, every handle actor is a root actor with an XState system of its own (timer
 * table, registry, inspection set: about 1.8 KB each); as children of one holder they share its
 * system, its clock and its inspection observer. The holder has no states: it stops a child when
 * asked (a child cannot be stopped directly) and logs a child's error, which reaches it as an
 * event instead of being thrown.
 */
export function handleHolder(env: Env): HandleHolder {
  const holder = createMachine({
    id: 'handles',
    types: {} as { events: { type: 'STOP'; ref: AnyActorRef } | { type: string; error?: unknown } },
    on: {
      STOP: { actions: stopChild(({ event }) => (event as { ref: AnyActorRef }).ref) },
      '*': {
        actions: ({ event }) => {
          if (event.type.startsWith('xstate.error.actor'))
            env.log.error({ err: String((event as { error?: unknown }).error) }, 'a handle actor failed');
        },
      },
    },
  });
  const parent = createActor(holder, { clock: env.clock, inspect: env.inspect }).start();
  return {
    parent,
    stop: (ref) => {
      if (ref && (ref.getSnapshot() as Snapshot<unknown>).status === 'active') parent.send({ type: 'STOP', ref });
    },
  };
}
