/**
 * What viaduct relies on in Express, Connect and their body parsers beyond their documented API.
 *
 * `reachesProxy`: whether an upgrade dispatched through an app is one that viaduct serves, asked when a middleware
 * answered it before any proxy claimed it, while other `upgrade` listeners (socket.io, a dev
 * server's HMR) may still answer. Only then must the middleware's answer reach the socket; an
 * upgrade no viaduct route takes belongs to the other listeners, however late they answer.
 *
 * It reads the app's middleware stacks the way their routers match them, without running
 * anything: Express 4 and 5 apps and routers (their `Layer`s and routes) and Connect apps (their
 * `{ route, handle }` entries), down to each viaduct proxy, whose route table is asked about the
 * path as it would see it. Internals of Express's and Connect's routers, read-only: a stack this
 * cannot read, or an Express sub-app (mounted through a closure that hides it), counts as one that
 * viaduct may serve, so that an answer is never lost where viaduct might have been the one to give it.
 */
import type { IncomingMessage } from 'node:http';

/** For a viaduct proxy: whether a route of it would take `req` at `url`; `undefined` for any other handler. */
export type ProxyRouteCheck = (
  handler: unknown,
  req: IncomingMessage,
  url: string,
) => boolean | undefined;

/** A `Layer` of Express 4's router (`regexp`) or of `router` 2, Express 5's (`matchers`). */
interface RouterLayer {
  readonly handle?: unknown;
  readonly name?: string;
  readonly route?: {
    readonly stack?: readonly RouterLayer[];
    readonly methods?: Record<string, boolean>;
  };
  readonly method?: string;
  readonly regexp?: RegExp & { fast_slash?: boolean; fast_star?: boolean };
  readonly matchers?: ReadonlyArray<(path: string) => false | { path: string }>;
  readonly slash?: boolean;
}

/** An entry of a Connect app's stack. */
interface ConnectEntry {
  readonly route: string;
  readonly handle: unknown;
}

type Stack = ReadonlyArray<RouterLayer | ConnectEntry>;

// Nested routers deeper than this are not read: taken as possibly serving.
const DEEPEST = 16;

/** What a router would match of `path` for this layer: the matched prefix, or `undefined`. */
function layerMatch(layer: RouterLayer, path: string): string | undefined {
  if (layer.regexp) {
    if (layer.regexp.fast_slash) return '';
    if (layer.regexp.fast_star) return path;
    return layer.regexp.exec(path)?.[0];
  }
  if (layer.slash) return '';
  for (const matcher of layer.matchers ?? []) {
    const match = matcher(path);
    if (match) return match.path;
  }
  return undefined;
}

/**
 * The URL a mounted handler sees once the matched `prefix` of `path` (the URL's path) is trimmed,
 * as Express and Connect trim it; `undefined` when `prefix` does not end at a segment boundary.
 */
function afterPrefix(url: string, path: string, prefix: string): string | undefined {
  if (prefix.length === 0) return url;
  const next = path[prefix.length];
  if (next !== undefined && next !== '/' && next !== '.') return undefined;
  const rest = url.slice(prefix.length);
  return rest.startsWith('/') ? rest : `/${rest}`;
}

/** A route layer (`app.get(path, …)`) takes an upgrade's GET when it handles GET or all methods. */
function routeTakesGet(route: NonNullable<RouterLayer['route']>): boolean {
  return route.methods === undefined || route.methods.get === true || route.methods._all === true;
}

/** The middleware stack of an Express app or router, or of a Connect app; `undefined` when there is none to read. */
function stackOf(handler: object): Stack | undefined {
  const app = handler as {
    stack?: unknown;
    _router?: { stack?: unknown };
    lazyrouter?: unknown;
    router?: { stack?: unknown };
    handle?: unknown;
    set?: unknown;
  };
  if (Array.isArray(app.stack)) return app.stack as Stack;
  // Express 4 creates its router with the first middleware; Express 5's `router` getter creates
  // it when read, as the app's own `handle` would.
  if (typeof app.lazyrouter === 'function')
    return Array.isArray(app._router?.stack) ? (app._router.stack as Stack) : [];
  if (
    typeof app.handle === 'function' &&
    typeof app.set === 'function' &&
    Array.isArray(app.router?.stack)
  )
    return app.router.stack as Stack;
  return undefined;
}

function isConnectEntry(entry: RouterLayer | ConnectEntry): entry is ConnectEntry {
  return typeof (entry as ConnectEntry).route === 'string';
}

function entryServes(
  entry: RouterLayer | ConnectEntry,
  req: IncomingMessage,
  path: string,
  url: string,
  depth: number,
  check: ProxyRouteCheck,
): boolean {
  if (isConnectEntry(entry)) {
    // Connect matches its routes case-insensitively.
    if (!path.toLowerCase().startsWith(entry.route.toLowerCase())) return false;
    const rest = afterPrefix(url, path, entry.route);
    return rest !== undefined && serves(entry.handle, req, rest, depth + 1, check);
  }
  const matched = layerMatch(entry, path);
  if (matched === undefined) return false;
  if (entry.route) {
    return (
      routeTakesGet(entry.route) &&
      (entry.route.stack ?? []).some(
        (layer) =>
          (layer.method === undefined || layer.method === 'get') &&
          serves(layer.handle, req, url, depth + 1, check),
      )
    );
  }
  // An Express sub-app, mounted through a closure that hides it.
  if (entry.name === 'mounted_app') return true;
  const rest = afterPrefix(url, path, matched);
  return rest !== undefined && serves(entry.handle, req, rest, depth + 1, check);
}

function serves(
  handler: unknown,
  req: IncomingMessage,
  url: string,
  depth: number,
  check: ProxyRouteCheck,
): boolean {
  const proxied = check(handler, req, url);
  if (proxied !== undefined) return proxied;
  if (typeof handler !== 'function' && (typeof handler !== 'object' || handler === null))
    return false;
  const stack = stackOf(handler);
  // A plain middleware function: not a proxy, and nothing behind it.
  if (stack === undefined) return false;
  if (depth > DEEPEST) return true;
  const queryAt = url.indexOf('?');
  const path = queryAt === -1 ? url : url.slice(0, queryAt);
  return stack.some((entry) => entryServes(entry, req, path, url, depth, check));
}

/**
 * True when a viaduct route in `app` would take the upgrade `req` arriving at `url` (the URL as
 * the app received it), or when part of the app cannot be read. `check` tells a proxy's answer.
 */
export function reachesProxy(
  app: unknown,
  req: IncomingMessage,
  url: string,
  check: ProxyRouteCheck,
): boolean {
  return serves(app, req, url, 0, check);
}

/**
 * The tunnel keeps `req` (its events carry it), and with it whatever the framework hung on it for
 * the dispatch: the stand-in response, the router's `next` and through them the whole chain's state.
 */
export function forgetDispatch(req: IncomingMessage): void {
  const decorated = req as IncomingMessage & { res?: unknown; next?: unknown };
  if (decorated.res !== undefined) decorated.res = undefined;
  if (decorated.next !== undefined) decorated.next = undefined;
}

/** An Express app: it changes the prototype of each request and response it is given. */
export function isExpressApp(app: unknown): boolean {
  return (
    typeof (app as { request?: unknown }).request === 'object' &&
    typeof (app as { response?: unknown }).response === 'object'
  );
}

/**
 * Whether Express's body parsers (`body-parser`, `express.json()`…) read the request's body: they
 * mark it with `req._body = true`, which is how they tell each other too.
 */
export function bodyParserRead(req: IncomingMessage): boolean {
  return (req as IncomingMessage & { _body?: boolean })._body === true;
}
