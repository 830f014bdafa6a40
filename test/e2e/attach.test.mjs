// attach(): upgrades dispatched through a proxy, an Express app or a Connect app.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import connect from 'connect';
import express5 from 'express';
import express4 from 'express4';
import { WebSocketServer } from 'ws';
import { attach, createProxy } from 'viaduct';
import { closeAll, listen, quietLogger, startFront, startUpstream } from '../helpers/servers.mjs';
import {
  handshake,
  handshakeThenReset,
  openSocket,
  rawExchange,
  request,
  roundTrip,
  statusOf,
} from '../helpers/clients.mjs';
import { assertOnlyLiveTunnel, deferred } from '../helpers/waiting.mjs';

after(closeAll);

// A hang (a socket never closed, an event never fired) fails the test instead of stalling the file.
const BOUND = { timeout: 5_000 };

// ---------------------------------------------------------------------------------------------
// Helpers local to this file.

const APPS = { express5, express4, connect };

/** A masked client text frame (RFC 6455), for payloads under 126 bytes. */
function textFrame(text) {
  const data = Buffer.from(text);
  const key = randomBytes(4);
  const masked = Buffer.from(data.map((byte, i) => byte ^ key[i & 3]));
  return Buffer.concat([Buffer.from([0x81, 0x80 | data.length]), key, masked]);
}

/** Body of a raw response (after the head). */
function bodyOf(raw) {
  return raw.slice(raw.indexOf('\r\n\r\n') + 4);
}

/** Every HTTP status line in what a client received. */
function statusLines(raw) {
  return raw.match(/HTTP\/1\.[01] \d{3}[^\r]*/g) ?? [];
}

/** What the other listener of `addOtherListener` answers an upgrade to `/mine` with. */
const MINE_ANSWER = 'HTTP/1.1 299 Mine\r\ncontent-length: 4\r\nconnection: close\r\n\r\nmine';
/** What it answers `/late` with, 20 ms after the app's catch-all ran (`appAnswered`). */
const LATE_ANSWER = 'HTTP/1.1 299 Late\r\ncontent-length: 4\r\nconnection: close\r\n\r\nlate';

/**
 * Another `upgrade` listener, as socket.io or a dev server's HMR would add: it completes a
 * WebSocket handshake of its own on `/other` (greeting `other:hello`), answers `/mine` with a
 * 299 of its own, `/late` with another one well after the app answered (`appAnswered` resolves
 * when it did), and leaves every other socket alone.
 */
function addOtherListener(server) {
  const wss = new WebSocketServer({ noServer: true });
  const seen = [];
  const appAnswered = deferred();
  const listener = (req, socket, head) => {
    seen.push(req.url);
    if (req.url === '/other') {
      wss.handleUpgrade(req, socket, head, (ws) => {
        ws.send('other:hello');
        ws.on('message', (data) => ws.send(`other:${data}`));
      });
    } else if (req.url === '/mine') {
      socket.end(MINE_ANSWER);
    } else if (req.url === '/late') {
      // Late on purpose: long after the turn in which the app answered.
      appAnswered.promise.then(() => setTimeout(() => socket.end(LATE_ANSWER), 20));
    }
  };
  server.on('upgrade', listener);
  return { wss, seen, listener, appAnswered };
}

