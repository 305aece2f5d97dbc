/** What every process of a local cluster shares: its transport, its logger, its reports to the launcher and its exit. */
import { join } from 'node:path';
import { mkdirSync, openSync } from 'node:fs';
import { pino, type Logger } from 'pino';
import { z } from 'zod';
import { WebSocketTransport } from '../transport/ws.js';
import { loadTlsFiles } from '../transport/tls.js';
import { type ChildReport } from '../runtime/ipc.js';

/** TLS files (PEM): the transport serves and connects over wss:// (docs/tls.md). */
export const TlsConfig = z.object({ certFile: z.string(), keyFile: z.string(), caFile: z.string() }).optional();
export const transportFor = (tls: z.infer<typeof TlsConfig>) =>
  new WebSocketTransport(tls ? { tls: loadTlsFiles(tls) } : {});

/** Serve /metrics and /healthz on 127.0.0.1 at this port (0: a free one); absent, none. */
export const MetricsPort = z.number().int().min(0).max(65535).optional();

/** A node that could not connect to any replica in time: its start-up fails with each replica's cause. */
export class ConnectFailed extends Error {}

export function send(msg: ChildReport): void {
  // With a callback, a launcher that just went away is an ignored error, not a crash.
  if (process.connected) process.send?.(msg, undefined, {}, () => undefined);
}

/** This process's logger, once made: an exit path logs why it exits there. */
let processLog: Logger | undefined;

/** The logger made by `logger`, if one was. */
export const madeLog = (): Logger | undefined => processLog;

export function logger(dir: string, id: string, pretty: boolean): Logger {
  mkdirSync(join(dir, 'logs'), { recursive: true });
  // The file is opened here, synchronously. A destination still opening its file makes pino's
  // flush at exit throw ("sonic boom is not ready yet"), which would replace the reason a process
  // exits early (a store it cannot open) with a crash of the logger.
  const file = pino.destination({ dest: openSync(join(dir, 'logs', `${id}.log`), 'a'), sync: false });
  const log = pretty
    ? pino(
        { base: { actor: id } },
        pino.multistream([{ stream: file }, { stream: pino.transport({ target: 'pino-pretty' }) }]),
      )
    : pino({ base: { actor: id } }, file);
  processLog = log;
  return log;
}

/** Exit, with the log flushed if it can be; a logger that cannot flush never stops the exit. */
export function exit(code: number): never {
  try {
    processLog?.flush();
  } catch {
    // The exit matters more than the last log lines.
  }
  process.exit(code);
}
