/**
 * What the operator's commands answer, through the built CLI against a running cluster: a typo is not
 * empty data (NOT_FOUND, "did you mean"), reads never put raw control bytes on a terminal, and the
 * views filter, follow and tail (status, events, logs), with shell completion.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Application } from '../actors/application.js';
import { issueCredential, SECRET_FILE } from '../actors/auth.js';
import { NodeAgent } from '../actors/node-agent.js';
import { freePort } from '../transport/ports.js';
import { WebSocketTransport } from '../transport/ws.js';
import { tempDir } from './helpers.js';
import { CLI } from './cli-path.js';
import { until } from './e2e.js';

let t: { dir: string; cleanup: () => void };
let upProc: ChildProcess;
let port = 0;
const others: ChildProcess[] = [];

const run = (...args: string[]) => {
  const r = spawnSync('node', [CLI, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
};
const cli = (...args: string[]) => run(...args, '--dir', t.dir);
/** The command on a terminal (a pseudo-terminal, as script(1) gives one): everything it printed there. */
const onTty = (...args: string[]) => {
  const line = ['node', CLI, ...args, '--dir', t.dir].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  const r = spawnSync('script', ['-qec', line, '/dev/null'], { encoding: 'latin1', timeout: 60_000 });
  return { code: r.status, out: r.stdout };
};

/** A CLI command left running (a --follow), with what it printed so far. */
function follow(...args: string[]) {
  const proc = spawn('node', [CLI, ...args, '--dir', t.dir], { stdio: ['ignore', 'pipe', 'pipe'] });
  others.push(proc);
  let out = '';
  proc.stdout.on('data', (b: Buffer) => (out += b.toString()));
  const exited = new Promise<number | null>((r) => proc.once('exit', (c) => r(c)));
  return { proc, out: () => out, exited };
}

type St = {
  nodes: Array<{ id: string }>;
  replicas: Array<{ id: string }>;
  handles: Array<{ node: string; app: string; target: string; state: string }>;
};

beforeAll(async () => {
  t = tempDir();
  port = await freePort();
  upProc = spawn(
    'node',
    [CLI, 'up', '--dir', t.dir, '--replicas', '1', '--nodes', '2', '--apps', '1', '--port', String(port)],
    { stdio: 'ignore' },
  );
  await until(
    'the cluster',
    () =>
      existsSync(join(t.dir, 'control.json')) &&
      (JSON.parse(cli('status', '--json').out) as St).handles.filter((h) => h.state === 'active').length === 2,
    60_000,
  );
}, 90_000);

afterAll(async () => {
  for (const p of others) p.kill('SIGKILL');
  const gone = new Promise((r) => upProc.once('exit', r));
  upProc.kill('SIGTERM');
  await gone;
  t.cleanup();
}, 30_000);

