// An https upstream (and an https front): certificate checks (`secure`, `ca`), the TLS server name,
// the connect timeout over a TLS handshake that never completes, and X-Forwarded-Proto: https.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import express from 'express';
import { WebSocketServer } from 'ws';
import { attach, createProxy } from 'viaduct';
import { closeAll, listen, quietLogger, startFront, startUpstream } from '../helpers/servers.mjs';
import {
  handshake,
  openSocket,
  rawExchange,
  request,
  roundTrip,
  statusOf,
} from '../helpers/clients.mjs';

after(closeAll);

/** A throwaway self-signed certificate, made with the openssl CLI; `undefined` when there is no openssl. */
function makeCertificate(dir, name, subjectAltName) {
  const keyFile = path.join(dir, `${name}.key`);
  const certFile = path.join(dir, `${name}.crt`);
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-days',
      '2',
      '-subj',
      `/CN=${name}`,
      '-addext',
      `subjectAltName=${subjectAltName}`,
      '-keyout',
      keyFile,
      '-out',
      certFile,
    ],
    { stdio: 'pipe' },
  );
  return { key: readFileSync(keyFile), cert: readFileSync(certFile) };
}

let skip = false;
let tls; // for 127.0.0.1 and localhost
let other; // for other.test only: a name mismatch for 127.0.0.1 and localhost
try {
  execFileSync('openssl', ['version'], { stdio: 'pipe' });
} catch {
  skip = 'the openssl CLI is not installed: the TLS tests need it to make a throwaway certificate';
}
if (!skip) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'viaduct-tls-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  tls = makeCertificate(dir, 'localhost', 'DNS:localhost,IP:127.0.0.1');
  other = makeCertificate(dir, 'other.test', 'DNS:other.test');
}

/**
 * An https upstream answering JSON with what it received, and a WebSocket echo server on it.
 * `seen`/`handshakes` record the headers and the TLS server name (SNI) each request came with.
 */
async function startHttpsUpstream(credentials = tls) {
  const seen = [];
  const handshakes = [];
  const server = https.createServer(
    { key: credentials.key, cert: credentials.cert },
    (req, res) => {
      seen.push({ url: req.url, headers: req.headers, servername: req.socket.servername });
      const text = JSON.stringify({ url: req.url, headers: req.headers });
      res.writeHead(200, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(text),
      });
      res.end(text);
    },
  );
  const wss = new WebSocketServer({ noServer: true });
  server.on('upgrade', (req, socket, head) => {
    handshakes.push({ url: req.url, headers: req.headers, servername: req.socket.servername });
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
  });
  wss.on('connection', (ws, req) => {
    ws.on('message', (data) => ws.send(`echo:${data}`));
    ws.send(`hello:${req.url}`);
  });
  const port = await listen(server);
  return { port, url: `https://127.0.0.1:${port}`, seen, handshakes };
}

