// Header handling on the HTTP path and the upgrade path alike: hop-by-hop headers, upstream
// keep-alive, the request and response policy, invalid values, forwarding headers, trustProxy,
// changeOrigin and Expect.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { createProxy } from 'viaduct';
import {
  FRONT_KINDS,
  closeAll,
  deadPort,
  quietLogger,
  refusingUpstream,
  startFront,
  startUpstream,
} from '../helpers/servers.mjs';
import {
  HANDSHAKE_ACCEPT as ACCEPT,
  handshake,
  openSocket,
  parseResponse,
  rawExchange,
  rawRequest,
  request,
  roundTrip,
  statusOf,
} from '../helpers/clients.mjs';

after(closeAll);

const END_OF_HEAD = /\r\n\r\n/;

/** Sends a handshake and resolves with the parsed head of the answer (101 or otherwise). */
async function upgradeHead(port, path, headers = {}) {
  const raw = await rawExchange(port, handshake(path, headers), { until: END_OF_HEAD });
  return parseResponse(raw);
}

const INCOMING_FORWARDING = {
  'x-forwarded-for': '1.2.3.4',
  'x-forwarded-proto': 'https',
  'x-forwarded-host': 'orig.example',
  'x-forwarded-port': '443',
  forwarded: 'for=1.2.3.4',
};
const FORWARDING_NAMES = Object.keys(INCOMING_FORWARDING);

