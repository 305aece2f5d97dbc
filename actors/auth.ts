/**
 * Keys and proofs (SPEC "Bad input and trust").
 *
 * The cluster key (`<dir>/cluster-secret`) stays with the storage side: replicas and the operator who
 * issues credentials. Every other party gets a credential derived from it: a node agent a node
 * credential, an application a principal credential. A key never crosses the wire: both ends of a
 * session prove they know the node's key by an HMAC over fresh nonces from both sides, and an agent
 * proves each principal it speaks for the same way.
 *
 *   nodeKey(n)       = HMAC-SHA256(clusterKey, "safe-resume/v1/node/" + n)
 *   principalKey(p)  = HMAC-SHA256(clusterKey, "safe-resume/v1/principal/" + p)
 *   T                = "safe-resume/v3|" + node + "|" + agentNonce + "|" + replicaNonce + "|" + replica
 *   replica proof    = HMAC(nodeKey, "replica|" + T)        (first: an impostor learns only the nonces)
 *   node proof       = HMAC(nodeKey, "node|" + T [+ "|seal"])  (the agent's wish that frames be sealed)
 *   session key      = HMAC(nodeKey, "frames|" + T)         (seals every later frame, if asked)
 *   principal proof  = HMAC(principalKey, "principal|" + p + "|" + T)
 *   NBD TLS-PSK key  = HMAC-SHA256(principalKey, "safe-resume/v1/nbd-psk")   (identity: the principal's name)
 */
import { createHmac, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { nanoid } from 'nanoid';
import { z } from 'zod';
import { SafeResumeError } from '../errors.js';
import { NAME_PATTERN } from '../transport/messages.js';
import { derive } from '../core/proofs.js';

export { NAME_PATTERN };
// The proofs are pure functions of keys and text: they live with the replica's core, which checks them.
export { Keyring, proofMatches, proofs, sessionKey, transcript } from '../core/proofs.js';

export const SECRET_FILE = 'cluster-secret';

/**
 * Why a key file cannot be used as it is (undefined: it can): one that its group or other users may
 * read is refused, as ssh refuses such a private key, with what to do.
 */
export function keyFileExposed(path: string): string | undefined {
  const mode = statSync(path).mode & 0o777;
  if ((mode & 0o077) === 0) return undefined;
  return `${path} may be read by other users (mode ${mode.toString(8).padStart(4, '0')}): the cluster key must be private; run chmod 600 ${path}`;
}

/**
 * Read `<dir>/cluster-secret`, creating it (mode 0600) with a fresh random secret if missing. A key
 * its group or other users may read is refused (keyFileExposed).
 */
export function loadOrCreateSecret(dir: string): string {
  const path = join(dir, SECRET_FILE);
  if (existsSync(path)) {
    const exposed = keyFileExposed(path);
    if (exposed) throw new Error(exposed);
    const secret = readFileSync(path, 'utf8').trim();
    if (secret.length < 16) throw new Error(`${path}: cluster secret must be at least 16 characters`);
    return secret;
  }
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const secret = nanoid(43);
  writeFileSync(path, secret + '\n', { mode: 0o600, flag: 'wx' });
  chmodSync(path, 0o600);
  return secret;
}

export type CredentialKind = 'node' | 'principal';

/** What a node agent or an application holds instead of the cluster key. */
export interface Credential {
  v: 1;
  kind: CredentialKind;
  name: string;
  /** 32 bytes, base64url. */
  key: string;
}

const CredentialSchema = z.object({
  v: z.literal(1),
  kind: z.enum(['node', 'principal']),
  name: z.string().regex(NAME_PATTERN, 'name must be 1-128 of A-Z a-z 0-9 . _ @ - (starting with a letter or digit)'),
  key: z.string().regex(/^[A-Za-z0-9_-]{43}$/, 'key must be 32 bytes in base64url'),
});

function checkName(kind: CredentialKind, name: string): void {
  if (!NAME_PATTERN.test(name))
    throw new SafeResumeError(
      'INVALID_ARGUMENT',
      `${kind} name ${JSON.stringify(name.slice(0, 64))} must be 1-128 of A-Z a-z 0-9 . _ @ - (starting with a letter or digit)`,
    );
}

/** Issue the credential of a node or a principal from the cluster key. */
export function issueCredential(clusterKey: string, kind: CredentialKind, name: string): Credential {
  checkName(kind, name);
  return { v: 1, kind, name, key: derive(clusterKey, kind, name).toString('base64url') };
}

/** A credential from its JSON text; a clear INVALID_ARGUMENT error naming `source` otherwise. */
export function parseCredential(text: string, source = 'credential'): Credential {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new SafeResumeError(
      'INVALID_ARGUMENT',
      `${source}: not a safe-resume credential (expected JSON from \`safe-resume credentials issue\`)`,
    );
  }
  const parsed = CredentialSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new SafeResumeError(
      'INVALID_ARGUMENT',
      `${source}: ${issue?.path.join('.') || 'credential'}: ${issue?.message ?? 'invalid'}`,
    );
  }
  return parsed.data;
}

export function loadCredential(path: string): Credential {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new SafeResumeError('INVALID_ARGUMENT', `cannot read credential ${path}: ${(err as Error).message}`);
  }
  return parseCredential(text, path);
}

/**
 * Write a credential file readable only by its owner: a new file made 0600 and renamed over `path`,
 * so an existing file's mode never applies and a symlink at `path` is replaced, not followed.
 */
export function writeCredential(path: string, c: Credential): void {
  writePrivateFile(path, formatCredential(c));
}

/** Write `text` to a file only its owner may read, as writeCredential does. */
export function writePrivateFile(path: string, text: string): void {
  const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
  writeFileSync(tmp, text, { mode: 0o600, flag: 'wx' });
  try {
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
}

export function formatCredential(c: Credential): string {
  return JSON.stringify(c) + '\n';
}

const keyBytes = (c: Credential) => Buffer.from(c.key, 'base64url');

export const credentialKey = keyBytes;

/**
 * The TLS pre-shared key a block client proves `c`'s principal with at the NBD export (identity: the
 * principal's name). Whoever holds the principal's credential (or the cluster key) can derive it.
 */
export function nbdPsk(c: Credential): Buffer {
  if (c.kind !== 'principal')
    throw new SafeResumeError('INVALID_ARGUMENT', `a ${c.kind} credential (${c.name}) is not a principal's`);
  return createHmac('sha256', keyBytes(c)).update('safe-resume/v1/nbd-psk').digest();
}

/** The line of a PSK file (`keys.psk`, as GnuTLS reads it: `identity:hexkey`) for `c`'s principal. */
export function nbdPskLine(c: Credential): string {
  return `${c.name}:${nbdPsk(c).toString('hex')}\n`;
}
