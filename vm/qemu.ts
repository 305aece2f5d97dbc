/**
 * A QEMU guest (qemu-system-x86_64 under TCG: no KVM is needed) booting the guest of guest-image.ts,
 * its disk an NBD export's target on a Unix socket attached as NVMe, its serial console read line by
 * line. `startGuest` takes extra QEMU arguments (`qmp` adds a QMP socket), so a caller can drive the
 * machine; `stop` ends only the process it started, bounded in time.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { guestInitramfs, guestKernel, workloadArgs, GUEST_CACHE, type Workload } from './guest-image.js';

export const QEMU = '/usr/bin/qemu-system-x86_64';

export interface GuestOptions {
  /** The guest's disk: `target` of the NBD export listening on the Unix socket `socket`. */
  disk: { socket: string; target: string };
  /** What the guest's init does (guest-image.ts). */
  workload: Workload;
  /** A QMP socket to listen on (`-qmp unix:<path>,server=on,wait=off`). */
  qmp?: string;
  /** More QEMU arguments, appended as given. */
  qemuArgs?: string[];
  /** More kernel command line words. */
  append?: string[];
  /** Guest memory, MiB (default 256). */
  memoryMiB?: number;
  /** Where the kernel and initramfs are kept (default guest-image.ts's GUEST_CACHE). */
  cache?: string;
}

/** A line the guest printed on its serial console, and when it arrived (`performance.now()`, ms). */
export interface ConsoleLine {
  text: string;
  at: number;
}

/** What a line of the console may carry besides text: carriage returns, the firmware's screen clearing. */
const TERMINAL_CODES = /\r|\x1b(\[[0-?]*[ -/]*[@-~]|[@-Z\\-_]|c)/g;

/** QEMU's option syntax doubles a comma inside a value. */
const escape = (value: string) => value.replaceAll(',', ',,');

/** The QEMU command line for `opts`, given the kernel and initramfs paths. */
export function qemuArgs(opts: GuestOptions, kernel: string, initrd: string): string[] {
  const append = ['console=ttyS0', 'quiet', 'panic=-1', 'rdinit=/init', ...workloadArgs(opts.workload)];
  const nbd = `driver=nbd,server.type=unix,server.path=${escape(opts.disk.socket)},export=${escape(opts.disk.target)}`;
  return [
    ...['-machine', 'q35', '-accel', 'tcg', '-m', String(opts.memoryMiB ?? 256), '-nographic', '-no-reboot'],
    ...['-nic', 'none', '-kernel', kernel, '-initrd', initrd],
    ...['-append', [...append, ...(opts.append ?? [])].join(' ')],
    ...['-blockdev', `${nbd},node-name=d0`, '-device', 'nvme,drive=d0,serial=safe-resume0'],
    ...(opts.qmp ? ['-qmp', `unix:${escape(opts.qmp)},server=on,wait=off`] : []),
    ...(opts.qemuArgs ?? []),
  ];
}

export class Guest {
  /** Every line printed on the serial console so far, in order. */
  readonly console: ConsoleLine[] = [];
  /** When the process was started (`performance.now()`, ms). */
  readonly startedAt = performance.now();
  /** Resolves once QEMU has exited (with its exit code, or the signal that ended it). */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly listeners = new Set<(line: ConsoleLine) => void>();
  private partial = '';
  /** What QEMU printed on stderr (its own complaints, not the guest's). */
  stderr = '';

  constructor(readonly proc: ChildProcess) {
    this.exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
    proc.stdout?.on('data', (d: Buffer) => this.take(d.toString('latin1')));
    proc.stderr?.on('data', (d: Buffer) => (this.stderr = (this.stderr + d.toString()).slice(-8192)));
    proc.once('exit', () => this.partial && this.take('\n'));
  }

  get running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Call `listener` with each console line from now on; returns the function that stops it. */
  onLine(listener: (line: ConsoleLine) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * The first console line (already printed or still to come) matching `pattern`; rejects once
   * `timeoutMs` has passed or QEMU has exited without printing one, naming the last lines it printed.
   */
  line(pattern: RegExp, timeoutMs = 60_000): Promise<ConsoleLine> {
    const seen = this.console.find((l) => pattern.test(l.text));
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const fail = (why: string) => {
        done();
        const tail = this.console.slice(-15).map((l) => `  ${l.text}`);
        reject(new Error(`no console line matching ${pattern} (${why}); the last lines:\n${tail.join('\n')}`));
      };
      const timer = setTimeout(() => fail(`waited ${timeoutMs} ms`), timeoutMs);
      const off = this.onLine((l) => {
        if (!pattern.test(l.text)) return;
        done();
        resolve(l);
      });
      const onExit = () => setImmediate(() => fail(`QEMU exited; stderr: ${this.stderr.trim()}`));
      this.proc.once('exit', onExit);
      const done = () => {
        clearTimeout(timer);
        off();
        this.proc.off('exit', onExit);
      };
    });
  }

  /** Stop QEMU: SIGTERM, then SIGKILL after `graceMs`; resolves once it has exited. */
  async stop(graceMs = 3000): Promise<void> {
    if (!this.running) return;
    this.proc.kill('SIGTERM');
    const timer = setTimeout(() => this.running && this.proc.kill('SIGKILL'), graceMs);
    try {
      await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  private take(chunk: string): void {
    const lines = (this.partial + chunk).split('\n');
    this.partial = lines.pop() ?? '';
    const at = performance.now();
    for (const raw of lines) {
      const line = { text: raw.replace(TERMINAL_CODES, ''), at };
      this.console.push(line);
      for (const l of this.listeners) l(line);
    }
  }
}

/**
 * Boot the guest (fetching its kernel and building its initramfs first if they are missing) with its
 * disk on the export, and return it as soon as QEMU is started.
 */
export async function startGuest(opts: GuestOptions): Promise<Guest> {
  if (!existsSync(QEMU)) throw new Error(`${QEMU} missing: apt-get install -y qemu-system-x86 (as .ci/run does)`);
  const cache = opts.cache ?? GUEST_CACHE;
  const kernel = await guestKernel(cache);
  const initrd = guestInitramfs(cache);
  const proc = spawn(QEMU, qemuArgs(opts, kernel, initrd), { stdio: ['ignore', 'pipe', 'pipe'] });
  return new Guest(proc);
}
