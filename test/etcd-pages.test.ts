/**
 * etcd data page keys: their text order (how etcd compares keys in a range) must be their number
 * order for every page a disk may have (a 1 TiB disk has 2^28 pages of 4 KiB), and a store written
 * with the earlier decimal keys (`d/<target>/<8 digits>`, whose order broke at page 100,000,000) is
 * refused, or, when the store is told to, moved to the current keys before it serves. One etcd
 * member for the file.
 */
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EtcdStore } from '../store/etcd.js';
import { MAX_DISK_BYTES, StoreUnavailableError } from '../store/types.js';
import { startEtcd, type EtcdCluster } from './etcd-cluster.js';

const PAGE = 4096;
const LAST_NARROW = 99_999_999;
const FIRST_WIDE = 100_000_000;

let etcd: EtcdCluster | undefined;
let raw: Etcd3 | undefined;
let n = 0;
const prefix = () => `/pages-${process.pid}-${++n}/`;
const rid = (c: string) => c.repeat(21);
/** A full page whose bytes say which page it is. */
const pageOf = (page: number) => {
  const b = new Uint8Array(PAGE).fill(0x2e);
  b.set(new TextEncoder().encode(`page ${page} start`), 0);
  b.set(new TextEncoder().encode(`page ${page} end`), PAGE - `page ${page} end`.length);
  return b;
};
const same = (a: Uint8Array, b: Uint8Array) => Buffer.from(a).equals(Buffer.from(b));

