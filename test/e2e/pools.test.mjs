// Upstream pools (DESIGN.md §4): spreading requests and tunnels over a list of upstreams
// (round-robin, least-connections, hash), passive health (maxFails / failTimeout and the probe),
// active health checks, the next upstream and its replay rules, ENOUPSTREAM, stats and events.
// Real upstreams on 127.0.0.1 are stopped and started again on the same port during the tests.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { once } from 'node:events';
import { execFile } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import express from 'express';
import { WebSocketServer } from 'ws';
import { Server as SocketIOServer } from 'socket.io';
import { io as ioClient } from 'socket.io-client';
import { createProxy } from 'viaduct';
import {
  closeAll,
  deadPort,
  listen,
  quietLogger,
  refusingUpstream,
  startFront,
} from '../helpers/servers.mjs';
import {
  handshake,
  openSocket,
  parseResponse,
  rawExchange,
  request,
  statusOf,
} from '../helpers/clients.mjs';
import { nextEvent, within } from '../helpers/waiting.mjs';

const BOUND = { timeout: 5_000 };
const LONG = { timeout: 10_000 };

// ---------------------------------------------------------------------------------------------
// Helpers local to this file.

const restartable = new Set();
const proxies = new Set();
const ioServers = new Set();
const ioSockets = new Set();
// Keep-alive towards the fronts: hundreds of sequential requests stay fast.
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

after(async () => {
  for (const socket of ioSockets) socket.disconnect();
  await Promise.all([...proxies].map((proxy) => proxy.close({ timeout: 200 })));
  for (const io of ioServers) io.close();
  await closeAll();
  await Promise.all([...restartable].map((upstream) => upstream.stop()));
  agent.destroy();
});

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/**
 * An upstream named `name` that can be stopped (listener closed, every socket destroyed) and
 * started again on the same port. It answers every HTTP request with its name as the body (after
 * `delayMs`, unless `handler` answers), a request for a path ending in `/health` with the status
 * in `upstream.health` (`'hang'`: never), and every WebSocket with `hello:<name>`, then echoes.
 * `hits` holds the HTTP requests but the health checks (in `healthHits`), `handshakes` the upgrades.
 */
async function startPoolUpstream(name, { delayMs = 0, handler } = {}) {
  const sockets = new Set();
  const wss = new WebSocketServer({ noServer: true });
  const upstream = {
    name,
    port: 0,
    url: '',
    health: 200,
    hits: [],
    healthHits: [],
    handshakes: [],
    wss,
    running: false,
    server: undefined,
    async start() {
      const server = http.createServer(async (req, res) => {
        if (req.url.endsWith('/health')) {
          upstream.healthHits.push({ url: req.url, headers: req.headers, at: Date.now() });
          req.resume();
          if (upstream.health !== 'hang') res.writeHead(upstream.health).end();
          return;
        }
        const body = await readBody(req);
        const hit = { method: req.method, url: req.url, headers: req.headers, body };
        upstream.hits.push(hit);
        if (handler && (await handler(req, res, hit)) !== false) return;
        if (delayMs) await delay(delayMs);
        res.writeHead(200, {
          'content-type': 'text/plain',
          'content-length': Buffer.byteLength(name),
        });
        res.end(name);
      });
      server.on('connection', (socket) => {
        sockets.add(socket);
        socket.once('close', () => sockets.delete(socket));
      });
      server.on('upgrade', (req, socket, head) => {
        upstream.handshakes.push({ url: req.url, headers: req.headers });
        wss.handleUpgrade(req, socket, head, (ws) => {
          ws.on('message', (data) => ws.send(`echo:${data}`));
          ws.send(`hello:${name}`);
        });
      });
      server.listen(upstream.port, '127.0.0.1');
      await once(server, 'listening');
      upstream.server = server;
      upstream.port = server.address().port;
      upstream.url = `http://127.0.0.1:${upstream.port}`;
      upstream.running = true;
    },
    async stop() {
      if (!upstream.running) return;
      upstream.running = false;
      const closed = new Promise((resolve) => upstream.server.close(resolve));
      for (const ws of wss.clients) ws.terminate();
      for (const socket of sockets) socket.destroy();
      await closed;
    },
  };
  restartable.add(upstream);
  await upstream.start();
  return upstream;
}

function startUpstreams(names, options) {
  return Promise.all(names.map((name) => startPoolUpstream(name, options)));
}

/**
 * Records the emissions of `event` (its first argument). `wait(predicate)` resolves with the first
 * recorded or later entry that matches, within `ms`.
 */
function recorder(emitter, event) {
  const entries = [];
  const waiters = [];
  emitter.on(event, (entry) => {
    entries.push(entry);
    for (const waiter of [...waiters]) {
      if (!waiter.predicate(entry)) continue;
      waiters.splice(waiters.indexOf(waiter), 1);
      waiter.resolve(entry);
    }
  });
  entries.wait = (predicate = () => true, ms = 2_000, what = event) => {
    const found = entries.find(predicate);
    if (found) return Promise.resolve(found);
    return within(new Promise((resolve) => waiters.push({ predicate, resolve })), ms, what);
  };
  return entries;
}

/** A proxy with a quiet logger, recorders of its events, and a front of `kind`. */
async function setup(options, { kind = 'node', before, attachTo } = {}) {
  const logger = quietLogger();
  const proxy = createProxy({ logger, ...options });
  proxies.add(proxy);
  // Attached before anything async: a health check's first verdict may come soon.
  const errors = recorder(proxy, 'error');
  const downs = recorder(proxy, 'upstreamDown');
  const ups = recorder(proxy, 'upstreamUp');
  const front = await startFront(kind, proxy, { before, attachTo });
  return { proxy, front, logger, errors, downs, ups };
}

function get(front, path = '/', options = {}) {
  return request(`${front.url}${path}`, { agent, ...options });
}

/** `count` sequential GETs; the names of the upstreams that answered them, in order. */
async function servedBy(front, count, { path = '/', headers } = {}) {
  const names = [];
  for (let i = 0; i < count; i++) {
    const res = await get(front, path, { headers });
    assert.equal(res.status, 200, `request ${i}: ${res.text}`);
    names.push(res.text);
  }
  return names;
}

function tally(names) {
  const counts = {};
  for (const name of names) counts[name] = (counts[name] ?? 0) + 1;
  return counts;
}

function longestRun(names) {
  let longest = 0;
  let run = 0;
  for (let i = 0; i < names.length; i++) {
    run = i > 0 && names[i] === names[i - 1] ? run + 1 : 1;
    longest = Math.max(longest, run);
  }
  return longest;
}

function upstreamStats(proxy, upstream, route = 'default') {
  return proxy.stats().routes[route].upstreams[upstream.url];
}

/** Resolves once `predicate()` holds (checked every few ms: counters have no event), within `ms`. */
function until(predicate, what, ms = 2_000) {
  return within(
    (async () => {
      while (!predicate()) await delay(5);
    })(),
    ms,
    what,
  );
}

function logged(logger, level, ...parts) {
  return logger.lines.some(
    ([lineLevel, message]) => lineLevel === level && parts.every((part) => message.includes(part)),
  );
}

/**
 * An upstream that reads each request whole (head and `Content-Length` or chunked body), then
 * writes `answer` (if any) and resets the connection. `requests` holds each request as received.
 */
async function resettingUpstream({ answer } = {}) {
  const requests = [];
  const server = net.createServer((socket) => {
    let received = Buffer.alloc(0);
    let done = false;
    socket.on('error', () => {});
    socket.on('data', (chunk) => {
      if (done) return;
      received = Buffer.concat([received, chunk]);
      const end = received.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = received.subarray(0, end).toString('latin1');
      const body = received.subarray(end + 4);
      const length = /\r\ncontent-length:\s*(\d+)/i.exec(head);
      const chunked = /\r\ntransfer-encoding:\s*chunked/i.test(head);
      const complete = chunked
        ? body.includes('0\r\n\r\n')
        : body.length >= Number(length?.[1] ?? 0);
      if (!complete) return;
      done = true;
      requests.push({ head, body });
      if (answer === undefined) return socket.resetAndDestroy();
      // The reset comes once the head had time to reach the proxy: the response has started.
      socket.write(answer, () => setTimeout(() => socket.resetAndDestroy(), 50));
    });
  });
  const port = await listen(server);
  return { url: `http://127.0.0.1:${port}`, port, requests };
}

/** An upstream that takes requests and upgrades and never answers. */
async function silentUpstream() {
  const requests = [];
  const server = http.createServer((req) => requests.push(req.url));
  server.on('upgrade', (req, socket) => {
    socket.on('error', () => {});
    requests.push(req.url);
  });
  const port = await listen(server);
  return { url: `http://127.0.0.1:${port}`, requests };
}

