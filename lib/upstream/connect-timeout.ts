import type { ClientRequest } from 'node:http';
import type { Socket } from 'node:net';
import { ProxyError } from '../runtime/proxy-error';

/** Told when a fresh connection is up (a reused one is not timed). */
export interface ConnectWatcher {
  connected(): void;
}

function watchSocket(
  proxyReq: ClientRequest,
  socket: Socket,
  ms: number,
  secure: boolean,
  watcher: ConnectWatcher | undefined,
): void {
  // A pooled keep-alive socket is already connected: nothing to time.
  if (!socket.connecting) return;
  const connected = secure ? 'secureConnect' : 'connect';
  const timer = setTimeout(() => {
    proxyReq.destroy(new ProxyError('ECONNECTTIMEOUT', `not connected after ${ms} ms`));
  }, ms);
  // Both listeners go as soon as either fires: the socket outlives this request in the pool.
  const clear = (): void => {
    clearTimeout(timer);
    socket.removeListener(connected, up);
    socket.removeListener('close', clear);
  };
  const up = (): void => {
    clear();
    watcher?.connected();
  };
  socket.once(connected, up);
  socket.once('close', clear);
}

/**
 * Destroys the upstream request of an HTTP request with `ECONNECTTIMEOUT` when its TCP (and TLS)
 * connection is not established within `ms`; the read timeout starts once connected and is kept by
 * the proxy's sweep. A timer only for a fresh connection: most requests get a pooled one. (An
 * upgrade always opens a fresh one, so both of its deadlines are on the sweep.)
 */
export function watchConnect(
  proxyReq: ClientRequest,
  ms: number,
  secure: boolean,
  watcher?: ConnectWatcher,
): void {
  if (proxyReq.socket) watchSocket(proxyReq, proxyReq.socket, ms, secure, watcher);
  else
    proxyReq.once('socket', (socket: Socket) => watchSocket(proxyReq, socket, ms, secure, watcher));
}
