// The soak front, in its own process:
// `node --expose-gc soak/front.mjs <httpUpstreamPort> <wsUpstreamPort> <poolPort>,… <failTimeout>`.
// Express 5 + viaduct: `/api` → the HTTP upstream, `/ws` → the WebSocket upstream, `/pool` → a pool
// of HTTP upstreams (`maxFails: 1`, `failTimeout` as given, the default `retries`: one less than the
// pool's size; a JSON body read by `express.json()` in front), all stripped; upgrades bound with
// `attach(server, app)`.
// Talks to the driver over the IPC channel only:
//   → { type: 'ready', port }                       once listening
//   → { type: 'fatal', error }                      an uncaught exception / unhandled rejection (then exit 70)
//   ← { type: 'probe', id, heap }  → { type: 'probe', id, … }   the state the driver checks
//   ← { type: 'close', id }        → { type: 'closed', id, ms } after proxy.close() and server.close()
//   ← { type: 'snapshot', id, file } → { type: 'snapshot', id, file } a heap snapshot after GC
import http from 'node:http';
import { getHeapCodeStatistics, getHeapSpaceStatistics, writeHeapSnapshot } from 'node:v8';
import express from 'express';
import { createProxy, attach } from 'viaduct';

const [httpPort, wsPort] = process.argv.slice(2, 4).map(Number);
const poolPorts = (process.argv[4] ?? '').split(',').filter(Boolean).map(Number);
/** How long the pool leaves out an upstream after a failure (short: the driver restarts them fast). */
const poolFailTimeout = Number(process.argv[5] ?? 500);
const started = Date.now();

function fatal(kind) {
  return (error) => {
    const text = `${kind}: ${error instanceof Error ? error.stack : String(error)}`;
    // Reported, never swallowed: the process ends with a non-zero code either way.
    process.exitCode = 70;
    if (process.connected) process.send({ type: 'fatal', error: text }, () => process.exit(70));
    else process.exit(70);
    setTimeout(() => process.exit(70), 1_000).unref();
  };
}
process.on('uncaughtException', fatal('uncaughtException'));
process.on('unhandledRejection', fatal('unhandledRejection'));

// A logger that counts lines by level, and keeps a bounded tally of what they said (numbers folded).
const logCounts = { debug: 0, info: 0, warn: 0, error: 0 };
/** The proxy's `info` lines "… failed (…); trying <next upstream>" (one per retry), by method and error code. */
let nextUpstreamLines = 0;
const nextUpstreamWhy = {};
const logKinds = new Map();
const MAX_KINDS = 40;
function logLine(level) {
  return (message) => {
    logCounts[level]++;
    if (level === 'debug') return;
    if (level === 'info' && /; trying http:\/\/\S+$/.test(String(message))) {
      nextUpstreamLines++;
      const text = String(message);
      const why = `${/^viaduct: ([A-Z]+) /.exec(text)?.[1]} ${/\((E[A-Z]+)\b/.exec(text)?.[1] ?? 'other'}`;
      nextUpstreamWhy[why] = (nextUpstreamWhy[why] ?? 0) + 1;
    }
    const kind = `${level}: ${String(message)
      .replace(/ for [A-Z]+ \S+/, ' for …')
      .replace(/\d+/g, 'N')
      .slice(0, 140)}`;
    if (logKinds.has(kind)) logKinds.set(kind, logKinds.get(kind) + 1);
    else if (logKinds.size < MAX_KINDS) logKinds.set(kind, 1);
  };
}
const logger = {
  debug: logLine('debug'),
  info: logLine('info'),
  warn: logLine('warn'),
  error: logLine('error'),
};

const proxy = createProxy({
  routes: {
    '/api': { target: `http://127.0.0.1:${httpPort}`, stripPrefix: true },
    '/ws': { target: `http://127.0.0.1:${wsPort}`, stripPrefix: true },
    ...(poolPorts.length > 0 && {
      '/pool': {
        target: poolPorts.map((port) => `http://127.0.0.1:${port}`),
        stripPrefix: true,
        maxFails: 1,
        failTimeout: poolFailTimeout,
      },
    }),
  },
  // The defaults' read timeout (60 s) is beyond the driver's settle bound: nothing is left to it.
  timeouts: { connect: 5_000, read: 60_000 },
  logger,
  accessLog: (entry) => entry.type === 'request' && entry.route === '/pool' && poolRequest(entry),
});

