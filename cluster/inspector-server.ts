/**
 * The local inspector: the launcher receives every child process's inspection events (the
 * @statelyai/inspect WebSocket format) on /inspect, keeps a bounded recent history, and fans it out
 * to browsers on /stream, replaying the history to each new one. It serves the page (all assets from
 * this package, nothing from the internet) and the same commands as the control endpoint under /api.
 */
import { readBody } from './http-body.js';
import { createServer, type Server } from 'node:http';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { WebSocketServer, type WebSocket } from 'ws';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const ASSETS: Record<string, [string, string]> = {
  '/': ['inspector/index.html', 'text/html; charset=utf-8'],
  '/inspector.js': ['inspector/inspector.js', 'text/javascript; charset=utf-8'],
  '/elk.js': ['node_modules/elkjs/lib/elk.bundled.js', 'text/javascript; charset=utf-8'],
};
const HISTORY = 5000;

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
  private readonly wss = new WebSocketServer({ noServer: true, maxPayload: 4 * 1024 * 1024 });
  private readonly browsers = new Set<WebSocket>();
  /** Actor registrations are kept whole (bounded), so a late browser knows every actor's machine. */
  private readonly actors = new Map<string, string>();
  private readonly recent: string[] = [];
  private outbox: string[] = [];
  url = '';

  constructor(private readonly hooks: InspectorHooks) {}

  get watchers(): number {
    return this.browsers.size;
  }

  async listen(port: number): Promise<string> {
    this.server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0]!;
      const asset = ASSETS[path];
      if (req.method === 'GET' && asset) {
        try {
          res.writeHead(200, { 'content-type': asset[1], 'cache-control': 'no-store' });
          res.end(readFileSync(ROOT + asset[0]));
        } catch {
          res.writeHead(500).end('asset missing');
        }
        return;
      }
      if (req.method === 'GET' && path === '/api/status') {
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(this.hooks.status()));
        return;
      }
      if (req.method === 'POST' && path.startsWith('/api/')) {
        void readBody(req, res).then(async (body) => {
          if (body === undefined) return;
          const r = await this.hooks.command('POST', path.slice(4), body);
          res.writeHead(r.ok ? 200 : 400, { 'content-type': 'application/json' }).end(JSON.stringify(r));
        });
        return;
      }
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
    });
    this.server.on('upgrade', (req, socket, head) => {
      const u = new URL(req.url ?? '/', 'http://localhost');
      if (u.pathname === '/inspect') this.wss.handleUpgrade(req, socket, head, (ws) => this.fromProcess(ws, u.searchParams.get('from') ?? '?'));
      else if (u.pathname === '/stream') this.wss.handleUpgrade(req, socket, head, (ws) => this.toBrowser(ws));
      else socket.destroy();
    });
    await new Promise<void>((r) => this.server!.listen(port, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as net.AddressInfo).port}`;
    return this.url;
  }

  /** Each message from a process is a JSON array of inspection events (or one event). */
  private fromProcess(ws: WebSocket, from: string): void {
    ws.on('error', () => undefined);
    ws.on('message', (data) => {
      let parsed: unknown;
      try {
        parsed = JSON.parse(data.toString());
      } catch {
        return; // not ours to crash over
      }
      for (const ev of Array.isArray(parsed) ? parsed : [parsed]) this.fromProcessEvent(ev, from);
    });
  }

  private fromProcessEvent(raw: unknown, from: string): void {
    if (typeof raw !== 'object' || raw === null) return;
    const ev = raw as Record<string, unknown>;
    if (typeof ev.type !== 'string' || typeof ev.sessionId !== 'string') return;
    ev.process = from;
    const line = JSON.stringify(ev);
    if (ev.type === '@xstate.actor') {
      this.actors.set(`${from}:${ev.sessionId}`, line); // actor ids are per process
      if (this.actors.size > 20_000) this.actors.delete(this.actors.keys().next().value!);
    } else {
      this.recent.push(line);
      // Trimmed in chunks: cutting one line off the front per event would copy the whole history each time.
      if (this.recent.length >= 2 * HISTORY) this.recent.splice(0, this.recent.length - HISTORY);
    }
    if (this.browsers.size > 0) this.toBrowsers(line);
    if (this.hooks.forward) {
      const g = { ...ev };
      for (const k of ['sessionId', 'rootId', 'parentId', 'sourceId']) if (typeof g[k] === 'string') g[k] = `${from}:${String(g[k])}`;
      this.hooks.forward(g);
    }
  }

  /** Browsers get a JSON array of events per event-loop turn. */
  private toBrowsers(line: string): void {
    this.outbox.push(line);
    if (this.outbox.length > 1) return;
    setImmediate(() => {
      const frame = `[${this.outbox.join(',')}]`;
      this.outbox = [];
      for (const b of this.browsers) b.send(frame);
    });
  }

  private toBrowser(ws: WebSocket): void {
    ws.on('error', () => undefined);
    // History first (every actor, then the recent events), then live.
    const history = [...this.actors.values(), ...this.recent.slice(-HISTORY)];
    for (let i = 0; i < history.length; i += 1000) ws.send(`[${history.slice(i, i + 1000).join(',')}]`);
    this.browsers.add(ws);
    if (this.browsers.size === 1) this.hooks.watching(true);
    ws.on('close', () => {
      this.browsers.delete(ws);
      if (this.browsers.size === 0) this.hooks.watching(false);
    });
  }

  async close(): Promise<void> {
    for (const b of this.browsers) b.terminate();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }
}
