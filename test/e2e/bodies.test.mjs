// Request and response bodies: streaming both ways, chunked framing, bodies a parser already read,
// aborts on either side and unsupported transfer codings.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { once } from 'node:events';
import { createHash, randomBytes } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import express5 from 'express';
import express4 from 'express4';
import { createProxy, ProxyError } from 'viaduct';
import { closeAll, listen, quietLogger, startFront, startUpstream } from '../helpers/servers.mjs';
import { rawExchange, request, statusOf } from '../helpers/clients.mjs';
import { deferred, within } from '../helpers/waiting.mjs';

after(closeAll);

const KiB = 1024;
const MiB = 1024 * KiB;

// ---------------------------------------------------------------------------------------------
// Helpers local to this file.

const sha256 = (buffer) => createHash('sha256').update(buffer).digest('hex');

/** Writes `buffer` to a writable in `size` pieces, honouring backpressure. */
async function writeChunks(stream, buffer, size) {
  for (let offset = 0; offset < buffer.length; offset += size) {
    if (!stream.write(buffer.subarray(offset, offset + size))) await once(stream, 'drain');
  }
}

/**
 * Starts a request whose body the caller writes. `response` resolves with the whole response;
 * `req` is the `ClientRequest` to write to (and end).
 */
function startRequest(port, { method = 'POST', path = '/', headers = {} } = {}) {
  const req = http.request({ host: '127.0.0.1', port, method, path, headers, agent: false });
  const response = new Promise((resolve, reject) => {
    req.on('response', (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        resolve({
          status: res.statusCode,
          headers: res.headers,
          body,
          text: body.toString('utf8'),
          json: () => JSON.parse(body.toString('utf8')),
        });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
  });
  return { req, response };
}

/**
 * A GET whose response may be cut: resolves once the response is closed, however it ended, with
 * what arrived and whether Node's parser saw a complete message.
 */
function fetchMayBeCut(port, path) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      let bytes = 0;
      let error;
      res.on('data', (chunk) => (bytes += chunk.length));
      res.on('error', (e) => (error = e));
      res.on('close', () =>
        resolve({
          status: res.statusCode,
          headers: res.headers,
          bytes,
          complete: res.complete,
          error,
        }),
      );
    });
    req.on('error', (error) => reject(error));
  });
}

/** A plain upstream whose request handler is the caller's (nothing read or answered for it). */
async function startRawUpstream(handler) {
  const server = http.createServer(handler);
  const port = await listen(server);
  return { server, port, url: `http://127.0.0.1:${port}` };
}

/**
 * An upstream that parses what it receives with an Express 5 parser (as an application behind
 * the proxy would) and keeps, per request, the headers, the raw bytes and the parsed body.
 */
async function startParsingUpstream(parserFactory) {
  const seen = [];
  const app = express5();
  app.use(parserFactory({ verify: (req, _res, buf) => (req.rawBody = Buffer.from(buf)) }));
  app.use((req, res) => {
    seen.push({
      method: req.method,
      headers: req.headers,
      raw: req.rawBody ?? Buffer.alloc(0),
      body: JSON.parse(JSON.stringify(req.body ?? null)),
    });
    res.json({ ok: true });
  });
  // Express answers a body that does not match its Content-Length (or cannot be parsed) with an error.
  app.use((error, req, res, _next) => {
    seen.push({ method: req.method, headers: req.headers, error: error.message });
    res.status(error.status ?? 500).json({ error: error.message });
  });
  const port = await listen(http.createServer(app));
  return { port, url: `http://127.0.0.1:${port}`, seen };
}

/**
 * A `kind` front proxying to `up`, a raw upstream, with `/still-serving` routed to an ordinary
 * upstream so that `assertServes` has something to reach.
 */
async function frontWithFallback(kind, up, logger = quietLogger()) {
  const good = await startUpstream();
  const proxy = createProxy({ target: up.url, routes: { '/still-serving': good.url }, logger });
  const front = await startFront(kind, proxy);
  return { proxy, front };
}

