/**
 * The one place where viaduct relies on what Node and its engine do not document. Each use says
 * why, and what would break it.
 */
import type { ClientRequest, IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { responseHead } from '../runtime/raw-response';

type RawWriter = ServerResponse & { _writeRaw(data: string, encoding: BufferEncoding): boolean };

/**
 * Writes a 1xx response ahead of the final one on `res`'s connection, the way Node's own
 * `writeEarlyHints` and `writeProcessing` do (`OutgoingMessage#_writeRaw`): those two validate
 * `Link` values more strictly than RFC 8288 and know only 102 and 103, where a proxy forwards any
 * 1xx as the upstream sent it. Breaks if Node renames `_writeRaw` (present from Node 0.x to 26).
 */
export function writeInformational(res: ServerResponse, status: number, statusMessage: string | undefined, headers: OutgoingHttpHeaders): void {
  (res as RawWriter)._writeRaw(responseHead(status, statusMessage, headers), 'latin1');
}

/**
 * The request an upstream response answers: Node sets `res.req` on every client response (it is
 * not in the documented API). Breaks if Node renames it (present from Node 0.x to 26).
 */
export function requestOf(res: IncomingMessage): ClientRequest {
  return (res as IncomingMessage & { req: ClientRequest }).req;
}

type Listener = (...args: unknown[]) => void;

/**
 * The `close` and `error` listeners http-proxy-3's `ws` adds to the client socket while it runs:
 * one reports socket errors on the engine, two end the upstream sockets it would have piped (it
 * has none: viaduct relays the tunnel), and one also takes the socket out of a module-wide set of
 * open sockets. All of them hold the call's whole scope for as long as the socket lives.
 * `detach()` removes those added since, after running the `close` ones once so that the set lets
 * go of the socket. Breaks if the engine starts doing more in those listeners (1.23.x does not).
 */
export function engineListeners(socket: Duplex): { detach(): void } {
  const closeBefore = socket.listenerCount('close');
  const errorBefore = socket.listenerCount('error');
  return {
    detach() {
      for (const listener of socket.listeners('close').slice(closeBefore) as Listener[]) {
        socket.removeListener('close', listener);
        listener.call(socket);
      }
      for (const listener of socket.listeners('error').slice(errorBefore) as Listener[]) socket.removeListener('error', listener);
    },
  };
}
