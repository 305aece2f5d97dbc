/**
 * Inspection of a child process's actors: XState inspection events, converted by @statelyai/inspect,
 * go to the launcher over one WebSocket in batches, only while somebody watches (the launcher says so), with
 * bytes and long strings cut down before they leave the process. Actor registrations always go, so a
 * browser that arrives later still knows every actor and its machine. The launcher takes the
 * connection only with this process's inspection credential (from its configuration, over IPC).
 */
import { createInspector } from '@statelyai/inspect';
import { WebSocket } from 'ws';
import type { ActorRefLike, InspectionEvent } from 'xstate';
import { zeroMask } from '../transport/ws.js';

/** The largest message the launcher's /inspect takes, in bytes: a larger one closes the connection (1009). */
export const MAX_INSPECT_MESSAGE = 1024 * 1024;
/** The largest event the launcher keeps, in characters (real ones are a few KiB): a larger one is not sent. */
export const MAX_EVENT_CHARS = 256 * 1024;
/** A batch is split into messages of at most this many characters (a character is at most 3 bytes of UTF-8). */
const MESSAGE_CHARS = Math.floor(MAX_INSPECT_MESSAGE / 3);

function sanitize(value: unknown, depth = 0): unknown {
  if (value instanceof Uint8Array) return `<${value.length} bytes>`;
  if (typeof value === 'string') return value.length > 200 ? `${value.slice(0, 200)}…` : value;
  if (typeof value === 'function') return undefined;
  if (value === null || typeof value !== 'object' || depth > 4) return typeof value === 'object' && value !== null ? '…' : value;
  if (Array.isArray(value)) return value.slice(0, 20).map((v) => sanitize(v, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) out[k] = sanitize(v, depth + 1);
  return out;
}

type Adapter = Parameters<typeof createInspector>[0];
type StatelyEvent = Parameters<Adapter['send']>[0];

/**
 * Sends inspection events to the launcher as JSON arrays, one WebSocket message per event-loop
 * turn however many events the turn made (a busy node makes thousands a second). Events made
 * while the launcher is unreachable wait, the newest `maxDeferred` of them.
 */
class BatchingAdapter implements Adapter {
  private ws: WebSocket | undefined;
  private open = false;
  private stopped = false;
  private batch: string[] = [];
  private scheduled = false;
  /** Events that could not be serialised (a cycle the sanitiser missed) or are too large to keep; they are skipped. */
  dropped = 0;

  constructor(private readonly url: string, private readonly maxDeferred: number, private readonly credential: string | undefined) {}

  start(): void {
    if (this.stopped) return;
    // The credential goes in a header, never in the URL (or the command line).
    const headers = this.credential ? { authorization: `Bearer ${this.credential}` } : {};
    const ws = new WebSocket(this.url, { generateMask: zeroMask, headers });
    this.ws = ws;
    ws.on('open', () => {
      this.open = true;
      this.flush();
    });
    ws.on('error', () => undefined);
    ws.on('close', () => {
      this.open = false;
      if (!this.stopped) setTimeout(() => this.start(), 2000).unref();
    });
  }

  stop(): void {
    this.stopped = true;
    this.ws?.close();
  }

  send(event: StatelyEvent): void {
    let line: string;
    try {
      line = JSON.stringify(event);
    } catch {
      this.dropped++;
      return;
    }
    if (line.length > MAX_EVENT_CHARS) {
      this.dropped++;
      return;
    }
    this.batch.push(line);
    if (!this.open) {
      if (this.batch.length > this.maxDeferred) this.batch.splice(0, this.batch.length - this.maxDeferred);
      return;
    }
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
  }

  private flush(): void {
    this.scheduled = false;
    if (!this.open || this.batch.length === 0) return;
    // One message per turn, unless that would pass the launcher's cap on a message.
    let from = 0;
    let chars = 0;
    for (let i = 0; i < this.batch.length; i++) {
      chars += this.batch[i]!.length + 1;
      if (chars > MESSAGE_CHARS && i > from) {
        this.ws!.send(`[${this.batch.slice(from, i).join(',')}]`);
        from = i;
        chars = this.batch[i]!.length + 1;
      }
    }
    this.ws!.send(`[${(from === 0 ? this.batch : this.batch.slice(from)).join(',')}]`);
    this.batch = [];
  }
}

export interface ProcessInspector {
  inspect: (ev: InspectionEvent) => void;
  watch(on: boolean): void;
  stop(): void;
}

/** Inspection to the launcher at `url` (its /inspect), with this process's credential for it. */
export function processInspector(url: string, credential?: string): ProcessInspector {
  const inspector = createInspector(new BatchingAdapter(url, 500, credential), {
    sanitizeEvent: (e) => sanitize(e) as typeof e,
    sanitizeContext: (c) => sanitize(c) as typeof c,
  });
  inspector.start();
  let watching = false;
  const live = new Set<ActorRefLike>();
  return {
    inspect: (ev) => {
      if (ev.type === '@xstate.actor') {
        live.add(ev.actorRef);
        inspector.inspect.next?.(ev);
        return;
      }
      if (!watching) return;
      if (ev.type === '@xstate.snapshot' && (ev.snapshot as { status?: string }).status !== 'active') live.delete(ev.actorRef);
      if (ev.type === '@xstate.snapshot' || ev.type === '@xstate.event') inspector.inspect.next?.(ev);
    },
    watch(on) {
      if (on && !watching) {
        // Somebody started watching: tell them where every actor is now.
        for (const ref of live) {
          const snapshot = ref.getSnapshot() as { status?: string };
          if (snapshot.status !== 'active') {
            live.delete(ref);
            continue;
          }
          inspector.inspect.next?.({ type: '@xstate.snapshot', actorRef: ref, rootId: ref.sessionId, snapshot, event: { type: 'xstate.resync' } } as unknown as InspectionEvent);
        }
      }
      watching = on;
    },
    stop: () => inspector.stop(),
  };
}
