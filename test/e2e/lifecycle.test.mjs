// close(), stats(), events and the logger: the proxy's life around the requests and tunnels it carries.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { once } from 'node:events';
import express from 'express';
import { createProxy, ProxyError } from 'viaduct';
import {
  closeAll,
  deadPort,
  listen,
  quietLogger,
  startFront,
  startUpstream,
} from '../helpers/servers.mjs';
import {
  handshake,
  openSocket,
  rawExchange,
  request,
  roundTrip,
  statusOf,
} from '../helpers/clients.mjs';
import { deferred, nextEvent, within } from '../helpers/waiting.mjs';

after(closeAll);

/** An upstream that refuses every request and upgrade with 401 (it has no `upgrade` listener). */
async function unauthorizedUpstream() {
  const server = http.createServer((_req, res) => {
    res.writeHead(401, { 'content-type': 'text/plain', 'content-length': 4 });
    res.end('nope');
  });
  const port = await listen(server);
  return { port, url: `http://127.0.0.1:${port}` };
}

/**
 * Records, for each request the front server receives, a promise of its response's `close`: the
 * proxy updates its counters in its own `close` listener, which has run once this promise settles.
 */
function trackResponses(server) {
  const closed = [];
  server.on('request', (_req, res) =>
    closed.push(new Promise((resolve) => res.once('close', resolve))),
  );
  return closed;
}

/** A GET that reports what arrived even when the connection is cut mid-body. */
function streamingGet(url) {
  const firstChunk = deferred();
  const done = deferred();
  const req = http.get(url, { agent: false }, (res) => {
    let received = 0;
    res.on('data', (chunk) => {
      received += chunk.length;
      firstChunk.resolve(res.statusCode);
    });
    res.on('error', () => {});
    res.on('close', () =>
      done.resolve({ status: res.statusCode, received, complete: res.complete }),
    );
  });
  req.on('error', (error) => done.resolve({ error }));
  return { firstChunk: firstChunk.promise, done: done.promise };
}

function connectionsOf(server) {
  return new Promise((resolve, reject) =>
    server.getConnections((error, count) => (error ? reject(error) : resolve(count))),
  );
}

const ZERO = {
  requests: { total: 0, active: 0, errors: 0 },
  tunnels: { total: 0, active: 0, rejected: 0 },
};

