import { EventEmitter } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { ProxyContext, RouteLabel } from '../runtime/context';
import { InFlightList } from '../runtime/in-flight';
import { writeErrorAnswer } from '../runtime/error-answer';
import { ProxyError, attempt, toProxyError } from '../runtime/proxy-error';
import { proxyHttp } from '../http/proxy-http';
import { resolveLogger } from '../runtime/logger';
import { buildRoute, type Route, type RouteFactory } from '../routing/route';
import { RouteTable } from '../routing/route-table';
import { RouteResolver, isPending, type Resolution } from '../routing/route-resolver';
import {
  DEFAULT_SETTINGS,
  SETTING_KEYS,
  checkKeys,
  resolveSettings,
  type ResolvedSettings,
} from '../routing/settings';
import { Observers, type ProxyObserver } from '../runtime/observers';
import { StatsBook } from '../runtime/stats-book';
import { Sweep, type SweepWatch } from '../runtime/sweep';
import { proxyUpgrade } from '../upgrade/proxy-upgrade';
import type {
  ClientSide,
  CloseOptions,
  Logger,
  Proxy,
  ProxyEvents,
  ProxyOptions,
  ProxyStats,
  RouteStats,
  Target,
  Targets,
} from '../types';
import {
  claimDispatched,
  claimSocket,
  dispatchedUpgrade,
  isClaimed,
  type DispatchedUpgrade,
} from '../upgrade/upgrade-claims';
import type { HealthChecker } from '../upstream/health-check';
import type { PoolEvents } from '../upstream/pool';
import { UpstreamAgents } from '../upstream/upstream-agents';

const OPTION_KEYS: ReadonlySet<string> = new Set([
  ...SETTING_KEYS,
  'target',
  'routes',
  'router',
  'logger',
  'accessLog',
]);
const NO_HEAD = Buffer.alloc(0);
const DEFAULT_CLOSE_TIMEOUT = 10_000;

type Next = (err?: unknown) => void;

function toOptions(config: Targets | ProxyOptions): ProxyOptions {
  if (typeof config === 'string' || config instanceof URL || Array.isArray(config))
    return { target: config as Targets };
  if (typeof config !== 'object' || config === null) {
    throw new TypeError(
      'viaduct: createProxy takes a target (URL string, URL, { host, port }, { socketPath }) or options',
    );
  }
  const isOptions = 'target' in config || 'routes' in config || 'router' in config;
  if (!isOptions && ('host' in config || 'socketPath' in config))
    return { target: config as Target };
  return config as ProxyOptions;
}

/** The state behind one `Proxy`: routes, counters, in-flight work and shutdown. */
class ProxyCore implements ProxyContext, RouteFactory, SweepWatch {
  readonly logger: Logger;
  readonly observers: Observers;
  readonly stats = new StatsBook();
  readonly defaults: ResolvedSettings;
  readonly requests = new InFlightList();
  readonly handshakes = new InFlightList();
  readonly tunnels = new InFlightList();
  readonly sweep = new Sweep(this);
  readonly agents = new UpstreamAgents((retireAt) => this.sweep.watchPooled(retireAt));
  closing = false;
  private readonly resolver: RouteResolver;
  private closed: Promise<void> | undefined;
  private onDrained: (() => void) | undefined;
  /** Health checks run while the proxy is open. */
  private readonly healthCheckers = new Set<HealthChecker>();

  constructor(
    options: ProxyOptions,
    private readonly emitter: EventEmitter,
  ) {
    checkKeys(options, OPTION_KEYS, 'createProxy');
    if (
      options.target === undefined &&
      options.routes === undefined &&
      options.router === undefined
    ) {
      throw new TypeError('viaduct: createProxy needs a target, routes or a router');
    }
    if (options.router !== undefined && typeof options.router !== 'function') {
      throw new TypeError('viaduct: router must be a function');
    }
    this.logger = resolveLogger(options.logger);
    if (
      options.accessLog !== undefined &&
      typeof options.accessLog !== 'boolean' &&
      typeof options.accessLog !== 'function'
    ) {
      throw new TypeError('viaduct: accessLog is true, false or a function of each entry');
    }
    this.observers = new Observers(options.accessLog, this.logger);
    this.defaults = resolveSettings(options, DEFAULT_SETTINGS, 'createProxy');
    const fallback =
      options.target === undefined
        ? undefined
        : buildRoute(this, 'default', '', options.target, 'target');
    this.resolver = new RouteResolver(
      new RouteTable(options.routes, fallback, this),
      options.router,
      this,
    );
  }

