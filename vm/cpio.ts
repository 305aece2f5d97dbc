/**
 * The newc ("new ASCII") cpio format the Linux kernel unpacks an initramfs from, written in code so that
 * building one needs no cpio program and no root (a device node is only a header here).
 */

export type CpioEntry =
  | { name: string; type: 'dir' }
  | { name: string; type: 'file'; data: Uint8Array; mode?: number }
  | { name: string; type: 'symlink'; target: string }
  | { name: string; type: 'char'; major: number; minor: number };

const pad4 = (n: number) => (4 - (n % 4)) % 4;

function header(fields: number[]): string {
  return '070701' + fields.map((f) => f.toString(16).padStart(8, '0')).join('');
}

/** The archive of `entries` (in order: a directory before what it holds), ended by the trailer. */
export function newc(entries: CpioEntry[]): Uint8Array {
  const enc = new TextEncoder();
  const parts: Uint8Array[] = [];
  let size = 0;
  const push = (b: Uint8Array) => {
    parts.push(b);
    size += b.length;
  };
  const put = (ino: number, name: string, mode: number, data: Uint8Array, rdev: [number, number] = [0, 0]) => {
    const nameBytes = enc.encode(`${name}\0`);
    const nlink = (mode & 0o170000) === 0o040000 ? 2 : 1;
    // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check
    const fields = [ino, mode, 0, 0, nlink, 0, data.length, 0, 0, rdev[0], rdev[1], nameBytes.length, 0];
    push(enc.encode(header(fields)));
    push(nameBytes);
    push(new Uint8Array(pad4(110 + nameBytes.length)));
    push(data);
    push(new Uint8Array(pad4(data.length)));
  };
  entries.forEach((e, i) => {
    const ino = i + 1;
    if (e.type === 'dir') put(ino, e.name, 0o040755, new Uint8Array(0));
    else if (e.type === 'file') put(ino, e.name, 0o100000 | (e.mode ?? 0o644), e.data);
    else if (e.type === 'symlink') put(ino, e.name, 0o120777, enc.encode(e.target));
    else put(ino, e.name, 0o020600, new Uint8Array(0), [e.major, e.minor]);
  });
  put(0, 'TRAILER!!!', 0, new Uint8Array(0));
  const out = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
