const OPCODE_CLOSE = 0x8;

/**
 * Follows WebSocket frame boundaries in one direction of a tunnel, skipping payloads by length,
 * to see which side sends the first close frame: that side ended the conversation, even though
 * the other side (the server, by RFC 6455) closes the TCP connection first.
 */
export class CloseFrameWatcher {
  /** Payload bytes of the current frame still to skip. */
  private skip = 0;
  /** The start of a frame header split across chunks. */
  private partial: Buffer | undefined;

  /** Feeds the next chunk; true once a close frame header was seen. */
  feed(chunk: Buffer): boolean {
    let data = chunk;
    if (this.partial) {
      data = Buffer.concat([this.partial, chunk]);
      this.partial = undefined;
    }
    let at = 0;
    while (at < data.length) {
      if (this.skip > 0) {
        const skipped = Math.min(this.skip, data.length - at);
        this.skip -= skipped;
        at += skipped;
        continue;
      }
      const headerLength = this.headerLength(data, at);
      if (headerLength === undefined || at + headerLength > data.length) {
        this.partial = data.subarray(at);
        return false;
      }
      if ((data[at]! & 0x0f) === OPCODE_CLOSE) return true;
      this.skip = this.payloadLength(data, at);
      at += headerLength;
    }
    return false;
  }

  /** Bytes of the frame header at `at`, or `undefined` when its first two bytes are not here yet. */
  private headerLength(data: Buffer, at: number): number | undefined {
    if (data.length - at < 2) return undefined;
    const second = data[at + 1]!;
    const length = second & 0x7f;
    const extended = length === 126 ? 2 : length === 127 ? 8 : 0;
    return 2 + extended + (second & 0x80 ? 4 : 0);
  }

  private payloadLength(data: Buffer, at: number): number {
    const length = data[at + 1]! & 0x7f;
    if (length === 126) return data.readUInt16BE(at + 2);
    if (length === 127) return Number(data.readBigUInt64BE(at + 2));
    return length;
  }
}
