/**
 * The data directory holds the cluster secret, the store, the node-local requestId files, logs and
 * the control endpoint's address: nobody but its owner may read any of it. This process and the
 * processes it starts create files 0600 and directories 0700 (umask 077), and what an older version
 * left readable is made private: only what safe-resume itself keeps there (CLUSTER_FILES), never
 * anything else. A directory that holds anything else is refused, as it is no cluster's own.
 */
import { chmodSync, existsSync, lstatSync, mkdirSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { SECRET_FILE } from '../actors/auth.js';
import { LOCK_FILE } from './dir-lock.js';
import { EXIT, OperatorError } from '../runtime/operator-error.js';

/**
 * Everything safe-resume keeps in a data directory, by name: the store (and SQLite's files beside it),
 * each node's kept requestIds and start count (and their files written aside), the logs, the local
 * etcd members (and their certificates), the NBD exports' sockets, the supervised VMs' directories
 * (`vms/`), the control endpoint's address, the launcher's lock and the cluster key. `clean` removes these and nothing else.
 */
export const CLUSTER_FILES: readonly RegExp[] = [
  /^store\.sqlite(-wal|-shm|-journal)?$/,
  /^node-\d+\.(handles\.jsonl|handles\.json|boot)(\.tmp)?$/,
  /^(logs|etcd|nbd|vms)$/,
  /^control\.json$/,
  new RegExp(`^${LOCK_FILE.replace('.', '\\.')}$`),
  new RegExp(`^${SECRET_FILE.replace('.', '\\.')}$`),
];

export const isClusterFile = (name: string): boolean => CLUSTER_FILES.some((re) => re.test(name));

/**
 * Make `dir` (if missing) and private what safe-resume keeps in it. `up` and the launcher pass
 * `others: 'refuse'`: a directory holding anything else (a project's `public/`, `README.md`) is refused
 * with an OperatorError before anything in it is changed. `credentials issue` passes `'leave'`: the
 * key may live beside other files, which stay as they are (and so does the directory's own mode).
 * Returns the topmost directory it made (`dir` or a parent of it), if it made any.
 */
export function privateDataDir(dir: string, others: 'refuse' | 'leave' = 'refuse'): string | undefined {
  const foreign = existsSync(dir) ? readdirSync(dir).filter((n) => !isClusterFile(n)) : [];
  if (foreign.length > 0 && others === 'refuse') {
    const shown = foreign
      .sort()
      .slice(0, 3)
      .map((n) => (isDir(join(dir, n)) ? `${n}/` : n));
    throw new OperatorError(
      `--dir ${dir} holds files safe-resume did not create (${shown.join(', ')}${foreign.length > 3 ? ' ...' : ''}): choose an empty or new directory`,
      EXIT.usage,
    );
  }
  process.umask(0o077);
  const made = makeDirs(dir);
  if (foreign.length === 0) tightenOne(dir);
  for (const name of readdirSync(dir)) if (isClusterFile(name)) tighten(join(dir, name));
  return made;
}

/**
 * `mkdir -p`, one level at a time: Node's recursive mkdir never returns where the kernel says ENOENT
 * for a directory whose parent exists (under /proc), where this throws. Returns the topmost it made.
 */
function makeDirs(dir: string): string | undefined {
  const missing: string[] = [];
  for (let d = resolve(dir); !existsSync(d) && dirname(d) !== d; d = dirname(d)) missing.unshift(d);
  for (const d of missing) mkdirSync(d, { mode: 0o700 });
  return missing[0];
}

function isDir(path: string): boolean {
  try {
    return lstatSync(path).isDirectory();
  } catch {
    return false;
  }
}

/** One path's mode, group and other bits cleared (a symlink is left as it is, and not followed). */
function tightenOne(path: string): void {
  const st = lstatSync(path);
  if (!st.isSymbolicLink() && (st.mode & 0o077) !== 0) chmodSync(path, st.mode & 0o700);
}

/** A path of safe-resume's own and, for a directory (logs/, etcd/), everything under it. */
function tighten(path: string): void {
  const st = lstatSync(path);
  if (st.isSymbolicLink()) return;
  tightenOne(path);
  if (st.isDirectory()) for (const name of readdirSync(path)) tighten(join(path, name));
}
