// The upgrade path and open tunnels: handshakes, refusals, limits, idle timeout, close reasons.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { createProxy } from 'viaduct';
import {
  closeAll,
  deadPort,
  quietLogger,
  refusingUpstream,
  startFront,
  startUpstream,
} from '../helpers/servers.mjs';
import {
  HANDSHAKE_ACCEPT,
  handshake,
  handshakeThenReset,
  openSocket,
  parseResponse,
  rawExchange,
  request,
  roundTrip,
  statusOf,
} from '../helpers/clients.mjs';
import { assertOnlyLiveTunnel, deferred, nextEvent, within } from '../helpers/waiting.mjs';

after(closeAll);

// Every test gets a bound: a hang (a socket never closed, an event never fired) fails instead of stalling the file.
// (On each test, not on describe(): a suite's timeout would bound the whole suite.)
const BOUND = { timeout: 5_000 };

// ---------------------------------------------------------------------------------------------
// Helpers local to this file.

/** A WebSocket frame; client frames are masked (RFC 6455 §5.3). */
function encodeFrame(opcode, payload, mask = true) {
  const data = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  let header;
  if (data.length < 126) {
    header = Buffer.from([0x80 | opcode, (mask ? 0x80 : 0) | data.length]);
  } else if (data.length < 65536) {
    header = Buffer.alloc(4);
    header[0] = 0x80 | opcode;
    header[1] = (mask ? 0x80 : 0) | 126;
    header.writeUInt16BE(data.length, 2);
  } else {
    header = Buffer.alloc(10);
    header[0] = 0x80 | opcode;
    header[1] = (mask ? 0x80 : 0) | 127;
    header.writeBigUInt64BE(BigInt(data.length), 2);
  }
  if (!mask) return Buffer.concat([header, data]);
  const key = randomBytes(4);
  const masked = Buffer.alloc(data.length);
  for (let i = 0; i < data.length; i++) masked[i] = data[i] ^ key[i & 3];
  return Buffer.concat([header, key, masked]);
}

/** Splits the parsed frames off the front of `buffer`; returns the frames and what is left. */
function decodeFrames(buffer) {
  const frames = [];
  let at = 0;
  for (;;) {
    if (buffer.length - at < 2) break;
    const opcode = buffer[at] & 0x0f;
    const masked = (buffer[at + 1] & 0x80) !== 0;
    let length = buffer[at + 1] & 0x7f;
    let header = 2;
    if (length === 126) {
      if (buffer.length - at < 4) break;
      length = buffer.readUInt16BE(at + 2);
      header = 4;
    } else if (length === 127) {
      if (buffer.length - at < 10) break;
      length = Number(buffer.readBigUInt64BE(at + 2));
      header = 10;
    }
    if (masked) header += 4;
    if (buffer.length - at < header + length) break;
    let payload = buffer.subarray(at + header, at + header + length);
    if (masked) {
      const key = buffer.subarray(at + header - 4, at + header);
      payload = Buffer.from(payload.map((byte, i) => byte ^ key[i & 3]));
    }
    frames.push({ opcode, masked, payload: Buffer.from(payload) });
    at += header + length;
  }
  return { frames, rest: buffer.subarray(at) };
}

/** A WebSocket client over a bare TCP socket: the handshake and frames are written by hand. */
class RawWebSocket {
  static async open(port, path, headers = {}) {
    const client = new RawWebSocket(net.connect(port, '127.0.0.1'));
    client.socket.write(handshake(path, headers));
    await client.headReceived;
    return client;
  }

  constructor(socket) {
    this.socket = socket;
    this.pending = Buffer.alloc(0);
    this.head = undefined;
    this.frames = [];
    this.waiters = [];
    this.closed = once(socket, 'close');
    socket.on('error', () => {});
    this.headReceived = new Promise((resolve, reject) => {
      this.onHead = resolve;
      socket.once('close', () =>
        reject(
          new Error(
            `closed before a response head (got ${JSON.stringify(this.pending.toString('latin1'))})`,
          ),
        ),
      );
    });
    socket.on('data', (chunk) => this.onData(chunk));
  }

  onData(chunk) {
    this.pending = Buffer.concat([this.pending, chunk]);
    if (this.head === undefined) {
      const end = this.pending.indexOf('\r\n\r\n');
      if (end < 0) return;
      this.head = this.pending.subarray(0, end + 4).toString('latin1');
      this.pending = this.pending.subarray(end + 4);
      this.onHead(this.head);
    }
    const { frames, rest } = decodeFrames(this.pending);
    this.pending = rest;
    this.frames.push(...frames);
    while (this.waiters.length && this.frames.length) this.waiters.shift()(this.frames.shift());
  }

