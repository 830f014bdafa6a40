// Failures on both paths (HTTP and upgrade): refused and unreachable upstreams, connect and read
// timeouts, error bodies, logging and the `error` event, throwing listeners, vanishing clients.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { once } from 'node:events';
import { spawn } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { createProxy, ProxyError } from 'viaduct';
import {
  closeAll,
  deadPort,
  quietLogger,
  startFront,
  startSilentUpstream,
  startUpstream,
} from '../helpers/servers.mjs';
import {
  handshake,
  openSocket,
  parseResponse,
  rawExchange,
  request,
  roundTrip,
  statusOf,
} from '../helpers/clients.mjs';
import { deferred, nextEvent, within } from '../helpers/waiting.mjs';

after(closeAll);

// ---------------------------------------------------------------------------------------------
// Helpers local to this file.

/** A request with the path sent exactly as given (no URL normalisation of dot-segments). */
function get(port, path, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, headers, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        resolve({ status: res.statusCode, headers: res.headers, text: body.toString('utf8') });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** One more ordinary request, and one more WebSocket, through the front: it keeps serving. */
async function assertServes(front, { ws = true } = {}) {
  const res = await within(
    request(`${front.url}/good/after`),
    2000,
    'a good request after the failure',
  );
  assert.equal(res.status, 200, `a good request after the failure got ${res.status}: ${res.text}`);
  if (ws) {
    const { ws: socket, greeting } = await within(
      openSocket(`${front.wsUrl}/good/chat`),
      2000,
      'a good WebSocket after the failure',
    );
    assert.equal(greeting, 'hello:/good/chat');
    assert.equal(await roundTrip(socket, 'ping'), 'echo:ping');
    socket.close();
  }
}

const BROWSER_ACCEPT =
  'text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8';

// ---------------------------------------------------------------------------------------------

describe('upstream refused', () => {
  test('502 on HTTP; on an upgrade 502 is written to the raw socket, which is then closed', async () => {
    const port = await deadPort();
    const good = await startUpstream();
    const logger = quietLogger();
    const errors = [];
    const proxy = createProxy({
      target: `http://127.0.0.1:${port}`,
      routes: { '/good': good.url },
      logger,
    });
    proxy.on('error', (error) => errors.push(error));
    const front = await startFront('express5', proxy);

    const res = await within(request(`${front.url}/x`), 3000, 'the HTTP answer');
    assert.equal(res.status, 502);
    // rawExchange resolves when the proxy closes the socket: the bound fails a socket left open.
    const raw = await within(
      rawExchange(front.port, handshake('/chat')),
      3000,
      'the upgrade answer and close',
    );
    assert.equal(statusOf(raw), 502);
    assert.match(raw, /\r\nconnection: close\r\n/i);

    assert.deepEqual(
      errors.map((e) => [e instanceof ProxyError, e.status, e.code]),
      [
        [true, 502, 'EUPSTREAM'],
        [true, 502, 'EUPSTREAM'],
      ],
    );
    assert.equal(proxy.stats().tunnels.active, 0);
    assert.equal(proxy.stats().tunnels.rejected, 1);
    await assertServes(front);
  });
});

describe('connect timeout', () => {
  let child;
  const parked = [];
  after(() => {
    for (const socket of parked) socket.destroy();
    child?.kill();
  });

  /**
   * A TCP upstream that never accepts: a child process listens with backlog 1 and blocks its
   * event loop; the accept queue is filled with parked connections, so further SYNs are dropped.
   */
  async function blackHole() {
    if (child) return blackHole.port;
    const code = `
      const net = require('node:net');
      const server = net.createServer();
      server.listen({ port: 0, host: '127.0.0.1', backlog: 1 }, () => {
        process.stdout.write(server.address().port + '\\n');
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20000);
        process.exit(0);
      });`;
    const env = { ...process.env };
    delete env.NODE_TEST_CONTEXT;
    delete env.NODE_OPTIONS;
    child = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'], env });
    let out = '';
    for await (const chunk of child.stdout) {
      out += chunk;
      if (out.includes('\n')) break;
    }
    const port = Number(out.trim());
    assert.ok(port > 0, `the child's port, got ${JSON.stringify(out)}`);
    // Linux queues backlog + 1 connections: two connect, the others stay in SYN-SENT.
    let connected = 0;
    const queueFull = deferred();
    for (let i = 0; i < 4; i++) {
      const socket = net.connect(port, '127.0.0.1');
      socket.on('error', () => {});
      socket.on('connect', () => ++connected === 2 && queueFull.resolve());
      parked.push(socket);
    }
    await within(queueFull.promise, 3000, 'filling the accept queue of the black hole');
    blackHole.port = port;
    return port;
  }

  test('timeouts.connect gives 504 within a bound, on HTTP and on an upgrade', async () => {
    const port = await blackHole();
    const good = await startUpstream();
    const logger = quietLogger();
    const errors = [];
    const proxy = createProxy({
      target: `http://127.0.0.1:${port}`,
      routes: { '/good': good.url },
      timeouts: { connect: 200, read: 5000 },
      logger,
    });
    proxy.on('error', (error) => errors.push(error));
    const front = await startFront('express5', proxy);

    let started = performance.now();
    const res = await within(
      request(`${front.url}/x`, { headers: { accept: 'application/json' } }),
      3000,
      'the HTTP answer',
    );
    let elapsed = performance.now() - started;
    assert.equal(res.status, 504);
    assert.equal(res.json().status, 504);
    assert.ok(
      elapsed >= 180 && elapsed < 1500,
      `504 after ${elapsed.toFixed(0)} ms, expected about 200`,
    );

    started = performance.now();
    const raw = await within(
      rawExchange(front.port, handshake('/chat')),
      3000,
      'the upgrade answer and close',
    );
    elapsed = performance.now() - started;
    assert.equal(statusOf(raw), 504);
    assert.ok(
      elapsed >= 180 && elapsed < 1500,
      `504 after ${elapsed.toFixed(0)} ms, expected about 200`,
    );

    assert.deepEqual(
      errors.map((e) => [e instanceof ProxyError, e.status, e.code]),
      [
        [true, 504, 'ECONNECTTIMEOUT'],
        [true, 504, 'ECONNECTTIMEOUT'],
      ],
    );
    assert.equal(proxy.stats().tunnels.active, 0);
    await assertServes(front);
  });
});

describe('read timeout', () => {
  test('an upstream that accepts and never answers: 504 after timeouts.read on HTTP', async () => {
    const silent = await startSilentUpstream();
    const good = await startUpstream();
    const errors = [];
    const proxy = createProxy({
      target: silent.url,
      routes: { '/good': good.url },
      timeouts: { connect: 1000, read: 200 },
      logger: quietLogger(),
    });
    proxy.on('error', (error) => errors.push(error));
    const front = await startFront('node', proxy);
    const started = performance.now();
    const res = await within(request(`${front.url}/slow`), 3000, 'the HTTP answer');
    const elapsed = performance.now() - started;
    assert.equal(res.status, 504);
    assert.equal(silent.requests.length, 1);
    assert.ok(
      elapsed >= 180 && elapsed < 1500,
      `504 after ${elapsed.toFixed(0)} ms, expected about 200`,
    );
    assert.deepEqual(
      errors.map((e) => [e.status, e.code]),
      [[504, 'EREADTIMEOUT']],
    );
    // The upstream request is given up, not left open.
    await within(silent.requests[0].closed, 2000, 'the upstream request closed');
    await assertServes(front);
  });

  test('an upgrade the upstream never answers: 504 on the raw socket after timeouts.read', async () => {
    const silent = await startSilentUpstream();
    const good = await startUpstream();
    const errors = [];
    const proxy = createProxy({
      target: silent.url,
      routes: { '/good': good.url },
      timeouts: { connect: 1000, read: 200 },
      logger: quietLogger(),
    });
    proxy.on('error', (error) => errors.push(error));
    const front = await startFront('express5', proxy);
    const started = performance.now();
    const raw = await within(
      rawExchange(front.port, handshake('/chat')),
      3000,
      'the upgrade answer and close',
    );
    const elapsed = performance.now() - started;
    assert.equal(statusOf(raw), 504);
    assert.equal(silent.upgrades.length, 1);
    assert.ok(
      elapsed >= 180 && elapsed < 1500,
      `504 after ${elapsed.toFixed(0)} ms, expected about 200`,
    );
    assert.deepEqual(
      errors.map((e) => [e.status, e.code]),
      [[504, 'EREADTIMEOUT']],
    );
    await within(silent.upgrades[0].closed, 2000, 'the upstream handshake connection closed');
    assert.equal(proxy.stats().tunnels.active, 0);
    await assertServes(front);
  });

  test('headers then silence mid-body: the client connection is cut after timeouts.read, not completed', async () => {
    const up = await startSilentUpstream();
    up.server.removeAllListeners('request');
    up.server.on('request', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '1000' });
      res.write('x'.repeat(100));
    });
    const good = await startUpstream();
    const errors = [];
    const proxy = createProxy({
      target: up.url,
      routes: { '/good': good.url },
      timeouts: { connect: 1000, read: 200 },
      logger: quietLogger(),
    });
    proxy.on('error', (error) => errors.push(error));
    const front = await startFront('express5', proxy);
    const result = await within(
      new Promise((resolve, reject) => {
        http
          .get({ host: '127.0.0.1', port: front.port, path: '/stall', agent: false }, (res) => {
            let bytes = 0;
            let firstByteAt;
            res.on('data', (chunk) => {
              firstByteAt ??= performance.now();
              bytes += chunk.length;
            });
            res.on('error', () => {});
            res.on('close', () =>
              resolve({
                status: res.statusCode,
                bytes,
                complete: res.complete,
                silentFor: performance.now() - firstByteAt,
              }),
            );
          })
          .on('error', reject);
      }),
      3000,
      'the stalled response being cut',
    );
    assert.equal(result.status, 200);
    assert.equal(result.bytes, 100);
    assert.equal(result.complete, false);
    assert.ok(
      result.silentFor >= 150 && result.silentFor < 1500,
      `cut after ${result.silentFor.toFixed(0)} ms of silence, expected about 200`,
    );
    assert.deepEqual(
      errors.map((e) => [e.status, e.code]),
      [[504, 'EREADTIMEOUT']],
    );
    await assertServes(front);
  });
});

