/**
 * The control socket of a supervised VM (`safe-resume vm run`): a Unix socket in the VM's private
 * directory (`<data dir>/vms/<name>/control.sock`, 0700: reaching it is the proof), one JSON request a
 * line, one JSON answer a line. `view` answers what status shows; `stop` and `resume` are an operator's
 * (vm/supervisor.ts). `vm list | stop | resume` are its clients.
 */
import { createServer, connect, type Server } from 'node:net';
import type { VmSupervisor, VmView } from './supervisor.js';

export type VmRequest = { op: 'view' } | { op: 'stop' } | { op: 'resume'; acceptModified?: boolean };
export type VmAnswer = { ok: true; view: VmView } | { ok: false; code: string; message: string };

/** The most bytes a request may have. */
const MAX_REQUEST_BYTES = 4096;

export async function serveVmControl(path: string, vm: VmSupervisor): Promise<Server> {
  const server = createServer((socket) => {
    let buf = '';
    socket.setEncoding('utf8');
    socket.on('error', () => undefined);
    socket.on('data', (chunk: string) => {
      buf += chunk;
      if (buf.length > MAX_REQUEST_BYTES) return void socket.destroy();
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      const line = buf.slice(0, nl);
      buf = '';
      void answer(vm, line).then((a) => socket.end(JSON.stringify(a) + '\n'));
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return server;
}

async function answer(vm: VmSupervisor, line: string): Promise<VmAnswer> {
  let req: VmRequest;
  try {
    req = JSON.parse(line) as VmRequest;
  } catch {
    return { ok: false, code: 'INVALID_ARGUMENT', message: 'not a JSON request' };
  }
  try {
    if (req.op === 'stop') await vm.stop();
    else if (req.op === 'resume') await vm.resume({ acceptModified: req.acceptModified === true });
    else if (req.op !== 'view')
      return {
        ok: false,
        code: 'INVALID_ARGUMENT',
        message: `unknown op ${JSON.stringify((req as { op?: unknown }).op)}`,
      };
    return { ok: true, view: vm.view() };
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    return { ok: false, code: typeof code === 'string' ? code : 'INTERNAL', message: (err as Error).message };
  }
}

/** Ask the VM whose control socket is `path`; rejects if nobody answers within `timeoutMs`. */
export function askVm(path: string, req: VmRequest, timeoutMs = 10_000): Promise<VmAnswer> {
  return new Promise<VmAnswer>((resolve, reject) => {
    const socket = connect(path);
    let buf = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`${path}: no answer in ${timeoutMs} ms`));
    }, timeoutMs);
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write(JSON.stringify(req) + '\n'));
    socket.on('data', (d: string) => (buf += d));
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.on('end', () => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(buf) as VmAnswer);
      } catch {
        reject(new Error(`${path}: a malformed answer`));
      }
    });
  });
}
