import type { IncomingMessage } from 'node:http';
import { buildRoute, type Route, type RouteFactory } from './route';
import type { RouteTable } from './route-table';
import type { Router, RouteValue, RouterResult } from '../types';

const ROUTER_KEY = 'router';
// Routes compiled from string results are kept; past this many distinct strings the cache starts over.
const MAX_CACHED_STRINGS = 1_000;

/** Compiles what a `router` returns, once per distinct value. */
class RouterRoutes {
  private readonly byString = new Map<string, Route>();
  private readonly byObject = new WeakMap<object, Route>();

  constructor(private readonly factory: RouteFactory) {}

  get(value: RouteValue): Route {
    if (typeof value === 'string' || value instanceof URL) {
      const key = String(value);
      let route = this.byString.get(key);
      if (!route) {
        if (this.byString.size >= MAX_CACHED_STRINGS) this.byString.clear();
        route = this.build(value);
        this.byString.set(key, route);
      }
      return route;
    }
    let route = this.byObject.get(value);
    if (!route) this.byObject.set(value, (route = this.build(value)));
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
