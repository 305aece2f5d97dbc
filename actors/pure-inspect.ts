/**
 * Inspection for lifecycles kept as plain records instead of actors (a replica's handles): the
 * XState inspection events an actor of the same machine would emit ('@xstate.actor',
 * '@xstate.event', '@xstate.microstep', '@xstate.snapshot'), so the inspector draws them and the
 * path tests follow them like any actor. Nothing is made or kept unless an observer is present:
 * `pureInspector(undefined)` is undefined, and `insp?.update(h, e, snapshotOf(h))` then does not
 * even build its arguments.
 */
import type {
  ActorRefLike,
  AnyStateMachine,
  AnyStateNode,
  AnyTransitionDefinition,
  EventObject,
  InspectionEvent,
  StateValue,
} from 'xstate';
import type { InspectionObserver } from './env.js';

/** What the inspector needs of a snapshot: the machine's state value, its context, and whether it ended. */
export interface PureSnapshot {
  value: StateValue;
  context: unknown;
  /** `done` once the machine reached a final state. */
  status: 'active' | 'done' | 'stopped';
}

/** Stands in for an actor in inspection events: the fields inspectors read of an actorRef. */
interface SyntheticRef {
  readonly sessionId: string;
  readonly id: string;
  readonly logic: AnyStateMachine;
  readonly _parent: ActorRefLike | undefined;
  readonly rootId: string;
  snapshot: PureSnapshot;
  getSnapshot(): PureSnapshot;
  send(event: EventObject): void;
}

export interface PureInspector<K> {
  /**
   * A record of `machine` appears, already in `snapshot` (its initial transitions, eventless ones
   * included, are reported as taken). `parent` is the actor it belongs to, if any.
   */
  register(id: K, machine: AnyStateMachine, parent: ActorRefLike | undefined, snapshot: PureSnapshot): void;
  /** `event` reached the record, which is now in `snapshot` (the same state when it took no transition). */
  update(id: K, event: EventObject, snapshot: PureSnapshot): void;
  /** The record is dropped: reported as a stopped actor unless it already ended in a final state. */
  stop(id: K): void;
  /** Records registered and not yet ended or stopped. */
  readonly size: number;
}

let counter = 0;

/** An inspector for records keyed by `K` (the record itself will do), or undefined without an observer. */
export function pureInspector<K>(observer: InspectionObserver | undefined): PureInspector<K> | undefined {
  if (!observer) return undefined;
  const refs = new Map<K, SyntheticRef>();
  const emit = (ev: Record<string, unknown>) => observer(ev as unknown as InspectionEvent);
  const end = (id: K, ref: SyntheticRef) => {
    if (ref.snapshot.status !== 'active') refs.delete(id);
  };
  return {
    register(id, machine, parent, snapshot) {
      const sessionId = `p:${counter++}`;
      const ref: SyntheticRef = {
        sessionId,
        id: sessionId,
        logic: machine,
        _parent: parent,
        rootId: parent ? rootOf(parent) : sessionId,
        snapshot,
        getSnapshot: () => ref.snapshot,
        // A record is stepped by its owner; events sent to its stand-in go nowhere.
        send: () => undefined,
      };
      refs.set(id, ref);
      const init = { type: 'xstate.init' };
      emit({ type: '@xstate.actor', actorRef: ref, rootId: ref.rootId });
      emit({ type: '@xstate.event', actorRef: ref, sourceRef: parent, event: init, rootId: ref.rootId });
      for (const step of settle(machine.root.initial?.target ?? [], active(machine, snapshot.value))) {
        emit({
          type: '@xstate.microstep',
          actorRef: ref,
          event: init,
          snapshot,
          _transitions: step,
          rootId: ref.rootId,
        });
      }
      emit({ type: '@xstate.snapshot', actorRef: ref, event: init, snapshot, rootId: ref.rootId });
      end(id, ref);
    },
    update(id, event, snapshot) {
      const ref = refs.get(id);
      if (!ref) return;
      const before = ref.snapshot;
      ref.snapshot = snapshot;
      emit({ type: '@xstate.event', actorRef: ref, sourceRef: undefined, event, rootId: ref.rootId });
      const steps = transitionsTaken(ref.logic, before.value, event.type, snapshot.value);
      for (const step of steps.length > 0 ? steps : [[]])
        emit({ type: '@xstate.microstep', actorRef: ref, event, snapshot, _transitions: step, rootId: ref.rootId });
      emit({ type: '@xstate.snapshot', actorRef: ref, event, snapshot, rootId: ref.rootId });
      end(id, ref);
    },
    stop(id) {
      const ref = refs.get(id);
      if (!ref) return;
      refs.delete(id);
      const event = { type: 'xstate.stop' };
      ref.snapshot = { ...ref.snapshot, status: 'stopped' };
      emit({ type: '@xstate.event', actorRef: ref, sourceRef: ref._parent, event, rootId: ref.rootId });
      emit({ type: '@xstate.snapshot', actorRef: ref, event, snapshot: ref.snapshot, rootId: ref.rootId });
    },
    get size() {
      return refs.size;
    },
  };
}

