/** `read`: what was read, as bytes when piped, as text or a hex dump on a terminal. */

/**
 * What `read` read: the bytes as they are when piped; on a terminal, text as text and anything else
 * (control bytes, not UTF-8) as a hex dump, never raw: data must not drive the terminal. --hex: a hex
 * dump anywhere.
 */
export function showRead(out: Record<string, unknown>, hex: boolean): void {
  const data = Buffer.from(typeof out.base64 === 'string' ? out.base64 : '', 'base64');
  const offset = Number(out.offset ?? 0);
  const tty = process.stdout.isTTY === true;
  if (hex) return void process.stdout.write(hexDump(data, offset));
  if (!tty) return void process.stdout.write(data);
  if (data.length === 0) return void process.stderr.write(`(${String(out.target)}: no bytes at offset ${offset})\n`);
  if (isText(data)) return void process.stdout.write(data.toString('utf8') + (data.at(-1) === 0x0a ? '' : '\n'));
  process.stdout.write(hexDump(data, offset));
  process.stderr.write(
    `(${String(out.target)}: not printable text, shown as hex; pipe it for the bytes: safe-resume read ${String(out.target)} > FILE)\n`,
  );
}

/** UTF-8 text without control characters other than tab and line ends. */
function isText(data: Buffer): boolean {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(data);
  } catch {
    return false;
  }
  return !/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u0080-\u009f]/.test(text);
}

/** The bytes as `hexdump -C` shows them, offsets from `offset`; runs of the same line are one `*`. */
function hexDump(data: Buffer, offset: number): string {
  const out: string[] = [];
  let prev = '';
  let starred = false;
  for (let i = 0; i < data.length; i += 16) {
    const row = data.subarray(i, i + 16);
    const key = row.toString('hex');
    if (key === prev && row.length === 16) {
      if (!starred) out.push('*');
      starred = true;
      continue;
    }
    prev = key;
    starred = false;
    const hexes = [...row].map((b) => b.toString(16).padStart(2, '0'));
    const cols = `${hexes.slice(0, 8).join(' ')}${hexes.length > 8 ? `  ${hexes.slice(8).join(' ')}` : ''}`;
    out.push(
      `${(offset + i).toString(16).padStart(8, '0')}  ${cols.padEnd(48)}  |${[...row].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('')}|`,
    );
  }
  if (starred) out.push((offset + data.length).toString(16).padStart(8, '0'));
  return out.length ? out.join('\n') + '\n' : '';
}
