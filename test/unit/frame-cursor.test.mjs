// lib/upgrade/frame-cursor.ts and lib/upgrade/close-frame.ts: following WebSocket frame boundaries
// (RFC 6455 §5.2) through arbitrary chunking, reading the first Close's code, and the proxy's own
// Close frames.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { FrameCursor } from '../../dist/upgrade/frame-cursor.js';
import { closeFrame } from '../../dist/upgrade/close-frame.js';

const TEXT = 0x1;
const BINARY = 0x2;
const CONTINUATION = 0x0;
const CLOSE = 0x8;
const PING = 0x9;
const PONG = 0xa;

/**
 * One frame on the wire. `mask`: a 4-byte key (array or Buffer), or undefined for an unmasked
 * frame; `fin` false for a fragment; `rsv1` for a compressed message's first frame.
 */
function frame(opcode, payload = Buffer.alloc(0), { mask, fin = true, rsv1 = false } = {}) {
  const data = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  const first = (fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | opcode;
  const maskBit = mask ? 0x80 : 0;
  let header;
  if (data.length < 126) {
    header = Buffer.from([first, maskBit | data.length]);
  } else if (data.length < 65536) {
    header = Buffer.alloc(4);
    header[0] = first;
    header[1] = maskBit | 126;
    header.writeUInt16BE(data.length, 2);
  } else {
    header = Buffer.alloc(10);
    header[0] = first;
    header[1] = maskBit | 127;
    header.writeBigUInt64BE(BigInt(data.length), 2);
  }
  if (!mask) return Buffer.concat([header, data]);
  const key = Buffer.from(mask);
  const masked = Buffer.alloc(data.length);
  for (let i = 0; i < data.length; i++) masked[i] = data[i] ^ key[i & 3];
  return Buffer.concat([header, key, masked]);
}

/** A Close frame's payload: the code, then the reason; no code at all when `code` is undefined. */
function closePayload(code, reason = '') {
  if (code === undefined) return Buffer.alloc(0);
  const payload = Buffer.alloc(2 + Buffer.byteLength(reason));
  payload.writeUInt16BE(code, 0);
  payload.write(reason, 2);
  return payload;
}

/** Frames joined into one stream, with the offsets of the boundaries (0, and each frame's end). */
function stream(frames) {
  const boundaries = [0];
  let at = 0;
  for (const f of frames) boundaries.push((at += f.length));
  return { bytes: Buffer.concat(frames), boundaries };
}

/**
 * Feeds `chunks` to a fresh cursor the way a tunnel does while a Close waits for a boundary:
 * `advance(chunk, at, true)` to the next boundary, then on one byte past it. Returns every
 * boundary offset met (in the whole stream) and the cursor.
 */
function boundariesThrough(chunks) {
  const cursor = new FrameCursor();
  const met = [];
  let base = 0;
  for (const chunk of chunks) {
    let at = 0;
    for (;;) {
      const boundary = cursor.advance(chunk, at, true);
      assert.ok(boundary >= at && boundary <= chunk.length, `advance returned ${boundary}`);
      if (boundary < chunk.length)
        assert.ok(cursor.atBoundary, 'advance stopped short of the chunk only at a boundary');
      if (cursor.atBoundary && met.at(-1) !== base + boundary) met.push(base + boundary);
      if (boundary === chunk.length) break;
      // One byte past the boundary: the start of the next frame's header.
      assert.equal(cursor.advance(chunk.subarray(0, boundary + 1), boundary, false), boundary + 1);
      at = boundary + 1;
    }
    base += chunk.length;
  }
  return { met, cursor };
}

/** Cuts `bytes` at the given offsets (sorted, duplicates and 0/length allowed: empty chunks). */
function cut(bytes, offsets) {
  const chunks = [];
  let from = 0;
  for (const offset of offsets) {
    chunks.push(bytes.subarray(from, offset));
    from = offset;
  }
  chunks.push(bytes.subarray(from));
  return chunks;
}

const KEY = [0x37, 0xfa, 0x21, 0x3d];
/** A key that flips every bit of the code's bytes: a cursor that ignored it would read 0xfc16 for 1001. */
const FLIP_KEY = [0xff, 0xff, 0x00, 0x00];

// ---------------------------------------------------------------------------------------------

describe('FrameCursor: header forms', () => {
  const lengths = [0, 1, 125, 126, 127, 1000, 65535, 65536, 70_000];
  for (const length of lengths) {
    for (const mask of [undefined, KEY]) {
      const form = length < 126 ? '7-bit' : length < 65536 ? '16-bit (126)' : '64-bit (127)';
      test(`${form} length ${length}, ${mask ? 'masked' : 'unmasked'}: atBoundary exactly between frames`, () => {
        const payload = Buffer.alloc(length, 0x61);
        const first = frame(BINARY, payload, { mask });
        const headerLength = (length < 126 ? 2 : length < 65536 ? 4 : 10) + (mask ? 4 : 0);
        assert.equal(first.length, headerLength + length, 'the test frame itself');
        const second = frame(TEXT, 'after', { mask });
        const { bytes, boundaries } = stream([first, second]);

        // Byte by byte: at a boundary after exactly the frames' ends, nowhere else.
        const cursor = new FrameCursor();
        assert.equal(cursor.atBoundary, true, 'a fresh cursor is at a boundary');
        const at = [0];
        for (let i = 0; i < bytes.length; i++) {
          assert.equal(cursor.advance(bytes.subarray(i, i + 1), 0, false), 1);
          if (cursor.atBoundary) at.push(i + 1);
        }
        assert.deepEqual(at, boundaries);
        assert.equal(cursor.closeCode, 0, 'no Close came');

        // Whole: one call, at a boundary after it.
        const whole = new FrameCursor();
        assert.equal(whole.advance(bytes, 0, false), bytes.length);
        assert.equal(whole.atBoundary, true);
      });
    }
  }

  test('a 64-bit length above 2^32 uses all eight length bytes', () => {
    const length = 2 ** 32 + 5;
    const header = Buffer.alloc(10);
    header[0] = 0x82;
    header[1] = 127;
    header.writeBigUInt64BE(BigInt(length), 2);
    const cursor = new FrameCursor();
    cursor.advance(header, 0, false);
    assert.equal(cursor.atBoundary, false, 'the payload is to come');
    // Payloads are skipped by length, so 4 GiB of it costs 4096 calls.
    const mebibyte = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < 4096; i++) {
      assert.equal(cursor.advance(mebibyte, 0, true), mebibyte.length);
      assert.equal(cursor.atBoundary, false, `still inside the payload after ${i + 1} MiB`);
    }
    const tail = Buffer.concat([Buffer.alloc(5), frame(TEXT, 'x')]);
    assert.equal(cursor.advance(tail, 0, true), 5, 'the boundary after 2^32 + 5 payload bytes');
    assert.equal(cursor.atBoundary, true);
  });

  test('a 16-bit length of 126 exactly, and a 7-bit 125, read as such (no off-by-one between forms)', () => {
    for (const length of [125, 126]) {
      const f = frame(TEXT, Buffer.alloc(length, 0x62), { mask: KEY });
      const cursor = new FrameCursor();
      assert.equal(cursor.advance(f.subarray(0, f.length - 1), 0, false), f.length - 1);
      assert.equal(cursor.atBoundary, false, `${length}: one byte left`);
      cursor.advance(f, f.length - 1, false);
      assert.equal(cursor.atBoundary, true, `${length}: done`);
    }
  });
});

