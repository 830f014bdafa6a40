// The example app under node:cluster: two workers behind one port, traffic spread over both, a
// killed worker loses only its own tunnels and is replaced, SIGINT stops everything with exit 0.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';
import { request, roundTrip } from '../helpers/clients.mjs';
import { allClosed, nextEvent, within } from '../helpers/waiting.mjs';

const root = fileURLToPath(new URL('../..', import.meta.url));

function isRunning(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Runs example-app/cluster.mjs; `waitFor(find)` resolves with the first non-undefined `find(output)`. */
function startCluster(t) {
  const env = { ...process.env, PORT: '0', HOST: '127.0.0.1', WORKERS: '2' };
  delete env.API_TARGET;
  delete env.CHAT_TARGET;
  const child = spawn(process.execPath, ['example-app/cluster.mjs'], {
    cwd: root,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const cluster = { child, output: '', waiters: new Set(), workers: new Set() };
  const check = () => {
    for (const [, pid] of cluster.output.matchAll(/worker (\d+) listening/g))
      cluster.workers.add(Number(pid));
    for (const waiter of cluster.waiters) waiter();
  };
  const collect = (chunk) => {
    cluster.output += chunk;
    check();
  };
  child.stdout.on('data', collect);
  child.stderr.on('data', collect);
  cluster.waitFor = (find, ms, what) =>
    within(
      new Promise((resolve, reject) => {
        const waiter = () => {
          const found = find(cluster.output);
          if (found !== undefined) resolve(found);
          else if (child.exitCode !== null)
            reject(new Error(`the cluster exited (${child.exitCode}) before ${what}`));
          else return;
          cluster.waiters.delete(waiter);
        };
        cluster.waiters.add(waiter);
        waiter();
      }),
      ms,
      what,
    ).catch((error) => {
      error.message += `\n--- cluster output ---\n${cluster.output}`;
      throw error;
    });
  child.on('exit', check);
  // Whatever happens to the test, no process of the cluster outlives it.
  t.after(() => {
    if (child.exitCode !== null) return;
    for (const pid of cluster.workers) if (isRunning(pid)) process.kill(pid, 'SIGKILL');
    child.kill('SIGKILL');
  });
  return cluster;
}

/** Opens a chat socket in its own room; resolves with it and the pid of the worker that took the upgrade. */
function joinChat(url, room, cookie) {
  const ws = new WebSocket(new URL(`chat/room/${room}`, url.replace('http', 'ws')), {
    headers: { cookie },
  });
  ws.on('error', () => {}); // a killed worker's sockets end abruptly: their 'close' is what the test awaits
  return new Promise((resolve, reject) => {
    let pid;
    ws.once('upgrade', (res) => (pid = Number(res.headers['x-worker'])));
    ws.once('open', () => resolve({ ws, pid, closed: nextEvent(ws, 'close') }));
    ws.once('unexpected-response', (_req, res) =>
      reject(new Error(`upgrade refused: ${res.statusCode} by worker ${res.headers['x-worker']}`)),
    );
    ws.once('error', reject);
  });
}

/** Requests `/api/time` on fresh connections (at most `max`) until `done(pids seen)`; returns every pid seen. */
async function spreadHttp(url, max, done) {
  const seen = [];
  for (let i = 0; i < max && !done(seen); i += 1) {
    const res = await request(new URL('api/time', url), { agent: false });
    assert.equal(res.status, 200);
    assert.match(res.json().now, /^\d{4}-\d\d-\d\dT/);
    seen.push(Number(res.headers['x-worker']));
  }
  return seen;
}

/** Opens chat sockets (at most `max`, each on a fresh connection) until `done(tunnels)`; returns them all. */
async function spreadTunnels(url, cookie, prefix, max, done) {
  const tunnels = [];
  for (let i = 0; i < max && !done(tunnels); i += 1) {
    const tunnel = await joinChat(url, `${prefix}-${i}`, cookie);
    assert.equal(
      await within(roundTrip(tunnel.ws, `hello ${i}`), 5_000, 'a round trip on a new tunnel'),
      `hello ${i}`,
    );
    tunnels.push(tunnel);
  }
  return tunnels;
}

const count = (list, pid) => list.filter((p) => p === pid).length;

test('two workers share one port; a killed worker drops only its tunnels and is replaced; SIGINT exits 0', {
  timeout: 60_000,
}, async (t) => {
  const cluster = startCluster(t);
  const url = await cluster.waitFor(
    (out) => /viaduct example: (http:\/\/\S+)/.exec(out)?.[1],
    15_000,
    'the printed URL',
  );
  const port = new URL(url).port;
  const initial = [...cluster.workers];
  assert.equal(initial.length, 2, cluster.output);
  // Port 0 under cluster: both workers got the same port, held by the primary.
  for (const pid of initial)
    assert.match(
      cluster.output,
      new RegExp(`worker ${pid} listening on http://127\\.0\\.0\\.1:${port}/`),
    );
  const [victim, survivor] = initial;

  // HTTP: fresh connections are spread over both workers.
  const httpPids = await spreadHttp(url, 20, (seen) => initial.every((pid) => seen.includes(pid)));
  assert.deepEqual(new Set(httpPids), new Set(initial), `x-worker values: ${httpPids}`);

  // A session opened on one worker is valid on every worker (they share the signing secret).
  const session = await request(new URL('session', url), { method: 'POST' });
  assert.equal(session.status, 200);
  const cookie = session.headers['set-cookie'][0].split(';')[0];

  // WebSockets: at least two tunnels per worker; the 101 carries the worker's pid.
  const tunnels = await spreadTunnels(url, cookie, 'before', 12, (open) =>
    initial.every(
      (pid) =>
        count(
          open.map((t) => t.pid),
          pid,
        ) >= 2,
    ),
  );
  assert.ok(
    initial.every(
      (pid) =>
        count(
          tunnels.map((t) => t.pid),
          pid,
        ) >= 2,
    ),
    `tunnel pids: ${tunnels.map((t) => t.pid)}`,
  );
  const doomed = tunnels.filter((t) => t.pid === victim);
  const kept = tunnels.filter((t) => t.pid === survivor);
  let keptClosed = 0;
  for (const { ws } of kept) ws.on('close', () => (keptClosed += 1));

  // Kill one worker outright: its tunnels end abnormally (no close frame), the others stay up.
  process.kill(victim, 'SIGKILL');
  await within(allClosed(doomed.map((t) => t.ws)), 5_000, "the killed worker's tunnels closing");
  for (const { closed } of doomed) assert.equal((await closed)[0], 1006);
  for (const [i, { ws }] of kept.entries()) {
    assert.equal(
      await within(
        roundTrip(ws, `still here ${i}`),
        5_000,
        "a round trip on the other worker's tunnel",
      ),
      `still here ${i}`,
    );
  }
  assert.equal(keptClosed, 0);

  // The primary replaces it on the same port.
  const replacement = await cluster.waitFor(
    () => [...cluster.workers].find((pid) => !initial.includes(pid)),
    10_000,
    'a replacement worker listening',
  );
  assert.match(cluster.output, new RegExp(`worker ${victim} exited \\(SIGKILL\\)`));
  assert.match(
    cluster.output,
    new RegExp(`worker ${replacement} listening on http://127\\.0\\.0\\.1:${port}/`),
  );

  // New traffic: served by the survivor and the replacement, never by the dead worker.
  const serving = [survivor, replacement];
  const httpAfter = await spreadHttp(url, 20, (seen) => serving.every((pid) => seen.includes(pid)));
  assert.deepEqual(
    new Set(httpAfter),
    new Set(serving),
    `x-worker values after the kill: ${httpAfter}`,
  );
  const tunnelsAfter = await spreadTunnels(url, cookie, 'after', 12, (open) =>
    open.some((t) => t.pid === replacement),
  );
  assert.ok(
    tunnelsAfter.some((t) => t.pid === replacement),
    `tunnel pids after the kill: ${tunnelsAfter.map((t) => t.pid)}`,
  );
  assert.ok(tunnelsAfter.every((t) => serving.includes(t.pid)));

  // SIGINT to the primary: every worker closes its proxies (open tunnels end), exit code 0, promptly.
  const open = [...kept, ...tunnelsAfter].map((t) => t.ws);
  const exited = once(cluster.child, 'exit');
  const started = Date.now();
  cluster.child.kill('SIGINT');
  const [code] = await within(exited, 5_000, 'exit after SIGINT');
  assert.equal(code, 0, cluster.output);
  assert.ok(Date.now() - started < 5_000);
  await within(allClosed(open), 5_000, 'the open tunnels ended by the shutdown');
  assert.match(cluster.output, /SIGINT: closing tunnels and draining requests in 2 workers/);
  for (const pid of cluster.workers)
    assert.equal(isRunning(pid), false, `worker ${pid} outlived the primary`);
});