/** A masked (client) WebSocket text frame. */
function maskedText(text) {
  const data = Buffer.from(text);
  const key = randomBytes(4);
  const masked = data.map((byte, i) => byte ^ key[i & 3]);
  return Buffer.concat([Buffer.from([0x81, 0x80 | data.length]), key, masked]);
}

async function deadUrl() {
  return `http://127.0.0.1:${await deadPort()}`;
}

/** A client request whose outcome is either a whole response or the error that cut it. */
function outcome(url, options) {
  return request(url, options).then(
    (res) => ({ res }),
    (error) => ({ error }),
  );
}

// ---------------------------------------------------------------------------------------------

describe('round-robin: smooth weighted, as nginx', () => {
  test(
    '3 upstreams, 300 sequential requests: each gets 100 (± 10 %), in turn; stats count them',
    BOUND,
    async () => {
      const upstreams = await startUpstreams(['a', 'b', 'c']);
      const { proxy, front } = await setup({ target: upstreams.map((u) => u.url) });
      const names = await servedBy(front, 300);
      const counts = tally(names);
      for (const u of upstreams) {
        assert.ok(
          counts[u.name] >= 90 && counts[u.name] <= 110,
          `${u.name}: ${counts[u.name]} of 300`,
        );
        assert.equal(u.hits.length, counts[u.name]);
        assert.deepEqual(upstreamStats(proxy, u), {
          requests: counts[u.name],
          tunnels: 0,
          active: 0,
          fails: 0,
          down: false,
        });
      }
      assert.deepEqual(names.slice(0, 6), ['a', 'b', 'c', 'a', 'b', 'c'], 'in list order');
      assert.equal(longestRun(names), 1);
    },
  );

  test(
    'weights 1/2/3 ({ target, weight }): 300 requests split 1/6, 2/6, 3/6 (± 10 %)',
    BOUND,
    async () => {
      const [a, b, c] = await startUpstreams(['a', 'b', 'c']);
      const { front } = await setup({
        target: [a.url, { target: b.url, weight: 2 }, { target: c.url, weight: 3 }],
      });
      const counts = tally(await servedBy(front, 300));
      for (const [name, weight] of [
        ['a', 1],
        ['b', 2],
        ['c', 3],
      ]) {
        const expected = (300 * weight) / 6;
        assert.ok(
          Math.abs(counts[name] - expected) <= expected * 0.1,
          `${name} (weight ${weight}): ${counts[name]} of 300, expected ${expected}`,
        );
      }
    },
  );

  test(
    'weights 1/1/2 are spread smoothly: nginx’s c a b c, never more than two in a row',
    BOUND,
    async () => {
      const [a, b, c] = await startUpstreams(['a', 'b', 'c']);
      const { front } = await setup({
        target: [a.url, b.url, { target: c.url, weight: 2 }],
      });
      const names = await servedBy(front, 40);
      assert.deepEqual(names.slice(0, 8), ['c', 'a', 'b', 'c', 'c', 'a', 'b', 'c']);
      assert.ok(longestRun(names) <= 2, `longest run ${longestRun(names)} in ${names.join('')}`);
      // Every window of 4 has the weights' proportions.
      for (let i = 0; i + 4 <= names.length; i += 4)
        assert.deepEqual(tally(names.slice(i, i + 4)), { a: 1, b: 1, c: 2 }, `window at ${i}`);
    },
  );

  test('weights 5/1/1: nginx’s documented sequence a a b a c a a, repeated', BOUND, async () => {
    const [a, b, c] = await startUpstreams(['a', 'b', 'c']);
    const { front } = await setup({ target: [{ target: a.url, weight: 5 }, b.url, c.url] });
    assert.equal((await servedBy(front, 14)).join(''), 'aabacaa'.repeat(2));
  });
});

describe('least-connections: fewest requests and tunnels in flight per weight', () => {
  test(
    'a slow upstream (200 ms) next to two fast ones gets clearly fewer of 60 staggered requests than under round-robin',
    LONG,
    async () => {
      const fast1 = await startPoolUpstream('fast1');
      const slow = await startPoolUpstream('slow', { delayMs: 200 });
      const fast2 = await startPoolUpstream('fast2');
      const targets = [fast1.url, slow.url, fast2.url];
      /** 60 requests, one every 5 ms (in 3 waves of 20), none waiting for another. */
      async function stream(front) {
        const names = [];
        for (let wave = 0; wave < 3; wave++) {
          const pending = [];
          for (let i = 0; i < 20; i++) {
            pending.push(get(front, `/${wave}/${i}`).then((res) => res.text));
            await delay(5);
          }
          names.push(...(await Promise.all(pending)));
        }
        return tally(names);
      }
      const leastConnections = await setup({ target: targets, balance: 'least-connections' });
      const lc = await stream(leastConnections.front);
      const roundRobin = await setup({ target: targets });
      const rr = await stream(roundRobin.front);
      assert.equal(rr.slow, 20, `round-robin gives the slow one its third (${JSON.stringify(rr)})`);
      assert.ok(
        (lc.slow ?? 0) <= 10,
        `least-connections: slow got ${lc.slow} (${JSON.stringify(lc)})`,
      );
      assert.ok(lc.fast1 >= 20 && lc.fast2 >= 20, JSON.stringify(lc));
      assert.equal((lc.slow ?? 0) + lc.fast1 + lc.fast2, 60);
      const stats = leastConnections.proxy.stats().routes.default.upstreams;
      for (const url of targets) assert.equal(stats[url].active, 0);
    },
  );

  test(
    'ties go round-robin: sequential requests (nothing in flight) alternate',
    BOUND,
    async () => {
      const upstreams = await startUpstreams(['a', 'b', 'c']);
      const { front } = await setup({
        target: upstreams.map((u) => u.url),
        balance: 'least-connections',
      });
      assert.equal((await servedBy(front, 9)).join(''), 'abcabcabc');
    },
  );

  test(
    'an open tunnel counts as load: new requests and upgrades go to the other upstream until it closes',
    BOUND,
    async () => {
      const [a, b] = await startUpstreams(['a', 'b']);
      const { proxy, front } = await setup({
        target: [a.url, b.url],
        balance: 'least-connections',
      });
      const first = await openSocket(`${front.wsUrl}/ws`);
      assert.equal(first.greeting, 'hello:a');
      assert.deepEqual(
        { tunnels: upstreamStats(proxy, a).tunnels, active: upstreamStats(proxy, a).active },
        { tunnels: 1, active: 1 },
      );
      assert.deepEqual(await servedBy(front, 4), ['b', 'b', 'b', 'b'], 'a is busy with its tunnel');
      const second = await openSocket(`${front.wsUrl}/ws`);
      assert.equal(second.greeting, 'hello:b', 'the new upgrade goes to the upstream without one');
      assert.equal(upstreamStats(proxy, b).active, 1);
      // One tunnel each: a tie again, broken round-robin.
      assert.equal(new Set(await servedBy(front, 4)).size, 2);
      const closed = nextEvent(proxy, 'close');
      first.ws.close();
      await within(closed, 2_000, 'the first tunnel closed');
      assert.equal(upstreamStats(proxy, a).active, 0);
      assert.equal(upstreamStats(proxy, a).tunnels, 1, 'tunnels counts those opened');
      assert.deepEqual(await servedBy(front, 3), ['a', 'a', 'a'], 'now b carries the only tunnel');
      const closedToo = nextEvent(proxy, 'close');
      second.ws.close();
      await within(closedToo, 2_000, 'the second tunnel closed');
      assert.equal(upstreamStats(proxy, b).active, 0);
    },
  );

  test(
    'load is per weight: a weight-2 upstream takes two in flight for the other’s one',
    BOUND,
    async () => {
      const [a, b] = await startUpstreams(['a', 'b']);
      const { front } = await setup({
        target: [a.url, { target: b.url, weight: 2 }],
        balance: 'least-connections',
      });
      const tunnels = [];
      for (let i = 0; i < 3; i++) tunnels.push(await openSocket(`${front.wsUrl}/ws`));
      const greetings = tally(tunnels.map((t) => t.greeting));
      assert.deepEqual(greetings, { 'hello:a': 1, 'hello:b': 2 });
      for (const t of tunnels) t.ws.terminate();
    },
  );
});

