/**
 * One way to open any store, from a URL-like spec:
 *
 *   memory                  an in-memory store (one process; gone when it exits)
 *   sqlite:PATH             SQLite at PATH (several replica processes on one host may share it)
 *   etcd://HOST:PORT,...    an etcd cluster (replicas on several hosts)
 *
 * The cluster launcher, its child processes, the in-process cluster and the CLI all open stores here.
 */
import { resolve } from 'node:path';
import { SafeResumeError } from '../errors.js';
import { MemoryStore } from './memory.js';
import { SqliteStore, type SqliteStoreOptions } from './sqlite.js';
import type { Store } from './types.js';
import { EtcdStore, type EtcdStoreOptions } from './etcd.js';

export type StoreSpec = { kind: 'memory' } | { kind: 'sqlite'; path: string } | { kind: 'etcd'; endpoints: string[] };

/** Parse a spec, or a clear INVALID_ARGUMENT error that lists the forms. */
export function parseStoreSpec(spec: string): StoreSpec {
  const forms = 'memory, sqlite:PATH or etcd://HOST:PORT[,HOST:PORT...]';
  if (spec === 'memory') return { kind: 'memory' };
  if (spec.startsWith('sqlite:')) {
    const path = spec.slice('sqlite:'.length);
    if (path.length === 0)
      throw new SafeResumeError('INVALID_ARGUMENT', `store ${JSON.stringify(spec)}: sqlite needs a path (sqlite:PATH)`);
    return { kind: 'sqlite', path: resolve(path) };
  }
  if (spec.startsWith('etcd://')) {
    const endpoints = spec
      .slice('etcd://'.length)
      .split(',')
      .filter((e) => e.length > 0);
    const bad = endpoints.find((e) => !/^[A-Za-z0-9.-]+:\d{1,5}$|^\[[0-9A-Fa-f:]+\]:\d{1,5}$/.test(e));
    if (endpoints.length === 0 || bad !== undefined)
      throw new SafeResumeError(
        'INVALID_ARGUMENT',
        `store ${JSON.stringify(spec)}: etcd endpoints are HOST:PORT separated by commas${bad ? ` (not ${JSON.stringify(bad)})` : ''}`,
      );
    return { kind: 'etcd', endpoints };
  }
  throw new SafeResumeError('INVALID_ARGUMENT', `store ${JSON.stringify(spec)}: expected ${forms}`);
}

export interface OpenStoreOptions {
  sqlite?: SqliteStoreOptions;
  etcd?: EtcdStoreOptions;
}

/** Open the store a spec names. */
export function openStore(spec: string | StoreSpec, opts: OpenStoreOptions = {}): Store {
  const s = typeof spec === 'string' ? parseStoreSpec(spec) : spec;
  switch (s.kind) {
    case 'memory':
      return new MemoryStore();
    case 'sqlite':
      return new SqliteStore(s.path, opts.sqlite);
    case 'etcd':
      return new EtcdStore(s.endpoints, opts.etcd);
  }
}
