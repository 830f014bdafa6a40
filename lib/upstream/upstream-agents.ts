import { Agent as HttpAgent, type ClientRequest } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import type { Socket, TcpNetConnectOpts } from 'node:net';
import { giveSocket, lastResponseHeaders } from '../internals/node';
import { handshakeConnection, readingIntoSharedBuffer } from './shared-read-buffer';

// Without a hint from the upstream: below Node's 5 s server keep-alive default, so an idle socket is
// dropped here before the upstream drops it.
const DEFAULT_IDLE_LIMIT = 4_000;
// However long the upstream says it keeps a connection, an idle socket is not held longer than nginx's default.
const LONGEST_IDLE_LIMIT = 60_000;
// `timeout=N` wherever it is in the list: `max=100, timeout=5` is as valid as `timeout=5, max=100`.
const KEEP_ALIVE_HINT = /(?:^|[\s,])timeout=(\d+)/i;

/** When a pooled socket must be retired: set each time it goes back to the pool (a property, not a `WeakMap`, on the hot path). */
const retireAt = Symbol('viaduct.retireAt');
type PooledSocket = Socket & { [retireAt]?: number };

/**
 * A second less than the upstream's `Keep-Alive: timeout=N` (at most 60 s; 0 for N ≤ 1: not
 * reusable), else 4 s. Honouring a longer hint matters: an upstream that keeps connections for 30 s
 * would otherwise see every burst of traffic after 4 s of quiet open a fresh set of connections.
 */
function idleLimit(socket: Socket): number {
  // Node's agent reads the hint the same way: from the response of the request that held the socket.
  const hint = lastResponseHeaders(socket)?.['keep-alive'];
  const seconds = typeof hint === 'string' ? KEEP_ALIVE_HINT.exec(hint)?.[1] : undefined;
  return seconds === undefined
    ? DEFAULT_IDLE_LIMIT
    : Math.min(LONGEST_IDLE_LIMIT, Number(seconds) * 1000 - 1000);
}

/**
 * Replaces the agent's `timeout` option, which arms a socket timer each time a socket goes back to
 * the pool: the socket's retirement time is noted instead and given to `onPooled`, and
 * {@link UpstreamAgents.retireIdle} acts on it.
 */
function pooled<A extends HttpAgent>(agent: A, onPooled: (retireAt: number) => void): A {
  const keepAliveMsecs = (agent as A & { keepAliveMsecs: number }).keepAliveMsecs;
  const keepSocketAlive = (socket: Socket): boolean => {
    const limit = idleLimit(socket);
    if (limit <= 0) return false;
    socket.setKeepAlive(true, keepAliveMsecs);
    socket.unref();
    const at = Date.now() + limit;
    (socket as PooledSocket)[retireAt] = at;
    onPooled(at);
    return true;
  };
  Object.assign(agent, { keepSocketAlive });
  return agent;
}

/** Destroys `agent`'s pooled sockets due by `now`; returns when the next one left is due (∞: none). */
function retireFrom(agent: HttpAgent, now: number): number {
  let next = Number.POSITIVE_INFINITY;
  for (const sockets of Object.values(agent.freeSockets)) {
    for (const socket of sockets ?? []) {
      const at = (socket as PooledSocket)[retireAt] ?? 0;
      if (at <= now) socket.destroy();
      else next = Math.min(next, at);
    }
  }
  return next;
}

/** What `http.request` takes as its `agent`: whatever gives the request its socket. */
export interface ConnectionSource {
  addRequest(req: ClientRequest, options: TcpNetConnectOpts & { socketPath?: string }): void;
}

/**
 * A connection of its own for each plain-HTTP upgrade handshake, which is what an `http.Agent`
 * with keep-alive off gives too, after its pool's bookkeeping: a name and socket lists per request,
 * four listeners per socket that the upgrade removes again, a measurable share of an upgrade's
 * CPU (docs/performance.md).
 */
const handshakeConnections: ConnectionSource = {
  addRequest(req, options) {
    // `options` is the request's own copy, changed in place: copying it is costly per upgrade. Its
    // `path` is the request's, which would make `net` connect to a Unix socket of that name.
    (options as { path?: string }).path = options.socketPath;
    options.noDelay = true;
    giveSocket(req, handshakeConnection(options));
  },
};

/** Agents shared by every route of one proxy, destroyed by `close()`. */
export class UpstreamAgents {
  readonly http: HttpAgent;
  readonly https: HttpsAgent;
  // Each handshake on a connection of its own, never a pooled one the upstream may be closing.
  readonly tunnelHttp = handshakeConnections;
  // An agent for TLS, which resumes sessions. Shared, because `agent: false` would make Node build
  // an agent for every tunnel and keep it as long.
  readonly tunnelHttps = new HttpsAgent({ keepAlive: false });

  /** `onPooled(retireAt)`: a socket went back to a pool, to be retired at `retireAt`. */
  constructor(onPooled: (retireAt: number) => void) {
    this.http = pooled(readingIntoSharedBuffer(new HttpAgent({ keepAlive: true })), onPooled);
    this.https = pooled(new HttpsAgent({ keepAlive: true }), onPooled);
  }

  /** Closes pooled sockets past their idle limit; returns when the next one is due (∞: none left). */
  retireIdle(now: number): number {
    return Math.min(retireFrom(this.http, now), retireFrom(this.https, now));
  }

  destroy(): void {
    this.http.destroy();
    this.https.destroy();
    this.tunnelHttps.destroy();
  }
}
