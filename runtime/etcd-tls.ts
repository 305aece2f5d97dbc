/**
 * The certificates of the local etcd (`safe-resume up --store etcd`), in the private data directory
 * (<dir>/etcd/tls, 0700; every file 0600): a CA of its own, one certificate for the members (their
 * clients' and their peers' connections; it names 127.0.0.1 and each member host's address) and one
 * client certificate for the store. The members take only clients with a certificate of this CA, so a
 * local user who cannot read these files reaches nothing in etcd. Made with openssl on the first start,
 * kept afterwards; a missing file (or a members' certificate that does not name a member's address now)
 * makes them again. Keys never leave these files: processes are given their paths.
 */
import { spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { EXIT, OperatorError } from './operator-error.js';

/** PEM files: the CA, and a certificate with its key. */
export interface EtcdTlsFiles {
  caFile: string;
  certFile: string;
  keyFile: string;
}

export interface EtcdTls {
  /** The members' own (server and peer). */
  member: EtcdTlsFiles;
  /** The store's (a client of the members). */
  client: EtcdTlsFiles;
}

/**
 * The DNS name the members' certificate carries besides their addresses: their clients check it (a
 * name, where an address as the TLS server name is refused by RFC 6066 and warned about by Node).
 */
export const MEMBER_NAME = 'etcd.safe-resume.local';

/** The contents a client (store/etcd.ts's `tls`) takes. */
export function readEtcdTls(f: EtcdTlsFiles): { ca: Buffer; cert: Buffer; key: Buffer; serverName: string } {
  return {
    ca: readFileSync(f.caFile),
    cert: readFileSync(f.certFile),
    key: readFileSync(f.keyFile),
    serverName: MEMBER_NAME,
  };
}

const FILES = ['ca.crt', 'ca.key', 'member.crt', 'member.key', 'client.crt', 'client.key'];
/** Ten years: these certificates name only this data directory's members and are never handed out. */
const DAYS = '3650';

/** The certificates in `dir` (made there if any is missing); the members' names `addresses` (127.0.0.1 always). */
export function etcdTls(dir: string, addresses: string[] = []): EtcdTls {
  const at = (f: string) => join(dir, f);
  const ips = [...new Set(['127.0.0.1', ...addresses])];
  const complete = FILES.every((f) => existsSync(at(f)));
  if (!complete || !names(at('member.crt'), ips)) make(dir, ips);
  // Its owner's alone, whatever the umask they were made under.
  chmodSync(dir, 0o700);
  for (const f of FILES) chmodSync(at(f), 0o600);
  return {
    member: { caFile: at('ca.crt'), certFile: at('member.crt'), keyFile: at('member.key') },
    client: { caFile: at('ca.crt'), certFile: at('client.crt'), keyFile: at('client.key') },
  };
}

function names(file: string, ips: string[]): boolean {
  try {
    const cert = new X509Certificate(readFileSync(file));
    return cert.checkHost(MEMBER_NAME) !== undefined && ips.every((ip) => cert.checkIP(ip) !== undefined);
  } catch {
    return false;
  }
}

function make(dir: string, ips: string[]): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  // Others cannot enter the directory before a key is written in it.
  chmodSync(dir, 0o700);
  for (const f of [...FILES, 'member.csr', 'client.csr', 'member.ext', 'client.ext', 'ca.srl'])
    rmSync(join(dir, f), { force: true });
  const openssl = (...args: string[]) => {
    // umask 077 (privateDataDir) makes every file 0600; keys are written by openssl to files, never printed.
    const r = spawnSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
    if (r.error)
      throw new OperatorError(
        'openssl is not installed: apt-get install -y openssl (the local etcd takes only clients with a certificate it makes)',
        EXIT.missingProgram,
      );
    if (r.status !== 0) throw new Error(`openssl ${args[0]} failed: ${r.stderr.trim()}`);
  };
  const key = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl(
    'req',
    '-x509',
    ...key,
    '-keyout',
    'ca.key',
    '-out',
    'ca.crt',
    '-days',
    DAYS,
    '-subj',
    '/CN=safe-resume local etcd CA',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  );
  const leaf = (name: string, cn: string, ext: string) => {
    openssl('req', ...key, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`);
    writeFileSync(
      join(dir, `${name}.ext`),
      `basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n${ext}`,
      { mode: 0o600 },
    );
    openssl(
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      'ca.crt',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-out',
      `${name}.crt`,
      '-days',
      DAYS,
      '-extfile',
      `${name}.ext`,
    );
    rmSync(join(dir, `${name}.csr`), { force: true });
    rmSync(join(dir, `${name}.ext`), { force: true });
  };
  // The members serve clients and peers and are peers' clients: one certificate for both, naming every member's address.
  leaf(
    'member',
    'safe-resume etcd member',
    `extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:${MEMBER_NAME},${ips.map((ip) => `IP:${ip}`).join(',')}\n`,
  );
  leaf('client', 'safe-resume store', 'extendedKeyUsage=clientAuth\n');
  rmSync(join(dir, 'ca.srl'), { force: true });
}
