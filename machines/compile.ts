/**
 * The machines are the one source of each lifecycle: the runtime does not keep its own table, it
 * steps the table compiled here from the machine's config, once, at module load. What the inspector
 * draws is what runs.
 *
 * The compiler takes flat machines only (atomic and final states, `on`, `always`, `after`), and of a
 * transition it keeps the target, the guard and the actions by name. Anything it cannot turn into
 * that data (a nested or parallel state, an invoke, a guard or an action given as a function, a
 * guard or action the runtime does not say it carries out, a target outside the machine's own
 * states) fails the compile, and so the load of the module that compiles it, with the reason.
 * Entry and exit actions are not compiled: they are what the runtime does on its own when a state
 * is entered or left (the node agent's core emits them as intents), not part of what a transition is.
 * Pure: no clock, no I/O.
 */
import type { AnyStateMachine, EventFromLogic, StateValueFrom } from 'xstate';

/** One branch of a transition: taken if its guard holds (or it has none); no target = no change of state. */
export interface CompiledBranch<S extends string> {
  readonly guard: string | undefined;
  readonly target: S | undefined;
  readonly actions: readonly string[];
}

/** The name XState gives the event of a delayed (`after`) transition. */
export type DelayedEvent = `xstate.after.${string}`;

/** The state names of a flat machine, as tsc knows them. */
export type StateOf<M extends AnyStateMachine> = StateValueFrom<M> & string;
/** The event names of a machine, and those of its delayed transitions. */
export type EventOf<M extends AnyStateMachine> = EventFromLogic<M>['type'] | DelayedEvent;

export interface CompiledMachine<S extends string, E extends string> {
  readonly id: string;
  readonly initial: S;
  readonly states: readonly S[];
  readonly final: ReadonlySet<S>;
  /** state x event -> the branches, in the machine's order; '' is the eventless (`always`) transition. */
  readonly on: { readonly [K in S]: Partial<Record<E | '', readonly CompiledBranch<S>[]>> };
}

export interface CompileOptions {
  /** The guards the runtime evaluates (by name); any other guard fails the compile. */
  guards?: readonly string[];
  /** The transition actions the runtime carries out (by name); any other fails the compile. */
  actions?: readonly string[];
}

const STATE_KEYS = new Set(['on', 'always', 'after', 'entry', 'exit', 'type', 'description', 'meta', 'tags']);
const BRANCH_KEYS = new Set(['target', 'guard', 'actions', 'description', 'meta', 'reenter']);
const ROOT_KEYS = new Set(['id', 'context', 'initial', 'states', 'types', 'schemas', 'description', 'meta', 'version']);

class CompileError extends Error {
  constructor(machine: string, what: string) {
    super(`machine ${machine}: cannot compile ${what}`);
    this.name = 'CompileError';
  }
}

