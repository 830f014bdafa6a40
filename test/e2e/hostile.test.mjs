// Hostile input, written as raw bytes over TCP to a real front on 127.0.0.1, on both paths
// (ordinary HTTP and upgrades): ambiguous framing (Content-Length with Transfer-Encoding,
// duplicate lengths, odd transfer codings), obs-fold, NUL bytes, oversized heads, invalid upgrades,
// requests pipelined behind an upgrade and requests smuggled behind `Expect: 100-continue`.
// For each: exactly what the client gets (status, and that the socket is closed), exactly what
// reached the upstream (parsed by a real Node server, and the raw bytes through a TCP tap), and
// that the front keeps serving afterwards (a request gets 200, a WebSocket round trip works).
import { afterEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { createProxy } from 'viaduct';
import {
  FRONT_KINDS,
  closeAll,
  listen,
  quietLogger,
  refusingUpstream,
  startFront,
  startUpstream,
} from '../helpers/servers.mjs';
import {
  HANDSHAKE_ACCEPT as ACCEPT,
  SWITCHING_PROTOCOLS as SWITCHING,
  handshake,
  openSocket,
  parseResponse,
  rawExchange,
  request,
  roundTrip,
  statusOf,
} from '../helpers/clients.mjs';
import { deferred, nextEvent, within } from '../helpers/waiting.mjs';

afterEach(closeAll);

// Every test gets a bound: a hang (a socket never closed, a byte never arriving) fails instead of stalling the file.
const BOUND = { timeout: 5_000 };

/** Every case runs on all four fronts (node:http and Express 5 are the ones that must be covered); the parser is Node's in all. */
const KINDS = FRONT_KINDS;
assert.ok(KINDS.includes('node') && KINDS.includes('express5'));

/** What Node's HTTP server writes (then closes) when its parser rejects a request: nothing of the proxy runs. */
const NODE_400 = 'HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n';
const NODE_431 = 'HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n';

/** A complete request appended, in the same write, behind every hostile one: it must never be answered or forwarded. */
const SMUGGLED = 'GET /smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n';

// ---------------------------------------------------------------------------------------------
// Helpers local to this file.

/** An HTTP request head for POST /h with raw header lines (anything, byte for byte), then `body`. */
function hostileHttp(lines, body = '', { method = 'POST', target = '/h' } = {}) {
  return `${method} ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\n${lines.map((line) => `${line}\r\n`).join('')}\r\n${body}`;
}

/**
 * A WebSocket handshake for /chat with raw header lines added (anything, byte for byte), then `body`
 * (a string, or a Buffer for bytes beyond ASCII: the result is then a Buffer).
 */
function hostileUpgrade(lines, body = '', { method = 'GET', target = '/chat' } = {}) {
  const base = handshake(target).replace(/^GET /, `${method} `).slice(0, -2);
  const head = `${base}${lines.map((line) => `${line}\r\n`).join('')}\r\n`;
  return Buffer.isBuffer(body)
    ? Buffer.concat([Buffer.from(head, 'latin1'), body])
    : `${head}${body}`;
}

/** A masked (client-to-server) WebSocket text frame, payload < 126 bytes. */
function maskedTextFrame(text) {
  const payload = Buffer.from(text);
  const key = Buffer.from([1, 2, 3, 4]);
  const masked = Buffer.from(payload.map((byte, i) => byte ^ key[i & 3]));
  return Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), key, masked]);
}

/**
 * A TCP tap in front of `port`: it passes bytes both ways and records, per connection, every byte
 * sent towards the upstream, so a test sees what reached it even when the upstream's parser rejects it.
 */
async function tapInto(port) {
  const connections = [];
  const server = net.createServer((inbound) => {
    const record = { bytes: '' };
    connections.push(record);
    const outbound = net.connect(port, '127.0.0.1');
    inbound.on('error', () => {});
    outbound.on('error', () => {});
    inbound.on('data', (chunk) => {
      record.bytes += chunk.toString('latin1');
    });
    inbound.pipe(outbound);
    outbound.pipe(inbound);
    inbound.on('close', () => outbound.destroy());
    outbound.on('close', () => inbound.destroy());
  });
  const tapPort = await listen(server);
  return {
    url: `http://127.0.0.1:${tapPort}`,
    connections,
    bytes: () => connections.map((c) => c.bytes).join(''),
  };
}

