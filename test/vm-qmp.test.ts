/**
 * The QMP client against a real QEMU (no guest: `-S`, nothing to boot) and against a fake server that
 * misbehaves: commands are answered by id, events arrive, and a closed socket, a malformed line, a
 * greeting that is not QMP's and an error answer each give a typed QmpError, never a crash.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { QmpClient, QmpError, type QmpEvent } from '../vm/qmp.js';
import { tempDir, waitFor } from './helpers.js';
import { bareQemu, requireQemu } from './qemu.js';

const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c();
});

/** A bare QEMU, and its QMP connected (QEMU creates the socket's file a moment before it listens). */
async function qemu() {
  const q = await bareQemu();
  cleanups.push(q.cleanup);
  return { ...q, connect: () => QmpClient.connect(q.qmpPath, { retryMs: 10_000 }) };
}

/** A fake QMP server: `serve` decides what each connection is sent. */
async function fakeServer(serve: (s: Socket) => void): Promise<string> {
  const t = tempDir();
  const path = join(t.dir, 'fake.sock');
  const server: Server = createServer(serve);
  await new Promise<void>((r) => server.listen(path, r));
  cleanups.push(() => {
    server.close();
    t.cleanup();
  });
  return path;
}

const GREETING = '{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}\r\n';
/** Answer qmp_capabilities, then hand each later command line to `then`. */
function negotiating(then: (s: Socket, line: Record<string, unknown>) => void) {
  return (s: Socket) => {
    s.write(GREETING);
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
        buf = buf.slice(nl + 1);
        if (line.execute === 'qmp_capabilities') s.write(JSON.stringify({ return: {}, id: line.id }) + '\r\n');
        else then(s, line);
      }
    });
    s.on('error', () => undefined);
  };
}

const rejection = async (p: Promise<unknown>): Promise<QmpError> => {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(QmpError);
  return err as QmpError;
};

describe('QMP against a real QEMU', () => {
  beforeAll(requireQemu);

  it('greets, negotiates, and answers stop, cont and query-status with the STOP/RESUME events', async () => {
    const q = await qemu();
    const qmp = await q.connect();
    cleanups.push(() => qmp.close());
    expect(qmp.version).toMatchObject({ qemu: { major: expect.any(Number) as number } });
    const events: QmpEvent[] = [];
    qmp.onEvent((e) => events.push(e));
    expect(await qmp.status()).toEqual({ running: false, status: 'prelaunch' });
    await qmp.execute('cont');
    expect(await qmp.status()).toEqual({ running: true, status: 'running' });
    await qmp.execute('stop');
    expect(await qmp.status()).toEqual({ running: false, status: 'paused' });
    await waitFor('RESUME and STOP events', () => events.length >= 2);
    expect(events.map((e) => e.event)).toEqual(['RESUME', 'STOP']);
    expect(events[0]!.at).toBeGreaterThan(0);
  }, 30_000);

  it('an error answer is a QmpError of kind command with the class; the connection stays usable', async () => {
    const q = await qemu();
    const qmp = await q.connect();
    cleanups.push(() => qmp.close());
    const err = await rejection(qmp.execute('no-such-command'));
    expect(err.kind).toBe('command');
    expect(err.errorClass).toBe('CommandNotFound');
    expect((await qmp.status()).status).toBe('prelaunch');
  }, 30_000);

  it('quit ends QEMU; later commands reject as closed', async () => {
    const q = await qemu();
    const qmp = await q.connect();
    const closed = new Promise<QmpError>((r) => qmp.onClose(r));
    await qmp.execute('quit').catch(() => undefined);
    expect(await q.exited).toBe(0);
    expect((await closed).kind).toBe('closed');
    expect((await rejection(qmp.execute('query-status'))).kind).toBe('closed');
  }, 30_000);
});

describe('QMP client on bad input', () => {
  it('no socket: kind connect', async () => {
    const t = tempDir();
    cleanups.push(t.cleanup);
    expect((await rejection(QmpClient.connect(join(t.dir, 'absent.sock')))).kind).toBe('connect');
  });

  it('retryMs: connect waits for a socket QEMU has not listened on yet (its file may exist first)', async () => {
    const t = tempDir();
    cleanups.push(t.cleanup);
    const path = join(t.dir, 'late.sock');
    const server = createServer(negotiating(() => undefined));
    cleanups.push(() => server.close());
    setTimeout(() => server.listen(path), 300);
    const qmp = await QmpClient.connect(path, { retryMs: 5000 });
    cleanups.push(() => qmp.close());
    expect(qmp.version).toMatchObject({ qemu: { major: 7 } });
    expect((await rejection(QmpClient.connect(join(t.dir, 'never.sock'), { retryMs: 200 }))).kind).toBe('connect');
  });

  it('a greeting that is not QMP: kind greeting', async () => {
    const path = await fakeServer((s) => s.write('{"hello": 1}\r\n'));
    expect((await rejection(QmpClient.connect(path))).kind).toBe('greeting');
  });

  it('a socket closed before the greeting: kind closed', async () => {
    const path = await fakeServer((s) => s.end());
    expect((await rejection(QmpClient.connect(path))).kind).toBe('closed');
  });

  it('a malformed line rejects the waiting command and ends the connection', async () => {
    const path = await fakeServer(negotiating((s) => s.write('{"return": {}, "id": \r\n')));
    const qmp = await QmpClient.connect(path);
    const err = await rejection(qmp.execute('query-status'));
    expect(err.kind).toBe('malformed');
    expect(qmp.closed?.kind).toBe('malformed');
    expect((await rejection(qmp.execute('query-status'))).kind).toBe('closed');
  });

  it('a line that never ends past the limit: kind malformed', async () => {
    const path = await fakeServer(negotiating((s) => s.write('{"return": "' + 'x'.repeat(1100 * 1024))));
    const qmp = await QmpClient.connect(path);
    expect((await rejection(qmp.execute('query-status'))).kind).toBe('malformed');
  });

  it('a socket closed mid-command rejects it as closed; a silent server times out', async () => {
    const closing = await fakeServer(negotiating((s) => s.destroy()));
    const a = await QmpClient.connect(closing);
    expect((await rejection(a.execute('stop'))).kind).toBe('closed');
    const silent = await fakeServer(negotiating(() => undefined));
    const b = await QmpClient.connect(silent, { timeoutMs: 200 });
    cleanups.push(() => b.close());
    expect((await rejection(b.execute('stop'))).kind).toBe('timeout');
  });

  it('an answer with an unknown id or none is dropped; query-status of the wrong shape is malformed', async () => {
    const path = await fakeServer(
      negotiating((s, line) => {
        s.write('{"return": {}, "id": 999}\r\n{"error": {"class": "GenericError", "desc": "parse"}}\r\n');
        s.write(JSON.stringify({ return: { running: 'yes' }, id: line.id }) + '\r\n');
      }),
    );
    const qmp = await QmpClient.connect(path);
    cleanups.push(() => qmp.close());
    expect((await rejection(qmp.status())).kind).toBe('malformed');
    expect(qmp.closed).toBeUndefined();
  });
});
