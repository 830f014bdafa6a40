// lib/runtime/error-answer.ts: the Accept negotiation of error answers, and their writer.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { prefersJson, writeErrorAnswer } from '../../dist/runtime/error-answer.js';
import { ProxyError, toProxyError } from '../../dist/runtime/proxy-error.js';

test('prefersJson: a missing or empty Accept is not JSON', () => {
  assert.equal(prefersJson(undefined), false);
  assert.equal(prefersJson(''), false);
});

test('prefersJson: a JSON type alone, or listed first at equal weight, is JSON', () => {
  for (const accept of [
    'application/json',
    'APPLICATION/JSON',
    'application/problem+json',
    'application/vnd.api+json',
    'application/json, text/plain, */*', // axios, fetch wrappers
    'application/json,text/plain',
    'application/json;charset=utf-8, text/html',
    'application/json; q=1, text/*; q=1',
    ' application/json , text/plain',
    '*/*, application/json', // */* is neither JSON nor text/
  ]) {
    assert.equal(prefersJson(accept), true, accept);
  }
});

test('prefersJson: a text/ type listed first at equal weight wins', () => {
  for (const accept of [
    'text/plain, application/json',
    'text/html,application/json',
    'text/*, application/json',
    'text/plain;q=0.5, application/json;q=0.5',
  ]) {
    assert.equal(prefersJson(accept), false, accept);
  }
});

test("prefersJson: a browser's Accept is not JSON", () => {
  for (const accept of [
    // Chrome, Firefox, Safari navigations
    'text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7',
    'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8',
    'text/html,application/xhtml+xml,application/xml;q=0.9,application/json;q=0.8,*/*;q=0.7',
    '*/*',
    'image/webp,*/*',
  ]) {
    assert.equal(prefersJson(accept), false, accept);
  }
});

test('prefersJson: q-values decide, whatever the order', () => {
  assert.equal(prefersJson('text/html;q=0.5, application/json;q=0.9'), true);
  assert.equal(prefersJson('text/html;q=0.9, application/json;q=0.5'), false);
  assert.equal(prefersJson('application/json;q=0.5, text/html;q=0.9'), false);
  assert.equal(prefersJson('application/json;q=0.9, text/html;q=0.5'), true);
  assert.equal(prefersJson('text/html;q=0.8, application/json'), true);
  assert.equal(prefersJson('application/json;q=0.8, text/html'), false);
  // More than every text/ type, not only the first one.
  assert.equal(prefersJson('application/json;q=0.5, text/html;q=0.4, text/plain;q=0.6'), false);
  assert.equal(prefersJson('text/plain;q=0.3, application/json;q=0.5, text/html;q=0.4'), true);
  assert.equal(prefersJson('text/plain;q=0.3, application/json;q=0.5, text/html;q=0.5'), true);
  assert.equal(
    prefersJson('application/json;q=0.3, text/plain;q=0.5, application/json;q=0.5'),
    false,
  );
  // The best JSON type counts.
  assert.equal(prefersJson('application/json;q=0.1, text/plain;q=0.5, application/ld+json'), true);
  // Parameters other than q, before or after it.
  assert.equal(prefersJson('application/json;charset=utf-8;q=0.4, text/plain;q=0.5'), false);
  assert.equal(prefersJson('application/json;q=0.6;ext=1, text/plain;format=flowed;q=0.5'), true);
});

test('prefersJson: q=0 refuses a type', () => {
  assert.equal(prefersJson('application/json;q=0'), false);
  assert.equal(prefersJson('application/json;q=0.0, text/plain;q=0'), false);
  assert.equal(prefersJson('application/json, text/plain;q=0'), true);
  assert.equal(prefersJson('text/plain;q=0, application/json'), true);
  assert.equal(prefersJson('text/plain;q=0, application/json;q=0'), false);
  assert.equal(prefersJson('application/json;q=0, text/plain;q=0.001'), false);
  assert.equal(prefersJson('application/json;q=0.001, text/plain;q=0'), true);
});

test('prefersJson: an unreadable q weighs nothing', () => {
  assert.equal(prefersJson('application/json;q=abc'), false);
  assert.equal(prefersJson('application/json;q='), false);
  assert.equal(prefersJson('application/json;q=abc, text/plain;q=0.1'), false);
});

// Stand-ins: a ServerResponse (it has writeHead), and a raw socket (it does not).
function fakeResponse({ headersSent = false } = {}) {
  const res = {
    headersSent,
    statusCode: 200,
    headers: {},
    body: undefined,
    ended: 0,
    destroyed: 0,
    writeHead() {
      throw new Error('writeHead is not used');
    },
    setHeader(name, value) {
      this.headers[name] = value;
    },
    end(body) {
      this.ended++;
      this.body = body;
    },
    destroy() {
      this.destroyed++;
    },
  };
  return res;
}