/** One more ordinary request through the front, answered by the upstream. */
async function assertServes(front, path = '/still-serving') {
  const res = await within(
    request(`${front.url}${path}`),
    2000,
    'a good request after the failure',
  );
  assert.equal(res.status, 200, `a good request after the failure got ${res.status}: ${res.text}`);
}

// ---------------------------------------------------------------------------------------------

describe('streaming without buffering', () => {
  for (const framing of ['content-length', 'chunked']) {
    test(`an 8 MiB upload (${framing}) reaches the upstream before the client has finished sending`, async () => {
      const data = randomBytes(8 * MiB);
      const firstChunk = deferred();
      const up = await startRawUpstream((req, res) => {
        const hash = createHash('sha256');
        let bytes = 0;
        req.on('data', (chunk) => {
          if (bytes === 0) firstChunk.resolve(chunk.length);
          bytes += chunk.length;
          hash.update(chunk);
        });
        req.on('end', () => {
          const text = JSON.stringify({
            bytes,
            sha: hash.digest('hex'),
            te: req.headers['transfer-encoding'] ?? null,
            cl: req.headers['content-length'] ?? null,
          });
          res.writeHead(200, {
            'content-type': 'application/json',
            'content-length': Buffer.byteLength(text),
          });
          res.end(text);
        });
      });
      const front = await startFront(
        'express5',
        createProxy({ target: up.url, logger: quietLogger() }),
      );
      const headers = { 'content-type': 'application/octet-stream' };
      if (framing === 'content-length') headers['content-length'] = String(data.length);
      const { req, response } = startRequest(front.port, {
        method: 'PUT',
        path: '/upload',
        headers,
      });

      req.write(data.subarray(0, 64 * KiB));
      // The rest is written only once the upstream holds the first bytes: a proxy that buffered the
      // body until the end would never let this resolve.
      await within(
        firstChunk.promise,
        3000,
        'the upstream receiving the first chunk of an unfinished upload',
      );
      await writeChunks(req, data.subarray(64 * KiB), 64 * KiB);
      req.end();

      const res = await within(response, 5000, 'the upload response');
      assert.equal(res.status, 200);
      const seen = res.json();
      assert.equal(seen.bytes, data.length);
      assert.equal(seen.sha, sha256(data));
      if (framing === 'content-length') {
        assert.equal(seen.cl, String(data.length));
        assert.equal(seen.te, null);
      } else {
        assert.equal(seen.te, 'chunked');
        assert.equal(seen.cl, null);
      }
    });
  }

  test('an 8 MiB download reaches the client before the upstream has finished writing', async () => {
    const data = randomBytes(8 * MiB);
    const clientFirstChunk = deferred();
    let upstreamFinished = false;
    const up = await startRawUpstream(async (_req, res) => {
      res.writeHead(200, {
        'content-type': 'application/octet-stream',
        'content-length': String(data.length),
      });
      res.write(data.subarray(0, 64 * KiB));
      try {
        // The rest is written only once the client holds the first bytes.
        await within(
          clientFirstChunk.promise,
          3000,
          'the client receiving the first chunk of an unfinished download',
        );
      } catch {
        res.destroy();
        return;
      }
      await writeChunks(res, data.subarray(64 * KiB), 64 * KiB);
      res.end(() => (upstreamFinished = true));
    });
    const front = await startFront('node', createProxy({ target: up.url, logger: quietLogger() }));

    const result = await within(
      new Promise((resolve, reject) => {
        http
          .get({ host: '127.0.0.1', port: front.port, path: '/download', agent: false }, (res) => {
            const hash = createHash('sha256');
            let bytes = 0;
            let finishedAtFirstChunk;
            res.on('data', (chunk) => {
              if (bytes === 0) {
                finishedAtFirstChunk = upstreamFinished;
                clientFirstChunk.resolve();
              }
              bytes += chunk.length;
              hash.update(chunk);
            });
            res.on('end', () =>
              resolve({
                status: res.statusCode,
                bytes,
                sha: hash.digest('hex'),
                finishedAtFirstChunk,
                complete: res.complete,
                length: res.headers['content-length'],
              }),
            );
            res.on('error', reject);
          })
          .on('error', reject);
      }),
      5000,
      'the download',
    );
    assert.equal(result.status, 200);
    assert.equal(result.finishedAtFirstChunk, false);
    assert.equal(result.complete, true);
    assert.equal(result.length, String(data.length));
    assert.equal(result.bytes, data.length);
    assert.equal(result.sha, sha256(data));
  });
});

