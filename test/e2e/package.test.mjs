// Packaging: one instance for require and import, type declarations for both, engines and exports.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import * as esm from 'viaduct';
import { closeAll } from '../helpers/servers.mjs';

after(closeAll);

const require = createRequire(import.meta.url);
const root = fileURLToPath(new URL('../..', import.meta.url));
const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));

describe('one instance for require and import', () => {
  test("require('viaduct') and import('viaduct') give the same functions", async () => {
    const cjs = require('viaduct');
    const imported = await import('viaduct');
    for (const name of ['createProxy', 'attach', 'ProxyError']) {
      assert.equal(typeof cjs[name], 'function', `require: ${name}`);
      assert.equal(imported[name], cjs[name], `${name} is one instance`);
      assert.equal(esm[name], cjs[name], `${name} (static import) is one instance`);
    }
    // The instance matters: a ProxyError made through one entry is an instance of the other's class.
    assert.ok(new imported.ProxyError('EUPSTREAM') instanceof cjs.ProxyError);
    assert.ok(new cjs.ProxyError('ESHUTDOWN') instanceof imported.ProxyError);
  });

  test('each condition resolves to the built entry it names', async () => {
    assert.equal(require.resolve('viaduct'), path.join(root, 'dist/index.js'));
    // One module record: the namespace of import('viaduct') is the one of dist/index.mjs.
    const byName = await import('viaduct');
    const byFile = await import(pathToFileURL(path.join(root, 'dist/index.mjs')).href);
    assert.equal(byName, byFile);
  });
});

describe('package.json', () => {
  test('engines.node names the majors CI tests (those of .ci/run), and the running Node is one of them', () => {
    const majors = /SUPPORTED_MAJORS=\(([\d ]+)\)/
      .exec(readFileSync(path.join(root, '.ci/run'), 'utf8'))?.[1]
      .split(' ');
    assert.deepEqual(majors, ['20', '22', '24', '26']);
    assert.equal(pkg.engines?.node, majors.join(' || '));
    assert.ok(
      majors.includes(process.versions.node.split('.')[0]),
      `running Node ${process.versions.node}`,
    );
  });

  test('the package ships dist/, README, LICENSE and CHANGELOG, and nothing else', async () => {
    const { stdout } = await new Promise((resolve, reject) =>
      execFile(
        'npm',
        ['pack', '--dry-run', '--json', '--ignore-scripts'],
        { cwd: root },
        (error, out) => (error ? reject(error) : resolve({ stdout: out })),
      ),
    );
    const files = JSON.parse(stdout)[0].files.map((file) => file.path);
    const outside = files.filter(
      (file) =>
        !file.startsWith('dist/') &&
        !['README.md', 'LICENSE', 'CHANGELOG.md', 'package.json'].includes(file),
    );
    assert.deepEqual(outside, []);
    for (const file of [
      'README.md',
      'LICENSE',
      'CHANGELOG.md',
      'dist/index.js',
      'dist/index.mjs',
      'dist/index.d.ts',
      'dist/index.d.mts',
    ])
      assert.ok(files.includes(file), file);
    assert.ok(
      !files.some((file) => file.endsWith('.map')),
      'no source maps pointing at sources that are not shipped',
    );
  });

  test('exports has import and require, each with types first, all pointing at files that exist', () => {
    const entry = pkg.exports?.['.'];
    assert.ok(entry && typeof entry === 'object', 'exports["."]');
    for (const condition of ['import', 'require']) {
      const target = entry[condition];
      assert.ok(target && typeof target === 'object', `exports["."].${condition}`);
      assert.deepEqual(
        Object.keys(target),
        ['types', 'default'],
        `${condition}: "types" must come first`,
      );
      for (const file of [target.types, target.default])
        assert.ok(existsSync(path.join(root, file)), `${file} exists`);
    }
    assert.match(entry.import.types, /\.d\.mts$/);
    assert.match(entry.import.default, /\.mjs$/);
    assert.match(entry.require.types, /\.d\.ts$/);
    assert.match(entry.require.default, /\.js$/);
  });
});

