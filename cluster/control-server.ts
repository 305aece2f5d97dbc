/**
 * The launcher's control endpoint: HTTP on 127.0.0.1, locked with the control token (its address and
 * the token in the 0600 <dir>/control.json), and the commands it and the inspector page run.
 */
import { createServer, type Server } from 'node:http';
import net from 'node:net';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SafeResumeError } from '../errors.js';
import { capConnections, HTTP_TIMEOUTS } from '../runtime/http-limits.js';
import { readBody } from '../runtime/http-body.js';
import { bearer, checkHostOrigin, checkToken, refuse } from '../runtime/http-guard.js';
import type { HandleStatus } from '../runtime/ipc.js';
import type { Hold } from './explain.js';
import type { ControlResult } from './launcher-options.js';
import type { Timeline } from './timeline.js';

/** Commands that inject a fault or change the cluster: each goes on the timeline. */
const FAULT_COMMANDS = new Set([
  '/kill',
  '/restart',
  '/partition',
  '/heal',
  '/dismount',
  '/reboot-storage',
  '/move',
  '/write',
  '/grant',
  '/revoke',
]);

/** What the control endpoint drives: the launcher's commands, its status and its timeline. */
export interface Controlled {
  readonly timeline: Timeline;
  status(): Record<string, unknown>;
  holds(handles: Array<HandleStatus & Hold>): Promise<void>;
  kill(id: string): ControlResult;
  restart(id: string): Promise<ControlResult>;
  partition(node: string, forS?: number): ControlResult;
  heal(node?: string): ControlResult;
  dismount(replica: string, forS: number): ControlResult;
  rebootStorage(): Promise<ControlResult>;
  move(app: string, to: string): Promise<ControlResult>;
  write(target: string, text: string, as?: string): Promise<ControlResult>;
  read(target: string, offset?: number, length?: number): Promise<ControlResult>;
  create(target: string, size: number | undefined): Promise<ControlResult>;
  explain(what: string): Promise<ControlResult>;
  access(target: string, principal: string, mode: string): Promise<ControlResult>;
}

/**
 * Only the CLI talks to it: a request must carry the token, under a loopback Host, and no Origin
 * (a web page's request has one), before its body is even read.
 */