describe('error bodies', () => {
  test('502, 504 and 400 name no upstream address: JSON for Accept: application/json, plain text for a browser or no Accept', async () => {
    const refused = await deadPort();
    const silent = await startSilentUpstream();
    const good = await startUpstream();
    const proxy = createProxy({
      target: `http://127.0.0.1:${refused}`,
      routes: { '/slow': { target: silent.url, timeouts: { read: 200 } }, '/good': good.url },
      logger: quietLogger(),
    });
    const front = await startFront('express5', proxy);
    const cases = [
      { path: '/down', status: 502, reason: 'Bad Gateway', port: refused },
      { path: '/slow/x', status: 504, reason: 'Gateway Timeout', port: silent.port },
      { path: '/down/../admin', status: 400, reason: 'Bad Request', port: refused },
    ];
    const accepts = [
      ['json', 'application/json'],
      ['browser', BROWSER_ACCEPT],
      ['none', undefined],
    ];
    const results = await within(
      Promise.all(
        cases.flatMap((c) =>
          accepts.map(([name, accept]) =>
            get(front.port, c.path, accept ? { accept } : {}).then((res) => ({ c, name, res })),
          ),
        ),
      ),
      3000,
      'the error answers',
    );
    for (const { c, name, res } of results) {
      const what = `${c.status} for ${c.path} with ${name} Accept`;
      assert.equal(res.status, c.status, what);
      assert.ok(
        !res.text.includes(String(c.port)),
        `${what}: the body names the upstream port: ${res.text}`,
      );
      assert.ok(
        !res.text.includes('127.0.0.1'),
        `${what}: the body names the upstream address: ${res.text}`,
      );
      if (name === 'json') {
        assert.match(res.headers['content-type'], /^application\/json/, what);
        const body = JSON.parse(res.text);
        assert.deepEqual(Object.keys(body).sort(), ['error', 'message', 'status'], what);
        assert.equal(body.status, c.status, what);
        assert.equal(body.error, c.reason, what);
        assert.equal(typeof body.message, 'string', what);
        assert.ok(body.message.length > 0, what);
      } else {
        assert.match(res.headers['content-type'], /^text\/plain/, what);
        assert.ok(res.text.startsWith(`${c.status} ${c.reason}`), `${what}: ${res.text}`);
        assert.ok(res.text.length < 200, `${what}: a short body`);
      }
    }
    await assertServes(front);
  });

  test('on the upgrade path too: JSON for Accept: application/json, plain text otherwise, no upstream address', async () => {
    const refused = await deadPort();
    const good = await startUpstream();
    const proxy = createProxy({
      target: `http://127.0.0.1:${refused}`,
      routes: { '/good': good.url },
      logger: quietLogger(),
    });
    const front = await startFront('node', proxy);
    for (const [name, accept] of [
      ['json', 'application/json'],
      ['none', undefined],
    ]) {
      const raw = await within(
        rawExchange(front.port, handshake('/chat', { accept })),
        3000,
        'the upgrade answer',
      );
      const res = parseResponse(raw);
      assert.equal(res.status, 502, name);
      assert.equal(
        res.headers['content-length'],
        String(Buffer.byteLength(res.body, 'latin1')),
        name,
      );
      assert.ok(
        !res.body.includes(String(refused)) && !res.body.includes('127.0.0.1'),
        `${name}: ${res.body}`,
      );
      if (name === 'json') {
        assert.match(res.headers['content-type'], /^application\/json/);
        assert.deepEqual(JSON.parse(res.body), {
          error: 'Bad Gateway',
          status: 502,
          message: JSON.parse(res.body).message,
        });
        assert.ok(JSON.parse(res.body).message.length > 0);
      } else {
        assert.match(res.headers['content-type'], /^text\/plain/);
        assert.ok(res.body.startsWith('502 Bad Gateway'), res.body);
      }
    }
    await assertServes(front);
  });
});

