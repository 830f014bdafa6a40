import type { IncomingMessage, OutgoingHttpHeaders } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { isToken } from './token';

export type ForwardedMode = 'x-forwarded' | 'forwarded' | false;

/** Incoming headers that claim where a request came from: only kept from a trusted peer. (A `switch`: see `isHopByHop`.) */
export function isForwardingHeader(name: string): boolean {
  switch (name) {
    case 'forwarded':
    case 'x-forwarded-for':
    case 'x-forwarded-proto':
    case 'x-forwarded-host':
    case 'x-forwarded-port':
      return true;
    default:
      return false;
  }
}

type ExpressTrust = (address: string, hop: number) => boolean;

interface ExpressApp {
  get(setting: 'trust proxy fn'): ExpressTrust | undefined;
}

/** `trustProxy` when set, else Express's `trust proxy` verdict on the connecting address, else false. */
export function isTrusted(req: IncomingMessage, setting: boolean | undefined): boolean {
  if (setting !== undefined) return setting;
  const app = (req as IncomingMessage & { app?: ExpressApp }).app;
  if (typeof app?.get !== 'function') return false;
  const trust = app.get('trust proxy fn');
  return typeof trust === 'function' && trust(req.socket.remoteAddress ?? '', 0);
}

/**
 * The client's address: the connecting one, or from a trusted peer the one it forwards for —
 * Express's `req.ip` where Express resolved it with its own `trust proxy`, else the first
 * `X-Forwarded-For` entry.
 */
export function clientAddress(req: IncomingMessage, trustProxy: boolean | undefined): string {
  const connecting = req.socket.remoteAddress ?? '';
  if (!isTrusted(req, trustProxy)) return connecting;
  const ip = (req as IncomingMessage & { ip?: unknown }).ip;
  if (trustProxy === undefined && typeof ip === 'string') return ip;
  const forwardedFor = req.headers['x-forwarded-for'];
  const first = typeof forwardedFor === 'string' ? forwardedFor.split(',', 1)[0]!.trim() : '';
  return first || connecting;
}

function protoOf(req: IncomingMessage): 'http' | 'https' {
  return (req.socket as TLSSocket).encrypted ? 'https' : 'http';
}

/** The port a client reaches us on when its `Host` names none: that of its protocol. */
export function defaultPort(req: IncomingMessage): '80' | '443' {
  return protoOf(req) === 'https' ? '443' : '80';
}

function portOf(host: string | undefined, req: IncomingMessage): string {
  const colon = host ? host.lastIndexOf(':') : -1;
  // After the last colon, and not inside an IPv6 literal ("[::1]" has no port).
  if (colon !== -1 && host!.indexOf(']', colon) === -1 && colon < host!.length - 1)
    return host!.slice(colon + 1);
  return defaultPort(req);
}

function appended(previous: string | string[] | number | undefined, value: string): string {
  return previous === undefined ? value : `${String(previous)}, ${value}`;
}

// RFC 7239: a value that is not a token is a quoted-string; IPv6 nodes are bracketed and quoted.
function forwardedValue(value: string): string {
  return isToken(value) ? value : `"${value.replace(/["\\]/g, '\\$&')}"`;
}

function forwardedNode(address: string | undefined): string {
  if (!address) return 'unknown';
  return address.includes(':') ? `"[${address}]"` : address;
}

/**
 * Adds the forwarding headers of `mode` to the upstream headers. `headers` already holds the
 * incoming forwarding headers when the peer is trusted (they are appended to) and none otherwise.
 */
export function addForwarding(
  headers: OutgoingHttpHeaders,
  req: IncomingMessage,
  mode: ForwardedMode,
): void {
  if (mode === false) return;
  const proto = protoOf(req);
  const host = req.headers.host;
  if (mode === 'forwarded') {
    let element = `for=${forwardedNode(req.socket.remoteAddress)}`;
    if (host) element += `;host=${forwardedValue(host)}`;
    element += `;proto=${proto}`;
    headers.forwarded = appended(headers.forwarded, element);
    return;
  }
  headers['x-forwarded-for'] = appended(
    headers['x-forwarded-for'],
    req.socket.remoteAddress ?? 'unknown',
  );
  headers['x-forwarded-proto'] = appended(headers['x-forwarded-proto'], proto);
  if (host) headers['x-forwarded-host'] = appended(headers['x-forwarded-host'], host);
  headers['x-forwarded-port'] = appended(headers['x-forwarded-port'], portOf(host, req));
}
