/**
 * What an operator is told when a command cannot do its work for a reason outside safe-resume: one
 * line saying what and what to do, and an exit code per kind, so scripts can tell them apart.
 */
export const EXIT = {
  /** The command ran and its result is a failure (a refused write, a check that found violations). */
  failed: 1,
  /** The command line is wrong. */
  usage: 2,
  /** The data directory belongs to a cluster that is running. */
  dirInUse: 3,
  /** A port asked for is taken. */
  portInUse: 4,
  /** The data directory cannot be created or written. */
  dirNotWritable: 5,
  /** The store cannot be opened or written (read-only, corrupt). */
  storeUnusable: 6,
  /** A program safe-resume runs is not installed. */
  missingProgram: 7,
  /** Nothing answered within the command's deadline. */
  timeout: 8,
  /** What the command names does not exist: a target, requestId, process or log (NOT_FOUND). */
  notFound: 9,
  /** Stopped by Ctrl-C or SIGTERM before it was done (`up` still starting, a chaos run cut short). */
  interrupted: 130,
} as const;

export class OperatorError extends Error {
  constructor(
    message: string,
    readonly exitCode: (typeof EXIT)[keyof typeof EXIT],
  ) {
    super(message);
    this.name = 'OperatorError';
  }
}

/** An error from the system (EADDRINUSE, EACCES, ...) as an operator error, or undefined if it is not one we know. */
export function fromSystemError(err: unknown, what: string): OperatorError | undefined {
  const e = err as NodeJS.ErrnoException & { address?: string; port?: number };
  switch (e?.code) {
    case 'EADDRINUSE':
      return new OperatorError(
        `${what}: ${e.address ?? '127.0.0.1'}:${e.port ?? '?'} is already in use; pick another port or stop what listens there`,
        EXIT.portInUse,
      );
    case 'EACCES':
    case 'EPERM':
    case 'EROFS':
      return new OperatorError(
        `${what}: ${e.path ?? 'a file'} cannot be written (${e.code}); choose a directory you can write with --dir, or fix its permissions`,
        EXIT.dirNotWritable,
      );
    case 'ENOSPC':
      return new OperatorError(
        `${what}: no space left on the device of ${e.path ?? 'the data directory'}`,
        EXIT.dirNotWritable,
      );
    default:
      return undefined;
  }
}

/**
 * Listen on host:port, or reject with what the operator needs to know (the port in use, named as
 * `what`'s) instead of an unhandled 'error' event.
 */
export function listenOn(server: import('node:net').Server, port: number, host: string, what: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const failed = (err: Error) => reject(fromSystemError(Object.assign(err, { address: host, port }), what) ?? err);
    server.once('error', failed);
    server.listen(port, host, () => {
      server.off('error', failed);
      resolve();
    });
  });
}

/** Whether host:port can be listened on now; rejects with the operator's error if not. */
export async function checkPortFree(port: number, host: string, what: string): Promise<void> {
  const { createServer } = await import('node:net');
  const srv = createServer();
  await listenOn(srv, port, host, what);
  await new Promise<void>((r) => srv.close(() => r()));
}
