/**
 * `--dir`: safe-resume makes private only what it created there, and `up` refuses a directory that
 * holds anything else (a project's own files are never chmodded). Through the real CLI.
 */
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, lstatSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { tempDir } from './helpers.js';
import { CLI } from './cli-path.js';

let cleanups: Array<() => void> = [];
afterEach(() => {
  for (const c of cleanups.reverse()) c();
  cleanups = [];
});

function scratch(): string {
  const t = tempDir();
  cleanups.push(t.cleanup);
  return t.dir;
}

/** Every path under `dir` (itself included) with its permission bits, in octal. */
function modes(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (p: string, rel: string) => {
    const st = lstatSync(p);
    out[rel] = (st.mode & 0o777).toString(8);
    if (st.isDirectory()) for (const n of readdirSync(p)) walk(join(p, n), rel === '.' ? n : `${rel}/${n}`);
  };
  walk(dir, '.');
  return out;
}

/** A project directory: its own files, readable by everyone as projects are. */
function project(root: string): string {
  const d = join(root, 'project');
  mkdirSync(join(d, 'public'), { recursive: true });
  writeFileSync(join(d, 'public', 'index.html'), '<p>hello</p>');
  writeFileSync(join(d, 'README.md'), '# mine\n');
  chmodSync(d, 0o755);
  chmodSync(join(d, 'public'), 0o755);
  chmodSync(join(d, 'public', 'index.html'), 0o644);
  chmodSync(join(d, 'README.md'), 0o644);
  return d;
}

/** `up --store memory` until it is serving, then Ctrl-C; resolves with its exit code and output. */
function upUntilServing(dir: string): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const p = spawn(
      'node',
      [CLI, 'up', '--store', 'memory', '--replicas', '1', '--nodes', '1', '--apps', '1', '--dir', dir],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    let err = '';
    let stopping = false;
    const killer = setTimeout(() => p.kill('SIGKILL'), 30_000);
    p.stdout.on('data', (b: Buffer) => {
      out += b.toString();
      // Its Ctrl-C handler is in place right after that line (a signal before it would kill it outright).
      if (!stopping && /memory store, one process/.test(out)) {
        stopping = true;
        setTimeout(() => p.kill('SIGINT'), 500);
      }
    });
    p.stderr.on('data', (b: Buffer) => (err += b.toString()));
    p.on('exit', (code) => {
      clearTimeout(killer);
      resolve({ code, out, err });
    });
  });
}

describe('--dir', () => {
  it("up refuses a directory holding files it did not create, in one line, and changes nothing there (a project's public/ stays 0755)", () => {
    const d = project(scratch());
    const before = modes(d);
    const r = spawnSync('node', [CLI, 'up', '--store', 'memory', '--dir', '.'], {
      cwd: d,
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(r.stderr).toBe(
      `safe-resume: --dir ${d} holds files safe-resume did not create (README.md, public/): choose an empty or new directory\n`,
    );
    expect(r.status).toBe(2);
    expect(modes(d)).toEqual(before);
    expect(before['public']).toBe('755');
  });

  it('up takes a new directory, an empty one, and one an earlier run left, and makes what it created there private', async () => {
    const root = scratch();
    const fresh = join(root, 'new', 'cluster');
    const empty = join(root, 'empty');
    mkdirSync(empty, { mode: 0o755 });
    chmodSync(empty, 0o755);
    // Left by an older version with a looser umask: its own log directory and a log in it.
    const earlier = join(root, 'earlier');
    mkdirSync(join(earlier, 'logs'), { recursive: true });
    writeFileSync(join(earlier, 'logs', 'cluster.log'), '{}\n');
    for (const [p, m] of [
      [earlier, 0o755],
      [join(earlier, 'logs'), 0o755],
      [join(earlier, 'logs', 'cluster.log'), 0o644],
    ] as const)
      chmodSync(p, m);
    const runs = await Promise.all([fresh, empty, earlier].map(upUntilServing));
    for (const r of runs) expect([r.code, r.err]).toEqual([0, '']);
    for (const d of [fresh, empty, earlier]) {
      const m = modes(d);
      expect(m['.'], d).toBe('700');
      expect(m['cluster-secret'], d).toBe('600');
      expect(
        Object.entries(m).filter(([, mode]) => mode !== '700' && mode !== '600'),
        d,
      ).toEqual([]);
    }
  }, 60_000);

  it('credentials issue writes the key into a directory of other files and leaves those files as they were', () => {
    const d = project(scratch());
    const before = modes(d);
    const r = spawnSync('node', [CLI, 'credentials', 'issue', '--node', 'node-1', '--dir', d], {
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(r.status, r.stderr).toBe(0);
    const after = modes(d);
    expect(after['cluster-secret']).toBe('600');
    delete after['cluster-secret'];
    expect(after).toEqual(before);
  });
});