describe('close()', () => {
  test('503 to new requests and upgrades, the in-flight request completes, tunnels end, then it resolves', {
    timeout: 10_000,
  }, async () => {
    const arrived = deferred();
    const release = deferred();
    const slowBody = 'slow-'.repeat(20_000);
    const up = await startUpstream(async (req, res) => {
      if (req.url !== '/slow') return false;
      arrived.resolve();
      await release.promise;
      res.writeHead(200, {
        'content-type': 'text/plain',
        'content-length': Buffer.byteLength(slowBody),
      });
      res.end(slowBody);
    });
    const proxy = createProxy({
      routes: { '/api': { target: up.url, stripPrefix: true } },
      logger: quietLogger(),
    });
    const front = await startFront('node', proxy);
    const order = [];
    front.server.on('request', (req, res) => {
      if (req.url === '/api/slow')
        res.once('finish', () => order.push('in-flight request finished'));
    });

    const tunnel = await openSocket(`${front.wsUrl}/api/chat`);
    assert.equal(tunnel.greeting, 'hello:/chat');
    const clientSawClose = once(tunnel.ws, 'close');
    const tunnelClosed = nextEvent(proxy, 'close');
    const inFlight = request(`${front.url}/api/slow`);
    await arrived.promise;
    assert.equal(proxy.stats().requests.active, 1);
    assert.equal(proxy.stats().tunnels.active, 1);

    let resolved = false;
    const closing = proxy.close({ timeout: 5_000 });
    closing.then(() => {
      resolved = true;
      order.push('close() resolved');
    });

    // The open tunnel is ended, both to the client and on the `close` event.
    const [event] = await tunnelClosed;
    assert.equal(event.reason, 'shutdown');
    assert.equal(event.route, '/api');
    await clientSawClose;

    // Newcomers: 503 on a route, on the HTTP path and on the raw socket of an upgrade.
    const refused = await request(`${front.url}/api/other`);
    assert.equal(refused.status, 503);
    assert.match(refused.text, /^503 Service Unavailable/);
    assert.ok(refused.body.length < 200, `a short body, got ${refused.body.length} bytes`);
    const refusedUpgrade = await rawExchange(front.port, handshake('/api/chat'));
    assert.equal(statusOf(refusedUpgrade), 503);
    assert.equal(up.handshakes.length, 1, 'the refused upgrade never reached the upstream');
    assert.deepEqual(
      up.seen.map((r) => r.url),
      ['/slow'],
      'the refused request never reached the upstream',
    );

    // Still waiting for the in-flight request.
    assert.equal(resolved, false);
    assert.deepEqual(order, []);
    release.resolve();
    const slow = await inFlight;
    assert.equal(slow.status, 200);
    assert.equal(slow.text, slowBody);
    await closing;
    assert.deepEqual(order, ['in-flight request finished', 'close() resolved']);
    const stats = proxy.stats();
    assert.equal(stats.requests.active, 0);
    assert.equal(stats.tunnels.active, 0);
    assert.equal(stats.routes['/api'].requests.active, 0);
    assert.equal(stats.routes['/api'].tunnels.active, 0);
  });

  test('close({ timeout: 200 }): a request the upstream never answers gets 503 at the deadline, and close resolves', {
    timeout: 5_000,
  }, async () => {
    const arrived = deferred();
    const up = await startUpstream(() => arrived.resolve()); // never answers
    const proxy = createProxy({ target: up.url, logger: quietLogger() });
    const front = await startFront('node', proxy);
    const pending = request(`${front.url}/hang`);
    await arrived.promise;
    const upstreamSocket = up.seen[0].socket;

    const started = Date.now();
    const closing = proxy.close({ timeout: 200 });
    const res = await pending;
    const answeredAfter = Date.now() - started;
    assert.equal(res.status, 503);
    assert.match(res.text, /^503 Service Unavailable/);
    assert.ok(
      answeredAfter >= 150 && answeredAfter < 1_000,
      `answered after ${answeredAfter} ms, expected about 200`,
    );
    await closing;
    const resolvedAfter = Date.now() - started;
    assert.ok(resolvedAfter < 1_000, `resolved after ${resolvedAfter} ms`);
    // The upstream request was abandoned, not left open.
    if (!upstreamSocket.destroyed)
      await within(once(upstreamSocket, 'close'), 1_000, 'upstream connection closed');
    assert.equal(proxy.stats().requests.active, 0);
    assert.equal(proxy.stats().requests.errors, 1);
  });

  test('close({ timeout: 200 }): a response mid-stream at the deadline is cut, so it cannot look complete', {
    timeout: 5_000,
  }, async () => {
    const up = await startUpstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 1_000 });
      res.write('a'.repeat(100)); // and nothing more
    });
    const proxy = createProxy({ target: up.url, logger: quietLogger() });
    const front = await startFront('node', proxy);
    const exchange = streamingGet(`${front.url}/stream`);
    assert.equal(await exchange.firstChunk, 200);

    const started = Date.now();
    const closing = proxy.close({ timeout: 200 });
    const result = await exchange.done;
    const cutAfter = Date.now() - started;
    assert.equal(result.status, 200);
    assert.equal(result.complete, false, 'the client must see an incomplete response');
    assert.equal(result.received, 100);
    assert.ok(cutAfter >= 150 && cutAfter < 1_000, `cut after ${cutAfter} ms, expected about 200`);
    await closing;
    assert.ok(Date.now() - started < 1_000);
    assert.equal(proxy.stats().requests.active, 0);
    assert.equal(proxy.stats().requests.errors, 1);
  });

  test('close() twice returns the same promise; with nothing in flight it resolves promptly', {
    timeout: 5_000,
  }, async () => {
    const up = await startUpstream();
    const proxy = createProxy({ target: up.url, logger: quietLogger() });
    const front = await startFront('node', proxy);
    assert.equal((await request(`${front.url}/warm`)).status, 200);

    const started = Date.now();
    const first = proxy.close(); // default timeout: 10 s, which must not be waited for
    const second = proxy.close({ timeout: 50 });
    assert.equal(first, second);
    await first;
    const elapsed = Date.now() - started;
    assert.ok(elapsed < 500, `resolved after ${elapsed} ms`);
    assert.equal((await request(`${front.url}/after`)).status, 503);
  });

  test('close({ timeout: -1 }) throws a TypeError and does not start a shutdown', async () => {
    const up = await startUpstream();
    const proxy = createProxy({ target: up.url, logger: quietLogger() });
    const front = await startFront('node', proxy);
    assert.throws(() => proxy.close({ timeout: -1 }), TypeError);
    assert.throws(() => proxy.close({ timeout: Number.NaN }), TypeError);
    assert.throws(() => proxy.close({ timeout: '100' }), TypeError);
    assert.equal((await request(`${front.url}/still-serving`)).status, 200);
  });

  test('after close() the keep-alive connections to the upstream are closed, so the process can exit', {
    timeout: 5_000,
  }, async () => {
    const up = await startUpstream();
    const upstreamSockets = [];
    up.server.on('connection', (socket) => upstreamSockets.push(socket));
    const proxy = createProxy({ target: up.url, logger: quietLogger() });
    const front = await startFront('node', proxy);
    assert.equal((await request(`${front.url}/a`)).status, 200);
    assert.equal((await request(`${front.url}/b`)).status, 200);
    assert.ok(
      (await connectionsOf(up.server)) >= 1,
      'the proxy keeps its upstream connection alive between requests',
    );

    await proxy.close({ timeout: 1_000 });
    // Well below the agent's 4 s idle timeout and the upstream's 5 s keep-alive timeout.
    await within(
      Promise.all(upstreamSockets.map((s) => (s.destroyed ? null : once(s, 'close')))),
      1_500,
      'upstream connections closed',
    );
    assert.equal(await connectionsOf(up.server), 0);
  });
});