describe('chunked request bodies', () => {
  test('a chunked upload arrives complete and the upstream sees Transfer-Encoding: chunked', async () => {
    const up = await startUpstream();
    const front = await startFront(
      'express5',
      createProxy({ target: up.url, logger: quietLogger() }),
    );
    const parts = ['first part;', 'second part;', 'third part'];
    const { req, response } = startRequest(front.port, {
      method: 'POST',
      path: '/chunked',
      headers: { 'content-type': 'text/plain' },
    });
    for (const part of parts) {
      if (!req.write(part)) await once(req, 'drain');
    }
    req.end();
    const res = await within(response, 3000, 'the chunked upload response');
    assert.equal(res.status, 200);
    assert.equal(up.seen.length, 1);
    const seen = up.seen[0];
    assert.equal(seen.headers['transfer-encoding'], 'chunked');
    assert.equal(seen.headers['content-length'], undefined);
    assert.equal(seen.body.toString('utf8'), parts.join(''));
  });

  for (const method of ['DELETE', 'OPTIONS']) {
    test(`a chunked ${method} body stays chunked: no Content-Length: 0 followed by the body`, async () => {
      const up = await startUpstream();
      const front = await startFront(
        'node',
        createProxy({ target: up.url, logger: quietLogger() }),
      );
      // Node's client frames a DELETE/OPTIONS body only when asked to.
      const { req, response } = startRequest(front.port, {
        method,
        path: '/items/7',
        headers: { 'content-type': 'application/json', 'transfer-encoding': 'chunked' },
      });
      req.write('{"reason":');
      req.end('"obsolete"}');
      const res = await within(response, 3000, `the ${method} response`);
      assert.equal(res.status, 200);
      assert.deepEqual(JSON.parse(res.json().body), { reason: 'obsolete' });
      const seen = up.seen[0];
      assert.equal(seen.method, method);
      assert.equal(seen.headers['content-length'], undefined);
      assert.equal(seen.headers['transfer-encoding'], 'chunked');
      assert.equal(seen.body.toString('utf8'), '{"reason":"obsolete"}');
      // The body was not read as a second request on the upstream connection.
      assert.deepEqual(
        up.seen.map((r) => `${r.method} ${r.url}`),
        [`${method} /items/7`],
      );
    });
  }

  test('Transfer-Encoding: gzip, chunked from the client gives 501 and is not forwarded', async () => {
    const up = await startUpstream();
    const logger = quietLogger();
    const errors = [];
    const proxy = createProxy({ target: up.url, logger });
    proxy.on('error', (error) => errors.push(error));
    const front = await startFront('express5', proxy);
    const raw = await within(
      rawExchange(
        front.port,
        'POST /te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n',
      ),
      3000,
      'the 501 answer',
    );
    assert.equal(statusOf(raw), 501);
    assert.equal(up.seen.length, 0);
    assert.equal(errors.length, 1);
    assert.ok(errors[0] instanceof ProxyError);
    assert.equal(errors[0].status, 501);
    assert.equal(errors[0].code, 'EUNSUPPORTEDTE');
    await assertServes(front);
  });
});