describe('hop-by-hop headers', () => {
  test('request: hop-by-hop and Connection-listed headers never reach the upstream over HTTP', async () => {
    const up = await startUpstream();
    const front = await startFront('node', createProxy({ target: up.url, logger: quietLogger() }));
    const raw = await rawExchange(
      front.port,
      rawRequest('GET', '/hop', {
        Host: `127.0.0.1:${front.port}`,
        Connection: 'close, X-Secret',
        'Keep-Alive': 'timeout=5, max=100',
        'Proxy-Connection': 'keep-alive',
        TE: 'trailers',
        Trailer: 'X-Checksum',
        Upgrade: 'h2c',
        'Proxy-Authorization': 'Basic dXNlcjpwYXNz',
        'X-Secret': '1',
        'X-End-To-End': 'kept',
      }),
    );
    assert.equal(parseResponse(raw).status, 200);
    assert.equal(up.seen.length, 1);
    const seen = up.seen[0].headers;
    for (const name of [
      'keep-alive',
      'proxy-connection',
      'te',
      'trailer',
      'upgrade',
      'proxy-authorization',
      'x-secret',
    ]) {
      assert.equal(seen[name], undefined, `${name} reached the upstream`);
    }
    assert.notEqual(seen.connection, 'close, X-Secret');
    assert.doesNotMatch(String(seen.connection), /secret|close/i);
    assert.equal(seen['x-end-to-end'], 'kept');
  });

  test('request: hop-by-hop and Connection-listed headers never reach the upstream on an upgrade', async () => {
    const up = await startUpstream();
    const front = await startFront(
      'express5',
      createProxy({ target: up.url, logger: quietLogger() }),
    );
    const head = await upgradeHead(front.port, '/chat', {
      connection: 'Upgrade, X-Secret',
      upgrade: 'WebSocket',
      'keep-alive': 'timeout=5',
      'proxy-connection': 'keep-alive',
      te: 'trailers',
      trailer: 'X-Checksum',
      'proxy-authorization': 'Basic dXNlcjpwYXNz',
      'x-secret': '1',
      'x-end-to-end': 'kept',
    });
    assert.equal(head.status, 101);
    assert.equal(up.handshakes.length, 1);
    const seen = up.handshakes[0].headers;
    for (const name of [
      'keep-alive',
      'proxy-connection',
      'te',
      'trailer',
      'proxy-authorization',
      'x-secret',
    ]) {
      assert.equal(seen[name], undefined, `${name} reached the upstream`);
    }
    assert.equal(seen.connection, 'upgrade');
    assert.equal(seen.upgrade, 'WebSocket', "the client's Upgrade value is forwarded as is");
    assert.equal(seen['x-end-to-end'], 'kept');
  });

  test('response: hop-by-hop and Connection-listed headers from the upstream never reach the client', async () => {
    const up = await startUpstream((_req, res) => {
      res.setHeader('Keep-Alive', 'timeout=99, max=7');
      res.setHeader('Proxy-Authenticate', 'Basic realm="up"');
      res.setHeader('Trailer', 'X-Checksum');
      res.setHeader('Connection', 'x-secret');
      res.setHeader('X-Secret', '1');
      res.setHeader('X-End-To-End', 'kept');
      res.write('bo');
      res.addTrailers({ 'X-Checksum': 'abc' });
      res.end('dy');
    });
    // Control: the upstream really sends all of them.
    const direct = parseResponse(
      await rawExchange(up.port, rawRequest('GET', '/', { Host: 'x' }), { until: END_OF_HEAD }),
    );
    assert.equal(direct.headers['keep-alive'], 'timeout=99, max=7');
    assert.equal(direct.headers['proxy-authenticate'], 'Basic realm="up"');
    assert.equal(direct.headers.trailer, 'X-Checksum');
    assert.equal(direct.headers['x-secret'], '1');
    assert.equal(direct.headers.connection, 'x-secret');

    const front = await startFront(
      'express5',
      createProxy({ target: up.url, logger: quietLogger() }),
    );
    const res = await request(`${front.url}/hop`);
    assert.equal(res.status, 200);
    assert.equal(res.text, 'body');
    assert.equal(res.headers['x-end-to-end'], 'kept');
    assert.equal(res.headers['keep-alive'], undefined);
    assert.equal(res.headers['proxy-authenticate'], undefined);
    assert.equal(res.headers.trailer, undefined);
    assert.equal(res.headers['x-secret'], undefined);
    assert.doesNotMatch(String(res.headers.connection), /secret/i);
  });

  test('response: hop-by-hop headers of a 101 never reach the client; the proxy sets Connection/Upgrade', async () => {
    const up = await startUpstream();
    up.wss.on('headers', (headers) =>
      headers.push(
        'Keep-Alive: timeout=9',
        'Connection: x-secret',
        'X-Secret: 1',
        'Proxy-Authenticate: Basic',
        'X-End-To-End: kept',
      ),
    );
    const front = await startFront('node', createProxy({ target: up.url, logger: quietLogger() }));
    const head = await upgradeHead(front.port, '/chat');
    assert.equal(head.status, 101);
    assert.equal(head.headers['sec-websocket-accept'], ACCEPT);
    assert.equal(head.headers['x-end-to-end'], 'kept');
    assert.equal(head.headers['keep-alive'], undefined);
    assert.equal(head.headers['x-secret'], undefined);
    assert.equal(head.headers['proxy-authenticate'], undefined);
    assert.equal(head.headers.connection, 'Upgrade');
    assert.equal(head.headers.upgrade, 'websocket');
  });

  test('response: an upstream refusal of an upgrade reaches the client without its hop-by-hop headers', async () => {
    const up = await refusingUpstream(
      'HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nKeep-Alive: timeout=9\r\n' +
        'Connection: keep-alive, x-secret\r\nX-Secret: 1\r\nProxy-Authenticate: Basic\r\nX-End-To-End: kept\r\n\r\nnope',
    );
    const front = await startFront('node', createProxy({ target: up.url, logger: quietLogger() }));
    const answer = parseResponse(await rawExchange(front.port, handshake('/chat')));
    assert.equal(answer.status, 403);
    assert.equal(answer.body, 'nope');
    assert.equal(answer.headers['x-end-to-end'], 'kept');
    assert.equal(answer.headers['keep-alive'], undefined);
    assert.equal(answer.headers['x-secret'], undefined);
    assert.equal(answer.headers['proxy-authenticate'], undefined);
    assert.equal(answer.headers.connection, 'close');
  });
});

describe('upstream connections', () => {
  test('ordinary requests keep upstream keep-alive: same upstream socket, no Connection: close', async () => {
    const up = await startUpstream();
    const front = await startFront('node', createProxy({ target: up.url, logger: quietLogger() }));
    // The client sends Connection: close on each (agent: false); that is its hop, not the upstream's.
    assert.equal((await request(`${front.url}/one`)).status, 200);
    assert.equal((await request(`${front.url}/two`)).status, 200);
    assert.equal(up.seen.length, 2);
    assert.ok(
      up.seen[0].socket === up.seen[1].socket,
      'the second request came on a new upstream connection',
    );
    for (const record of up.seen)
      assert.notEqual(String(record.headers.connection).toLowerCase(), 'close');
  });

  test('an upgrade sends Connection: upgrade and the Upgrade value; the 101 carries Accept, Connection, Upgrade and the policy', async () => {
    const up = await startUpstream();
    const proxy = createProxy({
      target: up.url,
      logger: quietLogger(),
      headers: { response: { 'x-policy': 'on-101' } },
    });
    const front = await startFront('express4', proxy);
    const head = await upgradeHead(front.port, '/room');
    assert.equal(head.status, 101);
    assert.equal(head.headers['sec-websocket-accept'], ACCEPT);
    assert.equal(head.headers.connection, 'Upgrade');
    assert.equal(head.headers.upgrade, 'websocket');
    assert.equal(head.headers['x-policy'], 'on-101');
    assert.equal(up.handshakes[0].headers.connection, 'upgrade');
    assert.equal(up.handshakes[0].headers.upgrade, 'websocket');

    const { ws, greeting } = await openSocket(`${front.wsUrl}/room`);
    assert.equal(greeting, 'hello:/room');
    assert.equal(await roundTrip(ws, 'x'), 'echo:x');
    ws.close();
  });
});

