// Target forms and the settings passed through to the engine: agent, cookieDomainRewrite,
// cookiePathRewrite, autoRewrite.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WebSocketServer } from 'ws';
import { createProxy } from 'viaduct';
import { closeAll, quietLogger, startFront, startUpstream } from '../helpers/servers.mjs';
import { openSocket, request } from '../helpers/clients.mjs';

after(closeAll);

test('targets: a URL object, { host, port, protocol } and { socketPath } with its path, on both paths', async () => {
  const up = await startUpstream();
  for (const target of [
    new URL(`${up.url}/base`),
    { host: '127.0.0.1', port: up.port, protocol: 'http', path: '/base' },
  ]) {
    const front = await startFront('node', createProxy({ target, logger: quietLogger() }));
    assert.equal((await request(`${front.url}/a?b=1`)).json().url, '/base/a?b=1');
  }

  const dir = mkdtempSync(join(tmpdir(), 'viaduct-unix-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const socketPath = join(dir, 'upstream.sock');
  const unix = http.createServer((req, res) => res.end(`unix:${req.url}`));
  const wss = new WebSocketServer({ server: unix });
  wss.on('connection', (ws, req) => ws.send(`hello:${req.url}`));
  unix.listen(socketPath);
  await once(unix, 'listening');
  after(() => new Promise((resolve) => unix.close(resolve)));
  const front = await startFront(
    'node',
    createProxy({ target: { socketPath, path: '/base' }, logger: quietLogger() }),
  );
  assert.equal((await request(`${front.url}/a`)).text, 'unix:/base/a');
  const { ws, greeting } = await openSocket(`${front.wsUrl}/chat`);
  assert.equal(greeting, 'hello:/base/chat');
  ws.terminate();
});

test('agent: the given agent carries HTTP requests and upgrades', async () => {
  const up = await startUpstream();
  const connections = [];
  class CountingAgent extends http.Agent {
    createConnection(options, callback) {
      connections.push(options.path ?? options.host);
      return super.createConnection(options, callback);
    }
  }
  const agent = new CountingAgent({ keepAlive: false });
  const front = await startFront(
    'node',
    createProxy({ target: up.url, agent, logger: quietLogger() }),
  );
  assert.equal((await request(`${front.url}/a`)).status, 200);
  assert.equal(connections.length, 1);
  const { ws, greeting } = await openSocket(`${front.wsUrl}/chat`);
  assert.equal(greeting, 'hello:/chat');
  assert.equal(connections.length, 2);
  ws.close();
});

test('cookieDomainRewrite and cookiePathRewrite rewrite Set-Cookie, per route', async () => {
  const up = await startUpstream((_req, res) => {
    res.setHeader('set-cookie', [
      'a=1; Domain=upstream.internal; Path=/api',
      'b=2; Path=/api/admin',
    ]);
    res.end('ok');
  });
  const proxy = createProxy({
    routes: {
      '/rewritten': {
        target: up.url,
        cookieDomainRewrite: 'front.example',
        cookiePathRewrite: { '/api': '/', '/api/admin': '/admin' },
      },
      '/untouched': up.url,
    },
    logger: quietLogger(),
  });
  const front = await startFront('express5', proxy);
  const rewritten = await request(`${front.url}/rewritten`);
  assert.deepEqual(rewritten.headers['set-cookie'], [
    'a=1; Domain=front.example; Path=/',
    'b=2; Path=/admin',
  ]);
  const untouched = await request(`${front.url}/untouched`);
  assert.deepEqual(untouched.headers['set-cookie'], [
    'a=1; Domain=upstream.internal; Path=/api',
    'b=2; Path=/api/admin',
  ]);
});

test('autoRewrite points redirects to the upstream back at the host the client used', async () => {
  const up = await startUpstream((req, res) => {
    res.writeHead(302, { location: `http://127.0.0.1:${req.socket.localPort}/next?x=1` }).end();
  });
  const plain = await startFront('node', createProxy({ target: up.url, logger: quietLogger() }));
  assert.equal((await request(`${plain.url}/go`)).headers.location, `${up.url}/next?x=1`);
  const rewriting = await startFront(
    'node',
    createProxy({ target: up.url, autoRewrite: true, logger: quietLogger() }),
  );
  const res = await request(`${rewriting.url}/go`, { headers: { host: 'front.example:8080' } });
  assert.equal(res.status, 302);
  assert.equal(res.headers.location, 'http://front.example:8080/next?x=1');
});

test("the options a proxied request hands to Node's agent carry no key without a value: Node copies each key three times per request (the socketPath and ca tests show set ones still arrive)", async () => {
  const up = await startUpstream();
  const seen = [];
  const addRequest = http.Agent.prototype.addRequest;
  http.Agent.prototype.addRequest = function (req, options, ...rest) {
    // The proxy's request, not the test client's own.
    if (options.headers?.['x-forwarded-for']) seen.push({ ...options });
    return addRequest.call(this, req, options, ...rest);
  };
  try {
    const front = await startFront('node', createProxy({ target: up.url, logger: quietLogger() }));
    assert.equal((await request(`${front.url}/keys`)).status, 200);
  } finally {
    http.Agent.prototype.addRequest = addRequest;
  }
  assert.equal(seen.length, 1);
  const [options] = seen;
  assert.deepEqual(
    Object.keys(options).filter((key) => options[key] === undefined),
    [],
    `keys without a value among ${Object.keys(options).join(', ')}`,
  );
});

test("http.request is looked up per request: an instrumentation that wraps it after createProxy (as OpenTelemetry does) sees the proxy's requests and the header it injects reaches the upstream", async () => {
  const up = await startUpstream();
  const front = await startFront('node', createProxy({ target: up.url, logger: quietLogger() }));
  const original = http.request;
  const wrapped = [];
  // What @opentelemetry/instrumentation-http does: copy the headers, inject into the copy.
  http.request = function (options, ...rest) {
    if (Number(options.port) !== up.port) return original.call(this, options, ...rest);
    wrapped.push(options.path);
    const headers = Object.assign({}, options.headers, { traceparent: '00-abc-def-01' });
    return original.call(this, { ...options, headers }, ...rest);
  };
  try {
    assert.equal((await request(`${front.url}/traced?x=1`)).status, 200);
  } finally {
    http.request = original;
  }
  assert.deepEqual(wrapped, ['/traced?x=1']);
  assert.equal(up.seen[0].headers.traceparent, '00-abc-def-01');
  assert.equal(up.seen[0].headers['x-forwarded-for'], '127.0.0.1');
});