/**
 * A raw upstream that records every byte it gets, per connection: `before` up to and including the
 * chunk that completed the first request head, `after` what came once it had answered `answer`.
 * It never closes a connection itself.
 */
async function recordingUpstream(answer) {
  const connections = [];
  const server = net.createServer((socket) => {
    const conn = {
      before: '',
      after: '',
      answered: false,
      closed: nextEvent(socket, 'close'),
      waiters: [],
    };
    connections.push(conn);
    socket.on('error', () => {});
    socket.on('data', (chunk) => {
      const text = chunk.toString('latin1');
      if (conn.answered) conn.after += text;
      else conn.before += text;
      if (!conn.answered && conn.before.includes('\r\n\r\n')) {
        conn.answered = true;
        socket.write(answer);
      }
      for (const waiter of [...conn.waiters]) waiter();
    });
  });
  const port = await listen(server);
  return { url: `http://127.0.0.1:${port}`, port, connections };
}

/** Resolves once `conn.after` (bytes after the upstream answered) has at least `length` bytes. */
function afterHolds(conn, length) {
  const arrived = deferred();
  const check = () => conn.after.length >= length && arrived.resolve();
  conn.waiters.push(check);
  check();
  return arrived.promise;
}

/** The request lines (`METHOD target HTTP/x`) at the start of a message in a raw byte stream. */
function requestLines(raw) {
  return raw.match(/(?:^|\r\n\r\n)[A-Z]+ \S+ HTTP\/1\.[01]\r\n/g) ?? [];
}

/**
 * Splits a raw byte stream of responses into responses: a 1xx has no body, others are framed by
 * Content-Length, or (Node's own error answers) run to the end with `Connection: close`.
 */
function responsesIn(raw) {
  const responses = [];
  let rest = raw;
  while (rest.length > 0) {
    const end = rest.indexOf('\r\n\r\n');
    assert.ok(end > 0, `a complete response head in ${JSON.stringify(rest)}`);
    const { status, headers } = parseResponse(rest.slice(0, end + 4));
    let length;
    if (status >= 100 && status < 200) length = 0;
    else if (headers['content-length'] !== undefined) length = Number(headers['content-length']);
    else {
      assert.match(
        headers.connection ?? '',
        /close/i,
        'a response without a length runs to the close',
      );
      length = rest.length - end - 4;
    }
    responses.push({ status, headers, body: rest.slice(end + 4, end + 4 + length) });
    rest = rest.slice(end + 4 + length);
  }
  return responses;
}

/** The one response in `raw`, checked to have `status`; fails when there are more, or none. */
function onlyResponse(raw, status) {
  const responses = responsesIn(raw);
  assert.equal(responses.length, 1, `one answer only, got ${JSON.stringify(raw)}`);
  assert.equal(responses[0].status, status);
  return responses[0];
}

/**
 * A front of `kind` over a proxy whose default target is a well-behaved upstream (HTTP echo and
 * WebSocket echo) behind a recording tap. Errors the proxy emits are collected.
 */
async function setup(kind, { routes = {}, before = [], ...options } = {}) {
  const up = await startUpstream();
  // Hostile tunnel bytes are a protocol error to the upstream's ws: it closes, it must not crash the run.
  // Messages it receives are kept (`up.messages`): a message made of hostile bytes shows in a failure.
  up.messages = [];
  const firstMessage = deferred();
  up.firstMessage = firstMessage.promise;
  up.wss.on('connection', (ws) => {
    ws.on('error', () => {});
    ws.on('message', (data) => {
      up.messages.push(String(data));
      firstMessage.resolve();
    });
  });
  const tap = await tapInto(up.port);
  const logger = quietLogger();
  const proxy = createProxy({ target: tap.url, routes, logger, ...options });
  const errors = [];
  proxy.on('error', (error) => errors.push(error.code));
  const front = await startFront(kind, proxy, { before });
  return { up, tap, proxy, front, logger, errors };
}

/** Sends raw bytes and resolves with everything received once the front closed the connection (bounded). */
function exchange(front, bytes, what = 'the answer and the close') {
  return within(rawExchange(front.port, bytes), 3000, what);
}

/**
 * Sends raw bytes; `head` resolves with what was received once a response head is complete,
 * `closed` with everything received once the front closed the connection.
 */
