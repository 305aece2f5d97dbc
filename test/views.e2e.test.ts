/**
 * End to end, through `safe-resume up` and the built CLI: every view shows only what happened. A handle
 * that closed (an NBD client's too) leaves the inspector, the metrics and the status; a refused command is
 * no fault on the timeline; the export's handles have their transitions on the timeline and in the counters.
 */
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { targetUrl } from '../frontends/nbd.js';
import type { TimelineEvent } from '../cluster/timeline.js';
import { tempDir } from './helpers.js';
import { CLI } from './cli-path.js';

const t = tempDir();
const dir = join(t.dir, 'c');
let launcher: ChildProcess | undefined;
let inspector = '';
let nbdUrl = '';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A CLI command against the cluster: its exit code and what it printed. */
function cli(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile('node', [CLI, ...args, '--dir', dir], { encoding: 'utf8', timeout: 30_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: stdout, err: stderr }),
    );
  });
}

async function json<T>(...args: string[]): Promise<T> {
  return JSON.parse((await cli(...args, '--json')).out) as T;
}

interface Status {
  nodes: Array<{
    id: string;
    metrics: string | null;
    nbd: { url: string; connections: Array<{ target: string; state: string }> } | null;
  }>;
  replicas: Array<{ id: string; metrics: string | null }>;
  handles: Array<{ node: string; app: string; target: string; state: string }>;
  totals: { pauses: number };
}
const status = () => json<Status>('status');
const events = async (target?: string) =>
  (await json<{ events: TimelineEvent[] }>('events', ...(target ? ['--target', target] : []))).events;

async function until<T>(what: string, check: () => Promise<T | undefined | false>, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(250);
  }
}

/**
 * The actors the inspector page would draw, as a browser arriving now gets them on /stream (every
 * registration, then the recent events), reduced as the page reduces them: still running, or an
 * application handle left invalidated.
 */
async function drawnActors(): Promise<
  Array<{ process: string; machine: string; state: string; target: string | undefined }>
> {
  const u = new URL(inspector);
  const token = u.hash.replace('#token=', '');
  const ws = new WebSocket(`ws://${u.host}/stream?token=${token}`, { headers: { origin: `http://${u.host}` } });
  const actors = new Map<
    string,
    { process: string; machine: string; value: unknown; status: string; target: string | undefined }
  >();
  const parse = (v: unknown) =>
    typeof v === 'string' ? (JSON.parse(v) as Record<string, unknown>) : ((v ?? {}) as Record<string, unknown>);
  ws.on('message', (data) => {
    for (const ev of JSON.parse((data as Buffer).toString()) as Array<Record<string, unknown>>) {
      const key = `${String(ev.process)}:${String(ev.sessionId)}`;
      if (ev.type === '@xstate.actor') {
        const def = parse(ev.definition);
        const snap = parse(ev.snapshot);
        if (!def.states) continue;
        actors.set(key, {
          process: String(ev.process),
          machine: String(def.id),
          value: snap.value,
          status: typeof snap.status === 'string' ? snap.status : 'active',
          target: (snap.context as { target?: string } | undefined)?.target,
        });
      } else if (ev.type === '@xstate.snapshot') {
        const a = actors.get(key);
        if (!a) continue;
        const snap = parse(ev.snapshot);
        a.value = snap.value;
        a.status = typeof snap.status === 'string' ? snap.status : a.status;
      }
    }
  });
  await new Promise<void>((resolve, reject) => (ws.once('open', () => resolve()), ws.once('error', reject)));
  await sleep(1500); // the replay, and a status or two
  ws.close();
  return [...actors.values()]
    .filter((a) => a.status === 'active' || (a.machine === 'handle' && a.value === 'invalidated'))
    .map((a) => ({ process: a.process, machine: a.machine, state: JSON.stringify(a.value), target: a.target }));
}

/** One gauge's samples from a /metrics page. */
async function handleGauge(url: string): Promise<Record<string, number>> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return Object.fromEntries(
    [...text.matchAll(/^safe_resume_handles\{state="(\w+)"\} (\d+)$/gm)].map((m) => [m[1]!, Number(m[2])]),
  );
}

function qemuIo(target: string, ...commands: string[]): string {
  const io = spawnSync('qemu-io', ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), targetUrl(nbdUrl, target)], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  return `${io.stdout}${io.stderr}`;
}

