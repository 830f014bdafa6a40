// One benchmark front, in its own process: `node --expose-gc bench/front.mjs <kind> <upstreamPort>`.
// Prints `READY <port>`; answers `{ type: 'heap' }` over IPC with the heap used after GC.
import http from 'node:http';
import express from 'express';
import { createProxyServer } from 'http-proxy-3';
import { createProxyMiddleware } from 'http-proxy-middleware';
import { createProxy, attach } from 'viaduct';

const [kind, upstreamPort] = process.argv.slice(2);
const target = `http://127.0.0.1:${upstreamPort}`;

/** Bare http-proxy-3 (viaduct's engine) doing the same work as viaduct: keep-alive upstream, X-Forwarded-*, WebSockets. */
function bareEngine() {
  const proxy = createProxyServer({
    target,
    agent: new http.Agent({ keepAlive: true }),
    xfwd: true,
  });
  proxy.on('error', (_error, _req, res) => {
    if (res && 'writeHead' in res && !res.headersSent) res.writeHead(502).end();
    else res?.destroy();
  });
  return proxy;
}

const fronts = {
  'viaduct-express'() {
    const app = express();
    app.use(createProxy(target));
    const server = http.createServer(app);
    attach(server, app);
    return server;
  },
  'hpm-express'() {
    const app = express();
    const proxy = createProxyMiddleware({ target, ws: true });
    app.use(proxy);
    const server = http.createServer(app);
    server.on('upgrade', proxy.upgrade);
    return server;
  },
  'http-proxy-express'() {
    const app = express();
    const proxy = bareEngine();
    app.use((req, res) => proxy.web(req, res));
    const server = http.createServer(app);
    server.on('upgrade', (req, socket, head) => proxy.ws(req, socket, head));
    return server;
  },
  'viaduct-node'() {
    const proxy = createProxy(target);
    const server = http.createServer(proxy);
    attach(server, proxy);
    return server;
  },
  'http-proxy-node'() {
    const proxy = bareEngine();
    const server = http.createServer((req, res) => proxy.web(req, res));
    server.on('upgrade', (req, socket, head) => proxy.ws(req, socket, head));
    return server;
  },
};

if (!fronts[kind])
  throw new Error(`unknown front "${kind}"; one of ${Object.keys(fronts).join(', ')}`);
const server = fronts[kind]();
server.keepAliveTimeout = 30_000;
server.listen(0, '127.0.0.1', () => console.log(`READY ${server.address().port}`));

process.on('message', (message) => {
  if (message.type !== 'heap') return;
  globalThis.gc();
  globalThis.gc();
  process.send({ type: 'heap', bytes: process.memoryUsage().heapUsed });
});
// Exit normally on SIGINT, so that `node --cpu-prof bench/front.mjs …` writes its profile.
process.once('SIGINT', () => process.exit(0));