  statsFor(key: string): RouteStats {
    return this.stats.forKey(key);
  }

  poolEvents(route: RouteLabel): PoolEvents {
    return {
      down: (upstream, why) => {
        this.logger.warn(
          `viaduct: upstream ${upstream.url} of route "${route.key}" is down: ${why}`,
        );
        this.emit('upstreamDown', { route: route.key, upstream: upstream.url });
      },
      up: (upstream, why) => {
        this.logger.info(
          `viaduct: upstream ${upstream.url} of route "${route.key}" is up again: ${why}`,
        );
        this.emit('upstreamUp', { route: route.key, upstream: upstream.url });
      },
    };
  }

  watchHealth(checker: HealthChecker): void {
    if (!this.closing) checker.start(this.healthCheckers);
  }

  emit<E extends keyof ProxyEvents>(event: E, ...args: Parameters<ProxyEvents[E]>): void {
    if (this.emitter.listenerCount(event) === 0) return;
    try {
      this.emitter.emit(event, ...args);
    } catch (error) {
      this.logger.error(
        `viaduct: a "${event}" listener threw: ${error instanceof Error ? error.stack : String(error)}`,
      );
    }
  }

  report(
    error: ProxyError,
    req: IncomingMessage,
    client: ClientSide,
    route: RouteLabel | undefined,
  ): void {
    const where = route ? ` on route "${route.key}" (${route.targetLabel})` : '';
    const line = `viaduct: ${error.status} for ${req.method} ${req.url}${where}: ${error.message}`;
    if (error.status >= 500) this.logger.error(line);
    else this.logger.warn(line);
    this.emit('error', error, req, client);
  }

  /** The sweep's visit of read timeouts of requests and deadlines of handshakes. */
  checkShort(now: number): boolean {
    this.requests.forEach((request) => request.checkDeadline?.(now));
    this.handshakes.forEach((handshake) => handshake.checkDeadline?.(now));
    return this.requests.size > 0 || this.handshakes.size > 0;
  }

  /** The sweep's visit of `share` of the tunnels (the next ones in turn), for their idle timeout and longest life. */
  checkTunnels(now: number, share: number): number {
    this.tunnels.visitSome(Math.ceil(this.tunnels.size * share), (tunnel) =>
      tunnel.checkDeadline?.(now),
    );
    return this.tunnels.size;
  }

  retirePooled(now: number): number {
    return this.agents.retireIdle(now);
  }

  released(): void {
    if (
      this.closing &&
      this.requests.size === 0 &&
      this.handshakes.size === 0 &&
      this.tunnels.size === 0
    )
      this.onDrained?.();
  }

  /** Whether a route would take `req` were its URL `url` (see {@link RouteResolver.mayRoute}). */
  mayRoute(req: IncomingMessage, url: string): boolean {
    return this.resolver.mayRoute(req, url);
  }

  /** The route of a request; a router that throws gives an `EINTERNAL` error instead. */
  private resolve(req: IncomingMessage): Resolution | ProxyError {
    return attempt(() => this.resolver.resolve(req));
  }

  handle(req: IncomingMessage, res: ServerResponse, next: Next | undefined): void {
    const upgrade = dispatchedUpgrade(req, res);
    const client = upgrade ? upgrade.socket : res;
    const resolution = this.resolve(req);
    if (isPending(resolution)) {
      resolution.then(
        (route) => this.dispatch(route, req, res, next, upgrade),
        (error: unknown) => this.failWithoutRoute(toProxyError(error, 'EINTERNAL'), req, client),
      );
    } else if (resolution instanceof ProxyError) {
      this.failWithoutRoute(resolution, req, client);
    } else {
      this.dispatch(resolution, req, res, next, upgrade);
    }
  }