/** Compile a flat machine into its lookup table; throws (naming what) on any shape it does not know. */
export function compileMachine<M extends AnyStateMachine>(
  machine: M,
  options: CompileOptions = {},
): CompiledMachine<StateOf<M>, EventOf<M>> {
  const config = machine.config as Record<string, unknown>;
  const id = typeof config.id === 'string' ? config.id : machine.id;
  const fail = (what: string): never => {
    throw new CompileError(id, what);
  };
  for (const key of Object.keys(config)) if (!ROOT_KEYS.has(key)) fail(`the machine's own "${key}"`);
  const statesConfig = config.states;
  if (!statesConfig || typeof statesConfig !== 'object') return fail('a machine without states');
  const states = Object.keys(statesConfig);
  const known = new Set(states);
  if (typeof config.initial !== 'string' || !known.has(config.initial)) fail(`initial state ${String(config.initial)}`);
  const guards = new Set(options.guards ?? []);
  const actions = new Set(options.actions ?? []);
  const final = new Set<string>();
  const on: Record<string, Record<string, CompiledBranch<string>[]>> = {};

  const nameOf = (kind: 'guard' | 'action', x: unknown, where: string): string => {
    const name =
      typeof x === 'string'
        ? x
        : x !== null && typeof x === 'object' && typeof (x as { type?: unknown }).type === 'string'
          ? (x as { type: string }).type
          : undefined;
    if (name === undefined) return fail(`an unnamed ${kind} (a function) at ${where}`);
    if (!(kind === 'guard' ? guards : actions).has(name))
      fail(`${kind} "${name}" at ${where}: the runtime does not carry it out`);
    return name;
  };

  const branch = (raw: unknown, where: string): CompiledBranch<string> => {
    const b: Record<string, unknown> =
      typeof raw === 'string'
        ? { target: raw }
        : raw !== null && typeof raw === 'object' && !Array.isArray(raw)
          ? (raw as Record<string, unknown>)
          : fail(`transition ${where}`);
    for (const key of Object.keys(b)) if (!BRANCH_KEYS.has(key)) fail(`"${key}" of transition ${where}`);
    if (b.reenter) fail(`a reentering transition ${where}`);
    let target: string | undefined;
    if (b.target !== undefined) {
      const t: unknown = Array.isArray(b.target) && b.target.length === 1 ? b.target[0] : b.target;
      if (typeof t !== 'string' || !known.has(t))
        fail(`target ${JSON.stringify(b.target)} of ${where} (only the machine's own states, by name)`);
      target = t as string;
    }
    const acts = b.actions === undefined ? [] : Array.isArray(b.actions) ? b.actions : [b.actions];
    return {
      guard: b.guard === undefined ? undefined : nameOf('guard', b.guard, where),
      target,
      actions: acts.map((a) => nameOf('action', a, where)),
    };
  };

  const branches = (raw: unknown, where: string): CompiledBranch<string>[] =>
    (Array.isArray(raw) ? raw : [raw]).map((b) => branch(b, where));

  for (const state of states) {
    const node = (statesConfig as Record<string, unknown>)[state];
    if (!node || typeof node !== 'object') fail(`state ${state}`);
    const n = node as Record<string, unknown>;
    for (const key of Object.keys(n)) if (!STATE_KEYS.has(key)) fail(`"${key}" of state ${state} (flat machines only)`);
    if (n.type !== undefined && n.type !== 'final' && n.type !== 'atomic')
      fail(`a ${typeof n.type === 'string' ? n.type : JSON.stringify(n.type)} state (${state})`);
    if (n.type === 'final') final.add(state);
    const table: Record<string, CompiledBranch<string>[]> = {};
    for (const [event, raw] of Object.entries((n.on ?? {}) as Record<string, unknown>)) {
      if (event === '' || event.includes('*')) fail(`event ${JSON.stringify(event)} of state ${state}`);
      table[event] = branches(raw, `${state} --${event}-->`);
    }
    if (n.always !== undefined) table[''] = branches(n.always, `${state} (always)`);
    for (const [delay, raw] of Object.entries((n.after ?? {}) as Record<string, unknown>)) {
      table[`xstate.after.${delay}.${id}.${state}`] = branches(raw, `${state} (after ${delay})`);
    }
    if (final.has(state) && Object.keys(table).length > 0) fail(`transitions out of final state ${state}`);
    on[state] = table;
  }
  return {
    id,
    initial: config.initial as StateOf<M>,
    states: states,
    final: final,
    on: on,
  };
}

/** The first branch whose guard holds (one without a guard always does), or undefined. */
export function pick<S extends string>(
  branches: readonly CompiledBranch<S>[] | undefined,
  holds: (guard: string) => boolean,
): CompiledBranch<S> | undefined {
  if (!branches) return undefined;
  for (const b of branches) if (b.guard === undefined || holds(b.guard)) return b;
  return undefined;
}

/**
 * state x event -> target, for a runtime that only needs where a transition leads: transitions
 * without a target (effects only) are left out, and a guard that would choose the target fails the
 * compile (the target would then depend on data this table does not hold).
 */
export function targetTable<S extends string, E extends string>(
  m: CompiledMachine<S, E>,
): { readonly [K in S]: Partial<Record<E, S>> } {
  const out = {} as { [K in S]: Partial<Record<E, S>> };
  for (const state of m.states) {
    const row: Partial<Record<E, S>> = {};
    for (const [event, bs] of Object.entries(m.on[state]) as Array<[E | '', readonly CompiledBranch<S>[]]>) {
      const targeted = bs.filter((b) => b.target !== undefined);
      if (targeted.length === 0) continue;
      // Only one branch, taken whatever holds, leads anywhere: else the guards choose the target.
      if (event === '' || targeted.length > 1 || bs[0] !== targeted[0] || targeted[0]!.guard !== undefined) {
        throw new CompileError(
          m.id,
          `${state} --${event || 'always'}--> into a plain table: a guard chooses where it leads`,
        );
      }
      row[event] = targeted[0]!.target;
    }
    out[state] = row;
  }
  return out;
}

/** Every state-changing transition of a compiled machine, as `from --event--> to` (guards aside). */
export function transitionsOf<S extends string, E extends string>(
  m: CompiledMachine<S, E>,
): Array<{ from: S; event: E | ''; to: S }> {
  return m.states.flatMap((from) =>
    (Object.entries(m.on[from]) as Array<[E | '', readonly CompiledBranch<S>[]]>).flatMap(([event, bs]) =>
      bs.flatMap((b) => (b.target === undefined ? [] : [{ from, event, to: b.target }])),
    ),
  );
}
