// Deadlines kept by the proxy's sweep (lib/sweep.ts): an upgrade handshake's connect and read
// timeouts arm no timer of their own; the HTTP read timeout counts activity in both directions (a
// slow response or a slow upload is not a silent upstream) and is met late by at most two periods,
// never early, the period following the shortest route; pooled upstream sockets are retired a
// second before the upstream's `Keep-Alive: timeout=N` runs out (sooner or later than the 4 s kept
// without a hint), and not pooled at all for N ≤ 1; the sweep's timer runs only while there is
// something to watch.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHook } from 'node:async_hooks';
import http from 'node:http';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { setTimeout as delay } from 'node:timers/promises';
import { createProxy } from 'viaduct';
import {
  closeAll,
  listen,
  quietLogger,
  startFront,
  startSilentUpstream,
  startUpstream,
} from '../helpers/servers.mjs';
import { handshake, openSocket, rawExchange, request, statusOf } from '../helpers/clients.mjs';
import { within } from '../helpers/waiting.mjs';

after(closeAll);

// ---------------------------------------------------------------------------------------------
// Helpers local to this file.

/** Sent one byte every {@link TRICKLE_EVERY} ms: 800 ms from the first byte to the last. */
const TRICKLE = 'hello world';
const TRICKLE_EVERY = 80;

/** Writes {@link TRICKLE} to `stream` a byte at a time, then ends it: slow, but never silent for long. */
async function trickle(stream) {
  for (let i = 0; i < TRICKLE.length; i++) {
    if (i > 0) await delay(TRICKLE_EVERY);
    stream.write(TRICKLE[i]);
  }
  stream.end();
}

/** The response to a client request that the caller is still writing: status and body once it ended. */
function responseOf(req) {
  return new Promise((resolve, reject) => {
    req.on('response', (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('end', () =>
        resolve({ status: res.statusCode, text: Buffer.concat(chunks).toString('utf8') }),
      );
      res.on('error', reject);
    });
    req.on('error', reject);
  });
}

/** Times a request made by `send()`: the response and the milliseconds it took. */
async function timed(send) {
  const started = performance.now();
  const res = await send();
  return { res, ms: performance.now() - started };
}

/**
 * Each connection `server` (HTTP or raw TCP) accepts, in order: the client's port, whether the peer
 * ended it (rather than this server closing it first), and when it closed (`performance.now()`).
 */
function trackConnections(server) {
  const connections = [];
  server.on('connection', (socket) => {
    const connection = { port: socket.remotePort, peerEnded: false };
    socket.once('end', () => (connection.peerEnded = true));
    connection.closed = new Promise((resolve) =>
      socket.once('close', () => resolve(performance.now())),
    );
    connections.push(connection);
  });
  return connections;
}

/**
 * An upstream that answers every request head with `HTTP/1.1 200`, `Content-Length: 2` and no
 * Keep-Alive hint, on raw TCP, and never closes a connection itself.
 */
async function hintlessUpstream() {
  const server = net.createServer((socket) => {
    let pending = '';
    socket.on('error', () => {});
    socket.on('data', (chunk) => {
      pending += chunk.toString('latin1');
      for (let end = pending.indexOf('\r\n\r\n'); end !== -1; end = pending.indexOf('\r\n\r\n')) {
        pending = pending.slice(end + 4);
        socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
      }
    });
  });
  const connections = trackConnections(server);
  const port = await listen(server);
  return { url: `http://127.0.0.1:${port}`, connections };
}

/** A proxy on a node:http front, with the proxy's `error` events kept in `errors`. */
async function proxied(options) {
  const proxy = createProxy({ logger: quietLogger(), ...options });
  const errors = [];
  proxy.on('error', (error) => errors.push(error));
  const front = await startFront('node', proxy);
  return { proxy, front, errors };
}

/**
 * One request through a fresh proxy to `target`, then its pooled upstream connection must be closed
 * by the proxy (the upstream saw the proxy end it) between `min` and `max` ms after the response.
 */
async function assertRetiredAfter(target, connections, min, max) {
  const { front } = await proxied({ target });
  const res = await within(request(`${front.url}/once`), 2000, 'the response');
  const endedAt = performance.now();
  assert.equal(res.status, 200);
  assert.equal(connections.length, 1);
  const idle =
    (await within(connections[0].closed, max + 1000, 'the pooled socket closed')) - endedAt;
  assert.ok(
    idle >= min && idle < max,
    `closed ${idle.toFixed(0)} ms after the response, expected ${min} to ${max}`,
  );
  assert.ok(connections[0].peerEnded, 'the proxy closed the connection, not the upstream');
}

