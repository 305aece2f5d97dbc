/**
 * A TCP proxy that can break the link between a node agent and a replica for real: drop every
 * connection, cut it silently (bytes vanish, sockets stay open, as in a partition), or lose only
 * the replies. Used by the tests and, later, by the cluster's `partition` command.
 */
import net from 'node:net';

export type ProxyMode = 'pass' | 'partition' | 'drop-replies';

interface Pair {
  client: net.Socket;
  upstream: net.Socket;
  /** Bytes were discarded: the stream is no longer a valid WebSocket stream. */
  tainted: boolean;
}

export class FaultProxy {
  private server: net.Server | undefined;
  private readonly pairs = new Set<Pair>();
  mode: ProxyMode = 'pass';

  /** `wss` when the replica behind speaks TLS: the proxy passes the encrypted bytes on as they are. */
  private scheme = 'ws';

  constructor(
    private readonly targetHost: string,
    private readonly targetPort: number,
  ) {}

  static forUrl(url: string): FaultProxy {
    const u = new URL(url);
    const p = new FaultProxy(u.hostname, Number(u.port));
    p.scheme = u.protocol === 'wss:' ? 'wss' : 'ws';
    return p;
  }

  async listen(port = 0, host = '127.0.0.1'): Promise<string> {
    this.server = net.createServer((client) => this.accept(client));
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(port, host, () => resolve());
    });
    const addr = this.server.address() as net.AddressInfo;
    return `${this.scheme}://${host}:${addr.port}`;
  }

  private accept(client: net.Socket): void {
    const upstream = net.connect(this.targetPort, this.targetHost);
    const pair: Pair = { client, upstream, tainted: false };
    this.pairs.add(pair);
    const end = () => {
      this.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    client.on('data', (d) => {
      if (this.mode === 'partition') pair.tainted = true;
      else upstream.write(d);
    });
    upstream.on('data', (d) => {
      if (this.mode === 'pass') client.write(d);
      else pair.tainted = true;
    });
  }

  /** Close every connection now (both ends see a reset). */
  drop(): void {
    for (const p of [...this.pairs]) {
      p.client.destroy();
      p.upstream.destroy();
    }
    this.pairs.clear();
  }

  partition(): void {
    this.mode = 'partition';
  }

  dropReplies(): void {
    this.mode = 'drop-replies';
  }

  /** Let bytes through again. Connections that lost bytes are closed: their streams are corrupt. */
  heal(): void {
    this.mode = 'pass';
    for (const p of [...this.pairs]) {
      if (p.tainted) {
        p.client.destroy();
        p.upstream.destroy();
        this.pairs.delete(p);
      }
    }
  }

  get connections(): number {
    return this.pairs.size;
  }

  async close(): Promise<void> {
    this.drop();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}
