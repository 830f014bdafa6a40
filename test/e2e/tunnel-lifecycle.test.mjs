// How the proxy ends a tunnel itself (DESIGN §5): at close(), after timeouts.read of silence, and at
// timeouts.tunnel, a Close frame (1001) to each side at a frame boundary, the replies consumed, both
// connections closed once both replied or cut after 2 s; the close event's reason and codes.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { WebSocket, WebSocketServer } from 'ws';
import { createProxy } from 'viaduct';
import { closeAll, listen, quietLogger, startFront, startUpstream } from '../helpers/servers.mjs';
import { handshake, openSocket, roundTrip, statusOf } from '../helpers/clients.mjs';
import { deferred, nextEvent, within } from '../helpers/waiting.mjs';

after(closeAll);

// Every test gets a bound: a hang fails instead of stalling the file.
const BOUND = { timeout: 6_000 };

/** How long the proxy waits for Close replies (DESIGN §5). */
const REPLY_WAIT = 2_000;
/** Slack on top of it: the sweep's period with default timeouts is 250 ms, a deadline met within two. */
const SWEEP_SLACK = 600;

const TEXT = 0x1;
const BINARY = 0x2;
const CLOSE = 0x8;

// ---------------------------------------------------------------------------------------------
// Frames on the wire, and raw peers that write and read them.

/** A WebSocket frame; `mask`: true for a random key, a 4-byte key, or false (RFC 6455 §5.2). */
function encodeFrame(opcode, payload = Buffer.alloc(0), mask = false) {
  const data = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  const maskBit = mask ? 0x80 : 0;
  let header;
  if (data.length < 126) {
    header = Buffer.from([0x80 | opcode, maskBit | data.length]);
  } else if (data.length < 65536) {
    header = Buffer.alloc(4);
    header[0] = 0x80 | opcode;
    header[1] = maskBit | 126;
    header.writeUInt16BE(data.length, 2);
  } else {
    header = Buffer.alloc(10);
    header[0] = 0x80 | opcode;
    header[1] = maskBit | 127;
    header.writeBigUInt64BE(BigInt(data.length), 2);
  }
  if (!mask) return Buffer.concat([header, data]);
  const key = mask === true ? randomBytes(4) : Buffer.from(mask);
  const masked = Buffer.alloc(data.length);
  for (let i = 0; i < data.length; i++) masked[i] = data[i] ^ key[i & 3];
  return Buffer.concat([header, key, masked]);
}

/** A Close frame's payload: code and reason. */
function closePayload(code, reason = '') {
  const payload = Buffer.alloc(2 + Buffer.byteLength(reason));
  payload.writeUInt16BE(code, 0);
  payload.write(reason, 2);
  return payload;
}

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const acceptFor = (key) =>
  createHash('sha1')
    .update(key + GUID)
    .digest('base64');

/**
 * One end of a raw connection: its HTTP head (a 101 for a client, the upgrade request for an
 * upstream), then every byte after it (`wire`) and the frames they parse into, each
 * `{ opcode, fin, rsv, masked, key, payload, at }` (`at`: its offset in `wire`).
 */
class RawPeer {
  constructor(socket, label) {
    this.socket = socket;
    this.label = label;
    this.head = undefined;
    this.headBuffer = Buffer.alloc(0);
    this.chunks = [];
    this.wireLength = 0;
    this.pending = [];
    this.pendingLength = 0;
    this.needed = 2;
    this.parsedUpTo = 0;
    this.frames = [];
    this.ended = false;
    this.isClosed = false;
    this.closedAt = undefined;
    this.watchers = new Set();
    this.gotHead = deferred();
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        this.isClosed = true;
        this.closedAt = performance.now();
        this.notify();
        resolve(this.closedAt);
      }),
    );
    socket.on('error', () => {});
    socket.on('end', () => {
      this.ended = true;
      this.notify();
    });
    socket.on('data', (chunk) => this.onData(chunk));
  }

  onData(chunk) {
    if (this.head === undefined) {
      this.headBuffer = Buffer.concat([this.headBuffer, chunk]);
      const end = this.headBuffer.indexOf('\r\n\r\n');
      if (end < 0) return;
      this.head = this.headBuffer.subarray(0, end + 4).toString('latin1');
      chunk = this.headBuffer.subarray(end + 4);
      this.gotHead.resolve(this.head);
    }
    if (chunk.length > 0) {
      this.chunks.push(chunk);
      this.wireLength += chunk.length;
      this.pending.push(chunk);
      this.pendingLength += chunk.length;
      this.parse();
    }
    this.notify();
  }

  /** Every byte received after the head. */
  get wire() {
    return Buffer.concat(this.chunks);
  }

  /** Parses whole frames off `pending`, concatenated only once as many bytes as needed are there. */
  parse() {
    for (;;) {
      if (this.pendingLength < this.needed) return;
      const bytes = this.pending.length === 1 ? this.pending[0] : Buffer.concat(this.pending);
      this.pending = [bytes];
      const masked = (bytes[1] & 0x80) !== 0;
      let length = bytes[1] & 0x7f;
      let headerLength = 2;
      if (length === 126) {
        headerLength = 4;
        if (bytes.length >= 4) length = bytes.readUInt16BE(2);
      } else if (length === 127) {
        headerLength = 10;
        if (bytes.length >= 10) length = Number(bytes.readBigUInt64BE(2));
      }
      if (bytes.length < headerLength) {
        this.needed = headerLength;
        continue;
      }
      if (masked) headerLength += 4;
      if (bytes.length < headerLength + length) {
        this.needed = headerLength + length;
        continue;
      }
      const key = masked ? Buffer.from(bytes.subarray(headerLength - 4, headerLength)) : undefined;
      const payload = Buffer.from(bytes.subarray(headerLength, headerLength + length));
      if (key) for (let i = 0; i < payload.length; i++) payload[i] ^= key[i & 3];
      this.frames.push({
        opcode: bytes[0] & 0x0f,
        fin: (bytes[0] & 0x80) !== 0,
        rsv: (bytes[0] >> 4) & 0x7,
        masked,
        key,
        payload,
        at: this.parsedUpTo,
      });
      this.parsedUpTo += headerLength + length;
      const rest = bytes.subarray(headerLength + length);
      this.pending = rest.length ? [rest] : [];
      this.pendingLength = rest.length;
      this.needed = 2;
    }
  }

  notify() {
    for (const watcher of [...this.watchers]) watcher();
  }

  /** Resolves with `check()`'s first truthy value, checked on every arrival; bounded by `ms`. */
  until(check, ms, what) {
    const wait = new Promise((resolve, reject) => {
      const watcher = () => {
        const value = check();
        if (value) {
          this.watchers.delete(watcher);
          resolve(value);
        } else if (this.isClosed) {
          this.watchers.delete(watcher);
          reject(new Error(`${this.label}: ${what}: the connection closed first`));
        }
      };
      this.watchers.add(watcher);
      watcher();
    });
    return within(wait, ms, `${this.label}: ${what}`);
  }

  /** The first frame with `opcode` (after `from` frames), once it arrived. */
  frame(opcode, ms = 2_000, from = 0) {
    return this.until(
      () => this.frames.slice(from).find((f) => f.opcode === opcode),
      ms,
      `a frame with opcode ${opcode}`,
    );
  }

  send(opcode, payload, mask) {
    this.socket.write(encodeFrame(opcode, payload, mask));
  }
}

