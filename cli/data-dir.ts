/** `up`'s data directory: taken for one launcher, and what an earlier run left in it. */
import { join } from 'node:path';
import { accessSync, constants, existsSync, mkdirSync } from 'node:fs';
import Database from 'better-sqlite3';
import { FileKeptIds } from '../actors/kept.js';
import { lockDir } from '../cluster/dir-lock.js';
import { EXIT, fromSystemError, OperatorError } from '../runtime/operator-error.js';
import { privateDataDir } from '../cluster/private-dir.js';
import { count } from './args.js';
import type { UpOptions } from './up-options.js';

/**
 * Make the data directory (private), and take it for this launcher: one cluster per directory. Says
 * what to do when it cannot be written or another launcher has it. Returns the topmost directory it
 * made, if it made one (a failed `up` removes it).
 */
export function takeDataDir(dir: string, store?: string): string | undefined {
  let made: string | undefined;
  try {
    made = privateDataDir(dir);
    mkdirSync(join(dir, 'logs'), { recursive: true });
    accessSync(dir, constants.W_OK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOTDIR' || code === 'EEXIST')
      throw new OperatorError(
        `data directory ${dir} cannot be created: a file is in the way (${code}); choose another --dir`,
        EXIT.dirNotWritable,
      );
    if (code === 'ENOENT')
      throw new OperatorError(
        `data directory ${dir} cannot be created (${code}); choose a directory you can write with --dir`,
        EXIT.dirNotWritable,
      );
    throw fromSystemError(err, `data directory ${dir}`) ?? err;
  }
  const release = lockDir(dir, store);
  process.once('exit', release);
  return made;
}

/**
 * What `up` finds in the data directory from an earlier run: a line to say so ("reusing the store in D:
 * N targets, M kept requestIds"), or undefined for a fresh one. A store that cannot be used (read-only,
 * corrupt) stops `up` here, with what to do, instead of leaving replicas failing on it.
 */
export function storeInUse(o: UpOptions): string | undefined {
  const kept = keptCount(o.dir, o.nodes);
  if (o.store === 'etcd') {
    const local = join(o.dir, 'etcd');
    return !o.etcdEndpoints && existsSync(local) && !o.chaos
      ? `reusing the etcd data in ${local}, ${count(kept, 'kept requestId')}`
      : undefined;
  }
  const path = join(o.dir, 'store.sqlite');
  if (!existsSync(path) || o.chaos) return undefined;
  try {
    accessSync(path, constants.R_OK | constants.W_OK);
  } catch {
    throw new OperatorError(
      `the store ${path} is read-only: make it writable (chmod u+w) or start a new cluster with another --dir`,
      EXIT.storeUnusable,
    );
  }
  try {
    const db = new Database(path, { fileMustExist: true });
    try {
      const hasTargets = db.prepare("SELECT 1 FROM sqlite_master WHERE name = 'target_versions'").get() !== undefined;
      const targets = hasTargets
        ? (db.prepare('SELECT count(*) AS n FROM target_versions').get() as { n: number }).n
        : 0;
      return `reusing the store in ${o.dir}: ${count(targets, 'target')}, ${count(kept, 'kept requestId')}`;
    } finally {
      db.close();
    }
  } catch (err) {
    throw new OperatorError(
      `the store ${path} cannot be used (${(err as Error).message}): restore it from a backup, or move it away to start empty`,
      EXIT.storeUnusable,
    );
  }
}

/** RequestIds the nodes keep on disk for their applications (lines of node-N.handles.jsonl still standing). */
function keptCount(dir: string, nodes: number): number {
  let n = 0;
  for (let i = 1; i <= nodes; i++) {
    const path = join(dir, `node-${i}.handles.jsonl`);
    if (!existsSync(path)) continue;
    const kept = new FileKeptIds(dir, `node-${i}`);
    n += kept.list().length;
    kept.close();
  }
  return n;
}
