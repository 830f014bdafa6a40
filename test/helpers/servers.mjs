// Real servers on 127.0.0.1 for the tests: upstreams (HTTP + WebSocket) and fronts (Express 4,
// Express 5, Connect, node:http). Everything started here is closed by `closeAll()`.
import http from 'node:http';
import net from 'node:net';
import { once } from 'node:events';
import connect from 'connect';
import express5 from 'express';
import express4 from 'express4';
import { WebSocketServer } from 'ws';
import { attach } from 'viaduct';
import { nextEvent } from './waiting.mjs';

const open = new Set();

/** A logger that keeps its lines (`logger.lines`, each `[level, message]`) instead of printing them. */
export function quietLogger() {
  const lines = [];
  const keep = (level) => (message) => lines.push([level, message]);
  return {
    lines,
    debug: keep('debug'),
    info: keep('info'),
    warn: keep('warn'),
    error: keep('error'),
  };
}

/** Listens on a free loopback port; the server and its sockets are destroyed by `closeAll()`. */
export async function listen(server) {
  const sockets = new Set();
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const entry = {
    close: () =>
      new Promise((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
  open.add(entry);
  return server.address().port;
}

export async function closeAll() {
  const entries = [...open];
  open.clear();
  await Promise.all(entries.map((entry) => entry.close()));
}

/** A loopback port nothing listens on: it was listening and is closed now, so connecting is refused. */
export async function deadPort() {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * An upstream that refuses every upgrade with exactly the raw bytes `response`, then closes the
 * connection. `heads` records each request head it received.
 */
export async function refusingUpstream(response) {
  const heads = [];
  const server = net.createServer((socket) => {
    let received = '';
    socket.on('error', () => {});
    socket.on('data', (chunk) => {
      received += chunk.toString('latin1');
      if (!received.includes('\r\n\r\n')) return;
      heads.push(received);
      socket.end(response);
    });
  });
  const port = await listen(server);
  return { url: `http://127.0.0.1:${port}`, port, heads };
}

/**
 * An upstream that accepts HTTP requests and upgrades and never answers either. Each is kept
 * with a promise of its close, taken when it arrived.
 */
export async function startSilentUpstream() {
  const requests = [];
  const upgrades = [];
  const server = http.createServer((req, res) =>
    requests.push({ req, res, closed: nextEvent(res, 'close') }),
  );
  server.on('upgrade', (_req, socket) => {
    // Node's server leaves an upgraded socket half-open when the peer ends it; a real server closes it.
    socket.on('end', () => socket.destroy());
    socket.on('error', () => {});
    upgrades.push({ socket, closed: nextEvent(socket, 'close') });
  });
  const port = await listen(server);
  return { server, port, url: `http://127.0.0.1:${port}`, requests, upgrades };
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/**
 * An upstream that answers every HTTP request with JSON describing what it received, unless
 * `handler` answers, and echoes WebSocket messages. `seen` holds each request it received,
 * `handshakes` each upgrade request.
 */
export async function startUpstream(handler) {
  const seen = [];
  const handshakes = [];
  const server = http.createServer(async (req, res) => {
    const body = await readBody(req);
    const record = {
      method: req.method,
      url: req.url,
      headers: req.headers,
      rawHeaders: req.rawHeaders,
      body,
      socket: req.socket,
    };
    seen.push(record);
    if (handler && (await handler(req, res, record)) !== false) return;
    const text = JSON.stringify({
      method: req.method,
      url: req.url,
      headers: req.headers,
      body: body.toString('utf8'),
    });
    res.writeHead(200, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(text),
    });
    res.end(text);
  });
  const wss = new WebSocketServer({ noServer: true });
  server.on('upgrade', (req, socket, head) => {
    handshakes.push({ url: req.url, headers: req.headers, rawHeaders: req.rawHeaders });
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
  });
  wss.on('connection', (ws, req) => {
    ws.on('message', (data, isBinary) =>
      ws.send(isBinary ? data : `echo:${data}`, { binary: isBinary }),
    );
    ws.send(`hello:${req.url}`);
  });
  const port = await listen(server);
  return { server, wss, port, url: `http://127.0.0.1:${port}`, seen, handshakes };
}

export const FRONT_KINDS = ['express5', 'express4', 'connect', 'node'];

/**
 * A front of the given kind with `proxy` mounted at `mount` ('' = root) and attached for upgrades.
 * `before` is middleware put in front of the proxy (not for 'node').
 */
export async function startFront(
  kind,
  proxy,
  { mount = '', before = [], attachTo = 'app', unmatched } = {},
) {
  let app;
  let server;
  if (kind === 'node') {
    if (mount || before.length) throw new Error('a node:http front has no mounts or middleware');
    server = http.createServer(proxy);
    app = proxy;
  } else {
    app = kind === 'express5' ? express5() : kind === 'express4' ? express4() : connect();
    for (const fn of before) app.use(mount || '/', fn);
    if (mount) app.use(mount, proxy);
    else app.use(proxy);
    server = http.createServer(app);
  }
  const detach = attach(server, attachTo === 'proxy' ? proxy : app, unmatched ? { unmatched } : {});
  const port = await listen(server);
  return {
    app,
    server,
    port,
    url: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}`,
    detach,
  };
}
