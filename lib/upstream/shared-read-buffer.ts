import type { Agent } from 'node:http';
import { createConnection, Socket, type TcpNetConnectOpts } from 'node:net';
import type { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';
import { onlyParserReads, readInto } from '../internals/node';

// What Node allocates for each read of a socket that reads into buffers of its own.
const READ_BUFFER_BYTES = 64 * 1024;

/**
 * Makes `agent`'s connections read into one buffer that all of them share, instead of a fresh
 * 64 KiB one per read, which the parser's copy of each body chunk made a second allocation of
 * every byte, and which the heap gave back to the kernel and faulted in again as GCs freed them:
 * a quarter to two fifths of the front's CPU per 1 MiB response (docs/performance.md). One buffer
 * is enough: each read is handed on before the next one can start, and Node's HTTP parser copies
 * what it keeps (body chunks, header fragments) before it returns. Any other reader of the socket
 * gets a copy of its own.
 */
export function readingIntoSharedBuffer<A extends Agent>(agent: A): A {
  const buffer = Buffer.allocUnsafe(READ_BUFFER_BYTES);
  const connect = (options: TcpNetConnectOpts): Socket => {
    const socket = createConnection({
      ...options,
      onread: {
        buffer,
        callback(bytes: number): boolean {
          const chunk = buffer.subarray(0, bytes);
          socket.emit('data', onlyParserReads(socket) ? chunk : Buffer.from(chunk));
          return true;
        },
      },
    });
    return socket;
  };
  return Object.assign(agent, { createConnection: connect });
}

/** Takes one read of a tunnel's socket: a buffer of its own. */
export type DirectReader = (chunk: Buffer) => void;

/** The reader each tunnel gave its sockets. */
const readers = new WeakMap<Socket, DirectReader>();
/** Every tunnel's sockets read into it; each read is copied out before the next can start. */
const tunnelBuffer = Buffer.allocUnsafe(READ_BUFFER_BYTES);

/**
 * One read of a tunnel's socket (`this`: `net` calls it on the socket), copied out of the shared
 * buffer into one just as long (a slice of Node's buffer pool for a WebSocket message): a write
 * that does not complete at once keeps what it was given, which the next read would overwrite.
 * The copy goes to the socket's reader directly, or, before it has one, while chunks wait in its
 * stream or while anything else listens to it, into the stream as Node pushes its own reads.
 */
function copyOut(this: Socket, bytes: number): boolean {
  const chunk = Buffer.from(tunnelBuffer.subarray(0, bytes));
  const reader = readers.get(this);
  if (reader === undefined || this.readableLength !== 0 || this.listenerCount('data') !== 1)
    return this.push(chunk);
  reader(chunk);
  return true;
}

/** The `onread` option of every handshake connection: one object for all of them. */
const TUNNEL_READS = { buffer: tunnelBuffer, callback: copyOut };

/**
 * A connection for a plain-HTTP upgrade handshake (`options` is changed in place), opened with
 * `net`'s `onread` option: Node's HTTP client reads the handshake's response from its stream, and
 * the tunnel, once {@link readDirectly} gives it the reads, takes them without the trip through
 * that stream and its `nextTick`, and without a fresh 64 KiB buffer per read (docs/performance.md).
 */
export function handshakeConnection(options: TcpNetConnectOpts): Socket {
  options.onread = TUNNEL_READS;
  return createConnection(options);
}

/**
 * Gives `reader` each read of `socket`, one side of an open tunnel, while the tunnel's own `data`
 * listener (`reader` too) is the only one: a {@link handshakeConnection} reads that way already;
 * any other plain TCP socket (the client's, accepted by a server, which takes no `onread`) is
 * made to, through {@link readInto}. A TLS socket is left as it is: it takes no `onread`.
 */
export function readDirectly(socket: Duplex, reader: DirectReader): void {
  if (!(socket instanceof Socket) || socket instanceof TLSSocket) return;
  readers.set(socket, reader);
  readInto(socket, tunnelBuffer, copyOut);
}