describe('hash: a consistent hash of hashKey(req)', () => {
  const byHeader = (req) => req.headers['x-key'];

  test('the same key always reaches the same upstream; different keys spread', BOUND, async () => {
    const upstreams = await startUpstreams(['a', 'b', 'c']);
    const { front } = await setup({
      target: upstreams.map((u) => u.url),
      balance: 'hash',
      hashKey: byHeader,
    });
    const owner = {};
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 40; i++) {
        const key = `user-${i}`;
        const [name] = await servedBy(front, 1, { headers: { 'x-key': key } });
        owner[key] ??= name;
        assert.equal(name, owner[key], `${key} in round ${round}`);
      }
    }
    assert.equal(new Set(Object.values(owner)).size, 3, 'the 40 keys use all three upstreams');
  });

  test(
    'a 4th upstream takes about 1/4 of 1000 keys (10–40 %), and only moved keys move, all to it',
    LONG,
    async () => {
      const upstreams = await startUpstreams(['a', 'b', 'c', 'd']);
      const options = { balance: 'hash', hashKey: byHeader };
      const three = await setup({ ...options, target: upstreams.slice(0, 3).map((u) => u.url) });
      const four = await setup({ ...options, target: upstreams.map((u) => u.url) });
      const keys = Array.from({ length: 1000 }, (_, i) => `session-${i}`);
      async function owners(front) {
        const result = [];
        for (let i = 0; i < keys.length; i += 100) {
          const batch = keys
            .slice(i, i + 100)
            .map((key) => get(front, '/', { headers: { 'x-key': key } }).then((res) => res.text));
          result.push(...(await Promise.all(batch)));
        }
        return result;
      }
      const before = await owners(three.front);
      const afterAdding = await owners(four.front);
      let moved = 0;
      for (let i = 0; i < keys.length; i++) {
        if (before[i] === afterAdding[i]) continue;
        moved++;
        assert.equal(afterAdding[i], 'd', `${keys[i]} moved from ${before[i]} to a old upstream`);
      }
      assert.ok(moved >= 100 && moved <= 400, `${moved} of 1000 keys moved`);
      // The 3-upstream ring is stable too: asked again, a key has the same owner.
      keys.length = 200;
      assert.deepEqual(await owners(three.front), before.slice(0, 200));
    },
  );

  test('hashKey returning undefined: that request goes round-robin', BOUND, async () => {
    const upstreams = await startUpstreams(['a', 'b', 'c']);
    const { front } = await setup({
      target: upstreams.map((u) => u.url),
      balance: 'hash',
      hashKey: () => undefined,
    });
    assert.equal((await servedBy(front, 12)).join(''), 'abcabcabcabc');
  });

  test(
    'default key: the client address (every request from 127.0.0.1 → one upstream)',
    BOUND,
    async () => {
      const upstreams = await startUpstreams(['a', 'b', 'c']);
      const { front } = await setup({ target: upstreams.map((u) => u.url), balance: 'hash' });
      assert.equal(new Set(await servedBy(front, 30)).size, 1);
    },
  );

  test(
    'default key with trustProxy: the address trustProxy resolves (X-Forwarded-For), so clients spread',
    BOUND,
    async () => {
      const upstreams = await startUpstreams(['a', 'b', 'c']);
      const { front } = await setup({
        target: upstreams.map((u) => u.url),
        balance: 'hash',
        trustProxy: true,
      });
      const owner = {};
      for (let i = 0; i < 30; i++) {
        const address = `10.0.${i}.7`;
        const [name] = await servedBy(front, 1, { headers: { 'x-forwarded-for': address } });
        const [again] = await servedBy(front, 1, {
          headers: { 'x-forwarded-for': `${address}, 10.9.9.9` },
        });
        assert.equal(again, name, `${address} is the client in both`);
        owner[address] = name;
      }
      assert.ok(
        new Set(Object.values(owner)).size >= 2,
        JSON.stringify(tally(Object.values(owner))),
      );
    },
  );

  test(
    'a hashKey that throws is an EINTERNAL 500 from viaduct (as a throwing router is), never Express’s error page',
    BOUND,
    async () => {
      const [a, b] = await startUpstreams(['a', 'b']);
      const { front, errors } = await setup(
        {
          target: [a.url, b.url],
          balance: 'hash',
          hashKey: () => {
            throw new Error('hashKey failed');
          },
        },
        { kind: 'express5' },
      );
      const res = await get(front, '/x');
      assert.equal(res.status, 500);
      assert.equal(errors[0]?.code, 'EINTERNAL', `error events: ${errors.map((e) => e.code)}`);
      assert.match(res.text, /^500 Internal Server Error/);
      assert.doesNotMatch(res.text, /hashKey failed|at /, 'no stack trace to the client');
    },
  );

  test(
    'a hashKey that throws does not crash a node:http front (HTTP and upgrade, in a child process)',
    LONG,
    async () => {
      const script = `
      import http from 'node:http';
      import { createProxy, attach } from 'viaduct';
      const up = http.createServer((req, res) => res.end('up'));
      await new Promise((r) => up.listen(0, '127.0.0.1', r));
      const target = 'http://127.0.0.1:' + up.address().port;
      const proxy = createProxy({
        target: [target, target + '/other'],
        balance: 'hash',
        hashKey: () => { throw new Error('hashKey failed'); },
        logger: { debug() {}, info() {}, warn() {}, error() {} },
      });
      proxy.on('error', () => {});
      const front = http.createServer(proxy);
      attach(front, proxy);
      await new Promise((r) => front.listen(0, '127.0.0.1', r));
      const port = front.address().port;
      const status = await new Promise((resolve, reject) =>
        http.get({ port, host: '127.0.0.1', path: '/' }, (res) => { res.resume(); resolve(res.statusCode); }).on('error', reject));
      const upgrade = await new Promise((resolve, reject) => {
        const req = http.request({ port, host: '127.0.0.1', path: '/ws', headers: {
          connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13',
          'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==' } });
        req.on('response', (res) => { res.resume(); resolve(res.statusCode); });
        req.on('upgrade', () => resolve(101));
        req.on('error', reject);
        req.end();
      });
      console.log(JSON.stringify({ status, upgrade }));
      process.exit(0);
    `;
      const result = await new Promise((resolve) =>
        execFile(
          process.execPath,
          ['--input-type=module', '-e', script],
          { cwd: new URL('../..', import.meta.url), timeout: 5_000 },
          (error, stdout, stderr) => resolve({ code: error?.code ?? 0, stdout, stderr }),
        ),
      );
      assert.equal(
        result.code,
        0,
        `the front process died: ${result.stderr.split('\n', 8).join('\n')}`,
      );
      assert.deepEqual(JSON.parse(result.stdout), { status: 500, upgrade: 500 });
    },
  );
});

