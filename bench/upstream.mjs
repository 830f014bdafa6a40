// The benchmark upstream, in its own process: a small JSON response, a 1 MiB response, an upload
// sink and a WebSocket echo, served alike on three ports (the pooled front spreads over all three,
// every other front uses the first). Prints `READY <port> <port> <port>` once listening.
//   GET /large     1 MiB, application/octet-stream
//   POST /upload   reads the body to its end, answers the small JSON response
//   GET /uploaded  `<bytes> <ns>`: the bytes of upload bodies received so far and the time
//                  (`process.hrtime`, the system's monotonic clock), asked by bench/upload-load.mjs
//                  directly, never through a front: the upload's MB/s is counted here
//   anything else  the small JSON response (54 bytes)
import http from 'node:http';
import { WebSocketServer } from 'ws';

const SMALL = Buffer.from(JSON.stringify({ ok: true, message: 'hello from the upstream', n: 42 }));
const LARGE = Buffer.alloc(1024 * 1024, 'x');
const PORTS = 3;
let uploaded = 0;

function small(res) {
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': SMALL.length });
  res.end(SMALL);
}

function handler(req, res) {
  if (req.url === '/upload') {
    req.on('data', (chunk) => (uploaded += chunk.length));
    // A run's end cuts the uploads in flight.
    req.on('error', () => {});
    req.on('end', () => small(res));
    return;
  }
  if (req.url === '/uploaded') {
    const body = `${uploaded} ${process.hrtime.bigint()}`;
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': body.length });
    res.end(body);
    return;
  }
  if (req.url !== '/large') return small(res);
  res.writeHead(200, {
    'content-type': 'application/octet-stream',
    'content-length': LARGE.length,
  });
  res.end(LARGE);
}

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
const echo = (ws) => ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
const servers = Array.from({ length: PORTS }, () => {
  const server = http.createServer(handler);
  server.keepAliveTimeout = 30_000;
  server.on('upgrade', (req, socket, head) => wss.handleUpgrade(req, socket, head, echo));
  return server;
});
await Promise.all(
  servers.map((server) => new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))),
);
console.log(`READY ${servers.map((server) => server.address().port).join(' ')}`);