export async function listenControl(
  dir: string,
  token: string,
  command: (method: string, url: string, body: string) => Promise<ControlResult>,
): Promise<{ server: Server; url: string }> {
  let port = 0;
  const server = createServer(HTTP_TIMEOUTS, (req, res) => {
    const refusal = checkHostOrigin(req, port, 'none') ?? checkToken(bearer(req), token);
    if (refusal) {
      req.resume();
      return refuse(res, refusal);
    }
    void readBody(req, res).then(async (body) => {
      if (body === undefined) return;
      const r = await command(req.method ?? 'GET', req.url ?? '/', body);
      res.writeHead(r.ok ? 200 : 400, { 'content-type': 'application/json' });
      res.end(JSON.stringify(r));
    });
  });
  capConnections(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  port = (server.address() as net.AddressInfo).port;
  const url = `http://127.0.0.1:${port}`;
  // The token with the address, for the CLI: a file only its owner can read (made afresh, so an
  // older file's mode does not carry over).
  const file = join(dir, 'control.json');
  rmSync(file, { force: true });
  writeFileSync(file, JSON.stringify({ url, pid: process.pid, token }) + '\n', { mode: 0o600 });
  return { server, url };
}

/**
 * One command, as the control endpoint and the inspector page send it. What breaks or changes the
 * cluster goes on the timeline at the time it was asked (what only looks does not): a fault if it was
 * done (or a write whose outcome is unknown), marked refused with the code if nothing was done.
 */
export async function command(l: Controlled, method: string, url: string, body: string): Promise<ControlResult> {
  const at = Date.now();
  const r = await run(l, method, url, body);
  if (method === 'POST' && FAULT_COMMANDS.has(url)) {
    const what = commandText(url, body);
    if (r.ok) l.timeline.add({ at, kind: 'fault', what });
    else if (r.code === 'OUTCOME_UNKNOWN') l.timeline.add({ at, kind: 'fault', what: `${what} (outcome unknown)` });
    else l.timeline.add({ at, kind: 'refused', what, code: r.code, message: r.message.slice(0, 300) });
  }
  return r;
}

async function run(l: Controlled, method: string, url: string, body: string): Promise<ControlResult> {
  try {
    if (method === 'GET' && url === '/status') return { ok: true, ...l.status() };
    // The CLI's status: with each paused handle's hold period, read from the store.
    if (method === 'GET' && url === '/status?hold=1') {
      const st = l.status();
      await l.holds(st.handles as Array<HandleStatus & Hold>);
      return { ok: true, ...st };
    }
    if (method === 'GET' && (url === '/events' || url.startsWith('/events?'))) {
      const q = new URLSearchParams(url.slice('/events'.length));
      // `after`: the `next` of an earlier answer, for only what came since (the inspector polls so).
      const after = Number(q.get('after') ?? 0);
      return {
        ok: true,
        events: l.timeline.list(q.get('target') ?? undefined, Number.isSafeInteger(after) && after > 0 ? after : 0),
        next: l.timeline.next,
      };
    }
    if (method !== 'POST') throw new SafeResumeError('INVALID_ARGUMENT', `unknown endpoint ${method} ${url}`);
    const args = (body ? JSON.parse(body) : {}) as Record<string, unknown>;
    const str = (k: string) => {
      const v = args[k];
      if (typeof v !== 'string' || v.length === 0) throw new SafeResumeError('INVALID_ARGUMENT', `missing ${k}`);
      return v;
    };
    const num = (k: string) => (typeof args[k] === 'number' ? args[k] : undefined);
    switch (url) {
      case '/kill':
        return l.kill(str('id'));
      case '/restart':
        return await l.restart(str('id'));
      case '/partition':
        return l.partition(str('node'), num('for'));
      case '/heal':
        return l.heal(typeof args.node === 'string' ? args.node : undefined);
      case '/dismount':
        return l.dismount(str('replica'), num('for') ?? 10);
      case '/reboot-storage':
        return await l.rebootStorage();
      case '/move':
        return await l.move(str('app'), str('to'));
      case '/write':
        return await l.write(str('target'), str('text'), typeof args.as === 'string' ? args.as : 'cli');
      case '/read':
        return await l.read(str('target'), num('offset'), num('length'));
      case '/create':
        return await l.create(str('target'), num('size'));
      case '/explain':
        return await l.explain(str('what'));
      case '/grant':
        return await l.access(str('target'), str('principal'), str('mode'));
      case '/revoke':
        return await l.access(str('target'), str('principal'), 'none');
      case '/down':
        setTimeout(() => process.kill(process.pid, 'SIGTERM'), 50);
        return { ok: true, down: true };
      default:
        throw new SafeResumeError('INVALID_ARGUMENT', `unknown endpoint ${method} ${url}`);
    }
  } catch (err) {
    if (err instanceof SafeResumeError) return { ok: false, code: err.code, message: err.message };
    if (err instanceof SyntaxError)
      return { ok: false, code: 'INVALID_ARGUMENT', message: `body is not JSON: ${err.message}` };
    return { ok: false, code: 'INTERNAL', message: String(err) };
  }
}

/** A command of FAULT_COMMANDS as the timeline tells it: `kill replica-1`, `write app-1.disk "x" intruder`. */
function commandText(url: string, body: string): string {
  let args: Record<string, unknown> = {};
  try {
    const parsed: unknown = body ? JSON.parse(body) : {};
    if (typeof parsed === 'object' && parsed !== null) args = parsed as Record<string, unknown>;
  } catch {
    // Refused as not JSON: the command's name says enough.
  }
  return [
    url.slice(1),
    ...Object.entries(args).map(([k, v]) =>
      k === 'text' ? JSON.stringify(v) : k === 'for' ? `for ${String(v)} s` : String(v),
    ),
  ].join(' ');
}
