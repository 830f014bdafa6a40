import type { ClientRequest } from 'node:http';
import type { Socket } from 'node:net';
import { ProxyError } from './errors';

function watchSocket(proxyReq: ClientRequest, socket: Socket, ms: number, secure: boolean): void {
  // A pooled keep-alive socket is already connected: nothing to time.
  if (!socket.connecting) return;
  const timer = setTimeout(() => {
    proxyReq.destroy(new ProxyError('ECONNECTTIMEOUT', `not connected after ${ms} ms`));
  }, ms);
  const clear = (): void => clearTimeout(timer);
  socket.once(secure ? 'secureConnect' : 'connect', clear);
  socket.once('close', clear);
}

/**
 * Destroys the upstream request with `ECONNECTTIMEOUT` when its TCP (and TLS) connection is not
 * established within `ms`. The read timeout is `proxyReq.setTimeout`, which starts once connected.
 */
export function watchConnect(proxyReq: ClientRequest, ms: number, secure: boolean): void {
  if (proxyReq.socket) watchSocket(proxyReq, proxyReq.socket, ms, secure);
  else proxyReq.once('socket', (socket: Socket) => watchSocket(proxyReq, socket, ms, secure));
}
