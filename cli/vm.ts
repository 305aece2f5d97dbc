/**
 * `vm run | list | stop | resume`: a QEMU guest whose disks are targets of a running cluster (`up`),
 * served by a node's NBD export, supervised (vm/supervisor.ts): stopped through QMP when a disk's
 * handle stays paused longer than --stop-after, continued when every resume is granted, and on a denial
 * what the disk's resume policy says.
 *
 * `vm run` starts QEMU itself with its QMP socket and the disks wired to the node's export socket
 * (`<dir>/nbd/<node>.sock`), and follows the export's handles of those targets on the cluster's
 * timeline (the `/events` of its control endpoint, every 200 ms). It keeps the VM's own directory,
 * `<dir>/vms/<name>/` (0700: qmp.sock, control.sock), while QEMU runs; `list`, `stop` and `resume` ask
 * the control socket there (vm/control.ts).
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import type { HandleState } from '../actors/application.js';
import type { TimelineEvent } from '../cluster/timeline.js';
import { nbdSocketPath } from '../cluster/nbd-dir.js';
import { EXIT, OperatorError } from '../runtime/operator-error.js';
import { askVm, serveVmControl } from '../vm/control.js';
import { RESUME_POLICIES, DEFAULT_STOP_AFTER_MS, type DiskSpec, type ResumePolicy } from '../vm/policy.js';
import { VmSupervisor, type VmView } from '../vm/supervisor.js';
import { UsageError } from './args.js';
import { helpFor } from './help.js';

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
const POLL_MS = 200;

export async function vmCommand(
  argv: string[],
  out: (t: string) => void,
  err: (t: string) => void = out,
): Promise<number> {
  const dashes = argv.indexOf('--');
  const own = dashes < 0 ? argv : argv.slice(0, dashes);
  const qemuArgs = dashes < 0 ? [] : argv.slice(dashes + 1);
  const { values, positionals } = parseArgs({
    args: own,
    options: {
      dir: { type: 'string' },
      disk: { type: 'string', multiple: true },
      'stop-after': { type: 'string' },
      bus: { type: 'string' },
      node: { type: 'string' },
      qemu: { type: 'string' },
      'accept-modified': { type: 'boolean' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    allowPositionals: true,
    strict: true,
  });
  const [sub, name, ...extra] = positionals;
  if (values.help || sub === undefined) return (out(helpFor('vm')), 0);
  const dir = resolve(values.dir ?? '.safe-resume');
  const json = values.json === true;
  if (sub === 'list') {
    if (name !== undefined) throw new UsageError('vm list takes no arguments');
    return list(dir, json, out);
  }
  if (!['run', 'stop', 'resume'].includes(sub)) throw new UsageError(`vm ${sub}: give run, list, stop or resume`);
  if (name === undefined || !NAME.test(name) || extra.length > 0)
    throw new UsageError(`vm ${sub} takes one VM name (letters, digits, ., _, -)`);
  if (values['accept-modified'] && sub !== 'resume') throw new UsageError('--accept-modified is for vm resume');
  if (sub !== 'run') {
    if (
      values.disk ||
      values['stop-after'] !== undefined ||
      values.bus ||
      values.node ||
      values.qemu ||
      qemuArgs.length
    )
      throw new UsageError('--disk, --stop-after, --bus, --node, --qemu and QEMU arguments are for vm run');
    const control = join(dir, 'vms', name, 'control.sock');
    if (!existsSync(control)) {
      const message = `no VM ${name} runs in ${dir} (vm list shows those that do)`;
      if (json) out(JSON.stringify({ ok: false, code: 'NOT_FOUND', message }) + '\n');
      else err(`safe-resume vm ${sub}: NOT_FOUND: ${message}\n`);
      return EXIT.failed;
    }
    const a = await askVm(
      control,
      sub === 'stop' ? { op: 'stop' } : { op: 'resume', acceptModified: values['accept-modified'] === true },
    );
    if (!a.ok) {
      if (json) out(JSON.stringify(a) + '\n');
      else err(`safe-resume vm ${sub} ${name}: ${a.code}: ${a.message}\n`);
      return EXIT.failed;
    }
    out(json ? JSON.stringify({ ok: true, ...a.view }) + '\n' : describe(a.view));
    return 0;
  }
  const disks = (values.disk ?? []).map(parseDisk);
  if (disks.length === 0) throw new UsageError('vm run needs at least one --disk TARGET[:POLICY]');
  const stopAfter = values['stop-after'] ?? String(DEFAULT_STOP_AFTER_MS);
  if (!/^\d+$/.test(stopAfter)) throw new UsageError('--stop-after takes milliseconds (0 or more)');
  const bus = values.bus ?? 'virtio';
  if (bus !== 'virtio' && bus !== 'nvme') throw new UsageError('--bus is virtio or nvme');
  const device = bus === 'nvme' ? 'nvme' : 'virtio-blk-pci';
  return run(
    dir,
    name,
    disks,
    Number(stopAfter),
    values.node,
    values.qemu ?? 'qemu-system-x86_64',
    qemuArgs,
    out,
    device,
  );
}

/** `--disk TARGET[:POLICY]`. */
function parseDisk(spec: string): DiskSpec {
  const i = spec.lastIndexOf(':');
  const policy = i < 0 ? undefined : spec.slice(i + 1);
  const target = i < 0 ? spec : spec.slice(0, i);
  if (policy !== undefined && !RESUME_POLICIES.includes(policy as ResumePolicy))
    throw new UsageError(`--disk ${spec}: the policy is one of ${RESUME_POLICIES.join(', ')}`);
  if (!target) throw new UsageError(`--disk ${spec}: no target`);
  return policy === undefined ? { target } : { target, policy: policy as ResumePolicy };
}