/**
 * A raw client: a bare TCP socket that sends the handshake (and `withHandshake`, bytes in the same
 * write); resolves once the 101 arrived.
 */
async function rawClient(
  port,
  path = '/raw',
  { allowHalfOpen = false, withHandshake = Buffer.alloc(0) } = {},
) {
  const peer = new RawPeer(net.connect({ port, host: '127.0.0.1', allowHalfOpen }), 'client');
  peer.socket.write(Buffer.concat([Buffer.from(handshake(path), 'latin1'), withHandshake]));
  const head = await within(peer.gotHead.promise, 2_000, 'the 101 to the raw client');
  assert.equal(statusOf(head), 101, head);
  peer.sendMasked = (opcode, payload) => peer.send(opcode, payload, true);
  return peer;
}

/**
 * A raw upstream: a net server that answers each upgrade with a 101 itself (and `with101`, bytes in
 * the same write), then leaves the connection to the test. `next()` resolves with the next
 * connection's RawPeer, once the 101 left.
 */
async function rawUpstream({ allowHalfOpen = false, with101 = Buffer.alloc(0) } = {}) {
  const arrivals = [];
  const waiting = [];
  const server = net.createServer({ allowHalfOpen }, (socket) => {
    const peer = new RawPeer(socket, 'upstream');
    peer.gotHead.promise.then((head) => {
      const key = /^sec-websocket-key:\s*(\S+)/im.exec(head)?.[1] ?? '';
      const response = `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptFor(key)}\r\n\r\n`;
      socket.write(Buffer.concat([Buffer.from(response, 'latin1'), with101]));
      if (waiting.length) waiting.shift().resolve(peer);
      else arrivals.push(peer);
    });
  });
  const port = await listen(server);
  return {
    url: `http://127.0.0.1:${port}`,
    next: () => {
      if (arrivals.length) return Promise.resolve(arrivals.shift());
      const next = deferred();
      waiting.push(next);
      return within(next.promise, 2_000, 'a connection at the raw upstream');
    },
  };
}

/** A proxy (quiet logger, `error` events kept) mounted on a node:http front. */
async function setup(options, kind = 'node') {
  const logger = quietLogger();
  const proxy = createProxy({ logger, ...options });
  const errors = [];
  proxy.on('error', (error) => errors.push(error));
  const front = await startFront(kind, proxy);
  return { proxy, front, logger, errors };
}

/** An echoing ws upstream (test/helpers) with a proxy and front in front of it. */
async function wsSetup(options = {}, kind = 'node') {
  const up = await startUpstream();
  return { up, ...(await setup({ target: up.url, ...options }, kind)) };
}

/** Opens a ws tunnel; resolves with the client ws and the upstream-side ws. */
async function openTunnel(front, up, path = '/chat', options = {}) {
  const upstreamWs = nextEvent(up.wss, 'connection').then(([ws]) => ws);
  const opened = await openSocket(`${front.wsUrl}${path}`, options);
  assert.ok(opened.ws, `the tunnel opened (got ${JSON.stringify(opened.refused)})`);
  return { ws: opened.ws, greeting: opened.greeting, upstreamWs: await upstreamWs };
}

/** A ws `close` event as `{ code, reason, at }`. */
function closeOf(ws) {
  return nextEvent(ws, 'close').then(([code, reason]) => ({
    code,
    reason: String(reason),
    at: performance.now(),
  }));
}

/** The proxy's next `close` event, with the time it came. */
function tunnelClose(proxy) {
  return nextEvent(proxy, 'close').then(([event]) => ({ event, at: performance.now() }));
}

/**
 * The proxy's own two sockets of the next tunnel (from its `open` event), each with a promise of
 * the time it closed: when a connection ended for the proxy, whatever a half-open peer still holds.
 */
function proxySockets(proxy) {
  const closedAt = (socket) => nextEvent(socket, 'close').then(() => performance.now());
  return nextEvent(proxy, 'open').then(([{ clientSocket, upstreamSocket }]) => ({
    client: closedAt(clientSocket),
    upstream: closedAt(upstreamSocket),
    clientSocket,
    upstreamSocket,
  }));
}

/** A raw tunnel: raw client ↔ proxy ↔ raw upstream. */
async function rawTunnel(front, upstream, path = '/raw', clientOptions = {}) {
  const upstreamPeer = upstream.next();
  const client = await rawClient(front.port, path, clientOptions);
  return { client, upstream: await upstreamPeer };
}

// ---------------------------------------------------------------------------------------------

describe('proxy.close() with an open tunnel (ws client ↔ ws upstream)', () => {
  test(
    'both sides get Close 1001 with the reason; the close event says shutdown and every code; close() resolves well before 2 s',
    BOUND,
    async () => {
      const { up, proxy, front, errors } = await wsSetup();
      const { ws, upstreamWs } = await openTunnel(front, up);
      assert.equal(await roundTrip(ws, 'before'), 'echo:before');
      const clientClosed = closeOf(ws);
      const upstreamClosed = closeOf(upstreamWs);
      const closeEvent = tunnelClose(proxy);
      const clientErrors = [];
      ws.on('error', (error) => clientErrors.push(error));
      upstreamWs.on('error', (error) => clientErrors.push(error));

      const startedAt = performance.now();
      await within(proxy.close(), 1_500, 'close() with both sides replying');
      const closeTook = performance.now() - startedAt;
      assert.ok(closeTook < 1_000, `close() resolved after ${closeTook.toFixed(0)} ms, not 2 s`);

      const client = await within(clientClosed, 1_000, "the client's close");
      assert.equal(client.code, 1001);
      assert.match(client.reason, /shut/i, 'the proxy says why');
      assert.ok(Buffer.byteLength(client.reason) <= 123);
      const upstream = await within(upstreamClosed, 1_000, "the upstream's close");
      assert.equal(upstream.code, 1001);
      assert.match(upstream.reason, /shut/i);

      const { event } = await within(closeEvent, 1_000, 'the close event');
      assert.equal(event.reason, 'shutdown');
      assert.deepEqual(
        event.code,
        { client: 1001, upstream: 1001, proxy: 1001 },
        'ws replies with the code it got: each side replied 1001, the proxy sent 1001',
      );
      assert.equal(event.error, undefined);
      assert.deepEqual(errors, []);
      assert.deepEqual(clientErrors, [], 'no protocol error at either ws');
      assert.equal(proxy.stats().tunnels.active, 0);
    },
  );

  test('repeated 20 times: the close event always has the client’s and the upstream’s reply codes', {
    timeout: 10_000,
  }, async () => {
    // Both replies arrive at about the same time; neither may be lost to the other side closing first.
    const seen = [];
    for (let i = 0; i < 20; i++) {
      const { up, proxy, front } = await wsSetup();
      const { ws } = await openTunnel(front, up);
      const closeEvent = tunnelClose(proxy);
      const clientClosed = closeOf(ws);
      await within(proxy.close(), 2_500, `close() #${i}`);
      const { event } = await closeEvent;
      seen.push({ ...event.code, clientGot: (await clientClosed).code });
    }
    const lost = seen.filter((code) => code.client !== 1001 || code.upstream !== 1001);
    assert.deepEqual(lost, [], `${lost.length} of 20 close events lost a reply code`);
    assert.ok(seen.every((code) => code.clientGot === 1001 && code.proxy === 1001));
  });
});

