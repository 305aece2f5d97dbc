/**
 * What an operator meets at the command line during an incident, through the built CLI and real
 * processes: Ctrl-C is obeyed (chaos runs included), mistakes are one line with the documented exit
 * code, and nothing is left behind (no process, no lock, no directory `up` made for a run that failed).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { tempDir } from './helpers.js';
import { CLI } from './cli-path.js';
import { launch, until, type Launched } from './e2e.js';

const running = new Set<ChildProcess>();

/** `safe-resume up` in `dir`, in a process group of its own (a Ctrl-C signals the whole group). */
function up(dir: string, args: string[]): Launched {
  return launch(['up', '--dir', dir, ...args], { running, detached: true });
}

function cli(dir: string, ...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args, '--dir', dir], { encoding: 'utf8', timeout: 20_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** The live processes of process group `pgid` (the launcher and every process it started), zombies aside. */
function group(pgid: number): number[] {
  const out = spawnSync('ps', ['-eo', 'pid=,pgid=,stat='], { encoding: 'utf8' }).stdout;
  return out
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter(([pid, g, stat]) => pid && Number(g) === pgid && !stat!.startsWith('Z'))
    .map(([pid]) => Number(pid));
}

/** One line of answer (a usage error adds the pointer to the help), no stack trace. */
const oneLine = (s: string) =>
  s.split('\n').filter((l) => l && l !== "Run 'safe-resume help' for usage.").length === 1 && !/\n\s+at /.test(s);

afterEach(() => {
  for (const p of running) {
    try {
      process.kill(-p.pid!, 'SIGKILL');
    } catch {
      // gone
    }
  }
});

describe('mistakes at the command line: one line, the documented exit code, nothing left behind', () => {
  it('up with a bad port, a file or /proc as --dir: one line each (2, 5, 5); a directory up made for a failed run is removed, one it found is kept', async () => {
    const t = tempDir();
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
    const taken = (blocker.address() as net.AddressInfo).port;
    try {
      const file = join(t.dir, 'a-file');
      writeFileSync(file, 'notes');
      const cases: Array<[string, string[], number, RegExp]> = [
        [
          join(t.dir, 'p'),
          ['--inspector-port', '99999'],
          2,
          /^safe-resume: --inspector-port must be a port number from 0 to 65535, got "99999"\n/,
        ],
        [
          join(t.dir, 'q'),
          ['--port', '65535', '--replicas', '3'],
          2,
          /^safe-resume: --port 65535 with 3 replicas needs ports up to 65537; a port number is at most 65535\n/,
        ],
        [
          file,
          [],
          5,
          new RegExp(
            `^safe-resume: data directory ${file} cannot be created: a file is in the way \\(ENOTDIR\\); choose another --dir\n$`,
          ),
        ],
        [
          '/proc/nope',
          [],
          5,
          /^safe-resume: data directory \/proc\/nope cannot be created \(ENOENT\); choose a directory you can write with --dir\n$/,
        ],
        [join(t.dir, 'made', 'deeper'), ['--port', String(taken)], 4, /already in use/],
      ];
      for (const [dir, args, code, said] of cases) {
        const r = spawnSync(
          process.execPath,
          [CLI, 'up', '--dir', dir, '--replicas', '1', '--nodes', '1', '--apps', '1', ...args],
          { encoding: 'utf8', timeout: 20_000 },
        );
        expect({ dir, code: r.status, err: r.stderr, oneLine: oneLine(r.stderr) }).toEqual({
          dir,
          code,
          err: expect.stringMatching(said),
          oneLine: true,
        });
      }
      // The failed runs made none of these: nothing of theirs is left (not even 'made', the parent it made).
      expect(readdirSync(t.dir)).toEqual(['a-file']);
      expect(readFileSync(file, 'utf8')).toBe('notes');
      // A directory that was there before a failed run stays (empty, as it was).
      const mine = join(t.dir, 'mine');
      mkdirSync(mine);
      const r = spawnSync(
        process.execPath,
        [CLI, 'up', '--dir', mine, '--port', String(taken), '--replicas', '1', '--nodes', '1', '--apps', '1'],
        { encoding: 'utf8', timeout: 20_000 },
      );
      expect(r.status).toBe(4);
      expect(existsSync(mine)).toBe(true);
      expect(readdirSync(mine).filter((n) => n !== 'logs' && n !== 'cluster-secret')).toEqual([]);
    } finally {
      blocker.close();
      t.cleanup();
    }
  }, 60_000);

  it('Ctrl-C while up is still starting: one line, exit 130, no process, no lock, and the directory it made is gone', async () => {
    const t = tempDir();
    try {
      const dir = join(t.dir, 'c');
      const u = up(dir, ['--replicas', '3', '--nodes', '2', '--apps', '1']);
      // Its lock taken, its children starting: well inside the first second of a start.
      await until('the lock', () => existsSync(join(dir, 'launcher.lock')), 10_000, { everyMs: 20 });
      await new Promise((r) => setTimeout(r, 150));
      expect(existsSync(join(dir, 'control.json'))).toBe(false);
      process.kill(-u.proc.pid!, 'SIGINT');
      const end = await u.exited;
      expect({ code: end.code, err: u.err() }).toEqual({
        code: 130,
        err: 'safe-resume: interrupted (SIGINT) while the cluster was starting; every process it started is stopped\n',
      });
      expect(group(u.proc.pid!)).toEqual([]);
      expect(existsSync(dir)).toBe(false);
    } finally {
      t.cleanup();
    }
  }, 60_000);

  it('against a running cluster: kill of an unknown id lists the ids (exit 2); create --size -5 says what a size is (exit 2)', async () => {
    const t = tempDir();
    try {
      const u = up(t.dir, ['--replicas', '2', '--nodes', '1', '--apps', '1']);
      await until('the cluster', () => existsSync(join(t.dir, 'control.json')) && /inspector/.test(u.out()));
      const k = cli(t.dir, 'kill', 'replica-9');
      expect(k).toEqual({
        code: 2,
        out: '',
        err: 'safe-resume kill: INVALID_ARGUMENT: no replica or node called "replica-9"; the ids are replica-1, replica-2, node-1\n',
      });
      const s = cli(t.dir, 'create', 'vm.disk', '--size', '-5');
      expect(s).toEqual({
        code: 2,
        out: '',
        err: expect.stringMatching(
          /^safe-resume: --size "-5": give bytes or a number with K, M, G or T \(e\.g\. 4G\)\nRun 'safe-resume help' for usage\.\n$/,
        ),
      });
      expect(cli(t.dir, 'down').code).toBe(0);
    } finally {
      t.cleanup();
    }
  }, 60_000);
});

describe('Ctrl-C in a chaos run', () => {
  it('the first SIGINT stops the faults, heals, prints the summary with its violations and exits within seconds; nothing is left', async () => {
    const t = tempDir();
    try {
      const u = up(t.dir, ['--chaos', '--for', '60', '--seed', '7', '--replicas', '2', '--nodes', '2', '--apps', '1']);
      await until('two faults', () => (u.out().match(/^ {2}fault /gm) ?? []).length >= 2, 40_000);
      const sent = Date.now();
      process.kill(u.proc.pid!, 'SIGINT');
      const end = await Promise.race([
        u.exited,
        new Promise<'still running'>((r) => setTimeout(() => r('still running'), 20_000)),
      ]);
      expect(end).not.toBe('still running');
      const { code, at } = end as { code: number | null; at: number };
      expect(at - sent).toBeLessThan(8000);
      expect(u.out()).toMatch(/^chaos seed 7, 60s, interrupted after \d+s/m);
      expect(u.out()).toMatch(/^violations \d+$/m);
      expect(code).toBe(/^violations 0$/m.test(u.out()) ? 130 : 1);
      expect(u.err()).not.toMatch(/Error|at /);
      // No fault after the interrupt, no process, no lock, no control file.
      await new Promise((r) => setTimeout(r, 1000));
      expect(group(u.proc.pid!)).toEqual([]);
      expect(existsSync(join(t.dir, 'launcher.lock'))).toBe(false);
      expect(existsSync(join(t.dir, 'control.json'))).toBe(false);
    } finally {
      t.cleanup();
    }
  }, 90_000);

  it('a second SIGINT exits at once: no process, no lock', async () => {
    const t = tempDir();
    try {
      const u = up(t.dir, ['--chaos', '--for', '60', '--seed', '7', '--replicas', '2', '--nodes', '2', '--apps', '1']);
      await until('a fault', () => /^ {2}fault /m.test(u.out()), 40_000);
      process.kill(u.proc.pid!, 'SIGINT');
      await new Promise((r) => setTimeout(r, 300));
      const sent = Date.now();
      process.kill(u.proc.pid!, 'SIGINT');
      const end = await Promise.race([
        u.exited,
        new Promise<'still running'>((r) => setTimeout(() => r('still running'), 10_000)),
      ]);
      expect(end).toMatchObject({ code: 130 });
      expect((end as { at: number }).at - sent).toBeLessThan(1500);
      await new Promise((r) => setTimeout(r, 500));
      expect(group(u.proc.pid!)).toEqual([]);
      expect(existsSync(join(t.dir, 'launcher.lock'))).toBe(false);
      expect(existsSync(join(t.dir, 'control.json'))).toBe(false);
    } finally {
      t.cleanup();
    }
  }, 90_000);

  it('SIGTERM with its output closed after 4 lines (timeout 30 up --chaos | head -4): the launcher and its children are gone within seconds', async () => {
    const t = tempDir();
    try {
      const u = up(t.dir, ['--chaos', '--for', '60', '--seed', '7', '--replicas', '2', '--nodes', '2', '--apps', '1']);
      await until('four lines', () => u.out().split('\n').length > 4, 40_000);
      u.proc.stdout!.destroy(); // as head does once it has its lines: every later write is EPIPE
      await until('a fault', () => existsSync(join(t.dir, 'control.json')), 10_000);
      await new Promise((r) => setTimeout(r, 3000));
      const sent = Date.now();
      process.kill(u.proc.pid!, 'SIGTERM');
      const end = await Promise.race([
        u.exited,
        new Promise<'still running'>((r) => setTimeout(() => r('still running'), 20_000)),
      ]);
      expect(end).not.toBe('still running');
      expect((end as { at: number }).at - sent).toBeLessThan(8000);
      expect(u.err()).not.toMatch(/EPIPE|Error/);
      await new Promise((r) => setTimeout(r, 500));
      expect(group(u.proc.pid!)).toEqual([]);
      expect(existsSync(join(t.dir, 'launcher.lock'))).toBe(false);
    } finally {
      t.cleanup();
    }
  }, 90_000);
});

/**
 * A live view as an 80x24 terminal gets it, through a pseudo-terminal (util-linux's script): the
 * frames between redraws, each checked against the redraw that follows it.
 */
function framesOf(raw: string): { frames: string[][]; moves: number[] } {
  const parts = raw.split(/\x1b\[(\d+)A\x1b\[0J/);
  // parts: [before the first redraw, n1, frame1, n2, frame2, ...]; a frame is what follows a redraw.
  const frames: string[][] = [];
  const moves: number[] = [];
  for (let i = 1; i < parts.length; i += 2) {
    moves.push(Number(parts[i]));
    if (i + 2 < parts.length) frames.push(parts[i + 1]!.split('\r\n').slice(0, -1)); // complete: another redraw follows
  }
  return { frames, moves };
}

/** The last complete frame shows the handles: app-1's line and the "+N more" line for those that do not fit. */
const showsHandles = (frame: string[] | undefined) =>
  !!frame &&
  frame.some((l) => /^ {2}\+\d+ more/.test(l)) &&
  frame.some((l) => /node-1\/app-1 +app-1\.disk +(active|opening|paused)/.test(l));

/** Run `cmd` in an 80x24 terminal until it has drawn three frames, the last showing the handles (at most `seconds`); then Ctrl-C. */
async function inTerminal(cmd: string, seconds: number): Promise<string> {
  const p = spawn('script', ['-qfc', `stty cols 80 rows 24; exec ${cmd}`, '/dev/null'], {
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true,
  });
  running.add(p);
  let out = '';
  p.stdout.on('data', (b: Buffer) => (out += b.toString()));
  await until(
    'three frames, the last showing the handles',
    () => {
      const { frames } = framesOf(out);
      return frames.length >= 3 && showsHandles(frames.at(-1));
    },
    seconds * 1000,
  ).catch(() => undefined); // what it drew by then is checked as it is
  process.kill(-p.pid!, 'SIGINT');
  await new Promise((r) => p.once('exit', r));
  running.delete(p);
  return out;
}

describe('live views in an 80x24 terminal', () => {
  it('status -w and up redraw frames no wider than 80 and no taller than 24, with a "+N more" line for the handles that do not fit', async () => {
    const t = tempDir();
    try {
      const u = up(join(t.dir, 'c'), ['--replicas', '3', '--nodes', '2', '--apps', '12']);
      await until('the cluster', () => /inspector/.test(u.out()), 60_000);
      const watched = await inTerminal(`${process.execPath} ${CLI} status -w --dir ${join(t.dir, 'c')}`, 20);
      const views: Array<[string, string]> = [['status -w', watched]];
      expect(cli(join(t.dir, 'c'), 'down').code).toBe(0);
      views.push([
        'up',
        await inTerminal(
          `${process.execPath} ${CLI} up --dir ${join(t.dir, 'd')} --replicas 3 --nodes 2 --apps 12`,
          40,
        ),
      ]);
      for (const [what, raw] of views) {
        const { frames, moves } = framesOf(raw);
        expect({ what, frames: frames.length }).toEqual({ what, frames: expect.any(Number) });
        expect(frames.length).toBeGreaterThan(1);
        for (const [i, f] of frames.entries()) {
          const wide = f.filter((l) => l.replace(/\x1b\[[0-9;]*m/g, '').length > 80);
          expect({ what, wide }).toEqual({ what, wide: [] });
          // A frame and the cursor line below it fit in 24 rows, and the next redraw goes back over exactly it.
          expect({ what, height: f.length <= 23, back: moves[i + 1] }).toEqual({ what, height: true, back: f.length });
        }
        expect(frames.at(-1)!.some((l) => /^ {2}\+\d+ more/.test(l))).toBe(true);
        expect(frames.at(-1)!.some((l) => /node-1\/app-1 +app-1\.disk +(active|opening|paused)/.test(l))).toBe(true);
      }
    } finally {
      t.cleanup();
    }
  }, 120_000);
});
