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

const CLI = join(import.meta.dirname, '..', 'dist', 'cluster', 'cli.js');
const running = new Set<ChildProcess>();

interface Up {
  proc: ChildProcess;
  out: () => string;
  err: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>;
}

/** `safe-resume up` in `dir`, in a process group of its own (as a shell runs a command). */
function up(dir: string, args: string[]): Up {
  const proc = spawn(process.execPath, [CLI, 'up', '--dir', dir, ...args], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  running.add(proc);
  let out = '';
  let err = '';
  proc.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  proc.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((r) => proc.once('exit', (code, signal) => (running.delete(proc), r({ code, signal, at: Date.now() }))));
  return { proc, out: () => out, err: () => err, exited };
}

function cli(dir: string, ...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args, '--dir', dir], { encoding: 'utf8', timeout: 20_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

async function until(what: string, check: () => boolean, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
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
const oneLine = (s: string) => s.split('\n').filter((l) => l && l !== "Run 'safe-resume help' for usage.").length === 1 && !/\n\s+at /.test(s);

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
        [join(t.dir, 'p'), ['--inspector-port', '99999'], 2, /^safe-resume: --inspector-port must be a port number from 0 to 65535, got "99999"\n/],
        [join(t.dir, 'q'), ['--port', '65535', '--replicas', '3'], 2, /^safe-resume: --port 65535 with 3 replicas needs ports up to 65537; a port number is at most 65535\n/],
        [file, [], 5, new RegExp(`^safe-resume: data directory ${file} cannot be created: a file is in the way \\(ENOTDIR\\); choose another --dir\n$`)],
        ['/proc/nope', [], 5, /^safe-resume: data directory \/proc\/nope cannot be created \(ENOENT\); choose a directory you can write with --dir\n$/],
        [join(t.dir, 'made', 'deeper'), ['--port', String(taken)], 4, /already in use/],
      ];
      for (const [dir, args, code, said] of cases) {
        const r = spawnSync(process.execPath, [CLI, 'up', '--dir', dir, '--replicas', '1', '--nodes', '1', '--apps', '1', ...args], { encoding: 'utf8', timeout: 20_000 });
        expect({ dir, code: r.status, err: r.stderr, oneLine: oneLine(r.stderr) }).toEqual({ dir, code, err: expect.stringMatching(said), oneLine: true });
      }
      // The failed runs made none of these: nothing of theirs is left (not even 'made', the parent it made).
      expect(readdirSync(t.dir)).toEqual(['a-file']);
      expect(readFileSync(file, 'utf8')).toBe('notes');
      // A directory that was there before a failed run stays (empty, as it was).
      const mine = join(t.dir, 'mine');
      mkdirSync(mine);
      const r = spawnSync(process.execPath, [CLI, 'up', '--dir', mine, '--port', String(taken), '--replicas', '1', '--nodes', '1', '--apps', '1'], { encoding: 'utf8', timeout: 20_000 });
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
      await until('the lock', () => existsSync(join(dir, 'launcher.lock')), 10_000);
      await new Promise((r) => setTimeout(r, 150));
      expect(existsSync(join(dir, 'control.json'))).toBe(false);
      process.kill(-u.proc.pid!, 'SIGINT');
      const end = await u.exited;
      expect({ code: end.code, err: u.err() }).toEqual({ code: 130, err: 'safe-resume: interrupted (SIGINT) while the cluster was starting; every process it started is stopped\n' });
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
      expect(k).toEqual({ code: 2, out: '', err: 'safe-resume kill: INVALID_ARGUMENT: no replica or node called "replica-9"; the ids are replica-1, replica-2, node-1\n' });
      const s = cli(t.dir, 'create', 'vm.disk', '--size', '-5');
      expect(s).toEqual({ code: 2, out: '', err: expect.stringMatching(/^safe-resume: --size "-5": give bytes or a number with K, M, G or T \(e\.g\. 4G\)\nRun 'safe-resume help' for usage\.\n$/) });
      expect(cli(t.dir, 'down').code).toBe(0);
    } finally {
      t.cleanup();
    }
  }, 60_000);
});
