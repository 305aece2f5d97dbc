/** The cluster secret: a generated default kept in the data directory, or one given explicitly. */
import { createHash, timingSafeEqual } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { nanoid } from 'nanoid';

export const SECRET_FILE = 'cluster-secret';

/** Read `<dir>/cluster-secret`, creating it (mode 0600) with a fresh random secret if missing. */
export function loadOrCreateSecret(dir: string): string {
  const path = join(dir, SECRET_FILE);
  if (existsSync(path)) {
    const secret = readFileSync(path, 'utf8').trim();
    if (secret.length < 16) throw new Error(`${path}: cluster secret must be at least 16 characters`);
    return secret;
  }
  mkdirSync(dir, { recursive: true });
  const secret = nanoid(43);
  writeFileSync(path, secret + '\n', { mode: 0o600, flag: 'wx' });
  chmodSync(path, 0o600);
  return secret;
}

/** Constant-time comparison that does not leak the secret's length. */
export function secretMatches(expected: string, given: string): boolean {
  const a = createHash('sha256').update(expected).digest();
  const b = createHash('sha256').update(given).digest();
  return timingSafeEqual(a, b);
}
