import type { IncomingMessage } from 'node:http';
import { buildRoute, type Route, type RouteFactory } from './route';
import type { RouteTable } from './route-table';
import type { Router, RouteValue, RouterResult } from '../types';

const ROUTER_KEY = 'router';
// Routes compiled from results given by value are kept; past this many the cache starts over.
const MAX_CACHED_VALUES = 1_000;

const NOT_PLAIN = new Error('not plain data');

/** Plain data only: strings, numbers, booleans, null, arrays and plain objects of them. */
function plainData(_key: string, value: unknown): unknown {
  if (typeof value === 'function' || typeof value === 'symbol' || typeof value === 'bigint')
    throw NOT_PLAIN;
  if (
    typeof value === 'object' &&
    value !== null &&
    !Array.isArray(value) &&
    Object.getPrototypeOf(value) !== Object.prototype
  )
    throw NOT_PLAIN;
  return value;
}

/**
 * The cache key of a result given by value: a URL string, or a result made of plain data only (a
 * list of targets, route options without functions, agents or RegExps), so that a router that
 * builds its result afresh on every call still shares one route, one pool and one health check.
 * Other results are keyed by identity: return the same object to share them.
 */
function valueKey(value: RouteValue): string | undefined {
  if (typeof value === 'string' || value instanceof URL) return String(value);
  try {
    return JSON.stringify(value, plainData);
  } catch {
    return undefined;
  }
}

/**
 * Compiles what a `router` returns, once per distinct value. A route dropped from the cache, or
 * whose result object was collected, has its health checks stopped.
 */
class RouterRoutes {
  private readonly byValue = new Map<string, Route>();
  private readonly byObject = new WeakMap<object, Route>();
  private readonly collected = new FinalizationRegistry<() => void>((dispose) => dispose());

  constructor(private readonly factory: RouteFactory) {}

  get(value: RouteValue): Route {
    // The same object as before: no key to compute.
    const known = typeof value === 'object' ? this.byObject.get(value) : undefined;
    if (known) return known;
    const key = valueKey(value);
    if (key !== undefined) {
      let route = this.byValue.get(key);
      if (!route) {
        if (this.byValue.size >= MAX_CACHED_VALUES) {
          for (const dropped of this.byValue.values()) dropped.dispose();
          this.byValue.clear();
        }
        route = this.build(value);
        this.byValue.set(key, route);
      }
      if (typeof value === 'object' && !(value instanceof URL)) this.byObject.set(value, route);
      return route;
    }
    const route = this.build(value);
    this.byObject.set(value as object, route);
    const dispose = route.disposer();
    if (dispose) this.collected.register(route, dispose);
    return route;
  }

  private build(value: RouteValue): Route {
    return buildRoute(this.factory, ROUTER_KEY, '', value, 'router result');
  }
}

export type Resolution = Route | undefined | Promise<Route | undefined>;

export function isPending(resolution: unknown): resolution is Promise<Route | undefined> {
  return typeof (resolution as Promise<unknown> | undefined)?.then === 'function';
}

/** Finds the route of a request: the `router` first (sync or async), then the table. */
export class RouteResolver {
  private readonly routerRoutes: RouterRoutes;

  constructor(
    private readonly table: RouteTable,
    private readonly router: Router | undefined,
    factory: RouteFactory,
  ) {
    this.routerRoutes = new RouterRoutes(factory);
  }

  resolve(req: IncomingMessage): Resolution {
    if (!this.router) return this.table.match(req);
    const result = this.router(req);
    if (isPending(result)) {
      return (result as Promise<RouterResult>).then((value) => this.fromRouter(value, req));
    }
    return this.fromRouter(result as RouterResult, req);
  }

  /**
   * Whether a route would take `req` were its URL `url`, without running anything: a `router`
   * may take any request, and is not called to find out.
   */
  mayRoute(req: IncomingMessage, url: string): boolean {
    return this.router !== undefined || this.table.matchAt(url, req) !== undefined;
  }

  private fromRouter(value: RouterResult, req: IncomingMessage): Route | undefined {
    return value === undefined || value === null
      ? this.table.match(req)
      : this.routerRoutes.get(value);
  }
}
