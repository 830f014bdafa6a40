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

/** Where a tunnel socket's reads go: to `reader`, once the tunnel set one. */
interface DirectReads {
  reader: DirectReader | undefined;
}

/** The reads of each handshake connection, for the tunnel it may carry. */
const handshakeReads = new WeakMap<Socket, DirectReads>();
/** Every tunnel's sockets read into it; each read is copied out before the next can start. */
const tunnelBuffer = Buffer.allocUnsafe(READ_BUFFER_BYTES);

/**
 * One read of a tunnel's `socket`, copied out of the shared buffer into one just as long (a slice
 * of Node's buffer pool for a WebSocket message): a write that does not complete at once keeps
 * what it was given, which the next read would overwrite. The copy goes to the reader
 * directly, or, before there is one, while chunks wait in the socket's stream or while anything
 * else listens to it, into the stream as Node pushes its own reads.
 */
function copyOut(socket: Socket, reads: DirectReads, bytes: number): boolean {
  const chunk = Buffer.from(tunnelBuffer.subarray(0, bytes));
  const { reader } = reads;
  if (reader === undefined || socket.readableLength !== 0 || socket.listenerCount('data') !== 1)
    return socket.push(chunk);
  reader(chunk);
  return true;
}

/**
 * A connection for a plain-HTTP upgrade handshake (`options` is changed in place), opened with
 * `net`'s `onread` option: Node's HTTP client reads the handshake's response from its stream, and
 * the tunnel, once {@link readDirectly} gives it the reads, takes them without the trip through
 * that stream and its `nextTick`, and without a fresh 64 KiB buffer per read (docs/performance.md).
 */
export function handshakeConnection(options: TcpNetConnectOpts): Socket {
  const reads: DirectReads = { reader: undefined };
  options.onread = {
    buffer: tunnelBuffer,
    callback: (bytes: number): boolean => copyOut(socket, reads, bytes),
  };
  const socket = createConnection(options);
  handshakeReads.set(socket, reads);
  return socket;
}

/**
 * Gives `reader` each read of `socket`, one side of an open tunnel, while the tunnel's own `data`
 * listener is the only one: on a {@link handshakeConnection}, through its `onread`; on any other
 * plain TCP socket (the client's, accepted by a server, which takes no `onread`), through
 * {@link readInto}. Left as it is where neither applies: a TLS socket takes no `onread`.
 */
export function readDirectly(socket: Duplex, reader: DirectReader): void {
  const reads = handshakeReads.get(socket as Socket);
  if (reads !== undefined) {
    reads.reader = reader;
  } else if (socket instanceof Socket && !(socket instanceof TLSSocket)) {
    const own: DirectReads = { reader };
    readInto(socket, tunnelBuffer, (bytes) => copyOut(socket, own, bytes));
  }
}
