// Graceful shutdown under load: proxy.close({ timeout }) while HTTP requests (slow, uploading,
// streaming, hung, stalled mid-body), WebSocket tunnels and handshakes are in flight.
import { afterEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { once } from 'node:events';
import { performance } from 'node:perf_hooks';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { createProxy } from 'viaduct';
import {
  FRONT_KINDS,
  closeAll,
  listen,
  quietLogger,
  startFront,
  startUpstream,
} from '../helpers/servers.mjs';
import {
  SWITCHING_PROTOCOLS,
  handshake,
  headThenPause,
  openSocket,
  rawExchange,
  request,
  roundTrip,
  statusOf,
} from '../helpers/clients.mjs';
import { allClosed, deferred, nextEvent, within } from '../helpers/waiting.mjs';

afterEach(closeAll);

const sha = (buffer) => crypto.createHash('sha256').update(buffer).digest('hex');
const KiB = 1024;
const MiB = 1024 * KiB;

/**
 * An HTTP request that reports how it ended, whether complete or cut: status, body, its hash, and
 * when (performance.now()); `state.ended` turns true at once. With `hold`, only `body` is sent
 * now, and `finish(rest)` sends the rest and ends the request.
 */
function exchange(url, { method = 'GET', headers = {}, body, hold = false } = {}) {
  const firstChunk = deferred();
  const done = deferred();
  const state = { ended: false };
  const end = (result) => {
    state.ended = true;
    done.resolve(result);
  };
  const req = http.request(url, { method, headers, agent: false }, (res) => {
    const chunks = [];
    res.on('data', (chunk) => {
      chunks.push(chunk);
      firstChunk.resolve();
    });
    res.on('error', () => {});
    res.on('close', () => {
      const received = Buffer.concat(chunks);
      end({
        status: res.statusCode,
        complete: res.complete,
        body: received,
        sha: sha(received),
        at: performance.now(),
      });
    });
  });
  req.on('error', (error) => state.ended || end({ error, complete: false, at: performance.now() }));
  if (hold) req.write(body);
  else req.end(body);
  return {
    firstChunk: firstChunk.promise,
    done: done.promise,
    state,
    finish: (rest) => req.end(rest),
  };
}

/** A server that reads upgrade requests and never answers them; `arrived` resolves after `count`. */
async function silentUpgradeUpstream(count) {
  const arrived = deferred();
  let seen = 0;
  const server = net.createServer((socket) => {
    socket.on('error', () => {});
    let head = '';
    socket.on('data', (chunk) => {
      head += chunk.toString('latin1');
      if (head.includes('\r\n\r\n') && ++seen === count) arrived.resolve();
      head = '';
    });
  });
  const port = await listen(server);
  return { url: `http://127.0.0.1:${port}`, arrived: arrived.promise, sockets: () => seen };
}

/**
 * Tracks every response the front server makes; `allClosed()` says whether each one has closed
 * (the proxy releases a request in the response's `close`, which runs before ours).
 */
function trackFront(server) {
  const responses = [];
  server.on('request', (req, res) => {
    const entry = { url: req.url, closed: false };
    entry.done = new Promise((resolve) =>
      res.once('close', () => {
        entry.closed = true; // synchronously: close() settling is checked against it
        resolve();
      }),
    );
    responses.push(entry);
  });
  return {
    responses,
    allClosed: () => responses.every((entry) => entry.closed),
    whenAllClosed: () => Promise.all(responses.map((e) => e.done)),
  };
}

// 50 requests. Slow and streaming responses finish once `release` is resolved (after close());
// uploads finish when their second half, sent after close(), arrives; hung and stalled ones never do.
const COUNTS = { slow: 20, upload: 10, stream: 10, hang: 5, stall: 5 };
const TUNNELS = 20;
const TIMEOUT = 1_200;
const STALL_LENGTH = 100_000;
const STALL_SENT = 1_000;

describe('close({ timeout }) under load', () => {
  for (const kind of FRONT_KINDS) {
    test(`${kind}: 50 requests and ${TUNNELS} tunnels in flight — finished ones are whole, unfinished ones end only at the timeout, tunnels end, newcomers get 503`, {
      timeout: 15_000,
    }, async () => {
      // ---- upstream: each request kind behaves as its path says --------------------------------
      const release = deferred(); // let the slow and streaming responses finish: released after close()
      const bodies = new Map();
      const up = await startUpstream(async (req, res, record) => {
        const [, what] = req.url.split('/');
        if (what === 'slow') {
          await release.promise;
          const body = bodies.get(req.url);
          res.writeHead(200, {
            'content-type': 'application/octet-stream',
            'content-length': body.length,
          });
          res.end(body);
        } else if (what === 'upload') {
          const text = JSON.stringify({ length: record.body.length, sha: sha(record.body) });
          res.writeHead(200, {
            'content-type': 'application/json',
            'content-length': Buffer.byteLength(text),
          });
          res.end(text);
        } else if (what === 'stream') {
          const body = bodies.get(req.url);
          const framing =
            Number(req.url.split('/')[2]) % 2 === 0 ? { 'content-length': body.length } : {}; // else chunked
          res.writeHead(200, { 'content-type': 'application/octet-stream', ...framing });
          res.write(body.subarray(0, 64 * KiB));
          await release.promise;
          try {
            for (let offset = 64 * KiB; offset < body.length; offset += 64 * KiB) {
              if (!res.write(body.subarray(offset, offset + 64 * KiB))) await once(res, 'drain');
            }
            res.end();
          } catch {
            // The connection went: the client's check reports it.
          }
        } else if (what === 'hang') {
          await new Promise(() => {}); // never answers
        } else if (what === 'stall') {
          res.writeHead(200, { 'content-type': 'text/plain', 'content-length': STALL_LENGTH });
          res.write('s'.repeat(STALL_SENT)); // and nothing more
          await new Promise(() => {});
        } else {
          return false;
        }
      });
      const arrivals = [];
      const allArrived = deferred();
      up.server.on('request', (req) => {
        arrivals.push(req.url); // on the head: an upload's body is still coming
        if (arrivals.length === 50) allArrived.resolve();
      });
      const upstreamTunnels = [];
      up.wss.on('connection', (ws) => upstreamTunnels.push(ws));
      const silent = await silentUpgradeUpstream(2);

      const logger = quietLogger();
      const proxy = createProxy({ target: up.url, routes: { '/pending': silent.url }, logger });
      const errors = [];
      proxy.on('error', (error, req) =>
        errors.push({ code: error.code, status: error.status, url: req.url }),
      );
      const tunnelEvents = [];
      const allTunnelEvents = deferred();
      proxy.on('close', (event) => {
        tunnelEvents.push({ ...event, at: performance.now() });
        if (tunnelEvents.length === TUNNELS) allTunnelEvents.resolve();
      });
      const front = await startFront(kind, proxy);
      const tracked = trackFront(front.server);

      // ---- 20 tunnels, each with a conversation -------------------------------------------------
      const sockets = [];
      for (let i = 0; i < TUNNELS; i++) {
        const opened = await openSocket(`${front.wsUrl}/ws/${i}`);
        assert.equal(opened.greeting, `hello:/ws/${i}`);
        sockets.push(opened.ws);
      }
      await Promise.all(
        sockets.map(async (ws, i) => {
          for (let k = 0; k < 3; k++)
            assert.equal(await roundTrip(ws, `m${i}.${k}`), `echo:m${i}.${k}`);
        }),
      );

      // ---- 50 requests, all of which reach the upstream before close() --------------------------
      const finishing = []; // { url, expect(result) }: the upstream completes these before the timeout
      const unfinished = []; // { url, kind }: the upstream never completes these
      const uploads = [];
      for (let i = 0; i < COUNTS.slow; i++) {
        const url = `/slow/${i}`;
        const body = crypto.randomBytes(32 * KiB + i);
        bodies.set(url, body);
        finishing.push({
          url,
          call: exchange(front.url + url),
          length: body.length,
          sha: sha(body),
        });
      }
      for (let i = 0; i < COUNTS.stream; i++) {
        const url = `/stream/${i}`;
        const body = crypto.randomBytes(MiB + i * 7);
        bodies.set(url, body);
        finishing.push({
          url,
          call: exchange(front.url + url),
          length: body.length,
          sha: sha(body),
        });
      }
      for (let i = 0; i < COUNTS.upload; i++) {
        const url = `/upload/${i}`;
        const body = crypto.randomBytes(256 * KiB + i * 13);
        const half = Math.floor(body.length / 2);
        // Half with a Content-Length, half chunked; the second half of each is sent after close().
        const headers =
          i % 2 === 0
            ? { 'content-type': 'application/octet-stream', 'content-length': body.length }
            : { 'content-type': 'application/octet-stream' };
        const call = exchange(front.url + url, {
          method: 'POST',
          headers,
          body: body.subarray(0, half),
          hold: true,
        });
        uploads.push({ call, rest: body.subarray(half) });
        const text = JSON.stringify({ length: body.length, sha: sha(body) });
        finishing.push({ url, call, length: Buffer.byteLength(text), sha: sha(Buffer.from(text)) });
      }
      for (let i = 0; i < COUNTS.hang; i++)
        unfinished.push({
          url: `/hang/${i}`,
          kind: 'hang',
          call: exchange(`${front.url}/hang/${i}`),
        });
      for (let i = 0; i < COUNTS.stall; i++)
        unfinished.push({
          url: `/stall/${i}`,
          kind: 'stall',
          call: exchange(`${front.url}/stall/${i}`),
        });
      assert.equal(finishing.length + unfinished.length, 50);

      await within(allArrived.promise, 5_000, 'all 50 requests reached the upstream');
      // Streaming and stalled responses are under way at the client: their headers were forwarded.
      const underWay = [
        ...finishing.filter((r) => r.url.startsWith('/stream/')),
        ...unfinished.filter((r) => r.kind === 'stall'),
      ];
      await within(
        Promise.all(underWay.map((r) => r.call.firstChunk)),
        5_000,
        'the first bytes of streaming responses',
      );

      // Two upgrades whose upstream never answers the handshake.
      const pendingHandshakes = [0, 1].map((i) =>
        rawExchange(front.port, handshake(`/pending/${i}`)),
      );
      await within(silent.arrived, 5_000, 'the pending handshakes reached their upstream');

      let stats = proxy.stats();
      assert.deepEqual(stats.requests, { total: 50, active: 50, errors: 0 });
      assert.deepEqual(stats.tunnels, { total: TUNNELS, active: TUNNELS, rejected: 0 });
      assert.deepEqual(errors, []);

      // ---- close() -----------------------------------------------------------------------------
      const clientsClosed = allClosed(sockets);
      const upstreamsClosed = allClosed(upstreamTunnels);
      sockets.forEach((ws, i) => ws.send(`last${i}`)); // traffic in flight as the shutdown starts
      let resolvedAt;
      let allClosedAtResolve;
      const t0 = performance.now();
      const closing = proxy.close({ timeout: TIMEOUT });
      closing.then(() => {
        resolvedAt = performance.now();
        allClosedAtResolve = tracked.allClosed();
      });
      // The uploads go on after close() was called.
      for (const { call, rest } of uploads) call.finish(rest);

      // Every tunnel ends now, on both sides, as a 'shutdown', without waiting for the requests.
      await within(clientsClosed, TIMEOUT / 2, 'every client saw its tunnel close');
      await within(upstreamsClosed, TIMEOUT / 2, 'every upstream saw its tunnel close');
      await within(allTunnelEvents.promise, TIMEOUT / 2, 'a close event for every tunnel');
      assert.equal(tunnelEvents.length, TUNNELS);
      for (const event of tunnelEvents) {
        assert.equal(event.reason, 'shutdown', `tunnel ${event.req.url} ended as ${event.reason}`);
        assert.equal(event.route, 'default');
        assert.ok(
          event.at - t0 < TIMEOUT,
          `tunnel ${event.req.url} ended ${Math.round(event.at - t0)} ms after close()`,
        );
      }
      assert.equal(proxy.stats().tunnels.active, 0);

      // Handshakes still waiting for their upstream are refused with 503.
      for (const raw of await within(
        Promise.all(pendingHandshakes),
        TIMEOUT / 2,
        'pending handshakes answered',
      )) {
        assert.equal(
          statusOf(raw),
          503,
          `pending handshake answered ${JSON.stringify(raw.slice(0, 40))}`,
        );
      }

      // Newcomers: 503 on both paths, and they never reach the upstream.
      const late = await Promise.all([0, 1, 2, 3, 4].map((i) => request(`${front.url}/late/${i}`)));
      for (const res of late) {
        assert.equal(res.status, 503);
        assert.match(res.text, /^503 Service Unavailable/);
      }
      const lateRaw = await Promise.all(
        [0, 1].map((i) => rawExchange(front.port, handshake(`/ws/late-raw-${i}`))),
      );
      for (const raw of lateRaw)
        assert.equal(
          statusOf(raw),
          503,
          `late upgrade answered ${JSON.stringify(raw.slice(0, 40))}`,
        );
      const lateClient = await openSocket(`${front.wsUrl}/ws/late-client`);
      assert.equal(lateClient.refused?.status, 503);
      assert.equal(up.handshakes.length, TUNNELS, 'no late upgrade reached the upstream');
      assert.equal(
        arrivals.length,
        50,
        `no late request reached the upstream: ${arrivals.slice(50)}`,
      );
      assert.equal(silent.sockets(), 2);

      // Nothing gated was cut or answered early, and close() is still waiting.
      const early = [...finishing.filter((f) => !f.url.startsWith('/upload/')), ...unfinished]
        .filter((r) => r.call.state.ended)
        .map((r) => r.url);
      assert.deepEqual(early, [], 'requests ended before their upstream finished or the timeout');
      assert.equal(resolvedAt, undefined, 'close() resolved with requests in flight');
      release.resolve();

      // ---- requests whose upstream finishes: whole, correct, before the timeout -----------------
      const results = await within(
        Promise.all(finishing.map((r) => r.call.done)),
        TIMEOUT + 2_000,
        'the finishing requests',
      );
      results.forEach((result, i) => {
        const { url, length, sha: expected } = finishing[i];
        assert.equal(result.error, undefined, `${url}: ${result.error}`);
        assert.equal(result.status, 200, `${url}: status`);
        assert.equal(result.complete, true, `${url}: complete`);
        assert.equal(result.body.length, length, `${url}: length`);
        assert.equal(result.sha, expected, `${url}: content`);
        assert.ok(
          result.at - t0 < TIMEOUT,
          `${url} finished ${Math.round(result.at - t0)} ms after close(), after the ${TIMEOUT} ms timeout`,
        );
      });
      assert.equal(
        resolvedAt,
        undefined,
        'close() resolved while requests whose upstream never finishes are in flight',
      );

      // ---- requests whose upstream never finishes: ended at the timeout, never before ----------
      const cut = await within(
        Promise.all(unfinished.map((r) => r.call.done)),
        TIMEOUT + 2_000,
        'the unfinished requests',
      );
      cut.forEach((result, i) => {
        const { url, kind: what } = unfinished[i];
        const after = result.at - t0;
        assert.ok(
          after >= TIMEOUT - 5,
          `${url} ended ${Math.round(after)} ms after close(), before the ${TIMEOUT} ms timeout`,
        );
        if (what === 'hang') {
          // Nothing was sent yet: a proxy-made 503.
          assert.equal(result.status, 503, `${url}: status`);
          assert.equal(result.complete, true);
          assert.match(result.body.toString('utf8'), /^503 Service Unavailable/);
        } else {
          // Headers and part of the body were sent: the connection is destroyed, incomplete.
          assert.equal(result.complete, false, `${url}: a cut response must not look complete`);
          assert.ok(result.error || result.status === 200, `${url}: ${result.error}`);
          if (!result.error)
            assert.equal(result.body.length, STALL_SENT, `${url}: bytes before the cut`);
        }
      });

      // ---- close() resolves, nothing is left open ----------------------------------------------
      await within(closing, 2_000, 'close() resolved');
      assert.ok(
        resolvedAt - t0 >= TIMEOUT - 5,
        `close() resolved ${Math.round(resolvedAt - t0)} ms after the call`,
      );
      assert.equal(
        allClosedAtResolve,
        true,
        `close() resolved with front responses open: ${tracked.responses.filter((e) => !e.closed).map((e) => e.url)}`,
      );
      stats = proxy.stats();
      const newcomers = late.length;
      const refusedUpgrades = lateRaw.length + 1;
      assert.deepEqual(stats.requests, {
        total: 50 + newcomers,
        active: 0,
        errors: COUNTS.hang + COUNTS.stall + newcomers,
      });
      assert.deepEqual(stats.tunnels, { total: TUNNELS, active: 0, rejected: 2 + refusedUpgrades });
      assert.deepEqual(stats.routes.default.requests, {
        total: 50 + newcomers,
        active: 0,
        errors: COUNTS.hang + COUNTS.stall + newcomers,
      });
      assert.deepEqual(stats.routes.default.tunnels, {
        total: TUNNELS,
        active: 0,
        rejected: refusedUpgrades,
      });
      assert.deepEqual(stats.routes['/pending'].tunnels, { total: 0, active: 0, rejected: 2 });

      // Every request or upgrade ended by the shutdown is reported once, as ESHUTDOWN, and logged.
      const expectedErrors = [
        ...unfinished.map((r) => r.url),
        ...late.map((_, i) => `/late/${i}`),
        '/pending/0',
        '/pending/1',
        '/ws/late-raw-0',
        '/ws/late-raw-1',
        '/ws/late-client',
      ].sort();
      assert.deepEqual(errors.map((e) => e.url).sort(), expectedErrors);
      for (const error of errors) {
        assert.equal(error.code, 'ESHUTDOWN', `${error.url}: ${error.code}`);
        assert.equal(error.status, 503);
      }
      const errorLines = logger.lines
        .filter(([level]) => level === 'error')
        .map(([, line]) => line);
      for (const { url } of unfinished) {
        assert.ok(
          errorLines.some((line) => line.includes(`503 for GET ${url} `)),
          `a log line for ${url}`,
        );
      }
    });
  }
});

describe('close() without a timeout, and twice', () => {
  test('waits for slow requests and an upload still being sent; a client that gives up is released; tunnels end at once', {
    timeout: 10_000,
  }, async () => {
    const release = deferred();
    const arrivedUrls = [];
    const allArrived = deferred();
    const bodies = new Map([0, 1, 2].map((i) => [`/slow/${i}`, crypto.randomBytes(48 * KiB + i)]));
    const up = await startUpstream(async (req, res, record) => {
      if (req.url.startsWith('/slow/')) {
        await release.promise;
        const body = bodies.get(req.url);
        res.writeHead(200, {
          'content-type': 'application/octet-stream',
          'content-length': body.length,
        });
        res.end(body);
      } else if (req.url === '/upload') {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end(sha(record.body));
      } else if (req.url === '/abandoned') {
        await new Promise(() => {});
      } else {
        return false;
      }
    });
    const upstreamRequests = new Map();
    up.server.on('request', (req) => {
      arrivedUrls.push(req.url);
      upstreamRequests.set(req.url, req);
      if (arrivedUrls.length === 5) allArrived.resolve();
    });
    const proxy = createProxy({ target: up.url, logger: quietLogger() });
    const front = await startFront('express5', proxy);
    const tracked = trackFront(front.server);
    const frontClosed = new Map();
    front.server.on('request', (req, res) => frontClosed.set(req.url, once(res, 'close')));

    const tunnels = [
      await openSocket(`${front.wsUrl}/a`),
      await openSocket(`${front.wsUrl}/b`),
    ].map((t) => t.ws);
    const slow = [0, 1, 2].map((i) => exchange(`${front.url}/slow/${i}`));
    const uploadBody = crypto.randomBytes(300 * KiB);
    const upload = exchange(`${front.url}/upload`, {
      method: 'POST',
      body: uploadBody.subarray(0, 1_000),
      hold: true,
    });
    const abandoned = http.get(`${front.url}/abandoned`, { agent: false });
    abandoned.on('error', () => {});
    await within(allArrived.promise, 5_000, 'all requests reached the upstream');
    assert.equal(proxy.stats().requests.active, 5);

    const settled = [];
    const tunnelsClosed = allClosed(tunnels);
    const first = proxy.close(); // no timeout: the default (10 s) is far beyond this test's waits
    const second = proxy.close();
    first.then(
      () => settled.push('first'),
      (error) => settled.push(`first rejected: ${error}`),
    );
    second.then(
      () => settled.push('second'),
      (error) => settled.push(`second rejected: ${error}`),
    );

    await within(tunnelsClosed, 2_000, 'tunnels ended at once');
    assert.equal((await request(`${front.url}/late`)).status, 503);
    assert.equal(statusOf(await rawExchange(front.port, handshake('/late-ws'))), 503);

    // The client that gives up: its upstream request is destroyed and it no longer counts.
    const abandonedUpstreamSocket = upstreamRequests.get('/abandoned').socket;
    abandoned.destroy();
    await within(frontClosed.get('/abandoned'), 2_000, 'the front saw the abandoning client go');
    if (!abandonedUpstreamSocket.destroyed)
      await within(
        once(abandonedUpstreamSocket, 'close'),
        2_000,
        'the abandoned upstream request is destroyed',
      );
    assert.equal(proxy.stats().requests.active, 4);

    // The upload finishes after close() was called, and arrives whole.
    upload.finish(uploadBody.subarray(1_000));
    const uploaded = await within(upload.done, 2_000, 'the upload');
    assert.equal(uploaded.status, 200);
    assert.equal(uploaded.body.toString('utf8'), sha(uploadBody));
    await within(frontClosed.get('/upload'), 2_000, 'the upload response closed');
    assert.equal(proxy.stats().requests.active, 3);
    assert.deepEqual(settled, [], 'close() settled while slow requests are in flight');
    assert.equal(
      slow.filter((s) => s.state.ended).length,
      0,
      'a slow request ended before its upstream answered',
    );

    const releasedAt = performance.now();
    release.resolve();
    const results = await within(Promise.all(slow.map((s) => s.done)), 2_000, 'the slow requests');
    results.forEach((result, i) => {
      const body = bodies.get(`/slow/${i}`);
      assert.equal(result.status, 200);
      assert.equal(result.complete, true);
      assert.equal(result.sha, sha(body), `/slow/${i}: content`);
    });
    await within(
      Promise.all([first, second]),
      2_000,
      'both close() calls resolved once the slow requests finished',
    );
    assert.ok(performance.now() - releasedAt < 2_000, 'not held until the default timeout');
    assert.deepEqual(settled.sort(), ['first', 'second']);
    assert.ok(tracked.allClosed(), 'every front response closed');
    const stats = proxy.stats();
    assert.equal(stats.requests.active, 0);
    assert.equal(stats.tunnels.active, 0);
    assert.ok(stats.requests.errors >= 1, 'the late request was refused');
    assert.deepEqual(arrivedUrls.sort(), [
      '/abandoned',
      '/slow/0',
      '/slow/1',
      '/slow/2',
      '/upload',
    ]);

    // A third call after it settled: settled too, at once.
    await within(proxy.close({ timeout: 50 }), 200, 'close() after close() resolved');
  });
});

describe('close() on an idle proxy', () => {
  test('resolves at once, whether it never served or its load has finished', {
    timeout: 10_000,
  }, async () => {
    const up = await startUpstream();

    const unused = createProxy({ target: up.url, logger: quietLogger() });
    let started = performance.now();
    await within(unused.close({ timeout: 60_000 }), 200, 'close() of an unused proxy');
    assert.ok(performance.now() - started < 200);

    const proxy = createProxy({ target: up.url, logger: quietLogger() });
    const front = await startFront('express5', proxy);
    const tracked = trackFront(front.server);
    const done = await Promise.all(
      Array.from({ length: 20 }, (_, i) => request(`${front.url}/burst/${i}`)),
    );
    for (const [i, res] of done.entries()) assert.equal(res.json().url, `/burst/${i}`);
    const tunnels = [];
    for (let i = 0; i < 5; i++) tunnels.push((await openSocket(`${front.wsUrl}/t/${i}`)).ws);
    for (const ws of tunnels) assert.equal(await roundTrip(ws, 'x'), 'echo:x');
    let tunnelEnds = 0;
    const allEnded = deferred();
    proxy.on('close', () => ++tunnelEnds === tunnels.length && allEnded.resolve());
    for (const ws of tunnels) ws.close();
    await within(allEnded.promise, 2_000, 'the clients closed their tunnels');
    // The proxy releases a request in the response's close: wait for every one.
    await within(tracked.whenAllClosed(), 2_000, 'the burst is over');
    assert.deepEqual(proxy.stats().requests, { total: 20, active: 0, errors: 0 });
    assert.deepEqual(proxy.stats().tunnels, { total: 5, active: 0, rejected: 0 });

    started = performance.now();
    const closing = proxy.close({ timeout: 60_000 });
    await within(closing, 200, 'close() of a proxy whose load finished');
    assert.ok(performance.now() - started < 200);
    assert.equal((await request(`${front.url}/after`)).status, 503);
    assert.deepEqual(proxy.stats().requests, { total: 21, active: 0, errors: 1 });
  });
});

// close() ends each tunnel with a flushing end(); at the deadline "tunnels that did not flush are
// destroyed" (lib/proxy.ts). A tunnel with unsent bytes towards both peers, neither of which reads,
// can only end by being destroyed there.
describe('close({ timeout }) and a tunnel that cannot flush', () => {
  test('neither peer reads: at the timeout the tunnel is destroyed and close() resolves', {
    timeout: 10_000,
  }, async () => {
    // An upstream that answers 101, then stops reading and sends a flood.
    const upstreamSide = deferred();
    const server = net.createServer(async (socket) => {
      socket.on('error', () => {});
      await headThenPause(socket);
      socket.write(SWITCHING_PROTOCOLS);
      upstreamSide.resolve(socket);
    });
    const upPort = await listen(server);
    const proxy = createProxy({ target: `http://127.0.0.1:${upPort}`, logger: quietLogger() });
    const opened = nextEvent(proxy, 'open');
    const front = await startFront('node', proxy);

    // A client that completes the handshake, then stops reading and sends a flood too.
    const client = net.connect(front.port, '127.0.0.1');
    client.on('error', () => {});
    const clientClosed = new Promise((resolve) => client.once('close', resolve));
    const switched = headThenPause(client);
    client.write(handshake('/flood'));
    assert.equal(statusOf(await within(switched, 2_000, 'the 101')), 101);
    const upstream = await upstreamSide.promise;
    const [{ clientSocket, upstreamSocket }] = await opened;

    // Fill both directions until the proxy holds unsent bytes towards both peers and neither peer
    // can send more (bounded: at most 256 MiB written by each peer).
    const chunk = Buffer.alloc(MiB);
    const stuck = () =>
      clientSocket.writableLength > 0 &&
      upstreamSocket.writableLength > 0 &&
      client.writableLength >= 4 * MiB &&
      upstream.writableLength >= 4 * MiB;
    let steady = 0;
    await within(
      (async () => {
        for (let i = 0; i < 100_000 && steady < 200; i++) {
          if (client.writableLength < 4 * MiB && client.bytesWritten < 256 * MiB)
            client.write(chunk);
          if (upstream.writableLength < 4 * MiB && upstream.bytesWritten < 256 * MiB)
            upstream.write(chunk);
          steady = stuck() ? steady + 1 : 0;
          await nextTurn();
        }
      })(),
      5_000,
      'both directions backed up',
    );
    assert.ok(
      stuck(),
      `backed up: proxy→client ${clientSocket.writableLength} B, proxy→upstream ${upstreamSocket.writableLength} B unsent`,
    );
    assert.equal(proxy.stats().tunnels.active, 1);

    const tunnelClosed = nextEvent(proxy, 'close');
    const closing = proxy.close({ timeout: 300 });
    const [event] = await within(tunnelClosed, 2_000, 'the tunnel ended after the 300 ms timeout');
    assert.equal(event.reason, 'shutdown');
    await within(clientClosed, 2_000, 'the client connection closed');
    await within(closing, 2_000, 'close() resolved');
    assert.equal(proxy.stats().tunnels.active, 0);
  });
});
