/** The benchmark groups over real block clients (nbd) and a local etcd (etcd). */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Application } from '../actors/application.js';
import { etcdMembers, leaderChange, rawEtcd } from './etcd.js';
import { failoverStall, fsyncLoop, qemuImgBench, qemuIoWrites, qemuNbd } from './nbd.js';
import { replicaProcess } from './replica-process.js';
import { NbdExport } from '../frontends/nbd.js';
import { Figure, figure, pct, round } from './figures.js';
import { DATA, agentWith, failover, ioPath, replicaResumes } from './measures.js';

export async function nbdGroup(dir: string, smoke: boolean, log: (l: string) => void, R: number): Promise<Figure[]> {
  const F: Figure[] = [];
  const s = (full: number, tiny: number) => (smoke ? tiny : full);
  const med = (xs: number[]) => pct(xs, 50);
  const size = 64 * 1024 * 1024;
  const replica = await replicaProcess(join(dir, 'nbd'), 'sqlite');
  const { agent } = await agentWith([replica.url], 0);
  const app = new Application(agent, { name: 'nbd-bench', pauseTimeoutMs: 600_000 });
  // Both exports on Unix sockets, the client the same qemu-img.
  const socket = join(dir, 'export.sock');
  const nbd = new NbdExport({ app, size: () => size, path: socket });
  await nbd.listen();
  const url = nbd.urlFor('bench.disk');
  // The address a user reaches over TCP: TLS with a pre-shared key, as `up` prints it.
  const tls = new NbdExport({ app, size: () => size, host: '127.0.0.1', port: 0 });
  await tls.listen();
  const keys = join(dir, 'nbd-keys');
  mkdirSync(keys, { recursive: true });
  writeFileSync(join(keys, 'keys.psk'), `${app.principal}:${agent.nbdPsk(app.principal)!.toString('hex')}\n`);
  const overTls = [
    '--object',
    `tls-creds-psk,id=t0,endpoint=client,dir=${keys},username=${app.principal}`,
    '--image-opts',
    `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${new URL(tls.url).port},export=tls.disk,tls-creds=t0`,
  ];
  const overUnix = ['--image-opts', `driver=nbd,server.type=unix,server.path=${socket},export=tls.disk`];
  const cached = await qemuNbd(dir, size);
  const through = await qemuNbd(dir, size, 'writethrough');
  try {
    // Writes against qemu-nbd writing through (each write durable before its reply, as ours are); reads
    // against its page cache. The goals are ratios to those peers.
    const cases = [
      { name: 'write.seq', write: true, depth: 1, count: s(2000, 50), peer: through, goal: 0.8 },
      { name: 'write.depth16', write: true, depth: 16, count: s(10_000, 200), peer: through, goal: 2.0 },
      { name: 'read.seq', write: false, depth: 1, count: s(5000, 50), peer: cached, goal: 0.7 },
      { name: 'read.depth16', write: false, depth: 16, count: s(20_000, 200), peer: cached, goal: 0.5 },
    ];
    for (const c of cases) {
      const ours: number[] = [];
      const theirs: number[] = [];
      const cache: number[] = [];
      for (let i = 0; i < R; i++) {
        log(`nbd ${c.name} round ${i + 1} of ${R}: qemu-img bench through the export, then through qemu-nbd`);
        ours.push((await qemuImgBench(url, c.count, c.depth, c.write)).rate);
        theirs.push((await qemuImgBench(c.peer.url, c.count, c.depth, c.write)).rate);
        if (c.write) cache.push((await qemuImgBench(cached.url, c.count, c.depth, c.write)).rate);
      }
      const peerName =
        c.peer === through
          ? 'qemu-nbd --cache=writethrough serving a raw file, Unix sockets both'
          : 'qemu-nbd serving a raw file (page cache), Unix sockets both';
      F.push(
        figure(
          `nbd.${c.name}`,
          med(ours),
          'ops/s',
          med(theirs),
          peerName,
          `>= ${c.goal}x`,
          med(ours) >= c.goal * med(theirs),
        ),
      );
      if (c.write)
        F.push(
          figure(
            `nbd.${c.name}.vs-page-cache`,
            med(ours),
            'ops/s',
            med(cache),
            'qemu-nbd serving a raw file (page cache): writes not durable before their reply',
            'none',
            null,
          ),
        );
    }
    log('nbd: 4 KiB pwrite + fdatasync one at a time, the limit of the disk');
    F.push(
      figure(
        'nbd.disk.fsync-loop',
        med(Array.from({ length: R }, () => fsyncLoop(dir, s(2000, 50)))),
        'writes/s',
        null,
        null,
        'none',
        null,
      ),
    );
    const viaTls: number[] = [];
    const viaUnix: number[] = [];
    for (let i = 0; i < R; i++) {
      log(`nbd tls round ${i + 1} of ${R}: qemu-io writes 16 at a time over TLS-PSK on TCP, then over the Unix socket`);
      viaTls.push(await qemuIoWrites(overTls, s(3200, 64)));
      viaUnix.push(await qemuIoWrites(overUnix, s(3200, 64)));
    }
    F.push(
      figure(
        'nbd.tls.write.depth16',
        med(viaTls),
        'writes/s',
        med(viaUnix),
        'the same qemu-io writes through the Unix socket',
        'none',
        null,
      ),
    );
    log('nbd: the same 4 KiB writes through the SDK, 16 deep');
    const sdk = await ioPath(replica.url, s(10_000, 200), 1, 16, { sequential: 0 });
    F.push(figure('nbd.sdk.write.depth16', sdk.rate, 'writes/s', null, null, 'none', null));
  } finally {
    cached.proc.kill();
    through.proc.kill();
    await nbd.close();
    await tls.close();
    agent.crash();
    replica.proc.kill();
  }
  // Each round its own pair of replica processes (one of them is killed); the medians of the rounds.
  const stalls: number[] = [];
  const calm: number[] = [];
  for (let i = 0; i < R; i++) {
    const w = await failoverStall(join(dir, `nbd-failover-${i}`), s(1000, 50), s(1000, 50));
    stalls.push(Math.max(...w.after));
    calm.push(Math.max(...w.before));
    log(
      `nbd failover round ${i + 1} of ${R}: 4 KiB writes one at a time, the serving replica SIGKILLed; slowest write ${round(stalls[i]!)} ms after the kill, ${round(calm[i]!)} ms before (p99 ${round(pct(w.before, 99))} ms)`,
    );
  }
  F.push(
    figure(
      'nbd.failover.stall',
      med(stalls),
      'ms',
      med(calm),
      'the slowest write before the kill, same rounds',
      'none',
      null,
    ),
  );
  return F;
}

