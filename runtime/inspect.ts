/**
 * Inspection of a child process's actors: XState inspection events, converted by @statelyai/inspect,
 * go to the launcher over one WebSocket in batches, only while somebody watches (the launcher says so), with
 * bytes and long strings cut down before they leave the process. Actor registrations always go, so a
 * browser that arrives later still knows every actor and its machine, and so does each actor's end (its
 * last snapshot, done or stopped), so the launcher forgets an actor that is gone. The launcher takes the
 * connection only with this process's inspection credential (from its configuration, over IPC).
 *
 * A node agent's protocol messages (what it sends to a replica and what comes back) go the same way,
 * while somebody watches, as events of their own (MESSAGE_EVENT): each as its type and what it is
 * about, never its bytes or proofs.
 */
import { createInspector } from '@statelyai/inspect';
import { WebSocket } from 'ws';
import type { ActorRefLike, InspectionEvent } from 'xstate';
import type { Message } from '../transport/messages.js';
import type { Connection, Transport } from '../transport/types.js';
import { zeroMask } from '../transport/ws.js';

/** The largest message the launcher's /inspect takes, in bytes: a larger one closes the connection (1009). */
export const MAX_INSPECT_MESSAGE = 1024 * 1024;
/** The largest event the launcher keeps, in characters (real ones are a few KiB): a larger one is not sent. */
export const MAX_EVENT_CHARS = 256 * 1024;
/** A batch is split into messages of at most this many characters (a character is at most 3 bytes of UTF-8). */
const MESSAGE_CHARS = Math.floor(MAX_INSPECT_MESSAGE / 3);
/** The type of the event that reports one protocol message between a node agent and a replica. */
export const MESSAGE_EVENT = '@safe-resume.message';

function sanitize(value: unknown, depth = 0): unknown {
  if (value instanceof Uint8Array) return `<${value.length} bytes>`;
  if (typeof value === 'string') return value.length > 200 ? `${value.slice(0, 200)}…` : value;
  if (typeof value === 'function') return undefined;
  if (value === null || typeof value !== 'object' || depth > 4)
    return typeof value === 'object' && value !== null ? '…' : value;
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

  constructor(
    private readonly url: string,
    private readonly maxDeferred: number,
    private readonly credential: string | undefined,
  ) {}

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

  send(event: StatelyEvent | ProtocolEvent): void {
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
  /** This process's protocol messages, for `watchedTransport`. */
  messages: MessageWatch;
  watch(on: boolean): void;
  stop(): void;
}

/** Inspection to the launcher at `url` (its /inspect), with this process's credential for it. */
export function processInspector(url: string, credential?: string): ProcessInspector {
  const adapter = new BatchingAdapter(url, 500, credential);
  const inspector = createInspector(adapter, {
    sanitizeEvent: (e) => sanitize(e) as typeof e,
    sanitizeContext: (c) => sanitize(c) as typeof c,
  });
  inspector.start();
  let watching = false;
  const live = new Set<ActorRefLike>();
  return {
    messages: {
      get watching() {
        return watching;
      },
      message: (m) => adapter.send({ type: MESSAGE_EVENT, createdAt: String(Date.now()), ...m }),
    },
    inspect: (ev) => {
      if (ev.type === '@xstate.actor') {
        live.add(ev.actorRef);
        inspector.inspect.next?.(ev);
        return;
      }
      const ended = ev.type === '@xstate.snapshot' && (ev.snapshot as { status?: string }).status !== 'active';
      if (ended) live.delete(ev.actorRef);
      // An actor that ended is told even while nobody watches: the launcher keeps every registration
      // for a browser that comes later, and drops it only when told the actor is gone.
      if (!watching && !ended) return;
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
          inspector.inspect.next?.({
            type: '@xstate.snapshot',
            actorRef: ref,
            rootId: ref.sessionId,
            snapshot,
            event: { type: 'xstate.resync' },
          } as unknown as InspectionEvent);
        }
      }
      watching = on;
    },
    stop: () => inspector.stop(),
  };
}

/** What the inspector shows of one protocol message: its type and what it is about, never its bytes or proofs. */
export interface MessageSummary {
  type: string;
  /** The request's correlation id, on a request and on its answer. */
  id?: number;
  /** The target(s) and requestId(s) it is about (an answer: those of its request); several are space-separated. */
  target?: string;
  requestId?: string;
  /** A few words more: a write's seq, an error's code, a resume's verdicts. */
  detail?: string;
}

/** One protocol message, as the node agent saw it: sent to the replica `peer` (out) or received from it (in). */
export interface ProtocolMessage {
  direction: 'out' | 'in';
  peer: string;
  message: MessageSummary;
}

export type ProtocolEvent = { type: typeof MESSAGE_EVENT; createdAt: string } & ProtocolMessage;

/** Where a node agent's protocol messages go, while somebody watches. */
export interface MessageWatch {
  readonly watching: boolean;
  message(m: ProtocolMessage): void;
}

/** Requests remembered per connection for their answers (an unanswered one is forgotten past this many). */
const MAX_ASKED = 4096;
const cut = (s: string, n = 120) => (s.length > n ? `${s.slice(0, n)}…` : s);
const joined = (xs: string[]) => cut([...new Set(xs)].slice(0, 20).join(' '), 400);

