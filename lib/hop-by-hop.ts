import type { IncomingHttpHeaders } from 'node:http';

/** Headers that describe one connection, never the message: dropped in both directions. */
const HOP_BY_HOP: ReadonlySet<string> = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'proxy-authorization',
  'proxy-authenticate',
]);

// Connection tokens that are options, not header names: the common values, answered without splitting.
const CONNECTION_OPTIONS: ReadonlySet<string> = new Set(['close', 'keep-alive', 'upgrade']);

/** The header names listed in a `Connection` value, which are hop-by-hop as well. */
export function connectionListed(connection: string | string[] | undefined): ReadonlySet<string> | undefined {
  if (connection === undefined) return undefined;
  const value = String(connection);
  if (!value.includes(',') && CONNECTION_OPTIONS.has(value.trim().toLowerCase())) return undefined;
  let listed: Set<string> | undefined;
  for (const raw of value.split(',')) {
    const token = raw.trim().toLowerCase();
    if (token && !CONNECTION_OPTIONS.has(token)) (listed ??= new Set()).add(token);
  }
  return listed;
}

export function isHopByHop(name: string, listed: ReadonlySet<string> | undefined): boolean {
  return HOP_BY_HOP.has(name) || (listed !== undefined && listed.has(name));
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