describe('headers.request', () => {
  const rules = {
    'x-string': 'str',
    'X-Number': 42,
    'x-array': ['a', 'b'],
    cookie: null,
    'x-from-fn': (req) => `fn:${req.method}:${req.url}`,
    'x-fn-null': () => null,
    'x-fn-undefined': () => undefined,
  };
  const clientHeaders = {
    cookie: 'session=1',
    'x-fn-null': 'client',
    'x-fn-undefined': 'client',
    'x-string': 'client',
  };

  function assertPolicy(seen) {
    assert.equal(seen.headers['x-string'], 'str');
    assert.equal(seen.headers['x-number'], '42');
    const arrayLines = [];
    for (let i = 0; i < seen.rawHeaders.length; i += 2)
      if (seen.rawHeaders[i].toLowerCase() === 'x-array') arrayLines.push(seen.rawHeaders[i + 1]);
    assert.deepEqual(arrayLines, ['a', 'b']);
    assert.equal(seen.headers.cookie, undefined);
    assert.equal(seen.headers['x-fn-null'], undefined);
    assert.equal(seen.headers['x-fn-undefined'], 'client');
  }

  for (const kind of FRONT_KINDS) {
    test(`set, remove and function rules on HTTP requests and upgrade requests (${kind})`, async () => {
      const up = await startUpstream();
      const front = await startFront(
        kind,
        createProxy({ target: up.url, logger: quietLogger(), headers: { request: rules } }),
      );
      const res = await request(`${front.url}/p?q=1`, { headers: clientHeaders });
      assert.equal(res.status, 200);
      assertPolicy(up.seen[0]);
      assert.equal(up.seen[0].headers['x-from-fn'], 'fn:GET:/p?q=1');

      const head = await upgradeHead(front.port, '/w?q=2', clientHeaders);
      assert.equal(head.status, 101);
      assertPolicy(up.handshakes[0]);
      assert.equal(up.handshakes[0].headers['x-from-fn'], 'fn:GET:/w?q=2');
    });
  }

  test('a route override replaces top-level rules of the same name and keeps the others, on both paths', async () => {
    const up = await startUpstream();
    const proxy = createProxy({
      logger: quietLogger(),
      headers: { request: { 'x-a': 'top', 'x-b': 'top', 'x-c': 'top' } },
      routes: {
        '/route': { target: up.url, headers: { request: { 'X-A': 'route', 'x-c': null } } },
        '/plain': up.url,
      },
    });
    const front = await startFront('express5', proxy);
    await request(`${front.url}/route/x`);
    await request(`${front.url}/plain/x`);
    await upgradeHead(front.port, '/route/ws');
    const [routed, plain] = up.seen;
    assert.equal(routed.headers['x-a'], 'route');
    assert.equal(routed.headers['x-b'], 'top');
    assert.equal(routed.headers['x-c'], undefined);
    assert.equal(plain.headers['x-a'], 'top');
    assert.equal(plain.headers['x-c'], 'top');
    assert.equal(up.handshakes[0].headers['x-a'], 'route');
    assert.equal(up.handshakes[0].headers['x-b'], 'top');
    assert.equal(up.handshakes[0].headers['x-c'], undefined);
  });
});