describe('sticky socket.io across three socket.io upstreams', () => {
  /** A socket.io server that acks `whoami` with its name; any other path answers its name. */
  async function socketIoUpstream(name) {
    const server = http.createServer((_req, res) => res.end(name));
    const io = new SocketIOServer(server);
    ioServers.add(io);
    io.on('connection', (socket) => socket.on('whoami', (ack) => ack(name)));
    // After socket.io's own listeners: they record, socket.io answers.
    const seen = [];
    server.on('request', (req) => seen.push(req.url));
    server.on('upgrade', (req) => seen.push(req.url));
    const port = await listen(server);
    return { name, io, seen, url: `http://127.0.0.1:${port}` };
  }

  /** Every engine.io session id (`sid=` in the query) was seen by one upstream only. */
  function assertOneUpstreamPerSession(upstreams) {
    const owners = new Map();
    let requests = 0;
    for (const u of upstreams) {
      for (const url of u.seen) {
        const sid = new URL(url, 'http://x').searchParams.get('sid');
        if (!sid) continue;
        requests++;
        const owner = owners.get(sid) ?? u.name;
        owners.set(sid, owner);
        assert.equal(owner, u.name, `session ${sid} reached ${owner} and ${u.name}`);
      }
    }
    assert.ok(requests > owners.size, `several requests per session (${requests})`);
    return owners;
  }

  const sidOf = (req) => /(?:^|;\s*)sid=([^;]+)/.exec(req.headers.cookie ?? '')?.[1];

  /** The front app sets a session cookie at GET /session (before the proxy). */
  function sessionRoute(req, res, next) {
    if (req.url !== '/session') return next();
    const sid = randomUUID();
    res.setHeader('set-cookie', `sid=${sid}; Path=/; HttpOnly`);
    res.end(sid);
  }

  function connect(url, options) {
    const socket = ioClient(url, {
      forceNew: true,
      reconnection: false,
      timeout: 3_000,
      ...options,
    });
    ioSockets.add(socket);
    const upgraded = new Promise((resolve) =>
      socket.io.engine.once('upgrade', (transport) => resolve(transport.name)),
    );
    const connected = new Promise((resolve, reject) => {
      socket.once('connect', () => resolve(socket));
      socket.once('connect_error', (error) =>
        reject(
          new Error(
            `connect_error: ${error.message} (${error.description?.message ?? error.description})`,
          ),
        ),
      );
    });
    return { socket, upgraded, connected };
  }

  test(
    "balance: 'hash' on a session cookie: polling, then the upgrade, all on one upstream per session",
    LONG,
    async () => {
      const upstreams = await Promise.all(['a', 'b', 'c'].map(socketIoUpstream));
      const { proxy, front } = await setup(
        { target: upstreams.map((u) => u.url), balance: 'hash', hashKey: sidOf },
        { kind: 'express5', before: [sessionRoute] },
      );
      const used = new Set();
      for (let session = 0; session < 4; session++) {
        const login = await get(front, '/session');
        const cookie = login.headers['set-cookie'][0].split(';')[0];
        assert.match(cookie, /^sid=/);
        const client = connect(front.url, { extraHeaders: { cookie } });
        await within(client.connected, 3_000, `session ${session}: connected over polling`);
        const name = await client.socket.timeout(2_000).emitWithAck('whoami');
        assert.equal(await within(client.upgraded, 3_000, 'the upgrade'), 'websocket');
        assert.equal(client.socket.io.engine.transport.name, 'websocket');
        assert.equal(await client.socket.timeout(2_000).emitWithAck('whoami'), name);
        used.add(name);
        client.socket.disconnect();
      }
      // Every socket.io request of a session reached its own upstream: none saw an unknown session.
      assertOneUpstreamPerSession(upstreams);
      const stats = proxy.stats();
      assert.equal(stats.requests.errors, 0);
      assert.equal(stats.tunnels.rejected, 0);
      assert.equal(stats.tunnels.total, 4);
      assert.ok(used.size >= 1);
    },
  );

  test(
    'the README recipe: the app sets req.sid (and its cookie) in front, hashKey: (req) => req.sid; the client keeps the cookie',
    LONG,
    async () => {
      const upstreams = await Promise.all(['a', 'b', 'c'].map(socketIoUpstream));
      const recipe = (req, res, next) => {
        req.sid = sidOf(req);
        if (!req.sid) {
          req.sid = randomUUID();
          res.cookie('sid', req.sid, { httpOnly: true, sameSite: 'lax' });
        }
        next();
      };
      const { proxy, front } = await setup(
        {
          routes: {
            '/socket.io': {
              target: upstreams.map((u) => u.url),
              balance: 'hash',
              hashKey: (req) => req.sid,
            },
          },
        },
        { kind: 'express5', before: [recipe] },
      );
      for (let session = 0; session < 4; session++) {
        // A browser keeps cookies; socket.io-client does in Node with withCredentials.
        const client = connect(front.url, { withCredentials: true });
        await within(client.connected, 3_000, `session ${session}: connected over polling`);
        const name = await client.socket.timeout(2_000).emitWithAck('whoami');
        assert.equal(await within(client.upgraded, 3_000, 'the upgrade'), 'websocket');
        assert.equal(await client.socket.timeout(2_000).emitWithAck('whoami'), name);
        client.socket.disconnect();
      }
      assertOneUpstreamPerSession(upstreams);
      const stats = proxy.stats().routes['/socket.io'];
      assert.equal(stats.requests.errors, 0);
      assert.equal(stats.tunnels.total, 4);
    },
  );

  test(
    'the control: round-robin without stickiness breaks polling with "Session ID unknown"',
    LONG,
    async () => {
      const upstreams = await Promise.all(['a', 'b', 'c'].map(socketIoUpstream));
      const { front } = await setup({ target: upstreams.map((u) => u.url) });
      const open = await get(front, '/socket.io/?EIO=4&transport=polling');
      assert.equal(open.status, 200);
      const { sid } = JSON.parse(open.text.slice(1));
      const next = await get(front, `/socket.io/?EIO=4&transport=polling&sid=${sid}`);
      assert.equal(next.status, 400, 'the next poll went to another upstream');
      assert.match(next.text, /Session ID unknown/);

      const client = connect(front.url);
      await assert.rejects(within(client.connected, 3_000, 'connect_error'), /connect_error/);
    },
  );
});

describe('passive health: maxFails, failTimeout and the probe', () => {
  test(
    'an upstream stopped mid-test costs no failed GET; it is marked down, probed after failTimeout, and back once restarted',
    LONG,
    async () => {
      const upstreams = await startUpstreams(['a', 'b', 'c']);
      const [, b] = upstreams;
      const { proxy, front, logger, downs, ups } = await setup({
        target: upstreams.map((u) => u.url),
        maxFails: 1,
        failTimeout: 300,
      });
      const statuses = [];
      const names = [];
      let running = true;
      const traffic = (async () => {
        while (running) {
          const res = await get(front, '/');
          statuses.push(res.status);
          names.push(res.text);
        }
      })();
      await until(() => names.includes('b'), 'b serves first');

      await b.stop();
      const down = await downs.wait((e) => e.upstream === b.url, 2_000, 'upstreamDown for b');
      const downAt = Date.now();
      assert.deepEqual(down, { route: 'default', upstream: b.url });
      const atDown = upstreamStats(proxy, b);
      assert.equal(atDown.down, true);
      assert.equal(atDown.fails, 1);
      assert.ok(logged(logger, 'warn', b.url, 'is down'), 'a warn line names it');
      assert.ok(logged(logger, 'info', b.url, 'failed', '; trying http://'));

      // Left out for failTimeout, then one request probes it (and fails: b is still stopped).
      await until(() => upstreamStats(proxy, b).fails > 1, 'the probe of b', 2_000);
      const probedAfter = Date.now() - downAt;
      assert.ok(probedAfter >= 250, `probed ${probedAfter} ms after it went down`);
      assert.equal(upstreamStats(proxy, b).fails, 2, 'one probe, not a burst');
      assert.equal(upstreamStats(proxy, b).down, true, 'a failed probe leaves it out again');
      assert.equal(ups.length, 0);

      const hitsBefore = b.hits.length;
      await b.start();
      const back = await ups.wait((e) => e.upstream === b.url, 2_000, 'upstreamUp for b');
      assert.deepEqual(back, { route: 'default', upstream: b.url });
      assert.equal(upstreamStats(proxy, b).down, false);
      assert.ok(logged(logger, 'info', b.url, 'is up again'));
      await until(() => b.hits.length >= hitsBefore + 5, 'b serves again');

      running = false;
      await traffic;
      assert.equal(downs.filter((e) => e.upstream === b.url).length, 1, 'one upstreamDown');
      assert.ok(statuses.length > 20, `${statuses.length} GETs`);
      assert.deepEqual(
        tally(statuses),
        { 200: statuses.length },
        'every GET succeeded through the others',
      );
    },
  );

  test(
    'maxFails: 2 — one failure leaves it in; the second within failTimeout leaves it out',
    BOUND,
    async () => {
      const reset = await resettingUpstream();
      const a = await startPoolUpstream('a');
      const { proxy, front, downs } = await setup({
        target: [reset.url, a.url],
        maxFails: 2,
        failTimeout: 2_000,
      });
      const stats = () => proxy.stats().routes.default.upstreams[reset.url];
      assert.deepEqual(await servedBy(front, 2), ['a', 'a'], 'the first went on to a');
      assert.equal(stats().fails, 1);
      assert.equal(stats().down, false);
      assert.equal(downs.length, 0);
      assert.deepEqual(await servedBy(front, 2), ['a', 'a']);
      assert.equal(stats().fails, 2);
      assert.equal(stats().down, true);
      await downs.wait((e) => e.upstream === reset.url);
      await servedBy(front, 4);
      assert.equal(reset.requests.length, 2, 'left out: no more tries');
    },
  );

  test('a pool of one is never left out for failures', BOUND, async () => {
    const dead = await deadUrl();
    const { proxy, front, downs, errors } = await setup({ target: [dead], maxFails: 1 });
    for (let i = 0; i < 3; i++) assert.equal((await get(front, '/')).status, 502);
    assert.deepEqual(
      errors.map((e) => e.code),
      ['EUPSTREAM', 'EUPSTREAM', 'EUPSTREAM'],
      'each request tried it',
    );
    const stats = proxy.stats().routes.default.upstreams[dead];
    assert.equal(stats.fails, 3);
    assert.equal(stats.down, false);
    assert.equal(downs.length, 0);
  });

  test('maxFails: 0 never leaves an upstream out', BOUND, async () => {
    const dead = await deadUrl();
    const a = await startPoolUpstream('a');
    const { proxy, front, downs } = await setup({ target: [dead, a.url], maxFails: 0 });
    await servedBy(front, 6);
    const stats = proxy.stats().routes.default.upstreams[dead];
    assert.equal(stats.down, false);
    assert.equal(stats.fails, 3, 'it keeps being tried in its turn');
    assert.equal(downs.length, 0);
  });
});

