/**
 * A unix socket path that a newer process takes over without a moment in which the path names
 * nothing: the socket is bound at a temporary name beside the path and renamed onto it (rename(2)
 * replaces the old name atomically), so a client connecting during an agent rollout reaches the
 * old agent or the new one, never ENOENT. The process whose socket the path names is its owner;
 * only the owner removes the path when it closes, so an older process stopping after a newer one
 * took over leaves the newer one's socket in place. (istio-cni's agent removes the path and binds
 * anew at start, ztunnelserver_linux.go newZtunnelServer; the rename closes the gap between.)
 */
import { chmodSync, existsSync, lstatSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { dirname } from 'node:path';
import { MeshError, type MeshErrorCode } from './errors.js';

export class SocketPath {
  readonly #dev: bigint;
  readonly #ino: bigint;

  /** Use take() or takeSync(). */
  private constructor(readonly path: string, tmp: string, mode: number) {
    chmodSync(tmp, mode);
    const st = lstatSync(tmp, { bigint: true });
    renameSync(tmp, path);
    this.#dev = st.dev;
    this.#ino = st.ino;
  }

  /**
   * Binds a socket with `bindAt(tmp)` (listening or not, as the caller does it), sets `mode`,
   * and renames it onto `path`, replacing a socket of an earlier or a still running process.
   * Refuses to replace anything that is not a socket (MeshError `code`).
   */
  static async take(path: string, code: MeshErrorCode, bindAt: (tmp: string) => Promise<void>, mode = 0o600): Promise<SocketPath> {
    const tmp = tempName(path, code);
    try {
      await bindAt(tmp);
      return new SocketPath(path, tmp, mode);
    } finally {
      rmSync(tmp, { force: true });
    }
  }

  /** take() for a socket bound synchronously. */
  static takeSync(path: string, code: MeshErrorCode, bindAt: (tmp: string) => void, mode = 0o600): SocketPath {
    const tmp = tempName(path, code);
    try {
      bindAt(tmp);
      return new SocketPath(path, tmp, mode);
    } finally {
      rmSync(tmp, { force: true });
    }
  }

  /** Does the path still name this socket (no newer process took it over, nobody removed it)? */
  get owned(): boolean {
    try {
      const st = lstatSync(this.path, { bigint: true });
      return st.dev === this.#dev && st.ino === this.#ino;
    } catch {
      return false;
    }
  }

  /** Removes the path if it still names this socket; a newer owner's socket stays. */
  release(): void {
    if (this.owned) rmSync(this.path, { force: true });
  }
}

/** The temporary name to bind at, beside `path` (same filesystem, so the rename is atomic). */
function tempName(path: string, code: MeshErrorCode): string {
  mkdirSync(dirname(path), { recursive: true, mode: 0o750 });
  if (existsSync(path) && !lstatSync(path).isSocket()) {
    throw new MeshError(code, `${path} exists and is not a socket; remove it or choose another path`);
  }
  return `${path}.${process.pid}-${randomBytes(3).toString('hex')}`;
}