describe('stats()', () => {
  test('totals and per route key for requests and tunnels', { timeout: 10_000 }, async () => {
    const arrived = deferred();
    const release = deferred();
    const up = await startUpstream(async (req) => {
      if (req.url === '/api/slow') {
        arrived.resolve();
        await release.promise;
      }
      return false;
    });
    const dead = await deadPort();
    const refusing = await unauthorizedUpstream();
    const proxy = createProxy({
      target: up.url,
      routes: {
        '/api': up.url,
        '/dead': `http://127.0.0.1:${dead}`,
        '/guarded': { target: up.url, allowedOrigins: ['http://good.example'] },
        '/refused': refusing.url,
      },
      router: (req) => (req.url.startsWith('/routed') ? up.url : undefined),
      logger: quietLogger(),
    });
    const front = await startFront('node', proxy);
    const closed = trackResponses(front.server);
    assert.deepEqual({ requests: proxy.stats().requests, tunnels: proxy.stats().tunnels }, ZERO);

    // active rises during a request and falls after.
    const slow = request(`${front.url}/api/slow`);
    await arrived.promise;
    let stats = proxy.stats();
    assert.deepEqual(stats.requests, { total: 1, active: 1, errors: 0 });
    assert.deepEqual(stats.routes['/api'].requests, { total: 1, active: 1, errors: 0 });
    release.resolve();
    assert.equal((await slow).status, 200);
    await closed[0];
    stats = proxy.stats();
    assert.deepEqual(stats.requests, { total: 1, active: 0, errors: 0 });
    assert.deepEqual(stats.routes['/api'].requests, { total: 1, active: 0, errors: 0 });

    // 'default' for the target, 'router' for router results.
    assert.equal((await request(`${front.url}/elsewhere`)).status, 200);
    assert.equal((await request(`${front.url}/routed/x`)).status, 200);
    await Promise.all(closed);
    stats = proxy.stats();
    assert.deepEqual(stats.routes.default.requests, { total: 1, active: 0, errors: 0 });
    assert.deepEqual(stats.routes.router.requests, { total: 1, active: 0, errors: 0 });

    // errors counts a 502.
    assert.equal((await request(`${front.url}/dead/x`)).status, 502);
    await Promise.all(closed);
    stats = proxy.stats();
    assert.deepEqual(stats.routes['/dead'].requests, { total: 1, active: 0, errors: 1 });
    assert.deepEqual(stats.requests, { total: 4, active: 0, errors: 1 });

    // A tunnel: total and active during it, active back to 0 after.
    const { ws } = await openSocket(`${front.wsUrl}/api/chat`);
    stats = proxy.stats();
    assert.deepEqual(stats.tunnels, { total: 1, active: 1, rejected: 0 });
    assert.deepEqual(stats.routes['/api'].tunnels, { total: 1, active: 1, rejected: 0 });
    const tunnelClosed = nextEvent(proxy, 'close');
    ws.close();
    await tunnelClosed;
    stats = proxy.stats();
    assert.deepEqual(stats.tunnels, { total: 1, active: 0, rejected: 0 });
    assert.deepEqual(stats.routes['/api'].tunnels, { total: 1, active: 0, rejected: 0 });

    // rejected: a 403 origin refusal and an upstream's non-101.
    const forbidden = await openSocket(`${front.wsUrl}/guarded/chat`, {
      origin: 'http://evil.example',
    });
    assert.equal(forbidden.refused?.status, 403);
    const refused = await openSocket(`${front.wsUrl}/refused/chat`);
    assert.equal(refused.refused?.status, 401);
    stats = proxy.stats();
    assert.deepEqual(stats.routes['/guarded'].tunnels, { total: 0, active: 0, rejected: 1 });
    assert.deepEqual(stats.routes['/refused'].tunnels, { total: 0, active: 0, rejected: 1 });
    assert.deepEqual(stats.tunnels, { total: 1, active: 0, rejected: 2 });
    assert.equal(up.handshakes.length, 1, 'the refused origin never reached the upstream');
  });

  test('stats() returns a copy: changing it does not change the next call', async () => {
    const up = await startUpstream();
    const proxy = createProxy({ routes: { '/api': up.url }, logger: quietLogger() });
    const front = await startFront('node', proxy);
    const closed = trackResponses(front.server);
    assert.equal((await request(`${front.url}/api/x`)).status, 200);
    await Promise.all(closed);

    const first = proxy.stats();
    first.requests.total = 999;
    first.tunnels.rejected = 999;
    first.routes['/api'].requests.active = 999;
    first.routes['/api'].tunnels.total = 999;
    first.routes['/api'].upstreams[up.url].requests = 999;
    first.routes.invented = first.routes['/api'];
    const second = proxy.stats();
    assert.deepEqual(second.requests, { total: 1, active: 0, errors: 0 });
    assert.deepEqual(second.tunnels, { total: 0, active: 0, rejected: 0 });
    assert.deepEqual(second.routes['/api'], {
      requests: { total: 1, active: 0, errors: 0 },
      tunnels: { total: 0, active: 0, rejected: 0 },
      upstreams: { [up.url]: { requests: 1, tunnels: 0, active: 0, fails: 0, down: false } },
    });
    assert.equal(second.routes.invented, undefined);
    assert.notEqual(second, first);
  });
});

