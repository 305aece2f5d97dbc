/** The command line's help: the whole of it, and one command's. */

export const HELP = `safe-resume — pause applications through storage failures, resume them safely

Usage:
  safe-resume up [options]            start a local cluster (real processes) and show its status
  safe-resume status [<id>] [--target T] [-w] [--json]   every replica, node and handle of the running
                                      cluster (or of one replica or node, or one target's); -w: again
                                      every second (time in state, pause timeout left, writes/s)
  safe-resume kill <id>               SIGKILL a replica or node (replica-1, node-2, ...)
  safe-resume restart <id>            restart a replica or node (killing it first if it runs)
  safe-resume partition <node> [--for S]   cut a node off from every replica (heal after S seconds)
  safe-resume heal [<node>]           end partitions (of one node, or all)
  safe-resume dismount <replica> --for S   the replica's store is unavailable for S seconds
  safe-resume reboot-storage          restart every replica
  safe-resume move <app> --to <node>  move an application (with its requestId) to another node
  safe-resume write <target> <text> [--as NAME]   write text at offset 0 as an ad-hoc application
                                      (of principal default, as the workload's applications are)
  safe-resume read <target> [--offset N] [--length N] [--hex]   read a target as an ad-hoc reader
                                      (principal default; 1 MiB from offset 0 unless told, up to 16 MiB);
                                      on a terminal, data that is not printable text is shown as hex
  safe-resume create <target> --size SIZE [--node N]   create a disk of SIZE bytes (4G, 512M, 1T, 65536;
                                      K/M/G/T are powers of 1024; up to 1T), sparse, and print its NBD URL
  safe-resume events [--target T] [--since TIME|DURATION] [--follow]   the timeline: faults injected,
                                      processes down and up, and each handle's way through them (paused,
                                      resume granted or denied, why); --since 2026-12-02T10:00:00Z or 10m
                                      (s, m, h, d); --follow: then what happens next, until Ctrl-C
  safe-resume explain <target | requestId>   why a target or handle is where it is: its owner and who else
                                      may open it, who holds the lock, whether that session is alive,
                                      when the lock can lapse, the handles
  safe-resume grant <target> --principal P --mode read|write
                                      let principal P open a target (read, or write and read), whoever owns
                                      it (its owner does the same with app.grant; docs/security.md)
  safe-resume revoke <target> --principal P   take P's access away (its next open or resume is refused)
  safe-resume export <target> [--node N]   the URL a block client (qemu-io, QEMU) opens the target with:
                                      the node's Unix socket (acting as principal default), then, with
                                      up --nbd-tcp, its TLS address (a key: credentials nbd-psk)
  safe-resume down [--no-wait]        stop the cluster and wait until every process is gone (nothing
                                      running is fine: the cluster is down either way)
  safe-resume logs [<process>] [--follow]   the JSON logs in <dir>/logs/ (launcher, replica-N,
                                      node-N, ...), one pretty line each, merged by time; --follow: then
                                      what is logged next, until Ctrl-C; --json: the JSON lines as written
  safe-resume completion bash|zsh     print a shell completion script (eval "$(safe-resume completion bash)")
  safe-resume clean                   remove a stopped cluster's data (store, kept requestIds, logs, key)
  safe-resume sim [options]           run seeded fault schedules in the simulated world and check them
  safe-resume bench [--json] [--smoke] [--only GROUP,...]   run the benchmarks (in a Node with --expose-gc, as npm run bench)
  safe-resume fuzz [--frames N] [--connections N] [--seed N] [--json]
                                      malformed frames against a live replica while an application keeps
                                      working; reports crashes, the application's failures, replica memory
                                      (default 100,000 frames over 1,000 connections; docs/fuzz.md)
  safe-resume replica --id NAME --store etcd://HOST:PORT,... [--listen HOST:PORT] [--dir PATH] [--tls-* F] [--etcd-ca F [--etcd-cert F --etcd-key F]]
                                      run one storage replica on this host, in the foreground (docs/deploy.md;
                                      'safe-resume replica --help' for the options)
  safe-resume credentials issue --node NAME | --principal NAME [--out FILE]
                                      derive a node's or a principal's credential from the cluster key
                                      (docs/security.md; 'safe-resume credentials help' for the options)
  safe-resume credentials nbd-psk --principal NAME [--out DIR]
                                      a principal's TLS pre-shared key for the NBD export (DIR/keys.psk)
  safe-resume vm run <name> --disk TARGET[:POLICY] ... [--stop-after MS] [--bus virtio|nvme] [--node N]
                    [--qemu BIN] -- <qemu args>
                                      run QEMU with each TARGET as a disk (virtio-blk, or NVMe with --bus
                                      nvme, for a kernel without virtio built in) from the node's NBD export
                                      (default: the first node), supervised: stopped through QMP when a
                                      disk stays paused MS ms (default 10000; 0: at once), continued when
                                      every resume is granted; on a denied resume POLICY decides:
                                      leave-paused (default: stays stopped, says why), kill (QEMU quits),
                                      report (continues; the guest gets I/O errors on that disk); runs in
                                      the foreground until QEMU exits
  safe-resume vm list                 the supervised VMs: running, stopped, held by a denial (which disk,
                                      why), and each disk's handle state
  safe-resume vm stop <name>          stop a VM (it stays stopped until vm resume)
  safe-resume vm resume <name> [--accept-modified]   continue a VM; one held by a denied resume only
                                      with --accept-modified (its guest then gets I/O errors on that disk)
  safe-resume help [<command>]        show this help, or one command's (as <command> --help does)
  safe-resume --version               print the version

Every command takes --dir (default ./.safe-resume) to find the running cluster, and --json.

Options for up:
  --replicas N           storage replicas (default 3)
  --nodes N              node agents (default 2)
  --apps N               workload applications per node (default 2), named app-1, app-2, ... across nodes
  --store sqlite|etcd|memory
                         sqlite (default): real processes over <dir>/store.sqlite; etcd: real processes
                         over a local 3-member etcd in <dir>/etcd (etcd-1..3; needs Debian's etcd-server
                         and openssl; TLS only, and only clients with the certificate it makes in
                         <dir>/etcd/tls), or over --etcd-endpoints HOST:PORT,... of a running one (plain
                         HTTP); memory: everything in this one process, no control commands
  --dir PATH             data directory: store, cluster secret, kept requestIds, logs (default ./.safe-resume);
                         new, empty, or one an earlier up made: one holding other files is refused
  --hold-ms MS           hold period of a lost session's locks (default 5000)
  --pause-timeout-ms MS  how long a paused handle waits before it is invalidated (default 60000)
  --port N               first replica port; replicas use N, N+1, ... (default: free ports)
  --interval-ms MS       pause between workload writes (default 200)
  --inspector-port N     port of the inspector page on 127.0.0.1 (default: a free port; its address,
                         with the control token, is printed at start)
  --stately [--stately-port N]   also relay every event to the public Stately inspector from a page
                         on 127.0.0.1:N (default 8080; online only; its address is printed at start)
  --tls-cert F --tls-key F --tls-ca F
                         serve every replica over wss:// with this certificate and key (PEM; it must name
                         127.0.0.1 as an IP subjectAltName), and have nodes accept only a certificate from
                         this CA (docs/tls.md shows how to make them with openssl)
  --nbd-tcp              also serve each node's NBD export on 127.0.0.1 TCP, where a client must start
                         TLS and prove a principal with its pre-shared key (TLS-PSK; safe-resume
                         credentials nbd-psk); without it the export is only a Unix socket,
                         <dir>/nbd/<node>.sock, that only this user reaches (a client there acts as
                         principal default). The socket path must fit in 107 bytes: keep --dir short
  --nbd-group NAME       let group NAME reach the export sockets too (<dir>/nbd 0750, sockets 0660)
  --config FILE          JSON file with any of these options (flags win)
  --pretty               also print every process's log, pretty, on the terminal (coloured on a
                         terminal or with FORCE_COLOR=1)
  --no-color             no colour in any process's output (as NO_COLOR=1 does)
  --chaos --for S [--seed N] [--json]
                         drive a random fault schedule for S seconds, check the history, print a
                         summary and exit (non-zero on any violation)
  --faults K1,K2,...     chaos faults in this order (again from the start) instead of at random; kinds:
                         replica-kill, storage-reboot, partition, dismount, node-restart, app-move,
                         foreign-writer, etcd-leader-kill (--store etcd), link-cut (--netns)
  --netns FILE           run each process on a host of its own: a Linux network namespace you made, with
                         its address (JSON: {"hosts": {"replica-1": {"netns": "NS", "address": "IP"}, ...}},
                         every etcd-N, replica-N and node-N); needs root; docs/deploy.md

Options for sim:
  --seeds N              schedules to run (default 100); seeds start at --from (default 1)
  --from S               first seed
  --seed S               replay one seed and print its faults, verdict and trace
  --workers N            worker threads the seeds are spread over (default: one per core; 1 = this thread)
  --json                 print one JSON object (schedules, steps, faults, resumes, violations)
  Each run stops at its first violation; the summary lists every violating seed with its replay
  command, then the first one's trace. Exit code 1 if any guarantee (S1-S5, L1-L3) is violated.
  Soak: safe-resume sim --seeds 100000

Logs are pino JSON, one file per process, in <dir>/logs/.
`;

/**
 * One command's help: its usage lines from HELP, its options section if it has one, and the options
 * every command takes. An unknown command gets the whole help.
 */
export function helpFor(cmd: string): string {
  const lines = HELP.split('\n');
  const usage: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i]!;
    if (l !== `  safe-resume ${cmd}` && !l.startsWith(`  safe-resume ${cmd} `)) continue;
    usage.push(l);
    // Continuation lines are indented to the description column.
    while (lines[i + 1]?.startsWith(' '.repeat(20))) usage.push(lines[++i]!);
  }
  if (usage.length === 0) return HELP;
  const from = lines.indexOf(`Options for ${cmd}:`);
  const options = from < 0 ? [] : lines.slice(from, lines.indexOf('', from) < 0 ? undefined : lines.indexOf('', from));
  return [
    'Usage:',
    ...usage,
    '',
    ...(options.length ? [...options, ''] : []),
    'Every command takes --dir (default ./.safe-resume) to find the running cluster, --json, and --help.',
    '',
  ].join('\n');
}
