// Property-based tests (fast-check) on real servers: route matching (HTTP and upgrades), the
// forwarded path under stripPrefix / pathRewrite, and the header policy (hop-by-hop headers both
// ways, values with CR/LF/NUL). One upstream and one front serve every run; each run creates its
// own proxy, swaps it into the front, and closes it afterwards.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import fc from 'fast-check';
import { attach, createProxy } from 'viaduct';
import { closeAll, listen, quietLogger, startUpstream } from '../helpers/servers.mjs';
import { handshake, parseResponse, request } from '../helpers/clients.mjs';
import { within } from '../helpers/waiting.mjs';

const WAIT = 5_000; // bound on every exchange
/**
 * fast-check settings: `numRuns` (each run makes real requests), the assertion message in the
 * report, and a bound on the whole property, shrinking included (a failure found is still reported).
 */
const runs = (numRuns) => ({
  numRuns,
  includeErrorInReport: true,
  plugins: [fc.interruptAfterTimeLimit(60_000)],
});

// ---------------------------------------------------------------------------------------------
// Shared servers

/** The upstream; `responsePlan` (set by the response-header property) answers requests that name it. */
let up;
let responsePlan;
/** The front: a node:http server whose handler runs the proxy of the current run. */
let frontPort;
let frontServer;
let current;

/** What the front does when the proxy calls `next()`: a 418 the tests recognise (HTTP and upgrades). */
function frontNext(res) {
  res.statusCode = 418;
  res.setHeader('content-type', 'text/plain');
  res.end('next');
}

before(async () => {
  up = await startUpstream((req, res) => {
    const plan = responsePlan;
    if (!plan || req.headers['x-plan'] !== plan.id) return false;
    for (const [name, value] of plan.headers) res.setHeader(name, value);
    if (plan.connection.length > 0) res.setHeader('Connection', plan.connection);
    if (plan.chunked) {
      res.write(plan.body.slice(0, 3));
      res.end(plan.body.slice(3));
    } else {
      res.setHeader('content-length', Buffer.byteLength(plan.body));
      res.end(plan.body);
    }
    return true;
  });
  const front = (req, res) => {
    if (!current) return frontNext(res);
    current(req, res, () => frontNext(res));
  };
  frontServer = http.createServer(front);
  attach(frontServer, front);
  frontPort = await listen(frontServer);
});

after(closeAll);

/** Runs `body` with `options`' proxy serving the front, then closes it. */
async function withProxy(options, body) {
  const proxy = createProxy({ logger: quietLogger(), ...options });
  current = proxy;
  try {
    return await body(proxy);
  } finally {
    current = undefined;
    await within(proxy.close({ timeout: 1_000 }), WAIT, 'proxy.close()');
  }
}

let probes = 0;
const nextProbe = () => `p${++probes}`;

/** An HTTP GET to the front with `path` sent as is (never normalised) and these headers. */
function get(path, headers = {}) {
  return within(
    request(`http://127.0.0.1:${frontPort}`, { path, headers }),
    WAIT,
    `GET ${JSON.stringify(path)}`,
  );
}

/** A WebSocket handshake for `path` on a raw connection; resolves with the parsed response head. */
function upgrade(path, headers = {}) {
  const exchange = new Promise((resolve, reject) => {
    const socket = net.connect(frontPort, '127.0.0.1');
    let received = '';
    const finish = () => {
      socket.destroy();
      const end = received.indexOf('\r\n\r\n');
      if (end === -1)
        reject(
          new Error(
            `no response head for upgrade ${JSON.stringify(path)}: ${JSON.stringify(received)}`,
          ),
        );
      else resolve(parseResponse(received.slice(0, end + 4)));
    };
    socket.on('data', (chunk) => {
      received += chunk.toString('latin1');
      if (received.includes('\r\n\r\n')) finish();
    });
    socket.on('close', finish);
    socket.on('error', (error) => (error.code === 'ECONNRESET' ? finish() : reject(error)));
    socket.write(handshake(path, headers));
  });
  return within(exchange, WAIT, `upgrade ${JSON.stringify(path)}`);
}

/** The requests the upstream received carrying this probe (HTTP and upgrades). */
function arrivedAtUpstream(probe) {
  return [...up.seen, ...up.handshakes].filter((record) => record.headers['x-probe'] === probe);
}

// ---------------------------------------------------------------------------------------------
// 1. Route matching

const HOSTNAMES = ['localhost', 'LOCALHOST', 'LocalHost', 'other.test', 'Other.TEST'];
const KEY_PORTS = [undefined, '80', '8080'];
const PREFIX_SEGMENTS = ['a', 'b', 'ab'];

/** A table entry, described structurally; `key` is the string written into `routes`. */
const entryArb = fc
  .record({
    hostname: fc.option(fc.constantFrom(...HOSTNAMES), { nil: undefined }),
    port: fc.constantFrom(...KEY_PORTS),
    segments: fc.array(fc.constantFrom(...PREFIX_SEGMENTS), { maxLength: 3 }),
    trailingSlash: fc.boolean(),
  })
  .map(({ hostname, port, segments, trailingSlash }) => {
    const path =
      segments.length > 0
        ? `/${segments.join('/')}${trailingSlash ? '/' : ''}`
        : trailingSlash || !hostname
          ? '/'
          : '';
    const key = hostname ? `${hostname}${port ? `:${port}` : ''}${path}` : path;
    return {
      key,
      host: hostname?.toLowerCase(),
      port: hostname ? port : undefined,
      prefix: segments.length > 0 ? `/${segments.join('/')}` : '',
    };
  });