describe('events', () => {
  test('proxyReq fires on both paths with (proxyReq, req, res | socket); a header it sets reaches the upstream', async () => {
    const up = await startUpstream();
    const proxy = createProxy({
      routes: { '/api': { target: up.url, stripPrefix: true } },
      logger: quietLogger(),
    });
    const calls = [];
    proxy.on('proxyReq', (proxyReq, req, client) => {
      // What the listener sees of the request, at the time it runs.
      calls.push({
        proxyReq,
        req,
        client,
        url: req.url,
        forwardedFor: req.headers['x-forwarded-for'],
      });
      proxyReq.setHeader('x-from-listener', 'yes');
    });
    const front = await startFront('node', proxy);
    const received = [];
    front.server.on('request', (req) => received.push(req));
    front.server.on('upgrade', (req) => received.push(req));

    const res = await request(`${front.url}/api/a?x=1`);
    assert.equal(res.status, 200);
    assert.equal(up.seen[0].headers['x-from-listener'], 'yes');
    assert.equal(calls.length, 1);
    assert.ok(calls[0].proxyReq instanceof http.ClientRequest);
    assert.equal(calls[0].req, received[0]);
    assert.equal(calls[0].url, '/api/a?x=1', 'the listener sees the request as the client sent it');
    assert.equal(calls[0].forwardedFor, undefined, 'the listener sees the headers the client sent');
    assert.ok(calls[0].client instanceof http.ServerResponse);

    const { ws, greeting } = await openSocket(`${front.wsUrl}/api/chat?room=1`);
    assert.equal(greeting, 'hello:/chat?room=1');
    ws.close();
    assert.equal(up.handshakes[0].headers['x-from-listener'], 'yes');
    assert.equal(calls.length, 2);
    assert.ok(calls[1].proxyReq instanceof http.ClientRequest);
    assert.equal(calls[1].req, received[1]);
    assert.ok(calls[1].client instanceof net.Socket);
    // DESIGN §3: req.url is never mutated; README: req.url and req.headers are never changed.
    assert.equal(
      calls[1].url,
      '/api/chat?room=1',
      'the listener sees the upgrade request as the client sent it',
    );
    assert.equal(
      calls[1].forwardedFor,
      undefined,
      'the listener sees the upgrade headers the client sent',
    );
  });

  test('a proxyReq listener sees the forwarded path and its header reaches the upstream, with no body, a streamed body and a re-sent one', async () => {
    const up = await startUpstream();
    const proxy = createProxy({
      routes: { '/api': { target: up.url, stripPrefix: true } },
      logger: quietLogger(),
    });
    const paths = [];
    proxy.on('proxyReq', (proxyReq) => {
      paths.push(proxyReq.path);
      proxyReq.setHeader('x-from-listener', 'yes');
    });
    // express.json() reads only JSON bodies: the text/plain one is streamed, the JSON one re-sent from req.body.
    const front = await startFront('express5', proxy, { before: [express.json()] });
    const json = { a: [1, 2] };
    const sent = [
      { method: 'GET', path: '/api/none?q=a//b' },
      {
        method: 'POST',
        path: '/api/streamed',
        headers: { 'content-type': 'text/plain' },
        body: 'plain text',
      },
      {
        method: 'PUT',
        path: '/api/resent',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(json, null, 2),
      },
    ];
    for (const { method, path, headers, body } of sent) {
      const res = await request(`${front.url}${path}`, { method, headers, body });
      assert.equal(res.status, 200, res.text);
    }
    assert.deepEqual(paths, ['/none?q=a//b', '/streamed', '/resent']);
    assert.deepEqual(
      up.seen.map(({ method, url, headers, body }) => [
        method,
        url,
        headers['x-from-listener'],
        headers['content-length'],
        body.toString(),
      ]),
      [
        ['GET', '/none?q=a//b', 'yes', undefined, ''],
        ['POST', '/streamed', 'yes', '10', 'plain text'],
        ['PUT', '/resent', 'yes', String(JSON.stringify(json).length), JSON.stringify(json)],
      ],
    );
  });

  test('proxyRes fires on both paths before the client gets anything; a header it sets reaches the client', async () => {
    const up = await startUpstream();
    const refusing = await unauthorizedUpstream();
    const proxy = createProxy({
      target: up.url,
      routes: { '/refused': refusing.url },
      logger: quietLogger(),
    });
    const calls = [];
    proxy.on('proxyRes', (proxyRes, req, client) => {
      const sentToClient =
        client instanceof http.ServerResponse ? client.headersSent : client.bytesWritten > 0;
      calls.push({
        status: proxyRes.statusCode,
        url: req.url,
        client,
        sentToClient,
        isResponse: proxyRes instanceof http.IncomingMessage,
      });
      proxyRes.headers['x-added-by-listener'] = 'yes';
    });
    const front = await startFront('node', proxy);

    const res = await request(`${front.url}/plain`);
    assert.equal(res.status, 200);
    assert.equal(res.headers['x-added-by-listener'], 'yes');
    assert.deepEqual(
      calls.map(({ status, url, sentToClient, isResponse }) => ({
        status,
        url,
        sentToClient,
        isResponse,
      })),
      [{ status: 200, url: '/plain', sentToClient: false, isResponse: true }],
    );
    assert.ok(calls[0].client instanceof http.ServerResponse);

    const { ws } = await openSocket(`${front.wsUrl}/chat`);
    assert.equal(calls.length, 2);
    assert.equal(calls[1].status, 101);
    assert.equal(calls[1].url, '/chat');
    assert.equal(calls[1].sentToClient, false, 'the 101 is written after the listener ran');
    assert.ok(calls[1].client instanceof net.Socket);
    ws.close();

    const refused = await openSocket(`${front.wsUrl}/refused/chat`);
    assert.equal(refused.refused?.status, 401);
    assert.equal(calls.length, 3);
    assert.equal(calls[2].status, 401);
    assert.equal(calls[2].sentToClient, false);
  });

  test('open and close: route, req, sockets, reason, duration and byte counts', {
    timeout: 5_000,
  }, async () => {
    const up = await startUpstream();
    const proxy = createProxy({
      target: up.url,
      routes: { '/room': up.url },
      logger: quietLogger(),
    });
    const opened = [];
    proxy.on('open', (event) => opened.push(event));
    const front = await startFront('node', proxy);

    // The client closes first.
    const { ws, greeting } = await openSocket(`${front.wsUrl}/chat`);
    assert.equal(greeting, 'hello:/chat'); // 13 bytes as a frame from the upstream
    assert.equal(opened.length, 1);
    assert.equal(opened[0].route, 'default');
    assert.equal(opened[0].req.url, '/chat');
    assert.ok(opened[0].clientSocket instanceof net.Socket);
    assert.ok(opened[0].upstreamSocket instanceof net.Socket);
    assert.equal(opened[0].upstreamSocket.remotePort, up.port);
    assert.equal(await roundTrip(ws, 'ping'), 'echo:ping'); // 10 bytes from the client (masked), 11 back
    const clientClose = nextEvent(proxy, 'close');
    ws.close();
    const [event] = await clientClose;
    assert.equal(event.route, 'default');
    assert.equal(event.req, opened[0].req);
    assert.equal(event.reason, 'client');
    assert.equal(event.error, undefined);
    assert.equal(typeof event.duration, 'number');
    assert.ok(event.duration >= 0 && event.duration < 5_000, `duration ${event.duration}`);
    assert.ok(
      event.bytesFromClient >= 10 && event.bytesFromClient < 64,
      `bytesFromClient ${event.bytesFromClient}`,
    );
    assert.ok(
      event.bytesFromUpstream >= 24 && event.bytesFromUpstream < 64,
      `bytesFromUpstream ${event.bytesFromUpstream}`,
    );

    // The upstream closes first.
    const second = await openSocket(`${front.wsUrl}/room/2`);
    assert.equal(opened.length, 2);
    assert.equal(opened[1].route, '/room');
    const upstreamClose = nextEvent(proxy, 'close');
    const clientSawClose = once(second.ws, 'close');
    for (const client of up.wss.clients) client.close(1000, 'bye');
    const [closedByUpstream] = await upstreamClose;
    assert.equal(closedByUpstream.route, '/room');
    assert.equal(closedByUpstream.reason, 'upstream');
    const [code] = await clientSawClose;
    assert.equal(code, 1000);
  });

  test('error receives a ProxyError with (error, req, res | socket) on both paths', async () => {
    const dead = await deadPort();
    const proxy = createProxy({
      routes: { '/dead': `http://127.0.0.1:${dead}` },
      logger: quietLogger(),
    });
    const errors = [];
    proxy.on('error', (error, req, client) => errors.push({ error, url: req.url, client }));
    const front = await startFront('node', proxy);

    assert.equal((await request(`${front.url}/dead/x`)).status, 502);
    assert.equal(errors.length, 1);
    assert.ok(errors[0].error instanceof ProxyError);
    assert.equal(errors[0].error.status, 502);
    assert.equal(errors[0].error.code, 'EUPSTREAM');
    assert.equal(errors[0].url, '/dead/x');
    assert.ok(errors[0].client instanceof http.ServerResponse);

    assert.equal(statusOf(await rawExchange(front.port, handshake('/dead/chat'))), 502);
    assert.equal(errors.length, 2);
    assert.ok(errors[1].error instanceof ProxyError);
    assert.equal(errors[1].error.status, 502);
    assert.equal(errors[1].url, '/dead/chat');
    assert.ok(errors[1].client instanceof net.Socket);
  });

  test('a listener that throws is logged and the request or tunnel still completes', async () => {
    const up = await startUpstream();
    const dead = await deadPort();
    const logger = quietLogger();
    const proxy = createProxy({
      target: up.url,
      routes: { '/dead': `http://127.0.0.1:${dead}` },
      logger,
    });
    proxy.on('proxyReq', () => {
      throw new Error('proxyReq listener boom');
    });
    proxy.on('proxyRes', () => {
      throw new Error('proxyRes listener boom');
    });
    proxy.on('open', () => {
      throw new Error('open listener boom');
    });
    proxy.on('error', () => {
      throw new Error('error listener boom');
    });
    const front = await startFront('node', proxy);

    const res = await request(`${front.url}/x`);
    assert.equal(res.status, 200);
    assert.equal(res.json().url, '/x');
    const { ws, greeting } = await openSocket(`${front.wsUrl}/chat`);
    assert.equal(greeting, 'hello:/chat');
    assert.equal(await roundTrip(ws, 'still'), 'echo:still');
    ws.close();
    assert.equal((await request(`${front.url}/dead/x`)).status, 502);

    const errorLines = logger.lines.filter(([level]) => level === 'error').map(([, line]) => line);
    for (const message of [
      'proxyReq listener boom',
      'proxyRes listener boom',
      'open listener boom',
      'error listener boom',
    ]) {
      assert.ok(
        errorLines.some((line) => line.includes(message)),
        `logged: ${message}`,
      );
    }
  });
});