describe('idle timeout (timeouts.read on a route)', () => {
  test(
    'after 300 ms of silence: Close 1001 both ways, reason idle; another route’s tunnel stays open',
    BOUND,
    async () => {
      const up = await startUpstream();
      const { proxy, front } = await setup({
        target: up.url,
        routes: { '/idle': { target: up.url, timeouts: { read: 300 } } },
      });
      const other = await openTunnel(front, up, '/other');
      const { ws, upstreamWs } = await openTunnel(front, up, '/idle/room');
      const lastActivity = performance.now();
      const clientClosed = closeOf(ws);
      const upstreamClosed = closeOf(upstreamWs);
      const closeEvent = tunnelClose(proxy);

      const { event, at } = await within(closeEvent, 2_000, 'the idle close');
      const client = await within(clientClosed, 1_000, "the client's close");
      const upstream = await within(upstreamClosed, 1_000, "the upstream's close");
      const after = client.at - lastActivity;
      assert.ok(after >= 290, `closed after ${after.toFixed(0)} ms: not before the 300 ms timeout`);
      assert.ok(after < 900, `closed after ${after.toFixed(0)} ms: about the timeout`);
      assert.ok(at - lastActivity < 900);
      assert.equal(event.route, '/idle');
      assert.equal(event.reason, 'idle');
      assert.deepEqual(event.code, { client: 1001, upstream: 1001, proxy: 1001 });
      assert.equal(client.code, 1001);
      assert.match(client.reason, /idle/i);
      assert.equal(upstream.code, 1001);
      assert.match(upstream.reason, /idle/i);
      assert.equal(other.ws.readyState, WebSocket.OPEN, 'the default route keeps its 60 s timeout');
      assert.equal(await roundTrip(other.ws, 'still'), 'echo:still');
      other.ws.terminate();
    },
  );
});

describe('timeouts.tunnel: the longest life of a tunnel', () => {
  test(
    'a chatty tunnel (a message every 50 ms) is ended at ~400 ms, not before: reason expired, 1001 both ways',
    BOUND,
    async () => {
      const up = await startUpstream();
      const { proxy, front } = await setup({
        routes: { '/chat': { target: up.url, timeouts: { tunnel: 400 } } },
      });
      const opened = nextEvent(proxy, 'open').then(() => performance.now());
      const { ws, upstreamWs } = await openTunnel(front, up, '/chat');
      const openedAt = await opened;
      const clientClosed = closeOf(ws);
      const upstreamClosed = closeOf(upstreamWs);
      const closeEvent = tunnelClose(proxy);
      const echoes = [];
      ws.on('message', (data) => echoes.push({ text: String(data), at: performance.now() }));
      const timer = setInterval(() => ws.readyState === WebSocket.OPEN && ws.send('tick'), 50);
      try {
        const client = await within(clientClosed, 2_000, 'the expiry');
        const { event } = await within(closeEvent, 1_000, 'the close event');
        const upstream = await within(upstreamClosed, 1_000, "the upstream's close");
        const after = client.at - openedAt;
        assert.ok(after >= 395, `ended after ${after.toFixed(0)} ms, not before 400 ms`);
        assert.ok(after < 750, `ended after ${after.toFixed(0)} ms, at about 400 ms`);
        assert.ok(event.duration >= 400, `duration ${event.duration}`);
        assert.equal(event.reason, 'expired');
        assert.deepEqual(event.code, { client: 1001, upstream: 1001, proxy: 1001 });
        assert.equal(client.code, 1001);
        assert.match(client.reason, /lifetime|expire/i);
        assert.equal(upstream.code, 1001);
        assert.match(upstream.reason, /lifetime|expire/i);
        const ticks = echoes.filter((e) => e.text === 'echo:tick');
        assert.ok(ticks.length >= 5, `${ticks.length} echoes: the tunnel was never idle`);
        assert.ok(
          client.at - ticks.at(-1).at < 200,
          'messages flowed until about the end: it was not an idle close',
        );
      } finally {
        clearInterval(timer);
      }
    },
  );

  test(
    'top level and per route: a route overriding tunnel keeps its own, one overriding read only inherits it',
    BOUND,
    async () => {
      const up = await startUpstream();
      const { proxy, front } = await setup({
        target: up.url,
        timeouts: { tunnel: 300 },
        routes: {
          '/long': { target: up.url, timeouts: { tunnel: 60_000 } },
          '/inherit': { target: up.url, timeouts: { read: 30_000 } },
        },
      });
      const reasons = new Map();
      const twoClosed = new Promise((resolve) =>
        proxy.on('close', (event) => {
          reasons.set(event.route, { reason: event.reason, duration: event.duration });
          if (reasons.size === 2) resolve();
        }),
      );
      const plain = await openTunnel(front, up, '/');
      const inherit = await openTunnel(front, up, '/inherit/x');
      const long = await openTunnel(front, up, '/long/x');
      const plainClosed = closeOf(plain.ws);
      const inheritClosed = closeOf(inherit.ws);
      await within(twoClosed, 2_000, 'the two 300 ms tunnels expiring');
      assert.equal((await within(plainClosed, 1_000, 'default route')).code, 1001);
      assert.equal((await within(inheritClosed, 1_000, '/inherit')).code, 1001);
      assert.equal(reasons.get('default')?.reason, 'expired');
      assert.equal(reasons.get('/inherit')?.reason, 'expired');
      assert.ok(reasons.get('default').duration >= 300);
      assert.equal(long.ws.readyState, WebSocket.OPEN, '/long has its own 60 s');
      assert.equal(await roundTrip(long.ws, 'alive'), 'echo:alive');
      long.ws.terminate();
    },
  );

  test('0 undoes a top-level longest life on a route; invalid values are a TypeError at createProxy time', async () => {
    const up = await startUpstream();
    const proxy = createProxy({
      timeouts: { tunnel: 200 },
      routes: { '/forever': { target: up.url, timeouts: { tunnel: 0 } }, '/inherits': up.url },
      logger: quietLogger(),
    });
    const front = await startFront('node', proxy);
    const { ws } = await openSocket(`${front.wsUrl}/forever`);
    const expired = nextEvent(proxy, 'close');
    const other = await openSocket(`${front.wsUrl}/inherits`);
    // The tunnel that inherits the top level's 200 ms expires; the one on '/forever' opened before it does not.
    const [event] = await within(expired, 2_000, 'the inheriting tunnel expires');
    assert.equal(event.route, '/inherits');
    assert.equal(event.reason, 'expired');
    assert.equal(await roundTrip(ws, 'still'), 'echo:still');
    other.ws.terminate();
    ws.close();
    for (const tunnel of [-1, Number.NaN, Number.POSITIVE_INFINITY, '400', null]) {
      assert.throws(
        () => createProxy({ target: 'http://127.0.0.1:1', timeouts: { tunnel } }),
        TypeError,
        String(tunnel),
      );
      assert.throws(
        () =>
          createProxy({
            routes: { '/x': { target: 'http://127.0.0.1:1', timeouts: { tunnel } } },
          }),
        TypeError,
        `route: ${String(tunnel)}`,
      );
    }
  });
});