/** A server for `app` with `attach` and, when asked, another upgrade listener before or after it. */
async function serve(app, { unmatched, other } = {}) {
  const server = http.createServer(app);
  let others;
  if (other === 'before') others = addOtherListener(server);
  const detach = attach(server, app, { logger: quietLogger(), ...(unmatched && { unmatched }) });
  if (other === 'after') others = addOtherListener(server);
  const port = await listen(server);
  return {
    server,
    port,
    url: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}`,
    detach,
    others,
  };
}

/** An Express/Connect front like startFront's, attached with a quiet logger (startFront's attach logs to the console). */
async function appFront(kind, proxy, { mount = '', before = [], ...serveOptions } = {}) {
  const app = APPS[kind]();
  for (const fn of before) app.use(mount || '/', fn);
  if (mount) app.use(mount, proxy);
  else app.use(proxy);
  return { app, ...(await serve(app, serveOptions)) };
}

// ---------------------------------------------------------------------------------------------

describe('attach(server, proxy | app): mounts apply to upgrades', () => {
  test(
    'attach(server, proxy) on a node:http server tunnels with the route table',
    BOUND,
    async () => {
      const up = await startUpstream();
      const proxy = createProxy({ logger: quietLogger(), routes: { '/chat': up.url } });
      const front = await startFront('node', proxy);
      const { ws, greeting } = await openSocket(`${front.wsUrl}/chat/x`);
      assert.equal(greeting, 'hello:/chat/x');
      assert.equal(await roundTrip(ws, 'hi'), 'echo:hi');
      assert.equal(up.handshakes.length, 1);
      ws.close();
    },
  );

  for (const kind of ['express5', 'express4', 'connect']) {
    test(
      `attach(server, ${kind} app): app.use('/v1', proxy) → ws://…/v1/chat/x reaches the upstream as /chat/x`,
      BOUND,
      async () => {
        const up = await startUpstream();
        const proxy = createProxy({ target: up.url, logger: quietLogger() });
        const front = await appFront(kind, proxy, { mount: '/v1' });
        const { ws, greeting } = await openSocket(`${front.wsUrl}/v1/chat/x?room=1`);
        assert.equal(greeting, 'hello:/chat/x?room=1');
        assert.equal(up.handshakes.length, 1);
        assert.equal(up.handshakes[0].url, '/chat/x?room=1');
        assert.equal(await roundTrip(ws, 'hi'), 'echo:hi');
        ws.close();
      },
    );
  }
});

describe('middleware in front applies to upgrades', () => {
  for (const kind of ['express5', 'express4', 'connect']) {
    const express = kind !== 'connect';
    test(
      `${kind}: an auth middleware's 401 reaches the ws client and the socket closes; the right header opens the tunnel`,
      BOUND,
      async () => {
        const up = await startUpstream();
        const proxy = createProxy({ target: up.url, logger: quietLogger() });
        const auth = (req, res, next) => {
          if (req.headers['x-token'] === 'secret') return next();
          if (express) res.status(401).send('no');
          else {
            res.statusCode = 401;
            res.end();
          }
        };
        const front = await appFront(kind, proxy, { mount: '/v1', before: [auth] });
        const expectedBody = express ? 'no' : '';

        const refused = await openSocket(`${front.wsUrl}/v1/chat`);
        assert.equal(refused.refused?.status, 401);
        assert.equal(refused.refused.body, expectedBody);

        // On the wire: the 401 and its body, then the socket is closed (rawExchange resolves on close).
        const raw = await rawExchange(front.port, handshake('/v1/chat'));
        assert.equal(statusOf(raw), 401);
        assert.equal(bodyOf(raw), expectedBody);
        assert.equal(statusLines(raw).length, 1);
        assert.equal(up.handshakes.length, 0);

        const { ws, greeting } = await openSocket(`${front.wsUrl}/v1/chat`, {
          headers: { 'x-token': 'secret' },
        });
        assert.equal(greeting, 'hello:/chat');
        assert.equal(up.handshakes.length, 1);
        ws.close();
      },
    );

    test(
      `${kind}: a middleware calling next(err) with err.status = 429 → 429, closed`,
      BOUND,
      async () => {
        const up = await startUpstream();
        const proxy = createProxy({ target: up.url, logger: quietLogger() });
        const limit = (_req, _res, next) =>
          next(Object.assign(new Error('slow down'), { status: 429 }));
        const front = await appFront(kind, proxy, { mount: '/v1', before: [limit] });
        const raw = await rawExchange(front.port, handshake('/v1/chat'));
        assert.equal(statusOf(raw), 429);
        assert.ok(!raw.includes('slow down'), 'the error message is not sent');
        const refused = await openSocket(`${front.wsUrl}/v1/chat`);
        assert.equal(refused.refused?.status, 429);
        assert.equal(up.handshakes.length, 0);
      },
    );
  }
});

