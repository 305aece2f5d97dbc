/**
 * What block clients learn of a sparse target: structured replies, the `base:allocation` metadata
 * context and NBD_CMD_BLOCK_STATUS answered from the pages the store keeps (handle.extents), so
 * `qemu-img map` and `nbdinfo --map` see data only where it was written and `nbdcopy` leaves a copy
 * sparse; clients without structured replies get simple replies as before; malformed BLOCK_STATUS
 * requests get EINVAL; FUA and FLUSH are advertised and a FUA write is accepted.
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { SocketBytes } from './socket-bytes.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Application } from '../actors/application.js';
import { CMD, IHAVEOPT, NbdExport, OPT, REP, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC } from '../frontends/nbd.js';
import { clusters, tempDir, waitFor } from './helpers.js';

const run = promisify(execFile);
const cluster = clusters({ store: 'sqlite', replicas: 1 });
const MiB = 1024 * 1024;
const temps: Array<() => void> = [];
function dir(): string {
  const t = tempDir();
  temps.push(t.cleanup);
  return t.dir;
}

/** The numbers of doc/proto.md this file speaks (written out here, so a wrong one in the export shows). */
const NBD = {
  OPT_STRUCTURED_REPLY: 8,
  OPT_LIST_META_CONTEXT: 9,
  OPT_SET_META_CONTEXT: 10,
  REP_META_CONTEXT: 4,
  CMD_BLOCK_STATUS: 7,
  CMD_FLAG_FUA: 1 << 0,
  CMD_FLAG_REQ_ONE: 1 << 3,
  FLAG_SEND_FLUSH: 1 << 2,
  FLAG_SEND_FUA: 1 << 3,
  STRUCTURED_MAGIC: 0x668e33ef,
  REPLY_FLAG_DONE: 1,
  REPLY_TYPE_NONE: 0,
  REPLY_TYPE_OFFSET_DATA: 1,
  REPLY_TYPE_BLOCK_STATUS: 5,
  REPLY_TYPE_ERROR: 0x8001,
  STATE_HOLE: 1,
  STATE_ZERO: 2,
  EINVAL: 22,
} as const;

interface Chunk {
  flags: number;
  type: number;
  cookie: number;
  payload: Buffer;
}

/** A raw NBD client speaking whichever options a test sends, then requests, reading simple or structured replies. */
class Client extends SocketBytes {
  /** Connected, the greeting read and the client's flags sent (fixed newstyle, no zeroes). */
  static async to(nbd: NbdExport): Promise<Client> {
    const s = connect(new URL(nbd.url).searchParams.get('socket')!);
    await new Promise<void>((resolve, reject) => {
      s.once('connect', resolve);
      s.once('error', reject);
    });
    const c = new Client(s);
    await c.take(18);
    s.write(Buffer.from([0, 0, 0, 3]));
    return c;
  }