// ---------------------------------------------------------------------------------------------

describe('on the wire (raw client, raw upstream)', () => {
  test(
    'close(): the client gets an unmasked Close 0x88 with 1001, the upstream a masked one; the replies are consumed',
    BOUND,
    async () => {
      const upstream = await rawUpstream();
      const { proxy, front, errors } = await setup({ target: upstream.url });
      const { client, upstream: up } = await rawTunnel(front, upstream);
      const closeEvent = tunnelClose(proxy);
      const closing = proxy.close();

      await client.frame(CLOSE);
      const toClient = client.wire;
      assert.equal(toClient[0], 0x88, 'FIN + Close, no RSV bits: the first byte after the 101');
      assert.equal(toClient[1] & 0x80, 0, 'unmasked: a server never masks');
      assert.equal(toClient[2], 0x03);
      assert.equal(toClient[3], 0xe9);
      assert.equal(
        toClient.length,
        2 + (toClient[1] & 0x7f),
        'one whole Close frame, nothing else',
      );
      assert.match(client.frames[0].payload.subarray(2).toString(), /shut/i);

      const toUpstream = await up.frame(CLOSE);
      assert.equal(up.wire[0], 0x88);
      assert.equal(up.wire[1] & 0x80, 0x80, 'masked, as a client must (RFC 6455 §5.3)');
      assert.equal(toUpstream.masked, true);
      assert.equal(toUpstream.key.length, 4);
      assert.equal(toUpstream.payload.readUInt16BE(0), 1001);
      assert.match(toUpstream.payload.subarray(2).toString(), /shut/i);
      assert.equal(up.wire.length, 6 + (up.wire[1] & 0x7f), 'one whole Close frame, nothing else');

      // Replies with different codes: each is the proxy's, neither reaches the other side.
      client.sendMasked(CLOSE, closePayload(4001, 'client reply'));
      up.send(CLOSE, closePayload(4002, 'upstream reply'));
      await within(Promise.all([client.closed, up.closed]), 1_500, 'both connections closed');
      await within(closing, 1_000, 'close() resolved');
      const { event } = await closeEvent;
      assert.equal(event.reason, 'shutdown');
      assert.deepEqual(event.code, { client: 4001, upstream: 4002, proxy: 1001 });
      assert.deepEqual(
        client.frames.map((f) => f.opcode),
        [CLOSE],
        "the client never got the upstream's Close",
      );
      assert.deepEqual(
        up.frames.map((f) => f.opcode),
        [CLOSE],
        "the upstream never got the client's Close",
      );
      assert.deepEqual(errors, []);
    },
  );

  test(
    'each Close to an upstream has its own random mask key (two tunnels, two proxies)',
    BOUND,
    async () => {
      const keys = [];
      for (const tunnels of [2, 1]) {
        const upstream = await rawUpstream();
        const { proxy, front } = await setup({ target: upstream.url });
        const pairs = [];
        for (let i = 0; i < tunnels; i++) pairs.push(await rawTunnel(front, upstream));
        const closing = proxy.close();
        for (const { client, upstream: up } of pairs) {
          const frame = await up.frame(CLOSE);
          assert.equal(frame.payload.readUInt16BE(0), 1001);
          keys.push(frame.key.toString('hex'));
          await client.frame(CLOSE);
          client.sendMasked(CLOSE, closePayload(1001));
          up.send(CLOSE, closePayload(1001));
        }
        await within(closing, 1_500, 'close()');
      }
      assert.equal(keys.length, 3);
      assert.equal(new Set(keys).size, 3, `distinct keys: ${keys.join(', ')}`);
      assert.ok(!keys.includes('00000000'), 'not an all-zero key');
    },
  );

  test(
    'a Close split in the replies (code bytes in two TCP writes) is still read and consumed',
    BOUND,
    async () => {
      const upstream = await rawUpstream();
      const { proxy, front } = await setup({ target: upstream.url });
      const { client, upstream: up } = await rawTunnel(front, upstream);
      const closeEvent = tunnelClose(proxy);
      const closing = proxy.close();
      await client.frame(CLOSE);
      await up.frame(CLOSE);
      const reply = encodeFrame(CLOSE, closePayload(4321, 'split'), true);
      client.socket.write(reply.subarray(0, 7)); // header, key, the code's first byte
      up.send(CLOSE, closePayload(1000));
      // Nothing the proxy does can be awaited until the reply is whole: give it time to read the first part alone.
      await new Promise((resolve) => setTimeout(resolve, 100));
      assert.equal(
        client.isClosed,
        false,
        'the client has not replied yet: its connection is kept',
      );
      client.socket.write(reply.subarray(7));
      await within(closing, 2_500, 'close()');
      const { event } = await closeEvent;
      assert.deepEqual(event.code, { client: 4321, upstream: 1000, proxy: 1001 });
    },
  );
});

