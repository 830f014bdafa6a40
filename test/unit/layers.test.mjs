// lib/'s folders form layers: a module imports only from its own folder and the folders below it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const LIB = fileURLToPath(new URL('../../lib/', import.meta.url));
// Bottom to top. http/ and upgrade/ share a layer and may not import each other.
const LAYERS = [
  ['runtime'],
  ['internals'],
  ['headers'],
  ['upstream'],
  ['routing'],
  ['http', 'upgrade'],
  ['proxy'],
];
const layerOf = (folder) => LAYERS.findIndex((layer) => layer.includes(folder));

function modules(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory()
      ? modules(join(dir, entry.name))
      : /\.m?ts$/.test(entry.name)
        ? [join(dir, entry.name)]
        : [],
  );
}

const folderOf = (file) => relative(LIB, file).split(sep)[0];

test('every lib/ folder is a known layer', () => {
  const folders = new Set(
    modules(LIB)
      .map(folderOf)
      .filter((name) => !/\.m?ts$/.test(name)),
  );
  assert.deepEqual(
    [...folders].filter((folder) => layerOf(folder) === -1),
    [],
  );
});

test('no module imports from a folder above its own, nor from its neighbour in the same layer', () => {
  const wrong = [];
  for (const file of modules(LIB)) {
    const from = folderOf(file);
    if (layerOf(from) === -1) continue; // lib/index.ts, lib/index.mts, lib/types.ts
    for (const [, specifier] of readFileSync(file, 'utf8').matchAll(/from '(\.[^']+)'/g)) {
      const to = folderOf(join(dirname(file), specifier));
      if (to === from || layerOf(to) === -1) continue; // its own folder, or lib/types.ts
      if (layerOf(to) >= layerOf(from)) wrong.push(`${relative(LIB, file)} imports ${specifier}`);
    }
  }
  assert.deepEqual(wrong, []);
});
