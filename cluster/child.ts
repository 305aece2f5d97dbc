/**
 * One process of a local cluster, started by the launcher with an IPC channel:
 *   node dist/cluster/child.js replica     a storage replica over the shared SQLite file
 *   node dist/cluster/child.js node        a node agent hosting workload applications
 * Its configuration, with its key (a replica's: the cluster key; a node's: its node credential and the
 * credentials of the principals its applications run as), comes as the first message on the IPC channel,
 * never in its command line or environment (which other local users can read). It reports its status
 * to the launcher, takes commands from it, and exits when the launcher goes away (the IPC channel
 * closes), so a killed launcher leaves no orphans.
 */
import { ChildConfig, type ChildReport } from '../runtime/ipc.js';
import { ConnectFailed, exit, madeLog, send } from './child-process.js';
import { node } from './child-node.js';
import { replica } from './child-replica.js';

// The launcher is gone: so are we.
process.on('disconnect', () => exit(0));
/** How long a child waits for its configuration from the launcher. */
const CONFIG_WAIT_MS = 10_000;

/** The configuration the launcher sends first on the IPC channel. */
function configFromLauncher(): Promise<unknown> {
  return new Promise((resolve, reject) => {
    if (!process.send)
      return reject(new Error('no IPC channel: a child process gets its configuration from the launcher'));
    const timer = setTimeout(
      () => reject(new Error(`no configuration from the launcher within ${CONFIG_WAIT_MS / 1000} s`)),
      CONFIG_WAIT_MS,
    );
    const take = (m: unknown) => {
      const msg = ChildConfig.safeParse(m);
      if (!msg.success) return;
      clearTimeout(timer);
      process.off('message', take);
      resolve(msg.data.config);
    };
    process.on('message', take);
  });
}

const [role] = process.argv.slice(2);
// Files this process creates (the store and its WAL, logs, requestId files) are its owner's only.
process.umask(0o077);
try {
  const cfg = await configFromLauncher();
  await (role === 'replica'
    ? replica(cfg)
    : role === 'node'
      ? node(cfg)
      : Promise.reject(new Error(`unknown role ${role}`)));
  send({ type: 'ready' });
} catch (err) {
  const message = (err as Error).message;
  try {
    madeLog()?.fatal({ err: message }, `could not start: ${message}`);
  } catch {
    // Nothing more to say than what goes to stderr.
  }
  // A node that could not connect is named by the launcher, in its one line; saying it here too would make two.
  if (!(err instanceof ConnectFailed && process.connected)) console.error(`safe-resume child ${role}: ${message}`);
  // The launcher shows why (status, inspector), not only that the process is down.
  if (process.connected)
    process.send?.(
      {
        type: 'failed',
        error: message.slice(0, 4096),
        ...(err instanceof ConnectFailed ? { connect: true } : {}),
      } satisfies ChildReport,
      undefined,
      {},
      () => exit(1),
    );
  else exit(1);
}
