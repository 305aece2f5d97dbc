/**
 * `safe-resume logs [process] [--follow]`: the pino JSON logs in <dir>/logs/, one pretty line each
 * (time, level, process, message, the other fields as key=value), merged by time; with --follow, the
 * lines written from then on too. Control bytes in what was logged are escaped, never printed raw.
 */
import { parseArgs } from 'node:util';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { EXIT, OperatorError } from '../runtime/operator-error.js';
import { didYouMean } from './suggest.js';
import { UsageError } from './args.js';
import { helpFor } from './help.js';

const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
/** Fields every pino line has, shown in the line's head or not at all. */
const HEAD = new Set(['level', 'time', 'msg', 'pid', 'hostname', 'v']);

/** Control characters as escapes: a log line shows what was logged, it does not drive the terminal. */
const safe = (s: string) =>
  s
    .replace(/[\x00-\x08\x0b-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`)
    .replace(/\n/g, '\\n');

/** A field of a log line as text: a string as it is, anything else as JSON; `absent` if it is not there. */
function fieldText(v: unknown, absent: string): string {
  return v === undefined || v === null ? absent : typeof v === 'string' ? v : JSON.stringify(v);
}

/** One JSON log line of `proc` as a pretty line (a line that is not JSON, as it is). */
export function prettyLine(proc: string, line: string): { time: number; text: string } {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(line) as Record<string, unknown>;
    if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new Error('not an object');
  } catch {
    return { time: 0, text: `${' '.repeat(24)} ${'-'.padEnd(5)} ${proc}  ${safe(line)}` };
  }
  const time = typeof o.time === 'number' ? o.time : 0;
  const level = typeof o.level === 'number' ? (LEVELS[o.level] ?? String(o.level)) : fieldText(o.level, '-');
  const rest = Object.entries(o)
    .filter(([k, v]) => !HEAD.has(k) && !(k === 'actor' && v === proc))
    .map(
      ([k, v]) =>
        `${safe(k)}=${typeof v === 'string' && /^[^\s"=]+$/.test(v) ? safe(v) : safe(JSON.stringify(v) ?? String(v))}`,
    );
  return {
    time,
    text: `${new Date(time).toISOString()} ${level.padEnd(5)} ${proc}  ${safe(fieldText(o.msg, ''))}${rest.length ? ` ${rest.join(' ')}` : ''}`,
  };
}

/** The processes that have logs in `dir` (launcher, replica-1, node-1, ...). */
function processes(logs: string): string[] {
  return existsSync(logs)
    ? readdirSync(logs)
        .filter((f) => f.endsWith('.log'))
        .map((f) => f.slice(0, -4))
        .sort()
    : [];
}

export async function logs(
  dir: string,
  proc: string | undefined,
  opts: { follow: boolean; json: boolean },
  out: (s: string) => void,
): Promise<number> {
  const logDir = join(dir, 'logs');
  const have = processes(logDir);
  if (proc !== undefined && !have.includes(proc)) {
    throw new OperatorError(
      `NOT_FOUND: no log of a process called ${JSON.stringify(proc)} in ${logDir}${didYouMean(proc, have)}${have.length ? ` (there are: ${have.join(', ')})` : ''}`,
      EXIT.notFound,
    );
  }
  if (proc === undefined && have.length === 0 && !opts.follow)
    throw new OperatorError(
      `NOT_FOUND: no logs in ${logDir} (a cluster started with 'safe-resume up --dir ${dir}' writes them there)`,
      EXIT.notFound,
    );
  const show = (p: string, line: string) => (opts.json ? line : prettyLine(p, line).text);
  // What is there now, merged by time (a line without one keeps its place after the one before).
  const offsets = new Map<string, number>();
  const lines: Array<{ time: number; text: string }> = [];
  for (const p of proc !== undefined ? [proc] : have) {
    const buf = readFileSync(join(logDir, `${p}.log`));
    const end = buf.lastIndexOf(0x0a) + 1;
    offsets.set(p, end);
    let last = 0;
    for (const l of buf.subarray(0, end).toString('utf8').split('\n')) {
      if (!l) continue;
      const pl = prettyLine(p, l);
      last = pl.time || last;
      lines.push({ time: last, text: show(p, l) });
    }
  }
  lines.sort((a, b) => a.time - b.time);
  if (lines.length) out(lines.map((l) => l.text).join('\n') + '\n');
  if (!opts.follow) return 0;
  // --follow: what each file gets from now on (and files that appear, without a process named).
  let stop = false;
  let wake: () => void = () => undefined;
  const quit = () => ((stop = true), wake());
  process.once('SIGINT', quit);
  process.once('SIGTERM', quit);
  while (!stop) {
    for (const p of proc !== undefined ? [proc] : processes(logDir)) {
      const file = join(logDir, `${p}.log`);
      let size: number;
      try {
        size = statSync(file).size;
      } catch {
        continue;
      }
      let from = offsets.get(p) ?? 0;
      if (size < from) from = 0; // the file was started again
      if (size === from) continue;
      const buf = Buffer.alloc(size - from);
      const fd = openSync(file, 'r');
      try {
        readSync(fd, buf, 0, buf.length, from);
      } finally {
        closeSync(fd);
      }
      const end = buf.lastIndexOf(0x0a) + 1;
      offsets.set(p, from + end);
      const text = buf
        .subarray(0, end)
        .toString('utf8')
        .split('\n')
        .filter((l) => l.length > 0)
        .map((l) => show(p, l));
      if (text.length) out(text.join('\n') + '\n');
    }
    await new Promise<void>((r) => {
      const t = setTimeout(r, 250);
      wake = () => (clearTimeout(t), r());
    });
  }
  return 0;
}

/** `logs [process] [--follow]`: the cluster's logs, pretty (above); no running cluster needed. */
export async function logsCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      dir: { type: 'string' },
      json: { type: 'boolean' },
      follow: { type: 'boolean', short: 'f' },
      help: { type: 'boolean', short: 'h' },
    },
    allowPositionals: true,
    strict: true,
  });
  if (values.help) return (void process.stdout.write(helpFor('logs')), 0);
  if (positionals.length > 1) throw new UsageError('logs takes at most one process (launcher, replica-1, node-1, ...)');
  return await logs(
    resolve(values.dir ?? '.safe-resume'),
    positionals[0],
    { follow: values.follow === true, json: values.json === true },
    (t) => process.stdout.write(t),
  );
}