describe('the response head', () => {
  // Names in mixed case, a Set-Cookie on either side of other headers, a reason phrase of the upstream's own.
  const HEAD =
    'HTTP/1.1 299 Quite Custom\r\nX-First: 1\r\nSet-Cookie: a=1; Domain=up.example\r\n' +
    'Content-Type: text/plain\r\nX-Both: upstream\r\nSet-Cookie: b=2; Domain=up.example\r\n' +
    'Content-Length: 2\r\n\r\n';

  /** The head a front sent, its lines in order, without the Date Node adds. */
  async function headLines(port) {
    const raw = await rawExchange(
      port,
      rawRequest('GET', '/head', { Host: `127.0.0.1:${port}`, Connection: 'close' }),
    );
    const end = raw.indexOf('\r\n\r\n');
    assert.equal(raw.slice(end + 4), 'ok', 'the body follows the head');
    return raw
      .slice(0, end)
      .split('\r\n')
      .filter((line) => !/^date:/i.test(line));
  }

  /** Headers an app set before the proxy ran: kept, but for the one the upstream also sends. */
  function appHeaders(_req, res, next) {
    res.setHeader('X-From-App', 'app');
    res.setHeader('X-Both', 'app');
    next();
  }

  test("status line and headers cross in the upstream's order, merged over the app's, with and without a cookie rewrite", async () => {
    const up = await refusingUpstream(`${HEAD}ok`);
    for (const kind of FRONT_KINDS) {
      for (const rewrite of [undefined, 'front.example']) {
        const proxy = createProxy({
          target: up.url,
          logger: quietLogger(),
          ...(rewrite && { cookieDomainRewrite: rewrite }),
        });
        const front = await startFront(
          kind,
          proxy,
          kind === 'node' ? {} : { before: [appHeaders] },
        );
        const domain = rewrite ?? 'up.example';
        // A header the app set keeps its place, with the upstream's name and value.
        const both = 'x-both: upstream';
        const app = kind === 'node' ? [] : ['X-From-App: app', both];
        const express = kind.startsWith('express') ? ['X-Powered-By: Express'] : [];
        assert.deepEqual(
          await headLines(front.port),
          [
            'HTTP/1.1 299 Quite Custom',
            ...express,
            ...app,
            'x-first: 1',
            `set-cookie: a=1; Domain=${domain}`,
            `set-cookie: b=2; Domain=${domain}`,
            'content-type: text/plain',
            ...(kind === 'node' ? [both] : []),
            'content-length: 2',
            'connection: close',
          ],
          `${kind}, ${rewrite ? 'cookies rewritten' : 'no rewrite'}`,
        );
      }
    }
  });

  test("an empty reason phrase gets the status code's own", async () => {
    const up = await refusingUpstream('HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\nok');
    for (const autoRewrite of [false, true]) {
      const front = await startFront(
        'node',
        createProxy({ target: up.url, logger: quietLogger(), autoRewrite }),
      );
      const [statusLine] = await headLines(front.port);
      assert.equal(statusLine, 'HTTP/1.1 200 OK', `autoRewrite: ${autoRewrite}`);
    }
  });
});

