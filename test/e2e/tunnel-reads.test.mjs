// What crosses a tunnel either way: both sockets read into one buffer that every tunnel shares,
// and what each side gets must still be exactly what the other sent, whatever was read into that
// buffer while a write to a slow peer waited.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createProxy } from 'viaduct';
import { SWITCHING_PROTOCOLS, handshake, headThenPause } from '../helpers/clients.mjs';
import { closeAll, listen, quietLogger, startFront } from '../helpers/servers.mjs';
import { deferred, within } from '../helpers/waiting.mjs';

after(closeAll);

const MiB = 1024 * 1024;
const BOUND = { timeout: 20_000 };
const sha256 = (buffer) => createHash('sha256').update(buffer).digest('hex');

/**
 * `payload` as one binary WebSocket frame with a 64-bit length: unmasked (a server's), or masked
 * (a client's; the payload is random, so it is sent as it is, its mask key random too).
 */
function binaryFrame(payload, masked) {
  const header = Buffer.alloc(masked ? 14 : 10);
  header[0] = 0x82;
  header[1] = masked ? 0xff : 127;
  header.writeBigUInt64BE(BigInt(payload.length), 2);
  if (masked) randomBytes(4).copy(header, 10);
  return Buffer.concat([header, payload]);
}

/** `bytes` in binary frames of irregular sizes (1 B to about 90 KiB). */
function framesOf(bytes, { masked = false } = {}) {
  const frames = [];
  for (let at = 0, size = 1; at < bytes.length; at += size, size = (size * 7 + 13) % 90_001)
    frames.push(binaryFrame(bytes.subarray(at, at + size), masked));
  return frames;
}

/** Writes `frames` to `socket` as fast as it takes them, then ends it. */
async function writeAll(socket, frames) {
  for (const frame of frames) if (!socket.write(frame)) await once(socket, 'drain');
  socket.end();
}

/**
 * A raw upstream that answers a handshake for `/i` with a 101 and the first of `streams[i]`'s
 * frames in one write, then writes the rest as fast as the proxy takes them, and closes.
 */
async function streamingUpstream(streams) {
  const server = net.createServer(async (socket) => {
    socket.on('error', () => {});
    const head = await headThenPause(socket);
    socket.resume();
    const frames = streams[Number(/^GET \/(\d+) /.exec(head)[1])];
    socket.write(Buffer.concat([Buffer.from(SWITCHING_PROTOCOLS, 'latin1'), frames[0]]));
    await writeAll(socket, frames.slice(1));
  });
  return `http://127.0.0.1:${await listen(server)}`;
}

/**
 * A raw WebSocket handshake for `path` through the front; resolves with everything after the 101
 * head once the connection ends. `hold` (a promise) keeps the socket unread until it settles.
 */
function tunnelBytes(port, path, { hold } = {}) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks = [];
    if (hold) {
      socket.pause();
      hold.then(() => socket.resume());
    }
    socket.on('data', (chunk) => chunks.push(chunk));
    socket.on('end', () => {
      const all = Buffer.concat(chunks);
      const headEnd = all.indexOf('\r\n\r\n');
      assert.match(all.subarray(0, headEnd).toString('latin1'), /^HTTP\/1\.1 101 /);
      resolve(all.subarray(headEnd + 4));
    });
    socket.on('error', reject);
    socket.write(handshake(path));
  });
}

describe("an upstream's bytes into tunnels, read through the shared buffer", () => {
  test(
    'six tunnels at once, two of their clients not reading until the others are done: each client gets exactly what its upstream sent',
    BOUND,
    async () => {
      // Far more than loopback's socket buffers take, so that the proxy's writes to the two
      // clients that do not read wait on views of the buffer the other tunnels go on reading into.
      const streams = Array.from({ length: 6 }, () => framesOf(randomBytes(12 * MiB)));
      const sent = streams.map((frames) => Buffer.concat(frames));
      const url = await streamingUpstream(streams);
      const front = await startFront('node', createProxy({ target: url, logger: quietLogger() }));
      const readersDone = deferred();
      const held = [0, 1].map((i) =>
        tunnelBytes(front.port, `/${i}`, { hold: readersDone.promise }),
      );
      const readers = [2, 3, 4, 5].map((i) => tunnelBytes(front.port, `/${i}`));
      const early = await within(Promise.all(readers), 15_000, 'the reading clients');
      readersDone.resolve();
      const late = await within(Promise.all(held), 15_000, 'the held clients');
      const received = [...late, ...early];
      assert.deepEqual(
        received.map((bytes) => [bytes.length, sha256(bytes)]),
        sent.map((bytes) => [bytes.length, sha256(bytes)]),
      );
    },
  );

  test(
    "a listener on the tunnel's upstream socket gets every byte read after the 101, and so does the client",
    BOUND,
    async () => {
      const frames = framesOf(randomBytes(4 * MiB));
      const sent = Buffer.concat(frames);
      const url = await streamingUpstream([frames]);
      const proxy = createProxy({ target: url, logger: quietLogger() });
      const seen = [];
      proxy.on('open', ({ upstreamSocket }) =>
        upstreamSocket.on('data', (chunk) => seen.push(chunk)),
      );
      const front = await startFront('node', proxy);
      const received = await within(tunnelBytes(front.port, '/0'), 15_000, 'the client');
      assert.equal(sha256(received), sha256(sent));
      // The bytes read with the 101, at most one read of 64 KiB, went to the tunnel with it, before
      // the listener was there; every later read reaches the listener too.
      const afterHead = Buffer.concat(seen);
      assert.ok(afterHead.length > sent.length - 64 * 1024, `${afterHead.length} B seen`);
      assert.equal(sha256(afterHead), sha256(sent.subarray(sent.length - afterHead.length)));
    },
  );
});