for (const [kind, express] of [
  ['express5', express5],
  ['express4', express4],
]) {
  describe(`bodies read by body parsers are re-sent from req.body (${kind})`, () => {
    test('express.json(): re-serialised with a correct Content-Length, also when the client sent it chunked', async () => {
      const up = await startParsingUpstream(express5.json);
      const front = await startFront(kind, createProxy({ target: up.url, logger: quietLogger() }), {
        before: [express.json()],
      });
      const value = { name: 'Zoë', tags: ['a', 'b'], nested: { deep: [1, { x: null, y: true }] } };
      // Pretty-printed: the re-serialised (compact) body is shorter, so a stale length would show.
      const pretty = JSON.stringify(value, null, 2);
      const res = await request(`${front.url}/json`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: pretty,
      });
      assert.equal(res.status, 200, res.text);

      const { req, response } = startRequest(front.port, {
        method: 'PATCH',
        path: '/json',
        headers: { 'content-type': 'application/json; charset=utf-8' },
      });
      req.write(pretty.slice(0, 10));
      req.end(pretty.slice(10));
      assert.equal((await within(response, 3000, 'the chunked JSON response')).status, 200);

      assert.equal(up.seen.length, 2);
      for (const seen of up.seen) {
        assert.equal(seen.error, undefined);
        assert.deepEqual(seen.body, value);
        assert.equal(seen.headers['content-length'], String(seen.raw.length));
        assert.equal(seen.headers['transfer-encoding'], undefined);
        assert.equal(seen.raw.length, Buffer.byteLength(JSON.stringify(value)));
      }
    });

    test('express.urlencoded({ extended: true }): nested objects and arrays parse back to the same structure', async () => {
      const up = await startParsingUpstream((options) =>
        express5.urlencoded({ extended: true, ...options }),
      );
      let parsedAtFront;
      const front = await startFront(kind, createProxy({ target: up.url, logger: quietLogger() }), {
        before: [
          express.urlencoded({ extended: true }),
          (req, _res, next) => {
            parsedAtFront = JSON.parse(JSON.stringify(req.body));
            next();
          },
        ],
      });
      const form =
        'user%5Bname%5D=Ada+L&user[langs][]=en&user[langs][]=fr&user[address][city]=K%C3%B6ln' +
        '&items[0][sku]=a1&items[0][qty]=2&items[1][sku]=b%262&items[1][qty]=1&flag=&note=50%25+off';
      const expected = {
        user: { name: 'Ada L', langs: ['en', 'fr'], address: { city: 'Köln' } },
        items: [
          { sku: 'a1', qty: '2' },
          { sku: 'b&2', qty: '1' },
        ],
        flag: '',
        note: '50% off',
      };
      const res = await request(`${front.url}/form`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: form,
      });
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(parsedAtFront, expected);
      const seen = up.seen[0];
      assert.equal(seen.error, undefined);
      assert.deepEqual(seen.body, expected);
      assert.equal(seen.headers['content-length'], String(seen.raw.length));
    });

    test('express.urlencoded({ extended: true }): a one-element array stays an array', async () => {
      const up = await startParsingUpstream((options) =>
        express5.urlencoded({ extended: true, ...options }),
      );
      const front = await startFront(kind, createProxy({ target: up.url, logger: quietLogger() }), {
        before: [express.urlencoded({ extended: true })],
      });
      const res = await request(`${front.url}/form`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: 'ids[]=7&user[roles][]=admin',
      });
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(up.seen[0].body, { ids: ['7'], user: { roles: ['admin'] } });
    });

    test('express.urlencoded({ extended: false }): repeated keys survive', async () => {
      const up = await startParsingUpstream((options) =>
        express5.urlencoded({ extended: false, ...options }),
      );
      const front = await startFront(kind, createProxy({ target: up.url, logger: quietLogger() }), {
        before: [express.urlencoded({ extended: false })],
      });
      const res = await request(`${front.url}/flat`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: 'tag=a&tag=b&q=x+y%26z&tag=c&empty=',
      });
      assert.equal(res.status, 200, res.text);
      const seen = up.seen[0];
      assert.deepEqual(seen.body, { tag: ['a', 'b', 'c'], q: 'x y&z', empty: '' });
      assert.equal(seen.headers['content-length'], String(seen.raw.length));
      assert.deepEqual(new URLSearchParams(seen.raw.toString('latin1')).getAll('tag'), [
        'a',
        'b',
        'c',
      ]);
    });

    test('express.text(): the same bytes in the declared charset', async () => {
      const up = await startParsingUpstream((options) =>
        express5.text({ type: 'text/*', ...options }),
      );
      const front = await startFront(kind, createProxy({ target: up.url, logger: quietLogger() }), {
        before: [express.text({ type: 'text/*' })],
      });
      const utf8 = Buffer.from('héllo wörld ✓ 日本', 'utf8');
      const latin1 = Buffer.from('café crème', 'latin1');
      for (const [type, bytes] of [
        ['text/plain; charset=utf-8', utf8],
        ['text/plain; charset=iso-8859-1', latin1],
      ]) {
        const res = await request(`${front.url}/text`, {
          method: 'POST',
          headers: { 'content-type': type },
          body: bytes,
        });
        assert.equal(res.status, 200, res.text);
        const seen = up.seen.at(-1);
        assert.deepEqual(seen.raw, bytes, `the bytes of a ${type} body`);
        assert.equal(seen.headers['content-length'], String(bytes.length));
      }
    });

    test('express.raw(): the same bytes', async () => {
      const up = await startParsingUpstream(express5.raw);
      const front = await startFront(kind, createProxy({ target: up.url, logger: quietLogger() }), {
        before: [express.raw()],
      });
      const bytes = randomBytes(48 * KiB);
      const res = await request(`${front.url}/raw`, {
        method: 'PUT',
        headers: { 'content-type': 'application/octet-stream' },
        body: bytes,
      });
      assert.equal(res.status, 200, res.text);
      const seen = up.seen[0];
      assert.equal(seen.headers['content-length'], String(bytes.length));
      assert.equal(sha256(seen.raw), sha256(bytes));
    });

    test('a gzip-encoded JSON body that express.json() inflated arrives without Content-Encoding and with its inflated length', async () => {
      const up = await startParsingUpstream(express5.json);
      const front = await startFront(kind, createProxy({ target: up.url, logger: quietLogger() }), {
        before: [express.json()],
      });
      const value = {
        compressed: true,
        items: Array.from({ length: 50 }, (_, i) => ({ i, label: `item ${i}` })),
      };
      const gz = gzipSync(JSON.stringify(value));
      const res = await request(`${front.url}/gz`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' },
        body: gz,
      });
      assert.equal(res.status, 200, res.text);
      const seen = up.seen[0];
      assert.equal(seen.error, undefined);
      assert.equal(seen.headers['content-encoding'], undefined);
      assert.equal(
        seen.headers['content-length'],
        String(Buffer.byteLength(JSON.stringify(value))),
      );
      assert.deepEqual(seen.body, value);
    });

    test('a GET through express.json() is forwarded as a GET without a body', async () => {
      const up = await startUpstream();
      const front = await startFront(kind, createProxy({ target: up.url, logger: quietLogger() }), {
        before: [express.json()],
      });
      const res = await request(`${front.url}/things?page=2`, {
        headers: { accept: 'application/json' },
      });
      assert.equal(res.status, 200);
      assert.equal(res.json().url, '/things?page=2');
      const seen = up.seen[0];
      assert.equal(seen.method, 'GET');
      assert.equal(seen.body.length, 0);
      assert.equal(seen.headers['transfer-encoding'], undefined);
      assert.ok(
        seen.headers['content-length'] === undefined || seen.headers['content-length'] === '0',
      );
    });

    test('a GET whose stream a middleware already read is forwarded without a body, not refused', async () => {
      const up = await startUpstream();
      const front = await startFront(kind, createProxy({ target: up.url, logger: quietLogger() }), {
        // Reads every request to its end and leaves no req.body: nothing to re-send, nothing lost.
        before: [(req, _res, next) => req.resume().once('end', next)],
      });
      const res = await request(`${front.url}/drained`);
      assert.equal(res.status, 200, res.text);
      const seen = up.seen[0];
      assert.equal(seen.method, 'GET');
      assert.equal(seen.body.length, 0);
      assert.equal(seen.headers['transfer-encoding'], undefined);
      assert.ok(
        seen.headers['content-length'] === undefined || seen.headers['content-length'] === '0',
      );
    });

    test('a body the parser does not take streams through untouched', async () => {
      const up = await startUpstream();
      const front = await startFront(kind, createProxy({ target: up.url, logger: quietLogger() }), {
        before: [express.json()],
      });
      const bytes = randomBytes(200 * KiB); // above the parsers' 100 kb limit: it must not have been read by one
      const res = await request(`${front.url}/bin`, {
        method: 'POST',
        headers: { 'content-type': 'application/octet-stream' },
        body: bytes,
      });
      assert.equal(res.status, 200);
      const seen = up.seen[0];
      assert.equal(seen.headers['content-length'], String(bytes.length));
      assert.equal(sha256(seen.body), sha256(bytes));
    });

    for (const type of ['multipart/form-data; boundary=XyZ', 'application/x-custom']) {
      test(`a body that cannot be re-serialised (${type.split(';')[0]}) gives 500 and a log line; the upstream never sees it`, async () => {
        const up = await startUpstream();
        const logger = quietLogger();
        const errors = [];
        const proxy = createProxy({ target: up.url, logger });
        proxy.on('error', (error) => errors.push(error));
        // A parser that reads the stream and leaves an object no serialiser knows.
        const objectParser = (req, _res, next) => {
          if (!req.headers['content-type']?.startsWith(type.split(';')[0])) return next();
          req.on('data', () => {});
          req.on('end', () => {
            req.body = { field: 'value', upload: { name: 'a.txt', size: 5 } };
            next();
          });
        };
        const front = await startFront(kind, proxy, { before: [objectParser] });
        const body = type.startsWith('multipart')
          ? '--XyZ\r\nContent-Disposition: form-data; name="field"\r\n\r\nvalue\r\n--XyZ--\r\n'
          : 'field=value';
        const res = await request(`${front.url}/upload`, {
          method: 'POST',
          headers: { 'content-type': type },
          body,
        });
        assert.equal(res.status, 500);
        assert.match(res.headers['content-type'], /^text\/plain/);
        assert.ok(
          res.body.length > 0 && res.body.length < 200,
          `a short body, got ${res.body.length} bytes`,
        );
        assert.match(res.text, /^500 /);
        assert.equal(up.seen.length, 0);
        const errorLines = logger.lines.filter(([level]) => level === 'error');
        assert.equal(errorLines.length, 1, JSON.stringify(logger.lines));
        assert.match(errorLines[0][1], /500/);
        assert.equal(errors.length, 1);
        assert.ok(errors[0] instanceof ProxyError);
        assert.equal(errors[0].code, 'EBODYLOST');
        assert.equal(errors[0].status, 500);
        assert.equal(proxy.stats().requests.active, 0);
        await assertServes(front);
      });
    }
  });
}