  /** Send an option; its replies up to the final one (ACK or an error), each as type and data. */
  async option(option: number, data: Buffer = Buffer.alloc(0)): Promise<Array<{ type: number; data: Buffer }>> {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(IHAVEOPT, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(data.length, 12);
    this.socket.write(Buffer.concat([h, data]));
    const replies: Array<{ type: number; data: Buffer }> = [];
    for (;;) {
      const r = await this.take(20);
      const type = r.readUInt32BE(12);
      replies.push({ type, data: Buffer.from(await this.take(r.readUInt32BE(16))) });
      if (type === REP.ACK || type >= 0x80000000) return replies;
    }
  }

  /** LIST or SET_META_CONTEXT for `name` with `queries`: the contexts answered (id, name) and the final reply type. */
  async meta(
    option: number,
    name: string,
    queries: string[],
  ): Promise<{ contexts: Array<[number, string]>; last: number }> {
    const parts = [u32(Buffer.byteLength(name)), Buffer.from(name), u32(queries.length)];
    for (const q of queries) parts.push(u32(Buffer.byteLength(q)), Buffer.from(q));
    const replies = await this.option(option, Buffer.concat(parts));
    const contexts = replies
      .filter((r) => r.type === NBD.REP_META_CONTEXT)
      .map((r) => [r.data.readUInt32BE(0), r.data.subarray(4).toString()] as [number, string]);
    return { contexts, last: replies[replies.length - 1]!.type };
  }

  /** NBD_OPT_GO: the transmission flags, or the error reply's type. */
  async go(name: string): Promise<{ type: number; flags: number }> {
    const n = Buffer.from(name);
    const replies = await this.option(OPT.GO, Buffer.concat([u32(n.length), n, Buffer.from([0, 0])]));
    const info = replies.find((r) => r.type === REP.INFO && r.data.readUInt16BE(0) === 0);
    return { type: replies[replies.length - 1]!.type, flags: info ? info.data.readUInt16BE(10) : 0 };
  }

  request(type: number, cookie: number, offset: number, length: number, flags = 0, data?: Buffer): void {
    const r = Buffer.alloc(28);
    r.writeUInt32BE(REQUEST_MAGIC, 0);
    r.writeUInt16BE(flags, 4);
    r.writeUInt16BE(type, 6);
    r.writeBigUInt64BE(BigInt(cookie), 8);
    r.writeBigUInt64BE(BigInt(offset), 16);
    r.writeUInt32BE(length, 24);
    this.socket.write(data ? Buffer.concat([r, data]) : r);
  }

  /** A simple reply (with `dataLength` bytes of data when it succeeded). */
  async simple(dataLength = 0): Promise<{ error: number; cookie: number; data: Buffer }> {
    const h = await this.take(16);
    if (h.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) throw new Error(`not a simple reply: magic ${h.readUInt32BE(0)}`);
    const error = h.readUInt32BE(4);
    const data = error === 0 && dataLength > 0 ? Buffer.from(await this.take(dataLength)) : Buffer.alloc(0);
    return { error, cookie: Number(h.readBigUInt64BE(8)), data };
  }

  /** The chunks of one structured reply, up to the one marked DONE. */
  async structured(): Promise<Chunk[]> {
    const chunks: Chunk[] = [];
    for (;;) {
      const h = await this.take(20);
      if (h.readUInt32BE(0) !== NBD.STRUCTURED_MAGIC)
        throw new Error(`not a structured chunk: magic ${h.readUInt32BE(0)}`);
      const c = {
        flags: h.readUInt16BE(4),
        type: h.readUInt16BE(6),
        cookie: Number(h.readBigUInt64BE(8)),
        payload: Buffer.from(await this.take(h.readUInt32BE(16))),
      };
      chunks.push(c);
      if (c.flags & NBD.REPLY_FLAG_DONE) return chunks;
    }
  }
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n, 0);
  return b;
}

/** A BLOCK_STATUS chunk's context id and descriptors as [length, flags]. */
function descriptors(c: Chunk): { id: number; extents: Array<[number, number]> } {
  const extents: Array<[number, number]> = [];
  for (let at = 4; at < c.payload.length; at += 8)
    extents.push([c.payload.readUInt32BE(at), c.payload.readUInt32BE(at + 4)]);
  return { id: c.payload.readUInt32BE(0), extents };
}

/** An error chunk's errno and message. */
function errorOf(c: Chunk): { errno: number; message: string } {
  return { errno: c.payload.readUInt32BE(0), message: c.payload.subarray(6, 6 + c.payload.readUInt16BE(4)).toString() };
}