describe('frame boundaries at shutdown', () => {
  test(
    'raw: a 4 MiB message in flight from the upstream is relayed whole, then the Close; nothing of the upstream after it',
    BOUND,
    async () => {
      const upstream = await rawUpstream();
      const { proxy, front } = await setup({ target: upstream.url });
      const { client, upstream: up } = await rawTunnel(front, upstream);
      const closeEvent = tunnelClose(proxy);
      const payload = randomBytes(4 * 1024 * 1024);
      const message = encodeFrame(BINARY, payload);
      const firstPart = 10 + 1024 * 1024;
      up.socket.write(message.subarray(0, firstPart));
      await client.until(() => client.wireLength > 0, 2_000, 'the first bytes of the message');

      const closing = proxy.close();
      // The proxy's Close to the upstream goes at once (nothing in flight that way)…
      const toUpstream = await up.frame(CLOSE);
      assert.equal(toUpstream.payload.readUInt16BE(0), 1001);
      // …and the upstream, still sending its message when it gets it, finishes it, then sends more.
      up.socket.write(message.subarray(firstPart));
      up.send(TEXT, 'after the proxy’s close');
      up.send(CLOSE, closePayload(1001));

      const close = await client.frame(CLOSE, 3_000);
      assert.equal(client.frames.length, 2, 'the message, then the Close');
      assert.equal(client.frames[0].opcode, BINARY);
      assert.equal(client.frames[0].payload.length, payload.length);
      assert.ok(client.frames[0].payload.equals(payload), '4 MiB intact');
      assert.equal(close.payload.readUInt16BE(0), 1001);
      assert.equal(close.masked, false);
      assert.equal(close.at, message.length, 'the Close right after the message’s last byte');

      client.sendMasked(CLOSE, closePayload(1001));
      await within(Promise.all([client.closed, closing]), 2_000, 'the tunnel ended');
      assert.deepEqual(
        client.frames.map((f) => f.opcode),
        [BINARY, CLOSE],
        'no data frame after the Close',
      );
      assert.equal(
        client.wireLength,
        message.length + close.payload.length + 2,
        'no byte after it',
      );
      const { event } = await closeEvent;
      assert.deepEqual(event.code, { client: 1001, upstream: 1001, proxy: 1001 });
    },
  );

  test(
    'ws upstream → raw client: a 4 MiB message being sent at close() arrives whole before the 1001',
    BOUND,
    async () => {
      const { up, proxy, front } = await wsSetup();
      const upstreamWs = nextEvent(up.wss, 'connection').then(([ws]) => ws);
      const client = await rawClient(front.port, '/big');
      const serverSide = await upstreamWs;
      await client.frame(TEXT); // the greeting
      const payload = randomBytes(4 * 1024 * 1024);
      const upstreamClosed = closeOf(serverSide);
      serverSide.send(payload, { binary: true });
      await client.until(
        () => client.wireLength > client.frames[0].payload.length + 2,
        2_000,
        'the first bytes of the message',
      );
      const closing = proxy.close();
      const close = await client.frame(CLOSE, 3_000);
      assert.deepEqual(
        client.frames.map((f) => f.opcode),
        [TEXT, BINARY, CLOSE],
      );
      assert.ok(client.frames[1].payload.equals(payload), '4 MiB intact');
      assert.equal(close.payload.readUInt16BE(0), 1001);
      client.sendMasked(CLOSE, closePayload(1001));
      await within(Promise.all([client.closed, closing]), 2_000, 'the tunnel ended');
      assert.equal((await upstreamClosed).code, 1001);
      assert.deepEqual(
        client.frames.map((f) => f.opcode),
        [TEXT, BINARY, CLOSE],
        'nothing after the Close',
      );
    },
  );

  test(
    'ws both ends: the client gets a 4 MiB message whole before its close event (1001)',
    BOUND,
    async () => {
      const { up, proxy, front } = await wsSetup();
      const { ws, upstreamWs } = await openTunnel(front, up, '/big');
      const payload = randomBytes(4 * 1024 * 1024);
      const events = [];
      ws.on('message', (data) => events.push({ type: 'message', data }));
      const clientClosed = closeOf(ws).then((close) => events.push({ type: 'close', ...close }));
      const firstBytes = nextEvent(ws._socket, 'data');
      upstreamWs.send(payload, { binary: true });
      await within(firstBytes, 2_000, 'the first bytes at the client');
      await within(proxy.close(), 2_500, 'close()');
      await within(clientClosed, 1_000, "the client's close");
      assert.deepEqual(
        events.map((e) => e.type),
        ['message', 'close'],
      );
      assert.ok(Buffer.from(events[0].data).equals(payload), '4 MiB intact');
      assert.equal(events[1].code, 1001);
    },
  );

  test(
    'raw: a client frame split across TCP writes at shutdown reaches the upstream whole, then the masked Close; nothing of the client after it',
    BOUND,
    async () => {
      const upstream = await rawUpstream();
      const { proxy, front } = await setup({ target: upstream.url });
      const { client, upstream: up } = await rawTunnel(front, upstream);
      const closeEvent = tunnelClose(proxy);
      const text = 'x'.repeat(1000);
      const frame = encodeFrame(TEXT, text, true);
      const half = 500;
      client.socket.write(frame.subarray(0, half));
      await up.until(() => up.wireLength === half, 2_000, 'the first half relayed');

      const closing = proxy.close();
      // Towards the client nothing is in flight: its Close goes at once.
      const toClient = await client.frame(CLOSE);
      assert.equal(toClient.payload.readUInt16BE(0), 1001);
      assert.equal(up.frames.length, 0, 'no Close in the middle of the client’s frame');

      client.socket.write(frame.subarray(half));
      const toUpstream = await up.frame(CLOSE);
      assert.equal(up.frames[0].opcode, TEXT);
      assert.equal(up.frames[0].payload.toString(), text, 'the whole frame first');
      assert.equal(toUpstream.at, frame.length, 'the Close right after its last byte');
      assert.equal(toUpstream.masked, true);
      assert.equal(toUpstream.payload.readUInt16BE(0), 1001);

      // The client goes on: another frame, then its Close reply. Neither reaches the upstream.
      client.sendMasked(TEXT, 'not relayed');
      client.sendMasked(CLOSE, closePayload(1000));
      up.send(CLOSE, closePayload(1001));
      await within(Promise.all([up.closed, client.closed, closing]), 2_000, 'the tunnel ended');
      assert.deepEqual(
        up.frames.map((f) => [f.opcode, f.payload.length]),
        [
          [TEXT, 1000],
          [CLOSE, toUpstream.payload.length],
        ],
        'the upstream got the frame and the Close, nothing after',
      );
      assert.equal(up.wireLength, frame.length + 6 + toUpstream.payload.length);
      const { event } = await closeEvent;
      assert.deepEqual(event.code, { client: 1000, upstream: 1001, proxy: 1001 });
      assert.equal(event.bytesFromClient, up.wireLength, 'the byte count is what the upstream got');
    },
  );

  test(
    'raw: bytes that came with the upstream’s 101 are followed too: a frame begun there is relayed whole before the Close',
    BOUND,
    async () => {
      const payload = Buffer.alloc(5000, 0x33);
      const frame = encodeFrame(BINARY, payload);
      const upstream = await rawUpstream({ with101: frame.subarray(0, 1000) });
      const { proxy, front } = await setup({ target: upstream.url });
      const { client, upstream: up } = await rawTunnel(front, upstream);
      await client.until(() => client.wireLength === 1000, 2_000, 'the part sent with the 101');
      const closing = proxy.close();
      await up.frame(CLOSE);
      assert.equal(client.frames.length, 0, 'no Close inside the frame');
      up.socket.write(frame.subarray(1000));
      const close = await client.frame(CLOSE);
      assert.ok(client.frames[0].payload.equals(payload), 'the frame whole');
      assert.equal(close.at, frame.length, 'then the Close');
      client.sendMasked(CLOSE, closePayload(1001));
      up.send(CLOSE, closePayload(1001));
      await within(closing, 2_000, 'close()');
    },
  );

  test(
    'raw: bytes that came with the client’s handshake are followed too: a frame begun there reaches the upstream whole before the Close',
    BOUND,
    async () => {
      const payload = Buffer.alloc(5000, 0x44);
      const frame = encodeFrame(BINARY, payload, true);
      const upstream = await rawUpstream();
      const { proxy, front } = await setup({ target: upstream.url });
      const { client, upstream: up } = await rawTunnel(front, upstream, '/early', {
        withHandshake: frame.subarray(0, 1000),
      });
      await up.until(() => up.wireLength === 1000, 2_000, 'the part sent with the handshake');
      const closing = proxy.close();
      await client.frame(CLOSE);
      assert.equal(up.frames.length, 0, 'no Close inside the frame');
      client.socket.write(frame.subarray(1000));
      const close = await up.frame(CLOSE);
      assert.ok(up.frames[0].payload.equals(payload), 'the frame whole');
      assert.equal(close.at, frame.length, 'then the Close');
      client.sendMasked(CLOSE, closePayload(1001));
      up.send(CLOSE, closePayload(1001));
      await within(closing, 2_000, 'close()');
    },
  );

  test(
    'raw: the frame in flight can end in the same chunk as more frames: only its end is relayed',
    BOUND,
    async () => {
      const upstream = await rawUpstream();
      const { proxy, front } = await setup({ target: upstream.url });
      const { client, upstream: up } = await rawTunnel(front, upstream);
      const frame = encodeFrame(BINARY, Buffer.alloc(200, 0x5a), true);
      client.socket.write(frame.subarray(0, 50));
      await up.until(() => up.wireLength === 50, 2_000, 'the first part relayed');
      const closing = proxy.close();
      await client.frame(CLOSE);
      // The rest of the frame, another frame and the Close reply in one write.
      client.socket.write(
        Buffer.concat([
          frame.subarray(50),
          encodeFrame(TEXT, 'same chunk, not relayed', true),
          encodeFrame(CLOSE, closePayload(1001), true),
        ]),
      );
      await up.frame(CLOSE);
      up.send(CLOSE, closePayload(1001));
      await within(Promise.all([up.closed, closing]), 2_000, 'the tunnel ended');
      assert.deepEqual(
        up.frames.map((f) => f.opcode),
        [BINARY, CLOSE],
      );
      assert.ok(up.frames[0].payload.equals(Buffer.alloc(200, 0x5a)));
      assert.equal(
        up.frames[1].payload.readUInt16BE(0),
        1001,
        "the proxy's Close, not the client's",
      );
    },
  );
});

