import type { Agent } from 'node:http';
import { createConnection, type Socket, type TcpNetConnectOpts } from 'node:net';
import { onlyParserReads } from '../internals/node';

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