function openExchange(front, bytes) {
  const socket = net.connect(front.port, '127.0.0.1');
  let received = '';
  const head = deferred();
  socket.on('error', () => {});
  socket.on('data', (chunk) => {
    received += chunk.toString('latin1');
    if (received.includes('\r\n\r\n')) head.resolve(received);
  });
  const closed = nextEvent(socket, 'close').then(() => received);
  socket.write(bytes);
  return { socket, head: head.promise, closed };
}

/** Nothing at all reached the upstream: no connection to it, no request parsed by it, no handshake. */
function assertUpstreamUntouched({ up, tap }) {
  assert.equal(
    tap.connections.length,
    0,
    `no connection to the upstream; it got ${JSON.stringify(tap.bytes())}`,
  );
  assert.equal(up.seen.length, 0);
  assert.equal(up.handshakes.length, 0);
}

/**
 * The front keeps serving: one ordinary request gets 200 from the upstream, one WebSocket opens and
 * round-trips. The upstream then holds exactly `seen` + 1 requests and `handshakes` + 1 handshakes:
 * nothing from the hostile exchange arrived late.
 */
async function assertServes({ up, front }, { seen = 0, handshakes = 0 } = {}) {
  const res = await within(request(`${front.url}/after`), 2000, 'a good request afterwards');
  assert.equal(res.status, 200, `a good request afterwards got ${res.status}: ${res.text}`);
  assert.equal(res.json().url, '/after');
  const { ws, greeting } = await within(
    openSocket(`${front.wsUrl}/after-ws`),
    2000,
    'a good WebSocket afterwards',
  );
  assert.equal(greeting, 'hello:/after-ws');
  assert.equal(await within(roundTrip(ws, 'ping'), 2000, 'a round trip afterwards'), 'echo:ping');
  const closed = nextEvent(ws, 'close');
  ws.close();
  await within(closed, 2000, 'the good WebSocket closed');
  assert.equal(
    up.seen.length,
    seen + 1,
    `no hostile request reached the upstream late: ${JSON.stringify(up.seen.map((r) => r.url))}`,
  );
  assert.equal(up.seen.at(-1).url, '/after');
  assert.equal(
    up.handshakes.length,
    handshakes + 1,
    'no hostile handshake reached the upstream late',
  );
  assert.equal(up.handshakes.at(-1).url, '/after-ws');
}

// ---------------------------------------------------------------------------------------------
// Rejected by Node's parser on the front, before the proxy runs: exactly Node's 400 / 431, then
// the close. The proxy emits nothing; the request appended behind the hostile one is never answered.

const BIG = 'a'.repeat(20 * 1024);
const MANY = Array.from({ length: 200 }, (_, i) => `X-Filler-${i}: ${'b'.repeat(90)}`);

