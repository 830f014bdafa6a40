import { STATUS_CODES } from 'node:http';

/** Why the proxy answered with an error of its own (or cut a connection). */
export type ProxyErrorCode =
  | 'EBADPATH' // dot-segments, backslashes, or not an origin-form path
  | 'EBADHEADER' // a header rule produced an unwritable value
  | 'EBADUPGRADE' // not a WebSocket handshake
  | 'EUNSUPPORTEDTE' // a transfer coding other than chunked
  | 'EFORBIDDENORIGIN'
  | 'ENOWS' // the route does not tunnel upgrades
  | 'ENOROUTE' // an upgrade was claimed but no route matched
  | 'ETUNNELLIMIT'
  | 'ESHUTDOWN'
  | 'EBODYLOST' // a body parser consumed a body that cannot be re-sent
  | 'EINTERNAL' // a router, rewrite or middleware failed
  | 'EUPSTREAM' // refused, unreachable, reset or a TLS failure
  | 'ECONNECTTIMEOUT'
  | 'EREADTIMEOUT'
  | 'EUPSTREAMABORTED' // the upstream stopped in the middle of a response
  | 'EBADRESPONSE' // a response that cannot be relayed as framed: a 101 nobody asked for, a transfer coding but chunked
  | 'ECLIENTABORTED';

const MESSAGES: Record<ProxyErrorCode, string> = {
  EBADPATH: 'The request path is not allowed.',
  EBADHEADER: 'A request header could not be forwarded.',
  EBADUPGRADE: 'Only WebSocket upgrades (GET with Upgrade: websocket and Sec-WebSocket-Key) are proxied.',
  EUNSUPPORTEDTE: 'Only the chunked transfer coding is supported.',
  EFORBIDDENORIGIN: 'This origin may not open a WebSocket here.',
  ENOWS: 'WebSockets are not proxied on this route.',
  ENOROUTE: 'No route for this request.',
  ETUNNELLIMIT: 'Too many open WebSockets on this route; try again later.',
  ESHUTDOWN: 'The proxy is shutting down.',
  EBODYLOST: 'The request body was read by a body parser and cannot be re-sent.',
  EINTERNAL: 'The proxy failed to handle the request.',
  EUPSTREAM: 'The upstream server could not be reached.',
  ECONNECTTIMEOUT: 'The upstream server did not accept the connection in time.',
  EREADTIMEOUT: 'The upstream server did not answer in time.',
  EUPSTREAMABORTED: 'The upstream server aborted the response.',
  EBADRESPONSE: 'The upstream server sent a response that cannot be relayed.',
  ECLIENTABORTED: 'The client went away.',
};

const STATUS: Record<ProxyErrorCode, number> = {
  EBADPATH: 400,
  EBADHEADER: 400,
  EBADUPGRADE: 400,
  EUNSUPPORTEDTE: 501,
  EFORBIDDENORIGIN: 403,
  ENOWS: 404,
  ENOROUTE: 404,
  ETUNNELLIMIT: 503,
  ESHUTDOWN: 503,
  EBODYLOST: 500,
  EINTERNAL: 500,
  EUPSTREAM: 502,
  ECONNECTTIMEOUT: 504,
  EREADTIMEOUT: 504,
  EUPSTREAMABORTED: 502,
  EBADRESPONSE: 502,
  ECLIENTABORTED: 499,
};

/** An error the proxy reports: on the `error` event, in the log, and (by status) to the client. */
export class ProxyError extends Error {
  /** The status the client was (or would have been) sent. */
  readonly status: number;

  constructor(
    readonly code: ProxyErrorCode,
    /** Detail for the log; never sent to the client. */
    detail?: string,
    options?: { cause?: unknown },
  ) {
    super(detail ? `${MESSAGES[code]} (${detail})` : MESSAGES[code], options);
    this.name = 'ProxyError';
    this.status = STATUS[code];
  }

  /** The sentence a client may see: no addresses, no internals. */
  get publicMessage(): string {
    return MESSAGES[this.code];
  }
}

const TIMEOUT_CODES = new Set(['ETIMEDOUT', 'ESOCKETTIMEDOUT']);
// Node refusing to build the upstream request from what we gave it: our failure, not the upstream's.
const REQUEST_CONSTRUCTION_CODES = new Set([
  'ERR_INVALID_ARG_TYPE',
  'ERR_INVALID_ARG_VALUE',
  'ERR_INVALID_CHAR',
  'ERR_INVALID_HTTP_TOKEN',
  'ERR_HTTP_INVALID_HEADER_VALUE',
  'ERR_UNESCAPED_CHARACTERS',
  'ERR_INVALID_PROTOCOL',
  'ERR_HTTP_HEADERS_SENT',
]);

/** Classifies an error from the engine or a socket as a {@link ProxyError}. */
export function toProxyError(error: unknown, fallback: ProxyErrorCode = 'EUPSTREAM'): ProxyError {
  if (error instanceof ProxyError) return error;
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  const message = error instanceof Error ? error.message : String(error);
  const detail = code ? `${code}: ${message}` : message;
  if (code && TIMEOUT_CODES.has(code)) return new ProxyError('ECONNECTTIMEOUT', detail, { cause: error });
  if (code && REQUEST_CONSTRUCTION_CODES.has(code)) return new ProxyError('EINTERNAL', detail, { cause: error });
  return new ProxyError(fallback, detail, { cause: error });
}

/** Runs a step that may throw (a router, a rewrite, a rule function): what it throws becomes a ProxyError. */
export function attempt<T>(step: () => T | ProxyError): T | ProxyError {
  try {
    return step();
  } catch (error) {
    return toProxyError(error, 'EINTERNAL');
  }
}

const JSON_RANGE = /json/i;

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
    const q = params.find((p) => p.trim().startsWith('q='));
    const weight = q === undefined ? 1 : Number(q.trim().slice(2)) || 0;
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

export interface ErrorBody {
  readonly contentType: string;
  readonly body: string;
}

export function errorBody(error: ProxyError, accept: string | undefined): ErrorBody {
  const reason = STATUS_CODES[error.status] ?? 'Error';
  if (prefersJson(accept)) {
    return {
      contentType: 'application/json; charset=utf-8',
      body: JSON.stringify({ error: reason, status: error.status, message: error.publicMessage }),
    };
  }
  return { contentType: 'text/plain; charset=utf-8', body: `${error.status} ${reason}: ${error.publicMessage}\n` };
}
