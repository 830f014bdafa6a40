// Bodies shared by the driver and the upstreams: slices of one pseudo-random pattern, so that both
// sides can name a body by (seed, size) and a misplaced or shifted slice never hashes the same.
import { createHash } from 'node:crypto';

export const MAX_BODY = 2 * 1024 * 1024;

/** A seeded PRNG (mulberry32): the same sequence for the same seed, in every process. */
export function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function buildPattern(bytes) {
  const words = new Uint32Array(bytes / 4);
  const next = prng(0x5eed);
  for (let i = 0; i < words.length; i++) words[i] = next() * 4294967296;
  return Buffer.from(words.buffer);
}

export const PATTERN = buildPattern(2 * MAX_BODY);

/** `size` bytes of the pattern, starting at a place given by `seed`. */
export function bodySlice(seed, size) {
  if (!(size >= 0 && size <= MAX_BODY)) throw new RangeError(`body size ${size} out of range`);
  const offset = seed % (PATTERN.length - size + 1);
  return PATTERN.subarray(offset, offset + size);
}

export function sha256(buffer) {
  return createHash('sha256').update(buffer).digest('hex');
}