// Entries that normalise to the same (host, port, prefix) would make the choice ambiguous.
const tableArb = fc.uniqueArray(entryArb, {
  minLength: 1,
  maxLength: 7,
  selector: (entry) => `${entry.host ?? ''}|${entry.port ?? ''}|${entry.prefix}`,
});

const REQUEST_SEGMENTS = ['a', 'b', 'ab', 'abc', 'ba', 'c', ''];
const requestPathArb = fc
  .tuple(
    fc.array(fc.constantFrom(...REQUEST_SEGMENTS), { maxLength: 4 }),
    fc.option(fc.constantFrom('', 'q', 'x=/a/b', 'a/b?c', '/ab'), { nil: undefined }),
  )
  .map(([segments, query]) => `/${segments.join('/')}${query === undefined ? '' : `?${query}`}`);

const HOST_HEADERS = [
  'localhost',
  'LocalHost',
  'localhost:80',
  'localhost:8080',
  'LOCALHOST:9',
  'other.test',
  'OTHER.test:8080',
  'nomatch.test',
  '127.0.0.1',
];

/**
 * Requests for a table: random paths, and paths made from the table's own prefixes (exactly,
 * extended by a segment or a query, or running on past the boundary: `/a` → `/ax`); Host headers
 * random or made from the table's host keys (in another case, with or without a port).
 */
function routeRequestArb(table) {
  const prefixes = [...new Set(table.map((entry) => entry.prefix))];
  const derivedPath = fc
    .tuple(
      fc.constantFrom(...prefixes),
      fc.constantFrom('', '/', '/a', '/b/ab', 'x', 'b', '?q', '/?q', 'x?q', '?x=/a'),
    )
    .map(([prefix, rest]) =>
      `${prefix}${rest}`.startsWith('/') ? `${prefix}${rest}` : `/${prefix}${rest}`,
    );
  const hostnames = [...new Set(table.filter((entry) => entry.host).map((entry) => entry.host))];
  const hosts = [fc.constantFrom(...HOST_HEADERS)];
  if (hostnames.length > 0) {
    hosts.push(
      fc
        .tuple(
          fc.constantFrom(...hostnames),
          fc.constantFrom('', ':80', ':8080', ':9'),
          fc.boolean(),
        )
        .map(([hostname, port, upper]) => `${upper ? hostname.toUpperCase() : hostname}${port}`),
    );
  }
  return fc.record({
    path: fc.oneof({ weight: 1, arbitrary: requestPathArb }, { weight: 2, arbitrary: derivedPath }),
    host: fc.oneof(...hosts),
  });
}

/** A table, whether it has a `target` fallback, and requests for it. */
const routeCaseArb = (maxRequests) =>
  tableArb.chain((table) =>
    fc.record({
      table: fc.constant(table),
      hasFallback: fc.boolean(),
      requests: fc.array(routeRequestArb(table), { minLength: 1, maxLength: maxRequests }),
    }),
  );

/**
 * The reference model: which entry (its index), 'fallback' or 'next'. Most specific wins whatever
 * the key order: host+path, then host, then path; among paths the longest prefix (a key naming
 * the port wins a tie); a prefix matches only at a segment boundary; then the fallback.
 */
function expectedRoute(table, hasFallback, path, hostHeader) {
  const pathPart = path.split('?')[0];
  const under = (prefix) =>
    prefix === '' || pathPart === prefix || pathPart.startsWith(`${prefix}/`);
  const [hostname, port = '80'] = hostHeader.toLowerCase().split(':');
  const best = (candidates) =>
    candidates.reduce((a, b) =>
      b.prefix.length > a.prefix.length ||
      (b.prefix.length === a.prefix.length && b.port !== undefined && a.port === undefined)
        ? b
        : a,
    );
  const indexed = table.map((entry, index) => ({ ...entry, index }));
  const byHost = indexed.filter(
    (e) => e.host === hostname && (e.port === undefined || e.port === port) && under(e.prefix),
  );
  if (byHost.length > 0) return best(byHost).index;
  const byPath = indexed.filter((e) => e.host === undefined && under(e.prefix));
  if (byPath.length > 0) return best(byPath).index;
  return hasFallback ? 'fallback' : 'next';
}

/** Each route forwards to its own target path: `/r<index>`, the fallback to `/fb`. */
function routeOptions(table, hasFallback) {
  const routes = {};
  table.forEach((entry, index) => (routes[entry.key] = `${up.url}/r${index}`));
  return hasFallback ? { routes, target: `${up.url}/fb` } : { routes };
}

/** Which route an upstream URL came through. */
function routeOfUpstreamUrl(url) {
  const first = url.slice(1).split(/[/?]/)[0];
  return first === 'fb' ? 'fallback' : Number(first.slice(1));
}

const describeTable = (table) => table.map((entry) => entry.key);