describe('stats and events', () => {
  test(
    'active goes back to 0 however a try ends: answered, retried, refused upgrade, client abort, tunnel closed',
    BOUND,
    async () => {
      const refuser = await refusingUpstream('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n');
      const slow = await startPoolUpstream('slow', { handler: () => {} });
      const dead = await deadUrl();
      const a = await startPoolUpstream('a');
      const { proxy, front } = await setup({
        routes: {
          '/refuse': [refuser.url, a.url],
          '/slow': [slow.url, a.url],
          '/dead': [dead, a.url],
        },
      });
      assert.equal((await get(front, '/dead')).status, 200);
      const refused = await openSocket(`${front.wsUrl}/refuse`);
      assert.equal(refused.refused?.status, 404, 'a refusal is passed on, not retried');
      const tunnel = await openSocket(`${front.wsUrl}/refuse`);
      assert.equal(tunnel.greeting, 'hello:a');
      // A client that goes away mid-request.
      const aborted = http.request(`${front.url}/slow`, { agent: false });
      aborted.on('error', () => {});
      aborted.end();
      await until(() => slow.hits.length === 1, 'the slow request arrived');
      assert.equal(proxy.stats().routes['/slow'].upstreams[slow.url].active, 1);
      aborted.destroy();
      const closed = nextEvent(proxy, 'close');
      tunnel.ws.close();
      await within(closed, 2_000, 'the tunnel closed');
      await until(() => proxy.stats().requests.active === 0, 'no request in flight');
      for (const [key, route] of Object.entries(proxy.stats().routes))
        for (const [url, counters] of Object.entries(route.upstreams))
          assert.equal(counters.active, 0, `${key} ${url}`);
      const refuserStats = proxy.stats().routes['/refuse'].upstreams[refuser.url];
      assert.equal(refuserStats.fails, 0, 'a refusal is not a failure');
      assert.equal(refuserStats.down, false);
    },
  );

  test(
    'an upstreamDown listener that throws is logged, and the request still succeeds',
    BOUND,
    async () => {
      const dead = await deadUrl();
      const a = await startPoolUpstream('a');
      const { proxy, front, logger } = await setup({ target: [dead, a.url] });
      proxy.on('upstreamDown', () => {
        throw new Error('listener failed');
      });
      const res = await get(front, '/');
      assert.equal(res.status, 200);
      assert.ok(logged(logger, 'error', 'upstreamDown', 'listener failed'));
    },
  );
});

describe('the next upstream: what is replayed', () => {
  /** A fresh pool [first, a] (first is tried first), a front of `kind` with `before` middleware. */
  async function pool(first, { kind = 'node', before, ...options } = {}) {
    const a = await startPoolUpstream('a');
    const setupResult = await setup({ target: [first.url, a.url], ...options }, { kind, before });
    return { a, ...setupResult };
  }

  test('GET reset before any response byte: retried on the next upstream, 200', BOUND, async () => {
    const reset = await resettingUpstream();
    const { a, front, logger, proxy } = await pool(reset);
    const res = await get(front, '/items?x=1');
    assert.equal(res.status, 200);
    assert.equal(res.text, 'a');
    assert.equal(reset.requests.length, 1);
    assert.equal(a.hits[0].url, '/items?x=1');
    assert.ok(logged(logger, 'info', reset.url, 'failed', '; trying http://'));
    const stats = proxy.stats();
    assert.deepEqual(stats.routes.default.upstreams[reset.url], {
      requests: 1,
      tunnels: 0,
      active: 0,
      fails: 1,
      down: true,
    });
    assert.deepEqual(upstreamStats(proxy, a), {
      requests: 1,
      tunnels: 0,
      active: 0,
      fails: 0,
      down: false,
    });
    assert.deepEqual(stats.requests, { total: 1, active: 0, errors: 0 }, 'one request, two tries');
  });

  test(
    'an upstream’s own 5xx answer is an answer: passed on, not retried, not a failure',
    BOUND,
    async () => {
      const failing = await startPoolUpstream('failing', {
        handler: (_req, res) => res.writeHead(503, { 'content-length': '4' }).end('busy'),
      });
      const { a, front, proxy, downs } = await pool(failing);
      const res = await get(front, '/');
      assert.equal(res.status, 503);
      assert.equal(res.text, 'busy');
      assert.equal(a.hits.length, 0);
      assert.equal(upstreamStats(proxy, failing).fails, 0);
      assert.equal(downs.length, 0);
    },
  );

  for (const method of ['HEAD', 'OPTIONS', 'DELETE', 'PUT']) {
    test(`${method} without a body, reset: idempotent, retried`, BOUND, async () => {
      const reset = await resettingUpstream();
      const { a, front } = await pool(reset);
      const res = await get(front, '/r', { method });
      assert.equal(res.status, 200);
      assert.equal(a.hits.length, 1);
      assert.equal(a.hits[0].method, method);
    });
  }

  for (const method of ['POST', 'PATCH']) {
    test(
      `${method} without a body, reset: not idempotent, not retried (502 EUPSTREAM)`,
      BOUND,
      async () => {
        const reset = await resettingUpstream();
        const { a, front, errors } = await pool(reset);
        const res = await get(front, '/r', { method });
        assert.equal(res.status, 502);
        assert.equal(errors[0].code, 'EUPSTREAM');
        assert.equal(a.hits.length, 0);
      },
    );
  }

  test(
    'POST with a body parsed by express.json(), reset: not retried, 502 EUPSTREAM',
    BOUND,
    async () => {
      const reset = await resettingUpstream();
      const { a, front, errors } = await pool(reset, {
        kind: 'express5',
        before: [express.json()],
      });
      const res = await get(front, '/orders', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ item: 1 }),
      });
      assert.equal(res.status, 502);
      assert.equal(errors[0].code, 'EUPSTREAM');
      assert.equal(reset.requests.length, 1);
      assert.equal(a.hits.length, 0, 'a POST is never sent twice');
    },
  );

  test(
    'PUT with a body parsed by express.json(), reset: retried with the same body',
    BOUND,
    async () => {
      const reset = await resettingUpstream();
      const { a, front } = await pool(reset, { kind: 'express5', before: [express.json()] });
      const body = JSON.stringify({ name: 'doc', tags: ['x', 'y'] });
      const res = await get(front, '/docs/1', {
        method: 'PUT',
        headers: { 'content-type': 'application/json' },
        body,
      });
      assert.equal(res.status, 200);
      assert.equal(res.text, 'a');
      assert.equal(a.hits[0].method, 'PUT');
      assert.equal(a.hits[0].body.toString(), body);
      assert.equal(a.hits[0].headers['content-length'], String(Buffer.byteLength(body)));
      assert.ok(reset.requests[0].body.toString().includes(body), 'the first try carried it too');
    },
  );

  test(
    'PUT with a streamed body (no parser), reset: not retried, 502 EUPSTREAM',
    BOUND,
    async () => {
      const reset = await resettingUpstream();
      const { a, front, errors } = await pool(reset);
      const res = await get(front, '/docs/1', {
        method: 'PUT',
        headers: { 'content-type': 'application/octet-stream' },
        body: randomBytes(4096),
      });
      assert.equal(res.status, 502);
      assert.equal(errors[0].code, 'EUPSTREAM');
      assert.equal(a.hits.length, 0);
    },
  );

  test(
    'POST with a streamed 512 KiB body, first upstream refuses the connection: retried, the body arrives whole',
    BOUND,
    async () => {
      const dead = { url: await deadUrl() };
      const { a, front, proxy } = await pool(dead);
      const body = randomBytes(512 * 1024);
      const res = await new Promise((resolve, reject) => {
        const req = http.request(`${front.url}/upload`, { method: 'POST', agent: false }, (res) => {
          res.resume();
          res.on('end', () => resolve(res));
        });
        req.on('error', reject);
        // Chunked, in pieces: the body is still arriving when the first try fails.
        let at = 0;
        const writeMore = () => {
          if (at >= body.length) return req.end();
          req.write(body.subarray(at, at + 64 * 1024));
          at += 64 * 1024;
          setImmediate(writeMore);
        };
        writeMore();
      });
      assert.equal(res.statusCode, 200);
      assert.equal(a.hits.length, 1);
      const sha = (b) => createHash('sha256').update(b).digest('hex');
      assert.equal(a.hits[0].body.length, body.length);
      assert.equal(sha(a.hits[0].body), sha(body));
      assert.equal(proxy.stats().routes.default.upstreams[dead.url].fails, 1);
    },
  );

  test('headers sent, then a reset: the client connection is cut, no retry', BOUND, async () => {
    const partial = await resettingUpstream({
      answer: 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\npartial',
    });
    const { a, front, errors } = await pool(partial);
    const { res, error } = await outcome(`${front.url}/big`);
    assert.ok(error, `the client saw the connection cut, not a response (${res?.status})`);
    assert.equal(a.hits.length, 0, 'no second upstream request');
    assert.equal(partial.requests.length, 1);
    await until(() => errors.length > 0, 'the error event');
    assert.match(errors[0].code, /^EUPSTREAM(ABORTED)?$/);
  });

  test('headers only (no body byte yet), then a reset: still cut, no retry', BOUND, async () => {
    const partial = await resettingUpstream({
      answer: 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n',
    });
    const { a, front } = await pool(partial);
    const { error } = await outcome(`${front.url}/big`);
    assert.ok(error);
    assert.equal(a.hits.length, 0);
  });

  test(
    'GET with no answer within timeouts.read: retried on the next upstream, which gets its own read timeout',
    BOUND,
    async () => {
      const silent = await silentUpstream();
      // Answers in 120 ms: well within the read timeout of 300 ms.
      const slowish = await startPoolUpstream('slowish', { delayMs: 120 });
      const { front, errors, logger } = await setup({
        target: [silent.url, slowish.url],
        timeouts: { read: 300 },
      });
      const startedAt = Date.now();
      const res = await get(front, '/report');
      assert.equal(
        res.status,
        200,
        `after ${Date.now() - startedAt} ms: ${res.text} (errors: ${errors.map((e) => `${e.code}: ${e.message}`)}; log: ${logger.lines
          .filter(([level]) => level !== 'debug')
          .map(([, m]) => m)
          .join(' | ')})`,
      );
      assert.equal(res.text, 'slowish');
      assert.equal(silent.requests.length, 1);
    },
  );

  test(
    'POST with no answer within timeouts.read: not retried, 504 EREADTIMEOUT',
    BOUND,
    async () => {
      const silent = await silentUpstream();
      const a = await startPoolUpstream('a');
      const { front, errors } = await setup({
        target: [silent.url, a.url],
        timeouts: { read: 200 },
      });
      const res = await get(front, '/report', { method: 'POST' });
      assert.equal(res.status, 504);
      assert.equal(errors[0].code, 'EREADTIMEOUT');
      assert.equal(a.hits.length, 0);
    },
  );
});

