/**
 * A node agent's side of opening a session: connect, say hello, wait for `welcome` (or a refusal),
 * and adopt the replica's heartbeat interval unless the node insists on another one.
 */
import { SafeResumeError, isErrorCode } from '../errors.js';
import type { Connected } from '../machines/node-session.js';
import type { Decoded } from '../transport/codec.js';
import { PROTOCOL_VERSION } from '../transport/messages.js';
import type { Connection, Transport } from '../transport/types.js';
import type { ActorClock } from './env.js';

export interface HandshakeOptions {
  transport: Transport;
  secret: string;
  node: string;
  clock: ActorClock;
  timeoutMs: number;
  /** The interval the node insists on; a replica advertising another one is refused. */
  heartbeatIntervalMs: number | undefined;
}

export interface SessionCallbacks {
  /** Called at once when the welcome arrives, before any later frame of the connection. */
  welcomed(conn: Connection): void;
  /** Every frame after the welcome. */
  frame(conn: Connection, frame: Decoded): void;
  /** The connection closed after the welcome. */
  closed(conn: Connection, reason: string): void;
}

export async function handshake(url: string, o: HandshakeOptions, on: SessionCallbacks): Promise<Connected> {
  const conn = await o.transport.connect(url, { timeoutMs: o.timeoutMs });
  return new Promise<Connected>((resolve, reject) => {
    const timer = o.clock.setTimeout(() => {
      conn.terminate();
      reject(new Error(`no welcome from ${url}`));
    }, o.timeoutMs);
    let welcomed = false;
    const refuse = (err: Error) => {
      o.clock.clearTimeout(timer);
      reject(err);
      conn.terminate();
    };
    conn.onClose((info) => {
      o.clock.clearTimeout(timer);
      if (!welcomed) reject(new Error(`${url} closed the connection: ${info.reason || info.code}`));
      else on.closed(conn, info.reason || `closed (${info.code})`);
    });
    conn.onFrame((frame) => {
      if (welcomed) return on.frame(conn, frame);
      if (!frame.ok) return;
      const msg = frame.msg;
      if (msg.type === 'error') return refuse(new SafeResumeError(isErrorCode(msg.code) ? msg.code : 'INTERNAL', `${msg.code}: ${msg.message}`));
      if (msg.type !== 'welcome') return;
      const want = o.heartbeatIntervalMs;
      if (want !== undefined && want !== msg.heartbeatIntervalMs) {
        return refuse(new SafeResumeError('INVALID_ARGUMENT', `INVALID_ARGUMENT: ${url} beats every ${msg.heartbeatIntervalMs} ms, this node insists on ${want} ms (heartbeatIntervalMs)`));
      }
      welcomed = true;
      o.clock.clearTimeout(timer);
      on.welcomed(conn);
      resolve({ session: msg.session, replica: msg.replica, heartbeatIntervalMs: msg.heartbeatIntervalMs, available: msg.available });
    });
    conn.send({ type: 'hello', v: PROTOCOL_VERSION, secret: o.secret, node: o.node });
  });
}
