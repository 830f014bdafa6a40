// In Express on V8 before 13 (Node 20, 22), viaduct moves the `req` and `res` of an HTTP request it
// proxies to V8's dictionary mode, where they share one hidden class from request to request
// (lib/internals/v8.ts); from V8 13 on, which shares those classes itself, it leaves them alone.
// Nothing a program can see changes; objects whose prototype Express did not swap keep their fast
// properties, and so does a tunnel's `req`, which lives as long as the tunnel (a dictionary is
// larger). V8's view of an object takes `--allow-natives-syntax`, so each front runs in a child process.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { FRONT_KINDS } from '../helpers/servers.mjs';

const PROBE = fileURLToPath(new URL('../fixtures/shape-probe.mjs', import.meta.url));
const SWAPS_PROTOTYPES = new Set(['express5', 'express4']);
// Where viaduct uses the trick: the V8 versions whose hidden classes it works around.
const TRICK_APPLIES = Number(process.versions.v8.split('.')[0]) < 13;

const BOUND = { timeout: 10_000 };

async function probe(t, kind) {
  const child = spawn(process.execPath, ['--allow-natives-syntax', PROBE, kind], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  // A probe that hangs is ended with the test that timed out waiting for it.
  t.after(() => child.kill('SIGKILL'));
  let output = '';
  child.stdout.on('data', (chunk) => (output += chunk));
  const [code] = await once(child, 'exit');
  assert.equal(code, 0, `the probe exited with ${code}: ${output}`);
  return JSON.parse(output);
}

describe('the hidden classes of req and res', () => {
  for (const kind of FRONT_KINDS) {
    const swapped = SWAPS_PROTOTYPES.has(kind) && TRICK_APPLIES;
    test(
      `${kind}, V8 ${process.versions.v8}: ${swapped ? 'HTTP: dictionary mode once viaduct has them' : 'HTTP: fast properties, left alone'}; keys and their order unchanged; a tunnel's req keeps fast properties`,
      BOUND,
      async (t) => {
        const { statuses, requests, greeting, fastTunnelReq } = await probe(t, kind);
        assert.deepEqual(statuses, [200, 200, 200]);
        assert.equal(requests.length, 3);
        for (const seen of requests) {
          assert.equal(seen.fastReq, !swapped, 'req');
          assert.equal(seen.fastRes, !swapped, 'res');
          assert.equal(seen.viaductKeys, 0, 'no key of viaduct is left on req or res');
          // A node:http front has no middleware before the proxy to compare with.
          if (kind !== 'node') assert.deepEqual([seen.keysKeptReq, seen.keysKeptRes], [true, true]);
        }
        assert.equal(greeting, 'hello:/probe/ws');
        assert.equal(fastTunnelReq, true, "the tunnel's req keeps fast properties");
      },
    );
  }
});
