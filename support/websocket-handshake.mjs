// A WebSocket opening handshake written on the wire (RFC 6455 §4), for the tests and the bench's
// upgrade client alike.

/** The `Sec-WebSocket-Key` that {@link handshake} sends: RFC 6455's sample nonce. */
const HANDSHAKE_KEY = 'dGhlIHNhbXBsZSBub25jZQ==';
/** The `Sec-WebSocket-Accept` a WebSocket server answers to {@link HANDSHAKE_KEY} (RFC 6455, 1.3). */
export const HANDSHAKE_ACCEPT = 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=';
/** A raw upstream's 101 to {@link handshake}. */
export const SWITCHING_PROTOCOLS = `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${HANDSHAKE_ACCEPT}\r\n\r\n`;

/** A WebSocket handshake request as raw bytes. */
export function handshake(path, headers = {}) {
  const lines = {
    host: '127.0.0.1',
    upgrade: 'websocket',
    connection: 'Upgrade',
    'sec-websocket-key': HANDSHAKE_KEY,
    'sec-websocket-version': '13',
    ...headers,
  };
  let text = `GET ${path} HTTP/1.1\r\n`;
  for (const [name, value] of Object.entries(lines))
    if (value !== undefined) text += `${name}: ${value}\r\n`;
  return `${text}\r\n`;
}