function rootOf(ref: ActorRefLike): string {
  let r = ref as { sessionId?: string; _parent?: unknown };
  while (r._parent) r = r._parent;
  return r.sessionId ?? '';
}

/** The state nodes a state value makes active, by id ('paused' -> m, m.paused; {a: 'b'} -> m, m.a, m.a.b). */
function active(machine: AnyStateMachine, value: StateValue): Map<string, AnyStateNode> {
  const out = new Map<string, AnyStateNode>([[machine.root.id, machine.root]]);
  const walk = (node: AnyStateNode, v: StateValue) => {
    for (const [k, sub] of typeof v === 'string' ? [[v, undefined] as const] : Object.entries(v)) {
      const child = node.states[k] as AnyStateNode | undefined;
      if (!child) continue;
      out.set(child.id, child);
      if (sub !== undefined) walk(child, sub);
    }
  };
  walk(machine.root, value);
  return out;
}

/** Whether entering `nodes` ends, through eventless transitions, in the active nodes `to`. */
function landsIn(nodes: readonly AnyStateNode[], to: Map<string, AnyStateNode>, depth = 0): boolean {
  return nodes.every(
    (n) => to.has(n.id) || (depth < 32 && (n.always ?? []).some((t) => landsIn(t.target ?? [], to, depth + 1))),
  );
}

/**
 * From the state nodes just entered, the eventless transitions that must have been taken to end in
 * the active nodes `to`, one microstep per round as XState takes them (the machine's own
 * transition definitions, as XState reports them).
 */
function settle(entered: readonly AnyStateNode[], to: Map<string, AnyStateNode>): AnyTransitionDefinition[][] {
  const steps: AnyTransitionDefinition[][] = [];
  let frontier = [...entered];
  for (let i = 0; i < 32 && frontier.length > 0; i++) {
    const next: AnyStateNode[] = [];
    const step: AnyTransitionDefinition[] = [];
    for (const node of frontier) {
      if (to.has(node.id)) {
        // Rested here; a compound node goes on into its initial child, a parallel one into all of them.
        if (node.type === 'parallel') next.push(...(Object.values(node.states) as AnyStateNode[]));
        else next.push(...(node.initial?.target ?? []));
        continue;
      }
      const t = (node.always ?? []).find((c) => landsIn(c.target ?? [], to));
      if (!t) continue;
      step.push(t);
      next.push(...(t.target ?? []));
    }
    if (step.length > 0) steps.push(step);
    frontier = next;
  }
  return steps;
}

/**
 * The microsteps a record of `machine` took from `from` on `eventType` to end in `to`: the event's
 * transitions (one per parallel region, deepest state first, as XState selects them), then the
 * eventless ones. None if it stayed where it was.
 */
function transitionsTaken(
  machine: AnyStateMachine,
  from: StateValue,
  eventType: string,
  to: StateValue,
): AnyTransitionDefinition[][] {
  if (JSON.stringify(from) === JSON.stringify(to)) return [];
  const toNodes = active(machine, to);
  const nodes = [...active(machine, from).values()].sort((a, b) => b.path.length - a.path.length);
  const taken: AnyTransitionDefinition[] = [];
  const related = (a: AnyStateNode, b: AnyStateNode) =>
    a.id === b.id || a.id.startsWith(`${b.id}.`) || b.id.startsWith(`${a.id}.`);
  for (const node of nodes) {
    if (taken.some((t) => related(t.source, node))) continue;
    const t = (node.transitions.get(eventType) ?? []).find((c) => c.target !== undefined && landsIn(c.target, toNodes));
    if (t) taken.push(t);
  }
  if (taken.length === 0) return [];
  return [
    taken,
    ...settle(
      taken.flatMap((t) => t.target ?? []),
      toNodes,
    ),
  ];
}
