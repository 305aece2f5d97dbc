/**
 * Where `up` puts each node's NBD export: a Unix socket `<dir>/nbd/<node>.sock`. Reaching the socket is
 * the proof a client acts as the node's export principal (frontends/nbd.ts), so the directory is its
 * owner's only (0700), or, with `--nbd-group NAME`, open to that group too (0750; the data directory
 * then lets the group pass through it, 0710, without listing or reading anything in it).
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { SafeResumeError } from '../errors.js';

/** The most bytes a Unix socket's path may have (sun_path holds 108, with its terminating zero). */
export const MAX_SOCKET_PATH_BYTES = 107;

/** The socket path of `node`'s export under data directory `dir`; too long a path is refused, saying why. */
export function nbdSocketPath(dir: string, node: string): string {
  const path = join(dir, 'nbd', `${node}.sock`);
  const bytes = Buffer.byteLength(path);
  if (bytes > MAX_SOCKET_PATH_BYTES) {
    throw new SafeResumeError(
      'INVALID_ARGUMENT',
      `the NBD socket ${path} would be ${bytes} bytes long, past the ${MAX_SOCKET_PATH_BYTES} a Unix socket path may have: use a shorter --dir (at most ${MAX_SOCKET_PATH_BYTES - (bytes - Buffer.byteLength(dir))} bytes)`,
    );
  }
  return path;
}

/** The numeric id of group `name` (a name from the group database, or a number). */
export function groupId(name: string): number {
  if (/^\d+$/.test(name)) return Number(name);
  let line = '';
  try {
    line = execFileSync('getent', ['group', name], { encoding: 'utf8' }).trim();
  } catch {
    // getent exits non-zero for a group it does not know.
  }
  const gid = Number(line.split(':')[2]);
  if (!line || !Number.isSafeInteger(gid))
    throw new SafeResumeError('INVALID_ARGUMENT', `--nbd-group ${JSON.stringify(name)}: no such group`);
  return gid;
}

/** Make `<dir>/nbd`: 0700, or 0750 with group `gid` (and the data directory 0710 with it, to pass through). */
export function nbdSocketDir(dir: string, gid: number | undefined): string {
  const at = join(dir, 'nbd');
  mkdirSync(at, { recursive: true, mode: 0o700 });
  if (gid === undefined) {
    chmodSync(at, 0o700);
    return at;
  }
  const uid = process.getuid?.() ?? -1;
  chownSync(dir, uid, gid);
  chmodSync(dir, 0o710);
  chownSync(at, uid, gid);
  chmodSync(at, 0o750);
  return at;
}
