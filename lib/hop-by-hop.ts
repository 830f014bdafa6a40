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

// Connection tokens that are options, not header names; skipping them keeps the common case allocation-free.
const CONNECTION_OPTIONS: ReadonlySet<string> = new Set(['close', 'keep-alive', 'upgrade']);

/** The header names listed in a `Connection` value, which are hop-by-hop as well. */
export function connectionListed(connection: string | string[] | undefined): ReadonlySet<string> | undefined {
  if (connection === undefined) return undefined;
  let listed: Set<string> | undefined;
  for (const raw of String(connection).split(',')) {
    const token = raw.trim().toLowerCase();
    if (token && !CONNECTION_OPTIONS.has(token)) (listed ??= new Set()).add(token);
  }
  return listed;
}

export function isHopByHop(name: string, listed: ReadonlySet<string> | undefined): boolean {
  return HOP_BY_HOP.has(name) || (listed !== undefined && listed.has(name));
}

/** Removes hop-by-hop headers, and those the `Connection` header lists, from a parsed header object in place. */
export function stripHopByHop(headers: IncomingHttpHeaders): void {
  const listed = connectionListed(headers.connection);
  for (const name of Object.keys(headers)) {
    if (isHopByHop(name, listed)) delete headers[name];
  }
}