describe('headers.response', () => {
  const rules = {
    'x-policy': 'yes',
    'x-list': ['1', '2'],
    'x-drop': null,
    'x-fn': (req) => `fn:${req.method}`,
    'x-fn-null': () => null,
    'x-fn-undefined': () => undefined,
  };

  /** What `rules` leave of a response whose upstream set x-drop, x-fn-null and x-fn-undefined. */
  function assertRulesApplied(headers) {
    assert.equal(headers['x-policy'], 'yes');
    assert.equal(headers['x-list'], '1, 2');
    assert.equal(headers['x-drop'], undefined);
    assert.equal(headers['x-fn'], 'fn:GET');
    assert.equal(headers['x-fn-null'], undefined);
    assert.equal(headers['x-fn-undefined'], 'upstream');
  }

  test('set, remove and function rules on proxied responses', async () => {
    const up = await startUpstream((_req, res) => {
      res.setHeader('x-drop', 'upstream');
      res.setHeader('x-fn-null', 'upstream');
      res.setHeader('x-fn-undefined', 'upstream');
      res.setHeader('x-policy', 'upstream');
      res.end('ok');
    });
    const front = await startFront(
      'connect',
      createProxy({ target: up.url, logger: quietLogger(), headers: { response: rules } }),
    );
    const res = await request(`${front.url}/r`);
    assert.equal(res.status, 200);
    assertRulesApplied(res.headers);
  });

  test("'x-powered-by': null removes Express's header", async () => {
    const up = await startUpstream();
    const control = await startFront(
      'express5',
      createProxy({ target: up.url, logger: quietLogger() }),
    );
    assert.equal((await request(`${control.url}/`)).headers['x-powered-by'], 'Express');
    for (const kind of ['express5', 'express4']) {
      const front = await startFront(
        kind,
        createProxy({
          target: up.url,
          logger: quietLogger(),
          headers: { response: { 'x-powered-by': null } },
        }),
      );
      const res = await request(`${front.url}/`);
      assert.equal(res.status, 200);
      assert.equal(res.headers['x-powered-by'], undefined, kind);
    }
  });

  test('applied to proxy-made errors: 502 from a dead upstream and 400 from a dot-segment path, on both paths', async () => {
    const port = await deadPort();
    const logger = quietLogger();
    const front = await startFront(
      'express5',
      createProxy({ target: `http://127.0.0.1:${port}`, logger, headers: { response: rules } }),
    );
    const bad = await request(`${front.url}/x`);
    assert.equal(bad.status, 502);
    assert.equal(bad.headers['x-policy'], 'yes');
    assert.equal(bad.headers['x-fn'], 'fn:GET');
    assert.equal(bad.headers['x-list'], '1, 2');

    const dots = parseResponse(
      await rawExchange(
        front.port,
        rawRequest('GET', '/a/../b', { Host: 'x', Connection: 'close' }),
      ),
    );
    assert.equal(dots.status, 400);
    assert.equal(dots.headers['x-policy'], 'yes');
    assert.equal(dots.headers['x-fn'], 'fn:GET');

    const badUpgrade = parseResponse(await rawExchange(front.port, handshake('/chat')));
    assert.equal(badUpgrade.status, 502);
    assert.equal(badUpgrade.headers['x-policy'], 'yes');
    assert.equal(badUpgrade.headers['x-fn'], 'fn:GET');
    assert.equal(badUpgrade.headers['x-list'], '1, 2');

    const dotsUpgrade = parseResponse(await rawExchange(front.port, handshake('/a/%2e%2e/b')));
    assert.equal(dotsUpgrade.status, 400);
    assert.equal(dotsUpgrade.headers['x-policy'], 'yes');
  });

  test('applied to an upstream refusal of an upgrade and to the 101', async () => {
    const refusing = await refusingUpstream(
      'HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nX-Drop: upstream\r\nX-Fn-Undefined: upstream\r\n\r\nno',
    );
    const up = await startUpstream();
    up.wss.on('headers', (headers) =>
      headers.push('X-Drop: upstream', 'X-Fn-Null: upstream', 'X-Fn-Undefined: upstream'),
    );
    const proxy = createProxy({
      logger: quietLogger(),
      headers: { response: rules },
      routes: { '/refused': refusing.url, '/ok': up.url },
    });
    const front = await startFront('node', proxy);

    const refusal = parseResponse(await rawExchange(front.port, handshake('/refused')));
    assert.equal(refusal.status, 401);
    assert.equal(refusal.body, 'no');
    assert.equal(refusal.headers['x-policy'], 'yes');
    assert.equal(refusal.headers['x-list'], '1, 2');
    assert.equal(refusal.headers['x-drop'], undefined);
    assert.equal(refusal.headers['x-fn'], 'fn:GET');
    assert.equal(refusal.headers['x-fn-undefined'], 'upstream');

    const switched = await upgradeHead(front.port, '/ok');
    assert.equal(switched.status, 101);
    assertRulesApplied(switched.headers);
    assert.equal(switched.headers['sec-websocket-accept'], ACCEPT);
  });
});

