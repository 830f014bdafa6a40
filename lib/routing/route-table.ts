import type { IncomingMessage } from 'node:http';
import { defaultPort } from '../headers/forwarding';
import { buildRoute, type Route, type RouteFactory } from './route';
import type { RouteValue } from '../types';

interface Entry {
  readonly port: string | undefined;
  readonly prefix: string;
  readonly route: Route;
}

interface ParsedKey {
  readonly hostname: string | undefined;
  readonly port: string | undefined;
  /** `''` matches every path. */
  readonly prefix: string;
}

/** Trailing slashes are not part of a prefix: `'/api/'` and `'/api//'` are `'/api'`. */
function normalisePrefix(path: string): string {
  return path.replace(/\/+$/, '');
}

/** A host name as a key may give it: no whitespace, and an IPv6 address only in brackets. */
function validHost(hostname: string, port: string | undefined): boolean {
  if (!hostname || /\s/.test(hostname) || (hostname.includes(':') && !hostname.startsWith('[')))
    return false;
  return port === undefined || (/^\d+$/.test(port) && Number(port) <= 65_535);
}

function splitHost(host: string): [hostname: string, port: string | undefined] {
  const lower = host.toLowerCase();
  const colon = lower.lastIndexOf(':');
  if (colon === -1 || lower.lastIndexOf(']') > colon) return [lower, undefined];
  return [lower.slice(0, colon), lower.slice(colon + 1)];
}

export function parseKey(key: string): ParsedKey {
  if (key.startsWith('/'))
    return { hostname: undefined, port: undefined, prefix: normalisePrefix(key) };
  const slash = key.indexOf('/');
  const [hostname, port] = splitHost(slash === -1 ? key : key.slice(0, slash));
  if (!validHost(hostname, port)) {
    throw new TypeError(
      `viaduct: routes["${key}"]: a key is '/path', 'host', 'host:port' or 'host/path' (an IPv6 address in brackets: '[::1]:8080')`,
    );
  }
  return { hostname, port, prefix: slash === -1 ? '' : normalisePrefix(key.slice(slash)) };
}

/** A path prefix matches at a segment boundary: `/api` matches `/api`, `/api/x`, `/api?q`, never `/apix`. */
export function prefixMatches(prefix: string, url: string): boolean {
  if (prefix === '') return true;
  if (!url.startsWith(prefix)) return false;
  const next = url.charCodeAt(prefix.length);
  return Number.isNaN(next) || next === 0x2f || next === 0x3f; // end, '/', '?'
}

// Longest prefix first; between equal prefixes, a key naming the port first.
function bySpecificity(a: Entry, b: Entry): number {
  return (
    b.prefix.length - a.prefix.length || Number(b.port !== undefined) - Number(a.port !== undefined)
  );
}

function firstMatch(
  entries: readonly Entry[],
  url: string,
  port: string | undefined,
): Route | undefined {
  for (const entry of entries) {
    if ((entry.port === undefined || entry.port === port) && prefixMatches(entry.prefix, url))
      return entry.route;
  }
  return undefined;
}

/**
 * The route table, compiled once. Most specific wins whatever the key order: host+path, then
 * host, then path; among paths the longest prefix; then the `target` fallback.
 */
export class RouteTable {
  private readonly byHost = new Map<string, Entry[]>();
  private readonly byPath: Entry[] = [];

  constructor(
    routes: Record<string, RouteValue> | undefined,
    private readonly fallback: Route | undefined,
    factory: RouteFactory,
  ) {
    if (routes === undefined) return;
    if (typeof routes !== 'object' || routes === null)
      throw new TypeError('viaduct: routes must be an object');
    for (const [key, value] of Object.entries(routes)) {
      const parsed = parseKey(key);
      const entry: Entry = {
        port: parsed.port,
        prefix: parsed.prefix,
        route: buildRoute(factory, key, parsed.prefix, value, `routes["${key}"]`),
      };
      if (parsed.hostname === undefined) {
        this.byPath.push(entry);
      } else {
        const entries = this.byHost.get(parsed.hostname) ?? [];
        entries.push(entry);
        this.byHost.set(parsed.hostname, entries);
      }
    }
    this.byPath.sort(bySpecificity);
    for (const entries of this.byHost.values()) entries.sort(bySpecificity);
  }

  match(req: IncomingMessage): Route | undefined {
    return this.matchAt(req.url ?? '/', req);
  }

  /** The route of `req` were its URL `url` (for a look at a mount-relative URL without changing `req`). */
  matchAt(url: string, req: IncomingMessage): Route | undefined {
    const host = req.headers.host;
    if (this.byHost.size > 0 && host) {
      const [hostname, port] = splitHost(host);
      const entries = this.byHost.get(hostname);
      if (entries) {
        const route = firstMatch(entries, url, port ?? defaultPort(req));
        if (route) return route;
      }
    }
    return firstMatch(this.byPath, url, undefined) ?? this.fallback;
  }
}
