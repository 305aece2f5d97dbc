/**
 * The nbd group: `qemu-img bench` (Debian's qemu-utils) 4 KiB writes and reads, one at a time and 16
 * deep, through the safe-resume NBD export (a node agent in this process, a replica process over SQLite
 * FULL), against `qemu-nbd` serving a raw file on the same machine, the block export a user would
 * otherwise pick: with `--cache=writethrough` (each write durable before its reply, as the export's are)
 * and with its default (the page cache; flushes reach the disk). And the stall a client sees
 * while the replica serving the export's node is SIGKILLed (two replica processes over one SQLite file).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, fdatasyncSync, mkdirSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Application } from '../actors/application.js';
import { NodeAgent } from '../actors/node-agent.js';
import { CMD, IHAVEOPT, NBDMAGIC, NbdExport, OPT, REP, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC } from '../frontends/nbd.js';
import { WebSocketTransport } from '../transport/ws.js';
import { replicaProcess, SECRET } from './replica-process.js';

const run = promisify(execFile);

export interface QemuBench {
  /** Operations per second. */
  rate: number;
}

/** `qemu-img bench` of `count` 4 KiB requests at `depth` on `url` (writes with `write`). */
export async function qemuImgBench(url: string, count: number, depth: number, write: boolean): Promise<QemuBench> {
  // -S 4k: consecutive requests walk the disk 4 KiB at a time (wrapping within the export).
  const args = [
    'bench',
    '-f',
    'raw',
    '-c',
    String(count),
    '-d',
    String(depth),
    '-s',
    '4k',
    '-S',
    '4k',
    ...(write ? ['-w'] : []),
    url,
  ];
  const t0 = performance.now();
  const { stdout } = await run('qemu-img', args, { timeout: 600_000 });
  const m = /Run completed in ([\d.]+) seconds/.exec(stdout);
  const seconds = m ? Number(m[1]) : (performance.now() - t0) / 1000;
  return { rate: count / seconds };
}

/**
 * `qemu-nbd` serving a raw file of `size` bytes in `dir` on a Unix socket (as the export is measured:
 * TCP on loopback adds delayed-ACK stalls to qemu-nbd's pipelined replies); resolves once it accepts.
 * `writethrough`: each write is durable before its reply (`--cache=writethrough`, the peer of the
 * export's fenced writes); otherwise writes land in the page cache and only flushes reach the disk.
 */
export async function qemuNbd(
  dir: string,
  size: number,
  cache: 'writeback' | 'writethrough' = 'writeback',
): Promise<{ url: string; proc: ChildProcess }> {
  const file = join(dir, `baseline-${cache}.raw`);
  writeFileSync(file, Buffer.alloc(0));
  await run('qemu-img', ['resize', '-f', 'raw', file, String(size)]);
  const socket = join(dir, `qemu-nbd-${cache}.sock`);
  const proc = spawn(
    'qemu-nbd',
    ['-f', 'raw', '-x', 'disk', '-k', socket, '--persistent', '--shared', '16', `--cache=${cache}`, file],
    { stdio: 'ignore' },
  );
  const url = `nbd+unix:///disk?socket=${socket}`;
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      await run('nbdinfo', ['--size', url]);
      return { url, proc };
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`qemu-nbd did not answer: ${String(err)}`, { cause: err });
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/**
 * The machine's limit for a durable 4 KiB write: `pwrite` + `fdatasync` of one 4 KiB block of a file in
 * `dir` (the disk every store and qemu-nbd here write to), `count` times; writes per second.
 */
export function fsyncLoop(dir: string, count: number): number {
  const fd = openSync(join(dir, 'fsync-loop.raw'), 'w');
  const block = Buffer.alloc(4096, 7);
  try {
    const t0 = performance.now();
    for (let i = 0; i < count; i++) {
      writeSync(fd, block, 0, block.length, (i % 64) * 4096);
      fdatasyncSync(fd);
    }
    return count / ((performance.now() - t0) / 1000);
  } finally {
    closeSync(fd);
  }
}

/**
 * `qemu-io` writes of 4 KiB through `opts` (qemu's `--image-opts`, with `--object` for TLS), `count` of
 * them issued 16 at a time (`aio_write` x16, then `aio_flush`); writes per second, less one run of a
 * single write (qemu-io's start and the NBD handshake). qemu-img bench cannot speak TLS, so this is
 * how the export's TLS-PSK address (what a user connects to over TCP) is measured against its Unix socket.
 */
