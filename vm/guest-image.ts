/**
 * The guest a virtual machine under test boots: Debian's cloud kernel (not installed: its package is
 * downloaded with `apt-get download` and unpacked with `dpkg -x` into a cache directory, once) and an
 * initramfs of busybox-static and an `/init` script, both kept in the cache directory (`.cache/guest/`
 * at the repository root unless told otherwise). The cloud kernel has its NVMe driver built in (virtio's
 * is a module it cannot load here), so the guest's disk is attached as NVMe: `/dev/nvme0n1`.
 *
 * The init mounts proc, sys and dev, prints `init up <seconds since the kernel started>`, then runs the
 * workload its kernel command line names (see `workloadArgs`): it writes numbered 4 KiB blocks to
 * `/dev/nvme0n1`, each with direct I/O and an fsync, printing `block <n> done` on the serial console once
 * a block's write completed (or `block <n> failed: <why>` and stopping), then `workload done`, and
 * powers off.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { newc, type CpioEntry } from './cpio.js';

const run = promisify(execFile);

// This file runs from dist/vm or vm/.
const HERE = fileURLToPath(new URL('.', import.meta.url));
const ROOT = join(HERE, HERE.includes(join('dist', 'vm')) ? '../..' : '..');
/** Where the kernel and the initramfs are kept unless told otherwise (git-ignored). */
export const GUEST_CACHE = join(ROOT, '.cache', 'guest');
/** The package whose dependency is the kernel image the guest boots. */
export const KERNEL_META_PACKAGE = 'linux-image-cloud-amd64';
/** busybox-static's binary: the one program of the initramfs. */
export const BUSYBOX = '/bin/busybox';
/** The size of a block the workload writes. */
export const GUEST_BLOCK = 4096;

/** What the guest does once booted: `blocks` blocks numbered `first`, `first + 1`, ... at offset `n * 4 KiB`. */
export interface Workload {
  blocks: number;
  /** The number of the first block (default 0). */
  first?: number;
  /** A pause before each block, in milliseconds (default none). */
  pauseMs?: number;
}

/** The kernel command line words that give the init its workload. */
export function workloadArgs(w: Workload): string[] {
  const ints = { blocks: w.blocks, first: w.first ?? 0, pauseMs: w.pauseMs ?? 0 };
  for (const [k, v] of Object.entries(ints))
    if (!Number.isSafeInteger(v) || v < 0) throw new Error(`workload ${k} must be a whole number >= 0, not ${v}`);
  return [`sr_blocks=${ints.blocks}`, `sr_first=${ints.first}`, `sr_pause=${(ints.pauseMs / 1000).toFixed(3)}`];
}

/**
 * The bytes block `n` holds once the workload wrote it: the 16-byte line `block<n, 10 digits>\n`, 256
 * times. Reading a block back and comparing it with this says which write it holds.
 */
export function guestBlock(n: number): Uint8Array {
  const line = `block${String(n).padStart(10, '0')}\n`;
  return new TextEncoder().encode(line.repeat(GUEST_BLOCK / line.length));
}

/** The init script (busybox sh). */
export const INIT = `#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
read -r up _ < /proc/uptime
# On a line of its own: the firmware's and kernel's output before it may end without one.
echo
echo "init up $up"
blocks=0; first=0; pause=0
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    sr_blocks=*) blocks="\${arg#*=}" ;;
    sr_first=*) first="\${arg#*=}" ;;
    sr_pause=*) pause="\${arg#*=}" ;;
  esac
done
i=0
while [ ! -b /dev/nvme0n1 ]; do
  i=$((i + 1))
  if [ $i -gt 300 ]; then echo "no disk: /dev/nvme0n1 did not appear"; poweroff -f; fi
  sleep 0.1
done
n=$first
last=$((first + blocks))
while [ $n -lt $last ]; do
  [ "$pause" = 0.000 ] || sleep "$pause"
  printf 'block%010d\\n' $n > /tmp/b
  for _ in 1 2 3 4 5 6 7 8; do cat /tmp/b /tmp/b > /tmp/b2; mv /tmp/b2 /tmp/b; done
  if dd if=/tmp/b of=/dev/nvme0n1 bs=${GUEST_BLOCK} seek=$n count=1 oflag=direct conv=notrunc,fsync 2> /tmp/err; then
    echo "block $n done"
  else
    echo "block $n failed: $(cat /tmp/err)"
    poweroff -f
  fi
  n=$((n + 1))
done
echo "workload done"
poweroff -f
`;