const SWEEP_MODULE = /[\\/]sweep\.js:\d+/;
const VIADUCT_MODULE = /[\\/]dist[\\/](?:[\w-]+[\\/])*[\w-]+\.js:\d+/;

/** Timers created by the sweep module. */
const bySweep = (stack) => SWEEP_MODULE.test(stack);
/** Timers created by viaduct's code, or by Node on its behalf, other than the sweep's. */
const byViaductNotSweep = (stack) => VIADUCT_MODULE.test(stack) && !SWEEP_MODULE.test(stack);

/**
 * The timers created from now on, and not cleared yet, whose creating stack `createdBy` accepts.
 * Watched through async_hooks: the sweep's timer is unref'd, and `process.getActiveResourcesInfo()`
 * lists only ref'd timers, so it would never show there.
 */
function watchTimers(createdBy) {
  const live = new Map();
  let created = 0;
  let fired = 0;
  let waiters = [];
  const hook = createHook({
    init(asyncId, type, _triggerAsyncId, resource) {
      if (type !== 'Timeout') return;
      const limit = Error.stackTraceLimit;
      Error.stackTraceLimit = 30;
      const site = {};
      Error.captureStackTrace(site);
      Error.stackTraceLimit = limit;
      if (!createdBy(site.stack)) return;
      created++;
      live.set(asyncId, resource);
    },
    before(asyncId) {
      if (live.has(asyncId)) fired++;
    },
    destroy(asyncId) {
      if (!live.delete(asyncId) || live.size > 0) return;
      for (const resolve of waiters) resolve();
      waiters = [];
    },
  });
  hook.enable();
  return {
    /** The live timers. */
    timers: () => [...live.values()],
    /** How many were created since the watch began. */
    created: () => created,
    /** How many times their callbacks ran since the watch began: each a wake-up of the process. */
    fired: () => fired,
    /** Resolves once none is live. */
    allCleared: () =>
      live.size === 0 ? Promise.resolve() : new Promise((resolve) => waiters.push(resolve)),
    disable: () => hook.disable(),
  };
}

// ---------------------------------------------------------------------------------------------

describe('read timeout (timeouts.read) on the sweep', () => {
  test('a response trickling a byte every 80 ms for 800 ms outlives read: 300: delivered whole, no error', async () => {
    const up = await startUpstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': TRICKLE.length });
      trickle(res);
    });
    const { front, errors } = await proxied({ target: up.url, timeouts: { read: 300 } });
    const { res, ms } = await timed(() =>
      within(request(`${front.url}/slow-response`), 3000, 'the trickled response'),
    );
    assert.equal(res.status, 200);
    // request() resolves on `end` only: the body arrived complete, with its Content-Length.
    assert.equal(res.text, TRICKLE);
    assert.ok(
      ms >= 700,
      `the response took ${ms.toFixed(0)} ms: it trickled for longer than the read timeout`,
    );
    assert.deepEqual(errors, []);
  });

  test('a request body uploaded a byte every 80 ms for 800 ms outlives read: 300: bytes written upstream count as activity', async () => {
    const up = await startUpstream();
    const { front, errors } = await proxied({ target: up.url, timeouts: { read: 300 } });
    const req = http.request(`${front.url}/slow-upload`, {
      method: 'POST',
      agent: false,
      headers: { 'content-type': 'text/plain' },
    });
    const { res, ms } = await timed(
      async () =>
        (
          await within(
            Promise.all([trickle(req), responseOf(req)]),
            3000,
            'the answer to the slow upload',
          )
        )[1],
    );
    assert.equal(res.status, 200, `got ${res.status}: ${res.text}`);
    // The upstream answers once it has read the whole body, echoing it.
    const seen = JSON.parse(res.text);
    assert.equal(seen.headers['transfer-encoding'], 'chunked');
    assert.equal(seen.body, TRICKLE);
    assert.ok(
      ms >= 700,
      `the exchange took ${ms.toFixed(0)} ms: the upload was slower than the read timeout`,
    );
    assert.deepEqual(errors, []);
  });

  test('a silent upstream: 504 EREADTIMEOUT no earlier than read: 400, at most two periods (2 × 50 ms) late', async () => {
    const up = await startSilentUpstream();
    const { front, errors } = await proxied({ target: up.url, timeouts: { read: 400 } });
    const { res, ms } = await timed(() => within(request(`${front.url}/silent`), 3000, 'the 504'));
    assert.equal(res.status, 504);
    assert.equal(up.requests.length, 1, 'the request reached the upstream');
    // 10 ms of slack for clocks; 400 + 2 × 50 ms + 150 ms for the loopback and a busy event loop.
    assert.ok(ms >= 390 && ms < 650, `504 after ${ms.toFixed(0)} ms, expected 400 to 500`);
    assert.deepEqual(
      errors.map((e) => [e.status, e.code]),
      [[504, 'EREADTIMEOUT']],
    );
  });

  test('the sweep period follows the shortest read timeout over the routes: read: 100 on /fast, 2000 by default', async () => {
    const up = await startSilentUpstream();
    const { front, errors } = await proxied({
      target: up.url,
      routes: { '/fast': { target: up.url, timeouts: { read: 100 } } },
      timeouts: { read: 2000 },
    });
    const { res, ms } = await timed(() =>
      within(request(`${front.url}/fast/silent`), 3000, 'the 504 on /fast'),
    );
    assert.equal(res.status, 504);
    // A 12 ms period: 100 to 124 ms. The default route's 250 ms period would take 250 ms at the least.
    assert.ok(ms >= 95 && ms < 200, `504 after ${ms.toFixed(0)} ms, expected 100 to 124`);
    assert.deepEqual(
      errors.map((e) => [e.status, e.code]),
      [[504, 'EREADTIMEOUT']],
    );
  });
});

