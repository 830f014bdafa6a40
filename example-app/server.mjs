// The viaduct example: an Express app that proxies /api to a JSON API and /chat to a WebSocket
// chat, with a session check in front of /chat (for upgrades too), live stats, and a graceful
// shutdown on Ctrl-C.
//
//   npm start                      embedded upstreams on free loopback ports, app on 127.0.0.1:3000
//   PORT=8080 npm start            another port (0 picks a free one)
//   API_TARGET=http://127.0.0.1:4000 CHAT_TARGET=http://127.0.0.1:5000 npm start   real upstreams
import http from 'node:http';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import express from 'express';
import { createProxy, attach } from 'viaduct';
import { startApiUpstream, startChatUpstream } from './upstreams.mjs';

const SESSION_COOKIE = 'viaduct_demo';

function cookieOf(req, name) {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const [key, ...value] = part.trim().split('=');
    if (key === name) return value.join('=');
  }
  return undefined;
}

/** Starts the example; resolves with its URL and a `close()` that shuts everything down gracefully. */
export async function startExample({ port = 3000, host = '127.0.0.1', apiTarget, chatTarget } = {}) {
  const embedded = [];
  if (!apiTarget) embedded.push(await startApiUpstream());
  const api = apiTarget ?? embedded.at(-1).url;
  if (!chatTarget) embedded.push(await startChatUpstream());
  const chat = chatTarget ?? embedded.at(-1).url;

  const apiProxy = createProxy({ target: api, headers: { response: { 'x-powered-by': null } } });
  const chatProxy = createProxy({ target: chat, timeouts: { read: 300_000 } });

  const sessions = new Set();
  const requireSession = (req, res, next) => {
    if (sessions.has(cookieOf(req, SESSION_COOKIE))) return next();
    res.status(401).type('text').send('Open a session first: POST /session\n');
  };

  const app = express();
  app.disable('x-powered-by');
  app.use(express.static(fileURLToPath(new URL('./public/', import.meta.url))));
  app.post('/session', (req, res) => {
    const id = randomBytes(16).toString('hex');
    sessions.add(id);
    res.cookie(SESSION_COOKIE, id, { httpOnly: true, sameSite: 'strict', path: '/' }).json({ ok: true });
  });
  app.get('/stats', (req, res) => res.json({ api: apiProxy.stats(), chat: chatProxy.stats() }));
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