const parserCases = [
  {
    name: 'Content-Length and Transfer-Encoding: chunked together (CL.TE)',
    lines: ['Content-Length: 5', 'Transfer-Encoding: chunked'],
    body: `0\r\n\r\n${SMUGGLED}`,
    answer: NODE_400,
  },
  {
    name: 'Transfer-Encoding: chunked and Content-Length together (TE.CL)',
    lines: ['Transfer-Encoding: chunked', `Content-Length: ${5 + SMUGGLED.length}`],
    body: `0\r\n\r\n${SMUGGLED}`,
    answer: NODE_400,
  },
  {
    name: 'duplicate Content-Length with differing values',
    lines: ['Content-Length: 5', `Content-Length: ${5 + SMUGGLED.length}`],
    body: `hello${SMUGGLED}`,
    answer: NODE_400,
  },
  {
    // Documented: Node rejects any repeated Content-Length, even equal values (RFC 9112 §6.3 would allow them).
    name: 'duplicate Content-Length with equal values (rejected as well)',
    lines: ['Content-Length: 5', 'Content-Length: 5'],
    body: 'hello',
    answer: NODE_400,
  },
  {
    name: 'Content-Length as a list of equal values ("5, 5", rejected as well)',
    lines: ['Content-Length: 5, 5'],
    body: 'hello',
    answer: NODE_400,
  },
  {
    name: 'obs-fold: a header line continued with leading whitespace',
    lines: ['X-Folded: one', ' two'],
    answer: NODE_400,
  },
  {
    name: 'obs-fold hiding "chunked" in a continuation of Transfer-Encoding',
    lines: ['Transfer-Encoding: identity', ' chunked', 'Content-Length: 5'],
    body: `hello${SMUGGLED}`,
    answer: NODE_400,
  },
  {
    name: 'a NUL byte in a header value',
    lines: ['X-Nul: a\0b'],
    answer: NODE_400,
  },
  {
    name: 'a NUL byte in the request target',
    lines: [],
    target: '/chat\0x',
    answer: NODE_400,
  },
  {
    name: 'a bare CR in a header value',
    lines: ['X-Cr: a\rb'],
    answer: NODE_400,
  },
  {
    name: 'one header beyond the 16 KiB default max header size',
    lines: [`X-Big: ${BIG}`],
    answer: NODE_431,
  },
  {
    name: '200 headers adding up to more than 16 KiB',
    lines: MANY,
    answer: NODE_431,
  },
  {
    name: 'Transfer-Encoding: chunked, identity (chunked not last)',
    lines: ['Transfer-Encoding: chunked, identity'],
    body: `5\r\nhello\r\n0\r\n\r\n${SMUGGLED}`,
    answer: NODE_400,
  },
  {
    name: 'Transfer-Encoding: chunked twice',
    lines: ['Transfer-Encoding: chunked', 'Transfer-Encoding: chunked'],
    body: `5\r\nhello\r\n0\r\n\r\n${SMUGGLED}`,
    answer: NODE_400,
  },
  {
    name: 'whitespace between Transfer-Encoding and the colon',
    lines: ['Transfer-Encoding : chunked', 'Content-Length: 5'],
    body: `hello${SMUGGLED}`,
    answer: NODE_400,
  },
];

