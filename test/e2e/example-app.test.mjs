// The example app: `npm start` end to end, the page in a real browser, and the Vite recipe.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';
import { startExample } from '../../example-app/server.mjs';
import { viaductPlugin } from '../../example-app/vite-plugin.mjs';
import { closeAll, quietLogger, startUpstream } from '../helpers/servers.mjs';
import { openSocket, request, roundTrip } from '../helpers/clients.mjs';
import { within } from '../helpers/waiting.mjs';

const root = fileURLToPath(new URL('../..', import.meta.url));
after(closeAll);

async function openSession(url) {
  const res = await request(new URL('session', url), { method: 'POST' });
  assert.equal(res.status, 200);
  return res.headers['set-cookie'][0].split(';')[0];
}

/** Opens a chat socket; resolves once it is open (the chat upstream sends no greeting). */
function joinChat(url, room, cookie) {
  const ws = new WebSocket(new URL(`chat/room/${room}`, url.replace('http', 'ws')), {
    headers: cookie ? { cookie } : {},
  });
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve({ ws }));
    ws.once('unexpected-response', (_req, res) => resolve({ refused: res.statusCode }));
    ws.once('error', reject);
  });
}

describe('npm start', () => {
  test('prints its URL, proxies HTTP and a WebSocket, and exits 0 promptly on SIGINT', async () => {
    const { scripts } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
    const [command, ...args] = scripts.start.split(' ');
    assert.equal(command, 'node');
    const child = spawn(process.execPath, args, {
      cwd: root,
      env: { ...process.env, PORT: '0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    after(() => child.exitCode === null && child.kill('SIGKILL'));
    let output = '';
    child.stderr.on('data', (chunk) => (output += chunk));
    const url = await within(
      new Promise((resolve) => {
        child.stdout.on('data', (chunk) => {
          output += chunk;
          const match = /viaduct example: (http:\/\/\S+)/.exec(output);
          if (match) resolve(match[1]);
        });
      }),
      10_000,
      'the printed URL',
    );

    const time = await request(new URL('api/time', url));
    assert.equal(time.status, 200);
    assert.match(time.json().now, /^\d{4}-\d\d-\d\dT/);

    const cookie = await openSession(url);
    const { ws } = await joinChat(url, 'sigint', cookie);
    assert.equal(await roundTrip(ws, 'hi'), 'hi');
    const closed = once(ws, 'close');

    const exited = once(child, 'exit');
    const started = Date.now();
    child.kill('SIGINT');
    const [code] = await within(exited, 5_000, 'exit after SIGINT');
    assert.equal(code, 0, output);
    assert.ok(Date.now() - started < 5_000);
    await within(closed, 5_000, 'the open tunnel ended by the shutdown');
    assert.match(output, /SIGINT: closing tunnels/);
  });
});

describe('example app', () => {
  test('the chat route is behind the session check for upgrades too, and /stats counts both proxies', async () => {
    const example = await startExample({ port: 0 });
    after(() => example.close());
    assert.equal((await joinChat(example.url, 'lobby')).refused, 401);
    const cookie = await openSession(example.url);
    const first = await joinChat(example.url, 'lobby', cookie);
    const second = await joinChat(example.url, 'lobby', cookie);
    const arrived = once(second.ws, 'message');
    first.ws.send('ada: hello');
    assert.equal(String((await arrived)[0]), 'ada: hello');
    const stats = (await request(new URL('stats', example.url))).json();
    assert.equal(stats.chat.tunnels.active, 2);
    assert.equal(stats.chat.tunnels.rejected, 0);
    first.ws.close();
    second.ws.close();
  });
});

describe('the page in a real browser', () => {
  const chromium = '/usr/bin/chromium';
  const present = existsSync(chromium);
  const skip =
    present || process.env.CI
      ? false
      : 'Chromium is not installed: run `apt-get install -y chromium` (CI installs it; with CI set its absence fails)';

  test('loads, shows the API answer, chats between two tabs, shows live stats and takes a screenshot; after a graceful shutdown it says the server went away (1001) and reconnects when the app is back', {
    skip,
    timeout: 60_000,
  }, async () => {
    assert.ok(present, `CI is set but ${chromium} is missing: .ci/run installs it with apt-get`);
    const { chromium: launcher } = await import('playwright-core');
    const example = await startExample({ port: 0 });
    after(() => example.close());
    const browser = await launcher.launch({
      executablePath: chromium,
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
    const context = await browser.newContext();
    const [tab1, tab2] = [await context.newPage(), await context.newPage()];
    await tab1.goto(example.url);
    await tab2.goto(example.url);

    await tab1.click('#time');
    await tab1.locator('#api-result', { hasText: '"now"' }).waitFor();
    assert.match(await tab1.textContent('#api-result'), /^200 /);

    for (const [tab, name] of [
      [tab1, 'ada'],
      [tab2, 'grace'],
    ]) {
      await tab.fill('#room', 'browser-test');
      await tab.fill('#name', name);
      await tab.click('#join button');
      await tab.locator('#chat-state', { hasText: 'in room browser-test' }).waitFor();
    }
    await tab1.fill('#message', 'hello from tab 1');
    await tab1.click('#say button');
    await tab2.locator('#messages li', { hasText: 'ada: hello from tab 1' }).waitFor();

    await tab2
      .locator('#stats-rows tr[data-proxy="chat"] td:nth-child(5)', { hasText: '2' })
      .waitFor();
    const dir = mkdtempSync(join(tmpdir(), 'viaduct-screenshot-'));
    after(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'chat.png');
    await tab2.screenshot({ path: file, fullPage: true });
    assert.ok(statSync(file).size > 1000);

    // A graceful shutdown ends the chat tunnels with Close frames (1001): the page says the server
    // went away, and once the app is back on the same port it reconnects by itself.
    const { port } = new URL(example.url);
    await example.close();
    await tab1
      .locator('#chat-state', { hasText: 'the server went away (1001' })
      .waitFor({ timeout: 5_000 });
    assert.equal(await tab1.getAttribute('#chat', 'data-close-code'), '1001');
    const back = await startExample({ port: Number(port) });
    after(() => back.close());
    await tab1
      .locator('#chat-state', { hasText: 'in room browser-test' })
      .waitFor({ timeout: 15_000 });
    await tab2
      .locator('#chat-state', { hasText: 'in room browser-test' })
      .waitFor({ timeout: 15_000 });
    await tab2.fill('#message', 'back again');
    await tab2.click('#say button');
    await tab1.locator('#messages li', { hasText: 'grace: back again' }).waitFor();
  });
});

describe('inside a Vite dev server', () => {
  test('the plugin proxies /api and /chat through viaduct while Vite HMR keeps its own socket', {
    timeout: 60_000,
  }, async () => {
    const { createServer } = await import('vite');
    const up = await startUpstream();
    const dir = mkdtempSync(join(tmpdir(), 'viaduct-vite-'));
    after(() => rmSync(dir, { recursive: true, force: true }));
    writeFileSync(
      join(dir, 'index.html'),
      '<!doctype html><title>vite</title><script type="module">console.log(1)</script>',
    );
    const plugin = viaductPlugin({
      routes: { '/api': up.url, '/chat': up.url },
      logger: quietLogger(),
    });
    const vite = await createServer({
      configFile: false,
      root: dir,
      logLevel: 'silent',
      server: { host: '127.0.0.1', port: 0, strictPort: false },
      plugins: [plugin],
    });
    await vite.listen();
    after(() => vite.close());
    const { port } = vite.httpServer.address();

    const api = await request(`http://127.0.0.1:${port}/api/items?x=1`);
    assert.equal(api.status, 200);
    assert.equal(api.json().url, '/api/items?x=1');

    const chat = await openSocket(`ws://127.0.0.1:${port}/chat/room`);
    assert.equal(chat.greeting, 'hello:/chat/room');
    assert.equal(await roundTrip(chat.ws, 'ping'), 'echo:ping');

    const hmr = new WebSocket(`ws://127.0.0.1:${port}/`, 'vite-hmr');
    const [greeting] = await within(once(hmr, 'message'), 10_000, 'the HMR greeting');
    assert.equal(JSON.parse(String(greeting)).type, 'connected');
    assert.equal(hmr.protocol, 'vite-hmr');

    const stats = plugin.proxy.stats();
    assert.equal(stats.requests.total, 1);
    assert.equal(stats.tunnels.total, 1);
    assert.equal(up.handshakes.length, 1);
    chat.ws.close();
    hmr.close();
  });
});
