/**
 * The bytes of the NBD handshake (doc/proto.md of the NetworkBlockDevice project): the server's
 * greeting, an INFO or GO request read, and the export's description in the replies to INFO, GO and
 * EXPORT_NAME.
 */
import { MAX_IO_BYTES } from '../transport/messages.js';
import { FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, INFO, NBDMAGIC } from './nbd-wire.js';

/** What the server says first: fixed newstyle, and the option of no zeroes. */
export function greeting(): Buffer {
  const hello = Buffer.alloc(18);
  hello.writeBigUInt64BE(NBDMAGIC, 0);
  hello.writeBigUInt64BE(IHAVEOPT, 8);
  hello.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
  return hello;
}

/** An INFO or GO request's export name and the information it asks for, or why it is malformed. */
export function infoRequest(data: Buffer): { name: string; want: Set<number> } | string {
  if (data.length < 6) return 'short request';
  const nameLength = data.readUInt32BE(0);
  if (data.length < 4 + nameLength + 2) return 'short request';
  const name = data.subarray(4, 4 + nameLength).toString('utf8');
  const count = data.readUInt16BE(4 + nameLength);
  if (data.length !== 4 + nameLength + 2 + 2 * count) return 'bad length';
  const want = new Set<number>();
  for (let i = 0; i < count; i++) want.add(data.readUInt16BE(4 + nameLength + 2 + 2 * i));
  return { name, want };
}

/** NBD_INFO_EXPORT: the export's size and transmission flags. */
export function exportInfo(size: number, flags: number): Buffer {
  const info = Buffer.alloc(12);
  info.writeUInt16BE(INFO.EXPORT, 0);
  info.writeBigUInt64BE(BigInt(size), 2);
  info.writeUInt16BE(flags, 10);
  return info;
}

/** NBD_INFO_BLOCK_SIZE: any byte range is fine; the preferred block is a page, the largest request what one message carries. */
export function blockSizeInfo(): Buffer {
  const bs = Buffer.alloc(14);
  bs.writeUInt16BE(INFO.BLOCK_SIZE, 0);
  bs.writeUInt32BE(1, 2);
  bs.writeUInt32BE(4096, 6);
  bs.writeUInt32BE(MAX_IO_BYTES, 10);
  return bs;
}

/** The reply to EXPORT_NAME: size and flags, then 124 zeroes unless the client asked for none. */
export function exportNameReply(size: number, flags: number, noZeroes: boolean): Buffer {
  const out = Buffer.alloc(noZeroes ? 10 : 134);
  out.writeBigUInt64BE(BigInt(size), 0);
  out.writeUInt16BE(flags, 8);
  return out;
}