// Consumers of the published types. `Equal` makes a check fail when a type is wider (e.g. `any`).
const EQUAL = `type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true : false;`;

const GOOD_MTS = `import * as http from 'node:http';
import type { Duplex } from 'node:stream';
import { createProxy, attach, ProxyError, type ProxyOptions, type Proxy, type ProxyStats, type TunnelCloseEvent } from 'viaduct';
${EQUAL}

const options: ProxyOptions = {
  target: 'http://127.0.0.1:4000/base',
  routes: {
    '/api': 'http://127.0.0.1:4000',
    '/chat': { target: new URL('http://127.0.0.1:5000'), stripPrefix: true, timeouts: { read: 300_000 } },
    'admin.localhost': { target: { host: '127.0.0.1', port: 6000 }, ws: false },
    '/unix': { target: { socketPath: '/tmp/app.sock' } },
  },
  router: async (req) => (req.url?.startsWith('/x') ? { target: 'http://127.0.0.1:7000', pathRewrite: { '^/x': '/' } } : undefined),
  headers: { request: { 'x-api-key': 'k', cookie: null, 'x-host': (req) => req.headers.host ?? null }, response: { 'x-powered-by': null } },
  forwarded: 'forwarded',
  pathRewrite: (path, req) => (req.method === 'GET' ? path : undefined),
  allowedOrigins: ['https://example.com', /\\.example\\.com$/],
  maxTunnels: 100,
  timeouts: { connect: 5_000, read: 60_000 },
  logger: console,
};
const proxy: Proxy = createProxy(options);
const simple: Proxy = createProxy('http://127.0.0.1:4000');

proxy.on('proxyReq', (proxyReq, req, client) => {
  const typed: Equal<typeof proxyReq, http.ClientRequest> = true;
  const request: Equal<typeof req, http.IncomingMessage> = true;
  const side: Equal<typeof client, http.ServerResponse | Duplex> = true;
  proxyReq.setHeader('x-request-id', String(typed && request && side));
});
proxy.on('proxyRes', (proxyRes) => {
  proxyRes.headers['x-seen'] = String(proxyRes.statusCode);
});
proxy.on('open', ({ route, clientSocket, upstreamSocket }) => {
  const key: string = route;
  clientSocket.pipe(upstreamSocket) && key;
});
proxy.on('close', (event) => {
  const reason: Equal<TunnelCloseEvent['reason'], 'client' | 'upstream' | 'idle' | 'shutdown' | 'expired' | 'error'> = true;
  const bytes: number = event.bytesFromClient + event.bytesFromUpstream + event.duration;
  if (event.reason === 'error' && event.error) console.log(event.error.message, bytes, reason);
});
proxy.on('error', (error, req) => {
  if (error instanceof ProxyError) {
    const status: number = error.status;
    console.log(status, error.code, req.url);
  }
});

const server = http.createServer(proxy);
const detach: () => void = attach(server, proxy, { unmatched: 'ignore' });
server.on('upgrade', (req, socket, head) => proxy.upgrade(req, socket, head) || socket.destroy());
const taken: Equal<ReturnType<Proxy['upgrade']>, boolean> = true;
const stats: ProxyStats = simple.stats();
const active: number = stats.tunnels.active + (stats.routes['/api']?.requests.errors ?? 0);
const closed: Promise<void> = proxy.close({ timeout: 10_000 });
export { detach, taken, active, closed };
`;

