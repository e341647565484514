import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseYaml, parseYamlDocuments, readBoundedFile } from '../../ts/util/yaml.js';
import { ALIAS_BOMB } from '../fixtures/yaml.js';

describe('the limited YAML reader', () => {
  const dir = mkdtempSync(join(tmpdir(), 'inpod-yaml-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('refuses an alias bomb at once, naming the source', () => {
    const t0 = Date.now();
    expect(() => parseYaml(ALIAS_BOMB, 'bomb.yaml')).toThrow(/^bomb\.yaml: YAML aliases expand this document past 1 MiB \(10 times its size, 1 MiB at least\); refused as an alias bomb/);
    expect(() => parseYamlDocuments(`kind: Namespace\n---\n${ALIAS_BOMB}`, 'm.yaml')).toThrow(/^m\.yaml: .*alias bomb/);
    expect(Date.now() - t0).toBeLessThan(1000);
  });

  it('refuses an alias to the node that holds it (a cycle no consumer could walk)', () => {
    expect(() => parseYaml('a: &a [1, *a]', 'loop.yaml')).toThrow(/loop\.yaml: a YAML alias refers to a node that contains it/);
  });

  it('accepts aliases used as they are meant: a shared block reused a few times', () => {
    const doc = parseYaml('base: &l {app: web, version: v1}\nworkloads:\n  - {name: a, labels: *l}\n  - {name: b, labels: *l}\n', 'ok.yaml') as { workloads: { labels: unknown }[] };
    expect(doc.workloads[1]!.labels).toEqual({ app: 'web', version: 'v1' });
  });

  it('refuses nesting deeper than any configuration', () => {
    expect(() => parseYaml(`${'['.repeat(80)}${']'.repeat(80)}`, 'deep.yaml')).toThrow(/deep\.yaml: nested more than 64 levels/);
    expect(() => parseYaml(`${'['.repeat(200_000)}`, 'deeper.yaml')).toThrow(/deeper\.yaml: not valid YAML/);
  });

  it('reads the core schema: a date and an on/off stay strings, no merge keys', () => {
    expect(parseYaml('d: 2024-01-01\ne: on\n<<: {x: 1}\n', 'c.yaml')).toEqual({ d: '2024-01-01', e: 'on', '<<': { x: 1 } });
  });

  it('names the line of a syntax error, and reads an empty text as null', () => {
    expect(() => parseYaml('a: [\n', 'bad.yaml')).toThrow(/^bad\.yaml: not valid YAML: .*\(line 2, column 1\)/);
    expect(parseYaml('# only a comment\n', 'e.yaml')).toBeNull();
  });

  it('refuses a file over its cap before parsing it', () => {
    const f = join(dir, 'big.yaml');
    writeFileSync(f, 'x'.repeat(3000));
    expect(() => readBoundedFile(f, 2048)).toThrow(/big\.yaml: .* is more than the 2048 bytes this file may have/);
    expect(readBoundedFile(f, 3000)).toHaveLength(3000);
    expect(() => readBoundedFile(join(dir, 'none.yaml'), 10)).toThrow(/none\.yaml: cannot be read \(ENOENT\)/);
  });
});
