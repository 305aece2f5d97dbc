/**
 * The data directory holds the cluster secret, the store, the node-local requestId files, logs and
 * the control endpoint's address: nobody but its owner may read any of it. This process and the
 * processes it starts create files 0600 and directories 0700 (umask 077), and what an older version
 * left readable is made private.
 */
import { chmodSync, lstatSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

export function privateDataDir(dir: string): void {
  process.umask(0o077);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  tighten(dir);
}

function tighten(path: string): void {
  const st = lstatSync(path);
  if (st.isSymbolicLink()) return;
  if (st.isDirectory()) {
    if ((st.mode & 0o077) !== 0) chmodSync(path, st.mode & 0o700);
    for (const name of readdirSync(path)) tighten(join(path, name));
  } else if ((st.mode & 0o077) !== 0) chmodSync(path, st.mode & 0o700);
}
