import { getSystemErrorName } from 'node:util';

/** Stable error codes. Messages name the likely cause and the fix. */
export type MeshErrorCode =
  | 'INPOD_ERR_NETNS'
  | 'INPOD_ERR_OTHER_BACKEND'
  | 'INPOD_ERR_KERNEL'
  | 'INPOD_ERR_BPFFS'
  | 'INPOD_ERR_CGROUP'
  | 'INPOD_ERR_BTF'
  | 'INPOD_ERR_NOT_INSTALLED'
  | 'INPOD_ERR_IPTABLES'
  | 'INPOD_ERR_ADDON'
  | 'INPOD_ERR_USAGE'
  | 'INPOD_ERR_CA'
  | 'INPOD_ERR_CONFIG'
  | 'INPOD_ERR_XDS'
  | 'INPOD_ERR_XDS_RESOURCE'
  | 'INPOD_ERR_HBONE'
  | 'INPOD_ERR_HBONE_CONNECT'
  | 'INPOD_ERR_HBONE_TLS'
  | 'INPOD_ERR_HBONE_IDENTITY'
  | 'INPOD_ERR_HBONE_DENIED'
  | 'INPOD_ERR_ORIGINAL_DST'
  | 'INPOD_ERR_SELF_CALL'
  | 'INPOD_ERR_NO_ROUTE'
  | 'INPOD_ERR_POLICY_DENIED'
  | 'INPOD_ERR_UPSTREAM_CONNECT'
  | 'INPOD_ERR_CLIENT_GONE'
  | 'INPOD_ERR_FASTPATH'
  | 'INPOD_ERR_ZDS'
  | 'INPOD_ERR_ZDS_PROTOCOL'
  | 'INPOD_ERR_CNI'
  | 'INPOD_ERR_AGENT';

export class MeshError extends Error {
  readonly code: MeshErrorCode;
  readonly retryable: boolean;
  constructor(code: MeshErrorCode, message: string, opts: { retryable?: boolean; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'MeshError';
    this.code = code;
    this.retryable = opts.retryable ?? false;
  }
}

/** A failed system call: `code` is the errno name ('EPERM'), `syscall` what failed. */
export class SyscallError extends Error {
  readonly code: string;
  readonly errno: number;
  readonly syscall: string;
  constructor(syscall: string, errno: number, detail?: string) {
    const code = errnoName(errno);
    super(`${syscall}${detail ? ` (${detail})` : ''}: ${code}`);
    this.name = 'SyscallError';
    this.code = code;
    this.errno = errno;
    this.syscall = syscall;
  }
}

/** Kernel-internal errnos that reach userspace from bpf(2) and that libuv does not name. */
const KERNEL_ERRNOS: Record<number, string> = { 524: 'ENOTSUPP' };

/** errno (positive) -> 'ENOENT'. */
export function errnoName(errno: number): string {
  const n = Math.abs(errno);
  if (KERNEL_ERRNOS[n]) return KERNEL_ERRNOS[n]!;
  const name = getSystemErrorName(-n);
  // libuv answers "Unknown system error -N" for numbers it does not know
  return name.startsWith('Unknown') ? `E${n}` : name;
}

/** Native calls return a negative errno on failure; this turns that into a SyscallError. */
export function check<T>(syscall: string, result: T | number, detail?: string): T {
  if (typeof result === 'number' && result < 0) throw new SyscallError(syscall, -result, detail);
  return result as T;
}