describe('healthCheck: GET path to every upstream, every interval', () => {
  test(
    'an upstream whose /health answers 500 is down at start and gets no traffic; a 200 brings it back; close() stops the checks',
    LONG,
    async () => {
      const [sick, a, b] = await startUpstreams(['sick', 'a', 'b']);
      sick.health = 500;
      const { proxy, front, downs, ups, logger } = await setup({
        target: [sick.url, a.url, b.url],
        healthCheck: { path: '/health', interval: 100, timeout: 1_000 },
      });
      const down = await downs.wait((e) => e.upstream === sick.url, 2_000, 'sick is marked down');
      assert.deepEqual(down, { route: 'default', upstream: sick.url });
      assert.equal(upstreamStats(proxy, sick).down, true);
      assert.ok(logged(logger, 'warn', sick.url, 'answered 500'));
      assert.equal(downs.length, 1, 'the healthy ones are not reported');
      for (const u of [a, b]) assert.ok(u.healthHits.length >= 1, `${u.name} was checked`);
      assert.equal(sick.healthHits[0].headers['user-agent'], 'viaduct-health-check');

      const names = await servedBy(front, 30);
      assert.deepEqual(tally(names), { a: 15, b: 15 });
      assert.equal(sick.hits.length, 0, 'no traffic to it');

      sick.health = 200;
      const up = await ups.wait((e) => e.upstream === sick.url, 2_000, 'sick is marked up');
      assert.deepEqual(up, { route: 'default', upstream: sick.url });
      assert.equal(upstreamStats(proxy, sick).down, false);
      assert.ok(logged(logger, 'info', sick.url, 'is up again'));
      assert.ok(sick.hits.length === 0);
      const later = tally(await servedBy(front, 30));
      assert.ok(later.sick >= 5, `back in the rotation: ${JSON.stringify(later)}`);

      // Checked every interval: two more checks come (the wait is the scenario).
      const checksBefore = sick.healthHits.length;
      await until(() => sick.healthHits.length >= checksBefore + 2, 'two more checks', 1_000);
      await proxy.close();
      const atClose = [sick, a, b].map((u) => u.healthHits.length);
      await delay(350); // the scenario: three intervals pass with the proxy closed
      assert.deepEqual(
        [sick, a, b].map((u) => u.healthHits.length),
        atClose,
        'no check after close() resolved',
      );
    },
  );

  test(
    'no answer within healthCheck.timeout marks it down; the check goes to the target’s own path',
    BOUND,
    async () => {
      const hanging = await startPoolUpstream('hanging');
      hanging.health = 'hang';
      const a = await startPoolUpstream('a');
      const { proxy, front, downs, logger } = await setup({
        target: [`${hanging.url}/base`, a.url],
        healthCheck: { path: '/health', interval: 1_000, timeout: 300 },
      });
      const startedAt = Date.now();
      await downs.wait((e) => e.upstream === `${hanging.url}/base`, 2_000, 'hanging is down');
      assert.ok(Date.now() - startedAt >= 250, 'not before the timeout');
      assert.equal(hanging.healthHits[0].url, '/base/health');
      assert.equal(a.healthHits[0].url, '/health');
      assert.ok(logged(logger, 'warn', 'not answered in 300 ms'));
      assert.deepEqual(await servedBy(front, 3), ['a', 'a', 'a']);
      assert.equal(proxy.stats().routes.default.upstreams[`${hanging.url}/base`].down, true);
    },
  );

  test(
    'a refused health check (nothing listening) marks it down; restarted, the next check brings it up',
    BOUND,
    async () => {
      const [gone, a] = await startUpstreams(['gone', 'a']);
      await gone.stop();
      const { front, downs, ups } = await setup({
        target: [gone.url, a.url],
        healthCheck: { path: '/health', interval: 100, timeout: 1_000 },
      });
      await downs.wait((e) => e.upstream === gone.url);
      assert.deepEqual(await servedBy(front, 2), ['a', 'a']);
      await gone.start();
      await ups.wait((e) => e.upstream === gone.url);
      assert.ok((await servedBy(front, 4)).includes('gone'));
    },
  );
});

describe('no upstream left: 502 ENOUPSTREAM on both paths', () => {
  test(
    'every upstream down (health checks): HTTP gets 502 ENOUPSTREAM (text and JSON), an upgrade a raw 502, then the socket closes',
    BOUND,
    async () => {
      const upstreams = await startUpstreams(['a', 'b']);
      for (const u of upstreams) u.health = 503;
      const { proxy, front, downs, errors } = await setup({
        target: upstreams.map((u) => u.url),
        healthCheck: { path: '/health', interval: 1_000, timeout: 1_000 },
      });
      await until(() => downs.length === 2, 'both down');

      const text = await get(front, '/x');
      assert.equal(text.status, 502);
      assert.equal(text.text, '502 Bad Gateway: No upstream server is available.\n');
      assert.doesNotMatch(text.text, /127\.0\.0\.1/);
      const json = await get(front, '/x', { headers: { accept: 'application/json' } });
      assert.equal(json.status, 502);
      assert.deepEqual(json.json(), {
        error: 'Bad Gateway',
        status: 502,
        message: 'No upstream server is available.',
      });

      const raw = await within(
        rawExchange(front.port, handshake('/ws')),
        2_000,
        'the raw answer and the close',
      );
      assert.equal(statusOf(raw), 502);
      assert.match(parseResponse(raw).body, /No upstream server is available/);

      assert.deepEqual(
        errors.map((e) => [e.code, e.status]),
        [
          ['ENOUPSTREAM', 502],
          ['ENOUPSTREAM', 502],
          ['ENOUPSTREAM', 502],
        ],
      );
      for (const u of upstreams) {
        assert.equal(u.hits.length, 0);
        assert.equal(u.handshakes.length, 0);
      }
      assert.equal(proxy.stats().tunnels.rejected, 1);
    },
  );

  test(
    'passively: two refusing upstreams are both tried and both marked down; with every one left out, the next request takes them all back and tries them again (as nginx does)',
    BOUND,
    async () => {
      const dead = [await deadUrl(), await deadUrl()];
      const { proxy, front, errors, downs } = await setup({ target: dead });
      const ups = [];
      proxy.on('upstreamUp', (event) => ups.push(event.upstream));
      assert.equal((await get(front, '/')).status, 502);
      assert.equal(errors[0].code, 'ENOUPSTREAM');
      assert.equal(downs.length, 2);
      assert.equal((await get(front, '/')).status, 502);
      assert.equal(errors[1].code, 'ENOUPSTREAM');
      assert.deepEqual(ups.sort(), [...dead].sort(), 'both taken back');
      const stats = proxy.stats().routes.default.upstreams;
      assert.deepEqual(
        dead.map((url) => stats[url].requests),
        [2, 2],
        'the second request tried both again',
      );
      assert.equal(downs.length, 4, 'and both failed again');
    },
  );

  test(
    'tries used up (retries: 1, three refusing upstreams): ENOUPSTREAM after two tries, on HTTP and on an upgrade',
    BOUND,
    async () => {
      const dead = [await deadUrl(), await deadUrl(), await deadUrl()];
      const { proxy, front, errors } = await setup({ target: dead, retries: 1, maxFails: 0 });
      const res = await get(front, '/');
      assert.equal(res.status, 502);
      assert.equal(errors[0].code, 'ENOUPSTREAM');
      const tried = () =>
        Object.values(proxy.stats().routes.default.upstreams).reduce((n, s) => n + s.requests, 0);
      assert.equal(tried(), 2, 'one try and one retry');

      const raw = await within(rawExchange(front.port, handshake('/ws')), 2_000, 'raw answer');
      assert.equal(statusOf(raw), 502);
      assert.equal(errors[1].code, 'ENOUPSTREAM');
      assert.equal(tried(), 4);
    },
  );

  test(
    'retries: 0 in a pool: the first failure is the answer (502 ENOUPSTREAM, nothing retried)',
    BOUND,
    async () => {
      const dead = await deadUrl();
      const a = await startPoolUpstream('a');
      const { front, errors } = await setup({ target: [dead, a.url], retries: 0 });
      const res = await get(front, '/');
      assert.equal(res.status, 502);
      assert.equal(errors[0].code, 'ENOUPSTREAM');
      assert.equal(a.hits.length, 0);
    },
  );

  test(
    'a pool of one keeps its own error: 502 EUPSTREAM (refused), also with retries set',
    BOUND,
    async () => {
      const dead = await deadUrl();
      const plain = await setup({ target: dead });
      assert.equal((await get(plain.front, '/')).status, 502);
      assert.equal(plain.errors[0].code, 'EUPSTREAM');
      const withRetries = await setup({ target: dead, retries: 2 });
      assert.equal((await get(withRetries.front, '/')).status, 502);
      assert.equal(
        withRetries.errors[0].code,
        'EUPSTREAM',
        'no "tries used up in a pool of 2+" for a single upstream',
      );
      const raw = await within(rawExchange(withRetries.front.port, handshake('/ws')), 2_000, 'raw');
      assert.equal(statusOf(raw), 502);
      assert.equal(withRetries.errors[1].code, 'EUPSTREAM', 'the upgrade too');
    },
  );
});