/** An https request on a fresh connection; resolves with status, headers and the body text. */
function httpsRequest(url, { headers = {}, ca } = {}) {
  return new Promise((resolve, reject) => {
    // Node's client would take the TLS server name from a Host header: name the certificate's instead.
    const req = https.request(
      url,
      { headers, ca, servername: 'localhost', agent: false },
      (res) => {
        const chunks = [];
        res.on('data', (chunk) => chunks.push(chunk));
        res.on('end', () =>
          resolve({
            status: res.statusCode,
            headers: res.headers,
            text: Buffer.concat(chunks).toString('utf8'),
          }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end();
  });
}

async function assertTunnel(front, path) {
  const { ws, greeting } = await openSocket(`${front.wsUrl}${path}`);
  assert.equal(greeting, `hello:${path}`);
  assert.equal(await roundTrip(ws, 'ping'), 'echo:ping');
  ws.close();
}

describe('https upstream', { skip }, () => {
  test('default secure (true): a self-signed upstream gives 502 on HTTP and on an upgrade', async () => {
    const up = await startHttpsUpstream();
    const logger = quietLogger();
    const front = await startFront('express5', createProxy({ target: up.url, logger }));
    const res = await request(`${front.url}/x`);
    assert.equal(res.status, 502);
    assert.doesNotMatch(
      res.text,
      new RegExp(String(up.port)),
      'the error body names no upstream address',
    );
    const raw = await rawExchange(front.port, handshake('/w'));
    assert.equal(statusOf(raw), 502);
    assert.equal(up.seen.length + up.handshakes.length, 0);
    assert.ok(
      logger.lines.filter(([level]) => level === 'error').length >= 2,
      'each failure is logged at error',
    );
  });

  test('a certificate for another name (trusted through ca) is a TLS failure: 502 on both paths', async () => {
    const up = await startHttpsUpstream(other);
    const logger = quietLogger();
    const front = await startFront('node', createProxy({ target: up.url, ca: other.cert, logger }));
    const res = await request(`${front.url}/x`);
    const raw = await rawExchange(front.port, handshake('/w'));
    assert.equal(up.seen.length + up.handshakes.length, 0);
    assert.ok(
      logger.lines.some(([, line]) => /ERR_TLS_CERT_ALTNAME_INVALID/.test(line)),
      'the log names the TLS failure',
    );
    assert.deepEqual({ http: res.status, upgrade: statusOf(raw) }, { http: 502, upgrade: 502 });
  });

  test('an https target that is a plain HTTP server is a TLS failure: 502 on both paths', async () => {
    const plain = await startUpstream();
    const logger = quietLogger();
    const front = await startFront(
      'node',
      createProxy({ target: `https://127.0.0.1:${plain.port}`, secure: false, logger }),
    );
    const res = await request(`${front.url}/x`);
    const raw = await rawExchange(front.port, handshake('/w'));
    assert.equal(plain.seen.length + plain.handshakes.length, 0);
    assert.ok(
      logger.lines.some(([, line]) => /SSL|TLS/.test(line)),
      'the log names the TLS failure',
    );
    assert.deepEqual({ http: res.status, upgrade: statusOf(raw) }, { http: 502, upgrade: 502 });
  });

  test('secure: false: 200 and a working tunnel to the self-signed upstream', async () => {
    const up = await startHttpsUpstream();
    const front = await startFront(
      'connect',
      createProxy({ target: up.url, secure: false, logger: quietLogger() }),
    );
    const res = await request(`${front.url}/x?y=1`);
    assert.equal(res.status, 200);
    assert.equal(res.json().url, '/x?y=1');
    await assertTunnel(front, '/chat');
    assert.equal(up.handshakes.length, 1);
  });

  test('ca: <the certificate> with secure true: 200 and a working tunnel', async () => {
    const up = await startHttpsUpstream();
    for (const options of [{ ca: tls.cert }, { ca: tls.cert, secure: true }, { ca: [tls.cert] }]) {
      const front = await startFront(
        'node',
        createProxy({ target: up.url, ...options, logger: quietLogger() }),
      );
      const res = await request(`${front.url}/ok`);
      assert.equal(res.status, 200);
      await assertTunnel(front, '/ok');
    }
    assert.equal(up.seen.length, 3);
    assert.equal(up.handshakes.length, 3);
  });

  test("target https://localhost: the TLS server name comes from the target, not the client's Host (changeOrigin false)", async () => {
    const up = await startHttpsUpstream();
    const proxy = createProxy({
      target: `https://localhost:${up.port}`,
      ca: tls.cert,
      logger: quietLogger(),
    });
    const front = await startFront('express5', proxy);
    const res = await request(`${front.url}/named`, { headers: { host: 'example.com' } });
    assert.equal(res.status, 200);
    assert.equal(
      up.seen[0].headers.host,
      'example.com',
      'changeOrigin false keeps the client Host',
    );
    assert.equal(up.seen[0].servername, 'localhost');

    const raw = await rawExchange(front.port, handshake('/named-ws', { host: 'example.com' }), {
      until: /\r\n\r\n/,
    });
    assert.equal(statusOf(raw), 101);
    assert.equal(up.handshakes[0].headers.host, 'example.com');
    assert.equal(up.handshakes[0].servername, 'localhost');
  });

  test('timeouts.connect: a server that accepts TCP but never completes TLS gives 504 in bounded time, on both paths', async () => {
    const silent = net.createServer(() => {});
    const port = await listen(silent);
    for (const secure of [undefined, false]) {
      const logger = quietLogger();
      const options = { target: `https://127.0.0.1:${port}`, timeouts: { connect: 200 }, logger };
      if (secure !== undefined) options.secure = secure;
      const front = await startFront('node', createProxy(options));

      let started = Date.now();
      const res = await request(`${front.url}/slow`);
      let elapsed = Date.now() - started;
      assert.equal(res.status, 504, `HTTP, secure ${secure}`);
      assert.ok(elapsed >= 180 && elapsed < 1500, `HTTP answered after ${elapsed} ms`);

      started = Date.now();
      const raw = await rawExchange(front.port, handshake('/slow'));
      elapsed = Date.now() - started;
      assert.equal(statusOf(raw), 504, `upgrade, secure ${secure}`);
      assert.ok(elapsed >= 180 && elapsed < 1500, `upgrade answered after ${elapsed} ms`);
      assert.ok(logger.lines.some(([level, line]) => level === 'error' && /504/.test(line)));
    }
  });
});

describe('https front', { skip }, () => {
  test('X-Forwarded-Proto is https on HTTP and on upgrades when the front itself is https', async () => {
    const up = await startUpstream();
    const app = express();
    app.use(createProxy({ target: up.url, logger: quietLogger() }));
    const server = https.createServer({ key: tls.key, cert: tls.cert }, app);
    attach(server, app);
    const port = await listen(server);

    const res = await httpsRequest(`https://127.0.0.1:${port}/secure`, { ca: tls.cert });
    assert.equal(res.status, 200);
    const h = up.seen[0].headers;
    assert.equal(h['x-forwarded-proto'], 'https');
    assert.equal(h['x-forwarded-host'], `127.0.0.1:${port}`);
    assert.equal(h['x-forwarded-port'], String(port));
    assert.equal(h['x-forwarded-for'], '127.0.0.1');

    const { ws, greeting } = await openSocket(`wss://127.0.0.1:${port}/secure-ws`, {
      ca: tls.cert,
    });
    assert.equal(greeting, 'hello:/secure-ws');
    ws.close();
    assert.equal(up.handshakes[0].headers['x-forwarded-proto'], 'https');
    assert.equal(up.handshakes[0].headers['x-forwarded-port'], String(port));
  });

  test("'forwarded' mode says proto=https, and X-Forwarded-Port defaults to 443 without a port in Host", async () => {
    const up = await startUpstream();
    const proxy = createProxy({
      logger: quietLogger(),
      routes: { '/rfc': { target: up.url, forwarded: 'forwarded' }, '/': up.url },
    });
    const server = https.createServer({ key: tls.key, cert: tls.cert }, proxy);
    attach(server, proxy);
    const port = await listen(server);

    await httpsRequest(`https://127.0.0.1:${port}/rfc`, {
      ca: tls.cert,
      headers: { host: 'secure.example' },
    });
    await httpsRequest(`https://127.0.0.1:${port}/plain`, {
      ca: tls.cert,
      headers: { host: 'secure.example' },
    });
    assert.equal(up.seen[0].headers.forwarded, 'for=127.0.0.1;host=secure.example;proto=https');
    assert.equal(up.seen[1].headers['x-forwarded-proto'], 'https');
    assert.equal(up.seen[1].headers['x-forwarded-port'], '443');
  });
});
