/**
 * Frame format. A frame is either a text frame holding one JSON message, or a binary frame:
 *
 *   u32 big-endian header length | header (UTF-8 JSON, the message without `data`) | data bytes
 *
 * so a 4 KiB write travels as 4 KiB of raw bytes plus a small header, never as base64.
 */
import { Buffer } from 'node:buffer';
import type { ErrorCode } from '../errors.js';
import { Message, MESSAGE_TYPES } from './messages.js';

export const DEFAULT_MAX_FRAME_BYTES = 2 * 1024 * 1024;
const MAX_HEADER_BYTES = 256 * 1024;
/** No message nests deeper than a few levels; a header nested deeper is refused before JSON.parse. */
export const MAX_HEADER_DEPTH = 32;

/**
 * Whether JSON text nests arrays and objects deeper than `max` (strings skipped). A linear scan
 * costs far less than parsing a megabyte of brackets, which held a replica's thread for a second.
 */
function nestsDeeper(text: string, max: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 92)
        i++; // backslash: skip the escaped character
      else if (c === 34) inString = false;
    } else if (c === 34) inString = true;
    else if (c === 91 || c === 123) {
      if (++depth > max) return true;
    } else if (c === 93 || c === 125) depth--;
  }
  return false;
}

export type Decoded = { ok: true; msg: Message } | { ok: false; code: ErrorCode; message: string; id?: number };

/** Encode one message; `trailer` spare bytes are left at the end (for a frame MAC). */
export function encode(msg: Message, trailer = 0): Buffer {
  if ('data' in msg && msg.data instanceof Uint8Array) {
    const { data, ...rest } = msg;
    const header = Buffer.from(JSON.stringify(rest), 'utf8');
    const frame = Buffer.allocUnsafe(4 + header.length + data.length + trailer);
    frame.writeUInt32BE(header.length, 0);
    header.copy(frame, 4);
    frame.set(data, 4 + header.length);
    return frame;
  }
  const header = Buffer.from(JSON.stringify(msg), 'utf8');
  const frame = Buffer.allocUnsafe(4 + header.length + trailer);
  frame.writeUInt32BE(header.length, 0);
  header.copy(frame, 4);
  return frame;
}

function fail(code: ErrorCode, message: string, id?: unknown): Decoded {
  return typeof id === 'number' && Number.isSafeInteger(id) && id >= 0
    ? { ok: false, code, message, id }
    : { ok: false, code, message };
}

/** Decode and validate one frame. Never throws. */
export function decode(frame: Uint8Array | string, maxFrameBytes = DEFAULT_MAX_FRAME_BYTES): Decoded {
  const size = typeof frame === 'string' ? Buffer.byteLength(frame) : frame.length;
  if (size > maxFrameBytes)
    return fail('FRAME_TOO_LARGE', `frame of ${size} bytes exceeds the limit of ${maxFrameBytes}`);
  let headerText: string;
  let payload: Uint8Array | undefined;
  if (typeof frame === 'string') {
    // A text frame is a header and nothing else: it gets the header's limit.
    if (size > MAX_HEADER_BYTES)
      return fail(
        'BAD_FRAME',
        `text frame of ${size} bytes exceeds the ${MAX_HEADER_BYTES}-byte header limit (bytes travel in binary frames)`,
      );
    headerText = frame;
  } else {
    if (frame.length < 4) return fail('BAD_FRAME', 'binary frame shorter than its 4-byte header length');
    const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
    const headerLength = view.getUint32(0);
    if (headerLength > MAX_HEADER_BYTES || 4 + headerLength > frame.length) {
      return fail('BAD_FRAME', `header length ${headerLength} does not fit in a frame of ${frame.length} bytes`);
    }
    headerText = Buffer.from(frame.buffer, frame.byteOffset + 4, headerLength).toString('utf8');
    payload = frame.subarray(4 + headerLength);
  }
  if (nestsDeeper(headerText, MAX_HEADER_DEPTH))
    return fail('BAD_FRAME', `header nests deeper than ${MAX_HEADER_DEPTH} levels`);
  let raw: unknown;
  try {
    raw = JSON.parse(headerText);
  } catch {
    return fail('BAD_FRAME', 'header is not valid JSON');
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    return fail('BAD_FRAME', 'header is not a JSON object');
  const obj = raw as Record<string, unknown>;
  if (typeof obj.type !== 'string') return fail('BAD_FRAME', 'header has no string "type"', obj.id);
  if (!MESSAGE_TYPES.has(obj.type))
    return fail('UNKNOWN_TYPE', `unknown message type ${JSON.stringify(obj.type.slice(0, 64))}`, obj.id);
  if ('data' in obj) return fail('BAD_FRAME', '"data" travels as frame bytes, not in the header', obj.id);
  if (obj.type === 'write' || obj.type === 'data') obj.data = payload ?? new Uint8Array(0);
  else if (payload && payload.length > 0) return fail('BAD_FRAME', `message type ${obj.type} carries no bytes`, obj.id);
  const parsed = Message.safeParse(obj);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue && issue.path.length > 0 ? issue.path.join('.') : 'message';
    return fail('BAD_FRAME', `${obj.type}: ${where}: ${issue?.message ?? 'invalid'}`, obj.id);
  }
  return { ok: true, msg: parsed.data };
}