// ---------------------------------------------------------------------------------------------

describe('a peer that never replies', () => {
  test('ws upstream, a raw client that ignores the Close: its connection is kept 2 s for a reply, then cut and logged as no Close reply; no code.client', {
    timeout: 6_000,
  }, async () => {
    const { up, proxy, front, logger } = await wsSetup();
    const upstreamWs = nextEvent(up.wss, 'connection').then(([ws]) => ws);
    const sides = proxySockets(proxy);
    const client = await rawClient(front.port, '/deaf', { allowHalfOpen: true });
    const serverSide = await upstreamWs;
    const { client: clientSocketClosed } = await sides;
    const upstreamClosed = closeOf(serverSide);
    const closeEvent = tunnelClose(proxy);
    const startedAt = performance.now();
    const closing = proxy.close();
    await client.frame(CLOSE);
    const upstream = await within(upstreamClosed, 1_000, 'the ws upstream replied and closed');
    assert.equal(upstream.code, 1001);
    const clientClosedAt = await within(
      clientSocketClosed,
      REPLY_WAIT + SWEEP_SLACK + 500,
      "the client's connection cut",
    );
    const clientAfter = clientClosedAt - startedAt;
    assert.ok(
      clientAfter >= REPLY_WAIT,
      `the client's connection ended ${clientAfter.toFixed(0)} ms after close(), though it neither replied nor ended: the proxy waits 2 s for its Close reply`,
    );
    assert.ok(
      clientAfter < REPLY_WAIT + SWEEP_SLACK,
      `ended ${clientAfter.toFixed(0)} ms after close()`,
    );
    await within(closing, 1_000, 'close()');
    const { event } = await closeEvent;
    assert.equal(event.reason, 'shutdown');
    assert.deepEqual(event.code, { upstream: 1001, proxy: 1001 });
    assert.ok(
      logger.lines.some(([level, line]) => level === 'info' && line.includes('no Close reply')),
      `no Close reply logged at info (log: ${JSON.stringify(logger.lines)})`,
    );
  });

  test(
    'a ws client slower to reply than the ws upstream (its reply after the upstream’s connection ended): its reply is still awaited and read',
    BOUND,
    async () => {
      // As for a client farther away than the upstream: the upstream's reply and FIN come first.
      const { up, proxy, front } = await wsSetup();
      const sides = proxySockets(proxy);
      const { ws, upstreamWs } = await openTunnel(front, up, '/far');
      const { client: clientSocketClosed } = await sides;
      const clientClosed = closeOf(ws);
      const upstreamClosed = closeOf(upstreamWs);
      const closeEvent = tunnelClose(proxy);
      ws._socket.pause(); // the client reads nothing for now
      const closing = proxy.close();
      await within(upstreamClosed, 1_000, 'the ws upstream replied and its connection ended');
      const replyAt = performance.now();
      ws._socket.resume(); // the client reads the proxy's Close and replies
      const client = await within(clientClosed, 2_500, "the client's close");
      assert.equal(client.code, 1001);
      await within(closing, 2_500, 'close()');
      const clientSocketClosedAt = await clientSocketClosed;
      const { event } = await closeEvent;
      assert.deepEqual(
        event.code,
        { client: 1001, upstream: 1001, proxy: 1001 },
        `the client's reply was read (the proxy's client socket closed ${(clientSocketClosedAt - replyAt).toFixed(0)} ms after the client could reply)`,
      );
    },
  );

  test('raw upstream that replies but keeps its connection, raw client that ignores the Close: both end between 2 s and 2.6 s', {
    timeout: 6_000,
  }, async () => {
    const upstream = await rawUpstream();
    const { proxy, front, logger } = await setup({ target: upstream.url });
    const sides = proxySockets(proxy);
    const { client, upstream: up } = await rawTunnel(front, upstream, '/deaf', {
      allowHalfOpen: true,
    });
    const { client: clientClosed, upstream: upstreamClosed } = await sides;
    const closeEvent = tunnelClose(proxy);
    const startedAt = performance.now();
    const closing = proxy.close();
    await client.frame(CLOSE);
    await up.frame(CLOSE);
    up.send(CLOSE, closePayload(1000, 'upstream replies'));
    const ends = await within(
      Promise.all([clientClosed, upstreamClosed]),
      REPLY_WAIT + SWEEP_SLACK + 500,
      'both connections cut',
    );
    for (const [name, closedAt] of [
      ['client', ends[0]],
      ['upstream', ends[1]],
    ]) {
      const after = closedAt - startedAt;
      assert.ok(
        after >= REPLY_WAIT,
        `the ${name} connection ended ${after.toFixed(0)} ms after close()`,
      );
      assert.ok(
        after < REPLY_WAIT + SWEEP_SLACK,
        `the ${name} connection ended ${after.toFixed(0)} ms after close()`,
      );
    }
    await within(closing, 1_000, 'close()');
    const { event } = await closeEvent;
    assert.equal(event.reason, 'shutdown');
    assert.deepEqual(event.code, { upstream: 1000, proxy: 1001 }, 'no code.client');
    const info = logger.lines.filter(
      ([level, line]) => level === 'info' && line.includes('no Close reply'),
    );
    assert.equal(info.length, 1, JSON.stringify(logger.lines));
    assert.match(info[0][1], /client/);
    assert.deepEqual(
      up.frames.map((f) => f.opcode),
      [CLOSE],
    );
  });

  test(
    'close({ timeout: 300 }): a silent pair, the client in the middle of a frame, is cut at ~300 ms; no Close inside the frame',
    BOUND,
    async () => {
      const upstream = await rawUpstream();
      const { proxy, front } = await setup({ target: upstream.url });
      const sides = proxySockets(proxy);
      const { client, upstream: up } = await rawTunnel(front, upstream, '/deaf', {
        allowHalfOpen: true,
      });
      const { client: clientClosed, upstream: upstreamClosed } = await sides;
      const closeEvent = tunnelClose(proxy);
      const startedAt = performance.now();
      const frame = encodeFrame(BINARY, Buffer.alloc(1000, 1), true);
      client.socket.write(frame.subarray(0, 300)); // and never the rest
      await up.until(() => up.wireLength === 300, 2_000, 'the first part relayed');
      const closing = proxy.close({ timeout: 300 });
      await client.frame(CLOSE);
      const ends = await within(
        Promise.all([clientClosed, upstreamClosed]),
        1_500,
        'both cut at the deadline',
      );
      for (const [name, closedAt] of [
        ['client', ends[0]],
        ['upstream', ends[1]],
      ]) {
        const after = closedAt - startedAt;
        assert.ok(
          after >= 290 && after < 700,
          `the ${name} ended ${after.toFixed(0)} ms after close()`,
        );
      }
      await within(closing, 500, 'close()');
      assert.equal(up.wireLength, 300, 'the upstream got the frame’s first part and nothing else');
      const { event } = await closeEvent;
      assert.equal(event.reason, 'shutdown');
      assert.deepEqual(event.code, { proxy: 1001 });
    },
  );
});