describe('invalid header values', () => {
  const target = 'http://127.0.0.1:1';
  for (const [label, value] of [
    ['CR', 'a\rb'],
    ['LF', 'a\nb'],
    ['CRLF injection', 'a\r\nx-injected: 1'],
    ['NUL', 'a\0b'],
    ['an array item with LF', ['ok', 'b\nad']],
  ]) {
    test(`a static value with ${label} throws a TypeError at createProxy time (request and response, top level and route)`, () => {
      assert.throws(
        () =>
          createProxy({ target, logger: quietLogger(), headers: { request: { 'x-bad': value } } }),
        TypeError,
      );
      assert.throws(
        () =>
          createProxy({ target, logger: quietLogger(), headers: { response: { 'x-bad': value } } }),
        TypeError,
      );
      assert.throws(
        () =>
          createProxy({
            logger: quietLogger(),
            routes: { '/r': { target, headers: { request: { 'x-bad': value } } } },
          }),
        TypeError,
      );
      assert.throws(
        () =>
          createProxy({
            logger: quietLogger(),
            routes: { '/r': { target, headers: { response: { 'x-bad': value } } } },
          }),
        TypeError,
      );
      // Control: the same rule with a clean value is accepted.
      assert.equal(
        typeof createProxy({
          target,
          logger: quietLogger(),
          headers: { request: { 'x-bad': 'clean' } },
        }),
        'function',
      );
    });
  }

  test('an invalid header name throws a TypeError at createProxy time', () => {
    for (const name of ['bad name', 'x:y', 'x\r\ny', '', 'bad\0']) {
      assert.throws(
        () => createProxy({ target, logger: quietLogger(), headers: { request: { [name]: 'v' } } }),
        TypeError,
        JSON.stringify(name),
      );
      assert.throws(
        () =>
          createProxy({ target, logger: quietLogger(), headers: { response: { [name]: 'v' } } }),
        TypeError,
        JSON.stringify(name),
      );
    }
  });

  test('a request-rule function returning CR/LF/NUL gives 400 on HTTP and on an upgrade; the upstream sees nothing', async () => {
    const up = await startUpstream();
    const logger = quietLogger();
    const proxy = createProxy({
      target: up.url,
      logger,
      headers: {
        request: {
          'x-bad': (req) =>
            req.headers['x-kind'] === 'nul'
              ? 'a\0b'
              : req.headers['x-kind'] === 'lf'
                ? 'a\nb'
                : 'a\r\nx-injected: 1',
        },
      },
    });
    const front = await startFront('express5', proxy);
    for (const kind of ['crlf', 'lf', 'nul']) {
      const res = await request(`${front.url}/h`, { headers: { 'x-kind': kind } });
      assert.equal(res.status, 400, kind);
      const raw = await rawExchange(front.port, handshake('/w', { 'x-kind': kind }));
      assert.equal(statusOf(raw), 400, kind);
    }
    assert.equal(up.seen.length, 0);
    assert.equal(up.handshakes.length, 0);
    assert.ok(
      logger.lines.some(([level, line]) => level === 'warn' && /x-bad/.test(line)),
      'a warn line names the header',
    );
  });

  test('a response-rule function returning CR/LF/NUL leaves that header out and logs; the response goes out', async () => {
    const up = await startUpstream((_req, res) => {
      res.setHeader('x-bad', 'from-upstream');
      res.end('fine');
    });
    up.wss.on('headers', (headers) => headers.push('X-Bad: from-upstream'));
    const logger = quietLogger();
    const proxy = createProxy({
      target: up.url,
      logger,
      headers: { response: { 'x-bad': () => 'a\r\nx-injected: 1', 'x-good': 'g' } },
    });
    const front = await startFront('node', proxy);
    const res = await request(`${front.url}/r`);
    assert.equal(res.status, 200);
    assert.equal(res.text, 'fine');
    assert.equal(res.headers['x-bad'], undefined);
    assert.equal(res.headers['x-injected'], undefined);
    assert.equal(res.headers['x-good'], 'g');
    assert.ok(
      logger.lines.some(([level, line]) => level === 'error' && /x-bad/.test(line)),
      'an error line names the header',
    );

    const head = await upgradeHead(front.port, '/w');
    assert.equal(head.status, 101);
    assert.equal(head.headers['x-bad'], undefined);
    assert.equal(head.headers['x-injected'], undefined);
    assert.equal(head.headers['x-good'], 'g');
    assert.equal(
      logger.lines.filter(([level, line]) => level === 'error' && /x-bad/.test(line)).length,
      2,
    );
  });
});

describe('forwarded', () => {
  test("default 'x-forwarded': X-Forwarded-For/-Proto/-Host/-Port on HTTP and on upgrades (proto http, not ws)", async () => {
    const up = await startUpstream();
    const front = await startFront('node', createProxy({ target: up.url, logger: quietLogger() }));
    await request(`${front.url}/h`);
    const h = up.seen[0].headers;
    assert.equal(h['x-forwarded-for'], '127.0.0.1');
    assert.equal(h['x-forwarded-proto'], 'http');
    assert.equal(h['x-forwarded-host'], `127.0.0.1:${front.port}`);
    assert.equal(h['x-forwarded-port'], String(front.port));
    assert.equal(h.forwarded, undefined);

    const { ws } = await openSocket(`${front.wsUrl}/w`);
    ws.close();
    const u = up.handshakes[0].headers;
    assert.equal(u['x-forwarded-for'], '127.0.0.1');
    assert.equal(u['x-forwarded-proto'], 'http');
    assert.equal(u['x-forwarded-host'], `127.0.0.1:${front.port}`);
    assert.equal(u['x-forwarded-port'], String(front.port));

    await upgradeHead(front.port, '/w2', { host: 'chat.example' });
    assert.equal(up.handshakes[1].headers['x-forwarded-host'], 'chat.example');
    assert.equal(up.handshakes[1].headers['x-forwarded-port'], '80');
  });

  test("'forwarded': RFC 7239 Forwarded (host quoted when it has a port), no X-Forwarded-*, on both paths", async () => {
    const up = await startUpstream();
    const front = await startFront(
      'connect',
      createProxy({ target: up.url, logger: quietLogger(), forwarded: 'forwarded' }),
    );
    await request(`${front.url}/h`);
    await request(`${front.url}/h`, { headers: { host: 'example.com' } });
    assert.equal(
      up.seen[0].headers.forwarded,
      `for=127.0.0.1;host="127.0.0.1:${front.port}";proto=http`,
    );
    assert.equal(up.seen[1].headers.forwarded, 'for=127.0.0.1;host=example.com;proto=http');
    for (const name of FORWARDING_NAMES.filter((n) => n !== 'forwarded'))
      assert.equal(up.seen[0].headers[name], undefined, name);

    await upgradeHead(front.port, '/w', { host: `127.0.0.1:${front.port}` });
    assert.equal(
      up.handshakes[0].headers.forwarded,
      `for=127.0.0.1;host="127.0.0.1:${front.port}";proto=http`,
    );
    assert.equal(up.handshakes[0].headers['x-forwarded-for'], undefined);
  });

  test('false: no forwarding headers at all, on both paths', async () => {
    const up = await startUpstream();
    const front = await startFront(
      'express5',
      createProxy({ target: up.url, logger: quietLogger(), forwarded: false }),
    );
    await request(`${front.url}/h`, { headers: INCOMING_FORWARDING });
    await request(`${front.url}/h`);
    await upgradeHead(front.port, '/w', INCOMING_FORWARDING);
    for (const record of [...up.seen, ...up.handshakes]) {
      for (const name of FORWARDING_NAMES) assert.equal(record.headers[name], undefined, name);
    }
  });
});

