/**
 * The body of a request to a local control endpoint (the launcher's control API, the inspector's
 * `/api/`), capped: a body over the limit is answered 413 and dropped, never buffered, so one large
 * request cannot exhaust the launcher's memory and take the cluster down with it.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

/** The largest body a control request may carry. */
export const MAX_BODY_BYTES = 64 * 1024;

/** The request's body as text, or undefined once it was refused with 413 (the response is sent). */
export function readBody(
  req: IncomingMessage,
  res: ServerResponse,
  limit = MAX_BODY_BYTES,
): Promise<string | undefined> {
  return new Promise((resolve) => {
    const tooLarge = () => {
      res.writeHead(413, { 'content-type': 'application/json', connection: 'close' });
      res.end(
        JSON.stringify({
          ok: false,
          code: 'INVALID_ARGUMENT',
          message: `request body over ${limit} bytes, the most a control request may carry`,
        }),
      );
      req.resume(); // drain what is in flight without keeping it
      resolve(undefined);
    };
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > limit) return tooLarge();
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    req.on('data', (d: Buffer) => {
      if (done) return;
      size += d.length;
      if (size > limit) {
        done = true;
        chunks.length = 0;
        return tooLarge();
      }
      chunks.push(d);
    });
    req.on('end', () => {
      if (done) return;
      done = true;
      resolve(Buffer.concat(chunks).toString('utf8'));
    });
    req.on('error', () => {
      if (!done) resolve(undefined);
      done = true;
    });
  });
}