describe('a typo is not empty data', () => {
  it('read of a target nobody created is NOT_FOUND (exit 9), and does not create it', () => {
    const r = cli('read', 'nosuch.disk');
    expect([r.code, r.out]).toEqual([9, '']);
    expect(r.err).toMatch(/^safe-resume read: NOT_FOUND: no target called "nosuch\.disk"/);
    const j = cli('read', 'nosuch.disk', '--json');
    expect(j.code).toBe(9);
    expect(JSON.parse(j.out)).toMatchObject({ ok: false, code: 'NOT_FOUND' });
    // Still nobody's: the read claimed nothing.
    expect(JSON.parse(cli('explain', 'nosuch.disk', '--json').out)).toMatchObject({ ok: false, code: 'NOT_FOUND' });
  });

  it('read of a target principal default may not open answers as one that does not exist', async () => {
    const secret = readFileSync(join(t.dir, SECRET_FILE), 'utf8').trim();
    const agent = new NodeAgent({
      id: 'node-b',
      replicas: [`ws://127.0.0.1:${port}`],
      transport: new WebSocketTransport(),
      credential: issueCredential(secret, 'node', 'node-b'),
    });
    await agent.start();
    try {
      const b = new Application(agent, { name: 'b', credential: issueCredential(secret, 'principal', 'tenant-b') });
      const h = await b.open('private.disk');
      await h.write(0, new TextEncoder().encode('tenant-b only'));
      await h.close();
    } finally {
      agent.crash();
    }
    const hidden = cli('read', 'private.disk', '--json');
    const missing = cli('read', 'nosuch.disk', '--json');
    expect(hidden.code).toBe(9);
    expect(JSON.parse(hidden.out)).toEqual(JSON.parse(missing.out.replaceAll('nosuch.disk', 'private.disk')));
    // The operator's explain tells the truth: it exists, tenant-b owns it.
    expect(JSON.parse(cli('explain', 'private.disk', '--json').out)).toMatchObject({ ok: true, owner: 'tenant-b' });
  });

  it('explain of a requestId or target the store never saw is NOT_FOUND; of a real requestId, its target', () => {
    const e = cli('explain', 'Xq3-misspelled-id');
    expect(e.code).toBe(9);
    expect(e.out).toBe('');
    expect(e.err).toMatch(/^safe-resume explain: NOT_FOUND: no target or requestId called "Xq3-misspelled-id"/);
    expect(e.err).not.toContain('a write open is granted at once');
    // An active handle's requestId (one the store holds now: a handle still opening has none there yet).
    const st = JSON.parse(cli('status', '--json').out) as {
      handles: Array<{ requestId: string | null; target: string; state: string }>;
    };
    const h = st.handles.find((x) => x.state === 'active' && x.requestId)!;
    // A requestId may start with '-': after '--' it is an argument, never an option.
    const got = run('explain', '--dir', t.dir, '--', h.requestId!);
    expect(got.out.split('\n')[0], got.err).toBe(h.target);
  });

  it('unknown commands and options get "did you mean" (exit 2)', () => {
    const c = run('staus');
    expect(c.code).toBe(2);
    expect(c.err).toContain(`unknown command "staus"; did you mean 'status'?`);
    const id = run('explain', '-Xq3' + 'a'.repeat(18), '--dir', t.dir);
    expect(id.code).toBe(2);
    expect(id.err).toContain(`-Xq3${'a'.repeat(18)} looks like a requestId: one that starts with '-' goes after '--'`);
    const f = run('status', '--dri', t.dir);
    expect(f.code).toBe(2);
    expect(f.err).toContain(`unknown option --dri; did you mean --dir?`);
    const g = run('read', 'x.disk', '--lenght', '3', '--dir', t.dir);
    expect(g.err).toContain('did you mean --length?');
    // Nothing close: no guess.
    const n = run('frobnicate');
    expect([n.code, n.err.includes('did you mean')]).toEqual([2, false]);
  });
});

describe('read', () => {
  it('--offset and --length read a range; --hex shows it as a hex dump', () => {
    expect(cli('write', 'range.disk', 'hello, world').code).toBe(0);
    expect(cli('read', 'range.disk', '--offset', '7', '--length', '5')).toMatchObject({ code: 0, out: 'world' });
    const hex = cli('read', 'range.disk', '--offset', '7', '--length', '5', '--hex');
    expect(hex).toMatchObject({
      code: 0,
      out: '00000007  77 6f 72 6c 64                                    |world|\n',
    });
    expect(JSON.parse(cli('read', 'range.disk', '--offset', '7', '--length', '5', '--json').out)).toMatchObject({
      ok: true,
      target: 'range.disk',
      offset: 7,
      bytes: 5,
      base64: Buffer.from('world').toString('base64'),
    });
    expect(cli('read', 'range.disk', '--offset', '-1')).toMatchObject({ code: 2 });
  });

  it('never puts raw control bytes on a terminal: binary data is shown as hex there, piped it is the bytes', () => {
    const evil = '\x1b]0;owned\x07\x1b[2J\x01\x02';
    expect(cli('write', 'bin.disk', evil).code).toBe(0);
    // Piped: the exact bytes, for a file or another program.
    expect(cli('read', 'bin.disk').out).toBe(evil);
    const tty = onTty('read', 'bin.disk');
    expect(tty.code).toBe(0);
    expect(tty.out).not.toMatch(/[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f]/);
    expect(tty.out).toContain('00000000  1b 5d 30 3b 6f 77 6e 65  64 07 1b 5b 32 4a 01 02  |.]0;owned..[2J..|');
    // Text is text on a terminal too.
    expect(onTty('read', 'range.disk').out).toContain('hello, world');
  });
});