/** Until the store serves (a store being moved to the current keys counts as unavailable meanwhile). */
async function untilServing(s: EtcdStore, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      await s.ping();
      return;
    } catch (err) {
      if (!(err instanceof StoreUnavailableError) || Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

beforeAll(async () => {
  etcd = await startEtcd(1);
  raw = new Etcd3({ hosts: etcd.endpoints.map((e) => `http://${e}`) });
}, 40_000);

afterAll(async () => {
  raw?.close();
  await etcd?.stop();
});

describe('etcd page keys', () => {
  it('a 1 TiB disk keeps pages 99,999,999 and 100,000,000: each reads back exactly, and a read across them returns both', async () => {
    const s = new EtcdStore(etcd!.endpoints, { prefix: prefix() });
    const r = rid('T');
    try {
      expect(
        await s.open({
          target: 'tera.disk',
          requestId: r,
          principal: 'p',
          mode: 'write',
          session: 's',
          leaseMs: 60_000,
          size: MAX_DISK_BYTES,
        }),
      ).toMatchObject({ ok: true, size: MAX_DISK_BYTES });
      const a = pageOf(LAST_NARROW);
      const b = pageOf(FIRST_WIDE);
      expect(
        await s.write({ target: 'tera.disk', requestId: r, session: 's', seq: 1, offset: LAST_NARROW * PAGE, data: a }),
      ).toEqual({ ok: true, applied: true, version: 1 });
      expect(
        await s.write({ target: 'tera.disk', requestId: r, session: 's', seq: 2, offset: FIRST_WIDE * PAGE, data: b }),
      ).toEqual({ ok: true, applied: true, version: 2 });
      // The last page of the disk too.
      const last = MAX_DISK_BYTES / PAGE - 1;
      expect(
        await s.write({
          target: 'tera.disk',
          requestId: r,
          session: 's',
          seq: 3,
          offset: last * PAGE,
          data: pageOf(last),
        }),
      ).toEqual({ ok: true, applied: true, version: 3 });

      const one = await s.read({ target: 'tera.disk', offset: LAST_NARROW * PAGE, length: PAGE });
      expect(one.ok && same(one.data, a)).toBe(true);
      const two = await s.read({ target: 'tera.disk', offset: FIRST_WIDE * PAGE, length: PAGE });
      expect(two.ok && same(two.data, b)).toBe(true);
      const end = await s.read({ target: 'tera.disk', offset: last * PAGE, length: PAGE });
      expect(end.ok && same(end.data, pageOf(last))).toBe(true);
      // Past the end of the disk, even where no page key could reach: no bytes.
      expect(await s.read({ target: 'tera.disk', offset: last * PAGE + 100, length: 2 * PAGE })).toEqual({
        ok: true,
        data: pageOf(last).slice(100),
        version: 3,
      });
      expect(await s.read({ target: 'tera.disk', offset: 2 ** 52, length: PAGE })).toEqual({
        ok: true,
        data: new Uint8Array(0),
        version: 3,
      });

      // Across the boundary: the second half of one page and the first half of the next.
      const across = await s.read({ target: 'tera.disk', offset: LAST_NARROW * PAGE + PAGE / 2, length: PAGE });
      expect(
        across.ok && same(across.data, new Uint8Array([...a.subarray(PAGE / 2), ...b.subarray(0, PAGE / 2)])),
      ).toBe(true);
      const both = await s.read({ target: 'tera.disk', offset: LAST_NARROW * PAGE, length: 2 * PAGE });
      expect(both.ok && same(both.data, new Uint8Array([...a, ...b]))).toBe(true);

      // A partial write into the page after the boundary keeps the rest of that page.
      expect(
        await s.write({
          target: 'tera.disk',
          requestId: r,
          session: 's',
          seq: 4,
          offset: FIRST_WIDE * PAGE + 10,
          data: new TextEncoder().encode('XY'),
        }),
      ).toMatchObject({ ok: true, applied: true });
      const patched = await s.read({ target: 'tera.disk', offset: FIRST_WIDE * PAGE, length: PAGE });
      const want = new Uint8Array(b);
      want.set(new TextEncoder().encode('XY'), 10);
      expect(patched.ok && same(patched.data, want)).toBe(true);
    } finally {
      await s.shutdown();
    }
  });

  it('page keys sort as their page numbers across the whole of a 1 TiB disk, so a range of pages is a range of keys', async () => {
    const p = prefix();
    const s = new EtcdStore(etcd!.endpoints, { prefix: p });
    const r = rid('K');
    // Pages whose decimal lengths differ (1 to 9 digits), written out of order.
    const pages = [FIRST_WIDE, 7, LAST_NARROW, 268_435_455, 12_345, 9, 10, 99_999, 100_000];
    try {
      expect(
        await s.open({
          target: 'k.disk',
          requestId: r,
          principal: 'p',
          mode: 'write',
          session: 's',
          leaseMs: 60_000,
          size: MAX_DISK_BYTES,
        }),
      ).toMatchObject({ ok: true });
      for (const [i, page] of pages.entries())
        expect(
          await s.write({
            target: 'k.disk',
            requestId: r,
            session: 's',
            seq: i + 1,
            offset: page * PAGE,
            data: new TextEncoder().encode(`#${page}`),
          }),
        ).toMatchObject({ ok: true, applied: true });
      // The page keys (each page's version is under w/, in the same order).
      const keys = (await raw!.getAll().prefix(`${p}`).keys()).filter((k) => k.startsWith(`${p}p/k.disk/`));
      // etcd returns keys in byte order: that order is the pages' number order.
      expect(keys).toHaveLength(pages.length);
      const sorted = [...pages].sort((x, y) => x - y);
      for (const [i, page] of sorted.entries()) {
        const got = await s.read({ target: 'k.disk', offset: page * PAGE, length: `#${page}`.length });
        expect(got.ok && new TextDecoder().decode(got.data)).toBe(`#${page}`);
        expect(keys[i]).toMatch(new RegExp(`/0*${page}$`));
      }
    } finally {
      await s.shutdown();
    }
  });
});

describe('a store written with the earlier decimal page keys', () => {
  /** Write a target the way the earlier layout did: its v key, and pages under d/<target>/<page, 8 digits or more>. */
  async function writeOld(
    p: string,
    target: string,
    meta: { version: number; size: number; fixed?: number },
    pages: Array<[number, Uint8Array]>,
  ): Promise<void> {
    await raw!.put(`${p}k/${encodeURIComponent(target)}/v`).value(JSON.stringify(meta));
    for (const [page, data] of pages)
      await raw!.put(`${p}d/${encodeURIComponent(target)}/${String(page).padStart(8, '0')}`).value(Buffer.from(data));
  }

  it('a target written before pages kept their versions: a resume from before is told the whole target may have changed, one from after exactly what did', async () => {
    const p = prefix();
    const s = new EtcdStore(etcd!.endpoints, { prefix: p });
    const w = rid('W');
    try {
      await s.open({
        target: 'old.disk',
        requestId: w,
        principal: 'alice',
        mode: 'write',
        session: 's1',
        leaseMs: 5000,
      });
      const put = (seq: number, page: number) =>
        s.write({ target: 'old.disk', requestId: w, session: 's1', seq, offset: page * PAGE, data: pageOf(page) });
      await put(1, 0);
      await put(2, 2);
      // As an earlier version left it: no page versions, and a v key without `from`.
      await raw!.delete().prefix(`${p}w/`);
      const vKey = `${p}k/old.disk/v`;
      const meta = JSON.parse((await raw!.get(vKey).string())!) as Record<string, unknown>;
      delete meta.from;
      await raw!.put(vKey).value(JSON.stringify(meta));
      // A new store (another replica), which has not seen the target.
      await s.shutdown();
      const t = new EtcdStore(etcd!.endpoints, { prefix: p });
      try {
        expect(
          await t.write({ target: 'old.disk', requestId: w, session: 's1', seq: 3, offset: 5 * PAGE, data: pageOf(5) }),
        ).toMatchObject({ ok: true, version: 3 });
        const at = async (version: number) =>
          (
            await t.resume([
              {
                target: 'old.disk',
                requestId: rid('R'),
                principal: 'alice',
                mode: 'read',
                session: 's2',
                leaseMs: 5000,
                version,
              },
            ])
          )[0];
        expect(await at(1)).toMatchObject({ granted: false, changed: [[0, 6 * PAGE]], coarse: true });
        const after = await at(2);
        expect(after).toMatchObject({ granted: false, changed: [[5 * PAGE, PAGE]] });
        expect(after).not.toHaveProperty('coarse');
      } finally {
        await t.shutdown();
      }
    } finally {
      await s.shutdown();
    }
  });

  it('is refused, saying what to do; told to move it, a store moves it before serving: unavailable meanwhile, then every acknowledged byte is where it was, across the old boundary too', async () => {
    const p = prefix();
    const a = pageOf(LAST_NARROW);
    const b = pageOf(FIRST_WIDE);
    const small = new TextEncoder().encode('hello, old layout: three pages of it'.padEnd(2 * PAGE + 100, '~'));
    await writeOld(p, 'tera.disk', { version: 2, size: MAX_DISK_BYTES, fixed: MAX_DISK_BYTES }, [
      [LAST_NARROW, a],
      [FIRST_WIDE, b],
    ]);
    await writeOld(p, 'small.disk', { version: 1, size: small.length }, [
      [0, small.subarray(0, PAGE)],
      [1, small.subarray(PAGE, 2 * PAGE)],
      [2, small.subarray(2 * PAGE)],
    ]);
    // targets() assembles every target whole in memory, which a 1 TiB disk is not: a store of its own for it.
    const q = prefix();
    await writeOld(q, 'small.disk', { version: 1, size: small.length }, [
      [2, small.subarray(2 * PAGE)],
      [0, small.subarray(0, PAGE)],
      [1, small.subarray(PAGE, 2 * PAGE)],
    ]);
    const plain = new EtcdStore(etcd!.endpoints, { prefix: p });
    const s = new EtcdStore(etcd!.endpoints, { prefix: p, movePages: true });
    const t = new EtcdStore(etcd!.endpoints, { prefix: q, movePages: true });
    try {
      // Nothing is read through the old keys. Unless told to move them, a store refuses, saying what to do.
      const refused = plain.read({ target: 'tera.disk', offset: LAST_NARROW * PAGE, length: 2 * PAGE });
      await expect(refused).rejects.toThrow(StoreUnavailableError);
      await expect(refused).rejects.toThrow(
        /5 data pages .*earlier safe-resume.*Stop every replica of the earlier version.*--etcd-move-pages/,
      );
      await expect(
        plain.open({
          target: 'tera.disk',
          requestId: rid('O'),
          principal: 'p',
          mode: 'write',
          session: 's',
          leaseMs: 60_000,
        }),
      ).rejects.toThrow(/--etcd-move-pages/);
      expect(await raw!.getAll().prefix(`${p}d/`).count()).toBe(5);
      // Told to: unavailable while it moves them, then it serves.
      const first = s.read({ target: 'tera.disk', offset: LAST_NARROW * PAGE, length: 2 * PAGE });
      await expect(first).rejects.toThrow(StoreUnavailableError);
      await expect(first).rejects.toThrow(/earlier safe-resume.*being moved/);
      await untilServing(s);
      const both = await s.read({ target: 'tera.disk', offset: LAST_NARROW * PAGE, length: 2 * PAGE });
      expect(both.ok && both.version).toBe(2);
      expect(both.ok && same(both.data, new Uint8Array([...a, ...b]))).toBe(true);
      const back = await s.read({ target: 'small.disk', offset: 0, length: 4 * PAGE });
      expect(back.ok && same(back.data, small)).toBe(true);
      // The store that refused serves now too (it checks again on its next use).
      await untilServing(plain);
      const again = await plain.read({ target: 'tera.disk', offset: FIRST_WIDE * PAGE, length: PAGE });
      expect(again.ok && same(again.data, b)).toBe(true);
      // No key of the old layout is left.
      expect(await raw!.getAll().prefix(`${p}d/`).count()).toBe(0);
      // targets() (the chaos checker's final comparison) puts each page at its offset.
      await expect(t.targets()).rejects.toThrow(/earlier safe-resume/);
      await untilServing(t);
      expect(await t.targets()).toEqual([{ target: 'small.disk', data: small }]);
    } finally {
      await plain.shutdown();
      await s.shutdown();
      await t.shutdown();
    }
  });

  it('two replicas opening it at once both end up serving the same bytes, each page moved once', async () => {
    const p = prefix();
    const pages: Array<[number, Uint8Array]> = Array.from({ length: 300 }, (_, i) => [i * 3, pageOf(i * 3)]);
    await writeOld(p, 'many.disk', { version: 300, size: 900 * PAGE, fixed: 900 * PAGE }, pages);
    const x = new EtcdStore(etcd!.endpoints, { prefix: p, movePages: true });
    const y = new EtcdStore(etcd!.endpoints, { prefix: p, movePages: true });
    try {
      await Promise.all([untilServing(x), untilServing(y)]);
      for (const s of [x, y]) {
        const all = await s.read({ target: 'many.disk', offset: 0, length: 900 * PAGE });
        expect(all.ok && all.data.length).toBe(900 * PAGE);
        for (const [page, data] of pages)
          expect(all.ok && same(all.data.subarray(page * PAGE, (page + 1) * PAGE), data)).toBe(true);
        expect(all.ok && all.data.subarray(PAGE, 3 * PAGE).every((v) => v === 0)).toBe(true);
      }
      expect(await raw!.getAll().prefix(`${p}d/`).count()).toBe(0);
      // One key per page: nothing doubled.
      const keys = (await raw!.getAll().prefix(p).keys()).filter(
        (k) => k.includes('/many.disk/') && !k.startsWith(`${p}k/`),
      );
      expect(keys).toHaveLength(pages.length);
    } finally {
      await x.shutdown();
      await y.shutdown();
    }
  });

  it('a store whose layout marker names a layout this version does not know is refused, saying so', async () => {
    const p = prefix();
    await raw!.put(`${p}format`).value('99');
    const s = new EtcdStore(etcd!.endpoints, { prefix: p });
    try {
      await expect(s.read({ target: 'x.disk', offset: 0, length: 1 })).rejects.toThrow(
        /key layout 99.*newer safe-resume/,
      );
      await expect(s.ping()).rejects.toThrow(StoreUnavailableError);
    } finally {
      await s.shutdown();
    }
  });
});