/** A bare NBD client (fixed newstyle, NBD_OPT_GO, simple replies) that holds its connection, and so its handle, until `close`. */
async function nbdClient(
  target: string,
): Promise<{ write: (offset: number, data: Buffer) => Promise<number>; close: () => void }> {
  const socket: Socket = connect(new URL(nbdUrl).searchParams.get('socket')!);
  socket.on('error', () => undefined);
  let input = Buffer.alloc(0);
  let waiting: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  const give = () => {
    if (!waiting || input.length < waiting.n) return;
    const { n, resolve } = waiting;
    waiting = undefined;
    const b = input.subarray(0, n);
    input = input.subarray(n);
    resolve(b);
  };
  socket.on('data', (d: Buffer) => ((input = Buffer.concat([input, d])), give()));
  socket.on('close', () => waiting?.reject(new Error(`the export closed the connection to ${target}`)));
  const take = (n: number) => new Promise<Buffer>((resolve, reject) => ((waiting = { n, resolve, reject }), give()));
  await take(18);
  const name = Buffer.from(target);
  const go = Buffer.alloc(16 + 4 + name.length + 2);
  go.writeBigUInt64BE(0x49484156454f5054n, 0);
  go.writeUInt32BE(7, 8); // NBD_OPT_GO
  go.writeUInt32BE(4 + name.length + 2, 12);
  go.writeUInt32BE(name.length, 16);
  name.copy(go, 20);
  socket.write(Buffer.concat([Buffer.from([0, 0, 0, 3]), go]));
  for (;;) {
    const reply = await take(20);
    const type = reply.readUInt32BE(12);
    const data = await take(reply.readUInt32BE(16));
    if (type === 1) break;
    if (type & 0x80000000) throw new Error(`NBD_OPT_GO refused (${type.toString(16)}): ${data.toString()}`);
  }
  let cookie = 0n;
  return {
    write: async (offset, data) => {
      const req = Buffer.alloc(28);
      req.writeUInt32BE(0x25609513, 0);
      req.writeUInt16BE(1, 6); // NBD_CMD_WRITE
      req.writeBigUInt64BE(++cookie, 8);
      req.writeBigUInt64BE(BigInt(offset), 16);
      req.writeUInt32BE(data.length, 24);
      socket.write(Buffer.concat([req, data]));
      const reply = await take(16);
      return reply.readUInt32BE(4);
    },
    close: () => socket.destroy(),
  };
}