  nextFrame() {
    if (this.frames.length) return Promise.resolve(this.frames.shift());
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  send(opcode, payload) {
    this.socket.write(encodeFrame(opcode, payload));
  }
}

/** parseResponse, with the body decoded by its framing (chunked, Content-Length or close) and the framing checked. */
function parseFramedResponse(raw) {
  const { status, headers, body: rest } = parseResponse(raw);
  let body;
  if (/\bchunked\b/i.test(headers['transfer-encoding'] ?? '')) {
    body = '';
    let at = 0;
    for (;;) {
      const lineEnd = rest.indexOf('\r\n', at);
      assert.ok(lineEnd >= 0, 'chunk-size line');
      const size = parseInt(rest.slice(at, lineEnd), 16);
      assert.ok(Number.isInteger(size), `a chunk size at ${at}`);
      at = lineEnd + 2;
      if (size === 0) break;
      body += rest.slice(at, at + size);
      assert.equal(rest.slice(at + size, at + size + 2), '\r\n', 'CRLF after a chunk');
      at += size + 2;
    }
  } else if (headers['content-length'] !== undefined) {
    const length = Number(headers['content-length']);
    assert.equal(Buffer.byteLength(rest, 'latin1'), length, 'body bytes = Content-Length');
    body = rest;
  } else {
    assert.match(
      headers.connection ?? '',
      /close/i,
      'a body without length is delimited by Connection: close',
    );
    body = rest;
  }
  return { status, headers, body };
}

function chunked(body, size) {
  let out = '';
  for (let at = 0; at < body.length; at += size) {
    const piece = body.slice(at, at + size);
    out += `${Buffer.byteLength(piece).toString(16)}\r\n${piece}\r\n`;
  }
  return `${out}0\r\n\r\n`;
}

/** The next upstream-side WebSocket `startUpstream` accepts. */
function nextUpstreamSocket(up) {
  return once(up.wss, 'connection').then(([ws]) => ws);
}

/** Makes an upstream-side WebSocket silent: no echo, and it records what it receives instead. */
function silence(upstreamWs) {
  upstreamWs.removeAllListeners('message');
  const received = [];
  upstreamWs.on('message', (data) => received.push(Buffer.from(data)));
  return received;
}

/** A proxy, a node:http front attached to it and an echoing upstream. */
async function setup(options = {}, kind = 'node') {
  const up = await startUpstream();
  const logger = quietLogger();
  const proxy = createProxy({ target: up.url, logger, ...options });
  const front = await startFront(kind, proxy);
  return { up, proxy, front, logger };
}

/** Opens a tunnel through `front` and returns the client ws, its greeting and the upstream-side ws. */
async function openTunnel(front, up, path = '/chat', options = {}) {
  const upstreamWs = nextUpstreamSocket(up);
  const opened = await openSocket(`${front.wsUrl}${path}`, options);
  assert.ok(opened.ws, `the tunnel opened (got ${JSON.stringify(opened.refused)})`);
  return { ws: opened.ws, greeting: opened.greeting, upstreamWs: await upstreamWs };
}

// ---------------------------------------------------------------------------------------------

describe('a tunnel opens on Upgrade + 101 only', () => {
  test(
    'through ws: text and a 1 MiB binary message round-trip with identical bytes',
    BOUND,
    async () => {
      const { up, proxy, front } = await setup({}, 'express5');
      const { ws, greeting } = await openTunnel(front, up, '/chat/room');
      assert.equal(greeting, 'hello:/chat/room');
      assert.equal(await roundTrip(ws, 'héllo'), 'echo:héllo');

      const payload = randomBytes(1024 * 1024);
      const reply = once(ws, 'message');
      ws.send(payload, { binary: true });
      const [data, isBinary] = await reply;
      assert.equal(isBinary, true);
      assert.equal(data.length, payload.length);
      assert.ok(Buffer.from(data).equals(payload), 'the 1 MiB came back byte for byte');

      assert.equal(up.handshakes.length, 1);
      assert.equal(proxy.stats().tunnels.total, 1);
      assert.equal(proxy.stats().tunnels.active, 1);
      const closed = once(proxy, 'close');
      ws.close();
      await closed;
      assert.equal(proxy.stats().tunnels.active, 0);
    },
  );

  test(
    'through a raw handshake: a 101 with the accept key and policy, then text and 1 MiB binary frames',
    BOUND,
    async () => {
      const { up, front } = await setup({ headers: { response: { 'x-tunnel': 'yes' } } });
      const client = await RawWebSocket.open(front.port, '/raw?q=1');
      const head = parseResponse(client.head);
      assert.equal(head.status, 101);
      assert.match(head.headers.upgrade, /^websocket$/i);
      assert.match(head.headers.connection, /^upgrade$/i);
      assert.equal(head.headers['sec-websocket-accept'], HANDSHAKE_ACCEPT);
      assert.equal(head.headers['x-tunnel'], 'yes', 'the response policy applies to the 101');
      assert.equal(up.handshakes[0].url, '/raw?q=1');
      assert.equal(up.handshakes[0].headers.upgrade, 'websocket');
      assert.match(up.handshakes[0].headers.connection, /^upgrade$/i);

      const greeting = await client.nextFrame();
      assert.equal(greeting.opcode, 0x1);
      assert.equal(greeting.payload.toString(), 'hello:/raw?q=1');

      client.send(0x1, 'ping');
      const echo = await client.nextFrame();
      assert.equal(echo.payload.toString(), 'echo:ping');

      const payload = randomBytes(1024 * 1024);
      client.send(0x2, payload);
      const binary = await client.nextFrame();
      assert.equal(binary.opcode, 0x2);
      assert.ok(binary.payload.equals(payload), 'the 1 MiB came back byte for byte');
      client.socket.destroy();
      await client.closed;
    },
  );

  test('a plain GET on the same route is proxied as HTTP and opens no tunnel', BOUND, async () => {
    const { up, proxy, front } = await setup();
    const res = await request(`${front.url}/chat`);
    assert.equal(res.status, 200);
    assert.equal(res.json().url, '/chat');
    assert.equal(up.handshakes.length, 0);
    assert.equal(up.seen.length, 1);
    assert.equal(proxy.stats().tunnels.total, 0);
  });
});

describe('the upstream refuses the upgrade (any non-101)', () => {
  const json = JSON.stringify({
    error: 'unauthorized',
    detail: 'a token is needed',
    pad: 'x'.repeat(300),
  });
  const html = `<!doctype html><title>plain page</title><p>${'not a websocket '.repeat(40)}</p>`;
  const cases = [
    {
      name: '401 with a JSON body (Content-Length)',
      status: 401,
      contentType: 'application/json',
      body: json,
      raw: `HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(json)}\r\n`,
    },
    {
      name: '401 with a JSON body (Transfer-Encoding: chunked)',
      status: 401,
      contentType: 'application/json',
      body: json,
      chunked: true,
      raw: 'HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n',
    },
    {
      name: '404 (Content-Length)',
      status: 404,
      contentType: 'text/plain',
      body: 'no such socket\n',
      raw: 'HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 15\r\n',
    },
    {
      name: '200 (Transfer-Encoding: chunked)',
      status: 200,
      contentType: 'text/html',
      body: html,
      chunked: true,
      raw: 'HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n',
    },
  ];

  for (const c of cases) {
    test(
      `${c.name}: status, end-to-end headers with the policy, intact body, closed socket, counted`,
      BOUND,
      async () => {
        const response =
          c.raw +
          'X-Powered-By: upstream\r\nX-Custom: kept\r\nKeep-Alive: timeout=5\r\nConnection: x-hop\r\nX-Hop: dropped\r\n\r\n' +
          (c.chunked ? chunked(c.body, 64) : c.body);
        const up = await refusingUpstream(response);
        const proxy = createProxy({
          target: up.url,
          logger: quietLogger(),
          headers: { response: { 'x-powered-by': null, 'x-policy': 'set' } },
        });
        const front = await startFront('node', proxy);

        // A raw client: what crossed the wire, framing included; rawExchange resolves when the socket closes.
        const raw = await rawExchange(front.port, handshake('/socket'));
        const res = parseFramedResponse(raw);
        assert.equal(res.status, c.status);
        assert.equal(
          res.body,
          c.body,
          'the body is intact and correctly framed (no chunk-size lines)',
        );
        assert.equal(res.headers['content-type'], c.contentType);
        assert.equal(res.headers['x-custom'], 'kept');
        assert.equal(res.headers['x-policy'], 'set');
        assert.equal(res.headers['x-powered-by'], undefined);
        assert.equal(res.headers['keep-alive'], undefined);
        assert.equal(res.headers['x-hop'], undefined, 'a header named in Connection is hop-by-hop');
        assert.equal(res.headers.upgrade, undefined);
        assert.equal(proxy.stats().tunnels.rejected, 1);
        assert.equal(proxy.stats().tunnels.total, 0);

        // A ws client sees the same refusal.
        const opened = await openSocket(`${front.wsUrl}/socket`);
        assert.ok(opened.refused, 'no tunnel');
        assert.equal(opened.refused.status, c.status);
        assert.equal(opened.refused.body, c.body);
        assert.equal(opened.refused.headers['x-custom'], 'kept');
        assert.equal(opened.refused.headers['x-policy'], 'set');
        assert.equal(opened.refused.headers['x-powered-by'], undefined);
        assert.equal(proxy.stats().tunnels.rejected, 2);
        assert.equal(proxy.stats().tunnels.active, 0);
        assert.equal(up.heads.length, 2);
      },
    );
  }
});

describe('refusals by the proxy', () => {
  test(
    'ws: false on a route: an upgrade gets 404, HTTP on that route is still proxied',
    BOUND,
    async () => {
      const up = await startUpstream();
      const proxy = createProxy({
        logger: quietLogger(),
        routes: { '/feed': { target: up.url, ws: false }, '/chat': up.url },
      });
      const front = await startFront('node', proxy);
      const raw = await rawExchange(front.port, handshake('/feed/live'));
      assert.equal(statusOf(raw), 404);
      const opened = await openSocket(`${front.wsUrl}/feed/live`);
      assert.equal(opened.refused?.status, 404);
      assert.equal(up.handshakes.length, 0);
      const res = await request(`${front.url}/feed/live`);
      assert.equal(res.status, 200);
      assert.equal(res.json().url, '/feed/live');
      // Another route of the same table still tunnels.
      const { ws } = await openTunnel(front, up, '/chat');
      ws.close();
    },
  );

  test(
    'a pathRewrite whose result has a CR, LF or space: 500 for the upgrade as for HTTP, and nothing reaches the upstream',
    BOUND,
    async () => {
      for (const bad of ['/a\r\nX-Injected: 1', '/a b', '/a\u0100']) {
        const up = await startUpstream();
        const proxy = createProxy({
          target: up.url,
          logger: quietLogger(),
          pathRewrite: () => bad,
        });
        const front = await startFront('node', proxy);
        const raw = await rawExchange(front.port, handshake('/x'));
        assert.equal(statusOf(raw), 500, JSON.stringify(bad));
        assert.equal((await request(`${front.url}/x`)).status, 500, JSON.stringify(bad));
        assert.equal(up.handshakes.length, 0);
        assert.equal(up.seen.length, 0);
      }
    },
  );

  const originCases = [
    {
      kind: 'a string (compared case-insensitively)',
      rule: 'https://App.Example',
      allowed: 'https://app.example',
      other: 'https://app.example.evil',
    },
    {
      kind: 'a RegExp',
      rule: /^https:\/\/([a-z]+\.)?app\.example$/,
      allowed: 'https://eu.app.example',
      other: 'https://app.example.evil',
    },
    {
      kind: 'an array',
      rule: ['https://a.example', /^https:\/\/b\.example$/],
      allowed: 'https://b.example',
      other: 'https://c.example',
    },
  ];
  for (const { kind, rule, allowed, other } of originCases) {
    test(
      `allowedOrigins as ${kind}: allowed → 101, other → 403, missing Origin → 403`,
      BOUND,
      async () => {
        const { up, proxy, front } = await setup({ allowedOrigins: rule });
        const { ws, greeting } = await openTunnel(front, up, '/o', { origin: allowed });
        assert.equal(greeting, 'hello:/o');
        ws.close();
        const refused = await openSocket(`${front.wsUrl}/o`, { origin: other });
        assert.equal(refused.refused?.status, 403);
        const missing = await rawExchange(front.port, handshake('/o'));
        assert.equal(statusOf(missing), 403);
        assert.equal(up.handshakes.length, 1, 'refused upgrades never reach the upstream');
        assert.equal(proxy.stats().tunnels.rejected, 2);
      },
    );
  }

  test(
    'allowedOrigins as a function: it gets the origin (or undefined) and the request, and decides',
    BOUND,
    async () => {
      const calls = [];
      const { up, front } = await setup({
        allowedOrigins: (origin, req) => {
          calls.push([origin, req.url]);
          return origin === undefined || origin === 'https://fn.example';
        },
      });
      const { ws } = await openTunnel(front, up, '/f', { origin: 'https://fn.example' });
      ws.close();
      const refused = await openSocket(`${front.wsUrl}/f`, { origin: 'https://other.example' });
      assert.equal(refused.refused?.status, 403);
      const client = await RawWebSocket.open(front.port, '/f');
      assert.equal(statusOf(client.head), 101, 'the function allowed a missing Origin');
      client.socket.destroy();
      assert.deepEqual(calls, [
        ['https://fn.example', '/f'],
        ['https://other.example', '/f'],
        [undefined, '/f'],
      ]);
      assert.equal(up.handshakes.length, 2);
    },
  );

  test(
    'maxTunnels: 2 → the third concurrent upgrade gets 503; after one closes a new one opens',
    BOUND,
    async () => {
      const { up, proxy, front } = await setup({ maxTunnels: 2 });
      const a = await openTunnel(front, up, '/a');
      const b = await openTunnel(front, up, '/b');
      const third = await openSocket(`${front.wsUrl}/c`);
      assert.equal(third.refused?.status, 503);
      assert.equal(up.handshakes.length, 2);
      assert.equal(proxy.stats().tunnels.rejected, 1);

      const closed = once(proxy, 'close');
      a.ws.close();
      await closed;
      const d = await openTunnel(front, up, '/d');
      assert.equal(d.greeting, 'hello:/d');
      assert.equal(proxy.stats().tunnels.active, 2);
      b.ws.close();
      d.ws.close();
    },
  );

  const invalid = [
    [
      'POST with Upgrade: websocket',
      handshake('/chat')
        .replace(/^GET /, 'POST ')
        .replace('\r\n\r\n', '\r\ncontent-length: 0\r\n\r\n'),
    ],
    [
      'Upgrade: h2c',
      handshake('/chat', {
        upgrade: 'h2c',
        connection: 'Upgrade, HTTP2-Settings',
        'http2-settings': 'AAMAAABkAARAAAAAAAIAAAAA',
      }),
    ],
    ['no Sec-WebSocket-Key', handshake('/chat', { 'sec-websocket-key': undefined })],
  ];
  for (const [name, bytes] of invalid) {
    test(
      `an invalid upgrade is answered 400, closed, and never reaches the upstream: ${name}`,
      BOUND,
      async () => {
        const { up, proxy, front } = await setup();
        const raw = await rawExchange(front.port, bytes);
        assert.equal(statusOf(raw), 400);
        assert.equal(up.handshakes.length + up.seen.length, 0);
        assert.equal(proxy.stats().tunnels.rejected, 1);
      },
    );
  }

  test(
    'an upgrade to a route whose upstream is down gets 502 on the raw socket, then it is closed',
    BOUND,
    async () => {
      const port = await deadPort();
      const proxy = createProxy({ target: `http://127.0.0.1:${port}`, logger: quietLogger() });
      const front = await startFront('node', proxy);
      const raw = await rawExchange(front.port, handshake('/chat'));
      const res = parseFramedResponse(raw);
      assert.equal(res.status, 502);
      assert.match(res.body, /^502 Bad Gateway/);
      assert.ok(!res.body.includes(String(port)), 'the body names no upstream address');
      assert.equal(proxy.stats().tunnels.rejected, 1);
      assert.equal(proxy.stats().tunnels.active, 0);
    },
  );
});

describe('idle timeout (timeouts.read)', () => {
  test(
    'a silent tunnel is closed on both sides after about the timeout, with reason idle',
    BOUND,
    async () => {
      const { up, proxy, front } = await setup({ timeouts: { read: 200 } });
      const opened = once(proxy, 'open').then(() => Date.now());
      const closeEvent = once(proxy, 'close').then(([event]) => ({ event, at: Date.now() }));
      const { ws, upstreamWs } = await openTunnel(front, up, '/quiet');
      const clientClosed = once(ws, 'close');
      const upstreamClosed = once(upstreamWs, 'close');
      const [{ event, at }, openedAt] = await Promise.all([closeEvent, opened]);
      await Promise.all([clientClosed, upstreamClosed]);
      assert.equal(event.reason, 'idle');
      const elapsed = at - openedAt;
      assert.ok(elapsed >= 190, `closed after ${elapsed} ms, not before the 200 ms timeout`);
      assert.ok(elapsed < 700, `closed after ${elapsed} ms, about the 200 ms timeout`);
      assert.equal(proxy.stats().tunnels.active, 0);
    },
  );

  test(
    "each tunnel keeps its own route's timeout: 150 ms and 800 ms on one proxy",
    BOUND,
    async () => {
      const up = await startUpstream();
      const proxy = createProxy({
        logger: quietLogger(),
        routes: {
          '/fast': { target: up.url, timeouts: { read: 150 } },
          '/slow': { target: up.url, timeouts: { read: 800 } },
        },
      });
      const front = await startFront('node', proxy);
      const openedAt = new Map();
      const closedAt = new Map();
      proxy.on('open', (event) => openedAt.set(event.route, Date.now()));
      const bothClosed = new Promise((resolve) =>
        proxy.on('close', (event) => {
          closedAt.set(event.route, {
            reason: event.reason,
            after: Date.now() - openedAt.get(event.route),
          });
          if (closedAt.size === 2) resolve();
        }),
      );
      const fast = await openTunnel(front, up, '/fast');
      const slow = await openTunnel(front, up, '/slow');
      await once(fast.ws, 'close');
      assert.equal(slow.ws.readyState, slow.ws.OPEN, 'the 800 ms tunnel outlives the 150 ms one');
      await bothClosed;
      const { reason: fastReason, after: fastAfter } = closedAt.get('/fast');
      const { reason: slowReason, after: slowAfter } = closedAt.get('/slow');
      assert.equal(fastReason, 'idle');
      assert.equal(slowReason, 'idle');
      assert.ok(
        fastAfter >= 145 && fastAfter < 600,
        `the 150 ms tunnel closed after ${fastAfter} ms`,
      );
      assert.ok(
        slowAfter >= 795 && slowAfter < 1_400,
        `the 800 ms tunnel closed after ${slowAfter} ms`,
      );
    },
  );

  /** Runs `tick` every 100 ms, six times; resolves after the sixth. */
  function every100ms(tick) {
    return new Promise((resolve) => {
      let n = 0;
      const timer = setInterval(() => {
        tick(++n);
        if (n === 6) {
          clearInterval(timer);
          resolve();
        }
      }, 100);
    });
  }

  test(
    'client→upstream messages every 100 ms for 600 ms keep a 200 ms tunnel open',
    BOUND,
    async () => {
      const { up, proxy, front } = await setup({ timeouts: { read: 200 } });
      const { ws, upstreamWs } = await openTunnel(front, up, '/talk');
      const received = silence(upstreamWs); // one direction only: the upstream does not answer
      let closedEarly = false;
      proxy.once('close', () => (closedEarly = true));
      ws.once('close', () => (closedEarly = true));
      const sixth = new Promise((resolve) =>
        upstreamWs.on('message', () => received.length === 6 && resolve()),
      );
      const closeEvent = once(proxy, 'close');
      await every100ms((n) => ws.send(`tick ${n}`));
      await sixth;
      assert.equal(closedEarly, false, 'the tunnel stayed open');
      assert.equal(ws.readyState, ws.OPEN);
      assert.deepEqual(received.map(String), [
        'tick 1',
        'tick 2',
        'tick 3',
        'tick 4',
        'tick 5',
        'tick 6',
      ]);
      // Then silence: the timer was running all along and now ends it.
      const [event] = await closeEvent;
      assert.equal(event.reason, 'idle');
    },
  );

  test(
    'upstream→client pushes every 100 ms for 600 ms keep a 200 ms tunnel open',
    BOUND,
    async () => {
      const { up, proxy, front } = await setup({ timeouts: { read: 200 } });
      const { ws, upstreamWs } = await openTunnel(front, up, '/push');
      let closedEarly = false;
      proxy.once('close', () => (closedEarly = true));
      ws.once('close', () => (closedEarly = true));
      const pushes = [];
      const sixth = new Promise((resolve) =>
        ws.on('message', (data) => pushes.push(String(data)) === 6 && resolve()),
      );
      const closeEvent = once(proxy, 'close');
      await every100ms((n) => upstreamWs.send(`push ${n}`));
      await sixth;
      assert.equal(closedEarly, false, 'the tunnel stayed open');
      assert.equal(ws.readyState, ws.OPEN);
      assert.deepEqual(pushes, ['push 1', 'push 2', 'push 3', 'push 4', 'push 5', 'push 6']);
      const [event] = await closeEvent;
      assert.equal(event.reason, 'idle');
    },
  );
});

describe('backpressure', () => {
  test(
    'a client that stops reading pauses the upstream socket: the proxy holds a bounded buffer, and every byte arrives once it reads again',
    BOUND,
    async (t) => {
      const { up, proxy, front } = await setup();
      const opened = once(proxy, 'open');
      const { ws, upstreamWs } = await openTunnel(front, up, '/flood');
      const [{ clientSocket, upstreamSocket }] = await opened;
      ws._socket.pause(); // the ws client's TCP socket: nothing more is read from the proxy
      // On a failure the flood is still queued: end it, so that the file's servers can close.
      t.after(() => ws.terminate());
      const message = randomBytes(1024 * 1024);
      const count = 48;
      // The proxy stops reading the upstream once the client's socket is full.
      const paused = nextEvent(upstreamSocket, 'pause');
      for (let i = 0; i < count; i++) upstreamWs.send(message);
      await within(paused, 3000, 'the upstream socket paused');
      assert.ok(upstreamSocket.isPaused());
      assert.ok(
        clientSocket.writableLength < 4 * 1024 * 1024,
        `the proxy buffered ${clientSocket.writableLength} bytes for the client`,
      );
      assert.ok(
        upstreamWs.bufferedAmount > 16 * 1024 * 1024,
        `the rest waits at the upstream (${upstreamWs.bufferedAmount} bytes)`,
      );
      const received = [];
      const all = new Promise((resolve) =>
        ws.on('message', (data) => received.push(data) === count && resolve()),
      );
      ws._socket.resume();
      await within(all, 4000, `${count} messages of 1 MiB`);
      assert.ok(
        received.every((data) => Buffer.compare(data, message) === 0),
        'every message intact',
      );
    },
  );
});

describe('close reasons, byte counts and events', () => {
  test('open fires with the route key, the request and both sockets', BOUND, async () => {
    const up = await startUpstream();
    const proxy = createProxy({ logger: quietLogger(), routes: { '/chat': up.url } });
    const front = await startFront('node', proxy);
    const opened = once(proxy, 'open');
    const { ws } = await openTunnel(front, up, '/chat/room?x=1');
    const [event] = await opened;
    assert.equal(event.route, '/chat');
    assert.equal(event.req.url, '/chat/room?x=1');
    assert.equal(event.req.headers.upgrade, 'websocket');
    assert.ok(event.clientSocket instanceof net.Socket);
    assert.ok(event.upstreamSocket instanceof net.Socket);
    assert.equal(event.clientSocket.remotePort, ws._socket.localPort);
    assert.equal(event.upstreamSocket.remotePort, up.port);
    const closed = once(proxy, 'close');
    ws.close();
    const [close] = await closed;
    assert.equal(close.route, '/chat');
    assert.equal(close.req, event.req);
  });

  test(
    "client ws.close() → 'client'; a 10 000-byte client message counts in bytesFromClient only",
    BOUND,
    async () => {
      const { up, proxy, front } = await setup();
      const { ws, upstreamWs } = await openTunnel(front, up);
      const received = silence(upstreamWs);
      const got = once(upstreamWs, 'message');
      ws.send('c'.repeat(10_000));
      await got;
      assert.equal(received[0].length, 10_000);
      const closed = once(proxy, 'close');
      const upstreamClosed = once(upstreamWs, 'close');
      ws.close(1000, 'bye');
      const [event] = await closed;
      const [code] = await upstreamClosed;
      assert.equal(code, 1000);
      assert.equal(event.reason, 'client');
      assert.ok(event.bytesFromClient >= 10_000, `bytesFromClient ${event.bytesFromClient}`);
      assert.ok(event.bytesFromUpstream > 0, `bytesFromUpstream ${event.bytesFromUpstream}`);
      assert.ok(
        event.bytesFromUpstream < 1_000,
        `bytesFromUpstream ${event.bytesFromUpstream}: the greeting and a close frame`,
      );
      assert.equal(typeof event.duration, 'number');
      assert.ok(event.duration >= 0);
    },
  );

  test(
    "upstream closes its ws → 'upstream'; a 10 000-byte upstream message counts in bytesFromUpstream only",
    BOUND,
    async () => {
      const { up, proxy, front } = await setup();
      const { ws, upstreamWs } = await openTunnel(front, up);
      const got = once(ws, 'message');
      upstreamWs.send('u'.repeat(10_000));
      assert.equal(String((await got)[0]).length, 10_000);
      const closed = once(proxy, 'close');
      const clientClosed = once(ws, 'close');
      upstreamWs.close(1001, 'going away');
      const [event] = await closed;
      const [code] = await clientClosed;
      assert.equal(code, 1001);
      assert.equal(event.reason, 'upstream');
      assert.ok(event.bytesFromUpstream >= 10_000, `bytesFromUpstream ${event.bytesFromUpstream}`);
      assert.ok(
        event.bytesFromClient > 0,
        `bytesFromClient ${event.bytesFromClient}: the client's close frame`,
      );
      assert.ok(event.bytesFromClient < 1_000, `bytesFromClient ${event.bytesFromClient}`);
      assert.ok(event.duration >= 0);
    },
  );

  test('the byte counts grow with the payload sent', BOUND, async () => {
    const { up, proxy, front } = await setup();
    const counts = [];
    proxy.on('close', (event) => counts.push(event));
    for (const size of [10, 10_000, 100_000]) {
      const { ws } = await openTunnel(front, up);
      await roundTrip(ws, 'x'.repeat(size));
      const closed = once(proxy, 'close');
      ws.close();
      await closed;
    }
    assert.equal(counts.length, 3);
    assert.ok(
      counts[0].bytesFromClient < counts[1].bytesFromClient &&
        counts[1].bytesFromClient < counts[2].bytesFromClient,
    );
    assert.ok(
      counts[0].bytesFromUpstream < counts[1].bytesFromUpstream &&
        counts[1].bytesFromUpstream < counts[2].bytesFromUpstream,
    );
    assert.ok(counts[2].bytesFromClient >= 100_000);
    assert.ok(counts[2].bytesFromUpstream >= 100_000);
  });

  test("client terminate() → 'client', and the upstream side is closed", BOUND, async () => {
    const { up, proxy, front } = await setup();
    const { ws, upstreamWs } = await openTunnel(front, up);
    const closed = once(proxy, 'close');
    const upstreamClosed = once(upstreamWs, 'close');
    ws.terminate();
    const [event] = await closed;
    await upstreamClosed;
    assert.equal(event.reason, 'client');
  });

  test("upstream socket destroyed → 'upstream', and the client side is closed", BOUND, async () => {
    const { up, proxy, front } = await setup();
    const { ws, upstreamWs } = await openTunnel(front, up);
    const closed = once(proxy, 'close');
    const clientClosed = once(ws, 'close');
    upstreamWs._socket.destroy();
    const [event] = await closed;
    await clientClosed;
    assert.equal(event.reason, 'upstream');
  });

  test(
    "proxy.close() → 'shutdown': both sides closed, close() resolves, a new upgrade gets 503",
    BOUND,
    async () => {
      const { up, proxy, front } = await setup();
      const { ws, upstreamWs } = await openTunnel(front, up);
      const closed = once(proxy, 'close');
      const clientClosed = once(ws, 'close');
      const upstreamClosed = once(upstreamWs, 'close');
      await proxy.close({ timeout: 1_000 });
      const [event] = await closed;
      await Promise.all([clientClosed, upstreamClosed]);
      assert.equal(event.reason, 'shutdown');
      assert.equal(proxy.stats().tunnels.active, 0);
      const raw = await rawExchange(front.port, handshake('/late'));
      assert.equal(statusOf(raw), 503);
      assert.equal(up.handshakes.length, 1);
    },
  );

  test(
    'a client that resets while an async router decides: no tunnel is left open upstream',
    BOUND,
    async () => {
      const up = await startUpstream();
      const upstreamSockets = [];
      up.wss.on('connection', (ws, req) => upstreamSockets.push({ url: req.url, ws }));
      const inRouter = deferred();
      const gate = deferred();
      const proxy = createProxy({
        logger: quietLogger(),
        router: async (req) => {
          if (req.url === '/held') {
            inRouter.resolve(req);
            await gate.promise;
          }
          return up.url;
        },
      });
      const front = await startFront('node', proxy);
      await handshakeThenReset(front.port, '/held', inRouter.promise);
      gate.resolve();

      // A later tunnel on the same proxy opens; the abandoned one must not be open beside it.
      const { ws } = await openTunnel(front, up, '/after');
      await assertOnlyLiveTunnel(proxy, upstreamSockets, ws);
    },
  );

  for (const how of ['end', 'destroy']) {
    test(
      `a client that leaves (socket.${how}()) before the upstream answers: nothing stays open`,
      BOUND,
      async () => {
        const up = await startUpstream();
        const arrived = deferred();
        const answer = deferred();
        // The upstream answers the handshake only once the client is gone.
        up.server.removeAllListeners('upgrade');
        up.server.on('upgrade', (req, socket, head) => {
          arrived.resolve(req);
          answer.promise.then(() =>
            up.wss.handleUpgrade(req, socket, head, (ws) => up.wss.emit('connection', ws, req)),
          );
        });
        const proxy = createProxy({ target: up.url, logger: quietLogger() });
        const closes = [];
        proxy.on('close', (event) => closes.push(event));
        const front = await startFront('node', proxy);
        const client = net.connect(front.port, '127.0.0.1');
        client.on('error', () => {});
        const clientClosed = nextEvent(client, 'close');
        client.resume();
        client.write(handshake('/leaving'));
        const upstreamReq = await within(
          arrived.promise,
          1_000,
          'the handshake reaches the upstream',
        );
        const upstreamClosed = nextEvent(upstreamReq.socket, 'close');
        client[how]();
        answer.resolve();
        await within(clientClosed, 1_000, 'the client socket is closed');
        await within(upstreamClosed, 1_000, 'the upstream connection is closed');
        // Either the handshake was abandoned, or the tunnel opened and ended at once for the client's FIN.
        const { tunnels } = proxy.stats();
        if (tunnels.total > 0) {
          if (closes.length === 0)
            await within(nextEvent(proxy, 'close'), 1_000, 'the tunnel ends');
          assert.equal(closes[0].reason, 'client');
        } else {
          assert.equal(tunnels.rejected, 1);
        }
        assert.equal(proxy.stats().tunnels.active, 0);
      },
    );
  }

  for (const how of ['destroy', 'resetAndDestroy']) {
    test(
      `a client that vanishes mid-tunnel (socket.${how}()) → the upstream side is closed, active returns to 0`,
      BOUND,
      async () => {
        const { up, proxy, front } = await setup();
        const upstreamWs = nextUpstreamSocket(up);
        const client = await RawWebSocket.open(front.port, '/gone');
        assert.equal(statusOf(client.head), 101);
        assert.equal((await client.nextFrame()).payload.toString(), 'hello:/gone');
        const server = await upstreamWs;
        assert.equal(proxy.stats().tunnels.active, 1);
        const upstreamClosed = once(server, 'close');
        // A reset is a socket error: the proxy reports it on 'error' as well, so events.once would reject.
        const closed = nextEvent(proxy, 'close');
        client.socket[how]();
        await upstreamClosed;
        await closed;
        assert.equal(proxy.stats().tunnels.active, 0);
      },
    );
  }
});