describe('trustProxy', () => {
  /** Sends incoming forwarding headers on both paths and returns what the upstream saw for each. */
  async function forwardingSeen(front, up) {
    await request(`${front.url}/h`, { headers: INCOMING_FORWARDING });
    await upgradeHead(front.port, '/w', {
      ...INCOMING_FORWARDING,
      host: `127.0.0.1:${front.port}`,
    });
    return [
      ['HTTP', up.seen.at(-1).headers],
      ['upgrade', up.handshakes.at(-1).headers],
    ];
  }

  function assertReplaced(results, front) {
    for (const [path, h] of results) {
      assert.equal(h['x-forwarded-for'], '127.0.0.1', path);
      assert.equal(h['x-forwarded-proto'], 'http', path);
      assert.equal(h['x-forwarded-host'], `127.0.0.1:${front.port}`, path);
      assert.equal(h['x-forwarded-port'], String(front.port), path);
      assert.equal(h.forwarded, undefined, path);
    }
  }

  function assertAppended(results, front) {
    for (const [path, h] of results) {
      assert.equal(h['x-forwarded-for'], '1.2.3.4, 127.0.0.1', path);
      assert.equal(h['x-forwarded-proto'], 'https, http', path);
      assert.equal(h['x-forwarded-host'], `orig.example, 127.0.0.1:${front.port}`, path);
      assert.equal(h['x-forwarded-port'], `443, ${front.port}`, path);
      assert.equal(h.forwarded, 'for=1.2.3.4', path);
    }
  }

  test('false: incoming forwarding headers are dropped and replaced (even when Express trusts loopback)', async () => {
    const up = await startUpstream();
    const front = await startFront(
      'express5',
      createProxy({ target: up.url, logger: quietLogger(), trustProxy: false }),
    );
    front.app.set('trust proxy', 'loopback');
    assertReplaced(await forwardingSeen(front, up), front);
  });

  test('true: incoming forwarding headers are kept and appended to', async () => {
    const up = await startUpstream();
    const front = await startFront(
      'connect',
      createProxy({ target: up.url, logger: quietLogger(), trustProxy: true }),
    );
    assertAppended(await forwardingSeen(front, up), front);
  });

  test("true with 'forwarded': the incoming Forwarded is appended to", async () => {
    const up = await startUpstream();
    const front = await startFront(
      'node',
      createProxy({
        target: up.url,
        logger: quietLogger(),
        trustProxy: true,
        forwarded: 'forwarded',
      }),
    );
    const results = await forwardingSeen(front, up);
    for (const [path, h] of results) {
      assert.equal(
        h.forwarded,
        `for=1.2.3.4, for=127.0.0.1;host="127.0.0.1:${front.port}";proto=http`,
        path,
      );
    }
  });

  for (const kind of ['express5', 'express4']) {
    test(`default in ${kind}: follows app.set('trust proxy') — 'loopback' appends`, async () => {
      const up = await startUpstream();
      const front = await startFront(kind, createProxy({ target: up.url, logger: quietLogger() }));
      front.app.set('trust proxy', 'loopback');
      assertAppended(await forwardingSeen(front, up), front);
    });

    test(`default in ${kind}: 'trust proxy' unset replaces; a trust list without loopback replaces`, async () => {
      const up = await startUpstream();
      const front = await startFront(kind, createProxy({ target: up.url, logger: quietLogger() }));
      assertReplaced(await forwardingSeen(front, up), front);
      front.app.set('trust proxy', '10.0.0.1');
      assertReplaced(await forwardingSeen(front, up), front);
    });
  }

  test('default in Connect and plain node:http: not trusted, replaced', async () => {
    for (const kind of ['connect', 'node']) {
      const up = await startUpstream();
      const front = await startFront(kind, createProxy({ target: up.url, logger: quietLogger() }));
      assertReplaced(await forwardingSeen(front, up), front);
    }
  });
});

