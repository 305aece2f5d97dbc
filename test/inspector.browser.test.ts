/**
 * The inspector in a real headless Chromium (Debian's chromium, or SAFE_RESUME_CHROMIUM, driven by
 * playwright-core): a small cluster of real processes, the page opened at the address `up` printed
 * (its control token in the fragment) shows every replica and handle, and each node's NBD export with
 * the handle of every client connection, and faults clicked on the page show up as state changes;
 * the messages list the protocol between nodes and replicas (internal events on demand), an
 * invalidated handle says why, the actors of a process that is down show dead, and the counters
 * survive restarts; the Timeline tells the story (faults, processes, each handle's transitions), one
 * target's handles with every fault when filtered; without the token the page shows nothing. Saves
 * screenshots in a temporary directory (or SAFE_RESUME_SCREENSHOTS, to look at them), or the README's
 * as docs/inspector.png with SAFE_RESUME_DOCS_SCREENSHOT=1.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from './helpers.js';
import { CLI } from './cli-path.js';

const CHROMIUM = process.env.SAFE_RESUME_CHROMIUM || '/usr/bin/chromium';
const t = tempDir();
let launcher: ChildProcess;
let browser: Browser;
let page: Page;
let url = '';

/** A foreign write from the page's form, tried until it is granted (LOCKED until the replicas notice the silence and the hold period runs out). */
async function foreignWrite(target: string): Promise<void> {
  await page.fill('#fw-target', target);
  await page.fill('#fw-text', 'FOREIGN');
  await expect
    .poll(
      async () => {
        await page.click('#fw-go');
        await page.waitForTimeout(700);
        return page.locator('#result').textContent();
      },
      { timeout: 30_000, interval: 300 },
    )
    .toBe('write: ok');
}

const handle = (target: string) => page.locator(`.actor[data-machine="handle"][data-target="${target}"]`);
/** The actors of one process (of one machine, if given). */
const actorsOf = (proc: string, machine?: string) =>
  page.locator(`.actor[data-process="${proc}"]${machine ? `[data-machine="${machine}"]` : ''}`);
/** Where screenshots go: the test's temporary directory, unless SAFE_RESUME_SCREENSHOTS names one to keep them in. */
const shotsDir = (): string => {
  const dir = process.env.SAFE_RESUME_SCREENSHOTS || t.dir;
  mkdirSync(dir, { recursive: true });
  return dir;
};
/** A number of the summary strip. */
const counter = async (id: string) => Number(await page.locator(`#${id}`).textContent());

interface MessageRow {
  kind: string;
  from: string;
  to: string;
  type: string;
  requestId: string;
  target: string;
  detail: string;
}
/** The rows of the message list, read in one go (the list is redrawn as messages arrive). */
const messageRows = () =>
  page.$$eval('#rows tr', (trs) =>
    trs.map((tr) => {
      const cell = (c: string) => tr.querySelector(`td.${c}`)?.textContent ?? '';
      return {
        kind: tr.getAttribute('data-kind') ?? '',
        from: cell('from'),
        to: cell('to'),
        type: cell('type'),
        requestId: cell('request'),
        target: cell('target'),
        detail: cell('detail'),
      };
    }),
  ) as Promise<MessageRow[]>;

interface TimelineRow {
  kind: string;
  target: string;
  text: string;
}
/** The rows of the Timeline, oldest first. */
const timelineRows = () =>
  page.$$eval('#tl-rows .ev', (divs) =>
    divs.map((d) => ({
      kind: d.getAttribute('data-kind') ?? '',
      target: d.getAttribute('data-target') ?? '',
      text: d.querySelector('.text')?.textContent ?? '',
    })),
  ) as Promise<TimelineRow[]>;