describe('FrameCursor: advance(chunk, from, untilBoundary)', () => {
  const a = frame(TEXT, 'first frame', { mask: KEY });
  const b = frame(BINARY, Buffer.alloc(300, 7));
  const { bytes } = stream([a, b]);

  test('returns `from` when already at a boundary, and reads nothing', () => {
    const cursor = new FrameCursor();
    assert.equal(cursor.advance(bytes, 0, true), 0);
    assert.equal(cursor.atBoundary, true);
    cursor.advance(bytes.subarray(0, a.length), 0, false);
    assert.equal(
      cursor.advance(bytes, a.length, true),
      a.length,
      'at the boundary between the two',
    );
    assert.equal(cursor.atBoundary, true);
  });

  test('returns the offset of the next boundary, from any offset inside the frame', () => {
    for (let from = 1; from < a.length; from++) {
      const cursor = new FrameCursor();
      cursor.advance(bytes.subarray(0, from), 0, false);
      assert.equal(cursor.atBoundary, false);
      assert.equal(cursor.advance(bytes, from, true), a.length, `from ${from}`);
      assert.equal(cursor.atBoundary, true);
    }
    const cursor = new FrameCursor();
    cursor.advance(bytes.subarray(0, a.length + 1), 0, false);
    assert.equal(
      cursor.advance(bytes, a.length + 1, true),
      bytes.length,
      'the second frame ends the chunk',
    );
    assert.equal(cursor.atBoundary, true);
  });

  test('returns chunk.length when the chunk ends first, inside a header or a payload', () => {
    for (const end of [1, 2, 4, 6, a.length - 1]) {
      const cursor = new FrameCursor();
      cursor.advance(bytes.subarray(0, 1), 0, false);
      const chunk = bytes.subarray(0, end);
      assert.equal(cursor.advance(chunk, Math.min(1, end), true), end, `chunk of ${end}`);
      assert.equal(cursor.atBoundary, end === 0);
    }
  });

  test('without untilBoundary it always returns chunk.length, across boundaries', () => {
    const cursor = new FrameCursor();
    assert.equal(cursor.advance(bytes, 0, false), bytes.length);
    assert.equal(cursor.advance(bytes, bytes.length, false), bytes.length, 'an empty rest');
    assert.equal(cursor.atBoundary, true);
  });
});