describe('logger and option validation', () => {
  test('a 5xx is logged at error with the route key and target; the client body names no address', async () => {
    const dead = await deadPort();
    const logger = quietLogger();
    const proxy = createProxy({ routes: { 'svc.localhost': `http://127.0.0.1:${dead}` }, logger });
    const front = await startFront('node', proxy);
    const address = `127.0.0.1:${dead}`;

    const text = await request(`${front.url}/x`, { headers: { host: 'svc.localhost' } });
    assert.equal(text.status, 502);
    assert.match(text.headers['content-type'], /^text\/plain/);
    assert.ok(
      !text.text.includes(String(dead)) && !text.text.includes('127.0.0.1'),
      `body: ${text.text}`,
    );
    const json = await request(`${front.url}/x`, {
      headers: { host: 'svc.localhost', accept: 'application/json' },
    });
    assert.equal(json.status, 502);
    assert.equal(json.json().status, 502);
    assert.ok(
      !json.text.includes(String(dead)) && !json.text.includes('127.0.0.1'),
      `body: ${json.text}`,
    );
    const upgrade = await rawExchange(front.port, handshake('/chat', { host: 'svc.localhost' }));
    assert.equal(statusOf(upgrade), 502);
    assert.ok(!upgrade.includes(String(dead)), `raw answer: ${upgrade}`);

    const errorLines = logger.lines.filter(([level]) => level === 'error').map(([, line]) => line);
    assert.equal(errorLines.length, 3, `error lines: ${JSON.stringify(errorLines)}`);
    for (const line of errorLines) {
      assert.ok(line.includes('svc.localhost'), `names the route key: ${line}`);
      assert.ok(line.includes(address), `names the target: ${line}`);
      assert.ok(line.includes('502'), `names the status: ${line}`);
    }
  });

  test('an invalid logger is a TypeError at createProxy time', () => {
    const target = 'http://127.0.0.1:1';
    assert.throws(() => createProxy({ target, logger: 'console' }), TypeError);
    assert.throws(() => createProxy({ target, logger: null }), TypeError);
    assert.throws(
      () => createProxy({ target, logger: { debug() {}, info() {}, warn() {} } }),
      TypeError,
    );
    assert.throws(
      () => createProxy({ target, logger: { debug() {}, info() {}, warn() {}, error: 'no' } }),
      TypeError,
    );
    assert.equal(typeof createProxy({ target, logger: quietLogger() }), 'function');
  });

  test('unknown options and invalid values are TypeErrors at createProxy time', () => {
    const target = 'http://127.0.0.1:1';
    const logger = quietLogger();
    assert.throws(() => createProxy({ target, timeout: 5, logger }), {
      name: 'TypeError',
      message: /timeout/,
    });
    assert.throws(() => createProxy({ target, routes: { '/a': { target, timeout: 5 } }, logger }), {
      name: 'TypeError',
      message: /timeout/,
    });
    assert.throws(() => createProxy({ target, timeouts: { idle: 5 }, logger }), TypeError);
    assert.throws(() => createProxy('not a url'), TypeError);
    assert.throws(() => createProxy({ target: 'ftp://127.0.0.1:21', logger }), TypeError);
    assert.throws(() => createProxy({ target: 42, logger }), TypeError);
    assert.throws(() => createProxy({ routes: { '/a': 'nope' }, logger }), TypeError);
    assert.throws(() => createProxy({ target, forwarded: 'x-forwarded-for', logger }), TypeError);
    assert.throws(() => createProxy({ target, forwarded: true, logger }), TypeError);
    assert.throws(() => createProxy({ target, timeouts: { read: -1 }, logger }), TypeError);
    assert.throws(() => createProxy({ target, timeouts: { connect: -100 }, logger }), TypeError);
    assert.throws(() => createProxy({ target, maxTunnels: -1, logger }), TypeError);
    assert.throws(
      () => createProxy({ target, routes: { '/a': { target, maxTunnels: -1 } }, logger }),
      TypeError,
    );
    // The same values, valid, are accepted.
    const proxy = createProxy({
      target,
      forwarded: 'forwarded',
      timeouts: { read: 1, connect: 1 },
      maxTunnels: 0,
      logger,
    });
    assert.equal(typeof proxy.upgrade, 'function');
  });
});
