// One benchmark front, in its own process: `node bench/front.mjs <kind> <upstreamPort> [<port> <port>]`
// (the pooled front uses every port given, the others the first). Prints `READY <port>`; answers
// `{ type: 'heap' }` over IPC with the heap used after two forced GCs.
import { subscribe } from 'node:diagnostics_channel';
import http from 'node:http';
import net from 'node:net';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import express from 'express';
import { createProxyServer } from 'http-proxy-3';
import { createProxyMiddleware } from 'http-proxy-middleware';
import { createProxy, attach } from 'viaduct';

const [kind, ...upstreamPorts] = process.argv.slice(2);
const upstreamPort = Number(upstreamPorts[0]);
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

/**
 * The floor: the least a Node proxy does. `http.request` with a keep-alive agent and `pipe()` both
 * ways, headers as received and as answered (no hop-by-hop policy, no `X-Forwarded-*`, no
 * timeouts); an upgrade is the client's request head, as received, written on a `net` connection to
 * the upstream, then the two sockets piped both ways (the upstream's 101 comes back through the
 * pipe). Correct for the bench's own traffic, not for the Internet's.
 */
function floor() {
  const agent = new http.Agent({ keepAlive: true });
  const server = http.createServer((req, res) => {
    const upstreamReq = http.request(
      {
        host: '127.0.0.1',
        port: upstreamPort,
        method: req.method,
        path: req.url,
        headers: req.headers,
        agent,
      },
      (upstreamRes) => {
        res.writeHead(upstreamRes.statusCode, upstreamRes.headers);
        upstreamRes.pipe(res);
      },
    );
    upstreamReq.on('error', () => {
      if (!res.headersSent) res.writeHead(502).end();
      else res.destroy();
    });
    // A client gone mid-request (the upload runs end so) takes the upstream request with it.
    res.on('close', () => {
      if (!res.writableFinished) upstreamReq.destroy();
    });
    req.pipe(upstreamReq);
  });
  server.on('upgrade', (req, socket, head) => {
    const upstream = net.connect(upstreamPort, '127.0.0.1');
    let text = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`;
    const raw = req.rawHeaders;
    for (let i = 0; i < raw.length; i += 2) text += `${raw[i]}: ${raw[i + 1]}\r\n`;
    upstream.write(`${text}\r\n`);
    if (head.length > 0) upstream.write(head);
    socket.pipe(upstream).pipe(socket);
    upstream.on('error', () => socket.destroy());
    socket.on('error', () => upstream.destroy());
  });
  return server;
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
  'viaduct-pool-node'() {
    // One route (the default one) whose target is a pool of three upstreams, round-robin.
    const proxy = createProxy({ target: upstreamPorts.map((port) => `http://127.0.0.1:${port}`) });
    const server = http.createServer(proxy);
    attach(server, proxy);
    return server;
  },
  'viaduct-observed-node'() {
    // viaduct-node with a subscriber on each of viaduct's channels that counts its messages: what
    // an APM agent or a metrics exporter costs at the least.
    const counts = new Map();
    for (const name of [
      'viaduct:request:start',
      'viaduct:request:end',
      'viaduct:tunnel:open',
      'viaduct:tunnel:close',
    ]) {
      counts.set(name, 0);
      subscribe(name, () => counts.set(name, counts.get(name) + 1));
    }
    return fronts['viaduct-node']();
  },
  'floor-node': floor,
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

// The heap figure needs a forced GC, and the fronts run as plain `node`: `--expose-gc` is turned on
// here the first time the heap is asked for (in the held-tunnels phase, after every throughput
// metric), which only installs `gc()` in a fresh context.
let gc = globalThis.gc;
process.on('message', (message) => {
  if (message.type !== 'heap') return;
  if (gc === undefined) {
    setFlagsFromString('--expose-gc');
    gc = runInNewContext('gc');
  }
  gc();
  gc();
  process.send({ type: 'heap', bytes: process.memoryUsage().heapUsed });
});
// Exit normally on SIGINT, so that `node --cpu-prof bench/front.mjs …` writes its profile.
process.once('SIGINT', () => process.exit(0));
