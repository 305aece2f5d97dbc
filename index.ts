/**
 * safe-resume: applications pause through storage failures and resume with the same requestId;
 * the storage grants the resume only if nobody else modified the data meanwhile.
 *
 * The public API. Everything here is documented in README.md.
 */
export {
  Application,
  Handle,
  type ApplicationOptions,
  type OpenOptions,
  type HandleState,
  type HandleEvents,
  type TargetAccessList,
} from './actors/application.js';
export { NodeAgent, type NodeAgentOptions } from './actors/node-agent.js';
export { StorageReplica, type ReplicaOptions, type ReplicaHandleView } from './actors/replica.js';
export {
  loadOrCreateSecret,
  issueCredential,
  parseCredential,
  loadCredential,
  writeCredential,
  formatCredential,
  type Credential,
  type CredentialKind,
} from './actors/auth.js';
export { FileKeptIds, MemoryKeptIds, type KeptHandle, type KeptIds } from './actors/kept.js';
export { defaultEnv, realClock, simulatedClock, seededRandom, type ActorClock, type Env } from './actors/env.js';
export {
  SafeResumeError,
  ERROR_CODES,
  MAX_CHANGED_RANGES,
  type ByteRange,
  type ChangedRanges,
  type ErrorCode,
  type InvalidationReason,
} from './errors.js';
export { MemoryStore } from './store/memory.js';
export { SqliteStore, type SqliteStoreOptions } from './store/sqlite.js';
export { EtcdStore, type EtcdStoreOptions } from './store/etcd.js';
export { openStore, parseStoreSpec, type StoreSpec } from './store/open.js';
export {
  StoreUnavailableError,
  type Store,
  type LockRecord,
  type TargetAccess,
  type Grant,
  type AccessRequest,
  type AccessResult,
} from './store/types.js';
export { WebSocketTransport, type WebSocketTransportOptions } from './transport/ws.js';
export { loadTlsFiles, type TlsOptions, type TlsFiles } from './transport/tls.js';
export { MemoryNetwork } from './transport/memory.js';
export {
  DEFAULT_LISTEN_LIMITS,
  type Transport,
  type Connection,
  type Listener,
  type ListenLimits,
} from './transport/types.js';
export { LocalCluster, type LocalClusterOptions } from './cluster/local.js';
export { VmSupervisor, type VmSupervisorOptions, type VmView, type VmEntry } from './vm/supervisor.js';
export { DEFAULT_STOP_AFTER_MS, type ResumePolicy, type DiskSpec, type Denial, type VmPhase } from './vm/policy.js';
export { QmpClient, QmpError, type QmpErrorKind, type QmpEvent, type QmpStatus } from './vm/qmp.js';
export { FaultProxy } from './transport/fault-proxy.js';
export { appHandleMachine } from './machines/app-handle.js';
export { nodeSessionMachine } from './machines/node-session.js';
export { replicaHandleMachine } from './machines/replica-handle.js';