/**
 * The guest kernel's path (`vmlinuz-*` in `cache`), fetching it first if it is missing: the package
 * `linux-image-cloud-amd64` depends on, downloaded with `apt-get download` and unpacked with `dpkg -x`.
 */
export async function guestKernel(cache = GUEST_CACHE): Promise<string> {
  const found = () => readdirSync(cache).find((f) => /^vmlinuz-/.test(f));
  mkdirSync(cache, { recursive: true });
  const have = found();
  if (have) return join(cache, have);
  const work = mkdtempSync(join(cache, 'fetch-'));
  try {
    const { stdout: depends } = await run('apt-cache', ['depends', KERNEL_META_PACKAGE], { timeout: 60_000 });
    const pkg = /Depends: (linux-image-\S+)/.exec(depends)?.[1];
    if (!pkg) throw new Error(`${KERNEL_META_PACKAGE} depends on no linux-image package:\n${depends}`);
    await run('apt-get', ['download', pkg], { cwd: work, timeout: 300_000 });
    const deb = readdirSync(work).find((f) => f.endsWith('.deb'));
    if (!deb) throw new Error(`apt-get download ${pkg} left no .deb in ${work}`);
    await run('dpkg', ['-x', join(work, deb), join(work, 'x')], { timeout: 300_000 });
    const boot = join(work, 'x', 'boot');
    const image = existsSync(boot) ? readdirSync(boot).find((f) => /^vmlinuz-/.test(f)) : undefined;
    if (!image) throw new Error(`${deb} holds no boot/vmlinuz-*`);
    // A rename within the cache's file system: a concurrent fetch finds either no kernel or the whole of one.
    renameSync(join(boot, image), join(cache, image));
    return join(cache, image);
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    throw new Error(
      `no guest kernel in ${cache}, and fetching one failed (${why}). Fetch it by hand: ` +
        `apt-get update; apt-cache depends ${KERNEL_META_PACKAGE} (its linux-image-* dependency); ` +
        `apt-get download <that package>; dpkg -x <the .deb> <dir>; then copy <dir>/boot/vmlinuz-* into ${cache}`,
      { cause: err },
    );
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** Whether an x86-64 ELF program names a dynamic loader (a PT_INTERP program header): the initramfs has none. */
function hasInterpreter(elf: Buffer): boolean {
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const size = elf.readUInt16LE(0x36);
  for (let i = 0; i < elf.readUInt16LE(0x38); i++) if (elf.readUInt32LE(phoff + i * size) === 3) return true;
  return false;
}

/**
 * The initramfs's path in `cache` (uncompressed newc cpio): `/init` (INIT), busybox as `/bin/busybox`
 * with `/bin/sh` linking to it, `/dev/console` and empty proc, sys, dev, tmp. Built when missing; its
 * name carries a hash of what goes in it, so a changed script or busybox makes a new one.
 */
export function guestInitramfs(cache = GUEST_CACHE): string {
  if (!existsSync(BUSYBOX)) throw new Error(`${BUSYBOX} missing: apt-get install -y busybox-static (as .ci/run does)`);
  const busybox = readFileSync(BUSYBOX);
  if (hasInterpreter(busybox))
    throw new Error(`${BUSYBOX} is linked dynamically (Debian's busybox): apt-get install -y busybox-static`);
  const hash = createHash('sha256').update(INIT).update(busybox).digest('hex').slice(0, 16);
  const path = join(cache, `initramfs-${hash}.cpio`);
  if (existsSync(path)) return path;
  mkdirSync(cache, { recursive: true });
  const entries: CpioEntry[] = [
    ...['bin', 'dev', 'proc', 'sys', 'tmp'].map((name): CpioEntry => ({ name, type: 'dir' })),
    { name: 'dev/console', type: 'char', major: 5, minor: 1 },
    { name: 'bin/busybox', type: 'file', data: busybox, mode: 0o755 },
    ...['sh', 'mount', 'cat', 'mv', 'sleep', 'printf', 'dd', 'poweroff', 'echo'].map((name): CpioEntry => ({
      name: `bin/${name}`,
      type: 'symlink',
      target: 'busybox',
    })),
    { name: 'init', type: 'file', data: new TextEncoder().encode(INIT), mode: 0o755 },
  ];
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, newc(entries));
  renameSync(tmp, path);
  // The images an earlier script or busybox made are not booted again.
  for (const f of readdirSync(cache))
    if (/^initramfs-[0-9a-f]+\.cpio$/.test(f) && join(cache, f) !== path) rmSync(join(cache, f), { force: true });
  return path;
}
