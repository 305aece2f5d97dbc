/**
 * The story of a failure, as the launcher sees it: faults injected (commands; those refused, marked so), processes that exited
 * or started, and each handle's way through them (paused, resuming, granted, denied with its reason
 * and who took the target over). Kept in memory, newest last, bounded; `safe-resume events` and the
 * inspector read it.
 */
export type TimelineEvent = { at: number; seq: number } & (
  | { kind: 'fault'; what: string }
  /** A command that would have injected a fault or changed the cluster, refused: nothing was done. */
  | { kind: 'refused'; what: string; code: string; message: string }
  | { kind: 'process'; id: string; what: 'started' | 'exited' | 'dismounted' | 'mounted'; detail?: string }
  | {
      kind: 'handle';
      node: string;
      app: string;
      target: string;
      requestId: string | null;
      from: string;
      to: string;
      reason?: string;
      detail?: string;
      /** Denied MODIFIED: the byte ranges another writer changed (`0-4095, 1048576-1052671 (2 ranges)`). */
      changed?: string;
    }
);

/** An event as added: its time is taken now unless given; its sequence number is given it. */
type NewEvent = TimelineEvent extends infer T
  ? T extends TimelineEvent
    ? Omit<T, 'at' | 'seq'> & { at?: number }
    : never
  : never;

const MAX_EVENTS = 5000;
/** Handles whose last state is remembered (an export's client opens a new one each time): the oldest go first. */
const MAX_HANDLES = 10_000;

export class Timeline {
  private readonly events: TimelineEvent[] = [];
  /** Events ever added: the cursor a reader passes back to get only what came after. */
  private added = 0;
  /** Handles that went paused, ever (not only those still among the kept events). */
  pauses = 0;
  /** The last state seen of each handle (node/app), to turn status reports into transitions. */
  private readonly last = new Map<string, { state: string; requestId: string | null }>();

  constructor(private readonly now: () => number = Date.now) {}

  /**
   * Put an event in its place by time: a node reports a handle's change with its next status, after
   * events of the launcher that happened later. `seq` numbers events in the order they were added.
   */
  add(e: NewEvent): TimelineEvent {
    const ev = { ...e, at: e.at ?? this.now(), seq: ++this.added };
    let i = this.events.length;
    while (i > 0 && this.events[i - 1]!.at > ev.at) i--;
    this.events.splice(i, 0, ev);
    if (this.events.length > MAX_EVENTS) this.events.splice(0, this.events.length - MAX_EVENTS);
    return ev;
  }

  /**
   * A node's handles, oldest first: each where it is now (a status report) or where it went and when
   * (a change of state as it happened, `at`). Every change since the last one seen becomes an event.
   */
  handles(
    node: string,
    hs: ReadonlyArray<{
      app: string;
      target: string;
      requestId: string | null;
      state: string;
      reason: string | null;
      at?: number;
      changed?: string | undefined;
    }>,
  ): Array<TimelineEvent & { kind: 'handle' }> {
    const out: Array<TimelineEvent & { kind: 'handle' }> = [];
    for (const h of hs) {
      const key = `${node}/${h.app}`;
      const prev = this.last.get(key);
      if (prev && prev.state === h.state && prev.requestId === h.requestId) continue;
      if (!prev && this.last.size >= MAX_HANDLES) this.last.delete(this.last.keys().next().value!);
      this.last.set(key, { state: h.state, requestId: h.requestId });
      if (!prev && h.state === 'opening') continue;
      if (h.state === 'paused') this.pauses++;
      const from = prev?.state ?? '-';
      const granted = (from === 'resuming' || from === 'paused') && h.state === 'active';
      // A new requestId where there was one: the application reloaded (its first open is no news).
      const detail = granted
        ? `resume granted, same requestId`
        : prev?.requestId && h.requestId && prev.requestId !== h.requestId
          ? 'opened afresh (a new requestId)'
          : undefined;
      const ev = this.add({
        ...(h.at !== undefined ? { at: h.at } : {}),
        kind: 'handle',
        node,
        app: h.app,
        target: h.target,
        requestId: h.requestId,
        from,
        to: h.state,
        ...(h.state === 'invalidated' && h.reason ? { reason: h.reason } : {}),
        ...(detail ? { detail } : {}),
        ...(h.state === 'invalidated' && h.changed ? { changed: h.changed } : {}),
      }) as TimelineEvent & { kind: 'handle' };
      out.push(ev);
    }
    return out;
  }

  /**
   * Events, oldest first, of one target (its handles, and every fault and process event) or all; with
   * `after` (a `next` of before), only those added since, wherever they sort (those already dropped are gone).
   */
  list(target?: string, after = 0): TimelineEvent[] {
    return this.events.filter(
      (e) => e.seq > after && (target === undefined || e.kind !== 'handle' || e.target === target),
    );
  }

  /** The cursor for `list`: how many events were ever added. */
  get next(): number {
    return this.added;
  }
}

/** One event as a line: the time (UTC), then what happened. */
export function formatEvent(e: TimelineEvent): string {
  const t = new Date(e.at).toISOString().slice(11, 23);
  switch (e.kind) {
    case 'fault':
      return `${t}  fault    ${e.what}`;
    case 'refused':
      return `${t}  refused  ${e.what} (${e.code}: ${e.message})`;
    case 'process':
      return `${t}  process  ${e.id} ${e.what}${e.detail ? ` (${e.detail})` : ''}`;
    case 'handle':
      return `${t}  handle   ${`${e.node}/${e.app}`.padEnd(14)} ${e.target}  ${e.from} -> ${e.to}${e.reason ? ` ${e.reason}` : ''}${e.detail ? ` (${e.detail})` : ''}${e.requestId ? `  requestId ${e.requestId}` : ''}${e.changed ? `  changed: ${e.changed}` : ''}`;
  }
}
