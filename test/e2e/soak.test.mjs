// The short soak (soak/run.mjs --seconds 12) as a child process: it must pass, and its summary must
// show traffic in every class it exercises — completed requests and tunnels, the proxy's 502s,
// clients that abort or vanish — with both upstreams killed and restarted.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const RUN = fileURLToPath(new URL('../../soak/run.mjs', import.meta.url));
const SECONDS = 12;
/** The soak takes about 16 s here; the bound is for a hang, with room for a loaded machine. */
const BOUND = 60_000;

function runSoak() {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [RUN, '--seconds', String(SECONDS)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    const timer = setTimeout(() => {
      // Its front and upstreams leave on their own when its IPC channels close.
      child.kill('SIGKILL');
      reject(new Error(`the soak did not finish within ${BOUND} ms:\n${stdout}\n${stderr}`));
    }, BOUND);
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

test(`a ${SECONDS} s soak passes with traffic in every class`, {
  timeout: BOUND + 5_000,
}, async () => {
  const { code, signal, stdout, stderr } = await runSoak();
  const line = stdout.split('\n').find((text) => text.startsWith('SOAK-RESULT '));
  assert.ok(line, `no SOAK-RESULT line (exit ${code ?? signal}):\n${stdout}\n${stderr}`);
  const result = JSON.parse(line.slice('SOAK-RESULT '.length));
  const report = `\n${stdout}\n${stderr}`;

  assert.equal(code, 0, `the soak failed: ${result.failed?.join('; ')}${report}`);
  assert.equal(result.pass, true, report);
  assert.match(stdout, /^RESULT: PASS$/m);

  const { counts, totals } = result;
  const outcome = (kind, name) => counts[kind]?.[name] ?? 0;
  const httpKinds = [
    'get-small',
    'get-large-cl',
    'get-large-chunked',
    'upload-cl',
    'upload-chunked',
    'slow-reader',
  ];
  // Completed and verified, in each HTTP kind that can complete.
  for (const kind of httpKinds)
    assert.ok(outcome(kind, 'ok') > 0, `no completed ${kind} exchange${report}`);
  // Tunnels that exchanged their messages and closed cleanly, and clients that vanished mid-tunnel.
  assert.ok(outcome('ws-tunnel', 'ok') > 0, `no completed tunnel${report}`);
  assert.ok(outcome('ws-vanish', 'vanished') > 0, `no client vanished mid-tunnel${report}`);
  // Clients that gave up mid-request.
  assert.ok(outcome('abort-upload', 'aborted') > 0, `no client aborted an upload${report}`);
  assert.ok(outcome('abort-download', 'aborted') > 0, `no client aborted a download${report}`);
  // The proxy's answer while an upstream was down.
  assert.ok(totals.s502 > 0, `no 502 seen by the clients${report}`);
  for (const upstream of result.upstreams) {
    assert.ok(upstream.restarts >= 1, `the ${upstream.name} upstream was never restarted${report}`);
    assert.equal(upstream.restarts, upstream.kills, report);
    assert.ok(
      (upstream.downProbes.s502 ?? 0) >= 1,
      `no 502 probe while the ${upstream.name} upstream was down${report}`,
    );
  }
  assert.equal(totals.wrong, 0, report);
  assert.equal(totals.hung, 0, report);
});