describe('NBD export: structured replies, base:allocation and BLOCK_STATUS', () => {
  beforeAll(() => {
    const missing = ['qemu-io', 'qemu-img', 'nbdinfo', 'nbdcopy'].filter((b) => !existsSync(`/usr/bin/${b}`));
    if (missing.length > 0)
      throw new Error(`${missing.join(', ')} missing: apt-get install -y qemu-utils libnbd-bin (as .ci/run does)`);
  });
  afterAll(() => temps.forEach((cleanup) => cleanup()));

  /** An export of 16 MiB targets on a Unix socket, over a one-replica SQLite cluster. */
  async function exported(size = 16 * MiB) {
    const c = await cluster();
    const app = new Application(await c.addNode('node-1'), { name: 'nbd' });
    const nbd = new NbdExport({ app, path: join(dir(), 'nbd.sock'), size: () => size });
    await nbd.listen();
    return { c, app, nbd };
  }

  it('handle.extents: a read handle and a write handle both learn which parts the store keeps; a paused handle waits and is answered after the resume', async () => {
    const c = await cluster();
    const app = new Application(await c.addNode('node-1'), { name: 'sdk' });
    const w = await app.open('sdk.disk');
    await w.write(65536 + 10, new Uint8Array([1, 2, 3]));
    await w.write(MiB - 2, new Uint8Array([4, 5, 6, 7]));
    const expected = {
      kept: [
        [65536, 4096],
        [MiB - 4096, 8192],
      ],
      end: 2 * MiB,
    };
    expect(await w.extents(0, 2 * MiB)).toEqual(expected);
    const reader = new Application(await c.addNode('node-2'), { name: 'reader' });
    const r = await reader.open('sdk.disk', { mode: 'read' });
    expect(await r.extents(0, 2 * MiB)).toEqual(expected);
    expect(await r.extents(MiB, 4096)).toEqual({ kept: [[MiB, 4096]], end: MiB + 4096 });
    await expect(r.extents(-1, 1)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    // Storage away: the question waits with its paused handle, and is answered once it resumes.
    await c.kill(0);
    await waitFor('the write handle to pause', () => w.state === 'paused', 10_000);
    const asked = w.extents(0, 2 * MiB);
    let answered = false;
    void asked.then(() => (answered = true));
    await new Promise((res) => setTimeout(res, 300));
    expect(answered).toBe(false);
    await c.restart(0);
    expect(await asked).toEqual(expected);
    expect(w.state).toBe('active');
  }, 60_000);

  it('qemu-img map and nbdinfo --map report as data exactly the pages written at two places, the rest as zero holes', async () => {
    const { nbd } = await exported();
    const url = nbd.urlFor('map.disk');
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 64k 4k', '-c', 'write -P 0x22 5M 8k', url]);
    const map = JSON.parse((await run('qemu-img', ['map', '--output=json', '-f', 'raw', url])).stdout) as Array<{
      start: number;
      length: number;
      data: boolean;
      zero: boolean;
    }>;
    expect(map.filter((e) => e.data).map((e) => [e.start, e.length])).toEqual([
      [65536, 4096],
      [5 * MiB, 8192],
    ]);
    expect(map.filter((e) => !e.data).every((e) => e.zero)).toBe(true);
    expect(map.reduce((n, e) => n + e.length, 0)).toBe(16 * MiB);
    const info = (await run('nbdinfo', ['--map', url])).stdout;
    // Lines of `start length type description`: 0 is data, 3 a hole that reads as zeros.
    const rows = info
      .trim()
      .split('\n')
      .map((l) => l.trim().split(/\s+/).slice(0, 3).map(Number));
    expect(rows).toEqual([
      [0, 65536, 3],
      [65536, 4096, 0],
      [65536 + 4096, 5 * MiB - 65536 - 4096, 3],
      [5 * MiB, 8192, 0],
      [5 * MiB + 8192, 11 * MiB - 8192, 3],
    ]);
    await nbd.close();
  }, 60_000);

  it('nbdcopy of a sparse export into a file (no zero detection of its own) leaves the file sparse and byte-identical', async () => {
    const { nbd } = await exported();
    const url = nbd.urlFor('copy.disk');
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x33 1M 64k', '-c', 'write -P 0x44 12M 4k', url]);
    const out = join(dir(), 'copy.raw');
    // --sparse=0: nbdcopy finds no zeros in the data by itself; what it skips it learnt from BLOCK_STATUS.
    await run('nbdcopy', ['--sparse=0', url, out]);
    const expected = Buffer.alloc(16 * MiB);
    expected.fill(0x33, MiB, MiB + 65536);
    expected.fill(0x44, 12 * MiB, 12 * MiB + 4096);
    expect(readFileSync(out).equals(expected)).toBe(true);
    // Blocks of 512 bytes: what was written, and little more (a file system rounds to its blocks).
    expect(statSync(out).blocks * 512).toBeLessThan(1 * MiB);
    await nbd.close();
  }, 60_000);

  it('a client without structured replies gets simple replies as before (a READ with its data, BLOCK_STATUS refused EINVAL); FUA and FLUSH are advertised and a FUA write is answered', async () => {
    const { nbd } = await exported();
    const c = await Client.to(nbd);
    try {
      const go = await c.go('simple.disk');
      expect(go.type).toBe(REP.ACK);
      expect(go.flags & (NBD.FLAG_SEND_FUA | NBD.FLAG_SEND_FLUSH)).toBe(NBD.FLAG_SEND_FUA | NBD.FLAG_SEND_FLUSH);
      c.request(CMD.WRITE, 1, 4096, 4, NBD.CMD_FLAG_FUA, Buffer.from('fua!'));
      expect(await c.simple()).toMatchObject({ error: 0, cookie: 1 });
      c.request(CMD.READ, 2, 4096, 4);
      expect(await c.simple(4)).toMatchObject({ error: 0, cookie: 2, data: Buffer.from('fua!') });
      c.request(NBD.CMD_BLOCK_STATUS, 3, 0, 4096);
      expect(await c.simple()).toMatchObject({ error: NBD.EINVAL, cookie: 3 });
      c.request(CMD.FLUSH, 4, 0, 0);
      expect(await c.simple()).toMatchObject({ error: 0, cookie: 4 });
    } finally {
      c.socket.destroy();
      await nbd.close();
    }
  }, 60_000);

  it('structured replies: READ as OFFSET_DATA, writes as NONE, errors as ERROR chunks; LIST and SET_META_CONTEXT offer base:allocation; malformed BLOCK_STATUS gets EINVAL and the connection serves on', async () => {
    const { nbd } = await exported();
    const c = await Client.to(nbd);
    try {
      // Before structured replies, SET_META_CONTEXT is refused.
      expect((await c.meta(NBD.OPT_SET_META_CONTEXT, 'st.disk', ['base:allocation'])).last).toBe(REP.ERR_INVALID);
      expect((await c.option(NBD.OPT_STRUCTURED_REPLY, Buffer.from('x'))).map((r) => r.type)).toEqual([
        REP.ERR_INVALID,
      ]);
      expect((await c.option(NBD.OPT_STRUCTURED_REPLY)).map((r) => r.type)).toEqual([REP.ACK]);
      expect(await c.meta(NBD.OPT_LIST_META_CONTEXT, 'st.disk', [])).toEqual({
        contexts: [[0, 'base:allocation']],
        last: REP.ACK,
      });
      expect(await c.meta(NBD.OPT_LIST_META_CONTEXT, 'st.disk', ['base:'])).toEqual({
        contexts: [[0, 'base:allocation']],
        last: REP.ACK,
      });
      expect(await c.meta(NBD.OPT_LIST_META_CONTEXT, 'st.disk', ['qemu:dirty-bitmap:x'])).toEqual({
        contexts: [],
        last: REP.ACK,
      });
      // A SET that selects nothing (unknown leaf names are ignored) leaves BLOCK_STATUS refused.
      expect(await c.meta(NBD.OPT_SET_META_CONTEXT, 'st.disk', ['base:nothing'])).toEqual({
        contexts: [],
        last: REP.ACK,
      });
      expect((await c.go('st.disk')).type).toBe(REP.ACK);
      c.request(NBD.CMD_BLOCK_STATUS, 1, 0, 4096);
      const none = await c.structured();
      expect(none.map((x) => [x.type, x.flags, x.cookie])).toEqual([[NBD.REPLY_TYPE_ERROR, NBD.REPLY_FLAG_DONE, 1]]);
      expect(errorOf(none[0]!).errno).toBe(NBD.EINVAL);
      // Writes are answered NONE; a READ comes as OFFSET_DATA; a READ past the end as an ERROR chunk.
      c.request(CMD.WRITE, 2, 8192, 3, NBD.CMD_FLAG_FUA, Buffer.from('abc'));
      expect((await c.structured()).map((x) => [x.type, x.flags, x.payload.length])).toEqual([
        [NBD.REPLY_TYPE_NONE, NBD.REPLY_FLAG_DONE, 0],
      ]);
      c.request(CMD.READ, 3, 8192, 3);
      const read = await c.structured();
      expect(read.map((x) => [x.type, x.cookie])).toEqual([[NBD.REPLY_TYPE_OFFSET_DATA, 3]]);
      expect([Number(read[0]!.payload.readBigUInt64BE(0)), read[0]!.payload.subarray(8).toString()]).toEqual([
        8192,
        'abc',
      ]);
      c.request(CMD.READ, 4, 16 * MiB - 1, 2);
      const past = await c.structured();
      expect(past.map((x) => x.type)).toEqual([NBD.REPLY_TYPE_ERROR]);
      expect(errorOf(past[0]!).errno).toBe(NBD.EINVAL);
    } finally {
      c.socket.destroy();
    }
    // Now with base:allocation selected for the export it goes to.
    const d = await Client.to(nbd);
    try {
      expect((await d.option(NBD.OPT_STRUCTURED_REPLY)).map((r) => r.type)).toEqual([REP.ACK]);
      const set = await d.meta(NBD.OPT_SET_META_CONTEXT, 'st.disk', ['base:allocation']);
      expect(set.last).toBe(REP.ACK);
      expect(set.contexts.map(([, name]) => name)).toEqual(['base:allocation']);
      const id = set.contexts[0]![0];
      expect((await d.go('st.disk')).type).toBe(REP.ACK);
      d.request(NBD.CMD_BLOCK_STATUS, 1, 0, 3 * 4096);
      const status = await d.structured();
      expect(status.map((x) => [x.type, x.flags])).toEqual([[NBD.REPLY_TYPE_BLOCK_STATUS, NBD.REPLY_FLAG_DONE]]);
      const hz = NBD.STATE_HOLE | NBD.STATE_ZERO;
      expect(descriptors(status[0]!)).toEqual({
        id,
        extents: [
          [8192, hz],
          [4096, 0],
        ],
      });
      // REQ_ONE: one descriptor only, within the length asked.
      d.request(NBD.CMD_BLOCK_STATUS, 2, 0, 3 * 4096, NBD.CMD_FLAG_REQ_ONE);
      expect(descriptors((await d.structured())[0]!).extents).toEqual([[8192, hz]]);
      // Length 0, past the end, and an offset far past it: EINVAL, and nothing breaks.
      for (const [cookie, offset, length] of [
        [3, 0, 0],
        [4, 16 * MiB - 4096, 8192],
        [5, 2 ** 40, 4096],
      ] as const) {
        d.request(NBD.CMD_BLOCK_STATUS, cookie, offset, length);
        const e = await d.structured();
        expect(e.map((x) => [x.type, x.flags, x.cookie])).toEqual([
          [NBD.REPLY_TYPE_ERROR, NBD.REPLY_FLAG_DONE, cookie],
        ]);
        expect(errorOf(e[0]!).errno).toBe(NBD.EINVAL);
      }
      d.request(NBD.CMD_BLOCK_STATUS, 6, 8192, 4096);
      expect(descriptors((await d.structured())[0]!).extents).toEqual([[4096, 0]]);
      expect(d.closed).toBe(false);
    } finally {
      d.socket.destroy();
    }
    // A selection made for another export name than the one it goes to counts as none.
    const e = await Client.to(nbd);
    try {
      await e.option(NBD.OPT_STRUCTURED_REPLY);
      expect((await e.meta(NBD.OPT_SET_META_CONTEXT, 'other.disk', ['base:allocation'])).contexts).toHaveLength(1);
      expect((await e.go('st.disk')).type).toBe(REP.ACK);
      e.request(NBD.CMD_BLOCK_STATUS, 1, 0, 4096);
      expect(errorOf((await e.structured())[0]!).errno).toBe(NBD.EINVAL);
    } finally {
      e.socket.destroy();
      await nbd.close();
    }
  }, 60_000);
});