describe('route matching (property)', () => {
  test('HTTP: the route chosen is the most specific one, at segment boundaries, whatever the key order', async () => {
    await fc.assert(
      fc.asyncProperty(routeCaseArb(6), async ({ table, hasFallback, requests }) => {
        await withProxy(routeOptions(table, hasFallback), async () => {
          const results = await Promise.all(requests.map(({ path, host }) => get(path, { host })));
          requests.forEach(({ path, host }, i) => {
            const expected = expectedRoute(table, hasFallback, path, host);
            const res = results[i];
            const where = `${path} (Host: ${host}) with keys ${JSON.stringify(describeTable(table))}, fallback: ${hasFallback}`;
            if (expected === 'next') {
              assert.equal(
                res.status,
                418,
                `${where}: expected next(), got ${res.status} ${res.text}`,
              );
              return;
            }
            assert.equal(res.status, 200, `${where}: ${res.text}`);
            const { url } = JSON.parse(res.text);
            assert.equal(routeOfUpstreamUrl(url), expected, `${where}: went to ${url}`);
            // The table path is not stripped: the whole request path follows the target's own path.
            const base = expected === 'fallback' ? '/fb' : `/r${expected}`;
            const [pathPart, ...query] = path.split('?');
            assert.equal(
              url,
              [`${base}${pathPart}`.replace(/\/+/g, '/'), ...query].join('?'),
              where,
            );
          });
        });
      }),
      runs(80),
    );
  });

  test('upgrades: the same table picks the same route as for HTTP', async () => {
    await fc.assert(
      fc.asyncProperty(routeCaseArb(3), async ({ table, hasFallback, requests }) => {
        await withProxy(routeOptions(table, hasFallback), async () => {
          for (const { path, host } of requests) {
            const expected = expectedRoute(table, hasFallback, path, host);
            const where = `upgrade ${path} (Host: ${host}) with keys ${JSON.stringify(describeTable(table))}, fallback: ${hasFallback}`;
            const handshakesBefore = up.handshakes.length;
            const head = await upgrade(path, { host });
            if (expected === 'next') {
              assert.equal(head.status, 418, `${where}: expected next()`);
              assert.equal(
                up.handshakes.length,
                handshakesBefore,
                `${where}: reached the upstream`,
              );
              continue;
            }
            assert.equal(head.status, 101, where);
            assert.equal(up.handshakes.length, handshakesBefore + 1, where);
            const { url } = up.handshakes.at(-1);
            assert.equal(routeOfUpstreamUrl(url), expected, `${where}: went to ${url}`);
            // And HTTP agrees.
            const res = await get(path, { host });
            assert.equal(res.status, 200, where);
            assert.equal(
              JSON.parse(res.text).url,
              url,
              `${where}: HTTP and the upgrade were forwarded differently`,
            );
          }
        });
      }),
      runs(30),
    );
  });
});

// ---------------------------------------------------------------------------------------------
// 2. The forwarded path

function decodeDotsAndSeparators(path) {
  return path.replace(
    /%(2e|2f|5c)/gi,
    (_, hex) => ({ '2e': '.', '2f': '/', '5c': '\\' })[hex.toLowerCase()],
  );
}

const pathPartOf = (url) => url.split('?')[0];

/** The contract's definition: a `.`/`..` segment (`%2e` decoded) or a backslash (also `%5c`). Must be refused. */
function hasDotSegment(url) {
  const path = pathPartOf(url);
  if (/\\|%5c/i.test(path)) return true;
  return path
    .replace(/%2e/gi, '.')
    .split('/')
    .some((segment) => segment === '.' || segment === '..');
}

/**
 * What must never reach an upstream (broader: an encoded `/` decoded too, and `..;param` that
 * some servers resolve like `..`).
 */
function reachesOutsideItsPath(url) {
  const path = decodeDotsAndSeparators(pathPartOf(url));
  return path.includes('\\') || path.split('/').some((segment) => /^\.\.?(;.*)?$/.test(segment));
}

/** A path the proxy may refuse or forward (percent-escapes, `;`): neither required. */
const isDebatable = (url) => /[%;]/.test(pathPartOf(url));
/** Characters that cannot go into a request line as they are. */
const hasUnsendableChars = (url) => /[^\x21-\x7e]/.test(url);

/** The path goes upstream byte for byte, except that repeated slashes in the path are merged (README, 'Forwarded path'). */
function asSent(path) {
  const [pathPart, ...query] = path.split('?');
  return [pathPart.replace(/\/+/g, '/'), ...query].join('?');
}

const QUERIES = ['', 'q', '../x', './', '%2e%2e/', 'a\\b', 'x=/..', '/a/../b'];
const pathArb = (segments) =>
  fc
    .tuple(
      fc.array(fc.constantFrom(...segments), { maxLength: 4 }),
      fc.option(fc.constantFrom(...QUERIES), { nil: undefined }),
    )
    .map(([parts, query]) => `/${parts.join('/')}${query === undefined ? '' : `?${query}`}`);
// Segments with dots that are not dot segments (`.a`, `...`) must be forwarded.
const CLEAN_SEGMENTS = ['a', 'b', 'ab', 'x', 'a.b', '.a', 'a.', '...', ''];
const DOTTY_SEGMENTS = [
  'a',
  'b',
  '.',
  '..',
  '%2e',
  '%2E%2e',
  '.%2e',
  'a%2fb',
  '%2f..',
  '..;x',
  'a;b',
  '\\',
  'a%5cb',
  '%5C',
  'a\\b',
  '',
];
const forwardPathArb = fc.oneof(
  { weight: 3, arbitrary: pathArb(CLEAN_SEGMENTS) },
  { weight: 2, arbitrary: pathArb(DOTTY_SEGMENTS) },
);

