// The route table and the forwarded path, on the HTTP path and the upgrade path alike.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createProxy } from 'viaduct';
import { closeAll, listen, quietLogger, startFront, startUpstream } from '../helpers/servers.mjs';
import { handshake, openSocket, rawExchange, rawRequest, request } from '../helpers/clients.mjs';

after(closeAll);

/** Starts one upstream per name; each answers with its name and the path it received. */
async function namedUpstreams(...names) {
  const upstreams = {};
  for (const name of names) {
    upstreams[name] = await startUpstream((_req, res) => {
      res.setHeader('x-upstream', name);
      return false;
    });
  }
  return upstreams;
}

async function via(front, path, headers = {}) {
  const res = await request(front.url + path, { headers });
  return {
    status: res.status,
    upstream: res.headers['x-upstream'],
    url: res.status === 200 ? res.json().url : undefined,
  };
}

describe('route table', () => {
  test('most specific wins whatever the key order: host+path, then host, then path (longest prefix)', async () => {
    const u = await namedUpstreams('api', 'apiV2', 'admin', 'adminWs', 'fallback');
    const proxy = createProxy({
      target: u.fallback.url,
      routes: {
        '/api': u.api.url,
        'admin.localhost/ws': u.adminWs.url,
        'admin.localhost': u.admin.url,
        '/api/v2': u.apiV2.url,
      },
    });
    const front = await startFront('express5', proxy);
    assert.equal((await via(front, '/api/users')).upstream, 'api');
    assert.equal((await via(front, '/api/v2/users')).upstream, 'apiV2');
    assert.equal((await via(front, '/api/v2')).upstream, 'apiV2');
    assert.equal((await via(front, '/elsewhere')).upstream, 'fallback');
    assert.equal((await via(front, '/api/x', { host: 'admin.localhost:3000' })).upstream, 'admin');
    assert.equal((await via(front, '/ws/room', { host: 'admin.localhost' })).upstream, 'adminWs');
    assert.equal((await via(front, '/wsx', { host: 'admin.localhost' })).upstream, 'admin');
  });

  test('a path prefix matches only at a segment boundary', async () => {
    const u = await namedUpstreams('api', 'fallback');
    const front = await startFront(
      'node',
      createProxy({ target: u.fallback.url, routes: { '/api': u.api.url } }),
    );
    assert.equal((await via(front, '/api')).upstream, 'api');
    assert.equal((await via(front, '/api/x')).upstream, 'api');
    assert.equal((await via(front, '/api?q=1')).upstream, 'api');
    assert.equal((await via(front, '/apix')).upstream, 'fallback');
    assert.equal((await via(front, '/ap')).upstream, 'fallback');
  });

  test('host keys match case-insensitively, ignore a missing port in the key, and honour a port in it', async () => {
    const u = await namedUpstreams('any', 'port8080', 'fallback');
    const proxy = createProxy({
      target: u.fallback.url,
      routes: { 'Example.COM': u.any.url, 'example.com:8080': u.port8080.url },
    });
    const front = await startFront('node', proxy);
    assert.equal((await via(front, '/', { host: 'EXAMPLE.com' })).upstream, 'any');
    assert.equal((await via(front, '/', { host: 'example.com:3000' })).upstream, 'any');
    assert.equal((await via(front, '/', { host: 'example.com:8080' })).upstream, 'port8080');
    assert.equal((await via(front, '/', { host: 'other.com' })).upstream, 'fallback');
  });

  test('no route: the middleware calls next(), plain node:http answers 404, upgrade() returns false untouched', async () => {
    const u = await namedUpstreams('api');
    const proxy = createProxy({ routes: { '/api': u.api.url } });
    const front = await startFront('express5', proxy, {});
    front.app.use((_req, res) => res.status(418).send('next was called'));
    const res = await request(`${front.url}/other`);
    assert.equal(res.status, 418);
    assert.equal(res.text, 'next was called');

    const nodeFront = await startFront('node', proxy);
    const plain = await request(`${nodeFront.url}/other`);
    assert.equal(plain.status, 404);

    // By hand, as the DESIGN shows: a socket upgrade() does not take is left exactly as it was.
    const results = [];
    const server = http.createServer();
    server.on('upgrade', (req, socket, head) => {
      const taken = proxy.upgrade(req, socket, head);
      results.push(taken);
      if (!taken) socket.end('HTTP/1.1 299 Left alone\r\n\r\n');
    });
    const port = await listen(server);
    const raw = await rawExchange(port, handshake('/other'));
    assert.deepEqual(results, [false]);
    assert.equal(raw, 'HTTP/1.1 299 Left alone\r\n\r\n');
  });

  test('router(req) is consulted first, sync or async, and undefined falls through to the table', async () => {
    const u = await namedUpstreams('table', 'sync', 'async');
    const proxy = createProxy({
      routes: { '/': u.table.url },
      router(req) {
        if (req.url.startsWith('/sync')) return u.sync.url;
        if (req.url.startsWith('/async'))
          return Promise.resolve({
            target: u.async.url,
            headers: { request: { 'x-routed': 'yes' } },
          });
        return undefined;
      },
    });
    const front = await startFront('connect', proxy);
    assert.equal((await via(front, '/sync/a')).upstream, 'sync');
    assert.equal((await via(front, '/async/a')).upstream, 'async');
    assert.equal(u.async.seen.at(-1).headers['x-routed'], 'yes');
    assert.equal((await via(front, '/other')).upstream, 'table');
    const ws = await openSocket(`${front.wsUrl}/async/chat`);
    assert.equal(ws.greeting, 'hello:/async/chat');
    assert.equal(u.async.handshakes.length, 1);
    ws.ws.close();
    assert.equal(proxy.stats().routes.router.requests.total, 2);
  });

  test('a router that throws or rejects gives 500 and a log line, not a crash', async () => {
    const lines = [];
    const logger = {
      debug() {},
      info() {},
      warn: (l) => lines.push(l),
      error: (l) => lines.push(l),
    };
    const proxy = createProxy({
      logger,
      router(req) {
        if (req.url === '/throw') throw new Error('router exploded');
        return Promise.reject(new Error('router rejected'));
      },
    });
    const front = await startFront('node', proxy);
    assert.equal((await request(`${front.url}/throw`)).status, 500);
    assert.equal((await request(`${front.url}/reject`)).status, 500);
    assert.ok(lines.some((l) => l.includes('router exploded')));
    assert.ok(lines.some((l) => l.includes('router rejected')));
  });
});

