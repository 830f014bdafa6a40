// One soak upstream, in its own process: `node soak/upstream.mjs <port>` (forked by the driver,
// which SIGKILLs it and starts it again on the same port). Sends `{ type: 'ready', port }` over
// IPC once listening; exits with code 98 when the port is taken, so the driver can retry.
//
//   GET  /bytes?size=N&chunked=0|1&seed=S    N bytes, with or without Content-Length
//        (&trickle=MS on both: a pause between 64 KiB pieces; &once=1 on both: the whole body in
//        one write, as the pooled route asks, so that a kill seldom lands mid-body)
//   POST /upload?respond=N&seed=S            reads the body, answers N bytes; an upload that ends
//   PUT  /upload?respond=N&seed=S            but differs from its `x-expect-sha256` is reported
//                                            to the driver as `{ type: 'bad-upload' }`
//   WebSocket (any path)                     echo
//   ?wait=MS on HTTP, ?delay=MS on an upgrade: the answer comes that much later
//
// Every response carries `x-body-sha256` (the sha256 of the body it sends, computed before the
// first byte leaves); an upload's response also carries `x-received-sha256` / `x-received-bytes`.
import http from 'node:http';
import { createHash } from 'node:crypto';
import { WebSocketServer } from 'ws';
import { bodySlice, sha256 } from './bytes.mjs';

const port = Number(process.argv[2]);
const WRITE = 64 * 1024;

/**
 * Writes `body` in pieces, with backpressure, so a kill can land in the middle of it. With `trickle`,
 * waits that many ms between pieces: otherwise a body of a few MiB is soon all in the kernel's
 * socket buffers, which still deliver it (then the FIN) after a SIGKILL, and the kill cuts nothing.
 */
function sendBody(res, body, trickle) {
  let offset = 0;
  const next = () => {
    while (offset < body.length) {
      if (res.destroyed) return;
      const piece = body.subarray(offset, offset + WRITE);
      offset += piece.length;
      const flushed = res.write(piece);
      if (trickle > 0) {
        setTimeout(() => (res.writableNeedDrain ? res.once('drain', next) : next()), trickle);
        return;
      }
      if (!flushed) {
        res.once('drain', next);
        return;
      }
    }
    res.end();
  };
  next();
}

function respond(res, headers, body, chunked, trickle, once) {
  headers['content-type'] = 'application/octet-stream';
  headers['x-body-sha256'] = sha256(body);
  if (!chunked) headers['content-length'] = body.length;
  res.writeHead(200, headers);
  // In one go: the head, the body (one chunk and the last one, when chunked) in a single write.
  if (once) res.end(body);
  else sendBody(res, body, trickle);
}

const server = http.createServer((req, res) => {
  // `?wait=MS`: the response head comes that much later (a window for clients that leave before it).
  const wait = Number(new URL(req.url, 'http://upstream').searchParams.get('wait') ?? 0);
  if (wait > 0) setTimeout(() => handle(req, res), wait);
  else handle(req, res);
});

function handle(req, res) {
  const url = new URL(req.url, 'http://upstream');
  const size = Number(url.searchParams.get('size') ?? url.searchParams.get('respond') ?? 0);
  const seed = Number(url.searchParams.get('seed') ?? 0);
  const chunked = url.searchParams.get('chunked') === '1';
  const trickle = Number(url.searchParams.get('trickle') ?? 0);
  const once = url.searchParams.get('once') === '1';
  if (req.method === 'GET' && url.pathname === '/bytes') {
    respond(res, {}, bodySlice(seed, size), chunked, trickle, once);
    req.resume();
  } else if ((req.method === 'POST' || req.method === 'PUT') && url.pathname === '/upload') {
    const hash = createHash('sha256');
    let bytes = 0;
    req.on('data', (chunk) => {
      hash.update(chunk);
      bytes += chunk.length;
    });
    req.on('end', () => {
      const received = hash.digest('hex');
      const expected = req.headers['x-expect-sha256'];
      // The client names the body it means to send: an upload that ends "complete" but differs was
      // cut or corrupted on the way, and nobody else may be there to see it (the client may be gone).
      if (expected !== undefined && expected !== received) {
        process.send?.({
          type: 'bad-upload',
          detail: `${req.headers['transfer-encoding'] ?? `content-length ${req.headers['content-length']}`}: received ${bytes} B, sha256 differs from x-expect-sha256`,
        });
      }
      respond(
        res,
        { 'x-received-sha256': received, 'x-received-bytes': bytes },
        bodySlice(seed, size),
        chunked,
        trickle,
        once,
      );
    });
    // An upload the proxy abandoned: nothing to answer.
    req.on('error', () => {});
  } else {
    res.writeHead(404, { 'content-type': 'text/plain', 'content-length': 10 }).end('not found\n');
  }
}
// Shorter than Node's 5 s default, so that the proxy's pooled upstream sockets go soon after the traffic.
server.keepAliveTimeout = 1_500;

const wss = new WebSocketServer({
  noServer: true,
  perMessageDeflate: false,
  maxPayload: 4 * 1024 * 1024,
});
server.on('upgrade', (req, socket, head) => {
  socket.on('error', () => {});
  // `?delay=MS`: the 101 comes that much later (a window for clients that leave during the handshake).
  const delay = Number(new URL(req.url, 'http://upstream').searchParams.get('delay') ?? 0);
  const accept = () =>
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.on('error', () => {});
      ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    });
  if (delay > 0) setTimeout(accept, delay);
  else accept();
});
server.on('clientError', (_error, socket) => socket.destroy());

server.once('error', (error) => {
  if (error.code === 'EADDRINUSE') process.exit(98);
  throw error;
});
server.listen(port, '127.0.0.1', () => {
  process.send?.({ type: 'ready', port: server.address().port });
});
// The driver goes away: so does this process.
process.on('disconnect', () => process.exit(0));
