// Nothing printed to stderr by viaduct or its engine, on whichever Node runs the suite (CI runs it on every supported one).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const fixture = fileURLToPath(new URL('../fixtures/one-of-each.mjs', import.meta.url));

function run(entry) {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [fixture, entry], { timeout: 10_000 }, (error, stdout, stderr) =>
      error ? reject(Object.assign(error, { stderr })) : resolve({ stdout, stderr }),
    );
  });
}

for (const entry of ['import', 'require']) {
  test(`Node ${process.version}, ${entry}('viaduct'): one HTTP request and one WebSocket message print nothing to stderr`, async () => {
    const { stdout, stderr } = await run(entry);
    assert.equal(stdout, 'http:/one\nws:hello\n');
    assert.equal(stderr, '', 'no warning, deprecation or error was printed');
  });
}