describe('pooled upstream sockets', () => {
  test('Keep-Alive: timeout=2 from the upstream: the proxy closes the pooled socket about 1 s after the response, before the upstream would', async () => {
    const up = await startUpstream();
    up.server.keepAliveTimeout = 2000; // Node answers `Keep-Alive: timeout=2`
    // 2 s − 1 s, late by at most two 250 ms periods; the upstream itself would close at 2 s.
    await assertRetiredAfter(up.url, trackConnections(up.server), 900, 1700);
  });

  test('Keep-Alive: timeout=1 from the upstream: the socket is not pooled, the next request opens a new connection', async () => {
    const up = await startUpstream((_req, res) => {
      res.setHeader('keep-alive', 'timeout=1');
      return false;
    });
    up.server.keepAliveTimeout = 10_000; // the upstream would keep the connection open
    const connections = trackConnections(up.server);
    const { front } = await proxied({ target: up.url });

    assert.equal(
      (await within(request(`${front.url}/first`), 2000, 'the first response')).status,
      200,
    );
    await within(
      connections[0].closed,
      300,
      'the first upstream connection closed right after its response',
    );
    assert.ok(connections[0].peerEnded, 'the proxy closed the connection, not the upstream');

    assert.equal(
      (await within(request(`${front.url}/second`), 2000, 'the second response')).status,
      200,
    );
    assert.deepEqual(
      up.seen.map((r) => r.url),
      ['/first', '/second'],
    );
    const [first, second] = up.seen.map((r) => r.socket.remotePort);
    assert.notEqual(first, second, 'two requests, two upstream connections');
    assert.equal(connections.length, 2);
  });

  test('Keep-Alive: max=100, timeout=2: the hint counts wherever it is in the list', async () => {
    const up = await startUpstream((_req, res) => {
      res.setHeader('keep-alive', 'max=100, timeout=2');
      return false;
    });
    up.server.keepAliveTimeout = 10_000; // the upstream would keep the connection open
    await assertRetiredAfter(up.url, trackConnections(up.server), 900, 1700);
  });

  test('Keep-Alive: timeout=6 from the upstream: the pooled socket is kept past the 4 s default, until 5 s', {
    timeout: 10_000,
  }, async () => {
    const up = await startUpstream();
    up.server.keepAliveTimeout = 6000; // Node answers `Keep-Alive: timeout=6`; it would close at 6 s
    await assertRetiredAfter(up.url, trackConnections(up.server), 4900, 5700);
  });

  test('no Keep-Alive hint from the upstream: the pooled socket is closed after 4 s idle', {
    timeout: 10_000,
  }, async () => {
    const up = await hintlessUpstream();
    // 4 s, when it is due: the sweep wakes for it.
    await assertRetiredAfter(up.url, up.connections, 3900, 4400);
  });
});

