import { Engine } from '../upstream/engine';
import type { PathRule } from './forwarded-path';
import { SETTING_KEYS, checkKeys, resolveSettings, type ResolvedSettings } from './settings';
import type { Sweep } from '../runtime/sweep';
import { isTarget, resolveTarget, type ResolvedTarget } from '../upstream/target';
import type { RouteStats, RouteValue } from '../types';
import type { UpstreamAgents } from '../upstream/upstream-agents';

const ROUTE_KEYS: ReadonlySet<string> = new Set([...SETTING_KEYS, 'target']);

/** One compiled route: everything a request on it needs, computed once. */
export class Route implements PathRule {
  /** The target's own path, without a trailing slash. */
  readonly basePath: string;
  /** The target is `https:`. */
  readonly secure: boolean;
  /** For log lines only. */
  readonly targetLabel: string;
  readonly engine: Engine;
  /** Tunnels open or being opened on this route, held against `maxTunnels`. */
  tunnelSlots = 0;

  constructor(
    /** The table key (or `'default'`, `'router'`): names the route in stats and logs. */
    readonly key: string,
    /** The matched table path prefix, `''` when the route has none. */
    readonly prefix: string,
    target: ResolvedTarget,
    readonly settings: ResolvedSettings,
    agents: UpstreamAgents,
    readonly stats: RouteStats,
  ) {
    this.basePath = target.basePath;
    this.secure = target.secure;
    this.targetLabel = target.label;
    this.engine = new Engine({
      target: target.url,
      changeOrigin: settings.changeOrigin,
      secure: settings.secure,
      ca: settings.ca,
      webAgent: settings.agent ?? (target.secure ? agents.https : agents.http),
      wsAgent: settings.agent ?? (target.secure ? agents.tunnelHttps : agents.tunnelHttp),
      cookieDomainRewrite: settings.cookieDomainRewrite,
      cookiePathRewrite: settings.cookiePathRewrite,
      autoRewrite: settings.autoRewrite,
    });
  }
}

export interface RouteFactory {
  readonly defaults: ResolvedSettings;
  readonly agents: UpstreamAgents;
  /** Keeps the routes' read timeouts. */
  readonly sweep: Sweep;
  statsFor(key: string): RouteStats;
}

/** Compiles a table value, `target` or router result into a {@link Route}. */
export function buildRoute(
  factory: RouteFactory,
  key: string,
  prefix: string,
  value: RouteValue,
  where: string,
): Route {
  let route: Route;
  if (isTarget(value)) {
    route = new Route(
      key,
      prefix,
      resolveTarget(value, where),
      factory.defaults,
      factory.agents,
      factory.statsFor(key),
    );
  } else {
    checkKeys(value, ROUTE_KEYS, where);
    const settings = resolveSettings(value, factory.defaults, where);
    route = new Route(
      key,
      prefix,
      resolveTarget(value.target, `${where}.target`),
      settings,
      factory.agents,
      factory.statsFor(key),
    );
  }
  factory.sweep.cover(Math.min(route.settings.timeouts.read, route.settings.timeouts.connect));
  return route;
}