describe('WebSocket upgrades across a pool', () => {
  test(
    'round-robin spread of tunnels; stats count tunnels and active per upstream',
    BOUND,
    async () => {
      const upstreams = await startUpstreams(['a', 'b', 'c']);
      const { proxy, front } = await setup({ target: upstreams.map((u) => u.url) });
      const opened = recorder(proxy, 'open');
      const tunnels = [];
      for (let i = 0; i < 6; i++) tunnels.push(await openSocket(`${front.wsUrl}/room/${i}`));
      assert.deepEqual(
        opened.map((e) => [e.route, e.upstream]),
        [0, 1, 2, 0, 1, 2].map((i) => ['default', upstreams[i].url]),
        'the open event names the upstream',
      );
      assert.deepEqual(
        tunnels.map((t) => t.greeting),
        ['a', 'b', 'c', 'a', 'b', 'c'].map((name) => `hello:${name}`),
      );
      for (const u of upstreams) {
        assert.deepEqual(upstreamStats(proxy, u), {
          requests: 2,
          tunnels: 2,
          active: 2,
          fails: 0,
          down: false,
        });
        assert.equal(u.handshakes.length, 2);
      }
      const closed = recorder(proxy, 'close');
      for (const t of tunnels) t.ws.close();
      await until(() => closed.length === 6, 'the six tunnels closed');
      assert.deepEqual(
        tally(closed.map((e) => e.upstream)),
        Object.fromEntries(upstreams.map((u) => [u.url, 2])),
        'the close event names the upstream',
      );
      for (const u of upstreams) {
        assert.equal(upstreamStats(proxy, u).active, 0);
        assert.equal(upstreamStats(proxy, u).tunnels, 2);
      }
    },
  );

  test(
    'an upgrade whose first upstream refuses the connection goes to the next and tunnels',
    BOUND,
    async () => {
      const dead = await deadUrl();
      const a = await startPoolUpstream('a');
      const { proxy, front, downs } = await setup({ target: [dead, a.url] });
      const { ws, greeting } = await openSocket(`${front.wsUrl}/ws`);
      assert.equal(greeting, 'hello:a');
      ws.send('ping');
      const [reply] = await once(ws, 'message');
      assert.equal(String(reply), 'echo:ping');
      const stats = proxy.stats().routes.default.upstreams;
      assert.equal(stats[dead].fails, 1);
      assert.equal(stats[dead].down, true);
      assert.equal(stats[a.url].tunnels, 1);
      assert.equal(downs[0].upstream, dead);
      ws.terminate();
    },
  );

  test(
    'a frame sent with the handshake (in the same packet) reaches the second upstream when the first refused the connection',
    BOUND,
    async () => {
      const dead = await deadUrl();
      const a = await startPoolUpstream('a');
      const { front } = await setup({ target: [dead, a.url] });
      const client = net.connect(front.port, '127.0.0.1');
      client.on('error', () => {});
      const messages = [];
      let received = Buffer.alloc(0);
      const echoed = new Promise((resolve) => {
        client.on('data', (chunk) => {
          received = Buffer.concat([received, chunk]);
          const end = received.indexOf('\r\n\r\n');
          if (end < 0) return;
          // Server frames: unmasked, short here (a 7-bit length).
          let at = end + 4;
          messages.length = 0;
          while (at + 2 <= received.length && at + 2 + received[at + 1] <= received.length) {
            messages.push(received.subarray(at + 2, at + 2 + received[at + 1]).toString());
            at += 2 + received[at + 1];
          }
          if (messages.includes('echo:early')) resolve();
        });
      });
      client.write(Buffer.concat([Buffer.from(handshake('/ws')), maskedText('early')]));
      await within(
        echoed,
        2_000,
        `the early frame's echo (got ${JSON.stringify(received.toString('latin1'))})`,
      );
      assert.equal(statusOf(received.toString('latin1')), 101);
      assert.deepEqual(messages, ['hello:a', 'echo:early']);
      client.destroy();
    },
  );

  test(
    'an upgrade whose first upstream resets the handshake goes to the next (a GET without a body)',
    BOUND,
    async () => {
      const reset = await resettingUpstream();
      const a = await startPoolUpstream('a');
      const { front } = await setup({ target: [reset.url, a.url] });
      const { ws, greeting } = await openSocket(`${front.wsUrl}/ws`);
      assert.equal(greeting, 'hello:a');
      assert.match(reset.requests[0].head, /^GET \/ws HTTP\/1\.1/);
      ws.terminate();
    },
  );

  test(
    'an upgrade left without a 101 within timeouts.read goes to the next upstream',
    BOUND,
    async () => {
      const silent = await silentUpstream();
      const a = await startPoolUpstream('a');
      const { front } = await setup({ target: [silent.url, a.url], timeouts: { read: 200 } });
      const { ws, greeting } = await within(openSocket(`${front.wsUrl}/ws`), 2_000, 'the tunnel');
      assert.equal(greeting, 'hello:a');
      assert.equal(silent.requests.length, 1);
      ws.terminate();
    },
  );
});