function fakeSocket({ writable = true, destroyed = false } = {}) {
  return {
    writable,
    destroyed,
    written: [],
    ended: 0,
    destroyCalls: 0,
    write(chunk) {
      this.written.push(String(chunk));
      return true;
    },
    end(callback) {
      this.ended++;
      callback?.();
    },
    destroy() {
      this.destroyCalls++;
      this.destroyed = true;
    },
  };
}

const request = (accept) => ({ headers: accept === undefined ? {} : { accept } });

test('writeErrorAnswer: a text answer on a response, with its status and length', () => {
  const res = fakeResponse();
  writeErrorAnswer(
    res,
    new ProxyError('EUPSTREAM', 'connect ECONNREFUSED 10.1.2.3:8080'),
    request(),
  );
  const body = '502 Bad Gateway: The upstream server could not be reached.\n';
  assert.equal(res.statusCode, 502);
  assert.deepEqual(res.headers, {
    'content-type': 'text/plain; charset=utf-8',
    'content-length': Buffer.byteLength(body),
  });
  assert.equal(res.body, body);
  assert.equal(res.ended, 1);
  assert.equal(res.destroyed, 0);
});

test('writeErrorAnswer: a JSON answer when the client prefers JSON', () => {
  const res = fakeResponse();
  writeErrorAnswer(
    res,
    new ProxyError('EREADTIMEOUT', 'after 30000 ms'),
    request('application/json'),
  );
  const body =
    '{"error":"Gateway Timeout","status":504,"message":"The upstream server did not answer in time."}';
  assert.equal(res.statusCode, 504);
  assert.deepEqual(res.headers, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
  });
  assert.equal(res.body, body);
  assert.deepEqual(JSON.parse(res.body), {
    error: 'Gateway Timeout',
    status: 504,
    message: 'The upstream server did not answer in time.',
  });
});

test('writeErrorAnswer: a browser gets text', () => {
  const res = fakeResponse();
  writeErrorAnswer(
    res,
    new ProxyError('ENOWS'),
    request('text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8'),
  );
  assert.equal(res.statusCode, 404);
  assert.equal(res.headers['content-type'], 'text/plain; charset=utf-8');
  assert.equal(res.body, '404 Not Found: WebSockets are not proxied on this route.\n');
});

test('writeErrorAnswer: content-length is the byte length of the body', () => {
  const res = fakeResponse();
  writeErrorAnswer(res, new ProxyError('EBADPATH'), request());
  assert.equal(res.body, '400 Bad Request: The request path is not allowed.\n');
  assert.equal(res.headers['content-length'], 50);
});

test('writeErrorAnswer: a response whose head went out is only destroyed', () => {
  const res = fakeResponse({ headersSent: true });
  writeErrorAnswer(res, new ProxyError('EUPSTREAMABORTED'), request());
  assert.equal(res.destroyed, 1);
  assert.equal(res.ended, 0);
  assert.equal(res.statusCode, 200);
  assert.deepEqual(res.headers, {});
});

test('writeErrorAnswer: on a raw socket, a whole response with Connection: close, then the socket ends', () => {
  const socket = fakeSocket();
  writeErrorAnswer(socket, new ProxyError('EFORBIDDENORIGIN', 'https://evil.example'), request());
  const body = '403 Forbidden: This origin may not open a WebSocket here.\n';
  assert.deepEqual(socket.written, [
    'HTTP/1.1 403 Forbidden\r\n' +
      'content-type: text/plain; charset=utf-8\r\n' +
      `content-length: ${Buffer.byteLength(body)}\r\n` +
      'connection: close\r\n' +
      '\r\n' +
      body,
  ]);
  assert.equal(socket.ended, 1);
  assert.equal(socket.destroyCalls, 1); // once flushed
});

test('writeErrorAnswer: on a raw socket, JSON, with the headers applyPolicy sets', () => {
  const socket = fakeSocket();
  const seen = [];
  writeErrorAnswer(
    socket,
    new ProxyError('ETUNNELLIMIT'),
    request('application/json'),
    (headers) => {
      seen.push({ ...headers });
      headers['x-policy'] = 'yes';
    },
  );
  assert.deepEqual(seen, [{ 'content-type': 'application/json; charset=utf-8' }]);
  const body =
    '{"error":"Service Unavailable","status":503,"message":"Too many open WebSockets on this route; try again later."}';
  assert.deepEqual(socket.written, [
    'HTTP/1.1 503 Service Unavailable\r\n' +
      'content-type: application/json; charset=utf-8\r\n' +
      'x-policy: yes\r\n' +
      `content-length: ${Buffer.byteLength(body)}\r\n` +
      'connection: close\r\n' +
      '\r\n' +
      body,
  ]);
});