export async function qemuIoWrites(target: string[], count: number): Promise<number> {
  const cmds: string[] = [];
  for (let i = 0; i < count; i += 16) {
    for (let j = 0; j < 16; j++) cmds.push('-c', `aio_write -q ${((i + j) % 1024) * 4096} 4k`);
    cmds.push('-c', 'aio_flush');
  }
  let t0 = performance.now();
  await run('qemu-io', [...target, '-c', 'write -q 0 4k'], { timeout: 120_000 });
  const once = performance.now() - t0;
  t0 = performance.now();
  await run('qemu-io', [...target, ...cmds], { timeout: 600_000, maxBuffer: 1 << 26 });
  return count / (Math.max(1, performance.now() - t0 - once) / 1000);
}

/** The export in front of two replica processes, as a failover sees it. */
export interface FailoverExport {
  nbd: NbdExport;
  app: Application;
  agent: NodeAgent;
  /** The export's Unix socket. */
  socket: string;
  /** Writes the node agent answered, and those it failed (any failure reaches the client as EIO). */
  writes: { ok: number; failed: number };
  /** SIGKILL the replica process serving the node's session; returns its id. */
  killServing(): string;
  /** Close the export, stop the node agent, SIGKILL the replica processes and wait for them to exit. */
  stop(): Promise<void>;
}

/**
 * Two replica processes over the SQLite file in `dir`, a node agent in this process connected to both,
 * and an NBD export of `size`-byte targets on a Unix socket in `dir`.
 */