/** The etcd group (bench/etcd.ts): every figure over one three-member etcd, next to a raw client on it. */
export async function etcdGroup(dir: string, smoke: boolean, log: (l: string) => void, R: number): Promise<Figure[]> {
  const F: Figure[] = [];
  const s = (full: number, tiny: number) => (smoke ? tiny : full);
  const med = (xs: number[]) => pct(xs, 50);
  const members = await etcdMembers(join(dir, 'etcd'));
  const spec = `etcd://${members.endpoints.join(',')}` as const;
  try {
    const replica = await replicaProcess(join(dir, 'etcd-io'), spec);
    const path: number[] = [];
    const raw: number[] = [];
    let seq = { path: 0, raw: 0 };
    for (let i = 0; i < R; i++) {
      log(`etcd round ${i + 1} of ${R}: fenced writes through a replica, raw guarded transactions`);
      const io = await ioPath(replica.url, s(10_000, 200), 16, 8, { sequential: i === 0 ? s(500, 20) : 0 });
      path.push(io.rate);
      raw.push((await rawEtcd(members.endpoints, s(10_000, 200), 128)).rate);
      if (i === 0) seq = { path: io.p50, raw: (await rawEtcd(members.endpoints, s(500, 20), 1)).p50 };
    }
    F.push(
      figure(
        'etcd.writes.fenced',
        med(path),
        'writes/s',
        med(raw),
        'raw etcd guarded txn per 4 KiB write, 128 in flight',
        '>= 1.5x',
        med(path) >= 1.5 * med(raw),
      ),
    );
    F.push(figure('etcd.write.seq.p50', seq.path, 'ms', seq.raw, 'raw guarded txn one at a time, p50', 'none', null));
    log('etcd: write latency while the leader is killed');
    const { agent, hs } = await agentWith([replica.url], 8);
    const lc = await leaderChange(members, (w, i) => hs[w]!.write((i % 64) * 4096, DATA), {
      workers: 8,
      ms: s(12_000, 5000),
      killAt: s(3000, 1500),
      downMs: s(4000, 1500),
      windowMs: s(5000, 2000),
    });
    agent.crash();
    replica.proc.kill();
    F.push(
      figure(
        'etcd.write.p99.leader-change',
        pct(lc.during, 99),
        'ms',
        pct(lc.before, 99),
        'p99 before the kill',
        'none',
        null,
      ),
    );
    F.push(figure('etcd.write.max.leader-change', Math.max(0, ...lc.during), 'ms', null, null, 'none', null));
    const n = s(1000, 20);
    log(`etcd: failover of ${n} handles`);
    const times = await failover(join(dir, 'etcd-failover'), n, 4, spec);
    F.push(figure(`etcd.failover.${n}.p50`, pct(times, 50), 'ms', null, null, 'none', null));
    F.push(
      figure(
        `etcd.failover.${n}.p99`,
        pct(times, 99),
        'ms',
        null,
        null,
        '<= 200 ms',
        smoke ? null : pct(times, 99) <= 200,
      ),
    );
    log('etcd: resumes one replica grants');
    const storm = await replicaResumes(join(dir, 'etcd-rr'), s(10_000, 200), spec);
    F.push(figure('etcd.resume.storm', storm, 'resumes/s', null, null, '>= 10,000', smoke ? null : storm >= 10_000));
  } finally {
    await members.stop();
  }
  return F;
}