describe('changeOrigin', () => {
  test("false: the upstream sees the client's Host, on both paths", async () => {
    const up = await startUpstream();
    const front = await startFront(
      'express5',
      createProxy({ target: up.url, logger: quietLogger() }),
    );
    await request(`${front.url}/h`, { headers: { host: 'example.com:8080' } });
    await request(`${front.url}/h`);
    await upgradeHead(front.port, '/w', { host: 'chat.example' });
    assert.equal(up.seen[0].headers.host, 'example.com:8080');
    assert.equal(up.seen[1].headers.host, `127.0.0.1:${front.port}`);
    assert.equal(up.handshakes[0].headers.host, 'chat.example');
  });

  test("true: the upstream Host is the target's host:port, on both paths", async () => {
    const up = await startUpstream();
    const front = await startFront(
      'connect',
      createProxy({ target: up.url, logger: quietLogger(), changeOrigin: true }),
    );
    await request(`${front.url}/h`, { headers: { host: 'example.com:8080' } });
    await upgradeHead(front.port, '/w', { host: 'chat.example' });
    assert.equal(up.seen[0].headers.host, `127.0.0.1:${up.port}`);
    assert.equal(up.handshakes[0].headers.host, `127.0.0.1:${up.port}`);
    // X-Forwarded-Host still carries the client's Host.
    assert.equal(up.seen[0].headers['x-forwarded-host'], 'example.com:8080');
  });

  test('a route may override changeOrigin', async () => {
    const up = await startUpstream();
    const proxy = createProxy({
      logger: quietLogger(),
      changeOrigin: true,
      routes: { '/keep': { target: up.url, changeOrigin: false }, '/': up.url },
    });
    const front = await startFront('node', proxy);
    await request(`${front.url}/keep/x`, { headers: { host: 'example.com' } });
    await request(`${front.url}/other`, { headers: { host: 'example.com' } });
    assert.equal(up.seen[0].headers.host, 'example.com');
    assert.equal(up.seen[1].headers.host, `127.0.0.1:${up.port}`);
  });
});

describe('Expect: 100-continue', () => {
  test('the client gets 100 Continue, then the response; the upstream sees the body and no Expect', async () => {
    const up = await startUpstream();
    const front = await startFront(
      'express5',
      createProxy({ target: up.url, logger: quietLogger() }),
    );
    const socket = net.connect(front.port, '127.0.0.1');
    let received = '';
    const gotContinue = new Promise((resolve) => {
      socket.on('data', (chunk) => {
        received += chunk.toString('latin1');
        if (received.includes('100 Continue')) resolve();
      });
    });
    const closed = once(socket, 'close');
    socket.write(
      rawRequest('POST', '/upload', {
        Host: `127.0.0.1:${front.port}`,
        'Content-Type': 'text/plain',
        'Content-Length': '5',
        Expect: '100-continue',
        Connection: 'close',
      }),
    );
    await gotContinue; // the body is sent only after 100 Continue, as a careful client does
    socket.write('hello');
    await closed;
    assert.match(received, /^HTTP\/1\.1 100 Continue\r\n\r\n/);
    const final = parseResponse(received.slice(received.indexOf('\r\n\r\n') + 4));
    assert.equal(final.status, 200);
    assert.equal(up.seen.length, 1);
    assert.equal(up.seen[0].headers.expect, undefined);
    assert.equal(up.seen[0].body.toString(), 'hello');
    assert.equal(
      received.match(/100 Continue/g).length,
      1,
      'exactly one 100 Continue reached the client',
    );
  });

  test('with a client that sends the body at once (Node http), the response arrives and no Expect goes upstream', async () => {
    const up = await startUpstream();
    const front = await startFront('node', createProxy({ target: up.url, logger: quietLogger() }));
    const res = await request(`${front.url}/e`, {
      method: 'POST',
      headers: { expect: '100-continue', 'content-type': 'text/plain' },
      body: 'abc',
    });
    assert.equal(res.status, 200);
    assert.equal(res.json().body, 'abc');
    assert.equal(res.json().headers.expect, undefined);
  });
});
