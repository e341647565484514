import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { installBinary, installConf, uninstallBinary, uninstallConf } from '../../ts/cni/conflist.js';
import { pluginBinary } from '../../ts/cni/plugin.js';

const dirs: string[] = [];
const tmp = (): string => {
  const d = mkdtempSync(join(tmpdir(), 'inpod-cni-'));
  dirs.push(d);
  return d;
};
afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));

const calico = { cniVersion: '1.0.0', name: 'k8s-pod-network', plugins: [{ type: 'calico', ipam: { type: 'calico-ipam' } }, { type: 'portmap', capabilities: { portMappings: true } }] };
const entry = { type: 'inpod-cni', agentSocket: '/var/run/inpod/pluginevent.sock' };

describe('chaining inpod-cni into the CNI config', () => {
  it('appends itself last to the primary conflist, once, leaving other plugins as they were', () => {
    const d = tmp();
    writeFileSync(join(d, '10-calico.conflist'), JSON.stringify(calico));
    writeFileSync(join(d, '99-other.conflist'), JSON.stringify({ ...calico, name: 'other' }));
    const f = installConf(d, entry);
    expect(f).toBe(join(d, '10-calico.conflist'));
    installConf(d, entry); // idempotent
    const got = JSON.parse(readFileSync(f, 'utf8'));
    expect(got.plugins).toEqual([...calico.plugins, entry]);
    expect(JSON.parse(readFileSync(join(d, '99-other.conflist'), 'utf8'))).toEqual({ ...calico, name: 'other' });
  });

  it('upgrades a plain .conf to a .conflist', () => {
    const d = tmp();
    writeFileSync(join(d, '10-bridge.conf'), JSON.stringify({ cniVersion: '0.4.0', name: 'br', type: 'bridge', bridge: 'cni0', ipam: { type: 'host-local' } }));
    installConf(d, entry);
    expect(readdirSync(d)).toEqual(['10-bridge.conflist']);
    expect(JSON.parse(readFileSync(join(d, '10-bridge.conflist'), 'utf8'))).toEqual({
      cniVersion: '0.4.0', name: 'br', plugins: [{ type: 'bridge', bridge: 'cni0', ipam: { type: 'host-local' } }, entry],
    });
  });

  it('uninstall removes exactly its entry', () => {
    const d = tmp();
    writeFileSync(join(d, '10-calico.conflist'), JSON.stringify(calico));
    installConf(d, entry);
    uninstallConf(d);
    uninstallConf(d);
    expect(JSON.parse(readFileSync(join(d, '10-calico.conflist'), 'utf8'))).toEqual(calico);
  });

  it('waits for the pod network to install its config first, writing nothing', () => {
    const d = tmp();
    expect(() => installConf(d, entry)).toThrow(/no CNI config in .* yet/);
    expect(readdirSync(d)).toEqual([]);
  });

  it('installs the static plugin by copying it over any older file (a renamed copy, never half written), and removes it', () => {
    const d = tmp();
    writeFileSync(join(d, 'inpod-cni'), '#!/bin/sh\nexec /usr/local/bin/node /opt/inpod/dist/cni/bin.js "$@"\n'); // what older agents installed
    const p = installBinary(d, pluginBinary());
    expect(installBinary(d, pluginBinary())).toBe(p); // idempotent
    expect(statSync(p).mode & 0o777).toBe(0o755);
    expect(readFileSync(p)).toEqual(readFileSync(pluginBinary()));
    expect(readdirSync(d)).toEqual(['inpod-cni']);
    uninstallBinary(d);
    expect(existsSync(p)).toBe(false);
  });
});