describe('logging and the error event', () => {
  test('every proxy-made error is logged (error for 5xx, warn for 4xx) and emitted as a ProxyError with status and code', async () => {
    const refused = await deadPort();
    const silent = await startSilentUpstream();
    const good = await startUpstream();
    const logger = quietLogger();
    const events = [];
    const proxy = createProxy({
      target: `http://127.0.0.1:${refused}`,
      routes: {
        '/slow': { target: silent.url, timeouts: { read: 200 } },
        '/nows': { target: good.url, ws: false },
        '/good': good.url,
      },
      logger,
    });
    proxy.on('error', (error, req, client) => events.push({ error, url: req.url, client }));
    const front = await startFront('express5', proxy);

    assert.equal((await get(front.port, '/down')).status, 502);
    assert.equal(statusOf(await rawExchange(front.port, handshake('/down'))), 502);
    assert.equal((await get(front.port, '/slow/x')).status, 504);
    assert.equal(statusOf(await rawExchange(front.port, handshake('/slow/x'))), 504);
    assert.equal((await get(front.port, '/down/%2e%2e/admin')).status, 400);
    assert.equal(statusOf(await rawExchange(front.port, handshake('/down/../admin'))), 400);
    assert.equal(statusOf(await rawExchange(front.port, handshake('/nows/chat'))), 404);

    const expected = [
      ['/down', 'http', 502, 'EUPSTREAM'],
      ['/down', 'upgrade', 502, 'EUPSTREAM'],
      ['/slow/x', 'http', 504, 'EREADTIMEOUT'],
      ['/slow/x', 'upgrade', 504, 'EREADTIMEOUT'],
      ['/down/%2e%2e/admin', 'http', 400, 'EBADPATH'],
      ['/down/../admin', 'upgrade', 400, 'EBADPATH'],
      ['/nows/chat', 'upgrade', 404, 'ENOWS'],
    ];
    assert.deepEqual(
      events.map(({ error, url, client }) => [
        url,
        client instanceof http.ServerResponse
          ? 'http'
          : client instanceof net.Socket
            ? 'upgrade'
            : typeof client,
        error.status,
        error.code,
      ]),
      expected,
    );
    for (const { error } of events) {
      assert.ok(error instanceof ProxyError, `${error.code} is a ProxyError`);
      assert.ok(error instanceof Error);
    }
    const levels = logger.lines.filter(([level]) => level === 'error' || level === 'warn');
    assert.deepEqual(
      levels.map(([level, line]) => [level, Number(/\b([45]\d\d)\b/.exec(line)?.[1])]),
      expected.map(([, , status]) => [status >= 500 ? 'error' : 'warn', status]),
    );
    // The log line is where the upstream is named.
    assert.ok(levels[0][1].includes(String(refused)), levels[0][1]);
    await assertServes(front);
  });

  test('with no error listener, failures are logged and the process does not crash', async () => {
    const refused = await deadPort();
    const good = await startUpstream();
    const logger = quietLogger();
    const proxy = createProxy({
      target: `http://127.0.0.1:${refused}`,
      routes: { '/good': good.url },
      logger,
    });
    assert.equal(proxy.listenerCount('error'), 0);
    const front = await startFront('express4', proxy);
    assert.equal((await within(request(`${front.url}/down`), 3000, 'the HTTP answer')).status, 502);
    assert.equal(
      statusOf(
        await within(rawExchange(front.port, handshake('/down')), 3000, 'the upgrade answer'),
      ),
      502,
    );
    assert.equal(
      logger.lines.filter(([level, line]) => level === 'error' && / 502 /.test(line)).length,
      2,
      JSON.stringify(logger.lines),
    );
    await assertServes(front);
  });

  test('an error listener that throws is logged and neither crashes nor hangs the request', async () => {
    const refused = await deadPort();
    const good = await startUpstream();
    const logger = quietLogger();
    const proxy = createProxy({
      target: `http://127.0.0.1:${refused}`,
      routes: { '/good': good.url },
      logger,
    });
    proxy.on('error', () => {
      throw new Error('error listener exploded');
    });
    const front = await startFront('express5', proxy);
    assert.equal((await within(request(`${front.url}/down`), 3000, 'the HTTP answer')).status, 502);
    assert.equal(
      statusOf(
        await within(rawExchange(front.port, handshake('/down')), 3000, 'the upgrade answer'),
      ),
      502,
    );
    assert.equal(
      logger.lines.filter(
        ([level, line]) => level === 'error' && line.includes('error listener exploded'),
      ).length,
      2,
      JSON.stringify(logger.lines),
    );
    await assertServes(front);
  });

  test('a proxyReq listener that throws is logged and the request still goes through, on both paths', async () => {
    const good = await startUpstream();
    const logger = quietLogger();
    const proxy = createProxy({ target: good.url, logger });
    proxy.on('proxyReq', () => {
      throw new Error('proxyReq listener exploded');
    });
    const front = await startFront('node', proxy);
    const res = await within(request(`${front.url}/good/a`), 3000, 'the HTTP answer');
    assert.equal(res.status, 200);
    assert.equal(res.json().url, '/good/a');
    const { ws, greeting } = await within(
      openSocket(`${front.wsUrl}/good/chat`),
      3000,
      'the WebSocket',
    );
    assert.equal(greeting, 'hello:/good/chat');
    ws.close();
    assert.equal(
      logger.lines.filter(
        ([level, line]) => level === 'error' && line.includes('proxyReq listener exploded'),
      ).length,
      2,
      JSON.stringify(logger.lines),
    );
  });
});

