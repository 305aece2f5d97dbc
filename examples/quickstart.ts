// Open a target, write, survive the crash of the replica serving it, resume, read back.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Application, LocalCluster } from '../index.js'; // from 'safe-resume' in your program

export async function main(log: (line: string) => void = console.log): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'safe-resume-example-'));
  // Three storage replicas on 127.0.0.1 over one SQLite file, the embedded default store.
  const cluster = await LocalCluster.start({ dir, replicas: 3 });
  try {
    const agent = await cluster.addNode('node-1'); // the node agent of this compute node
    const app = new Application(agent, { name: 'app-1' });
    const disk = await app.open('vm1.disk', { mode: 'write', onFailure: 'pause' });
    disk.on('paused', () => log('paused: storage went away, I/O waits'));
    disk.on('resumed', () => log(`resumed with the same requestId ${disk.requestId}`));
    disk.on('invalidated', (reason) => log(`invalidated (${reason}): reload before writing`));

    await disk.write(0, new TextEncoder().encode('hello'));
    await cluster.kill(cluster.servingIndex(agent)); // crash the replica serving this node
    await disk.write(5, new TextEncoder().encode(', world')); // waits while paused, then lands once
    const text = new TextDecoder().decode(await disk.read(0, 12));
    log(`read back "${text}", handle ${disk.state}`);
    await disk.close();
    return text;
  } finally {
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
