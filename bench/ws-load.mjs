// The WebSocket load generator, in its own process (forked by bench/run.mjs, driven over IPC):
//   { type: 'echo', url, sockets, seconds }  → { messages }   ping-pong on `sockets` tunnels
//   { type: 'upgrades', url, concurrency, seconds } → { upgrades }   open + close loops, on the wire
//   { type: 'hold', url, count, sources }    → { open }       opens `count` idle tunnels, from the
//                                                             loopback addresses 127.0.0.1 … 127.0.0.<sources> in turn
//   { type: 'release' }                      → { closed, dropped }   closes them; `dropped`: how many
//                                                             had closed before they were released
import { once } from 'node:events';
import { WebSocket } from 'ws';
import { handshakeFor, upgradeAndClose } from './upgrade-client.mjs';

const MESSAGE = Buffer.alloc(64, 'm');
let held = [];
let dropped = 0;
const countDrop = () => dropped++;

function open(url, localAddress) {
  const ws = new WebSocket(url, { perMessageDeflate: false, localAddress });
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

async function closeAll(sockets) {
  await Promise.all(
    sockets.map((ws) => {
      if (ws.readyState === WebSocket.CLOSED) return undefined;
      const closed = once(ws, 'close');
      ws.close();
      return closed;
    }),
  );
}

async function echo({ url, sockets, seconds }) {
  const tunnels = await Promise.all(Array.from({ length: sockets }, () => open(url)));
  let messages = 0;
  let running = true;
  for (const ws of tunnels) {
    ws.on('message', () => {
      messages++;
      if (running) ws.send(MESSAGE);
    });
    ws.send(MESSAGE);
  }
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  running = false;
  const counted = messages;
  await closeAll(tunnels);
  return { messages: counted };
}

async function upgrades({ url, concurrency, seconds }) {
  const handshake = handshakeFor(url);
  const deadline = Date.now() + seconds * 1000;
  let count = 0;
  const loop = async () => {
    while (Date.now() < deadline) {
      await upgradeAndClose(handshake);
      count++;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, loop));
  return { upgrades: count };
}

// Thousands of tunnels from one source address would take thousands of its ephemeral ports, next
// to the TIME_WAIT ports of earlier runs; Linux routes all of 127/8 to the loopback interface.
async function hold({ url, count, sources = 1 }) {
  // In batches, so the front's accept queue and the upstream keep up.
  for (let i = 0; i < count; i += 100) {
    const batch = Array.from({ length: Math.min(100, count - i) }, (_, j) =>
      open(url, `127.0.0.${1 + ((i + j) % sources)}`),
    );
    for (const ws of await Promise.all(batch)) {
      ws.once('close', countDrop);
      held.push(ws);
    }
  }
  return { open: held.length };
}

async function release() {
  const sockets = held;
  const droppedBefore = dropped;
  held = [];
  dropped = 0;
  for (const ws of sockets) ws.off('close', countDrop);
  // In batches too: thousands of closing handshakes at once would be a load burst of their own.
  for (let i = 0; i < sockets.length; i += 500) await closeAll(sockets.slice(i, i + 500));
  return { closed: sockets.length, dropped: droppedBefore };
}

const commands = { echo, upgrades, hold, release };
process.on('message', async (message) => {
  try {
    process.send({ ok: true, ...(await commands[message.type](message)) });
  } catch (error) {
    process.send({ ok: false, error: String(error?.stack ?? error) });
  }
});
