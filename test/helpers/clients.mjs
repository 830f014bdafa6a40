// Real clients for the tests: HTTP requests, WebSocket connections and raw TCP exchanges.
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { once } from 'node:events';
import { WebSocket } from 'ws';
import {
  HANDSHAKE_ACCEPT,
  SWITCHING_PROTOCOLS,
  handshake,
} from '../../support/websocket-handshake.mjs';

export { HANDSHAKE_ACCEPT, SWITCHING_PROTOCOLS, handshake };

/**
 * A request on a fresh connection; resolves with status, headers and the whole body. `path`, when
 * given, is sent as is (a URL's path would be normalised first).
 */
export function request(url, { method = 'GET', headers = {}, body, agent = false, path } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      { method, headers, agent, ...(path !== undefined && { path }) },
      (res) => {
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
      },
    );
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
      res.on('end', () =>
        resolve({
          refused: {
            status: res.statusCode,
            headers: res.headers,
            body: Buffer.concat(chunks).toString('utf8'),
          },
        }),
      );
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
      if (until?.test(received)) {
        socket.destroy();
        resolve(received);
      }
    });
    socket.on('close', () => resolve(received));
    socket.on('error', (error) =>
      error.code === 'ECONNRESET' ? resolve(received) : reject(error),
    );
    socket.write(bytes);
  });
}

/** A raw HTTP/1.1 request head with the given header lines (an object; order kept). */
export function rawRequest(method, path, headers) {
  let text = `${method} ${path} HTTP/1.1\r\n`;
  for (const [name, value] of Object.entries(headers)) text += `${name}: ${value}\r\n`;
  return `${text}\r\n`;
}

/**
 * Sends a WebSocket handshake for `path` on a raw connection, waits for `arrived` (resolving with
 * the server's request for it), then resets the connection; resolves once the server side has closed.
 */
export async function handshakeThenReset(port, path, arrived) {
  const client = net.connect(port, '127.0.0.1');
  client.on('error', () => {});
  client.write(handshake(path));
  const req = await arrived;
  const serverSideClosed = new Promise((resolve) => req.socket.once('close', resolve));
  client.resetAndDestroy();
  await serverSideClosed;
}

/** The status code of a raw HTTP response. */
export function statusOf(raw) {
  const match = /^HTTP\/1\.[01] (\d{3})/.exec(raw);
  return match ? Number(match[1]) : undefined;
}

/**
 * Parses a raw HTTP response (its head must be complete): status, headers (lower-case names,
 * repeated ones joined by ', ') and the body as received, framing not decoded.
 */
export function parseResponse(raw) {
  const end = raw.indexOf('\r\n\r\n');
  assert.ok(end > 0, `a complete response head in ${JSON.stringify(raw)}`);
  const [statusLine, ...lines] = raw.slice(0, end).split('\r\n');
  return { status: statusOf(statusLine), headers: headersOf(lines), body: raw.slice(end + 4) };
}

/** Header lines of a raw head as an object: lower-case names, repeated ones joined by ', '. */
export function headersOf(lines) {
  const headers = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
  }
  return headers;
}

/**
 * Resolves with what `socket` received up to the end of a message head (latin1), bytes after it in
 * the same read included; from then on it reads nothing until resumed.
 */
export function headThenPause(socket) {
  return new Promise((resolve) => {
    let head = '';
    const onData = (chunk) => {
      head += chunk.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      socket.removeListener('data', onData);
      socket.pause();
      resolve(head);
    };
    socket.on('data', onData);
  });
}