describe('permessage-deflate', () => {
  test(
    'a compressed message round-trips, then close() gives 1001 on both ws sides (the Close is not compressed)',
    BOUND,
    async () => {
      const server = http.createServer();
      const wss = new WebSocketServer({ server, perMessageDeflate: true });
      const upstreamSide = nextEvent(wss, 'connection').then(([ws]) => ws);
      wss.on('connection', (ws) => ws.on('message', (data) => ws.send(`echo:${data}`)));
      const port = await listen(server);
      const { proxy, front } = await setup({ target: `http://127.0.0.1:${port}` });
      const ws = new WebSocket(`${front.wsUrl}/deflate`, { perMessageDeflate: true });
      await within(nextEvent(ws, 'open'), 2_000, 'open');
      const serverWs = await upstreamSide;
      assert.match(ws.extensions, /permessage-deflate/, 'negotiated through the proxy');
      const errors = [];
      ws.on('error', (error) => errors.push(error));
      serverWs.on('error', (error) => errors.push(error));

      const text = 'compress me '.repeat(10_000);
      const closeEvent = tunnelClose(proxy);
      assert.equal(await roundTrip(ws, text), `echo:${text}`);
      const clientClosed = closeOf(ws);
      const upstreamClosed = closeOf(serverWs);
      await within(proxy.close(), 1_500, 'close()');
      assert.equal((await within(clientClosed, 1_000, 'client close')).code, 1001);
      assert.equal((await within(upstreamClosed, 1_000, 'upstream close')).code, 1001);
      assert.deepEqual(errors, [], 'no RSV1 on a control frame, no protocol error');
      const { event } = await closeEvent;
      assert.ok(
        event.bytesFromClient < text.length / 10,
        `${event.bytesFromClient} B: compressed on the wire`,
      );
      assert.deepEqual(event.code, { client: 1001, upstream: 1001, proxy: 1001 });
    },
  );
});

describe('half-closed sockets during the shutdown', () => {
  test(
    'a raw client that sends FIN instead of a Close: the tunnel ends at once, not after 2 s',
    BOUND,
    async () => {
      const upstream = await rawUpstream({ allowHalfOpen: true });
      const { proxy, front } = await setup({ target: upstream.url });
      const sides = proxySockets(proxy);
      const { client, upstream: up } = await rawTunnel(front, upstream, '/fin', {
        allowHalfOpen: true,
      });
      const { client: clientClosed, upstream: upstreamClosed } = await sides;
      const closeEvent = tunnelClose(proxy);
      const startedAt = performance.now();
      const closing = proxy.close();
      await client.frame(CLOSE);
      client.socket.end(); // no Close: it can send nothing more
      await up.frame(CLOSE);
      up.send(CLOSE, closePayload(1001)); // the upstream replies, and keeps its connection
      await within(
        Promise.all([clientClosed, upstreamClosed]),
        1_000,
        'both closed well before 2 s',
      );
      await within(closing, 500, 'close()');
      assert.ok(performance.now() - startedAt < 1_000);
      const { event } = await closeEvent;
      assert.equal(event.reason, 'shutdown');
      assert.deepEqual(event.code, { upstream: 1001, proxy: 1001 });
    },
  );

  test(
    'a raw upstream that half-closes instead of a Close: the tunnel ends once the client replied, not after 2 s',
    BOUND,
    async () => {
      const upstream = await rawUpstream({ allowHalfOpen: true });
      const { proxy, front } = await setup({ target: upstream.url });
      const sides = proxySockets(proxy);
      const { client, upstream: up } = await rawTunnel(front, upstream, '/fin', {
        allowHalfOpen: true,
      });
      const { client: clientClosed, upstream: upstreamClosed } = await sides;
      const closeEvent = tunnelClose(proxy);
      const startedAt = performance.now();
      const closing = proxy.close();
      await up.frame(CLOSE);
      up.socket.end(); // FIN, no Close
      await client.frame(CLOSE);
      client.sendMasked(CLOSE, closePayload(1001, 'client reply'));
      await within(
        Promise.all([clientClosed, upstreamClosed]),
        1_000,
        'both closed well before 2 s',
      );
      await within(closing, 500, 'close()');
      assert.ok(performance.now() - startedAt < 1_000);
      const { event } = await closeEvent;
      assert.equal(event.reason, 'shutdown');
      assert.equal(event.code.proxy, 1001);
      assert.equal(event.code.upstream, undefined, 'the upstream sent no Close');
    },
  );

  test(
    'a ws client, and an upstream that half-closes: the client still gets its 1001 at once',
    BOUND,
    async () => {
      const upstream = await rawUpstream({ allowHalfOpen: true });
      const { proxy, front } = await setup({ target: upstream.url });
      const upstreamPeer = upstream.next();
      const ws = new WebSocket(`${front.wsUrl}/fin`);
      await within(nextEvent(ws, 'open'), 2_000, 'open');
      const up = await upstreamPeer;
      const clientClosed = closeOf(ws);
      const startedAt = performance.now();
      const closing = proxy.close();
      await up.frame(CLOSE);
      up.socket.end();
      const client = await within(clientClosed, 1_000, "the client's close");
      assert.equal(client.code, 1001);
      await within(closing, 1_000, 'close()');
      assert.ok(performance.now() - startedAt < 1_000);
    },
  );
});

