// The upstreams the example starts for itself when no real ones are configured: a small JSON API
// and a WebSocket chat that broadcasts to every client in a room. Both listen on free loopback ports.
import http from 'node:http';
import { once } from 'node:events';
import express from 'express';
import { WebSocketServer, WebSocket } from 'ws';

async function listen(server) {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return `http://127.0.0.1:${server.address().port}`;
}

/** GET /time, POST /echo (JSON in, JSON out). */
export async function startApiUpstream() {
  const app = express();
  app.use(express.json());
  app.get('/time', (req, res) =>
    res.json({ now: new Date().toISOString(), via: req.get('x-forwarded-host') ?? null }),
  );
  app.post('/echo', (req, res) => res.json({ youSent: req.body }));
  const server = http.createServer(app);
  return { server, url: await listen(server) };
}

/** ws://…/room/<name>: every text message is relayed to everyone in the room. */
export async function startChatUpstream() {
  const server = http.createServer((_req, res) => {
    res.writeHead(426, { 'content-type': 'text/plain' }).end('WebSocket only\n');
  });
  const wss = new WebSocketServer({ server });
  const rooms = new Map();
  wss.on('connection', (ws, req) => {
    const room = new URL(req.url, 'http://x').pathname;
    if (!rooms.has(room)) rooms.set(room, new Set());
    const members = rooms.get(room);
    members.add(ws);
    ws.on('close', () => members.delete(ws));
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      for (const member of members)
        if (member.readyState === WebSocket.OPEN) member.send(String(data));
    });
  });
  return { server, wss, url: await listen(server) };
}
