import type { ProxyStats, RouteStats } from '../types';

function emptyStats(): RouteStats {
  return {
    requests: { total: 0, active: 0, errors: 0 },
    tunnels: { total: 0, active: 0, rejected: 0 },
    upstreams: {},
  };
}

function copy(stats: RouteStats): RouteStats {
  const upstreams: RouteStats['upstreams'] = {};
  for (const [url, counters] of Object.entries(stats.upstreams)) upstreams[url] = { ...counters };
  return { requests: { ...stats.requests }, tunnels: { ...stats.tunnels }, upstreams };
}

/** Counters for the whole proxy and per route key; every update goes to both. */
export class StatsBook {
  private readonly totals = emptyStats();
  private readonly byKey = new Map<string, RouteStats>();

  /** The counters of a route key, created on first use. */
  forKey(key: string): RouteStats {
    let stats = this.byKey.get(key);
    if (!stats) this.byKey.set(key, (stats = emptyStats()));
    return stats;
  }

  requestStarted(route: RouteStats): void {
    route.requests.total++;
    route.requests.active++;
    this.totals.requests.total++;
    this.totals.requests.active++;
  }

  requestEnded(route: RouteStats): void {
    route.requests.active--;
    this.totals.requests.active--;
  }

  requestFailed(route: RouteStats): void {
    route.requests.errors++;
    this.totals.requests.errors++;
  }

  tunnelOpened(route: RouteStats): void {
    route.tunnels.total++;
    route.tunnels.active++;
    this.totals.tunnels.total++;
    this.totals.tunnels.active++;
  }

  tunnelClosed(route: RouteStats): void {
    route.tunnels.active--;
    this.totals.tunnels.active--;
  }

  tunnelRejected(route: RouteStats): void {
    route.tunnels.rejected++;
    this.totals.tunnels.rejected++;
  }

  snapshot(): ProxyStats {
    const routes: Record<string, RouteStats> = {};
    for (const [key, stats] of this.byKey) routes[key] = copy(stats);
    const { requests, tunnels } = this.totals;
    return { requests: { ...requests }, tunnels: { ...tunnels }, routes };
  }
}