const GOOD_CTS = `import viaduct = require('viaduct');
import http = require('node:http');
${EQUAL}

const options: viaduct.ProxyOptions = {
  routes: { '/api': { target: 'http://127.0.0.1:4000', changeOrigin: true, headers: { response: { 'x-frame-options': 'DENY' } } } },
  trustProxy: true,
  logger: { debug() {}, info() {}, warn() {}, error: (message: string) => process.stderr.write(message) },
};
const proxy: viaduct.Proxy = viaduct.createProxy(options);
proxy.on('close', (event: viaduct.TunnelCloseEvent) => {
  const reason: viaduct.TunnelCloseReason = event.reason;
  console.log(reason, event.route);
});
proxy.once('error', (error) => {
  const message: string = error.message;
  console.log(message);
});
const app = (req: http.IncomingMessage, res: http.ServerResponse, next: (err?: unknown) => void): void => {
  if (req.url === '/health') res.end('ok');
  else proxy(req, res, next);
};
const server = http.createServer((req, res) => app(req, res, () => res.end()));
const detach = viaduct.attach(server, app);
const error = new viaduct.ProxyError('EUPSTREAM');
const status: Equal<typeof error.status, number> = true;
const stats: Equal<ReturnType<viaduct.Proxy['stats']>, viaduct.ProxyStats> = true;
export = { detach, status, stats };
`;

/** Files that must not compile, each with the one line that must be reported. */
const BAD = {
  'bad-target.mts': `import { createProxy } from 'viaduct';
export const fine = createProxy('http://127.0.0.1:4000');
export const wrong = createProxy({ target: 1 });
`,
  'bad-event.cts': `import viaduct = require('viaduct');
const proxy = viaduct.createProxy('http://127.0.0.1:4000');
proxy.on('proxyResponse', () => {});
export = proxy;
`,
  'bad-payload.mts': `import { createProxy } from 'viaduct';
const proxy = createProxy('http://127.0.0.1:4000');
proxy.on('close', (event) => { const bytes: string = event.bytesFromClient; console.log(bytes); });
`,
};
const BAD_LINE = 3;

function tsc(files) {
  const args = [
    path.join(root, 'node_modules/typescript/bin/tsc'),
    '--noEmit',
    '--strict',
    '--module',
    'node16',
    '--moduleResolution',
    'node16',
    '--types',
    'node',
    ...files,
  ];
  return new Promise((resolve) => {
    execFile(process.execPath, args, { cwd: root }, (error, stdout, stderr) => {
      resolve({ code: error ? error.code : 0, output: `${stdout}${stderr}` });
    });
  });
}

describe('type declarations', () => {
  let dir;
  before(async () => {
    dir = await mkdtemp(path.join(root, 'test', '.types-tmp-'));
    await writeFile(path.join(dir, 'good.mts'), GOOD_MTS);
    await writeFile(path.join(dir, 'good.cts'), GOOD_CTS);
    for (const [name, text] of Object.entries(BAD)) await writeFile(path.join(dir, name), text);
  });
  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('typed consumers compile: import from an .mts, import = require from a .cts', {
    timeout: 120_000,
  }, async () => {
    const { code, output } = await tsc([path.join(dir, 'good.mts'), path.join(dir, 'good.cts')]);
    assert.equal(output.trim(), '', 'no diagnostics');
    assert.equal(code, 0);
  });

  test('a wrong target, an unknown event name and a misused event payload fail on their line', {
    timeout: 120_000,
  }, async () => {
    const { code, output } = await tsc(Object.keys(BAD).map((name) => path.join(dir, name)));
    assert.notEqual(code, 0, 'tsc must fail');
    const diagnostics = [...output.matchAll(/([^\s(]+)\((\d+),\d+\): error TS\d+/g)].map(
      ([, file, line]) => ({ file: path.basename(file), line: Number(line) }),
    );
    for (const name of Object.keys(BAD)) {
      const own = diagnostics.filter((d) => d.file === name);
      assert.ok(own.length > 0, `${name} must fail:\n${output}`);
      assert.deepEqual(
        new Set(own.map((d) => d.line)),
        new Set([BAD_LINE]),
        `${name}: only line ${BAD_LINE} is wrong:\n${output}`,
      );
    }
    assert.equal(
      diagnostics.length,
      diagnostics.filter((d) => d.file in BAD).length,
      `no diagnostics elsewhere:\n${output}`,
    );
  });
});
