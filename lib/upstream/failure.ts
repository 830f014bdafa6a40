import { ProxyError } from '../runtime/proxy-error';

/**
 * What an upstream failure was, for passive health and the next upstream: `connect` (the
 * connection could not be made: refused, unreachable, DNS, TLS, `timeouts.connect`), `reset` (the
 * connection broke before a response), `read` (`timeouts.read` before any response byte), or
 * `undefined` for an error that is not the upstream's (a request Node refused to build).
 */
export type UpstreamFailure = 'connect' | 'reset' | 'read';

const CONNECT_CODES: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EHOSTDOWN',
  'ENETDOWN',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EAI_FAIL',
  'EADDRNOTAVAIL',
  'ETIMEDOUT',
]);
const RESET_CODES: ReadonlySet<string> = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED']);
// A TLS handshake that failed: nothing of the request was sent.
const TLS_CODE = /^ERR_(SSL|TLS)_|CERT|SELF_SIGNED|UNABLE_TO_VERIFY|HOSTNAME_MISMATCH/;

export function failureOf(error: unknown): UpstreamFailure | undefined {
  if (error instanceof ProxyError) {
    if (error.code === 'ECONNECTTIMEOUT') return 'connect';
    if (error.code === 'EREADTIMEOUT') return 'read';
    return error.code === 'EUPSTREAM' ? failureOf(error.cause) : undefined;
  }
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (code === undefined) return undefined;
  if (CONNECT_CODES.has(code) || TLS_CODE.test(code)) return 'connect';
  return RESET_CODES.has(code) ? 'reset' : undefined;
}

/** RFC 9110 §9.2.2: methods whose repetition has the same effect as one request. */
export function isIdempotent(method: string | undefined): boolean {
  switch (method) {
    case 'GET':
    case 'HEAD':
    case 'OPTIONS':
    case 'TRACE':
    case 'PUT':
    case 'DELETE':
      return true;
    default:
      return false;
  }
}
