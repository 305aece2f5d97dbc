/** The commands against a running cluster, through its control endpoint: arguments, request, answer. */
import { parseArgs } from 'node:util';
import { resolve, join } from 'node:path';
import { readFileSync } from 'node:fs';
import { dirHolder } from '../cluster/dir-lock.js';
import { formatEvent, type TimelineEvent } from '../cluster/timeline.js';
import { EXIT, OperatorError } from '../runtime/operator-error.js';
import { int, UsageError } from './args.js';
import { helpFor } from './help.js';
import { statusLines } from './view.js';
import { filterStatus, watchStatus, type StatusFilter } from './status.js';
import { followEvents, parseSince } from './events.js';
import { showRead } from './read.js';
import { exportUrl, formatSize, parseSize } from './disks.js';
import { down } from './down.js';

/** A command against the running cluster, through its control endpoint. */
export async function control(cmd: string, argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      dir: { type: 'string' },
      json: { type: 'boolean' },
      for: { type: 'string' },
      to: { type: 'string' },
      as: { type: 'string' },
      node: { type: 'string' },
      size: { type: 'string' },
      target: { type: 'string' },
      principal: { type: 'string' },
      mode: { type: 'string' },
      'no-wait': { type: 'boolean' },
      watch: { type: 'boolean', short: 'w' },
      offset: { type: 'string' },
      length: { type: 'string' },
      hex: { type: 'boolean' },
      since: { type: 'string' },
      follow: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    allowPositionals: true,
    strict: true,
  });
  if (values.help) return (void process.stdout.write(helpFor(cmd)), 0);
  const dir = resolve(values.dir ?? '.safe-resume');
  if (values['no-wait'] && cmd !== 'down') throw new UsageError('--no-wait is for down');
  if (cmd === 'down') {
    if (positionals.length > 0) throw new UsageError('down takes no arguments');
    return await down(dir, values.json === true, !values['no-wait']);
  }
  // The address and the control token of the running cluster (a file only its owner can read).
  let url: string;
  let token: string;
  try {
    ({ url, token } = JSON.parse(readFileSync(join(dir, 'control.json'), 'utf8')) as { url: string; token: string });
  } catch {
    // A launcher holding the directory without a control endpoint: `up --store memory`, or one starting.
    const holder = dirHolder(dir);
    const code = holder ? 'NO_CONTROL' : 'NOT_RUNNING';
    const message = !holder
      ? `no running cluster in ${dir} (start one with 'safe-resume up --dir ${dir}')`
      : holder.store === 'memory'
        ? `the cluster in ${dir} (launcher pid ${holder.pid}) runs with --store memory, in one process, and takes no commands: its status is the view its 'up' prints; stop it with Ctrl-C there or 'safe-resume down --dir ${dir}'`
        : `the cluster in ${dir} (launcher pid ${holder.pid}) is still starting: its control endpoint is not up yet; try again in a moment`;
    if (values.json) process.stdout.write(JSON.stringify({ ok: false, code, message }) + '\n');
    else process.stderr.write(`safe-resume ${cmd}: ${message}\n`);
    return EXIT.failed;
  }
  const need = (n: number, what: string) => {
    if (positionals.length !== n) throw new UsageError(`${cmd} takes ${what}`);
  };
  if (values.watch && cmd !== 'status') throw new UsageError('--watch (-w) is for status');
  if (values.target !== undefined && cmd !== 'events' && cmd !== 'status')
    throw new UsageError('--target is for events and status');
  if ((values.offset !== undefined || values.length !== undefined || values.hex) && cmd !== 'read')
    throw new UsageError('--offset, --length and --hex are for read');
  if ((values.since !== undefined || values.follow) && cmd !== 'events')
    throw new UsageError('--since and --follow are for events');
  const view: StatusFilter = {
    id: cmd === 'status' ? positionals[0] : undefined,
    target: cmd === 'status' ? values.target : undefined,
  };
  if (values.watch) {
    if (positionals.length > 1) throw new UsageError('status takes at most one replica or node');
    return await watchStatus(dir, url, token, values.json === true, view);
  }
  const since = values.since === undefined ? undefined : parseSince(values.since);
  if (cmd === 'events' && values.follow) {
    need(0, 'no arguments (--target T for one target)');
    return await followEvents(dir, url, token, { target: values.target, since, json: values.json === true });
  }
  const forS = values.for === undefined ? undefined : int('for', values.for, 0, 1);
  let path = `/${cmd}`;
  let body: Record<string, unknown> = {};
  switch (cmd) {
    case 'status':
      if (positionals.length > 1) throw new UsageError('status takes at most one replica or node');
      break;
    case 'kill':
    case 'restart':
      need(1, 'one id (replica-1, node-2, ...)');
      body = { id: positionals[0] };
      break;
    case 'partition':
      need(1, 'one node');
      body = { node: positionals[0], ...(forS ? { for: forS } : {}) };
      break;
    case 'heal':
      body = positionals[0] ? { node: positionals[0] } : {};
      break;
    case 'dismount':
      need(1, 'one replica');
      if (!forS) throw new UsageError('dismount needs --for <seconds>');
      body = { replica: positionals[0], for: forS };
      break;
    case 'reboot-storage':
    case 'down':
      need(0, 'no arguments');
      break;
    case 'move':
      need(1, 'one application and --to <node>');
      if (!values.to) throw new UsageError('move needs --to <node>');
      body = { app: positionals[0], to: values.to };
      break;
    case 'write':
      need(2, '<target> <text>');
      body = { target: positionals[0], text: positionals[1], ...(values.as ? { as: values.as } : {}) };
      break;
    case 'read':
      need(1, '<target>');
      body = {
        target: positionals[0],
        ...(values.offset !== undefined ? { offset: int('offset', values.offset, 0) } : {}),
        ...(values.length !== undefined ? { length: int('length', values.length, 0, 1) } : {}),
      };
      break;
    case 'events':
      need(0, 'no arguments (--target T for one target)');
      break;
    case 'explain':
      need(1, '<target | requestId>');
      body = { what: positionals[0] };
      break;
    case 'grant':
      need(1, '<target> --principal P --mode read|write');
      if (values.principal === undefined) throw new UsageError('grant needs --principal P');
      if (values.mode !== 'read' && values.mode !== 'write')
        throw new UsageError(
          `grant needs --mode read or --mode write${values.mode === undefined ? '' : `, not ${JSON.stringify(values.mode)}`}`,
        );
      body = { target: positionals[0], principal: values.principal, mode: values.mode };
      break;
    case 'revoke':
      need(1, '<target> --principal P');
      if (values.principal === undefined) throw new UsageError('revoke needs --principal P');
      body = { target: positionals[0], principal: values.principal };
      break;
    case 'create':
      need(1, '<target> --size SIZE');
      if (values.size === undefined) throw new UsageError('create needs --size (e.g. --size 4G)');
      body = { target: positionals[0], size: parseSize(values.size) };
      break;
    case 'export':
      need(1, '<target> [--node N]');
      break;
  }
  if (values.node !== undefined && cmd !== 'export' && cmd !== 'create')
    throw new UsageError(`--node is for export and create`);
  if (values.size !== undefined && cmd !== 'create') throw new UsageError(`--size is for create`);
  if (values.principal !== undefined && cmd !== 'grant' && cmd !== 'revoke')
    throw new UsageError('--principal is for grant and revoke');
  if (values.mode !== undefined && cmd !== 'grant') throw new UsageError('--mode is for grant');
  if (cmd === 'status') path = '/status?hold=1';
  else if (cmd === 'export') path = '/status';
  else if (cmd === 'events')
    path = `/events${values.target !== undefined ? `?target=${encodeURIComponent(values.target)}` : ''}`;
  let res: Response;
  try {
    const authorization = `Bearer ${token}`;
    const signal = AbortSignal.timeout(CONTROL_DEADLINE_MS);
    res = await fetch(
      url + path,
      cmd === 'status' || cmd === 'export' || cmd === 'events'
        ? { headers: { authorization }, signal }
        : {
            method: 'POST',
            body: JSON.stringify(body),
            headers: { 'content-type': 'application/json', authorization },
            signal,
          },
    );
  } catch (err) {
    if ((err as Error).name === 'TimeoutError')
      throw new OperatorError(
        `the launcher in ${dir} did not answer ${cmd} within ${CONTROL_DEADLINE_MS / 1000} s (it is at ${url})`,
        EXIT.timeout,
      );
    throw new OperatorError(
      `the cluster in ${dir} does not answer at ${url}: it is not running (a stale control.json; 'safe-resume down --dir ${dir}' clears it)`,
      EXIT.failed,
    );
  }
  let out = (await res.json()) as { ok: boolean; code?: string; message?: string; deadline?: boolean } & Record<
    string,
    unknown
  >;
  if (cmd === 'export' && out.ok) out = exportUrl(out, positionals[0]!, values.node);
  if (cmd === 'status' && out.ok && (view.id !== undefined || view.target !== undefined)) out = filterStatus(out, view);
  if (cmd === 'explain' && out.ok) {
    // A VM supervised with the target as a disk (safe-resume vm run): its state, and why it is stopped or held.
    const vm = await (await import('./vm.js')).vmsWithDisk(dir, positionals[0]!);
    if (vm.vms.length > 0) out = { ...out, vms: vm.vms, text: `${String(out.text)}\n${vm.text.trimEnd()}` };
  }
  if (cmd === 'events' && out.ok && since !== undefined)
    out = { ...out, events: (out.events as TimelineEvent[]).filter((e) => e.at >= since) };
  if (cmd === 'create' && out.ok) {
    // The URL to open it with, from the cluster's status (none if no node serves an export).
    const st = (await (
      await fetch(url + '/status', { headers: { authorization: `Bearer ${token}` } })
    ).json()) as Record<string, unknown>;
    const at = exportUrl(st, positionals[0]!, values.node);
    out = {
      ...out,
      url: at.ok ? at.url : null,
      ...(at.ok ? { node: at.node, ...(at.tls ? { tls: at.tls } : {}) } : {}),
    };
  }
  if (values.json) process.stdout.write(JSON.stringify(out) + '\n');
  else if (!out.ok) process.stderr.write(`safe-resume ${cmd}: ${out.code}: ${out.message}\n`);
  else if (cmd === 'status')
    process.stdout.write(
      (statusLines(out).join('\n') || `no handle or NBD connection on ${String(view.target)}`) + '\n',
    );
  else if (cmd === 'read') showRead(out, values.hex === true);
  else if (cmd === 'explain' || cmd === 'grant' || cmd === 'revoke') process.stdout.write(String(out.text) + '\n');
  else if (cmd === 'events')
    process.stdout.write(
      (out.events as TimelineEvent[]).map(formatEvent).join('\n') +
        ((out.events as TimelineEvent[]).length ? '\n' : ''),
    );
  else if (cmd === 'export')
    process.stdout.write(`${String(out.url)}\n${typeof out.tls === 'string' ? `${out.tls}\n` : ''}`);
  else if (cmd === 'create')
    process.stdout.write(
      `${String(out.target)}: ${formatSize(Number(out.size))} (${String(out.size)} bytes)${out.created ? '' : ', as it already was'}\n${typeof out.url === 'string' ? out.url : '(no node serves an NBD export)'}\n`,
    );
  else process.stdout.write(done(cmd, out) + '\n');
  // An id that names no process (kill replica-9) is a command line to correct: the answer lists the ids.
  if (!out.ok && out.code === 'INVALID_ARGUMENT' && ID_COMMANDS.has(cmd)) return EXIT.usage;
  return out.ok ? 0 : out.deadline ? EXIT.timeout : out.code === 'NOT_FOUND' ? EXIT.notFound : EXIT.failed;
}

