import {
  STATUS_CODES,
  type IncomingMessage,
  type OutgoingHttpHeaders,
  type ServerResponse,
} from 'node:http';
import type { Duplex } from 'node:stream';
import type { ProxyError } from './proxy-error';
import { writeRawResponse } from './raw-response';

const JSON_RANGE = /json/i;
const WEIGHT = /^\s*q\s*=/i;

/**
 * Whether the client's `Accept` prefers JSON: a JSON type weighs more than every `text/` type, or
 * as much and is listed first (`application/json, text/plain, *\/*` is JSON; a browser's is not).
 */
export function prefersJson(accept: string | undefined): boolean {
  if (!accept || !JSON_RANGE.test(accept)) return false;
  let json = 0;
  let text = 0;
  for (const range of accept.split(',')) {
    const [type = '', ...params] = range.split(';');
    // The weight parameter's name is case-insensitive, with optional whitespace around `=`.
    const q = params.find((p) => WEIGHT.test(p));
    const weight = q === undefined ? 1 : Number(q.slice(q.indexOf('=') + 1).trim()) || 0;
    const mediaType = type.trim().toLowerCase();
    // Strictly greater: the first range listed wins a tie.
    if (JSON_RANGE.test(mediaType)) {
      if (weight > json && weight > text) json = weight;
    } else if (mediaType.startsWith('text/')) {
      if (weight > text && weight > json) text = weight;
    }
  }
  return json > text;
}

interface ErrorBody {
  readonly contentType: string;
  readonly body: string;
}

function errorBody(error: ProxyError, accept: string | undefined): ErrorBody {
  const reason = STATUS_CODES[error.status] ?? 'Error';
  if (prefersJson(accept)) {
    return {
      contentType: 'application/json; charset=utf-8',
      body: JSON.stringify({ error: reason, status: error.status, message: error.publicMessage }),
    };
  }
  return {
    contentType: 'text/plain; charset=utf-8',
    body: `${error.status} ${reason}: ${error.publicMessage}\n`,
  };
}

/**
 * Writes the proxy-made answer to `error`, the one writer of them: to a response (its header
 * policy, if any, is applied by the exchange's hook), or to an upgrade's raw socket, which is
 * then closed (`applyPolicy` sets its headers). A response whose head went out already can only
 * be cut.
 */
export function writeErrorAnswer(
  client: ServerResponse | Duplex,
  error: ProxyError,
  req: IncomingMessage,
  applyPolicy?: (headers: OutgoingHttpHeaders) => void,
): void {
  const { contentType, body } = errorBody(error, req.headers.accept);
  if (!('writeHead' in client)) {
    const headers: OutgoingHttpHeaders = { 'content-type': contentType };
    applyPolicy?.(headers);
    writeRawResponse(client, error.status, headers, body);
  } else if (client.headersSent) {
    client.destroy();
  } else {
    client.statusCode = error.status;
    client.setHeader('content-type', contentType);
    client.setHeader('content-length', Buffer.byteLength(body));
    client.end(body);
  }
}
