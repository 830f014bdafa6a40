// Observability: the diagnostics channels, the access log (also through pino), viaduct/prometheus
// on a real prom-client registry, the OpenTelemetry recipe against the SDK's in-memory exporter,
// and the example page's live chart in headless Chromium.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { channel, subscribe, unsubscribe } from 'node:diagnostics_channel';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { Registry, register as defaultRegistry } from 'prom-client';
import pino from 'pino';
import { SpanKind, SpanStatusCode, propagation } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { ProxyError, createProxy } from 'viaduct';
import { collectMetrics } from 'viaduct/prometheus';
import { traceProxy } from '../../example-app/tracing.mjs';
import { startExample } from '../../example-app/server.mjs';
import {
  closeAll,
  deadPort,
  quietLogger,
  refusingUpstream,
  startFront,
  startSilentUpstream,
  startUpstream,
} from '../helpers/servers.mjs';
import {
  SWITCHING_PROTOCOLS,
  handshake,
  handshakeThenReset,
  openSocket,
  request,
  roundTrip,
} from '../helpers/clients.mjs';
import { deferred, nextEvent, within } from '../helpers/waiting.mjs';

after(closeAll);

// Every test gets a bound: a hang fails instead of stalling the file.
const BOUND = { timeout: 5_000 };

const START = 'viaduct:request:start';
const END = 'viaduct:request:end';
const OPEN = 'viaduct:tunnel:open';
const CLOSE = 'viaduct:tunnel:close';
const CHANNELS = [START, END, OPEN, CLOSE];

/** The clients of these tests connect from this loopback address, so that it can be told apart from the upstreams' 127.0.0.1. */
const CLIENT = '127.0.0.2';

// ---------------------------------------------------------------------------------------------
// Helpers local to this file.

/** Items pushed as they happen; `until` waits (bounded) for a condition on them, re-checked on each push. */
class Collector {
  items = [];
  #waiters = new Set();

