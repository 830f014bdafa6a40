import type { IncomingMessage } from 'node:http';
import type { PathRewrite } from '../types';

/** A compiled `pathRewrite`: returns the new path (with query), or `undefined` to keep it. */
export type PathRewriter = (path: string, req: IncomingMessage) => string | undefined;

export function compilePathRewrite(
  rewrite: PathRewrite | undefined,
  where: string,
): PathRewriter | undefined {
  if (rewrite === undefined) return undefined;
  if (typeof rewrite === 'function') return rewrite;
  if (typeof rewrite !== 'object' || rewrite === null) {
    throw new TypeError(
      `viaduct: ${where}.pathRewrite is an object of RegExp sources, or a function`,
    );
  }
  const rules = Object.entries(rewrite).map(([source, replacement]): [RegExp, string] => {
    if (typeof replacement !== 'string')
      throw new TypeError(`viaduct: ${where}.pathRewrite["${source}"] must be a string`);
    try {
      return [new RegExp(source), replacement];
    } catch {
      throw new TypeError(`viaduct: ${where}.pathRewrite: "${source}" is not a valid RegExp`);
    }
  });
  return (path) => {
    for (const [pattern, replacement] of rules) {
      if (pattern.test(path)) return path.replace(pattern, replacement);
    }
    return undefined;
  };
}

const ENCODED_SEPARATOR_OR_DOT = /%(2e|2f|5c)/gi;
const DECODED: Record<string, string> = { '2e': '.', '2f': '/', '5c': '\\' };
// `.` and `..`, also with a `;parameter` that some servers strip before resolving (`/..;/admin`).
const DOT_SEGMENT = /^\.\.?(;.*)?$/;

/**
 * True when the path (not the query) has a `.` or `..` segment or a backslash, plain or
 * percent-encoded: such a path means something else to an upstream that normalises it.
 */
export function isUnsafePath(url: string): boolean {
  const queryAt = url.indexOf('?');
  const end = queryAt === -1 ? url.length : queryAt;
  let suspicious = false;
  for (let i = 0; i < end; i++) {
    const code = url.charCodeAt(i);
    if (code === 0x5c) return true; // backslash
    if (code === 0x2e || code === 0x25) suspicious = true; // '.' or '%'
  }
  if (!suspicious) return false;
  const path = url
    .slice(0, end)
    .replace(ENCODED_SEPARATOR_OR_DOT, (_, hex: string) => DECODED[hex.toLowerCase()]!);
  return path.includes('\\') || path.split('/').some((segment) => DOT_SEGMENT.test(segment));
}

export interface PathRule {
  /** The matched table path prefix, `''` when the route has none. */
  readonly prefix: string;
  readonly settings: {
    readonly stripPrefix: boolean;
    readonly pathRewrite: PathRewriter | undefined;
  };
}

/**
 * The route's part of the path sent upstream: the path the middleware sees, then `stripPrefix`,
 * then `pathRewrite`; `undefined` when the result would be unsafe to forward. An upstream's own
 * path goes in front of it ({@link upstreamPath}).
 */
export function forwardedPath(
  url: string,
  rule: PathRule,
  req: IncomingMessage,
): string | undefined {
  if (url.charCodeAt(0) !== 0x2f || isUnsafePath(url)) return undefined;
  let path = url;
  const { stripPrefix, pathRewrite } = rule.settings;
  if (stripPrefix && rule.prefix) {
    path = path.slice(rule.prefix.length);
    if (path.charCodeAt(0) !== 0x2f) path = `/${path}`;
  }
  if (pathRewrite) {
    const rewritten = pathRewrite(path, req);
    if (rewritten !== undefined) {
      path = String(rewritten);
      if (path.charCodeAt(0) !== 0x2f) path = `/${path}`;
      if (isUnsafePath(path)) return undefined;
    }
  }
  return path;
}

/** The path sent to an upstream: its own path, then the route's path, repeated slashes merged. */
export function upstreamPath(basePath: string, path: string): string {
  return mergeSlashes(basePath + path);
}

/** Repeated slashes in the path (not the query) merged into one, as nginx's `merge_slashes` does. */
function mergeSlashes(url: string): string {
  const double = url.indexOf('//');
  if (double === -1) return url;
  const queryAt = url.indexOf('?');
  if (queryAt !== -1 && queryAt < double) return url;
  const end = queryAt === -1 ? url.length : queryAt;
  return url.slice(0, end).replace(/\/{2,}/g, '/') + url.slice(end);
}