describe('client aborts', () => {
  test('mid-upload: the upstream request is destroyed', async () => {
    const upstreamReq = deferred();
    const firstChunk = deferred();
    const up = await startRawUpstream((req) => {
      const closed = new Promise((resolve) =>
        req.once('close', () => resolve({ complete: req.complete })),
      );
      req.once('data', () => firstChunk.resolve());
      upstreamReq.resolve({ closed });
    });
    const { proxy, front } = await frontWithFallback('express5', up);
    const { req, response } = startRequest(front.port, {
      method: 'POST',
      path: '/upload',
      headers: { 'content-length': String(4 * MiB) },
    });
    response.catch(() => {}); // the client's own abort
    req.write(randomBytes(64 * KiB));
    const { closed } = await within(upstreamReq.promise, 3000, 'the upstream request');
    await within(firstChunk.promise, 3000, 'the first chunk upstream');
    req.destroy();
    const { complete } = await within(
      closed,
      3000,
      "the upstream request's close after the client aborted",
    );
    assert.equal(complete, false);
    assert.equal(proxy.stats().requests.active, 0);
    await assertServes(front);
  });

  test('while waiting for the response: the upstream request is destroyed', async () => {
    const upstreamRes = deferred();
    const up = await startRawUpstream((req, res) => {
      req.resume();
      req.once('end', () => {
        const closed = new Promise((resolve) =>
          res.once('close', () => resolve({ finished: res.writableFinished })),
        );
        upstreamRes.resolve({ closed });
      });
    });
    const { proxy, front } = await frontWithFallback('node', up);
    const { req, response } = startRequest(front.port, { method: 'GET', path: '/slow' });
    response.catch(() => {}); // the client's own abort
    req.end();
    const { closed } = await within(
      upstreamRes.promise,
      3000,
      'the upstream receiving the request',
    );
    req.destroy();
    const { finished } = await within(
      closed,
      3000,
      "the upstream response's close after the client aborted",
    );
    assert.equal(finished, false);
    assert.equal(proxy.stats().requests.active, 0);
    await assertServes(front);
  });

  test('mid-download: the upstream side is closed', async () => {
    const upstreamRes = deferred();
    const up = await startRawUpstream((_req, res) => {
      const closed = new Promise((resolve) =>
        res.once('close', () => resolve({ finished: res.writableFinished })),
      );
      res.writeHead(200, {
        'content-type': 'application/octet-stream',
        'content-length': String(8 * MiB),
      });
      res.write(randomBytes(64 * KiB));
      upstreamRes.resolve({ closed });
    });
    const { proxy, front } = await frontWithFallback('express5', up);
    const req = http.get({ host: '127.0.0.1', port: front.port, path: '/download', agent: false });
    req.on('error', () => {});
    const [res] = await within(once(req, 'response'), 3000, 'the response head');
    res.on('error', () => {});
    await within(once(res, 'data'), 3000, 'the first bytes of the download');
    const { closed } = await upstreamRes.promise;
    req.destroy();
    const { finished } = await within(
      closed,
      3000,
      "the upstream response's close after the client aborted",
    );
    assert.equal(finished, false);
    assert.equal(proxy.stats().requests.active, 0);
    await assertServes(front);
  });
});

