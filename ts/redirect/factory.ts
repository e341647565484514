/**
 * The one place a redirection backend is chosen: `createBackend` returns the named backend,
 * wrapped so that it never enrolls a pod the other backend already captures.
 */
import { MeshError } from '../util/errors.js';
import { withNetns } from './netns.js';
import type { BackendName, BackendOptions, EnrolledPod, NetnsRef, PodSettings, RedirectBackend } from './backend.js';

/** Builds one backend. The agent and the CLI import only this and the interface. */
export async function createBackend(name: BackendName, opts: BackendOptions = {}): Promise<RedirectBackend> {
  const own = await load(name, opts);
  const other = await load(name === 'ebpf' ? 'iptables' : 'ebpf', opts);
  return new ExclusiveBackend(own, other);
}

async function load(name: BackendName, opts: BackendOptions): Promise<RedirectBackend> {
  switch (name) {
    case 'ebpf':
      return new (await import('./ebpf.js')).EbpfBackend(opts);
    case 'iptables':
      return new (await import('./iptables.js')).IptablesBackend(opts);
    default:
      throw new MeshError('INPOD_ERR_USAGE', `unknown backend "${String(name)}": use ebpf or iptables`);
  }
}

/**
 * Refuses to enroll a pod the other backend already captures: two capture layers in one netns
 * would send traffic through the proxy twice (or around it). The check happens before any change.
 */
class ExclusiveBackend implements RedirectBackend {
  constructor(private readonly own: RedirectBackend, private readonly other: RedirectBackend) {}
  get name(): BackendName {
    return this.own.name;
  }
  get ipv6(): boolean {
    return this.own.ipv6;
  }
  install(): Promise<void> {
    return this.own.install();
  }
  /** One open of a path for both the check and the enroll. */
  enroll(netns: NetnsRef, settings?: Partial<PodSettings>): Promise<EnrolledPod> {
    return withNetns(netns, async (ns) => {
      if (await this.other.isEnrolled(ns)) {
        throw new MeshError(
          'INPOD_ERR_OTHER_BACKEND',
          `${ns.path} is already captured by the ${this.other.name} backend; ` +
            `run "inpod redirect unenroll --netns ${ns.path} --backend ${this.other.name}" first`,
        );
      }
      return this.own.enroll(ns, settings);
    });
  }
  unenroll(netns: NetnsRef): Promise<void> {
    return this.own.unenroll(netns);
  }
  list(): Promise<EnrolledPod[]> {
    return this.own.list();
  }
  isEnrolled(netns: NetnsRef): Promise<boolean> {
    return this.own.isEnrolled(netns);
  }
  reconcile(keep: Map<NetnsRef, Partial<PodSettings>>): Promise<EnrolledPod[]> {
    return this.own.reconcile(keep);
  }
  uninstall(): Promise<void> {
    return this.own.uninstall();
  }
}