/** What a command that changes the cluster did, in a sentence (its --json answer has the fields). */
function done(cmd: string, out: Record<string, unknown>): string {
  const names = (v: unknown) => (Array.isArray(v) ? v.map(String).join(', ') : String(v));
  switch (cmd) {
    case 'kill':
      return `killed ${String(out.killed)}`;
    case 'restart':
      return `restarted ${String(out.restarted)}`;
    case 'partition':
      return `${String(out.partitioned)} partitioned${typeof out.healsInS === 'number' ? `; it heals in ${out.healsInS} s` : ` until 'safe-resume heal ${String(out.partitioned)}'`}`;
    case 'heal':
      return (out.healed as unknown[]).length ? `healed ${names(out.healed)}` : 'nothing was partitioned';
    case 'dismount':
      return `${String(out.dismounted)}'s store dismounted; it mounts again in ${String(out.mountsInS)} s`;
    case 'reboot-storage':
      return `restarted ${names(out.rebooted)}`;
    case 'move':
      return `moved ${String(out.moved)} from ${String(out.from)} to ${String(out.to)}${typeof out.requestId === 'string' ? `, resuming requestId ${out.requestId}` : ', opening afresh'}`;
    case 'write':
      return `wrote ${String(out.bytes)} byte${out.bytes === 1 ? '' : 's'} to ${String(out.target)} as ${String(out.as)} (requestId ${String(out.requestId)}, version ${String(out.version)})`;
    default:
      return Object.entries(out)
        .filter(([k]) => k !== 'ok')
        .map(([k, v]) => `${k}: ${typeof v === 'string' ? v : JSON.stringify(v)}`)
        .join('\n');
  }
}

/** The commands whose argument is a replica's or a node's id. */
const ID_COMMANDS = new Set(['kill', 'restart', 'partition', 'heal', 'dismount']);

/** How long a command waits for the launcher's answer (its own deadlines for the storage are 10 s). */
const CONTROL_DEADLINE_MS = 30_000;