/** The summary of a message; an answer carries the target and requestId of the request it answers. */
export function summarize(msg: Message, request?: MessageSummary): MessageSummary {
  const about = (target: string, requestId: string) => ({ target: cut(target, 200), requestId });
  const answer = request
    ? {
        ...(request.target !== undefined ? { target: request.target } : {}),
        ...(request.requestId !== undefined ? { requestId: request.requestId } : {}),
      }
    : {};
  switch (msg.type) {
    case 'open':
      return {
        type: msg.type,
        id: msg.id,
        ...about(msg.target, msg.requestId),
        detail: `${msg.mode}${msg.size !== undefined ? ` size ${msg.size}` : ''}`,
      };
    case 'resume':
      return {
        type: msg.type,
        id: msg.id,
        target: joined(msg.items.map((i) => i.target)),
        requestId: joined(msg.items.map((i) => i.requestId)),
        detail: `${msg.items.length} handle${msg.items.length === 1 ? '' : 's'}`,
      };
    case 'write':
      return {
        type: msg.type,
        id: msg.id,
        ...about(msg.target, msg.requestId),
        detail: `seq ${msg.seq}, ${msg.data.length} bytes at ${msg.offset}`,
      };
    case 'read':
      return {
        type: msg.type,
        id: msg.id,
        ...about(msg.target, msg.requestId),
        detail: `${msg.length} bytes at ${msg.offset}`,
      };
    case 'close':
      return { type: msg.type, id: msg.id, ...about(msg.target, msg.requestId) };
    case 'opened':
      return { type: msg.type, id: msg.id, ...answer, detail: `version ${msg.version}` };
    case 'resumed':
      return {
        type: msg.type,
        id: msg.id,
        target: joined(msg.results.map((r) => r.target)),
        requestId: joined(msg.results.map((r) => r.requestId)),
        detail: cut(
          msg.results.map((r) => (r.granted ? 'granted' : `denied ${r.reason ?? r.code ?? ''}`.trim())).join(', '),
        ),
      };
    case 'written':
      return { type: msg.type, id: msg.id, ...answer, detail: `seq ${msg.seq}, version ${msg.version}` };
    case 'data':
      return { type: msg.type, id: msg.id, ...answer, detail: `${msg.data.length} bytes, version ${msg.version}` };
    case 'closed':
      return { type: msg.type, id: msg.id, ...answer };
    case 'error':
      return {
        type: msg.type,
        ...(msg.id !== undefined ? { id: msg.id } : {}),
        ...answer,
        detail: cut(`${msg.code}: ${msg.message}`),
      };
    case 'revoked':
      return { type: msg.type, ...about(msg.target, msg.requestId), detail: msg.reason };
    case 'notice':
      return { type: msg.type, detail: msg.kind };
    case 'hello':
      return { type: msg.type, detail: msg.node };
    case 'welcome':
      return { type: msg.type, detail: `session ${cut(msg.session, 24)}` };
    case 'prove':
      return { type: msg.type, detail: msg.principal };
    default:
      // challenge, auth, ping, pong: the type says it all (and a proof is nobody's business).
      return { type: msg.type };
  }
}

/**
 * `inner`, with every protocol message of its connections reported to `watch` while somebody
 * watches: sent ones once the connection took them, received ones as they arrive. `peer` names the
 * replica at an address (the launcher knows which is which).
 */
export function watchedTransport(
  inner: Transport,
  watch: MessageWatch,
  peer: (url: string) => string | undefined,
): Transport {
  return {
    listen: (opts) => inner.listen(opts),
    connect: async (url, opts) => watchedConnection(await inner.connect(url, opts), watch, peer(url) ?? url),
  };
}

function watchedConnection(conn: Connection, watch: MessageWatch, peer: string): Connection {
  const asked = new Map<number, MessageSummary>();
  const note = (direction: 'out' | 'in', msg: Message) => {
    if (!watch.watching) return asked.clear();
    const id = 'id' in msg ? msg.id : undefined;
    let request: MessageSummary | undefined;
    if (id !== undefined && direction === 'in') {
      request = asked.get(id);
      asked.delete(id);
    }
    const m = summarize(msg, request);
    if (id !== undefined && direction === 'out') {
      asked.set(id, m);
      if (asked.size > MAX_ASKED) asked.delete(asked.keys().next().value!);
    }
    watch.message({ direction, peer, message: m });
  };
  return {
    get remote() {
      return conn.remote;
    },
    get isOpen() {
      return conn.isOpen;
    },
    get bufferedBytes() {
      return conn.bufferedBytes;
    },
    send: (msg) => {
      const sent = conn.send(msg);
      if (sent) note('out', msg);
      return sent;
    },
    close: (code, reason) => conn.close(code, reason),
    terminate: () => conn.terminate(),
    onFrame: (cb) =>
      conn.onFrame((frame) => {
        if (frame.ok) note('in', frame.msg);
        cb(frame);
      }),
    onClose: (cb) => conn.onClose(cb),
    trust: () => conn.trust(),
    protect: (key, role) => conn.protect(key, role),
    pauseReading: () => conn.pauseReading(),
    resumeReading: () => conn.resumeReading(),
    onDrain: (cb) => conn.onDrain(cb),
  };
}