const REGEX_SOURCES = [
  '^/a',
  '^/ab?',
  '^/',
  '/b$',
  'a',
  'b',
  '^/a/b',
  '\\?.*$',
  '^/(a|b)/',
  '[ab]+',
  '^/x',
  '^(.*)$',
];
const REPLACEMENTS = [
  '',
  '/',
  '.',
  '..',
  '/..',
  '../',
  '/./',
  'x',
  '/x',
  'x/',
  '%2e',
  '%2E%2e/',
  '/%2e%2E',
  '\\',
  '%5c',
  '/a\\b',
  'a/../b',
  '$&',
  '$&/..',
  '/$1/',
  '?q=..',
  '//',
  ';',
  '/..;x/',
  '.$1',
];
const ruleObjectArb = fc
  .uniqueArray(fc.tuple(fc.constantFrom(...REGEX_SOURCES), fc.constantFrom(...REPLACEMENTS)), {
    minLength: 1,
    maxLength: 3,
    selector: ([source]) => source,
  })
  .map((rules) => ({ kind: 'rules', rules }));

// Scheme-like segments (`http:`) have a property of their own below.
const OUTPUT_PIECES = [
  '/',
  '.',
  '..',
  '%2e',
  '%2E',
  '\\',
  '%5c',
  '%2f',
  'a',
  'b',
  '?',
  ';',
  '#',
  ' ',
  '\t',
  '\r\n',
  '\0',
  'é',
  '€',
  '//',
  '"',
  '\x7f',
  '',
];
const noScheme = (text) => !/https?:/i.test(text);
const outputArb = fc.oneof(
  fc.string({ unit: fc.constantFrom(...OUTPUT_PIECES), maxLength: 6 }),
  fc.string({ unit: 'binary-ascii', maxLength: 6 }).filter(noScheme),
  fc.string({ maxLength: 6 }).filter(noScheme),
);
const ruleFunctionArb = fc.record({
  kind: fc.constant('function'),
  shape: fc.constantFrom('constant', 'prefix', 'suffix', 'undefined'),
  output: outputArb,
});

/** The `pathRewrite` option a generated rewrite stands for. */
function pathRewriteOption(rewrite) {
  if (rewrite === undefined) return undefined;
  if (rewrite.kind === 'rules') return Object.fromEntries(rewrite.rules);
  const { shape, output } = rewrite;
  if (shape === 'constant') return () => output;
  if (shape === 'prefix') return (path) => output + path;
  if (shape === 'suffix') return (path) => path + output;
  return () => undefined;
}

/** The rewrite as the contract describes it: the first rule whose RegExp matches, or the function. */
function rewritten(rewrite, path) {
  if (rewrite === undefined) return undefined;
  if (rewrite.kind === 'rules') {
    for (const [source, replacement] of rewrite.rules) {
      const pattern = new RegExp(source);
      if (pattern.test(path)) return path.replace(pattern, replacement);
    }
    return undefined;
  }
  return pathRewriteOption(rewrite)(path);
}

const pathConfigArb = fc.record({
  prefixSegments: fc.array(fc.constantFrom('a', 'b', 'ab'), { minLength: 1, maxLength: 2 }),
  trailingSlash: fc.boolean(),
  routeBase: fc.constantFrom('', '/', '/r', '/r/s/'),
  fallbackBase: fc.constantFrom('', '/f'),
  stripPrefix: fc.boolean(),
  rewrite: fc.option(fc.oneof(ruleObjectArb, ruleFunctionArb), { nil: undefined }),
});

/** A configuration and request paths for it: random, or the route's prefix followed by something. */
const pathCaseArb = (maxUrls) =>
  pathConfigArb.chain((config) => {
    const prefix = `/${config.prefixSegments.join('/')}`;
    const derived = fc
      .constantFrom('', '/', '?q', '?../x', '/x', 'x', '/x/', '/..', '/%2e', '/.a', '?', '//x')
      .map((rest) => prefix + rest);
    const url = fc.oneof(
      { weight: 2, arbitrary: forwardPathArb },
      { weight: 1, arbitrary: derived },
    );
    return fc.record({
      config: fc.constant(config),
      urls: fc.array(url, { minLength: 1, maxLength: maxUrls }),
    });
  });

function pathProxyOptions(config) {
  const prefix = `/${config.prefixSegments.join('/')}`;
  return {
    target: up.url + config.fallbackBase,
    stripPrefix: config.stripPrefix,
    pathRewrite: pathRewriteOption(config.rewrite),
    routes: { [prefix + (config.trailingSlash ? '/' : '')]: up.url + config.routeBase },
  };
}

/**
 * The outcome the contract allows for `url`: `statuses` the client may get and, if forwarded,
 * the exact path the upstream must receive.
 */
function expectedForwarding(config, url) {
  if (hasDotSegment(url))
    return { statuses: [400], why: 'dot segment or backslash in the request' };
  const prefix = `/${config.prefixSegments.join('/')}`;
  const pathPart = pathPartOf(url);
  const matched = pathPart === prefix || pathPart.startsWith(`${prefix}/`);
  const base = (matched ? config.routeBase : config.fallbackBase).replace(/\/$/, '');
  let path = url;
  if (config.stripPrefix && matched) {
    path = url.slice(prefix.length);
    if (!path.startsWith('/')) path = `/${path}`;
  }
  const output = rewritten(config.rewrite, path);
  if (output !== undefined) {
    path = String(output);
    if (!path.startsWith('/')) path = `/${path}`;
  }
  const statuses = new Set();
  let why;
  if (hasDotSegment(path)) {
    statuses.add(400);
    why = 'the rewrite made a dot segment or backslash';
  } else if (hasUnsendableChars(path)) {
    // Refused by us (400, 500) or by the upstream's parser (400): never seen by its application.
    statuses.add(400).add(500);
    why = 'the rewrite made characters a request line cannot carry';
  } else {
    statuses.add(200);
    if (isDebatable(path)) statuses.add(400);
  }
  if (isDebatable(url)) statuses.add(400);
  return { statuses: [...statuses], forwarded: asSent(base + path), why };
}

