// The example app in several processes on one port, with node:cluster. The primary starts the
// embedded upstreams once (or uses API_TARGET / CHAT_TARGET) and forks the workers; each worker runs
// startExample() on the same port (the primary holds the listening socket and, on Linux, hands the
// connections to the workers in turn). Every response, the `101` of a WebSocket included, carries
// `x-worker: <pid>`. A worker that exits (crash, or SIGTERM to it alone: it drains first) is replaced;
// Ctrl-C or SIGTERM to the primary shuts every worker down through proxy.close() and exits 0.
//
//   node example-app/cluster.mjs            2 workers on 127.0.0.1:3000
//   WORKERS=4 PORT=8080 node example-app/cluster.mjs      (WORKERS=auto: one per CPU)
//   SESSION_SECRET, API_TARGET, CHAT_TARGET, HOST: as for npm start
import cluster from 'node:cluster';
import { availableParallelism } from 'node:os';
import { randomBytes } from 'node:crypto';
import { startExample } from './server.mjs';
import { startApiUpstream, startChatUpstream } from './upstreams.mjs';

const port = process.env.PORT === undefined ? 3000 : Number(process.env.PORT);
const host = process.env.HOST ?? '127.0.0.1';

if (cluster.isPrimary) {
  const count =
    process.env.WORKERS === 'auto' ? availableParallelism() : Number(process.env.WORKERS ?? 2);
  if (!Number.isInteger(count) || count < 1)
    throw new TypeError(`WORKERS is a positive integer or "auto", not "${process.env.WORKERS}"`);
  const embedded = [];
  if (!process.env.API_TARGET) embedded.push(await startApiUpstream());
  if (!process.env.CHAT_TARGET) embedded.push(await startChatUpstream());
  // Every worker gets the same upstreams and the same session secret (a session opened on one
  // worker is valid on all of them).
  const env = {
    API_TARGET: process.env.API_TARGET ?? embedded[0].url,
    CHAT_TARGET: process.env.CHAT_TARGET ?? embedded.at(-1).url,
    SESSION_SECRET: process.env.SESSION_SECRET ?? randomBytes(32).toString('hex'),
  };

  let stopping = false;
  const listening = new Set();
  cluster.on('listening', (worker, address) => {
    const url = `http://${address.addressType === 6 ? `[${address.address}]` : address.address}:${address.port}/`;
    console.log(`worker ${worker.process.pid} listening on ${url}`);
    listening.add(worker.id);
    if (listening.size !== count) return;
    console.log(`viaduct example: ${url} (${count} workers)`);
    console.log(`  /api  → ${env.API_TARGET}`);
    console.log(`  /chat → ${env.CHAT_TARGET} (WebSocket, session required)`);
  });

  /** Asks every worker to close (its proxies end their tunnels), then exits once all are gone. */
  const stop = (why, code) => {
    if (stopping) return;
    stopping = true;
    const workers = Object.values(cluster.workers);
    console.log(`${why}: closing tunnels and draining requests in ${workers.length} workers…`);
    setTimeout(() => {
      console.error('workers still running after 10 s: killing them');
      for (const worker of Object.values(cluster.workers)) worker.process.kill('SIGKILL');
      process.exit(1);
    }, 10_000).unref();
    const exited = workers.map((worker) =>
      worker.isDead() ? undefined : new Promise((resolve) => worker.once('exit', resolve)),
    );
    for (const worker of workers) if (worker.isConnected()) worker.send('shutdown');
    Promise.all(exited).then(() => {
      for (const { server, wss } of embedded) {
        wss?.close();
        server.closeAllConnections();
        server.close();
      }
      process.exit(code);
    });
  };

  cluster.on('exit', (worker, code, signal) => {
    if (stopping) return;
    const how = signal ?? `exit code ${code}`;
    // A worker that never listened (port taken, bad target…) would fail again: give up instead of looping.
    if (!listening.has(worker.id))
      return stop(`worker ${worker.process.pid} failed to start (${how})`, 1);
    console.log(`worker ${worker.process.pid} exited (${how}): starting another`);
    cluster.fork(env);
  });
  process.on('SIGINT', () => stop('SIGINT', 0));
  process.on('SIGTERM', () => stop('SIGTERM', 0));
  for (let i = 0; i < count; i += 1) cluster.fork(env);
} else {
  const example = startExample({
    port,
    host,
    apiTarget: process.env.API_TARGET,
    chatTarget: process.env.CHAT_TARGET,
    sessionSecret: process.env.SESSION_SECRET,
    responseHeaders: { 'x-worker': String(process.pid) },
  });
  const shutdown = async () => {
    await (await example).close();
    process.exit(0);
  };
  // The primary says when (Ctrl-C reaches every process of the group; the primary coordinates).
  process.on('message', (message) => message === 'shutdown' && shutdown());
  process.on('SIGINT', () => {});
  process.on('SIGTERM', shutdown);
}