// The pooled route, as the access log and the pool's events tell it.
const pool = {
  requests: 0,
  /** Requests that went to a next upstream (`tries > 1`), and how many tries each took. */
  nextUpstream: 0,
  tries: {},
  statuses: {},
  /** The first requests answered other than 200, with the pool's view at that moment. */
  odd: [],
  upstreamDown: 0,
  upstreamUp: 0,
  /** Proxy error events on `/pool` requests, by code. */
  errorCodes: {},
  /** The first of the pool's events (`upstreamDown`/`upstreamUp`, answers other than 200), on the wall clock. */
  events: [],
};
const MAX_POOL_EVENTS = 400;
function poolEvent(what) {
  if (pool.events.length < MAX_POOL_EVENTS) pool.events.push({ at: Date.now(), what });
}
function poolView() {
  const upstreams = proxy.stats().routes['/pool']?.upstreams ?? {};
  return Object.entries(upstreams)
    .map(([url, u]) => `${url.replace(/^http:\/\/127\.0\.0\.1/, '')}${u.down ? ' down' : ''}`)
    .join(', ');
}
function poolRequest(entry) {
  pool.requests++;
  pool.tries[entry.tries] = (pool.tries[entry.tries] ?? 0) + 1;
  pool.statuses[entry.status] = (pool.statuses[entry.status] ?? 0) + 1;
  if (entry.tries > 1) pool.nextUpstream++;
  if (entry.status !== 200) poolEvent(`${entry.status} ${entry.method} tries ${entry.tries}`);
  if (entry.status !== 200 && pool.odd.length < 10) {
    const { method, path, status, tries, upstream, ms } = entry;
    pool.odd.push({
      at: Date.now() - started,
      method,
      path,
      status,
      tries,
      upstream,
      ms: Math.round(ms),
      pool: poolView(),
    });
  }
}
// What the proxy reported through its events.
const errorCodes = {};
const tunnelReasons = {};
let tunnelsOpened = 0;
proxy.on('error', (error, req) => {
  const code = error?.code ?? 'unknown';
  errorCodes[code] = (errorCodes[code] ?? 0) + 1;
  if ((req?.originalUrl ?? req?.url ?? '').startsWith('/pool'))
    pool.errorCodes[code] = (pool.errorCodes[code] ?? 0) + 1;
});
proxy.on('upstreamDown', ({ route, upstream }) => {
  if (route !== '/pool') return;
  pool.upstreamDown++;
  poolEvent(`upstreamDown ${upstream}`);
});
proxy.on('upstreamUp', ({ route, upstream }) => {
  if (route !== '/pool') return;
  pool.upstreamUp++;
  poolEvent(`upstreamUp ${upstream}`);
});
proxy.on('open', () => tunnelsOpened++);
/** Tunnels closed for a reason the soak never causes (idle: it has no silent tunnel; shutdown). */
const oddCloses = [];
proxy.on('close', (info) => {
  tunnelReasons[info.reason] = (tunnelReasons[info.reason] ?? 0) + 1;
  if (!['client', 'upstream', 'error', 'shutdown'].includes(info.reason) && oddCloses.length < 10) {
    const { reason, duration, bytesFromClient, bytesFromUpstream } = info;
    oddCloses.push({
      reason,
      duration,
      bytesFromClient,
      bytesFromUpstream,
      at: Date.now() - started,
    });
  }
});

const app = express();
// The pool's PUTs carry JSON: read here, so that the proxy re-sends the body in hand from `req.body`
// and may pass the request to the next upstream after a reset (a streamed body never is).
app.use('/pool', express.json({ limit: '64kb' }));
app.use(proxy);
const server = http.createServer(app);
attach(server, app);

function listenerCounts(emitter) {
  const counts = {};
  for (const name of emitter.eventNames()) counts[String(name)] = emitter.listenerCount(name);
  return counts;
}

function resourceCounts() {
  const counts = {};
  for (const name of process.getActiveResourcesInfo()) counts[name] = (counts[name] ?? 0) + 1;
  return counts;
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

/** Heap used after full collections (three, with turns of the event loop between for finalizers). */
async function heapAfterGc() {
  let least;
  for (let i = 0; i < 3; i++) {
    globalThis.gc();
    await tick();
    const heapUsed = process.memoryUsage().heapUsed;
    if (least === undefined || heapUsed < least.heapUsed) {
      const spaces = Object.fromEntries(
        getHeapSpaceStatistics().map((space) => [space.space_name, space.space_used_size]),
      );
      least = { heapUsed, spaces, code: getHeapCodeStatistics() };
    }
  }
  return least;
}

async function probe(message) {
  const connections = await new Promise((resolve) =>
    server.getConnections((error, count) => resolve(error ? -1 : count)),
  );
  return {
    type: 'probe',
    id: message.id,
    pid: process.pid,
    connections,
    resources: resourceCounts(),
    stats: proxy.stats(),
    listeners: { server: listenerCounts(server), proxy: listenerCounts(proxy) },
    heap: message.heap ? await heapAfterGc() : undefined,
    logs: { ...logCounts },
    logKinds: Object.fromEntries(logKinds),
    errorCodes: { ...errorCodes },
    tunnelReasons: { ...tunnelReasons },
    tunnelsOpened,
    oddCloses: [...oddCloses],
    pool: {
      ...pool,
      tries: { ...pool.tries },
      statuses: { ...pool.statuses },
      odd: [...pool.odd],
      events: [...pool.events],
      errorCodes: { ...pool.errorCodes },
      nextUpstreamLines,
      nextUpstreamWhy: { ...nextUpstreamWhy },
    },
  };
}

async function close(message) {
  const started = Date.now();
  await proxy.close({ timeout: 5_000 });
  server.closeAllConnections?.();
  await new Promise((resolve) => server.close(resolve));
  return { type: 'closed', id: message.id, ms: Date.now() - started };
}

/** For diagnosis (`run.mjs --snapshots DIR`): a heap snapshot after GC. */
async function snapshot(message) {
  await heapAfterGc();
  return { type: 'snapshot', id: message.id, file: writeHeapSnapshot(message.file) };
}

const HANDLERS = { probe, close, snapshot };

process.on('message', (message) => {
  const handler = HANDLERS[message?.type];
  if (!handler) return;
  handler(message).then(
    (reply) => process.connected && process.send(reply),
    (error) =>
      process.connected &&
      process.send({ type: 'failed', id: message.id, error: String(error?.stack ?? error) }),
  );
});
// The driver goes away: so does this process.
process.on('disconnect', () => process.exit(process.exitCode ?? 0));

server.listen(0, '127.0.0.1', () => process.send({ type: 'ready', port: server.address().port }));