describe('what middleware sees of an upgrade', () => {
  /** What a middleware mounted at /v1 reads of the request and response it is given. */
  function observer(seen) {
    return (req, res, next) => {
      seen.push({
        url: req.url,
        baseUrl: req.baseUrl,
        originalUrl: req.originalUrl,
        params: req.params,
        query: req.query,
        locals: res.locals === undefined ? 'none' : Object.keys(res.locals),
        own: ['next', 'baseUrl', 'originalUrl', '_parsedUrl', 'params'].filter((name) =>
          Object.hasOwn(req, name),
        ),
        symbols: Object.getOwnPropertySymbols(req).map(String),
      });
      next();
    };
  }

  for (const kind of ['express5', 'express4', 'connect']) {
    test(
      `${kind}: the same request properties and res.locals as for HTTP on the same path`,
      BOUND,
      async () => {
        const up = await startUpstream();
        const proxy = createProxy({ target: up.url, logger: quietLogger() });
        const seen = [];
        const front = await appFront(kind, proxy, { mount: '/v1', before: [observer(seen)] });
        assert.equal((await request(`${front.url}/v1/chat/x?room=1`)).status, 200);
        // Twice: attach learns the router's own symbols from the first upgrade and adds them to the next.
        for (let i = 0; i < 2; i++) {
          const { ws, greeting } = await openSocket(`${front.wsUrl}/v1/chat/x?room=1`);
          assert.equal(greeting, 'hello:/chat/x?room=1');
          ws.close();
        }
        assert.equal(seen.length, 3);
        const [http, ...upgrades] = seen;
        for (const upgrade of upgrades) assert.deepEqual(upgrade, http);
        assert.equal(http.url, '/chat/x?room=1');
        // Connect has no baseUrl, params or next: none is added to its requests.
        if (kind === 'connect') assert.deepEqual(http.own, ['originalUrl', '_parsedUrl']);
        else assert.equal(http.baseUrl, '/v1');
      },
    );
  }
});

describe('unmatched upgrades', () => {
  /** A proxy that only routes /chat, and an app that mounts it. */
  async function chatOnly() {
    const up = await startUpstream();
    const proxy = createProxy({ logger: quietLogger(), routes: { '/chat': up.url } });
    return { up, proxy };
  }

  /** The other listener answers `/mine` itself, and a routed upgrade (`/chat`) still reaches the upstream. */
  async function assertBothListenersServe(front, up) {
    const mine = await rawExchange(front.port, handshake('/mine'));
    assert.equal(mine, MINE_ANSWER);
    const { ws } = await openSocket(`${front.wsUrl}/chat`);
    ws.close();
    assert.equal(up.handshakes.length, 1);
  }

  /** Opens a WebSocket on `/other`, which the other listener must have answered; returns it. */
  async function openOther(front) {
    const other = await openSocket(`${front.wsUrl}/other`);
    assert.equal(
      other.greeting,
      'other:hello',
      `the other listener's handshake completed (got ${JSON.stringify(other.refused)})`,
    );
    return other.ws;
  }

  for (const handlerKind of ['proxy', 'express5 app']) {
    const handlerOf = (proxy) => {
      if (handlerKind === 'proxy') return proxy;
      const app = express5();
      app.use(proxy);
      return app;
    };

    test(
      `'reject' (${handlerKind}): 404 and close, even with another listener; routed upgrades still tunnel`,
      BOUND,
      async () => {
        const { up, proxy } = await chatOnly();
        const front = await serve(handlerOf(proxy), { unmatched: 'reject' });
        const raw = await rawExchange(front.port, handshake('/nothing'));
        assert.equal(statusOf(raw), 404);
        const { ws, greeting } = await openSocket(`${front.wsUrl}/chat`);
        assert.equal(greeting, 'hello:/chat');
        assert.equal(up.handshakes.length, 1);
        ws.close();
      },
    );

    test(
      `'ignore' (${handlerKind}): the socket is left to another upgrade listener, which completes its handshake`,
      BOUND,
      async () => {
        const { up, proxy } = await chatOnly();
        const front = await serve(handlerOf(proxy), { unmatched: 'ignore', other: 'after' });
        const other = await openOther(front);
        assert.equal(await roundTrip(other, 'x'), 'other:x');
        other.close();
        await assertBothListenersServe(front, up);
        assert.deepEqual(front.others.seen, ['/other', '/mine', '/chat']);
      },
    );

    test(
      `'auto' (${handlerKind}): rejects with 404 when attach is the only listener`,
      BOUND,
      async () => {
        const { proxy } = await chatOnly();
        const front = await serve(handlerOf(proxy));
        assert.equal(front.server.listenerCount('upgrade'), 1);
        const raw = await rawExchange(front.port, handshake('/nothing'));
        assert.equal(statusOf(raw), 404);
      },
    );

    for (const order of ['after', 'before']) {
      test(
        `'auto' (${handlerKind}): ignores when another listener exists (${order} attach)`,
        BOUND,
        async () => {
          const { up, proxy } = await chatOnly();
          const front = await serve(handlerOf(proxy), { other: order });
          const other = await openOther(front);
          other.close();
          await assertBothListenersServe(front, up);
        },
      );
    }
  }

  for (const kind of ['express5', 'express4', 'connect']) {
    for (const [unmatched, order] of [
      ['auto', 'after'],
      ['auto', 'before'],
      ['ignore', 'after'],
      ['ignore', 'before'],
    ]) {
      test(
        `${kind}, '${unmatched}', other listener ${order} attach: the app's catch-all 404 never answers an upgrade no viaduct route takes, however late the other listener answers; a 401 in front of a viaduct route still does`,
        BOUND,
        async () => {
          const { up, proxy } = await chatOnly();
          const app = APPS[kind]();
          let others;
          app.use((req, res, next) => {
            if (req.url.startsWith('/chat') && req.headers['x-token'] !== 'ok') {
              res.statusCode = 401;
              res.end('denied');
            } else {
              next();
            }
          });
          app.use(proxy);
          app.use((_req, res) => {
            res.statusCode = 404;
            res.setHeader('content-type', 'text/plain');
            res.end('nope');
            others.appAnswered.resolve();
          });
          const front = await serve(app, { unmatched, other: order });
          others = front.others;

          const raw = await rawExchange(front.port, handshake('/other'), { until: /other:hello/ });
          assert.equal(statusOf(raw), 101);
          assert.deepEqual(
            statusLines(raw),
            ['HTTP/1.1 101 Switching Protocols'],
            'our buffered 404 was dropped',
          );
          assert.ok(!raw.includes('nope'));

          // Answered by the other listener long after the app's 404 was ready: only its answer arrives.
          const late = await rawExchange(front.port, handshake('/late'));
          assert.equal(late, LATE_ANSWER);

          // In front of a viaduct route, the middleware's answer is the one the client gets.
          const denied = await rawExchange(front.port, handshake('/chat'));
          assert.equal(statusOf(denied), 401);
          assert.equal(bodyOf(denied), 'denied');
          assert.equal(up.handshakes.length, 0);
          const { ws, greeting } = await openSocket(`${front.wsUrl}/chat`, {
            headers: { 'x-token': 'ok' },
          });
          assert.equal(greeting, 'hello:/chat');
          ws.close();
        },
      );
    }
  }
});

