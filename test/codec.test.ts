/** Bytes-only codec tests: no sockets. */
import { describe, expect, it } from 'vitest';
import { decode, encode } from '../transport/codec.js';
import type { Message } from '../transport/messages.js';
import { MAX_EXTENT_PAGES } from '../store/types.js';

const RID = 'r'.repeat(21);

describe('codec', () => {
  it("carries a store's largest extents answer (MAX_EXTENT_PAGES kept parts) and refuses one more", () => {
    const kept = (n: number): Message => ({
      type: 'kept',
      id: 1,
      version: 1,
      end: 2 * 4096 * n,
      kept: Array.from({ length: n }, (_, i): [number, number] => [2 * 4096 * i, 4096]),
    });
    expect(decode(encode(kept(MAX_EXTENT_PAGES))).ok).toBe(true);
    expect(decode(encode(kept(MAX_EXTENT_PAGES + 1)))).toMatchObject({ ok: false, code: 'BAD_FRAME' });
  });

  it('round-trips a write; the 4 KiB payload travels raw, not base64', () => {
    const data = new Uint8Array(4096).map((_, i) => i & 0xff);
    const msg: Message = { type: 'write', id: 7, target: 'vm1.disk', requestId: RID, seq: 1, offset: 8192, data };
    const frame = encode(msg);
    expect(frame.length).toBeLessThan(4096 + 200);
    const back = decode(frame);
    expect(back.ok).toBe(true);
    if (back.ok && back.msg.type === 'write') {
      expect([...back.msg.data]).toEqual([...data]);
      expect(back.msg.offset).toBe(8192);
    }
  });

  it('round-trips messages without bytes, binary or text', () => {
    const msg: Message = {
      type: 'resume',
      id: 1,
      items: [{ target: 't', requestId: RID, principal: 'p', mode: 'read', version: 3 }],
    };
    expect(decode(encode(msg))).toEqual({ ok: true, msg });
    expect(decode(JSON.stringify(msg))).toEqual({ ok: true, msg });
  });

  const cases: Array<[string, Uint8Array | string, string]> = [
    ['garbage bytes', Uint8Array.from([0xff, 0xff, 0xff, 0xff, 1, 2]), 'BAD_FRAME'],
    ['a frame shorter than its header length', Uint8Array.from([0, 0]), 'BAD_FRAME'],
    ['invalid JSON', '{"type": "ping", ', 'BAD_FRAME'],
    ['a JSON array', '[1,2]', 'BAD_FRAME'],
    ['no type', '{"id": 1}', 'BAD_FRAME'],
    ['an unknown type', '{"type": "format-disk", "id": 3}', 'UNKNOWN_TYPE'],
    [
      'a wrong field type',
      `{"type": "open", "id": 4, "target": 5, "requestId": "${RID}", "principal": "p", "mode": "write"}`,
      'BAD_FRAME',
    ],
    [
      'a short requestId',
      '{"type": "open", "id": 4, "target": "t", "requestId": "abc", "principal": "p", "mode": "write"}',
      'BAD_FRAME',
    ],
    [
      'bytes inside the JSON header',
      `{"type": "write", "id": 1, "target": "t", "requestId": "${RID}", "seq": 1, "offset": 0, "data": "AAAA"}`,
      'BAD_FRAME',
    ],
    [
      'a negative offset',
      `{"type": "read", "id": 1, "target": "t", "requestId": "${RID}", "offset": -1, "length": 1}`,
      'BAD_FRAME',
    ],
  ];
  for (const [name, frame, code] of cases) {
    it(`answers ${name} with ${code}`, () => {
      const r = decode(frame);
      expect(r.ok).toBe(false);
      if (!r.ok) expect(r.code).toBe(code);
    });
  }

  it('keeps the id of a bad request so the sender can match the error reply', () => {
    const r = decode('{"type": "open", "id": 42, "target": ""}');
    expect(r).toMatchObject({ ok: false, code: 'BAD_FRAME', id: 42 });
  });

  it('refuses an oversize frame before parsing it', () => {
    const r = decode(new Uint8Array(1000), 999);
    expect(r).toMatchObject({ ok: false, code: 'FRAME_TOO_LARGE' });
  });

  // A megabyte of nested brackets held a replica's thread for a second in JSON.parse (found by the fuzzer).
  it('refuses a header nested deeper than any message before parsing it, in text and binary frames', () => {
    const deep = '['.repeat(100) + ']'.repeat(100);
    expect(decode(deep)).toMatchObject({
      ok: false,
      code: 'BAD_FRAME',
      message: expect.stringContaining('nests deeper'),
    });
    const header = Buffer.from(`{"type":"ping","t":1,"x":${deep}}`);
    const frame = Buffer.concat([Buffer.alloc(4), header]);
    frame.writeUInt32BE(header.length, 0);
    expect(decode(new Uint8Array(frame))).toMatchObject({
      ok: false,
      code: 'BAD_FRAME',
      message: expect.stringContaining('nests deeper'),
    });
    // Brackets inside strings are not nesting; a real message still decodes.
    expect(decode(`{"type":"error","code":"X","message":"${'['.repeat(500)}","retryable":false}`)).toMatchObject({
      ok: true,
    });
    expect(decode(`{"type":"error","code":"X","message":"a \\" ${'{'.repeat(50)}","retryable":false}`)).toMatchObject({
      ok: true,
    });
  });

  it('gives a text frame the header limit: a 2 MiB text frame is refused without parsing', () => {
    const big = '['.repeat(1024 * 1024) + ']'.repeat(1024 * 1024);
    expect(decode(big)).toMatchObject({
      ok: false,
      code: 'BAD_FRAME',
      message: expect.stringContaining('header limit'),
    });
  });
});

describe('error codes', () => {
  it('docs/errors.md lists exactly the codes the code can return', async () => {
    const { readFileSync } = await import('node:fs');
    const { ERROR_CODES, RETRYABLE } = await import('../errors.js');
    const doc = readFileSync(new URL('../docs/errors.md', import.meta.url), 'utf8');
    const documented = [...doc.matchAll(/^\| `([A-Z_]+)` \| (yes|no) \|/gm)].map(
      (m) => [m[1], m[2] === 'yes'] as const,
    );
    expect(documented.map(([c]) => c).sort()).toEqual(Object.keys(ERROR_CODES).sort());
    for (const [code, retryable] of documented) expect(RETRYABLE.has(code as never), code).toBe(retryable);
  });
});
