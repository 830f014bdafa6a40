import { STATUS_CODES, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http';
import type { Duplex } from 'node:stream';

/** Serialises a response head for a socket that no `ServerResponse` owns (the upgrade path). */
export function responseHead(
  status: number,
  statusMessage: string | undefined,
  headers: OutgoingHttpHeaders | IncomingHttpHeaders,
): string {
  let head = `HTTP/1.1 ${status} ${statusMessage || STATUS_CODES[status] || ''}\r\n`;
  for (const name of Object.keys(headers)) {
    const value = headers[name];
    if (value === undefined) continue;
    if (Array.isArray(value)) for (const item of value) head += `${name}: ${item}\r\n`;
    else head += `${name}: ${String(value)}\r\n`;
  }
  return `${head}\r\n`;
}

/** Ends the socket once everything written is flushed, and destroys it then, whatever the peer does. */
export function closeAfterFlush(socket: Duplex): void {
  if (socket.destroyed) return;
  socket.end(() => socket.destroy());
}

/** Writes a complete response to a raw socket and closes it. */
export function writeRawResponse(
  socket: Duplex,
  status: number,
  headers: OutgoingHttpHeaders,
  body: string,
): void {
  if (socket.destroyed || !socket.writable) {
    socket.destroy();
    return;
  }
  headers['content-length'] = Buffer.byteLength(body);
  headers.connection = 'close';
  socket.write(responseHead(status, undefined, headers) + body);
  closeAfterFlush(socket);
}