describe('one upgrade, at most one route', () => {
  const layouts = [
    ['attach(server, proxyA) then attach(server, app using proxyA)', 'A', 'proxyFirst'],
    ['attach(server, app using proxyA) then attach(server, proxyA)', 'A', 'appFirst'],
    ['attach(server, proxyA) then attach(server, app using proxyB)', 'B', 'proxyFirst'],
    ['attach(server, app using proxyB) then attach(server, proxyA)', 'B', 'appFirst'],
  ];
  for (const [name, inApp, order] of layouts) {
    test(`${name}: one handshake upstream, one 101 to the client`, BOUND, async () => {
      const upA = await startUpstream();
      const upB = await startUpstream();
      const proxyA = createProxy({ logger: quietLogger(), routes: { '/chat': upA.url } });
      const proxyB = createProxy({ logger: quietLogger(), routes: { '/chat': upB.url } });
      const app = express5();
      app.use(inApp === 'A' ? proxyA : proxyB);
      const server = http.createServer(app);
      const logger = quietLogger();
      if (order === 'proxyFirst') {
        attach(server, proxyA, { logger });
        attach(server, app, { logger });
      } else {
        attach(server, app, { logger });
        attach(server, proxyA, { logger });
      }
      const port = await listen(server);

      // The handshake and a first frame in one write; read until the echo of that frame.
      const raw = await rawExchange(
        port,
        Buffer.concat([Buffer.from(handshake('/chat/x')), textFrame('ping')]),
        { until: /echo:ping/ },
      );
      assert.deepEqual(statusLines(raw), ['HTTP/1.1 101 Switching Protocols']);
      assert.ok(raw.includes('hello:/chat/x'));
      assert.equal(
        upA.handshakes.length + upB.handshakes.length,
        1,
        'exactly one handshake reached an upstream',
      );
      const opened =
        proxyA.stats().tunnels.total + (inApp === 'B' ? proxyB.stats().tunnels.total : 0);
      const rejected =
        proxyA.stats().tunnels.rejected + (inApp === 'B' ? proxyB.stats().tunnels.rejected : 0);
      assert.equal(opened, 1);
      assert.equal(rejected, 0);
    });
  }
});

