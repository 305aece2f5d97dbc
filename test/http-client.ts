/**
 * Requests as a hostile local page or process would send them: any Host, any Origin, any headers
 * (fetch would not let a test set Host), and WebSocket upgrades that report how they were answered.
 */
import { request } from 'node:http';
import { WebSocket, type ClientOptions } from 'ws';

export interface RawAnswer {
  status: number;
  body: string;
}

/** One HTTP request with exactly these headers (Host included, if given). */
export function raw(
  url: string,
  opts: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: opts.method ?? 'GET', headers: opts.headers ?? {} }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** What a socket received: every message parsed as JSON (arrays of events, as the inspector sends them). */
export interface Received {
  events: Array<Record<string, unknown>>;
  chars: () => number;
}

/**
 * A WebSocket upgrade: 101, the open socket and what it receives (recorded from the start: a
 * server may send the moment it accepts), or the status it was refused with (0 if the server just
 * closed the connection).
 */
export function upgrade(
  url: string,
  opts: ClientOptions = {},
): Promise<{ status: number; ws: WebSocket | undefined; seen: Received }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, opts);
    const seen = record(ws);
    ws.on('open', () => resolve({ status: 101, ws, seen }));
    ws.on('unexpected-response', (req, res) => {
      resolve({ status: res.statusCode ?? 0, ws: undefined, seen });
      req.destroy();
    });
    ws.on('error', () => resolve({ status: 0, ws: undefined, seen }));
  });
}

function record(ws: WebSocket): Received {
  const events: Array<Record<string, unknown>> = [];
  let chars = 0;
  ws.on('message', (d) => {
    const text = (d as Buffer).toString(); // ws hands a message over as a Buffer
    chars += text.length;
    const parsed = JSON.parse(text) as unknown;
    events.push(...((Array.isArray(parsed) ? parsed : [parsed]) as Array<Record<string, unknown>>));
  });
  return { events, chars: () => chars };
}
