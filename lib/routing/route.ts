import type { IncomingMessage } from 'node:http';
import { clientAddress } from '../headers/forwarding';
import type { RouteLabel } from '../runtime/context';
import type { Sweep } from '../runtime/sweep';
import type { RouteStats, RouteValue, Targets, UpstreamStats } from '../types';
import { Engine } from '../upstream/engine';
import { HealthChecker } from '../upstream/health-check';
import { UpstreamPool, type PoolEvents } from '../upstream/pool';
import { isTarget, resolvePool, type PoolMember } from '../upstream/target';
import { Upstream } from '../upstream/upstream';
import type { UpstreamAgents } from '../upstream/upstream-agents';
import type { PathRule } from './forwarded-path';
import { SETTING_KEYS, checkKeys, resolveSettings, type ResolvedSettings } from './settings';

const ROUTE_KEYS: ReadonlySet<string> = new Set([...SETTING_KEYS, 'target']);

/** One compiled route: everything a request on it needs, computed once. */
export class Route implements PathRule, RouteLabel {
  /** The upstreams, for log lines: one URL, or the pool's in brackets. */
  readonly targetLabel: string;
  readonly pool: UpstreamPool;
  /** Tunnels open or being opened on this route, held against `maxTunnels`. */
  tunnelSlots = 0;
  private readonly healthChecker: HealthChecker | undefined;

  constructor(
    /** The table key (or `'default'`, `'router'`): names the route in stats and logs. */
    readonly key: string,
    /** The matched table path prefix, `''` when the route has none. */
    readonly prefix: string,
    members: readonly PoolMember[],
    readonly settings: ResolvedSettings,
    factory: RouteFactory,
    readonly stats: RouteStats,
  ) {
    const upstreams = members.map(
      ({ target, weight }) =>
        new Upstream(
          target,
          weight,
          engineFor(target.url, target.secure, settings, factory.agents),
          upstreamStats(stats, target.label + target.basePath),
        ),
    );
    this.targetLabel =
      upstreams.length === 1
        ? upstreams[0]!.url
        : `[${upstreams.map((upstream) => upstream.url).join(', ')}]`;
    const { trustProxy, hashKey } = settings;
    this.pool = new UpstreamPool(
      upstreams,
      {
        balance: settings.balance,
        hashKey: hashKey ?? ((req: IncomingMessage) => clientAddress(req, trustProxy)),
        maxFails: settings.maxFails,
        failTimeout: settings.failTimeout,
        // A try never goes back to an upstream it tried: more than the others is no more.
        retries: Math.min(
          settings.retries === -1 ? upstreams.length - 1 : settings.retries,
          upstreams.length - 1,
        ),
      },
      factory.poolEvents(this),
    );
    if (settings.healthCheck) {
      this.healthChecker = new HealthChecker(this.pool, {
        ...settings.healthCheck,
        secure: settings.secure !== false,
        ca: settings.ca,
      });
      factory.watchHealth(this.healthChecker);
    }
  }

  /** Stops what the route runs on its own: its health checks. */
  dispose(): void {
    this.healthChecker?.stop();
  }

  /** What stops it, holding nothing of the route itself (for a finalizer); `undefined` when nothing runs. */
  disposer(): (() => void) | undefined {
    const checker = this.healthChecker;
    return checker && (() => checker.stop());
  }
}

function engineFor(
  url: Upstream['target']['url'],
  secure: boolean,
  settings: ResolvedSettings,
  agents: UpstreamAgents,
): Engine {
  return new Engine({
    target: url,
    changeOrigin: settings.changeOrigin,
    secure: settings.secure,
    ca: settings.ca,
    webAgent: settings.agent ?? (secure ? agents.https : agents.http),
    wsAgent: settings.agent ?? (secure ? agents.tunnelHttps : agents.tunnelHttp),
    cookieDomainRewrite: settings.cookieDomainRewrite,
    cookiePathRewrite: settings.cookiePathRewrite,
    autoRewrite: settings.autoRewrite,
  });
}

/** The counters of one upstream in its route's stats, created on first use. */
function upstreamStats(stats: RouteStats, url: string): UpstreamStats {
  stats.upstreams[url] ??= { requests: 0, tunnels: 0, active: 0, fails: 0, down: false };
  return stats.upstreams[url];
}

export interface RouteFactory {
  readonly defaults: ResolvedSettings;
  readonly agents: UpstreamAgents;
  /** Keeps the routes' read timeouts. */
  readonly sweep: Sweep;
  statsFor(key: string): RouteStats;
  /** Where the route's pool reports upstreams leaving and rejoining it. */
  poolEvents(route: RouteLabel): PoolEvents;
  /** Runs a route's health checks while the proxy is open. */
  watchHealth(checker: HealthChecker): void;
}

/** Compiles a table value, `target` or router result into a {@link Route}. */
export function buildRoute(
  factory: RouteFactory,
  key: string,
  prefix: string,
  value: RouteValue,
  where: string,
): Route {
  let targets: Targets;
  let settings: ResolvedSettings;
  let at = where;
  if (isTarget(value)) {
    targets = value;
    settings = factory.defaults;
  } else {
    checkKeys(value, ROUTE_KEYS, where);
    settings = resolveSettings(value, factory.defaults, where);
    targets = value.target;
    at = `${where}.target`;
  }
  const route = new Route(
    key,
    prefix,
    resolvePool(targets, at),
    settings,
    factory,
    factory.statsFor(key),
  );
  const { connect, read, tunnel } = route.settings.timeouts;
  factory.sweep.cover(Math.min(read, connect));
  factory.sweep.coverTunnels(Math.min(read, tunnel ?? Number.POSITIVE_INFINITY));
  return route;
}