  private dispatch(
    route: Route | undefined,
    req: IncomingMessage,
    res: ServerResponse,
    next: Next | undefined,
    upgrade: DispatchedUpgrade | undefined,
  ): void {
    if (!route) {
      if (next) next();
      else this.failWithoutRoute(new ProxyError('ENOROUTE'), req, res);
    } else if (!upgrade) {
      proxyHttp(this, route, req, res);
    } else if (claimDispatched(res, upgrade)) {
      proxyUpgrade(this, route, req, upgrade.socket, upgrade.head);
    }
  }

  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer = NO_HEAD): boolean {
    if (isClaimed(socket)) return false;
    const resolution = this.resolve(req);
    if (resolution === undefined) return false;
    claimSocket(socket);
    if (resolution instanceof ProxyError) {
      this.failWithoutRoute(resolution, req, socket);
    } else if (isPending(resolution)) {
      // Claimed before the router answers: upgrade() must say now whether it took the socket.
      resolution.then(
        (route) => {
          if (route) proxyUpgrade(this, route, req, socket, head);
          else
            this.failWithoutRoute(
              new ProxyError('ENOROUTE', 'the async router and the table had no route'),
              req,
              socket,
            );
        },
        (error: unknown) => this.failWithoutRoute(toProxyError(error, 'EINTERNAL'), req, socket),
      );
    } else {
      proxyUpgrade(this, resolution, req, socket, head);
    }
    return true;
  }

  /** An error before any route was chosen (a failing router): no route policy applies. */
  private failWithoutRoute(
    error: ProxyError,
    req: IncomingMessage,
    client: ServerResponse | Duplex,
  ): void {
    this.report(error, req, client, undefined);
    writeErrorAnswer(client, error, req);
  }

  close(options: CloseOptions = {}): Promise<void> {
    const timeout = options.timeout ?? DEFAULT_CLOSE_TIMEOUT;
    if (typeof timeout !== 'number' || !(timeout >= 0))
      throw new TypeError('viaduct: close({ timeout }) takes milliseconds ≥ 0');
    this.closed ??= new Promise<void>((resolve) => {
      this.closing = true;
      for (const checker of [...this.healthCheckers]) checker.stop();
      const deadline = setTimeout(() => {
        // Still running at the deadline: requests are aborted, tunnels that did not flush are destroyed.
        for (const work of [
          ...this.requests.toArray(),
          ...this.handshakes.toArray(),
          ...this.tunnels.toArray(),
        ])
          work.shutdown();
      }, timeout);
      this.onDrained = () => {
        this.onDrained = undefined;
        clearTimeout(deadline);
        this.sweep.stop();
        this.agents.destroy();
        resolve();
      };
      for (const work of [...this.handshakes.toArray(), ...this.tunnels.toArray()]) work.shutdown();
      this.released();
    });
    return this.closed;
  }
}

const cores = new WeakMap<Proxy, ProxyCore>();

/** True for a value `createProxy` returned. */
export function isProxy(value: unknown): value is Proxy {
  return typeof value === 'function' && cores.has(value as Proxy);
}

/** Adds an observer of `proxy`'s requests and tunnels (the metrics); returns what removes it. */
export function observeProxy(proxy: Proxy, observer: ProxyObserver): () => void {
  const core = cores.get(proxy);
  if (!core) throw new TypeError('viaduct: collectMetrics takes a proxy createProxy returned');
  return core.observers.add(observer);
}

/**
 * For a value `createProxy` returned: whether one of its routes would take `req` were its URL
 * `url` (mount-relative; a `router` may take any). `undefined` for anything else.
 */
export function proxyMayRoute(
  handler: unknown,
  req: IncomingMessage,
  url: string,
): boolean | undefined {
  return isProxy(handler) ? cores.get(handler)!.mayRoute(req, url) : undefined;
}

/**
 * Creates the proxy: a middleware for Express, Connect and `node:http`, with `upgrade()` for
 * WebSocket tunnels on the same route table, header policy and timeouts.
 */
export function createProxy(config: Targets | ProxyOptions): Proxy {
  const proxy = function viaduct(req: IncomingMessage, res: ServerResponse, next?: Next): void {
    core.handle(req, res, next);
  } as Proxy;
  // A function that is also an EventEmitter, as an Express app is.
  for (const key of Reflect.ownKeys(EventEmitter.prototype)) {
    if (key !== 'constructor')
      Object.defineProperty(
        proxy,
        key,
        Object.getOwnPropertyDescriptor(EventEmitter.prototype, key)!,
      );
  }
  EventEmitter.call(proxy as unknown as EventEmitter);
  const core = new ProxyCore(toOptions(config), proxy as unknown as EventEmitter);
  cores.set(proxy, core);
  proxy.upgrade = (req, socket, head) => core.upgrade(req, socket, head);
  proxy.close = (options) => core.close(options);
  proxy.stats = (): ProxyStats => core.stats.snapshot();
  return proxy;
}
