/** What a simulated world is built from: its options, what each replica's store is built with, its timings. */
import type { ActorClock, Env } from '../actors/env.js';
import type { KeptDisk, MemoryKeptIds } from '../actors/kept.js';
import type { TxStore } from '../store/base.js';
import type { MemoryStore } from '../store/memory.js';
import type { Transport } from '../transport/types.js';
import type { SimLeaseState } from './store-leases.js';

export type MemoryState = MemoryStore['state'];

export interface WorldOptions {
  seed: number;
  replicas: number;
  nodes: number;
  appsPerNode: number;
  holdMs: number;
  pauseTimeoutMs: number;
  /**
   * The store each replica uses over the shared state: `sim` models the SQLite adapter (group commit
   * after a simulated fsync, transactions that roll back, uncommitted work lost when the replica is
   * killed, injected busy/I/O faults: what the fault schedules run), `memory` commits each operation
   * at once (what the scenarios run). Default `memory`.
   */
  store?: 'sim' | 'memory';
  /** Build the store of one replica over the shared state instead. Tests inject broken variants here. */
  makeStore?: (state: MemoryState, ctx: StoreContext) => TxStore;
  /** Think time between an application's operations. */
  thinkMs?: [number, number];
  /** Override the simulation's timings. */
  timing?: Partial<typeof TIMING>;
  /** Receives the inspection events of every actor in the world. */
  inspect?: Env['inspect'];
  /** Wrap the transport the replicas serve on. Tests inject broken variants here. */
  replicaTransport?: (t: Transport) => Transport;
  /**
   * Keep each node's requestIds in a file on a simulated disk of its own (page cache, power loss,
   * disk errors: see `disk`) instead of in memory; a restarted agent reads the file back.
   */
  keptOnDisk?: boolean;
  /**
   * Build a node's requestId file on its disk instead (with `keptOnDisk`; `dir` is KEPT_DIR). Tests
   * inject broken variants here.
   */
  makeKept?: (dir: string, node: string, disk: KeptDisk) => MemoryKeptIds;
  /** With `store: 'sim'`: locks hang on their sessions' leases, as on etcd (SimLeaseOptions). */
  leases?: boolean;
}

/** What a store of one replica is built with. */
export interface StoreContext {
  /** The store's own clock (the database host's): lock expiries are judged on it. */
  clock: ActorClock;
  /** The timers of the replica process using the store, with its host's wall clock (skewed, stepped) as `now`. */
  replicaClock: ActorClock;
  random: () => number;
  /** etcd's side of the lease model, shared by every replica's store (used by stores built in lease mode). */
  leases: SimLeaseState;
  /** The replicas' renewal interval. */
  renewMs: number;
}

/** Where a node agent keeps its requestId file on the node's disk. */
export const KEPT_DIR = '/var/lib/safe-resume';

/** The replicas' heartbeat interval is the node agents' too (adopted from welcome). */
export const TIMING = {
  heartbeatIntervalMs: 100,
  leaseMs: 300,
  renewMs: 100,
  backoffMs: 20,
  backoffMaxMs: 400,
  failoverMs: 1500,
};
