/**
 * Paths through a machine, generated with @xstate/graph: the shortest path to every state, the
 * simple paths, and one path per transition (the shortest path to its source plus that event), so
 * that every transition of the machine is taken by at least one path.
 */
import { getShortestPaths, getSimplePaths } from '@xstate/graph';
import {
  transition,
  type AnyMachineSnapshot,
  type AnyStateMachine,
  type AnyStateNode,
  type EventObject,
  type InspectionEvent,
} from 'xstate';

export interface PathStep {
  event: EventObject;
  /** The machine's state after the event, as JSON of its value. */
  state: string;
}

export interface MachinePath {
  /** JSON of the initial state's value. */
  initial: string;
  steps: PathStep[];
  /** Readable form, for test names. */
  name: string;
}

export const stateKey = (value: unknown) => JSON.stringify(value);

/** A transition's identity: source, event, targets and guard. The same key is built from the definition and from inspection. */
export function transitionKey(t: {
  source: AnyStateNode;
  target?: readonly AnyStateNode[] | undefined;
  eventType: string;
  guard?: unknown;
}): string {
  const guard =
    t.guard && typeof t.guard === 'object' && 'type' in t.guard
      ? `[${String(t.guard.type)}]`
      : t.guard
        ? '[guard]'
        : '';
  return `${t.source.id} --${t.eventType || 'always'}--> ${t.target?.map((n) => n.id).join(',') ?? '(self)'}${guard}`;
}

/** Every transition the machine defines. */
export function definedTransitions(machine: AnyStateMachine): Set<string> {
  const out = new Set<string>();
  const walk = (node: AnyStateNode) => {
    for (const ts of node.transitions.values()) for (const t of ts) out.add(transitionKey(t));
    for (const t of node.always ?? []) out.add(transitionKey(t));
    for (const child of Object.values(node.states)) walk(child as AnyStateNode);
  };
  walk(machine.root);
  return out;
}

export function generatePaths(
  machine: AnyStateMachine,
  input: unknown,
  events: EventObject[],
  simpleLimit = 200,
): MachinePath[] {
  const opts = { input, events, serializeState: (s: AnyMachineSnapshot) => stateKey(s.value) };
  const shortest = getShortestPaths(machine, opts);
  const simple = getSimplePaths(machine, opts).slice(0, simpleLimit);
  const initial = shortest[0]!.steps[0]!.state as AnyMachineSnapshot;
  const toPath = (steps: Array<{ event: EventObject; state: AnyMachineSnapshot }>): PathStep[] =>
    steps
      .filter((s) => s.event.type !== 'xstate.init')
      .map((s) => ({ event: s.event, state: stateKey(s.state.value) }));
  const all: PathStep[][] = [...shortest, ...simple].map((p) =>
    toPath(p.steps as Array<{ event: EventObject; state: AnyMachineSnapshot }>),
  );
  // One path per enabled event of every reachable state: the shortest path there, then the event.
  for (const p of shortest) {
    const at = p.state as AnyMachineSnapshot;
    if (at.status !== 'active') continue;
    for (const event of events) {
      if (!at.can(event)) continue;
      const [next] = transition(machine, at, event) as [AnyMachineSnapshot, unknown];
      all.push([
        ...toPath(p.steps as Array<{ event: EventObject; state: AnyMachineSnapshot }>),
        { event, state: stateKey(next.value) },
      ]);
    }
  }
  const seen = new Map<string, MachinePath>();
  for (const steps of all) {
    const name = steps.map((s) => `${short(s.event.type)}→${s.state.replace(/"/g, '')}`).join(' ');
    if (!seen.has(name)) seen.set(name, { initial: stateKey(initial.value), steps, name: name || '(initial)' });
  }
  return [...seen.values()];
}

const short = (type: string) =>
  type.replace(/^xstate\.after\.([^.]+)\..*$/, 'after:$1').replace(/^xstate\.(done|error)\.actor\..*$/, '$1');

/** Records, per actor, the states it went through and the transitions it took (from inspection). */
export class Recorder {
  readonly states = new Map<object, string[]>();
  readonly events = new Map<object, string[]>();
  readonly transitions = new Map<string, Set<string>>();
  /** Actors in creation order, with the machine id and whatever tag was current when each was made. */
  readonly actors: Array<{ ref: object; machine: string; tag: string | undefined }> = [];
  tag: string | undefined;

  readonly inspect = (ev: InspectionEvent): void => {
    const ref = ev.actorRef as unknown as { logic?: { id?: string } };
    const machine = ref.logic?.id;
    if (!machine) return;
    if (ev.type === '@xstate.actor') {
      this.actors.push({ ref, machine, tag: this.tag });
    } else if (ev.type === '@xstate.microstep') {
      let set = this.transitions.get(machine);
      if (!set) this.transitions.set(machine, (set = new Set()));
      for (const t of ev._transitions) {
        set.add(transitionKey(t));
        this.push(this.events, ref, t.eventType || 'always');
      }
    } else if (ev.type === '@xstate.snapshot') {
      const value = (ev.snapshot as { value?: unknown }).value;
      if (value !== undefined) this.push(this.states, ref, stateKey(value));
    }
  };

  private push(m: Map<object, string[]>, ref: object, v: string): void {
    const list = m.get(ref);
    if (list) {
      if (list.at(-1) !== v || m === this.events) list.push(v);
    } else m.set(ref, [v]);
  }

  trace(refs: object[]): { states: string[]; events: string[] } {
    return {
      states: refs.flatMap((r) => this.states.get(r) ?? []),
      events: refs.flatMap((r) => this.events.get(r) ?? []),
    };
  }
}

/** Whether `want` appears in `have` in order (a repeated state may match the same entry). */
export function inOrder(have: string[], want: string[]): { ok: true } | { ok: false; missing: string; at: number } {
  let i = 0;
  for (let k = 0; k < want.length; k++) {
    const w = want[k]!;
    let j = i;
    while (j < have.length && have[j] !== w) j++;
    if (j === have.length) return { ok: false, missing: w, at: k };
    i = j;
  }
  return { ok: true };
}
