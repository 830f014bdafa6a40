import type { IncomingHttpHeaders } from 'node:http';

// Connection tokens that are options, not header names: the common values, answered without splitting.
const CONNECTION_OPTIONS: ReadonlySet<string> = new Set(['close', 'keep-alive', 'upgrade']);

/** The header names listed in a `Connection` value, which are hop-by-hop as well. */
export function connectionListed(
  connection: string | string[] | undefined,
): ReadonlySet<string> | undefined {
  if (connection === undefined) return undefined;
  const value = String(connection);
  // The usual values as sent: answered without trimming, lowering or splitting.
  if (CONNECTION_OPTIONS.has(value)) return undefined;
  if (!value.includes(',') && CONNECTION_OPTIONS.has(value.trim().toLowerCase())) return undefined;
  let listed: Set<string> | undefined;
  for (const raw of value.split(',')) {
    const token = raw.trim().toLowerCase();
    if (token && !CONNECTION_OPTIONS.has(token)) (listed ??= new Set()).add(token);
  }
  return listed;
}

/**
 * Headers that describe one connection, never the message: dropped in both directions, with those
 * `listed` in `Connection`. A `switch`, not a `Set`: names fresh from the parser would be hashed on
 * every lookup, where the cases are mostly told apart by length.
 */
export function isHopByHop(name: string, listed: ReadonlySet<string> | undefined): boolean {
  switch (name) {
    case 'connection':
    case 'keep-alive':
    case 'proxy-connection':
    case 'te':
    case 'trailer':
    case 'transfer-encoding':
    case 'upgrade':
    case 'proxy-authorization':
    case 'proxy-authenticate':
      return true;
    default:
      return listed?.has(name) === true;
  }
}

/** A copy of parsed headers without the hop-by-hop ones and those their `Connection` lists. */
export function endToEnd(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const listed = connectionListed(headers.connection);
  const copy: IncomingHttpHeaders = {};
  for (const name in headers) {
    if (!isHopByHop(name, listed)) copy[name] = headers[name];
  }
  return copy;
}

/**
 * The end-to-end headers of a response for the client. A `426 Upgrade Required` keeps its
 * `Upgrade`: it must name the protocols to switch to (RFC 9110 §15.5.22).
 */
export function responseEndToEnd(
  headers: IncomingHttpHeaders,
  status: number | undefined,
): IncomingHttpHeaders {
  const copy = endToEnd(headers);
  if (status === 426 && headers.upgrade !== undefined) copy.upgrade = headers.upgrade;
  return copy;
}

/** The `Connection` of a response to the client; one that carries `Upgrade` lists it too (RFC 9110 §7.8). */
export function connectionOf(headers: IncomingHttpHeaders, keepAlive: boolean): string {
  const persistence = keepAlive ? 'keep-alive' : 'close';
  return headers.upgrade === undefined ? persistence : `upgrade, ${persistence}`;
}