function controlOf(dir: string): { url: string; token: string } {
  try {
    return JSON.parse(readFileSync(join(dir, 'control.json'), 'utf8')) as { url: string; token: string };
  } catch {
    throw new OperatorError(
      `no running cluster with a control endpoint in ${dir} (start one with 'safe-resume up --dir ${dir}')`,
      EXIT.failed,
    );
  }
}

async function run(
  dir: string,
  name: string,
  disks: DiskSpec[],
  stopAfterMs: number,
  nodeGiven: string | undefined,
  qemu: string,
  qemuArgs: string[],
  out: (t: string) => void,
  device: string,
): Promise<number> {
  const { url, token } = controlOf(dir);
  const get = async <T>(path: string): Promise<T> =>
    (await (
      await fetch(url + path, { headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(5000) })
    ).json()) as T;
  const node = nodeGiven ?? (await get<{ nodes?: Array<{ id: string }> }>('/status')).nodes?.[0]?.id ?? 'node-1';
  const nbd = nbdSocketPath(dir, node);
  if (!existsSync(nbd)) throw new OperatorError(`${node} serves no NBD export at ${nbd}`, EXIT.failed);
  const vmDir = join(dir, 'vms', name);
  const control = join(vmDir, 'control.sock');
  if (existsSync(control) && (await askVm(control, { op: 'view' }, 2000).catch(() => undefined)))
    throw new OperatorError(`VM ${name} already runs (safe-resume vm list)`, EXIT.failed);
  rmSync(vmDir, { recursive: true, force: true });
  mkdirSync(vmDir, { recursive: true, mode: 0o700 });
  const qmpPath = join(vmDir, 'qmp.sock');
  const wiring = disks.flatMap((d, i) => [
    '-blockdev',
    `driver=nbd,server.type=unix,server.path=${nbd},export=${d.target},node-name=sr${i}`,
    '-device',
    `${device},drive=sr${i},serial=sr${i}`,
  ]);
  // Events of the cluster before this VM are history: follow from now on.
  let after = (await get<{ next: number }>('/events')).next;
  const vm = new VmSupervisor({ name, qmpPath, disks, stopAfterMs });
  const proc = spawn(qemu, ['-qmp', `unix:${qmpPath},server=on,wait=off`, ...wiring, ...qemuArgs], {
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const exited = new Promise<number>((r) => {
    proc.once('exit', (code, signal) => r(code ?? (signal ? 128 : 1)));
    proc.once('error', (err) => (out(`vm run ${name}: cannot start ${qemu}: ${err.message}\n`), r(EXIT.failed)));
  });
  let done = false;
  void exited.then(() => (done = true));
  for (let i = 0; i < 300 && !existsSync(qmpPath) && !done; i++) await new Promise((r) => setTimeout(r, 50));
  const server = done ? undefined : await serveVmControl(control, vm);
  // QEMU may exit before it listens (bad arguments): its exit code is the answer then.
  if (!done) await vm.connect().catch((e: unknown) => (done ? undefined : Promise.reject(e as Error)));
  let last = '';
  vm.onChange((v) => {
    const line = `${v.phase}${v.why ? `: ${v.why}` : ''}`;
    if (line !== last) out(`vm ${name}: ${(last = line)}\n`);
  });
  const quit = () => proc.kill('SIGTERM');
  process.once('SIGINT', quit);
  process.once('SIGTERM', quit);
  // The export's handles of each disk (nbd#N of `node`), newest first: the disk is served through the newest open one.
  const apps = new Map<string, Map<string, { state: string; reason?: string | undefined }>>();
  while (!done) {
    const got = await get<{ events: TimelineEvent[]; next: number }>(`/events?after=${after}`).catch(() => undefined);
    if (got) {
      after = got.next;
      for (const e of got.events) {
        if (e.kind !== 'handle' || e.node !== node || !e.app.startsWith('nbd#')) continue;
        if (!disks.some((d) => d.target === e.target)) continue;
        const m = apps.get(e.target) ?? new Map<string, { state: string; reason?: string | undefined }>();
        apps.set(e.target, m);
        m.set(e.app, { state: e.to, reason: e.reason });
        const open = [...m.entries()].filter(([, s]) => s.state !== 'closed');
        const [app, cur] = open.sort((a, b) => Number(b[0].slice(4)) - Number(a[0].slice(4)))[0] ?? [];
        if (cur)
          vm.diskState(e.target, cur.state as HandleState, cur.reason, {
            node,
            app,
            requestId: e.requestId,
            ...(e.changed ? { changed: e.changed } : {}),
          });
      }
    }
    await Promise.race([exited, new Promise((r) => setTimeout(r, POLL_MS))]);
  }
  const code = await exited;
  process.off('SIGINT', quit);
  process.off('SIGTERM', quit);
  const view = vm.view();
  vm.close();
  server?.close();
  rmSync(vmDir, { recursive: true, force: true });
  out(`vm ${name}: QEMU exited (${code})${view.phase === 'killed' ? `: ${view.why}` : ''}\n`);
  return view.phase === 'killed' ? EXIT.failed : code;
}

/** The VMs running in `dir` (those whose control socket answers). */
async function running(dir: string): Promise<VmView[]> {
  const root = join(dir, 'vms');
  const names = existsSync(root) ? readdirSync(root).filter((n) => NAME.test(n)) : [];
  const views: VmView[] = [];
  for (const n of names) {
    const a = await askVm(join(root, n, 'control.sock'), { op: 'view' }, 2000).catch(() => undefined);
    if (a?.ok) views.push(a.view);
  }
  return views;
}

/** For `explain <target>`: the running VMs with `target` as a disk, and what `vm list` says of each. */
export async function vmsWithDisk(dir: string, target: string): Promise<{ vms: VmView[]; text: string }> {
  const vms = (await running(dir)).filter((v) => v.disks.some((d) => d.target === target));
  return { vms, text: vms.map((v) => `vm ${describe(v)}`).join('') };
}

async function list(dir: string, json: boolean, out: (t: string) => void): Promise<number> {
  const views = await running(dir);
  if (json) out(JSON.stringify({ ok: true, vms: views }) + '\n');
  else out(views.length === 0 ? `no VM runs in ${dir}\n` : views.map(describe).join(''));
  return 0;
}

function describe(v: VmView): string {
  const lines = [`${v.name}: ${v.phase}${v.why ? ` (${v.why})` : ''}; stop after ${v.stopAfterMs} ms`];
  for (const d of v.disks) {
    const denial = d.denial ? `; denied ${d.denial.reason} ${JSON.stringify(d.denial.details)}` : '';
    lines.push(`  ${d.target} [${d.policy}]: ${d.state}${denial}`);
  }
  if (v.phase === 'held') lines.push(`  continue anyway: safe-resume vm resume ${v.name} --accept-modified`);
  return lines.join('\n') + '\n';
}