describe('clients that vanish during an upgrade handshake', () => {
  /** The front's end of the next connection it accepts, with a promise of its close. */
  function nextFrontSocket(front) {
    return new Promise((resolve) =>
      front.server.once('connection', (socket) =>
        resolve({ socket, closed: nextEvent(socket, 'close') }),
      ),
    );
  }

  /** A raw client connected to `front` that has sent a WebSocket handshake for /chat. */
  async function handshakingClient(front) {
    const client = net.connect(front.port, '127.0.0.1');
    await once(client, 'connect');
    client.write(handshake('/chat'));
    return client;
  }

  test('a client that resets while the upstream is slow: the upstream handshake is dropped, no tunnel left', async () => {
    const slow = await startSilentUpstream();
    const upstreamGotIt = deferred();
    slow.server.on('upgrade', () => upstreamGotIt.resolve(slow.upgrades.at(-1)));
    const good = await startUpstream();
    const proxy = createProxy({
      target: slow.url,
      routes: { '/good': good.url },
      logger: quietLogger(),
    });
    const front = await startFront('express5', proxy);
    const frontSide = nextFrontSocket(front);

    const client = await handshakingClient(front);
    const upstream = await within(
      upstreamGotIt.promise,
      3000,
      'the handshake reaching the upstream',
    );
    client.resetAndDestroy();

    await within((await frontSide).closed, 3000, "the front's socket closing");
    await within(
      upstream.closed,
      3000,
      'the upstream handshake connection closing after the client reset',
    );
    const stats = proxy.stats();
    assert.equal(stats.tunnels.active, 0);
    assert.equal(stats.tunnels.total, 0);
    assert.equal(stats.tunnels.rejected, 1);
    await assertServes(front);
  });

  test('a client that sends a handshake and vanishes while the upstream answers 101: no tunnel left, upstream closed', async () => {
    const up = await startUpstream();
    const upstreamClosed = deferred();
    up.wss.on('connection', (ws) => ws.once('close', () => upstreamClosed.resolve()));
    const proxy = createProxy({
      target: up.url,
      routes: { '/good': up.url },
      timeouts: { read: 5000 },
      logger: quietLogger(),
    });
    let opened = 0;
    proxy.on('open', () => opened++);
    const tunnelClosed = nextEvent(proxy, 'close');
    const front = await startFront('node', proxy);
    const frontSide = nextFrontSocket(front);

    const client = await handshakingClient(front);
    client.destroy();

    // Well within the 5 s idle timeout: the proxy must notice the client is gone, not wait it out.
    await within((await frontSide).closed, 2000, "the front's socket closing");
    if (opened > 0) {
      const [closed] = await within(tunnelClosed, 2000, 'the tunnel close event');
      assert.notEqual(closed.reason, 'idle');
      await within(upstreamClosed.promise, 2000, 'the upstream WebSocket closing');
    }
    assert.equal(proxy.stats().tunnels.active, 0);
    assert.equal(up.handshakes.length, opened);
    await assertServes(front);
  });

  test('a client that sends a handshake and vanishes while the upstream is silent: cleaned up by timeouts.read at the latest', async () => {
    const slow = await startSilentUpstream();
    const good = await startUpstream();
    const proxy = createProxy({
      target: slow.url,
      routes: { '/good': good.url },
      timeouts: { read: 300 },
      logger: quietLogger(),
    });
    const front = await startFront('express5', proxy);
    const frontSide = nextFrontSocket(front);

    const client = await handshakingClient(front);
    client.destroy();

    await within((await frontSide).closed, 2000, "the front's socket closing");
    // Whether or not the handshake reached the upstream before the proxy noticed, nothing stays open there.
    await within(
      Promise.all(slow.upgrades.map((u) => u.closed)),
      2000,
      'the upstream handshake connection closing',
    );
    const stats = proxy.stats();
    assert.equal(stats.tunnels.active, 0);
    assert.equal(stats.tunnels.total, 0);
    assert.equal(stats.tunnels.rejected, 1);
    await assertServes(front);
  });
});