const describeConfig = (config) =>
  JSON.stringify(config, (_, v) => (v === undefined ? '(undefined)' : v));

/** Checks one exchange against the model; `received` is the URL the upstream got, if any. */
function checkForwarding(config, url, status, received, via) {
  const expected = expectedForwarding(config, url);
  const where = `${via} ${JSON.stringify(url)} with ${describeConfig(config)} (${expected.why ?? 'forwardable'})`;
  assert.ok(
    expected.statuses.includes(status),
    `${where}: status ${status}, expected one of ${expected.statuses}`,
  );
  if (status !== 200 && status !== 101) {
    assert.equal(
      received,
      undefined,
      `${where}: refused with ${status} yet the upstream received ${JSON.stringify(received)}`,
    );
    return;
  }
  assert.ok(received !== undefined, `${where}: ${status} but nothing reached the upstream`);
  assert.ok(
    received.startsWith('/'),
    `${where}: upstream path ${JSON.stringify(received)} lacks a leading /`,
  );
  assert.ok(
    !reachesOutsideItsPath(received),
    `${where}: upstream path ${JSON.stringify(received)} has a dot segment`,
  );
  assert.equal(received, expected.forwarded, `${where}: forwarded path`);
}

describe('forwarded path (property)', () => {
  test('HTTP: forwarded with a leading / and no dot segment, exactly as stripPrefix/pathRewrite say, or 400 and never forwarded', async () => {
    await fc.assert(
      fc.asyncProperty(pathCaseArb(4), async ({ config, urls }) => {
        await withProxy(pathProxyOptions(config), async () => {
          const probes = urls.map(() => nextProbe());
          const results = await Promise.all(
            urls.map((url, i) => get(url, { 'x-probe': probes[i] })),
          );
          urls.forEach((url, i) => {
            const arrived = arrivedAtUpstream(probes[i]);
            assert.ok(arrived.length <= 1);
            checkForwarding(config, url, results[i].status, arrived[0]?.url, 'GET');
          });
        });
      }),
      runs(100),
    );
  });

  test('upgrades: the same forwarded path as HTTP, or the same refusal', async () => {
    await fc.assert(
      fc.asyncProperty(pathCaseArb(2), async ({ config, urls }) => {
        await withProxy(pathProxyOptions(config), async () => {
          for (const url of urls) {
            const probe = nextProbe();
            const head = await upgrade(url, { 'x-probe': probe });
            const arrived = up.handshakes.filter((h) => h.headers['x-probe'] === probe);
            assert.ok(arrived.length <= 1);
            checkForwarding(
              config,
              url,
              head.status === 101 ? 200 : head.status,
              arrived[0]?.url,
              'upgrade',
            );
            const httpProbe = nextProbe();
            const res = await get(url, { 'x-probe': httpProbe });
            assert.equal(
              res.status === 200 ? 101 : res.status,
              head.status,
              `upgrade and HTTP answered ${JSON.stringify(url)} differently`,
            );
            assert.equal(
              arrivedAtUpstream(httpProbe)[0]?.url,
              arrived[0]?.url,
              `upgrade and HTTP forwarded ${JSON.stringify(url)} differently`,
            );
          }
        });
      }),
      runs(40),
    );
  });

  test('a segment that looks like a scheme (`http:`) is forwarded as it is, like any other', async () => {
    const segmentArb = fc.constantFrom('a', 'b', 'http:', 'https:', 'ws:', 'x:y', '');
    const urlArb = fc
      .tuple(
        fc.array(segmentArb, { minLength: 1, maxLength: 4 }),
        fc.option(fc.constantFrom('q', 'u=http:/a'), { nil: undefined }),
      )
      .map(
        ([segments, query]) => `/${segments.join('/')}${query === undefined ? '' : `?${query}`}`,
      );
    const configArb = fc.record({
      prefixSegments: fc.constant(['a']),
      trailingSlash: fc.constant(false),
      routeBase: fc.constantFrom('', '/r'),
      fallbackBase: fc.constantFrom('', '/f'),
      stripPrefix: fc.boolean(),
      rewrite: fc.option(
        fc.record({ kind: fc.constant('rules'), rules: fc.constant([['^/b/', '/http:/b/']]) }),
        { nil: undefined },
      ),
    });
    await fc.assert(
      fc.asyncProperty(
        configArb,
        fc.array(urlArb, { minLength: 1, maxLength: 3 }),
        async (config, urls) => {
          await withProxy(pathProxyOptions(config), async () => {
            const probes = urls.map(() => nextProbe());
            const results = await Promise.all(
              urls.map((url, i) => get(url, { 'x-probe': probes[i] })),
            );
            urls.forEach((url, i) =>
              checkForwarding(
                config,
                url,
                results[i].status,
                arrivedAtUpstream(probes[i])[0]?.url,
                'GET',
              ),
            );
          });
        },
      ),
      runs(40),
    );
  });
});