// ---------------------------------------------------------------------------------------------

/** Several frames of every kind, masked and not, with a Close (1000 and a reason) and a later Close (1001). */
function mixedFrames() {
  return [
    frame(TEXT, 'hello', { mask: KEY }),
    frame(BINARY, Buffer.alloc(300, 0xab)),
    frame(PING, Buffer.alloc(0), { mask: FLIP_KEY }),
    frame(PONG, 'pong'),
    frame(TEXT, 'frag-', { fin: false, mask: KEY, rsv1: true }),
    frame(PING, 'in between', { mask: KEY }),
    frame(CONTINUATION, 'ment', { mask: KEY }),
    frame(BINARY, Buffer.alloc(0)),
    frame(CLOSE, closePayload(1000, 'normal closure'), { mask: FLIP_KEY }),
    frame(TEXT, 'after the close'),
    frame(CLOSE, closePayload(1001, 'second')),
  ];
}

describe('FrameCursor: every split point', () => {
  test('two chunks, split at every offset: the same boundaries and close code 1000', () => {
    const { bytes, boundaries } = stream(mixedFrames());
    const expected = new Set(boundaries);
    for (let split = 0; split <= bytes.length; split++) {
      const chunks = cut(bytes, [split]);
      const { met, cursor } = boundariesThrough(chunks);
      assert.deepEqual(met, boundaries, `split at ${split}`);
      assert.equal(cursor.closeCode, 1000, `split at ${split}: the first Close's code`);

      // And as a tunnel relays without looking for a boundary.
      const plain = new FrameCursor();
      assert.equal(plain.advance(chunks[0], 0, false), chunks[0].length);
      assert.equal(plain.atBoundary, expected.has(split), `split at ${split}: atBoundary`);
      assert.equal(plain.advance(chunks[1], 0, false), chunks[1].length);
      assert.equal(plain.atBoundary, true);
      assert.equal(plain.closeCode, 1000);
    }
  });

  test('three chunks, split at every pair of offsets (and empty chunks)', () => {
    const frames = [
      frame(TEXT, 'a', { mask: KEY }),
      frame(BINARY, Buffer.alloc(130, 1), { mask: KEY }),
      frame(CLOSE, closePayload(4321, 'bye'), { mask: FLIP_KEY }),
      frame(TEXT, 'z'),
    ];
    const { bytes, boundaries } = stream(frames);
    for (let i = 0; i <= bytes.length; i++) {
      for (let j = i; j <= bytes.length; j++) {
        const { met, cursor } = boundariesThrough(cut(bytes, [i, j]));
        assert.deepEqual(met, boundaries, `split at ${i} and ${j}`);
        assert.equal(cursor.closeCode, 4321, `split at ${i} and ${j}`);
      }
    }
  });

  test('a 64-bit frame among others, split at every offset of its header and around its end', () => {
    const big = frame(BINARY, Buffer.alloc(70_000, 3), { mask: KEY });
    const frames = [frame(TEXT, 'x'), big, frame(CLOSE, closePayload(1011), { mask: KEY })];
    const { bytes, boundaries } = stream(frames);
    const splits = [];
    for (let s = 0; s <= 20; s++) splits.push(s);
    for (let s = bytes.length - 30; s <= bytes.length; s++) splits.push(s);
    for (const split of splits) {
      const { met, cursor } = boundariesThrough(cut(bytes, [split]));
      assert.deepEqual(met, boundaries, `split at ${split}`);
      assert.equal(cursor.closeCode, 1011);
    }
  });

  test('one byte at a time gives the same boundaries and code', () => {
    const { bytes, boundaries } = stream(mixedFrames());
    const offsets = [];
    for (let i = 1; i < bytes.length; i++) offsets.push(i);
    const { met, cursor } = boundariesThrough(cut(bytes, offsets));
    assert.deepEqual(met, boundaries);
    assert.equal(cursor.closeCode, 1000);
  });

  test('property: random frames cut at random offsets give the frames’ boundaries and the first Close’s code', () => {
    const payloadLength = fc.oneof(
      fc.integer({ min: 0, max: 5 }),
      fc.integer({ min: 120, max: 131 }),
      fc.integer({ min: 65530, max: 65540 }),
    );
    const arbFrame = fc.oneof(
      fc.record({
        kind: fc.constant('data'),
        opcode: fc.constantFrom(TEXT, BINARY, CONTINUATION, PING, PONG),
        length: payloadLength,
        fill: fc.integer({ min: 0, max: 255 }),
        mask: fc.option(
          fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 4, maxLength: 4 }),
          {
            nil: undefined,
          },
        ),
        fin: fc.boolean(),
      }),
      fc.record({
        kind: fc.constant('close'),
        code: fc.option(fc.integer({ min: 1000, max: 4999 }), { nil: undefined }),
        reason: fc.string({ maxLength: 20 }),
        mask: fc.option(
          fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 4, maxLength: 4 }),
          {
            nil: undefined,
          },
        ),
      }),
    );
    fc.assert(
      fc.property(
        fc.array(arbFrame, { minLength: 1, maxLength: 8 }),
        fc.array(fc.nat(), { maxLength: 12 }),
        (specs, rawOffsets) => {
          const frames = specs.map((spec) =>
            spec.kind === 'close'
              ? frame(
                  CLOSE,
                  closePayload(spec.code, spec.code === undefined ? '' : spec.reason.slice(0, 20)),
                  { mask: spec.mask },
                )
              : frame(spec.opcode, Buffer.alloc(spec.length, spec.fill), {
                  mask: spec.mask,
                  fin: spec.fin,
                }),
          );
          const firstClose = specs.find((spec) => spec.kind === 'close');
          const expectedCode = firstClose ? (firstClose.code ?? 1005) : 0;
          const { bytes, boundaries } = stream(frames);
          const offsets = rawOffsets.map((n) => n % (bytes.length + 1)).sort((x, y) => x - y);
          const { met, cursor } = boundariesThrough(cut(bytes, offsets));
          assert.deepEqual(met, boundaries);
          assert.equal(cursor.closeCode, expectedCode);
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('FrameCursor: close codes', () => {
  test('the code is read through the mask (a key that flips the code bytes, and others)', () => {
    for (const mask of [FLIP_KEY, KEY, [0, 0, 0, 0], [0x03, 0xe9, 0x03, 0xe9], undefined]) {
      for (const code of [1000, 1001, 1011, 3000, 4999]) {
        const cursor = new FrameCursor();
        cursor.advance(frame(CLOSE, closePayload(code, 'reason'), { mask }), 0, false);
        assert.equal(cursor.closeCode, code, `${code} with key ${JSON.stringify(mask)}`);
        assert.equal(cursor.atBoundary, true);
      }
    }
  });

  test('the code split between its two bytes, masked', () => {
    const f = frame(CLOSE, closePayload(3456, 'r'), { mask: FLIP_KEY });
    const codeAt = 6; // 2 header bytes, 4 key bytes
    const cursor = new FrameCursor();
    cursor.advance(f.subarray(0, codeAt + 1), 0, false);
    assert.equal(cursor.closeCode, 0, 'not known from one byte');
    cursor.advance(f, codeAt + 1, false);
    assert.equal(cursor.closeCode, 3456);
  });

  test('a Close with an empty payload gives 1005, masked or not', () => {
    for (const mask of [undefined, KEY]) {
      const cursor = new FrameCursor();
      cursor.advance(frame(CLOSE, Buffer.alloc(0), { mask }), 0, false);
      assert.equal(cursor.closeCode, 1005);
      assert.equal(cursor.atBoundary, true);
    }
  });

  test('only the first Close’s code is kept', () => {
    const cases = [
      [[closePayload(4000, 'first'), closePayload(1000, 'second')], 4000],
      [[closePayload(undefined), closePayload(1000)], 1005],
      [[closePayload(1002), closePayload(undefined)], 1002],
    ];
    for (const [payloads, code] of cases) {
      const { bytes } = stream(payloads.map((p) => frame(CLOSE, p, { mask: KEY })));
      const cursor = new FrameCursor();
      cursor.advance(bytes, 0, false);
      assert.equal(cursor.closeCode, code);
    }
  });

  test('a data frame carrying close-code-like bytes sets no code; a Close after it does', () => {
    const cursor = new FrameCursor();
    cursor.advance(frame(TEXT, closePayload(1001, 'not a close'), { mask: KEY }), 0, false);
    cursor.advance(frame(BINARY, Buffer.from([0x03, 0xe8])), 0, false);
    cursor.advance(frame(PING, Buffer.from([0x0f, 0xa0])), 0, false);
    assert.equal(cursor.closeCode, 0);
    cursor.advance(frame(CLOSE, closePayload(1008)), 0, false);
    assert.equal(cursor.closeCode, 1008);
  });
});

// ---------------------------------------------------------------------------------------------

/** Unmasks a masked frame of short payload: the key and the payload. */
function unmaskShort(bytes) {
  const length = bytes[1] & 0x7f;
  const key = bytes.subarray(2, 6);
  const payload = Buffer.from(bytes.subarray(6, 6 + length).map((byte, i) => byte ^ key[i & 3]));
  return { key: Buffer.from(key), payload };
}

describe('closeFrame', () => {
  test("closeFrame(1001, 'x', false): exactly 88 03 03 e9 78", () => {
    assert.deepEqual([...closeFrame(1001, 'x', false)], [0x88, 0x03, 0x03, 0xe9, 0x78]);
  });

  test('unmasked, with an empty and a multi-byte UTF-8 reason', () => {
    assert.deepEqual([...closeFrame(1001, '', false)], [0x88, 0x02, 0x03, 0xe9]);
    const frameBytes = closeFrame(4000, 'é✓', false);
    assert.deepEqual(
      [...frameBytes],
      [0x88, 0x07, 0x0f, 0xa0, ...Buffer.from('é✓')],
      'the length counts UTF-8 bytes',
    );
  });

  test('the longest reason (123 bytes) still has a 7-bit length', () => {
    const reason = 'r'.repeat(123);
    const unmasked = closeFrame(1001, reason, false);
    assert.equal(unmasked[1], 125);
    assert.equal(unmasked.length, 127);
    assert.equal(unmasked.subarray(4).toString(), reason);
    const masked = closeFrame(1001, reason, true);
    assert.equal(masked[1], 0x80 | 125);
    assert.equal(masked.length, 131);
    assert.equal(unmaskShort(masked).payload.subarray(2).toString(), reason);
  });

  test('masked: FIN + Close, the mask bit, a 4-byte key, and it unmasks to the code and reason', () => {
    const bytes = closeFrame(1001, 'server shutting down', true);
    assert.equal(bytes[0], 0x88, 'FIN, no RSV bits, opcode 8');
    assert.equal(bytes[1] & 0x80, 0x80, 'mask bit');
    assert.equal(bytes[1] & 0x7f, 2 + 'server shutting down'.length);
    assert.equal(bytes.length, 2 + 4 + 2 + 'server shutting down'.length);
    const { payload } = unmaskShort(bytes);
    assert.equal(payload.readUInt16BE(0), 1001);
    assert.equal(payload.subarray(2).toString(), 'server shutting down');
  });

  test('masked: a fresh random key each time', () => {
    const keys = new Set();
    for (let i = 0; i < 16; i++)
      keys.add(unmaskShort(closeFrame(1001, 'x', true)).key.toString('hex'));
    assert.ok(keys.size >= 15, `16 frames, ${keys.size} distinct keys`);
  });

  test('the FrameCursor reads its code, masked and not, and is at a boundary after it', () => {
    for (const masked of [false, true]) {
      for (const [code, reason] of [
        [1001, 'idle timeout'],
        [1000, ''],
        [4000, 'tunnel lifetime reached'],
      ]) {
        const cursor = new FrameCursor();
        const bytes = Buffer.concat([
          frame(TEXT, 'before', { mask: KEY }),
          closeFrame(code, reason, masked),
        ]);
        assert.equal(cursor.advance(bytes, 0, false), bytes.length);
        assert.equal(cursor.closeCode, code, `${code} ${masked ? 'masked' : 'unmasked'}`);
        assert.equal(cursor.atBoundary, true);
      }
    }
  });
});
