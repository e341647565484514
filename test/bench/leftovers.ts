/** What a bench run left behind under its prefix: netns, the pin directory, cgroups (each a name). */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';

export function leftovers(prefix: string): string[] {
  const netns = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).split('\n').filter((l) => l.startsWith(prefix));
  const pins = existsSync(`/sys/fs/bpf/${prefix}inpod`) ? [`/sys/fs/bpf/${prefix}inpod`] : [];
  const cgroups = ['/sys/fs/cgroup/unified', '/sys/fs/cgroup'].filter(existsSync).flatMap((root) => readdirSync(root).filter((f) => f.startsWith(prefix)).map((f) => `${root}/${f}`));
  return [...netns, ...pins, ...cgroups];
}