export async function failoverExport(dir: string, size: number): Promise<FailoverExport> {
  mkdirSync(dir, { recursive: true });
  const replicas: Array<{ id: string; url: string; proc: ChildProcess }> = [];
  const writes = { ok: 0, failed: 0 };
  let agent: NodeAgent | undefined;
  let nbd: NbdExport | undefined;
  const stop = async () => {
    await nbd?.close();
    agent?.crash();
    const alive = replicas.filter((r) => r.proc.exitCode === null && r.proc.signalCode === null);
    await Promise.all(
      alive.map((r) => {
        const exited = once(r.proc, 'exit');
        r.proc.kill('SIGKILL');
        return exited;
      }),
    );
  };
  try {
    for (let i = 0; i < 2; i++) replicas.push(await replicaProcess(dir, 'sqlite'));
    const observe = {
      transition: () => undefined,
      operation: (kind: 'read' | 'write', ok: boolean) => {
        if (kind === 'write') writes[ok ? 'ok' : 'failed']++;
      },
    };
    const a = (agent = new NodeAgent({
      id: 'nbd-failover',
      replicas: replicas.map((r) => r.url),
      transport: new WebSocketTransport(),
      secret: SECRET,
      observe,
    }));
    await a.start();
    const app = new Application(a, { name: 'nbd-failover', pauseTimeoutMs: 60_000 });
    const socket = join(dir, 'export.sock');
    const n = (nbd = new NbdExport({ app, size: () => size, path: socket }));
    await n.listen();
    const killServing = () => {
      const serving = replicas.find((r) => r.id === a.replica);
      if (!serving)
        throw new Error(
          `the node is served by ${a.replica ?? 'no replica'}, not one of ${replicas.map((r) => r.id).join(', ')}`,
        );
      serving.proc.kill('SIGKILL');
      return serving.id;
    };
    return { nbd: n, app, agent: a, socket, writes, killServing, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/**
 * A minimal NBD client on a Unix socket, for timing single requests: the fixed newstyle handshake with
 * NBD_OPT.GO, then writes one at a time (simple replies).
 */
export class NbdClient {
  private input: Buffer = Buffer.alloc(0);
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private gone: Error | undefined;
  private cookie = 0n;

  private constructor(private readonly socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.input = this.input.length > 0 ? Buffer.concat([this.input, d]) : d;
      this.deliver();
    });
    socket.on('error', (err) => this.end(err));
    socket.on('close', () => this.end(new Error('the NBD server closed the connection')));
  }

  /** Connect to the export at `path` and open `name` (NBD_OPT.GO). */
  static async open(path: string, name: string): Promise<NbdClient> {
    const socket = connect(path);
    await once(socket, 'connect');
    const c = new NbdClient(socket);
    try {
      const hello = await c.take(18);
      if (hello.readBigUInt64BE(0) !== NBDMAGIC || hello.readBigUInt64BE(8) !== IHAVEOPT)
        throw new Error('not a newstyle NBD server');
      const n = Buffer.from(name);
      const go = Buffer.alloc(4 + 16 + 4 + n.length + 2);
      go.writeUInt32BE(1 | 2, 0); // fixed newstyle, no zeroes
      go.writeBigUInt64BE(IHAVEOPT, 4);
      go.writeUInt32BE(OPT.GO, 12);
      go.writeUInt32BE(4 + n.length + 2, 16);
      go.writeUInt32BE(n.length, 20);
      n.copy(go, 24); // and no information requests
      socket.write(go);
      for (;;) {
        const reply = await c.take(20);
        const type = reply.readUInt32BE(12);
        const data = await c.take(reply.readUInt32BE(16));
        if (type === REP.ACK) return c;
        if (type & 0x80000000)
          throw new Error(`${name}: NBD_OPT.GO refused (${type.toString(16)}): ${data.toString()}`);
      }
    } catch (err) {
      socket.destroy();
      throw err;
    }
  }

  /** Write `data` at `offset`; rejects with the server's error number. */
  async write(offset: number, data: Buffer): Promise<void> {
    const cookie = ++this.cookie;
    this.socket.write(Buffer.concat([this.header(CMD.WRITE, cookie, offset, data.length), data]));
    const reply = await this.take(16);
    if (reply.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC || reply.readBigUInt64BE(8) !== cookie)
      throw new Error('an NBD reply out of order');
    const errno = reply.readUInt32BE(4);
    if (errno !== 0) throw new Error(`NBD write at ${offset} failed: error ${errno}`);
  }

  /** Say goodbye (NBD_CMD.DISC) and wait for the server to close. */
  async close(): Promise<void> {
    if (this.gone) return;
    const closed = once(this.socket, 'close');
    this.socket.end(this.header(CMD.DISC, ++this.cookie, 0, 0));
    await closed;
  }

  destroy(): void {
    this.socket.destroy();
  }

  private header(type: number, cookie: bigint, offset: number, length: number): Buffer {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(cookie, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    return h;
  }

  /** The next `n` bytes from the server (one caller at a time). */
  private take(n: number): Promise<Buffer> {
    if (this.waiter) return Promise.reject(new Error('one request at a time'));
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.deliver();
    });
  }

  private deliver(): void {
    const w = this.waiter;
    if (!w) return;
    if (this.input.length >= w.n) {
      this.waiter = undefined;
      const out = this.input.subarray(0, w.n);
      this.input = this.input.subarray(w.n);
      w.resolve(out);
    } else if (this.gone) {
      this.waiter = undefined;
      w.reject(this.gone);
    }
  }

  private end(err: Error): void {
    this.gone ??= err;
    this.deliver();
  }
}

/**
 * The stall a client sees during a failover: 4 KiB writes one at a time through the export, `before`
 * of them, then the serving replica process is SIGKILLed while the next one is on its way, then
 * `after` writes more. Every write's latency (ms), before the kill and from it on. A write that takes
 * longer than `limitMs` ends the round with an error, as does any error the client is answered.
 */
export async function failoverStall(
  dir: string,
  before: number,
  after: number,
  limitMs = 30_000,
): Promise<{ before: number[]; after: number[] }> {
  const e = await failoverExport(dir, 1024 * 1024);
  const out = { before: [] as number[], after: [] as number[] };
  let client: NbdClient | undefined;
  try {
    client = await NbdClient.open(e.socket, 'stall.disk');
    const data = Buffer.alloc(4096, 0x5a);
    for (let i = 0; i < before + after; i++) {
      const t0 = performance.now();
      const w = client.write((i % 256) * 4096, data);
      if (i === before) e.killServing();
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>(
        (_, reject) =>
          (timer = setTimeout(
            () => reject(new Error(`write ${i} of the failover round took over ${limitMs} ms`)),
            limitMs,
          )),
      );
      try {
        await Promise.race([w, late]);
      } finally {
        clearTimeout(timer);
      }
      (i < before ? out.before : out.after).push(performance.now() - t0);
    }
    await client.close();
    return out;
  } finally {
    client?.destroy();
    await e.stop();
  }
}