// ---------------------------------------------------------------------------------------------
// 3. Header policy

const HOP_BY_HOP = [
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'upgrade',
  'proxy-authorization',
  'proxy-authenticate',
];
const END_TO_END = ['x-a', 'x-b', 'x-c', 'x-d', 'x-e', 'cache-control', 'etag', 'accept-language'];

const tokenValueArb = fc.stringMatching(/^[A-Za-z0-9=;./ -]{1,12}$/).map((v) => v.trim() || 'v');

/**
 * Extra end-to-end headers, the names a `Connection` header lists (some of them, others not
 * present, in any case, with `keep-alive`/`close` options mixed in, over one or two lines), and
 * hop-by-hop headers.
 */
const headerSetArb = (hopNames) =>
  fc
    .record({
      extras: fc.uniqueArray(fc.tuple(fc.constantFrom(...END_TO_END), tokenValueArb), {
        maxLength: 5,
        selector: ([name]) => name,
      }),
      listedIndexes: fc.uniqueArray(fc.nat({ max: 5 }), { maxLength: 4 }),
      absentListed: fc.boolean(),
      options: fc.subarray(['keep-alive', 'close']),
      hop:
        hopNames.length === 0
          ? fc.constant([])
          : fc.uniqueArray(fc.tuple(fc.constantFrom(...hopNames), tokenValueArb), {
              maxLength: hopNames.length,
              selector: ([name]) => name,
            }),
      splitAt: fc.nat({ max: 6 }),
      cases: fc.array(fc.nat({ max: 2 }), { minLength: 8, maxLength: 8 }),
    })
    .map(({ extras, listedIndexes, absentListed, options, hop, splitAt, cases }) => {
      const listed = listedIndexes.filter((i) => i < extras.length).map((i) => extras[i][0]);
      if (absentListed) listed.push('x-not-sent');
      const tokens = [...listed, ...options].map((token, i) => {
        const variants = [
          token,
          token.toUpperCase(),
          token.replace(/(^|-)(\w)/g, (m) => m.toUpperCase()),
        ];
        return variants[cases[i % cases.length]];
      });
      const cut = Math.min(splitAt, tokens.length);
      const connection = [tokens.slice(0, cut), tokens.slice(cut)]
        .filter((part) => part.length > 0)
        .map((part) => part.join(cut % 2 ? ',' : ' , '));
      return { extras, listed, connection, hop };
    });

/** Reads one whole response (Content-Length or chunked, else until close) from a raw connection. */
function rawHttp(bytes) {
  const exchange = new Promise((resolve, reject) => {
    const socket = net.connect(frontPort, '127.0.0.1');
    let received = Buffer.alloc(0);
    let settled = false;
    const settle = (closed) => {
      if (settled) return;
      const response = completeResponse(received.toString('latin1'), closed);
      if (!response) return;
      settled = true;
      socket.destroy();
      resolve(response);
    };
    socket.on('data', (chunk) => {
      received = Buffer.concat([received, chunk]);
      settle(false);
    });
    socket.on('close', () => {
      settle(true);
      if (!settled)
        reject(new Error(`incomplete response: ${JSON.stringify(received.toString('latin1'))}`));
    });
    socket.on('error', () => {});
    socket.write(bytes);
  });
  return within(exchange, WAIT, 'raw exchange');
}

function completeResponse(raw, closed) {
  const end = raw.indexOf('\r\n\r\n');
  if (end === -1) return undefined;
  const response = parseResponse(raw);
  const length = response.headers['content-length'];
  if (length !== undefined)
    return response.body.length >= Number(length)
      ? { ...response, body: response.body.slice(0, Number(length)) }
      : undefined;
  if (/chunked/i.test(response.headers['transfer-encoding'] ?? '')) {
    let body = '';
    let at = 0;
    for (;;) {
      const lineEnd = response.body.indexOf('\r\n', at);
      if (lineEnd === -1) return undefined;
      const size = parseInt(response.body.slice(at, lineEnd), 16);
      if (size === 0)
        return response.body.indexOf('\r\n', lineEnd + 2) === -1
          ? undefined
          : { ...response, body };
      if (response.body.length < lineEnd + 2 + size + 2) return undefined;
      body += response.body.slice(lineEnd + 2, lineEnd + 2 + size);
      at = lineEnd + 2 + size + 2;
    }
  }
  return closed ? response : undefined;
}

function rawHead(method, path, lines, version = '1.1') {
  return `${method} ${path} HTTP/${version}\r\n${lines.map(([name, value]) => `${name}: ${value}\r\n`).join('')}\r\n`;
}

/** What the front's own hop may write: Node's keep-alive hint. */
const frontKeepAlive = () => `timeout=${Math.floor(frontServer.keepAliveTimeout / 1000)}`;

