// A raw TCP upstream on 127.0.0.1 that writes exact bytes, for the suites that assert what crossed
// the wire from the upstream's side (upstream framing, reads through the shared buffer).
import net from 'node:net';
import { EventEmitter } from 'node:events';
import { headersOf } from './clients.mjs';
import { listen } from './servers.mjs';
import { until, within } from './waiting.mjs';

const CRLF = '\r\n';

/** `bytes` as latin1 text, whether it is a string already or a Buffer. */
export const latin1 = (bytes) => (typeof bytes === 'string' ? bytes : bytes.toString('latin1'));

/**
 * A raw upstream on 127.0.0.1. On each connection it parses request heads (and a `Content-Length`
 * body) and calls `answer(request)`, which returns the exact bytes to write in one write (a string
 * is latin1), `{ end: bytes }` to write them and close, or `undefined` when it writes itself (with
 * `request.conn.send`). It never closes a connection otherwise. An answer starting with
 * `HTTP/1.1 101` turns the connection into a tunnel: every later byte is added to `conn.tunnel`
 * and given to `onTunnel(conn, text)`. `connections[i].id` is i + 1 (nginx's X-Connection).
 */
export async function rawUpstream(answer, { onTunnel } = {}) {
  const connections = [];
  const requests = [];
  const events = new EventEmitter();
  const server = net.createServer((socket) => {
    const conn = { id: connections.length + 1, socket, requests: [], tunnel: undefined };
    conn.closed = new Promise((resolve) => socket.once('close', resolve));
    conn.send = (bytes) =>
      socket.write(typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes);
    connections.push(conn);
    let pending = '';
    const intoTunnel = (text) => {
      conn.tunnel += text;
      onTunnel?.(conn, text);
      events.emit('change');
    };
    socket.on('error', () => {});
    socket.on('close', () => events.emit('change'));
    socket.on('data', (chunk) => {
      const text = chunk.toString('latin1');
      if (conn.tunnel !== undefined) return intoTunnel(text);
      pending += text;
      while (conn.tunnel === undefined) {
        const end = pending.indexOf('\r\n\r\n');
        if (end < 0) break;
        const head = pending.slice(0, end + 4);
        const [requestLine, ...lines] = head.slice(0, -4).split(CRLF);
        const [method, target, version] = requestLine.split(' ');
        const headers = headersOf(lines);
        const length = Number(headers['content-length'] ?? 0);
        if (pending.length < end + 4 + length) break;
        const request = {
          method,
          target,
          version,
          headers,
          head,
          body: pending.slice(end + 4, end + 4 + length),
          conn,
          index: requests.length + 1,
        };
        pending = pending.slice(end + 4 + length);
        conn.requests.push(request);
        requests.push(request);
        const reply = answer(request);
        if (reply && typeof reply === 'object' && !Buffer.isBuffer(reply))
          socket.end(Buffer.from(latin1(reply.end), 'latin1'));
        else if (reply !== undefined) conn.send(reply);
        if (reply !== undefined && latin1(reply).startsWith('HTTP/1.1 101')) {
          conn.tunnel = '';
          const rest = pending;
          pending = '';
          if (rest) intoTunnel(rest);
        }
        events.emit('change');
      }
      return undefined;
    });
  });
  const port = await listen(server);
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    connections,
    requests,
    /** Resolves once `test()` holds (checked on every byte and connection event). */
    until: (test, what) => within(until(events, test), 2_000, what),
  };
}
