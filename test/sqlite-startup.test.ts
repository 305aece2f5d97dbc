/**
 * Several processes opening one fresh SQLite file at the same moment (replicas of a cluster that
 * start together): every one must open it and serve, and a replica process that cannot open its
 * store must exit with its own error, not with a crash of its logger. Runs the built code (dist/).
 */
import { fork, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteStore } from '../store/sqlite.js';
import { tempDir } from './helpers.js';

const DIST = join(import.meta.dirname, '..', 'dist');
const PROCESSES = 6;
const ROUNDS = 150;

/** One opener process: for each path read on stdin, open a SqliteStore there, open and write a target, close, answer one JSON line. */
const OPENER = `
import { createInterface } from 'node:readline';
import { SqliteStore } from ${JSON.stringify(join(DIST, 'store', 'sqlite.js'))};
const rid = 'r'.repeat(21);
process.stdout.write('ready\\n');
for await (const path of createInterface({ input: process.stdin })) {
  let answer;
  try {
    const s = new SqliteStore(path);
    const target = 'p' + process.pid;
    const o = await s.open({ target, requestId: rid, principal: 'p', mode: 'write', session: 's', leaseMs: 1e9 });
    const w = await s.write({ target, requestId: rid, session: 's', seq: 1, offset: 0, data: new TextEncoder().encode(target) });
    await s.shutdown();
    answer = { target, ok: o.ok && w.ok && w.applied };
  } catch (err) {
    answer = { error: String(err && err.message) };
  }
  process.stdout.write(JSON.stringify(answer) + '\\n');
}
`;

interface Opener {
  proc: ChildProcessWithoutNullStreams;
  next: () => Promise<string>;
}

function opener(): Opener {
  const proc = spawn(process.execPath, ['--input-type=module', '-e', OPENER], { stdio: ['pipe', 'pipe', 'pipe'] });
  const lines: string[] = [];
  const waiting: Array<(l: string) => void> = [];
  createInterface({ input: proc.stdout }).on('line', (l) => (waiting.length > 0 ? waiting.shift()!(l) : lines.push(l)));
  proc.stderr.resume();
  return {
    proc,
    next: () => new Promise((resolve) => (lines.length > 0 ? resolve(lines.shift()!) : waiting.push(resolve))),
  };
}

describe('SQLite startup', () => {
  const t = tempDir();
  let openers: Opener[] = [];

  beforeAll(async () => {
    if (!existsSync(join(DIST, 'store', 'sqlite.js'))) throw new Error('dist/ is missing: npm run build');
    openers = Array.from({ length: PROCESSES }, opener);
    for (const o of openers) expect(await o.next()).toBe('ready');
  });

  afterAll(() => {
    for (const o of openers) o.proc.kill();
    t.cleanup();
  });

  it(`${PROCESSES} processes opening the same fresh file at once all open it and serve, ${ROUNDS} times over`, async () => {
    const failures: string[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const dir = join(t.dir, `r${round}`);
      mkdirSync(dir);
      const path = join(dir, 'store.sqlite');
      for (const o of openers) o.proc.stdin.write(`${path}\n`);
      const answers = (await Promise.all(openers.map((o) => o.next()))).map(
        (l) => JSON.parse(l) as { target?: string; ok?: boolean; error?: string },
      );
      for (const a of answers) if (!a.ok) failures.push(`round ${round}: ${a.error ?? 'refused'}`);
      if (answers.every((a) => a.ok)) {
        // Every process's write is in the file.
        const s = new SqliteStore(path);
        expect(
          s
            .targets()
            .map((x) => x.target)
            .sort(),
        ).toEqual(answers.map((a) => a.target).sort());
        await s.shutdown();
      }
    }
    expect(failures).toEqual([]);
  }, 120_000);

  it('a replica process that cannot open its store exits 1 with the store error, and its logger does not crash on the way out', async () => {
    const dir = join(t.dir, 'bad');
    // The store file's place is taken by a directory: SQLite cannot open it.
    mkdirSync(join(dir, 'store.sqlite'), { recursive: true });
    const cfg = {
      id: 'replica-x',
      port: 0,
      dir,
      store: 'sqlite',
      secret: 's'.repeat(32),
      holdMs: 100,
      history: false,
      pretty: false,
    };
    const child = fork(join(DIST, 'cluster', 'child.js'), ['replica'], { stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
    child.send({ type: 'config', config: cfg });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout!.resume();
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    expect(code).toBe(1);
    expect(stderr).toContain('unable to open database file');
    expect(stderr).not.toContain('sonic boom');
    expect(stderr).not.toMatch(/^\s+at /m);
    // The reason is in the replica's log too, for whoever reads the logs after the fact.
    expect(readFileSync(join(dir, 'logs', 'replica-x.log'), 'utf8')).toContain('unable to open database file');
  }, 30_000);
});
