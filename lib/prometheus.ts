/**
 * `viaduct/prometheus`: a proxy's metrics on a `prom-client` registry (an optional peer
 * dependency, loaded only by this entry). Labels are route keys, upstream URLs, statuses and close
 * reasons, never paths or clients, so their number stays bounded.
 */
import { Counter, Gauge, Histogram, type Registry, register as defaultRegistry } from 'prom-client';
import { isProxy, observeProxy } from './proxy/create-proxy';
import type { Proxy } from './types';

/** Options of {@link collectMetrics}. */
export interface MetricsOptions {
  /** The registry to register on. Default: `prom-client`'s global `register`. */
  registry?: Registry;
}

/** Seconds: from a fast loopback hop to a long upstream, as proxies see them. */
const DURATION_BUCKETS = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
];

/** The metrics of one registry, shared by every proxy collected on it. */
class RegistryMetrics {
  readonly proxies = new Set<Proxy>();
  readonly requests: Counter<'route' | 'upstream' | 'status'>;
  readonly duration: Histogram<'route'>;
  readonly tunnelsTotal: Counter<'route' | 'reason'>;
  private readonly tunnelsActive: Gauge<'route'>;
  private readonly upstreamUp: Gauge<'route' | 'upstream'>;

  constructor(private readonly registry: Registry) {
    const registers = [registry];
    const proxies = this.proxies;
    this.requests = new Counter({
      name: 'viaduct_requests_total',
      help: 'Requests and upgrade handshakes proxied, by route, last upstream tried and status.',
      labelNames: ['route', 'upstream', 'status'],
      registers,
    });
    this.duration = new Histogram({
      name: 'viaduct_request_duration_seconds',
      help: 'Time from a request reaching the proxy to the end of its response, by route.',
      labelNames: ['route'],
      buckets: DURATION_BUCKETS,
      registers,
    });
    this.tunnelsTotal = new Counter({
      name: 'viaduct_tunnels_total',
      help: 'Tunnels closed, by route and why they ended.',
      labelNames: ['route', 'reason'],
      registers,
    });
    this.tunnelsActive = new Gauge({
      name: 'viaduct_tunnels_active',
      help: 'Tunnels open now, by route.',
      labelNames: ['route'],
      registers,
      collect() {
        this.reset();
        for (const proxy of proxies) {
          for (const [route, stats] of Object.entries(proxy.stats().routes))
            this.inc({ route }, stats.tunnels.active);
        }
      },
    });
    this.upstreamUp = new Gauge({
      name: 'viaduct_upstream_up',
      help: 'Whether an upstream of a route takes traffic (1) or is left out (0).',
      labelNames: ['route', 'upstream'],
      registers,
      collect() {
        this.reset();
        for (const proxy of proxies) {
          for (const [route, stats] of Object.entries(proxy.stats().routes)) {
            for (const [upstream, counters] of Object.entries(stats.upstreams))
              this.set({ route, upstream }, counters.down ? 0 : 1);
          }
        }
      },
    });
  }

  /** Takes the metrics off the registry once no proxy is left on it. */
  release(proxy: Proxy): boolean {
    this.proxies.delete(proxy);
    if (this.proxies.size > 0) return false;
    for (const metric of [
      this.requests,
      this.duration,
      this.tunnelsTotal,
      this.tunnelsActive,
      this.upstreamUp,
    ]) {
      this.registry.removeSingleMetric((metric as unknown as { name: string }).name);
    }
    return true;
  }
}

const byRegistry = new WeakMap<Registry, RegistryMetrics>();

/**
 * Registers `proxy`'s metrics on a `prom-client` registry: `viaduct_requests_total{route,upstream,status}`,
 * `viaduct_request_duration_seconds{route}` (a histogram), `viaduct_tunnels_active{route}`,
 * `viaduct_tunnels_total{route,reason}` and `viaduct_upstream_up{route,upstream}`. Several proxies
 * may be collected on one registry. Returns a function that stops collecting this proxy.
 */
export function collectMetrics(proxy: Proxy, options: MetricsOptions = {}): () => void {
  // First: anything but a proxy is refused before the registry gets metrics that read its stats.
  if (!isProxy(proxy))
    throw new TypeError('viaduct: collectMetrics takes a proxy createProxy returned');
  const registry = options.registry ?? defaultRegistry;
  let metrics = byRegistry.get(registry);
  if (metrics?.proxies.has(proxy)) {
    throw new TypeError(
      'viaduct: collectMetrics: this proxy is collected on this registry already',
    );
  }
  if (!metrics) {
    metrics = new RegistryMetrics(registry);
    byRegistry.set(registry, metrics);
  }
  const { requests, duration, tunnelsTotal } = metrics;
  const stop = observeProxy(proxy, {
    requestEnded(message) {
      requests.inc({
        route: message.route,
        upstream: message.upstream ?? '',
        status: String(message.status),
      });
      duration.observe({ route: message.route }, message.timings.total / 1000);
    },
    tunnelClosed(event) {
      tunnelsTotal.inc({ route: event.route, reason: event.reason });
    },
  });
  metrics.proxies.add(proxy);
  const collected = metrics;
  return () => {
    stop();
    if (collected.release(proxy)) byRegistry.delete(registry);
  };
}
