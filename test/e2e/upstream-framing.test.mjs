// How the upstream frames its responses, ported from nginx's own test suite (nginx-tests:
// proxy_extra_data.t, proxy_chunked.t, proxy_chunked_extra.t, proxy_duplicate_headers.t,
// proxy_early_hints.t, proxy_keepalive.t, proxy_unfinished.t, proxy_upgrade.t, proxy_websocket.t).
// Raw TCP upstreams on 127.0.0.1 write exact bytes; raw client sockets (and Node's http client)
// read exact bytes; each test says what each side received, and on which upstream connection.
//
// Cases about nginx-only features (proxy_cache, add_after_body, SSI, proxy_buffering on/off,
// early_hints off, HTTP/2, HTTP/3) are left out; the wire behaviour behind them is kept (nginx's
// buffered, unbuffered and in-memory locations are one case here: viaduct streams). viaduct only
// tunnels WebSocket handshakes, so proxy_upgrade.t's `Upgrade: foo` is `Upgrade: websocket` here.
import { afterEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { EventEmitter } from 'node:events';
import { createHash, randomBytes } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { createProxy, ProxyError } from 'viaduct';
import { closeAll, quietLogger, startFront } from '../helpers/servers.mjs';
import { openSocket, roundTrip } from '../helpers/clients.mjs';
import { nextEvent, until, within } from '../helpers/waiting.mjs';
import { latin1, rawUpstream } from '../helpers/raw-upstream.mjs';

afterEach(closeAll);

// Every test gets a bound: a hang (a socket never closed, a byte never arriving) fails instead of stalling the file.
const BOUND = { timeout: 5_000 };

/** The important cases run on a plain node:http front and on Express 5. */
const KINDS = ['node', 'express5'];

const CRLF = '\r\n';

// ---------------------------------------------------------------------------------------------
// Helpers local to this file.

/** A raw request (latin1 text): request line, `Host`, the given header lines in order, then `body`. */
function requestText(path, { method = 'GET', version = '1.1', headers = {}, body = '' } = {}) {
  let text = `${method} ${path} HTTP/${version}\r\nHost: 127.0.0.1\r\n`;
  for (const [name, value] of Object.entries(headers)) text += `${name}: ${value}\r\n`;
  return `${text}\r\n${body}`;
}

/** Parses a response head (status line to the empty line): status, each field line in order, and headers joined by ', '. */
function parseHead(head) {
  const [statusLine, ...lines] = head.slice(0, -4).split(CRLF);
  const match = /^HTTP\/(1\.[01]) (\d{3})(?: (.*))?$/.exec(statusLine);
  assert.ok(match, `a status line, got ${JSON.stringify(statusLine)}`);
  const fields = lines.map((line) => {
    const colon = line.indexOf(':');
    assert.ok(colon > 0, `a header line, got ${JSON.stringify(line)}`);
    return [line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim()];
  });
  const headers = {};
  for (const [name, value] of fields)
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
  return {
    version: match[1],
    status: Number(match[2]),
    reason: match[3] ?? '',
    fields,
    headers,
    head,
  };
}

/** Every value of header `name`, one per field line, in order. */
function fieldValues(response, name) {
  return response.fields.filter(([field]) => field === name).map(([, value]) => value);
}

/**
 * Decodes a chunked body that starts at `at` in `buffer`: `{ body, end }` once the last chunk and
 * the trailer section are all there, `undefined` while they are not. A malformed chunk fails.
 */
function decodeChunked(buffer, at) {
  let body = '';
  for (;;) {
    const lineEnd = buffer.indexOf(CRLF, at);
    if (lineEnd < 0) return undefined;
    const sizeText = buffer.slice(at, lineEnd).split(';')[0].trim();
    assert.match(
      sizeText,
      /^[0-9a-fA-F]+$/,
      `a chunk-size line, got ${JSON.stringify(buffer.slice(at, at + 40))}`,
    );
    const size = parseInt(sizeText, 16);
    at = lineEnd + 2;
    if (size === 0) {
      if (buffer.length < at + 2) return undefined;
      if (buffer.startsWith(CRLF, at)) return { body, end: at + 2 };
      const end = buffer.indexOf('\r\n\r\n', at);
      return end < 0 ? undefined : { body, end: end + 4 };
    }
    if (buffer.length < at + size + 2) return undefined;
    body += buffer.slice(at, at + size);
    assert.equal(buffer.slice(at + size, at + size + 2), CRLF, 'CRLF after the chunk data');
    at += size + 2;
  }
}

/** The data in a chunked body cut short (its last chunk may be partial), and whether the last chunk is there. */
function chunksSoFar(body) {
  let data = '';
  let at = 0;
  for (;;) {
    const lineEnd = body.indexOf(CRLF, at);
    if (lineEnd < 0) return { data, last: false };
    const size = parseInt(body.slice(at, lineEnd), 16);
    if (size === 0) return { data, last: true };
    data += body.slice(lineEnd + 2, lineEnd + 2 + size);
    if (body.length < lineEnd + 2 + size + 2) return { data, last: false };
    at = lineEnd + 2 + size + 2;
  }
}

/**
 * The first response at the start of `buffer` (latin1), read as a client reads it: 1xx responses
 * (but 101) are collected in `informational`; the body is framed by the method, the status,
 * `Transfer-Encoding: chunked` (decoded), `Content-Length`, or else runs to the close (complete only
 * once `ended`). Returns `{ response, rest }`, or `undefined` while the response is incomplete.
 */
function splitResponse(buffer, method, ended) {
  const informational = [];
  let at = 0;
  for (;;) {
    const end = buffer.indexOf('\r\n\r\n', at);
    if (end < 0) return undefined;
    const parsed = parseHead(buffer.slice(at, end + 4));
    at = end + 4;
    if (parsed.status >= 100 && parsed.status < 200 && parsed.status !== 101) {
      informational.push(parsed);
      continue;
    }
    let body;
    let bodyEnd;
    if (
      method === 'HEAD' ||
      parsed.status === 101 ||
      parsed.status === 204 ||
      parsed.status === 304
    ) {
      body = '';
      bodyEnd = at;
    } else if (/\bchunked\b/i.test(parsed.headers['transfer-encoding'] ?? '')) {
      const decoded = decodeChunked(buffer, at);
      if (!decoded) return undefined;
      ({ body, end: bodyEnd } = decoded);
    } else if (parsed.headers['content-length'] !== undefined) {
      const length = Number(parsed.headers['content-length']);
      if (buffer.length < at + length) return undefined;
      body = buffer.slice(at, at + length);
      bodyEnd = at + length;
    } else {
      if (!ended) return undefined;
      body = buffer.slice(at);
      bodyEnd = buffer.length;
    }
    return {
      response: { ...parsed, informational, body, raw: buffer.slice(0, bodyEnd) },
      rest: buffer.slice(bodyEnd),
    };
  }
}

/** A WebSocket frame; client frames are masked (RFC 6455 §5.3). `payload` is a Buffer or latin1 text. */
function encodeFrame(opcode, payload, mask) {
  const data = Buffer.isBuffer(payload) ? payload : Buffer.from(payload, 'latin1');
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

/** The first frame at the start of `buffer`: `{ frame: { opcode, masked, payload }, size }`, or `undefined` while incomplete. */
function decodeFrame(buffer) {
  if (buffer.length < 2) return undefined;
  const opcode = buffer[0] & 0x0f;
  const masked = (buffer[1] & 0x80) !== 0;
  let length = buffer[1] & 0x7f;
  let header = 2;
  if (length === 126) {
    if (buffer.length < 4) return undefined;
    length = buffer.readUInt16BE(2);
    header = 4;
  } else if (length === 127) {
    if (buffer.length < 10) return undefined;
    length = Number(buffer.readBigUInt64BE(2));
    header = 10;
  }
  if (masked) header += 4;
  if (buffer.length < header + length) return undefined;
  let payload = Buffer.from(buffer.subarray(header, header + length));
  if (masked) {
    const key = buffer.subarray(header - 4, header);
    payload = Buffer.from(payload.map((byte, i) => byte ^ key[i & 3]));
  }
  return { frame: { opcode, masked, payload }, size: header + length };
}

/**
 * A raw client connection to the front. `all` is every byte received (latin1), `pending` what no
 * `response()` or `nextFrame()` has taken yet; `closed` resolves with `all` once the front closed it.
 */
class RawClient extends EventEmitter {
  constructor(port) {
    super();
    this.socket = net.connect(port, '127.0.0.1');
    this.all = '';
    this.pending = '';
    this.ended = false;
    this.socket.on('error', () => {});
    this.socket.on('data', (chunk) => {
      const text = chunk.toString('latin1');
      this.all += text;
      this.pending += text;
      this.emit('change');
    });
    this.closed = new Promise((resolve) => {
      this.socket.once('close', () => {
        this.ended = true;
        this.emit('change');
        resolve(this.all);
      });
    });
  }

  send(bytes) {
    this.socket.write(typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes);
  }

  /** The next response (with the 1xx before it) to a request with `method`; fails if the connection closes first. */
  response(method = 'GET', what = 'a response') {
    const taken = until(this, () => {
      const split = splitResponse(this.pending, method, this.ended);
      if (split) {
        this.pending = split.rest;
        return split.response;
      }
      if (this.ended)
        throw new Error(
          `${what}: the connection closed before a complete response; received ${JSON.stringify(this.all)}`,
        );
      return undefined;
    });
    return within(taken, 2_000, what);
  }

  /** Resolves once `test(all)` holds; fails if the connection closes first. */
  received(test, what) {
    const held = until(this, () => {
      if (test(this.all)) return true;
      if (this.ended)
        throw new Error(
          `${what}: the connection closed first; received ${JSON.stringify(this.all)}`,
        );
      return undefined;
    });
    return within(held, 2_000, what);
  }

  /** The next WebSocket frame in `pending`. */
  nextFrame(what = 'a frame') {
    const taken = until(this, () => {
      const decoded = decodeFrame(Buffer.from(this.pending, 'latin1'));
      if (decoded) {
        this.pending = this.pending.slice(decoded.size);
        return decoded.frame;
      }
      if (this.ended)
        throw new Error(
          `${what}: the connection closed first; pending ${JSON.stringify(this.pending.slice(0, 200))}`,
        );
      return undefined;
    });
    return within(taken, 2_000, what);
  }

  /** Resolves with `all` once the front closed the connection. */
  untilClosed(what = 'the front closes the client connection') {
    return within(this.closed, 2_000, what);
  }
}

/**
 * A proxy to a raw upstream, with a quiet logger and its `error` events kept, on a front of `kind`.
 * `finished` holds, for each request the front received, a promise of its response's 'close'.
 */
async function setup(kind, answer, { onTunnel, ...options } = {}) {
  const up = await rawUpstream(answer, { onTunnel });
  const logger = quietLogger();
  const proxy = createProxy({ target: up.url, logger, ...options });
  const errors = [];
  proxy.on('error', (error) => errors.push(error));
  const front = await startFront(kind, proxy);
  const finished = [];
  front.server.on('request', (_req, res) => finished.push(nextEvent(res, 'close')));
  return { up, proxy, front, logger, errors, finished, client: () => new RawClient(front.port) };
}

/** The `error` events as `[is a ProxyError, status, code]`. */
function errorCodes(errors) {
  return errors.map((error) => [error instanceof ProxyError, error.status, error.code]);
}

function logged(logger, level, pattern) {
  return logger.lines.some(([at, message]) => at === level && pattern.test(message));
}

/** Every response the front started has closed, and the proxy counts no request in flight. */
async function assertSettled({ finished, proxy }) {
  await within(Promise.all(finished), 2_000, 'every front response closed');
  assert.equal(proxy.stats().requests.active, 0, 'no request left active');
}

/** A proxy-made error answer: `status`, a short text body, nothing of the upstream's. */
function assertProxyMade(response, status) {
  assert.equal(response.status, status, `a ${status}, got ${JSON.stringify(response.raw)}`);
  assert.match(response.headers['content-type'] ?? '', /^text\/plain/);
  assert.match(response.body, new RegExp(`^${status} `));
  assert.ok(response.body.length < 200, `a short body: ${JSON.stringify(response.body)}`);
}

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const KEY = 'dGhlIHNhbXBsZSBub25jZQ==';
const acceptFor = (key) =>
  createHash('sha1')
    .update(key + GUID)
    .digest('base64');

/** A raw WebSocket handshake request. */
function wsHandshake(path, headers = {}) {
  return requestText(path, {
    headers: {
      Upgrade: 'websocket',
      Connection: 'Upgrade',
      'Sec-WebSocket-Key': KEY,
      'Sec-WebSocket-Version': '13',
      ...headers,
    },
  });
}

/** An upstream's 101 to a WebSocket handshake `request`, naming the protocol the client asked for. */
function switching(request) {
  return `HTTP/1.1 101 Switching Protocols\r\nUpgrade: ${request.headers.upgrade}\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptFor(request.headers['sec-websocket-key'])}\r\n\r\n`;
}

/** proxy_upgrade.t's backend, on WebSocket frames: every frame comes back unmasked with foo → bar; a close is answered and the connection ended. */
function echoFooBar(conn, text) {
  conn.frames = (conn.frames ?? '') + text;
  for (;;) {
    const decoded = decodeFrame(Buffer.from(conn.frames, 'latin1'));
    if (!decoded) return;
    conn.frames = conn.frames.slice(decoded.size);
    const { opcode, payload } = decoded.frame;
    if (opcode === 0x8) {
      conn.socket.end(encodeFrame(0x8, payload, false));
      return;
    }
    conn.send(encodeFrame(opcode, payload.toString('latin1').replaceAll('foo', 'bar'), false));
  }
}

const hex = (n) => n.toString(16);

// ---------------------------------------------------------------------------------------------

describe('a 101 to a request that asked for no upgrade', () => {
  for (const kind of KINDS) {
    test(
      `proxy_upgrade.t "handshake noupgrade" (${kind}): 502 EBADRESPONSE, logged, the 101 and its bytes never relayed, active back to 0`,
      BOUND,
      async () => {
        // nginx's backend answers everything with a 101, then 'handshaked'.
        const s = await setup(
          kind,
          () =>
            'HTTP/1.1 101 Switching\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\nhandshaked\r\n',
        );
        const client = s.client();
        client.send(requestText('/', { headers: { Connection: 'Upgrade' } }));
        const res = await client.response('GET', 'the answer to a plain GET the upstream switched');
        assertProxyMade(res, 502);
        assert.deepEqual(res.informational, [], 'no 1xx reached the client');
        assert.ok(
          !client.all.includes(' 101 '),
          `no 101 reached the client: ${JSON.stringify(client.all)}`,
        );
        assert.ok(
          !client.all.includes('handshaked'),
          'none of the bytes after the 101 reached the client',
        );
        assert.equal(
          s.up.requests[0].headers.upgrade,
          undefined,
          'the upstream was asked for no upgrade',
        );
        assert.deepEqual(errorCodes(s.errors), [[true, 502, 'EBADRESPONSE']]);
        assert.ok(
          logged(s.logger, 'error', /502/),
          `an error line: ${JSON.stringify(s.logger.lines)}`,
        );
        await assertSettled(s);
        await within(
          s.up.connections[0].closed,
          2_000,
          'the switched upstream connection is closed',
        );
        assert.equal(s.proxy.stats().tunnels.total, 0, 'no tunnel');
      },
    );
  }

  test(
    'proxy_upgrade.t "handshake noupgrade" (Node\'s http client): the request settles with 502, no hang, no information event',
    BOUND,
    async () => {
      const s = await setup(
        'node',
        () =>
          'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n',
      );
      const informational = [];
      const res = await within(
        new Promise((resolve, reject) => {
          const req = http.request(`${s.front.url}/plain`, { agent: false }, (response) => {
            let body = '';
            response.setEncoding('latin1');
            response.on('data', (chunk) => (body += chunk));
            response.on('end', () => resolve({ status: response.statusCode, body }));
          });
          req.on('information', (info) => informational.push(info.statusCode));
          req.on('upgrade', () => reject(new Error('the client was upgraded')));
          req.on('error', reject);
          req.end();
        }),
        2_000,
        'the HTTP answer',
      );
      assert.equal(res.status, 502);
      assert.deepEqual(informational, []);
      assert.deepEqual(errorCodes(s.errors), [[true, 502, 'EBADRESPONSE']]);
      await assertSettled(s);
    },
  );
});

describe('proxy_extra_data.t / proxy_chunked_extra.t: bytes after a complete response', () => {
  const NEXT = 'HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext';
  const cases = [
    {
      name: 'proxy_extra_data.t "response with extra data"',
      answer:
        'HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 8\r\n\r\nSEE-THIS-BUT-NOT-THIS\n',
      headers: { 'content-type': 'text/html', 'content-length': '8' },
      body: 'SEE-THIS',
      extra: '-BUT-NOT-THIS',
    },
    {
      name: 'proxy_extra_data.t "response with extra data" (the extra bytes begin another response)',
      answer:
        'HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSEE-THISHTTP/1.1 200 OK\r\nX-Poison: yes\r\n',
      headers: { 'content-length': '8' },
      body: 'SEE-THIS',
      extra: 'X-Poison',
      // Node's parser drops a head it has not finished with the parser when the response ends,
      // unseen by anyone (README: Behaviour on the wire): the connection may be reused.
      unseen: true,
    },
    {
      name: 'proxy_extra_data.t "response with extra data" (the extra bytes are a whole second response)',
      answer:
        'HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSEE-THISHTTP/1.1 200 OK\r\nX-Poison: yes\r\nContent-Length: 6\r\n\r\nPOISON',
      headers: { 'content-length': '8' },
      body: 'SEE-THIS',
      extra: 'POISON',
    },
    {
      name: 'proxy_extra_data.t "zero size"',
      answer: 'HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 0\r\n\r\nNOT-THIS\n',
      headers: { 'content-length': '0' },
      body: '',
      extra: 'NOT-THIS',
    },
    {
      name: 'proxy_extra_data.t "no data in HEAD"',
      method: 'HEAD',
      answer:
        'HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 8\r\n\r\nSEE-THIS-BUT-NOT-THIS\n',
      headers: { 'content-type': 'text/html', 'content-length': '8' },
      body: '',
      extra: 'SEE-THIS',
    },
    {
      name: 'proxy_extra_data.t "head matching" (a HEAD answered with exactly Content-Length body bytes)',
      method: 'HEAD',
      answer: 'HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 8\r\n\r\nSEE-THIS',
      headers: { 'content-length': '8' },
      body: '',
      extra: 'SEE-THIS',
    },
    {
      name: 'proxy_extra_data.t "too short to HEAD"',
      method: 'HEAD',
      answer:
        'HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 100\r\n\r\nSEE-THIS-TOO-SHORT-RESPONSE\n',
      headers: { 'content-length': '100' },
      body: '',
      extra: 'SEE-THIS',
    },
    {
      name: 'proxy_chunked_extra.t "chunked with extra data" (in the write of the last chunk)',
      answer:
        'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nSEE-THIS\r\n0\r\n\r\n3\r\nzzz\r\n0\r\n\r\n',
      headers: {},
      body: 'SEE-THIS',
      extra: 'zzz',
    },
    {
      name: 'proxy_extra_data.t "no data in HEAD", for a 204 No Content with a body',
      answer: 'HTTP/1.1 204 No Content\r\nX-Case: 204\r\n\r\nNOT-THIS',
      status: 204,
      headers: { 'x-case': '204' },
      body: '',
      extra: 'NOT-THIS',
    },
    {
      name: 'proxy_extra_data.t "no data in HEAD", for a 304 Not Modified with a body',
      answer: 'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\nNOT-THIS',
      status: 304,
      headers: { etag: '"v1"' },
      body: '',
      extra: 'NOT-THIS',
    },
  ];

  for (const c of cases) {
    for (const kind of KINDS) {
      const what = c.unseen
        ? 'the response intact, the extra bytes dropped, the client connection kept'
        : 'the response intact, the extra bytes dropped with a warn line, the client connection kept, the upstream one not reused';
      test(`${c.name} (${kind}): ${what}`, BOUND, async () => {
        const method = c.method ?? 'GET';
        const s = await setup(kind, (req) => (req.target === '/next' ? NEXT : c.answer));
        const client = s.client();
        client.send(requestText('/first', { method }));
        const first = await client.response(method, 'the first response');
        assert.equal(first.status, c.status ?? 200);
        for (const [name, value] of Object.entries(c.headers))
          assert.equal(first.headers[name], value, `${name} as the upstream sent it`);
        assert.equal(first.body, c.body, 'the whole body, byte for byte');

        client.send(requestText('/next'));
        const second = await client.response(
          'GET',
          'a second response on the same client connection',
        );
        assert.equal(second.status, 200);
        assert.equal(second.body, 'next');
        assert.equal(client.pending, '', 'nothing else on the client connection');
        assert.ok(
          !client.all.includes(c.extra),
          `the extra bytes never reach the client: ${JSON.stringify(client.all)}`,
        );
        if (c.unseen) return assertSettled(s);

        assert.deepEqual(
          s.up.connections.map((conn) => conn.requests.map((r) => r.target)),
          [['/first'], ['/next']],
          'the next request went over a new upstream connection',
        );
        await within(
          s.up.connections[0].closed,
          2_000,
          'the upstream connection that sent extra bytes is closed',
        );
        assert.ok(
          logged(s.logger, 'warn', /after a complete response/),
          `a warn line: ${JSON.stringify(s.logger.lines)}`,
        );
        assert.deepEqual(errorCodes(s.errors), [], 'the response was relayed whole: no error');
        await assertSettled(s);
      });
    }
  }

  for (const kind of KINDS) {
    test(
      `proxy_chunked_extra.t "chunked with extra data" (${kind}): nginx's two writes, the second with more chunks after the last: no z reaches the client`,
      BOUND,
      async () => {
        let first;
        const s = await setup(kind, (req) => {
          if (req.target === '/next') return NEXT;
          first = req;
          const chunk = (size, text) => `${size}${CRLF}${text}${CRLF}${CRLF}`;
          return `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${chunk('80', 'x'.repeat(126)).repeat(4)}${chunk('20', 'x'.repeat(30))}`;
        });
        const client = s.client();
        client.send(requestText('/'));
        const xs = 126 * 4 + 30;
        // The first write is streamed to the client before the upstream writes the rest.
        await client.received(
          (all) => all.split('x').length - 1 >= xs,
          'the x chunks streamed to the client',
        );
        first.conn.send(
          `75\r\n${'y'.repeat(115)}\r\n\r\n0\r\n\r\n` +
            `75\r\n${'z'.repeat(115)}\r\n\r\n0\r\n\r\n` +
            `75\r\n${'z'.repeat(115)}\r\n\r\n0\r\n\r\n`,
        );
        const res = await client.response('GET', 'the chunked response');
        assert.equal(res.status, 200);
        assert.equal(
          res.body,
          `${`${'x'.repeat(126)}\r\n`.repeat(4)}${'x'.repeat(30)}\r\n${'y'.repeat(115)}\r\n`,
        );
        client.send(requestText('/next'));
        const second = await client.response(
          'GET',
          'a second response on the same client connection',
        );
        assert.equal(second.body, 'next');
        assert.ok(!client.all.includes('z'), 'no z reaches the client');
        assert.equal(
          s.up.connections.length,
          2,
          'the next request went over a new upstream connection',
        );
        await within(
          s.up.connections[0].closed,
          2_000,
          'the upstream connection that sent extra chunks is closed',
        );
        assert.ok(
          logged(s.logger, 'warn', /after a complete response/),
          `a warn line: ${JSON.stringify(s.logger.lines)}`,
        );
        assert.deepEqual(errorCodes(s.errors), []);
      },
    );
  }

  for (const kind of KINDS) {
    test(
      `proxy_extra_data.t "empty response to HEAD" (${kind}): Content-Length 100 and no body is a complete HEAD answer; the upstream connection is reused, no warning`,
      BOUND,
      async () => {
        const s = await setup(kind, (req) =>
          req.target === '/next'
            ? NEXT
            : 'HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 100\r\n\r\n',
        );
        const client = s.client();
        client.send(requestText('/empty', { method: 'HEAD' }));
        const first = await client.response('HEAD', 'the HEAD answer');
        assert.equal(first.status, 200);
        assert.equal(first.headers['content-length'], '100');
        client.send(requestText('/next'));
        const second = await client.response('GET', 'the next answer');
        assert.equal(second.body, 'next');
        assert.equal(client.pending, '');
        assert.deepEqual(
          s.up.connections.map((conn) => conn.requests.map((r) => r.target)),
          [['/empty', '/next']],
          'one upstream connection for both',
        );
        assert.ok(
          !logged(s.logger, 'warn', /./),
          `no warn line: ${JSON.stringify(s.logger.lines)}`,
        );
        assert.deepEqual(errorCodes(s.errors), []);
      },
    );
  }
});

describe('proxy_unfinished.t: an upstream that stops mid-body never gives a complete-looking response', () => {
  const big = `${'X'.repeat(98)}\r\n`.repeat(10_000);
  const unfinished = [
    {
      name: 'proxy_unfinished.t "length no final chunk"',
      answer:
        'HTTP/1.1 200 OK\r\nContent-Length: 100\r\nCache-Control: max-age=300\r\nConnection: close\r\n\r\nunfinished\r\n',
      length: 100,
      sent: 'unfinished\r\n',
    },
    {
      name: 'proxy_unfinished.t "chunked no final chunk"',
      answer:
        'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nCache-Control: max-age=300\r\nConnection: close\r\n\r\nff\r\nunfinished\r\n',
      sent: 'unfinished\r\n',
    },
    {
      name: 'proxy_unfinished.t "big unfinished"',
      answer: `HTTP/1.1 200 OK\r\nContent-Length: 1000100\r\nCache-Control: max-age=300\r\nConnection: close\r\n\r\n${big}unfinished\r\n`,
      length: 1000100,
      sent: `${big}unfinished\r\n`,
    },
    {
      name: 'proxy_extra_data.t "too short response"',
      answer:
        'HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 100\r\n\r\nSEE-THIS-TOO-SHORT-RESPONSE\n',
      length: 100,
      sent: 'SEE-THIS-TOO-SHORT-RESPONSE\n',
    },
    {
      name: 'proxy_extra_data.t "empty too short response"',
      answer: 'HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 100\r\n\r\n',
      length: 100,
      sent: '',
    },
  ];

  for (const c of unfinished) {
    for (const kind of KINDS) {
      test(
        `${c.name} (${kind}): the client connection is destroyed, with fewer bytes than framed and no last chunk`,
        BOUND,
        async () => {
          const s = await setup(kind, () => ({ end: c.answer }));
          const client = s.client();
          client.send(requestText('/unfinished'));
          const all = await client.untilClosed();
          assert.equal(
            splitResponse(all, 'GET', true),
            undefined,
            `never a complete response: ${JSON.stringify(all.slice(0, 300))}`,
          );
          // The head may not have left before the cut (nothing of the body had come); if it did, it is the upstream's.
          if (all.length > 0) {
            const end = all.indexOf('\r\n\r\n');
            assert.ok(end > 0, 'a response head');
            const head = parseHead(all.slice(0, end + 4));
            const body = all.slice(end + 4);
            assert.equal(head.status, 200);
            if (c.length !== undefined) {
              assert.equal(
                head.headers['content-length'],
                String(c.length),
                "the upstream's Content-Length",
              );
              assert.ok(body.length < c.length, `fewer bytes than Content-Length: ${body.length}`);
              assert.ok(c.sent.startsWith(body), 'the bytes received are the bytes sent');
            } else {
              assert.match(head.headers['transfer-encoding'] ?? '', /chunked/);
              const { data, last } = chunksSoFar(body);
              assert.equal(last, false, `no last chunk: ${JSON.stringify(body)}`);
              assert.ok(c.sent.startsWith(data), 'the bytes received are the bytes sent');
            }
          }
          assert.deepEqual(errorCodes(s.errors), [[true, 502, 'EUPSTREAMABORTED']]);
          await assertSettled(s);
        },
      );
    }
  }

  const finished = [
    {
      name: 'proxy_unfinished.t "length final chunk"',
      answer:
        'HTTP/1.1 200 OK\r\nContent-Length: 10\r\nCache-Control: max-age=300\r\nConnection: close\r\n\r\nfinished\r\n',
      body: 'finished\r\n',
    },
    {
      name: 'proxy_unfinished.t "chunked final chunk"',
      answer:
        'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nCache-Control: max-age=300\r\nConnection: close\r\n\r\na\r\nfinished\r\n\r\n0\r\n\r\n',
      body: 'finished\r\n',
      chunked: true,
    },
    {
      name: 'proxy_unfinished.t "big finished"',
      answer: `HTTP/1.1 200 OK\r\nContent-Length: 1000010\r\nCache-Control: max-age=300\r\nConnection: close\r\n\r\n${big}finished\r\n`,
      body: `${big}finished\r\n`,
    },
  ];

  for (const c of finished) {
    for (const kind of KINDS) {
      test(
        `${c.name} (${kind}): a complete response is relayed whole and ends as framed`,
        BOUND,
        async () => {
          const s = await setup(kind, () => ({ end: c.answer }));
          const client = s.client();
          client.send(requestText('/finished'));
          const res = await client.response('GET', 'the whole response');
          assert.equal(res.status, 200);
          assert.equal(res.body.length, c.body.length);
          assert.ok(res.body === c.body, 'the body byte for byte');
          if (c.chunked)
            assert.ok(res.raw.endsWith('\r\n0\r\n\r\n'), 'it ends with the last chunk');
          else assert.equal(res.headers['content-length'], String(c.body.length));
          assert.deepEqual(errorCodes(s.errors), []);
          await assertSettled(s);
        },
      );
    }
  }
});

describe('proxy_chunked.t', () => {
  const CHUNKED =
    'HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nSEE-THIS\r\n0\r\n\r\n';

  for (const kind of KINDS) {
    test(
      `proxy_chunked.t "chunked" (${kind}): an HTTP/1.0 client gets the body de-chunked, ending in SEE-THIS, then the close`,
      BOUND,
      async () => {
        const s = await setup(kind, () => ({ end: CHUNKED }));
        const client = s.client();
        client.send(requestText('/', { version: '1.0' }));
        const all = await client.untilClosed();
        assert.match(all, /\r\nSEE-THIS$/, `nginx's check, on ${JSON.stringify(all)}`);
        const head = parseHead(all.slice(0, all.indexOf('\r\n\r\n') + 4));
        assert.equal(head.status, 200);
        assert.equal(
          head.headers['transfer-encoding'],
          undefined,
          'no chunked to an HTTP/1.0 client',
        );
        assert.deepEqual(errorCodes(s.errors), []);
      },
    );

    test(
      `proxy_chunked.t "chunked" (${kind}): an HTTP/1.1 client gets SEE-THIS chunked, with the last chunk, on a connection kept alive`,
      BOUND,
      async () => {
        const s = await setup(kind, () => ({ end: CHUNKED }));
        const client = s.client();
        client.send(requestText('/'));
        const res = await client.response('GET', 'the chunked response');
        assert.equal(res.status, 200);
        assert.equal(res.body, 'SEE-THIS');
        assert.ok(res.raw.endsWith('0\r\n\r\n'));
        client.send(requestText('/again'));
        assert.equal((await client.response('GET', 'a second response')).body, 'SEE-THIS');
      },
    );

    test(
      `proxy_chunked.t "chunked nobuffering" (${kind}): each chunk reaches the client before the upstream writes the next`,
      BOUND,
      async () => {
        let upstream;
        const s = await setup(kind, (req) => {
          upstream = req.conn;
          return 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nSEE-\r\n';
        });
        const client = s.client();
        client.send(requestText('/'));
        await client.received((all) => all.includes('SEE-'), 'the first chunk, alone');
        upstream.send('4\r\nTHIS\r\n');
        await client.received((all) => all.includes('THIS'), 'the second chunk, alone');
        upstream.send('0\r\n\r\n');
        const res = await client.response('GET', 'the whole response');
        assert.equal(res.body, 'SEE-THIS');
      },
    );
  }
});

describe('proxy_duplicate_headers.t and Transfer-Encoding other than one chunked', () => {
  const gz = gzipSync('SECRET-BODY').toString('latin1');
  const teCases = [
    {
      name: 'proxy_duplicate_headers.t "unknown transfer encoding"',
      lines: ['Transfer-Encoding: foo'],
      body: 'SECRET-BODY',
      secret: 'SECRET-BODY',
    },
    {
      name: 'proxy_duplicate_headers.t "unknown transfer encoding", with gzip (a known coding, not chunked)',
      lines: ['Transfer-Encoding: gzip'],
      body: gz,
      secret: gz,
    },
    {
      name: 'proxy_duplicate_headers.t "unknown transfer encoding", with gzip, chunked (a list that ends in chunked)',
      lines: ['Transfer-Encoding: gzip, chunked'],
      body: `${hex(gz.length)}\r\n${gz}\r\n0\r\n\r\n`,
      secret: gz,
    },
    {
      name: 'proxy_duplicate_headers.t "duplicate transfer encoding"',
      lines: ['Transfer-Encoding: chunked', 'Transfer-Encoding: chunked'],
      body: 'b\r\nSECRET-BODY\r\n0\r\n\r\n',
      secret: 'SECRET-BODY',
    },
    {
      name: 'proxy_duplicate_headers.t "duplicate transfer encoding", as one line (chunked, chunked)',
      lines: ['Transfer-Encoding: chunked, chunked'],
      body: 'b\r\nSECRET-BODY\r\n0\r\n\r\n',
      secret: 'SECRET-BODY',
    },
  ];

  for (const c of teCases) {
    for (const kind of KINDS) {
      test(
        `${c.name} (${kind}): 502 EBADRESPONSE, logged, none of the body reaches the client, the upstream connection closed`,
        BOUND,
        async () => {
          // Unlike nginx's backend, no Connection: close, and the upstream keeps the connection: the proxy must drop it.
          const s = await setup(
            kind,
            () =>
              `HTTP/1.1 200 OK\r\n${c.lines.map((line) => `${line}\r\n`).join('')}\r\n${c.body}`,
          );
          const client = s.client();
          client.send(requestText('/coded'));
          const res = await client.response('GET', 'the answer');
          assertProxyMade(res, 502);
          assert.ok(
            !client.all.includes(c.secret),
            `none of the upstream's body reaches the client: ${JSON.stringify(client.all)}`,
          );
          assert.equal(res.headers['transfer-encoding'], undefined);
          assert.deepEqual(errorCodes(s.errors), [[true, 502, 'EBADRESPONSE']]);
          assert.ok(
            logged(s.logger, 'error', /502/),
            `an error line: ${JSON.stringify(s.logger.lines)}`,
          );
          await within(
            s.up.connections[0].closed,
            2_000,
            'the upstream connection is closed, not pooled',
          );
          await assertSettled(s);
        },
      );
    }
  }

  for (const kind of KINDS) {
    test(
      `proxy_duplicate_headers.t "unknown transfer encoding", on an upstream's refusal of an upgrade (${kind}): 502 EBADRESPONSE, none of the body relayed, the socket closed`,
      BOUND,
      async () => {
        const s = await setup(kind, () => ({
          end: `HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: gzip\r\n\r\n${gz}`,
        }));
        const client = s.client();
        client.send(wsHandshake('/chat'));
        const res = await client.response('GET', 'the answer to the upgrade');
        assertProxyMade(res, 502);
        assert.ok(
          !client.all.includes(gz),
          `none of the upstream's body reaches the client: ${JSON.stringify(client.all)}`,
        );
        await client.untilClosed();
        assert.deepEqual(errorCodes(s.errors), [[true, 502, 'EBADRESPONSE']]);
        assert.equal(s.proxy.stats().tunnels.active, 0);
      },
    );
  }

  for (const kind of KINDS) {
    test(
      `proxy_duplicate_headers.t "normal" (${kind}): 200, and one Transfer-Encoding: chunked (in any case) is relayed`,
      BOUND,
      async () => {
        const answers = {
          '/': 'HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n',
          '/chunked':
            'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nSEE-THIS\r\n0\r\n\r\n',
          '/Chunked':
            'HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n8\r\nSEE-THIS\r\n0\r\n\r\n',
        };
        const s = await setup(kind, (req) => answers[req.target]);
        for (const [path, body] of [
          ['/', ''],
          ['/chunked', 'SEE-THIS'],
          ['/Chunked', 'SEE-THIS'],
        ]) {
          const client = s.client();
          client.send(requestText(path));
          const res = await client.response('GET', path);
          assert.equal(res.status, 200, path);
          assert.equal(res.body, body, path);
        }
        assert.deepEqual(errorCodes(s.errors), []);
      },
    );
  }

  const rejected = [
    { name: 'proxy_duplicate_headers.t "invalid length"', lines: ['Content-Length: foo'] },
    {
      name: 'proxy_duplicate_headers.t "duplicate length"',
      lines: ['Content-Length: 0', 'Content-Length: 0'],
    },
    {
      name: 'proxy_duplicate_headers.t "duplicate length", with different values',
      lines: ['Content-Length: 4', 'Content-Length: 0'],
      body: 'BODY',
    },
    {
      name: 'proxy_duplicate_headers.t "length and transfer encoding"',
      lines: ['Content-Length: 0', 'Transfer-Encoding: chunked'],
      body: '0\r\n\r\n',
    },
    {
      name: 'proxy_duplicate_headers.t "transfer encoding and length"',
      lines: ['Transfer-Encoding: chunked', 'Content-Length: 0'],
      body: '0\r\n\r\n',
    },
  ];
  for (const c of rejected) {
    for (const kind of KINDS) {
      test(
        `${c.name} (${kind}): 502 with a proxy-made body, and the front keeps serving`,
        BOUND,
        async () => {
          const s = await setup(kind, (req) =>
            req.target === '/good'
              ? 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'
              : {
                  end: `HTTP/1.1 200 OK\r\nConnection: close\r\n${c.lines.map((line) => `${line}\r\n`).join('')}\r\n${c.body ?? ''}`,
                },
          );
          const client = s.client();
          client.send(requestText('/bad'));
          const res = await client.response('GET', 'the answer');
          assertProxyMade(res, 502);
          if (c.body === 'BODY') assert.ok(!client.all.includes('BODY'));
          assert.deepEqual(
            s.errors.map((error) => [error instanceof ProxyError, error.status]),
            [[true, 502]],
          );
          const good = s.client();
          good.send(requestText('/good'));
          assert.equal((await good.response('GET', 'a good request afterwards')).body, 'ok');
          await assertSettled(s);
        },
      );
    }
  }

  for (const kind of KINDS) {
    test(
      `proxy_duplicate_headers.t "duplicate expires ignored" (${kind}): Expires: foo, not bar`,
      BOUND,
      async () => {
        const s = await setup(kind, () => ({
          end: 'HTTP/1.1 200 OK\r\nConnection: close\r\nExpires: foo\r\nExpires: bar\r\nContent-Length: 0\r\n\r\n',
        }));
        const client = s.client();
        client.send(requestText('/'));
        const res = await client.response('GET', 'the answer');
        assert.equal(res.status, 200);
        assert.deepEqual(fieldValues(res, 'expires'), ['foo']);
        assert.ok(!/bar/.test(res.raw), `no bar: ${JSON.stringify(res.raw)}`);
      },
    );

    test(
      `proxy_duplicate_headers.t, repeated list headers and Set-Cookie (${kind}): every value reaches the client in order, each Set-Cookie on its own line`,
      BOUND,
      async () => {
        const s = await setup(
          kind,
          () =>
            'HTTP/1.1 200 OK\r\nX-Dup: a\r\nSet-Cookie: a=1; Path=/\r\nVary: Accept\r\nX-Dup: b\r\nSet-Cookie: b=2; Path=/\r\nVary: Origin\r\nContent-Length: 2\r\n\r\nok',
        );
        const client = s.client();
        client.send(requestText('/'));
        const res = await client.response('GET', 'the answer');
        assert.equal(res.status, 200);
        assert.equal(res.body, 'ok');
        // RFC 9110 §5.3: list fields may be combined with ", " in order; Set-Cookie may not (RFC 6265 §3).
        assert.equal(res.headers['x-dup'], 'a, b');
        assert.equal(res.headers.vary, 'Accept, Origin');
        assert.deepEqual(fieldValues(res, 'set-cookie'), ['a=1; Path=/', 'b=2; Path=/']);
      },
    );
  }
});

describe('proxy_early_hints.t: informational responses', () => {
  const HINTS = 'HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n';
  const FINAL = 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\nSEE-THIS';

  for (const kind of KINDS) {
    test(
      `proxy_early_hints.t "early hints" (${kind}): the 103 with its Link reaches the client before the upstream has answered, then the 200`,
      BOUND,
      async () => {
        let upstream;
        const s = await setup(kind, (req) => {
          upstream = req.conn;
          return HINTS;
        });
        const client = s.client();
        client.send(requestText('/', { headers: { Connection: 'close' } }));
        await client.received(
          (all) => all.includes('\r\n\r\n'),
          'the 103, before the final response exists',
        );
        upstream.send(FINAL);
        const res = await client.response('GET', 'the final response');
        assert.ok(
          client.all.startsWith('HTTP/1.1 103 '),
          `the 103 first: ${JSON.stringify(client.all)}`,
        );
        assert.deepEqual(
          res.informational.map((info) => [info.status, info.headers.link]),
          [[103, '</style.css>; rel=preload; as=style']],
        );
        assert.equal(res.status, 200);
        assert.equal(res.body, 'SEE-THIS');
        assert.deepEqual(errorCodes(s.errors), []);
      },
    );

    test(
      `proxy_early_hints.t "early hints" (${kind}): two Link headers, the response policy applied to the 103, hop-by-hop headers removed from it`,
      BOUND,
      async () => {
        const hints =
          'HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\nConnection: x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Drop: 1\r\nLink: </script.js>; rel=preload; as=script\r\n\r\n';
        const s = await setup(kind, () => hints + FINAL, {
          headers: { response: { 'x-policy': 'yes', 'x-drop': null } },
        });
        const client = s.client();
        client.send(requestText('/'));
        const res = await client.response('GET', 'the final response');
        assert.equal(res.informational.length, 1, `one 103: ${JSON.stringify(client.all)}`);
        const [info] = res.informational;
        assert.equal(info.status, 103);
        assert.equal(
          info.headers.link,
          '</style.css>; rel=preload; as=style, </script.js>; rel=preload; as=script',
          'both Link values, in order',
        );
        assert.equal(info.headers['x-policy'], 'yes', 'the policy adds x-policy to the 103');
        assert.equal(info.headers['x-drop'], undefined, 'the policy removes x-drop from the 103');
        assert.equal(info.headers['x-hop'], undefined, 'a header named in Connection is removed');
        assert.equal(info.headers['keep-alive'], undefined);
        assert.ok(
          !/x-hop/i.test(info.headers.connection ?? ''),
          'no Connection naming the removed header',
        );
        assert.equal(res.status, 200);
        assert.equal(res.headers['x-policy'], 'yes');
        assert.equal(res.body, 'SEE-THIS');
      },
    );
  }

  test(
    'proxy_early_hints.t "early hints" (Node\'s http client): an information event with the Link, then the response',
    BOUND,
    async () => {
      const s = await setup('node', () => HINTS + FINAL);
      const order = [];
      const res = await within(
        new Promise((resolve, reject) => {
          const req = http.request(`${s.front.url}/`, { agent: false }, (response) => {
            order.push(response.statusCode);
            let body = '';
            response.setEncoding('latin1');
            response.on('data', (chunk) => (body += chunk));
            response.on('end', () => resolve({ status: response.statusCode, body }));
          });
          req.on('information', (info) => order.push([info.statusCode, info.headers.link]));
          req.on('error', reject);
          req.end();
        }),
        2_000,
        'the response',
      );
      assert.deepEqual(order, [[103, '</style.css>; rel=preload; as=style'], 200]);
      assert.equal(res.body, 'SEE-THIS');
    },
  );

  for (const kind of KINDS) {
    test(
      `proxy_early_hints.t "early hints only" (${kind}): a 103 and then the close: the final response is a 502`,
      BOUND,
      async () => {
        const s = await setup(kind, () => ({ end: HINTS }));
        const client = s.client();
        client.send(requestText('/only'));
        const res = await client.response('GET', 'the final response');
        assertProxyMade(res, 502);
        assert.deepEqual(
          s.errors.map((error) => error.status),
          [502],
        );
        await assertSettled(s);
      },
    );

    test(
      `proxy_early_hints.t "early hints off", for an HTTP/1.0 client (${kind}): no 103, only the final response`,
      BOUND,
      async () => {
        const s = await setup(kind, () => HINTS + FINAL);
        const client = s.client();
        client.send(requestText('/', { version: '1.0' }));
        const res = await client.response('GET', 'the final response');
        assert.deepEqual(res.informational, []);
        assert.ok(!client.all.includes('103'), `no 103: ${JSON.stringify(client.all)}`);
        assert.equal(res.status, 200);
        assert.equal(res.body, 'SEE-THIS');
      },
    );

    test(
      `100 Continue (${kind}): the front answers Expect: 100-continue once; the upstream's own 100 is not relayed again`,
      BOUND,
      async () => {
        const s = await setup(
          kind,
          (req) =>
            `HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: ${4 + req.body.length}\r\n\r\ngot:${req.body}`,
        );
        const client = s.client();
        client.send(
          requestText('/upload', {
            method: 'POST',
            headers: { 'Content-Length': 5, Expect: '100-continue' },
          }),
        );
        await client.received((all) => all.includes('\r\n\r\n'), "the front's 100 Continue");
        assert.match(client.all, /^HTTP\/1\.1 100 Continue\r\n/);
        client.send('hello');
        const res = await client.response('POST', 'the final response');
        assert.deepEqual(
          res.informational.map((info) => info.status),
          [100],
          `exactly one 100: ${JSON.stringify(client.all)}`,
        );
        assert.equal(res.status, 200);
        assert.equal(res.body, 'got:hello');
        assert.equal(s.up.requests[0].headers.expect, undefined, 'Expect is not forwarded');
        assert.equal(s.up.requests[0].body, 'hello');
        client.send(requestText('/after'));
        assert.equal(
          (await client.response('POST', 'a second response on the connection')).status,
          200,
        );
      },
    );

    test(
      `100 Continue (${kind}): an upstream's unsolicited 100 before its 200 does not reach a client that sent no Expect`,
      BOUND,
      async () => {
        const s = await setup(kind, () => `HTTP/1.1 100 Continue\r\n\r\n${FINAL}`);
        const client = s.client();
        client.send(requestText('/'));
        const res = await client.response('GET', 'the final response');
        assert.deepEqual(res.informational, [], JSON.stringify(client.all));
        assert.equal(res.status, 200);
        assert.equal(res.body, 'SEE-THIS');
      },
    );
  }
});

describe('426 Upgrade Required keeps its Upgrade header (RFC 9110 §15.5.22)', () => {
  for (const kind of KINDS) {
    test(
      `on an ordinary request (${kind}): Upgrade kept, listed in Connection, the body intact`,
      BOUND,
      async () => {
        const s = await setup(
          kind,
          () =>
            'HTTP/1.1 426 Upgrade Required\r\nUpgrade: HTTP/2.0\r\nConnection: Upgrade\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nupgrade!!\n',
        );
        const client = s.client();
        client.send(requestText('/needs-upgrade'));
        const res = await client.response('GET', 'the 426');
        assert.equal(res.status, 426);
        assert.equal(res.headers.upgrade, 'HTTP/2.0');
        // RFC 9110 §7.8: a sender of Upgrade also sends the "upgrade" connection option.
        assert.match(res.headers.connection ?? '', /(^|,)\s*upgrade\s*(,|$)/i);
        assert.equal(res.body, 'upgrade!!\n');
        assert.deepEqual(errorCodes(s.errors), []);
      },
    );

    test(
      `on an upgrade the upstream refuses with 426 (${kind}): the refusal keeps Upgrade, then the socket is closed`,
      BOUND,
      async () => {
        const s = await setup(
          kind,
          () =>
            'HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nConnection: Upgrade\r\nContent-Length: 4\r\n\r\nnope',
        );
        const client = s.client();
        client.send(wsHandshake('/chat', { 'Sec-WebSocket-Version': '8' }));
        const res = await client.response('GET', 'the refusal');
        assert.equal(res.status, 426);
        assert.equal(res.headers.upgrade, 'websocket');
        assert.equal(res.headers['sec-websocket-version'], '13');
        assert.equal(res.body, 'nope');
        await client.untilClosed();
        assert.equal(s.proxy.stats().tunnels.active, 0);
        assert.equal(s.proxy.stats().tunnels.rejected, 1);
      },
    );
  }
});

describe('proxy_keepalive.t: upstream connections kept alive, and not when they cannot be', () => {
  /** nginx's "dumb server which is able to keep connections alive". */
  function keepaliveBackend(req) {
    const { conn, index, target, method } = req;
    const head = (status) =>
      `HTTP/1.1 ${status}\r\nX-Request: ${index}\r\nX-Connection: ${conn.id}\r\n`;
    const see = `TEST-OK-IF-YOU-SEE-THIS${String(conn.id).padStart(3, '0')}`;
    const isHead = method === 'HEAD';
    if (target.includes('length'))
      return `${head('200 OK')}Content-Length: 26\r\n\r\n${isHead ? '' : see}`;
    if (target.includes('empty')) return `${head('200 OK')}Content-Length: 0\r\n\r\n`;
    if (target.includes('304nolen')) return `${head('304 Not Modified')}\r\n`;
    if (target.includes('304len')) return `${head('304 Not Modified')}Content-Length: 100\r\n\r\n`;
    if (target.includes('chunked'))
      return `${head('200 OK')}Transfer-Encoding: chunked\r\n\r\n${isHead ? '' : `1a\r\n${see}\r\n0\r\n\r\n`}`;
    if (target.includes('complex')) {
      // nginx paces these writes so that they arrive apart: the last chunk's CRLF comes last.
      conn.send(
        `${head('200 OK')}Transfer-Encoding: chunked\r\n\r\n${'a\r\n0123456789\r\n'.repeat(50)}`,
      );
      setTimeout(() => {
        conn.send(`${'a\r\n0123456789\r\n'.repeat(50)}1a\r\n${see}\r\n0\r\n`);
        setTimeout(() => conn.send(CRLF), 20);
      }, 10);
      return undefined;
    }
    if (target.includes('chunk0'))
      return `${head('200 OK')}Transfer-Encoding: chunked\r\n\r\n${isHead ? '' : '0\r\n\r\n'}`;
    if (target.includes('closed'))
      return {
        end: `${head('200 OK')}Connection: close\r\nContent-Length: 12\r\n\r\n0123456789\r\n`,
      };
    return {
      end: `${head('404 Not Found')}Connection: close\r\n\r\nOops, '${target}' not found\r\n`,
    };
  }
  const see = (id) => `TEST-OK-IF-YOU-SEE-THIS${String(id).padStart(3, '0')}`;

  const reused = [
    { name: 'proxy_keepalive.t "buffered" / "buffered 2"', path: '/buffered/length', body: see(1) },
    {
      name: 'proxy_keepalive.t "buffered chunked" / "buffered chunked 2"',
      path: '/buffered/chunked',
      body: see(1),
    },
    {
      name: 'proxy_keepalive.t "buffered complex chunked" / "buffered complex chunked 2"',
      path: '/buffered/complex',
      body: '0123456789'.repeat(100) + see(1),
    },
    {
      name: 'proxy_keepalive.t "buffered 0 chunk" / "buffered 0 chunk 2"',
      path: '/buffered/chunk0',
      body: '',
    },
    {
      name: 'proxy_keepalive.t "buffered head" / "buffered head 2"',
      path: '/buffered/length/head',
      method: 'HEAD',
      body: '',
    },
    {
      name: 'proxy_keepalive.t "buffered empty" / "buffered empty 2"',
      path: '/buffered/empty',
      body: '',
    },
    {
      name: 'proxy_keepalive.t "buffered 304" / "buffered 304 2"',
      path: '/buffered/304nolen',
      status: 304,
      body: '',
    },
    {
      name: 'proxy_keepalive.t "buffered 304 with length" / "buffered 304 with length 2"',
      path: '/buffered/304len',
      status: 304,
      body: '',
    },
  ];

  for (const c of reused) {
    for (const kind of KINDS) {
      test(
        `${c.name} (${kind}): two requests, one upstream connection, both bodies whole, no error`,
        BOUND,
        async () => {
          const method = c.method ?? 'GET';
          const s = await setup(kind, keepaliveBackend);
          const responses = [];
          for (const n of [1, 2]) {
            const client = s.client();
            client.send(requestText(`${c.path}${n}`, { method }));
            responses.push(await client.response(method, `response ${n}`));
            client.socket.destroy();
          }
          for (const [i, res] of responses.entries()) {
            assert.equal(res.status, c.status ?? 200);
            assert.equal(
              res.headers['x-connection'],
              '1',
              `response ${i + 1} came over upstream connection 1`,
            );
            assert.equal(res.headers['x-request'], String(i + 1));
            assert.equal(res.body, c.body);
          }
          assert.equal(s.up.connections.length, 1);
          assert.ok(
            !logged(s.logger, 'error', /./) && !logged(s.logger, 'warn', /./),
            `no errors: ${JSON.stringify(s.logger.lines)}`,
          );
          assert.deepEqual(errorCodes(s.errors), []);
        },
      );
    }
  }

  for (const kind of KINDS) {
    test(
      `proxy_keepalive.t "buffered closed 1" / "buffered closed 2" (${kind}): Connection: close from the upstream, and the next request goes over a new connection`,
      BOUND,
      async () => {
        const s = await setup(kind, keepaliveBackend);
        const client = s.client();
        for (const n of [1, 2]) {
          client.send(requestText(`/buffered/closed${n}`));
          const res = await client.response('GET', `response ${n}`);
          assert.equal(res.status, 200);
          assert.equal(res.body, '0123456789\r\n');
          assert.equal(res.headers['x-connection'], String(n));
          assert.equal(res.headers['x-request'], String(n));
        }
        assert.equal(s.up.connections.length, 2);
        assert.deepEqual(errorCodes(s.errors), []);
        assert.ok(!logged(s.logger, 'error', /./), JSON.stringify(s.logger.lines));
      },
    );

    test(
      `proxy_keepalive.t, the backend's 404 (${kind}): a body the upstream ends by closing reaches an HTTP/1.1 client whole, chunked, on a connection kept alive`,
      BOUND,
      async () => {
        const s = await setup(kind, keepaliveBackend);
        const client = s.client();
        client.send(requestText('/nowhere'));
        const res = await client.response('GET', 'the 404');
        assert.equal(res.status, 404);
        assert.equal(res.body, "Oops, '/nowhere' not found\r\n");
        assert.match(res.headers['transfer-encoding'] ?? '', /chunked/);
        client.send(requestText('/nowhere-else'));
        assert.equal(
          (await client.response('GET', 'a second response')).body,
          "Oops, '/nowhere-else' not found\r\n",
        );
        assert.deepEqual(errorCodes(s.errors), []);
      },
    );
  }

  const http10 = [
    {
      name: 'an HTTP/1.0 answer with Content-Length and no keep-alive',
      answer: 'HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello',
      connections: 2,
    },
    {
      name: 'an HTTP/1.0 answer with Connection: keep-alive',
      answer: 'HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello',
      connections: 1,
    },
  ];
  for (const c of http10) {
    for (const kind of KINDS) {
      test(
        `proxy_keepalive.t, ${c.name} (${kind}): relayed whole; the upstream connection is reused only when it said keep-alive`,
        BOUND,
        async () => {
          const s = await setup(kind, () => c.answer);
          const client = s.client();
          for (const n of [1, 2]) {
            client.send(requestText(`/old${n}`));
            const res = await client.response('GET', `response ${n}`);
            assert.equal(res.status, 200);
            assert.equal(res.body, 'hello');
          }
          assert.equal(s.up.connections.length, c.connections);
          if (c.connections === 2)
            await within(
              s.up.connections[0].closed,
              2_000,
              'the HTTP/1.0 connection is closed by the proxy',
            );
          assert.deepEqual(errorCodes(s.errors), []);
        },
      );
    }
  }

  test(
    `proxy_keepalive.t, an HTTP/1.0 answer delimited by the close (${KINDS[0]} and ${KINDS[1]}): the body reaches the client whole, chunked`,
    BOUND,
    async () => {
      for (const kind of KINDS) {
        const s = await setup(kind, () => ({
          end: 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close',
        }));
        const client = s.client();
        client.send(requestText('/old'));
        const res = await client.response('GET', `the response (${kind})`);
        assert.equal(res.status, 200);
        assert.equal(res.body, 'until the close');
        assert.match(res.headers['transfer-encoding'] ?? '', /chunked/);
        assert.deepEqual(errorCodes(s.errors), []);
      }
    },
  );
});

describe('proxy_upgrade.t / proxy_websocket.t: tunnels', () => {
  const GREETING = encodeFrame(0x1, 'handshaked', false);

  for (const kind of KINDS) {
    test(
      `proxy_upgrade.t "handshake" / "upgrade response" (${kind}): Connection: upgrade and the client's Upgrade sent upstream, bytes relayed byte for byte both ways`,
      BOUND,
      async () => {
        const s = await setup(kind, (req) => switching(req) + latin1(GREETING));
        const client = s.client();
        client.send(wsHandshake('/chat?room=1', { Upgrade: 'WebSocket' }));
        const res = await client.response('GET', 'the 101');
        assert.equal(res.status, 101);
        assert.equal(res.headers['sec-websocket-accept'], acceptFor(KEY));
        const [request] = s.up.requests;
        assert.equal(request.target, '/chat?room=1');
        assert.equal(request.headers.upgrade, 'WebSocket', "the client's Upgrade value");
        assert.match(request.headers.connection, /^upgrade$/i);

        // Upstream → client: what came with the 101, then frames of every size class, byte for byte.
        const conn = s.up.connections[0];
        const fromUpstream = Buffer.concat([
          encodeFrame(0x2, randomBytes(70_000), false),
          encodeFrame(0x1, 'bar', false),
          encodeFrame(0x9, 'p', false),
        ]);
        conn.send(fromUpstream);
        const expected = latin1(GREETING) + latin1(fromUpstream);
        await client.received(
          (all) => all.length - res.raw.length >= expected.length,
          'the upstream bytes at the client',
        );
        assert.ok(
          client.pending === expected,
          'the client got exactly the bytes the upstream sent after its 101',
        );

        // Client → upstream: masked frames, as written.
        const fromClient = Buffer.concat([
          encodeFrame(0x1, 'foo', true),
          encodeFrame(0x2, randomBytes(1_000), true),
          encodeFrame(0xa, 'p', true),
        ]);
        client.send(fromClient);
        await s.up.until(
          () => conn.tunnel.length >= fromClient.length,
          'the client bytes at the upstream',
        );
        assert.ok(
          conn.tunnel === latin1(fromClient),
          'the upstream got exactly the bytes the client sent',
        );
        assert.equal(s.proxy.stats().tunnels.active, 1);
        client.socket.destroy();
        await within(conn.closed, 2_000, 'the upstream side is closed when the client goes');
      },
    );

    test(
      `proxy_upgrade.t "upgrade big response", "upgrade 1".."upgrade 10", "upgrade small 1".."upgrade small 10" (${kind})`,
      BOUND,
      async () => {
        const s = await setup(kind, (req) => switching(req) + latin1(GREETING), {
          onTunnel: echoFooBar,
        });
        const client = s.client();
        client.send(wsHandshake('/'));
        assert.equal((await client.response('GET', 'the 101')).status, 101);
        assert.equal((await client.nextFrame('the greeting')).payload.toString(), 'handshaked');

        client.send(encodeFrame(0x1, 'foo', true));
        assert.equal((await client.nextFrame('"upgrade response"')).payload.toString(), 'bar');
        client.send(encodeFrame(0x1, 'foo'.repeat(16384), true));
        assert.equal(
          (await client.nextFrame('"upgrade big response"')).payload.toString(),
          'bar'.repeat(16384),
        );

        for (let i = 1; i <= 10; i++)
          client.send(
            Buffer.concat([
              encodeFrame(0x1, `${'foo'.repeat(16384)}${i}`, true),
              encodeFrame(0x1, `bazz${i}`, true),
            ]),
          );
        for (let i = 1; i <= 10; i++) {
          assert.equal(
            (await client.nextFrame(`"upgrade ${i}"`)).payload.toString(),
            `${'bar'.repeat(16384)}${i}`,
          );
          assert.equal(
            (await client.nextFrame(`"upgrade small ${i}"`)).payload.toString(),
            `bazz${i}`,
          );
        }
        client.socket.destroy();
      },
    );

    test(
      `proxy_upgrade.t "handshake pipelined" / "response pipelined" / "next to pipelined" (${kind}): a frame sent with the handshake reaches the upstream after it`,
      BOUND,
      async () => {
        const s = await setup(kind, (req) => switching(req) + latin1(GREETING), {
          onTunnel: echoFooBar,
        });
        const client = s.client();
        const pipelined = encodeFrame(0x1, 'foo', true);
        client.send(Buffer.concat([Buffer.from(wsHandshake('/'), 'latin1'), pipelined]));
        assert.equal((await client.response('GET', 'the 101')).status, 101);
        assert.equal((await client.nextFrame('the greeting')).payload.toString(), 'handshaked');
        assert.equal((await client.nextFrame('"response pipelined"')).payload.toString(), 'bar');
        assert.ok(
          s.up.connections[0].tunnel.startsWith(latin1(pipelined)),
          'the pipelined frame, byte for byte, after the handshake',
        );
        assert.equal(s.up.requests.length, 1, 'the frame was not read as a request');
        client.send(encodeFrame(0x1, 'foo', true));
        assert.equal((await client.nextFrame('"next to pipelined"')).payload.toString(), 'bar');
        client.socket.destroy();
      },
    );

    test(
      `proxy_upgrade.t "log - bytes" / "log - bytes pipelined" (${kind}): the close event counts the tunnel bytes each way`,
      BOUND,
      async () => {
        const s = await setup(kind, (req) => switching(req) + latin1(GREETING), {
          onTunnel: echoFooBar,
        });
        const client = s.client();
        const pipelined = encodeFrame(0x1, 'foo', true);
        client.send(Buffer.concat([Buffer.from(wsHandshake('/'), 'latin1'), pipelined]));
        const res = await client.response('GET', 'the 101');
        const big = encodeFrame(0x1, 'foo'.repeat(16384), true);
        client.send(big);
        await client.received(
          (all) => all.length - res.raw.length >= GREETING.length + 5 + 4 + 16384 * 3,
          'every echo at the client',
        );
        const closed = nextEvent(s.proxy, 'close');
        client.socket.destroy();
        const [info] = await within(closed, 2_000, 'the close event');
        const conn = s.up.connections[0];
        assert.equal(info.reason, 'client');
        assert.equal(
          info.bytesFromClient,
          conn.tunnel.length,
          'what reached the upstream after the handshake',
        );
        assert.equal(conn.tunnel.length, pipelined.length + big.length);
        assert.equal(
          info.bytesFromUpstream,
          client.all.length - res.raw.length,
          'what reached the client after the 101',
        );
      },
    );

    test(
      `proxy_websocket.t, frames split across TCP writes (${kind}): each piece is relayed as it comes, the frame arrives intact`,
      BOUND,
      async () => {
        const s = await setup(kind, (req) => switching(req));
        const client = s.client();
        client.send(wsHandshake('/'));
        const res = await client.response('GET', 'the 101');
        assert.equal(res.status, 101);
        const conn = s.up.connections[0];

        const up = encodeFrame(0x2, randomBytes(3_000), true);
        const cuts = [1, 7, 1_500, up.length];
        let from = 0;
        for (const to of cuts) {
          client.send(up.subarray(from, to));
          await s.up.until(
            () => conn.tunnel.length >= to,
            `client bytes up to ${to} at the upstream`,
          );
          from = to;
        }
        assert.ok(conn.tunnel === latin1(up), 'the split client frame reached the upstream intact');

        const down = encodeFrame(0x1, 'x'.repeat(200_000), false);
        from = 0;
        for (const to of [1, 3, 100_000, down.length]) {
          conn.send(down.subarray(from, to));
          await client.received(
            (all) => all.length - res.raw.length >= to,
            `upstream bytes up to ${to} at the client`,
          );
          from = to;
        }
        const frame = await client.nextFrame('the split upstream frame');
        assert.equal(frame.opcode, 0x1);
        assert.equal(frame.masked, false);
        assert.ok(frame.payload.toString() === 'x'.repeat(200_000), 'intact');
        client.socket.destroy();
      },
    );

    test(
      `proxy_upgrade.t "handshake", refused (${kind}): a non-101 answer to an upgrade is passed to the client as HTTP, then the socket is closed; no tunnel`,
      BOUND,
      async () => {
        const s = await setup(kind, (req) =>
          req.target === '/forbidden'
            ? 'HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nforbidden'
            : 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 7\r\n\r\nnot-now',
        );
        for (const [path, status, body] of [
          ['/forbidden', 403, 'forbidden'],
          ['/ok', 200, 'not-now'],
        ]) {
          const client = s.client();
          client.send(wsHandshake(path));
          const res = await client.response('GET', `the refusal of ${path}`);
          assert.equal(res.status, status);
          assert.equal(res.body, body);
          assert.match(res.headers.connection ?? '', /close/i);
          await client.untilClosed(`the front closes the socket after the ${status}`);
        }
        await s.up.until(
          () => s.up.connections.every((conn) => conn.socket.destroyed),
          'both upstream connections closed',
        );
        assert.equal(s.proxy.stats().tunnels.active, 0);
        assert.equal(s.proxy.stats().tunnels.rejected, 2);
        assert.equal(s.proxy.stats().tunnels.total, 0);
      },
    );
  }

  test(
    'proxy_websocket.t "websocket handshake" / "websocket response" / "websocket big response" (ws client, express5)',
    BOUND,
    async () => {
      const s = await setup(
        'express5',
        (req) => switching(req) + latin1(encodeFrame(0x1, `hello:${req.target}`, false)),
        { onTunnel: echoFooBar },
      );
      const opened = await within(openSocket(`${s.front.wsUrl}/ws`), 2_000, 'the WebSocket opens');
      assert.ok(opened.ws, `opened, not refused: ${JSON.stringify(opened.refused)}`);
      assert.equal(opened.greeting, 'hello:/ws');
      assert.equal(await within(roundTrip(opened.ws, 'foo'), 2_000, 'a round trip'), 'bar');
      assert.equal(
        await within(roundTrip(opened.ws, 'foo'.repeat(16384)), 2_000, 'a big round trip'),
        'bar'.repeat(16384),
      );
      const closed = nextEvent(s.proxy, 'close');
      opened.ws.close();
      const [info] = await within(closed, 2_000, 'the tunnel closes');
      assert.equal(info.reason, 'client');
      assert.equal(s.proxy.stats().tunnels.active, 0);
    },
  );
});
