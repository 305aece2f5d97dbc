/**
 * The NBD protocol's numbers (doc/proto.md of the NetworkBlockDevice project): the magics, the
 * handshake flags, options and replies, the transmission flags and commands, and the errors a
 * request is answered with.
 */
import { SafeResumeError } from '../errors.js';

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

export const FLAG_FIXED_NEWSTYLE = 1;
export const FLAG_NO_ZEROES = 2;

export const OPT = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
} as const;
export const REP = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_TLS_REQD: 0x80000005,
  ERR_UNKNOWN: 0x80000006,
  ERR_SHUTDOWN: 0x80000007,
  ERR_TOO_BIG: 0x80000009,
} as const;
export const INFO = { EXPORT: 0, BLOCK_SIZE: 3 } as const;
export const TX = {
  HAS_FLAGS: 1 << 0,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  CAN_MULTI_CONN: 1 << 8,
} as const;
export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, WRITE_ZEROES: 6, BLOCK_STATUS: 7 } as const;
/** Command flags: FUA (accepted on any command), REQ_ONE (BLOCK_STATUS: one extent only). */
export const CMD_FLAG = { FUA: 1 << 0, REQ_ONE: 1 << 3 } as const;
/** Structured reply chunks: the DONE flag and the chunk types. */
export const REPLY_FLAG_DONE = 1;
export const REPLY = { NONE: 0, OFFSET_DATA: 1, BLOCK_STATUS: 5, ERROR: 0x8001 } as const;
/** The flags of a `base:allocation` extent. */
export const STATE = { HOLE: 1 << 0, ZERO: 1 << 1 } as const;
export const ERR = { EPERM: 1, EIO: 5, ENOMEM: 12, EINVAL: 22, ENOSPC: 28, ENOTSUP: 95, ESHUTDOWN: 108 } as const;

/** The handshake went wrong: the connection is closed. */
export class ProtocolError extends Error {}

/** A request's failure, answered with its NBD error. */
export class Errno extends Error {
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(message);
  }
}

export function errnoOf(err: unknown): number {
  if (err instanceof Errno) return err.errno;
  if (err instanceof SafeResumeError) return err.code === 'INVALID_ARGUMENT' ? ERR.EINVAL : ERR.EIO;
  return ERR.EIO;
}
