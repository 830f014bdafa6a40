// Real clients for the tests: HTTP requests, WebSocket connections and raw TCP exchanges.
import http from 'node:http';
import net from 'node:net';
import { once } from 'node:events';
import { WebSocket } from 'ws';

/** A request on a fresh connection; resolves with status, headers and the whole body. */
export function request(url, { method = 'GET', headers = {}, body, agent = false } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, agent }, (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('end', () => {
        const buffer = Buffer.concat(chunks);
        resolve({
          status: res.statusCode,
          headers: res.headers,
          rawHeaders: res.rawHeaders,
          body: buffer,
          text: buffer.toString('utf8'),
          json: () => JSON.parse(buffer.toString('utf8')),
        });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

/**
 * Opens a WebSocket. Resolves `{ ws, greeting }` once open and the upstream's first message
 * (`hello:<url>`) arrived, or `{ refused: { status, headers, body } }` when the handshake got an
 * HTTP response instead of 101.
 */
export function openSocket(url, options = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, options);
    ws.once('message', (data) => resolve({ ws, greeting: String(data) }));
    ws.once('unexpected-response', (_req, res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('end', () => resolve({ refused: { status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') } }));
      res.on('error', reject);
    });
    ws.once('error', reject);
    ws.once('close', () => reject(new Error('closed before the first message')));
  });
}

/** Sends a text message and resolves with the next message received. */
export async function roundTrip(ws, message) {
  const reply = once(ws, 'message');
  ws.send(message);
  const [data] = await reply;
  return String(data);
}

/**
 * Writes raw bytes to a port and resolves with everything received until the server closes
 * the connection (or `endAfter` bytes matched a RegExp, then the socket is destroyed).
 */
export function rawExchange(port, bytes, { until } = {}) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let received = '';
    socket.on('data', (chunk) => {
      received += chunk.toString('latin1');
      if (until && until.test(received)) {
        socket.destroy();
        resolve(received);
      }
    });
    socket.on('close', () => resolve(received));
    socket.on('error', (error) => (error.code === 'ECONNRESET' ? resolve(received) : reject(error)));
    socket.write(bytes);
  });
}

/** A WebSocket handshake request as raw bytes. */
export function handshake(path, headers = {}) {
  const lines = {
    host: '127.0.0.1',
    upgrade: 'websocket',
    connection: 'Upgrade',
    'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
    'sec-websocket-version': '13',
    ...headers,
  };
  let text = `GET ${path} HTTP/1.1\r\n`;
  for (const [name, value] of Object.entries(lines)) if (value !== undefined) text += `${name}: ${value}\r\n`;
  return `${text}\r\n`;
}

/** The status code of a raw HTTP response. */
export function statusOf(raw) {
  const match = /^HTTP\/1\.[01] (\d{3})/.exec(raw);
  return match ? Number(match[1]) : undefined;
}