describe('header policy (property)', () => {
  test('requests: hop-by-hop headers and those named in Connection never reach the upstream; the rest arrives', async () => {
    await fc.assert(
      fc.asyncProperty(
        headerSetArb(HOP_BY_HOP),
        fc.option(fc.stringMatching(/^[a-z]{1,20}$/), { nil: undefined }),
        async (set, body) => {
          await withProxy({ target: up.url }, async () => {
            const probe = nextProbe();
            const lines = [
              ['Host', `127.0.0.1:${frontPort}`],
              ['X-Probe', probe],
              ...set.extras,
              ...set.hop,
            ];
            for (const line of set.connection) lines.push(['Connection', line]);
            let bytes;
            if (body === undefined) bytes = rawHead('GET', '/hop', lines);
            else
              bytes = `${rawHead('POST', '/hop', [...lines, ['Transfer-Encoding', 'chunked']])}${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`;
            const res = await rawHttp(bytes);
            const where = `request headers ${JSON.stringify(lines)}${body === undefined ? '' : ' with a chunked body'}`;
            assert.equal(res.status, 200, where);
            const arrived = arrivedAtUpstream(probe);
            assert.equal(arrived.length, 1, where);
            const seen = arrived[0].headers;
            for (const name of HOP_BY_HOP)
              assert.equal(seen[name], undefined, `${where}: ${name} reached the upstream`);
            for (const name of set.listed)
              assert.equal(
                seen[name],
                undefined,
                `${where}: ${name} is listed in Connection yet reached the upstream`,
              );
            // The proxy's own hop: its keep-alive connection, and chunked framing for a body of unknown length.
            assert.match(
              seen.connection ?? 'keep-alive',
              /^(keep-alive|close)$/i,
              `${where}: Connection upstream`,
            );
            assert.equal(
              seen['transfer-encoding'],
              body === undefined ? undefined : 'chunked',
              `${where}: Transfer-Encoding upstream`,
            );
            for (const [name, value] of set.extras) {
              if (!set.listed.includes(name))
                assert.equal(seen[name], value, `${where}: end-to-end ${name} lost`);
            }
            assert.equal(arrived[0].body.toString('latin1'), body ?? '', `${where}: body`);
          });
        },
      ),
      runs(60),
    );
  });

  test('responses: hop-by-hop headers and those named in Connection never reach the client; the rest arrives', async () => {
    const hopNames = HOP_BY_HOP.filter((name) => name !== 'trailer');
    try {
      await fc.assert(
        fc.asyncProperty(
          headerSetArb(hopNames),
          fc.boolean(),
          fc.boolean(),
          fc.constantFrom('1.1', '1.0'),
          fc.constantFrom('keep-alive', 'close', undefined),
          async (set, chunked, trailer, version, clientConnection) => {
            await withProxy({ target: up.url }, async () => {
              const id = nextProbe();
              const headers = [...set.extras, ...set.hop];
              // Node refuses a Trailer header on a response it does not chunk.
              if (chunked && trailer) headers.push(['Trailer', 'x-checksum']);
              responsePlan = {
                id,
                headers,
                connection: set.connection,
                chunked,
                body: `payload ${id}`,
              };
              const lines = [
                ['Host', `127.0.0.1:${frontPort}`],
                ['X-Plan', id],
              ];
              if (clientConnection) lines.push(['Connection', clientConnection]);
              const res = await rawHttp(rawHead('GET', '/res', lines, version));
              const where = `response headers ${JSON.stringify(headers)}, Connection ${JSON.stringify(set.connection)}, chunked: ${chunked}, to an HTTP/${version} client`;
              assert.equal(res.status, 200, where);
              assert.equal(res.body, `payload ${id}`, `${where}: body`);
              const seen = res.headers;
              for (const name of HOP_BY_HOP) {
                if (name === 'keep-alive' && seen[name] === frontKeepAlive()) continue; // the front's own hint
                assert.equal(seen[name], undefined, `${where}: ${name} reached the client`);
              }
              for (const name of set.listed)
                assert.equal(
                  seen[name],
                  undefined,
                  `${where}: ${name} is listed in Connection yet reached the client`,
                );
              assert.match(
                seen.connection ?? 'keep-alive',
                /^(keep-alive|close)$/i,
                `${where}: Connection to the client`,
              );
              // The front frames a body of unknown length itself (chunked for HTTP/1.1, until close for 1.0).
              assert.equal(
                seen['transfer-encoding'],
                chunked && version === '1.1' ? 'chunked' : undefined,
                `${where}: Transfer-Encoding to the client`,
              );
              for (const [name, value] of set.extras) {
                if (!set.listed.includes(name))
                  assert.equal(seen[name], value, `${where}: end-to-end ${name} lost`);
              }
            });
          },
        ),
        runs(60),
      );
    } finally {
      responsePlan = undefined;
    }
  });

  test("responses: the Connection header the client gets is the proxy's own, never an echo of the client's", async () => {
    try {
      await fc.assert(
        fc.asyncProperty(headerSetArb([]), fc.constantFrom('1.1', '1.0'), async (set, version) => {
          await withProxy({ target: up.url }, async () => {
            const id = nextProbe();
            // The upstream sends end-to-end headers named like those the client's Connection lists.
            responsePlan = {
              id,
              headers: END_TO_END.map((name) => [name, `from-upstream-${name}`]),
              connection: [],
              chunked: false,
              body: `payload ${id}`,
            };
            const lines = [
              ['Host', `127.0.0.1:${frontPort}`],
              ['X-Plan', id],
              ...set.connection.map((line) => ['Connection', line]),
            ];
            const res = await rawHttp(rawHead('GET', '/echo', lines, version));
            const where = `an HTTP/${version} client sending Connection ${JSON.stringify(set.connection)}`;
            assert.equal(res.status, 200, where);
            for (const name of END_TO_END)
              assert.equal(
                res.headers[name],
                `from-upstream-${name}`,
                `${where}: end-to-end ${name} lost`,
              );
            // Anything else in the Connection header would make the upstream's end-to-end headers hop-by-hop downstream.
            assert.match(
              res.headers.connection ?? 'keep-alive',
              /^(keep-alive|close)$/i,
              `${where}: the client got Connection: ${res.headers.connection}`,
            );
          });
        }),
        runs(40),
      );
    } finally {
      responsePlan = undefined;
    }
  });

  // Values with CR, LF or NUL; `good` values are printable ASCII, tabs included.
  const goodValueArb = fc.string({
    unit: fc.constantFrom(...'aZ09 -_=;,/\t"'.split('')),
    maxLength: 8,
  });
  const badValueArb = fc
    .tuple(
      goodValueArb,
      fc.constantFrom('\r', '\n', '\0', '\r\n', '\r\nx-injected: 1'),
      goodValueArb,
    )
    .map((parts) => parts.join(''));
  const valueArb = fc.oneof(
    badValueArb.map((value) => ({ bad: true, value })),
    fc
      .tuple(
        fc.array(goodValueArb, { maxLength: 2 }),
        badValueArb,
        fc.array(goodValueArb, { maxLength: 2 }),
      )
      .map(([a, b, c]) => ({ bad: true, value: [...a, b, ...c] })),
    goodValueArb.map((value) => ({ bad: false, value })),
    fc.array(goodValueArb, { minLength: 1, maxLength: 3 }).map((value) => ({ bad: false, value })),
  );
  /** What a receiver sees of a good value: each line trimmed of spaces and tabs, lines joined by ', '. */
  const asReceived = (value) =>
    [value]
      .flat()
      .map((v) => v.replace(/^[ \t]+|[ \t]+$/g, ''))
      .join(', ');

  test('a static header value with CR, LF or NUL makes createProxy throw a TypeError; a clean one does not', async () => {
    await fc.assert(
      fc.asyncProperty(
        valueArb,
        fc.constantFrom('request', 'response'),
        fc.boolean(),
        fc.constantFrom('x-rule', 'X-Custom-Header', 'cookie'),
        async ({ bad, value }, side, onRoute, name) => {
          const headers = { [side]: { [name]: value } };
          const options = onRoute
            ? { routes: { '/r': { target: up.url, headers } } }
            : { target: up.url, headers };
          const create = () => createProxy({ logger: quietLogger(), ...options });
          if (bad) {
            assert.throws(create, TypeError, `${side} ${name}: ${JSON.stringify(value)}`);
          } else {
            const proxy = create();
            await proxy.close();
          }
        },
      ),
      runs(200),
    );
  });

  test('a request rule function returning CR, LF or NUL: 400 (HTTP and upgrades) and the upstream receives nothing', async () => {
    await fc.assert(
      fc.asyncProperty(valueArb, fc.boolean(), async ({ bad, value }, viaUpgrade) => {
        await withProxy(
          { target: up.url, headers: { request: { 'x-rule': () => value, 'x-static': 's' } } },
          async () => {
            const probe = nextProbe();
            const where = `rule value ${JSON.stringify(value)} on ${viaUpgrade ? 'an upgrade' : 'HTTP'}`;
            const status = viaUpgrade
              ? (await upgrade('/rule', { 'x-probe': probe })).status
              : (await get('/rule', { 'x-probe': probe })).status;
            const arrived = arrivedAtUpstream(probe);
            if (bad) {
              assert.equal(status, 400, where);
              assert.equal(arrived.length, 0, `${where}: reached the upstream`);
              return;
            }
            assert.equal(status, viaUpgrade ? 101 : 200, where);
            assert.equal(arrived.length, 1, where);
            assert.equal(arrived[0].headers['x-rule'], asReceived(value), where);
            assert.equal(arrived[0].headers['x-static'], 's', where);
          },
        );
      }),
      runs(60),
    );
  });

  test('a response rule function returning CR, LF or NUL: the header is left out, reported, and the response still goes out', async () => {
    await fc.assert(
      fc.asyncProperty(
        valueArb,
        fc.constantFrom('proxied', 'proxy-made error', 'upgrade'),
        async ({ bad, value }, kind) => {
          const logger = quietLogger();
          await withProxy(
            {
              target: up.url,
              logger,
              headers: { response: { 'x-rule': () => value, 'x-static': 's' } },
            },
            async () => {
              const where = `response rule value ${JSON.stringify(value)} on a ${kind} response`;
              let response;
              if (kind === 'upgrade') response = await upgrade('/rule');
              else response = await get(kind === 'proxied' ? '/rule' : '/a/../rule');
              assert.equal(
                response.status,
                { proxied: 200, 'proxy-made error': 400, upgrade: 101 }[kind],
                where,
              );
              assert.equal(
                response.headers['x-static'],
                's',
                `${where}: the other rules still apply`,
              );
              assert.ok(!('x-injected' in response.headers), `${where}: a header was injected`);
              const reported = logger.lines.filter(
                ([level, line]) => level === 'error' && /response header rule failed/.test(line),
              );
              if (bad) {
                assert.equal(
                  response.headers['x-rule'],
                  undefined,
                  `${where}: the bad header was written`,
                );
                assert.equal(
                  reported.length,
                  1,
                  `${where}: reported ${JSON.stringify(logger.lines)}`,
                );
              } else {
                assert.equal(response.headers['x-rule'], asReceived(value), where);
                assert.equal(reported.length, 0, `${where}: ${JSON.stringify(logger.lines)}`);
              }
            },
          );
        },
      ),
      runs(60),
    );
  });
});