describe('forwarded path', () => {
  test('mount-relative path, then stripPrefix, then joined to the target path; req.url untouched', async () => {
    const up = await startUpstream();
    const proxy = createProxy({
      routes: {
        '/chat': { target: `${up.url}/base`, stripPrefix: true },
        '/keep': `${up.url}/base/`,
      },
    });
    let urlAfter;
    const front = await startFront('express4', proxy, { mount: '/v1' });
    front.app.use((_req, _res, next) => next());
    proxy.on('proxyReq', (_proxyReq, req) => (urlAfter = req.url));
    assert.equal((await via(front, '/v1/chat/room?x=1')).url, '/base/room?x=1');
    assert.equal(urlAfter, '/chat/room?x=1');
    assert.equal((await via(front, '/v1/chat')).url, '/base/');
    assert.equal((await via(front, '/v1/chat?q=1')).url, '/base/?q=1');
    assert.equal((await via(front, '/v1/keep/a')).url, '/base/keep/a');
  });

  test('the query string is forwarded byte for byte', async () => {
    const up = await startUpstream();
    const front = await startFront('node', createProxy(up.url));
    assert.equal(
      (await via(front, '/a?next=http://x//y&z=%2F%2F')).url,
      '/a?next=http://x//y&z=%2F%2F',
    );
  });

  test('pathRewrite: the first matching rule of a table, or a function', async () => {
    const up = await startUpstream();
    const proxy = createProxy({
      routes: {
        '/old': { target: up.url, pathRewrite: { '^/old/a': '/new-a', '^/old': '/new' } },
        '/fn': {
          target: up.url,
          pathRewrite: (path, req) =>
            req.method === 'GET' ? path.replace('/fn', 'no-leading-slash') : undefined,
        },
      },
    });
    const front = await startFront('express5', proxy);
    assert.equal((await via(front, '/old/a/b')).url, '/new-a/b');
    assert.equal((await via(front, '/old/b?q')).url, '/new/b?q');
    assert.equal((await via(front, '/fn/x')).url, '/no-leading-slash/x');
  });

  test('a rewrite to a path Node cannot send (a space in it) is a 500 on both paths, and logged', async () => {
    const up = await startUpstream();
    const logger = quietLogger();
    const proxy = createProxy({
      target: up.url,
      pathRewrite: (path) => `${path} x`,
      logger,
    });
    const front = await startFront('node', proxy);
    const res = await rawExchange(
      front.port,
      rawRequest('GET', '/a', { Host: 'x', Connection: 'close' }),
    );
    assert.match(res, /^HTTP\/1\.1 500 /);
    const upgrade = await rawExchange(front.port, handshake('/a'));
    assert.match(upgrade, /^HTTP\/1\.1 500 /);
    assert.equal(up.seen.length + up.handshakes.length, 0);
    const logged = logger.lines.filter(([, message]) =>
      message.includes('ERR_UNESCAPED_CHARACTERS'),
    );
    assert.deepEqual(
      logged.map(([level]) => level),
      ['error', 'error'],
    );
  });

  test('the same path rules hold for upgrades', async () => {
    const up = await startUpstream();
    const proxy = createProxy({
      routes: {
        '/chat': { target: `${up.url}/base`, stripPrefix: true, pathRewrite: { '^/room': '/r' } },
      },
    });
    const front = await startFront('express5', proxy, { mount: '/v1' });
    const { ws, greeting } = await openSocket(`${front.wsUrl}/v1/chat/room/7?x=1`);
    assert.equal(greeting, 'hello:/base/r/7?x=1');
    ws.close();
  });

  for (const path of [
    '/api/../admin',
    '/api/./x',
    '/api/%2e%2E/admin',
    '/api/%2e/x',
    '/api/..%2fadmin',
    '/api\\..\\admin',
    '/api/%5c..',
    '/api/..;/admin',
  ]) {
    test(`dot-segments and backslashes are refused with 400 on both paths: ${path}`, async () => {
      const up = await startUpstream();
      const front = await startFront(
        'node',
        createProxy({ target: up.url, routes: { '/api': up.url }, logger: quietLogger() }),
      );
      const res = await rawExchange(
        front.port,
        rawRequest('GET', path, { Host: 'x', Connection: 'close' }),
      );
      assert.match(res, /^HTTP\/1\.1 400 /);
      const upgrade = await rawExchange(front.port, handshake(path));
      assert.match(upgrade, /^HTTP\/1\.1 400 /);
      assert.equal(up.seen.length + up.handshakes.length, 0);
    });
  }
});
