// Responses read from plain-HTTP upstreams: every connection of the proxy's own agent reads into
// one buffer that all of them share, and what each client gets must still be exactly what its
// upstream sent, whatever else was read into that buffer meanwhile.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createHash, randomBytes } from 'node:crypto';
import { createProxy } from 'viaduct';
import { closeAll, listen, quietLogger, startFront } from '../helpers/servers.mjs';
import { deferred, within } from '../helpers/waiting.mjs';
import { rawUpstream } from '../helpers/raw-upstream.mjs';

after(closeAll);

const MiB = 1024 * 1024;
const sha256 = (buffer) => createHash('sha256').update(buffer).digest('hex');

/**
 * A GET through the front; resolves with the response. `hold` (a promise) keeps the body unread
 * after its first chunk until it settles, so that the proxy has to queue what it relays.
 */
function get(port, path, { hold } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      const chunks = [];
      const informational = req.informational;
      res.on('data', (chunk) => {
        chunks.push(chunk);
        if (hold && chunks.length === 1) {
          res.pause();
          hold.then(() => res.resume());
        }
      });
      res.on('end', () =>
        resolve({
          status: res.statusCode,
          headers: res.headers,
          body: Buffer.concat(chunks),
          complete: res.complete,
          informational,
        }),
      );
      res.on('error', reject);
    });
    req.informational = [];
    req.on('information', (info) => req.informational.push(info));
    req.on('error', reject);
  });
}

describe('responses read through the shared buffer', () => {
  test('eight 3 MiB responses at once, two of them held unread, each arrive as their upstream sent them, twice over the same connections', async () => {
    const bodies = new Map();
    const upstream = http.createServer((req, res) => {
      const body = bodies.get(req.url);
      // Half of them chunked, in pieces of irregular sizes; half with a Content-Length.
      if (req.url.endsWith('chunked')) {
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        for (let at = 0, size = 1; at < body.length; at += size, size = (size * 7 + 13) % 90_001)
          res.write(body.subarray(at, at + size));
        res.end();
      } else {
        res.writeHead(200, { 'content-length': body.length });
        res.end(body);
      }
    });
    const port = await listen(upstream);
    const proxy = createProxy({ target: `http://127.0.0.1:${port}`, logger: quietLogger() });
    const front = await startFront('node', proxy);

    for (const batch of [1, 2]) {
      const paths = Array.from(
        { length: 8 },
        (_, i) => `/b${batch}-${i}-${i % 2 ? 'chunked' : 'length'}`,
      );
      for (const path of paths) bodies.set(path, randomBytes(3 * MiB));
      // The first two are held after their first chunk until the other six have been read.
      const released = deferred();
      const held = paths
        .slice(0, 2)
        .map((path) => get(front.port, path, { hold: released.promise }));
      const others = paths.slice(2).map((path) => get(front.port, path));
      const read = await within(Promise.all(others), 10_000, 'the six responses read at once');
      released.resolve();
      const all = [...(await within(Promise.all(held), 10_000, 'the two held responses')), ...read];
      for (const [i, path] of [...paths.slice(0, 2), ...paths.slice(2)].entries()) {
        assert.equal(all[i].status, 200, path);
        assert.equal(all[i].body.length, 3 * MiB, path);
        assert.equal(sha256(all[i].body), sha256(bodies.get(path)), `${path}: the bytes sent`);
      }
    }
    // The second batch went over the connections of the first.
    assert.equal(proxy.stats().requests.errors, 0);
  });

  test('a head that five 103 responses push across reads arrives whole', async () => {
    // Five 103s of about 13 KiB each put the final head near the end of the first 64 KiB read,
    // so that its headers are cut by a read and the parser has to keep the first part.
    const link = (n) => `</style-${n}-${'x'.repeat(12_900)}.css>; rel=preload; as=style`;
    const early = Array.from(
      { length: 5 },
      (_, n) => `HTTP/1.1 103 Early Hints\r\nLink: ${link(n)}\r\n\r\n`,
    );
    const headers = Array.from({ length: 40 }, (_, n) => [
      `x-part-${n}`,
      randomBytes(150).toString('hex'),
    ]);
    const body = randomBytes(256 * 1024);
    const head = `HTTP/1.1 200 OK\r\n${headers.map(([k, v]) => `${k}: ${v}\r\n`).join('')}content-length: ${body.length}\r\n\r\n`;
    const up = await rawUpstream(() =>
      Buffer.concat([Buffer.from(early.join('') + head, 'latin1'), body]),
    );
    const front = await startFront('node', createProxy({ target: up.url, logger: quietLogger() }));

    const res = await within(get(front.port, '/'), 5000, 'the response');
    assert.equal(res.status, 200);
    assert.deepEqual(
      res.informational.map((info) => [info.statusCode, info.headers.link]),
      Array.from({ length: 5 }, (_, n) => [103, link(n)]),
    );
    for (const [name, value] of headers) assert.equal(res.headers[name], value, name);
    assert.equal(sha256(res.body), sha256(body));
  });

  test('a 3 MiB response framed by the end of the connection arrives whole and complete', async () => {
    const body = randomBytes(3 * MiB);
    const up = await rawUpstream(() => ({
      end: Buffer.concat([Buffer.from('HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n'), body]),
    }));
    const front = await startFront('node', createProxy({ target: up.url, logger: quietLogger() }));

    const res = await within(get(front.port, '/'), 5000, 'the response');
    assert.equal(res.status, 200);
    assert.equal(res.complete, true);
    assert.equal(sha256(res.body), sha256(body));
  });

  test("a proxyReq listener that keeps the upstream socket's data gets every byte the upstream sent", async () => {
    const body = randomBytes(2 * MiB);
    const sent = Buffer.concat([
      Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n`),
      body,
    ]);
    const up = await rawUpstream(() => sent);
    const proxy = createProxy({ target: up.url, logger: quietLogger() });
    const kept = [];
    const keep = (socket) => socket.on('data', (chunk) => kept.push(chunk));
    // viaduct emits proxyReq once the request has its socket.
    proxy.on('proxyReq', (proxyReq) => keep(proxyReq.socket));
    const front = await startFront('node', proxy);

    const res = await within(get(front.port, '/'), 5000, 'the response');
    assert.equal(sha256(res.body), sha256(body));
    // Chunks kept past their 'data' event are the bytes read then, not what a later read put there.
    assert.equal(sha256(Buffer.concat(kept)), sha256(sent));
  });
});
