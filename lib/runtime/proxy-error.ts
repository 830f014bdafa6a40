/**
 * Every error the proxy answers with itself (or cuts a connection for): its status, and the
 * sentence a client may see (no addresses, no internals). When each is raised is in the README.
 */
const ERRORS = {
  EBADPATH: [400, 'The request path is not allowed.'], // dot-segments, backslashes, not origin-form
  EBADHEADER: [400, 'A request header could not be forwarded.'], // a header rule gave an unwritable value
  EBADUPGRADE: [
    400,
    'Only WebSocket upgrades (GET with Upgrade: websocket and Sec-WebSocket-Key) are proxied.',
  ],
  EFORBIDDENORIGIN: [403, 'This origin may not open a WebSocket here.'],
  ENOWS: [404, 'WebSockets are not proxied on this route.'],
  ENOROUTE: [404, 'No route for this request.'], // an upgrade claimed before an async router found none
  EBODYLOST: [500, 'The request body was read by a body parser and cannot be re-sent.'],
  EINTERNAL: [500, 'The proxy failed to handle the request.'], // a router, rewrite or rule function threw
  EUNSUPPORTEDTE: [501, 'Only the chunked transfer coding is supported.'],
  EUPSTREAM: [502, 'The upstream server could not be reached.'], // refused, unreachable, reset, DNS, TLS
  EUPSTREAMABORTED: [502, 'The upstream server aborted the response.'], // stopped mid-response
  EBADRESPONSE: [502, 'The upstream server sent a response that cannot be relayed.'], // a stray 101, a coding but chunked
  ENOUPSTREAM: [502, 'No upstream server is available.'], // all of the pool down, or its tries used up
  ETUNNELLIMIT: [503, 'Too many open WebSockets on this route; try again later.'],
  ESHUTDOWN: [503, 'The proxy is shutting down.'],
  ECONNECTTIMEOUT: [504, 'The upstream server did not accept the connection in time.'],
  EREADTIMEOUT: [504, 'The upstream server did not answer in time.'],
} as const satisfies Record<string, readonly [number, string]>;

/** Why the proxy answered with an error of its own (or cut a connection). */
export type ProxyErrorCode = keyof typeof ERRORS;

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
    super(detail ? `${ERRORS[code][1]} (${detail})` : ERRORS[code][1], options);
    this.name = 'ProxyError';
    this.status = ERRORS[code][0];
  }

  /** The sentence a client may see: no addresses, no internals. */
  get publicMessage(): string {
    return ERRORS[this.code][1];
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
  if (code && TIMEOUT_CODES.has(code))
    return new ProxyError('ECONNECTTIMEOUT', detail, { cause: error });
  if (code && REQUEST_CONSTRUCTION_CODES.has(code))
    return new ProxyError('EINTERNAL', detail, { cause: error });
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
