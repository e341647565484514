/**
 * glibc's allocator (addon/src/memory.cc): hand free pages back to the kernel, read how much is
 * in use and free.
 * When to trim is decided by the caller (ts/proxy/memory.ts).
 */
import { addon, type MallocInfo } from './addon.js';

export type { MallocInfo } from './addon.js';

/**
 * malloc_trim(pad): returns the free memory of every arena to the kernel (the top of the heap by
 * shrinking it, free pages inside it with MADV_DONTNEED), keeping `pad` bytes at the top. True
 * when some memory was released. Takes a few milliseconds per 100 MB of heap.
 */
export function mallocTrim(pad = 0): boolean {
  return addon().mallocTrim(pad) === 1;
}

/** glibc's view of its arenas (mallinfo2: walks the free lists, microseconds). */
export function mallocInfo(): MallocInfo {
  return addon().mallinfo();
}