describe('where pools come from', () => {
  test(
    'a router returning a list (a new array each time, the same value): one pool, spread round-robin',
    BOUND,
    async () => {
      const [a, b] = await startUpstreams(['a', 'b']);
      const { proxy, front } = await setup({ router: () => [a.url, b.url] });
      assert.equal((await servedBy(front, 6)).join(''), 'ababab');
      const stats = proxy.stats().routes.router.upstreams;
      assert.equal(stats[a.url].requests, 3);
      assert.equal(stats[b.url].requests, 3);
    },
  );

  test(
    'router results that differ in their options but send to one URL share its health: failures through each count together, one upstreamDown',
    BOUND,
    async () => {
      const dead = `http://127.0.0.1:${await deadPort()}`;
      const [live] = await startUpstreams(['live']);
      // Each pool's first pick is its first upstream: the dead one, then the request goes on to `live`.
      const pool = { target: [dead, live.url], maxFails: 2, failTimeout: 10_000 };
      const { proxy, front, downs } = await setup({
        router: (req) => (req.url.startsWith('/a') ? { ...pool } : { ...pool, changeOrigin: true }),
      });
      assert.equal((await get(front, '/a')).text, 'live');
      assert.equal(downs.length, 0);
      assert.equal((await get(front, '/b')).text, 'live');
      await downs.wait((e) => e.upstream === dead, 2_000, 'upstreamDown after the second failure');
      assert.deepEqual([...downs], [{ route: 'router', upstream: dead }]);
      const stats = proxy.stats().routes.router.upstreams[dead];
      assert.equal(stats.fails, 2);
      assert.equal(stats.down, true);
    },
  );

  test('a router returning a weighted list: the weights apply', BOUND, async () => {
    const [a, b] = await startUpstreams(['a', 'b']);
    const { front } = await setup({ router: () => [{ target: a.url, weight: 3 }, b.url] });
    assert.deepEqual(tally(await servedBy(front, 8)), { a: 6, b: 2 });
  });

  test(
    'an async router returning route options with a list (the same object each time): its balance applies',
    BOUND,
    async () => {
      const [a, b, c] = await startUpstreams(['a', 'b', 'c']);
      const route = { target: [a.url, b.url, c.url], balance: 'hash', hashKey: () => 'one key' };
      const { front } = await setup({ router: async () => route });
      assert.equal(new Set(await servedBy(front, 9)).size, 1);
    },
  );

  // Route options of plain data are compiled once per value, so a router may build them afresh.
  test(
    'a router returning new route options with a healthCheck on every call runs one checker, not one per request',
    BOUND,
    async () => {
      const a = await startPoolUpstream('a');
      const b = await startPoolUpstream('b');
      const { front } = await setup({
        router: () => ({
          target: [a.url, b.url],
          healthCheck: { path: '/health', interval: 100, timeout: 100 },
        }),
      });
      await servedBy(front, 20);
      const before = a.healthHits.length;
      await delay(500); // the scenario: five intervals
      const checks = a.healthHits.length - before;
      assert.ok(checks <= 7, `${checks} health checks of a in 500 ms at an interval of 100 ms`);
    },
  );

  test(
    'a per-route balance overrides the top level; a route without one inherits it',
    BOUND,
    async () => {
      const [a, b, c] = await startUpstreams(['a', 'b', 'c']);
      const targets = [a.url, b.url, c.url];
      const { front } = await setup({
        balance: 'hash',
        hashKey: () => 'always the same',
        routes: {
          '/rr': { target: targets, balance: 'round-robin' },
          '/h': targets,
        },
      });
      assert.equal((await servedBy(front, 6, { path: '/rr' })).join(''), 'abcabc');
      assert.equal(new Set(await servedBy(front, 6, { path: '/h' })).size, 1);
    },
  );

  test(
    'a top-level target list: createProxy([…]) and createProxy({ target: […] })',
    BOUND,
    async () => {
      const [a, b] = await startUpstreams(['a', 'b']);
      const bare = createProxy([a.url, b.url]);
      proxies.add(bare);
      const bareFront = await startFront('node', bare);
      assert.equal((await servedBy(bareFront, 4)).join(''), 'abab');
      const { proxy, front } = await setup({ target: [a.url, b.url] });
      assert.equal((await servedBy(front, 4)).join(''), 'abab');
      assert.deepEqual(Object.keys(proxy.stats().routes.default.upstreams), [a.url, b.url]);
    },
  );

  test(
    'upstreams with a path: each puts its own path in front of the forwarded path',
    BOUND,
    async () => {
      const [a, b] = await startUpstreams(['a', 'b']);
      const { proxy, front } = await setup({
        routes: { '/api': { target: [`${a.url}/v1`, `${b.url}/v2/`], stripPrefix: true } },
      });
      await servedBy(front, 2, { path: '/api/users?q=1' });
      assert.equal(a.hits[0].url, '/v1/users?q=1');
      assert.equal(b.hits[0].url, '/v2/users?q=1');
      assert.deepEqual(Object.keys(proxy.stats().routes['/api'].upstreams), [
        `${a.url}/v1`,
        `${b.url}/v2`,
      ]);
    },
  );
});

describe('option validation: TypeError at createProxy', () => {
  const url = 'http://127.0.0.1:4001';
  const other = 'http://127.0.0.1:4002';
  const invalid = {
    'weight 0': { target: [{ target: url, weight: 0 }, other] },
    'weight -1': { target: [{ target: url, weight: -1 }, other] },
    'weight 1.5': { target: [{ target: url, weight: 1.5 }, other] },
    "weight '2'": { target: [{ target: url, weight: '2' }, other] },
    'weight NaN': { target: [{ target: url, weight: Number.NaN }, other] },
    'weight 1001': { target: [{ target: url, weight: 1001 }, other] },
    'an unknown key next to target and weight': {
      target: [{ target: url, weight: 1, backup: true }, other],
    },
    'an entry that is not a target': { target: [url, 42] },
    'an entry with a bad URL': { target: [url, 'not a url'] },
    'a nested list': { target: [[url, other]] },
    'an entry whose target is a list': { target: [{ target: [url, other] }] },
    'weight on a single route target': { routes: { '/a': { target: url, weight: 2 } } },
    'an empty top-level list': { target: [] },
    'an empty route list': { routes: { '/a': [] } },
    'an empty list as route target': { routes: { '/a': { target: [] } } },
    'the same upstream twice': { target: [url, url] },
    'the same upstream twice, once weighted': { target: [url, { target: url, weight: 2 }] },
    'the same upstream twice, with a trailing slash': { target: [url, `${url}/`] },
    'the same upstream twice, spelt differently': {
      target: ['http://LOCALHOST:80', 'http://localhost'],
    },
    "balance 'random'": { target: [url, other], balance: 'random' },
    'balance 1': { target: [url, other], balance: 1 },
    "balance 'ROUND-ROBIN'": { target: [url, other], balance: 'ROUND-ROBIN' },
    'a route balance': { routes: { '/a': { target: [url, other], balance: 'ip-hash' } } },
    "hashKey 'ip'": { target: [url, other], balance: 'hash', hashKey: 'ip' },
    'hashKey null': { target: [url, other], hashKey: null },
    'maxFails -1': { target: [url, other], maxFails: -1 },
    'maxFails 1.5': { target: [url, other], maxFails: 1.5 },
    "maxFails '1'": { target: [url, other], maxFails: '1' },
    'failTimeout 0': { target: [url, other], failTimeout: 0 },
    'failTimeout -5': { target: [url, other], failTimeout: -5 },
    'failTimeout Infinity': { target: [url, other], failTimeout: Number.POSITIVE_INFINITY },
    "failTimeout '10s'": { target: [url, other], failTimeout: '10s' },
    'retries -1': { target: [url, other], retries: -1 },
    'retries 0.5': { target: [url, other], retries: 0.5 },
    "retries '2'": { target: [url, other], retries: '2' },
    "healthCheck '/health'": { target: [url, other], healthCheck: '/health' },
    'healthCheck null': { target: [url, other], healthCheck: null },
    'healthCheck without a path': { target: [url, other], healthCheck: { interval: 1_000 } },
    'healthCheck path without /': { target: [url, other], healthCheck: { path: 'health' } },
    'healthCheck interval 0': {
      target: [url, other],
      healthCheck: { path: '/health', interval: 0 },
    },
    'healthCheck timeout -1': {
      target: [url, other],
      healthCheck: { path: '/health', timeout: -1 },
    },
    'healthCheck with an unknown key': {
      target: [url, other],
      healthCheck: { path: '/health', expect: 200 },
    },
    'a route healthCheck': {
      routes: { '/a': { target: [url, other], healthCheck: { path: '/h', interval: 'often' } } },
    },
  };
  for (const [name, options] of Object.entries(invalid)) {
    test(`${name}: TypeError`, () => {
      assert.throws(() => createProxy({ logger: quietLogger(), ...options }), TypeError);
    });
  }

  test('the messages say where: the list index and what an upstream is', () => {
    assert.throws(
      () => createProxy({ target: [url, { target: other, weight: 0 }] }),
      /target\[1\]\.weight must be a whole number from 1 to 1000/,
    );
    assert.throws(
      () => createProxy({ target: [url, { target: other, backup: true }] }),
      /target\[1\]: unknown option "backup"/,
    );
    assert.throws(() => createProxy({ target: [url, url] }), /listed twice/);
    assert.throws(() => createProxy({ routes: { '/a': { target: [] } } }), /routes.*\/a.*target/);
  });

  test('valid edge values are accepted: maxFails 0, retries 0, weight 1000, the same host with different paths', async () => {
    const valid = [
      { target: [url, other], maxFails: 0, retries: 0 },
      { target: [{ target: url, weight: 1_000 }, { target: other }] },
      { target: [`${url}/a`, `${url}/b`] },
      { target: [url, other], balance: 'least-connections' },
      { target: [url, other], balance: 'hash', hashKey: (req) => req.headers.cookie },
      { target: [url, other], healthCheck: { path: '/health' } },
      { target: [url], failTimeout: 1 },
      { routes: { '/a': { target: [url, other], retries: 5, failTimeout: 50 } } },
    ];
    for (const options of valid) {
      const proxy = createProxy({ logger: quietLogger(), ...options });
      await proxy.close();
    }
  });
});
