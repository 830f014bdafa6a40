const OPCODE_CLOSE = 0x8;
/** The code reported for a Close frame that carries none (RFC 6455 §7.1.5). */
export const NO_STATUS_CODE = 1005;

/**
 * Where one direction of a WebSocket tunnel stands in its stream of frames (RFC 6455 §5.2): it reads
 * each frame header, skips payloads by length, and notes the code of the first Close frame. Its
 * state is a handful of numbers, so that following every chunk allocates nothing, and a header or
 * a close code split across chunks is read as it arrives.
 */
export class FrameCursor {
  /** Header bytes of the current frame read so far; 0 between headers. */
  private headerRead = 0;
  /** Where the extended payload length ends in the header (2, 4 or 10), from its second byte. */
  private lengthEnd = 2;
  /** The whole header's length (the masking key follows the length). */
  private headerLength = 2;
  private opcode = 0;
  /** The payload length, built byte by byte for the 16- and 64-bit forms. */
  private payloadLength = 0;
  /** The masking key (first byte highest): a Close frame's code from a client is read through it. */
  private maskKey = 0;
  /** Payload bytes of the current frame still to pass. */
  private payloadLeft = 0;
  /** Payload bytes of the current Close frame passed so far, while its code is read. */
  private closeRead = 0;
  private closeCodeHigh = 0;
  /** The code of the first Close frame that came this way, once read; 0 before. */
  closeCode = 0;

  /** True between frames: a frame of our own may go in here. */
  get atBoundary(): boolean {
    return this.headerRead === 0 && this.payloadLeft === 0;
  }

  /**
   * Follows `chunk` from offset `from`. With `untilBoundary`, stops at the next frame boundary and
   * returns its offset (`from` when already at one); else, or when the chunk ends first, returns
   * `chunk.length`.
   */
  advance(chunk: Buffer, from: number, untilBoundary: boolean): number {
    let at = from;
    const end = chunk.length;
    while (at < end) {
      if (untilBoundary && this.atBoundary) return at;
      if (this.payloadLeft > 0) {
        const passed = Math.min(this.payloadLeft, end - at);
        if (this.opcode === OPCODE_CLOSE && this.closeCode === 0)
          this.readCloseCode(chunk, at, passed);
        this.payloadLeft -= passed;
        at += passed;
      } else {
        this.readHeaderByte(chunk[at]!);
        at++;
      }
    }
    return end;
  }

  private readHeaderByte(byte: number): void {
    const index = this.headerRead++;
    if (index === 0) {
      this.opcode = byte & 0x0f;
      this.maskKey = 0;
      return;
    }
    if (index === 1) {
      const length = byte & 0x7f;
      this.lengthEnd = length === 126 ? 4 : length === 127 ? 10 : 2;
      this.headerLength = this.lengthEnd + (byte & 0x80 ? 4 : 0);
      this.payloadLength = this.lengthEnd === 2 ? length : 0;
    } else if (index < this.lengthEnd) {
      this.payloadLength = this.payloadLength * 256 + byte;
    } else {
      this.maskKey = ((this.maskKey << 8) | byte) >>> 0;
    }
    if (this.headerRead === this.headerLength) this.startPayload();
  }

  private startPayload(): void {
    this.headerRead = 0;
    this.payloadLeft = this.payloadLength;
    this.closeRead = 0;
    if (this.opcode === OPCODE_CLOSE && this.payloadLength === 0 && this.closeCode === 0)
      this.closeCode = NO_STATUS_CODE;
  }

  /** Reads what of a Close frame's two code bytes lies in `chunk[at, at + passed)`. */
  private readCloseCode(chunk: Buffer, at: number, passed: number): void {
    for (let i = 0; i < passed && this.closeRead < 2; i++) {
      const byte = chunk[at + i]! ^ ((this.maskKey >>> (24 - 8 * this.closeRead)) & 0xff);
      if (this.closeRead++ === 0) this.closeCodeHigh = byte;
      else this.closeCode = this.closeCodeHigh * 256 + byte;
    }
  }
}