test('writeErrorAnswer: a socket that cannot be written is destroyed, nothing written', () => {
  for (const socket of [fakeSocket({ writable: false }), fakeSocket({ destroyed: true })]) {
    writeErrorAnswer(socket, new ProxyError('EBADUPGRADE'), request());
    assert.deepEqual(socket.written, []);
    assert.equal(socket.destroyCalls, 1);
  }
});

// Every code, its status, and the sentence a client may see.
const CODES = {
  EBADPATH: [400, 'The request path is not allowed.'],
  EBADHEADER: [400, 'A request header could not be forwarded.'],
  EBADUPGRADE: [
    400,
    'Only WebSocket upgrades (GET with Upgrade: websocket and Sec-WebSocket-Key) are proxied.',
  ],
  EFORBIDDENORIGIN: [403, 'This origin may not open a WebSocket here.'],
  ENOWS: [404, 'WebSockets are not proxied on this route.'],
  ENOROUTE: [404, 'No route for this request.'],
  EBODYLOST: [500, 'The request body was read by a body parser and cannot be re-sent.'],
  EINTERNAL: [500, 'The proxy failed to handle the request.'],
  EUNSUPPORTEDTE: [501, 'Only the chunked transfer coding is supported.'],
  EUPSTREAM: [502, 'The upstream server could not be reached.'],
  EUPSTREAMABORTED: [502, 'The upstream server aborted the response.'],
  EBADRESPONSE: [502, 'The upstream server sent a response that cannot be relayed.'],
  ETUNNELLIMIT: [503, 'Too many open WebSockets on this route; try again later.'],
  ESHUTDOWN: [503, 'The proxy is shutting down.'],
  ECONNECTTIMEOUT: [504, 'The upstream server did not accept the connection in time.'],
  EREADTIMEOUT: [504, 'The upstream server did not answer in time.'],
};
const REASONS = {
  400: 'Bad Request',
  403: 'Forbidden',
  404: 'Not Found',
  500: 'Internal Server Error',
  501: 'Not Implemented',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
};

test('writeErrorAnswer: every code gets its status and public sentence, in text and JSON', () => {
  for (const [code, [status, sentence]] of Object.entries(CODES)) {
    const text = fakeResponse();
    writeErrorAnswer(text, new ProxyError(code, 'some detail'), request('*/*'));
    assert.equal(text.statusCode, status, code);
    assert.equal(text.body, `${status} ${REASONS[status]}: ${sentence}\n`, code);

    const json = fakeResponse();
    writeErrorAnswer(json, new ProxyError(code, 'some detail'), request('application/json'));
    assert.equal(json.statusCode, status, code);
    assert.deepEqual(
      JSON.parse(json.body),
      { error: REASONS[status], status, message: sentence },
      code,
    );
  }
});

test('writeErrorAnswer: the body never names the upstream address or the underlying error', () => {
  const ADDRESS = '10.1.2.3';
  const errors = [
    Object.assign(new Error(`connect ECONNREFUSED ${ADDRESS}:8080`), {
      code: 'ECONNREFUSED',
      address: ADDRESS,
      port: 8080,
    }),
    Object.assign(new Error(`getaddrinfo ENOTFOUND internal-db.${ADDRESS}.nip.io`), {
      code: 'ENOTFOUND',
    }),
    Object.assign(new Error(`connect ETIMEDOUT ${ADDRESS}:8080`), { code: 'ETIMEDOUT' }),
    Object.assign(new Error(`Invalid character in header content ["x-${ADDRESS}"]`), {
      code: 'ERR_INVALID_CHAR',
    }),
    new Error(`socket hang up from ${ADDRESS}`),
    `a string thrown by a router mentioning ${ADDRESS}`,
  ];
  for (const thrown of errors) {
    const error = toProxyError(thrown);
    assert.match(error.message, new RegExp(ADDRESS.replaceAll('.', '\\.'))); // the log has it
    for (const accept of [undefined, 'application/json']) {
      const res = fakeResponse();
      writeErrorAnswer(res, error, request(accept));
      assert.doesNotMatch(res.body, /10\.1\.2\.3|8080|ECONN|ENOTFOUND|ETIMEDOUT|ERR_|hang up/);
      const socket = fakeSocket();
      writeErrorAnswer(socket, error, request(accept));
      assert.doesNotMatch(
        socket.written.join(''),
        /10\.1\.2\.3|8080|ECONN|ENOTFOUND|ETIMEDOUT|ERR_/,
      );
    }
  }
});

test('prefersJson: the weight parameter is case-insensitive and may have whitespace around =', () => {
  assert.equal(prefersJson('application/json;Q=0, text/plain'), false);
  assert.equal(prefersJson('application/json; q = 0, text/plain'), false);
  assert.equal(prefersJson('text/plain;Q=0.1, application/json'), true);
});