describe('the sweep', () => {
  test("an upgrade the upstream never answers: 504 EREADTIMEOUT no earlier than read: 300, at most two periods late; viaduct armed no timer for it but the sweep's, which stops after", async () => {
    const up = await startSilentUpstream();
    const { front, errors } = await proxied({ target: up.url, timeouts: { read: 300 } });
    const sweep = watchTimers(bySweep);
    const others = watchTimers(byViaductNotSweep);
    try {
      const { res: raw, ms } = await timed(() =>
        within(rawExchange(front.port, handshake('/chat')), 3000, 'the 504 and close'),
      );
      assert.equal(statusOf(raw), 504, raw);
      assert.equal(up.upgrades.length, 1, 'the handshake reached the upstream');
      // A 37 ms period: 300 to 374 ms after the connection, plus 150 ms for the loopback and a busy event loop.
      assert.ok(ms >= 290 && ms < 525, `504 after ${ms.toFixed(0)} ms, expected 300 to 374`);
      assert.deepEqual(
        errors.map((e) => [e.status, e.code]),
        [[504, 'EREADTIMEOUT']],
      );
      // One timer per tick, each armed by the one before: a period of 37 ms over the ~374 ms.
      assert.ok(
        sweep.created() >= 1 && sweep.created() <= Math.ceil(ms / 37) + 2,
        `the handshake started the sweep, which ticked at its period: ${sweep.created()} timers in ${ms.toFixed(0)} ms`,
      );
      assert.equal(others.created(), 0, "no connect or read timer of the handshake's own");
      await within(sweep.allCleared(), 500, 'the sweep stopped once the handshake was answered');
    } finally {
      sweep.disable();
      others.disable();
    }
  });

  test('nothing but an idle tunnel to watch: the sweep wakes once per eighth of read, not at the period of connect', async () => {
    const up = await startUpstream();
    // Requests would be watched every 125 ms (connect / 8), the tunnel every second (read / 8).
    const { proxy, front } = await proxied({
      target: up.url,
      timeouts: { connect: 1000, read: 8000 },
    });
    const sweep = watchTimers(bySweep);
    try {
      const { ws } = await within(openSocket(`${front.wsUrl}/idle`), 2000, 'the tunnel');
      const firedAtOpen = sweep.fired();
      const started = performance.now();
      await delay(1500);
      const ms = performance.now() - started;
      const wakes = sweep.fired() - firedAtOpen;
      // The handshake's last short tick, then one a second: at most 3 (12 at 125 ms).
      assert.ok(
        wakes >= 1 && wakes <= 3,
        `${wakes} sweep wake-ups in ${ms.toFixed(0)} ms with one idle tunnel`,
      );
      assert.equal(proxy.stats().tunnels.active, 1, 'the tunnel is still open');
      ws.terminate();
    } finally {
      sweep.disable();
    }
  });

  test('nothing but a pooled socket to watch: the sweep wakes when it is due, not every period', {
    timeout: 10_000,
  }, async () => {
    const up = await hintlessUpstream();
    const { front } = await proxied({ target: up.url, timeouts: { connect: 1000 } });
    const sweep = watchTimers(bySweep);
    try {
      const res = await within(request(`${front.url}/once`), 2000, 'the response');
      assert.equal(res.status, 200);
      const firedAtResponse = sweep.fired();
      await within(up.connections[0].closed, 5000, 'the pooled socket retired');
      const wakes = sweep.fired() - firedAtResponse;
      // The request's last short tick, and the one at the socket's retirement: not 32 at 125 ms over 4 s.
      assert.ok(
        wakes >= 1 && wakes <= 2,
        `${wakes} sweep wake-ups while a socket idled 4 s in the pool`,
      );
    } finally {
      sweep.disable();
    }
  });

  test("one unref'd timer, running only while there is something to watch: stopped once the pooled socket is retired, and by close()", async () => {
    const sweep = watchTimers(bySweep);
    try {
      // Retired after a short 1 s: the upstream says `Keep-Alive: timeout=2`.
      const brief = await startUpstream();
      brief.server.keepAliveTimeout = 2000;
      const briefConnections = trackConnections(brief.server);
      const first = await proxied({ target: brief.url });
      assert.equal(sweep.timers().length, 0, 'an idle proxy runs no sweep');

      assert.equal(
        (await within(request(`${first.front.url}/a`), 2000, 'the response')).status,
        200,
      );
      assert.equal(sweep.timers().length, 1, 'the sweep runs while a socket is pooled');
      assert.equal(
        sweep.timers()[0].hasRef(),
        false,
        "the sweep's timer does not keep the process alive",
      );
      await within(briefConnections[0].closed, 3000, 'the pooled socket retired');
      await within(sweep.allCleared(), 500, 'the sweep stopped once nothing was left to watch');

      // Pooled for 4 s (Node's default `Keep-Alive: timeout=5`): close() ends the sweep and the socket now.
      const long = await startUpstream();
      const longConnections = trackConnections(long.server);
      const second = await proxied({ target: long.url });
      assert.equal(
        (await within(request(`${second.front.url}/b`), 2000, 'the response')).status,
        200,
      );
      assert.equal(sweep.timers().length, 1, 'the sweep runs while a socket is pooled');
      await within(second.proxy.close({ timeout: 1000 }), 1000, 'close()');
      await within(sweep.allCleared(), 500, 'the sweep stopped by close()');
      await within(longConnections[0].closed, 500, 'the pooled socket closed by close()');
      assert.ok(longConnections[0].peerEnded, 'the proxy closed the connection, not the upstream');
    } finally {
      sweep.disable();
    }
  });
});
