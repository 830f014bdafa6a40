/**
 * The one place where viaduct relies on what Node and its engine do not document. Each use says
 * why, and what would break it.
 */
import type {
  ClientRequest,
  IncomingMessage,
  OutgoingHttpHeaders,
  ServerResponse,
} from 'node:http';
import type { Socket } from 'node:net';
import { responseHead } from '../runtime/raw-response';

type RawWriter = ServerResponse & { _writeRaw(data: string, encoding: BufferEncoding): boolean };

/**
 * Writes a 1xx response ahead of the final one on `res`'s connection, the way Node's own
 * `writeEarlyHints` and `writeProcessing` do (`OutgoingMessage#_writeRaw`): those two validate
 * `Link` values more strictly than RFC 8288 and know only 102 and 103, where a proxy forwards any
 * 1xx as the upstream sent it. Breaks if Node renames `_writeRaw` (present from Node 0.x to 26).
 */
export function writeInformational(
  res: ServerResponse,
  status: number,
  statusMessage: string | undefined,
  headers: OutgoingHttpHeaders,
): void {
  (res as RawWriter)._writeRaw(responseHead(status, statusMessage, headers), 'latin1');
}

/**
 * The request an upstream response answers: Node sets `res.req` on every client response (it is
 * not in the documented API). Breaks if Node renames it (present from Node 0.x to 26).
 */
export function requestOf(res: IncomingMessage): ClientRequest {
  return (res as IncomingMessage & { req: ClientRequest }).req;
}

/**
 * The headers of the last response a pooled upstream socket carried, where Node's own agent reads
 * the `Keep-Alive` hint from: the socket's `_httpMessage` is the request that held it. Breaks if
 * Node renames `_httpMessage` (present from Node 0.x to 26).
 */
export function lastResponseHeaders(socket: Socket): Record<string, unknown> | undefined {
  return (
    socket as Socket & {
      _httpMessage?: ClientRequest & { res?: { headers: Record<string, unknown> } };
    }
  )._httpMessage?.res?.headers;
}

/**
 * True while the only reader of an upstream socket is the HTTP parser of the request that holds
 * it: Node's client sets `socket.parser` when it adds its one `data` listener and clears it when it
 * removes that listener (the response complete, an upgrade, an error). Breaks, to the safe side (a
 * copy of every read), if Node renames `parser` (present from Node 0.x to 26).
 */
export function onlyParserReads(socket: Socket): boolean {
  return (
    (socket as Socket & { parser?: unknown }).parser != null && socket.listenerCount('data') === 1
  );
}

/**
 * Hands a request its connection the way an agent does (Node's own agents and `agent-base` call
 * `ClientRequest#onSocket`), for a connection source that is not an `http.Agent`. Breaks if Node
 * renames `onSocket` (present from Node 0.x to 26).
 */
export function giveSocket(req: ClientRequest, socket: Socket): void {
  (req as ClientRequest & { onSocket(socket: Socket): void }).onSocket(socket);
}

/** The socket properties where `net` keeps its `onread` option, found once. */
let onreadKeys: { buffer: symbol; callback: symbol } | null | undefined;

/**
 * Makes a socket that `net` created for a server read into `buffer` and give each read's length
 * to `callback` (called on the socket), as the `onread` option does for a socket one creates
 * (servers take no such option): `net` keeps the option in the socket's `kBuffer` and `kBufferCb`
 * properties and hands the buffer to the handle's `useUserBuffer`, and its `pause()`/`resume()`
 * stop and start the handle's reads for such a socket. Nothing changes for a socket opened with
 * that `onread` already, nor, the socket reading as before, if Node renames any of them (all there
 * in Node 20, 22, 24 and 26).
 */
export function readInto(
  socket: Socket,
  buffer: Buffer,
  callback: (this: Socket, bytes: number) => boolean,
): void {
  if (onreadKeys === undefined) {
    const own = Object.getOwnPropertySymbols(socket);
    const named = (name: string) => own.find((key) => key.description === name);
    const [bufferKey, callbackKey] = [named('kBuffer'), named('kBufferCb')];
    onreadKeys = bufferKey && callbackKey ? { buffer: bufferKey, callback: callbackKey } : null;
  }
  const handle = (socket as Socket & { _handle?: { useUserBuffer?(buffer: Buffer): void } })
    ._handle;
  if (onreadKeys === null || typeof handle?.useUserBuffer !== 'function') return;
  const properties = socket as unknown as Record<symbol, unknown>;
  if (properties[onreadKeys.callback] === callback) return;
  handle.useUserBuffer(buffer);
  properties[onreadKeys.buffer] = buffer;
  properties[onreadKeys.callback] = callback;
}
