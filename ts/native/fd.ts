/** File descriptors owned by JavaScript: an object with close(), closed on GC only as a fallback. */
import { closeSync, openSync } from 'node:fs';
import { SyscallError } from '../util/errors.js';

const finalizer = new FinalizationRegistry<number>((fd) => {
  try {
    closeSync(fd);
  } catch {
    /* already closed elsewhere */
  }
});

/** A file descriptor owned by JavaScript. Close it; closing on GC is only a fallback. */
export class Fd {
  #fd: number;
  constructor(fd: number) {
    this.#fd = fd;
    finalizer.register(this, fd, this);
  }
  /** The raw fd, borrowed: valid until close(). Throws EBADF after close. */
  get fd(): number {
    if (this.#fd < 0) throw new SyscallError('use', 9 /* EBADF */, 'fd already closed');
    return this.#fd;
  }
  get closed(): boolean {
    return this.#fd < 0;
  }
  /** Hands the raw fd to a new owner (e.g. net.Socket); this object forgets it. */
  release(): number {
    const fd = this.fd;
    finalizer.unregister(this);
    this.#fd = -1;
    return fd;
  }
  /** Idempotent. */
  close(): void {
    if (this.#fd < 0) return;
    finalizer.unregister(this);
    closeSync(this.#fd);
    this.#fd = -1;
  }
}

/** Opens a file (a netns, a cgroup directory, a pin) read-only. */
export function openPath(path: string): Fd {
  return new Fd(openSync(path, 'r'));
}

/** Runs `fn` with the raw fd of `path` open, and closes it after. */
export function withFd<T>(path: string, fn: (fd: number) => T): T {
  const f = openPath(path);
  try {
    return fn(f.fd);
  } finally {
    f.close();
  }
}
