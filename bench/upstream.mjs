// The benchmark upstream, in its own process: a small JSON response, a 1 MiB response, and a
// WebSocket echo. Prints `READY <port>` once listening.
import http from 'node:http';
import { WebSocketServer } from 'ws';

const SMALL = Buffer.from(JSON.stringify({ ok: true, message: 'hello from the upstream', n: 42 }));
const LARGE = Buffer.alloc(1024 * 1024, 'x');

const server = http.createServer((req, res) => {
  const body = req.url === '/large' ? LARGE : SMALL;
  res.writeHead(200, {
    'content-type': req.url === '/large' ? 'application/octet-stream' : 'application/json',
    'content-length': body.length,
  });
  res.end(body);
});
server.keepAliveTimeout = 30_000;
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
server.on('upgrade', (req, socket, head) =>
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  }),
);
server.listen(0, '127.0.0.1', () => console.log(`READY ${server.address().port}`));
