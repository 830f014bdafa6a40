// The client side of one WebSocket upgrade, written on the wire: the handshake, a close frame,
// the upstream's close frame back through the tunnel, then the connection's end. The `ws` client
// spent about as much CPU per upgrade as the front it measured (600 µs), on the same two cores, and
// upgrades/s hardly told the fronts apart; this one spends half as much (see BENCHMARKS.md).
import net from 'node:net';
// The tests' handshake: its key is a nonce against caches that replay handshakes, and one key for
// every handshake does for a benchmark.
import { HANDSHAKE_ACCEPT, handshake } from '../support/websocket-handshake.mjs';

// Close with status 1000; a client's frames are masked.
const MASK = [0x11, 0x22, 0x33, 0x44];
const CLIENT_CLOSE = Buffer.from([0x88, 0x82, ...MASK, 0x03 ^ MASK[0], 0xe8 ^ MASK[1]]);
const SERVER_CLOSE = Buffer.from([0x88, 0x02, 0x03, 0xe8]);

/** The handshake request for `url` (`ws://host:port/path`), built once per run. */
export function handshakeFor(url) {
  const { host, hostname, port, pathname } = new URL(url);
  return {
    hostname,
    port: Number(port),
    request: Buffer.from(handshake(pathname, { host }), 'latin1'),
  };
}

/**
 * Opens a tunnel and closes it as a WebSocket client does. Resolves once the connection has
 * closed; rejects unless the upstream's 101 (its `Sec-WebSocket-Accept`) and its close frame came back.
 */
export function upgradeAndClose({ hostname, port, request }) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, hostname);
    let received;
    let headEnd = -1;
    socket.on('data', (chunk) => {
      received = received === undefined ? chunk : Buffer.concat([received, chunk]);
      if (headEnd !== -1) return;
      headEnd = received.indexOf('\r\n\r\n');
      if (headEnd === -1) return;
      const head = received.toString('latin1', 0, headEnd);
      if (head.startsWith('HTTP/1.1 101') && head.includes(HANDSHAKE_ACCEPT))
        socket.write(CLIENT_CLOSE);
      else socket.destroy(new Error(`no WebSocket handshake came back:\n${head}`));
    });
    socket.once('error', reject);
    socket.once('close', () => {
      if (headEnd !== -1 && received.subarray(headEnd + 4).equals(SERVER_CLOSE)) resolve();
      else
        reject(
          new Error(
            `the tunnel closed without the upstream's close frame: ${JSON.stringify(received?.toString('latin1'))}`,
          ),
        );
    });
    socket.write(request);
  });
}
