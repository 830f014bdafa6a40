/**
 * The one place where viaduct reaches into Node's private API. Each use says why, and what would
 * break it.
 */
import type { ClientRequest, IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { responseHead } from './raw-response';

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
