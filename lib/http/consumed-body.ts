import type { IncomingMessage } from 'node:http';
import { bodyParserRead } from '../internals/express';

type ParsedRequest = IncomingMessage & { body?: unknown };

/** A request body that has to be sent from `req.body` because a body parser already read the stream. */
export type ConsumedBody =
  | { readonly kind: 'resend'; readonly body: Buffer }
  | { readonly kind: 'lost'; readonly reason: string };

/** True when something (a body parser) has read the request stream. */
function isBodyConsumed(req: IncomingMessage): boolean {
  return bodyParserRead(req) || req.readableEnded;
}

function mediaType(req: IncomingMessage): string {
  return (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
}

const CHARSETS: Record<string, BufferEncoding> = {
  'utf-8': 'utf8',
  utf8: 'utf8',
  'iso-8859-1': 'latin1',
  latin1: 'latin1',
  'us-ascii': 'latin1',
  ascii: 'latin1',
  'utf-16le': 'utf16le',
};

function charsetOf(req: IncomingMessage): BufferEncoding | undefined {
  const match = /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(req.headers['content-type'] ?? '');
  return match ? CHARSETS[match[1]!.toLowerCase()] : 'utf8';
}

/**
 * `application/x-www-form-urlencoded` of what `express.urlencoded()` produced, flat (`querystring`)
 * or nested (`qs`), so that either parser reads back the same value: repeated keys for arrays of
 * values (both parsers make an array of them), `key[]` for a one-value array (only `qs` makes
 * one, and it would read a lone `key=` as a plain value), indices for arrays of objects and
 * brackets for objects (`qs` only).
 */
function formPairs(prefix: string, value: unknown, pairs: [string, string][]): void {
  if (value === undefined) return;
  if (Array.isArray(value)) {
    const nested = value.some((item) => item !== null && typeof item === 'object');
    const key = (index: number): string =>
      nested ? `${prefix}[${index}]` : value.length === 1 ? `${prefix}[]` : prefix;
    value.forEach((item, index) => formPairs(key(index), item, pairs));
  } else if (value !== null && typeof value === 'object') {
    for (const [key, item] of Object.entries(value))
      formPairs(prefix ? `${prefix}[${key}]` : key, item, pairs);
  } else {
    pairs.push([prefix, value === null ? '' : String(value)]);
  }
}

function isJsonType(type: string): boolean {
  return type === 'application/json' || type === 'text/json' || type.endsWith('+json');
}

/** The body re-serialised in the charset its `Content-Type` declares, or why it cannot be. */
function serialise(req: ParsedRequest): Buffer | string {
  const body = req.body;
  if (Buffer.isBuffer(body)) return body;
  const type = mediaType(req);
  const encoding = charsetOf(req);
  if (!encoding) return 'its charset cannot be re-encoded';
  // A string is the text a text parser read (a JSON string from `express.json({ strict: false })`
  // cannot be told from it); any other JSON value, primitives included, is serialised.
  if (typeof body === 'string') return Buffer.from(body, encoding);
  if (isJsonType(type) && body !== undefined) return Buffer.from(JSON.stringify(body), encoding);
  if (body !== null && typeof body === 'object') {
    if (type === 'application/x-www-form-urlencoded') {
      // Percent-encoding is of UTF-8 bytes: a form declared in another charset would be re-coded.
      if (encoding !== 'utf8') return 'a form in a charset other than UTF-8 cannot be re-encoded';
      const pairs: [string, string][] = [];
      formPairs('', body, pairs);
      return Buffer.from(new URLSearchParams(pairs).toString());
    }
    return `a parsed "${type || 'untyped'}" body has no known serialisation`;
  }
  return 'req.body is empty although the request had a body';
}

/**
 * What to send for a request with a body whose stream was already read: the body re-serialised
 * from `req.body`, or why that cannot be done. `undefined` when the stream is unread.
 */
export function consumedBody(req: IncomingMessage): ConsumedBody | undefined {
  if (!isBodyConsumed(req)) return undefined;
  const result = serialise(req as ParsedRequest);
  return typeof result === 'string'
    ? { kind: 'lost', reason: result }
    : { kind: 'resend', body: result };
}
