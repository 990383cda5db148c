/** Temporary changes to the host's 2 MiB hugetlb pool for tests of hugetlb-backed guest RAM. */
import { readFileSync, writeFileSync } from 'node:fs';
import { hugePagePool } from '../../src/memory/guest-memory.js';

const isRoot = process.getuid?.() === 0;

/** Sets the 2 MiB hugetlb pool to `pages` for the duration of `fn` (root only), then restores it. */
export async function withHugePagePool<T>(pages: number, fn: () => T | Promise<T>): Promise<T> {
  const { poolFile } = hugePagePool();
  const before = readFileSync(poolFile, 'utf8').trim();
  writeFileSync(poolFile, String(pages));
  try {
    return await fn();
  } finally {
    writeFileSync(poolFile, before);
  }
}

/**
 * Runs `fn` with at least `pages` free 2 MiB hugetlb pages, growing the pool for the duration when
 * root (and restoring it); returns why not instead, without running `fn`, when that is impossible.
 */
export async function withHugePages(pages: number, fn: () => void | Promise<void>): Promise<string | undefined> {
  const pool = hugePagePool();
  if (pool.free >= pages) {
    await fn();
    return undefined;
  }
  if (!isRoot) return `hugetlb pool has ${pool.free} free 2 MiB pages, need ${pages}; growing it needs root`;
  return withHugePagePool(pool.total + pages - pool.free, async () => {
    const free = hugePagePool().free;
    if (free < pages) return `the kernel gave only ${free} free 2 MiB pages`;
    await fn();
    return undefined;
  });
}
