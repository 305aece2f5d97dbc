/** TCP ports on this host, for a process (a replica, a node's export, an etcd member) to listen on. */
import net from 'node:net';

/** A free TCP port on 127.0.0.1 (for a child to listen on). */
export async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}