describe('the views', () => {
  it('status takes a node, replica or --target, and names nothing it does not have', () => {
    const st = JSON.parse(cli('status', 'node-2', '--json').out) as St;
    expect(st.nodes.map((n) => n.id)).toEqual(['node-2']);
    expect(st.handles.length).toBe(1);
    expect(st.handles.every((h) => h.node === 'node-2')).toBe(true);
    const byTarget = JSON.parse(cli('status', '--target', 'app-1.disk', '--json').out) as St;
    expect(byTarget.handles.map((h) => h.target)).toEqual(['app-1.disk']);
    const text = cli('status', '--target', 'app-1.disk').out;
    expect(text).toContain('app-1.disk');
    expect(text).not.toContain('app-2.disk');
    const bad = cli('status', 'node-3');
    expect(bad.code).toBe(9);
    expect(bad.err).toContain('NOT_FOUND: no replica or node called "node-3"');
  });

  it('events --since keeps what happened since a time or a duration; --follow prints what happens next', async () => {
    await new Promise((r) => setTimeout(r, 50));
    const since = new Date().toISOString();
    await new Promise((r) => setTimeout(r, 50));
    expect(cli('write', 'since.disk', 'x').code).toBe(0);
    type Ev = { events: Array<{ at: number; kind: string; what?: string }> };
    const after = (JSON.parse(cli('events', '--since', since, '--json').out) as Ev).events;
    expect(after.length).toBeGreaterThan(0);
    expect(after.every((e) => e.at >= Date.parse(since))).toBe(true);
    expect(after.some((e) => e.kind === 'fault' && e.what?.startsWith('write since.disk'))).toBe(true);
    expect(
      (JSON.parse(cli('events', '--since', '1h', '--json').out) as Ev).events.some((e) => e.kind === 'process'),
    ).toBe(true);
    expect((JSON.parse(cli('events', '--since', '1ms', '--json').out) as Ev).events).toEqual([]);
    expect(cli('events', '--since', 'yesterday-ish')).toMatchObject({ code: 2 });
    const f = follow('events', '--follow');
    await new Promise((r) => setTimeout(r, 1500));
    expect(cli('write', 'followed.disk', 'y').code).toBe(0);
    await until('the followed event', () => f.out().includes('fault    write followed.disk'), 10_000);
    f.proc.kill('SIGINT');
    expect(await f.exited).toBe(0);
  });

  it('logs prints the pino logs of a process pretty, one line each, and --follow keeps printing', async () => {
    const r = cli('logs', 'replica-1');
    expect(r.code).toBe(0);
    const lines = r.out.trim().split('\n');
    expect(lines.length).toBeGreaterThan(0);
    for (const l of lines)
      expect(l).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (TRACE|DEBUG|INFO |WARN |ERROR|FATAL) replica-1 +\S/);
    expect(r.out).toMatch(/ INFO {2}replica-1 {2}replica listening url=ws:\/\/127\.0\.0\.1:\d+ store=sqlite /);
    const all = cli('logs');
    expect(all.out).toMatch(/ replica-1 /);
    const typo = cli('logs', 'replca-1');
    expect(typo.code).toBe(9);
    expect(typo.err).toContain(`did you mean 'replica-1'?`);
    const probe = (n: number) =>
      writeFileSync(
        join(t.dir, 'logs', 'test-probe.log'),
        JSON.stringify({ level: 30, time: Date.now(), msg: 'probe line', actor: 'test-probe', n }) + '\n',
        { flag: 'a' },
      );
    probe(0);
    const f = follow('logs', 'test-probe', '--follow');
    await until('the log so far', () => f.out().includes('probe line n=0'), 10_000);
    probe(1);
    await until('the followed log line', () => f.out().includes('probe line n=1'), 10_000);
    f.proc.kill('SIGINT');
    expect(await f.exited).toBe(0);
  });
});

describe('completion', () => {
  it("bash: completes commands, and each command's options", () => {
    const script = run('completion', 'bash');
    expect(script.code).toBe(0);
    const complete = (...words: string[]) => {
      const r = spawnSync(
        'bash',
        [
          '-c',
          `${script.out}\nCOMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _safe_resume; printf '%s\\n' "\${COMPREPLY[@]}"`,
        ],
        { encoding: 'utf8' },
      );
      return r.stdout.trim().split('\n');
    };
    expect(complete('safe-resume', 'sta')).toEqual(['status']);
    expect(complete('safe-resume', 'read', '--of')).toEqual(['--offset']);
    expect(complete('safe-resume', 'events', '--f')).toEqual(['--follow']);
    const zsh = run('completion', 'zsh');
    expect(zsh.code).toBe(0);
    expect(zsh.out).toContain('compdef');
    expect(run('completion', 'fish').code).toBe(2);
  });
});