for (const kind of KINDS) {
  describe(`${kind} front: rejected by the front's parser, on both paths`, () => {
    for (const c of parserCases) {
      const answerName = c.answer === NODE_431 ? '431' : '400';
      test(`HTTP: ${c.name} → Node's ${answerName}, closed, nothing upstream`, BOUND, async () => {
        const s = await setup(kind);
        const raw = await exchange(
          s.front,
          hostileHttp(c.lines, c.body ?? SMUGGLED, { target: c.target?.replace('/chat', '/h') }),
        );
        assert.equal(raw, c.answer, "exactly one answer, Node's own, then the close");
        assert.deepEqual(s.errors, [], 'the proxy never saw the request');
        assertUpstreamUntouched(s);
        await assertServes(s);
      });

      test(
        `upgrade: ${c.name} → Node's ${answerName}, closed, no handshake upstream`,
        BOUND,
        async () => {
          const s = await setup(kind);
          const raw = await exchange(
            s.front,
            hostileUpgrade(c.lines, c.body ?? SMUGGLED, { target: c.target }),
          );
          assert.equal(raw, c.answer, "exactly one answer, Node's own, then the close");
          assert.deepEqual(s.errors, [], 'the proxy never saw the upgrade');
          assertUpstreamUntouched(s);
          await assertServes(s);
        },
      );
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Requests Node lets through and the proxy refuses itself (transfer codings other than chunked,
// which Node accepts when chunked comes last or is absent; dot-segments), each with a request
// pipelined behind it in the same write. The proxy answers with Connection: close, so it must not
// process a further request on that connection (RFC 9112 §9.6). The upstream pool is warmed
// first: a pipelined request the proxy did forward would go out at once on the idle connection.

const proxyHttpRefusals = [
  {
    name: 'Transfer-Encoding: identity, chunked',
    bytes: hostileHttp(
      ['Transfer-Encoding: identity, chunked'],
      `5\r\nhello\r\n0\r\n\r\n${SMUGGLED}`,
    ),
    status: 501,
    body: '501 Not Implemented: Only the chunked transfer coding is supported.\n',
    code: 'EUNSUPPORTEDTE',
  },
  {
    name: 'Transfer-Encoding: xchunked',
    bytes: hostileHttp(['Transfer-Encoding: xchunked'], `5\r\nhello\r\n0\r\n\r\n${SMUGGLED}`),
    status: 501,
    body: '501 Not Implemented: Only the chunked transfer coding is supported.\n',
    code: 'EUNSUPPORTEDTE',
  },
  {
    name: 'a dot-segment path with a body (POST /a/%2e%2e/h, Content-Length: 5)',
    bytes: hostileHttp(['Content-Length: 5'], `hello${SMUGGLED}`, { target: '/a/%2e%2e/h' }),
    status: 400,
    body: '400 Bad Request: The request path is not allowed.\n',
    code: 'EBADPATH',
  },
  {
    name: 'a dot-segment path without a body (GET /a/../h)',
    bytes: hostileHttp([], SMUGGLED, { method: 'GET', target: '/a/../h' }),
    status: 400,
    body: '400 Bad Request: The request path is not allowed.\n',
    code: 'EBADPATH',
  },
];

for (const kind of KINDS) {
  describe(`${kind} front: refused by the proxy, a request pipelined behind`, () => {
    for (const c of proxyHttpRefusals) {
      test(
        `${c.name} → the proxy's ${c.status} with Connection: close, closed; neither request forwarded`,
        BOUND,
        async () => {
          const s = await setup(kind);
          const warm = await within(
            request(`${s.front.url}/warm`),
            2000,
            'warming the upstream pool',
          );
          assert.equal(warm.status, 200);
          const mark = s.tap.bytes().length;
          const raw = await exchange(s.front, c.bytes);
          const res = onlyResponse(raw, c.status);
          assert.equal(res.headers.connection, 'close');
          assert.equal(res.body, c.body);
          assert.deepEqual(s.errors, [c.code]);
          assert.deepEqual(
            s.up.seen.map((r) => r.url),
            ['/warm'],
            'the request pipelined behind an answer with Connection: close was processed (forwarded upstream)',
          );
          assert.doesNotMatch(s.tap.bytes().slice(mark), /smuggled|hello/);
          assert.equal(s.up.handshakes.length, 0);
          await assertServes(s, { seen: 1 });
        },
      );
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Invalid upgrade requests, each with a complete request pipelined behind it in the same write:
// one answer, then the close; the pipelined request is neither answered nor forwarded.

const proxyRefusals = [
  {
    name: 'POST with Upgrade: websocket',
    bytes: () => hostileUpgrade([], SMUGGLED, { method: 'POST' }),
  },
  {
    name: 'no Sec-WebSocket-Key',
    bytes: () => handshake('/chat', { 'sec-websocket-key': undefined }) + SMUGGLED,
  },
  // RFC 9110 §7.8: Upgrade in an HTTP/1.0 request is to be ignored; RFC 6455 asks for HTTP/1.1.
  {
    name: 'HTTP/1.0 handshake',
    bytes: () => handshake('/chat').replace(' HTTP/1.1\r\n', ' HTTP/1.0\r\n') + SMUGGLED,
  },
  {
    name: 'Upgrade: h2c (with HTTP2-Settings)',
    bytes: () =>
      handshake('/chat', {
        upgrade: 'h2c',
        connection: 'Upgrade, HTTP2-Settings',
        'http2-settings': 'AAMAAABkAARAAAAAAAIAAAAA',
        'sec-websocket-key': undefined,
        'sec-websocket-version': undefined,
      }) + SMUGGLED,
  },
];

const versionCases = [
  { name: 'no Sec-WebSocket-Version', version: undefined },
  { name: 'Sec-WebSocket-Version: 99', version: '99' },
];

for (const kind of KINDS) {
  describe(`${kind} front: invalid upgrade requests`, () => {
    for (const { name, bytes } of proxyRefusals) {
      test(`${name} → the proxy's 400 (EBADUPGRADE), closed, nothing upstream`, BOUND, async () => {
        const s = await setup(kind);
        const raw = await exchange(s.front, bytes());
        const res = onlyResponse(raw, 400);
        assert.equal(res.headers.connection, 'close');
        assert.equal(
          res.body,
          '400 Bad Request: Only WebSocket upgrades (GET with Upgrade: websocket and Sec-WebSocket-Key) are proxied.\n',
        );
        assert.deepEqual(s.errors, ['EBADUPGRADE']);
        assertUpstreamUntouched(s);
        assert.equal(s.proxy.stats().tunnels.rejected, 1);
        await assertServes(s);
      });
    }

    for (const { name, version } of versionCases) {
      // The version is the upstream's business: the proxy forwards the handshake, the upstream (ws) refuses it.
      test(
        `${name} → forwarded once; the upstream's 400 is passed on, closed; the pipelined request is not forwarded`,
        BOUND,
        async () => {
          const s = await setup(kind);
          const raw = await exchange(
            s.front,
            handshake('/chat', { 'sec-websocket-version': version }) + SMUGGLED,
          );
          const res = onlyResponse(raw, 400);
          assert.equal(res.headers.connection, 'close');
          assert.equal(res.body, 'Missing or invalid Sec-WebSocket-Version header');
          assert.deepEqual(s.errors, []);
          assert.equal(s.up.handshakes.length, 1);
          assert.equal(s.up.handshakes[0].url, '/chat');
          assert.equal(s.up.handshakes[0].headers['sec-websocket-version'], version);
          assert.equal(
            s.up.seen.length,
            0,
            'the pipelined request never reached the upstream as HTTP',
          );
          assert.equal(s.tap.connections.length, 1);
          assert.deepEqual(
            requestLines(s.tap.bytes()),
            ['GET /chat HTTP/1.1\r\n'],
            'exactly one request on the upstream connection',
          );
          assert.doesNotMatch(s.tap.bytes(), /smuggled/);
          assert.equal(s.proxy.stats().tunnels.rejected, 1);
          await assertServes(s, { handshakes: 1 });
        },
      );
    }

    // A WebSocket handshake has no body (RFC 6455 §4.1: a GET; RFC 9110 §9.3.1: content in a GET has no
    // meaning and is a known smuggling vector). Node's front hands the body bytes over as the upgrade's
    // `head`; forwarded, the upstream would see a head announcing a body that only comes after its 101.
    const bodyCases = [
      {
        name: 'Content-Length: N, a WebSocket frame as the body',
        lines: (frame) => [`Content-Length: ${frame.length}`],
        body: (frame) => frame,
      },
      {
        name: 'Transfer-Encoding: chunked, a WebSocket frame as the chunk',
        lines: () => ['Transfer-Encoding: chunked'],
        body: (frame) =>
          Buffer.concat([
            Buffer.from(`${frame.length.toString(16)}\r\n`),
            frame,
            Buffer.from('\r\n0\r\n\r\n'),
          ]),
      },
    ];
    for (const b of bodyCases) {
      test(
        `GET upgrade announcing a body (${b.name}) → 400, closed, no handshake upstream`,
        BOUND,
        async () => {
          const s = await setup(kind);
          const frame = maskedTextFrame('made-of-body-bytes');
          const client = openExchange(s.front, hostileUpgrade(b.lines(frame), b.body(frame)));
          const head = await within(client.head, 2000, 'the answer');
          if (statusOf(head) !== 400) {
            // Not refused: let the upstream show what it made of the body bytes (a message, or a protocol
            // error that closes the tunnel), for the failure message below.
            await within(
              Promise.race([s.up.firstMessage, client.closed]),
              1000,
              'a message upstream or the close',
            ).catch(() => {});
            client.socket.destroy();
          }
          assert.equal(
            statusOf(head),
            400,
            `an upgrade with a body is refused; got ${JSON.stringify(head.slice(0, 120))}, ` +
              `the upstream's handshake headers ${JSON.stringify(s.up.handshakes[0]?.headers)}, its WebSocket messages ${JSON.stringify(s.up.messages)}`,
          );
          const raw = await within(client.closed, 2000, 'the close after the 400');
          assert.equal(responsesIn(raw).length, 1);
          assertUpstreamUntouched(s);
          assert.deepEqual(s.up.messages, []);
          await assertServes(s);
        },
      );
    }

    if (kind !== 'node') {
      test(
        'a middleware answers the upgrade with 401: that answer only, closed; the pipelined request is neither answered nor forwarded',
        BOUND,
        async () => {
          const deny = (req, res, next) => {
            if (req.headers['x-deny'] === undefined) return next();
            res.statusCode = 401;
            res.setHeader('content-type', 'text/plain');
            res.setHeader('content-length', '7');
            res.end('denied\n');
          };
          const s = await setup(kind, { before: [deny] });
          const raw = await exchange(s.front, handshake('/chat', { 'x-deny': '1' }) + SMUGGLED);
          const res = onlyResponse(raw, 401);
          assert.equal(res.body, 'denied\n');
          assertUpstreamUntouched(s);
          await assertServes(s);
        },
      );
    }
  });
}

// ---------------------------------------------------------------------------------------------
// A request pipelined behind an upgrade in the same write: never an HTTP request upstream.

const FORBIDDEN =
  'HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nnope\n';

for (const kind of KINDS) {
  describe(`${kind} front: a request pipelined behind an upgrade`, () => {
    test(
      'the upstream refuses (403, then closes; refusingUpstream): its answer only, closed; the upstream got exactly one request',
      BOUND,
      async () => {
        const refusing = await refusingUpstream(FORBIDDEN);
        const s = await setup(kind, { routes: { '/refused': refusing.url } });
        const raw = await exchange(s.front, handshake('/refused/chat') + SMUGGLED);
        const res = onlyResponse(raw, 403);
        assert.equal(res.body, 'nope\n');
        assert.equal(res.headers.connection, 'close');
        assert.equal(refusing.heads.length, 1, 'one request head, and nothing after it');
        assert.deepEqual(requestLines(refusing.heads[0]), ['GET /refused/chat HTTP/1.1\r\n']);
        assert.ok(refusing.heads[0].endsWith('\r\n\r\n'), 'nothing behind the head');
        assert.doesNotMatch(refusing.heads[0], /smuggled/);
        assertUpstreamUntouched(s);
        await assertServes(s);
      },
    );

    test(
      'the upstream refuses (403) and keeps its connection open: the proxy closes it; it got exactly one head, nothing after',
      BOUND,
      async () => {
        const raw403 = await recordingUpstream(FORBIDDEN);
        const s = await setup(kind, { routes: { '/refused': raw403.url } });
        const raw = await exchange(s.front, handshake('/refused/chat') + SMUGGLED);
        const res = onlyResponse(raw, 403);
        assert.equal(res.body, 'nope\n');
        assert.equal(raw403.connections.length, 1);
        const [conn] = raw403.connections;
        await within(conn.closed, 2000, 'the proxy closing the refused upstream connection');
        assert.deepEqual(requestLines(conn.before), ['GET /refused/chat HTTP/1.1\r\n']);
        assert.ok(
          conn.before.endsWith('\r\n\r\n'),
          `nothing behind the head, got ${JSON.stringify(conn.before)}`,
        );
        assert.equal(conn.after, '', 'no byte after the refusal');
        assert.equal(
          raw403.connections.length,
          1,
          'no second connection for the pipelined request',
        );
        assertUpstreamUntouched(s);
        await assertServes(s);
      },
    );

    test(
      'the upstream accepts (raw 101): the pipelined bytes arrive only after the 101, as tunnel data, byte for byte',
      BOUND,
      async () => {
        const raw101 = await recordingUpstream(SWITCHING);
        const s = await setup(kind, { routes: { '/accepted': raw101.url } });
        const client = net.connect(s.front.port, '127.0.0.1');
        client.on('error', () => {});
        let received = '';
        const head = deferred();
        client.on('data', (chunk) => {
          received += chunk.toString('latin1');
          if (received.includes('\r\n\r\n')) head.resolve();
        });
        const clientClosed = nextEvent(client, 'close');
        client.write(handshake('/accepted/chat') + SMUGGLED);
        await within(head.promise, 2000, 'the 101');
        assert.equal(statusOf(received), 101);
        assert.equal(parseResponse(received).headers['sec-websocket-accept'], ACCEPT);
        assert.equal(raw101.connections.length, 1);
        const [conn] = raw101.connections;
        await within(afterHolds(conn, SMUGGLED.length), 2000, 'the pipelined bytes as tunnel data');
        assert.deepEqual(
          requestLines(conn.before),
          ['GET /accepted/chat HTTP/1.1\r\n'],
          'before its 101 the upstream got one request head',
        );
        assert.ok(
          conn.before.endsWith('\r\n\r\n'),
          `nothing behind the head before the 101, got ${JSON.stringify(conn.before)}`,
        );
        assert.equal(conn.after, SMUGGLED, 'after the 101: the pipelined bytes, unchanged, once');
        client.destroy();
        await within(clientClosed, 2000, 'the client closed');
        await within(conn.closed, 2000, 'the tunnel torn down upstream');
        assert.equal(raw101.connections.length, 1);
        assertUpstreamUntouched(s);
        await assertServes(s);
      },
    );

    test(
      'the upstream accepts (ws): the pipelined bytes are tunnel data, never parsed as HTTP; ws closes on them; closed',
      BOUND,
      async () => {
        const s = await setup(kind);
        const raw = await exchange(
          s.front,
          handshake('/chat') + SMUGGLED,
          'the 101, then the close the upstream makes',
        );
        assert.equal(statusOf(raw), 101);
        const afterHead = Buffer.from(parseResponse(raw).body, 'latin1');
        // The upstream's greeting frame, then its close frame: 1002 (protocol error) for "GET ..." as a frame.
        const close = afterHead.subarray(afterHead.length - 4);
        assert.equal(close[0], 0x88, `a close frame last, got ${afterHead.toString('hex')}`);
        assert.equal(close.readUInt16BE(2), 1002);
        assert.equal(s.up.handshakes.length, 1);
        assert.equal(s.up.handshakes[0].url, '/chat');
        assert.equal(
          s.up.seen.length,
          0,
          'the pipelined request was never an HTTP request upstream',
        );
        assert.deepEqual(s.up.messages, [], 'no message either: "GET ..." is no valid frame');
        // Upstream, through the tap: one head, then the pipelined bytes unchanged (as tunnel data; that they
        // come only after the 101 is shown with the raw upstream above).
        assert.equal(s.tap.connections.length, 1);
        const bytes = s.tap.bytes();
        const headEnd = bytes.indexOf('\r\n\r\n') + 4;
        assert.match(bytes.slice(0, headEnd), /^GET \/chat HTTP\/1\.1\r\n/);
        assert.equal(bytes.slice(headEnd), SMUGGLED);
        await assertServes(s, { handshakes: 1 });
      },
    );
  });
}

// ---------------------------------------------------------------------------------------------
// Requests smuggled behind `Expect: 100-continue`: the front answers 100, each request reaches
// the upstream delimited as the client framed it, and no request is made of body bytes.

const IN_BODY = 'GET /in-body HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n';
const LAST = 'GET /last HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n';

const expectCases = [
  {
    name: 'Content-Length: 5 and its body, then another request',
    bytes: hostileHttp(
      ['Expect: 100-continue', 'Content-Length: 5', 'Content-Type: text/plain'],
      `hello${LAST}`,
    ),
    body: 'hello',
  },
  {
    name: 'a body (Content-Length) that is itself a request, then another request',
    bytes: hostileHttp(
      ['Expect: 100-continue', `Content-Length: ${IN_BODY.length}`, 'Content-Type: text/plain'],
      `${IN_BODY}${LAST}`,
    ),
    body: IN_BODY,
  },
  {
    name: 'a chunked body that is itself a request, then another request',
    bytes: hostileHttp(
      ['Expect: 100-continue', 'Transfer-Encoding: chunked', 'Content-Type: text/plain'],
      `${IN_BODY.length.toString(16)}\r\n${IN_BODY}\r\n0\r\n\r\n${LAST}`,
    ),
    body: IN_BODY,
  },
];

for (const kind of KINDS) {
  describe(`${kind} front: a request smuggled behind Expect: 100-continue`, () => {
    for (const c of expectCases) {
      test(
        `${c.name}: 100, 200, 200; the upstream sees exactly POST (that body) and GET /last`,
        BOUND,
        async () => {
          const s = await setup(kind);
          const raw = await exchange(s.front, c.bytes, 'both answers and the close');
          const responses = responsesIn(raw);
          assert.deepEqual(
            responses.map((r) => r.status),
            [100, 200, 200],
            `100 Continue, then one answer per request; got ${JSON.stringify(raw.slice(0, 400))}`,
          );
          assert.equal(JSON.parse(responses[1].body).url, '/h');
          assert.equal(JSON.parse(responses[2].body).url, '/last');
          assert.deepEqual(
            s.up.seen.map((r) => [r.method, r.url, r.body.toString('latin1')]),
            [
              ['POST', '/h', c.body],
              ['GET', '/last', ''],
            ],
          );
          assert.equal(
            s.up.seen[0].headers.expect,
            undefined,
            'the front answered the expectation; it is not forwarded',
          );
          assert.equal(
            s.up.seen.filter((r) => r.url === '/in-body').length,
            0,
            'no request built from body bytes',
          );
          assert.deepEqual(s.errors, []);
          assert.equal(s.up.handshakes.length, 0);
          await assertServes(s, { seen: 2 });
        },
      );
    }
  });
}
