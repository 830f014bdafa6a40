// The viaduct example: an Express app that proxies /api to a JSON API and /chat to a WebSocket
// chat, with a session check in front of /chat (for upgrades too), live stats, and a graceful
// shutdown on Ctrl-C.
//
//   npm start                      embedded upstreams on free loopback ports, app on 127.0.0.1:3000
//   PORT=8080 npm start            another port (0 picks a free one)
//   API_TARGET=http://127.0.0.1:4000 CHAT_TARGET=http://127.0.0.1:5000 npm start   real upstreams
//   SESSION_SECRET=… npm start     sessions valid in every instance started with the same secret
//   node example-app/cluster.mjs   the same app in several worker processes on one port
import http from 'node:http';
import { once } from 'node:events';
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import express from 'express';
import { Registry } from 'prom-client';
import { attach, createProxy } from 'viaduct';
import { collectMetrics } from 'viaduct/prometheus';
import { LiveMetrics } from './live-metrics.mjs';
import { startApiUpstream, startChatUpstream } from './upstreams.mjs';

const SESSION_COOKIE = 'viaduct_demo';

function cookieOf(req, name) {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const [key, ...value] = part.trim().split('=');
    if (key === name) return value.join('=');
  }
  return undefined;
}

// A session is a random id signed with a secret, so that any process holding the secret accepts it
// (several workers or instances behind one port share no memory). There is no logout in this demo.
function sessionToken(secret, id = randomBytes(16).toString('hex')) {
  return `${id}.${createHmac('sha256', secret).update(id).digest('base64url')}`;
}
function isSession(secret, token) {
  if (token === undefined) return false;
  const expected = Buffer.from(sessionToken(secret, token.split('.')[0]));
  const given = Buffer.from(token);
  return given.length === expected.length && timingSafeEqual(given, expected);
}

/**
 * Starts the example; resolves with its URL and a `close()` that shuts everything down gracefully.
 * `responseHeaders` are added to every response (the app's own, both proxies', the `101` of a
 * WebSocket); `sessionSecret` signs the session cookie (default: random, valid in this process only).
 */
export async function startExample({
  port = 3000,
  host = '127.0.0.1',
  apiTarget,
  chatTarget,
  responseHeaders = {},
  sessionSecret = randomBytes(32),
} = {}) {
  const embedded = [];
  if (!apiTarget) embedded.push(await startApiUpstream());
  const api = apiTarget ?? embedded.at(-1).url;
  if (!chatTarget) embedded.push(await startChatUpstream());
  const chat = chatTarget ?? embedded.at(-1).url;

  const proxies = {};
  const live = new LiveMetrics(proxies);
  const apiProxy = createProxy({
    target: api,
    headers: { response: { 'x-powered-by': null, ...responseHeaders } },
    accessLog: live.recorder('api'),
  });
  const chatProxy = createProxy({
    target: chat,
    timeouts: { read: 300_000 },
    headers: { response: responseHeaders },
    accessLog: live.recorder('chat'),
  });
  Object.assign(proxies, { api: apiProxy, chat: chatProxy });
  // Prometheus metrics of both proxies, on a registry of this app's own.
  const registry = new Registry();
  const stopMetrics = [
    collectMetrics(apiProxy, { registry }),
    collectMetrics(chatProxy, { registry }),
  ];

  const requireSession = (req, res, next) => {
    if (isSession(sessionSecret, cookieOf(req, SESSION_COOKIE))) return next();
    res.status(401).type('text').send('Open a session first: POST /session\n');
  };

  const app = express();
  app.disable('x-powered-by');
  app.use((_req, res, next) => {
    res.set(responseHeaders);
    next();
  });
  app.use(express.static(fileURLToPath(new URL('./public/', import.meta.url))));
  app.post('/session', (_req, res) => {
    res
      .cookie(SESSION_COOKIE, sessionToken(sessionSecret), {
        httpOnly: true,
        sameSite: 'strict',
        path: '/',
      })
      .json({ ok: true });
  });
  app.get('/stats', (_req, res) => res.json({ api: apiProxy.stats(), chat: chatProxy.stats() }));
  app.get('/live', (_req, res) => res.json(live.history));
  app.get('/metrics', async (_req, res) =>
    res.type(registry.contentType).send(await registry.metrics()),
  );
  app.use('/api', apiProxy);
  app.use('/chat', requireSession, chatProxy);

  const server = http.createServer(app);
  attach(server, app);
  server.listen(port, host);
  await once(server, 'listening');
  const address = server.address();
  const url = `http://${address.address}:${address.port}/`;

  let closing;
  const close = () =>
    (closing ??= (async () => {
      server.close();
      live.stop();
      for (const stop of stopMetrics) stop();
      await Promise.all([apiProxy.close({ timeout: 5_000 }), chatProxy.close({ timeout: 5_000 })]);
      server.closeAllConnections();
      for (const upstream of embedded) {
        upstream.wss?.close();
        upstream.server.closeAllConnections();
        upstream.server.close();
      }
    })());

  return { url, server, close, upstreams: { api, chat } };
}

const isMain = process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1];
if (isMain) {
  const example = await startExample({
    port: process.env.PORT === undefined ? 3000 : Number(process.env.PORT),
    host: process.env.HOST ?? '127.0.0.1',
    apiTarget: process.env.API_TARGET,
    chatTarget: process.env.CHAT_TARGET,
    sessionSecret: process.env.SESSION_SECRET,
  });
  console.log(`viaduct example: ${example.url}`);
  console.log(`  /api  → ${example.upstreams.api}`);
  console.log(`  /chat → ${example.upstreams.chat} (WebSocket, session required)`);
  const shutdown = async (signal) => {
    console.log(`${signal}: closing tunnels and draining requests…`);
    await example.close();
    process.exit(0);
  };
  process.once('SIGINT', shutdown);
  process.once('SIGTERM', shutdown);
}
