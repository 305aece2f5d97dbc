/**
 * The local inspector: the launcher receives every child process's inspection events (the
 * @statelyai/inspect WebSocket format) on /inspect, keeps a bounded recent history, and fans it out
 * to browsers on /stream, replaying the history to each new one (the actors still running, or left by a
 * process that is down; an actor that ended is forgotten). It serves the page (all assets from
 * this package, nothing from the internet) and the same commands as the control endpoint under /api.
 *
 * Locked (see http-guard.ts): everything answers only a loopback Host and no foreign Origin; /api and
 * /stream need the control token (the page has it from the fragment of the address `up` printed);
 * /inspect takes only the cluster's own processes, each with the credential of its name, in
 * messages of at most 1 MiB, and what is kept for late browsers is bounded in bytes.
 */
import { readBody } from './http-body.js';
import { bearer, checkHostOrigin, checkToken, newToken, refuse, refuseUpgrade, type Refusal } from './http-guard.js';
import { MAX_EVENT_CHARS, MAX_INSPECT_MESSAGE, MESSAGE_EVENT } from './inspect.js';
import { createHmac, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { capConnections, HTTP_TIMEOUTS } from './http-limits.js';
import { existsSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { WebSocketServer, type WebSocket } from 'ws';
import { listenOn } from './operator-error.js';

export { MAX_INSPECT_MESSAGE } from './inspect.js';

/** The package root: two levels up when built (dist/cluster), one when run from the sources. */
const ROOT =
  ['../../', '../']
    .map((up) => fileURLToPath(new URL(up, import.meta.url)))
    .find((d) => existsSync(`${d}inspector/index.html`)) ?? '';
const ASSETS: Record<string, [string, string]> = {
  '/': ['inspector/index.html', 'text/html; charset=utf-8'],
  '/inspector.js': ['inspector/inspector.js', 'text/javascript; charset=utf-8'],
  '/elk.js': ['node_modules/elkjs/lib/elk.bundled.js', 'text/javascript; charset=utf-8'],
};
/** Events kept for a late browser (besides actor registrations), and their characters. */
const HISTORY = 5000;
const HISTORY_CHARS = 8 * 1024 * 1024;
/** Protocol messages kept for a late browser, apart (so they never push the actors' events out), and their characters. */
const MESSAGES = 2000;
const MESSAGE_CHARS = 2 * 1024 * 1024;
/** Actor registrations kept, and their characters (a registration is about 2 KiB). */
const MAX_ACTORS = 20_000;
export const MAX_ACTOR_CHARS = 16 * 1024 * 1024;
/** A browser this far behind (bytes queued to it) is dropped; its page reconnects and gets the replay. */
const MAX_BROWSER_BACKLOG = 32 * 1024 * 1024;
const HEADERS = {
  'cache-control': 'no-store',
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
};

export interface InspectorHooks {
  /** Someone started or stopped watching. */
  watching(on: boolean): void;
  status(): unknown;
  command(method: string, path: string, body: string): Promise<{ ok: boolean }>;
  /** Also hand every event on (e.g. to the Stately inspector), with ids made unique across processes. */
  forward?: (event: Record<string, unknown>) => void;
}

export class InspectorServer {
  private server: Server | undefined;
  private port = 0;
  /** Processes send batches of events; browsers send nothing. */
  private readonly processes = new WebSocketServer({ noServer: true, maxPayload: MAX_INSPECT_MESSAGE });
  private readonly pages = new WebSocketServer({ noServer: true, maxPayload: 4 * 1024 });
  private readonly browsers = new Set<WebSocket>();
  /** Actor registrations are kept whole (bounded), so a late browser knows every actor's machine. */
  private readonly actors = new Map<string, string>();
  private actorChars = 0;
  private readonly recent = new Recent(HISTORY, HISTORY_CHARS);
  private readonly messages = new Recent(MESSAGES, MESSAGE_CHARS);
  private outbox: string[] = [];
  /** The key of the processes' inspection credentials; it never leaves this process. */
  private readonly inspectKey = randomBytes(32);
  /** The token of /api and /stream. */
  readonly token: string;
  /** Events not kept: over MAX_EVENT_CHARS. */
  dropped = 0;
  url = '';

  constructor(
    private readonly hooks: InspectorHooks,
    opts: { token?: string } = {},
  ) {
    this.token = opts.token ?? newToken();
  }

  get watchers(): number {
    return this.browsers.size;
  }

  /** The page's address, with the token in its fragment (a browser sends no fragment to any server). */
  get pageUrl(): string {
    return `${this.url}/#token=${this.token}`;
  }

  /** The credential a process called `name` connects to /inspect with (handed to it over IPC). */
  processCredential(name: string): string {
    return createHmac('sha256', this.inspectKey).update(name).digest('base64url');
  }

  async listen(port: number): Promise<string> {
    this.server = createServer(HTTP_TIMEOUTS, (req, res) => {
      const path = (req.url ?? '/').split('?')[0]!;
      const api = path.startsWith('/api/');
      const refusal =
        checkHostOrigin(req, this.port, 'same') ?? (api ? checkToken(bearer(req), this.token) : undefined);
      if (refusal) {
        req.resume();
        return refuse(res, refusal);
      }
      const asset = ASSETS[path];
      if (req.method === 'GET' && asset) return sendFile(res, asset[0], asset[1]);
      if (req.method === 'GET' && path === '/api/status') {
        res.writeHead(200, { 'content-type': 'application/json', ...HEADERS }).end(JSON.stringify(this.hooks.status()));
        return;
      }
      if (req.method === 'GET' && path === '/api/events') {
        // The launcher's timeline, the query (target, after) as the control endpoint takes it.
        const query = (req.url ?? '').slice(path.length);
        void this.hooks.command('GET', `/events${query}`, '').then((r) => {
          res.writeHead(r.ok ? 200 : 400, { 'content-type': 'application/json', ...HEADERS }).end(JSON.stringify(r));
        });
        return;
      }
      if (req.method === 'POST' && api) {
        void readBody(req, res).then(async (body) => {
          if (body === undefined) return;
          const r = await this.hooks.command('POST', path.slice(4), body);
          res.writeHead(r.ok ? 200 : 400, { 'content-type': 'application/json', ...HEADERS }).end(JSON.stringify(r));
        });
        return;
      }
      req.resume();
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
    });
    this.server.on('upgrade', (req, socket, head) => {
      const u = new URL(req.url ?? '/', 'http://localhost');
      const refusal = this.admit(req, u);
      if (refusal) return refuseUpgrade(socket, refusal);
      if (u.pathname === '/inspect')
        this.processes.handleUpgrade(req, socket, head, (ws) => this.fromProcess(ws, u.searchParams.get('from') ?? ''));
      else this.pages.handleUpgrade(req, socket, head, (ws) => this.toBrowser(ws));
    });
    await listenOn(capConnections(this.server), port, '127.0.0.1', 'the inspector');
    this.port = (this.server.address() as net.AddressInfo).port;
    this.url = `http://127.0.0.1:${this.port}`;
    return this.url;
  }

  /**
   * Who may open a WebSocket: on /stream a page with the token (in the query: a browser cannot set
   * headers on a WebSocket) or a program with it in a header; on /inspect a process with the
   * credential of the name it reports under, and never a browser.
   */
  private admit(req: IncomingMessage, u: URL): Refusal | undefined {
    if (u.pathname === '/stream')
      return (
        checkHostOrigin(req, this.port, 'same') ?? checkToken(u.searchParams.get('token') ?? bearer(req), this.token)
      );
    if (u.pathname === '/inspect') {
      const from = u.searchParams.get('from') ?? '';
      return (
        checkHostOrigin(req, this.port, 'none') ??
        checkToken(bearer(req), this.processCredential(from), `the inspection credential for ${JSON.stringify(from)}`)
      );
    }
    return { status: 404, code: 'INVALID_ARGUMENT', message: `no WebSocket endpoint ${u.pathname}` };
  }

  /** Each message from a process is a JSON array of inspection events (or one event). */
  private fromProcess(ws: WebSocket, from: string): void {
    ws.on('error', () => undefined);
    ws.on('message', (data) => {
      let parsed: unknown;
      try {
        const bytes = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
        parsed = JSON.parse(bytes.toString());
      } catch {
        return; // not ours to crash over
      }
      for (const ev of Array.isArray(parsed) ? parsed : [parsed]) this.fromProcessEvent(ev, from);
    });
  }

  /** An event of the launcher's own under the name `from` (its agent's protocol messages). */
  report(from: string, event: Record<string, unknown>): void {
    this.fromProcessEvent(event, from);
  }

  private fromProcessEvent(raw: unknown, from: string): void {
    if (typeof raw !== 'object' || raw === null) return;
    const ev = raw as Record<string, unknown>;
    const message = ev.type === MESSAGE_EVENT;
    if (typeof ev.type !== 'string' || (!message && typeof ev.sessionId !== 'string')) return;
    ev.process = from;
    const line = JSON.stringify(ev);
    if (line.length > MAX_EVENT_CHARS) {
      this.dropped++;
      return;
    }
    if (ev.type === '@xstate.actor')
      this.keepActor(`${from}:${String(ev.sessionId)}`, line); // actor ids are per process
    else if (message) this.messages.push(line);
    else if (ev.type === '@xstate.snapshot' && ended(ev.snapshot)) {
      // The actor is gone (a handle closed, a session ended): a browser that comes later never sees it.
      this.dropActor(`${from}:${String(ev.sessionId)}`);
      this.recent.push(line);
    } else this.recent.push(line);
    if (this.browsers.size > 0) this.toBrowsers(line);
    // The Stately inspector knows XState's events only.
    if (this.hooks.forward && !message) {
      const g = { ...ev };
      for (const k of ['sessionId', 'rootId', 'parentId', 'sourceId'])
        if (typeof g[k] === 'string') g[k] = `${from}:${String(g[k])}`;
      this.hooks.forward(g);
    }
  }

  /** Kept newest last; the oldest go first when the count or the characters are over their bound. */
  private keepActor(key: string, line: string): void {
    const old = this.actors.get(key);
    if (old !== undefined) {
      this.actors.delete(key);
      this.actorChars -= old.length;
    }
    this.actors.set(key, line);
    this.actorChars += line.length;
    while (this.actors.size > MAX_ACTORS || this.actorChars > MAX_ACTOR_CHARS) {
      const [k, v] = this.actors.entries().next().value!;
      this.actors.delete(k);
      this.actorChars -= v.length;
    }
  }

  private dropActor(key: string): void {
    const old = this.actors.get(key);
    if (old === undefined) return;
    this.actors.delete(key);
    this.actorChars -= old.length;
  }

  /** Browsers get a JSON array of events per event-loop turn. */
  private toBrowsers(line: string): void {
    this.outbox.push(line);
    if (this.outbox.length > 1) return;
    setImmediate(() => {
      const frame = `[${this.outbox.join(',')}]`;
      this.outbox = [];
      for (const b of this.browsers) {
        if (b.bufferedAmount > MAX_BROWSER_BACKLOG) b.terminate();
        else b.send(frame);
      }
    });
  }

  private toBrowser(ws: WebSocket): void {
    ws.on('error', () => undefined);
    // History first (every actor, then the recent events and protocol messages), then live.
    const history = [...this.actors.values(), ...this.recent.replay(), ...this.messages.replay()];
    for (let i = 0; i < history.length; i += 1000) ws.send(`[${history.slice(i, i + 1000).join(',')}]`);
    this.browsers.add(ws);
    if (this.browsers.size === 1) this.hooks.watching(true);
    ws.on('close', () => {
      this.browsers.delete(ws);
      if (this.browsers.size === 0) this.hooks.watching(false);
    });
  }

  async close(): Promise<void> {
    for (const c of [...this.pages.clients, ...this.processes.clients]) c.terminate();
    await closeServer(this.server);
  }
}

/** Whether a snapshot is an actor's last: it reached a final state, or was stopped. */
function ended(snapshot: unknown): boolean {
  const status =
    typeof snapshot === 'object' && snapshot !== null ? (snapshot as { status?: unknown }).status : undefined;
  return status === 'done' || status === 'stopped' || status === 'error';
}

/** The newest lines, at most `max` of them and `maxChars` characters, for the replay to a new browser. */
class Recent {
  private readonly lines: string[] = [];
  private chars = 0;

  constructor(
    private readonly max: number,
    private readonly maxChars: number,
  ) {}

  push(line: string): void {
    this.lines.push(line);
    this.chars += line.length;
    // Trimmed in chunks: cutting one line off the front per event would copy the whole history each time.
    if (this.lines.length < 2 * this.max && this.chars < 2 * this.maxChars) return;
    const from = this.replayFrom();
    for (let i = 0; i < from; i++) this.chars -= this.lines[i]!.length;
    this.lines.splice(0, from);
  }

  replay(): string[] {
    return this.lines.slice(this.replayFrom());
  }

  /** Where the replay starts: the newest `max` lines, at most `maxChars` of them. */
  private replayFrom(): number {
    let i = this.lines.length;
    let chars = 0;
    while (i > 0 && this.lines.length - i < this.max && chars + this.lines[i - 1]!.length <= this.maxChars)
      chars += this.lines[--i]!.length;
    return i;
  }
}

/** A file of this package, or 500 if it is missing. */
function sendFile(res: ServerResponse, path: string, type: string): void {
  let data: Buffer;
  try {
    data = readFileSync(ROOT + path);
  } catch {
    res.writeHead(500, { 'content-type': 'text/plain' }).end('asset missing');
    return;
  }
  res.writeHead(200, { 'content-type': type, ...HEADERS }).end(data);
}

/** Stop listening and end every connection still open (a kept-alive one would keep the process running). */
async function closeServer(server: Server | undefined): Promise<void> {
  if (!server?.listening) return;
  const closed = new Promise<void>((r) => server.close(() => r()));
  server.closeAllConnections();
  await closed;
}

/**
 * The relay to the public Stately inspector (`up --stately`): a page that embeds it (stately.ai,
 * online) and hands it every event, last 200 replayed to a page that arrives later. It stands in
 * for @statelyai/inspect's createInspectorServer, which cannot be locked: it takes neither a host
 * nor a server (it listens on every interface), relays whatever any client sends to every other
 * client with no token or Origin check, and its stop() leaves connected sockets open (the launcher
 * never exited). This one listens on 127.0.0.1, serves its page to a loopback Host only, and takes
 * the event socket only from that page (its own Origin) with the control token.
 */
export class StatelyRelay {
  private server: Server | undefined;
  private readonly wss = new WebSocketServer({ noServer: true, maxPayload: 4 * 1024 });
  private readonly recent: string[] = [];
  private port = 0;
  readonly token: string;
  url = '';

  constructor(token = newToken()) {
    this.token = token;
  }

  /** The page's address, with the token in its fragment. */
  get pageUrl(): string {
    return `${this.url}/#token=${this.token}`;
  }

  /** Where it listens. */
  get address(): { address: string; port: number } | undefined {
    const a = this.server?.address();
    return a && typeof a === 'object' ? { address: a.address, port: a.port } : undefined;
  }

  async listen(port: number): Promise<string> {
    this.server = createServer(HTTP_TIMEOUTS, (req, res) => {
      req.resume();
      const refusal = checkHostOrigin(req, this.port, 'same');
      if (refusal) return refuse(res, refusal);
      if (req.method !== 'GET' || (req.url ?? '/').split('?')[0] !== '/')
        return void res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      sendFile(res, 'inspector/stately.html', 'text/html; charset=utf-8');
    });
    this.server.on('upgrade', (req, socket, head) => {
      const u = new URL(req.url ?? '/', 'http://localhost');
      const refusal =
        u.pathname === '/events'
          ? (checkHostOrigin(req, this.port, 'same') ?? checkToken(u.searchParams.get('token'), this.token))
          : ({
              status: 404,
              code: 'INVALID_ARGUMENT',
              message: `no WebSocket endpoint ${u.pathname}`,
            } satisfies Refusal);
      if (refusal) return refuseUpgrade(socket, refusal);
      this.wss.handleUpgrade(req, socket, head, (ws) => {
        ws.on('error', () => undefined);
        for (const line of this.recent) ws.send(line);
      });
    });
    await listenOn(capConnections(this.server), port, '127.0.0.1', 'the Stately relay');
    this.port = (this.server.address() as net.AddressInfo).port;
    this.url = `http://127.0.0.1:${this.port}`;
    return this.url;
  }

  /** One event to every page (one message each, as the Stately inspector takes them). */
  send(event: Record<string, unknown>): void {
    const line = JSON.stringify(event);
    this.recent.push(line);
    if (this.recent.length > 200) this.recent.shift();
    for (const c of this.wss.clients)
      if (c.readyState === c.OPEN && c.bufferedAmount <= MAX_BROWSER_BACKLOG) c.send(line);
  }

  async close(): Promise<void> {
    for (const c of this.wss.clients) c.terminate();
    await closeServer(this.server);
  }
}
