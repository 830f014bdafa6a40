// The same behaviour in Express 5, Express 4, Connect and plain node:http, and the two ways of
// wiring upgrades by hand that DESIGN shows.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { createProxy, attach } from 'viaduct';
import {
  FRONT_KINDS,
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

after(closeAll);

const MOUNTABLE = new Set(['express5', 'express4', 'connect']);

/** An upstream that echoes a POST body back byte for byte, and describes everything else. */
function echoUpstream() {
  return startUpstream((req, res, record) => {
    if (req.method !== 'POST') return false;
    res.writeHead(200, {
      'content-type': 'application/octet-stream',
      'content-length': record.body.length,
      'x-seen-url': req.url,
    });
    res.end(record.body);
  });
}

/** Sends a binary message and resolves with the next message, as a Buffer. */
async function binaryRoundTrip(ws, bytes) {
  const reply = once(ws, 'message');
  ws.send(bytes, { binary: true });
  const [data, isBinary] = await reply;
  assert.equal(isBinary, true);
  return Buffer.from(data);
}

async function wsRoundTrip(wsUrl, upstreamPath) {
  const { ws, greeting } = await openSocket(wsUrl);
  try {
    assert.equal(greeting, `hello:${upstreamPath}`);
    assert.equal(await roundTrip(ws, 'ping'), 'echo:ping');
    const bytes = randomBytes(3_000);
    assert.deepEqual(await binaryRoundTrip(ws, bytes), bytes);
  } finally {
    ws.close();
  }
}

for (const kind of FRONT_KINDS) {
  describe(`${kind} front`, () => {
    test('a GET, and a POST whose body crosses byte for byte both ways', async () => {
      const up = await echoUpstream();
      const front = await startFront(kind, createProxy({ target: up.url, logger: quietLogger() }));

      const get = await request(`${front.url}/items?q=1&q=2`, { headers: { 'x-client': 'c1' } });
      assert.equal(get.status, 200);
      assert.equal(get.json().method, 'GET');
      assert.equal(get.json().url, '/items?q=1&q=2');
      assert.equal(up.seen[0].headers['x-client'], 'c1');

      const body = randomBytes(200_000);
      const post = await request(`${front.url}/upload`, {
        method: 'POST',
        body,
        headers: { 'content-type': 'application/octet-stream' },
      });
      assert.equal(post.status, 200);
      assert.equal(post.headers['x-seen-url'], '/upload');
      assert.equal(up.seen[1].method, 'POST');
      assert.equal(up.seen[1].body.length, body.length);
      assert.ok(up.seen[1].body.equals(body), 'the upstream received the exact bytes');
      assert.ok(post.body.equals(body), 'the client received the exact bytes');
    });

    test('a WebSocket round trip through attach', async () => {
      const up = await startUpstream();
      const front = await startFront(kind, createProxy({ target: up.url, logger: quietLogger() }));
      await wsRoundTrip(`${front.wsUrl}/chat?room=1`, '/chat?room=1');
      assert.equal(up.handshakes.length, 1);
      assert.equal(up.handshakes[0].url, '/chat?room=1');
    });

    if (MOUNTABLE.has(kind)) {
      test("mounted at '/v1': the forwarded path is mount-relative on both paths", async () => {
        const up = await echoUpstream();
        const front = await startFront(
          kind,
          createProxy({ target: `${up.url}/base`, logger: quietLogger() }),
          { mount: '/v1' },
        );

        const get = await request(`${front.url}/v1/items?x=1`);
        assert.equal(get.status, 200);
        assert.equal(get.json().url, '/base/items?x=1');
        const body = Buffer.from('mounted body \u00e9\u0000\u00ff', 'utf8');
        const post = await request(`${front.url}/v1/upload`, { method: 'POST', body });
        assert.equal(post.headers['x-seen-url'], '/base/upload');
        assert.ok(post.body.equals(body));
        await wsRoundTrip(`${front.wsUrl}/v1/chat`, '/base/chat');

        // Outside the mount nothing is proxied: the framework answers.
        const outside = await request(`${front.url}/items`);
        assert.equal(outside.status, 404);
        assert.equal(statusOf(await rawExchange(front.port, handshake('/chat'))), 404);
        assert.deepEqual(
          up.seen.map((r) => r.url),
          ['/base/items?x=1', '/base/upload'],
        );
        assert.deepEqual(
          up.handshakes.map((h) => h.url),
          ['/base/chat'],
        );
      });

      test("no route: next() is called; the framework's own 404, or a later middleware, answers", async () => {
        const up = await startUpstream();
        const proxy = createProxy({ routes: { '/api': up.url }, logger: quietLogger() });

        const plain = await startFront(kind, proxy);
        const notFound = await request(`${plain.url}/other`);
        assert.equal(notFound.status, 404);
        assert.match(
          notFound.text,
          /Cannot GET \/other/,
          "the framework's 404 page, not the proxy's",
        );
        assert.equal(statusOf(await rawExchange(plain.port, handshake('/other'))), 404);

        const withLater = await startFront(kind, proxy);
        withLater.app.use((req, res) => {
          res.statusCode = 418;
          res.setHeader('content-type', 'text/plain');
          res.end(`later middleware saw ${req.url}`);
        });
        const later = await request(`${withLater.url}/other?x=1`);
        assert.equal(later.status, 418);
        assert.equal(later.text, 'later middleware saw /other?x=1');
        assert.equal((await request(`${withLater.url}/api/x`)).json().url, '/api/x');
        assert.deepEqual(
          up.seen.map((r) => r.url),
          ['/api/x'],
        );
        assert.equal(up.handshakes.length, 0);
      });
    } else {
      test('no route: 404 from the proxy, for a request and an upgrade', async () => {
        const up = await startUpstream();
        const front = await startFront(
          kind,
          createProxy({ routes: { '/api': up.url }, logger: quietLogger() }),
        );
        const res = await request(`${front.url}/other`);
        assert.equal(res.status, 404);
        assert.match(res.headers['content-type'], /^text\/plain/);
        assert.equal(statusOf(await rawExchange(front.port, handshake('/other'))), 404);
        assert.equal(up.seen.length + up.handshakes.length, 0);
      });
    }

    test('a dead upstream: a proxy-made 502 on both paths', async () => {
      const dead = await deadPort();
      const front = await startFront(
        kind,
        createProxy({ target: `http://127.0.0.1:${dead}`, logger: quietLogger() }),
      );
      const res = await request(`${front.url}/x`);
      assert.equal(res.status, 502);
      assert.match(res.headers['content-type'], /^text\/plain/);
      assert.match(res.text, /^502 Bad Gateway: /);
      assert.ok(!res.text.includes(String(dead)), 'the body names no upstream address');
      const raw = await rawExchange(front.port, handshake('/chat'));
      assert.equal(statusOf(raw), 502);
      assert.match(raw, /\r\n\r\n502 Bad Gateway: /);
    });
  });
}

describe('wiring by hand', () => {
  test('http.createServer(proxy) + attach(server, proxy)', async () => {
    const up = await echoUpstream();
    const proxy = createProxy({ routes: { '/api': up.url }, logger: quietLogger() });
    const server = http.createServer(proxy);
    const detach = attach(server, proxy);
    const port = await listen(server);

    assert.equal((await request(`http://127.0.0.1:${port}/api/a`)).json().url, '/api/a');
    const body = randomBytes(10_000);
    assert.ok(
      (await request(`http://127.0.0.1:${port}/api/b`, { method: 'POST', body })).body.equals(body),
    );
    await wsRoundTrip(`ws://127.0.0.1:${port}/api/chat`, '/api/chat');
    assert.equal(statusOf(await rawExchange(port, handshake('/other'))), 404);

    // Detached: upgrades are no longer dispatched to the proxy.
    detach();
    assert.equal(server.listenerCount('upgrade'), 0);
    assert.equal(up.handshakes.length, 1);
  });

  test("server.on('upgrade', (req, socket, head) => proxy.upgrade(req, socket, head) || socket.destroy())", async () => {
    const up = await startUpstream();
    const proxy = createProxy({ routes: { '/chat': up.url }, logger: quietLogger() });
    const server = http.createServer(proxy);
    const taken = [];
    server.on('upgrade', (req, socket, head) => {
      const result = proxy.upgrade(req, socket, head);
      taken.push(result);
      return result || socket.destroy();
    });
    const port = await listen(server);

    await wsRoundTrip(`ws://127.0.0.1:${port}/chat/room`, '/chat/room');
    assert.deepEqual(taken, [true]);
    // No route: upgrade() returns false and the listener destroys the socket, so nothing is written.
    assert.equal(await rawExchange(port, handshake('/other')), '');
    assert.deepEqual(taken, [true, false]);
    assert.deepEqual(
      up.handshakes.map((h) => h.url),
      ['/chat/room'],
    );
    assert.equal((await request(`http://127.0.0.1:${port}/chat/x`)).json().url, '/chat/x');
  });
});