/**
 * A raw upstream that answers every handshake with a 101 and keeps what arrives after the request
 * head: `received(path)` resolves with it once the proxy ends the connection. `hold` (a promise)
 * keeps each connection unread after the 101 until it settles.
 */
async function receivingUpstream({ hold } = {}) {
  const arrivals = new Map();
  const arrivalOf = (path) => {
    if (!arrivals.has(path)) arrivals.set(path, deferred());
    return arrivals.get(path);
  };
  const server = net.createServer(async (socket) => {
    socket.on('error', () => {});
    const head = await headThenPause(socket);
    const path = /^GET (\S+) /.exec(head)[1];
    const chunks = [Buffer.from(head.slice(head.indexOf('\r\n\r\n') + 4), 'latin1')];
    socket.on('data', (chunk) => chunks.push(chunk));
    socket.on('end', () => {
      arrivalOf(path).resolve(Buffer.concat(chunks));
      socket.end();
    });
    socket.write(SWITCHING_PROTOCOLS);
    if (hold) hold.then(() => socket.resume());
    else socket.resume();
  });
  const port = await listen(server);
  return { url: `http://127.0.0.1:${port}`, received: (path) => arrivalOf(path).promise };
}

/** A raw WebSocket handshake for `path` through the front; once the 101 is in, writes `frames` and ends. */
function sendThrough(port, path, frames) {
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => {});
  headThenPause(socket).then((head) => {
    socket.resume();
    assert.match(head, /^HTTP\/1\.1 101 /);
    writeAll(socket, frames);
  });
  socket.write(handshake(path));
  return socket;
}

describe("a client's bytes into tunnels, read through the shared buffer", () => {
  test(
    'six tunnels at once, two of their upstreams not reading until the others are done: each upstream gets exactly what its client sent',
    BOUND,
    async () => {
      const streams = Array.from({ length: 6 }, () =>
        framesOf(randomBytes(12 * MiB), { masked: true }),
      );
      const sent = streams.map((frames) => Buffer.concat(frames));
      const othersDone = deferred();
      const [held, reading] = [
        await receivingUpstream({ hold: othersDone.promise }),
        await receivingUpstream(),
      ];
      const proxy = createProxy({
        routes: { '/held': held.url, '/': reading.url },
        logger: quietLogger(),
      });
      const front = await startFront('node', proxy);
      const paths = ['/held/0', '/held/1', '/2', '/3', '/4', '/5'];
      paths.forEach((path, i) => sendThrough(front.port, path, streams[i]));
      const early = await within(
        Promise.all(paths.slice(2).map((path) => reading.received(path))),
        15_000,
        'the reading upstreams',
      );
      othersDone.resolve();
      const late = await within(
        Promise.all(paths.slice(0, 2).map((path) => held.received(path))),
        15_000,
        'the held upstreams',
      );
      assert.deepEqual(
        [...late, ...early].map((bytes) => [bytes.length, sha256(bytes)]),
        sent.map((bytes) => [bytes.length, sha256(bytes)]),
      );
    },
  );

  test(
    "a listener on the tunnel's client socket gets every byte the client sends after the 101, and so does the upstream",
    BOUND,
    async () => {
      const frames = framesOf(randomBytes(4 * MiB), { masked: true });
      const sent = Buffer.concat(frames);
      const upstream = await receivingUpstream();
      const proxy = createProxy({ target: upstream.url, logger: quietLogger() });
      const seen = [];
      proxy.on('open', ({ clientSocket }) => clientSocket.on('data', (chunk) => seen.push(chunk)));
      const front = await startFront('node', proxy);
      sendThrough(front.port, '/0', frames);
      const received = await within(upstream.received('/0'), 15_000, 'the upstream');
      assert.equal(sha256(received), sha256(sent));
      assert.equal(sha256(Buffer.concat(seen)), sha256(sent));
    },
  );
});