  push = (item) => {
    this.items.push(item);
    for (const waiter of [...this.#waiters]) {
      const found = waiter.check(this.items);
      if (found) {
        this.#waiters.delete(waiter);
        waiter.resolve(found);
      }
    }
  };

  until(check, what, ms = 2_000) {
    const found = check(this.items);
    if (found) return Promise.resolve(found);
    const waiter = { check, ...deferred() };
    this.#waiters.add(waiter);
    return within(waiter.promise, ms, what).finally(() => this.#waiters.delete(waiter));
  }

  first(match, what, ms) {
    return this.until((items) => items.find(match), what, ms);
  }
}

/** Subscribes to the channels for the test's length (unsubscribed by the test's `after`). */
function listenChannels(t, names = CHANNELS) {
  const seen = new Collector();
  const handlers = names.map((name) => {
    const handler = (message) => seen.push({ name, message });
    subscribe(name, handler);
    return [name, handler];
  });
  let subscribed = true;
  const stop = () => {
    if (!subscribed) return;
    subscribed = false;
    for (const [name, handler] of handlers) unsubscribe(name, handler);
  };
  t.after(stop);
  return {
    seen,
    stop,
    all: (name, match = () => true) =>
      seen.items
        .filter((entry) => entry.name === name && match(entry.message))
        .map((entry) => entry.message),
    first: (name, match = () => true, what = name, ms = 2_000) =>
      seen
        .first((entry) => entry.name === name && match(entry.message), what, ms)
        .then((entry) => entry.message),
    indexOf: (message) => seen.items.findIndex((entry) => entry.message === message),
  };
}

/** Matches a message or entry about the request for `path` (the proxies here are mounted at the root). */
const pathIs = (path) => (message) =>
  (message.req.originalUrl ?? message.req.url) === path && message.req.method === 'GET';

/** A logger whose lines (`[level, message]`) can be awaited. */
function collectingLogger() {
  const lines = new Collector();
  const keep = (level) => (message) => lines.push([level, message]);
  return {
    lines,
    logger: { debug: keep('debug'), info: keep('info'), warn: keep('warn'), error: keep('error') },
  };
}

/** A GET from {@link CLIENT} on a fresh connection. */
function get(url, { headers = {}, agent = false } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { headers, agent, localAddress: CLIENT }, (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('end', () =>
        resolve({
          status: res.statusCode,
          headers: res.headers,
          text: Buffer.concat(chunks).toString('utf8'),
        }),
      );
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** A raw connection from {@link CLIENT}; `until(test)` waits for what it received (latin1) to pass `test`. */
function rawClient(port) {
  const socket = net.connect({ port, host: '127.0.0.1', localAddress: CLIENT });
  socket.on('error', () => {});
  const received = new Collector();
  let text = '';
  socket.on('data', (chunk) => {
    text += chunk.toString('latin1');
    received.push(chunk);
  });
  const closed = nextEvent(socket, 'close');
  return {
    socket,
    closed,
    get text() {
      return text;
    },
    until: (check, what) => received.until(() => check(text), what),
  };
}

/** Sends `bytes` from {@link CLIENT} and resolves with everything received until the server closes. */
async function rawFrom(port, bytes) {
  const client = rawClient(port);
  client.socket.write(bytes);
  await within(client.closed, 2_000, 'the server closes the connection');
  return client.text;
}

/** The length of the first complete `Content-Length` response in `text` from `from`, or 0. */
function completeResponse(text, from = 0) {
  const end = text.indexOf('\r\n\r\n', from);
  if (end < 0) return 0;
  const length = /\r\ncontent-length: *(\d+)/i.exec(text.slice(from, end));
  assert.ok(length, 'a Content-Length response');
  const total = end + 4 + Number(length[1]) - from;
  return text.length - from >= total ? total : 0;
}

/**
 * Timings as the contract gives them: milliseconds, `connect` ≤ `firstByte` ≤ `total`. For one
 * handshake the order of `connect` is not asserted (`{ ordered: false }`): it is taken with a
 * clock of whole milliseconds, so it often comes out above the others; a test of its own shows it.
 */
function assertTimings(timings, keys, { ordered = true } = {}) {
  assert.deepEqual(Object.keys(timings).sort(), [...keys].sort(), 'the timings present');
  for (const [key, value] of Object.entries(timings)) {
    assert.equal(typeof value, 'number', `timings.${key} is a number`);
    assert.ok(Number.isFinite(value) && value >= 0, `timings.${key} = ${value} is ≥ 0`);
  }
  if (timings.firstByte !== undefined)
    assert.ok(timings.firstByte <= timings.total, `firstByte ${timings.firstByte} ≤ total`);
  if (!ordered) return;
  if (timings.connect !== undefined && timings.firstByte !== undefined)
    assert.ok(timings.connect <= timings.firstByte, `connect ${timings.connect} ≤ firstByte`);
  if (timings.connect !== undefined)
    assert.ok(timings.connect <= timings.total, `connect ${timings.connect} ≤ total`);
}

/** Opens a WebSocket from {@link CLIENT}, sends `ping`, closes with 1000 `bye`; resolves with the `open` and `close` events. */
async function tunnelOnce(proxy, url) {
  const opened = nextEvent(proxy, 'open');
  const { ws, greeting } = await openSocket(url, { localAddress: CLIENT });
  const [openEvent] = await opened;
  assert.match(greeting, /^hello:/);
  assert.equal(await roundTrip(ws, 'ping'), 'echo:ping');
  const closed = nextEvent(proxy, 'close');
  ws.close(1000, 'bye');
  const [closeEvent] = await within(closed, 2_000, 'the tunnel closes');
  return { openEvent, closeEvent, greeting };
}

/** Bytes of one tunnelOnce exchange after the 101: the client's masked `ping` and Close(1000, "bye"). */
const PING_AND_CLOSE_FROM_CLIENT = 2 + 4 + 4 + (2 + 4 + 2 + 3);
/** The upstream's greeting frame, `echo:ping` and its Close reply (1000, "bye"). */
const fromUpstreamOf = (greeting) => 2 + greeting.length + (2 + 9) + (2 + 2 + 3);

const reEscape = (text) => text.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');

const REQUEST_ENTRY_KEYS = [
  'type',
  'client',
  'method',
  'path',
  'status',
  'bytes',
  'ms',
  'route',
  'upstream',
  'upstreamFirstByte',
  'tries',
];
const TUNNEL_ENTRY_KEYS = [
  'type',
  'client',
  'path',
  'route',
  'upstream',
  'duration',
  'bytesFromClient',
  'bytesFromUpstream',
  'reason',
  'code',
];
const sorted = (keys) => [...keys].sort();

// ---------------------------------------------------------------------------------------------

describe('diagnostics channels', () => {
  test(
    'a request over a fresh upstream connection, then one over the pooled connection: exact start and end payloads',
    BOUND,
    async (t) => {
      const up = await startUpstream();
      const proxy = createProxy({ routes: { '/fresh': up.url }, logger: quietLogger() });
      t.after(() => proxy.close());
      const frontRequests = [];
      const front = await startFront('express5', proxy, {
        before: [
          (req, _res, next) => {
            frontRequests.push(req);
            next();
          },
        ],
      });
      const ch = listenChannels(t);

      assert.equal((await get(`${front.url}/fresh/one?x=1`)).status, 200);
      const end1 = await ch.first(
        END,
        pathIs('/fresh/one?x=1'),
        'request:end of the first request',
      );
      const starts1 = ch.all(START, pathIs('/fresh/one?x=1'));
      assert.equal(starts1.length, 1, 'one request:start');
      const [start1] = starts1;
      assert.deepEqual(Object.keys(start1).sort(), ['req', 'route', 'upstream']);
      assert.equal(start1.req, frontRequests[0], 'the incoming request itself');
      assert.equal(start1.route, '/fresh');
      assert.equal(start1.upstream, up.url);
      assert.ok(ch.indexOf(start1) < ch.indexOf(end1), 'start before end');

      assert.deepEqual(Object.keys(end1).sort(), [
        'req',
        'route',
        'status',
        'timings',
        'tries',
        'upstream',
      ]);
      assert.equal(end1.req, frontRequests[0]);
      assert.equal(end1.route, '/fresh');
      assert.equal(end1.upstream, up.url);
      assert.equal(end1.status, 200);
      assert.equal(end1.tries, 1);
      assertTimings(end1.timings, ['connect', 'firstByte', 'total']);

      // The proxy keeps its upstream connection alive: the second request reuses it, untimed.
      assert.equal((await get(`${front.url}/fresh/two`)).status, 200);
      const end2 = await ch.first(END, pathIs('/fresh/two'), 'request:end of the second request');
      assert.equal(up.seen.length, 2);
      assert.equal(up.seen[1].socket, up.seen[0].socket, 'the upstream connection was reused');
      assert.equal(end2.req, frontRequests[1]);
      assert.equal(end2.status, 200);
      assert.equal(end2.tries, 1);
      assertTimings(end2.timings, ['firstByte', 'total']);
      assert.equal(ch.all(START).length, 2);
      assert.equal(ch.all(END).length, 2);
    },
  );

  test(
    'a request passed to the next upstream of a pool: tries 2, upstream = the one that answered, start names the first tried',
    BOUND,
    async (t) => {
      const up = await startUpstream();
      const dead = `http://127.0.0.1:${await deadPort()}`;
      const proxy = createProxy({ routes: { '/pool': [dead, up.url] }, logger: quietLogger() });
      t.after(() => proxy.close());
      const front = await startFront('express5', proxy);
      const ch = listenChannels(t);

      assert.equal((await get(`${front.url}/pool/x`)).status, 200);
      const end = await ch.first(END, pathIs('/pool/x'));
      const [start] = ch.all(START, pathIs('/pool/x'));
      assert.equal(ch.all(START, pathIs('/pool/x')).length, 1, 'one start, however many tries');
      assert.equal(start.upstream, dead, 'request:start names the first upstream tried');
      assert.equal(end.upstream, up.url, 'request:end names the upstream that answered');
      assert.equal(end.tries, 2);
      assert.equal(end.status, 200);
      assert.equal('error' in end, false, 'no error: the retry answered');
      assertTimings(end.timings, ['connect', 'firstByte', 'total']);
    },
  );

  test(
    'a proxy-made error answer: 502 with the ProxyError EUPSTREAM, no first byte; no upstream left: ENOUPSTREAM after 2 tries',
    BOUND,
    async (t) => {
      const [a, b] = [await deadPort(), await deadPort()].map((port) => `http://127.0.0.1:${port}`);
      const proxy = createProxy({
        routes: { '/dead': a, '/both-dead': [a, b] },
        logger: quietLogger(),
      });
      t.after(() => proxy.close());
      const front = await startFront('express5', proxy);
      const ch = listenChannels(t);

      assert.equal((await get(`${front.url}/dead/x`)).status, 502);
      const end = await ch.first(END, pathIs('/dead/x'));
      assert.deepEqual(Object.keys(end).sort(), [
        'error',
        'req',
        'route',
        'status',
        'timings',
        'tries',
        'upstream',
      ]);
      assert.equal(end.status, 502);
      assert.ok(end.error instanceof ProxyError, 'a ProxyError');
      assert.equal(end.error.code, 'EUPSTREAM');
      assert.equal(end.error.status, 502);
      assert.equal(end.upstream, a);
      assert.equal(end.tries, 1);
      assertTimings(end.timings, ['total']);

      assert.equal((await get(`${front.url}/both-dead/x`)).status, 502);
      const none = await ch.first(END, pathIs('/both-dead/x'));
      assert.equal(none.error.code, 'ENOUPSTREAM');
      assert.equal(none.status, 502);
      assert.equal(none.tries, 2);
      assert.equal(none.upstream, b, 'the last upstream tried');
    },
  );

  test(
    'an upgrade refused by the upstream: request:end with its status (403), no error',
    BOUND,
    async (t) => {
      const refusing = await refusingUpstream(
        'HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\nConnection: close\r\n\r\nforbidden',
      );
      const proxy = createProxy({ routes: { '/refused': refusing.url }, logger: quietLogger() });
      t.after(() => proxy.close());
      const front = await startFront('express5', proxy);
      const ch = listenChannels(t);

      const { refused } = await openSocket(`${front.wsUrl}/refused/ws`);
      assert.equal(refused.status, 403);
      const end = await ch.first(END, pathIs('/refused/ws'));
      const [start] = ch.all(START, pathIs('/refused/ws'));
      assert.equal(start.upstream, refusing.url);
      assert.equal(end.status, 403);
      assert.equal('error' in end, false);
      assert.equal(end.route, '/refused');
      assert.equal(end.upstream, refusing.url);
      assert.equal(end.tries, 1);
      assertTimings(end.timings, ['connect', 'firstByte', 'total'], { ordered: false });
      assert.equal(ch.all(OPEN).length, 0, 'no tunnel');
    },
  );

  test(
    'an upgrade refused by the proxy is reported as a request: ws: false → 404 ENOWS, allowedOrigins → 403 EFORBIDDENORIGIN',
    BOUND,
    async (t) => {
      const up = await startUpstream();
      const proxy = createProxy({
        routes: {
          '/nows': { target: up.url, ws: false },
          '/origin': { target: up.url, allowedOrigins: ['http://good.example'] },
        },
        logger: quietLogger(),
      });
      t.after(() => proxy.close());
      const front = await startFront('express5', proxy);
      const ch = listenChannels(t);

      const nows = await openSocket(`${front.wsUrl}/nows/ws`);
      assert.equal(nows.refused.status, 404);
      const origin = await openSocket(`${front.wsUrl}/origin/ws`, {
        origin: 'http://evil.example',
      });
      assert.equal(origin.refused.status, 403);
      assert.equal(up.handshakes.length, 0, 'nothing reached the upstream');

      const end = await ch.first(
        END,
        pathIs('/nows/ws'),
        'request:end for the upgrade the proxy refused with 404 (ws: false)',
        1_000,
      );
      assert.equal(end.status, 404);
      assert.equal(end.error?.code, 'ENOWS');
      assert.equal(end.route, '/nows');
      assert.equal('upstream' in end, false, 'no upstream was tried');
      const forbidden = await ch.first(
        END,
        pathIs('/origin/ws'),
        'request:end for the upgrade refused for its Origin',
        1_000,
      );
      assert.equal(forbidden.status, 403);
      assert.equal(forbidden.error?.code, 'EFORBIDDENORIGIN');
    },
  );

  test(
    'an upgrade whose client leaves before the upstream answers: request:end with 499',
    BOUND,
    async (t) => {
      const silent = await startSilentUpstream();
      const proxy = createProxy({ routes: { '/gone': silent.url }, logger: quietLogger() });
      t.after(() => proxy.close());
      const front = await startFront('express5', proxy);
      const ch = listenChannels(t);

      const arrived = nextEvent(silent.server, 'upgrade').then(([req]) => req);
      await handshakeThenReset(front.port, '/gone/ws', arrived);
      const end = await ch.first(END, pathIs('/gone/ws'));
      assert.equal(end.status, 499);
      assert.equal(end.tries, 1);
      assert.equal(end.upstream, silent.url);
      assert.equal('firstByte' in end.timings, false, 'the upstream never answered');
    },
  );

  test(
    "a handshake's timings are ordered as a request's: connect ≤ firstByte ≤ total (30 refused handshakes)",
    BOUND,
    async (t) => {
      const refusing = await refusingUpstream(
        'HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n',
      );
      const proxy = createProxy({ routes: { '/order': refusing.url }, logger: quietLogger() });
      t.after(() => proxy.close());
      const front = await startFront('node', proxy);
      const ch = listenChannels(t, [END]);
      for (let i = 0; i < 30; i++) {
        assert.match(await rawFrom(front.port, handshake(`/order/${i}`)), /^HTTP\/1\.1 403 /);
        await ch.first(END, pathIs(`/order/${i}`));
      }
      const timings = ch.all(END).map((end) => end.timings);
      assert.equal(timings.length, 30);
      const disordered = timings.filter(
        ({ connect, firstByte, total }) => !(connect <= firstByte && firstByte <= total),
      );
      assert.deepEqual(
        disordered,
        [],
        `handshakes whose connect came out after the first byte or the end (of ${timings.length})`,
      );
    },
  );

  test(
    'a request refused before any upstream (400 EBADPATH): request:end with tries 0 and no upstream, no request:start',
    BOUND,
    async (t) => {
      const up = await startUpstream();
      const proxy = createProxy({ routes: { '/bad': up.url }, logger: quietLogger() });
      t.after(() => proxy.close());
      const front = await startFront('node', proxy);
      const ch = listenChannels(t);
      const raw = await rawFrom(
        front.port,
        'GET /bad/%2e%2e/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n',
      );
      assert.match(raw, /^HTTP\/1\.1 400 /);
      const end = await ch.first(END, pathIs('/bad/%2e%2e/x'));
      assert.equal(end.status, 400);
      assert.equal(end.error?.code, 'EBADPATH');
      assert.equal(end.tries, 0);
      assert.equal('upstream' in end, false);
      assertTimings(end.timings, ['total']);
      assert.deepEqual(ch.all(START), [], 'nothing was sent to an upstream');
      assert.equal(up.seen.length, 0);
    },
  );

  test(
    'an HTTP request whose client leaves before the response is not reported as a 200 (499, as for handshakes)',
    BOUND,
    async (t) => {
      const silent = await startSilentUpstream();
      const proxy = createProxy({ routes: { '/left': silent.url }, logger: quietLogger() });
      t.after(() => proxy.close());
      const front = await startFront('express5', proxy);
      const ch = listenChannels(t);

      const client = rawClient(front.port);
      const arrived = nextEvent(silent.server, 'request');
      client.socket.write('GET /left/x HTTP/1.1\r\nHost: h\r\n\r\n');
      await within(arrived, 2_000, 'the request reaches the upstream');
      client.socket.destroy();
      const end = await ch.first(END, pathIs('/left/x'));
      assert.equal(client.text, '', 'the client got nothing');
      assert.equal(end.tries, 1);
      assert.equal('firstByte' in end.timings, false);
      assert.notEqual(end.status, 200, 'a request nobody answered is reported with status 200');
      assert.equal(end.status, 499);
    },
  );

  test(
    'a tunnel: tunnel:open is the open event, tunnel:close the close event (code, reason, upstream, bytes), its handshake a request with 101',
    BOUND,
    async (t) => {
      const up = await startUpstream();
      const proxy = createProxy({ routes: { '/tun': up.url }, logger: quietLogger() });
      t.after(() => proxy.close());
      const front = await startFront('express5', proxy);
      const ch = listenChannels(t);

      const { openEvent, closeEvent, greeting } = await tunnelOnce(
        proxy,
        `${front.wsUrl}/tun/room`,
      );
      const open = await ch.first(OPEN);
      assert.equal(open, openEvent, 'the open event itself');
      assert.deepEqual(Object.keys(open).sort(), [
        'clientSocket',
        'req',
        'route',
        'upstream',
        'upstreamSocket',
      ]);
      assert.equal(open.route, '/tun');
      assert.equal(open.upstream, up.url);
      assert.equal(open.req.url, '/tun/room');

      const close = await ch.first(CLOSE);
      assert.equal(close, closeEvent, 'the close event itself');
      assert.deepEqual(Object.keys(close).sort(), [
        'bytesFromClient',
        'bytesFromUpstream',
        'code',
        'duration',
        'reason',
        'req',
        'route',
        'upstream',
      ]);
      assert.equal(close.req, open.req);
      assert.equal(close.route, '/tun');
      assert.equal(close.upstream, up.url);
      assert.equal(close.reason, 'client');
      assert.deepEqual(close.code, { client: 1000, upstream: 1000 });
      assert.equal(close.bytesFromClient, PING_AND_CLOSE_FROM_CLIENT);
      assert.equal(close.bytesFromUpstream, fromUpstreamOf(greeting));
      assert.ok(Number.isInteger(close.duration) && close.duration >= 0);

      const handshakeEnd = await ch.first(END, pathIs('/tun/room'));
      assert.equal(handshakeEnd.req, open.req);
      assert.equal(handshakeEnd.status, 101);
      assert.equal(handshakeEnd.tries, 1);
      assert.equal(handshakeEnd.upstream, up.url);
      assertTimings(handshakeEnd.timings, ['connect', 'firstByte', 'total'], { ordered: false });
      assert.equal(ch.all(START, pathIs('/tun/room')).length, 1);
      assert.ok(
        ch.indexOf(handshakeEnd) < ch.indexOf(close),
        'the handshake ends before the tunnel',
      );
      assert.equal(ch.all(OPEN).length, 1);
      assert.equal(ch.all(CLOSE).length, 1);
    },
  );

  test('with no subscriber nothing is published and nothing breaks', BOUND, async (t) => {
    for (const name of CHANNELS)
      assert.equal(channel(name).hasSubscribers, false, `nobody listens on ${name}`);
    // Spies in place of publish on the (inactive) channels: nothing may call them.
    const published = [];
    for (const name of CHANNELS) {
      const spied = channel(name);
      spied.publish = (message) => published.push([name, message]);
      t.after(() => delete spied.publish);
    }
    const up = await startUpstream();
    const dead = `http://127.0.0.1:${await deadPort()}`;
    const proxy = createProxy({
      routes: { '/quiet': up.url, '/quiet-dead': dead },
      logger: quietLogger(),
    });
    t.after(() => proxy.close());
    const front = await startFront('express5', proxy);

    const ok = await get(`${front.url}/quiet/x`);
    assert.equal(ok.status, 200);
    assert.equal(JSON.parse(ok.text).url, '/quiet/x');
    assert.equal((await get(`${front.url}/quiet-dead/x`)).status, 502);
    await tunnelOnce(proxy, `${front.wsUrl}/quiet/ws`);
    const { refused } = await openSocket(`${front.wsUrl}/quiet-dead/ws`);
    assert.equal(refused.status, 502);
    assert.deepEqual(published, []);
    const stats = proxy.stats();
    assert.equal(stats.requests.total, 2);
    assert.equal(stats.requests.errors, 1);
    assert.equal(stats.tunnels.total, 1);
    assert.equal(stats.tunnels.active, 0);
  });

  test(
    'hasSubscribers: a request started while subscribed gets start and end; a subscriber of request:end alone gets ends',
    BOUND,
    async (t) => {
      const held = new Map();
      const arrived = new Collector();
      const up = await startUpstream((req, res) => {
        const release = deferred();
        held.set(req.url, release);
        arrived.push(req.url);
        release.promise.then(() => res.end('done'));
      });
      const proxy = createProxy({ routes: { '/hs': up.url }, logger: quietLogger() });
      t.after(() => proxy.close());
      const front = await startFront('express5', proxy);

      // Started while nobody listens: it is not timed; an end message for it is not expected.
      const a = get(`${front.url}/hs/a`);
      await arrived.first((url) => url === '/hs/a', '/hs/a reaches the upstream');

      const starts = new Collector();
      const ends = new Collector();
      subscribe(START, starts.push);
      subscribe(END, ends.push);
      let startSubscribed = true;
      t.after(() => {
        if (startSubscribed) unsubscribe(START, starts.push);
        unsubscribe(END, ends.push);
      });
      const b = get(`${front.url}/hs/b`);
      await arrived.first((url) => url === '/hs/b', '/hs/b reaches the upstream');
      const startB = await starts.first(pathIs('/hs/b'), 'request:start of /hs/b');
      // Its start subscriber leaves while it runs: it still gets its end (the end channel has one).
      unsubscribe(START, starts.push);
      startSubscribed = false;
      held.get('/hs/b').resolve();
      held.get('/hs/a').resolve();
      assert.equal((await b).status, 200);
      assert.equal((await a).status, 200);
      const endB = await ends.first(pathIs('/hs/b'), 'request:end of /hs/b');
      assert.equal(endB.req, startB.req);
      assert.equal(endB.status, 200);
      assertTimings(endB.timings, ['connect', 'firstByte', 'total']);

      // Only request:end has a subscriber now: requests are still timed and ended, nothing started.
      const c = get(`${front.url}/hs/c`);
      await arrived.first((url) => url === '/hs/c', '/hs/c reaches the upstream');
      held.get('/hs/c').resolve();
      assert.equal((await c).status, 200);
      const endC = await ends.first(pathIs('/hs/c'), 'request:end of /hs/c');
      assert.equal(endC.status, 200);
      assert.equal(typeof endC.timings.firstByte, 'number');
      assert.equal(starts.items.filter(pathIs('/hs/c')).length, 0);
    },
  );
});

// ---------------------------------------------------------------------------------------------

describe('accessLog', () => {
  test(
    'true: one info line per request and per tunnel (on close) through the logger, with the documented fields',
    BOUND,
    async (t) => {
      const up = await startUpstream();
      const dead = `http://127.0.0.1:${await deadPort()}`;
      const { logger, lines } = collectingLogger();
      const proxy = createProxy({
        routes: { '/log': up.url, '/log-dead': dead },
        logger,
        accessLog: true,
      });
      t.after(() => proxy.close());
      const front = await startFront('express5', proxy);
      const accessLines = () =>
        lines.items.filter(([, message]) => message.startsWith(`viaduct: ${CLIENT} "`));
      const U = reEscape(up.url);

      const raw = await rawFrom(
        front.port,
        'GET /log/x?q=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n',
      );
      const [level, line] = await lines.first(
        ([, m]) => m.includes('"GET /log/x?q=1"'),
        'the line',
      );
      assert.equal(level, 'info');
      const match = new RegExp(
        `^viaduct: ${reEscape(CLIENT)} "GET /log/x\\?q=1" 200 ${raw.length} B (\\d+\\.\\d) ms route=/log upstream=${U} upstream_first_byte=(\\d+\\.\\d) ms tries=1$`,
      ).exec(line);
      assert.ok(match, `request line: ${line}`);
      assert.ok(Number(match[2]) <= Number(match[1]), 'first byte within the total');

      assert.equal((await get(`${front.url}/log-dead/y`)).status, 502);
      const [, deadLine] = await lines.first(([, m]) => m.includes('"GET /log-dead/y"'), 'the 502');
      assert.match(
        deadLine,
        new RegExp(
          `^viaduct: ${reEscape(CLIENT)} "GET /log-dead/y" 502 \\d+ B \\d+\\.\\d ms route=/log-dead upstream=${reEscape(dead)} upstream_first_byte=- tries=1$`,
        ),
      );

      const opened = nextEvent(proxy, 'open');
      const { ws, greeting } = await openSocket(`${front.wsUrl}/log/ws`, { localAddress: CLIENT });
      await opened;
      assert.equal(await roundTrip(ws, 'ping'), 'echo:ping');
      const [, handshakeLine] = await lines.first(([, m]) => m.includes('"GET /log/ws"'), '101');
      assert.match(
        handshakeLine,
        new RegExp(
          `^viaduct: ${reEscape(CLIENT)} "GET /log/ws" 101 \\d+ B \\d+\\.\\d ms route=/log upstream=${U} upstream_first_byte=\\d+\\.\\d ms tries=1$`,
        ),
      );
      assert.equal(
        accessLines().filter(([, m]) => m.includes('"WS ')).length,
        0,
        'no tunnel line while it is open',
      );
      const closed = nextEvent(proxy, 'close');
      ws.close(1000, 'bye');
      await within(closed, 2_000, 'the tunnel closes');
      const [tunnelLevel, tunnelLine] = await lines.first(
        ([, m]) => m.includes('"WS /log/ws"'),
        'ws',
      );
      assert.equal(tunnelLevel, 'info');
      assert.match(
        tunnelLine,
        new RegExp(
          `^viaduct: ${reEscape(CLIENT)} "WS /log/ws" tunnel client \\d+\\.\\d ms from_client=${PING_AND_CLOSE_FROM_CLIENT} B from_upstream=${fromUpstreamOf(greeting)} B close=client:1000,upstream:1000 route=/log upstream=${U}$`,
        ),
      );
      assert.equal(accessLines().length, 4, 'one line per request (3) and per tunnel (1)');
      assert.ok(accessLines().every(([lvl]) => lvl === 'info'));
    },
  );

  test(
    'a function gets objects with exactly the documented fields, for requests, error answers, handshakes and tunnels',
    BOUND,
    async (t) => {
      const up = await startUpstream();
      const dead = `http://127.0.0.1:${await deadPort()}`;
      const entries = new Collector();
      const { logger, lines } = collectingLogger();
      const proxy = createProxy({
        routes: { '/fn': up.url, '/fn-dead': dead },
        logger,
        accessLog: entries.push,
      });
      t.after(() => proxy.close());
      const front = await startFront('express5', proxy);
      const requestFor = (path) => (entry) => entry.type === 'request' && entry.path === path;

      const raw = await rawFrom(
        front.port,
        'GET /fn/x?q=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n',
      );
      const ok = await entries.first(requestFor('/fn/x?q=1'), 'entry of /fn/x');
      assert.deepEqual(Object.keys(ok).sort(), sorted(REQUEST_ENTRY_KEYS));
      assert.equal(ok.type, 'request');
      assert.equal(ok.client, CLIENT);
      assert.equal(ok.method, 'GET');
      assert.equal(ok.status, 200);
      assert.equal(ok.bytes, raw.length, 'bytes: what the client received, head and body');
      assert.equal(ok.route, '/fn');
      assert.equal(ok.upstream, up.url);
      assert.equal(ok.tries, 1);
      assert.equal(typeof ok.ms, 'number');
      assert.equal(typeof ok.upstreamFirstByte, 'number');
      assert.ok(ok.upstreamFirstByte > 0 && ok.upstreamFirstByte <= ok.ms);

      const rawDead = await rawFrom(
        front.port,
        'GET /fn-dead/y HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n',
      );
      const failed = await entries.first(requestFor('/fn-dead/y'), 'entry of the 502');
      assert.deepEqual(
        Object.keys(failed).sort(),
        sorted(REQUEST_ENTRY_KEYS.filter((key) => key !== 'upstreamFirstByte')),
      );
      assert.equal(failed.status, 502);
      assert.equal(failed.bytes, rawDead.length);
      assert.equal(failed.upstream, dead);
      assert.equal(failed.client, CLIENT);

      const { openEvent, closeEvent, greeting } = await tunnelOnce(proxy, `${front.wsUrl}/fn/ws`);
      assert.ok(openEvent);
      const handshakeEntry = await entries.first(requestFor('/fn/ws'), 'entry of the handshake');
      assert.deepEqual(Object.keys(handshakeEntry).sort(), sorted(REQUEST_ENTRY_KEYS));
      assert.equal(handshakeEntry.status, 101);
      assert.equal(handshakeEntry.method, 'GET');
      assert.equal(handshakeEntry.client, CLIENT);
      assert.equal(handshakeEntry.upstream, up.url);
      assert.ok(handshakeEntry.bytes > 0);
      const tunnel = await entries.first((entry) => entry.type === 'tunnel', 'entry of the tunnel');
      assert.deepEqual(Object.keys(tunnel).sort(), sorted(TUNNEL_ENTRY_KEYS));
      assert.deepEqual(tunnel, {
        type: 'tunnel',
        client: CLIENT,
        path: '/fn/ws',
        route: '/fn',
        upstream: up.url,
        duration: closeEvent.duration,
        bytesFromClient: PING_AND_CLOSE_FROM_CLIENT,
        bytesFromUpstream: fromUpstreamOf(greeting),
        reason: 'client',
        code: { client: 1000, upstream: 1000 },
      });
      assert.equal(entries.items.length, 4, 'three requests, one tunnel');
      assert.equal(
        lines.items.filter(([, m]) => m.startsWith(`viaduct: ${CLIENT}`)).length,
        0,
        'the function replaces the log lines',
      );
    },
  );

  test(
    'a handshake entry counts the bytes of its own 101, not those of earlier responses on its connection',
    BOUND,
    async (t) => {
      const up = await startUpstream();
      // An upstream that answers the handshake with a bare 101 (no frame after it), then ends.
      const switching = await refusingUpstream(SWITCHING_PROTOCOLS);
      const entries = new Collector();
      const proxy = createProxy({
        routes: { '/b': up.url, '/b-ws': switching.url },
        logger: quietLogger(),
        accessLog: entries.push,
      });
      t.after(() => proxy.close());
      const front = await startFront('express5', proxy);
      const requestFor = (path) => (entry) => entry.type === 'request' && entry.path === path;

      // One keep-alive connection: a GET, then a WebSocket handshake on it.
      const client = rawClient(front.port);
      client.socket.write('GET /b/x HTTP/1.1\r\nHost: h\r\n\r\n');
      const first = await client.until((text) => completeResponse(text), 'the GET response');
      const getEntry = await entries.first(requestFor('/b/x'), 'entry of the GET');
      assert.equal(getEntry.bytes, first);
      client.socket.write(handshake('/b-ws/ws'));
      const headEnd = await client.until((text) => {
        const end = text.indexOf('\r\n\r\n', first);
        return end < 0 ? 0 : end + 4;
      }, 'the 101');
      const head101 = client.text.slice(first, headEnd);
      assert.match(head101, /^HTTP\/1\.1 101 /);
      const upgradeEntry = await entries.first(requestFor('/b-ws/ws'), 'entry of the handshake');
      assert.equal(upgradeEntry.status, 101);
      await within(client.closed, 2_000, 'the tunnel ends with the upstream');
      assert.equal(client.text.length, headEnd, 'nothing but the 101 after the GET response');
      assert.equal(
        upgradeEntry.bytes,
        head101.length,
        `the 101's bytes (${head101.length}), not also the earlier response's (${first})`,
      );
    },
  );

  test(
    'an upstream refusal of an upgrade: its entry counts the bytes of the refusal the client got',
    BOUND,
    async (t) => {
      const refusing = await refusingUpstream(
        'HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\nConnection: close\r\n\r\nforbidden',
      );
      const entries = new Collector();
      const proxy = createProxy({
        routes: { '/b-refused': refusing.url },
        logger: quietLogger(),
        accessLog: entries.push,
      });
      t.after(() => proxy.close());
      const front = await startFront('express5', proxy);
      const refusal = await rawFrom(front.port, handshake('/b-refused/ws'));
      assert.match(refusal, /^HTTP\/1\.1 403 [\s\S]*\r\n\r\nforbidden$/);
      const refusedEntry = await entries.first(
        (entry) => entry.path === '/b-refused/ws',
        'entry of the refusal',
      );
      assert.equal(refusedEntry.status, 403);
      assert.equal(refusedEntry.client, CLIENT);
      assert.equal(refusedEntry.bytes, refusal.length, 'the bytes of the refusal the client got');
    },
  );

  test(
    'through pino: `accessLog: true` lines and the function form with logger.info(entry, msg) parse as JSON with the fields',
    BOUND,
    async (t) => {
      const up = await startUpstream();
      const out = new Collector();
      const destination = new Writable({
        write(chunk, _encoding, callback) {
          for (const line of chunk.toString('utf8').split('\n'))
            if (line) out.push(JSON.parse(line));
          callback();
        },
      });
      const log = pino(destination);
      const plain = createProxy({
        routes: { '/pino-lines': up.url },
        logger: log,
        accessLog: true,
      });
      const structured = createProxy({
        routes: { '/pino': up.url },
        logger: log,
        accessLog: (entry) => log.info(entry, `viaduct ${entry.type}`),
      });
      t.after(() => Promise.all([plain.close(), structured.close()]));
      const [plainFront, structuredFront] = [
        await startFront('express5', plain),
        await startFront('express5', structured),
      ];

      assert.equal((await get(`${plainFront.url}/pino-lines/x`)).status, 200);
      const line = await out.first((o) => o.msg?.includes('"GET /pino-lines/x"'), 'pino line');
      assert.equal(line.level, 30, 'info');
      assert.match(line.msg, /^viaduct: 127\.0\.0\.2 "GET \/pino-lines\/x" 200 \d+ B .* tries=1$/);

      assert.equal((await get(`${structuredFront.url}/pino/x?y=1`)).status, 200);
      const entry = await out.first((o) => o.path === '/pino/x?y=1', 'structured request line');
      assert.equal(entry.level, 30);
      assert.equal(entry.msg, 'viaduct request');
      for (const key of REQUEST_ENTRY_KEYS) assert.ok(key in entry, `${key} in the JSON line`);
      assert.equal(entry.type, 'request');
      assert.equal(entry.client, CLIENT);
      assert.equal(entry.method, 'GET');
      assert.equal(entry.status, 200);
      assert.equal(entry.route, '/pino');
      assert.equal(entry.upstream, up.url);
      assert.equal(entry.tries, 1);
      for (const key of ['bytes', 'ms', 'upstreamFirstByte'])
        assert.equal(typeof entry[key], 'number', key);

      const { greeting } = await tunnelOnce(structured, `${structuredFront.wsUrl}/pino/ws`);
      const tunnel = await out.first((o) => o.type === 'tunnel', 'structured tunnel line');
      assert.equal(tunnel.msg, 'viaduct tunnel');
      for (const key of TUNNEL_ENTRY_KEYS) assert.ok(key in tunnel, `${key} in the JSON line`);
      assert.equal(tunnel.path, '/pino/ws');
      assert.equal(tunnel.reason, 'client');
      assert.deepEqual(tunnel.code, { client: 1000, upstream: 1000 });
      assert.equal(tunnel.bytesFromClient, PING_AND_CLOSE_FROM_CLIENT);
      assert.equal(tunnel.bytesFromUpstream, fromUpstreamOf(greeting));
    },
  );

  test(
    'an accessLog function that throws is logged at error and breaks neither requests nor tunnels',
    BOUND,
    async (t) => {
      const up = await startUpstream();
      const { logger, lines } = collectingLogger();
      const proxy = createProxy({
        routes: { '/throws': up.url },
        logger,
        accessLog: () => {
          throw new Error('access log boom');
        },
      });
      t.after(() => proxy.close());
      const front = await startFront('express5', proxy);

      const res = await get(`${front.url}/throws/x`);
      assert.equal(res.status, 200);
      assert.equal(JSON.parse(res.text).url, '/throws/x');
      const [, message] = await lines.first(
        ([level, m]) => level === 'error' && m.includes('access log boom'),
        'the error line',
      );
      assert.match(message, /accessLog function threw/);
      await tunnelOnce(proxy, `${front.wsUrl}/throws/ws`);
      await lines.until(
        (items) =>
          items.filter(([level, m]) => level === 'error' && /access log boom/.test(m)).length === 3,
        'a line for the request, the handshake and the tunnel',
      );
      assert.equal((await get(`${front.url}/throws/again`)).status, 200, 'still serving');
      const stats = proxy.stats();
      assert.equal(stats.requests.errors, 0);
      assert.equal(stats.tunnels.total, 1);
    },
  );

  test('invalid accessLog values throw a TypeError; false logs nothing', BOUND, async (t) => {
    const up = await startUpstream();
    for (const value of ['yes', 1, 0, null, {}, [], Symbol('log')]) {
      assert.throws(
        () => createProxy({ target: up.url, accessLog: value }),
        TypeError,
        `accessLog: ${String(value)}`,
      );
    }
    const { logger, lines } = collectingLogger();
    const proxy = createProxy({ target: up.url, logger, accessLog: false });
    t.after(() => proxy.close());
    const front = await startFront('node', proxy);
    const ch = listenChannels(t, [END]);
    assert.equal((await get(`${front.url}/off`)).status, 200);
    await ch.first(END, pathIs('/off'));
    assert.deepEqual(
      lines.items.filter(([level]) => level === 'info'),
      [],
    );
  });
});

// ---------------------------------------------------------------------------------------------

/** The values of metric `name` (and of its `_count` etc. when `metricName` is given). */
async function valuesOf(registry, name, metricName = name) {
  const metric = (await registry.getMetricsAsJSON()).find((m) => m.name === name);
  assert.ok(metric, `${name} is registered`);
  return metric.values.filter((v) => (v.metricName ?? name) === metricName);
}

/** The value with exactly `labels`, or undefined. */
function valueWith(values, labels) {
  const found = values.find(
    (v) =>
      Object.keys(v.labels).length === Object.keys(labels).length &&
      Object.entries(labels).every(([key, value]) => v.labels[key] === value),
  );
  return found?.value;
}

describe('viaduct/prometheus', () => {
  test(
    'import and require() give the same collectMetrics; a value createProxy did not return is refused',
    BOUND,
    async () => {
      const required = createRequire(import.meta.url)('viaduct/prometheus');
      assert.equal(required.collectMetrics, collectMetrics);
      assert.equal(typeof collectMetrics, 'function');
      const registry = new Registry();
      assert.throws(() => collectMetrics(() => {}, { registry }), TypeError);
      // The refused value must not be left behind on the registry: scraping still works.
      await assert.doesNotReject(registry.metrics(), 'scraping the registry after the refusal');
      assert.deepEqual(
        (await registry.getMetricsAsJSON()).flatMap((m) => m.values),
        [],
        'nothing counted for it',
      );
    },
  );

  test(
    'known traffic on a real registry: requests by route/upstream/status, durations by route, tunnels; no path or client in a label',
    BOUND,
    async (t) => {
      const up = await startUpstream((req) => {
        if (req.url !== '/m/reset') return false;
        req.socket.destroy();
      });
      const registry = new Registry();
      const proxy = createProxy({ routes: { '/m': up.url, '/ws': up.url }, logger: quietLogger() });
      t.after(() => proxy.close());
      const stop = collectMetrics(proxy, { registry });
      t.after(stop);
      const front = await startFront('express5', proxy);
      const ch = listenChannels(t, [END]);

      for (const path of ['/m/ok?a=1', '/m/ok?a=2', '/m/other']) {
        assert.equal((await get(`${front.url}${path}`)).status, 200);
        await ch.first(END, pathIs(path));
      }
      assert.equal((await get(`${front.url}/m/reset`)).status, 502);
      await ch.first(END, pathIs('/m/reset'));

      const requests = await valuesOf(registry, 'viaduct_requests_total');
      assert.equal(valueWith(requests, { route: '/m', upstream: up.url, status: '200' }), 3);
      assert.equal(valueWith(requests, { route: '/m', upstream: up.url, status: '502' }), 1);
      assert.equal(requests.length, 2);
      const counts = await valuesOf(
        registry,
        'viaduct_request_duration_seconds',
        'viaduct_request_duration_seconds_count',
      );
      assert.deepEqual(
        counts.map((v) => [v.labels, v.value]),
        [[{ route: '/m' }, 4]],
      );
      const [sum] = await valuesOf(
        registry,
        'viaduct_request_duration_seconds',
        'viaduct_request_duration_seconds_sum',
      );
      assert.ok(sum.value > 0 && sum.value < 4, `the durations are in seconds (sum ${sum.value})`);
      const buckets = await valuesOf(
        registry,
        'viaduct_request_duration_seconds',
        'viaduct_request_duration_seconds_bucket',
      );
      assert.equal(valueWith(buckets, { route: '/m', le: '+Inf' }), 4);

      // A tunnel, opened and closed by the client.
      const opened = nextEvent(proxy, 'open');
      const { ws } = await openSocket(`${front.wsUrl}/ws/room`, { localAddress: CLIENT });
      await opened;
      const active = await valuesOf(registry, 'viaduct_tunnels_active');
      assert.equal(valueWith(active, { route: '/ws' }), 1, 'one tunnel open');
      assert.equal(
        valueWith(await valuesOf(registry, 'viaduct_tunnels_total'), {
          route: '/ws',
          reason: 'client',
        }),
        undefined,
      );
      const closed = nextEvent(proxy, 'close');
      ws.close();
      await within(closed, 2_000, 'the tunnel closes');
      assert.equal(
        valueWith(await valuesOf(registry, 'viaduct_tunnels_active'), { route: '/ws' }),
        0,
      );
      const tunnels = await valuesOf(registry, 'viaduct_tunnels_total');
      assert.deepEqual(
        tunnels.map((v) => [v.labels, v.value]),
        [[{ route: '/ws', reason: 'client' }, 1]],
      );
      assert.equal(
        valueWith(await valuesOf(registry, 'viaduct_requests_total'), {
          route: '/ws',
          upstream: up.url,
          status: '101',
        }),
        1,
        'the handshake is a request',
      );
      const up1 = await valuesOf(registry, 'viaduct_upstream_up');
      assert.equal(valueWith(up1, { route: '/m', upstream: up.url }), 1);
      assert.equal(valueWith(up1, { route: '/ws', upstream: up.url }), 1);

      // Bounded labels: only these names, never a path, a query or the client's address.
      const allowed = {
        viaduct_requests_total: ['route', 'upstream', 'status'],
        viaduct_request_duration_seconds: ['route', 'le'],
        viaduct_tunnels_total: ['route', 'reason'],
        viaduct_tunnels_active: ['route'],
        viaduct_upstream_up: ['route', 'upstream'],
      };
      const metrics = await registry.getMetricsAsJSON();
      assert.deepEqual(metrics.map((m) => m.name).sort(), Object.keys(allowed).sort());
      for (const metric of metrics) {
        for (const { labels } of metric.values) {
          for (const [key, value] of Object.entries(labels)) {
            assert.ok(allowed[metric.name].includes(key), `${metric.name} has no label ${key}`);
            const text = String(value);
            assert.ok(!text.includes(CLIENT), `${metric.name}{${key}="${text}"} holds the client`);
            assert.ok(
              !/\/(ok|other|reset|room)|\?/.test(text),
              `${metric.name}{${key}} holds a path`,
            );
          }
        }
      }
      const text = await registry.metrics();
      assert.match(text, /^# TYPE viaduct_requests_total counter$/m);
      assert.match(text, /^# TYPE viaduct_request_duration_seconds histogram$/m);
      assert.ok(
        text.includes(`viaduct_requests_total{route="/m",upstream="${up.url}",status="200"} 3`),
      );
    },
  );

  test(
    'viaduct_upstream_up: 1, then 0 once passive health (maxFails 1) or the health check marks an upstream down, 1 when it is back',
    BOUND,
    async (t) => {
      let healthy = false;
      const checked = await startUpstream((req, res) => {
        if (req.url !== '/health') return false;
        res.writeHead(healthy ? 200 : 503).end();
      });
      const up = await startUpstream();
      const dead = `http://127.0.0.1:${await deadPort()}`;
      const registry = new Registry();
      const proxy = createProxy({
        routes: {
          '/pool': { target: [dead, up.url], maxFails: 1 },
          '/hc': {
            target: [checked.url, up.url],
            healthCheck: { path: '/health', interval: 50, timeout: 1_000 },
          },
        },
        logger: quietLogger(),
      });
      t.after(() => proxy.close());
      const events = new Collector();
      proxy.on('upstreamDown', (event) => events.push({ kind: 'down', ...event }));
      proxy.on('upstreamUp', (event) => events.push({ kind: 'up', ...event }));
      const stop = collectMetrics(proxy, { registry });
      t.after(stop);
      const front = await startFront('express5', proxy);
      const gauge = async (route, upstream) =>
        valueWith(await valuesOf(registry, 'viaduct_upstream_up'), { route, upstream });

      assert.equal(await gauge('/pool', dead), 1, 'not known to be down yet');
      assert.equal(await gauge('/pool', up.url), 1);
      assert.equal((await get(`${front.url}/pool/x`)).status, 200);
      await events.first(
        (e) => e.kind === 'down' && e.route === '/pool' && e.upstream === dead,
        'the dead upstream is marked down',
      );
      assert.equal(await gauge('/pool', dead), 0);
      assert.equal(await gauge('/pool', up.url), 1);

      await events.first(
        (e) => e.kind === 'down' && e.route === '/hc' && e.upstream === checked.url,
        'the health check marks the 503 upstream down',
      );
      assert.equal(await gauge('/hc', checked.url), 0);
      assert.equal(await gauge('/hc', up.url), 1);
      healthy = true;
      await events.first(
        (e) => e.kind === 'up' && e.route === '/hc' && e.upstream === checked.url,
        'the health check marks it up again',
      );
      assert.equal(await gauge('/hc', checked.url), 1);
    },
  );

  test(
    'two proxies on one registry are both counted; stop() stops counting one; the same proxy twice throws; the default registry',
    BOUND,
    async (t) => {
      const up = await startUpstream();
      const registry = new Registry();
      const one = createProxy({ routes: { '/one': up.url }, logger: quietLogger() });
      const two = createProxy({ routes: { '/two': up.url }, logger: quietLogger() });
      t.after(() => Promise.all([one.close(), two.close()]));
      const [frontOne, frontTwo] = [await startFront('node', one), await startFront('node', two)];
      const ch = listenChannels(t, [END]);
      const hit = async (front, path) => {
        assert.equal((await get(`${front.url}${path}`)).status, 200);
        await ch.first(END, pathIs(path));
      };
      const count = async (route) =>
        valueWith(await valuesOf(registry, 'viaduct_requests_total'), {
          route,
          upstream: up.url,
          status: '200',
        });

      const stopOne = collectMetrics(one, { registry });
      const stopTwo = collectMetrics(two, { registry });
      assert.throws(() => collectMetrics(one, { registry }), TypeError, 'collected twice');
      await hit(frontOne, '/one/a');
      await hit(frontOne, '/one/b');
      await hit(frontTwo, '/two/a');
      assert.equal(await count('/one'), 2);
      assert.equal(await count('/two'), 1);
      const active = await valuesOf(registry, 'viaduct_tunnels_active');
      assert.deepEqual(active.map((v) => v.labels.route).sort(), ['/one', '/two']);

      stopOne();
      await hit(frontOne, '/one/c');
      await hit(frontTwo, '/two/b');
      assert.equal(await count('/one'), 2, 'not counted after stop()');
      assert.equal(await count('/two'), 2);
      assert.deepEqual(
        (await valuesOf(registry, 'viaduct_tunnels_active')).map((v) => v.labels.route),
        ['/two'],
      );
      // Stopped, it may be collected again.
      const againOne = collectMetrics(one, { registry });
      await hit(frontOne, '/one/d');
      assert.equal(await count('/one'), 3);
      againOne();
      stopTwo();
      assert.equal(registry.getSingleMetric('viaduct_requests_total'), undefined, 'nothing left');

      // Without a registry: prom-client's global one.
      assert.equal(defaultRegistry.getSingleMetric('viaduct_requests_total'), undefined);
      const stopDefault = collectMetrics(two);
      t.after(stopDefault);
      await hit(frontTwo, '/two/c');
      assert.equal(
        valueWith(await valuesOf(defaultRegistry, 'viaduct_requests_total'), {
          route: '/two',
          upstream: up.url,
          status: '200',
        }),
        1,
      );
      stopDefault();
      assert.equal(defaultRegistry.getSingleMetric('viaduct_requests_total'), undefined);
    },
  );
});

// ---------------------------------------------------------------------------------------------

describe('the OpenTelemetry recipe (example-app/tracing.mjs)', () => {
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  const tracer = provider.getTracer('test');
  before(() => propagation.setGlobalPropagator(new W3CTraceContextPropagator()));
  after(async () => {
    propagation.disable();
    await provider.shutdown();
  });

  /** A proxy traced by the recipe on a node:http front; spans are read once request:end was seen. */
  async function traced(t, routes) {
    exporter.reset();
    const proxy = createProxy({ routes, logger: quietLogger() });
    t.after(() => proxy.close());
    const stop = traceProxy(proxy, tracer);
    t.after(stop);
    // Subscribed after the recipe: by our message, its handler has ended the span.
    const ch = listenChannels(t, [END]);
    const front = await startFront('node', proxy);
    return { proxy, stop, ch, front };
  }

  const traceparentOf = (header) => {
    const match = /^00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]$/.exec(header ?? '');
    assert.ok(match, `a traceparent: ${header}`);
    return { traceId: match[1], parentId: match[2] };
  };

  test(
    'one CLIENT span per request, a child of the incoming traceparent, with the HTTP attributes; the upstream gets the span as parent',
    BOUND,
    async (t) => {
      const up = await startUpstream();
      const { ch, front } = await traced(t, { '/t': up.url });
      const traceId = randomBytes(16).toString('hex');
      const parentId = randomBytes(8).toString('hex');

      const res = await get(`${front.url}/t/x?q=1`, {
        headers: { traceparent: `00-${traceId}-${parentId}-01` },
      });
      assert.equal(res.status, 200);
      await ch.first(END, pathIs('/t/x?q=1'));
      const spans = exporter.getFinishedSpans();
      assert.equal(spans.length, 1, 'one span');
      const [span] = spans;
      assert.equal(span.kind, SpanKind.CLIENT);
      assert.equal(span.name, 'GET');
      assert.equal(span.spanContext().traceId, traceId, 'same trace');
      assert.equal(span.parentSpanContext?.spanId, parentId, 'parent: the span the client sent');
      assert.deepEqual(
        { ...span.attributes, 'viaduct.first_byte_ms': undefined },
        {
          'http.request.method': 'GET',
          'server.address': '127.0.0.1',
          'server.port': up.port,
          'url.full': `${up.url}/t/x?q=1`,
          'http.response.status_code': 200,
          'viaduct.route': '/t',
          'viaduct.tries': 1,
          'viaduct.first_byte_ms': undefined,
        },
      );
      assert.equal(typeof span.attributes['viaduct.first_byte_ms'], 'number');
      assert.equal(span.status.code, SpanStatusCode.UNSET);
      const sent = traceparentOf(up.seen[0].headers.traceparent);
      assert.equal(sent.traceId, traceId);
      assert.equal(sent.parentId, span.spanContext().spanId, 'the upstream sees the client span');

      // Without a traceparent: a root span, still propagated upstream.
      exporter.reset();
      assert.equal((await get(`${front.url}/t/root`)).status, 200);
      await ch.first(END, pathIs('/t/root'));
      const [root] = exporter.getFinishedSpans();
      assert.equal(root.parentSpanContext, undefined, 'a root span');
      const rootSent = traceparentOf(up.seen[1].headers.traceparent);
      assert.equal(rootSent.traceId, root.spanContext().traceId);
      assert.equal(rootSent.parentId, root.spanContext().spanId);
    },
  );

  test(
    'an error answer: the span has status ERROR, error.type and status code 502',
    BOUND,
    async (t) => {
      const dead = `http://127.0.0.1:${await deadPort()}`;
      const { ch, front } = await traced(t, { '/te': dead });
      assert.equal((await get(`${front.url}/te/x`)).status, 502);
      await ch.first(END, pathIs('/te/x'));
      const [span] = exporter.getFinishedSpans();
      assert.equal(span.status.code, SpanStatusCode.ERROR);
      assert.ok(span.status.message, 'with a message');
      assert.equal(span.attributes['error.type'], 'EUPSTREAM');
      assert.equal(span.attributes['http.response.status_code'], 502);
      assert.equal(span.attributes['viaduct.tries'], 1);
    },
  );

  test(
    'an upgrade handshake: a span with status code 101, its traceparent sent on the handshake',
    BOUND,
    async (t) => {
      const up = await startUpstream();
      const { proxy, ch, front } = await traced(t, { '/tw': up.url });
      const traceId = randomBytes(16).toString('hex');
      const parentId = randomBytes(8).toString('hex');
      const opened = nextEvent(proxy, 'open');
      const { ws } = await openSocket(`${front.wsUrl}/tw/room`, {
        headers: { traceparent: `00-${traceId}-${parentId}-01` },
      });
      await opened;
      await ch.first(END, pathIs('/tw/room'));
      const [span] = exporter.getFinishedSpans();
      assert.equal(span.kind, SpanKind.CLIENT);
      assert.equal(span.attributes['http.response.status_code'], 101);
      assert.equal(span.attributes['url.full'], `${up.url}/tw/room`);
      assert.equal(span.spanContext().traceId, traceId);
      assert.equal(span.parentSpanContext?.spanId, parentId);
      assert.equal(span.status.code, SpanStatusCode.UNSET);
      const sent = traceparentOf(up.handshakes[0].headers.traceparent);
      assert.equal(sent.parentId, span.spanContext().spanId);
      const closed = nextEvent(proxy, 'close');
      ws.close();
      await within(closed, 2_000, 'the tunnel closes');
    },
  );

  test(
    'a retried request: the span says tries 2 and names the upstream that answered',
    BOUND,
    async (t) => {
      const up = await startUpstream();
      const dead = `http://127.0.0.1:${await deadPort()}`;
      const { ch, front } = await traced(t, { '/tr': [dead, up.url] });
      assert.equal((await get(`${front.url}/tr/x`)).status, 200);
      const end = await ch.first(END, pathIs('/tr/x'));
      assert.equal(end.tries, 2);
      const [span] = exporter.getFinishedSpans();
      assert.equal(span.attributes['viaduct.tries'], 2);
      assert.equal(span.attributes['http.response.status_code'], 200);
      const sent = traceparentOf(up.seen[0].headers.traceparent);
      assert.equal(sent.parentId, span.spanContext().spanId, 'the retry carries the span too');
      assert.equal(
        span.attributes['server.port'],
        up.port,
        `server.port is the upstream that answered (${up.port}), not the dead first try (${new URL(dead).port})`,
      );
      assert.equal(span.attributes['url.full'], `${up.url}/tr/x`);
    },
  );

  test('url.full is the URL sent upstream (stripPrefix)', BOUND, async (t) => {
    const up = await startUpstream();
    const { ch, front } = await traced(t, {
      '/ts': { target: `${up.url}/base`, stripPrefix: true },
    });
    assert.equal((await get(`${front.url}/ts/x?y=1`)).status, 200);
    await ch.first(END, pathIs('/ts/x?y=1'));
    assert.equal(up.seen[0].url, '/base/x?y=1');
    const [span] = exporter.getFinishedSpans();
    assert.equal(span.attributes['url.full'], `${up.url}/base/x?y=1`);
  });

  test('stop(): no spans after it, no traceparent sent, no listener left', BOUND, async (t) => {
    const up = await startUpstream();
    const { proxy, stop, ch, front } = await traced(t, { '/tstop': up.url });
    assert.equal(proxy.listenerCount('proxyReq'), 1);
    stop();
    assert.equal(proxy.listenerCount('proxyReq'), 0);
    assert.equal((await get(`${front.url}/tstop/x`)).status, 200);
    await ch.first(END, pathIs('/tstop/x'));
    assert.deepEqual(exporter.getFinishedSpans(), []);
    assert.equal(up.seen[0].headers.traceparent, undefined);
  });
});

// ---------------------------------------------------------------------------------------------

describe('the example app: live chart and /metrics', () => {
  const chromium = '/usr/bin/chromium';
  const present = existsSync(chromium);
  const skip =
    present || process.env.CI
      ? false
      : 'Chromium is not installed: run `apt-get install -y chromium` (CI installs it; with CI set its absence fails)';

  test('the chart canvas changes with /api traffic and is not blank; a screenshot; /metrics serves Prometheus text', {
    skip,
    timeout: 20_000,
  }, async (t) => {
    assert.ok(present, `CI is set but ${chromium} is missing: .ci/run installs it with apt-get`);
    const { chromium: launcher } = await import('playwright-core');
    const example = await startExample({ port: 0 });
    t.after(() => example.close());
    const browser = await launcher.launch({
      executablePath: chromium,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    t.after(() => browser.close());
    const page = await browser.newPage();
    await page.goto(example.url);

    // What the canvas shows: a checksum, painted pixels, and the highest pixel of the api
    // proxy's colour (#2563eb) in the requests/s panel (the top third), below its title.
    const readChart = () => {
      const canvas = document.getElementById('chart');
      const { width, height } = canvas;
      const data = canvas.getContext('2d').getImageData(0, 0, width, height).data;
      let sum = 0;
      let painted = 0;
      let apiTop = height;
      for (let y = 0; y < height; y++) {
        for (let x = 0; x < width; x++) {
          const i = (y * width + x) * 4;
          sum = (sum + data[i] * 3 + data[i + 1] * 5 + data[i + 2] * 7 + data[i + 3]) % 1e9;
          if (data[i + 3] > 0) painted++;
          const apiBlue =
            data[i + 3] > 150 && data[i + 2] > 170 && data[i] < 110 && data[i + 1] < 150;
          if (apiBlue && y > 17 && y < height / 3 && x > 40 && y < apiTop) apiTop = y;
        }
      }
      return {
        sum,
        painted,
        apiTop,
        samples: Number(canvas.dataset.samples ?? -1),
        url: canvas.toDataURL(),
      };
    };

    await page.waitForFunction(
      () => Number(document.getElementById('chart').dataset.samples) >= 1,
      undefined,
      { timeout: 5_000 },
    );
    const idle = await page.evaluate(readChart);
    assert.ok(idle.painted > 500, `drawn before traffic (frames, titles): ${idle.painted} pixels`);
    assert.ok(idle.apiTop > 90, `no api requests yet: its line is at the bottom (${idle.apiTop})`);

    // Traffic to /api/time until the page has drawn two more samples and the api line rose.
    let sending = true;
    let sent = 0;
    const workers = Array.from({ length: 4 }, async () => {
      while (sending) {
        const res = await request(new URL('api/time', example.url), {
          headers: { accept: 'application/json' },
        });
        assert.equal(res.status, 200);
        sent++;
      }
    });
    try {
      await page.waitForFunction(
        (n) => Number(document.getElementById('chart').dataset.samples) >= n,
        idle.samples + 2,
        { timeout: 6_000 },
      );
      await page.waitForFunction(`(${readChart})().apiTop < 60`, undefined, {
        timeout: 4_000,
        polling: 100,
      });
    } finally {
      sending = false;
      await Promise.all(workers);
    }
    const busy = await page.evaluate(readChart);
    assert.ok(busy.samples >= idle.samples + 2, `samples grew: ${idle.samples} → ${busy.samples}`);
    assert.notEqual(busy.url, idle.url, 'the chart changed');
    assert.notEqual(busy.sum, idle.sum);
    assert.ok(busy.painted > idle.painted, 'more is drawn');
    assert.ok(busy.apiTop < 60, `the requests/s line rose (${busy.apiTop})`);
    const live = await (await fetch(new URL('live', example.url))).json();
    assert.ok(
      live.some((sample) => sample.proxies.api.requests > 0),
      '/live has the requests',
    );

    const dir = mkdtempSync(join(tmpdir(), 'viaduct-chart-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'chart.png');
    await page.locator('#chart').screenshot({ path: file });
    assert.ok(statSync(file).size > 2_000, `a real image (${statSync(file).size} B)`);
    assert.deepEqual([...readFileSync(file).subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47], 'a PNG');

    const metrics = await request(new URL('metrics', example.url));
    assert.equal(metrics.status, 200);
    assert.match(metrics.headers['content-type'], /^text\/plain/);
    assert.match(metrics.text, /^# TYPE viaduct_requests_total counter$/m);
    const counted = new RegExp(
      `^viaduct_requests_total\\{route="default",upstream="${reEscape(example.upstreams.api)}",status="200"\\} (\\d+)$`,
      'm',
    ).exec(metrics.text);
    assert.ok(counted, `the api requests in:\n${metrics.text}`);
    assert.ok(
      Number(counted[1]) <= sent && Number(counted[1]) >= sent - 4,
      `${counted[1]} of ${sent} requests counted`,
    );
    for (const name of [
      'viaduct_request_duration_seconds_count',
      'viaduct_tunnels_active',
      'viaduct_upstream_up',
    ])
      assert.match(metrics.text, new RegExp(`^${name}\\{`, 'm'));
  });
});