/** `safe-resume up` with `args`, and the inspector address (with its token) it prints. */
async function up(args: string[]): Promise<{ proc: ChildProcess; url: string }> {
  const proc = spawn('node', [CLI, 'up', ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  const at = await new Promise<string>((resolve, reject) => {
    let out = '';
    proc.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /inspector (http:\/\/127\.0\.0\.1:\d+\/#token=[\w-]+)\s/.exec(out);
      if (m) resolve(m[1]!);
    });
    proc.once('exit', () => reject(new Error(`launcher exited: ${out}`)));
  });
  proc.stdout.resume();
  return { proc, url: at };
}

/** A command of the CLI against the cluster of the first describe, and its --json answer (failures too). */
async function cli(...args: string[]): Promise<{ ok: boolean } & Record<string, unknown>> {
  const out = await new Promise<string>((resolve) =>
    execFile('node', [CLI, ...args, '--dir', join(t.dir, 'c'), '--json'], (_err, stdout) => resolve(stdout)),
  );
  return JSON.parse(out) as { ok: boolean } & Record<string, unknown>;
}

/**
 * A bare NBD client (fixed newstyle, NBD_OPT_GO, then simple replies; frontends/nbd.ts serves the same
 * protocol): it holds its connection, and so the target's handle, until `close`.
 */
async function nbdClient(
  url: string,
  target: string,
): Promise<{ write: (offset: number, data: Buffer) => Promise<number>; close: () => void }> {
  // The export is the node's Unix socket (nbd+unix:///?socket=PATH); its owner, this process's user, acts as principal default there.
  const socket: Socket = connect(new URL(url).searchParams.get('socket')!);
  socket.on('error', () => undefined);
  let input = Buffer.alloc(0);
  let waiting: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  const give = () => {
    if (!waiting || input.length < waiting.n) return;
    const { n, resolve } = waiting;
    waiting = undefined;
    const b = input.subarray(0, n);
    input = input.subarray(n);
    resolve(b);
  };
  socket.on('data', (d: Buffer) => ((input = Buffer.concat([input, d])), give()));
  socket.on('close', () => waiting?.reject(new Error(`the export closed the connection to ${target}`)));
  const take = (n: number) => new Promise<Buffer>((resolve, reject) => ((waiting = { n, resolve, reject }), give()));
  const hello = await take(18);
  expect(hello.readBigUInt64BE(0)).toBe(0x4e42444d41474943n); // NBDMAGIC
  expect(hello.readBigUInt64BE(8)).toBe(0x49484156454f5054n); // IHAVEOPT
  const name = Buffer.from(target);
  const go = Buffer.alloc(16 + 4 + name.length + 2);
  go.writeBigUInt64BE(0x49484156454f5054n, 0);
  go.writeUInt32BE(7, 8); // NBD_OPT_GO
  go.writeUInt32BE(4 + name.length + 2, 12);
  go.writeUInt32BE(name.length, 16);
  name.copy(go, 20);
  // Client flags FIXED_NEWSTYLE | NO_ZEROES, then the option (no information requests).
  socket.write(Buffer.concat([Buffer.from([0, 0, 0, 3]), go]));
  for (;;) {
    const reply = await take(20);
    const type = reply.readUInt32BE(12);
    const data = await take(reply.readUInt32BE(16));
    if (type === 1) break; // NBD_REP_ACK: transmission starts
    if (type & 0x80000000) throw new Error(`NBD_OPT_GO refused (${type.toString(16)}): ${data.toString()}`);
  }
  let cookie = 0n;
  return {
    /** One NBD_CMD_WRITE; resolves with the reply's error (0, or an errno such as 5, EIO). */
    write: async (offset, data) => {
      const req = Buffer.alloc(28);
      req.writeUInt32BE(0x25609513, 0);
      req.writeUInt16BE(1, 6); // NBD_CMD_WRITE
      req.writeBigUInt64BE(++cookie, 8);
      req.writeBigUInt64BE(BigInt(offset), 16);
      req.writeUInt32BE(data.length, 24);
      socket.write(Buffer.concat([req, data]));
      const reply = await take(16);
      expect(reply.readUInt32BE(0)).toBe(0x67446698);
      expect(reply.readBigUInt64BE(8)).toBe(cookie);
      return reply.readUInt32BE(4);
    },
    close: () => socket.destroy(),
  };
}

beforeAll(async () => {
  if (!existsSync(CHROMIUM))
    throw new Error(`${CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium), as .ci/run does`);
  ({ proc: launcher, url } = await up([
    '--dir',
    join(t.dir, 'c'),
    '--replicas',
    '2',
    '--nodes',
    '2',
    '--apps',
    '1',
    '--hold-ms',
    '1000',
    '--interval-ms',
    '100',
  ]));
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
  page = await browser.newPage({ viewport: { width: 1400, height: 860 } });
  await page.goto(url);
}, 60_000);

afterAll(async () => {
  await browser?.close();
  if (launcher && launcher.exitCode === null) {
    launcher.kill('SIGINT');
    await new Promise((r) => launcher.once('exit', r));
  }
  t.cleanup();
});

describe('inspector page', () => {
  it('opened without the token of the printed address, shows nothing and says so', async () => {
    const bare = await browser.newPage();
    try {
      await bare.goto(new URL(url).origin + '/');
      await expect.poll(() => bare.locator('#conn').textContent(), { timeout: 10_000 }).toContain('token');
      await bare.waitForTimeout(1500);
      expect(await bare.locator('#fault-rows [data-replica]').count()).toBe(0);
      expect(await bare.locator('.actor').count()).toBe(0);
      // A wrong token: refused as well.
      await bare.goto(new URL(url).origin + '/#token=wrong');
      await expect.poll(() => bare.locator('#conn').textContent(), { timeout: 10_000 }).toContain('token');
      expect(await bare.locator('#fault-rows [data-replica]').count()).toBe(0);
    } finally {
      await bare.close();
    }
  }, 60_000);

  it('shows every replica and every handle, live', async () => {
    await expect.poll(() => page.locator('#fault-rows [data-replica]').count(), { timeout: 15_000 }).toBe(2);
    await expect
      .poll(() => page.locator('.actor[data-machine="handle"][data-state="active"]').count(), { timeout: 15_000 })
      .toBe(2);
    await expect.poll(() => page.locator('.actor[data-machine="session"]').count()).toBe(2);
    await expect
      .poll(async () => Number(await page.locator('#s-acked').textContent()), { timeout: 10_000 })
      .toBeGreaterThan(0);
    // The list is redrawn as events arrive: a click on a row being replaced is lost, so click until the chart shows.
    await expect
      .poll(
        async () => {
          if ((await page.locator('#svg .node.current').count()) === 0)
            await handle('app-1.disk')
              .click({ timeout: 5000 })
              .catch(() => undefined);
          return page.locator('#svg .node.current').count();
        },
        { timeout: 30_000, interval: 500 },
      )
      .toBeGreaterThan(0);
    expect(await page.locator('#svg .node.current text').first().textContent()).toBe('active');
  }, 60_000);

  it('lists the protocol messages between nodes and replicas, internal events only on demand; the filter applies to both', async () => {
    // By default: the protocol only, each message from the node or the replica that sent it, and an
    // answer with the target of the request it answers.
    await expect
      .poll(
        async () => {
          const rows = await messageRows();
          return (
            rows.some(
              (r) =>
                r.type === 'write' &&
                /^node-\d$/.test(r.from) &&
                /^replica-\d$/.test(r.to) &&
                /^app-\d\.disk$/.test(r.target),
            ) &&
            rows.some(
              (r) =>
                r.type === 'written' &&
                /^replica-\d$/.test(r.from) &&
                /^node-\d$/.test(r.to) &&
                /^app-\d\.disk$/.test(r.target),
            )
          );
        },
        { timeout: 15_000 },
      )
      .toBe(true);
    expect((await messageRows()).filter((r) => r.kind !== 'protocol')).toEqual([]);
    expect(await page.locator('#view-protocol').getAttribute('aria-pressed')).toBe('true');

    // All: the machines' own events too (IO, the session's timers...).
    await page.locator('#view-all').click();
    await expect
      .poll(async () => (await messageRows()).filter((r) => r.kind === 'internal' && r.type === 'IO').length, {
        timeout: 10_000,
      })
      .toBeGreaterThan(0);
    expect((await messageRows()).some((r) => r.kind === 'protocol')).toBe(true);

    // The filter keeps working, in either view.
    await page.fill('#filter', 'app-2.disk');
    const onlyApp2 = async () => {
      const rows = await messageRows();
      return rows.length > 0 && rows.every((r) => r.target.includes('app-2.disk'));
    };
    await expect.poll(onlyApp2, { timeout: 10_000 }).toBe(true);
    expect((await messageRows()).some((r) => r.kind === 'internal')).toBe(true);
    await page.screenshot({ path: join(shotsDir(), 'inspector-messages.png') });
    await page.locator('#view-protocol').click();
    await expect
      .poll(async () => (await onlyApp2()) && (await messageRows()).every((r) => r.kind === 'protocol'), {
        timeout: 10_000,
      })
      .toBe(true);
    await page.fill('#filter', '');
  }, 60_000);

  it('kill the replica serving a node: its handles go paused, then active again', async () => {
    const serving = await page.locator('[data-node="node-1"]').textContent();
    const replica = /on (replica-\d)/.exec(serving ?? '')![1]!;
    await page.locator(`button[data-action="kill"][data-id="${replica}"]`).click();
    await expect
      .poll(async () => (await handle('app-1.disk').getAttribute('data-seen')) ?? '', { timeout: 15_000 })
      .toContain('paused');
    await expect.poll(() => handle('app-1.disk').getAttribute('data-state'), { timeout: 15_000 }).toBe('active');
    await page.locator(`button[data-action="restart"][data-id="${replica}"]`).click();
    await expect
      .poll(() => page.locator(`[data-replica="${replica}"] .state`).textContent(), { timeout: 15_000 })
      .toBe('serving');
  }, 60_000);

  it('tells the story on the Timeline: the fault, the handles paused, the resume granted after heal; the target filter keeps the faults', async () => {
    await page.locator('button[data-action="partition"][data-id="node-1"]').click();
    await expect
      .poll(async () => (await timelineRows()).some((r) => r.kind === 'fault' && r.text === 'partition node-1'), {
        timeout: 15_000,
      })
      .toBe(true);
    const paused = (r: TimelineRow) =>
      r.kind === 'handle' && r.text.startsWith('node-1/app-1 app-1.disk active -> paused');
    await expect.poll(async () => (await timelineRows()).some(paused), { timeout: 15_000 }).toBe(true);
    await page.locator('button[data-action="heal"][data-id="node-1"]').click();
    await expect
      .poll(async () => (await timelineRows()).some((r) => r.kind === 'fault' && r.text === 'heal node-1'), {
        timeout: 15_000,
      })
      .toBe(true);
    await expect
      .poll(
        async () =>
          (await timelineRows()).some(
            (r) =>
              r.kind === 'handle' &&
              r.text.startsWith('node-1/app-1 app-1.disk ') &&
              r.text.includes('-> active') &&
              r.text.includes('(resume granted'),
          ),
        { timeout: 20_000 },
      )
      .toBe(true);
    await expect.poll(() => handle('app-1.disk').getAttribute('data-state'), { timeout: 15_000 }).toBe('active');
    // Newest at the bottom: the heal after the partition.
    const texts = (await timelineRows()).map((r) => r.text);
    expect(texts.lastIndexOf('heal node-1')).toBeGreaterThan(texts.lastIndexOf('partition node-1'));
    // Every handle's events until filtered to one target; the faults and process events stay.
    expect((await timelineRows()).some((r) => r.kind === 'handle' && r.target === 'app-2.disk')).toBe(true);
    await page.fill('#tl-target', 'app-1.disk');
    await expect
      .poll(
        async () => (await timelineRows()).filter((r) => r.kind === 'handle').every((r) => r.target === 'app-1.disk'),
        { timeout: 10_000 },
      )
      .toBe(true);
    const filtered = await timelineRows();
    expect(filtered.some(paused)).toBe(true);
    expect(filtered.some((r) => r.kind === 'fault' && r.text === 'partition node-1')).toBe(true);
    expect(filtered.some((r) => r.kind === 'process' && r.text.startsWith('replica-'))).toBe(true);
    await page.screenshot({ path: join(shotsDir(), 'inspector-timeline.png') });
    await page.fill('#tl-target', '');
    await expect
      .poll(async () => (await timelineRows()).some((r) => r.kind === 'handle' && r.target === 'app-2.disk'), {
        timeout: 10_000,
      })
      .toBe(true);
  }, 90_000);

  it('a foreign write while the node is partitioned past its hold period ends the handle invalidated', async () => {
    await page.locator('button[data-action="partition"][data-id="node-1"]').click();
    await expect.poll(() => handle('app-1.disk').getAttribute('data-state'), { timeout: 15_000 }).toBe('paused');
    await foreignWrite('app-1.disk');
    await page.locator('button[data-action="heal"][data-id="node-1"]').click();
    await expect.poll(() => handle('app-1.disk').getAttribute('data-state'), { timeout: 15_000 }).toBe('invalidated');
    // And why: the state reads with its reason.
    await expect
      .poll(() => handle('app-1.disk').locator('.state').textContent(), { timeout: 10_000 })
      .toBe('invalidated: MODIFIED');
    // On the Timeline too, the reason marked.
    await expect
      .poll(() => page.locator('#tl-rows .ev[data-target="app-1.disk"] .reason').allTextContents(), { timeout: 10_000 })
      .toContain('MODIFIED');
    // The foreign write is in the protocol list: the launcher's own agent, as it reached a replica.
    await page.fill('#filter', 'app-1.disk');
    await expect
      .poll(
        async () =>
          (await messageRows()).some((r) => r.from === 'cli' && /^replica-\d$/.test(r.to) && r.type === 'write'),
        { timeout: 10_000 },
      )
      .toBe(true);
    await page.fill('#filter', '');
    await handle('app-1.disk').click();
    await page.waitForTimeout(800);
    // The README's picture is rewritten only when asked for; a test run leaves the tree alone.
    const shots =
      process.env.SAFE_RESUME_DOCS_SCREENSHOT === '1' ? join(import.meta.dirname, '..', 'docs') : shotsDir();
    mkdirSync(shots, { recursive: true });
    await page.screenshot({ path: join(shots, 'inspector.png') });
  }, 90_000);

  it('keeps working through a browser reload (history replayed by the launcher), its counters too', async () => {
    // The tests above paused handles (a replica killed, a partition): the page counts the pauses the
    // cluster saw, not the ones this page happened to watch, so a reload changes nothing.
    await expect.poll(() => counter('s-pauses'), { timeout: 10_000 }).toBeGreaterThan(0);
    const pauses = await counter('s-pauses');
    const told = ((await cli('status')).totals as { pauses?: number }).pauses;
    expect(told).toBeGreaterThanOrEqual(pauses);
    // The token was taken out of the address bar (and the history) once read; the reload still has it.
    expect(page.url()).not.toContain('token');
    expect(await page.evaluate(() => (globalThis as unknown as { location: { hash: string } }).location.hash)).toBe('');
    await page.reload();
    await expect.poll(() => counter('s-pauses'), { timeout: 10_000 }).toBeGreaterThanOrEqual(pauses);
    await expect.poll(() => handle('app-1.disk').getAttribute('data-state'), { timeout: 15_000 }).toBe('invalidated');
    await expect
      .poll(() => handle('app-1.disk').locator('.state').textContent(), { timeout: 10_000 })
      .toBe('invalidated: MODIFIED');
    await expect.poll(() => page.locator('.actor[data-machine="handle"]').count(), { timeout: 15_000 }).toBe(2);
    await expect.poll(() => page.locator('#rows tr').count(), { timeout: 15_000 }).toBeGreaterThan(0);
  }, 60_000);

  it("shows each node's NBD export and its clients' handles: active, paused with a request waiting, invalidated: MODIFIED; gone with the client, and with the node", async () => {
    // A name a user could choose, markup included: the page shows it as text.
    const target = '<i>vm "1"</i> & co.disk';
    const status = await cli('status');
    const nodes = status.nodes as Array<{ id: string; nbd: { url: string } | null }>;
    const url = nodes.find((n) => n.id === 'node-1')?.nbd?.url;
    expect(url, JSON.stringify(status.nodes)).toMatch(/^nbd\+unix:\/\/\/\?socket=\/\S+\/nbd\/node-1\.sock$/);
    const exported = page.locator('[data-nbd="node-1"]');
    const conn = exported.locator('.conn');
    await expect.poll(() => exported.locator('.url').textContent(), { timeout: 10_000 }).toBe(url);
    expect(await conn.count()).toBe(0);

    const client = await nbdClient(url!, target);
    try {
      expect(await client.write(0, Buffer.alloc(4096, 0x61))).toBe(0);
      await expect.poll(() => conn.getAttribute('data-state'), { timeout: 10_000 }).toBe('active');
      expect(await conn.locator('.target').textContent()).toBe(target);
      expect(await conn.locator('.state').textContent()).toBe('active');
      expect(await page.locator('i').count()).toBe(0);

      // From the page, as above: node-1 cut off past the hold period while another writer changes the
      // target; the request waiting meanwhile fails.
      await page.locator('button[data-action="partition"][data-id="node-1"]').click();
      await expect.poll(() => conn.getAttribute('data-state'), { timeout: 15_000 }).toBe('paused');
      const waiting = client.write(0, Buffer.alloc(4096, 0x62));
      waiting.catch(() => undefined); // awaited below; a failure before that must not go unhandled
      await expect.poll(() => conn.locator('.requests').textContent(), { timeout: 10_000 }).toBe('1 in flight');
      await foreignWrite(target);
      await page.locator('button[data-action="heal"][data-id="node-1"]').click();
      expect(await waiting).toBe(5); // EIO, never a stale success
      await expect.poll(() => conn.locator('.state').textContent(), { timeout: 15_000 }).toBe('invalidated: MODIFIED');
      await expect.poll(() => conn.locator('.requests').textContent(), { timeout: 10_000 }).toBe('0 in flight');
      expect(await conn.locator('.target').textContent()).toBe(target);
      await page.screenshot({ path: join(shotsDir(), 'inspector-nbd.png') });

      client.close();
      await expect.poll(() => conn.count(), { timeout: 10_000 }).toBe(0);
      await expect.poll(() => exported.locator('.idle').textContent()).toBe('no clients');
    } finally {
      client.close();
    }

    // A node that is down serves no export: its rows go.
    expect((await cli('kill', 'node-2')).ok).toBe(true);
    await expect
      .poll(() => page.locator('[data-node="node-2"] .state').textContent(), { timeout: 10_000 })
      .toBe('down');
    expect(await page.locator('[data-nbd="node-2"]').count()).toBe(0);
  }, 90_000);

  it('shows the actors of a process that is down dead, and live again once it is back', async () => {
    // node-2, killed above: its session and its application's handle are still drawn, greyed out and
    // labelled, never as if they were connected and active.
    await expect.poll(() => actorsOf('node-2', 'session').getAttribute('class'), { timeout: 10_000 }).toContain('dead');
    expect(await actorsOf('node-2', 'session').textContent()).toContain('process down');
    await expect.poll(() => handle('app-2.disk').getAttribute('class'), { timeout: 10_000 }).toContain('dead');
    expect(await handle('app-2.disk').textContent()).toContain('process down');
    expect(await actorsOf('node-1', 'session').getAttribute('class')).not.toContain('dead');
    // Greyed out: drawn faint.
    expect(
      Number(await page.evaluate<string>('getComputedStyle(document.querySelector(".actor.dead")).opacity')),
    ).toBeLessThan(0.7);

    // Restarted, node-2 draws its new actors live (and only those).
    expect((await cli('restart', 'node-2')).ok).toBe(true);
    await expect.poll(() => handle('app-2.disk').getAttribute('data-state'), { timeout: 20_000 }).toBe('active');
    await expect.poll(() => page.locator('.actor.dead[data-process="node-2"]').count(), { timeout: 10_000 }).toBe(0);
    await expect
      .poll(() => actorsOf('node-2', 'session').getAttribute('data-state'), { timeout: 10_000 })
      .toMatch(/^connected/);
    expect(await actorsOf('node-2', 'session').count()).toBe(1);
    expect(await handle('app-2.disk').textContent()).not.toContain('process down');

    // A replica killed from the page: the handles it held show dead with it.
    const nodes = (await cli('status')).nodes as Array<{ id: string; replica: string | null }>;
    const replica = nodes.find((n) => n.id === 'node-2')!.replica!;
    expect(replica).toMatch(/^replica-\d$/);
    await expect
      .poll(() => page.locator(`.actor[data-process="${replica}"][data-machine="replicaHandle"]:not(.dead)`).count(), {
        timeout: 10_000,
      })
      .toBeGreaterThan(0);
    await page.locator(`button[data-action="kill"][data-id="${replica}"]`).click();
    await expect
      .poll(() => page.locator(`.actor[data-process="${replica}"]:not(.dead)`).count(), { timeout: 10_000 })
      .toBe(0);
    const held = page.locator(`.actor.dead[data-process="${replica}"][data-machine="replicaHandle"]`);
    expect(await held.count()).toBeGreaterThan(0);
    expect(await held.first().textContent()).toContain('process down');
    // node-2 goes on on the other replica.
    await expect.poll(() => handle('app-2.disk').getAttribute('data-state'), { timeout: 20_000 }).toBe('active');
    await page.screenshot({ path: join(shotsDir(), 'inspector-dead-replica.png') });

    // Restarted, the replica's handles of before are gone with the process that held them.
    await page.locator(`button[data-action="restart"][data-id="${replica}"]`).click();
    await expect
      .poll(() => page.locator(`[data-replica="${replica}"] .state`).textContent(), { timeout: 15_000 })
      .toBe('serving');
    await expect
      .poll(() => page.locator(`.actor.dead[data-process="${replica}"]`).count(), { timeout: 10_000 })
      .toBe(0);
  }, 120_000);

  it('keeps the counters of the summary through restarts of nodes and replicas', async () => {
    const app2 = async () =>
      ((await cli('status')).handles as Array<{ app: string; state: string }>).find((h) => h.app === 'app-2')?.state;
    // A node restarted (whatever the test above left of node-2).
    expect((await cli('restart', 'node-2')).ok).toBe(true);
    await expect.poll(app2, { timeout: 20_000 }).toBe('active');
    await expect.poll(() => counter('s-denied'), { timeout: 10_000 }).toBeGreaterThan(0); // app-1.disk and the NBD client's handle were refused their resumes
    const acked = await counter('s-acked');
    const granted = await counter('s-granted');
    const denied = await counter('s-denied');
    const pauses = await counter('s-pauses');
    expect(acked).toBeGreaterThan(0);

    // node-1 killed: the writes its application had acknowledged still count. Its actors show dead,
    // the invalidated handle with its reason.
    expect((await cli('kill', 'node-1')).ok).toBe(true);
    await expect
      .poll(() => page.locator('[data-node="node-1"] .state').textContent(), { timeout: 10_000 })
      .toBe('down');
    await page.waitForTimeout(1500); // a poll or two of the status after it
    expect.soft(await counter('s-acked'), 'writes acknowledged after node-1 was killed').toBeGreaterThanOrEqual(acked);

    // Every replica restarted: the resumes granted and denied so far still count.
    await page.click('#reboot');
    await expect.poll(() => page.locator('#result').textContent(), { timeout: 30_000 }).toBe('reboot-storage: ok');
    await expect
      .poll(() => page.locator('#fault-rows [data-replica] .state').allTextContents(), { timeout: 15_000 })
      .toEqual(['serving', 'serving']);
    await expect.poll(app2, { timeout: 20_000 }).toBe('active');
    await page.waitForTimeout(1500);
    expect.soft(await counter('s-denied'), 'resumes denied after reboot-storage').toBeGreaterThanOrEqual(denied);
    expect.soft(await counter('s-granted'), 'resumes granted after reboot-storage').toBeGreaterThanOrEqual(granted);
    expect.soft(await counter('s-acked'), 'writes acknowledged after reboot-storage').toBeGreaterThanOrEqual(acked);
    expect
      .soft(await counter('s-pauses'), 'pauses after reboot-storage (every handle paused once more)')
      .toBeGreaterThan(pauses);

    await expect.poll(() => actorsOf('node-1', 'session').getAttribute('class'), { timeout: 10_000 }).toContain('dead');
    await expect.poll(() => handle('app-1.disk').textContent(), { timeout: 10_000 }).toContain('process down');
    expect(await handle('app-1.disk').locator('.state').textContent()).toBe('invalidated: MODIFIED');
    await page.screenshot({ path: join(shotsDir(), 'inspector-dead.png') });
    // The Timeline reads in the order things happened, though nodes report handle changes late.
    // (By the instant each row carries, not its time-of-day text, which starts again at midnight.)
    const ats = (
      await page.locator('#tl-rows .ev').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-at')))
    ).map(Number);
    expect(ats.length).toBeGreaterThan(10);
    expect(ats.every((at) => Number.isFinite(at) && at > 0)).toBe(true);
    expect(ats).toEqual([...ats].sort((a, b) => a - b));
  }, 120_000);
});

describe('inspector page over etcd', () => {
  let etcdLauncher: ChildProcess;
  let etcdPage: Page;
  beforeAll(async () => {
    let at: string;
    ({ proc: etcdLauncher, url: at } = await up([
      '--store',
      'etcd',
      '--dir',
      join(t.dir, 'e'),
      '--replicas',
      '2',
      '--nodes',
      '1',
      '--apps',
      '1',
    ]));
    etcdPage = await browser.newPage({ viewport: { width: 1400, height: 860 } });
    await etcdPage.goto(at);
  }, 60_000);
  afterAll(async () => {
    if (etcdLauncher && etcdLauncher.exitCode === null) {
      etcdLauncher.kill('SIGINT');
      await new Promise((r) => etcdLauncher.once('exit', r));
    }
  });

  it('lists the etcd members; a member killed from the page shows down, restarted shows running', async () => {
    const row = (id: string) => etcdPage.locator(`#fault-rows [data-etcd="${id}"]`);
    await expect.poll(() => etcdPage.locator('#fault-rows [data-etcd]').count(), { timeout: 15_000 }).toBe(3);
    await expect.poll(() => row('etcd-2').locator('.state').textContent(), { timeout: 10_000 }).toBe('running');
    await row('etcd-2').locator('button[data-action="kill"]').click();
    await expect.poll(() => row('etcd-2').locator('.state').textContent(), { timeout: 10_000 }).toBe('down');
    await row('etcd-2').locator('button[data-action="restart"]').click();
    await expect.poll(() => row('etcd-2').locator('.state').textContent(), { timeout: 15_000 }).toBe('running');
  }, 60_000);
});