describe('detach and argument checks', () => {
  test('detach() removes the listener: upgrades are no longer tunnelled', BOUND, async () => {
    const up = await startUpstream();
    const proxy = createProxy({ target: up.url, logger: quietLogger() });
    const server = http.createServer(proxy);
    const detach = attach(server, proxy, { logger: quietLogger() });
    const port = await listen(server);
    assert.equal(server.listenerCount('upgrade'), 1);
    const before = await rawExchange(port, handshake('/chat'), { until: /hello:\/chat/ });
    assert.equal(statusOf(before), 101);

    detach();
    assert.equal(server.listenerCount('upgrade'), 0);
    // No upgrade listener left: node:http hands the request to the request handler as plain HTTP.
    const afterDetach = await rawExchange(port, handshake('/chat'), { until: /\r\n\r\n/ });
    assert.notEqual(statusOf(afterDetach), 101);
    assert.equal(up.handshakes.length, 1);
  });

  test('detach() removes only its own listener', BOUND, async () => {
    const server = http.createServer();
    const other = () => {};
    server.on('upgrade', other);
    const detachA = attach(
      server,
      createProxy({ target: 'http://127.0.0.1:9', logger: quietLogger() }),
      { logger: quietLogger() },
    );
    const detachB = attach(server, express5(), { logger: quietLogger() });
    assert.equal(server.listenerCount('upgrade'), 3);
    detachA();
    assert.equal(server.listenerCount('upgrade'), 2);
    detachB();
    assert.deepEqual(server.listeners('upgrade'), [other]);
  });

  test(
    'an invalid unmatched value or a non-function handler throws a TypeError, and adds no listener',
    BOUND,
    () => {
      const server = http.createServer();
      const proxy = createProxy({ target: 'http://127.0.0.1:9', logger: quietLogger() });
      assert.throws(() => attach(server, proxy, { unmatched: 'sometimes' }), TypeError);
      assert.throws(() => attach(server, proxy, { unmatched: true }), TypeError);
      assert.throws(() => attach(server, {}), TypeError);
      assert.throws(() => attach(server, null), TypeError);
      assert.throws(() => attach(server, 'http://127.0.0.1:9'), TypeError);
      assert.equal(server.listenerCount('upgrade'), 0);
      // The valid modes are accepted.
      for (const unmatched of ['auto', 'reject', 'ignore'])
        attach(server, proxy, { unmatched, logger: quietLogger() });
      assert.equal(server.listenerCount('upgrade'), 3);
    },
  );
});

describe('client resets during dispatch', () => {
  for (const kind of ['express5', 'connect']) {
    test(
      `${kind}: a reset while an async middleware awaits does not crash; nothing is left open upstream`,
      BOUND,
      async () => {
        const up = await startUpstream();
        const upstreamSockets = [];
        up.wss.on('connection', (ws, req) => upstreamSockets.push({ url: req.url, ws }));
        const proxy = createProxy({ target: up.url, logger: quietLogger() });

        const inMiddleware = deferred();
        const gate = deferred();
        const afterNext = deferred();
        const app = APPS[kind]();
        app.use(async (req, _res, next) => {
          if (req.url === '/held') {
            inMiddleware.resolve(req);
            await gate.promise;
            next();
            afterNext.resolve();
            return;
          }
          next();
        });
        app.use(proxy);
        const front = await serve(app);

        await handshakeThenReset(front.port, '/held', inMiddleware.promise);
        gate.resolve();
        await afterNext.promise;

        // The process is alive and the server still tunnels.
        const { ws, greeting } = await openSocket(`${front.wsUrl}/after`);
        assert.equal(greeting, 'hello:/after');
        await assertOnlyLiveTunnel(proxy, upstreamSockets, ws);
      },
    );
  }
});