describe('a side that closes first', () => {
  test(
    "ws client close(4000, 'bye'): relayed both ways; reason client, code.client 4000, the upstream's reply, no code.proxy",
    BOUND,
    async () => {
      const { up, proxy, front } = await wsSetup();
      const { ws, upstreamWs } = await openTunnel(front, up);
      const clientClosed = closeOf(ws);
      const upstreamClosed = closeOf(upstreamWs);
      const closeEvent = tunnelClose(proxy);
      ws.close(4000, 'bye');
      const upstream = await within(upstreamClosed, 1_000, "the upstream's close");
      assert.equal(upstream.code, 4000);
      assert.equal(upstream.reason, 'bye', "the client's Close reaches the upstream");
      const client = await within(clientClosed, 1_000, "the client's close");
      assert.equal(client.code, 4000, "the upstream's reply reaches the client");
      const { event } = await within(closeEvent, 1_000, 'the close event');
      assert.equal(event.reason, 'client');
      assert.deepEqual(event.code, { client: 4000, upstream: 4000 });
    },
  );

  test('a client that just disconnects: reason client, no codes at all', BOUND, async () => {
    const { up, proxy, front } = await wsSetup();
    const { ws } = await openTunnel(front, up);
    const closeEvent = tunnelClose(proxy);
    ws.terminate();
    const { event } = await within(closeEvent, 1_000, 'the close event');
    assert.equal(event.reason, 'client');
    assert.deepEqual(event.code, {});
  });

  test(
    'the upstream closed first (4100), then close(): the client gets only the upstream’s Close, the upstream the proxy’s 1001; reason upstream',
    BOUND,
    async () => {
      const upstream = await rawUpstream();
      const { proxy, front } = await setup({ target: upstream.url });
      const { client, upstream: up } = await rawTunnel(front, upstream);
      const closeEvent = tunnelClose(proxy);
      up.send(CLOSE, closePayload(4100, 'upstream first'));
      const relayed = await client.frame(CLOSE);
      assert.equal(relayed.payload.readUInt16BE(0), 4100);
      const closing = proxy.close();
      const toUpstream = await up.frame(CLOSE);
      assert.equal(toUpstream.payload.readUInt16BE(0), 1001);
      client.sendMasked(CLOSE, closePayload(4100));
      await within(Promise.all([client.closed, up.closed, closing]), 2_000, 'the tunnel ended');
      assert.deepEqual(
        client.frames.map((f) => f.payload.readUInt16BE(0)),
        [4100],
        'one Close to the client: the upstream’s',
      );
      assert.deepEqual(
        up.frames.map((f) => f.payload.readUInt16BE(0)),
        [1001],
        "the client's reply was the proxy's",
      );
      const { event } = await closeEvent;
      assert.equal(event.reason, 'upstream');
      assert.deepEqual(event.code, { upstream: 4100, client: 4100, proxy: 1001 });
    },
  );
});

// ---------------------------------------------------------------------------------------------

describe('in headless Chromium', () => {
  const CHROMIUM = '/usr/bin/chromium';
  const present = existsSync(CHROMIUM);
  const skip =
    present || process.env.CI
      ? false
      : 'Chromium is not installed: run `apt-get install -y chromium` (CI installs it; with CI set its absence fails)';

  test('on proxy.close() the page’s CloseEvent has code 1001 and wasClean', {
    skip,
    timeout: 20_000,
  }, async () => {
    assert.ok(present, `CI is set but ${CHROMIUM} is missing: .ci/run installs it with apt-get`);
    const { chromium } = await import('playwright-core');
    const up = await startUpstream();
    const page = (req, res, next) => {
      if (req.url !== '/page') return next();
      res.setHeader('content-type', 'text/html');
      res.end('<!doctype html><title>tunnel</title><p>tunnel lifecycle</p>');
    };
    const logger = quietLogger();
    const proxy = createProxy({ target: up.url, logger });
    const front = await startFront('express5', proxy, { before: [page] });
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    after(() => browser.close());
    const tab = await (await browser.newContext()).newPage();
    await tab.goto(`${front.url}/page`);
    const greeting = await tab.evaluate(
      (url) =>
        new Promise((resolve, reject) => {
          const ws = new WebSocket(url);
          window.closeEvent = new Promise((done) =>
            ws.addEventListener('close', (e) =>
              done({ code: e.code, reason: e.reason, wasClean: e.wasClean }),
            ),
          );
          ws.addEventListener('message', (e) => resolve(e.data), { once: true });
          ws.addEventListener('error', () => reject(new Error('WebSocket error')));
        }),
      `${front.wsUrl}/chat`,
    );
    assert.equal(greeting, 'hello:/chat');
    const closeEvent = tunnelClose(proxy);
    await within(proxy.close(), 2_500, 'close()');
    const closed = await within(
      tab.evaluate(() => window.closeEvent),
      3_000,
      'the CloseEvent',
    );
    assert.equal(closed.code, 1001);
    assert.equal(closed.wasClean, true);
    assert.match(closed.reason, /shut/i);
    const { event } = await closeEvent;
    assert.equal(event.reason, 'shutdown');
    // The browser's own Close reply reached the proxy, even though the upstream closed first.
    assert.deepEqual(event.code, { client: 1001, upstream: 1001, proxy: 1001 });
  });
});