beforeAll(async () => {
  launcher = spawn(
    'node',
    [
      CLI,
      'up',
      '--dir',
      dir,
      '--replicas',
      '2',
      '--nodes',
      '1',
      '--apps',
      '1',
      '--hold-ms',
      '1000',
      '--interval-ms',
      '100',
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  let out = '';
  await new Promise<void>((resolve, reject) => {
    launcher!.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const i = /inspector (http:\/\/127\.0\.0\.1:\d+\/#token=[\w-]+)\s/.exec(out);
      const n = /^ {2}nbd +(nbd\+unix:\/\/\/\?socket=\S+)/m.exec(out);
      if (i && n) {
        inspector = i[1]!;
        nbdUrl = n[1]!;
        resolve();
      }
    });
    launcher!.once('exit', () => reject(new Error(`up exited: ${out}`)));
  });
  launcher.stdout!.resume();
  await until('app-1 active', async () => (await status()).handles.some((h) => h.state === 'active'));
}, 60_000);

afterAll(async () => {
  if (launcher && launcher.exitCode === null) {
    launcher.kill('SIGINT');
    await new Promise((r) => launcher!.once('exit', r));
  }
  t.cleanup();
});

describe('views show only what happened', () => {
  it('NBD handles that closed leave the inspector (node and replica side), the metrics and the status, watched or not', async () => {
    // Nobody watches the inspector meanwhile: the processes send the launcher registrations only.
    for (let i = 0; i < 3; i++)
      expect(qemuIo('e.disk', 'write -P 0x61 0 4k', 'read -P 0x61 0 4k')).toMatch(
        /wrote 4096\/4096[\s\S]*read 4096\/4096/,
      );
    await sleep(1000);
    const drawn = await drawnActors();
    expect(
      drawn.filter((a) => a.target === 'e.disk'),
      JSON.stringify(drawn),
    ).toEqual([]);
    // The workload's handle is still there, on both sides: the view is not merely empty.
    expect(
      drawn
        .filter((a) => a.target === 'app-1.disk')
        .map((a) => `${a.process} ${a.machine} ${a.state}`)
        .sort(),
    ).toEqual(['node-1 handle "active"', 'replica-1 replicaHandle "active"'].sort());

    // And watched: a client that comes and goes while a browser is connected leaves nothing either.
    const watching = drawnActors();
    await sleep(300);
    expect(qemuIo('f.disk', 'write -P 0x62 0 4k')).toMatch(/wrote 4096\/4096/);
    await watching;
    expect((await drawnActors()).filter((a) => a.target === 'f.disk' || a.target === 'e.disk')).toEqual([]);

    const st = await status();
    expect(st.handles.map((h) => h.target)).toEqual(['app-1.disk']);
    expect(st.nodes[0]!.nbd!.connections).toEqual([]);
    expect(await handleGauge(st.nodes[0]!.metrics!)).toMatchObject({ opening: 0, active: 1, paused: 0, closing: 0 });
    const onReplicas = await Promise.all(st.replicas.map((r) => handleGauge(r.metrics!)));
    expect(onReplicas.reduce((n, g) => n + (g.active ?? 0), 0)).toBe(1);
  }, 90_000);

  it('a refused command is no fault on the timeline: it is marked refused, with its code', async () => {
    const before = (await events()).length;
    const refused = [await cli('kill', 'replica-9'), await cli('partition', 'replica-1'), await cli('heal', 'node-7')];
    for (const r of refused) expect(r.code, r.err).not.toBe(0);
    // app-1 holds app-1.disk: a foreign writer is refused LOCKED.
    const locked = await cli('write', 'app-1.disk', 'x', '--as', 'intruder');
    expect(locked.code, locked.err).toBe(1);
    expect(locked.err).toContain('LOCKED');
    const after = (await events()).slice(before).filter((e) => e.kind !== 'handle' && e.kind !== 'process');
    expect(
      after.filter((e) => e.kind === 'fault'),
      JSON.stringify(after),
    ).toEqual([]);
    expect(after.map((e) => (e.kind === 'refused' ? `${e.what}: ${e.code}` : e.kind))).toEqual([
      'kill replica-9: INVALID_ARGUMENT',
      'partition replica-1: INVALID_ARGUMENT',
      'heal node-7: INVALID_ARGUMENT',
      'write app-1.disk "x" intruder: LOCKED',
    ]);
    const text = (await cli('events')).out;
    expect(text).toMatch(/ refused +kill replica-9 \(INVALID_ARGUMENT: /);
    expect(text).not.toMatch(/ fault +kill replica-9/);
    // A command that did something is a fault, as before.
    expect((await cli('heal', 'node-1')).code).toBe(0);
    expect((await events()).slice(-3).some((e) => e.kind === 'fault' && e.what === 'heal node-1')).toBe(true);
  }, 60_000);

  it("an NBD disk's handle has its transitions on the timeline and its pauses counted: paused when its replica is killed, granted, invalidated MODIFIED", async () => {
    const target = 'vm.disk';
    const client = await nbdClient(target);
    try {
      expect(await client.write(0, Buffer.alloc(4096, 0x61))).toBe(0);
      const opened = await until('the export handle on the timeline', async () =>
        (await events(target)).find((e) => e.kind === 'handle' && e.to === 'active'),
      );
      expect(opened).toMatchObject({ node: 'node-1', target, from: '-', to: 'active' });
      const pausesBefore = (await status()).totals.pauses;

      const serving = (await json<{ nodes: Array<{ replica: string | null }> }>('status')).nodes[0]!.replica!;
      expect((await cli('kill', serving)).code).toBe(0);
      await until('the NBD handle paused then granted', async () => {
        const es = (await events(target)).filter((e) => e.kind === 'handle');
        return (
          es.some((e) => e.to === 'paused') &&
          es.some((e) => e.to === 'active' && e.detail === 'resume granted, same requestId')
        );
      });
      const st = await status();
      const paused = (await events()).filter((e) => e.kind === 'handle' && e.to === 'paused' && e.seq > opened.seq);
      expect(st.totals.pauses - pausesBefore).toBe(paused.length);
      expect(paused.some((e) => e.kind === 'handle' && e.target === target)).toBe(true);
      expect((await cli('restart', serving)).code).toBe(0);

      // Cut off past the hold period while another writer changes the disk: the handle is invalidated MODIFIED.
      expect((await cli('partition', 'node-1')).code).toBe(0);
      await until('a foreign write granted', async () => (await cli('write', target, 'FOREIGN')).code === 0);
      expect((await cli('heal', 'node-1')).code).toBe(0);
      const denied = await until('the NBD handle invalidated', async () =>
        (await events(target)).find((e) => e.kind === 'handle' && e.to === 'invalidated'),
      );
      expect(denied).toMatchObject({ node: 'node-1', target, reason: 'MODIFIED' });
      expect((await cli('events', '--target', target)).out).toMatch(
        new RegExp(`handle +node-1/\\S+ +${target}  \\S+ -> invalidated MODIFIED`),
      );
      expect(await client.write(0, Buffer.alloc(4096, 0x62))).toBe(5); // EIO, never a stale success
    } finally {
      client.close();
    }
    await until('the NBD handle closed', async () =>
      (await events(target)).some((e) => e.kind === 'handle' && e.to === 'closed'),
    );
    expect((await status()).nodes[0]!.nbd!.connections).toEqual([]);
    expect(
      (await drawnActors()).filter((a) => a.target === target && a.process === 'node-1' && a.state !== '"invalidated"'),
    ).toEqual([]);
  }, 120_000);
});
