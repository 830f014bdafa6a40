// The soak's child processes: upstreams the driver kills and restarts on the same port, and the
// front it questions over IPC. Every wait here is bounded.
import { fork } from 'node:child_process';
import net from 'node:net';
import { fileURLToPath } from 'node:url';

const here = (file) => fileURLToPath(new URL(file, import.meta.url));
const children = new Set();

/** SIGKILLs every child still running (on the driver's exit, however it exits). */
export function killAllChildren() {
  for (const child of children) child.kill('SIGKILL');
}
process.once('exit', killAllChildren);

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves with `fallback` when `promise` has not settled within `ms`. */
export function bounded(promise, ms, fallback) {
  let timer;
  return Promise.race([
    promise,
    new Promise((resolve) => (timer = setTimeout(() => resolve(fallback), ms))),
  ]).finally(() => clearTimeout(timer));
}

function track(child) {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

/** Waits for the child's `{ type: 'ready' }` message, its exit, or the bound. */
function readyOrExit(child, ms) {
  return bounded(
    new Promise((resolve) => {
      child.on(
        'message',
        (message) => message?.type === 'ready' && resolve({ ready: true, port: message.port }),
      );
      child.once('exit', (code, signal) => resolve({ ready: false, code, signal }));
    }),
    ms,
    { ready: false, timeout: true },
  );
}

/**
 * A loopback port below Linux's ephemeral range (32768–60999), free right now: while an upstream
 * is down, no outgoing connection can take its port, and neither can another test's `listen(0)`.
 */
export async function pickPort(random) {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 20_000 + Math.floor(random() * 12_000);
    const free = await new Promise((resolve) => {
      const probe = net.createServer();
      probe.once('error', () => resolve(false));
      probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error('no free loopback port in 20000–31999');
}

/** One upstream process on a fixed port: started, SIGKILLed and started again. */
export class Upstream {
  constructor(name, port) {
    this.name = name;
    this.port = port;
    this.child = undefined;
    this.up = false;
    /** When it was last listening again (`Date.now()`). */
    this.kills = 0;
    this.restarts = 0;
    this.bindRetries = 0;
    this.downMs = 0;
    this.downSince = 0;
    /** Uploads the upstream received "complete" but not as the client sent them (see upstream.mjs). */
    this.badUploads = [];
  }

  /** Starts the process; retries (bounded) while the port is still taken. */
  async start() {
    for (let attempt = 0; attempt < 50; attempt++) {
      const child = track(
        fork(here('./upstream.mjs'), [String(this.port)], {
          stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
        }),
      );
      let stderr = '';
      child.stderr.on('data', (chunk) => (stderr = (stderr + chunk).slice(-2_000)));
      child.on(
        'message',
        (message) => message?.type === 'bad-upload' && this.badUploads.push(message.detail),
      );
      const result = await readyOrExit(child, 15_000);
      if (result.ready) {
        this.child = child;
        this.up = true;
        if (this.downSince) this.downMs += Date.now() - this.downSince;
        this.downSince = 0;
        return;
      }
      child.kill('SIGKILL');
      if (result.code !== 98)
        throw new Error(
          `upstream ${this.name} did not start (${JSON.stringify(result)}): ${stderr}`,
        );
      this.bindRetries++;
      await sleep(100);
    }
    throw new Error(`upstream ${this.name}: port ${this.port} still taken after 50 attempts`);
  }

  /** SIGKILL, and the exit seen: the port is closed when this resolves. */
  async kill() {
    const child = this.child;
    this.up = false;
    this.downSince = Date.now();
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await bounded(exited, 10_000);
    this.kills++;
  }

  async restart() {
    await this.start();
    this.restarts++;
  }
}

/** The front process, asked questions over IPC. */
export class Front {
  constructor(httpPort, wsPort, poolPorts = [], poolFailTimeout = 500) {
    this.args = [String(httpPort), String(wsPort), poolPorts.join(','), String(poolFailTimeout)];
    this.child = undefined;
    this.port = 0;
    this.fatal = undefined;
    this.exit = undefined;
    this.stderr = '';
    this.nextId = 1;
    this.pending = new Map();
  }

  async start() {
    const child = track(
      fork(here('./front.mjs'), this.args, {
        execArgv: ['--expose-gc'],
        stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      }),
    );
    this.child = child;
    child.on('error', (error) => (this.stderr += `\n[driver] IPC error: ${error.message}`));
    child.stdout.on('data', () => {});
    child.stderr.on('data', (chunk) => (this.stderr = (this.stderr + chunk).slice(-4_000)));
    child.on('message', (message) => {
      if (message?.type === 'fatal') this.fatal = message.error;
      const waiter = this.pending.get(message?.id);
      if (waiter) {
        this.pending.delete(message.id);
        waiter(message);
      }
    });
    child.once('exit', (code, signal) => {
      this.exit = { code, signal };
      for (const waiter of this.pending.values()) waiter(undefined);
      this.pending.clear();
    });
    const result = await readyOrExit(child, 15_000);
    if (!result.ready)
      throw new Error(`the front did not start (${JSON.stringify(result)}): ${this.stderr}`);
    this.port = result.port;
  }

  get alive() {
    return this.exit === undefined && this.fatal === undefined;
  }

  /** Sends a request and waits (bounded) for the reply with the same id; `undefined` on no answer. */
  ask(message, ms = 10_000) {
    if (this.exit !== undefined || !this.child.connected) return Promise.resolve(undefined);
    const id = this.nextId++;
    const reply = new Promise((resolve) => this.pending.set(id, resolve));
    this.child.send({ ...message, id });
    return bounded(reply, ms, undefined).finally(() => this.pending.delete(id));
  }

  probe({ heap = false } = {}) {
    return this.ask({ type: 'probe', heap }, 30_000);
  }

  snapshot(file) {
    return this.ask({ type: 'snapshot', file }, 120_000);
  }

  /** Graceful close over IPC, then the process leaves once the channel is gone. */
  async close() {
    const reply = await this.ask({ type: 'close' }, 15_000);
    const exited = this.exit
      ? Promise.resolve()
      : new Promise((resolve) => this.child.once('exit', resolve));
    if (this.child.connected) this.child.disconnect();
    await bounded(exited, 10_000);
    return reply;
  }
}