describe('upstream aborts mid-body', () => {
  for (const framing of ['content-length', 'chunked']) {
    test(`a ${framing} response cut by the upstream is cut for the client too, never complete-looking`, async () => {
      const up = await startRawUpstream((_req, res) => {
        const headers = { 'content-type': 'application/octet-stream' };
        if (framing === 'content-length') headers['content-length'] = '100000';
        res.writeHead(200, headers);
        res.write(Buffer.alloc(1000, 0x61), () => res.socket.destroy());
      });
      const logger = quietLogger();
      const errors = [];
      const { proxy, front } = await frontWithFallback('express5', up, logger);
      proxy.on('error', (error) => errors.push(error));
      const result = await within(
        fetchMayBeCut(front.port, '/cut'),
        3000,
        'the end of the cut response',
      );
      assert.equal(result.status, 200);
      assert.equal(result.complete, false);
      assert.ok(result.bytes <= 1000, `at most what the upstream sent, got ${result.bytes}`);
      assert.equal(errors.length, 1);
      assert.ok(errors[0] instanceof ProxyError);
      assert.equal(errors[0].code, 'EUPSTREAMABORTED');
      assert.ok(
        logger.lines.some(([level, line]) => level === 'error' && /502/.test(line)),
        JSON.stringify(logger.lines),
      );
      await assertServes(front);
    });
  }
});
