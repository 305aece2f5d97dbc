/**
 * `safe-resume credentials issue --node NAME | --principal NAME [--out FILE] [--dir D]`: derive a node's
 * or a principal's credential from the cluster key in <dir>/cluster-secret (docs/security.md).
 * `safe-resume credentials nbd-psk --principal NAME [--out DIR]`: that principal's TLS pre-shared key
 * for the NBD export, as the PSK file block clients read (`DIR/keys.psk`).
 */
import { existsSync, mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { UsageError } from './args.js';
import {
  formatCredential,
  issueCredential,
  loadCredential,
  loadOrCreateSecret,
  NAME_PATTERN,
  nbdPskLine,
  SECRET_FILE,
  writeCredential,
  writePrivateFile,
  type CredentialKind,
} from '../actors/auth.js';
import { privateDataDir } from '../cluster/private-dir.js';

export const CREDENTIALS_HELP = `safe-resume credentials issue --node NAME | --principal NAME [--out FILE] [--force] [--dir PATH]

Derive a credential from the cluster key in <dir>/cluster-secret (created, 0600, if there is none yet):
  --node NAME        for the node agent called NAME (NodeAgent({ id: NAME, credential }))
  --principal NAME   for applications running as principal NAME (new Application(agent, { credential }))
  --out FILE         write it to FILE, readable by its owner only (refuses to replace a file without --force);
                     without --out it is printed on standard output
  --dir PATH         the cluster's data directory (default ./.safe-resume)
A credential lets its holder act only as that node or principal; the cluster key stays with the
storage side. Names: 1-128 of A-Z a-z 0-9 . _ @ - (starting with a letter or digit).

safe-resume credentials nbd-psk --principal NAME | --credential FILE [--out DIR] [--force] [--dir PATH]

The TLS pre-shared key a block client proves principal NAME with at a node's NBD export (over TCP,
up --nbd-tcp, or after STARTTLS on the socket), from the cluster key or from the principal's
credential (--credential FILE): one line NAME:HEXKEY.
  --out DIR          write it to DIR/keys.psk (0600; DIR made 0700 if missing), the file QEMU's
                     --object tls-creds-psk,id=t0,endpoint=client,dir=DIR,username=NAME reads and
                     libnbd takes as nbds://NAME@HOST:PORT/TARGET?tls-psk-file=DIR/keys.psk;
                     without --out it is printed on standard output
The export accepts only principals whose credential its node holds (under up: default).
`;

/** A usage mistake: the CLI prints it with a pointer to `safe-resume help` and exits 2. */
export class CredentialsUsageError extends UsageError {}

/** Run the command; returns the exit code. */
export function credentials(argv: string[], out: (s: string) => void, err: (s: string) => void): number {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === 'help' || sub === '--help' || sub === '-h') {
    out(CREDENTIALS_HELP);
    return 0;
  }
  if (sub === 'nbd-psk') return nbdPskCommand(rest, out, err);
  if (sub !== 'issue')
    throw new CredentialsUsageError(
      `credentials: unknown subcommand ${JSON.stringify(sub)} (try: credentials issue --node NAME, or credentials nbd-psk --principal NAME)`,
    );
  const { values } = parseArgs({
    args: rest,
    options: {
      node: { type: 'string' },
      principal: { type: 'string' },
      out: { type: 'string' },
      force: { type: 'boolean' },
      dir: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    out(CREDENTIALS_HELP);
    return 0;
  }
  if ((values.node === undefined) === (values.principal === undefined))
    throw new CredentialsUsageError('credentials issue takes exactly one of --node NAME or --principal NAME');
  const kind: CredentialKind = values.node !== undefined ? 'node' : 'principal';
  const name = (values.node ?? values.principal)!;
  checkName(kind, name);
  const dir = resolve(values.dir ?? '.safe-resume');
  const fresh = !existsSync(join(dir, SECRET_FILE));
  privateDataDir(dir, 'leave');
  const credential = issueCredential(loadOrCreateSecret(dir), kind, name);
  if (fresh)
    err(`safe-resume: created a new cluster key in ${join(dir, SECRET_FILE)} (replicas of this cluster need it)\n`);
  if (values.out === undefined) {
    out(formatCredential(credential));
    return 0;
  }
  const path = resolve(values.out);
  if (existsSync(path) && !values.force) throw new CredentialsUsageError(`${path} exists; pass --force to replace it`);
  writeCredential(path, credential);
  err(`safe-resume: wrote the ${kind} credential of ${name} to ${path} (mode 0600)\n`);
  return 0;
}

/** A node's or principal's name as given with `--node` or `--principal`: refused, with the rule, unless it fits. */
function checkName(flag: 'node' | 'principal', name: string): void {
  if (!NAME_PATTERN.test(name))
    throw new CredentialsUsageError(
      `--${flag} ${JSON.stringify(name)}: names are 1-128 of A-Z a-z 0-9 . _ @ - (starting with a letter or digit)`,
    );
}

/** `credentials nbd-psk`: a principal's NBD pre-shared key, as a PSK file. */
function nbdPskCommand(argv: string[], out: (s: string) => void, err: (s: string) => void): number {
  const { values } = parseArgs({
    args: argv,
    options: {
      principal: { type: 'string' },
      credential: { type: 'string' },
      out: { type: 'string' },
      force: { type: 'boolean' },
      dir: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    out(CREDENTIALS_HELP);
    return 0;
  }
  if ((values.principal === undefined) === (values.credential === undefined))
    throw new CredentialsUsageError('credentials nbd-psk takes exactly one of --principal NAME or --credential FILE');
  let line: string;
  if (values.credential !== undefined) {
    const c = loadCredential(resolve(values.credential));
    if (c.kind !== 'principal')
      throw new CredentialsUsageError(
        `${values.credential} is the credential of ${c.kind} ${c.name}, not of a principal`,
      );
    line = nbdPskLine(c);
  } else {
    const name = values.principal!;
    checkName('principal', name);
    const dir = resolve(values.dir ?? '.safe-resume');
    if (!existsSync(join(dir, SECRET_FILE)))
      throw new CredentialsUsageError(
        `${join(dir, SECRET_FILE)} does not exist: give the cluster's --dir, or the principal's --credential FILE`,
      );
    line = nbdPskLine(issueCredential(loadOrCreateSecret(dir), 'principal', name));
  }
  if (values.out === undefined) {
    out(line);
    return 0;
  }
  const dir = resolve(values.out);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const path = join(dir, 'keys.psk');
  if (existsSync(path) && !values.force) throw new CredentialsUsageError(`${path} exists; pass --force to replace it`);
  writePrivateFile(path, line);
  err(`safe-resume: wrote the NBD pre-shared key of ${line.slice(0, line.indexOf(':'))} to ${path} (mode 0600)\n`);
  return 0;
}
