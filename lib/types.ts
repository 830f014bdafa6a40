import type { Agent, ClientRequest, IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';

/** An upstream given by address: `{ host, port, protocol }`, or a Unix socket: `{ socketPath }`. */
export type TargetObject =
  | { host: string; port?: number | string; protocol?: string; path?: string }
  | { socketPath: string; protocol?: string; path?: string };

/**
 * Where a route sends its traffic: `'http://127.0.0.1:4000/base'`, a `URL`, or a {@link TargetObject}.
 * The target's own path is prepended to every forwarded path.
 */
export type Target = string | URL | TargetObject;

/** One upstream of a pool with its share of the traffic: `weight` (a whole number ≥ 1, default 1). */
export interface WeightedTarget {
  target: Target;
  weight?: number;
}

/**
 * One upstream, or a pool of them: `['http://10.0.0.1:4000', { target: 'http://10.0.0.2:4000', weight: 2 }]`.
 * A single target is a pool of one.
 */
export type Targets = Target | readonly (Target | WeightedTarget)[];

/** How a pool spreads requests and tunnels over its upstreams. */
export type Balance = 'round-robin' | 'least-connections' | 'hash';

/** Active health checks of a pool's upstreams. */
export interface HealthCheckOptions {
  /** The path requested with `GET` from every upstream. */
  path: string;
  /** Milliseconds between checks. Default 5 000. */
  interval?: number;
  /** Milliseconds to wait for an answer. Default 2 000. */
  timeout?: number;
}

/** A header value as Node accepts it. */
export type HeaderValue = string | number | readonly string[];

/**
 * One header rule: a value to set, `null` to remove the header, or a function of the incoming
 * request returning a value, `null` (remove) or `undefined` (leave the header as it is).
 */
export type HeaderRule =
  | HeaderValue
  | null
  | ((req: IncomingMessage) => HeaderValue | null | undefined);

/** Header rules by header name (any case). */
export type HeaderRules = Record<string, HeaderRule>;

/**
 * Header policy. `request` rules apply to what is sent upstream (HTTP requests and upgrade
 * requests); `response` rules apply to what the client receives (proxied responses, responses the
 * proxy makes itself, and the `101 Switching Protocols` of a tunnel).
 */
export interface HeaderPolicyOptions {
  request?: HeaderRules;
  response?: HeaderRules;
}

/**
 * `{ '^/old': '/new' }`: the first rule whose RegExp matches the path (with its query) replaces
 * it; or a function returning the new path, or `undefined` to keep it.
 */
export type PathRewrite =
  | Record<string, string>
  | ((path: string, req: IncomingMessage) => string | undefined);

/** An allowed `Origin`: an exact origin (case-insensitive) or a RegExp tested against it. */
export type OriginRule = string | RegExp;

/** Origins that may open tunnels; a function decides per request (`origin` is `undefined` when absent). */
export type AllowedOrigins =
  | OriginRule
  | readonly OriginRule[]
  | ((origin: string | undefined, req: IncomingMessage) => boolean);

/** Timeouts in milliseconds. */
export interface TimeoutOptions {
  /** Upstream TCP/TLS connect. On expiry: 504. Default 10 000. */
  connect?: number;
  /**
   * HTTP: upstream silent this long gives 504 before response headers and cuts the connection after.
   * Tunnel: no byte in either direction for this long ends it (Close frames, code 1001). Default 60 000.
   */
  read?: number;
  /**
   * The longest life of a tunnel: when it is reached, the tunnel is ended as at `close()` (Close
   * frames, code 1001, reason `expired`), e.g. to spread clients again after pool changes. Default: none.
   */
  tunnel?: number;
}

/** `Set-Cookie` domain/path rewriting, as in `http-proxy`: a replacement for every value, or a map. */
export type CookieRewrite = false | string | Record<string, string>;

/** Settings shared by the HTTP and the upgrade path. Top level sets the defaults; a route may override. */
export interface RouteSettings {
  /** Tunnel upgrades on this route; `false` answers an upgrade with 404. Default `true`. */
  ws?: boolean;
  /** Send the target's host as the upstream `Host`. Default `false`. */
  changeOrigin?: boolean;
  /** Remove the matched table path prefix before forwarding. Default `false`. */
  stripPrefix?: boolean;
  /** Rewrite the forwarded path (after `stripPrefix`). */
  pathRewrite?: PathRewrite;
  /** Header policy; a route's rules override the top-level rules of the same header name. */
  headers?: HeaderPolicyOptions;
  /** Forwarding headers to add: `'x-forwarded'` (default), `'forwarded'` (RFC 7239) or `false`. */
  forwarded?: 'x-forwarded' | 'forwarded' | false;
  /**
   * Keep and append to incoming forwarding headers (`true`) or replace them (`false`).
   * Default: Express's `trust proxy` setting for the connecting address, else `false`.
   */
  trustProxy?: boolean;
  /** Connect and read timeouts; a route may override either one. */
  timeouts?: TimeoutOptions;
  /** `Origin` check for upgrades; refused: 403. Default: every origin. */
  allowedOrigins?: AllowedOrigins;
  /** Concurrent tunnels allowed on the route; over it: 503. Default: no limit. */
  maxTunnels?: number;
  /** Verify the upstream's TLS certificate. Default `true`. */
  secure?: boolean;
  /** Certificate authorities trusted for an `https` upstream. */
  ca?: string | Buffer | Array<string | Buffer>;
  /** Agent for upstream connections. Default: a keep-alive agent owned by the proxy. */
  agent?: Agent | false;
  cookieDomainRewrite?: CookieRewrite;
  cookiePathRewrite?: CookieRewrite;
  /** Rewrite the host of redirect `Location`s pointing at the target to the request's host. */
  autoRewrite?: boolean;
  /**
   * How a pool spreads the load: smooth weighted round-robin (as nginx), the fewest requests and
   * tunnels in flight per weight, or a consistent hash of `hashKey`. Default `'round-robin'`.
   */
  balance?: Balance;
  /**
   * For `balance: 'hash'`: the key that picks a request's upstream (a session cookie, for
   * socket.io's long-polling); `undefined` for round-robin. Default: the client address (as
   * `trustProxy` resolves it).
   */
  hashKey?: (req: IncomingMessage) => string | undefined;
  /** Failures within `failTimeout` that leave an upstream out for `failTimeout`. Default 1; 0: never. */
  maxFails?: number;
  /** Milliseconds: the window for `maxFails`, and how long an upstream is left out. Default 10 000. */
  failTimeout?: number;
  /** How often a request or upgrade is passed to the next upstream. Default: the pool's size − 1. */
  retries?: number;
  /** A `GET path` to every upstream each `interval`: non-2xx or no answer marks it down, 2xx up. */
  healthCheck?: HealthCheckOptions;
}

/** A table entry given as options: a target plus any per-route settings. */
export interface RouteOptions extends RouteSettings {
  target: Targets;
}

/** A route table value: a target, or route options. */
export type RouteValue = Targets | RouteOptions;

/** What a `router` returns: a route, or `undefined`/`null` to fall through to the table. */
export type RouterResult = RouteValue | undefined | null;

/** Consulted first for every request and upgrade; may be async. */
export type Router = (req: IncomingMessage) => RouterResult | Promise<RouterResult>;

/** Milliseconds of one proxied request: to a fresh upstream connection (absent for a reused one), to the response's head, in all. */
export interface RequestTimings {
  connect?: number;
  firstByte?: number;
  total: number;
}

/** Published on `viaduct:request:start` (`node:diagnostics_channel`) as a request goes to its first upstream. */
export interface RequestStartMessage {
  route: string;
  upstream: string;
  req: IncomingMessage;
}

/** Published on `viaduct:request:end` once the request's response is over (or cut). */
export interface RequestEndMessage {
  route: string;
  /** The upstream of the last try; absent when none was tried. */
  upstream?: string;
  req: IncomingMessage;
  /** The status the client got (of a cut response: the one its head carried). */
  status: number;
  /** The proxy's own error, when it answered with one or cut the response. */
  error?: Error;
  /** Upstreams tried. */
  tries: number;
  timings: RequestTimings;
}

/** One line of the access log for a request, as the `accessLog` function gets it. */
export interface RequestLogEntry {
  type: 'request';
  /** The client's address (as `trustProxy` resolves it). */
  client: string;
  method: string;
  /** The path and query the client asked for. */
  path: string;
  status: number;
  /** Bytes sent to the client, head and body. */
  bytes: number;
  /** Milliseconds in all. */
  ms: number;
  route: string;
  upstream?: string;
  /** Milliseconds to the upstream's response head. */
  upstreamFirstByte?: number;
  tries: number;
}

/** One line of the access log for a tunnel, when it closed. */
export interface TunnelLogEntry {
  type: 'tunnel';
  client: string;
  path: string;
  route: string;
  upstream: string;
  /** Milliseconds from the 101 to the end. */
  duration: number;
  bytesFromClient: number;
  bytesFromUpstream: number;
  reason: TunnelCloseReason;
  code: TunnelCloseCodes;
}

/** `true`: an `info` line per request and per tunnel through `logger`; a function gets the fields instead. */
export type AccessLog = boolean | ((entry: RequestLogEntry | TunnelLogEntry) => void);

/** Anything with these four methods: `console`, pino, winston… */
export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

/** Options of {@link createProxy}. */
export interface ProxyOptions extends RouteSettings {
  /** The route used when no table key matches. */
  target?: Targets;
  /** Keys: `'/path'`, `'host'`, `'host:port'`, `'host/path'`. The most specific match wins. */
  routes?: Record<string, RouteValue>;
  router?: Router;
  /** Where errors and diagnostics go. Default: `console.warn`/`console.error`; debug and info are dropped. */
  logger?: Logger;
  /** One line per request and per tunnel. Default `false`. */
  accessLog?: AccessLog;
}

export interface RequestStats {
  /** Requests the proxy took. */
  total: number;
  /** Requests in flight. */
  active: number;
  /** Requests answered with a proxy-made error (400, 500, 502, 503, 504) or cut mid-response. */
  errors: number;
}

export interface TunnelStats {
  /** Tunnels opened (upstream answered 101). */
  total: number;
  /** Tunnels open now. */
  active: number;
  /** Upgrades taken by a route that did not become a tunnel (refused by the proxy or the upstream, or failed). */
  rejected: number;
}

/** One upstream of a route's pool. */
export interface UpstreamStats {
  /** Requests and upgrades sent to it (each try counts). */
  requests: number;
  /** Tunnels opened through it. */
  tunnels: number;
  /** Requests and tunnels in flight on it. */
  active: number;
  /** Failures counted against it (refused, reset, unreachable, connect or read timeout before headers). */
  fails: number;
  /** Left out: by `maxFails`/`failTimeout` until a probe succeeds, or by the health check. */
  down: boolean;
}

export interface RouteStats {
  requests: RequestStats;
  tunnels: TunnelStats;
  /** By upstream URL. */
  upstreams: Record<string, UpstreamStats>;
}

/** Totals, plus the same per route key (`'default'` for `target`, `'router'` for `router` results). */
export interface ProxyStats {
  requests: RequestStats;
  tunnels: TunnelStats;
  routes: Record<string, RouteStats>;
}

/** Payload of the `upstreamDown` and `upstreamUp` events. */
export interface UpstreamEvent {
  /** The route key. */
  route: string;
  /** The upstream's URL. */
  upstream: string;
}

/** Why a tunnel ended. */
/**
 * Why a tunnel ended: the side whose Close frame came first (or, without one, whose connection
 * ended first), `idle` (`timeouts.read`), `shutdown` (`close()`), `expired` (`timeouts.tunnel`),
 * or `error` for a socket error.
 */
export type TunnelCloseReason = 'client' | 'upstream' | 'idle' | 'shutdown' | 'expired' | 'error';

/**
 * The close code each side sent first, in its first Close frame (1005 for a Close frame without
 * one); absent for a side that sent none. `proxy` is 1001 when viaduct ended the tunnel itself.
 */
export interface TunnelCloseCodes {
  client?: number;
  upstream?: number;
  proxy?: number;
}

/** Payload of the `open` event. */
export interface TunnelOpenEvent {
  route: string;
  /** The upstream's URL. */
  upstream: string;
  req: IncomingMessage;
  clientSocket: Duplex;
  upstreamSocket: Duplex;
}

/** Payload of the `close` event. */
export interface TunnelCloseEvent {
  route: string;
  /** The upstream's URL. */
  upstream: string;
  req: IncomingMessage;
  reason: TunnelCloseReason;
  /** Milliseconds from the 101 to the end. */
  duration: number;
  /** Bytes the client sent through the tunnel. */
  bytesFromClient: number;
  /** Bytes the upstream sent through the tunnel. */
  bytesFromUpstream: number;
  /** The close code each side sent first. */
  code: TunnelCloseCodes;
  /** Present when `reason` is `'error'`. */
  error?: Error;
}

/** The client side of an exchange: the response on the HTTP path, the raw socket on the upgrade path. */
export type ClientSide = ServerResponse | Duplex;

/** Event listeners of a {@link Proxy}. */
export interface ProxyEvents {
  /** The upstream request was created; headers may still be changed. */
  proxyReq: (proxyReq: ClientRequest, req: IncomingMessage, client: ClientSide) => void;
  /** The upstream answered (for an upgrade: the 101 or the refusal), before anything reaches the client. */
  proxyRes: (proxyRes: IncomingMessage, req: IncomingMessage, client: ClientSide) => void;
  open: (event: TunnelOpenEvent) => void;
  close: (event: TunnelCloseEvent) => void;
  /** An upstream of a pool was left out (passive failures or the health check). */
  upstreamDown: (event: UpstreamEvent) => void;
  /** An upstream that was down serves again. */
  upstreamUp: (event: UpstreamEvent) => void;
  error: (error: Error, req: IncomingMessage, client: ClientSide) => void;
}

/** Options of {@link Proxy.close}. */
export interface CloseOptions {
  /** Milliseconds to let in-flight requests finish before they are aborted. Default 10 000. */
  timeout?: number;
}

/**
 * What {@link createProxy} returns: a middleware for Express, Connect and `node:http`, plus the
 * upgrade handler that uses the same route table.
 */
export interface Proxy {
  (req: IncomingMessage, res: ServerResponse, next?: (err?: unknown) => void): void;
  /** Tunnels the upgrade when a route matches; `true` when a route took the socket. */
  upgrade(req: IncomingMessage, socket: Duplex, head?: Buffer): boolean;
  /** New work gets 503; in-flight requests finish (aborted at `timeout`); tunnels end. */
  close(options?: CloseOptions): Promise<void>;
  stats(): ProxyStats;
  on<E extends keyof ProxyEvents>(event: E, listener: ProxyEvents[E]): this;
  once<E extends keyof ProxyEvents>(event: E, listener: ProxyEvents[E]): this;
  off<E extends keyof ProxyEvents>(event: E, listener: ProxyEvents[E]): this;
  addListener<E extends keyof ProxyEvents>(event: E, listener: ProxyEvents[E]): this;
  removeListener<E extends keyof ProxyEvents>(event: E, listener: ProxyEvents[E]): this;
  removeAllListeners(event?: keyof ProxyEvents): this;
  listenerCount(event: keyof ProxyEvents): number;
}

/** What to do with an upgrade no route took. */
export type UnmatchedUpgrade = 'auto' | 'reject' | 'ignore';

/** Options of {@link attach}. */
export interface AttachOptions {
  /**
   * `'reject'`: answer 404 and close; `'ignore'`: leave the socket to other `upgrade` listeners;
   * `'auto'` (default): ignore when the server has other `upgrade` listeners, else reject.
   */
  unmatched?: UnmatchedUpgrade;
  /** Where failures of the app during an upgrade are logged. Default: `console.error`. */
  logger?: Logger;
}
