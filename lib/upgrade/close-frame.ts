import { randomFillSync } from 'node:crypto';

const OPCODE_CLOSE_FIN = 0x88;
/** RFC 6455 §7.4.1: the endpoint is going away (a server shutting down). */
export const GOING_AWAY = 1001;

/**
 * A WebSocket Close frame with `code` and a short `reason` (at most 123 bytes of UTF-8), as an
 * endpoint sends it: unmasked from a server (to the client), masked with a fresh random key from
 * a client (to the upstream), RFC 6455 §5.3. Never compressed: control frames carry no RSV bits.
 */
export function closeFrame(code: number, reason: string, masked: boolean): Buffer {
  const text = Buffer.from(reason);
  const length = 2 + text.length;
  const keyAt = 2;
  const payloadAt = masked ? 6 : 2;
  const frame = Buffer.allocUnsafe(payloadAt + length);
  frame[0] = OPCODE_CLOSE_FIN;
  frame[1] = (masked ? 0x80 : 0) | length;
  frame.writeUInt16BE(code, payloadAt);
  text.copy(frame, payloadAt + 2);
  if (masked) {
    randomFillSync(frame, keyAt, 4);
    for (let i = 0; i < length; i++) frame[payloadAt + i]! ^= frame[keyAt + (i & 3)]!;
  }
  return frame;
}
